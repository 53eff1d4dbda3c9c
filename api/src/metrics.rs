//! The API's Prometheus metrics: names, descriptions and the recorder. Every metric is listed
//! in `docs/observability.md`.

use metrics_exporter_prometheus::{BuildError, PrometheusHandle};

/// Seconds from a request's arrival to its answer's head, by route template, method, status.
pub const REQUEST_DURATION: &str = "bamf_api_request_duration_seconds";
/// Connections closed at accept because a cap was reached, by reason.
pub const CONNECTIONS_REFUSED: &str = "bamf_api_connections_refused_total";
/// Password hashes checked (argon2 work done), successful or not.
pub const PASSWORD_CHECKS: &str = "bamf_api_password_checks_total";
/// Always 1, labelled with the version (and commit when known).
pub const BUILD_INFO: &str = "bamf_api_build_info";
/// Errors from accept(2), e.g. out of file descriptors.
pub const ACCEPT_ERRORS: &str = "bamf_api_accept_errors_total";

/// Installs the process-wide recorder and describes the metrics.
///
/// # Errors
///
/// A recorder is installed already.
pub fn install() -> Result<PrometheusHandle, BuildError> {
    let handle = bamf_runtime::recorder::install(&[(
        REQUEST_DURATION,
        &[
            0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
        ],
    )])?;
    metrics::describe_histogram!(
        REQUEST_DURATION,
        metrics::Unit::Seconds,
        "Request duration to the answer's head, by route template, method and status"
    );
    metrics::describe_counter!(
        CONNECTIONS_REFUSED,
        "Connections closed at accept by a cap (reason: total, per_address)"
    );
    metrics::describe_counter!(PASSWORD_CHECKS, "Password hashes checked");
    metrics::describe_counter!(
        ACCEPT_ERRORS,
        "Errors from accept(2), e.g. out of descriptors"
    );
    bamf_runtime::recorder::record_build_info(BUILD_INFO, env!("CARGO_PKG_VERSION"));
    Ok(handle)
}

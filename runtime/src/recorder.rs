//! The process-wide Prometheus recorder, and the `<binary>_build_info` gauge every BAMF binary
//! exports.

use metrics_exporter_prometheus::{BuildError, Matcher, PrometheusBuilder, PrometheusHandle};

/// Installs the process-wide recorder; `histograms` gives the buckets of each histogram by
/// full name (one without an entry is exported as a summary).
///
/// # Errors
///
/// A recorder is already installed, or a bucket list is empty.
pub fn install(histograms: &[(&str, &[f64])]) -> Result<PrometheusHandle, BuildError> {
    let mut builder = PrometheusBuilder::new();
    for (name, buckets) in histograms {
        builder = builder.set_buckets_for_metric(Matcher::Full((*name).to_owned()), buckets)?;
    }
    builder.install_recorder()
}

/// Sets `metric` (such as `bamf_bridge_build_info`) to 1 with the labels `version` and, when
/// the build set `BAMF_GIT_COMMIT`, `commit`: which build runs where, for dashboards that
/// join on it.
pub fn record_build_info(metric: &'static str, version: &'static str) {
    metrics::describe_gauge!(
        metric,
        "Always 1; the labels say which build runs (version, and commit when known)"
    );
    match option_env!("BAMF_GIT_COMMIT") {
        Some(commit) if !commit.is_empty() => {
            metrics::gauge!(metric, "version" => version, "commit" => commit).set(1.0);
        }
        _ => metrics::gauge!(metric, "version" => version).set(1.0),
    }
}

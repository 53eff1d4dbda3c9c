//! The agent's Prometheus metrics, served on the health listener's `/metrics`;
//! `docs/observability.md` lists them.
//!
//! Labels are low-cardinality by construction: outcome codes and directions, never a
//! resource, session or address.

use std::io;
use std::time::Duration;

use metrics_exporter_prometheus::PrometheusHandle;

const DIALS: &str = "bamf_agent_dials_total";
const DIAL_SECONDS: &str = "bamf_agent_dial_seconds";
const TUNNELS_ACTIVE: &str = "bamf_agent_tunnels_active";
const TUNNEL_BYTES: &str = "bamf_agent_tunnel_bytes_total";
const BUILD_INFO: &str = "bamf_agent_build_info";

/// A dial is a resource connect (targets sit next to the agent: milliseconds) plus a TLS
/// dial to a bridge (a WAN round trip or few), bounded by their deadlines (10 s each).
const DIAL_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Installs the process-wide Prometheus recorder and registers metric descriptions.
///
/// # Errors
///
/// A recorder is already installed.
pub fn install() -> Result<PrometheusHandle, metrics_exporter_prometheus::BuildError> {
    let handle = bamf_runtime::recorder::install(&[(DIAL_SECONDS, DIAL_BUCKETS)])?;
    bamf_runtime::recorder::record_build_info(BUILD_INFO, env!("CARGO_PKG_VERSION"));
    metrics::describe_counter!(DIALS, "Dial commands, by outcome");
    metrics::describe_histogram!(
        DIAL_SECONDS,
        "Seconds from a dial command to an open tunnel or its failure"
    );
    metrics::describe_gauge!(TUNNELS_ACTIVE, "Tunnels relaying now");
    metrics::describe_counter!(
        TUNNEL_BYTES,
        "Bytes through tunnels, by direction (up: to the resource), counted as they flow"
    );
    Ok(handle)
}

/// How a dial command ended. The names are stable: they are label values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DialOutcome {
    /// The tunnel is open: resource connected, bridge dialled, paired, end-to-end session up.
    Ok,
    /// The command names a resource this agent does not serve.
    UnknownResource,
    /// `max_tunnels` are open; the command was dropped.
    LimitReached,
    /// A client attached again to a session this agent no longer serves; refused.
    NotServed,
    /// The resource refused the connection.
    ResourceRefused,
    /// The resource did not accept within `connect_timeout`.
    ResourceTimeout,
    /// The resource could not be reached otherwise (name did not resolve, unreachable…).
    ResourceError,
    /// The bridge refused the connection.
    BridgeRefused,
    /// The bridge did not complete TCP and TLS within the dial deadline.
    BridgeTimeout,
    /// The bridge could not be reached or its TLS failed.
    BridgeError,
    /// The preamble could not be written to the bridge.
    PreambleError,
    /// The bridge never paired this side (the client did not come in time).
    Unpaired,
    /// The end-to-end handshake with the client failed, or its certificate is not for this
    /// session.
    ClientRefused,
    /// Shutdown cut the dial.
    Shutdown,
}

impl DialOutcome {
    /// Label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::UnknownResource => "unknown_resource",
            Self::LimitReached => "limit_reached",
            Self::NotServed => "not_served",
            Self::ResourceRefused => "resource_refused",
            Self::ResourceTimeout => "resource_timeout",
            Self::ResourceError => "resource_error",
            Self::BridgeRefused => "bridge_refused",
            Self::BridgeTimeout => "bridge_timeout",
            Self::BridgeError => "bridge_error",
            Self::PreambleError => "preamble_error",
            Self::Unpaired => "unpaired",
            Self::ClientRefused => "client_refused",
            Self::Shutdown => "shutdown",
        }
    }

    /// A failed resource connect, by its error.
    pub fn resource(e: &io::Error) -> Self {
        match e.kind() {
            io::ErrorKind::ConnectionRefused => Self::ResourceRefused,
            io::ErrorKind::TimedOut => Self::ResourceTimeout,
            _ => Self::ResourceError,
        }
    }

    /// A failed bridge dial, by its error.
    pub fn bridge(e: &io::Error) -> Self {
        match e.kind() {
            io::ErrorKind::ConnectionRefused => Self::BridgeRefused,
            io::ErrorKind::TimedOut => Self::BridgeTimeout,
            _ => Self::BridgeError,
        }
    }
}

/// Counts a dial command that was not attempted (no duration to record).
pub(crate) fn dial_skipped(outcome: DialOutcome) {
    metrics::counter!(DIALS, "outcome" => outcome.as_str()).increment(1);
}

/// Counts an attempted dial and records how long it took.
pub(crate) fn dialled(outcome: DialOutcome, elapsed: Duration) {
    metrics::counter!(DIALS, "outcome" => outcome.as_str()).increment(1);
    metrics::histogram!(DIAL_SECONDS).record(elapsed.as_secs_f64());
}

/// Counts a tunnel as active for as long as it lives.
pub(crate) struct ActiveTunnel(());

impl ActiveTunnel {
    pub(crate) fn new() -> Self {
        metrics::gauge!(TUNNELS_ACTIVE).increment(1.0);
        Self(())
    }
}

impl Drop for ActiveTunnel {
    fn drop(&mut self) {
        metrics::gauge!(TUNNELS_ACTIVE).decrement(1.0);
    }
}

/// Counts a finished tunnel's application bytes: `up` into the resource, `down` from it.
pub(crate) fn tunnel_bytes_moved(up: u64, down: u64) {
    metrics::counter!(TUNNEL_BYTES, "direction" => "up").increment(up);
    metrics::counter!(TUNNEL_BYTES, "direction" => "down").increment(down);
}

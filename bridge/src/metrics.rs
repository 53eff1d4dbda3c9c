//! The bridge's Prometheus metrics (the admin listener serving them is
//! [`bamf_runtime::admin`]); `docs/observability.md` lists them.
//!
//! Outcomes are recorded once per connection (at its end) and once per detected hello; bytes
//! are added while they flow, once per relay batch, through counter handles taken once per
//! connection (an atomic add, no lookup). Labels are low-cardinality by construction:
//! listener, route kind, outcome, direction and snake_case reason codes, never a host name or
//! address.

use std::time::Duration;

use metrics_exporter_prometheus::PrometheusHandle;

use crate::route::Entry;
use bamf_relay::Meters;

const CONNECTIONS: &str = "bamf_frontdoor_connections_total";
const ACTIVE: &str = "bamf_frontdoor_active_connections";
const BYTES: &str = "bamf_frontdoor_bytes_total";
const DETECT: &str = "bamf_frontdoor_detect_seconds";
const ACCEPT_ERRORS: &str = "bamf_frontdoor_accept_errors_total";
const TUNNELS: &str = "bamf_tunnels_total";
const TUNNELS_ACTIVE: &str = "bamf_tunnels_active";
const TUNNELS_WAITING: &str = "bamf_tunnels_waiting";
const TUNNEL_REFUSED: &str = "bamf_tunnel_refusals_total";
const TUNNEL_BYTES: &str = "bamf_tunnel_bytes_total";
const REPORTS: &str = "bamf_session_reports_total";
const BUILD_INFO: &str = "bamf_bridge_build_info";

/// Hello detection takes well under a millisecond on a LAN and up to the detect timeout for
/// a slow client; these buckets resolve both ends.
const DETECT_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

/// Installs the process-wide Prometheus recorder and registers metric descriptions.
///
/// # Errors
///
/// A recorder is already installed.
pub fn install() -> Result<PrometheusHandle, metrics_exporter_prometheus::BuildError> {
    let handle = bamf_runtime::recorder::install(&[(DETECT, DETECT_BUCKETS)])?;
    bamf_runtime::recorder::record_build_info(BUILD_INFO, env!("CARGO_PKG_VERSION"));
    metrics::describe_counter!(
        CONNECTIONS,
        "Connections ended, by listener, route kind and outcome"
    );
    metrics::describe_gauge!(ACTIVE, "Connections open now, by listener");
    metrics::describe_counter!(
        BYTES,
        "Bytes relayed by the front door, by direction, counted as they flow"
    );
    metrics::describe_histogram!(DETECT, "Seconds from accept to a complete ClientHello");
    metrics::describe_counter!(
        ACCEPT_ERRORS,
        "Errors from accept(2), e.g. out of file descriptors"
    );
    metrics::describe_counter!(TUNNELS, "Tunnels ended, by how they ended");
    metrics::describe_gauge!(TUNNELS_ACTIVE, "Paired tunnels open now");
    metrics::describe_gauge!(TUNNELS_WAITING, "Tunnel sides waiting for the other side");
    metrics::describe_counter!(TUNNEL_REFUSED, "Tunnel connections refused, by reason");
    metrics::describe_counter!(
        TUNNEL_BYTES,
        "Bytes through paired tunnels, by direction, counted as they flow"
    );
    metrics::describe_counter!(REPORTS, "Session events delivered to the API, or dropped");
    Ok(handle)
}

pub(crate) fn tunnel_refused(reason: &'static str) {
    metrics::counter!(TUNNEL_REFUSED, "reason" => reason).increment(1);
}

pub(crate) fn tunnels_waiting(delta: f64) {
    metrics::gauge!(TUNNELS_WAITING).increment(delta);
}

pub(crate) fn tunnel_started() {
    metrics::gauge!(TUNNELS_ACTIVE).increment(1.0);
}

pub(crate) fn tunnel_ended(end: &'static str) {
    metrics::gauge!(TUNNELS_ACTIVE).decrement(1.0);
    metrics::counter!(TUNNELS, "end" => end).increment(1);
}

/// Wraps a paired tunnel's two sides so that its bytes are counted as they are written:
/// `up` into the agent's side, `down` into the client's.
pub(crate) fn tunnel_bytes() -> Meters {
    Meters {
        up: metrics::counter!(TUNNEL_BYTES, "direction" => "up"),
        down: metrics::counter!(TUNNEL_BYTES, "direction" => "down"),
    }
}

/// The front door's byte counters, taken once and shared by every connection.
pub(crate) fn frontdoor_bytes() -> Meters {
    Meters {
        up: metrics::counter!(BYTES, "direction" => "up"),
        down: metrics::counter!(BYTES, "direction" => "down"),
    }
}

pub(crate) fn reports_sent(n: usize) {
    metrics::counter!(REPORTS, "result" => "delivered").increment(n as u64);
}

pub(crate) fn report_dropped() {
    metrics::counter!(REPORTS, "result" => "dropped").increment(1);
}

/// Counts a connection as active for as long as it lives.
pub(crate) struct Active(Entry);

impl Active {
    pub(crate) fn new(entry: Entry) -> Self {
        metrics::gauge!(ACTIVE, "listener" => entry.as_str()).increment(1.0);
        Self(entry)
    }
}

impl Drop for Active {
    fn drop(&mut self) {
        metrics::gauge!(ACTIVE, "listener" => self.0.as_str()).decrement(1.0);
    }
}

pub(crate) fn connection_ended(entry: Entry, route: &'static str, outcome: &'static str) {
    metrics::counter!(CONNECTIONS, "listener" => entry.as_str(), "route" => route, "outcome" => outcome)
        .increment(1);
}

pub(crate) fn detected(entry: Entry, elapsed: Duration) {
    metrics::histogram!(DETECT, "listener" => entry.as_str()).record(elapsed.as_secs_f64());
}

pub(crate) fn accept_error(entry: Entry) {
    metrics::counter!(ACCEPT_ERRORS, "listener" => entry.as_str()).increment(1);
}

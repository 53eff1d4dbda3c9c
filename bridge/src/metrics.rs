//! Prometheus metrics and the admin listener that serves them with health and readiness.
//!
//! Metrics are recorded once per connection (at its end) and once per detected hello, never
//! per chunk. Labels are low-cardinality by construction: listener, route kind and outcome,
//! never a host name or address.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper_util::rt::{TokioIo, TokioTimer};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::relay::Transferred;
use crate::route::Entry;

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

/// Admin requests served at once; the admin port is for probes and scrapers, not the public.
const ADMIN_MAX_CONNECTIONS: usize = 32;
/// Bound on how long a scraper may take to send its request headers.
const ADMIN_HEADER_TIMEOUT: Duration = Duration::from_secs(5);

/// Installs the process-wide Prometheus recorder and registers metric descriptions.
///
/// # Errors
///
/// A recorder is already installed.
pub fn install() -> Result<PrometheusHandle, metrics_exporter_prometheus::BuildError> {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(
            metrics_exporter_prometheus::Matcher::Full(DETECT.to_owned()),
            &[
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
            ],
        )?
        .install_recorder()?;
    metrics::describe_counter!(
        CONNECTIONS,
        "Connections ended, by listener, route kind and outcome"
    );
    metrics::describe_gauge!(ACTIVE, "Connections open now, by listener");
    metrics::describe_counter!(
        BYTES,
        "Bytes relayed, by direction (counted when a connection ends)"
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
    metrics::describe_counter!(TUNNEL_BYTES, "Bytes through paired tunnels, by direction");
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

pub(crate) fn tunnel_ended(end: &'static str, up: u64, down: u64) {
    metrics::gauge!(TUNNELS_ACTIVE).decrement(1.0);
    metrics::counter!(TUNNELS, "end" => end).increment(1);
    metrics::counter!(TUNNEL_BYTES, "direction" => "up").increment(up);
    metrics::counter!(TUNNEL_BYTES, "direction" => "down").increment(down);
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

pub(crate) fn connection_ended(
    entry: Entry,
    route: &'static str,
    outcome: crate::frontdoor::Outcome,
    moved: Transferred,
) {
    metrics::counter!(CONNECTIONS, "listener" => entry.as_str(), "route" => route, "outcome" => outcome.as_str())
        .increment(1);
    if moved.up > 0 {
        metrics::counter!(BYTES, "direction" => "up").increment(moved.up);
    }
    if moved.down > 0 {
        metrics::counter!(BYTES, "direction" => "down").increment(moved.down);
    }
}

pub(crate) fn detected(entry: Entry, elapsed: Duration) {
    metrics::histogram!(DETECT, "listener" => entry.as_str()).record(elapsed.as_secs_f64());
}

pub(crate) fn accept_error(entry: Entry) {
    metrics::counter!(ACCEPT_ERRORS, "listener" => entry.as_str()).increment(1);
}

/// Serves `/metrics`, `/health` (alive) and `/ready` (accepting new connections) until `stop`.
pub(crate) async fn serve_admin(
    listener: TcpListener,
    handle: Option<PrometheusHandle>,
    ready: Arc<AtomicBool>,
    stop: CancellationToken,
) {
    let handle = Arc::new(handle);
    let tracker = TaskTracker::new();
    let slots = Arc::new(tokio::sync::Semaphore::new(ADMIN_MAX_CONNECTIONS));
    let upkeep = handle.clone();
    tracker.spawn({
        let stop = stop.clone();
        async move {
            // Histograms are summarised lazily; upkeep keeps their memory bounded.
            let mut tick = tokio::time::interval(Duration::from_secs(5));
            while stop.run_until_cancelled(tick.tick()).await.is_some() {
                if let Some(h) = upkeep.as_ref() {
                    h.run_upkeep();
                }
            }
        }
    });
    loop {
        let Some(Ok(permit)) = stop
            .run_until_cancelled(slots.clone().acquire_owned())
            .await
        else {
            break;
        };
        let Some(accepted) = stop.run_until_cancelled(listener.accept()).await else {
            break;
        };
        let Ok((stream, _)) = accepted else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let handle = handle.clone();
        let ready = ready.clone();
        let stop = stop.clone();
        tracker.spawn(async move {
            let _permit = permit;
            let service = hyper::service::service_fn(move |req| {
                let response = respond(&req, handle.as_ref().as_ref(), &ready);
                async move { Ok::<_, Infallible>(response) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(ADMIN_HEADER_TIMEOUT)
                .keep_alive(false)
                .serve_connection(TokioIo::new(stream), service);
            let _ = stop
                .run_until_cancelled(tokio::time::timeout(ADMIN_HEADER_TIMEOUT * 2, conn))
                .await;
        });
    }
    tracker.close();
    tracker.wait().await;
}

fn respond(
    req: &Request<Incoming>,
    handle: Option<&PrometheusHandle>,
    ready: &AtomicBool,
) -> Response<Full<Bytes>> {
    let text = |status: StatusCode, body: String, content_type: &'static str| {
        let mut r = Response::new(Full::new(Bytes::from(body)));
        *r.status_mut() = status;
        r.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static(content_type),
        );
        r
    };
    let plain = "text/plain; charset=utf-8";
    if req.method() != Method::GET {
        return text(
            StatusCode::METHOD_NOT_ALLOWED,
            "method not allowed\n".into(),
            plain,
        );
    }
    match req.uri().path() {
        "/health" => text(StatusCode::OK, "ok\n".into(), plain),
        "/ready" if ready.load(Ordering::Acquire) => text(StatusCode::OK, "ready\n".into(), plain),
        "/ready" => text(StatusCode::SERVICE_UNAVAILABLE, "draining\n".into(), plain),
        "/metrics" => match handle {
            Some(h) => text(
                StatusCode::OK,
                h.render(),
                "text/plain; version=0.0.4; charset=utf-8",
            ),
            None => text(
                StatusCode::NOT_FOUND,
                "metrics are not enabled\n".into(),
                plain,
            ),
        },
        _ => text(StatusCode::NOT_FOUND, "not found\n".into(), plain),
    }
}

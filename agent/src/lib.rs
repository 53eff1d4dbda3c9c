//! The BAMF agent (`bamf-agent`): runs beside the targets it serves (SSH servers, databases,
//! any TCP service) and only dials out, to the API and to bridges; it needs no inbound port.
//!
//! # What it does
//!
//! 1. **Joins** once: makes a key and a CSR locally, posts them with an administrator's join
//!    token (`BAMF_JOIN_TOKEN`) to `POST /api/v1/agents/join`, and stores the key (0600), the
//!    certificate, the CA and its id in `data_dir`. Later starts reuse them; the token is
//!    needed only for the first.
//! 2. **Reports** its resource catalog every 15 s (`POST /api/v1/agents/heartbeat`, mTLS),
//!    which keeps it online for 45 s.
//! 3. **Follows** the command stream (`GET /api/v1/agent/commands`, server-sent events over
//!    mTLS) and, for each `dial` command, connects to the resource, dials the named bridge
//!    with its agent certificate, names the session in a one-line preamble and relays bytes.
//! 4. **Renews** its certificate at half-life, for a new key each time.
//!
//! # Names are unique
//!
//! An agent's name is its identity among agents. A second agent joining with a name in use
//! is refused (409) and exits, telling the operator to pick another name or to have an
//! administrator delete the old agent. An agent that lost its `data_dir` cannot prove it is
//! the old one: an administrator deletes it (`DELETE /api/v1/agents/{id}`), which also
//! revokes its certificates, and it joins again with a new token. See `docs/agent.md`.
//!
//! # Layout
//!
//! - [`config`]: the TOML file → typed [`config::Config`]; every problem reported at once.
//! - [`enroll`]: join, the files in `data_dir`, renewal, and the TLS set-ups made from them.
//! - [`heartbeat`]: the catalog report.
//! - [`commands`]: the command stream, reconnected with back-off; [`sse`] parses it.
//! - [`tunnel`]: serving one dial command; the relay with idle timeout and half-close; the
//!   sessions' ends, sent to the API in batches.
//! - [`health`]: readiness for the health listener (`/health`, `/ready`, `/metrics`, served
//!   by [`bamf_runtime::admin`]).
//! - [`metrics`]: the agent's Prometheus metrics.
//!
//! [`run`] ties them together and owns the shutdown order: readiness off, stop the command
//! stream (and so new tunnels), stop reporting, drain open tunnels under the grace period,
//! cut what is left, send their ends to the API (for a moment at most), report.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

pub mod commands;
pub mod config;
pub mod enroll;
pub mod health;
pub mod heartbeat;
pub mod metrics;
pub mod sse;
pub mod tunnel;

#[cfg(test)]
mod tests;

use crate::config::Config;
use crate::enroll::{EnrollError, JoinToken, Tls};

/// At shutdown, how long the drained tunnels' ends get to reach the API.
const ENDS_FLUSH: std::time::Duration = std::time::Duration::from_secs(2);

/// Binds the health listener, before anything else happens, so that a port conflict is
/// found at once.
///
/// # Errors
///
/// The address cannot be bound.
pub async fn bind_health(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// How the agent stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ShutdownReport {
    /// Tunnels open when the drain began.
    pub open_at_start: usize,
    /// Of those, cut when the grace period ran out.
    pub cut: usize,
}

/// Runs the agent until `shutdown` is cancelled, then drains. The health listener, when
/// given, serves `metrics` (the installed Prometheus handle) too.
///
/// # Errors
///
/// The agent has no usable identity and cannot get one ([`EnrollError`]); each variant says
/// what the operator must do.
pub async fn run(
    config: Config,
    health: Option<TcpListener>,
    metrics: Option<PrometheusHandle>,
    token: Option<JoinToken>,
    shutdown: CancellationToken,
) -> Result<ShutdownReport, EnrollError> {
    let config = Arc::new(config);
    let state = Arc::new(health::State::default());
    let stop_health = CancellationToken::new();
    let health_task = health.map(|listener| {
        if let Ok(addr) = listener.local_addr() {
            tracing::info!(listener = "health", %addr, "listening");
        }
        let admin = health::admin(state.clone(), metrics);
        tokio::spawn(admin.serve(listener, stop_health.clone()))
    });
    let stop_health = async move {
        stop_health.cancel();
        if let Some(task) = health_task {
            let _ = task.await;
        }
    };

    if config.resources.is_empty() {
        tracing::warn!("no [[resources]] configured: this agent serves nothing");
    }
    let joined = shutdown
        .run_until_cancelled(enroll::load_or_join(&config, token.as_ref()))
        .await;
    let (creds, fresh) = match joined {
        Some(Ok(joined)) => joined,
        Some(Err(e)) => {
            stop_health.await;
            return Err(e);
        }
        None => {
            stop_health.await;
            tracing::info!("shutdown complete: stopped before joining");
            return Ok(ShutdownReport::default());
        }
    };
    let tls = match Tls::new(&config, &creds) {
        Ok(tls) => tls,
        Err(e) => {
            stop_health.await;
            return Err(e);
        }
    };
    tracing::info!(
        agent_id = %creds.agent_id,
        name = %creds.name,
        fresh,
        data_dir = %config.data_dir.display(),
        "joined"
    );
    creds.log_validity();
    state.joined.store(true, Ordering::Release);
    let (tls_tx, tls_rx) = watch::channel(Arc::new(tls));

    let stop_stream = CancellationToken::new();
    let stop_background = CancellationToken::new();
    let (ends_tx, ends_rx) = mpsc::channel(tunnel::ENDS_QUEUE);
    let tunnels = tunnel::Tunnels::new(config.clone(), tls_rx.clone(), ends_tx);
    let stop_ends = CancellationToken::new();
    let ends = tokio::spawn(tunnel::report_ends(
        tls_rx.clone(),
        ends_rx,
        stop_ends.clone(),
    ));
    let stream = tokio::spawn(commands::follow(
        tls_rx.clone(),
        tunnels.clone(),
        state.connected.clone(),
        stop_stream.clone(),
    ));
    let reports = tokio::spawn(heartbeat::report_forever(
        config.clone(),
        tls_rx,
        tunnels.clone(),
        stop_background.clone(),
    ));
    let renewals = tokio::spawn(enroll::renew_forever(
        config.clone(),
        creds,
        tls_tx,
        stop_background.clone(),
    ));

    shutdown.cancelled().await;
    // 1. Readiness off.
    state.draining.store(true, Ordering::Release);
    // 2. Stop the command stream: no new dial commands, so no new tunnels.
    stop_stream.cancel();
    let _ = stream.await;
    // 3. Stop reporting and renewing; presence expires on its own.
    stop_background.cancel();
    let _ = reports.await;
    let _ = renewals.await;
    let open = tunnels.open();
    tracing::info!(
        open,
        grace_ms = enroll::millis(config.limits.shutdown_grace),
        "shutdown: command stream closed, draining tunnels"
    );
    // 4. Drain under the grace period, 5. then cut what is left.
    let drained = tunnels.drain(config.limits.shutdown_grace).await;
    // 6. The tunnels' ends reach the API, for a moment at most.
    stop_ends.cancel();
    if tokio::time::timeout(ENDS_FLUSH, ends).await.is_err() {
        tracing::warn!("shutdown: the API did not take every session's end in time");
    }
    stop_health.await;
    // 7. Report.
    let report = ShutdownReport {
        open_at_start: drained.open_at_start,
        cut: drained.cut,
    };
    let finished = report.open_at_start - report.cut.min(report.open_at_start);
    if report.cut == 0 {
        tracing::info!(
            finished,
            cut = 0,
            "shutdown complete: every tunnel finished"
        );
    } else {
        tracing::warn!(
            finished,
            cut = report.cut,
            "shutdown complete: grace period ran out, open tunnels were cut"
        );
    }
    Ok(report)
}

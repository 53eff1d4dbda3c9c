//! The BAMF bridge (`bamf-bridge`): the front door every client and agent connection enters
//! through, and (in a later milestone) the mTLS tunnel relay.
//!
//! The front door peeks the TLS ClientHello, reads the server name, and splices the still
//! encrypted connection to this bridge's own handler, to a peer bridge, or to a static
//! backend such as the API. It never terminates TLS.
//!
//! # Layout
//!
//! - [`config`]: TOML file and flags → typed [`config::Config`]; every problem reported at once.
//! - [`route`]: server name → [`route::Route`] (local, peer, static, default, reject).
//! - [`detect`]: read a ClientHello off a socket under the size cap.
//! - `tunnel`: the tunnel relay's pairing of client and agent sides ([`tunnel::Pairing`]);
//!   the bytes are copied by [`bamf_relay`], as the front door's are.
//! - `frontdoor`: one connection from accept to close; its [`Outcome`].
//! - [`metrics`]: the bridge's Prometheus metrics.
//!
//! The accept loops (connection limit, error back-off) and the admin listener (`/metrics`,
//! `/health`, `/ready`) are [`bamf_runtime`]'s, shared with the other binaries.
//!
//! [`run`] ties them together and owns the shutdown order: readiness off, stop accepting,
//! drain under a grace timeout, cut what is left, report.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bamf_runtime::accept::{self, Accept};
use bamf_runtime::admin::Admin;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub mod config;
pub mod control;
pub mod detect;
mod frontdoor;
pub mod metrics;
pub mod route;
pub mod tunnel;

pub use frontdoor::Outcome;

/// Helpers shared by this crate's unit tests.
#[cfg(test)]
pub(crate) mod testing {
    use tokio::net::{TcpListener, TcpStream};

    /// Two ends of a fresh loopback TCP connection: (connecting side, accepted side).
    pub(crate) async fn tcp_pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let a = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (b, _) = listener.accept().await.unwrap();
        a.set_nodelay(true).unwrap();
        (a, b)
    }
}

use crate::config::Config;
use crate::frontdoor::Shared;
use crate::route::{Entry, Router};

/// Kernel accept queue length. Connection bursts (a fleet of agents reconnecting) should
/// queue in the kernel rather than be refused; the connection limit still applies on accept.
const LISTEN_BACKLOG: u32 = 4096;

/// After the grace period, how long cut connections get to finish their bookkeeping.
const CUT_WAIT: Duration = Duration::from_secs(2);

/// Why the bridge could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A listener could not be bound.
    #[error("cannot listen on {addr} ({which}): {source}")]
    Bind {
        /// Which listener.
        which: &'static str,
        /// The address.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
}

/// The bridge's bound sockets, bound before [`run`] so tests and callers can learn ports.
#[derive(Debug)]
pub struct Listeners {
    /// The public front door.
    pub front: TcpListener,
    /// Connections forwarded by peers.
    pub peer: Option<TcpListener>,
    /// Metrics, health and readiness.
    pub admin: Option<TcpListener>,
}

impl Listeners {
    /// Binds every listener the configuration names.
    ///
    /// # Errors
    ///
    /// [`StartError::Bind`] names the listener and address that failed.
    pub fn bind(config: &Config) -> Result<Self, StartError> {
        Ok(Self {
            front: bind("front", config.listen)?,
            peer: config.peer_listen.map(|a| bind("peer", a)).transpose()?,
            admin: config.metrics.map(|a| bind("metrics", a)).transpose()?,
        })
    }
}

fn bind(which: &'static str, addr: SocketAddr) -> Result<TcpListener, StartError> {
    let err = |source| StartError::Bind {
        which,
        addr,
        source,
    };
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
    .map_err(err)?;
    socket.set_reuseaddr(true).map_err(err)?;
    socket.bind(addr).map_err(err)?;
    socket.listen(LISTEN_BACKLOG).map_err(err)
}

/// How a shutdown ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShutdownReport {
    /// Connections open when shutdown began.
    pub open_at_start: usize,
    /// Connections still open when the grace period ran out, and so cut.
    pub cut: usize,
}

/// How long, after the drain, queued session reports get to reach the API.
const REPORT_FLUSH: Duration = Duration::from_secs(3);

/// Gets the bridge's certificate for the tunnel relay (stored, or by joining with
/// `join_token`), retrying while the API is unreachable for up to `patience`. `None` when
/// the configuration has no tunnel relay.
///
/// # Errors
///
/// [`control::EnrollError`] when the API refuses, or is still unreachable after `patience`.
pub async fn enroll(
    config: &Config,
    join_token: Option<&str>,
    patience: Duration,
) -> Result<Option<control::Credentials>, control::EnrollError> {
    let (Some(tunnel), Some(ordinal)) = (&config.tunnel, config.ordinal()) else {
        return Ok(None);
    };
    let deadline = tokio::time::Instant::now() + patience;
    let mut wait = Duration::from_millis(250);
    loop {
        match control::enroll(tunnel, ordinal, join_token).await {
            Ok(c) => return Ok(Some(c)),
            Err(control::EnrollError::Join(e))
                if e.status().is_none() && tokio::time::Instant::now() + wait < deadline =>
            {
                tracing::warn!(error = %e, "the API is not reachable yet; retrying");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(5));
            }
            Err(e) => return Err(e),
        }
    }
}

/// Runs the bridge on bound `listeners` until `shutdown` is cancelled, then drains.
///
/// `metrics` is the installed Prometheus handle, if any (the admin listener serves it);
/// `credentials` (from [`enroll`]) turn on the tunnel relay.
///
/// # Errors
///
/// The tunnel relay cannot be set up from `credentials`.
pub async fn run(
    config: Config,
    listeners: Listeners,
    metrics: Option<PrometheusHandle>,
    credentials: Option<control::Credentials>,
    shutdown: CancellationToken,
) -> Result<ShutdownReport, String> {
    let cut = CancellationToken::new();
    let stop_control = CancellationToken::new();
    let carriers = Arc::new(bamf_relay::Carriers::new(config.splice));
    let (relay, control) = match (credentials, &config.tunnel, config.ordinal()) {
        (Some(credentials), Some(tunnel), Some(ordinal)) => {
            let slot = Arc::new(tunnel::CertSlot::new(tunnel::certified_key(
                &credentials.pair.cert_pem,
                &credentials.pair.key_pem,
            )?));
            let tls = tunnel::server_config(&credentials.ca_pem, slot.clone())?;
            let (events, queue) = tokio::sync::mpsc::channel(control::REPORT_QUEUE);
            let relay = Arc::new(tunnel::Pairing::new(
                tunnel::PairingSettings {
                    ordinal,
                    tls,
                    match_timeout: tunnel.match_timeout,
                    idle_timeout: config.limits.idle_timeout,
                    max_pending: tunnel.max_pending,
                    carriers: carriers.clone(),
                },
                events,
                cut.clone(),
            ));
            let control = control::start(
                tunnel,
                ordinal,
                credentials,
                slot,
                relay.clone(),
                queue,
                stop_control.clone(),
            )
            .map_err(|e| e.to_string())?;
            (Some(relay), Some(control))
        }
        _ => (None, None),
    };
    let router = Router::new(config.routes);
    for (host, backend) in router.describe() {
        tracing::info!(%host, %backend, "route");
    }
    let shared = Arc::new(Shared {
        router,
        limits: config.limits.clone(),
        pool: carriers,
        bytes: metrics::frontdoor_bytes(),
        cut: cut.clone(),
        relay,
    });
    let connections = TaskTracker::new();
    let ready = Arc::new(AtomicBool::new(true));
    let stop_accepting = CancellationToken::new();
    let stop_admin = CancellationToken::new();

    // One limit across both listeners: a slot is a connection, whichever door it came in by.
    let accept = Accept {
        stop: stop_accepting.clone(),
        tasks: connections.clone(),
        slots: Some(Arc::new(Semaphore::new(
            config.limits.max_connections.get(),
        ))),
    };
    let mut accept_loops = Vec::new();
    for (listener, entry) in std::iter::once((listeners.front, Entry::Front))
        .chain(listeners.peer.map(|l| (l, Entry::Peer)))
    {
        if let Ok(addr) = listener.local_addr() {
            tracing::info!(listener = entry.as_str(), %addr, "listening");
        }
        let shared = shared.clone();
        accept_loops.push(tokio::spawn(accept::serve(
            listener,
            accept.clone(),
            move |_| metrics::accept_error(entry),
            move |stream, peer| Some(frontdoor::serve(stream, peer, entry, shared.clone())),
        )));
    }
    let admin = listeners.admin.map(|l| {
        if let Ok(addr) = l.local_addr() {
            tracing::info!(listener = "metrics", %addr, "listening");
        }
        let ready = ready.clone();
        let admin = Admin::new(
            move || {
                if ready.load(Ordering::Acquire) {
                    Ok(())
                } else {
                    Err("draining")
                }
            },
            metrics,
        );
        tokio::spawn(admin.serve(l, stop_admin.clone()))
    });

    shutdown.cancelled().await;
    // 1. Readiness off, so load balancers stop sending before we stop accepting, and the
    //    API told at once (not at the next heartbeat) to place no new session here.
    ready.store(false, Ordering::Release);
    if let Some(control) = &control {
        control.announce_draining().await;
    }
    // 2. Stop accepting; the listeners close when their loops end.
    stop_accepting.cancel();
    for l in accept_loops {
        let _ = l.await;
    }
    // 3. Move tunnels: their clients and agents attach again through other bridges (the
    //    API places nothing here any more), so none waits out the grace period.
    if let Some(relay) = &shared.relay {
        let moved = relay.move_tunnels();
        tracing::info!(
            tunnels = moved,
            "shutdown: live tunnels closed to move elsewhere"
        );
    }
    let open_at_start = connections.len();
    tracing::info!(
        open = open_at_start,
        grace_ms = u64::try_from(config.limits.shutdown_grace.as_millis()).unwrap_or(u64::MAX),
        "shutdown: stopped accepting, draining"
    );
    // 4. Drain under the grace timeout, 5. then cut what is left.
    connections.close();
    let mut cut_count = 0;
    if tokio::time::timeout(config.limits.shutdown_grace, connections.wait())
        .await
        .is_err()
    {
        cut_count = connections.len();
        cut.cancel();
        let _ = tokio::time::timeout(CUT_WAIT, connections.wait()).await;
    }
    // Session end reports queued during the drain get a moment to reach the API.
    stop_control.cancel();
    if let Some(control) = control
        && tokio::time::timeout(REPORT_FLUSH, control.reporter)
            .await
            .is_err()
    {
        tracing::warn!("shutdown: some session reports could not be delivered");
    }
    stop_admin.cancel();
    if let Some(admin) = admin {
        let _ = admin.await;
    }
    // 6. Report.
    let report = ShutdownReport {
        open_at_start,
        cut: cut_count,
    };
    if cut_count == 0 {
        tracing::info!(
            drained = open_at_start,
            "shutdown complete: every connection finished"
        );
    } else {
        tracing::warn!(
            drained = open_at_start - cut_count.min(open_at_start),
            cut = cut_count,
            "shutdown complete: grace period ran out, open connections were cut"
        );
    }
    Ok(report)
}

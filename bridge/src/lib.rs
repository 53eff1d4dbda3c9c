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
//! - [`relay`]: splice (or copy) both ways with borrowed pipes or buffers, idle deadline and
//!   half-close.
//! - `frontdoor`: one connection from accept to close; its [`Outcome`].
//! - `listener`: accept loops with a connection limit and error back-off.
//! - `metrics`: Prometheus metrics and the admin listener (`/metrics`, `/health`, `/ready`).
//!
//! [`run`] ties them together and owns the shutdown order: readiness off, stop accepting,
//! drain under a grace timeout, cut what is left, report.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub mod config;
pub mod detect;
mod frontdoor;
mod listener;
pub mod metrics;
pub mod relay;
pub mod route;

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
use crate::route::Entry;

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

/// Runs the bridge on bound `listeners` until `shutdown` is cancelled, then drains.
///
/// `metrics` is the installed Prometheus handle, if any (the admin listener serves it).
pub async fn run(
    config: Config,
    listeners: Listeners,
    metrics: Option<PrometheusHandle>,
    shutdown: CancellationToken,
) -> ShutdownReport {
    let cut = CancellationToken::new();
    let shared = Arc::new(Shared {
        router: config.router,
        limits: config.limits.clone(),
        pool: relay::Carriers::new(config.splice),
        cut: cut.clone(),
    });
    let slots = Arc::new(Semaphore::new(config.limits.max_connections.get()));
    let connections = TaskTracker::new();
    let ready = Arc::new(AtomicBool::new(true));
    let stop_accepting = CancellationToken::new();
    let stop_admin = CancellationToken::new();

    let mut accept_loops = Vec::new();
    for (listener, entry) in std::iter::once((listeners.front, Entry::Front))
        .chain(listeners.peer.map(|l| (l, Entry::Peer)))
    {
        if let Ok(addr) = listener.local_addr() {
            tracing::info!(listener = entry.as_str(), %addr, "listening");
        }
        accept_loops.push(tokio::spawn(listener::accept_loop(
            listener,
            entry,
            shared.clone(),
            slots.clone(),
            connections.clone(),
            stop_accepting.clone(),
        )));
    }
    let admin = listeners.admin.map(|l| {
        if let Ok(addr) = l.local_addr() {
            tracing::info!(listener = "metrics", %addr, "listening");
        }
        tokio::spawn(metrics::serve_admin(
            l,
            metrics,
            ready.clone(),
            stop_admin.clone(),
        ))
    });

    shutdown.cancelled().await;
    // 1. Readiness off, so load balancers stop sending before we stop accepting.
    ready.store(false, Ordering::Release);
    // 2. Stop accepting; the listeners close when their loops end.
    stop_accepting.cancel();
    for l in accept_loops {
        let _ = l.await;
    }
    let open_at_start = connections.len();
    tracing::info!(
        open = open_at_start,
        grace_ms = u64::try_from(config.limits.shutdown_grace.as_millis()).unwrap_or(u64::MAX),
        "shutdown: stopped accepting, draining"
    );
    // 3. Drain under the grace timeout, 4. then cut what is left.
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
    stop_admin.cancel();
    if let Some(admin) = admin {
        let _ = admin.await;
    }
    // 5. Report.
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
    report
}

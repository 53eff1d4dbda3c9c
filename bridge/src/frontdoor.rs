//! One front-door connection, start to end: detect the hello under one deadline, route it,
//! connect upstream under another, replay the buffered bytes, relay until done.
//!
//! Every connection ends in exactly one [`Outcome`], which is counted and logged once here.

use std::net::SocketAddr;
use std::sync::Arc;

use bamf_proto::alert::{self, AlertDescription};
use bamf_proto::proxy_v2;
use bamf_proto::sni::HelloError;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout, timeout_at};
use tokio_util::sync::CancellationToken;

use crate::config::{HostPort, Limits};
use crate::detect::{self, DetectError};
use crate::metrics;
use crate::route::{Entry, Route, Router};
use bamf_relay::{Carriers, Meters, RelayEnd, Side, Transferred, relay_sockets};

/// What every connection task shares.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) router: Router,
    pub(crate) limits: Limits,
    pub(crate) pool: std::sync::Arc<Carriers>,
    /// Front-door byte counters, added to while bytes flow.
    pub(crate) bytes: Meters,
    /// Cancelled when the shutdown grace runs out: connections still open are cut.
    pub(crate) cut: CancellationToken,
    /// The tunnel relay for this bridge's own name, when configured.
    pub(crate) relay: Option<Arc<crate::tunnel::Pairing>>,
}

/// How a connection ended. The names are stable: they are metric label values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Relayed until both sides closed.
    Closed,
    /// Relayed, then idle for the idle timeout.
    IdleTimeout,
    /// Relayed, then a read or write on the client side failed.
    ClientError,
    /// Relayed, then a read or write on the upstream side failed.
    UpstreamError,
    /// The client closed (or failed) before completing a hello.
    ClientClosed,
    /// No complete hello within the detect timeout.
    DetectTimeout,
    /// The first bytes were not TLS.
    NotTls,
    /// The hello was larger than the limit.
    TooLarge,
    /// The hello broke the protocol.
    Malformed,
    /// No route for the name (or no name) and the default is to reject.
    Rejected,
    /// The upstream refused the connection.
    UpstreamRefused,
    /// The upstream did not accept within the connect timeout.
    UpstreamTimeout,
    /// The upstream could not be reached otherwise (name did not resolve, unreachable…).
    UpstreamUnreachable,
    /// Still open when the shutdown grace ran out.
    Shutdown,
    /// A tunnel connection refused by the relay (certificate, pinning, session).
    TunnelRefused,
    /// A tunnel side whose other side never came.
    MatchTimeout,
}

impl Outcome {
    /// Label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Closed => "closed",
            Self::IdleTimeout => "idle_timeout",
            Self::ClientError => "client_error",
            Self::UpstreamError => "upstream_error",
            Self::ClientClosed => "client_closed",
            Self::DetectTimeout => "detect_timeout",
            Self::NotTls => "not_tls",
            Self::TooLarge => "too_large",
            Self::Malformed => "malformed",
            Self::Rejected => "rejected",
            Self::UpstreamRefused => "upstream_refused",
            Self::UpstreamTimeout => "upstream_timeout",
            Self::UpstreamUnreachable => "upstream_unreachable",
            Self::Shutdown => "shutdown",
            Self::TunnelRefused => "tunnel_refused",
            Self::MatchTimeout => "match_timeout",
        }
    }
}

/// What one connection did, for the access log and metrics.
struct Report {
    outcome: Outcome,
    route: &'static str,
    moved: Transferred,
    detail: Option<String>,
}

impl Report {
    fn early(outcome: Outcome) -> Self {
        Self {
            outcome,
            route: "none",
            moved: Transferred::default(),
            detail: None,
        }
    }
}

/// Serves one accepted connection to its end.
pub(crate) async fn serve(stream: TcpStream, peer: SocketAddr, entry: Entry, shared: Arc<Shared>) {
    let _active = metrics::Active::new(entry);
    let started = Instant::now();
    let handled = tokio::select! {
        handled = handle(&stream, peer, entry, &shared, started) => handled,
        () = shared.cut.cancelled() => Handled::Done(Report::early(Outcome::Shutdown)),
    };
    let report = match (handled, &shared.relay) {
        (Handled::Done(report), _) => report,
        // The relay ends its tunnels itself at the cut, so their end is reported. Boxed: the
        // relay's handshake state is large, and every connection task (most of them
        // passthrough) would otherwise reserve room for it.
        (Handled::Tunnel(buffered), Some(relay)) => {
            tunnel_report(Box::pin(relay.serve(stream, buffered, peer)).await)
        }
        (Handled::Tunnel(_), None) => Report::early(Outcome::Rejected),
    };
    metrics::connection_ended(entry, report.route, report.outcome.as_str());
    tracing::info!(
        target: "bamf_bridge::access",
        listener = entry.as_str(),
        %peer,
        route = report.route,
        outcome = report.outcome.as_str(),
        bytes_up = report.moved.up,
        bytes_down = report.moved.down,
        duration_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
        detail = report.detail.as_deref(),
        "connection closed"
    );
}

/// What the front door did with a connection: finished with it, or found it is a tunnel
/// for this bridge (with the bytes read so far, to replay into the TLS handshake).
enum Handled {
    Done(Report),
    Tunnel(Vec<u8>),
}

fn tunnel_report(outcome: crate::tunnel::Outcome) -> Report {
    use crate::tunnel::{End, Outcome as T};
    let mut report = Report::early(Outcome::Closed);
    report.route = "tunnel";
    match outcome {
        T::Refused(reason) => {
            report.outcome = Outcome::TunnelRefused;
            report.detail = Some(reason.to_owned());
        }
        T::MatchTimeout => report.outcome = Outcome::MatchTimeout,
        T::Joined => {}
        T::Relayed { up, down, end } => {
            report.moved = Transferred { up, down };
            report.outcome = match end {
                End::Closed | End::Killed => Outcome::Closed,
                End::IdleTimeout => Outcome::IdleTimeout,
                End::Shutdown | End::Drained => Outcome::Shutdown,
                End::ClientError => Outcome::ClientError,
                End::AgentError => Outcome::UpstreamError,
                End::TargetUnreachable => Outcome::UpstreamUnreachable,
            };
            report.detail = Some(end.as_str().to_owned());
        }
    }
    report
}

/// Detects, routes and relays, or hands a tunnel connection back with its buffered hello.
async fn handle(
    stream: &TcpStream,
    peer: SocketAddr,
    entry: Entry,
    shared: &Shared,
    started: Instant,
) -> Handled {
    let limits = &shared.limits;
    let detected = timeout_at(
        started + limits.detect_timeout,
        detect::client_hello(stream, limits.max_hello_size),
    )
    .await;
    let detected = match detected {
        Ok(Ok(d)) => d,
        Err(_) => return Handled::Done(Report::early(Outcome::DetectTimeout)),
        Ok(Err(e)) => {
            let outcome = match &e {
                DetectError::Closed | DetectError::Io(_) => Outcome::ClientClosed,
                DetectError::Hello(HelloError::NotTls) => Outcome::NotTls,
                DetectError::Hello(HelloError::TooLarge) => {
                    send_alert(stream, AlertDescription::DecodeError);
                    Outcome::TooLarge
                }
                DetectError::Hello(HelloError::Malformed(_)) => {
                    send_alert(stream, AlertDescription::DecodeError);
                    Outcome::Malformed
                }
                DetectError::Hello(_) => Outcome::Malformed,
            };
            let mut report = Report::early(outcome);
            report.detail = Some(e.to_string());
            return Handled::Done(report);
        }
    };
    metrics::detected(entry, started.elapsed());

    let server_name = detected.hello.server_name;
    let route = shared.router.route(entry, server_name.as_ref());
    let kind = route.kind();
    let upstream = match route {
        Route::Local(u)
        | Route::Static(u)
        | Route::Default(u)
        | Route::Peer { upstream: u, .. } => u,
        Route::Tunnel => return Handled::Tunnel(detected.buffered),
        Route::Reject => {
            send_alert(stream, AlertDescription::UnrecognizedName);
            let mut report = Report::early(Outcome::Rejected);
            report.route = kind;
            report.detail = Some(match &server_name {
                Some(name) => format!("no route for {name}"),
                None => "no server name".to_owned(),
            });
            return Handled::Done(report);
        }
    };
    let mut report = Report {
        outcome: Outcome::Closed,
        route: kind,
        moved: Transferred::default(),
        detail: None,
    };

    let connected = timeout(limits.connect_timeout, connect(&upstream.addr)).await;
    let mut upstream_stream = match connected {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            send_alert(stream, AlertDescription::InternalError);
            report.outcome = if e.kind() == std::io::ErrorKind::ConnectionRefused {
                Outcome::UpstreamRefused
            } else {
                Outcome::UpstreamUnreachable
            };
            report.detail = Some(format!("{}: {e}", upstream.addr));
            return Handled::Done(report);
        }
        Err(_) => {
            send_alert(stream, AlertDescription::InternalError);
            report.outcome = Outcome::UpstreamTimeout;
            report.detail = Some(upstream.addr.to_string());
            return Handled::Done(report);
        }
    };
    // Latency matters more than packet count for interactive sessions.
    let _ = stream.set_nodelay(true);

    // Replay: optional PROXY header, then every byte read from the client, in one write.
    let mut head = Vec::new();
    if upstream.proxy_protocol {
        let destination = stream.local_addr().unwrap_or(peer);
        proxy_v2::Header {
            source: peer,
            destination,
            authority: server_name,
        }
        .encode(&mut head);
    }
    let replayed = detected.buffered.len() as u64;
    if head.is_empty() {
        head = detected.buffered;
    } else {
        head.extend_from_slice(&detected.buffered);
        drop(detected.buffered);
    }
    match timeout(limits.idle_timeout, upstream_stream.write_all(&head)).await {
        Ok(Ok(())) => shared.bytes.up.increment(replayed),
        Ok(Err(e)) => {
            report.outcome = Outcome::UpstreamError;
            report.detail = Some(e.to_string());
            return Handled::Done(report);
        }
        Err(_) => {
            report.outcome = Outcome::IdleTimeout;
            return Handled::Done(report);
        }
    }
    drop(head);

    // The front door's task is cut by its caller at the grace's end; the relay needs no stop.
    let (end, mut moved) = relay_sockets(
        stream,
        &upstream_stream,
        limits.idle_timeout,
        &shared.pool,
        &shared.bytes,
        std::future::pending(),
    )
    .await;
    moved.up += replayed;
    report.moved = moved;
    report.outcome = match end {
        RelayEnd::Finished => Outcome::Closed,
        RelayEnd::IdleTimeout => Outcome::IdleTimeout,
        RelayEnd::Stopped => Outcome::Shutdown,
        RelayEnd::Failed(side, e) => {
            report.detail = Some(e.to_string());
            match side {
                Side::Client => Outcome::ClientError,
                Side::Upstream => Outcome::UpstreamError,
            }
        }
    };
    Handled::Done(report)
}

/// Connects to an upstream: an IP directly, a name through the resolver (each address in
/// turn, as peers behind a headless Service may have several).
async fn connect(addr: &HostPort) -> std::io::Result<TcpStream> {
    let stream = addr.connect().await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// Best effort: the socket's send buffer is empty at this point, so a non-blocking write of
/// seven bytes either goes out at once or the client is gone. Never waits on the peer.
fn send_alert(stream: &TcpStream, description: AlertDescription) {
    let _ = stream.try_write(&alert::fatal(description));
    let _ = socket2::SockRef::from(stream).shutdown(std::net::Shutdown::Write);
}

//! The tunnel relay: for this bridge's own name, terminate mutual TLS, decide from the
//! certificates alone whether the caller may use a session, pair the client with the agent,
//! and copy bytes with counters, an idle deadline and half-close.
//!
//! The rules, all local (no API call on the data path):
//! - a client presents a session certificate pinned to this bridge (`bamf://bridge/<n>`),
//!   unexpired (checked in the handshake), naming the session and the agent;
//! - an agent presents its agent certificate and then names the session in its preamble;
//! - both name the same session and the agent is the one the session names;
//! - the first to arrive waits at most the match timeout; a session pairs once.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use bamf_proto::san::{AgentId, Identity, SessionId};
use bamf_proto::tunnel::{AGENT_PREAMBLE_LEN, Target, parse_agent_preamble};
use bamf_relay::{Carriers, Meters, RelayEnd, Side, relay_streams};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio_rustls::server::TlsStream;
use tokio_util::sync::CancellationToken;

use bamf_proto::tunnel::SessionEvent as Event;

/// Deadline for the TLS handshake and the agent's preamble.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// A session id that has paired is refused again for this long (session certificates live
/// 60 s by default, so a copied one cannot open a second tunnel).
const USED_MEMORY: Duration = Duration::from_secs(600);

/// Why a tunnel connection ended, as reported and logged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// Both sides finished.
    Closed,
    /// No bytes either way for the idle timeout.
    IdleTimeout,
    /// The API said to end it (session deleted, agent or user revoked).
    Killed,
    /// The bridge shut down before it finished.
    Shutdown,
    /// A read or write on the client's side failed.
    ClientError,
    /// A read or write on the agent's side failed.
    AgentError,
    /// The agent could not reach the target: the client's side was closed at once.
    TargetUnreachable,
}

impl End {
    /// As reported.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Closed => "closed",
            Self::IdleTimeout => "idle_timeout",
            Self::Killed => "killed",
            Self::Shutdown => "shutdown",
            Self::ClientError => "client_error",
            Self::AgentError => "agent_error",
            Self::TargetUnreachable => "target_unreachable",
        }
    }
}

/// How one tunnel connection went (for the front door's log line).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Refused before pairing, with the reason.
    Refused(&'static str),
    /// Waited for the other side in vain.
    MatchTimeout,
    /// Paired; bytes up (client → agent) and down, and how it ended.
    Relayed {
        /// Client → agent.
        up: u64,
        /// Agent → client.
        down: u64,
        /// How.
        end: End,
    },
    /// This side joined a waiting partner, whose task relayed.
    Joined,
}

/// The bridge's certificate, swapped in place when it is renewed.
#[derive(Debug)]
pub struct CertSlot(ArcSwap<CertifiedKey>);

impl CertSlot {
    /// A slot holding `key`.
    pub fn new(key: CertifiedKey) -> Self {
        Self(ArcSwap::from_pointee(key))
    }

    /// Replaces the certificate; new handshakes use it at once.
    pub fn swap(&self, key: CertifiedKey) {
        self.0.store(Arc::new(key));
    }
}

impl ResolvesServerCert for CertSlot {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.load_full())
    }
}

/// Makes a [`CertifiedKey`] from PEM.
///
/// # Errors
///
/// A message naming what did not parse.
pub fn certified_key(cert_pem: &str, key_pem: &str) -> Result<CertifiedKey, String> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let chain = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| "the certificate is not PEM".to_owned())?;
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
        .map_err(|_| "the key is not PEM".to_owned())?;
    let signer = rustls::crypto::ring::sign::any_supported_type(&key)
        .map_err(|e| format!("the key: {e}"))?;
    Ok(CertifiedKey::new(chain, signer))
}

/// A server TLS configuration that requires client certificates chained to `ca_pem` and
/// answers with whatever `slot` holds.
///
/// # Errors
///
/// A message naming the problem.
pub fn server_config(
    ca_pem: &str,
    slot: Arc<CertSlot>,
) -> Result<Arc<rustls::ServerConfig>, String> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots
            .add(cert.map_err(|_| "the CA is not PEM".to_owned())?)
            .map_err(|e| e.to_string())?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()
    .map_err(|e| e.to_string())?;
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(slot);
    Ok(Arc::new(config))
}

type Stream = TlsStream<Replayed>;

/// What the second side hands the waiting first side.
struct Partner {
    stream: Stream,
    /// An agent side that could not reach the target.
    unreachable: bool,
    /// Told when the relay is over, so the partner's connection slot is held until then.
    done: oneshot::Sender<()>,
}

/// Which side is waiting, and for which agent.
struct Waiting {
    client_side: bool,
    agent: AgentId,
    deliver: oneshot::Sender<Partner>,
}

/// A live tunnel, for heartbeats and kills.
#[derive(Debug)]
struct Live {
    kill: CancellationToken,
}

/// The relay's shared state.
pub struct Relay {
    ordinal: u32,
    acceptor: tokio_rustls::TlsAcceptor,
    match_timeout: Duration,
    idle_timeout: Duration,
    max_pending: usize,
    pending: Mutex<HashMap<SessionId, Waiting>>,
    /// Sessions that may not pair (again): when, and the refusal's reason.
    used: Mutex<HashMap<SessionId, (Instant, &'static str)>>,
    live: Mutex<HashMap<SessionId, Live>>,
    events: mpsc::Sender<Event>,
    /// Ended by the bridge's shutdown cut.
    cut: CancellationToken,
    /// Copy buffers, borrowed only while bytes are in flight.
    buffers: Carriers,
    /// Tunnel byte counters, taken once.
    bytes: Meters,
}

impl std::fmt::Debug for Relay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Relay")
            .field("ordinal", &self.ordinal)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for Waiting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Waiting")
            .field("client_side", &self.client_side)
            .field("agent", &self.agent)
            .finish_non_exhaustive()
    }
}

/// The relay's settings.
#[derive(Debug, Clone)]
pub struct RelaySettings {
    /// This bridge's ordinal.
    pub ordinal: u32,
    /// Server TLS (bridge certificate, client certificates required).
    pub tls: Arc<rustls::ServerConfig>,
    /// How long one side waits for the other.
    pub match_timeout: Duration,
    /// Idle deadline for a paired tunnel.
    pub idle_timeout: Duration,
    /// Waiting sides at most.
    pub max_pending: usize,
}

impl Relay {
    /// A relay that reports session events to `events` and ends tunnels when `cut` fires.
    pub fn new(
        settings: RelaySettings,
        events: mpsc::Sender<Event>,
        cut: CancellationToken,
    ) -> Self {
        Self {
            ordinal: settings.ordinal,
            acceptor: tokio_rustls::TlsAcceptor::from(settings.tls),
            match_timeout: settings.match_timeout,
            idle_timeout: settings.idle_timeout,
            max_pending: settings.max_pending,
            pending: Mutex::default(),
            used: Mutex::default(),
            live: Mutex::default(),
            events,
            cut,
            buffers: Carriers::new(false),
            bytes: crate::metrics::tunnel_bytes(),
        }
    }

    /// Ids of the live tunnels.
    pub fn live_sessions(&self) -> Vec<SessionId> {
        self.live
            .lock()
            .map(|l| l.keys().copied().collect())
            .unwrap_or_default()
    }

    /// Ends `session` as the API asked: its live tunnel closes, a side waiting for its
    /// partner is dropped, and the session can never pair here again (its certificate may
    /// still be unexpired). Returns whether a live tunnel was closed.
    pub fn kill(&self, session: SessionId) -> bool {
        if let (Ok(mut pending), Ok(mut used)) = (self.pending.lock(), self.used.lock()) {
            pending.remove(&session);
            used.insert(session, (Instant::now(), "session ended by the API"));
        }
        let live = self.live.lock().ok();
        match live.as_ref().and_then(|l| l.get(&session)) {
            Some(t) => {
                t.kill.cancel();
                true
            }
            None => false,
        }
    }

    /// Serves one connection routed to this bridge's own name; `buffered` is what the front
    /// door read while detecting (the ClientHello), replayed into the TLS handshake.
    pub async fn serve(&self, stream: TcpStream, buffered: Vec<u8>, peer: SocketAddr) -> Outcome {
        let _ = stream.set_nodelay(true);
        let replayed = Replayed {
            head: buffered,
            at: 0,
            inner: stream,
        };
        let accept = async {
            let mut tls = self.acceptor.accept(replayed).await.ok()?;
            let identity = peer_identity(&tls)?;
            let claim = match identity {
                Identity::Client {
                    session,
                    agent,
                    bridge,
                    ..
                } => Claim {
                    session,
                    agent,
                    client_side: true,
                    bridge: Some(bridge),
                    unreachable: false,
                },
                Identity::Agent { agent } => {
                    let mut preamble = [0u8; AGENT_PREAMBLE_LEN];
                    tls.read_exact(&mut preamble).await.ok()?;
                    let (session, target) = parse_agent_preamble(&preamble).ok()?;
                    Claim {
                        session,
                        agent,
                        client_side: false,
                        bridge: None,
                        unreachable: target == Target::Unreachable,
                    }
                }
                _ => return Some(Err("wrong_certificate_kind")),
            };
            Some(Ok((tls, claim)))
        };
        let (tls, claim) = match tokio::time::timeout(HANDSHAKE_TIMEOUT, accept).await {
            Ok(Some(Ok(accepted))) => accepted,
            Ok(Some(Err(reason))) => return self.refused(peer, None, reason),
            Ok(None) => {
                return self.refused(peer, None, "handshake_failed");
            }
            Err(_) => return self.refused(peer, None, "handshake_timeout"),
        };
        if let Some(bridge) = claim.bridge
            && bridge != self.ordinal
        {
            return self.refused(peer, Some(claim.session), "pinned_to_other_bridge");
        }
        self.pair(tls, claim, peer).await
    }

    fn refused(
        &self,
        peer: SocketAddr,
        session: Option<SessionId>,
        reason: &'static str,
    ) -> Outcome {
        tracing::warn!(%peer, session = session.map(|s| s.to_string()), reason, "tunnel refused");
        crate::metrics::tunnel_refused(reason);
        Outcome::Refused(reason)
    }

    async fn pair(&self, tls: Stream, claim: Claim, peer: SocketAddr) -> Outcome {
        let session = claim.session;
        // Decide and register under one lock, so two sides arriving together cannot both
        // decide to wait. (`used` gains the session only in the arm that pairs, after the
        // other checks, hence no entry API.)
        #[allow(clippy::map_entry)]
        let decision = {
            let (Ok(mut pending), Ok(mut used)) = (self.pending.lock(), self.used.lock()) else {
                return self.refused(peer, Some(session), "internal_error");
            };
            let now = Instant::now();
            used.retain(|_, (at, _)| now.duration_since(*at) < USED_MEMORY);
            let wait = |pending: &mut HashMap<SessionId, Waiting>| {
                let (deliver, arrival) = oneshot::channel();
                pending.insert(
                    session,
                    Waiting {
                        client_side: claim.client_side,
                        agent: claim.agent,
                        deliver,
                    },
                );
                Decision::Wait(arrival)
            };
            if let Some((_, reason)) = used.get(&session) {
                Decision::Refuse(reason)
            } else {
                match pending.remove(&session) {
                    Some(w) if w.deliver.is_closed() => {
                        // The waiting side gave up just now; take its place.
                        wait(&mut pending)
                    }
                    Some(w) if w.client_side == claim.client_side => {
                        pending.insert(session, w);
                        Decision::Refuse("side_already_waiting")
                    }
                    Some(w) if w.agent != claim.agent => {
                        pending.insert(session, w);
                        Decision::Refuse("agent_mismatch")
                    }
                    Some(w) => {
                        used.insert(session, (now, "session_already_used"));
                        Decision::Deliver(w.deliver)
                    }
                    None if pending.len() >= self.max_pending => {
                        Decision::Refuse("too_many_waiting")
                    }
                    None => wait(&mut pending),
                }
            }
        };
        match decision {
            Decision::Refuse(reason) => self.refused(peer, Some(session), reason),
            Decision::Deliver(deliver) => {
                // Second side: hand the stream over and hold this connection until the end.
                let (done, finished) = oneshot::channel();
                let partner = Partner {
                    stream: tls,
                    unreachable: claim.unreachable,
                    done,
                };
                if deliver.send(partner).is_err() {
                    return self.refused(peer, Some(session), "partner_left");
                }
                let _ = finished.await;
                Outcome::Joined
            }
            Decision::Wait(arrival) => self.wait_and_relay(tls, claim, arrival, peer).await,
        }
    }

    async fn wait_and_relay(
        &self,
        tls: Stream,
        claim: Claim,
        arrival: oneshot::Receiver<Partner>,
        peer: SocketAddr,
    ) -> Outcome {
        let session = claim.session;
        crate::metrics::tunnels_waiting(1.0);
        let partner = tokio::select! {
            p = tokio::time::timeout(self.match_timeout, arrival) => p.ok().and_then(Result::ok),
            () = self.cut.cancelled() => None,
        };
        crate::metrics::tunnels_waiting(-1.0);
        let Some(partner) = partner else {
            if let Ok(mut pending) = self.pending.lock()
                // Ours only if its receiver (dropped above) is gone: a side that took our place
                // since holds a live one.
                && pending.get(&session).is_some_and(|w| w.deliver.is_closed())
            {
                pending.remove(&session);
            }
            tracing::warn!(%peer, session = %session, client_side = claim.client_side, "tunnel: the other side never came");
            crate::metrics::tunnel_refused("match_timeout");
            return Outcome::MatchTimeout;
        };
        let Partner {
            stream,
            unreachable,
            done,
        } = partner;
        let (client, agent) = if claim.client_side {
            (tls, stream)
        } else {
            (stream, tls)
        };
        let outcome = if unreachable || claim.unreachable {
            self.unreachable(session, claim.agent, client).await
        } else {
            self.relay(session, claim.agent, client, agent).await
        };
        let _ = done.send(());
        outcome
    }

    /// The agent could not reach the target: close the client's side now and say why.
    async fn unreachable(&self, session: SessionId, agent: AgentId, mut client: Stream) -> Outcome {
        use tokio::io::AsyncWriteExt;
        let _ = tokio::time::timeout(HANDSHAKE_TIMEOUT, client.shutdown()).await;
        crate::metrics::tunnel_refused("target_unreachable");
        self.report(Event::End {
            session,
            started_at_ms: None,
            at_ms: now_ms(),
            bytes_up: 0,
            bytes_down: 0,
            reason: End::TargetUnreachable.as_str().to_owned(),
        });
        tracing::warn!(session = %session, agent = %agent, "tunnel: the agent could not reach the target");
        Outcome::Relayed {
            up: 0,
            down: 0,
            end: End::TargetUnreachable,
        }
    }

    async fn relay(
        &self,
        session: SessionId,
        agent: AgentId,
        client: Stream,
        agent_side: Stream,
    ) -> Outcome {
        let kill = CancellationToken::new();
        if let Ok(mut live) = self.live.lock() {
            live.insert(session, Live { kill: kill.clone() });
        }
        let started = now_ms();
        crate::metrics::tunnel_started();
        self.report(Event::Start {
            session,
            at_ms: started,
        });
        tracing::info!(session = %session, agent = %agent, "tunnel paired");
        let stop = async {
            tokio::select! {
                () = kill.cancelled() => {}
                () = self.cut.cancelled() => {}
            }
        };
        let (relayed, moved) = relay_streams(
            client,
            agent_side,
            self.idle_timeout,
            &self.buffers,
            &self.bytes,
            stop,
        )
        .await;
        let end = match relayed {
            RelayEnd::Finished => End::Closed,
            RelayEnd::Failed(Side::Client, _) => End::ClientError,
            RelayEnd::Failed(Side::Upstream, _) => End::AgentError,
            RelayEnd::IdleTimeout => End::IdleTimeout,
            RelayEnd::Stopped if kill.is_cancelled() => End::Killed,
            RelayEnd::Stopped => End::Shutdown,
        };
        if let Ok(mut live) = self.live.lock() {
            live.remove(&session);
        }
        let (up, down) = (moved.up, moved.down);
        crate::metrics::tunnel_ended(end.as_str());
        self.report(Event::End {
            session,
            started_at_ms: Some(started),
            at_ms: now_ms(),
            bytes_up: up,
            bytes_down: down,
            reason: end.as_str().to_owned(),
        });
        tracing::info!(session = %session, agent = %agent, bytes_up = up, bytes_down = down,
            end = end.as_str(), "tunnel ended");
        Outcome::Relayed { up, down, end }
    }

    /// Queues a report for the API; when the queue is full the event is counted and logged
    /// (the queue is bounded: memory must not grow while the API is away).
    fn report(&self, event: Event) {
        if let Err(e) = self.events.try_send(event) {
            crate::metrics::report_dropped();
            tracing::error!(error = %e, "session report queue full: event dropped");
        }
    }
}

/// What an arriving side does: refuse, hand itself to the waiting side, or wait.
enum Decision {
    Refuse(&'static str),
    Deliver(oneshot::Sender<Partner>),
    Wait(oneshot::Receiver<Partner>),
}

/// What a certificate (and, for agents, the preamble) claims.
#[derive(Debug, Clone, Copy)]
struct Claim {
    session: SessionId,
    agent: AgentId,
    client_side: bool,
    bridge: Option<u32>,
    /// An agent that could not reach the target.
    unreachable: bool,
}

/// The identity in the verified client certificate.
fn peer_identity(tls: &Stream) -> Option<Identity> {
    use x509_parser::prelude::FromDer;
    let leaf = tls.get_ref().1.peer_certificates()?.first()?;
    let (_, cert) = x509_parser::certificate::X509Certificate::from_der(leaf).ok()?;
    Identity::of_certificate(&cert).ok()
}

/// Unix milliseconds now.
pub fn now_ms() -> i64 {
    i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis(),
    )
    .unwrap_or(i64::MAX)
}

/// A TCP stream that first yields the bytes the front door already read.
#[derive(Debug)]
pub struct Replayed {
    head: Vec<u8>,
    at: usize,
    inner: TcpStream,
}

impl AsyncRead for Replayed {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if self.at < self.head.len() {
            let n = (self.head.len() - self.at).min(buf.remaining());
            let at = self.at;
            buf.put_slice(&self.head[at..at + n]);
            self.at += n;
            if self.at == self.head.len() {
                self.head = Vec::new();
                self.at = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Replayed {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

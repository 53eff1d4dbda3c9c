//! Tunnels: for this bridge's own name, terminate mutual TLS, decide from the certificates
//! alone whether the caller may use a session, pair the client with the agent, hand both
//! sides over to each other, and splice the raw connections with counters, an idle deadline
//! and half-close. The bytes spliced are the end-to-end session's ciphertext: the bridge
//! holds no key to read them (see `bamf_proto::tunnel`, the handover).
//!
//! - [`accept`]: the handshake, what a side claims, the bridge's half of the handover;
//! - `registry`: waiting sides, used and live sessions;
//! - [`Pairing`]: the service tying them together; the splice is `bamf_relay`'s.
//!
//! The rules, all local (no API call on the data path):
//! - a client presents a session certificate pinned to this bridge (`bamf://bridge/<n>`),
//!   unexpired (checked in the handshake), naming the session and the agent;
//! - an agent presents its agent certificate and then names the session in its preamble;
//! - both name the same session and the agent is the one the session names;
//! - the first to arrive waits at most the match timeout; a session pairs once.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bamf_proto::san::{AgentId, SessionId};
use bamf_proto::tunnel::Handover;
use bamf_relay::{Carriers, Meters, RelayEnd, Side, relay_sockets};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use bamf_proto::tunnel::SessionEvent as Event;

pub mod accept;
pub(crate) mod registry;

pub use accept::{CertSlot, Replayed, certified_key, server_config};
use accept::{Claim, Stream, accept, hand_over};
use registry::{Decision, Partner, Registry};

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
    /// The bridge drains: the tunnel was closed so that its sides attach again through
    /// another bridge.
    Drained,
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
            Self::Drained => "drained",
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

/// Where a connection stands once the short-lived part (TLS, pairing, handover) is over.
enum Prepared {
    /// Done: refused, timed out, or ended before any byte moved.
    Ended(Outcome),
    /// This side joined a waiting partner; told when the partner's relay is over.
    Joined(oneshot::Receiver<()>),
    /// Both sides handed over: this connection's task splices them.
    Paired(Paired),
}

/// A handed-over pair: the raw connections to splice, and the partner's slot.
struct Paired {
    session: SessionId,
    agent: AgentId,
    client: TcpStream,
    agent_side: TcpStream,
    /// Dropped when the relay ends: releases the partner's connection.
    _done: oneshot::Sender<()>,
}

/// The pairing service: accepts tunnel sides, pairs a client with its agent through the
/// registry, and copies bytes between them with the one relay.
pub struct Pairing {
    ordinal: u32,
    acceptor: tokio_rustls::TlsAcceptor,
    match_timeout: Duration,
    idle_timeout: Duration,
    sessions: Registry,
    events: mpsc::Sender<Event>,
    /// Ended by the bridge's shutdown cut.
    cut: CancellationToken,
    /// Ends live tunnels when the bridge drains, so that they move.
    drain: CancellationToken,
    /// Pipes and buffers, borrowed only while bytes are in flight (shared with the front door).
    carriers: Arc<Carriers>,
    /// Tunnel byte counters, taken once.
    bytes: Meters,
}

impl std::fmt::Debug for Pairing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pairing")
            .field("ordinal", &self.ordinal)
            .finish_non_exhaustive()
    }
}

/// The pairing service's settings.
#[derive(Debug, Clone)]
pub struct PairingSettings {
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
    /// The process's relay carriers.
    pub carriers: Arc<Carriers>,
}

impl Pairing {
    /// A pairing service that reports session events to `events` and ends tunnels when
    /// `cut` fires.
    pub fn new(
        settings: PairingSettings,
        events: mpsc::Sender<Event>,
        cut: CancellationToken,
    ) -> Self {
        Self {
            ordinal: settings.ordinal,
            acceptor: tokio_rustls::TlsAcceptor::from(settings.tls),
            match_timeout: settings.match_timeout,
            idle_timeout: settings.idle_timeout,
            sessions: Registry::new(settings.max_pending),
            events,
            cut,
            drain: CancellationToken::new(),
            carriers: settings.carriers,
            bytes: crate::metrics::tunnel_bytes(),
        }
    }

    /// Ids of the live tunnels.
    pub fn live_sessions(&self) -> Vec<SessionId> {
        self.sessions.live_sessions()
    }

    /// The bridge drains: every live tunnel closes now (reported `drained`), so that its
    /// client and agent attach again through another bridge; waiting sides are closed too.
    /// Returns how many tunnels were live.
    pub fn move_tunnels(&self) -> usize {
        let live = self.sessions.live_sessions().len();
        self.drain.cancel();
        live
    }

    /// Ends `session` as the API asked: its live tunnel closes, a side waiting for its
    /// partner is dropped, and the session can never pair here again (its certificate may
    /// still be unexpired). Returns whether a live tunnel was closed.
    pub fn kill(&self, session: SessionId) -> bool {
        self.sessions.kill(session)
    }

    /// Serves one connection routed to this bridge's own name; `buffered` is what the front
    /// door read while detecting (the ClientHello), replayed into the TLS handshake.
    pub async fn serve(&self, stream: TcpStream, buffered: Vec<u8>, peer: SocketAddr) -> Outcome {
        let _ = stream.set_nodelay(true);
        // Everything up to the splice is boxed: the TLS state is large and lives only for a
        // moment; inline, it would size every tunnel's two tasks for their whole life.
        match Box::pin(self.prepare(stream, buffered, peer)).await {
            Prepared::Ended(outcome) => outcome,
            Prepared::Joined(finished) => {
                // Hold this connection's slot until the partner's relay is over.
                let _ = finished.await;
                Outcome::Joined
            }
            Prepared::Paired(paired) => self.relay(paired).await,
        }
    }

    /// Accepts, authorizes and pairs one side; for the side that relays, hands both over.
    async fn prepare(&self, stream: TcpStream, buffered: Vec<u8>, peer: SocketAddr) -> Prepared {
        let (tls, claim) = match accept(&self.acceptor, stream, buffered).await {
            Ok(accepted) => accepted,
            Err(reason) => return Prepared::Ended(self.refused(peer, None, reason)),
        };
        if let Some(bridge) = claim.bridge
            && bridge != self.ordinal
        {
            let refused = self.refused(peer, Some(claim.session), "pinned_to_other_bridge");
            return Prepared::Ended(refused);
        }
        let session = claim.session;
        match self.sessions.decide(&claim) {
            Decision::Refuse(reason) => Prepared::Ended(self.refused(peer, Some(session), reason)),
            Decision::Deliver(deliver) => {
                // Second side: hand the stream over; the first side relays.
                let (done, finished) = oneshot::channel();
                let partner = Partner {
                    stream: tls,
                    unreachable: claim.unreachable,
                    done,
                };
                if deliver.send(partner).is_err() {
                    return Prepared::Ended(self.refused(peer, Some(session), "partner_left"));
                }
                Prepared::Joined(finished)
            }
            Decision::Wait(arrival) => self.wait_and_hand_over(tls, claim, arrival, peer).await,
        }
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

    /// First side: waits for the partner, then answers both sides and takes their raw
    /// connections (or tells the client its target is unreachable).
    async fn wait_and_hand_over(
        &self,
        tls: Stream,
        claim: Claim,
        arrival: oneshot::Receiver<Partner>,
        peer: SocketAddr,
    ) -> Prepared {
        let session = claim.session;
        crate::metrics::tunnels_waiting(1.0);
        let partner = tokio::select! {
            p = tokio::time::timeout(self.match_timeout, arrival) => p.ok().and_then(Result::ok),
            () = self.cut.cancelled() => None,
            () = self.drain.cancelled() => None,
        };
        crate::metrics::tunnels_waiting(-1.0);
        let Some(partner) = partner else {
            self.sessions.abandon(session);
            tracing::warn!(%peer, session = %session, client_side = claim.client_side, "tunnel: the other side never came");
            crate::metrics::tunnel_refused("match_timeout");
            return Prepared::Ended(Outcome::MatchTimeout);
        };
        // The partner's `done` is dropped (its connection released) with whatever ends first.
        let Partner {
            stream,
            unreachable,
            done,
        } = partner;
        let (client, agent_side) = if claim.client_side {
            (tls, stream)
        } else {
            (stream, tls)
        };
        let agent = claim.agent;
        if unreachable || claim.unreachable {
            return Prepared::Ended(self.unreachable(session, agent, client).await);
        }
        match tokio::join!(
            hand_over(client, Handover::Paired),
            hand_over(agent_side, Handover::Paired)
        ) {
            (Ok(client), Ok(agent_side)) => Prepared::Paired(Paired {
                session,
                agent,
                client,
                agent_side,
                _done: done,
            }),
            (Err(e), _) => Prepared::Ended(self.handover_failed(session, Side::Client, &e)),
            (_, Err(e)) => Prepared::Ended(self.handover_failed(session, Side::Upstream, &e)),
        }
    }

    /// The agent could not reach the target: tell the client's side and close it.
    async fn unreachable(&self, session: SessionId, agent: AgentId, client: Stream) -> Outcome {
        let _ = hand_over(client, Handover::TargetUnreachable).await;
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

    /// Splices a handed-over pair until it ends, is killed, drained or cut.
    async fn relay(&self, paired: Paired) -> Outcome {
        let Paired {
            session,
            agent,
            client,
            agent_side,
            _done,
        } = paired;
        let kill = CancellationToken::new();
        let attachment = self.sessions.go_live(session, kill.clone());
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
                () = self.drain.cancelled() => {}
            }
        };
        let (relayed, moved) = relay_sockets(
            &client,
            &agent_side,
            self.idle_timeout,
            &self.carriers,
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
            RelayEnd::Stopped if self.cut.is_cancelled() => End::Shutdown,
            RelayEnd::Stopped => End::Drained,
        };
        self.sessions.ended(session, attachment);
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

    /// A side's handover failed after pairing: the session ends before any byte moved.
    fn handover_failed(&self, session: SessionId, side: Side, e: &std::io::Error) -> Outcome {
        let end = match side {
            Side::Client => End::ClientError,
            Side::Upstream => End::AgentError,
        };
        tracing::warn!(session = %session, side = side.as_str(), error = %e, "tunnel: handover failed");
        crate::metrics::tunnel_ended(end.as_str());
        self.report(Event::End {
            session,
            started_at_ms: None,
            at_ms: now_ms(),
            bytes_up: 0,
            bytes_down: 0,
            reason: end.as_str().to_owned(),
        });
        Outcome::Relayed {
            up: 0,
            down: 0,
            end,
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The size of the future `f` returns, without running it.
    fn future_size<A, B, F: Future>(_: impl Fn(A, B) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    #[test]
    fn an_established_tunnel_keeps_small_futures() {
        let serve = future_size(|p: Arc<Pairing>, s: TcpStream| async move {
            p.serve(s, Vec::new(), SocketAddr::from(([127, 0, 0, 1], 1)))
                .await
        });
        // What every established tunnel's two tasks hold for its whole life (the TLS
        // accept, pairing and handover are boxed and gone by then).
        // Measured 8 056 bytes before the boxing, 1 408 after (debug build).
        assert!(serve < 2048, "serve future is {serve} bytes");
    }
}

//! The registry of sessions on this bridge: sides waiting for their partner, certificates
//! that paired already, sessions the API ended, and live tunnels (for heartbeats and
//! kills). Every decision about a session is taken under its locks, so two sides arriving
//! together cannot both wait.
//!
//! A session pairs once per client certificate: attaching again after its path broke takes
//! a new certificate from the API (which checks the session's key), so a copied certificate
//! cannot open a second tunnel, and a session the API ended never pairs again here.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bamf_proto::san::{AgentId, SessionId};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use super::accept::{Claim, Stream};

/// A certificate that has paired, or a session the API ended, is refused again for this
/// long (session certificates live 60 s by default).
const USED_MEMORY: Duration = Duration::from_secs(600);

/// What the second side hands the waiting first side.
pub(crate) struct Partner {
    pub(crate) stream: Stream,
    /// An agent side that could not reach the target.
    pub(crate) unreachable: bool,
    /// Told when the relay is over, so the partner's connection slot is held until then.
    pub(crate) done: oneshot::Sender<()>,
}

/// Which side is waiting, and for which agent (with the client's certificate).
struct Waiting {
    client_side: bool,
    certificate: u64,
    agent: AgentId,
    deliver: oneshot::Sender<Partner>,
}

/// A live tunnel, for heartbeats and kills; `attachment` tells a newer one of the same
/// session apart.
#[derive(Debug)]
struct Live {
    kill: CancellationToken,
    attachment: u64,
}

impl std::fmt::Debug for Waiting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Waiting")
            .field("client_side", &self.client_side)
            .field("agent", &self.agent)
            .finish_non_exhaustive()
    }
}

/// What an arriving side does: refuse, hand itself to the waiting side, or wait.
pub(crate) enum Decision {
    Refuse(&'static str),
    Deliver(oneshot::Sender<Partner>),
    Wait(oneshot::Receiver<Partner>),
}

/// The sessions of this bridge.
#[derive(Debug, Default)]
pub(crate) struct Registry {
    max_pending: usize,
    pending: Mutex<HashMap<SessionId, Waiting>>,
    /// Client certificates that paired (session, certificate): since when.
    used: Mutex<HashMap<(SessionId, u64), Instant>>,
    /// Sessions the API ended: since when.
    ended: Mutex<HashMap<SessionId, Instant>>,
    live: Mutex<HashMap<SessionId, Live>>,
    /// Attachments numbered as they go live.
    attachments: std::sync::atomic::AtomicU64,
}

impl Registry {
    /// A registry holding at most `max_pending` waiting sides.
    pub(crate) fn new(max_pending: usize) -> Self {
        Self {
            max_pending,
            ..Self::default()
        }
    }

    /// What the side making `claim` does. Decided and registered under one lock, so two
    /// sides arriving together cannot both decide to wait. (`used` gains the session only in
    /// the arm that pairs, after the other checks, hence no entry API.)
    #[allow(clippy::map_entry)]
    pub(crate) fn decide(&self, claim: &Claim) -> Decision {
        let session = claim.session;
        let (Ok(mut pending), Ok(mut used), Ok(mut ended)) =
            (self.pending.lock(), self.used.lock(), self.ended.lock())
        else {
            return Decision::Refuse("internal_error");
        };
        let now = Instant::now();
        used.retain(|_, at| now.duration_since(*at) < USED_MEMORY);
        ended.retain(|_, at| now.duration_since(*at) < USED_MEMORY);
        let wait = |pending: &mut HashMap<SessionId, Waiting>| {
            let (deliver, arrival) = oneshot::channel();
            pending.insert(
                session,
                Waiting {
                    client_side: claim.client_side,
                    certificate: claim.certificate,
                    agent: claim.agent,
                    deliver,
                },
            );
            Decision::Wait(arrival)
        };
        if ended.contains_key(&session) {
            return Decision::Refuse("session_ended");
        }
        if claim.client_side && used.contains_key(&(session, claim.certificate)) {
            return Decision::Refuse("session_already_used");
        }
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
                let certificate = if claim.client_side {
                    claim.certificate
                } else {
                    w.certificate
                };
                used.insert((session, certificate), now);
                Decision::Deliver(w.deliver)
            }
            None if pending.len() >= self.max_pending => Decision::Refuse("too_many_waiting"),
            None => wait(&mut pending),
        }
    }

    /// A side that waited in vain leaves; the entry is ours only if its receiver (dropped by
    /// the caller) is gone: a side that took our place since holds a live one.
    pub(crate) fn abandon(&self, session: SessionId) {
        if let Ok(mut pending) = self.pending.lock()
            && pending.get(&session).is_some_and(|w| w.deliver.is_closed())
        {
            pending.remove(&session);
        }
    }

    /// Ids of the live tunnels.
    pub(crate) fn live_sessions(&self) -> Vec<SessionId> {
        self.live
            .lock()
            .map(|l| l.keys().copied().collect())
            .unwrap_or_default()
    }

    /// A paired tunnel goes live; `kill` ends it. Returns its attachment number, for
    /// [`Registry::ended`].
    pub(crate) fn go_live(&self, session: SessionId, kill: CancellationToken) -> u64 {
        let attachment = self
            .attachments
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if let Ok(mut live) = self.live.lock() {
            live.insert(session, Live { kill, attachment });
        }
        attachment
    }

    /// A live tunnel ended (unless a newer attachment of its session went live since).
    pub(crate) fn ended(&self, session: SessionId, attachment: u64) {
        if let Ok(mut live) = self.live.lock()
            && live
                .get(&session)
                .is_some_and(|l| l.attachment == attachment)
        {
            live.remove(&session);
        }
    }

    /// Ends `session`: its live tunnel closes, a side waiting for its partner is dropped, and
    /// the session can never pair here again. Returns whether a live tunnel was closed.
    pub(crate) fn kill(&self, session: SessionId) -> bool {
        if let (Ok(mut pending), Ok(mut ended)) = (self.pending.lock(), self.ended.lock()) {
            pending.remove(&session);
            ended.insert(session, Instant::now());
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
}

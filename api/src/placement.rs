//! Which bridge a session goes to, and what happens to sessions whose bridge is gone.
//!
//! A session goes to the least-loaded live bridge that is not draining. The API learns of a
//! bridge's death and drain fast, without waiting out the heartbeat TTL:
//!
//! - each bridge holds a control stream (`GET /api/v1/bridges/control`) on which the API
//!   writes a keep-alive every [`CONTROL_KEEP_ALIVE`]: when the bridge dies, the write fails
//!   (or its connection closes) and the API forgets the bridge at once;
//! - a bridge announces draining with a heartbeat *before* it stops accepting.
//!
//! Sessions of a lost bridge end `bridge_lost`: [`LOST_GRACE`] after its control stream ended (so a bridge that only lost its connection, or that is finishing a drain
//! and reporting, is not cut), when its heartbeats stop for the TTL (checked every
//! heartbeat interval by every replica, from the store, so a Redis restart loses nothing),
//! and when a bridge comes back as a new process (its heartbeat's `started_at_ms`).

use std::sync::Mutex;
use std::time::Duration;

use crate::presence::BridgeStatus;

/// How often bridges heartbeat (the answer tells them), and how long one keeps a bridge
/// live (design: every 10 s, TTL 30 s).
pub const BRIDGE_HEARTBEAT: Duration = Duration::from_secs(10);
/// How long one heartbeat keeps a bridge live.
pub const BRIDGE_TTL: Duration = Duration::from_secs(30);
/// How long after its control stream ended a bridge that has not heartbeated since counts as
/// gone: one heartbeat interval. A live bridge whose stream only broke has reconnected it
/// well before (within a second; reconnecting counts as a sign of life) or heartbeated.
pub const LOST_GRACE: Duration = BRIDGE_HEARTBEAT;
/// Keep-alive period of a bridge's control stream: a dead bridge is noticed within about
/// two of these.
pub const CONTROL_KEEP_ALIVE: Duration = Duration::from_millis(500);

/// The bridge for a new session: live, not draining, least loaded (lowest ordinal first).
pub fn choose(live: Vec<BridgeStatus>) -> Option<BridgeStatus> {
    live.into_iter()
        .filter(|b| !b.draining)
        .min_by_key(|b| (b.load, b.ordinal))
}

/// Bridges whose control stream ended while this API was running, for
/// [`crate::reconcile`].
#[derive(Debug, Default)]
pub struct LostBridges {
    queue: Mutex<Vec<(u32, i64)>>,
    pub(crate) added: tokio::sync::Notify,
}

impl LostBridges {
    /// Notes that bridge `ordinal`'s control stream ended at `at_ms`.
    pub fn push(&self, ordinal: u32, at_ms: i64) {
        let mut queue = self
            .queue
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // Bounded by the bridges there are; a flapping one is listed once.
        if !queue.iter().any(|(o, _)| *o == ordinal) && queue.len() < 10_000 {
            queue.push((ordinal, at_ms));
        }
        drop(queue);
        self.added.notify_one();
    }

    pub(crate) fn take(&self) -> Vec<(u32, i64)> {
        std::mem::take(
            &mut *self
                .queue
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bridge(ordinal: u32, load: u32, draining: bool) -> BridgeStatus {
        BridgeStatus {
            ordinal,
            load,
            draining,
        }
    }

    #[test]
    fn the_least_loaded_bridge_that_is_not_draining() {
        assert_eq!(choose(vec![]), None);
        assert_eq!(choose(vec![bridge(0, 0, true)]), None);
        let live = vec![bridge(0, 0, true), bridge(1, 5, false), bridge(2, 3, false)];
        assert_eq!(choose(live).map(|b| b.ordinal), Some(2));
        let tie = vec![bridge(3, 1, false), bridge(1, 1, false)];
        assert_eq!(choose(tie).map(|b| b.ordinal), Some(1));
    }

    #[test]
    fn a_lost_bridge_is_queued_once() {
        let lost = LostBridges::default();
        lost.push(1, 10);
        lost.push(1, 20);
        lost.push(2, 30);
        assert_eq!(lost.take(), [(1, 10), (2, 30)]);
        assert!(lost.take().is_empty());
    }
}

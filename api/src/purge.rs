//! The audit retention schedule: every [`PURGE_INTERVAL`], audit events and ended sessions
//! older than the retention period are purged in batches (see the store's `retention`
//! module for what the database allows and what each batch records). On PostgreSQL one
//! replica purges at a time (an advisory lock); SQLite is a single node.

use std::time::Duration;

use crate::store::{PurgeOutcome, Store, StoreError};

/// How often the purge runs.
pub const PURGE_INTERVAL: Duration = Duration::from_secs(3600);
/// Audit events per transaction.
pub const PURGE_BATCH: u32 = 10_000;

/// What one run removed in all.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PurgeTotals {
    /// Audit events removed.
    pub events: u64,
    /// Ended sessions removed.
    pub sessions: u64,
    /// Batches (each with its checkpoint and `audit.purged` event).
    pub batches: u32,
    /// Another replica was purging: this run did nothing.
    pub busy: bool,
}

/// Purges what is older than `retention` at `now_ms`, batch after batch until nothing is
/// left or another replica holds the lock.
///
/// # Errors
///
/// [`StoreError`] from a batch; the batches before it stay done.
pub async fn purge(
    store: &Store,
    now_ms: i64,
    retention: Duration,
    batch: u32,
) -> Result<PurgeTotals, StoreError> {
    let cutoff = now_ms.saturating_sub(i64::try_from(retention.as_millis()).unwrap_or(i64::MAX));
    let mut totals = PurgeTotals::default();
    loop {
        match store.purge_audit_batch(cutoff, now_ms, batch).await? {
            PurgeOutcome::Busy => {
                totals.busy = true;
                return Ok(totals);
            }
            PurgeOutcome::Nothing => return Ok(totals),
            PurgeOutcome::Purged(done) => {
                totals.events += done.events;
                totals.sessions += done.sessions;
                totals.batches += 1;
                if done.events < u64::from(batch) {
                    return Ok(totals);
                }
            }
        }
    }
}

/// Runs [`purge`] at start and every [`PURGE_INTERVAL`] until `stop`.
pub async fn run(store: Store, retention: Duration, stop: tokio_util::sync::CancellationToken) {
    let mut tick = tokio::time::interval(PURGE_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        match purge(&store, crate::now_ms(), retention, PURGE_BATCH).await {
            Ok(t) if t.busy && t.batches == 0 => {
                tracing::debug!("audit retention: another replica is purging");
            }
            Ok(t) if t.batches > 0 => tracing::info!(
                events = t.events,
                sessions = t.sessions,
                batches = t.batches,
                "audit retention: purged audit events and ended sessions",
            ),
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(error = %e, "audit retention purge failed; retried at the next run")
            }
        }
    }
}

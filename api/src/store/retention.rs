//! Audit retention: the one way audit events leave the store.
//!
//! The database keeps audit events append-only (migration `0006_audit_retention`): a delete
//! passes its trigger only inside a purge (the `audit_retention` row's `purging` flag, set
//! and cleared within the purge's own transaction) and only for events older than the
//! cutoff, which only moves forward and is always at least a day old by the database's
//! clock. Each purge batch removes the oldest events below the cutoff and the sessions that
//! ended before it, and in the same transaction leaves a checkpoint (`audit_purges`: counts,
//! id and time range, a SHA-256 chained over every removed event) and the audit event
//! `audit.purged`, so no purge goes unrecorded.

use sqlx::Row;

use super::*;

/// The PostgreSQL advisory lock (transaction-scoped) that lets one replica purge at a time.
const PURGE_LOCK: i64 = 0x6261_6d66_6175_6469; // "bamfaudi"

/// Who the purge's audit events name.
pub const PURGE_ACTOR: &str = "system:retention";

/// What one purge batch removed, as its checkpoint records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PurgeBatch {
    /// Events older than this (Unix ms) were removed, and sessions that ended before it.
    pub cutoff_ms: i64,
    /// Audit events removed.
    pub events: u64,
    /// Lowest and highest id removed.
    pub ids: Option<(i64, i64)>,
    /// Oldest and newest `at` removed (Unix ms).
    pub times: Option<(i64, i64)>,
    /// Ended sessions removed.
    pub sessions: u64,
    /// SHA-256 (hex) over the previous checkpoint's digest and the removed events.
    pub digest: String,
}

/// The outcome of asking for a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PurgeOutcome {
    /// Another replica holds the purge lock.
    Busy,
    /// Nothing was old enough.
    Nothing,
    /// A batch was removed and recorded.
    Purged(PurgeBatch),
}

/// A purge checkpoint as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    /// When the purge ran (Unix ms).
    pub at: i64,
    /// What it removed.
    pub batch: PurgeBatch,
}

fn hash_field(ctx: &mut ring::digest::Context, field: &[u8]) {
    ctx.update(&u64::try_from(field.len()).unwrap_or(u64::MAX).to_be_bytes());
    ctx.update(field);
}

impl Store {
    /// Removes, in one transaction, at most `batch` of the oldest audit events older than
    /// `cutoff_ms` and every session that ended before it, and records the removal: a
    /// checkpoint and an `audit.purged` event at `now_ms`. On PostgreSQL only one replica
    /// purges at a time: the others get [`PurgeOutcome::Busy`].
    ///
    /// # Errors
    ///
    /// [`StoreError::Database`] (including the database refusing a cutoff less than a day
    /// old), [`StoreError::PurgeRace`] when the events to delete changed under the purge.
    pub async fn purge_audit_batch(
        &self,
        cutoff_ms: i64,
        now_ms: i64,
        batch: u32,
    ) -> Result<PurgeOutcome, StoreError> {
        let mut tx = self.begin_write().await?;
        if self.backend == Backend::Postgres {
            let locked: i32 =
                sqlx::query("SELECT CASE WHEN pg_try_advisory_xact_lock($1) THEN 1 ELSE 0 END")
                    .bind(PURGE_LOCK)
                    .fetch_one(&mut *tx)
                    .await?
                    .try_get(0)?;
            if locked == 0 {
                return Ok(PurgeOutcome::Busy);
            }
        }
        sqlx::query(
            "UPDATE audit_retention SET purging = 1, \
             cutoff_ms = CASE WHEN cutoff_ms > $1 THEN cutoff_ms ELSE $1 END WHERE id = 1",
        )
        .bind(cutoff_ms)
        .execute(&mut *tx)
        .await?;
        let rows = sqlx::query(
            "SELECT id, at, actor, kind, outcome, detail FROM audit_events \
             WHERE at < $1 ORDER BY id LIMIT $2",
        )
        .bind(cutoff_ms)
        .bind(i64::from(batch.max(1)))
        .fetch_all(&mut *tx)
        .await?;
        let previous: Option<String> =
            sqlx::query("SELECT digest FROM audit_purges ORDER BY id DESC LIMIT 1")
                .fetch_optional(&mut *tx)
                .await?
                .map(|r| r.try_get(0))
                .transpose()?;
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        hash_field(&mut ctx, previous.unwrap_or_default().as_bytes());
        let mut ids: Option<(i64, i64)> = None;
        let mut times: Option<(i64, i64)> = None;
        for row in &rows {
            let e = super::audit::audit_event(row)?;
            for field in [
                e.id.to_string().as_bytes(),
                e.event.at.to_string().as_bytes(),
                e.event.actor.as_bytes(),
                e.event.kind.as_bytes(),
                e.event.outcome.as_bytes(),
                e.event.detail.as_bytes(),
            ] {
                hash_field(&mut ctx, field);
            }
            ids = Some(ids.map_or((e.id, e.id), |(lo, hi)| (lo.min(e.id), hi.max(e.id))));
            let at = e.event.at;
            times = Some(times.map_or((at, at), |(lo, hi)| (lo.min(at), hi.max(at))));
        }
        let events = u64::try_from(rows.len()).unwrap_or(u64::MAX);
        if let Some((first, last)) = ids {
            let deleted =
                sqlx::query("DELETE FROM audit_events WHERE at < $1 AND id >= $2 AND id <= $3")
                    .bind(cutoff_ms)
                    .bind(first)
                    .bind(last)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
            if deleted != events {
                return Err(StoreError::PurgeRace);
            }
        }
        let sessions = sqlx::query("DELETE FROM sessions WHERE state = 'ended' AND ended_at < $1")
            .bind(cutoff_ms)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        sqlx::query("UPDATE audit_retention SET purging = 0 WHERE id = 1")
            .execute(&mut *tx)
            .await?;
        if events == 0 && sessions == 0 {
            // Nothing to record: the raised cutoff is dropped with the rest.
            return Ok(PurgeOutcome::Nothing);
        }
        let purged = PurgeBatch {
            cutoff_ms,
            events,
            ids,
            times,
            sessions,
            digest: bamf_proto::hex::encode(ctx.finish().as_ref()),
        };
        let count = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        sqlx::query(
            "INSERT INTO audit_purges \
             (at, cutoff_ms, events, first_id, last_id, oldest_at, newest_at, sessions, digest) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(now_ms)
        .bind(cutoff_ms)
        .bind(count(events))
        .bind(ids.map(|i| i.0))
        .bind(ids.map(|i| i.1))
        .bind(times.map(|t| t.0))
        .bind(times.map(|t| t.1))
        .bind(count(sessions))
        .bind(&purged.digest)
        .execute(&mut *tx)
        .await?;
        let detail = serde_json::json!({
            "cutoff_ms": cutoff_ms,
            "events": events,
            "first_id": ids.map(|i| i.0),
            "last_id": ids.map(|i| i.1),
            "oldest_at_ms": times.map(|t| t.0),
            "newest_at_ms": times.map(|t| t.1),
            "sessions": sessions,
            "digest": purged.digest,
        });
        sqlx::query(
            "INSERT INTO audit_events (at, actor, kind, outcome, detail) \
             VALUES ($1, $2, 'audit.purged', 'allowed', $3)",
        )
        .bind(now_ms)
        .bind(PURGE_ACTOR)
        .bind(detail.to_string())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(PurgeOutcome::Purged(purged))
    }

    /// The purge checkpoints, oldest first.
    ///
    /// # Errors
    ///
    /// [`StoreError::Database`].
    pub async fn purge_checkpoints(&self) -> Result<Vec<Checkpoint>, StoreError> {
        let rows = sqlx::query(
            "SELECT at, cutoff_ms, events, first_id, last_id, oldest_at, newest_at, sessions, \
             digest FROM audit_purges ORDER BY id",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                let pair = |a: Option<i64>, b: Option<i64>| a.zip(b);
                let count = |n: i64| u64::try_from(n).unwrap_or(0);
                Ok(Checkpoint {
                    at: r.try_get(0)?,
                    batch: PurgeBatch {
                        cutoff_ms: r.try_get(1)?,
                        events: count(r.try_get(2)?),
                        ids: pair(r.try_get(3)?, r.try_get(4)?),
                        times: pair(r.try_get(5)?, r.try_get(6)?),
                        sessions: count(r.try_get(7)?),
                        digest: r.try_get(8)?,
                    },
                })
            })
            .collect()
    }
}

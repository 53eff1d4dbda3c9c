//! The append-only audit log.

use sqlx::Row;
use sqlx::any::AnyRow;

use super::*;

/// Largest page of audit events one call returns.
pub const MAX_AUDIT_PAGE: u32 = 500;

/// An audit event to append.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewAuditEvent {
    /// Unix milliseconds.
    pub at: i64,
    /// Who acted: `user:alice`, `agent:<id>`, `bridge:3`, `anonymous:<address>`.
    pub actor: String,
    /// What happened, e.g. `auth.login`, `user.create`, `connect.denied`.
    pub kind: String,
    /// `allowed`, `denied`, `failed`.
    pub outcome: String,
    /// JSON object with the details (never secrets).
    pub detail: String,
}

/// A stored audit event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEvent {
    /// Increasing id; also the pagination cursor.
    pub id: i64,
    /// The event.
    pub event: NewAuditEvent,
}

/// Which audit events to list. Every field narrows the result; `None` means any.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditFilter {
    /// Exact actor.
    pub actor: Option<String>,
    /// Exact kind.
    pub kind: Option<String>,
    /// At or after, Unix milliseconds.
    pub since: Option<i64>,
    /// Before, Unix milliseconds.
    pub until: Option<i64>,
}

pub(super) fn audit_event(r: &AnyRow) -> Result<AuditEvent, StoreError> {
    Ok(AuditEvent {
        id: r.try_get(0)?,
        event: NewAuditEvent {
            at: r.try_get(1)?,
            actor: r.try_get(2)?,
            kind: r.try_get(3)?,
            outcome: r.try_get(4)?,
            detail: r.try_get(5)?,
        },
    })
}

/// Audit rows one statement inserts at most (five parameters each, well under the
/// databases' limits).
const ROWS_PER_INSERT: usize = 100;

/// Inserts `events` in order, in one statement per [`ROWS_PER_INSERT`] (as part of a larger
/// transaction): a batch of reports costs one round trip to the database for its events,
/// not one each, while it holds the one writer.
pub(super) async fn insert_audits(
    conn: &mut sqlx::AnyConnection,
    events: &[&NewAuditEvent],
) -> Result<(), StoreError> {
    for rows in events.chunks(ROWS_PER_INSERT) {
        let mut insert = sqlx::query(sqlx::AssertSqlSafe(format!(
            "INSERT INTO audit_events (at, actor, kind, outcome, detail) VALUES {}",
            placeholders(rows.len(), 5, 1)
        )));
        for e in rows {
            insert = insert
                .bind(e.at)
                .bind(&e.actor)
                .bind(&e.kind)
                .bind(&e.outcome)
                .bind(&e.detail);
        }
        insert.execute(&mut *conn).await?;
    }
    Ok(())
}

/// Inserts `e` (as part of a larger transaction or on its own); its id.
pub(super) async fn insert_audit(
    conn: &mut sqlx::AnyConnection,
    e: &NewAuditEvent,
) -> Result<i64, StoreError> {
    let row = sqlx::query(
        "INSERT INTO audit_events (at, actor, kind, outcome, detail) \
         VALUES ($1, $2, $3, $4, $5) RETURNING id",
    )
    .bind(e.at)
    .bind(&e.actor)
    .bind(&e.kind)
    .bind(&e.outcome)
    .bind(&e.detail)
    .fetch_one(conn)
    .await?;
    Ok(row.try_get(0)?)
}

impl Store {
    /// Appends an audit event and returns its id.
    ///
    /// # Errors
    ///
    /// [`StoreError::Database`].
    pub async fn append_audit(&self, e: &NewAuditEvent) -> Result<i64, StoreError> {
        let mut conn = self.writer.acquire().await?;
        insert_audit(&mut conn, e).await
    }

    /// Audit events matching `filter`, newest first, at most `limit` (capped at
    /// [`MAX_AUDIT_PAGE`]), strictly older than the cursor `before` (an event id). Read from
    /// the read replica when there is one.
    ///
    /// # Errors
    ///
    /// [`StoreError::Database`].
    pub async fn audit(
        &self,
        filter: &AuditFilter,
        before: Option<i64>,
        limit: u32,
    ) -> Result<Vec<AuditEvent>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, at, actor, kind, outcome, detail FROM audit_events \
             WHERE ($1 IS NULL OR actor = $1) AND ($2 IS NULL OR kind = $2) \
               AND ($3 IS NULL OR at >= $3) AND ($4 IS NULL OR at < $4) \
               AND ($5 IS NULL OR id < $5) \
             ORDER BY id DESC LIMIT $6",
        )
        .bind(filter.actor.as_deref())
        .bind(filter.kind.as_deref())
        .bind(filter.since)
        .bind(filter.until)
        .bind(before)
        .bind(i64::from(limit.clamp(1, MAX_AUDIT_PAGE)))
        .fetch_all(&self.read)
        .await?;
        rows.iter().map(audit_event).collect()
    }
}

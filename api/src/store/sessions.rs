//! Sessions: issued, paired, reported, ended.

use sqlx::Row;

use super::*;

/// A session as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    /// Its id (`bamf://session/<id>`).
    pub id: String,
    /// Who asked for it.
    pub user: String,
    /// What it reaches.
    pub resource: String,
    /// The agent serving it.
    pub agent_id: String,
    /// The bridge it is pinned to.
    pub bridge: u32,
    /// `pending` (issued), `active` (paired), `ended`.
    pub state: String,
    /// Unix milliseconds.
    pub created_at: i64,
    /// When the bridge paired both sides.
    pub started_at: Option<i64>,
    /// When it ended.
    pub ended_at: Option<i64>,
    /// Client → agent bytes.
    pub bytes_up: i64,
    /// Agent → client bytes.
    pub bytes_down: i64,
    /// Why it ended.
    pub end_reason: Option<String>,
}

/// Which sessions to list; `None` means any.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SessionFilter {
    /// Exact state.
    pub state: Option<String>,
    /// Exact user.
    pub user: Option<String>,
}

/// What a bridge reports about a session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Report {
    /// Both sides paired at `at` (Unix ms).
    Started {
        /// When.
        at: i64,
    },
    /// The tunnel closed.
    Ended {
        /// When both sides paired, if they did.
        started_at: Option<i64>,
        /// When it ended.
        at: i64,
        /// Client → agent bytes.
        bytes_up: i64,
        /// Agent → client bytes.
        bytes_down: i64,
        /// Why.
        reason: String,
    },
}

pub(super) const COLUMNS: &str = "id, user_name, resource, agent_id, bridge, state, created_at, started_at, \
                       ended_at, bytes_up, bytes_down, end_reason";

pub(super) fn session_row(r: &sqlx::any::AnyRow) -> Result<Session, StoreError> {
    Ok(Session {
        id: r.try_get(0)?,
        user: r.try_get(1)?,
        resource: r.try_get(2)?,
        agent_id: r.try_get(3)?,
        bridge: u32::try_from(r.try_get::<i64, _>(4)?).unwrap_or(u32::MAX),
        state: r.try_get(5)?,
        created_at: r.try_get(6)?,
        started_at: r.try_get(7)?,
        ended_at: r.try_get(8)?,
        bytes_up: r.try_get(9)?,
        bytes_down: r.try_get(10)?,
        end_reason: r.try_get(11)?,
    })
}

/// Ends the open sessions matching `condition` (an SQL condition on `sessions` with one text
/// parameter, `$1`) with `reason`, and returns their ids.
pub(super) async fn end_sessions_where(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    condition: &'static str,
    param: &str,
    reason: &str,
    now_ms: i64,
) -> Result<Vec<String>, StoreError> {
    let select = format!("SELECT id FROM sessions WHERE ({condition}) AND state <> 'ended'");
    let ids: Vec<String> = sqlx::query(sqlx::AssertSqlSafe(select))
        .bind(param)
        .fetch_all(&mut **tx)
        .await?
        .iter()
        .map(|r| r.try_get(0))
        .collect::<Result<_, _>>()?;
    let update = format!(
        "UPDATE sessions SET state = 'ended', ended_at = $2, end_reason = $3 \
         WHERE ({condition}) AND state <> 'ended'"
    );
    sqlx::query(sqlx::AssertSqlSafe(update))
        .bind(param)
        .bind(now_ms)
        .bind(reason)
        .execute(&mut **tx)
        .await?;
    Ok(ids)
}

/// Ids of `bridge`'s open sessions created before `before`.
pub(super) async fn open_sessions_on(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    bridge: u32,
    before: i64,
) -> Result<Vec<String>, StoreError> {
    Ok(sqlx::query(
        "SELECT id FROM sessions WHERE bridge = $1 AND state <> 'ended' AND created_at < $2",
    )
    .bind(i64::from(bridge))
    .bind(before)
    .fetch_all(&mut **tx)
    .await?
    .iter()
    .map(|r| r.try_get(0))
    .collect::<Result<_, _>>()?)
}

/// Ends the sessions `ids` (already known to be open) with `reason`.
pub(super) async fn end_by_id(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    ids: &[String],
    reason: &str,
    now_ms: i64,
) -> Result<(), StoreError> {
    for id in ids {
        sqlx::query(
            "UPDATE sessions SET state = 'ended', ended_at = $2, end_reason = $3 \
             WHERE id = $1 AND state <> 'ended'",
        )
        .bind(id)
        .bind(now_ms)
        .bind(reason)
        .execute(&mut **tx)
        .await?;
    }
    Ok(())
}

impl Store {
    /// Records a new, pending session.
    ///
    /// # Errors
    ///
    /// [`StoreError::Database`].
    pub async fn create_session(&self, s: &Session) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO sessions (id, user_name, resource, agent_id, bridge, state, created_at) \
             VALUES ($1, $2, $3, $4, $5, 'pending', $6)",
        )
        .bind(&s.id)
        .bind(&s.user)
        .bind(&s.resource)
        .bind(&s.agent_id)
        .bind(i64::from(s.bridge))
        .bind(s.created_at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// One session.
    ///
    /// # Errors
    ///
    /// [`StoreError::Database`].
    pub async fn session(&self, id: &str) -> Result<Option<Session>, StoreError> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM sessions WHERE id = $1"
        )))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(session_row).transpose()
    }

    /// Sessions matching `filter`, newest first, created before `before` (Unix ms), at most
    /// `limit`. Read from the read replica when there is one.
    ///
    /// # Errors
    ///
    /// [`StoreError::Database`].
    pub async fn sessions(
        &self,
        filter: &SessionFilter,
        before: Option<i64>,
        limit: u32,
    ) -> Result<Vec<Session>, StoreError> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM sessions WHERE ($1 IS NULL OR state = $1) \
             AND ($2 IS NULL OR user_name = $2) AND ($3 IS NULL OR created_at < $3) \
             ORDER BY created_at DESC, id LIMIT $4"
        )))
        .bind(filter.state.as_deref())
        .bind(filter.user.as_deref())
        .bind(before)
        .bind(i64::from(limit.clamp(1, super::MAX_AUDIT_PAGE)))
        .fetch_all(&self.read)
        .await?;
        rows.iter().map(session_row).collect()
    }

    /// Ends a session that has not ended (an administrator's kill); `false` when it had.
    ///
    /// # Errors
    ///
    /// [`StoreError::Database`].
    pub async fn end_session(
        &self,
        id: &str,
        reason: &str,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE sessions SET state = 'ended', ended_at = $3, end_reason = $2 \
             WHERE id = $1 AND state <> 'ended'",
        )
        .bind(id)
        .bind(reason)
        .bind(now_ms)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Applies a bridge's report about one of its own sessions; `false` when the session is
    /// unknown or pinned to another bridge. An end report keeps an earlier end reason (a
    /// kill stays a kill) but always records the byte counts.
    ///
    /// # Errors
    ///
    /// [`StoreError::Database`].
    pub async fn apply_report(
        &self,
        id: &str,
        bridge: u32,
        report: &Report,
    ) -> Result<bool, StoreError> {
        let done = match report {
            Report::Started { at } => {
                sqlx::query(
                    "UPDATE sessions SET state = CASE WHEN state = 'pending' THEN 'active' ELSE state END, \
                     started_at = COALESCE(started_at, $3) WHERE id = $1 AND bridge = $2",
                )
                .bind(id)
                .bind(i64::from(bridge))
                .bind(*at)
                .execute(&self.pool)
                .await?
            }
            Report::Ended {
                started_at,
                at,
                bytes_up,
                bytes_down,
                reason,
            } => {
                sqlx::query(
                    "UPDATE sessions SET state = 'ended', started_at = COALESCE(started_at, $3), \
                     ended_at = COALESCE(ended_at, $4), bytes_up = $5, bytes_down = $6, \
                     end_reason = COALESCE(end_reason, $7) WHERE id = $1 AND bridge = $2",
                )
                .bind(id)
                .bind(i64::from(bridge))
                .bind(*started_at)
                .bind(*at)
                .bind(*bytes_up)
                .bind(*bytes_down)
                .bind(reason)
                .execute(&self.pool)
                .await?
            }
        };
        Ok(done.rows_affected() == 1)
    }

    /// Of the live tunnels a bridge reports, those that must close now: the session is
    /// unknown or ended (killed), or its agent was deleted or its certificate revoked, or
    /// its user was deleted or disabled.
    ///
    /// # Errors
    ///
    /// [`StoreError::Database`].
    pub async fn sessions_to_kill(&self, ids: &[String]) -> Result<Vec<String>, StoreError> {
        let mut kill = Vec::new();
        for chunk in ids.chunks(500) {
            let placeholders: Vec<String> = (1..=chunk.len()).map(|i| format!("${i}")).collect();
            let sql = format!(
                "SELECT s.id FROM sessions s \
                 LEFT JOIN agents a ON a.id = s.agent_id \
                 LEFT JOIN users u ON u.name = s.user_name AND u.disabled = 0 \
                 WHERE s.id IN ({}) AND s.state <> 'ended' AND a.id IS NOT NULL \
                 AND u.name IS NOT NULL AND NOT EXISTS \
                 (SELECT 1 FROM revoked_certificates r WHERE r.serial = a.cert_serial)",
                placeholders.join(", ")
            );
            let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
            for id in chunk {
                query = query.bind(id);
            }
            let alive: Vec<String> = query
                .fetch_all(&self.pool)
                .await?
                .iter()
                .map(|r| r.try_get(0))
                .collect::<Result<_, _>>()?;
            kill.extend(chunk.iter().filter(|id| !alive.contains(id)).cloned());
        }
        Ok(kill)
    }

    /// Sessions pinned to `bridge` that ended before they paired, in the last `within_ms`
    /// (killed or revoked while pending): the bridge must refuse to pair them.
    ///
    /// # Errors
    ///
    /// [`StoreError::Database`].
    pub async fn ended_unpaired(
        &self,
        bridge: u32,
        since_ms: i64,
    ) -> Result<Vec<String>, StoreError> {
        let rows = sqlx::query(
            "SELECT id FROM sessions WHERE bridge = $1 AND state = 'ended' \
             AND started_at IS NULL AND ended_at >= $2 ORDER BY ended_at DESC LIMIT 1000",
        )
        .bind(i64::from(bridge))
        .bind(since_ms)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .iter()
            .map(|r| r.try_get(0))
            .collect::<Result<_, _>>()?)
    }

    /// Ends `bridge_lost` the open sessions on bridges that have not heartbeated since
    /// `silent_since` (and were created before it); returns their ids.
    ///
    /// # Errors
    ///
    /// [`StoreError::Database`].
    pub async fn end_sessions_of_silent_bridges(
        &self,
        silent_since: i64,
        now_ms: i64,
    ) -> Result<Vec<String>, StoreError> {
        let mut tx = self.pool.begin().await?;
        let ids: Vec<String> = sqlx::query(
            "SELECT s.id FROM sessions s JOIN bridges b ON b.ordinal = s.bridge \
             WHERE s.state <> 'ended' AND s.created_at < $1 \
             AND (b.last_seen_at IS NULL OR b.last_seen_at < $1)",
        )
        .bind(silent_since)
        .fetch_all(&mut *tx)
        .await?
        .iter()
        .map(|r| r.try_get(0))
        .collect::<Result<_, _>>()?;
        end_by_id(&mut tx, &ids, "bridge_lost", now_ms).await?;
        tx.commit().await?;
        Ok(ids)
    }

    /// Ends `bridge_lost` the open sessions of `bridge` created before `lost_at`, unless the
    /// bridge has heartbeated since; returns their ids.
    ///
    /// # Errors
    ///
    /// [`StoreError::Database`].
    pub async fn end_sessions_of_lost_bridge(
        &self,
        bridge: u32,
        lost_at: i64,
        now_ms: i64,
    ) -> Result<Vec<String>, StoreError> {
        let mut tx = self.pool.begin().await?;
        let seen: Option<i64> = sqlx::query("SELECT last_seen_at FROM bridges WHERE ordinal = $1")
            .bind(i64::from(bridge))
            .fetch_optional(&mut *tx)
            .await?
            .map(|r| r.try_get::<Option<i64>, _>(0))
            .transpose()?
            .flatten();
        if seen.is_some_and(|at| at > lost_at) {
            return Ok(Vec::new());
        }
        let ids = open_sessions_on(&mut tx, bridge, lost_at).await?;
        end_by_id(&mut tx, &ids, "bridge_lost", now_ms).await?;
        tx.commit().await?;
        Ok(ids)
    }

    /// A bridge came back as a new process started at `started_at`: its open sessions
    /// created before then, other than the `live` ones it reports, end `bridge_lost`.
    ///
    /// # Errors
    ///
    /// [`StoreError::Database`].
    pub async fn end_sessions_before_restart(
        &self,
        bridge: u32,
        started_at: i64,
        live: &[String],
        now_ms: i64,
    ) -> Result<Vec<String>, StoreError> {
        let mut tx = self.pool.begin().await?;
        let mut ids = open_sessions_on(&mut tx, bridge, started_at).await?;
        ids.retain(|id| !live.contains(id));
        end_by_id(&mut tx, &ids, "bridge_lost", now_ms).await?;
        tx.commit().await?;
        Ok(ids)
    }
}

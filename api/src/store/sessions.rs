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
    /// The session's key id (see `ca::csr_key_id`): a resume must be for this key.
    pub client_key: Option<String>,
    /// Every bridge it went through, in order.
    pub bridges: Vec<u32>,
    /// Attachments after the first.
    pub reattaches: i64,
    /// Since when its path is broken (it waits for both sides to attach again).
    pub detached_at: Option<i64>,
}

/// End reasons a bridge reports that end the session itself, not just its attachment: every
/// other end (a side's connection closed or failed, the bridge's shutdown, its idle timeout)
/// may be a broken path that both sides attach again around.
const FINAL_AT_BRIDGE: &[&str] = &["killed", "target_unreachable"];

/// The sessions on a bridge that ended since a time, newest first ([`Store::ended_unpaired`]):
/// every bridge heartbeat asks, so the index `sessions_ended_by_bridge` serves it.
pub(super) const ENDED_ON_BRIDGE: &str = "SELECT id FROM sessions WHERE bridge = $1 \
     AND state = 'ended' AND ended_at >= $2 ORDER BY ended_at DESC LIMIT 1000";

/// Open, attached sessions created before a time on bridges silent since then
/// ([`Store::end_sessions_of_silent_bridges`], every second): the index
/// `sessions_open_by_bridge` holds open sessions only.
pub(super) const OPEN_ON_SILENT_BRIDGES: &str = "SELECT s.id FROM sessions s \
     JOIN bridges b ON b.ordinal = s.bridge \
     WHERE s.state <> 'ended' AND s.created_at < $1 AND s.detached_at IS NULL \
     AND (b.last_seen_at IS NULL OR b.last_seen_at < $1)";

/// Which sessions to list; `None` means any.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SessionFilter {
    /// Exact state.
    pub state: Option<String>,
    /// Exact user.
    pub user: Option<String>,
}

/// An agent's account of a session of its own that is over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentEnd {
    /// The session.
    pub session: String,
    /// Why it ended.
    pub reason: String,
    /// Application bytes from the client to the resource.
    pub bytes_up: i64,
    /// Application bytes from the resource to the client.
    pub bytes_down: i64,
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
                       ended_at, bytes_up, bytes_down, end_reason, client_key, bridges, reattaches, \
                       detached_at";

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
        client_key: r.try_get(12)?,
        bridges: r
            .try_get::<String, _>(13)?
            .split(',')
            .filter_map(|b| b.parse().ok())
            .collect(),
        reattaches: r.try_get(14)?,
        detached_at: r.try_get(15)?,
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

/// Ids of `bridge`'s open, attached sessions created before `before`.
pub(super) async fn open_sessions_on(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    bridge: u32,
    before: i64,
) -> Result<Vec<String>, StoreError> {
    Ok(sqlx::query(
        "SELECT id FROM sessions WHERE bridge = $1 AND state <> 'ended' AND created_at < $2 \
         AND detached_at IS NULL",
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

/// The sessions `ids` lost their bridge: those that never paired end `bridge_lost`, the
/// others are detached (their sides may attach again elsewhere).
pub(super) async fn lose(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    ids: &[String],
    now_ms: i64,
) -> Result<(), StoreError> {
    for id in ids {
        sqlx::query(
            "UPDATE sessions SET state = 'ended', ended_at = $2, end_reason = 'bridge_lost' \
             WHERE id = $1 AND state = 'pending'",
        )
        .bind(id)
        .bind(now_ms)
        .execute(&mut **tx)
        .await?;
        sqlx::query(
            "UPDATE sessions SET detached_at = COALESCE(detached_at, $2) \
             WHERE id = $1 AND state = 'active'",
        )
        .bind(id)
        .bind(now_ms)
        .execute(&mut **tx)
        .await?;
    }
    Ok(())
}

impl Store {
    /// Records a new, pending session with the certificate issued for it and the audit
    /// event that allowed it, in one transaction (one commit, one sync to disk: this is on
    /// every session's setup path).
    ///
    /// # Errors
    ///
    /// [`StoreError::Database`].
    pub async fn create_session(
        &self,
        s: &Session,
        certificate: &NewCertificate,
        audit: &NewAuditEvent,
    ) -> Result<(), StoreError> {
        let mut tx = self.begin_write().await?;
        sqlx::query(
            "INSERT INTO sessions (id, user_name, resource, agent_id, bridge, state, created_at, \
             client_key, bridges) VALUES ($1, $2, $3, $4, $5, 'pending', $6, $7, $8)",
        )
        .bind(&s.id)
        .bind(&s.user)
        .bind(&s.resource)
        .bind(&s.agent_id)
        .bind(i64::from(s.bridge))
        .bind(s.created_at)
        .bind(s.client_key.as_deref())
        .bind(s.bridge.to_string())
        .execute(&mut *tx)
        .await?;
        super::certificates::insert_certificate(&mut tx, certificate).await?;
        super::audit::insert_audit(&mut tx, audit).await?;
        tx.commit().await?;
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
        .execute(&self.writer)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Applies a bridge's reports about sessions it carried, each with its audit event,
    /// in one transaction (a busy bridge reports many sessions at once); for each, whether
    /// it applied — `false` when the session is unknown or never went through that bridge
    /// (its event is then not written). A start attaches the session (no longer
    /// detached). An end adds the bytes (until the agent gave its own account, whose
    /// application byte counts replace the bridges' ciphertext ones) and, when it is the
    /// session's current bridge, detaches it, unless the reason ends the session itself
    /// (`killed`, `target_unreachable`). An earlier end reason stays (a kill stays a kill).
    ///
    /// # Errors
    ///
    /// [`StoreError::Database`].
    pub async fn apply_reports(
        &self,
        bridge: u32,
        reports: &[(String, Report, NewAuditEvent)],
    ) -> Result<Vec<bool>, StoreError> {
        let mut tx = self.begin_write().await?;
        let mut applied = vec![false; reports.len()];
        for round in rounds(reports.iter().map(|(id, _, _)| id.as_str())) {
            let mut starts = Vec::new();
            let mut ends = Vec::new();
            for i in round {
                let (id, report, _) = &reports[i];
                match report {
                    Report::Started { at } => starts.push((i, (id.as_str(), *at))),
                    Report::Ended {
                        started_at,
                        at,
                        bytes_up,
                        bytes_down,
                        reason,
                    } => ends.push((
                        i,
                        EndRow {
                            id,
                            started_at: *started_at,
                            at: *at,
                            bytes_up: *bytes_up,
                            bytes_down: *bytes_down,
                            reason,
                        },
                    )),
                }
            }
            for rows in starts.chunks(ROWS_PER_UPDATE) {
                let batch: Vec<_> = rows.iter().map(|(_, row)| *row).collect();
                let updated = apply_starts(&mut tx, bridge, &batch).await?;
                for (i, (id, _)) in rows {
                    applied[*i] = updated.contains(*id);
                }
            }
            for rows in ends.chunks(ROWS_PER_UPDATE) {
                let batch: Vec<_> = rows.iter().map(|(_, row)| row).collect();
                let updated = apply_ends(&mut tx, bridge, &batch).await?;
                for (i, row) in rows {
                    applied[*i] = updated.contains(row.id);
                }
            }
        }
        let events = reports.iter().map(|(_, _, event)| event);
        audit_applied(&mut tx, events, &applied).await?;
        tx.commit().await?;
        Ok(applied)
    }

    /// The session's path broke and its client asked to go on through `bridge`: it is
    /// pinned there now. `false` when it has ended.
    ///
    /// # Errors
    ///
    /// [`StoreError::Database`].
    pub async fn reattach_session(&self, id: &str, bridge: u32) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE sessions SET bridge = $2, bridges = bridges || ',' || $3, \
             reattaches = reattaches + 1 WHERE id = $1 AND state <> 'ended'",
        )
        .bind(id)
        .bind(i64::from(bridge))
        .bind(bridge.to_string())
        .execute(&self.writer)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// An agent's accounts of sessions of its own that are over, in one transaction: each
    /// ends (an earlier reason stays) and its byte counts become the application's, with its
    /// audit event. For each, whether it applied: `false` when the session is unknown or
    /// another agent's (its event is then not written).
    ///
    /// # Errors
    ///
    /// [`StoreError::Database`].
    pub async fn end_sessions_by_agent(
        &self,
        agent_id: &str,
        ends: &[(AgentEnd, NewAuditEvent)],
        now_ms: i64,
    ) -> Result<Vec<bool>, StoreError> {
        let mut tx = self.begin_write().await?;
        let mut applied = vec![false; ends.len()];
        for round in rounds(ends.iter().map(|(end, _)| end.session.as_str())) {
            for rows in round.chunks(ROWS_PER_UPDATE) {
                let mut update = sqlx::query(sqlx::AssertSqlSafe(format!(
                    "UPDATE sessions SET state = 'ended', \
                     ended_at = COALESCE(sessions.ended_at, $2), \
                     end_reason = COALESCE(sessions.end_reason, r.column2), \
                     bytes_up = r.column3, bytes_down = r.column4, detached_at = NULL, \
                     agent_reported = 1 \
                     FROM (VALUES {}) AS r WHERE sessions.id = r.column1 \
                     AND sessions.agent_id = $1 RETURNING sessions.id",
                    placeholders(rows.len(), 4, 3)
                )))
                .bind(agent_id)
                .bind(now_ms);
                for &i in rows {
                    let end = &ends[i].0;
                    update = update
                        .bind(&end.session)
                        .bind(&end.reason)
                        .bind(end.bytes_up)
                        .bind(end.bytes_down);
                }
                let updated = updated_ids(update.fetch_all(&mut *tx).await?)?;
                for &i in rows {
                    applied[i] = updated.contains(&ends[i].0.session);
                }
            }
        }
        audit_applied(&mut tx, ends.iter().map(|(_, event)| event), &applied).await?;
        tx.commit().await?;
        Ok(applied)
    }

    /// Ends `resume_timeout` the sessions detached before `detached_before` (neither side
    /// attached again in time); returns their ids.
    ///
    /// # Errors
    ///
    /// [`StoreError::Database`].
    pub async fn end_detached(
        &self,
        detached_before: i64,
        now_ms: i64,
    ) -> Result<Vec<String>, StoreError> {
        let mut tx = self.begin_write().await?;
        let ids: Vec<String> = sqlx::query(
            "SELECT id FROM sessions WHERE state <> 'ended' AND detached_at IS NOT NULL \
             AND detached_at < $1",
        )
        .bind(detached_before)
        .fetch_all(&mut *tx)
        .await?
        .iter()
        .map(|r| r.try_get(0))
        .collect::<Result<_, _>>()?;
        end_by_id(&mut tx, &ids, "resume_timeout", now_ms).await?;
        tx.commit().await?;
        Ok(ids)
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

    /// Sessions pinned to `bridge` that ended since `since_ms` (killed or revoked, possibly
    /// before they paired or while a resume was on its way): the bridge must refuse to pair
    /// them.
    ///
    /// # Errors
    ///
    /// [`StoreError::Database`].
    pub async fn ended_unpaired(
        &self,
        bridge: u32,
        since_ms: i64,
    ) -> Result<Vec<String>, StoreError> {
        let rows = sqlx::query(ENDED_ON_BRIDGE)
            .bind(i64::from(bridge))
            .bind(since_ms)
            .fetch_all(&self.pool)
            .await?;
        Ok(rows
            .iter()
            .map(|r| r.try_get(0))
            .collect::<Result<_, _>>()?)
    }

    /// Loses (see [`lose`]) the open sessions on bridges that have not heartbeated since
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
        let mut tx = self.begin_write().await?;
        let ids: Vec<String> = sqlx::query(OPEN_ON_SILENT_BRIDGES)
            .bind(silent_since)
            .fetch_all(&mut *tx)
            .await?
            .iter()
            .map(|r| r.try_get(0))
            .collect::<Result<_, _>>()?;
        lose(&mut tx, &ids, now_ms).await?;
        tx.commit().await?;
        Ok(ids)
    }

    /// Loses (see [`lose`]) the open sessions of `bridge` created before `lost_at`, unless the
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
        let mut tx = self.begin_write().await?;
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
        lose(&mut tx, &ids, now_ms).await?;
        tx.commit().await?;
        Ok(ids)
    }

    /// A bridge came back as a new process started at `started_at`: its open sessions
    /// created before then, other than the `live` ones it reports, are lost (see [`lose`]).
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
        let mut tx = self.begin_write().await?;
        let mut ids = open_sessions_on(&mut tx, bridge, started_at).await?;
        ids.retain(|id| !live.contains(id));
        lose(&mut tx, &ids, now_ms).await?;
        tx.commit().await?;
        Ok(ids)
    }
}

/// Rows one report statement updates at most (seven parameters each).
const ROWS_PER_UPDATE: usize = 100;

/// A batch's reports in rounds, by index: round k holds each session's k-th report, in batch
/// order. Reports about different sessions change different rows, so only each session's own
/// order matters: a round goes in one statement per kind (one round trip to the database
/// for many sessions, while the one writer is held), the rounds in order.
fn rounds<'a>(ids: impl Iterator<Item = &'a str>) -> Vec<Vec<usize>> {
    let mut seen: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
    let mut rounds: Vec<Vec<usize>> = Vec::new();
    for (i, id) in ids.enumerate() {
        let k = seen.entry(id).or_insert(0);
        if rounds.len() == *k {
            rounds.push(Vec::new());
        }
        rounds[*k].push(i);
        *k += 1;
    }
    rounds
}

/// Applies start reports from `bridge`, `(session, paired at)` of distinct sessions: the
/// session is active, attached (no longer detached), started when it first paired. Only the
/// session's current bridge may start it. Returns the sessions updated.
async fn apply_starts(
    conn: &mut sqlx::AnyConnection,
    bridge: u32,
    rows: &[(&str, i64)],
) -> Result<std::collections::HashSet<String>, StoreError> {
    let mut update = sqlx::query(sqlx::AssertSqlSafe(format!(
        "UPDATE sessions SET \
         state = CASE WHEN sessions.state = 'pending' THEN 'active' ELSE sessions.state END, \
         started_at = COALESCE(sessions.started_at, r.column2), \
         detached_at = CASE WHEN sessions.state = 'ended' THEN sessions.detached_at ELSE NULL END \
         FROM (VALUES {}) AS r WHERE sessions.id = r.column1 AND sessions.bridge = $1 \
         RETURNING sessions.id",
        placeholders(rows.len(), 2, 2)
    )))
    .bind(i64::from(bridge));
    for (id, at) in rows {
        update = update.bind(*id).bind(*at);
    }
    updated_ids(update.fetch_all(&mut *conn).await?)
}

/// Writes the audit events of the reports that `applied`, in order, in one statement.
async fn audit_applied<'a>(
    conn: &mut sqlx::AnyConnection,
    events: impl Iterator<Item = &'a NewAuditEvent>,
    applied: &[bool],
) -> Result<(), StoreError> {
    let events: Vec<&NewAuditEvent> = events
        .zip(applied)
        .filter_map(|(event, &done)| done.then_some(event))
        .collect();
    super::audit::insert_audits(conn, &events).await
}

/// The ids an `UPDATE … RETURNING sessions.id` returned.
fn updated_ids(
    rows: Vec<sqlx::any::AnyRow>,
) -> Result<std::collections::HashSet<String>, StoreError> {
    rows.iter().map(|r| Ok(r.try_get(0)?)).collect()
}

/// An end report, as [`apply_ends`] binds it.
struct EndRow<'a> {
    id: &'a str,
    started_at: Option<i64>,
    at: i64,
    bytes_up: i64,
    bytes_down: i64,
    reason: &'a str,
}

/// Applies end reports from `bridge` (of distinct sessions), which carried them now or
/// before: the bridges' byte counts add up until the agent gave its own account; the session
/// is detached when this was its current bridge, unless the reason ends the session itself
/// ([`FINAL_AT_BRIDGE`]); an earlier end reason stays. Returns the sessions updated.
async fn apply_ends(
    conn: &mut sqlx::AnyConnection,
    bridge: u32,
    rows: &[&EndRow<'_>],
) -> Result<std::collections::HashSet<String>, StoreError> {
    // Columns of r: id, started_at, at, bytes_up, bytes_down, reason, final (1: the reason
    // ends the session).
    let mut update = sqlx::query(sqlx::AssertSqlSafe(format!(
        "UPDATE sessions SET started_at = COALESCE(sessions.started_at, r.column2), \
         bytes_up = CASE WHEN sessions.agent_reported = 1 THEN sessions.bytes_up \
           ELSE sessions.bytes_up + r.column4 END, \
         bytes_down = CASE WHEN sessions.agent_reported = 1 THEN sessions.bytes_down \
           ELSE sessions.bytes_down + r.column5 END, \
         detached_at = CASE WHEN sessions.state <> 'ended' AND sessions.bridge = $1 \
           AND r.column7 = 0 THEN COALESCE(sessions.detached_at, r.column3) \
           ELSE sessions.detached_at END, \
         end_reason = CASE WHEN r.column7 = 1 THEN COALESCE(sessions.end_reason, r.column6) \
           ELSE sessions.end_reason END, \
         ended_at = CASE WHEN r.column7 = 1 THEN COALESCE(sessions.ended_at, r.column3) \
           ELSE sessions.ended_at END, \
         state = CASE WHEN r.column7 = 1 THEN 'ended' ELSE sessions.state END \
         FROM (VALUES {}) AS r WHERE sessions.id = r.column1 \
         AND (sessions.bridge = $1 OR ',' || sessions.bridges || ',' LIKE $2) \
         RETURNING sessions.id",
        placeholders(rows.len(), 7, 3)
    )))
    .bind(i64::from(bridge))
    .bind(format!("%,{bridge},%"));
    for row in rows {
        update = update
            .bind(row.id)
            .bind(row.started_at)
            .bind(row.at)
            .bind(row.bytes_up)
            .bind(row.bytes_down)
            .bind(row.reason)
            .bind(i64::from(FINAL_AT_BRIDGE.contains(&row.reason)));
    }
    updated_ids(update.fetch_all(&mut *conn).await?)
}

//! Join tokens, and the joins of agents and bridges that spend them.

use sqlx::Row;

use super::*;

pub use bamf_proto::api::JoinKind;

/// A join token as stored (the secret itself is never stored).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinToken {
    /// Public id (for listing and revoking).
    pub id: String,
    /// What it admits.
    pub kind: JoinKind,
    /// Unix milliseconds.
    pub expires_at: i64,
    /// Uses allowed.
    pub max_uses: i64,
    /// Uses so far.
    pub uses: i64,
    /// Revoked by an administrator.
    pub revoked: bool,
    /// Who created it (`user:<name>`).
    pub created_by: String,
    /// Unix milliseconds.
    pub created_at: i64,
}

/// How a join went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JoinOutcome {
    /// Joined.
    Joined,
    /// The token is unknown, of another kind, expired, exhausted or revoked.
    InvalidToken,
    /// An agent of that name exists (the token was not used up).
    NameTaken,
}

/// Uses a join token of `kind` once if it is valid at `now_ms` (not revoked, not expired,
/// uses left). One statement decides, so concurrent joins never overuse a token.
pub(super) async fn use_join_token(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    token_hash: &str,
    kind: JoinKind,
    now_ms: i64,
) -> Result<bool, StoreError> {
    let used = sqlx::query(
        "UPDATE join_tokens SET uses = uses + 1 WHERE token_hash = $1 AND kind = $2 \
         AND revoked = 0 AND expires_at > $3 AND uses < max_uses",
    )
    .bind(token_hash)
    .bind(kind.as_str())
    .bind(now_ms)
    .execute(&mut **tx)
    .await?;
    Ok(used.rows_affected() == 1)
}

impl Store {
    /// Saves a join token (only its hash).
    ///
    /// # Errors
    ///
    /// [`StoreError::Database`].
    pub async fn create_join_token(
        &self,
        t: &JoinToken,
        token_hash: &str,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO join_tokens (id, token_hash, kind, expires_at, max_uses, created_by, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(&t.id)
        .bind(token_hash)
        .bind(t.kind.as_str())
        .bind(t.expires_at)
        .bind(t.max_uses)
        .bind(&t.created_by)
        .bind(t.created_at)
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    /// Installs (or replaces) a standing join token from the deployment's configuration, under
    /// the fixed id `bootstrap-<kind>`: it never expires and has no practical use limit
    /// (bridge pods join again at every restart). Revoking it in the API holds until the
    /// configured secret changes.
    ///
    /// # Errors
    ///
    /// [`StoreError::Database`].
    pub async fn install_bootstrap_token(
        &self,
        kind: JoinKind,
        token_hash: &str,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO join_tokens (id, token_hash, kind, expires_at, max_uses, created_by, created_at) \
             VALUES ($1, $2, $3, $4, $5, 'configuration', $6) \
             ON CONFLICT (id) DO UPDATE SET token_hash = $2, \
             revoked = CASE WHEN join_tokens.token_hash = $2 THEN join_tokens.revoked ELSE 0 END",
        )
        .bind(format!("bootstrap-{}", kind.as_str()))
        .bind(token_hash)
        .bind(kind.as_str())
        .bind(i64::MAX / 2)
        .bind(i64::MAX / 2)
        .bind(now_ms)
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    /// Every join token, newest first (never their secrets).
    ///
    /// # Errors
    ///
    /// [`StoreError::Database`].
    pub async fn join_tokens(&self) -> Result<Vec<JoinToken>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, kind, expires_at, max_uses, uses, revoked, created_by, created_at \
             FROM join_tokens ORDER BY created_at DESC, id",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                let kind: String = r.try_get(1)?;
                Ok(JoinToken {
                    id: r.try_get(0)?,
                    kind: JoinKind::parse(&kind)
                        .ok_or(StoreError::Database(sqlx::Error::RowNotFound))?,
                    expires_at: r.try_get(2)?,
                    max_uses: r.try_get(3)?,
                    uses: r.try_get(4)?,
                    revoked: r.try_get::<i64, _>(5)? != 0,
                    created_by: r.try_get(6)?,
                    created_at: r.try_get(7)?,
                })
            })
            .collect()
    }

    /// Revokes a join token; `false` when there is no such token.
    ///
    /// # Errors
    ///
    /// [`StoreError::Database`].
    pub async fn revoke_join_token(&self, id: &str) -> Result<bool, StoreError> {
        let done = sqlx::query("UPDATE join_tokens SET revoked = 1 WHERE id = $1")
            .bind(id)
            .execute(&self.writer)
            .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Uses a join token of `kind` once, if it is valid now (not revoked, not expired, uses
    /// left), and in the same transaction registers the agent `name` under `agent_id`.
    /// One statement decides validity, so concurrent joins never overuse a token.
    ///
    /// # Errors
    ///
    /// [`StoreError::Database`].
    pub async fn join_agent(
        &self,
        token_hash: &str,
        agent_id: &str,
        name: &str,
        now_ms: i64,
    ) -> Result<JoinOutcome, StoreError> {
        let mut tx = self.begin_write().await?;
        if !use_join_token(&mut tx, token_hash, JoinKind::Agent, now_ms).await? {
            return Ok(JoinOutcome::InvalidToken);
        }
        let inserted = sqlx::query(
            "INSERT INTO agents (id, name, joined_at) VALUES ($1, $2, $3) ON CONFLICT (name) DO NOTHING",
        )
        .bind(agent_id)
        .bind(name)
        .bind(now_ms)
        .execute(&mut *tx)
        .await?;
        if inserted.rows_affected() != 1 {
            // Rolled back on drop: the token use is not spent on a refused join.
            return Ok(JoinOutcome::NameTaken);
        }
        tx.commit().await?;
        Ok(JoinOutcome::Joined)
    }

    /// Uses a bridge join token once, if valid now, and records the bridge `ordinal`.
    ///
    /// # Errors
    ///
    /// [`StoreError::Database`].
    pub async fn join_bridge(
        &self,
        token_hash: &str,
        ordinal: u32,
        now_ms: i64,
    ) -> Result<JoinOutcome, StoreError> {
        let mut tx = self.begin_write().await?;
        if !use_join_token(&mut tx, token_hash, JoinKind::Bridge, now_ms).await? {
            return Ok(JoinOutcome::InvalidToken);
        }
        // A bridge pod that restarts joins again under the same ordinal.
        sqlx::query(
            "INSERT INTO bridges (ordinal, joined_at) VALUES ($1, $2) \
             ON CONFLICT (ordinal) DO UPDATE SET joined_at = $2",
        )
        .bind(i64::from(ordinal))
        .bind(now_ms)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(JoinOutcome::Joined)
    }
}

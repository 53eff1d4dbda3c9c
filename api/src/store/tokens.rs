//! API tokens: kept as hashes, bound to the user's immutable id.

use sqlx::Row;

use super::*;

/// Most live API tokens one user keeps (one per sign-in); older ones are forgotten.
pub(super) const MAX_TOKENS_PER_USER: i64 = 100;

impl Store {
    /// Keeps an API token (its hash) for `user` until `expires_at`. Expired tokens are swept,
    /// and a user keeps at most `MAX_TOKENS_PER_USER` (the oldest go first).
    ///
    /// # Errors
    ///
    /// [`StoreError::Database`]; `false` when the user does not exist.
    pub async fn put_token(
        &self,
        token_hash: &str,
        user: &str,
        expires_at: i64,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        let mut tx = self.begin_write().await?;
        run_for(
            &mut tx,
            "DELETE FROM api_tokens WHERE expires_at <= $1",
            now_ms,
        )
        .await?;
        let done = sqlx::query(
            "INSERT INTO api_tokens (token_hash, user_id, expires_at, created_at) \
             SELECT $1, id, $3, $4 FROM users WHERE name = $2 AND disabled = 0",
        )
        .bind(token_hash)
        .bind(user)
        .bind(expires_at)
        .bind(now_ms)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "DELETE FROM api_tokens WHERE user_id IN (SELECT id FROM users WHERE name = $1) \
             AND token_hash NOT IN (SELECT t.token_hash FROM api_tokens t JOIN users u \
             ON u.id = t.user_id WHERE u.name = $1 ORDER BY t.created_at DESC LIMIT $2)",
        )
        .bind(user)
        .bind(MAX_TOKENS_PER_USER)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(done.rows_affected() == 1)
    }

    /// The user a token belongs to, with the roles that apply to them (`everyone` and those
    /// bound, with their rules), if the token is unexpired and its user (the same one it
    /// was issued to, by id) exists and is enabled. One query: every signed-in request asks.
    ///
    /// # Errors
    ///
    /// [`StoreError::Database`]; stored rules that no longer parse count as a database error.
    pub async fn token_principal(
        &self,
        token_hash: &str,
        now_ms: i64,
    ) -> Result<Option<(String, Vec<Role>)>, StoreError> {
        let rows = sqlx::query(
            "SELECT u.name, r.name, r.rules, r.builtin FROM api_tokens t \
             JOIN users u ON u.id = t.user_id \
             LEFT JOIN roles r ON r.name = $3 OR r.name IN \
             (SELECT role_name FROM role_bindings WHERE user_name = u.name) \
             WHERE t.token_hash = $1 AND t.expires_at > $2 AND u.disabled = 0 ORDER BY r.name",
        )
        .bind(token_hash)
        .bind(now_ms)
        .bind(crate::rbac::EVERYONE)
        .fetch_all(&self.pool)
        .await?;
        let Some(first) = rows.first() else {
            return Ok(None);
        };
        let roles = rows
            .iter()
            // A user without roles (not even `everyone`) is one row without a role.
            .filter(|r| r.try_get::<Option<String>, _>(1).is_ok_and(|n| n.is_some()))
            .map(|r| super::roles::role_at(r, 1))
            .collect::<Result<_, _>>()?;
        Ok(Some((first.try_get(0)?, roles)))
    }

    /// Forgets a token (logout).
    ///
    /// # Errors
    ///
    /// [`StoreError::Database`].
    pub async fn delete_token(&self, token_hash: &str) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM api_tokens WHERE token_hash = $1")
            .bind(token_hash)
            .execute(&self.writer)
            .await?;
        Ok(())
    }
}

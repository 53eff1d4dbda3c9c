//! Bots: users without a password that join with a one-time bot token (docs/sso.md).

use super::*;

/// The outcome of [`Store::create_bot`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BotCreated {
    /// Made, with its join token.
    Created,
    /// A user of that name exists.
    NameTaken,
    /// This role does not exist.
    UnknownRole(String),
}

impl Store {
    /// Makes bot `name` (a user without a password) bound to `roles`, with a one-time join
    /// token (its hash) valid until `token_expires_at`.
    ///
    /// # Errors
    ///
    /// [`StoreError::Database`].
    pub async fn create_bot(
        &self,
        name: &str,
        roles: &[String],
        token_hash: &str,
        token_expires_at: i64,
        now_ms: i64,
    ) -> Result<BotCreated, StoreError> {
        let mut tx = self.begin_write().await?;
        for role in roles {
            let exists = sqlx::query("SELECT 1 FROM roles WHERE name = $1")
                .bind(role)
                .fetch_optional(&mut *tx)
                .await?
                .is_some();
            if !exists {
                return Ok(BotCreated::UnknownRole(role.clone()));
            }
        }
        let made = sqlx::query(
            "INSERT INTO users (name, password_hash, created_at, id) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (name) DO NOTHING",
        )
        .bind(name)
        .bind(super::NO_PASSWORD)
        .bind(now_ms)
        .bind(new_id()?)
        .execute(&mut *tx)
        .await?;
        if made.rows_affected() != 1 {
            return Ok(BotCreated::NameTaken);
        }
        sqlx::query("INSERT INTO bots (name, created_at) VALUES ($1, $2)")
            .bind(name)
            .bind(now_ms)
            .execute(&mut *tx)
            .await?;
        for role in roles {
            sqlx::query(
                "INSERT INTO role_bindings (user_name, role_name) VALUES ($1, $2) \
                 ON CONFLICT (user_name, role_name) DO NOTHING",
            )
            .bind(name)
            .bind(role)
            .execute(&mut *tx)
            .await?;
        }
        sqlx::query(
            "INSERT INTO bot_tokens (token_hash, bot_name, expires_at, created_at) \
             VALUES ($1, $2, $3, $4)",
        )
        .bind(token_hash)
        .bind(name)
        .bind(token_expires_at)
        .bind(now_ms)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(BotCreated::Created)
    }

    /// Uses a bot join token: the bot it admits, once, while unexpired and while the bot's
    /// user exists and is enabled.
    ///
    /// # Errors
    ///
    /// [`StoreError::Database`].
    pub async fn use_bot_token(
        &self,
        token_hash: &str,
        now_ms: i64,
    ) -> Result<Option<String>, StoreError> {
        let mut tx = self.begin_write().await?;
        let used = sqlx::query(
            "UPDATE bot_tokens SET used_at = $2 WHERE token_hash = $1 AND used_at IS NULL \
             AND expires_at > $2 AND bot_name IN (SELECT name FROM users WHERE disabled = 0)",
        )
        .bind(token_hash)
        .bind(now_ms)
        .execute(&mut *tx)
        .await?;
        if used.rows_affected() != 1 {
            return Ok(None);
        }
        let name = sqlx::query("SELECT bot_name FROM bot_tokens WHERE token_hash = $1")
            .bind(token_hash)
            .fetch_one(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(Some(sqlx::Row::try_get(&name, 0)?))
    }

    /// Whether `name` is a bot.
    ///
    /// # Errors
    ///
    /// [`StoreError::Database`].
    pub async fn is_bot(&self, name: &str) -> Result<bool, StoreError> {
        Ok(sqlx::query("SELECT 1 FROM bots WHERE name = $1")
            .bind(name)
            .fetch_optional(&self.pool)
            .await?
            .is_some())
    }
}

//! Users, their passwords and their role bindings.

use sqlx::Row;

use super::*;

/// A user as listed (never the password hash).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    /// Unique name.
    pub name: String,
    /// Roles bound explicitly (every user also holds `everyone`).
    pub roles: Vec<String>,
    /// Unix milliseconds.
    pub created_at: i64,
}

impl Store {
    /// Creates a user; `false` when the name is taken.
    ///
    /// # Errors
    ///
    /// [`StoreError::Database`].
    pub async fn create_user(
        &self,
        name: &str,
        password_hash: &str,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        // A fresh id every time: credentials bind to it, so a name used again starts clean.
        let done = sqlx::query(
            "INSERT INTO users (name, password_hash, created_at, id) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (name) DO NOTHING",
        )
        .bind(name)
        .bind(password_hash)
        .bind(now_ms)
        .bind(new_id()?)
        .execute(&self.writer)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// A user's password hash, if the user exists and is not disabled.
    ///
    /// # Errors
    ///
    /// [`StoreError::Database`].
    pub async fn password_hash(&self, name: &str) -> Result<Option<String>, StoreError> {
        let row = sqlx::query("SELECT password_hash FROM users WHERE name = $1 AND disabled = 0")
            .bind(name)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|r| r.try_get(0)).transpose()?)
    }

    /// How many users exist (zero means the first admin must be bootstrapped).
    ///
    /// # Errors
    ///
    /// [`StoreError::Database`].
    pub async fn count_users(&self) -> Result<i64, StoreError> {
        let row = sqlx::query("SELECT COUNT(*) FROM users")
            .fetch_one(&self.pool)
            .await?;
        Ok(row.try_get(0)?)
    }

    /// Whether `name` is a user who may sign in.
    ///
    /// # Errors
    ///
    /// [`StoreError::Database`].
    pub async fn user_enabled(&self, name: &str) -> Result<bool, StoreError> {
        let row = sqlx::query("SELECT 1 FROM users WHERE name = $1 AND disabled = 0")
            .bind(name)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.is_some())
    }

    /// Every user with their bound roles, by name.
    ///
    /// # Errors
    ///
    /// [`StoreError::Database`].
    pub async fn users(&self) -> Result<Vec<User>, StoreError> {
        let rows = sqlx::query(
            "SELECT u.name, u.created_at, b.role_name FROM users u \
             LEFT JOIN role_bindings b ON b.user_name = u.name ORDER BY u.name, b.role_name",
        )
        .fetch_all(&self.pool)
        .await?;
        let mut users: Vec<User> = Vec::new();
        for r in &rows {
            let name: String = r.try_get(0)?;
            let role: Option<String> = r.try_get(2)?;
            if users.last().is_none_or(|u| u.name != name) {
                users.push(User {
                    name,
                    roles: Vec::new(),
                    created_at: r.try_get(1)?,
                });
            }
            if let (Some(role), Some(user)) = (role, users.last_mut()) {
                user.roles.push(role);
            }
        }
        Ok(users)
    }

    /// Deletes a user with everything derived from them: role bindings, API tokens,
    /// unexpired certificates (revoked: a certificate names its user by name) and open
    /// sessions (ended `user_deleted`; their ids are returned). `None`: no such user.
    ///
    /// # Errors
    ///
    /// [`StoreError::Database`].
    pub async fn delete_user(
        &self,
        name: &str,
        revoked_by: &str,
        now_ms: i64,
    ) -> Result<Option<Vec<String>>, StoreError> {
        let mut tx = self.begin_write().await?;
        let Some(id) = sqlx::query("SELECT id FROM users WHERE name = $1")
            .bind(name)
            .fetch_optional(&mut *tx)
            .await?
            .map(|r| r.try_get::<String, _>(0))
            .transpose()?
        else {
            return Ok(None);
        };
        // Everything derived from the user goes with them: tokens, unexpired certificates
        // (revoked, since a certificate names the user by name), and sessions.
        run_for(&mut tx, "DELETE FROM api_tokens WHERE user_id = $1", &id).await?;
        super::certificates::revoke_issued(
            &mut tx,
            "user",
            &id,
            "user deleted",
            revoked_by,
            now_ms,
        )
        .await?;
        let ended = super::sessions::end_sessions_where(
            &mut tx,
            "user_name = $1",
            name,
            "user_deleted",
            now_ms,
        )
        .await?;
        // Explicit, so it does not depend on SQLite's foreign-key pragma.
        run_for(
            &mut tx,
            "DELETE FROM role_bindings WHERE user_name = $1",
            name,
        )
        .await?;
        run_for(
            &mut tx,
            "DELETE FROM sso_identities WHERE user_name = $1",
            name,
        )
        .await?;
        run_for(&mut tx, "DELETE FROM bot_tokens WHERE bot_name = $1", name).await?;
        run_for(&mut tx, "DELETE FROM bots WHERE name = $1", name).await?;
        run_for(&mut tx, "DELETE FROM users WHERE name = $1", name).await?;
        tx.commit().await?;
        Ok(Some(ended))
    }

    /// Replaces a user's password hash; `false` when there is no such user.
    ///
    /// # Errors
    ///
    /// [`StoreError::Database`].
    pub async fn set_password_hash(&self, name: &str, hash: &str) -> Result<bool, StoreError> {
        let mut tx = self.begin_write().await?;
        let done = sqlx::query("UPDATE users SET password_hash = $2 WHERE name = $1")
            .bind(name)
            .bind(hash)
            .execute(&mut *tx)
            .await?;
        // A new password ends every sign-in made with the old one.
        sqlx::query(
            "DELETE FROM api_tokens WHERE user_id IN (SELECT id FROM users WHERE name = $1)",
        )
        .bind(name)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(done.rows_affected() == 1)
    }

    /// Binds a user to a role (idempotent). A binding an administrator makes stays when the
    /// user's single sign-on no longer grants the role.
    ///
    /// # Errors
    ///
    /// [`StoreError::Database`], also when the user or role does not exist.
    pub async fn bind_role(&self, user: &str, role: &str) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO role_bindings (user_name, role_name) VALUES ($1, $2) \
             ON CONFLICT (user_name, role_name) DO UPDATE SET origin = ''",
        )
        .bind(user)
        .bind(role)
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    /// Removes a binding; `false` when there was none.
    ///
    /// # Errors
    ///
    /// [`StoreError::Database`].
    pub async fn unbind_role(&self, user: &str, role: &str) -> Result<bool, StoreError> {
        let done = sqlx::query("DELETE FROM role_bindings WHERE user_name = $1 AND role_name = $2")
            .bind(user)
            .bind(role)
            .execute(&self.writer)
            .await?;
        Ok(done.rows_affected() == 1)
    }

    /// The roles a user is bound to, by name.
    ///
    /// # Errors
    ///
    /// [`StoreError::Database`].
    pub async fn user_roles(&self, user: &str) -> Result<Vec<String>, StoreError> {
        let rows = sqlx::query(
            "SELECT role_name FROM role_bindings WHERE user_name = $1 ORDER BY role_name",
        )
        .bind(user)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(|r| Ok(r.try_get(0)?)).collect()
    }
}

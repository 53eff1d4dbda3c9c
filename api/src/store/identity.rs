//! Users, roles and role bindings.

use sqlx::Row;

use super::{Store, StoreError};
use crate::rbac::{self, Rules};

/// Most live API tokens one user keeps (one per sign-in); older ones are forgotten.
pub(super) const MAX_TOKENS_PER_USER: i64 = 100;

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

/// A role.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Role {
    /// Unique name.
    pub name: String,
    /// Its rules.
    pub rules: Rules,
    /// `admin` and `everyone`.
    pub builtin: bool,
}

/// How a change to a role went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RoleChange {
    /// Done.
    Done,
    /// No such role.
    Missing,
    /// The role is built in and cannot be changed that way.
    Builtin,
}

impl Store {
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
        let mut tx = self.pool.begin().await?;
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
        sqlx::query("DELETE FROM api_tokens WHERE user_id = $1")
            .bind(&id)
            .execute(&mut *tx)
            .await?;
        super::fleet::revoke_issued(&mut tx, "user", &id, "user deleted", revoked_by, now_ms)
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
        sqlx::query("DELETE FROM role_bindings WHERE user_name = $1")
            .bind(name)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM users WHERE name = $1")
            .bind(name)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(Some(ended))
    }

    /// Replaces a user's password hash; `false` when there is no such user.
    ///
    /// # Errors
    ///
    /// [`StoreError::Database`].
    pub async fn set_password_hash(&self, name: &str, hash: &str) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await?;
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

    /// Keeps an API token (its hash) for `user` until `expires_at`. Expired tokens are swept,
    /// and a user keeps at most [`MAX_TOKENS_PER_USER`] (the oldest go first).
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
        let mut tx = self.pool.begin().await?;
        sqlx::query("DELETE FROM api_tokens WHERE expires_at <= $1")
            .bind(now_ms)
            .execute(&mut *tx)
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

    /// The user a token belongs to, if the token is unexpired and its user (the same one it
    /// was issued to, by id) exists and is enabled.
    ///
    /// # Errors
    ///
    /// [`StoreError::Database`].
    pub async fn token_user(
        &self,
        token_hash: &str,
        now_ms: i64,
    ) -> Result<Option<String>, StoreError> {
        let row = sqlx::query(
            "SELECT u.name FROM api_tokens t JOIN users u ON u.id = t.user_id \
             WHERE t.token_hash = $1 AND t.expires_at > $2 AND u.disabled = 0",
        )
        .bind(token_hash)
        .bind(now_ms)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|r| r.try_get(0)).transpose()?)
    }

    /// Forgets a token (logout).
    ///
    /// # Errors
    ///
    /// [`StoreError::Database`].
    pub async fn delete_token(&self, token_hash: &str) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM api_tokens WHERE token_hash = $1")
            .bind(token_hash)
            .execute(&self.pool)
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
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() == 1)
    }

    /// The roles that apply to `user`: `everyone` and those bound, with their rules.
    ///
    /// # Errors
    ///
    /// [`StoreError::Database`]; stored rules that no longer parse count as a database
    /// error (they were checked on the way in).
    pub async fn effective_roles(&self, user: &str) -> Result<Vec<Role>, StoreError> {
        let rows = sqlx::query(
            "SELECT name, rules, builtin FROM roles WHERE name = $2 OR name IN \
             (SELECT role_name FROM role_bindings WHERE user_name = $1) ORDER BY name",
        )
        .bind(user)
        .bind(rbac::EVERYONE)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(role_row).collect()
    }

    /// Every role, by name.
    ///
    /// # Errors
    ///
    /// [`StoreError::Database`].
    pub async fn roles(&self) -> Result<Vec<Role>, StoreError> {
        let rows = sqlx::query("SELECT name, rules, builtin FROM roles ORDER BY name")
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(role_row).collect()
    }

    /// Whether a role exists.
    ///
    /// # Errors
    ///
    /// [`StoreError::Database`].
    pub async fn role_exists(&self, name: &str) -> Result<bool, StoreError> {
        let row = sqlx::query("SELECT 1 FROM roles WHERE name = $1")
            .bind(name)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.is_some())
    }

    /// Creates a role; `false` when the name is taken.
    ///
    /// # Errors
    ///
    /// [`StoreError::Database`].
    pub async fn create_role(
        &self,
        name: &str,
        rules: &Rules,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "INSERT INTO roles (name, rules, created_at) VALUES ($1, $2, $3) \
             ON CONFLICT (name) DO NOTHING",
        )
        .bind(name)
        .bind(rules.to_json())
        .bind(now_ms)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Replaces a role's rules. `admin` is fixed; `everyone` may be changed (it is how
    /// access for all users is granted).
    ///
    /// # Errors
    ///
    /// [`StoreError::Database`].
    pub async fn update_role(&self, name: &str, rules: &Rules) -> Result<RoleChange, StoreError> {
        if name == rbac::ADMIN {
            return Ok(RoleChange::Builtin);
        }
        let done = sqlx::query("UPDATE roles SET rules = $2 WHERE name = $1")
            .bind(name)
            .bind(rules.to_json())
            .execute(&self.pool)
            .await?;
        Ok(if done.rows_affected() == 1 {
            RoleChange::Done
        } else {
            RoleChange::Missing
        })
    }

    /// Deletes a role that is not built in, with its bindings.
    ///
    /// # Errors
    ///
    /// [`StoreError::Database`].
    pub async fn delete_role(&self, name: &str) -> Result<RoleChange, StoreError> {
        let mut tx = self.pool.begin().await?;
        let row = sqlx::query("SELECT builtin FROM roles WHERE name = $1")
            .bind(name)
            .fetch_optional(&mut *tx)
            .await?;
        match row.map(|r| r.try_get::<i64, _>(0)).transpose()? {
            None => return Ok(RoleChange::Missing),
            Some(b) if b != 0 => return Ok(RoleChange::Builtin),
            Some(_) => {}
        }
        sqlx::query("DELETE FROM role_bindings WHERE role_name = $1")
            .bind(name)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM roles WHERE name = $1")
            .bind(name)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(RoleChange::Done)
    }
}

fn role_row(r: &sqlx::any::AnyRow) -> Result<Role, StoreError> {
    let rules: String = r.try_get(1)?;
    Ok(Role {
        name: r.try_get(0)?,
        rules: Rules::from_json(&rules)
            .map_err(|e| StoreError::Database(sqlx::Error::Decode(Box::new(e))))?,
        builtin: r.try_get::<i64, _>(2)? != 0,
    })
}

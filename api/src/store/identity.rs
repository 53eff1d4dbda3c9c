//! Users, roles and role bindings.

use sqlx::Row;

use super::{Store, StoreError};
use crate::rbac::{self, Rules};

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

    /// Deletes a user (their bindings go with them); `false` when there is no such user.
    ///
    /// # Errors
    ///
    /// [`StoreError::Database`].
    pub async fn delete_user(&self, name: &str) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await?;
        // Explicit, so it does not depend on SQLite's foreign-key pragma.
        sqlx::query("DELETE FROM role_bindings WHERE user_name = $1")
            .bind(name)
            .execute(&mut *tx)
            .await?;
        let done = sqlx::query("DELETE FROM users WHERE name = $1")
            .bind(name)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(done.rows_affected() == 1)
    }

    /// Replaces a user's password hash; `false` when there is no such user.
    ///
    /// # Errors
    ///
    /// [`StoreError::Database`].
    pub async fn set_password_hash(&self, name: &str, hash: &str) -> Result<bool, StoreError> {
        let done = sqlx::query("UPDATE users SET password_hash = $2 WHERE name = $1")
            .bind(name)
            .bind(hash)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() == 1)
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

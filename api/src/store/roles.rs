//! Roles and their rules.

use sqlx::Row;

use super::*;
use crate::rbac::{self, Rules};

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

pub(super) fn role_row(r: &sqlx::any::AnyRow) -> Result<Role, StoreError> {
    role_at(r, 0)
}

/// A role from a row's columns `first` (name), `first + 1` (rules), `first + 2` (builtin).
pub(super) fn role_at(r: &sqlx::any::AnyRow, first: usize) -> Result<Role, StoreError> {
    let rules: String = r.try_get(first + 1)?;
    Ok(Role {
        name: r.try_get(first)?,
        rules: Rules::from_json(&rules)
            .map_err(|e| StoreError::Database(sqlx::Error::Decode(Box::new(e))))?,
        builtin: r.try_get::<i64, _>(first + 2)? != 0,
    })
}

impl Store {
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
        .execute(&self.writer)
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
            .execute(&self.writer)
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
        let mut tx = self.begin_write().await?;
        let row = sqlx::query("SELECT builtin FROM roles WHERE name = $1")
            .bind(name)
            .fetch_optional(&mut *tx)
            .await?;
        match row.map(|r| r.try_get::<i64, _>(0)).transpose()? {
            None => return Ok(RoleChange::Missing),
            Some(b) if b != 0 => return Ok(RoleChange::Builtin),
            Some(_) => {}
        }
        run_for(
            &mut tx,
            "DELETE FROM role_bindings WHERE role_name = $1",
            name,
        )
        .await?;
        run_for(&mut tx, "DELETE FROM roles WHERE name = $1", name).await?;
        tx.commit().await?;
        Ok(RoleChange::Done)
    }
}

//! Agents and the resources they report.

use std::collections::BTreeMap;

use sqlx::Row;

use super::certificates::revoke_issued;
use super::*;

/// An agent as registered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Agent {
    /// Its id (`bamf://agent/<id>`).
    pub id: String,
    /// Its unique name.
    pub name: String,
    /// Serial of the certificate issued last.
    pub cert_serial: Option<String>,
    /// Unix milliseconds.
    pub joined_at: i64,
    /// Unix milliseconds of the last heartbeat.
    pub last_seen_at: Option<i64>,
}

pub(super) fn agent_row(r: &sqlx::any::AnyRow) -> Result<Agent, StoreError> {
    Ok(Agent {
        id: r.try_get(0)?,
        name: r.try_get(1)?,
        cert_serial: r.try_get(2)?,
        joined_at: r.try_get(3)?,
        last_seen_at: r.try_get(4)?,
    })
}

/// A resource an agent reported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resource {
    /// Unique name.
    pub name: String,
    /// `ssh`, `postgres` or `tcp`.
    pub kind: String,
    /// Labels (RBAC selects on them).
    pub labels: BTreeMap<String, String>,
    /// The agent that reaches it.
    pub agent_id: String,
    /// That agent's name.
    pub agent_name: String,
}

impl Store {
    /// Records the serial of the certificate just issued to an agent (join or renewal).
    ///
    /// # Errors
    ///
    /// [`StoreError::Database`].
    pub async fn set_agent_serial(&self, id: &str, serial: &str) -> Result<(), StoreError> {
        sqlx::query("UPDATE agents SET cert_serial = $2 WHERE id = $1")
            .bind(id)
            .bind(serial)
            .execute(&self.writer)
            .await?;
        Ok(())
    }

    /// The agent with this id, if it is registered.
    ///
    /// # Errors
    ///
    /// [`StoreError::Database`].
    pub async fn agent(&self, id: &str) -> Result<Option<Agent>, StoreError> {
        let row = sqlx::query(
            "SELECT id, name, cert_serial, joined_at, last_seen_at FROM agents WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(agent_row).transpose()
    }

    /// Whether agent `id`'s current certificate is revoked, or `None` when there is no such
    /// agent: one query where `/connect` would make two.
    ///
    /// # Errors
    ///
    /// [`StoreError::Database`].
    pub async fn agent_revoked(&self, id: &str) -> Result<Option<bool>, StoreError> {
        let row = sqlx::query(
            "SELECT (SELECT COUNT(*) FROM revoked_certificates r WHERE r.serial = a.cert_serial) \
             FROM agents a WHERE a.id = $1",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row
            .map(|r| r.try_get::<i64, _>(0))
            .transpose()?
            .map(|n| n > 0))
    }

    /// Every agent, by name.
    ///
    /// # Errors
    ///
    /// [`StoreError::Database`].
    pub async fn agents(&self) -> Result<Vec<Agent>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, name, cert_serial, joined_at, last_seen_at FROM agents ORDER BY name",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(agent_row).collect()
    }

    /// Deletes an agent and its resources, and revokes its last certificate, in one
    /// transaction. Returns the deleted agent.
    ///
    /// # Errors
    ///
    /// [`StoreError::Database`].
    pub async fn delete_agent(
        &self,
        id: &str,
        revoked_by: &str,
        now_ms: i64,
    ) -> Result<Option<Agent>, StoreError> {
        let mut tx = self.begin_write().await?;
        let row = sqlx::query(
            "SELECT id, name, cert_serial, joined_at, last_seen_at FROM agents WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(agent) = row.as_ref().map(agent_row).transpose()? else {
            return Ok(None);
        };
        run_for(&mut tx, "DELETE FROM resources WHERE agent_id = $1", id).await?;
        run_for(&mut tx, "DELETE FROM agents WHERE id = $1", id).await?;
        if let Some(serial) = &agent.cert_serial {
            sqlx::query(
                "INSERT INTO revoked_certificates (serial, reason, revoked_by, revoked_at) \
                 VALUES ($1, 'agent deleted', $2, $3) ON CONFLICT DO NOTHING",
            )
            .bind(serial)
            .bind(revoked_by)
            .bind(now_ms)
            .execute(&mut *tx)
            .await?;
        }
        revoke_issued(&mut tx, "agent", id, "agent deleted", revoked_by, now_ms).await?;
        // Pending sessions too: their bridge refuses to pair them once it hears.
        super::sessions::end_sessions_where(&mut tx, "agent_id = $1", id, "agent_deleted", now_ms)
            .await?;
        tx.commit().await?;
        Ok(Some(agent))
    }

    /// Replaces the catalog an agent reports, and notes it as seen. A resource name that
    /// another agent already reports stays with that agent; those names are returned.
    ///
    /// # Errors
    ///
    /// [`StoreError::Database`].
    pub async fn replace_resources(
        &self,
        agent_id: &str,
        resources: &[(String, String, BTreeMap<String, String>)],
        now_ms: i64,
    ) -> Result<Vec<String>, StoreError> {
        let mut tx = self.begin_write().await?;
        sqlx::query("UPDATE agents SET last_seen_at = $2 WHERE id = $1")
            .bind(agent_id)
            .bind(now_ms)
            .execute(&mut *tx)
            .await?;
        run_for(
            &mut tx,
            "DELETE FROM resources WHERE agent_id = $1",
            agent_id,
        )
        .await?;
        let mut taken = Vec::new();
        for (name, kind, labels) in resources {
            let done = sqlx::query(
                "INSERT INTO resources (name, agent_id, kind, labels, updated_at) \
                 VALUES ($1, $2, $3, $4, $5) ON CONFLICT (name) DO NOTHING",
            )
            .bind(name)
            .bind(agent_id)
            .bind(kind)
            .bind(serde_json::to_string(labels).unwrap_or_else(|_| "{}".to_owned()))
            .bind(now_ms)
            .execute(&mut *tx)
            .await?;
            if done.rows_affected() == 0 {
                taken.push(name.clone());
            }
        }
        tx.commit().await?;
        Ok(taken)
    }

    /// Every reported resource, by name.
    ///
    /// # Errors
    ///
    /// [`StoreError::Database`].
    pub async fn resources(&self) -> Result<Vec<Resource>, StoreError> {
        let rows = sqlx::query(
            "SELECT r.name, r.kind, r.labels, r.agent_id, a.name FROM resources r \
             JOIN agents a ON a.id = r.agent_id ORDER BY r.name",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(resource_row).collect()
    }

    /// The resource named `name`, if one is reported (one indexed read: the setup path
    /// asks for one resource, not the list).
    ///
    /// # Errors
    ///
    /// [`StoreError::Database`].
    pub async fn resource(&self, name: &str) -> Result<Option<Resource>, StoreError> {
        let row = sqlx::query(
            "SELECT r.name, r.kind, r.labels, r.agent_id, a.name FROM resources r \
             JOIN agents a ON a.id = r.agent_id WHERE r.name = $1",
        )
        .bind(name)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(resource_row).transpose()
    }
}

/// A resource from the columns `r.name, r.kind, r.labels, r.agent_id, a.name`.
fn resource_row(r: &sqlx::any::AnyRow) -> Result<Resource, StoreError> {
    let labels: String = r.try_get(2)?;
    Ok(Resource {
        name: r.try_get(0)?,
        kind: r.try_get(1)?,
        labels: serde_json::from_str(&labels).unwrap_or_default(),
        agent_id: r.try_get(3)?,
        agent_name: r.try_get(4)?,
    })
}

//! Agents, bridges, the resources agents report, and revoked certificates.

use std::collections::BTreeMap;

use sqlx::Row;

use super::{Store, StoreError};

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

/// A bridge as registered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bridge {
    /// Its ordinal (`<n>.bridge.<tunnel-domain>`).
    pub ordinal: u32,
    /// Serial of the certificate issued last.
    pub cert_serial: Option<String>,
    /// Unix milliseconds.
    pub joined_at: i64,
    /// Unix milliseconds of the last heartbeat.
    pub last_seen_at: Option<i64>,
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

/// Which certificate to revoke or to check: by serial, by fingerprint, or both.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CertificateRef {
    /// Serial, lower-case hex.
    pub serial: Option<String>,
    /// SHA-256 of the certificate's DER, lower-case hex.
    pub fingerprint: Option<String>,
}

/// Whom a certificate was issued to, as recorded when it was issued.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CertificateSubject {
    /// A user, by name (recorded as the user's immutable id).
    User(String),
    /// An agent, by id.
    Agent(String),
    /// A bridge, by ordinal.
    Bridge(u32),
    /// A session (client) certificate, by session id.
    Session(String),
}

/// What a revocation did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Revoked {
    /// Whether it is new (not revoked before).
    pub added: bool,
    /// The certificate as recorded at issue (`user`, `agent`, `bridge`, `client`), if the
    /// CA issued it since certificates are recorded.
    pub kind: Option<String>,
    /// Sessions ended because they derive from the certificate.
    pub ended_sessions: Vec<String>,
    /// API tokens ended (a user certificate's user signs in again).
    pub ended_tokens: u64,
}

/// A revocation as listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revocation {
    /// What was revoked.
    pub certificate: CertificateRef,
    /// Why.
    pub reason: String,
    /// Who (`user:<name>`).
    pub revoked_by: String,
    /// Unix milliseconds.
    pub revoked_at: i64,
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
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Records the serial of the certificate just issued to a bridge.
    ///
    /// # Errors
    ///
    /// [`StoreError::Database`].
    pub async fn set_bridge_serial(&self, ordinal: u32, serial: &str) -> Result<(), StoreError> {
        sqlx::query("UPDATE bridges SET cert_serial = $2 WHERE ordinal = $1")
            .bind(i64::from(ordinal))
            .bind(serial)
            .execute(&self.pool)
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
        let mut tx = self.pool.begin().await?;
        let row = sqlx::query(
            "SELECT id, name, cert_serial, joined_at, last_seen_at FROM agents WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(agent) = row.as_ref().map(agent_row).transpose()? else {
            return Ok(None);
        };
        sqlx::query("DELETE FROM resources WHERE agent_id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM agents WHERE id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
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

    /// Every bridge that joined, by ordinal.
    ///
    /// # Errors
    ///
    /// [`StoreError::Database`].
    pub async fn bridges(&self) -> Result<Vec<Bridge>, StoreError> {
        let rows = sqlx::query(
            "SELECT ordinal, cert_serial, joined_at, last_seen_at FROM bridges ORDER BY ordinal",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(Bridge {
                    ordinal: u32::try_from(r.try_get::<i64, _>(0)?).unwrap_or(u32::MAX),
                    cert_serial: r.try_get(1)?,
                    joined_at: r.try_get(2)?,
                    last_seen_at: r.try_get(3)?,
                })
            })
            .collect()
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
        let mut tx = self.pool.begin().await?;
        sqlx::query("UPDATE agents SET last_seen_at = $2 WHERE id = $1")
            .bind(agent_id)
            .bind(now_ms)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM resources WHERE agent_id = $1")
            .bind(agent_id)
            .execute(&mut *tx)
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
        rows.iter()
            .map(|r| {
                let labels: String = r.try_get(2)?;
                Ok(Resource {
                    name: r.try_get(0)?,
                    kind: r.try_get(1)?,
                    labels: serde_json::from_str(&labels).unwrap_or_default(),
                    agent_id: r.try_get(3)?,
                    agent_name: r.try_get(4)?,
                })
            })
            .collect()
    }

    /// Revokes a certificate; `false` when it was already revoked.
    ///
    /// # Errors
    ///
    /// [`StoreError::Database`].
    pub async fn revoke(
        &self,
        certificate: &CertificateRef,
        reason: &str,
        revoked_by: &str,
        now_ms: i64,
    ) -> Result<Revoked, StoreError> {
        let mut tx = self.pool.begin().await?;
        // A certificate the CA recorded is revoked by serial *and* fingerprint, whichever
        // was named, and what derives from it ends with it.
        let issued = sqlx::query(
            "SELECT serial, fingerprint, kind, subject FROM issued_certificates \
             WHERE serial = $1 OR fingerprint = $2",
        )
        .bind(certificate.serial.as_deref())
        .bind(certificate.fingerprint.as_deref())
        .fetch_optional(&mut *tx)
        .await?;
        let mut full = certificate.clone();
        let mut derived = None;
        if let Some(row) = issued {
            full.serial = Some(row.try_get(0)?);
            full.fingerprint = Some(row.try_get(1)?);
            derived = Some((row.try_get::<String, _>(2)?, row.try_get::<String, _>(3)?));
        }
        // A certificate revoked before (under either name) conflicts and is not new.
        let added = sqlx::query(
            "INSERT INTO revoked_certificates \
             (serial, fingerprint, reason, revoked_by, revoked_at) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
        )
        .bind(full.serial.as_deref())
        .bind(full.fingerprint.as_deref())
        .bind(reason)
        .bind(revoked_by)
        .bind(now_ms)
        .execute(&mut *tx)
        .await?
        .rows_affected()
            == 1;
        let mut revoked = Revoked {
            added,
            kind: derived.as_ref().map(|(kind, _)| kind.clone()),
            ..Revoked::default()
        };
        // Ended again even when revoked before: idempotent, and repairs what an earlier
        // version of the API left running.
        if let Some((kind, subject)) = &derived {
            let condition = match kind.as_str() {
                "client" => "id = $1",
                "agent" => "agent_id = $1",
                "bridge" => "CAST(bridge AS TEXT) = $1",
                _ => "user_name IN (SELECT name FROM users WHERE id = $1)",
            };
            if kind == "user" {
                revoked.ended_tokens = sqlx::query("DELETE FROM api_tokens WHERE user_id = $1")
                    .bind(subject)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
            }
            revoked.ended_sessions =
                super::sessions::end_sessions_where(&mut tx, condition, subject, "revoked", now_ms)
                    .await?;
        }
        tx.commit().await?;
        Ok(revoked)
    }

    /// Records a certificate the CA has just issued, so that revoking it by serial or by
    /// fingerprint finds whom it names.
    ///
    /// # Errors
    ///
    /// [`StoreError::Database`].
    pub async fn record_certificate(
        &self,
        serial: &str,
        fingerprint: &str,
        subject: &CertificateSubject,
        issued_at: i64,
        expires_at: i64,
    ) -> Result<(), StoreError> {
        let (sql, kind, key) = match subject {
            CertificateSubject::User(name) => (
                "INSERT INTO issued_certificates \
                 (serial, fingerprint, kind, subject, issued_at, expires_at) \
                 SELECT $1, $2, $3, id, $5, $6 FROM users WHERE name = $4",
                "user",
                name.clone(),
            ),
            CertificateSubject::Agent(id) => (RECORD, "agent", id.clone()),
            CertificateSubject::Bridge(ordinal) => (RECORD, "bridge", ordinal.to_string()),
            CertificateSubject::Session(id) => (RECORD, "client", id.clone()),
        };
        sqlx::query(sql)
            .bind(serial)
            .bind(fingerprint)
            .bind(kind)
            .bind(key)
            .bind(issued_at)
            .bind(expires_at)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Whether the certificate is revoked by its serial or by its fingerprint.
    ///
    /// # Errors
    ///
    /// [`StoreError::Database`].
    pub async fn is_revoked(&self, certificate: &CertificateRef) -> Result<bool, StoreError> {
        let row = sqlx::query(
            "SELECT 1 FROM revoked_certificates WHERE serial = $1 OR fingerprint = $2 LIMIT 1",
        )
        .bind(certificate.serial.as_deref())
        .bind(certificate.fingerprint.as_deref())
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.is_some())
    }

    /// Every revocation, newest first.
    ///
    /// # Errors
    ///
    /// [`StoreError::Database`].
    pub async fn revocations(&self) -> Result<Vec<Revocation>, StoreError> {
        let rows = sqlx::query(
            "SELECT serial, fingerprint, reason, revoked_by, revoked_at FROM revoked_certificates \
             ORDER BY revoked_at DESC",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(Revocation {
                    certificate: CertificateRef {
                        serial: r.try_get(0)?,
                        fingerprint: r.try_get(1)?,
                    },
                    reason: r.try_get(2)?,
                    revoked_by: r.try_get(3)?,
                    revoked_at: r.try_get(4)?,
                })
            })
            .collect()
    }
}

fn agent_row(r: &sqlx::any::AnyRow) -> Result<Agent, StoreError> {
    Ok(Agent {
        id: r.try_get(0)?,
        name: r.try_get(1)?,
        cert_serial: r.try_get(2)?,
        joined_at: r.try_get(3)?,
        last_seen_at: r.try_get(4)?,
    })
}

/// Inserts a recorded certificate of any kind (users are resolved to their id instead).
const RECORD: &str = "INSERT INTO issued_certificates \
                      (serial, fingerprint, kind, subject, issued_at, expires_at) \
                      VALUES ($1, $2, $3, $4, $5, $6)";

/// Revokes every unexpired certificate recorded for `kind`/`subject`, by serial and
/// fingerprint.
pub(super) async fn revoke_issued(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    kind: &str,
    subject: &str,
    reason: &str,
    revoked_by: &str,
    now_ms: i64,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO revoked_certificates (serial, fingerprint, reason, revoked_by, revoked_at) \
         SELECT serial, fingerprint, $3, $4, $5 FROM issued_certificates \
         WHERE kind = $1 AND subject = $2 AND expires_at > $5 ON CONFLICT DO NOTHING",
    )
    .bind(kind)
    .bind(subject)
    .bind(reason)
    .bind(revoked_by)
    .bind(now_ms)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

//! Issued certificates and revocations: what a revocation ends.

use sqlx::Row;

use super::*;

/// A certificate the CA has just issued, as recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewCertificate {
    /// Serial, lower-case hex.
    pub serial: String,
    /// SHA-256 of the certificate's DER, lower-case hex.
    pub fingerprint: String,
    /// Whom it names.
    pub subject: CertificateSubject,
    /// Unix milliseconds.
    pub issued_at: i64,
    /// Unix milliseconds.
    pub expires_at: i64,
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

/// Inserts a recorded certificate of any kind (users are resolved to their id instead).
pub(super) const RECORD: &str = "INSERT INTO issued_certificates \
                      (serial, fingerprint, kind, subject, issued_at, expires_at) \
                      VALUES ($1, $2, $3, $4, $5, $6)";

/// Inserts `c` (as part of a larger transaction or on its own).
pub(super) async fn insert_certificate(
    conn: &mut sqlx::AnyConnection,
    c: &NewCertificate,
) -> Result<(), StoreError> {
    let (sql, kind, key) = match &c.subject {
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
        .bind(&c.serial)
        .bind(&c.fingerprint)
        .bind(kind)
        .bind(key)
        .bind(c.issued_at)
        .bind(c.expires_at)
        .execute(conn)
        .await?;
    Ok(())
}

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

impl Store {
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
        let mut tx = self.begin_write().await?;
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
    pub async fn record_certificate(&self, c: &NewCertificate) -> Result<(), StoreError> {
        let mut conn = self.writer.acquire().await?;
        insert_certificate(&mut conn, c).await
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

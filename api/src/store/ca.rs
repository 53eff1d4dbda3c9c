//! The CA certificate and its (optionally sealed) key.

use sqlx::Row;

use super::*;

/// The CA as persisted.
#[derive(Clone, PartialEq, Eq)]
pub struct StoredCa {
    /// Certificate, PEM.
    pub cert_pem: String,
    /// Private key, PEM, or its encrypted form when `key_encrypted`.
    pub key_pem: String,
    /// Whether `key_pem` is encrypted with the configured key.
    pub key_encrypted: bool,
}

impl std::fmt::Debug for StoredCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoredCa")
            .field("key_encrypted", &self.key_encrypted)
            .finish_non_exhaustive()
    }
}

impl Store {
    /// The persisted CA, if any.
    ///
    /// # Errors
    ///
    /// [`StoreError::Database`].
    pub async fn ca(&self) -> Result<Option<StoredCa>, StoreError> {
        let row = sqlx::query(
            "SELECT cert_pem, key_pem, key_encrypted FROM certificate_authority WHERE id = 1",
        )
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| {
            Ok(StoredCa {
                cert_pem: r.try_get(0)?,
                key_pem: r.try_get(1)?,
                key_encrypted: r.try_get::<i64, _>(2)? != 0,
            })
        })
        .transpose()
    }

    /// Saves the CA unless one is already stored, and returns the one that is stored now.
    ///
    /// Several API replicas starting at once each generate a CA; the first insert wins and
    /// every replica then uses the winner's.
    ///
    /// # Errors
    ///
    /// [`StoreError::Database`].
    pub async fn save_ca_if_absent(
        &self,
        ca: &StoredCa,
        now_ms: i64,
    ) -> Result<StoredCa, StoreError> {
        sqlx::query(
            "INSERT INTO certificate_authority (id, cert_pem, key_pem, key_encrypted, created_at) \
             VALUES (1, $1, $2, $3, $4) ON CONFLICT (id) DO NOTHING",
        )
        .bind(&ca.cert_pem)
        .bind(&ca.key_pem)
        .bind(i64::from(ca.key_encrypted))
        .bind(now_ms)
        .execute(&self.writer)
        .await?;
        self.ca()
            .await?
            .ok_or(StoreError::Database(sqlx::Error::RowNotFound))
    }

    /// Replaces the stored CA key (to encrypt a key that was stored in the clear).
    ///
    /// # Errors
    ///
    /// [`StoreError::Database`].
    pub async fn update_ca_key(&self, key_pem: &str, encrypted: bool) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE certificate_authority SET key_pem = $1, key_encrypted = $2 WHERE id = 1",
        )
        .bind(key_pem)
        .bind(i64::from(encrypted))
        .execute(&self.writer)
        .await?;
        Ok(())
    }
}

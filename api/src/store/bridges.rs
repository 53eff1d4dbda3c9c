//! Bridges as registered, and their signs of life.

use sqlx::Row;

use super::*;

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

impl Store {
    /// Records the serial of the certificate just issued to a bridge.
    ///
    /// # Errors
    ///
    /// [`StoreError::Database`].
    pub async fn set_bridge_serial(&self, ordinal: u32, serial: &str) -> Result<(), StoreError> {
        sqlx::query("UPDATE bridges SET cert_serial = $2 WHERE ordinal = $1")
            .bind(i64::from(ordinal))
            .bind(serial)
            .execute(&self.writer)
            .await?;
        Ok(())
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

    /// Notes a bridge heartbeat.
    ///
    /// # Errors
    ///
    /// [`StoreError::Database`].
    pub async fn bridge_seen(&self, ordinal: u32, now_ms: i64) -> Result<(), StoreError> {
        sqlx::query("UPDATE bridges SET last_seen_at = $2 WHERE ordinal = $1")
            .bind(i64::from(ordinal))
            .bind(now_ms)
            .execute(&self.writer)
            .await?;
        Ok(())
    }
}

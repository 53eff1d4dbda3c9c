//! The durable store: PostgreSQL in production, SQLite for a single node.
//!
//! One set of queries serves both: sqlx's `Any` driver, `$n` placeholders (SQLite reads them
//! as numbered parameters), times as Unix milliseconds and ids as text. Only the DDL differs,
//! in `migrations/postgres` and `migrations/sqlite`, which are embedded in the binary and run
//! at connect. No SQL lives outside this module.
//!
//! One file per entity: `users`, `roles`, `tokens` (API tokens), `join_tokens` (and the joins
//! that spend them), `agents` (and their resources), `bridges`, `certificates` (issued and
//! revoked), `sessions`, `audit`, `ca`.

use std::time::Duration;

use sqlx::AnyPool;
use sqlx::any::AnyPoolOptions;
use sqlx::migrate::Migrator;

mod agents;
mod audit;
mod bridges;
mod ca;
mod certificates;
mod join_tokens;
mod roles;
mod sessions;
mod tokens;
mod users;

pub use agents::{Agent, Resource};
pub use audit::{AuditEvent, AuditFilter, MAX_AUDIT_PAGE, NewAuditEvent};
pub use bridges::Bridge;
pub use ca::StoredCa;
pub use certificates::{CertificateRef, CertificateSubject, Revocation, Revoked};
pub use join_tokens::{JoinKind, JoinOutcome, JoinToken};
pub use roles::{Role, RoleChange};
pub use sessions::{Report, Session, SessionFilter};
pub use users::User;

static POSTGRES: Migrator = sqlx::migrate!("./migrations/postgres");

static SQLITE: Migrator = sqlx::migrate!("./migrations/sqlite");

/// How long a request waits for a pooled connection before the store counts as unavailable.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);

/// Which database is behind the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// PostgreSQL (`postgres://` or `postgresql://`).
    Postgres,
    /// SQLite (`sqlite:`), the single-node default.
    Sqlite,
}

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The URL names neither PostgreSQL nor SQLite.
    #[error("unsupported database URL: use postgres://… or sqlite:…")]
    Scheme,
    /// The database refused or failed.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// A migration failed.
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// The random source failed (making an id).
    #[error("random source failed")]
    Random,
    /// The SQLite file or its directory could not be created or restricted.
    #[error("preparing {path}: {source}")]
    File {
        /// The file or directory.
        path: String,
        /// What the system said.
        #[source]
        source: std::io::Error,
    },
}

/// A random UUID (v4), for ids the store assigns.
pub(super) fn new_id() -> Result<String, StoreError> {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 16];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| StoreError::Random)?;
    Ok(bamf_proto::san::Uuid::new_v4(bytes).to_string())
}

/// The database file of a SQLite URL (`sqlite://path?…`, `sqlite:path`); `None` in memory.
pub fn sqlite_file(url: &str) -> Option<std::path::PathBuf> {
    let rest = url.strip_prefix("sqlite:")?;
    let rest = rest.strip_prefix("//").unwrap_or(rest);
    let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
    if path.is_empty() || path == ":memory:" || query.split('&').any(|p| p == "mode=memory") {
        return None;
    }
    Some(std::path::PathBuf::from(path))
}

/// The SQLite file holds the CA and every credential hash, so it is the service's alone
/// whatever the umask: missing directories are made 0700, the file 0600 (created here when
/// `create`, tightened when it exists, with its `-wal` and `-shm` companions, which SQLite
/// creates with the file's mode).
pub(super) fn restrict_sqlite_file(file: &std::path::Path, create: bool) -> Result<(), StoreError> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
    let failed = |path: &std::path::Path| {
        let path = path.display().to_string();
        move |source| StoreError::File { path, source }
    };
    if let Some(dir) = file.parent().filter(|d| !d.as_os_str().is_empty())
        && create
        && !dir.exists()
    {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(failed(dir))?;
    }
    if create {
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(file)
            .map_err(failed(file))?;
    }
    let mut companions = file.as_os_str().to_owned();
    companions.push("-wal");
    let wal = std::path::PathBuf::from(&companions);
    companions = file.as_os_str().to_owned();
    companions.push("-shm");
    let shm = std::path::PathBuf::from(&companions);
    for path in [file, wal.as_path(), shm.as_path()] {
        match std::fs::metadata(path) {
            Ok(meta) if meta.permissions().mode() & 0o077 != 0 => {
                std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
                    .map_err(failed(path))?;
                tracing::warn!(file = %path.display(), "database file was readable by others: now 0600");
            }
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(failed(path)(e)),
        }
    }
    Ok(())
}

/// The store.
#[derive(Debug, Clone)]
pub struct Store {
    pool: AnyPool,
    backend: Backend,
}

impl Store {
    /// Connects and runs the embedded migrations.
    ///
    /// # Errors
    ///
    /// [`StoreError`] if the URL is not supported, the database is unreachable, or a
    /// migration fails.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        sqlx::any::install_default_drivers();
        let backend = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Backend::Postgres
        } else if url.starts_with("sqlite:") {
            if let Some(file) = sqlite_file(url) {
                restrict_sqlite_file(&file, url.contains("mode=rwc"))?;
            }
            Backend::Sqlite
        } else {
            return Err(StoreError::Scheme);
        };
        let pool = AnyPoolOptions::new()
            .max_connections(match backend {
                Backend::Postgres => 16,
                // SQLite serialises writers anyway; a few readers are enough.
                Backend::Sqlite => 4,
            })
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect(url)
            .await?;
        match backend {
            Backend::Postgres => POSTGRES.run(&pool).await?,
            Backend::Sqlite => SQLITE.run(&pool).await?,
        }
        Ok(Self { pool, backend })
    }

    /// Which database this is.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Whether the database answers (for `/ready`).
    ///
    /// # Errors
    ///
    /// [`StoreError::Database`] when it does not.
    pub async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    /// The pool, for the store's own tests.
    #[cfg(test)]
    pub(crate) fn pool(&self) -> &AnyPool {
        &self.pool
    }
}

/// Runs a statement whose one parameter (`$1`) is `key` in `tx`; returns the rows it touched.
pub(crate) async fn run_for<'k, K>(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    sql: &'static str,
    key: K,
) -> Result<u64, StoreError>
where
    K: 'k + sqlx::Encode<'k, sqlx::Any> + sqlx::Type<sqlx::Any> + Send,
{
    Ok(sqlx::query(sql)
        .bind(key)
        .execute(&mut **tx)
        .await?
        .rows_affected())
}

#[cfg(test)]
mod tests;

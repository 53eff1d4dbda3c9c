//! The durable store: PostgreSQL in production, SQLite for a single node.
//!
//! One set of queries serves both: sqlx's `Any` driver, `$n` placeholders (SQLite reads them
//! as numbered parameters), times as Unix milliseconds and ids as text. Only the DDL differs,
//! in `migrations/postgres` and `migrations/sqlite`, which are embedded in the binary and run
//! at connect. No SQL lives outside this module.

use std::time::Duration;

use sqlx::AnyPool;
use sqlx::Row;
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::migrate::Migrator;

mod fleet;
mod identity;
mod sessions;

pub use fleet::{Agent, Bridge, CertificateRef, CertificateSubject, Resource, Revocation, Revoked};
pub use identity::{Role, RoleChange, User};
pub use sessions::{Report, Session, SessionFilter};

static POSTGRES: Migrator = sqlx::migrate!("./migrations/postgres");
static SQLITE: Migrator = sqlx::migrate!("./migrations/sqlite");

/// How long a request waits for a pooled connection before the store counts as unavailable.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);

/// Largest page of audit events one call returns.
pub const MAX_AUDIT_PAGE: u32 = 500;

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
fn new_id() -> Result<String, StoreError> {
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
fn restrict_sqlite_file(file: &std::path::Path, create: bool) -> Result<(), StoreError> {
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

/// An audit event to append.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewAuditEvent {
    /// Unix milliseconds.
    pub at: i64,
    /// Who acted: `user:alice`, `agent:<id>`, `bridge:3`, `anonymous:<address>`.
    pub actor: String,
    /// What happened, e.g. `auth.login`, `user.create`, `connect.denied`.
    pub kind: String,
    /// `allowed`, `denied`, `failed`.
    pub outcome: String,
    /// JSON object with the details (never secrets).
    pub detail: String,
}

/// A stored audit event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEvent {
    /// Increasing id; also the pagination cursor.
    pub id: i64,
    /// The event.
    pub event: NewAuditEvent,
}

/// Which audit events to list. Every field narrows the result; `None` means any.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditFilter {
    /// Exact actor.
    pub actor: Option<String>,
    /// Exact kind.
    pub kind: Option<String>,
    /// At or after, Unix milliseconds.
    pub since: Option<i64>,
    /// Before, Unix milliseconds.
    pub until: Option<i64>,
}

pub use bamf_proto::api::JoinKind;

/// A join token as stored (the secret itself is never stored).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinToken {
    /// Public id (for listing and revoking).
    pub id: String,
    /// What it admits.
    pub kind: JoinKind,
    /// Unix milliseconds.
    pub expires_at: i64,
    /// Uses allowed.
    pub max_uses: i64,
    /// Uses so far.
    pub uses: i64,
    /// Revoked by an administrator.
    pub revoked: bool,
    /// Who created it (`user:<name>`).
    pub created_by: String,
    /// Unix milliseconds.
    pub created_at: i64,
}

/// How a join went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JoinOutcome {
    /// Joined.
    Joined,
    /// The token is unknown, of another kind, expired, exhausted or revoked.
    InvalidToken,
    /// An agent of that name exists (the token was not used up).
    NameTaken,
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
        .execute(&self.pool)
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
        .execute(&self.pool)
        .await?;
        Ok(())
    }

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
        .execute(&self.pool)
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

    /// Binds a user to a role (idempotent).
    ///
    /// # Errors
    ///
    /// [`StoreError::Database`], also when the user or role does not exist.
    pub async fn bind_role(&self, user: &str, role: &str) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO role_bindings (user_name, role_name) VALUES ($1, $2) \
             ON CONFLICT (user_name, role_name) DO NOTHING",
        )
        .bind(user)
        .bind(role)
        .execute(&self.pool)
        .await?;
        Ok(())
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

    /// Saves a join token (only its hash).
    ///
    /// # Errors
    ///
    /// [`StoreError::Database`].
    pub async fn create_join_token(
        &self,
        t: &JoinToken,
        token_hash: &str,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO join_tokens (id, token_hash, kind, expires_at, max_uses, created_by, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(&t.id)
        .bind(token_hash)
        .bind(t.kind.as_str())
        .bind(t.expires_at)
        .bind(t.max_uses)
        .bind(&t.created_by)
        .bind(t.created_at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Installs (or replaces) a standing join token from the deployment's configuration, under
    /// the fixed id `bootstrap-<kind>`: it never expires and has no practical use limit
    /// (bridge pods join again at every restart). Revoking it in the API holds until the
    /// configured secret changes.
    ///
    /// # Errors
    ///
    /// [`StoreError::Database`].
    pub async fn install_bootstrap_token(
        &self,
        kind: JoinKind,
        token_hash: &str,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO join_tokens (id, token_hash, kind, expires_at, max_uses, created_by, created_at) \
             VALUES ($1, $2, $3, $4, $5, 'configuration', $6) \
             ON CONFLICT (id) DO UPDATE SET token_hash = $2, \
             revoked = CASE WHEN join_tokens.token_hash = $2 THEN join_tokens.revoked ELSE 0 END",
        )
        .bind(format!("bootstrap-{}", kind.as_str()))
        .bind(token_hash)
        .bind(kind.as_str())
        .bind(i64::MAX / 2)
        .bind(i64::MAX / 2)
        .bind(now_ms)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Every join token, newest first (never their secrets).
    ///
    /// # Errors
    ///
    /// [`StoreError::Database`].
    pub async fn join_tokens(&self) -> Result<Vec<JoinToken>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, kind, expires_at, max_uses, uses, revoked, created_by, created_at \
             FROM join_tokens ORDER BY created_at DESC, id",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                let kind: String = r.try_get(1)?;
                Ok(JoinToken {
                    id: r.try_get(0)?,
                    kind: JoinKind::parse(&kind)
                        .ok_or(StoreError::Database(sqlx::Error::RowNotFound))?,
                    expires_at: r.try_get(2)?,
                    max_uses: r.try_get(3)?,
                    uses: r.try_get(4)?,
                    revoked: r.try_get::<i64, _>(5)? != 0,
                    created_by: r.try_get(6)?,
                    created_at: r.try_get(7)?,
                })
            })
            .collect()
    }

    /// Revokes a join token; `false` when there is no such token.
    ///
    /// # Errors
    ///
    /// [`StoreError::Database`].
    pub async fn revoke_join_token(&self, id: &str) -> Result<bool, StoreError> {
        let done = sqlx::query("UPDATE join_tokens SET revoked = 1 WHERE id = $1")
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Uses a join token of `kind` once, if it is valid now (not revoked, not expired, uses
    /// left), and in the same transaction registers the agent `name` under `agent_id`.
    /// One statement decides validity, so concurrent joins never overuse a token.
    ///
    /// # Errors
    ///
    /// [`StoreError::Database`].
    pub async fn join_agent(
        &self,
        token_hash: &str,
        agent_id: &str,
        name: &str,
        now_ms: i64,
    ) -> Result<JoinOutcome, StoreError> {
        let mut tx = self.pool.begin().await?;
        if !use_join_token(&mut tx, token_hash, JoinKind::Agent, now_ms).await? {
            return Ok(JoinOutcome::InvalidToken);
        }
        let inserted = sqlx::query(
            "INSERT INTO agents (id, name, joined_at) VALUES ($1, $2, $3) ON CONFLICT (name) DO NOTHING",
        )
        .bind(agent_id)
        .bind(name)
        .bind(now_ms)
        .execute(&mut *tx)
        .await?;
        if inserted.rows_affected() != 1 {
            // Rolled back on drop: the token use is not spent on a refused join.
            return Ok(JoinOutcome::NameTaken);
        }
        tx.commit().await?;
        Ok(JoinOutcome::Joined)
    }

    /// Uses a bridge join token once, if valid now, and records the bridge `ordinal`.
    ///
    /// # Errors
    ///
    /// [`StoreError::Database`].
    pub async fn join_bridge(
        &self,
        token_hash: &str,
        ordinal: u32,
        now_ms: i64,
    ) -> Result<JoinOutcome, StoreError> {
        let mut tx = self.pool.begin().await?;
        if !use_join_token(&mut tx, token_hash, JoinKind::Bridge, now_ms).await? {
            return Ok(JoinOutcome::InvalidToken);
        }
        // A bridge pod that restarts joins again under the same ordinal.
        sqlx::query(
            "INSERT INTO bridges (ordinal, joined_at) VALUES ($1, $2) \
             ON CONFLICT (ordinal) DO UPDATE SET joined_at = $2",
        )
        .bind(i64::from(ordinal))
        .bind(now_ms)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(JoinOutcome::Joined)
    }

    /// Appends an audit event and returns its id.
    ///
    /// # Errors
    ///
    /// [`StoreError::Database`].
    pub async fn append_audit(&self, e: &NewAuditEvent) -> Result<i64, StoreError> {
        let row = sqlx::query(
            "INSERT INTO audit_events (at, actor, kind, outcome, detail) \
             VALUES ($1, $2, $3, $4, $5) RETURNING id",
        )
        .bind(e.at)
        .bind(&e.actor)
        .bind(&e.kind)
        .bind(&e.outcome)
        .bind(&e.detail)
        .fetch_one(&self.pool)
        .await?;
        Ok(row.try_get(0)?)
    }

    /// Audit events matching `filter`, newest first, at most `limit` (capped at
    /// [`MAX_AUDIT_PAGE`]), strictly older than the cursor `before` (an event id).
    ///
    /// # Errors
    ///
    /// [`StoreError::Database`].
    pub async fn audit(
        &self,
        filter: &AuditFilter,
        before: Option<i64>,
        limit: u32,
    ) -> Result<Vec<AuditEvent>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, at, actor, kind, outcome, detail FROM audit_events \
             WHERE ($1 IS NULL OR actor = $1) AND ($2 IS NULL OR kind = $2) \
               AND ($3 IS NULL OR at >= $3) AND ($4 IS NULL OR at < $4) \
               AND ($5 IS NULL OR id < $5) \
             ORDER BY id DESC LIMIT $6",
        )
        .bind(filter.actor.as_deref())
        .bind(filter.kind.as_deref())
        .bind(filter.since)
        .bind(filter.until)
        .bind(before)
        .bind(i64::from(limit.clamp(1, MAX_AUDIT_PAGE)))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(audit_event).collect()
    }

    /// The pool, for the store's own tests.
    #[cfg(test)]
    pub(crate) fn pool(&self) -> &AnyPool {
        &self.pool
    }
}

/// Uses a join token of `kind` once if it is valid at `now_ms` (not revoked, not expired,
/// uses left). One statement decides, so concurrent joins never overuse a token.
async fn use_join_token(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    token_hash: &str,
    kind: JoinKind,
    now_ms: i64,
) -> Result<bool, StoreError> {
    let used = sqlx::query(
        "UPDATE join_tokens SET uses = uses + 1 WHERE token_hash = $1 AND kind = $2 \
         AND revoked = 0 AND expires_at > $3 AND uses < max_uses",
    )
    .bind(token_hash)
    .bind(kind.as_str())
    .bind(now_ms)
    .execute(&mut **tx)
    .await?;
    Ok(used.rows_affected() == 1)
}

fn audit_event(r: &AnyRow) -> Result<AuditEvent, StoreError> {
    Ok(AuditEvent {
        id: r.try_get(0)?,
        event: NewAuditEvent {
            at: r.try_get(1)?,
            actor: r.try_get(2)?,
            kind: r.try_get(3)?,
            outcome: r.try_get(4)?,
            detail: r.try_get(5)?,
        },
    })
}

#[cfg(test)]
mod tests;

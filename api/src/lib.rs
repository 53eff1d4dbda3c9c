//! BAMF control plane (`bamf-api`).
//!
//! The control plane is the only holder of the CA key, the only writer of the store and the
//! judge of who may reach what.
//!
//! # Layout
//!
//! - [`ca`]: the internal certificate authority: generate or bring your own, issue
//!   certificates only from CSRs, with identities from `bamf_proto::san`. [`seal`]: the CA
//!   key encrypted at rest.
//! - [`store`]: PostgreSQL or SQLite behind one set of queries; embedded migrations; users,
//!   roles, join tokens, agents, bridges, resources, revocations, the append-only audit log.
//! - [`presence`]: liveness with TTLs (bridges, agents) and agent command pub/sub, in Redis
//!   or in process.
//! - [`server`]: HTTPS with optional client certificates, limits, request logs and metrics,
//!   graceful shutdown. [`context`]: the state handlers reach and the [`context::Caller`]
//!   the handshake established.
//! - [`access`]: who may call a route, and `authenticate`. [`routes`]: every route
//!   in one table, each row with its access, contract types and handler. [`openapi`]: the
//!   document generated from that table. [`error`]: status and stable code per refusal.
//!   [`rbac`]: roles, rules, deny wins, default deny (from `bamf_proto`).
//! - [`placement`] and [`reconcile`]: which bridge a session goes to, and ending the sessions
//!   of bridges that are gone. [`metrics`]: the API's Prometheus metrics.
//! - [`auth`]: argon2id password hashes, opaque API tokens (kept as hashes), login limits.
//!   [`sso`]: single sign-on with OpenID Connect (the API as confidential client), the
//!   ID-token validator, claims to roles.
//! - [`tls`]: the certificate the API presents: the internal CA's, or a public one from
//!   files for its public host, reloaded when they change. [`purge`]: the hourly purge
//!   of audit events and ended sessions past the retention period.

pub mod access;
pub mod auth;
pub mod ca;
pub mod connections;
pub mod context;
pub mod error;
pub mod metrics;
pub mod openapi;
pub mod placement;
pub mod presence;
pub mod purge;
pub mod reconcile;
pub mod routes;
pub mod seal;
pub mod server;
pub mod sso;
pub mod store;
pub mod tls;

pub use bamf_proto::rbac;

use crate::ca::{Authority, CaError};
use crate::store::{Store, StoreError, StoredCa};

/// Name of the first administrator, created when the store has no users.
pub const BOOTSTRAP_ADMIN: &str = "admin";

/// Creates the first administrator when there are no users yet, with `password` or, when
/// none is given, a generated one. Returns the generated password (to be shown once).
///
/// # Errors
///
/// The store fails, or the password cannot be hashed.
pub async fn bootstrap_admin(
    store: &Store,
    password: Option<String>,
) -> anyhow::Result<Option<String>> {
    if store.count_users().await? > 0 {
        return Ok(None);
    }
    let (password, generated) = match password {
        Some(p) => (p, false),
        None => (generate_password()?, true),
    };
    let to_hash = password.clone();
    let hash = tokio::task::spawn_blocking(move || auth::hash_password(&to_hash))
        .await?
        .map_err(|e| anyhow::anyhow!("hashing the admin password: {e}"))?;
    if store.create_user(BOOTSTRAP_ADMIN, &hash, now_ms()).await? {
        store.bind_role(BOOTSTRAP_ADMIN, "admin").await?;
        store.bind_role(BOOTSTRAP_ADMIN, "everyone").await?;
    }
    Ok(generated.then_some(password))
}

/// 20 characters from a 32-letter alphabet without look-alikes: 100 bits.
fn generate_password() -> anyhow::Result<String> {
    use ring::rand::SecureRandom;
    const ALPHABET: &[u8; 32] = b"abcdefghjkmnpqrstuvwxyz23456789-";
    let mut bytes = [0u8; 20];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| anyhow::anyhow!("random source failed"))?;
    Ok(bytes
        .iter()
        .map(|b| char::from(ALPHABET[usize::from(b % 32)]))
        .collect())
}

/// A time as the store keeps it: Unix milliseconds.
pub fn unix_ms(t: time::OffsetDateTime) -> i64 {
    i64::try_from(t.unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX)
}

/// Now, in Unix milliseconds.
pub fn now_ms() -> i64 {
    unix_ms(time::OffsetDateTime::now_utc())
}

/// Where the CA comes from and how its key is kept.
#[derive(Debug, Default)]
pub struct CaSetup {
    /// Bring your own CA: certificate and key PEM, used when the store has no CA yet (and
    /// required to match the stored one otherwise).
    pub provided: Option<(String, String)>,
    /// Encrypts the CA key at rest; a key stored in the clear is encrypted at start.
    pub sealing: Option<seal::SealingKey>,
    /// Without `sealing`: the file the sealing key is kept in, generated there when the CA
    /// key needs sealing and the file does not exist yet.
    pub sealing_file: Option<seal::KeyFile>,
}

/// Why the CA could not be made ready.
#[derive(Debug, thiserror::Error)]
pub enum CaSetupError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The stored, provided or generated CA is unusable.
    #[error(transparent)]
    Ca(#[from] CaError),
    /// The CA key could not be sealed or opened.
    #[error(transparent)]
    Seal(#[from] seal::SealError),
    /// The stored key is encrypted and no key was configured.
    #[error(
        "the stored CA key is encrypted: set BAMF_CA_ENCRYPTION_KEY or \
         --ca-sealing-key-file to the key that sealed it"
    )]
    KeyRequired,
    /// The sealing key file could not be read or written.
    #[error("CA sealing key file {path}: {source}")]
    KeyFile {
        /// The file.
        path: String,
        /// What failed.
        #[source]
        source: std::io::Error,
    },
    /// The provided CA is not the one in the store.
    #[error("the store already holds a different CA than the one provided (BAMF_CA_CERT_FILE)")]
    Different,
}

/// The CA from the store, or a new one (provided or generated) saved there. Replicas
/// starting together each make one; the first saved wins and all use it.
///
/// # Errors
///
/// [`CaSetupError`].
pub async fn load_or_create_ca(
    store: &Store,
    name: &str,
    setup: &CaSetup,
) -> Result<Authority, CaSetupError> {
    let now = time::OffsetDateTime::now_utc();
    let existing = store.ca().await?;
    let key_file_failed = |file: &seal::KeyFile| {
        let path = file.0.display().to_string();
        move |source| CaSetupError::KeyFile { path, source }
    };
    let generated;
    let sealing = match (&setup.sealing, &setup.sealing_file) {
        (Some(key), _) => Some(key),
        (None, Some(file)) => {
            generated = match file.read().map_err(key_file_failed(file))? {
                Some(key) => Some(key),
                // A new key only when there is a key to seal: a sealed CA needs its own key.
                None if existing.as_ref().is_none_or(|ca| !ca.key_encrypted) => {
                    let key = file.generate().map_err(key_file_failed(file))?;
                    tracing::info!(file = %file.0.display(), "generated the CA sealing key");
                    Some(key)
                }
                None => None,
            };
            generated.as_ref()
        }
        (None, None) => None,
    };
    let stored = match existing {
        Some(stored) => stored,
        None => {
            let fresh = match &setup.provided {
                Some((cert, key)) => Authority::from_pem(cert, key)?,
                None => Authority::generate(name, now)?,
            };
            let key_pem = match sealing {
                Some(s) => s.seal(fresh.key_pem(), fresh.cert_pem())?,
                None => fresh.key_pem().to_owned(),
            };
            let candidate = StoredCa {
                cert_pem: fresh.cert_pem().to_owned(),
                key_pem,
                key_encrypted: sealing.is_some(),
            };
            store.save_ca_if_absent(&candidate, unix_ms(now)).await?
        }
    };
    if let Some((cert, _)) = &setup.provided
        && ca::pem_der(cert) != ca::pem_der(&stored.cert_pem)
    {
        return Err(CaSetupError::Different);
    }
    let key_pem = match (stored.key_encrypted, sealing) {
        (true, Some(s)) => s.open(&stored.key_pem, &stored.cert_pem)?,
        (true, None) => return Err(CaSetupError::KeyRequired),
        (false, Some(s)) => {
            let sealed = s.seal(&stored.key_pem, &stored.cert_pem)?;
            store.update_ca_key(&sealed, true).await?;
            tracing::info!("the CA key is now encrypted at rest");
            stored.key_pem
        }
        (false, None) => {
            tracing::warn!(
                "the CA key is stored unencrypted: set BAMF_CA_ENCRYPTION_KEY or \
                 --ca-sealing-key-file to seal it"
            );
            stored.key_pem
        }
    };
    Ok(Authority::from_pem(&stored.cert_pem, &key_pem)?)
}

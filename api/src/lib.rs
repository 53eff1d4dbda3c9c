//! BAMF control plane (`bamf-api`).
//!
//! The control plane is the only holder of the CA key, the only writer of the store and the
//! judge of who may reach what. This crate is being built up by the control-plane issue;
//! what exists so far:
//!
//! # Layout
//!
//! - [`ca`]: the internal certificate authority: generate or bring your own, issue
//!   certificates only from CSRs, with identities from `bamf_proto::san`.
//! - [`store`]: PostgreSQL or SQLite behind one set of queries; embedded migrations; the CA
//!   row and the append-only audit log so far.
//! - [`presence`]: liveness with TTLs (bridges, agents, API tokens) and agent command
//!   pub/sub, in Redis or in process.
//! - [`server`]: HTTPS with optional client certificates, the [`server::Caller`] they
//!   establish, limits, request logs, graceful shutdown.
//! - [`routes`]: every route in one match. [`error`]: status and stable code per refusal.
//! - [`auth`]: argon2id password hashes, opaque API tokens (kept as hashes), login limits.
//!
//! Still to come (control-plane issue): join tokens, RBAC, admin CRUD, the rest of the
//! store's queries, CA key encryption at rest, and OpenAPI.

pub mod auth;
pub mod ca;
pub mod error;
pub mod presence;
pub mod routes;
pub mod server;
pub mod store;

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
    let millis = i64::try_from(time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000)
        .unwrap_or(i64::MAX);
    if store.create_user(BOOTSTRAP_ADMIN, &hash, millis).await? {
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

/// Why the CA could not be made ready.
#[derive(Debug, thiserror::Error)]
pub enum CaSetupError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The stored or generated CA is unusable.
    #[error(transparent)]
    Ca(#[from] CaError),
    /// The stored key is encrypted and this build cannot decrypt it yet.
    #[error("the stored CA key is encrypted; key decryption is not implemented yet")]
    Encrypted,
}

/// The CA from the store, or a new one saved there. Replicas starting together each
/// generate one; the first saved wins and all use it.
///
/// # Errors
///
/// [`CaSetupError`].
pub async fn load_or_create_ca(store: &Store, name: &str) -> Result<Authority, CaSetupError> {
    let now = time::OffsetDateTime::now_utc();
    let stored = match store.ca().await? {
        Some(stored) => stored,
        None => {
            let fresh = Authority::generate(name, now)?;
            let candidate = StoredCa {
                cert_pem: fresh.cert_pem().to_owned(),
                key_pem: fresh.key_pem().to_owned(),
                key_encrypted: false,
            };
            let millis = i64::try_from(now.unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX);
            store.save_ca_if_absent(&candidate, millis).await?
        }
    };
    if stored.key_encrypted {
        return Err(CaSetupError::Encrypted);
    }
    Ok(Authority::from_pem(&stored.cert_pem, &stored.key_pem)?)
}

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
//!
//! Still to come (control-plane issue): users and login, join tokens, RBAC, the rest of the
//! store's queries, CA key encryption at rest, and OpenAPI.

pub mod ca;
pub mod error;
pub mod presence;
pub mod routes;
pub mod server;
pub mod store;

use crate::ca::{Authority, CaError};
use crate::store::{Store, StoreError, StoredCa};

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

//! What every caller of BAMF shares: the bridge, the agent and the `bamf` CLI.
//!
//! - [`api`]: one typed method per API route, with the contract's types.
//! - [`enroll`]: the identity's files (crash-safe), checking what the API issued, renewal at
//!   half-life; [`backoff`]: jittered exponential back-off for every retry; [`batch`]: what
//!   bridges and agents report about sessions, sent in batches and retried.
//! - [`https`]: a small JSON-over-HTTPS client for the API, with the CA as the only trust
//!   root (the CLI adds the system's roots: [`api_tls_config`]) and an optional client
//!   certificate (agents and bridges authenticate by it).
//! - [`proxy`]: HTTP proxies from the environment and the `CONNECT` through one.
//! - [`identity`]: private keys and CSRs made locally (the key never leaves the host),
//!   certificate files written 0600, and when a certificate is due for renewal.
//! - [`tunnel`]: dialling a bridge by its name (SNI) with a session or agent certificate.
//! - [`e2e`]: the handover from the bridge's TLS to the end-to-end session between client and
//!   agent, and that session's TLS configurations; [`record`]: that session's TLS 1.3
//!   records, sealed and opened in place; [`resume`]: carrying a connection through a
//!   resumable stream over successive end-to-end sessions.

pub mod api;
pub mod backoff;
pub mod batch;
pub mod e2e;
pub mod enroll;
pub mod https;
pub mod identity;
pub mod proxy;
pub mod record;
pub mod resume;
pub mod tunnel;

/// Makes a rustls client configuration that trusts only `ca_pem` and, when given, presents
/// `cert_pem` with `key_pem`.
///
/// # Errors
///
/// [`TlsError`] when a PEM does not parse or rustls refuses the configuration.
pub fn tls_config(
    ca_pem: &str,
    client: Option<(&str, &str)>,
    alpn: &[&[u8]],
) -> Result<std::sync::Arc<rustls::ClientConfig>, TlsError> {
    config_with_roots(roots(ca_pem)?, client, alpn)
}

/// [`tls_config`] for calling the API: trusts `ca_pem` and also the system's trust store
/// (`SSL_CERT_FILE` / `SSL_CERT_DIR` name another), since the API may present a publicly
/// trusted certificate for its public host. Never for dialling bridges or agents, which
/// only the internal CA may certify.
///
/// # Errors
///
/// As [`tls_config`]; an unreadable system store only means fewer roots.
pub fn api_tls_config(
    ca_pem: &str,
    client: Option<(&str, &str)>,
    alpn: &[&[u8]],
) -> Result<std::sync::Arc<rustls::ClientConfig>, TlsError> {
    let mut roots = roots(ca_pem)?;
    let system = rustls_native_certs::load_native_certs();
    let (added, _) = roots.add_parsable_certificates(system.certs);
    if added == 0 {
        tracing::debug!("no system trust roots: trusting the BAMF CA only");
    }
    config_with_roots(roots, client, alpn)
}

/// A configuration that trusts only the system's trust store (`SSL_CERT_FILE` /
/// `SSL_CERT_DIR` name another): whether an API is publicly certified, before any BAMF CA is
/// known.
///
/// # Errors
///
/// [`TlsError::Pem`] when the system store holds no usable root.
pub fn public_tls_config(alpn: &[&[u8]]) -> Result<std::sync::Arc<rustls::ClientConfig>, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    let (added, _) =
        roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
    if added == 0 {
        return Err(TlsError::Pem("system trust store"));
    }
    config_with_roots(roots, None, alpn)
}

fn config_with_roots(
    roots: rustls::RootCertStore,
    client: Option<(&str, &str)>,
    alpn: &[&[u8]],
) -> Result<std::sync::Arc<rustls::ClientConfig>, TlsError> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_root_certificates(roots);
    let mut config = match client {
        Some((cert_pem, key_pem)) => {
            let chain = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|_| TlsError::Pem("certificate"))?;
            let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
                .map_err(|_| TlsError::Pem("private key"))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| TlsError::Config(e.to_string()))?
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(std::sync::Arc::new(config))
}

/// The trust roots in `ca_pem` (one or more PEM certificates).
///
/// # Errors
///
/// [`TlsError`] when there is no certificate or one does not parse.
pub fn roots(ca_pem: &str) -> Result<rustls::RootCertStore, TlsError> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        let cert = cert.map_err(|_| TlsError::Pem("CA certificate"))?;
        roots
            .add(cert)
            .map_err(|e| TlsError::Config(e.to_string()))?;
    }
    if roots.is_empty() {
        return Err(TlsError::Pem("CA certificate"));
    }
    Ok(roots)
}

/// Why a TLS configuration could not be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TlsError {
    /// A PEM input did not parse.
    #[error("{0} is not valid PEM")]
    Pem(&'static str),
    /// rustls refused the configuration.
    #[error("TLS configuration: {0}")]
    Config(String),
}

//! Which certificate the API presents: a publicly trusted one for its public host, when the
//! deployment gives one as files (`BAMF_API_TLS_CERT_FILE` / `BAMF_API_TLS_KEY_FILE`, e.g.
//! from cert-manager), else the certificate of the internal CA.
//!
//! Only the server's own certificate changes: client certificates are verified against the
//! internal CA either way, so agents, bridges and users keep mutual TLS. A handshake whose
//! server name is the public host gets the public certificate; every other name (the
//! in-cluster alternative names) and a handshake without a name get the internal one, which
//! is what agents and bridges holding only the internal CA verify.
//!
//! The files may be missing at start (a certificate not issued yet): then the internal
//! certificate is served and the files are watched. They are polled every
//! [`POLL_INTERVAL`]; a changed pair is loaded without a restart, and a pair that does not
//! load (unparsable, mismatched key, not naming the host) is logged and the previous one kept.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use bamf_proto::HostName;
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};

/// How often the public certificate's files are checked for a change.
pub const POLL_INTERVAL: Duration = Duration::from_secs(2);

/// The files of the public host's certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicFiles {
    /// PEM chain, leaf first.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
}

/// Why a public certificate pair was not loaded.
#[derive(Debug, thiserror::Error)]
pub enum PublicCertError {
    /// A file could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// What the system said.
        #[source]
        source: std::io::Error,
    },
    /// The certificate file holds no PEM certificate, or one does not parse.
    #[error("{0}: no PEM certificate")]
    NoCertificate(String),
    /// The key file holds no PEM private key.
    #[error("{0}: no PEM private key")]
    NoKey(String),
    /// rustls refused the pair (unsupported key, key not matching the certificate).
    #[error("certificate and key: {0}")]
    Pair(String),
    /// The certificate does not name the API's public host.
    #[error("the certificate does not name {0}")]
    WrongName(String),
}

/// The two certificates and the choice between them.
#[derive(Debug)]
pub struct ServerCertificates {
    internal: Arc<CertifiedKey>,
    public_host: String,
    public: RwLock<Option<Arc<CertifiedKey>>>,
}

impl ServerCertificates {
    /// The internal certificate for every name; `public_host` gets the public one once
    /// [`ServerCertificates::set_public`] gave one.
    pub fn new(internal: Arc<CertifiedKey>, public_host: &HostName) -> Self {
        Self {
            internal,
            public_host: public_host.as_str().to_ascii_lowercase(),
            public: RwLock::new(None),
        }
    }

    /// Serves `key` for the public host from the next handshake on.
    pub fn set_public(&self, key: Arc<CertifiedKey>) {
        *self
            .public
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(key);
    }

    /// Whether a public certificate is being served.
    pub fn has_public(&self) -> bool {
        self.public
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .is_some()
    }

    fn choose(&self, server_name: Option<&str>) -> Arc<CertifiedKey> {
        if server_name.is_some_and(|name| name.eq_ignore_ascii_case(&self.public_host))
            && let Some(public) = self
                .public
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .clone()
        {
            return public;
        }
        self.internal.clone()
    }
}

impl ResolvesServerCert for ServerCertificates {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.choose(hello.server_name()))
    }
}

/// Loads a certificate chain and its key, checking that they match and that the leaf is
/// valid for `host`.
///
/// # Errors
///
/// [`PublicCertError`].
pub fn load_public(
    files: &PublicFiles,
    host: &HostName,
    provider: &CryptoProvider,
) -> Result<Arc<CertifiedKey>, PublicCertError> {
    let read = |path: &Path| {
        std::fs::read(path).map_err(|source| PublicCertError::Read {
            path: path.display().to_string(),
            source,
        })
    };
    let cert_pem = read(&files.cert)?;
    let key_pem = read(&files.key)?;
    let no_cert = || PublicCertError::NoCertificate(files.cert.display().to_string());
    let chain = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| no_cert())?;
    let leaf = chain.first().ok_or_else(no_cert)?;
    let name = ServerName::try_from(host.as_str())
        .map_err(|_| PublicCertError::WrongName(host.to_string()))?;
    webpki::EndEntityCert::try_from(leaf)
        .map_err(|_| no_cert())?
        .verify_is_valid_for_subject_name(&name)
        .map_err(|_| PublicCertError::WrongName(host.to_string()))?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem)
        .map_err(|_| PublicCertError::NoKey(files.key.display().to_string()))?;
    let certified = CertifiedKey::from_der(chain, key, provider)
        .map_err(|e| PublicCertError::Pair(e.to_string()))?;
    Ok(Arc::new(certified))
}

/// What identifies a version of the files: modification time, size and inode of each
/// (following symbolic links, as a Kubernetes Secret mount swaps them).
type Version = [Option<(SystemTime, u64, u64)>; 2];

fn version(files: &PublicFiles) -> Version {
    use std::os::unix::fs::MetadataExt;
    let of = |path: &Path| {
        let meta = std::fs::metadata(path).ok()?;
        Some((meta.modified().ok()?, meta.len(), meta.ino()))
    };
    [of(&files.cert), of(&files.key)]
}

/// The public certificate at start: loaded when its files exist, `None` (and logged) when
/// either is missing.
///
/// # Errors
///
/// [`PublicCertError`] when the files exist but do not load: a configuration mistake,
/// reported before the server starts.
pub fn initial(
    certs: &ServerCertificates,
    files: &PublicFiles,
    host: &HostName,
    provider: &CryptoProvider,
) -> Result<(), PublicCertError> {
    if !files.cert.exists() || !files.key.exists() {
        tracing::warn!(
            cert = %files.cert.display(),
            key = %files.key.display(),
            "the public certificate's files are not there yet: serving the internal CA's certificate for {host} until they appear",
        );
        return Ok(());
    }
    let key = load_public(files, host, provider)?;
    log_loaded(&key, files, host);
    certs.set_public(key);
    Ok(())
}

/// Reloads the public certificate whenever its files change, until `stop`.
pub async fn watch(
    certs: Arc<ServerCertificates>,
    files: PublicFiles,
    host: HostName,
    provider: Arc<CryptoProvider>,
    stop: tokio_util::sync::CancellationToken,
) {
    let mut seen = version(&files);
    let mut tick = tokio::time::interval(POLL_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let now = version(&files);
        if now == seen || now.iter().any(Option::is_none) {
            continue;
        }
        seen = now;
        match load_public(&files, &host, &provider) {
            Ok(key) => {
                log_loaded(&key, &files, &host);
                certs.set_public(key);
            }
            Err(e) => tracing::error!(
                error = %e,
                serving = if certs.has_public() { "the previous public certificate" } else { "the internal CA's certificate" },
                "the public certificate's files changed but do not load",
            ),
        }
    }
}

fn log_loaded(key: &CertifiedKey, files: &PublicFiles, host: &HostName) {
    use x509_parser::prelude::FromDer;
    let (serial, not_after) = key
        .end_entity_cert()
        .ok()
        .and_then(|der| x509_parser::certificate::X509Certificate::from_der(der).ok())
        .map(|(_, c)| {
            (
                bamf_proto::hex::encode(c.raw_serial()),
                c.validity().not_after.to_string(),
            )
        })
        .unwrap_or_default();
    tracing::info!(
        %host,
        cert = %files.cert.display(),
        serial,
        not_after,
        "serving the public certificate",
    );
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn self_signed(names: &[&str]) -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let params = rcgen::CertificateParams::new(
            names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>(),
        )
        .unwrap();
        (params.self_signed(&key).unwrap().pem(), key.serialize_pem())
    }

    fn write(dir: &Path, cert: &str, key: &str) -> PublicFiles {
        let files = PublicFiles {
            cert: dir.join("tls.crt"),
            key: dir.join("tls.key"),
        };
        std::fs::write(&files.cert, cert).unwrap();
        std::fs::write(&files.key, key).unwrap();
        files
    }

    #[test]
    fn only_the_public_host_gets_the_public_certificate_and_bad_pairs_are_refused() {
        let provider = rustls::crypto::ring::default_provider();
        let dir = std::env::temp_dir().join(format!("bamf-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let host: HostName = "bamf.example.test".parse().unwrap();
        let (cert, key) = self_signed(&["localhost"]);
        let internal = load_public(
            &write(&dir, &cert, &key),
            &"localhost".parse().unwrap(),
            &provider,
        )
        .unwrap();
        let certs = ServerCertificates::new(internal.clone(), &host);
        let missing = PublicFiles {
            cert: dir.join("absent.crt"),
            key: dir.join("absent.key"),
        };
        initial(&certs, &missing, &host, &provider).unwrap();
        assert!(Arc::ptr_eq(
            &certs.choose(Some("bamf.example.test")),
            &internal
        ));

        let (pub_cert, pub_key) = self_signed(&["bamf.example.test"]);
        let files = write(&dir, &pub_cert, &pub_key);
        initial(&certs, &files, &host, &provider).unwrap();
        let public = certs.choose(Some("BAMF.example.test"));
        assert!(!Arc::ptr_eq(&public, &internal));
        assert!(Arc::ptr_eq(&certs.choose(Some("localhost")), &internal));
        assert!(Arc::ptr_eq(&certs.choose(None), &internal));

        // A key of another certificate, a certificate for another name, garbage.
        let (_, other_key) = self_signed(&["bamf.example.test"]);
        let mismatched = write(&dir, &pub_cert, &other_key);
        assert!(matches!(
            load_public(&mismatched, &host, &provider),
            Err(PublicCertError::Pair(_))
        ));
        let (wrong_cert, wrong_key) = self_signed(&["other.example.test"]);
        let wrong = write(&dir, &wrong_cert, &wrong_key);
        assert!(matches!(
            load_public(&wrong, &host, &provider),
            Err(PublicCertError::WrongName(_))
        ));
        let garbage = write(&dir, "nope", "nope");
        assert!(matches!(
            load_public(&garbage, &host, &provider),
            Err(PublicCertError::NoCertificate(_))
        ));
        assert!(initial(&certs, &garbage, &host, &provider).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}

//! Enrollment, shared by agents and bridges: the identity's files, checking what the API
//! issued, and renewal at half-life.
//!
//! - [`IdentityFiles`]: `<stem>.key` (0600, made here and never sent anywhere) and
//!   `<stem>.crt` in a 0700 directory. Every write is crash-safe: the new pair is written as
//!   `.next` files and committed key first, then certificate; [`IdentityFiles::load`]
//!   finishes or discards a commit a crash interrupted, so key and certificate always belong
//!   together.
//! - [`check_issued`]: an answer is used only when its certificate names the identity asked
//!   for and certifies the key we hold.
//! - [`renew_at_half_life`]: the renewal loop, with jittered back-off (a StatefulSet of
//!   bridges or a fleet of agents must not retry in lock-step).

use std::fmt::Display;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bamf_proto::san::Identity;
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::identity::{self, IdentityError};

/// A renewal task wakes at least this often to look at the clock again (a suspended host's
/// monotonic clock may lag the certificate's wall-clock deadline).
const RENEWAL_RECHECK: Duration = Duration::from_secs(3600);

/// A private key and the certificate issued for it, PEM.
#[derive(Clone)]
pub struct KeyPair {
    /// The private key.
    pub key_pem: String,
    /// The certificate.
    pub cert_pem: String,
}

impl std::fmt::Debug for KeyPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KeyPair(..)")
    }
}

/// Where an identity's key and certificate live.
#[derive(Debug, Clone)]
pub struct IdentityFiles {
    dir: PathBuf,
    key: String,
    cert: String,
}

impl IdentityFiles {
    /// `<dir>/<stem>.key` and `<dir>/<stem>.crt`; the directory is created 0700 when
    /// missing (a warning when an existing one is open to others).
    ///
    /// # Errors
    ///
    /// [`IdentityError::File`].
    pub fn open(dir: &Path, stem: &str) -> Result<Self, IdentityError> {
        make_private_dir(dir)?;
        Ok(Self {
            dir: dir.to_owned(),
            key: format!("{stem}.key"),
            cert: format!("{stem}.crt"),
        })
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn next(&self, file: &str) -> PathBuf {
        self.dir.join(format!("{file}.next"))
    }

    /// The stored pair, or `None` when there is none (or only half of one). Completes or
    /// discards a commit a crash interrupted first.
    ///
    /// # Errors
    ///
    /// [`IdentityError::File`].
    pub fn load(&self) -> Result<Option<KeyPair>, IdentityError> {
        self.finish_commit()?;
        let key = identity::read_optional(&self.dir.join(&self.key))?;
        let cert = identity::read_optional(&self.dir.join(&self.cert))?;
        Ok(match (key, cert) {
            (Some(key_pem), Some(cert_pem)) => Some(KeyPair { key_pem, cert_pem }),
            _ => None,
        })
    }

    /// Stores `pair` crash-safely: both `.next` files first, then the commit.
    ///
    /// # Errors
    ///
    /// [`IdentityError::File`].
    pub fn store(&self, pair: &KeyPair) -> Result<(), IdentityError> {
        identity::write_private(&self.next(&self.key), &pair.key_pem)?;
        identity::write_private(&self.next(&self.cert), &pair.cert_pem)?;
        self.finish_commit()
    }

    /// The new pair was written as `.next` files, key first; the commit renames the key,
    /// then the certificate:
    ///
    /// - both `.next` files: the pair is complete, commit it;
    /// - only the certificate: the key was committed, commit the certificate;
    /// - only the key: the certificate never arrived, the old pair stands.
    fn finish_commit(&self) -> Result<(), IdentityError> {
        let (next_key, next_cert) = (self.next(&self.key), self.next(&self.cert));
        let rename = |from: &Path, to: &str| {
            std::fs::rename(from, self.dir.join(to)).map_err(|error| IdentityError::File {
                path: from.to_owned(),
                error,
            })
        };
        match (next_key.exists(), next_cert.exists()) {
            (true, true) => {
                rename(&next_key, &self.key)?;
                rename(&next_cert, &self.cert)?;
            }
            (false, true) => rename(&next_cert, &self.cert)?,
            (true, false) => {
                std::fs::remove_file(&next_key).map_err(|error| IdentityError::File {
                    path: next_key.clone(),
                    error,
                })?;
            }
            (false, false) => {}
        }
        Ok(())
    }
}

/// Creates `dir` (and its parents) with mode 0700 when missing; warns when an existing one
/// is open to others.
fn make_private_dir(dir: &Path) -> Result<(), IdentityError> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let file_err = |error| IdentityError::File {
        path: dir.to_owned(),
        error,
    };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(file_err)?;
    let mode = std::fs::metadata(dir)
        .map_err(file_err)?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        tracing::warn!(
            data_dir = %dir.display(),
            mode = format!("{:o}", mode & 0o777),
            "the identity directory is accessible to other users; 0700 is expected"
        );
    }
    Ok(())
}

/// Why an issued certificate is not used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IssuedError {
    /// Not a certificate, or no identity of ours in it.
    #[error("the issued certificate does not parse or names no identity")]
    Malformed,
    /// It names someone else.
    #[error("the issued certificate names {got}, not {want}")]
    OtherIdentity {
        /// What it names.
        got: String,
        /// What was asked for.
        want: String,
    },
    /// It certifies another key than ours.
    #[error("the issued certificate is for another key")]
    OtherKey,
}

/// Checks that `cert_pem` names `want` and certifies the public key of `key_pem`.
///
/// # Errors
///
/// [`IssuedError`].
pub fn check_issued(cert_pem: &str, key_pem: &str, want: &Identity) -> Result<(), IssuedError> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    use x509_parser::prelude::FromDer;
    let der =
        CertificateDer::from_pem_slice(cert_pem.as_bytes()).map_err(|_| IssuedError::Malformed)?;
    let (_, cert) = x509_parser::certificate::X509Certificate::from_der(&der)
        .map_err(|_| IssuedError::Malformed)?;
    let got = Identity::of_certificate(&cert).map_err(|_| IssuedError::Malformed)?;
    if &got != want {
        return Err(IssuedError::OtherIdentity {
            got: got.uris().join(" "),
            want: want.uris().join(" "),
        });
    }
    use rcgen::PublicKeyData;
    let key = rcgen::KeyPair::from_pem(key_pem).map_err(|_| IssuedError::OtherKey)?;
    if cert.tbs_certificate.subject_pki.raw != key.subject_public_key_info().as_slice() {
        return Err(IssuedError::OtherKey);
    }
    Ok(())
}

/// Renews at half-life until `stop`. `renew` gets a new certificate (for a new key), stores
/// and installs it, and returns its PEM; a failure is logged and retried with jittered
/// back-off from one minute doubling to an hour.
pub async fn renew_at_half_life<F, Fut, E>(
    mut cert_pem: String,
    stop: &CancellationToken,
    mut renew: F,
) where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<String, E>>,
    E: Display,
{
    let mut backoff = Backoff::new(Duration::from_secs(60), Duration::from_secs(3600));
    loop {
        let wait = match identity::until_half_life(&cert_pem, time::OffsetDateTime::now_utc()) {
            Ok(wait) => wait,
            Err(e) => {
                tracing::error!(error = %e, "the certificate does not parse; renewing now");
                Duration::ZERO
            }
        };
        if !wait.is_zero() {
            if stop
                .run_until_cancelled(tokio::time::sleep(wait.min(RENEWAL_RECHECK)))
                .await
                .is_none()
            {
                return;
            }
            continue;
        }
        let Some(result) = stop.run_until_cancelled(renew()).await else {
            return;
        };
        match result {
            Ok(renewed) => {
                backoff.reset();
                match identity::validity(&renewed) {
                    Ok((_, not_after)) => tracing::info!(
                        expires_at = not_after.unix_timestamp(),
                        "certificate renewed"
                    ),
                    Err(_) => tracing::info!("certificate renewed"),
                }
                cert_pem = renewed;
            }
            Err(e) => {
                let delay = backoff.next_delay();
                tracing::warn!(
                    error = %e,
                    retry_in_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
                    "certificate renewal failed; will retry"
                );
                if stop
                    .run_until_cancelled(tokio::time::sleep(delay))
                    .await
                    .is_none()
                {
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn scratch(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("bamf-enroll-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    fn pair(n: u8) -> KeyPair {
        KeyPair {
            key_pem: format!("key {n}"),
            cert_pem: format!("cert {n}"),
        }
    }

    #[test]
    fn a_stored_pair_loads_and_a_crashed_commit_is_finished_or_discarded() {
        use std::os::unix::fs::PermissionsExt;
        let dir = scratch("commit");
        let files = IdentityFiles::open(&dir, "bridge").unwrap();
        let mode = std::fs::metadata(&dir).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        assert!(files.load().unwrap().is_none());
        files.store(&pair(1)).unwrap();
        assert_eq!(files.load().unwrap().unwrap().cert_pem, "cert 1");
        let key_mode = std::fs::metadata(dir.join("bridge.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(key_mode & 0o777, 0o600);
        // Crash after both .next files: the new pair wins.
        identity::write_private(&dir.join("bridge.key.next"), "key 2").unwrap();
        identity::write_private(&dir.join("bridge.crt.next"), "cert 2").unwrap();
        let loaded = files.load().unwrap().unwrap();
        assert_eq!(
            (loaded.key_pem.as_str(), loaded.cert_pem.as_str()),
            ("key 2", "cert 2")
        );
        // Crash after the key's commit: the certificate follows.
        identity::write_private(&dir.join("bridge.key"), "key 3").unwrap();
        identity::write_private(&dir.join("bridge.crt.next"), "cert 3").unwrap();
        assert_eq!(files.load().unwrap().unwrap().cert_pem, "cert 3");
        // Crash before the certificate arrived: the old pair stands.
        identity::write_private(&dir.join("bridge.key.next"), "key 4").unwrap();
        let loaded = files.load().unwrap().unwrap();
        assert_eq!(
            (loaded.key_pem.as_str(), loaded.cert_pem.as_str()),
            ("key 3", "cert 3")
        );
        assert!(!dir.join("bridge.key.next").exists());
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A certificate for `identity` over `key`, signed by a throwaway CA.
    fn issue(identity: &Identity, key: &rcgen::KeyPair) -> String {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let issuer = rcgen::Issuer::new(rcgen::CertificateParams::default(), ca_key);
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.subject_alt_names = identity
            .uris()
            .into_iter()
            .map(|u| rcgen::SanType::URI(u.try_into().unwrap()))
            .collect();
        params.signed_by(key, &issuer).unwrap().pem()
    }

    #[test]
    fn issued_certificates_must_name_us_and_certify_our_key() {
        let bridge = Identity::Bridge { ordinal: 3 };
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = issue(&bridge, &key);
        assert_eq!(check_issued(&cert, &key.serialize_pem(), &bridge), Ok(()));
        let other = Identity::Bridge { ordinal: 4 };
        assert!(matches!(
            check_issued(&cert, &key.serialize_pem(), &other),
            Err(IssuedError::OtherIdentity { .. })
        ));
        let another_key = rcgen::KeyPair::generate().unwrap();
        assert_eq!(
            check_issued(&cert, &another_key.serialize_pem(), &bridge),
            Err(IssuedError::OtherKey)
        );
        assert_eq!(
            check_issued("junk", &key.serialize_pem(), &bridge),
            Err(IssuedError::Malformed)
        );
    }
}

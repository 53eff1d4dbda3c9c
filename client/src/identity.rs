//! Keys, CSRs and certificate files. Private keys are made here and never sent anywhere; the
//! API signs CSRs.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Why a key, CSR or file operation failed.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// Key or CSR generation failed.
    #[error("key generation: {0}")]
    Key(String),
    /// A file could not be read or written.
    #[error("{path}: {error}")]
    File {
        /// Which file.
        path: PathBuf,
        /// Why.
        error: std::io::Error,
    },
    /// A certificate did not parse.
    #[error("the certificate does not parse")]
    Certificate,
}

/// A fresh P-256 key (PEM) and a CSR (PEM) for it. The CSR asks for no names: the API decides
/// every name in the certificate.
///
/// # Errors
///
/// [`IdentityError::Key`].
pub fn key_and_csr() -> Result<(String, String), IdentityError> {
    let key = rcgen::KeyPair::generate().map_err(|e| IdentityError::Key(e.to_string()))?;
    let csr = csr_for(&key.serialize_pem())?;
    Ok((key.serialize_pem(), csr))
}

/// A CSR for an existing key (renewal may keep the key).
///
/// # Errors
///
/// [`IdentityError::Key`].
pub fn csr_for(key_pem: &str) -> Result<String, IdentityError> {
    let key = rcgen::KeyPair::from_pem(key_pem).map_err(|e| IdentityError::Key(e.to_string()))?;
    rcgen::CertificateParams::default()
        .serialize_request(&key)
        .and_then(|c| c.pem())
        .map_err(|e| IdentityError::Key(e.to_string()))
}

/// Writes `contents` to `path` with mode 0600, atomically (temporary file, then rename), so
/// a crash never leaves half a key.
///
/// # Errors
///
/// [`IdentityError::File`].
pub fn write_private(path: &Path, contents: &str) -> Result<(), IdentityError> {
    use std::os::unix::fs::OpenOptionsExt;
    let file_err = |error| IdentityError::File {
        path: path.to_owned(),
        error,
    };
    // `<name>.tmp` beside it: each file its own temporary, whatever its extension.
    let mut tmp_name = path.file_name().unwrap_or_default().to_owned();
    tmp_name.push(".tmp");
    let tmp = path.with_file_name(tmp_name);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(file_err)?;
    file.write_all(contents.as_bytes()).map_err(file_err)?;
    file.sync_all().map_err(file_err)?;
    std::fs::rename(&tmp, path).map_err(file_err)?;
    // The rename itself must reach the disk too.
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(file_err)?;
    }
    Ok(())
}

/// Reads a file, or `None` when it does not exist.
///
/// # Errors
///
/// [`IdentityError::File`] for any other failure.
pub fn read_optional(path: &Path) -> Result<Option<String>, IdentityError> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(error) => Err(IdentityError::File {
            path: path.to_owned(),
            error,
        }),
    }
}

/// Validity of the first certificate in `pem`: (not before, not after).
///
/// # Errors
///
/// [`IdentityError::Certificate`].
pub fn validity(pem: &str) -> Result<(time::OffsetDateTime, time::OffsetDateTime), IdentityError> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    use x509_parser::prelude::FromDer;
    let der =
        CertificateDer::from_pem_slice(pem.as_bytes()).map_err(|_| IdentityError::Certificate)?;
    let (_, cert) = x509_parser::certificate::X509Certificate::from_der(&der)
        .map_err(|_| IdentityError::Certificate)?;
    let v = cert.validity();
    Ok((v.not_before.to_datetime(), v.not_after.to_datetime()))
}

/// How long until a certificate reaches half its life (zero when it has), when renewal is
/// due.
///
/// # Errors
///
/// [`IdentityError::Certificate`].
pub fn until_half_life(pem: &str, now: time::OffsetDateTime) -> Result<Duration, IdentityError> {
    let (from, to) = validity(pem)?;
    let half = from + (to - from) / 2;
    Ok(Duration::try_from(half - now).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn keys_are_written_0600_and_csrs_ask_for_nothing() {
        use std::os::unix::fs::PermissionsExt;
        let (key, csr) = key_and_csr().unwrap();
        assert!(key.contains("PRIVATE KEY") && csr.contains("CERTIFICATE REQUEST"));
        let parsed = rcgen::CertificateSigningRequestParams::from_pem(&csr).unwrap();
        assert!(parsed.params.subject_alt_names.is_empty());
        let dir = std::env::temp_dir().join(format!("bamf-identity-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("key.pem");
        write_private(&path, &key).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(read_optional(&path).unwrap().unwrap(), key);
        assert!(read_optional(&dir.join("none")).unwrap().is_none());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn half_life_is_the_middle_of_validity() {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::default();
        let start = time::OffsetDateTime::now_utc() - time::Duration::hours(1);
        params.not_before = start;
        params.not_after = start + time::Duration::hours(4);
        let pem = params.self_signed(&key).unwrap().pem();
        let left = until_half_life(&pem, start + time::Duration::hours(1)).unwrap();
        assert!((3590..=3600).contains(&left.as_secs()), "{left:?}");
        assert_eq!(
            until_half_life(&pem, start + time::Duration::hours(3)).unwrap(),
            Duration::ZERO
        );
    }
}

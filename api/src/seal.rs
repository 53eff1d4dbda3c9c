//! Sealing the CA key at rest: AES-256-GCM under a key from the environment.
//!
//! The store holds `bamf-sealed-v1:<base64(nonce ‖ ciphertext ‖ tag)>`. The associated data
//! binds the sealed key to the CA certificate it belongs to, so a sealed key cannot be
//! paired with another certificate.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};

const PREFIX: &str = "bamf-sealed-v1:";

/// Why a key could not be sealed or opened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    /// The configured key is not base64 of 32 bytes.
    #[error("the CA encryption key must be base64 of 32 random bytes (openssl rand -base64 32)")]
    KeyFormat,
    /// The stored value is not a sealed key.
    #[error("the stored CA key is not in the sealed format")]
    Format,
    /// Wrong key, or the stored value was altered.
    #[error("the stored CA key cannot be opened with the configured encryption key")]
    Open,
    /// The random source failed.
    #[error("random source failed")]
    Random,
}

/// The key that seals the CA key. Its bytes are never printed.
pub struct SealingKey(LessSafeKey);

impl std::fmt::Debug for SealingKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SealingKey(..)")
    }
}

impl SealingKey {
    /// From its base64 form.
    ///
    /// # Errors
    ///
    /// [`SealError::KeyFormat`].
    pub fn from_base64(text: &str) -> Result<Self, SealError> {
        let bytes = STANDARD
            .decode(text.trim())
            .map_err(|_| SealError::KeyFormat)?;
        let key = UnboundKey::new(&AES_256_GCM, &bytes).map_err(|_| SealError::KeyFormat)?;
        Ok(Self(LessSafeKey::new(key)))
    }

    /// Seals `secret`, bound to `context` (the CA certificate).
    ///
    /// # Errors
    ///
    /// [`SealError::Random`].
    pub fn seal(&self, secret: &str, context: &str) -> Result<String, SealError> {
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new()
            .fill(&mut nonce)
            .map_err(|_| SealError::Random)?;
        let mut data = secret.as_bytes().to_vec();
        self.0
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(context.as_bytes()),
                &mut data,
            )
            .map_err(|_| SealError::Random)?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&data);
        Ok(format!("{PREFIX}{}", STANDARD.encode(out)))
    }

    /// Opens what [`SealingKey::seal`] produced.
    ///
    /// # Errors
    ///
    /// [`SealError::Format`] or [`SealError::Open`].
    pub fn open(&self, sealed: &str, context: &str) -> Result<String, SealError> {
        let body = sealed.strip_prefix(PREFIX).ok_or(SealError::Format)?;
        let mut bytes = STANDARD.decode(body).map_err(|_| SealError::Format)?;
        if bytes.len() < NONCE_LEN {
            return Err(SealError::Format);
        }
        let mut data = bytes.split_off(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(&bytes).map_err(|_| SealError::Format)?;
        let plain = self
            .0
            .open_in_place(nonce, Aad::from(context.as_bytes()), &mut data)
            .map_err(|_| SealError::Open)?;
        String::from_utf8(plain.to_vec()).map_err(|_| SealError::Open)
    }
}

/// A sealing key kept in a file (base64 of 32 bytes), apart from the database it protects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyFile(pub std::path::PathBuf);

impl KeyFile {
    /// The key in the file, or `None` if there is no file.
    ///
    /// # Errors
    ///
    /// The file cannot be read, or [`SealError::KeyFormat`] as an `InvalidData` error.
    pub fn read(&self) -> std::io::Result<Option<SealingKey>> {
        match std::fs::read_to_string(&self.0) {
            Ok(text) => SealingKey::from_base64(&text)
                .map(Some)
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Generates a key into the file, created 0600 (never overwriting one).
    ///
    /// # Errors
    ///
    /// The file exists or cannot be written.
    pub fn generate(&self) -> std::io::Result<SealingKey> {
        use std::io::Write as _;
        use std::os::unix::fs::OpenOptionsExt;
        let mut bytes = [0u8; 32];
        SystemRandom::new()
            .fill(&mut bytes)
            .map_err(|_| std::io::Error::other(SealError::Random))?;
        let text = STANDARD.encode(bytes);
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&self.0)?;
        file.write_all(format!("{text}\n").as_bytes())?;
        file.sync_all()?;
        SealingKey::from_base64(&text).map_err(std::io::Error::other)
    }
}

/// Whether a stored key is sealed.
pub fn is_sealed(stored: &str) -> bool {
    stored.starts_with(PREFIX)
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="; // 32 ASCII bytes

    #[test]
    fn seals_and_opens_bound_to_its_context() {
        let key = SealingKey::from_base64(KEY).expect("key");
        let sealed = key
            .seal("-----BEGIN PRIVATE KEY-----", "cert A")
            .expect("seal");
        assert!(is_sealed(&sealed));
        assert!(!sealed.contains("PRIVATE"));
        assert_eq!(
            key.open(&sealed, "cert A").expect("open"),
            "-----BEGIN PRIVATE KEY-----"
        );
        assert_eq!(key.open(&sealed, "cert B"), Err(SealError::Open));
        let other = SealingKey::from_base64(&STANDARD.encode([7u8; 32])).expect("key");
        assert_eq!(other.open(&sealed, "cert A"), Err(SealError::Open));
        // Two seals of the same secret differ (fresh nonce).
        assert_ne!(
            sealed,
            key.seal("-----BEGIN PRIVATE KEY-----", "cert A")
                .expect("seal")
        );
        let mut tampered = sealed.clone().into_bytes();
        let last = tampered.len() - 3;
        tampered[last] = if tampered[last] == b'A' { b'B' } else { b'A' };
        let tampered = String::from_utf8(tampered).expect("ascii");
        assert!(key.open(&tampered, "cert A").is_err());
    }

    #[test]
    fn a_key_file_is_generated_private_once_and_read_back() {
        use std::os::unix::fs::PermissionsExt;
        let path = std::env::temp_dir().join(format!("bamf-seal-{}.key", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let file = KeyFile(path.clone());
        assert!(file.read().expect("read").is_none());
        let key = file.generate().expect("generate");
        let mode = std::fs::metadata(&path).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(file.generate().is_err(), "never overwritten");
        let sealed = key.seal("secret", "c").expect("seal");
        let again = file.read().expect("read").expect("key");
        assert_eq!(again.open(&sealed, "c").expect("open"), "secret");
        std::fs::write(&path, "short").expect("write");
        assert!(file.read().is_err());
        std::fs::remove_file(&path).expect("remove");
    }

    #[test]
    fn bad_keys_and_values_are_refused() {
        for bad in ["", "not base64!", &STANDARD.encode([1u8; 16])] {
            assert_eq!(
                SealingKey::from_base64(bad).map(|_| ()),
                Err(SealError::KeyFormat)
            );
        }
        let key = SealingKey::from_base64(KEY).expect("key");
        assert_eq!(key.open("-----BEGIN", "c"), Err(SealError::Format));
        assert_eq!(key.open("bamf-sealed-v1:AAAA", "c"), Err(SealError::Format));
    }
}

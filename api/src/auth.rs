//! Authentication pieces: password hashes, opaque API tokens, and login rate limits.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use argon2::{Argon2, PasswordHasher, PasswordVerifier};
use tokio::time::Instant;

/// Prefix that makes a leaked token recognisable to secret scanners.
const TOKEN_PREFIX: &str = "bamf_";

/// Hashes a password with argon2id and a random salt (PHC string).
///
/// CPU-heavy by design (tens of milliseconds): call from a blocking thread.
///
/// # Errors
///
/// Only if the random source fails.
pub fn hash_password(password: &str) -> Result<String, argon2::password_hash::Error> {
    Ok(Argon2::default()
        .hash_password(password.as_bytes())?
        .to_string())
}

/// Whether `password` matches `hash`. With `hash = None` (no such user) it still spends the
/// time of one verification against a fixed hash, so the answer time does not tell whether
/// a user exists.
pub fn verify_password(password: &str, hash: Option<&str>) -> bool {
    static DUMMY: OnceLock<String> = OnceLock::new();
    let dummy = DUMMY.get_or_init(|| hash_password("bamf-dummy-password").unwrap_or_default());
    let matched = PasswordVerifier::<str>::verify_password(
        &Argon2::default(),
        password.as_bytes(),
        hash.unwrap_or(dummy),
    )
    .is_ok();
    matched && hash.is_some()
}

/// A new opaque API token: 256 random bits. Shown to the user once; only its hash is kept.
///
/// # Errors
///
/// Only if the random source fails.
pub fn new_token() -> Result<String, ring::error::Unspecified> {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 32];
    ring::rand::SystemRandom::new().fill(&mut bytes)?;
    Ok(format!("{TOKEN_PREFIX}{}", hex(&bytes)))
}

/// The stored form of a token: SHA-256, hex. Tokens are random, so no salt is needed.
pub fn token_hash(token: &str) -> String {
    hex(ring::digest::digest(&ring::digest::SHA256, token.as_bytes()).as_ref())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Failed-login limits: at most `max` failures per key in `window`; then refused until the
/// window ends. Keys are client addresses and user names, tracked separately.
#[derive(Debug)]
pub struct RateLimiter {
    max: u32,
    window: Duration,
    failures: Mutex<HashMap<String, (u32, Instant)>>,
}

/// Keys tracked at most. Beyond it, expired entries are swept; if that is not enough, new
/// keys go untracked (fail open: argon2's cost still bounds guessing) rather than memory
/// growing without bound.
const MAX_TRACKED: usize = 100_000;

impl RateLimiter {
    /// `max` failures per key per `window`.
    pub fn new(max: u32, window: Duration) -> Self {
        Self {
            max,
            window,
            failures: Mutex::default(),
        }
    }

    /// `Err(retry_after)` when `key` has used up its failures in the current window.
    ///
    /// # Errors
    ///
    /// The time until the key may try again.
    pub fn check(&self, key: &str) -> Result<(), Duration> {
        let now = Instant::now();
        let failures = self
            .failures
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match failures.get(key) {
            Some(&(count, start)) if count >= self.max && now < start + self.window => {
                Err(start + self.window - now)
            }
            _ => Ok(()),
        }
    }

    /// Counts a failure for `key`.
    pub fn fail(&self, key: &str) {
        let now = Instant::now();
        let window = self.window;
        let mut failures = self
            .failures
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if failures.len() >= MAX_TRACKED && !failures.contains_key(key) {
            failures.retain(|_, (_, start)| now < *start + window);
            if failures.len() >= MAX_TRACKED {
                return;
            }
        }
        let entry = failures.entry(key.to_owned()).or_insert((0, now));
        if now >= entry.1 + window {
            *entry = (0, now);
        }
        entry.0 += 1;
    }

    /// Forgets `key`'s failures (after a successful login).
    pub fn clear(&self, key: &str) {
        let mut failures = self
            .failures
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        failures.remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_verify_and_unknown_users_never_match() {
        let hash = hash_password("correct horse").unwrap();
        assert!(hash.starts_with("$argon2id$"));
        assert!(verify_password("correct horse", Some(&hash)));
        assert!(!verify_password("wrong", Some(&hash)));
        assert!(!verify_password("bamf-dummy-password", None));
        assert!(!verify_password("correct horse", Some("not a hash")));
    }

    #[test]
    fn tokens_are_random_and_stored_hashed() {
        let (a, b) = (new_token().unwrap(), new_token().unwrap());
        assert_ne!(a, b);
        assert!(a.starts_with("bamf_") && a.len() == 5 + 64);
        assert_eq!(token_hash(&a), token_hash(&a));
        assert!(!token_hash(&a).contains(&a[5..]));
    }

    #[tokio::test(start_paused = true)]
    async fn failures_beyond_the_limit_wait_for_the_window() {
        let limiter = RateLimiter::new(3, Duration::from_secs(60));
        for _ in 0..3 {
            assert!(limiter.check("ip:1").is_ok());
            limiter.fail("ip:1");
        }
        let retry = limiter.check("ip:1").unwrap_err();
        assert!(retry > Duration::from_secs(59) && retry <= Duration::from_secs(60));
        assert!(limiter.check("ip:2").is_ok(), "keys are independent");
        tokio::time::advance(Duration::from_secs(61)).await;
        assert!(limiter.check("ip:1").is_ok(), "the window ended");
        limiter.fail("user:a");
        limiter.clear("user:a");
        assert!(limiter.check("user:a").is_ok());
    }
}

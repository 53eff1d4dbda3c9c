//! Authentication pieces: password hashes, opaque API tokens, and login rate limits.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use argon2::{Argon2, PasswordHasher};
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
    verify_with(password, hash, &mut Vec::new())
}

/// Largest argon2 memory a stored hash may ask for (ours ask 19 MiB).
const MAX_HASH_MEMORY_KIB: u32 = 256 * 1024;

/// [`verify_password`] with caller-owned argon2 memory, so repeated checks on one thread
/// reuse one block instead of allocating 19 MiB each (which the allocator does not give
/// back).
fn verify_with(password: &str, hash: Option<&str>, memory: &mut Vec<argon2::Block>) -> bool {
    use argon2::password_hash::phc::PasswordHash;
    let Ok(parsed) = PasswordHash::new(hash.unwrap_or(dummy_hash())) else {
        return false;
    };
    let (Ok(params), Some(salt), Some(expected)) = (
        argon2::Params::try_from(&parsed),
        parsed.salt.as_ref(),
        parsed.hash.as_ref(),
    ) else {
        return false;
    };
    if params.m_cost() > MAX_HASH_MEMORY_KIB {
        return false;
    }
    let Ok(algorithm) = argon2::Algorithm::try_from(parsed.algorithm.as_str()) else {
        return false;
    };
    let version = match parsed.version.map(argon2::Version::try_from) {
        None => argon2::Version::default(),
        Some(Ok(v)) => v,
        Some(Err(_)) => return false,
    };
    let blocks = params.block_count();
    if memory.len() < blocks {
        memory.resize(blocks, argon2::Block::default());
    }
    let mut out = vec![0u8; expected.len()];
    let computed = argon2::Argon2::new(algorithm, version, params).hash_password_into_with_memory(
        password.as_bytes(),
        salt,
        &mut out,
        &mut memory[..blocks],
    );
    let equal = out
        .iter()
        .zip(expected.as_bytes())
        .fold(0u8, |acc, (a, b)| acc | (a ^ b))
        == 0;
    computed.is_ok() && equal && hash.is_some()
}

/// A hash with the same parameters as every real one, checked for unknown users.
fn dummy_hash() -> &'static str {
    static DUMMY: OnceLock<String> = OnceLock::new();
    DUMMY.get_or_init(|| hash_password("bamf-dummy-password").unwrap_or_default())
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
    Ok(format!("{TOKEN_PREFIX}{}", bamf_proto::hex::encode(&bytes)))
}

/// The stored form of a token: SHA-256, hex. Tokens are random, so no salt is needed.
pub fn token_hash(token: &str) -> String {
    bamf_proto::hex::encode(ring::digest::digest(&ring::digest::SHA256, token.as_bytes()).as_ref())
}

/// Login limits, decided when an attempt *starts* so concurrent attempts cannot race past
/// them, and designed so an attacker cannot lock a user out:
///
/// - **Per address**: at most `max` attempts per `window` that have not (yet) succeeded,
///   reserved before the password is checked; a success gives its reservation back.
/// - **Per user, from unfamiliar addresses**: once a user has `max` failures in the window
///   (from anywhere), attempts for that user from addresses that have not signed in as that
///   user are let through at most one per [`USER_SLOWDOWN`], and refused otherwise, which
///   slows a distributed guesser to that pace; addresses the user signed in from keep
///   signing in as usual, so the user is never locked out from their own address.
/// - **Password hashing**: `hashing` threads check passwords (each check takes about
///   19 MiB); at most [`MAX_WAITING`] more checks wait, and beyond that the attempt is
///   refused, so memory stays flat under a flood.
///
/// Every table is bounded (`MAX_TRACKED` entries, swept when full); it lives in the
/// process. With Redis, the login route also counts each address's failures there, so that
/// the per-address limit holds across API replicas (`Presence::login_failures`).
#[derive(Debug)]
pub struct LoginGuard {
    max: u32,
    window: Duration,
    state: Mutex<LoginState>,
    hashing: Hashers,
}

/// A password check for a hashing thread: the password, the stored hash, and where the
/// answer goes.
type Check = (String, Option<String>, tokio::sync::oneshot::Sender<bool>);

/// A fixed set of threads that check passwords, fed through a bounded queue. Fixed rather
/// than tokio's blocking pool: the allocator keeps a freed 19 MiB argon2 block in the arena
/// of the thread that used it, so memory is bounded by the number of threads that ever
/// hash, which must therefore stay small.
#[derive(Debug)]
struct Hashers {
    queue: std::sync::mpsc::SyncSender<Check>,
}

impl Hashers {
    fn start(threads: usize, waiting: usize) -> Self {
        let (queue, jobs) = std::sync::mpsc::sync_channel::<Check>(waiting);
        let jobs = std::sync::Arc::new(Mutex::new(jobs));
        for n in 0..threads.max(1) {
            let jobs = jobs.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("bamf-hash-{n}"))
                .spawn(move || {
                    // Allocated once per thread and reused: memory stays `threads` blocks.
                    let mut memory = Vec::new();
                    loop {
                        let job = jobs
                            .lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner)
                            .recv();
                        let Ok((password, hash, answer)) = job else {
                            return;
                        };
                        let matched = verify_with(&password, hash.as_deref(), &mut memory);
                        let _ = answer.send(matched);
                    }
                });
            if let Err(e) = spawned {
                tracing::error!(error = %e, "cannot start a password hashing thread");
            }
        }
        Self { queue }
    }
}

/// The pace at which a user under attack may be tried from unfamiliar addresses.
pub const USER_SLOWDOWN: Duration = Duration::from_secs(1);
/// Attempts that may wait for a hashing slot.
pub const MAX_WAITING: usize = 64;
/// How long a successful sign-in makes its address familiar for that user.
const FAMILIAR_FOR: Duration = Duration::from_secs(30 * 24 * 3600);
/// Most entries in each table (addresses, users, familiar pairs).
const MAX_TRACKED: usize = 100_000;

#[derive(Debug, Default)]
struct LoginState {
    /// Per address: attempts reserved or failed, and when the window started.
    addresses: HashMap<IpAddr, (u32, Instant)>,
    /// Per user name: failures, when the window started, and the last attempt let through
    /// from an unfamiliar address.
    users: HashMap<String, (u32, Instant, Option<Instant>)>,
    /// (user, address) pairs that signed in, and when.
    familiar: HashMap<(String, IpAddr), Instant>,
}

/// Why an attempt was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refused {
    /// When to try again.
    pub retry_after: Duration,
}

/// An admitted login attempt. Report its outcome with [`Attempt::succeeded`]; an attempt
/// dropped without one (a failure, or a cancelled request) counts as failed.
#[derive(Debug)]
pub struct Attempt<'a> {
    guard: &'a LoginGuard,
    address: IpAddr,
    user: String,
    succeeded: bool,
}

impl LoginGuard {
    /// `max` attempts per address and failures per user in `window`; `hashing` password
    /// checks at once.
    pub fn new(max: u32, window: Duration, hashing: usize) -> Self {
        Self::with_queue(max, window, hashing, MAX_WAITING)
    }

    fn with_queue(max: u32, window: Duration, hashing: usize, waiting: usize) -> Self {
        // Made now, not on the first unknown user: that one would answer slower.
        let _ = dummy_hash();
        Self {
            max,
            window,
            state: Mutex::default(),
            hashing: Hashers::start(hashing, waiting),
        }
    }

    /// Attempts per address (and failures per user) allowed in a window.
    pub fn max(&self) -> u32 {
        self.max
    }

    /// The window the limits count in.
    pub fn window(&self) -> Duration {
        self.window
    }

    fn state(&self) -> std::sync::MutexGuard<'_, LoginState> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Admits an attempt to sign in as `user` from `address`, reserving its place.
    ///
    /// # Errors
    ///
    /// [`Refused`] when a limit is reached.
    pub fn admit(&self, address: IpAddr, user: &str) -> Result<Attempt<'_>, Refused> {
        let now = Instant::now();
        let window = self.window;
        let mut state = self.state();
        let state = &mut *state;
        let live = |start: Instant| now < start + window;
        if state.addresses.len() >= MAX_TRACKED && !state.addresses.contains_key(&address) {
            state.addresses.retain(|_, (_, start)| live(*start));
            if state.addresses.len() >= MAX_TRACKED {
                return Err(Refused {
                    retry_after: window,
                });
            }
        }
        let entry = state.addresses.entry(address).or_insert((0, now));
        if !live(entry.1) {
            *entry = (0, now);
        }
        if entry.0 >= self.max {
            return Err(Refused {
                retry_after: entry.1 + window - now,
            });
        }
        let familiar = state
            .familiar
            .get(&(user.to_owned(), address))
            .is_some_and(|at| now < *at + FAMILIAR_FOR);
        if !familiar
            && let Some((failures, start, last)) = state.users.get_mut(user)
            && live(*start)
            && *failures >= self.max
        {
            if last.is_some_and(|at| now < at + USER_SLOWDOWN) {
                // Counted against the address too: a refused guess still costs the guesser.
                entry.0 += 1;
                return Err(Refused {
                    retry_after: USER_SLOWDOWN,
                });
            }
            *last = Some(now);
        }
        entry.0 += 1;
        Ok(Attempt {
            guard: self,
            address,
            user: user.to_owned(),
            succeeded: false,
        })
    }
}

impl Attempt<'_> {
    /// Checks `password` against `hash` (`None`: no such user, checked against a dummy hash
    /// so the answer takes as long), waiting for a hashing slot.
    ///
    /// # Errors
    ///
    /// [`Refused`] when too many attempts are already waiting to be checked.
    pub async fn verify(&self, password: String, hash: Option<String>) -> Result<bool, Refused> {
        let (answer, answered) = tokio::sync::oneshot::channel();
        let busy = Refused {
            retry_after: USER_SLOWDOWN,
        };
        self.guard
            .hashing
            .queue
            .try_send((password, hash, answer))
            .map_err(|_| busy)?;
        metrics::counter!(crate::metrics::PASSWORD_CHECKS).increment(1);
        Ok(answered.await.unwrap_or(false))
    }

    /// The password was right: the reservation goes back and the address becomes familiar
    /// for this user.
    pub fn succeeded(mut self) {
        self.succeeded = true;
        let now = Instant::now();
        let mut state = self.guard.state();
        if let Some(entry) = state.addresses.get_mut(&self.address) {
            entry.0 = entry.0.saturating_sub(1);
        }
        if state.familiar.len() >= MAX_TRACKED {
            state.familiar.retain(|_, at| now < *at + FAMILIAR_FOR);
        }
        if state.familiar.len() < MAX_TRACKED {
            state
                .familiar
                .insert((std::mem::take(&mut self.user), self.address), now);
        }
    }
}

impl Drop for Attempt<'_> {
    fn drop(&mut self) {
        if self.succeeded {
            return;
        }
        let now = Instant::now();
        let window = self.guard.window;
        let mut state = self.guard.state();
        if state.users.len() >= MAX_TRACKED && !state.users.contains_key(&self.user) {
            state.users.retain(|_, (_, start, _)| now < *start + window);
            if state.users.len() >= MAX_TRACKED {
                return;
            }
        }
        let entry = state
            .users
            .entry(std::mem::take(&mut self.user))
            .or_insert((0, now, None));
        if now >= entry.1 + window {
            *entry = (0, now, None);
        }
        entry.0 += 1;
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

    #[test]
    fn checking_with_reused_memory_agrees_with_the_library() {
        use argon2::{Argon2, PasswordVerifier};
        let library = |password: &str, hash: &str| {
            PasswordVerifier::<str>::verify_password(&Argon2::default(), password.as_bytes(), hash)
                .is_ok()
        };
        let mut memory = Vec::new();
        let hash = hash_password("correct horse").unwrap();
        assert!(verify_with("correct horse", Some(&hash), &mut memory));
        assert!(library("correct horse", &hash));
        assert!(!verify_with("wrong", Some(&hash), &mut memory));
        assert!(!library("wrong", &hash));
        assert!(!verify_with("bamf-dummy-password", None, &mut memory));
        assert!(!verify_with("x", Some("not a hash"), &mut memory));
        let other = hash_password("other").unwrap();
        assert!(verify_with("other", Some(&other), &mut memory));
        assert_eq!(memory.len(), 19 * 1024, "one 19 MiB block, reused");
    }

    #[test]
    fn the_dummy_hash_costs_what_a_real_one_does() {
        // Same algorithm, version and cost parameters: only the salt and digest differ.
        let real = hash_password("anything").unwrap();
        let params = |h: &str| h.rsplitn(3, '$').nth(2).map(str::to_owned);
        assert_eq!(params(dummy_hash()), params(&real));
        assert!(
            real.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
            "{real}"
        );
    }

    const A: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 1));
    const B: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 2));
    const C: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 3));

    #[tokio::test(start_paused = true)]
    async fn attempts_count_when_they_start_per_address() {
        let guard = LoginGuard::new(3, Duration::from_secs(60), 1);
        // Three attempts in flight at once use the address's whole budget.
        let held: Vec<_> = (0..3).map(|_| guard.admit(A, "bob").unwrap()).collect();
        let refused = guard.admit(A, "bob").unwrap_err();
        assert!(refused.retry_after > Duration::from_secs(59));
        assert!(guard.admit(B, "bob").is_ok(), "addresses are independent");
        // A success gives its reservation back; failures keep theirs.
        let mut held = held.into_iter();
        held.next().unwrap().succeeded();
        drop(held);
        assert!(guard.admit(A, "bob").is_ok());
        assert!(guard.admit(A, "bob").is_err());
        tokio::time::advance(Duration::from_secs(61)).await;
        assert!(guard.admit(A, "bob").is_ok(), "the window ended");
    }

    #[tokio::test(start_paused = true)]
    async fn a_user_under_attack_is_slowed_from_elsewhere_but_not_locked_out() {
        let guard = LoginGuard::new(3, Duration::from_secs(60), 1);
        guard.admit(A, "admin").unwrap().succeeded();
        // Three failures from B: admin is under attack.
        for _ in 0..3 {
            drop(guard.admit(B, "admin").unwrap());
        }
        // From an unfamiliar address: one attempt per second, the rest refused.
        assert!(guard.admit(C, "admin").is_ok());
        assert_eq!(
            guard.admit(C, "admin").unwrap_err().retry_after,
            USER_SLOWDOWN
        );
        tokio::time::advance(USER_SLOWDOWN).await;
        assert!(guard.admit(C, "admin").is_ok());
        // From the address admin signed in from: as usual, however many failures elsewhere.
        for _ in 0..2 {
            assert!(guard.admit(A, "admin").is_ok());
        }
        assert!(guard.admit(B, "carol").is_err(), "B spent its budget");
        let d = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 4));
        assert!(
            guard.admit(d, "carol").is_ok(),
            "other users are unaffected"
        );
    }

    #[tokio::test]
    async fn password_checks_are_bounded() {
        let guard =
            std::sync::Arc::new(LoginGuard::with_queue(1000, Duration::from_secs(60), 1, 4));
        let hash = hash_password("right").unwrap();
        let mut tasks = Vec::new();
        for n in 0..20 {
            let guard = guard.clone();
            let hash = hash.clone();
            tasks.push(tokio::spawn(async move {
                let address = IpAddr::V4(std::net::Ipv4Addr::from(u32::try_from(n).unwrap()));
                let attempt = guard.admit(address, "bob").unwrap();
                attempt.verify("wrong".into(), Some(hash)).await
            }));
        }
        let mut refused = 0;
        for task in tasks {
            if task.await.unwrap().is_err() {
                refused += 1;
            }
        }
        // Four waiting, plus the ones the thread has taken off the queue meanwhile (none or
        // one, rarely two): the rest refused at once.
        assert!((14..=16).contains(&refused), "{refused} refused");
    }
}

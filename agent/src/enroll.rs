//! The agent's identity: joining with a token, the files in `data_dir`, and renewal.
//!
//! # Files
//!
//! | file | content |
//! |---|---|
//! | `agent.key` | the private key (PEM, 0600); made here, never sent anywhere |
//! | `agent.crt` | the agent certificate the API issued for it |
//! | `ca.crt` | the internal CA the API returned (verifies bridges, and the API with `api_ca_file`) |
//! | `agent.json` | `{agent_id, name}`, written last: its presence means "joined" |
//!
//! Every file is written atomically (temporary file, then rename). A renewal writes the new
//! pair as `agent.key.next` and `agent.crt.next` first and then renames key, then
//! certificate; a start after a crash finishes or discards a half-done renewal
//! ([`finish_renewal`]), so `agent.key` and `agent.crt` always belong together.
//!
//! # Names
//!
//! Agent names are unique. A second agent joining with a name in use is refused (409) and
//! exits with [`EnrollError::NameTaken`], telling the operator to pick another name or have
//! an administrator delete the old agent. An agent that lost its `data_dir` cannot prove it
//! is the old one: an administrator deletes it (`DELETE /api/v1/agents/{id}`) and it joins
//! again with a new token.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bamf_client::https::{Api, HttpsError};
use bamf_client::identity::{self, IdentityError};
use bamf_proto::api::{AgentCertificate, AgentJoinRequest, RenewRequest};
use bamf_proto::san::{AgentId, Name};
use http::StatusCode;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::config::Config;

const KEY_FILE: &str = "agent.key";
const CERT_FILE: &str = "agent.crt";
const CA_FILE: &str = "ca.crt";
const ID_FILE: &str = "agent.json";
const NEXT_KEY_FILE: &str = "agent.key.next";
const NEXT_CERT_FILE: &str = "agent.crt.next";

/// The renewal task wakes at least this often to look at the clock again (a suspended
/// host's monotonic clock may lag the certificate's wall-clock deadline).
const RENEWAL_RECHECK: Duration = Duration::from_secs(3600);

/// An administrator's join token, from `BAMF_JOIN_TOKEN`. Never printed.
#[derive(Clone)]
pub struct JoinToken(String);

impl JoinToken {
    /// The token from `value`, or `None` when it is empty.
    pub fn new(value: String) -> Option<Self> {
        let value = value.trim().to_owned();
        (!value.is_empty()).then_some(Self(value))
    }
}

impl fmt::Debug for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("JoinToken(…)")
    }
}

/// The agent's key, certificate and CA, and who they say it is.
#[derive(Clone)]
pub struct Credentials {
    /// The id the API assigned at join.
    pub agent_id: AgentId,
    /// The name it joined with.
    pub name: Name,
    pub(crate) key_pem: String,
    pub(crate) cert_pem: String,
    pub(crate) ca_pem: String,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Credentials({} {})", self.name, self.agent_id)
    }
}

/// `agent.json`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Stored {
    agent_id: AgentId,
    /// A [`Name`] (which has no serde form of its own).
    name: String,
}

/// The TLS set-ups made from [`Credentials`]: the API client with the agent certificate, and
/// the configuration bridges are dialled with. Rebuilt after each renewal.
#[derive(Debug)]
pub struct Tls {
    /// The agent.
    pub agent_id: AgentId,
    /// The API, authenticated by the agent certificate.
    pub api: Api,
    /// For dialling bridges with the agent certificate.
    pub bridge: Arc<rustls::ClientConfig>,
}

impl Tls {
    /// Builds both configurations. Both trust `api_ca_file` and the CA the API returned.
    ///
    /// # Errors
    ///
    /// A PEM does not parse.
    pub fn new(config: &Config, creds: &Credentials) -> Result<Self, EnrollError> {
        let trust = format!("{}\n{}", config.api_ca.pem, creds.ca_pem);
        let client = Some((creds.cert_pem.as_str(), creds.key_pem.as_str()));
        let api_tls = bamf_client::tls_config(&trust, client, &[b"http/1.1"])?;
        let bridge = bamf_client::tls_config(&trust, client, &[])?;
        Ok(Self {
            agent_id: creds.agent_id,
            api: api(config, api_tls)?,
            bridge,
        })
    }
}

fn api(config: &Config, tls: Arc<rustls::ClientConfig>) -> Result<Api, EnrollError> {
    Ok(Api::new(config.api_url.as_str(), tls)
        .map_err(EnrollError::Api)?
        .connect_to(config.api_address))
}

/// Why the agent has no usable identity. Every variant needs an operator; the agent exits.
#[derive(Debug, thiserror::Error)]
pub enum EnrollError {
    /// Not joined yet, and no token to join with.
    #[error(
        "{dir} holds no agent identity and BAMF_JOIN_TOKEN is not set: an administrator \
         creates an agent join token (POST /api/v1/join-tokens) and the agent is started \
         once with it"
    )]
    NoToken {
        /// The data directory.
        dir: PathBuf,
    },
    /// The name is taken by another agent (409).
    #[error(
        "cannot join: the name '{name}' is already taken by another agent. Set another `name` \
         in the configuration, or have an administrator delete the old agent \
         (DELETE /api/v1/agents/{{id}}, ids from GET /api/v1/agents) and create a new join \
         token"
    )]
    NameTaken {
        /// The configured name.
        name: Name,
    },
    /// The token is wrong, expired, revoked or used up (401).
    #[error(
        "cannot join: the API refused the join token (invalid, expired, revoked or used up); \
         ask an administrator for a new one"
    )]
    TokenRefused,
    /// Any other refusal of a join.
    #[error("cannot join: {0}")]
    Refused(HttpsError),
    /// A renewal request failed (network or refusal).
    #[error("{0}")]
    Call(HttpsError),
    /// The data directory belongs to an agent of another name.
    #[error(
        "{dir} belongs to the agent '{stored}' but the configuration names '{configured}': \
         restore the name, or use another data_dir (and a join token) for a new agent"
    )]
    NameMismatch {
        /// The data directory.
        dir: PathBuf,
        /// The name in `agent.json`.
        stored: Name,
        /// The configured name.
        configured: Name,
    },
    /// `agent.json` exists but a file it needs does not.
    #[error(
        "{dir} is incomplete: {file} is missing. Restore it from a backup, or have an \
         administrator delete the agent and join again with a new token and an empty data_dir"
    )]
    Incomplete {
        /// The data directory.
        dir: PathBuf,
        /// The missing file.
        file: &'static str,
    },
    /// `agent.json` does not parse.
    #[error("{path}: {error}")]
    BadIdFile {
        /// Its path.
        path: PathBuf,
        /// Why.
        error: String,
    },
    /// A file operation or key generation failed.
    #[error(transparent)]
    Files(#[from] IdentityError),
    /// A key, certificate or CA does not make a TLS configuration.
    #[error("the stored credentials are unusable: {0}")]
    Tls(#[from] bamf_client::TlsError),
    /// The API URL is refused by the client (the configuration checked it already).
    #[error("{0}")]
    Api(HttpsError),
    /// The API answered a join or renewal with something else than a certificate for us.
    #[error("the API's answer is not understood: {0}")]
    Answer(String),
}

/// Loads the identity from `config.data_dir`, or joins with `token` when there is none.
/// Transient failures (API unreachable, 5xx) are retried with back-off; refusals are not.
/// Returns the credentials and whether they are new.
///
/// # Errors
///
/// [`EnrollError`]: each variant says what the operator must do.
pub async fn load_or_join(
    config: &Config,
    token: Option<&JoinToken>,
) -> Result<(Credentials, bool), EnrollError> {
    let dir = &config.data_dir;
    make_private_dir(dir)?;
    if let Some(creds) = load(dir)? {
        if creds.name != config.name {
            return Err(EnrollError::NameMismatch {
                dir: dir.clone(),
                stored: creds.name,
                configured: config.name.clone(),
            });
        }
        return Ok((creds, false));
    }
    let token = token.ok_or_else(|| EnrollError::NoToken { dir: dir.clone() })?;
    let (key_pem, csr) = identity::key_and_csr()?;
    let api = api(
        config,
        bamf_client::tls_config(&config.api_ca.pem, None, &[b"http/1.1"])?,
    )?;
    let request = AgentJoinRequest {
        token: token.0.clone(),
        name: config.name.as_str().to_owned(),
        csr,
    };
    let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(30));
    let answer = loop {
        match api.join_agent(&request).await {
            Ok(answer) => break answer,
            Err(e) => match e.status() {
                Some(StatusCode::CONFLICT) => {
                    return Err(EnrollError::NameTaken {
                        name: config.name.clone(),
                    });
                }
                Some(StatusCode::UNAUTHORIZED) => return Err(EnrollError::TokenRefused),
                Some(s) if s.is_client_error() => return Err(EnrollError::Refused(e)),
                _ => {
                    let delay = backoff.next_delay();
                    tracing::warn!(
                        error = %e,
                        retry_in_ms = millis(delay),
                        "cannot join yet; retrying"
                    );
                    tokio::time::sleep(delay).await;
                }
            },
        }
    };
    let creds = Credentials {
        agent_id: agent_id(&answer)?,
        name: config.name.clone(),
        key_pem,
        cert_pem: answer.certificate.certificate,
        ca_pem: answer.certificate.ca,
    };
    // Prove the answer makes a TLS configuration before anything is stored.
    Tls::new(config, &creds)?;
    identity::write_private(&dir.join(KEY_FILE), &creds.key_pem)?;
    identity::write_private(&dir.join(CERT_FILE), &creds.cert_pem)?;
    identity::write_private(&dir.join(CA_FILE), &creds.ca_pem)?;
    let stored = Stored {
        agent_id: creds.agent_id,
        name: creds.name.to_string(),
    };
    let json =
        serde_json::to_string_pretty(&stored).map_err(|e| EnrollError::Answer(e.to_string()))?;
    identity::write_private(&dir.join(ID_FILE), &(json + "\n"))?;
    Ok((creds, true))
}

/// Creates `dir` (and its parents) with mode 0700 when missing; warns when an existing one
/// is open to others.
fn make_private_dir(dir: &Path) -> Result<(), EnrollError> {
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
            "data_dir is accessible to other users; 0700 is expected"
        );
    }
    Ok(())
}

/// The stored identity, or `None` when the agent has not joined.
fn load(dir: &Path) -> Result<Option<Credentials>, EnrollError> {
    let id_path = dir.join(ID_FILE);
    let Some(text) = identity::read_optional(&id_path)? else {
        return Ok(None);
    };
    let bad = |error: String| EnrollError::BadIdFile {
        path: id_path.clone(),
        error,
    };
    let stored: Stored = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
    let name: Name = stored
        .name
        .parse()
        .map_err(|_| bad(format!("'{}' is not an agent name", stored.name)))?;
    finish_renewal(dir)?;
    let read = |file: &'static str| {
        identity::read_optional(&dir.join(file))?.ok_or_else(|| EnrollError::Incomplete {
            dir: dir.to_owned(),
            file,
        })
    };
    Ok(Some(Credentials {
        agent_id: stored.agent_id,
        name,
        key_pem: read(KEY_FILE)?,
        cert_pem: read(CERT_FILE)?,
        ca_pem: read(CA_FILE)?,
    }))
}

/// Completes or discards a renewal a crash interrupted. The new pair was written as
/// `.next` files, key first; the commit renames the key, then the certificate.
///
/// - both `.next` files: the pair is complete, commit it;
/// - only the certificate: the key was committed, commit the certificate;
/// - only the key: the certificate never arrived, the old pair stands.
fn finish_renewal(dir: &Path) -> Result<(), EnrollError> {
    let (next_key, next_cert) = (dir.join(NEXT_KEY_FILE), dir.join(NEXT_CERT_FILE));
    let rename = |from: &Path, to: &str| {
        std::fs::rename(from, dir.join(to)).map_err(|error| IdentityError::File {
            path: from.to_owned(),
            error,
        })
    };
    match (next_key.exists(), next_cert.exists()) {
        (true, true) => {
            rename(&next_key, KEY_FILE)?;
            rename(&next_cert, CERT_FILE)?;
            tracing::info!("completed a certificate renewal interrupted by a restart");
        }
        (false, true) => {
            rename(&next_cert, CERT_FILE)?;
            tracing::info!("completed a certificate renewal interrupted by a restart");
        }
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

impl Credentials {
    /// Logs the certificate's validity; an expired certificate cannot reach the API, which
    /// needs an operator.
    pub fn log_validity(&self) {
        match identity::validity(&self.cert_pem) {
            Ok((_, not_after)) if not_after <= time::OffsetDateTime::now_utc() => {
                tracing::error!(
                    expired_at = not_after.unix_timestamp(),
                    "the agent certificate has expired: the API and bridges will refuse it. \
                     An administrator deletes the agent (DELETE /api/v1/agents/{{id}}) and it \
                     joins again with a new token and an empty data_dir"
                );
            }
            Ok((_, not_after)) => tracing::info!(
                expires_at = not_after.unix_timestamp(),
                "agent certificate valid"
            ),
            Err(e) => tracing::error!(error = %e, "the agent certificate does not parse"),
        }
    }
}

/// Renews the certificate at half-life, for a new key each time, and publishes the new TLS
/// set-up on `tls`. Failed attempts are retried from one minute doubling to an hour; a
/// refusal (401/403) means the agent was revoked or deleted and is logged as an error.
/// Ends when `stop` is cancelled.
pub async fn renew_forever(
    config: Arc<Config>,
    mut creds: Credentials,
    tls: watch::Sender<Arc<Tls>>,
    stop: CancellationToken,
) {
    let mut backoff = Backoff::new(Duration::from_secs(60), Duration::from_secs(3600));
    loop {
        let wait = match identity::until_half_life(&creds.cert_pem, time::OffsetDateTime::now_utc())
        {
            Ok(wait) => wait,
            Err(e) => {
                tracing::error!(error = %e, "the agent certificate does not parse; renewing now");
                Duration::ZERO
            }
        };
        if !wait.is_zero() {
            let nap = wait.min(RENEWAL_RECHECK);
            if stop
                .run_until_cancelled(tokio::time::sleep(nap))
                .await
                .is_none()
            {
                return;
            }
            continue;
        }
        let api = tls.borrow().api.clone();
        let Some(result) = stop.run_until_cancelled(renew(&config, &api, &creds)).await else {
            return;
        };
        match result.and_then(|new| Ok((Tls::new(&config, &new)?, new))) {
            Ok((new_tls, new)) => {
                backoff.reset();
                match identity::validity(&new.cert_pem) {
                    Ok((_, not_after)) => tracing::info!(
                        expires_at = not_after.unix_timestamp(),
                        "certificate renewed"
                    ),
                    Err(_) => tracing::info!("certificate renewed"),
                }
                creds = new;
                tls.send_replace(Arc::new(new_tls));
            }
            Err(e) => {
                let delay = backoff.next_delay();
                if let EnrollError::Call(h) = &e
                    && matches!(
                        h.status(),
                        Some(StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN)
                    )
                {
                    tracing::error!(
                        error = %h,
                        retry_in_ms = millis(delay),
                        "certificate renewal refused: this agent was revoked or deleted"
                    );
                } else {
                    tracing::warn!(error = %e, retry_in_ms = millis(delay), "certificate renewal failed");
                }
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

/// One renewal: a new key and CSR, the API's certificate for it, the files replaced.
async fn renew(
    config: &Config,
    api: &Api,
    creds: &Credentials,
) -> Result<Credentials, EnrollError> {
    let (key_pem, csr) = identity::key_and_csr()?;
    let answer = api
        .renew_agent(&RenewRequest { csr })
        .await
        .map_err(EnrollError::Call)?;
    let issued = agent_id(&answer)?;
    if issued != creds.agent_id {
        return Err(EnrollError::Answer(format!(
            "a certificate for agent {issued} instead of {}",
            creds.agent_id
        )));
    }
    let new = Credentials {
        agent_id: creds.agent_id,
        name: creds.name.clone(),
        key_pem,
        cert_pem: answer.certificate.certificate,
        ca_pem: answer.certificate.ca,
    };
    let dir = &config.data_dir;
    identity::write_private(&dir.join(NEXT_KEY_FILE), &new.key_pem)?;
    identity::write_private(&dir.join(NEXT_CERT_FILE), &new.cert_pem)?;
    finish_renewal(dir)?;
    identity::write_private(&dir.join(CA_FILE), &new.ca_pem)?;
    Ok(new)
}

/// The agent id an answer names.
fn agent_id(answer: &AgentCertificate) -> Result<AgentId, EnrollError> {
    answer
        .agent_id
        .parse()
        .map_err(|_| EnrollError::Answer(format!("malformed agent id {:?}", answer.agent_id)))
}

/// Milliseconds, for log fields.
pub(crate) fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn scratch(tag: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("bamf-agent-enroll-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    fn write(dir: &Path, file: &str, text: &str) {
        std::fs::write(dir.join(file), text).unwrap();
    }

    fn read(dir: &Path, file: &str) -> String {
        std::fs::read_to_string(dir.join(file)).unwrap()
    }

    #[test]
    fn data_dirs_are_made_private_and_a_missing_id_file_means_not_joined() {
        use std::os::unix::fs::PermissionsExt;
        let dir = scratch("fresh").join("nested");
        make_private_dir(&dir).unwrap();
        let mode = std::fs::metadata(&dir).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        // A leftover key from an interrupted join does not count as an identity.
        write(&dir, KEY_FILE, "key");
        assert!(load(&dir).unwrap().is_none());
        std::fs::remove_dir_all(dir.parent().unwrap()).unwrap();
    }

    #[test]
    fn an_incomplete_data_dir_names_the_missing_file() {
        let dir = scratch("incomplete");
        make_private_dir(&dir).unwrap();
        write(
            &dir,
            ID_FILE,
            r#"{"agent_id":"1b6f1a52-3c0e-4d7e-9a41-5a4f6c3b2d10","name":"edge-1"}"#,
        );
        write(&dir, KEY_FILE, "key");
        write(&dir, CERT_FILE, "cert");
        let err = load(&dir).unwrap_err();
        assert!(
            matches!(err, EnrollError::Incomplete { file: CA_FILE, .. }),
            "{err}"
        );
        write(&dir, CA_FILE, "ca");
        let creds = load(&dir).unwrap().unwrap();
        assert_eq!(creds.name.as_str(), "edge-1");
        assert_eq!(
            creds.agent_id.to_string(),
            "1b6f1a52-3c0e-4d7e-9a41-5a4f6c3b2d10"
        );
        // Debug never shows key material.
        assert!(!format!("{creds:?}").contains("key"));
        write(&dir, ID_FILE, "{}");
        assert!(matches!(load(&dir), Err(EnrollError::BadIdFile { .. })));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn interrupted_renewals_are_finished_or_discarded() {
        let dir = scratch("renewal");
        make_private_dir(&dir).unwrap();
        let reset = |key: Option<&str>, cert: Option<&str>| {
            write(&dir, KEY_FILE, "old key");
            write(&dir, CERT_FILE, "old cert");
            for (file, text) in [(NEXT_KEY_FILE, key), (NEXT_CERT_FILE, cert)] {
                match text {
                    Some(t) => write(&dir, file, t),
                    None => {
                        let _ = std::fs::remove_file(dir.join(file));
                    }
                }
            }
        };
        // Both written: commit both.
        reset(Some("new key"), Some("new cert"));
        finish_renewal(&dir).unwrap();
        assert_eq!(
            (read(&dir, KEY_FILE), read(&dir, CERT_FILE)),
            ("new key".into(), "new cert".into())
        );
        // The key was committed, the certificate not yet.
        reset(None, Some("new cert"));
        write(&dir, KEY_FILE, "new key");
        finish_renewal(&dir).unwrap();
        assert_eq!(
            (read(&dir, KEY_FILE), read(&dir, CERT_FILE)),
            ("new key".into(), "new cert".into())
        );
        // Only the key: the old pair stands.
        reset(Some("new key"), None);
        finish_renewal(&dir).unwrap();
        assert_eq!(
            (read(&dir, KEY_FILE), read(&dir, CERT_FILE)),
            ("old key".into(), "old cert".into())
        );
        assert!(!dir.join(NEXT_KEY_FILE).exists() && !dir.join(NEXT_CERT_FILE).exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn join_tokens_are_never_printed() {
        let token = JoinToken::new(" secret-token \n".into()).unwrap();
        assert_eq!(token.0, "secret-token");
        assert!(!format!("{token:?}").contains("secret"));
        assert!(JoinToken::new("  ".into()).is_none());
    }
}

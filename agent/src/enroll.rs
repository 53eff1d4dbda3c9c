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
//! Key and certificate are kept by `bamf_client::enroll::IdentityFiles` (shared with the
//! bridge): written crash-safely, so `agent.key` and `agent.crt` always belong together. Each
//! certificate the API issues is checked to name this agent and certify its key before it is
//! stored.
//!
//! # Names
//!
//! Agent names are unique. A second agent joining with a name in use is refused (409) and
//! exits with [`EnrollError::NameTaken`], telling the operator to pick another name or have
//! an administrator delete the old agent. An agent that lost its `data_dir` cannot prove it
//! is the old one: an administrator deletes it (`DELETE /api/v1/agents/{id}`) and it joins
//! again with a new token.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bamf_client::backoff::Backoff;
use bamf_client::enroll::{self, IdentityFiles, IssuedError, KeyPair};
use bamf_client::https::{Api, HttpsError};
use bamf_client::identity::{self, IdentityError};
use bamf_proto::api::{AgentCertificate, AgentJoinRequest, RenewRequest};
use bamf_proto::san::{AgentId, Identity, Name};
use http::StatusCode;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::config::Config;

/// `agent.key`, `agent.crt`.
const STEM: &str = "agent";
const CA_FILE: &str = "ca.crt";
const ID_FILE: &str = "agent.json";

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
    pub(crate) pair: KeyPair,
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

/// The TLS set-ups made from [`Credentials`]: the API client with the agent certificate, the
/// configuration bridges are dialled with, and the end-to-end session's. Rebuilt after each
/// renewal.
#[derive(Debug)]
pub struct Tls {
    /// The agent.
    pub agent_id: AgentId,
    /// The API, authenticated by the agent certificate.
    pub api: Api,
    /// For dialling bridges with the agent certificate.
    pub bridge: Arc<rustls::ClientConfig>,
    /// The end-to-end session's server side: the agent certificate, and clients certified by
    /// the internal CA.
    pub inner: Arc<rustls::ServerConfig>,
}

impl Tls {
    /// Builds both configurations. Both trust `api_ca_file` and the CA the API returned.
    ///
    /// # Errors
    ///
    /// A PEM does not parse.
    pub fn new(config: &Config, creds: &Credentials) -> Result<Self, EnrollError> {
        let trust = format!("{}\n{}", config.api_ca.pem, creds.ca_pem);
        let client = Some((creds.pair.cert_pem.as_str(), creds.pair.key_pem.as_str()));
        let api_tls = bamf_client::tls_config(&trust, client, &[b"http/1.1"])?;
        let bridge = bamf_client::tls_config(&trust, client, &[])?;
        let inner = bamf_client::e2e::server_config(
            &creds.ca_pem,
            &creds.pair.cert_pem,
            &creds.pair.key_pem,
        )?;
        Ok(Self {
            agent_id: creds.agent_id,
            api: api(config, api_tls)?,
            bridge,
            inner,
        })
    }
}

fn api(config: &Config, tls: Arc<rustls::ClientConfig>) -> Result<Api, EnrollError> {
    // Kept connections: an agent reports every session's end, and a TLS handshake per report
    // cost the API more than opening the session did. Rebuilt (a new pool) at each renewal.
    Ok(Api::new(config.api_url.as_str(), tls)
        .map_err(EnrollError::Api)?
        .connect_to(config.api_address)
        .pooled())
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
    /// The certificate issued is not for this agent or its key.
    #[error("the API issued an unusable certificate: {0}")]
    Issued(#[from] IssuedError),
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
    let files = IdentityFiles::open(dir, STEM)?;
    if let Some(creds) = load(&files)? {
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
    let creds = issued(answer, key_pem, config.name.clone(), None)?;
    // Prove the answer makes a TLS configuration before anything is stored.
    Tls::new(config, &creds)?;
    files.store(&creds.pair)?;
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

/// The stored identity, or `None` when the agent has not joined.
fn load(files: &IdentityFiles) -> Result<Option<Credentials>, EnrollError> {
    let dir = files.dir();
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
    let incomplete = |file| EnrollError::Incomplete {
        dir: dir.to_owned(),
        file,
    };
    let pair = files
        .load()?
        .ok_or_else(|| incomplete("agent.key or agent.crt"))?;
    let ca_pem = identity::read_optional(&dir.join(CA_FILE))?.ok_or_else(|| incomplete(CA_FILE))?;
    Ok(Some(Credentials {
        agent_id: stored.agent_id,
        name,
        pair,
        ca_pem,
    }))
}

impl Credentials {
    /// Logs the certificate's validity; an expired certificate cannot reach the API, which
    /// needs an operator.
    pub fn log_validity(&self) {
        match identity::validity(&self.pair.cert_pem) {
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
/// set-up on `tls` (see `bamf_client::enroll::renew_at_half_life` for the timing). A refusal
/// (401/403) means the agent was revoked or deleted and is logged as an error. Ends when
/// `stop` is cancelled.
pub async fn renew_forever(
    config: Arc<Config>,
    creds: Credentials,
    tls: watch::Sender<Arc<Tls>>,
    stop: CancellationToken,
) {
    // Only the certificate changes between renewals; who the agent is does not.
    let Credentials {
        agent_id,
        name,
        pair,
        ..
    } = creds;
    let files = match IdentityFiles::open(&config.data_dir, STEM) {
        Ok(files) => files,
        Err(e) => {
            tracing::error!(error = %e, "the data directory is unusable: no renewals");
            return;
        }
    };
    enroll::renew_at_half_life(pair.cert_pem, &stop, || async {
        let api = tls.borrow().api.clone();
        let new = renew(&config, &files, &api, agent_id, &name)
            .await
            .inspect_err(|e| {
                if let EnrollError::Call(h) = e
                    && matches!(
                        h.status(),
                        Some(StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN)
                    )
                {
                    tracing::error!(
                        error = %h,
                        "certificate renewal refused: this agent was revoked or deleted"
                    );
                }
            })?;
        let new_tls = Tls::new(&config, &new)?;
        tls.send_replace(Arc::new(new_tls));
        Ok::<_, EnrollError>(new.pair.cert_pem)
    })
    .await;
}

/// One renewal: a new key and CSR, the API's certificate for it, the files replaced.
async fn renew(
    config: &Config,
    files: &IdentityFiles,
    api: &Api,
    agent_id: AgentId,
    name: &Name,
) -> Result<Credentials, EnrollError> {
    let (key_pem, csr) = identity::key_and_csr()?;
    let answer = api
        .renew_agent(&RenewRequest { csr })
        .await
        .map_err(EnrollError::Call)?;
    let new = issued(answer, key_pem, name.clone(), Some(agent_id))?;
    files.store(&new.pair)?;
    identity::write_private(&config.data_dir.join(CA_FILE), &new.ca_pem)?;
    Ok(new)
}

/// The credentials an answer gives for `key_pem`, checked: the certificate names the agent
/// (the one asked for on renewal, `expected`) and certifies our key.
fn issued(
    answer: AgentCertificate,
    key_pem: String,
    name: Name,
    expected: Option<AgentId>,
) -> Result<Credentials, EnrollError> {
    let agent_id = match expected {
        Some(id) => id,
        None => answer.agent_id.parse().map_err(|_| {
            EnrollError::Answer(format!("malformed agent id {:?}", answer.agent_id))
        })?,
    };
    let pair = KeyPair {
        key_pem,
        cert_pem: answer.certificate.certificate,
    };
    enroll::check_issued(
        &pair.cert_pem,
        &pair.key_pem,
        &Identity::Agent { agent: agent_id },
    )?;
    Ok(Credentials {
        agent_id,
        name,
        pair,
        ca_pem: answer.certificate.ca,
    })
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

    fn write(dir: &std::path::Path, file: &str, text: &str) {
        std::fs::write(dir.join(file), text).unwrap();
    }

    #[test]
    fn data_dirs_are_made_private_and_a_missing_id_file_means_not_joined() {
        use std::os::unix::fs::PermissionsExt;
        let dir = scratch("fresh").join("nested");
        let files = IdentityFiles::open(&dir, STEM).unwrap();
        let mode = std::fs::metadata(&dir).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        // A leftover key from an interrupted join does not count as an identity.
        write(&dir, "agent.key", "key");
        assert!(load(&files).unwrap().is_none());
        std::fs::remove_dir_all(dir.parent().unwrap()).unwrap();
    }

    #[test]
    fn an_incomplete_data_dir_names_the_missing_file() {
        let dir = scratch("incomplete");
        let files = IdentityFiles::open(&dir, STEM).unwrap();
        write(
            &dir,
            ID_FILE,
            r#"{"agent_id":"1b6f1a52-3c0e-4d7e-9a41-5a4f6c3b2d10","name":"edge-1"}"#,
        );
        let err = load(&files).unwrap_err();
        assert!(matches!(err, EnrollError::Incomplete { .. }), "{err}");
        write(&dir, "agent.key", "key");
        write(&dir, "agent.crt", "cert");
        let err = load(&files).unwrap_err();
        assert!(
            matches!(err, EnrollError::Incomplete { file: CA_FILE, .. }),
            "{err}"
        );
        write(&dir, CA_FILE, "ca");
        let creds = load(&files).unwrap().unwrap();
        assert_eq!(creds.name.as_str(), "edge-1");
        assert_eq!(
            creds.agent_id.to_string(),
            "1b6f1a52-3c0e-4d7e-9a41-5a4f6c3b2d10"
        );
        // Debug never shows key material.
        assert!(!format!("{creds:?}").contains("key"));
        write(&dir, ID_FILE, "{}");
        assert!(matches!(load(&files), Err(EnrollError::BadIdFile { .. })));
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

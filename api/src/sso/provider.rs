//! One OpenID provider as the API uses it: its discovery document and signing keys, fetched
//! on first use and cached, the keys fetched again when a token names a key id we do not
//! have (the provider rotated its keys) — at most once per [`MIN_REFETCH`], so tokens with
//! made-up key ids cannot make us hammer the provider.

use std::time::{Duration, Instant};

use serde::Deserialize;
use tokio::sync::Mutex;

use super::config::ProviderSettings;
use super::fetch::{FetchError, Fetcher, Url};
use super::jwt::{Alg, Claims, Expect, JwkSet, Jws, TokenError};

/// How long a discovery document and a key set are used before being fetched again.
const CACHE_TTL: Duration = Duration::from_secs(3600);
/// The least time between two fetches of the key set for unknown key ids.
pub const MIN_REFETCH: Duration = Duration::from_secs(10);
/// Clock skew allowed on the ID token's times.
pub const SKEW: Duration = Duration::from_secs(60);

/// Why a sign-in with a provider failed. [`SsoFailure::reason`] is audited.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SsoFailure {
    /// The provider could not be reached or answered wrongly.
    #[error("the identity provider: {0}")]
    Provider(#[from] FetchError),
    /// The discovery document is not usable.
    #[error("the identity provider's discovery document: {0}")]
    Discovery(&'static str),
    /// The token endpoint gave no ID token.
    #[error("the identity provider returned no ID token")]
    NoIdToken,
    /// The ID token was refused.
    #[error(transparent)]
    Token(#[from] TokenError),
}

impl SsoFailure {
    /// A stable word for the audit log.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Provider(FetchError::Status { .. }) => "provider_refused",
            Self::Provider(_) => "provider_unreachable",
            Self::Discovery(_) => "discovery",
            Self::NoIdToken => "no_id_token",
            Self::Token(e) => e.reason(),
        }
    }
}

/// The parts of the discovery document we use.
#[derive(Debug, Clone, Deserialize)]
struct RawDiscovery {
    issuer: String,
    authorization_endpoint: String,
    token_endpoint: String,
    jwks_uri: String,
    #[serde(default)]
    id_token_signing_alg_values_supported: Vec<String>,
    #[serde(default)]
    code_challenge_methods_supported: Option<Vec<String>>,
    #[serde(default)]
    device_authorization_endpoint: Option<String>,
}

/// A checked discovery document.
#[derive(Debug, Clone)]
pub struct Discovery {
    /// Where the browser goes.
    pub authorization_endpoint: Url,
    token_endpoint: Url,
    jwks_uri: Url,
    device_endpoint: Option<Url>,
    algorithms: Vec<Alg>,
}

#[derive(Debug)]
struct Cached<T> {
    value: T,
    at: Instant,
}

/// A provider with its caches.
#[derive(Debug)]
pub struct Provider {
    /// Its configuration.
    pub settings: ProviderSettings,
    fetcher: Fetcher,
    discovery: Mutex<Option<Cached<Discovery>>>,
    keys: Mutex<Option<Cached<JwkSet>>>,
}

/// A device grant begun at the provider.
#[derive(Debug, Clone)]
pub struct DeviceStart {
    /// The provider's secret for polling (kept in the API, never shown).
    pub device_code: String,
    /// What the user types at the verification page.
    pub user_code: String,
    /// Where the user goes.
    pub verification_uri: String,
    /// The same with the code filled in, when the provider offers it.
    pub verification_uri_complete: Option<String>,
    /// Seconds the grant lives.
    pub expires_in: u64,
    /// Seconds between polls.
    pub interval: u64,
}

#[derive(Deserialize)]
struct RawDeviceStart {
    device_code: String,
    user_code: String,
    verification_uri: String,
    #[serde(default)]
    verification_uri_complete: Option<String>,
    expires_in: u64,
    #[serde(default)]
    interval: Option<u64>,
}

/// What a poll of a device grant found.
#[derive(Debug)]
pub enum DevicePoll {
    /// The user has not finished yet.
    Pending,
    /// Poll less often.
    SlowDown,
    /// Signed in: the validated claims.
    Done(Box<Claims>),
}

#[derive(Deserialize)]
struct TokenAnswer {
    #[serde(default)]
    id_token: Option<String>,
}

impl Provider {
    /// A provider; nothing is fetched yet.
    ///
    /// # Errors
    ///
    /// Its CA file is unusable.
    pub fn new(settings: ProviderSettings) -> Result<Self, String> {
        let fetcher = Fetcher::new(settings.ca_pem.as_deref())?;
        Ok(Self {
            settings,
            fetcher,
            discovery: Mutex::default(),
            keys: Mutex::default(),
        })
    }

    /// The discovery document, from the cache or the provider.
    ///
    /// # Errors
    ///
    /// [`SsoFailure::Provider`], [`SsoFailure::Discovery`].
    pub async fn discovery(&self) -> Result<Discovery, SsoFailure> {
        let mut cached = self.discovery.lock().await;
        if let Some(c) = cached.as_ref()
            && c.at.elapsed() < CACHE_TTL
        {
            return Ok(c.value.clone());
        }
        let url = Url::parse(&format!(
            "{}/.well-known/openid-configuration",
            self.settings.issuer.trim_end_matches('/')
        ))?;
        let raw: RawDiscovery = self.fetcher.get_json(&url).await?;
        let discovery = self.check_discovery(raw)?;
        *cached = Some(Cached {
            value: discovery.clone(),
            at: Instant::now(),
        });
        Ok(discovery)
    }

    fn check_discovery(&self, raw: RawDiscovery) -> Result<Discovery, SsoFailure> {
        // OpenID Connect Discovery §4.3: the issuer must be exactly the one configured.
        if raw.issuer != self.settings.issuer {
            return Err(SsoFailure::Discovery(
                "its issuer is not the configured issuer_url",
            ));
        }
        if let Some(methods) = &raw.code_challenge_methods_supported
            && !methods.iter().any(|m| m == "S256")
        {
            return Err(SsoFailure::Discovery("PKCE S256 is not supported"));
        }
        let announced: Vec<Alg> = raw
            .id_token_signing_alg_values_supported
            .iter()
            .filter_map(|a| Alg::parse(a))
            .collect();
        let algorithms = if self.settings.algorithms.is_empty() {
            // The provider's asymmetric algorithms; RS256 (mandatory to implement) when it
            // announces none.
            if announced.is_empty() {
                vec![Alg::RS256]
            } else {
                announced
            }
        } else {
            self.settings.algorithms.clone()
        };
        Ok(Discovery {
            authorization_endpoint: Url::parse(&raw.authorization_endpoint)?,
            token_endpoint: Url::parse(&raw.token_endpoint)?,
            jwks_uri: Url::parse(&raw.jwks_uri)?,
            device_endpoint: raw
                .device_authorization_endpoint
                .as_deref()
                .map(Url::parse)
                .transpose()?,
            algorithms,
        })
    }

    /// The authorization URL the browser is sent to.
    ///
    /// # Errors
    ///
    /// As [`Provider::discovery`].
    pub async fn authorization_url(
        &self,
        redirect_uri: &str,
        state: &str,
        nonce: &str,
        challenge: &str,
    ) -> Result<String, SsoFailure> {
        let d = self.discovery().await?;
        let endpoint = d.authorization_endpoint.as_str();
        let query = form_urlencoded::Serializer::new(String::new())
            .append_pair("response_type", "code")
            .append_pair("client_id", &self.settings.client_id)
            .append_pair("redirect_uri", redirect_uri)
            .append_pair("scope", &self.settings.scopes.join(" "))
            .append_pair("state", state)
            .append_pair("nonce", nonce)
            .append_pair("code_challenge", challenge)
            .append_pair("code_challenge_method", "S256")
            .finish();
        let sep = if endpoint.contains('?') { '&' } else { '?' };
        Ok(format!("{endpoint}{sep}{query}"))
    }

    /// Exchanges `code` at the token endpoint (authenticated with our client secret) and
    /// validates the ID token completely.
    ///
    /// # Errors
    ///
    /// [`SsoFailure`].
    pub async fn sign_in(
        &self,
        code: &str,
        redirect_uri: &str,
        verifier: &str,
        nonce: &str,
    ) -> Result<Claims, SsoFailure> {
        let d = self.discovery().await?;
        let answer: TokenAnswer = self
            .fetcher
            .post_form(
                &d.token_endpoint,
                &[
                    ("grant_type", "authorization_code"),
                    ("code", code),
                    ("redirect_uri", redirect_uri),
                    ("code_verifier", verifier),
                ],
                (
                    &self.settings.client_id,
                    self.settings.client_secret.expose(),
                ),
            )
            .await?;
        let token = answer.id_token.ok_or(SsoFailure::NoIdToken)?;
        self.validate(&d, &token, Some(nonce), crate::now_ms() / 1000)
            .await
    }

    /// Starts a device authorization grant (RFC 8628) at the provider.
    ///
    /// # Errors
    ///
    /// [`SsoFailure::Discovery`] when the provider has no device endpoint, else as
    /// [`Provider::sign_in`].
    pub async fn device_begin(&self) -> Result<DeviceStart, SsoFailure> {
        let d = self.discovery().await?;
        let endpoint = d
            .device_endpoint
            .as_ref()
            .ok_or(SsoFailure::Discovery("no device authorization endpoint"))?;
        let scope = self.settings.scopes.join(" ");
        let raw: RawDeviceStart = self
            .fetcher
            .post_form(
                endpoint,
                &[
                    ("client_id", self.settings.client_id.as_str()),
                    ("scope", scope.as_str()),
                ],
                (
                    &self.settings.client_id,
                    self.settings.client_secret.expose(),
                ),
            )
            .await?;
        Ok(DeviceStart {
            device_code: raw.device_code,
            user_code: raw.user_code,
            verification_uri: raw.verification_uri,
            verification_uri_complete: raw.verification_uri_complete,
            expires_in: raw.expires_in.clamp(10, 1800),
            interval: raw.interval.unwrap_or(5).clamp(1, 60),
        })
    }

    /// Asks the token endpoint whether the user finished the device grant.
    ///
    /// # Errors
    ///
    /// As [`Provider::sign_in`]; the provider's `expired_token` and `access_denied` are
    /// [`SsoFailure::Provider`].
    pub async fn device_poll(&self, device_code: &str) -> Result<DevicePoll, SsoFailure> {
        let d = self.discovery().await?;
        let answer: Result<TokenAnswer, FetchError> = self
            .fetcher
            .post_form(
                &d.token_endpoint,
                &[
                    ("grant_type", "urn:ietf:params:oauth:grant-type:device_code"),
                    ("device_code", device_code),
                ],
                (
                    &self.settings.client_id,
                    self.settings.client_secret.expose(),
                ),
            )
            .await;
        let answer = match answer {
            Ok(answer) => answer,
            Err(FetchError::Status { error: Some(e), .. }) if e == "authorization_pending" => {
                return Ok(DevicePoll::Pending);
            }
            Err(FetchError::Status { error: Some(e), .. }) if e == "slow_down" => {
                return Ok(DevicePoll::SlowDown);
            }
            Err(e) => return Err(e.into()),
        };
        let token = answer.id_token.ok_or(SsoFailure::NoIdToken)?;
        let claims = self
            .validate(&d, &token, None, crate::now_ms() / 1000)
            .await?;
        Ok(DevicePoll::Done(Box::new(claims)))
    }

    /// Validates an ID token with the provider's keys (fetched again once when the token
    /// names a key we do not have).
    ///
    /// # Errors
    ///
    /// [`SsoFailure`].
    pub async fn validate(
        &self,
        d: &Discovery,
        token: &str,
        nonce: Option<&str>,
        now: i64,
    ) -> Result<Claims, SsoFailure> {
        let jws = Jws::parse(token, &d.algorithms)?;
        let expect = Expect {
            issuer: &self.settings.issuer,
            client_id: &self.settings.client_id,
            nonce,
            now,
            skew: i64::try_from(SKEW.as_secs()).unwrap_or(60),
        };
        let mut keys = self.keys.lock().await;
        let fresh = keys.as_ref().is_some_and(|k| k.at.elapsed() < CACHE_TTL);
        let known = keys.as_ref().and_then(|k| jws.key(&k.value)).is_some();
        let may_refetch = keys.as_ref().is_none_or(|k| k.at.elapsed() >= MIN_REFETCH);
        if !fresh || (!known && may_refetch) {
            let body = self.fetcher.get(&d.jwks_uri).await?;
            let set = JwkSet::parse(&body)?;
            tracing::info!(provider = %self.settings.name, keys = set.keys.len(), "fetched the provider's signing keys");
            *keys = Some(Cached {
                value: set,
                at: Instant::now(),
            });
        }
        let set = keys
            .as_ref()
            .map(|k| &k.value)
            .ok_or(TokenError::UnknownKey)?;
        let key = jws.key(set).ok_or(TokenError::UnknownKey)?;
        Ok(expect.check(jws.verify(key)?)?)
    }
}

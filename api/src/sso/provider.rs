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
}

/// A checked discovery document.
#[derive(Debug, Clone)]
pub struct Discovery {
    /// Where the browser goes.
    pub authorization_endpoint: Url,
    token_endpoint: Url,
    jwks_uri: Url,
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
        self.validate(&d, &token, nonce, crate::now_ms() / 1000)
            .await
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
        nonce: &str,
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

//! Single sign-on with OpenID Connect: the API is the confidential client.
//!
//! 1. `POST /api/v1/auth/sso/begin` (the CLI, with its loopback `redirect_uri` and a PKCE
//!    challenge of its own): the API makes a *flow* — state, nonce, its own PKCE verifier —
//!    keeps it in presence for [`FLOW_TTL`], for one use, and answers the provider's
//!    authorization URL.
//! 2. The browser signs in at the provider, which sends it to the CLI's loopback listener
//!    with `code` and `state`.
//! 3. `POST /api/v1/auth/sso/finish` (the CLI, with code, state, its verifier and a CSR): the
//!    flow is taken (a replayed state finds nothing), the CLI's verifier checked, the code
//!    exchanged at the token endpoint with our client secret, the ID token validated
//!    completely ([`jwt`]), the user created or found by (provider, subject), the roles the
//!    claims map to re-bound, and a token and user certificate issued as for a password.
//!
//! [`config`] reads the settings; [`provider`] caches discovery and keys; [`fetch`] is the
//! bounded outbound HTTP(S).

pub mod config;
pub mod fetch;
pub mod jwt;
pub mod provider;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use bamf_proto::san::Name;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};

pub use config::AuthSettings;
use jwt::Claims;
pub use provider::{DevicePoll, DeviceStart, Provider, SsoFailure};

/// How long a begun sign-in may take to finish.
pub const FLOW_TTL: Duration = Duration::from_secs(300);

/// Sign-in methods: password login's switch and the providers.
#[derive(Debug, Default)]
pub struct Sso {
    /// Password login is open.
    pub local_enabled: bool,
    /// Who may use a password when it is closed.
    pub break_glass_users: Vec<String>,
    /// The provider used when none is named.
    pub default_provider: Option<String>,
    /// Providers by name.
    pub providers: BTreeMap<String, Provider>,
}

impl Sso {
    /// The providers of `settings`, nothing fetched yet.
    ///
    /// # Errors
    ///
    /// A provider's CA file is unusable.
    pub fn new(settings: AuthSettings) -> Result<Self, String> {
        let mut providers = BTreeMap::new();
        for p in settings.providers {
            let name = p.name.clone();
            let provider = Provider::new(p).map_err(|e| format!("sso.oidc.{name}: {e}"))?;
            providers.insert(name, provider);
        }
        Ok(Self {
            local_enabled: settings.local_enabled,
            break_glass_users: settings.break_glass_users,
            default_provider: settings.default_provider,
            providers,
        })
    }

    /// Password login only (no configuration file).
    pub fn local_only() -> Self {
        Self {
            local_enabled: true,
            ..Self::default()
        }
    }

    /// Whether `user` may sign in with a password.
    pub fn password_allowed(&self, user: &str) -> bool {
        self.local_enabled || self.break_glass_users.iter().any(|u| u == user)
    }

    /// The provider named, or the default one (or the only one).
    pub fn provider(&self, name: Option<&str>) -> Option<&Provider> {
        let name = match name {
            Some(n) => n,
            None => match &self.default_provider {
                Some(d) => d.as_str(),
                None if self.providers.len() == 1 => self.providers.keys().next()?.as_str(),
                None => return None,
            },
        };
        self.providers.get(name)
    }
}

/// What is kept between begin and finish, under the state.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Flow {
    /// The provider.
    pub provider: String,
    /// The nonce the ID token must carry.
    pub nonce: String,
    /// Our PKCE verifier towards the provider.
    pub verifier: String,
    /// The redirect URI the code was issued for.
    pub redirect_uri: String,
    /// The client's PKCE challenge towards us.
    pub client_challenge: String,
}

/// What is kept between a device grant's begin and its polls, under a handle of ours.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeviceFlow {
    /// The provider.
    pub provider: String,
    /// The provider's device code.
    pub device_code: String,
    /// Until when (Unix ms).
    pub expires_at_ms: i64,
}

/// A random URL-safe string of `bytes` random bytes.
///
/// # Errors
///
/// The system's random source failed.
pub fn random(bytes: usize) -> Result<String, ring::error::Unspecified> {
    use ring::rand::SecureRandom;
    let mut buf = vec![0u8; bytes];
    ring::rand::SystemRandom::new().fill(&mut buf)?;
    Ok(URL_SAFE_NO_PAD.encode(buf))
}

/// BASE64URL(SHA-256(verifier)): the PKCE S256 challenge.
pub fn challenge(verifier: &str) -> String {
    URL_SAFE_NO_PAD.encode(ring::digest::digest(
        &ring::digest::SHA256,
        verifier.as_bytes(),
    ))
}

/// Whether `text` is a PKCE verifier (RFC 7636 §4.1: 43–128 unreserved characters).
pub fn is_verifier(text: &str) -> bool {
    (43..=128).contains(&text.len())
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~".contains(&b))
}

/// Whether `text` is an S256 challenge (43 base64url characters).
pub fn is_challenge(text: &str) -> bool {
    text.len() == 43
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Checks a redirect URI: `http://` to a loopback address with a port (RFC 8252 §7.3), at
/// most 256 characters, no user part, no fragment.
pub fn loopback_redirect(text: &str) -> bool {
    if text.len() > 256 || text.contains('#') {
        return false;
    }
    let Ok(uri) = text.parse::<http::Uri>() else {
        return false;
    };
    let Some(authority) = uri.authority() else {
        return false;
    };
    uri.scheme_str() == Some("http")
        && !authority.as_str().contains('@')
        && authority.port_u16().is_some_and(|p| p != 0)
        && matches!(authority.host(), "127.0.0.1" | "[::1]" | "localhost")
}

/// The user name a provider's claims give: the first of `username_claims` that makes a
/// valid name once lower-cased, with characters outside the grammar (`@`, spaces, …) made
/// `_` and cut to the longest name allowed.
pub fn user_name(claims: &Claims, username_claims: &[String]) -> Option<Name> {
    username_claims.iter().find_map(|claim| {
        let value = claims.string(claim)?;
        let name: String = value
            .chars()
            .flat_map(char::to_lowercase)
            .map(|c| {
                if c.is_ascii_lowercase() || c.is_ascii_digit() || "-_.".contains(c) {
                    c
                } else {
                    '_'
                }
            })
            .take(64)
            .collect();
        name.parse().ok()
    })
}

/// The roles `claims` map to under `rules`, sorted, without repeats.
pub fn mapped_roles(claims: &Claims, rules: &[config::RoleRule]) -> Vec<String> {
    let mut roles = BTreeSet::new();
    for rule in rules {
        if claims.strings(&rule.claim).contains(&rule.value.as_str()) {
            roles.extend(rule.roles.iter().cloned());
        }
    }
    roles.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(v: serde_json::Value) -> Claims {
        Claims {
            iss: String::new(),
            sub: "s".into(),
            aud: Vec::new(),
            exp: 0,
            all: v.as_object().cloned().unwrap_or_default(),
        }
    }

    #[test]
    fn redirects_must_be_loopback_http_with_a_port() {
        for ok in [
            "http://127.0.0.1:41234/callback",
            "http://[::1]:5000/cb",
            "http://localhost:8080/",
        ] {
            assert!(loopback_redirect(ok), "{ok}");
        }
        for bad in [
            "https://127.0.0.1:1/callback",
            "http://127.0.0.1/callback",
            "http://127.0.0.1:0/callback",
            "http://evil.example:80/",
            "http://127.0.0.1.evil.example:80/",
            "http://u@127.0.0.1:80/",
            "http://127.0.0.1:80/#x",
            "javascript:alert(1)",
        ] {
            assert!(!loopback_redirect(bad), "{bad}");
        }
    }

    #[test]
    fn pkce_is_s256_of_the_verifier() {
        // RFC 7636 appendix B.
        let verifier = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
        assert_eq!(
            challenge(verifier),
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        );
        assert!(is_verifier(verifier) && is_challenge(&challenge(verifier)));
        assert!(
            !is_verifier("short") && !is_challenge("not/base64url/and/not/43/characters/long!!")
        );
        let r = random(32).unwrap();
        assert!(is_verifier(&r) && r != random(32).unwrap());
    }

    #[test]
    fn names_and_roles_come_from_the_claims() {
        let c = claims(serde_json::json!({
            "email": "Alice.Smith@Example.com", "groups": ["ops", "dev"], "dept": "db"
        }));
        let want = ["preferred_username".to_owned(), "email".to_owned()];
        assert_eq!(
            user_name(&c, &want).unwrap().as_str(),
            "alice.smith_example.com"
        );
        let c2 = claims(serde_json::json!({"preferred_username": "bob", "email": "x@y"}));
        assert_eq!(user_name(&c2, &want).unwrap().as_str(), "bob");
        assert!(
            user_name(
                &claims(serde_json::json!({"preferred_username": "_x"})),
                &want
            )
            .is_none()
        );
        let rule = |claim: &str, value: &str, roles: &[&str]| config::RoleRule {
            claim: claim.into(),
            value: value.into(),
            roles: roles.iter().map(|r| (*r).to_owned()).collect(),
        };
        let rules = [
            rule("groups", "ops", &["ssh-prod", "db-readonly"]),
            rule("groups", "admins", &["admin"]),
            rule("dept", "db", &["db-readonly", "dba"]),
        ];
        assert_eq!(mapped_roles(&c, &rules), ["db-readonly", "dba", "ssh-prod"]);
        assert!(
            mapped_roles(&claims(serde_json::json!({"groups": "admins-not"})), &rules).is_empty()
        );
    }
}

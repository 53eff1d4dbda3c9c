//! The API's sign-in configuration (`--auth-config`, TOML), laid out as the chart's `auth.*`
//! values: password login on or off, and the OpenID Connect providers.
//!
//! ```toml
//! [local]
//! enabled = false                 # password login refused …
//! break_glass_users = ["admin"]   # … except for these (empty by default)
//!
//! [sso]
//! default_provider = "auth0"
//!
//! [sso.oidc.auth0]
//! issuer_url = "https://myorg.us.auth0.com/"
//! client_id = "…"                 # or client_id_file
//! client_secret_file = "/etc/bamf/sso/auth0/client_secret"
//! scopes = ["openid", "profile", "email", "groups"]
//! groups_claim = "groups"
//! username_claims = ["preferred_username", "email"]
//!
//! [[sso.oidc.auth0.role_rules]]
//! value = "ops"                   # a value of groups_claim (or of `claim` when given)
//! roles = ["ssh-prod", "db-readonly"]
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use bamf_runtime::config::{ConfigErrors, Problems};
use serde::Deserialize;

use super::fetch::Url;
use super::jwt::Alg;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAuth {
    #[serde(default)]
    local: RawLocal,
    #[serde(default)]
    sso: RawSso,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLocal {
    #[serde(default = "yes")]
    enabled: bool,
    #[serde(default)]
    break_glass_users: Vec<String>,
}

impl Default for RawLocal {
    fn default() -> Self {
        Self {
            enabled: true,
            break_glass_users: Vec::new(),
        }
    }
}

fn yes() -> bool {
    true
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSso {
    #[serde(default)]
    default_provider: Option<String>,
    #[serde(default)]
    oidc: BTreeMap<String, RawProvider>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProvider {
    #[serde(default = "yes")]
    enabled: bool,
    issuer_url: String,
    #[serde(default)]
    client_id: Option<String>,
    #[serde(default)]
    client_id_file: Option<PathBuf>,
    client_secret_file: PathBuf,
    #[serde(default)]
    scopes: Option<Vec<String>>,
    #[serde(default)]
    groups_claim: Option<String>,
    #[serde(default)]
    username_claims: Option<Vec<String>>,
    #[serde(default)]
    algorithms: Option<Vec<String>>,
    #[serde(default)]
    ca_file: Option<PathBuf>,
    #[serde(default)]
    role_rules: Vec<RawRule>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    #[serde(default)]
    claim: Option<String>,
    value: String,
    roles: Vec<String>,
}

/// A secret read from a file; never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// The secret.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(…)")
    }
}

/// One claim-to-roles rule: a user whose `claim` is `value` (or is a list holding it) gets
/// `roles`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoleRule {
    /// The claim.
    pub claim: String,
    /// The value it must have or hold.
    pub value: String,
    /// The roles it grants.
    pub roles: Vec<String>,
}

/// One OpenID Connect provider, checked.
#[derive(Debug, Clone)]
pub struct ProviderSettings {
    /// Its name.
    pub name: String,
    /// The issuer, exactly as the ID tokens' `iss` must be.
    pub issuer: String,
    /// Our client id at the provider.
    pub client_id: String,
    /// Our client secret.
    pub client_secret: Secret,
    /// Scopes asked for (`openid` always among them).
    pub scopes: Vec<String>,
    /// The claim holding the user's groups.
    pub groups_claim: String,
    /// Claims tried in order for the user name.
    pub username_claims: Vec<String>,
    /// Signature algorithms accepted; empty: those the provider announces that we verify.
    pub algorithms: Vec<Alg>,
    /// Extra CA certificates (PEM) for the provider's TLS.
    pub ca_pem: Option<String>,
    /// Claim-to-roles rules.
    pub rules: Vec<RoleRule>,
}

/// How users sign in here.
#[derive(Debug, Clone)]
pub struct AuthSettings {
    /// Password login is open.
    pub local_enabled: bool,
    /// Users who may still sign in with a password when it is closed (break glass).
    pub break_glass_users: Vec<String>,
    /// The provider used when none is named.
    pub default_provider: Option<String>,
    /// Enabled providers, by name.
    pub providers: Vec<ProviderSettings>,
}

impl Default for AuthSettings {
    fn default() -> Self {
        Self {
            local_enabled: true,
            break_glass_users: Vec::new(),
            default_provider: None,
            providers: Vec::new(),
        }
    }
}

fn valid_name(name: &str) -> bool {
    (1..=63).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

fn read_trimmed(field: &str, path: &Path, problems: &mut Problems) -> Option<String> {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let text = text.trim_end_matches(['\n', '\r']).to_owned();
            if text.is_empty() {
                problems.push(format!("{field}: {} is empty", path.display()));
                None
            } else {
                Some(text)
            }
        }
        Err(e) => {
            problems.push(format!("{field}: {}: {e}", path.display()));
            None
        }
    }
}

impl AuthSettings {
    /// Reads and checks the file at `path` (secrets are read from their files now).
    ///
    /// # Errors
    ///
    /// Every problem found, each naming its field.
    pub fn load(path: &Path) -> Result<Self, ConfigErrors> {
        let raw: RawAuth = bamf_runtime::config::load_toml(path)?;
        Self::check(raw)
    }

    /// Parses and checks TOML `text` (`name` starts error messages).
    ///
    /// # Errors
    ///
    /// Every problem found.
    pub fn parse(name: &str, text: &str) -> Result<Self, ConfigErrors> {
        let raw: RawAuth = bamf_runtime::config::parse_toml(name, text)?;
        Self::check(raw)
    }

    fn check(raw: RawAuth) -> Result<Self, ConfigErrors> {
        let mut problems = Problems::new();
        let mut providers = Vec::new();
        for (name, p) in raw.sso.oidc {
            let field = format!("sso.oidc.{name}");
            if !valid_name(&name) {
                problems.push(format!(
                    "{field}: a provider name is 1-63 of a-z, 0-9, '-' and '_'"
                ));
            }
            if !p.enabled {
                continue;
            }
            if let Err(e) = Url::parse(&p.issuer_url) {
                problems.push(format!("{field}.issuer_url: {e}"));
            }
            let client_id = match (&p.client_id, &p.client_id_file) {
                (Some(id), None) if !id.is_empty() => Some(id.clone()),
                (None, Some(file)) => {
                    read_trimmed(&format!("{field}.client_id_file"), file, &mut problems)
                }
                _ => {
                    problems.push(format!(
                        "{field}: give exactly one of client_id and client_id_file"
                    ));
                    None
                }
            };
            let secret = read_trimmed(
                &format!("{field}.client_secret_file"),
                &p.client_secret_file,
                &mut problems,
            );
            let mut scopes = p
                .scopes
                .unwrap_or_else(|| vec!["openid".into(), "profile".into(), "email".into()]);
            if !scopes.iter().any(|s| s == "openid") {
                scopes.insert(0, "openid".into());
            }
            if scopes.iter().any(|s| s.is_empty() || s.contains(' ')) {
                problems.push(format!("{field}.scopes: a scope is one word"));
            }
            let mut algorithms = Vec::new();
            for a in p.algorithms.unwrap_or_default() {
                match Alg::parse(&a) {
                    Some(alg) => algorithms.push(alg),
                    None => problems.push(format!(
                        "{field}.algorithms: {a} is not one of RS256 RS384 RS512 PS256 PS384 \
                         PS512 ES256 ES384 EdDSA (symmetric and `none` are never accepted)"
                    )),
                }
            }
            let ca_pem = p
                .ca_file
                .as_ref()
                .and_then(|f| read_trimmed(&format!("{field}.ca_file"), f, &mut problems));
            let groups_claim = p.groups_claim.unwrap_or_else(|| "groups".into());
            let mut rules = Vec::new();
            for (i, r) in p.role_rules.into_iter().enumerate() {
                if r.roles.is_empty() || r.value.is_empty() {
                    problems.push(format!(
                        "{field}.role_rules[{i}]: needs a value and at least one role"
                    ));
                }
                rules.push(RoleRule {
                    claim: r.claim.unwrap_or_else(|| groups_claim.clone()),
                    value: r.value,
                    roles: r.roles,
                });
            }
            if let (Some(client_id), Some(secret)) = (client_id, secret) {
                providers.push(ProviderSettings {
                    name,
                    issuer: p.issuer_url,
                    client_id,
                    client_secret: Secret(secret),
                    scopes,
                    groups_claim,
                    username_claims: p
                        .username_claims
                        .filter(|c| !c.is_empty())
                        .unwrap_or_else(|| vec!["preferred_username".into(), "email".into()]),
                    algorithms,
                    ca_pem,
                    rules,
                });
            }
        }
        let default_provider = raw.sso.default_provider.filter(|d| !d.is_empty());
        if let Some(d) = &default_provider
            && !providers.iter().any(|p| &p.name == d)
            && problems.is_empty()
        {
            problems.push(format!(
                "sso.default_provider: {d} is not an enabled provider of sso.oidc"
            ));
        }
        if !raw.local.enabled && providers.is_empty() && problems.is_empty() {
            problems.push(
                "local.enabled: password login is off and no SSO provider is enabled: nobody \
                 could sign in (enable a provider under sso.oidc)",
            );
        }
        let settings = Self {
            local_enabled: raw.local.enabled,
            break_glass_users: raw.local.break_glass_users,
            default_provider,
            providers,
        };
        problems.finish(Some(settings))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret_file(dir: &Path, text: &str) -> PathBuf {
        let path = dir.join("secret");
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn the_chart_layout_parses_and_mistakes_are_named() {
        let dir = std::env::temp_dir().join(format!("bamf-sso-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let secret = secret_file(&dir, "s3cret\n");
        let text = format!(
            r#"
[local]
enabled = false
break_glass_users = ["admin"]
[sso]
default_provider = "auth0"
[sso.oidc.auth0]
issuer_url = "https://myorg.us.auth0.com/"
client_id = "abc"
client_secret_file = "{}"
[[sso.oidc.auth0.role_rules]]
value = "ops"
roles = ["ssh-prod", "db-readonly"]
"#,
            secret.display()
        );
        let s = AuthSettings::parse("auth.toml", &text).unwrap();
        assert!(!s.local_enabled);
        assert_eq!(s.break_glass_users, ["admin"]);
        assert_eq!(s.default_provider.as_deref(), Some("auth0"));
        let p = &s.providers[0];
        assert_eq!(p.client_secret.expose(), "s3cret");
        assert!(!format!("{p:?}").contains("s3cret"));
        assert_eq!(p.scopes, ["openid", "profile", "email"]);
        assert_eq!(p.rules[0].claim, "groups");

        let bad = format!(
            r#"
[local]
enabled = false
[sso]
default_provider = "okta"
[sso.oidc.auth0]
issuer_url = "http://idp.example/"
client_secret_file = "{}/missing"
algorithms = ["HS256"]
"#,
            dir.display()
        );
        let e = AuthSettings::parse("auth.toml", &bad)
            .unwrap_err()
            .to_string();
        for want in ["issuer_url", "client_id", "client_secret_file", "HS256"] {
            assert!(e.contains(want), "{want} in {e}");
        }
        let typo = "[sso.oidc.x]\nissuer = \"https://x\"\n";
        assert!(AuthSettings::parse("auth.toml", typo).is_err());
        let nobody = "[local]\nenabled = false\n";
        assert!(
            AuthSettings::parse("auth.toml", nobody)
                .unwrap_err()
                .to_string()
                .contains("nobody")
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

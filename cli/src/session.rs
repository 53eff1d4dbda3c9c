//! Logging in and out, the login status, and [`Ctx`]: what every authenticated command
//! starts from.
//!
//! A login belongs to a profile (one per API, [`crate::config`]); which CA the API must
//! chain to is decided by [`crate::trust`] before any credential is sent.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bamf_client::api::UserApi;
use bamf_client::https::{Api, HttpsError};
use bamf_proto::api::{self as wire, Whoami};

use crate::config::{
    self, CA, Config, Home, Profile, ProfileName, TOKEN, Token, USER_CERT, USER_KEY,
};
use crate::error::{Error, Result, Status};
use crate::net::Net;
use crate::output;
use crate::trust::{Contact, Fingerprint, TrustArgs};

/// ALPN for API connections.
const HTTP1: &[&[u8]] = &[b"http/1.1"];
/// How long logging out an old token may take before we give up on it (best effort).
const LOGOUT_TIMEOUT: Duration = Duration::from_secs(5);

/// A usable login: the API endpoint, the token, and where to dial tunnels.
#[derive(Debug)]
pub struct Ctx {
    /// The login's profile.
    pub profile: Profile,
    /// The login's configuration.
    pub config: Config,
    /// The API token.
    pub token: Token,
    /// The API endpoint (verified against the profile's `ca.pem`).
    pub api: Api,
    /// Where to connect instead of resolving names.
    pub via: Option<SocketAddr>,
}

impl Ctx {
    /// The profile's login, checked locally (present, not expired).
    ///
    /// # Errors
    ///
    /// [`Error::NotLoggedIn`] when there is no login or it expired.
    pub fn load(profile: Profile, net: &Net) -> Result<Self> {
        let ctx = Self::load_even_expired(profile, net)?;
        if ctx.token.expires_at <= now() || ctx.token.user != ctx.config.user {
            return Err(Error::NotLoggedIn);
        }
        Ok(ctx)
    }

    /// The stored login whatever its expiry says (to revoke its token when it is replaced
    /// or logged out: the local clock may be wrong, the API decides).
    ///
    /// # Errors
    ///
    /// [`Error::NotLoggedIn`] when there is no login.
    pub fn load_even_expired(profile: Profile, net: &Net) -> Result<Self> {
        let (Some(config), Some(token), Some(ca)) =
            (profile.config()?, profile.token()?, profile.read(CA)?)
        else {
            return Err(Error::NotLoggedIn);
        };
        let via = config::effective_via(&config)?;
        let tls = bamf_client::api_tls_config(&ca, None, HTTP1)?;
        let api = net.endpoint(&config.api, tls, via)?;
        Ok(Self {
            profile,
            config,
            token,
            api,
            via,
        })
    }

    /// The API as this login's user; map failures with [`Error::api`] (a 401 becomes
    /// [`Error::NotLoggedIn`]).
    pub fn user(&self) -> UserApi<'_> {
        self.api.user(&self.token.token)
    }
}

fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

/// `https://host[:port]` from what the user typed (`bamf.example.com` gets `https://`).
fn normalise_url(text: &str) -> String {
    let text = text.trim().trim_end_matches('/');
    if text.contains("://") {
        text.to_owned()
    } else {
        format!("https://{text}")
    }
}

/// Host and port of an `https://host[:port]` URL.
fn host_and_port(url: &str) -> Result<(String, u16)> {
    let uri: http::Uri = url
        .parse()
        .map_err(|_| Error::usage(format!("{url}: not a URL")))?;
    if uri.scheme_str() != Some("https") {
        return Err(Error::usage(format!(
            "{url}: the API URL must be https://host[:port]"
        )));
    }
    let host = uri
        .host()
        .ok_or_else(|| Error::usage(format!("{url}: no host")))?;
    Ok((
        host.trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned(),
        uri.port_u16().unwrap_or(443),
    ))
}

/// Names under `.localhost` are loopback by definition (RFC 6761) but not every resolver
/// answers for them: for such an API, dial 127.0.0.1 unless told otherwise.
fn default_via(host: &str, port: u16) -> Option<SocketAddr> {
    let host = host.to_ascii_lowercase();
    (host == "localhost" || host.ends_with(".localhost"))
        .then(|| SocketAddr::from(([127, 0, 0, 1], port)))
}

/// What `bamf login` was asked.
#[derive(Debug, Default)]
pub struct LoginRequest {
    /// `--api` / `BAMF_API`.
    pub api: Option<String>,
    /// `--user` / `BAMF_USER`.
    pub user: Option<String>,
    /// `--via` / `BAMF_VIA`.
    pub via: Option<String>,
    /// `--profile` / `BAMF_PROFILE`.
    pub profile: Option<ProfileName>,
    /// `--yes`, `--ca-file`, `--ca-fingerprint`.
    pub trust: TrustArgs,
    /// `--password-stdin`.
    pub password_stdin: bool,
    /// `--sso [PROVIDER]`: single sign-on, with the provider named or the default one.
    pub sso: Option<Option<String>>,
    /// `--bot-token-file`: a bot's one-time join token.
    pub bot_token_file: Option<std::path::PathBuf>,
    /// `--device` (with `--sso`): the device authorization grant.
    pub device: bool,
}

/// Where a login goes: its profile, API and the address to dial.
#[derive(Debug)]
pub struct Destination {
    /// The profile the login adds or refreshes.
    pub profile: Profile,
    /// Its configuration before this login, if it had one.
    pub previous: Option<Config>,
    /// `https://host[:port]`.
    pub url: String,
    /// The API's host and port.
    pub host: String,
    /// Its port.
    pub port: u16,
    /// Where to dial instead of resolving names.
    pub via: Option<SocketAddr>,
}

impl Destination {
    /// The profile and API of a login: the profile named (`--profile`), else the one whose
    /// API is `--api`, else a new one named after the API; without `--api`, the selected
    /// profile's API.
    ///
    /// # Errors
    ///
    /// No API given and none known (usage); a bad URL or `--via`.
    pub fn resolve(home: &Home, req: &LoginRequest) -> Result<Self> {
        let wanted_url = req.api.as_deref().map(normalise_url);
        let profile = match (&req.profile, &wanted_url) {
            (Some(name), _) => home.profile(name),
            (None, Some(url)) => {
                let known = home
                    .profiles()?
                    .into_iter()
                    .find(|p| p.config().ok().flatten().is_some_and(|c| c.api == *url));
                match known {
                    Some(profile) => profile,
                    None => home.profile(&ProfileName::for_url(url)?),
                }
            }
            (None, None) => home.select(None).map_err(|_| {
                Error::usage("which API? pass --api https://bamf.example.com (or set BAMF_API)")
            })?,
        };
        let previous = profile.config()?;
        let url = match (wanted_url, &previous) {
            (Some(url), _) => url,
            (None, Some(previous)) => previous.api.clone(),
            (None, None) => {
                return Err(Error::usage(
                    "which API? pass --api https://bamf.example.com (or set BAMF_API)",
                ));
            }
        };
        let (host, port) = host_and_port(&url)?;
        let via = match &req.via {
            Some(text) => Some(config::parse_via(text)?),
            None => previous
                .as_ref()
                .filter(|p| p.api == url)
                .and_then(|p| p.via.as_deref())
                .map(config::parse_via)
                .transpose()?
                .or_else(|| default_via(&host, port)),
        };
        Ok(Self {
            profile,
            previous,
            url,
            host,
            port,
            via,
        })
    }
}

/// What a login did (`--json`).
#[derive(Debug, serde::Serialize)]
struct LoginDone<'a> {
    profile: &'a str,
    api: &'a str,
    user: &'a str,
    token_expires_at: i64,
    ca_fingerprint: String,
    trust: &'static str,
}

/// `bamf login`: adds or refreshes a profile and makes it current.
///
/// # Errors
///
/// An untrusted or changed CA (nothing is sent then), a wrong user or password (one message
/// for both), an unreachable API, or files that cannot be written.
pub async fn login(home: Home, net: &Net, req: LoginRequest, json: bool) -> Result<()> {
    // Which API first: without one, the user does not matter yet.
    Destination::resolve(&home, &req)?;
    let user = match req.user.clone().or_else(|| std::env::var("USER").ok()) {
        Some(user) if !user.is_empty() => user,
        // Single sign-on and bots: the API says who the user is.
        _ if req.sso.is_some() || req.bot_token_file.is_some() => String::new(),
        _ => return Err(Error::usage("which user? pass --user NAME")),
    };
    let trusted = Trusted::establish(&home, net, &req).await?;

    let (key, csr) = bamf_client::identity::key_and_csr()?;
    let answer = if let Some(provider) = &req.sso {
        if req.device {
            crate::sso::device_sign_in(&trusted.api, provider.as_deref(), csr).await?
        } else {
            crate::sso::sign_in(&trusted.api, provider.as_deref(), csr).await?
        }
    } else if let Some(file) = &req.bot_token_file {
        crate::bot_login::join(&trusted.api, crate::bot_login::read_token(file)?, csr).await?
    } else {
        let password = read_password(&user, &trusted.dest.host, req.password_stdin)?;
        let request = wire::LoginRequest {
            user: user.clone(),
            password,
            csr,
        };
        match trusted.api.login(&request).await {
            Ok(answer) => answer,
            Err(e) => return Err(login_refused(e)),
        }
    };
    let bot = req.bot_token_file.is_some();
    trusted
        .keep(&home, req.via.clone(), key, answer, bot, json)
        .await
}

/// A login's destination whose CA is trusted, with an endpoint verified against it: what
/// every way of authenticating (password, SSO) starts from. Nothing carrying a credential
/// has been sent yet.
#[derive(Debug)]
pub struct Trusted {
    /// Where the login goes.
    pub dest: Destination,
    /// The CA and why it is trusted.
    pub anchor: crate::trust::Anchor,
    /// The API, verified against the anchor (its connection is kept).
    pub api: Api,
    /// Whether the profile already held a login to this API (its token is revoked once
    /// the new one is kept).
    same_api: bool,
}

impl Trusted {
    /// Resolves the destination of `req` and decides its CA ([`crate::trust::establish`]).
    ///
    /// # Errors
    ///
    /// Usage errors in `req`; an untrusted or changed CA (status 7); an unreachable API.
    pub async fn establish(home: &Home, net: &Net, req: &LoginRequest) -> Result<Self> {
        let dest = Destination::resolve(home, req)?;
        let same_api = dest.previous.as_ref().is_some_and(|p| p.api == dest.url);
        let pinned = if same_api {
            dest.profile.read(CA)?
        } else {
            None
        };
        let contact = Contact {
            url: &dest.url,
            authority: format!("{}:{}", dest.host, dest.port),
            via: dest.via,
            profile: dest.profile.name().as_str(),
        };
        let anchor = crate::trust::establish(net, &contact, pinned, &req.trust).await?;
        let api = match anchor.api.clone() {
            Some(api) => api,
            None => {
                let tls = bamf_client::api_tls_config(&anchor.ca_pem, None, HTTP1)?;
                net.endpoint(&dest.url, tls, dest.via)?
            }
        };
        Ok(Self {
            dest,
            anchor,
            api,
            same_api,
        })
    }

    /// Keeps what the API answered a login (the token and the certificate for `key`) in
    /// the profile with its pin, revokes the login it replaces, and makes the profile
    /// current. `via` is the `--via` given, kept for later commands; `bot` marks a bot's
    /// login, whose credentials later commands renew.
    ///
    /// # Errors
    ///
    /// The files cannot be written.
    pub async fn keep(
        self,
        home: &Home,
        via: Option<String>,
        key: String,
        answer: wire::Login,
        bot: bool,
        json: bool,
    ) -> Result<()> {
        let Self {
            dest,
            anchor,
            api,
            same_api,
        } = self;
        let token = Token {
            token: answer.token,
            user: answer.user,
            expires_at: answer.token_expires_at_ms / 1000,
        };
        let certificate = answer.certificate.certificate;

        // The profile's old login ends: its token is revoked (best effort, bounded) before
        // it is replaced. Same API, same connection.
        if same_api
            && let Some(old) = dest.profile.token()?
            && old.token != token.token
        {
            let _ = tokio::time::timeout(LOGOUT_TIMEOUT, api.user(&old.token).logout()).await;
        }

        let profile = &dest.profile;
        profile.ensure()?;
        profile.write(CA, &anchor.ca_pem)?;
        profile.write(USER_KEY, &key)?;
        profile.write(USER_CERT, &certificate)?;
        let config = Config {
            api: dest.url.clone(),
            via: via.or_else(|| dest.via.map(|v| v.to_string())),
            user: token.user.clone(),
        };
        profile.write_config(&config)?;
        profile.write_token(&token)?;
        if bot {
            crate::bot_login::mark(profile, token.expires_at)?;
        } else {
            profile.remove(crate::bot_login::BOT)?;
        }
        home.set_current(profile.name())?;

        if json {
            let done = LoginDone {
                profile: profile.name().as_str(),
                api: &dest.url,
                user: &token.user,
                token_expires_at: token.expires_at,
                ca_fingerprint: anchor.fingerprint.to_string(),
                trust: anchor.basis.as_str(),
            };
            output::json(&serde_json::to_value(&done).unwrap_or_default());
        }
        output::note(format!(
            "logged in to {} as {} until {} ({}); profile {}",
            dest.url,
            token.user,
            output::time(Some(token.expires_at)),
            output::relative(token.expires_at),
            profile.name(),
        ));
        Ok(())
    }
}

/// How a refused login reads.
fn login_refused(e: HttpsError) -> Error {
    let request_id = e.request_id().map(str::to_owned);
    match e {
        HttpsError::Status { ref code, .. } if code == "unauthenticated" => Error::Failed {
            status: Status::AuthNeeded,
            message: "login failed: wrong user name or password".into(),
            request_id,
        },
        HttpsError::Status { ref code, .. } if code == "rate_limited" => {
            Error::api(e).reworded(|_| {
                "login failed: too many failed attempts; wait a few minutes (rate_limited)".into()
            })
        }
        e => Error::api(e).reworded(|m| format!("login failed: {m}")),
    }
}

/// The password: a line from stdin with `--password-stdin`, else asked on the terminal
/// without echo.
fn read_password(user: &str, host: &str, from_stdin: bool) -> Result<String> {
    if from_stdin {
        let mut text = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut text)
            .map_err(|e| Error::msg(format!("reading the password from stdin: {e}")))?;
        let password = text
            .strip_suffix('\n')
            .map(|t| t.strip_suffix('\r').unwrap_or(t))
            .unwrap_or(&text);
        if password.is_empty() {
            return Err(Error::usage("no password on stdin"));
        }
        return Ok(password.to_owned());
    }
    rpassword::prompt_password(format!("password for {user} at {host}: ")).map_err(|e| {
        Error::usage(format!(
            "cannot ask for the password ({e}): with no terminal, pass it on stdin with \
             --password-stdin"
        ))
    })
}

/// SHA-256 of the first certificate in `pem`, as colon-separated upper-case hex (the form
/// `openssl x509 -fingerprint -sha256` prints).
pub fn fingerprint(pem: &str) -> String {
    Fingerprint::of_pem(pem).map_or_else(|| "(not a certificate)".into(), |f| f.to_string())
}

/// `bamf logout`: revokes the token at the API (best effort) and removes the token, key and
/// certificate of the selected profile. The API address and its pinned CA stay for the next
/// login.
///
/// # Errors
///
/// The files cannot be removed.
pub async fn logout(home: Home, net: &Net, wanted: Option<&ProfileName>, json: bool) -> Result<()> {
    let profile = home.select(wanted)?;
    let had_token = end_login(&profile, net).await?;
    if json {
        output::json(&serde_json::json!({
            "profile": profile.name().as_str(),
            "logged_out": had_token,
        }));
    }
    output::note(if had_token {
        format!("logged out of profile {}", profile.name())
    } else {
        format!("not logged in to profile {}", profile.name())
    });
    Ok(())
}

/// Revokes a profile's token (best effort, bounded) and removes it with the key and the
/// certificate; whether there was a token.
async fn end_login(profile: &Profile, net: &Net) -> Result<bool> {
    let had_token = profile.token()?.is_some();
    if let Ok(ctx) = Ctx::load_even_expired(profile.clone(), net) {
        let revoked = tokio::time::timeout(LOGOUT_TIMEOUT, ctx.user().logout()).await;
        match revoked {
            // Refused (already expired or revoked) is as good as done.
            Ok(Ok(())) => {}
            Ok(Err(e)) if e.status().is_some() => {}
            Ok(Err(e)) => output::warn(format!(
                "the API could not be told ({e}); the token expires by itself"
            )),
            Err(_) => output::warn("the API did not answer in time; the token expires by itself"),
        }
    }
    for name in [TOKEN, USER_KEY, USER_CERT] {
        profile.remove(name)?;
    }
    Ok(had_token)
}

/// `bamf status`: who, which roles, and when the token and certificate expire.
///
/// # Errors
///
/// [`Error::NotLoggedIn`].
pub async fn status(ctx: &Ctx, json: bool) -> Result<()> {
    let (roles, reachable) = match ctx.user().whoami().await.map_err(Error::api) {
        Ok(Whoami::Token { roles, .. }) => (roles, None),
        Ok(Whoami::Certificate { .. }) => (Vec::new(), None),
        Err(Error::NotLoggedIn) => return Err(Error::NotLoggedIn),
        Err(e) => (Vec::new(), Some(e.to_string())),
    };
    let cert = ctx.profile.read(USER_CERT)?;
    let cert_expires = cert
        .as_deref()
        .and_then(|pem| bamf_client::identity::validity(pem).ok())
        .map(|(_, to)| to.unix_timestamp());
    let ca = ctx.profile.read(CA)?.unwrap_or_default();
    if json {
        output::json(&serde_json::json!({
            "profile": ctx.profile.name().as_str(),
            "user": ctx.token.user,
            "roles": roles,
            "api": ctx.config.api,
            "via": ctx.via.map(|v| v.to_string()),
            "token_expires_at": ctx.token.expires_at,
            "certificate_expires_at": cert_expires,
            "ca_fingerprint": fingerprint(&ca),
            "api_error": reachable,
        }));
        return Ok(());
    }
    let expiry = |at: Option<i64>| match at {
        Some(at) => format!(
            "valid until {} ({})",
            output::time(Some(at)),
            output::relative(at)
        ),
        None => output::styled("missing", output::Style::Red),
    };
    let api = match ctx.via {
        Some(via) => format!("{} (via {via})", ctx.config.api),
        None => ctx.config.api.clone(),
    };
    let roles = if reachable.is_some() {
        output::styled("unknown (the API did not answer)", output::Style::Yellow)
    } else {
        roles.join(", ")
    };
    output::fields(&[
        ("profile", ctx.profile.name().to_string()),
        ("user", ctx.token.user.clone()),
        ("roles", roles),
        ("api", api),
        ("token", expiry(Some(ctx.token.expires_at))),
        ("certificate", expiry(cert_expires)),
        ("ca", format!("SHA-256 {}", fingerprint(&ca))),
    ]);
    if let Some(e) = reachable {
        output::warn(e);
    }
    Ok(())
}

/// One profile as `bamf profiles ls --json` shows it.
#[derive(Debug, serde::Serialize)]
struct ProfileRow {
    name: String,
    current: bool,
    api: String,
    user: String,
    logged_in: bool,
    token_expires_at: Option<i64>,
    ca_fingerprint: Option<String>,
}

/// `bamf profiles ls`.
///
/// # Errors
///
/// The directory cannot be read.
pub fn profiles_ls(home: &Home, json: bool) -> Result<()> {
    let current = home.current_name()?;
    let mut rows = Vec::new();
    for profile in home.profiles()? {
        let Some(config) = profile.config()? else {
            continue;
        };
        let token = profile.token()?;
        rows.push(ProfileRow {
            name: profile.name().to_string(),
            current: current.as_ref() == Some(profile.name()),
            api: config.api,
            user: config.user,
            logged_in: token.as_ref().is_some_and(|t| t.expires_at > now()),
            token_expires_at: token.map(|t| t.expires_at),
            ca_fingerprint: profile.read(CA)?.map(|pem| fingerprint(&pem)),
        });
    }
    if json {
        output::json(&serde_json::to_value(&rows).unwrap_or_default());
        return Ok(());
    }
    let mut table = output::Table::new(&["", "PROFILE", "API", "USER", "LOGIN"]);
    for row in &rows {
        let login = match row.token_expires_at {
            Some(at) if row.logged_in => output::Cell::styled(
                format!("valid {}", output::relative(at)),
                output::Style::Green,
            ),
            Some(_) => output::Cell::styled("expired", output::Style::Yellow),
            None => output::Cell::styled("logged out", output::Style::Dim),
        };
        table.row(vec![
            if row.current { "*" } else { "" }.into(),
            row.name.clone().into(),
            row.api.clone().into(),
            row.user.clone().into(),
            login,
        ]);
    }
    table.print("no profiles: `bamf login --api https://bamf.example.com` adds one");
    Ok(())
}

/// `bamf profiles use NAME`.
///
/// # Errors
///
/// No such profile (not found).
pub fn profiles_use(home: &Home, name: &ProfileName, json: bool) -> Result<()> {
    let profile = home.select(Some(name))?;
    home.set_current(profile.name())?;
    if json {
        output::json(&serde_json::json!({"current": name.as_str()}));
    }
    output::note(format!("profile {name} is now current"));
    Ok(())
}

/// `bamf profiles rm NAME`: logs out (revoking the token) and forgets the profile, its pin
/// included.
///
/// # Errors
///
/// No such profile (not found), or its files cannot be removed.
pub async fn profiles_rm(home: &Home, net: &Net, name: &ProfileName, json: bool) -> Result<()> {
    let profile = home.select(Some(name))?;
    end_login(&profile, net).await?;
    profile.delete()?;
    if home.current_name()?.as_ref() == Some(name) {
        home.clear_current()?;
    }
    if json {
        output::json(&serde_json::json!({"removed": name.as_str()}));
    }
    output::note(format!(
        "removed profile {name} (its token is revoked, its pinned CA forgotten)"
    ));
    Ok(())
}

/// A shared login for commands that open many sessions.
pub type SharedCtx = Arc<Ctx>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_and_default_via() {
        assert_eq!(
            normalise_url("bamf.example.com/"),
            "https://bamf.example.com"
        );
        assert!(host_and_port("http://localhost:8443").is_err());
        assert_eq!(
            host_and_port("https://localhost:8443").ok(),
            Some(("localhost".into(), 8443))
        );
        assert_eq!(
            host_and_port("https://bamf.example.com").ok(),
            Some(("bamf.example.com".into(), 443))
        );
        assert_eq!(
            default_via("bamf.LOCALHOST", 8443),
            Some(SocketAddr::from(([127, 0, 0, 1], 8443)))
        );
        assert_eq!(default_via("localhost.example.com", 443), None);
    }
}

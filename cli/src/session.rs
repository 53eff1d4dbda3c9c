//! Logging in and out, the login status, and [`Ctx`]: what every authenticated command
//! starts from.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bamf_client::api::UserApi;
use bamf_client::https::{Api, HttpsError};
use bamf_proto::api::{self as wire, Whoami};

use crate::config::{self, CA, Config, Home, TOKEN, Token, USER_CERT, USER_KEY};
use crate::error::{Error, Result};
use crate::output;

/// ALPN for API connections.
const HTTP1: &[&[u8]] = &[b"http/1.1"];
/// How long logging out an old token may take before we give up on it (best effort).
const LOGOUT_TIMEOUT: Duration = Duration::from_secs(5);

/// A usable login: the API endpoint, the token, and where to dial tunnels.
#[derive(Debug)]
pub struct Ctx {
    /// The CLI's directory.
    pub home: Home,
    /// The login's configuration.
    pub config: Config,
    /// The API token.
    pub token: Token,
    /// The API endpoint (verified against `ca.pem`).
    pub api: Api,
    /// Where to connect instead of resolving names.
    pub via: Option<SocketAddr>,
}

impl Ctx {
    /// The current login, checked locally (present, not expired).
    ///
    /// # Errors
    ///
    /// [`Error::NotLoggedIn`] when there is no login or it expired.
    pub fn load(home: Home) -> Result<Self> {
        let ctx = Self::load_even_expired(home)?;
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
    pub fn load_even_expired(home: Home) -> Result<Self> {
        let (Some(config), Some(token), Some(ca)) = (home.config()?, home.token()?, home.read(CA)?)
        else {
            return Err(Error::NotLoggedIn);
        };
        let via = config::effective_via(&config)?;
        let api = api_endpoint(&config.api, &ca, via)?;
        Ok(Self {
            home,
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

/// The API endpoint for `url`, trusting `ca_pem` and the system roots (a publicly certified
/// API host), connecting at `via` when given.
fn api_endpoint(url: &str, ca_pem: &str, via: Option<SocketAddr>) -> Result<Api> {
    let tls = bamf_client::api_tls_config(ca_pem, None, HTTP1)?;
    Ok(Api::new(url, tls)
        .map_err(|e| Error::msg(format!("{url}: {e}")))?
        .connect_to(via))
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

/// Host and port of an `https://host[:port]` URL (already checked by [`Api::new`]).
fn host_and_port(url: &str) -> Result<(String, u16)> {
    let uri: http::Uri = url
        .parse()
        .map_err(|_| Error::msg(format!("{url}: not a URL")))?;
    let host = uri
        .host()
        .ok_or_else(|| Error::msg(format!("{url}: no host")))?;
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
#[derive(Debug)]
pub struct LoginRequest {
    /// `--api` / `BAMF_API`.
    pub api: Option<String>,
    /// `--user` / `BAMF_USER`.
    pub user: Option<String>,
    /// `--via` / `BAMF_VIA`.
    pub via: Option<String>,
    /// `--ca-file`.
    pub ca_file: Option<std::path::PathBuf>,
    /// `--password-stdin`.
    pub password_stdin: bool,
    /// `--sso [PROVIDER]`: single sign-on, with the provider named or the default one.
    pub sso: Option<Option<String>>,
    /// `--bot-token-file`: a bot's one-time join token.
    pub bot_token_file: Option<std::path::PathBuf>,
    /// `--device` (with `--sso`): the device authorization grant.
    pub device: bool,
}

/// `bamf login`.
///
/// # Errors
///
/// A wrong user or password (one message for both), an unreachable API, a CA that does not
/// verify, or files that cannot be written.
pub async fn login(home: Home, req: LoginRequest) -> Result<()> {
    let previous = home.config()?;
    let url = match (&req.api, &previous) {
        (Some(api), _) => normalise_url(api),
        (None, Some(previous)) => previous.api.clone(),
        (None, None) => {
            return Err(Error::msg(
                "which API? pass --api https://bamf.example.com (or set BAMF_API)",
            ));
        }
    };
    let (host, port) = host_and_port(&url)?;
    let via = match &req.via {
        Some(text) => Some(config::parse_via(text)?),
        None => default_via(&host, port),
    };
    let user = match req.user.clone().or_else(|| std::env::var("USER").ok()) {
        Some(user) if !user.is_empty() => user,
        // Single sign-on: the provider says who the user is.
        _ if req.sso.is_some() || req.bot_token_file.is_some() => String::new(),
        _ => return Err(Error::msg("which user? pass --user NAME")),
    };

    // Which CA the API must chain to: the given file, the one pinned at an earlier login to
    // the same API, or (first login) the one the API serves, shown by fingerprint.
    let same_api = previous.as_ref().is_some_and(|p| p.api == url);
    let pinned = if same_api { home.read(CA)? } else { None };
    let (ca_pem, first_use) = match (&req.ca_file, pinned) {
        (Some(path), _) => {
            let pem = std::fs::read_to_string(path)
                .map_err(|e| Error::msg(format!("{}: {e}", path.display())))?;
            (pem, false)
        }
        (None, Some(pem)) => (pem, false),
        (None, None) => (crate::tofu::fetch_ca(&host, port, via).await?, true),
    };
    let api = api_endpoint(&url, &ca_pem, via)?;

    let (key, csr) = bamf_client::identity::key_and_csr()?;
    let answer = if let Some(provider) = &req.sso {
        if req.device {
            crate::sso::device_sign_in(&api, provider.as_deref(), csr).await?
        } else {
            crate::sso::sign_in(&api, provider.as_deref(), csr).await?
        }
    } else if let Some(file) = &req.bot_token_file {
        crate::bot_login::join(&api, crate::bot_login::read_token(file)?, csr).await?
    } else {
        let password = read_password(&user, &host, req.password_stdin)?;
        let request = wire::LoginRequest {
            user: user.clone(),
            password,
            csr,
        };
        match api.login(&request).await {
            Ok(answer) => answer,
            Err(HttpsError::Status { code, .. }) if code == "unauthenticated" => {
                return Err(Error::msg("login failed: wrong user name or password"));
            }
            Err(HttpsError::Status { code, .. }) if code == "rate_limited" => {
                return Err(Error::msg(
                    "login failed: too many failed attempts; wait a few minutes (rate_limited)",
                ));
            }
            Err(e @ HttpsError::Connect(..))
                if !first_use && e.to_string().contains("certificate") =>
            {
                return Err(Error::msg(format!(
                    "{e}\nthe API's certificate does not chain to the CA pinned at the first login \
                 ({}): if the deployment's CA really changed, log in with --ca-file",
                    home.path(CA).display()
                )));
            }
            Err(HttpsError::Status { code, message, .. }) if code == "local_login_disabled" => {
                return Err(Error::msg(format!("login failed: {message}")));
            }
            Err(e) => return Err(Error::msg(format!("login failed: {}", Error::api(e)))),
        }
    };
    let token = Token {
        token: answer.token,
        user: answer.user,
        expires_at: answer.token_expires_at_ms / 1000,
    };
    let certificate = answer.certificate.certificate;

    // The old login ends: its token is revoked (best effort, bounded) before it is replaced.
    if let Ok(old) = Ctx::load_even_expired(home.clone())
        && old.token.token != token.token
    {
        let _ = tokio::time::timeout(LOGOUT_TIMEOUT, old.user().logout()).await;
    }

    home.ensure()?;
    home.write(CA, &ca_pem)?;
    home.write(USER_KEY, &key)?;
    home.write(USER_CERT, &certificate)?;
    let config = Config {
        api: url.clone(),
        via: req.via.clone().or_else(|| via.map(|v| v.to_string())),
        user: token.user.clone(),
    };
    home.write_config(&config)?;
    home.write_token(&token)?;
    if req.bot_token_file.is_some() {
        crate::bot_login::mark(&home, token.expires_at)?;
    } else {
        let _ = std::fs::remove_file(home.path(crate::bot_login::BOT));
    }

    if first_use {
        output::note(format!(
            "trusted the API's CA on first use; its SHA-256 fingerprint is\n  {}\n\
             compare it with your deployment's CA (openssl x509 -noout -fingerprint -sha256 \
             -in ca.pem), or log in with --ca-file",
            fingerprint(&ca_pem)
        ));
    }
    output::note(format!(
        "logged in to {url} as {} until {} ({})",
        token.user,
        output::time(Some(token.expires_at)),
        output::relative(token.expires_at)
    ));
    Ok(())
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
            return Err(Error::msg("no password on stdin"));
        }
        return Ok(password.to_owned());
    }
    rpassword::prompt_password(format!("password for {user} at {host}: ")).map_err(|e| {
        Error::msg(format!(
            "cannot ask for the password ({e}): with no terminal, pass it on stdin with \
             --password-stdin"
        ))
    })
}

/// SHA-256 of the first certificate in `pem`, as colon-separated upper-case hex (the form
/// `openssl x509 -fingerprint -sha256` prints).
pub fn fingerprint(pem: &str) -> String {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    let Ok(der) = CertificateDer::from_pem_slice(pem.as_bytes()) else {
        return "(not a certificate)".into();
    };
    let digest = ring::digest::digest(&ring::digest::SHA256, &der);
    digest
        .as_ref()
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// `bamf logout`: revokes the token at the API (best effort) and removes the token, key and
/// certificate. The API address and its pinned CA stay for the next login.
///
/// # Errors
///
/// The files cannot be removed.
pub async fn logout(home: Home) -> Result<()> {
    let had_token = home.token()?.is_some();
    if let Ok(ctx) = Ctx::load_even_expired(home.clone()) {
        let revoked = tokio::time::timeout(LOGOUT_TIMEOUT, ctx.user().logout()).await;
        match revoked {
            // Refused (already expired or revoked) is as good as done.
            Ok(Ok(_)) => {}
            Ok(Err(e)) if e.status().is_some() => {}
            Ok(Err(e)) => output::warn(format!(
                "the API could not be told ({e}); the token expires by itself"
            )),
            Err(_) => output::warn("the API did not answer in time; the token expires by itself"),
        }
    }
    for name in [TOKEN, USER_KEY, USER_CERT] {
        home.remove(name)?;
    }
    output::note(if had_token {
        "logged out"
    } else {
        "not logged in"
    });
    Ok(())
}

/// `bamf status`: who, which roles, and when the token and certificate expire.
///
/// # Errors
///
/// [`Error::NotLoggedIn`].
pub async fn status(home: Home, json: bool) -> Result<()> {
    let ctx = Ctx::load(home)?;
    let (roles, reachable) = match ctx.user().whoami().await.map_err(Error::api) {
        Ok(Whoami::Token { roles, .. }) => (roles, None),
        Ok(Whoami::Certificate { .. }) => (Vec::new(), None),
        Err(Error::NotLoggedIn) => return Err(Error::NotLoggedIn),
        Err(e) => (Vec::new(), Some(e.to_string())),
    };
    let cert = ctx.home.read(USER_CERT)?;
    let cert_expires = cert
        .as_deref()
        .and_then(|pem| bamf_client::identity::validity(pem).ok())
        .map(|(_, to)| to.unix_timestamp());
    let ca = ctx.home.read(CA)?.unwrap_or_default();
    if json {
        output::json(&serde_json::json!({
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

//! `bamf login --sso [PROVIDER]`: single sign-on in a browser.
//!
//! The CLI listens on `127.0.0.1:<any port>`, asks the API to begin a sign-in for that
//! loopback redirect (with a PKCE challenge of its own, so a code and state seen by anyone
//! else are useless without the verifier it keeps), opens the browser at the provider's
//! page (`$BROWSER`, else `xdg-open`; the URL is always printed too), waits for the browser
//! to come back with the code — under a deadline — and posts code, state and verifier to
//! the API, which answers like a password login.

use std::time::Duration;

use bamf_client::https::{Api, HttpsError};
use bamf_proto::api::{
    Login, SsoBeginRequest, SsoDeviceBeginRequest, SsoDevicePollRequest, SsoFinishRequest,
};
use base64::Engine as _;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::error::{Error, Result};
use crate::output;

/// How long the browser has to come back.
const WAIT: Duration = Duration::from_secs(300);
/// How long one connection to the listener may take to send its request.
const REQUEST_DEADLINE: Duration = Duration::from_secs(10);
/// Largest request head read from the browser.
const MAX_REQUEST: usize = 16 * 1024;

/// What the browser brought back.
#[derive(Debug, PartialEq, Eq)]
enum Callback {
    /// The code, for our state.
    Code(String),
    /// The provider refused (its OAuth `error` code).
    Refused(String),
    /// Not for us (another path, another state): keep waiting.
    Ignore,
}

/// Signs in through the provider named (or the API's default) and returns the login.
///
/// # Errors
///
/// The API refuses, the browser does not come back in time, or the provider refuses.
pub async fn sign_in(api: &Api, provider: Option<&str>, csr: String) -> Result<Login> {
    let listener = TcpListener::bind(("127.0.0.1", 0))
        .await
        .map_err(|e| Error::msg(format!("cannot listen on 127.0.0.1 for the browser: {e}")))?;
    let port = listener
        .local_addr()
        .map_err(|e| Error::msg(format!("listener: {e}")))?
        .port();
    let redirect_uri = format!("http://127.0.0.1:{port}/callback");
    let verifier = random_verifier()?;
    let begin = api
        .sso_begin(&SsoBeginRequest {
            provider: provider.map(str::to_owned),
            redirect_uri,
            code_challenge: challenge(&verifier),
        })
        .await
        .map_err(|e| refused("single sign-on could not begin", e))?;
    output::note(format!(
        "sign in with {} in your browser; if it does not open, open this URL:\n  {}",
        begin.provider, begin.authorization_url
    ));
    open_browser(&begin.authorization_url);
    let code = tokio::time::timeout(WAIT, wait_for_code(&listener, &begin.state))
        .await
        .map_err(|_| {
            Error::msg(format!(
                "single sign-on: the browser did not come back within {} s",
                WAIT.as_secs()
            ))
        })??;
    drop(listener);
    api.sso_finish(&SsoFinishRequest {
        state: begin.state,
        code,
        code_verifier: verifier,
        csr,
    })
    .await
    .map_err(|e| refused("single sign-on failed", e))
}

/// Signs in with the device authorization grant: prints the page and the code to enter on
/// any device with a browser, and polls the API until the user finished (or the grant
/// expired).
///
/// # Errors
///
/// The API or the provider refuses, or the grant expires.
pub async fn device_sign_in(api: &Api, provider: Option<&str>, csr: String) -> Result<Login> {
    let begin = api
        .sso_device_begin(&SsoDeviceBeginRequest {
            provider: provider.map(str::to_owned),
        })
        .await
        .map_err(|e| refused("single sign-on could not begin", e))?;
    output::note(format!(
        "sign in with {} on any device: open {}
  and enter the code {}",
        begin.provider,
        begin
            .verification_uri_complete
            .as_deref()
            .unwrap_or(&begin.verification_uri),
        begin.user_code
    ));
    let mut interval = Duration::from_millis(u64::try_from(begin.interval_ms).unwrap_or(5000));
    let deadline = tokio::time::Instant::now()
        + Duration::from_millis(
            u64::try_from(begin.expires_at_ms.saturating_sub(now_ms())).unwrap_or(0),
        );
    loop {
        tokio::time::sleep(interval).await;
        if tokio::time::Instant::now() > deadline {
            return Err(Error::msg(
                "single sign-on: the device code expired; try again",
            ));
        }
        let poll = api
            .sso_device_poll(&SsoDevicePollRequest {
                handle: begin.handle.clone(),
                csr: csr.clone(),
            })
            .await;
        match poll {
            Ok(login) => return Ok(login),
            Err(HttpsError::Status { code, .. }) if code == "authorization_pending" => {}
            Err(HttpsError::Status { code, .. }) if code == "slow_down" => {
                interval = (interval + Duration::from_secs(5)).min(Duration::from_secs(60));
            }
            Err(e) => return Err(refused("single sign-on failed", e)),
        }
    }
}

fn now_ms() -> i64 {
    i64::try_from(time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000)
        .unwrap_or(i64::MAX)
}

fn refused(what: &str, e: HttpsError) -> Error {
    match e {
        HttpsError::Status { message, code, .. } => {
            Error::msg(format!("{what}: {message} ({code})"))
        }
        e => Error::msg(format!("{what}: {}", Error::api(e))),
    }
}

fn random_verifier() -> Result<String> {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 32];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| Error::msg("the system's random source failed"))?;
    Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes))
}

/// BASE64URL(SHA-256(verifier)).
fn challenge(verifier: &str) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, verifier.as_bytes());
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(digest)
}

/// Opens `url` with `$BROWSER` (colon-separated commands, `%s` standing for the URL, else
/// the URL appended) or `xdg-open`; without waiting for it. Failing to open is not an
/// error: the URL was printed.
fn open_browser(url: &str) {
    let browser = std::env::var("BROWSER").unwrap_or_default();
    let mut commands: Vec<String> = browser
        .split(':')
        .filter(|c| !c.trim().is_empty())
        .map(str::to_owned)
        .collect();
    commands.push("xdg-open".into());
    for command in commands {
        let mut words: Vec<String> = command.split_whitespace().map(str::to_owned).collect();
        if words.iter().any(|w| w.contains("%s")) {
            for w in &mut words {
                *w = w.replace("%s", url);
            }
        } else {
            words.push(url.to_owned());
        }
        let Some((program, args)) = words.split_first() else {
            continue;
        };
        let spawned = tokio::process::Command::new(program)
            .args(args)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .kill_on_drop(false)
            .spawn();
        if let Ok(mut child) = spawned {
            // Reaped in the background; it may outlive the login (a browser).
            tokio::spawn(async move {
                let _ = child.wait().await;
            });
            return;
        }
    }
}

/// Serves the loopback listener until a request brings our state back.
async fn wait_for_code(listener: &TcpListener, state: &str) -> Result<String> {
    loop {
        let (mut stream, _) = listener
            .accept()
            .await
            .map_err(|e| Error::msg(format!("waiting for the browser: {e}")))?;
        let head = match tokio::time::timeout(REQUEST_DEADLINE, read_head(&mut stream)).await {
            Ok(Some(head)) => head,
            _ => continue,
        };
        match parse_callback(&head, state) {
            Callback::Code(code) => {
                respond(
                    &mut stream,
                    "200 OK",
                    "Signed in to BAMF. You can close this tab and go back to the terminal.",
                )
                .await;
                return Ok(code);
            }
            Callback::Refused(error) => {
                respond(
                    &mut stream,
                    "400 Bad Request",
                    "The sign-in was refused; see the terminal.",
                )
                .await;
                return Err(Error::msg(format!(
                    "single sign-on: the identity provider refused ({error})"
                )));
            }
            Callback::Ignore => {
                respond(&mut stream, "404 Not Found", "Not a BAMF sign-in.").await;
            }
        }
    }
}

/// Reads up to the end of the request head, at most [`MAX_REQUEST`] bytes.
async fn read_head(stream: &mut TcpStream) -> Option<String> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 || buf.len() + n > MAX_REQUEST {
            return None;
        }
        buf.extend_from_slice(chunk.get(..n)?);
    }
    String::from_utf8(buf).ok()
}

/// What a request head means: `GET /callback?code=…&state=…`.
fn parse_callback(head: &str, state: &str) -> Callback {
    let Some(line) = head.lines().next() else {
        return Callback::Ignore;
    };
    let mut parts = line.split(' ');
    let (Some("GET"), Some(target)) = (parts.next(), parts.next()) else {
        return Callback::Ignore;
    };
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    if path != "/callback" {
        return Callback::Ignore;
    }
    let (mut code, mut got_state, mut error) = (None, None, None);
    for (k, v) in form_urlencoded::parse(query.as_bytes()) {
        match k.as_ref() {
            "code" => code = Some(v.into_owned()),
            "state" => got_state = Some(v.into_owned()),
            "error" => error = Some(v.into_owned()),
            _ => {}
        }
    }
    if got_state.as_deref() != Some(state) {
        return Callback::Ignore;
    }
    match (code, error) {
        (_, Some(error)) => Callback::Refused(
            error
                .chars()
                .take(64)
                .filter(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect(),
        ),
        (Some(code), None) if !code.is_empty() => Callback::Code(code),
        _ => Callback::Ignore,
    }
}

async fn respond(stream: &mut TcpStream, status: &str, text: &str) {
    let body = format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>BAMF</title></head>\
         <body><p>{text}</p></body></html>"
    );
    let answer = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/html; charset=utf-8\r\n\
         Content-Length: {}\r\nConnection: close\r\nCache-Control: no-store\r\n\r\n{body}",
        body.len()
    );
    let _ = tokio::time::timeout(REQUEST_DEADLINE, stream.write_all(answer.as_bytes())).await;
    let _ = stream.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_our_state_on_the_callback_path_counts() {
        let get = |target: &str| format!("GET {target} HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!(
            parse_callback(&get("/callback?code=abc%2F1&state=s1"), "s1"),
            Callback::Code("abc/1".into())
        );
        assert_eq!(
            parse_callback(&get("/callback?code=abc&state=s2"), "s1"),
            Callback::Ignore
        );
        assert_eq!(parse_callback(&get("/favicon.ico"), "s1"), Callback::Ignore);
        assert_eq!(
            parse_callback(&get("/callback?state=s1"), "s1"),
            Callback::Ignore
        );
        assert_eq!(
            parse_callback(&get("/callback?error=access_denied&state=s1"), "s1"),
            Callback::Refused("access_denied".into())
        );
        assert_eq!(parse_callback("", "s1"), Callback::Ignore);
        assert_eq!(
            parse_callback("POST /callback?code=a&state=s1 HTTP/1.1\r\n\r\n", "s1"),
            Callback::Ignore
        );
    }

    #[test]
    fn the_challenge_is_s256() {
        assert_eq!(
            challenge("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"),
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        );
        assert_eq!(random_verifier().unwrap().len(), 43);
    }
}

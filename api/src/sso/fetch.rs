//! The API's outbound HTTP(S) to OpenID providers: discovery, keys, the token endpoint.
//! One connection per request, deadlines on connecting and on the whole exchange, answers
//! bounded in size. Plain `http` only to loopback addresses (a provider on this machine, as
//! in tests); anything else must be `https`, verified against the system roots plus an
//! optional CA file.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;
use rustls_pki_types::ServerName;
use serde::de::DeserializeOwned;
use tokio::net::TcpStream;

/// Largest answer read from a provider.
pub const MAX_ANSWER: usize = 256 * 1024;
/// TCP connect plus TLS handshake.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// One whole exchange.
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a request to a provider failed. The texts never carry a secret, a code or a token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FetchError {
    /// Not an `https://` URL (or `http://` to a loopback address).
    #[error("{0}: the URL must be https:// (http:// only to a loopback address)")]
    Url(String),
    /// Could not connect within the deadline.
    #[error("cannot reach {0}")]
    Connect(String),
    /// The exchange failed or timed out.
    #[error("the exchange with {0} failed")]
    Exchange(String),
    /// The answer's status was not 200 (with the OAuth `error` code when it gave one).
    #[error("{host} answered {status}{}", .error.as_deref().map(|e| format!(" ({e})")).unwrap_or_default())]
    Status {
        /// The host.
        host: String,
        /// The status.
        status: u16,
        /// The OAuth error code (`invalid_grant`, …), sanitized.
        error: Option<String>,
    },
    /// The answer is larger than [`MAX_ANSWER`] or is not the JSON expected.
    #[error("the answer of {0} is not understood")]
    Answer(String),
}

/// A checked URL: scheme, host, port and path with query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Url {
    tls: bool,
    host: String,
    port: u16,
    path: String,
    text: String,
}

impl Url {
    /// Checks `text`: `https://host[:port]/…`, or `http://` to `127.0.0.1`, `[::1]` or
    /// `localhost`.
    ///
    /// # Errors
    ///
    /// [`FetchError::Url`].
    pub fn parse(text: &str) -> Result<Self, FetchError> {
        let bad = || FetchError::Url(text.chars().take(200).collect());
        let uri: Uri = text.parse().map_err(|_| bad())?;
        let tls = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err(bad()),
        };
        let host = uri.host().ok_or_else(bad)?;
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        if !tls && !is_loopback(&host) {
            return Err(bad());
        }
        if uri.authority().is_some_and(|a| a.as_str().contains('@')) {
            return Err(bad());
        }
        let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
        let path = uri
            .path_and_query()
            .map_or_else(|| "/".to_owned(), |p| p.as_str().to_owned());
        Ok(Self {
            tls,
            host,
            port,
            path,
            text: text.to_owned(),
        })
    }

    /// The URL as given.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The host.
    pub fn host(&self) -> &str {
        &self.host
    }
}

/// Whether `host` names this machine's loopback.
pub fn is_loopback(host: &str) -> bool {
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Makes requests to one provider.
#[derive(Clone)]
pub struct Fetcher {
    tls: Arc<rustls::ClientConfig>,
}

impl std::fmt::Debug for Fetcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fetcher").finish_non_exhaustive()
    }
}

impl Fetcher {
    /// Trusts the system roots and the certificates of `extra_ca_pem`.
    ///
    /// # Errors
    ///
    /// The extra CA is not PEM certificates, or no root at all could be had.
    pub fn new(extra_ca_pem: Option<&str>) -> Result<Self, String> {
        use rustls_pki_types::CertificateDer;
        use rustls_pki_types::pem::PemObject;
        let mut roots = rustls::RootCertStore::empty();
        let system = rustls_native_certs::load_native_certs();
        roots.add_parsable_certificates(system.certs);
        if let Some(pem) = extra_ca_pem {
            let certs: Vec<_> = CertificateDer::pem_slice_iter(pem.as_bytes())
                .collect::<Result<_, _>>()
                .map_err(|e| format!("CA file: {e}"))?;
            if certs.is_empty() {
                return Err("CA file: no certificate".into());
            }
            for cert in certs {
                roots.add(cert).map_err(|e| format!("CA file: {e}"))?;
            }
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Self {
            tls: Arc::new(config),
        })
    }

    /// `GET url`, the answer parsed as `T`.
    ///
    /// # Errors
    ///
    /// [`FetchError`].
    pub async fn get_json<T: DeserializeOwned>(&self, url: &Url) -> Result<T, FetchError> {
        let body = self.exchange(url, Method::GET, None, None).await?;
        serde_json::from_slice(&body).map_err(|_| FetchError::Answer(url.host.clone()))
    }

    /// `GET url`, the raw answer (bounded).
    ///
    /// # Errors
    ///
    /// [`FetchError`].
    pub async fn get(&self, url: &Url) -> Result<Bytes, FetchError> {
        self.exchange(url, Method::GET, None, None).await
    }

    /// `POST url` with a form body and HTTP Basic authentication, the answer parsed as `T`.
    ///
    /// # Errors
    ///
    /// [`FetchError`].
    pub async fn post_form<T: DeserializeOwned>(
        &self,
        url: &Url,
        form: &[(&str, &str)],
        basic: (&str, &str),
    ) -> Result<T, FetchError> {
        let body = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(form)
            .finish();
        // RFC 6749 §2.3.1: the client id and secret are form-encoded before Basic.
        let enc = |s: &str| form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
        let credentials = {
            use base64::Engine;
            base64::engine::general_purpose::STANDARD.encode(format!(
                "{}:{}",
                enc(basic.0),
                enc(basic.1)
            ))
        };
        let answer = self
            .exchange(
                url,
                Method::POST,
                Some(Bytes::from(body)),
                Some(format!("Basic {credentials}")),
            )
            .await?;
        serde_json::from_slice(&answer).map_err(|_| FetchError::Answer(url.host.clone()))
    }

    async fn exchange(
        &self,
        url: &Url,
        method: Method,
        form: Option<Bytes>,
        authorization: Option<String>,
    ) -> Result<Bytes, FetchError> {
        let host = url.host.clone();
        let work = async {
            let connect = async {
                let tcp = TcpStream::connect((url.host.as_str(), url.port)).await?;
                tcp.set_nodelay(true)?;
                Ok::<_, std::io::Error>(tcp)
            };
            let tcp = tokio::time::timeout(CONNECT_TIMEOUT, connect)
                .await
                .map_err(|_| FetchError::Connect(host.clone()))?
                .map_err(|_| FetchError::Connect(host.clone()))?;
            let mut request = Request::builder()
                .method(method)
                .uri(url.path.as_str())
                .header(http::header::HOST, authority(url))
                .header(http::header::ACCEPT, "application/json")
                .header(http::header::USER_AGENT, "bamf-api");
            if form.is_some() {
                request = request.header(
                    http::header::CONTENT_TYPE,
                    "application/x-www-form-urlencoded",
                );
            }
            if let Some(value) = authorization {
                request = request.header(http::header::AUTHORIZATION, value);
            }
            let request = request
                .body(Full::new(form.unwrap_or_default()))
                .map_err(|_| FetchError::Url(url.text.clone()))?;
            if url.tls {
                let name = ServerName::try_from(url.host.clone())
                    .map_err(|_| FetchError::Url(url.text.clone()))?;
                let tls = tokio::time::timeout(
                    CONNECT_TIMEOUT,
                    tokio_rustls::TlsConnector::from(self.tls.clone()).connect(name, tcp),
                )
                .await
                .map_err(|_| FetchError::Connect(host.clone()))?
                .map_err(|_| FetchError::Connect(host.clone()))?;
                send(TokioIo::new(tls), request, &host).await
            } else {
                send(TokioIo::new(tcp), request, &host).await
            }
        };
        tokio::time::timeout(EXCHANGE_TIMEOUT, work)
            .await
            .map_err(|_| FetchError::Exchange(url.host.clone()))?
    }
}

fn authority(url: &Url) -> String {
    let host = if url.host.contains(':') {
        format!("[{}]", url.host)
    } else {
        url.host.clone()
    };
    match (url.tls, url.port) {
        (true, 443) | (false, 80) => host,
        (_, port) => format!("{host}:{port}"),
    }
}

async fn send<S>(
    io: TokioIo<S>,
    request: Request<Full<Bytes>>,
    host: &str,
) -> Result<Bytes, FetchError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let failed = || FetchError::Exchange(host.to_owned());
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|_| failed())?;
    let driver = tokio::spawn(conn);
    let answer = async {
        let response = sender.send_request(request).await.map_err(|_| failed())?;
        let status = response.status();
        let body = Limited::new(response.into_body(), MAX_ANSWER)
            .collect()
            .await
            .map_err(|_| FetchError::Answer(host.to_owned()))?
            .to_bytes();
        if status != http::StatusCode::OK {
            return Err(FetchError::Status {
                host: host.to_owned(),
                status: status.as_u16(),
                error: oauth_error(&body),
            });
        }
        Ok(body)
    }
    .await;
    driver.abort();
    answer
}

/// The OAuth `error` code of an error answer, when it is a short token (never its
/// description, which may echo what was sent).
fn oauth_error(body: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct OAuthError {
        error: String,
    }
    let e: OAuthError = serde_json::from_slice(body).ok()?;
    (e.error.len() <= 64
        && e.error
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_'))
    .then_some(e.error)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_https_or_loopback_http() {
        for ok in [
            "https://idp.example/",
            "https://idp.example:8443/.well-known/openid-configuration",
            "http://127.0.0.1:5556/dex",
            "http://[::1]:80/x?y=1",
            "http://localhost:3000/",
        ] {
            assert!(Url::parse(ok).is_ok(), "{ok}");
        }
        for bad in [
            "http://idp.example/",
            "http://10.0.0.1/",
            "ftp://idp.example/",
            "idp.example",
            "https://user:pw@idp.example/",
            "",
        ] {
            assert!(Url::parse(bad).is_err(), "{bad}");
        }
        let u = Url::parse("http://127.0.0.1:5556/a/b?c=d").unwrap();
        assert_eq!(
            (u.port, u.path.as_str(), authority(&u).as_str()),
            (5556, "/a/b?c=d", "127.0.0.1:5556")
        );
    }

    #[test]
    fn only_a_short_oauth_error_code_is_kept() {
        assert_eq!(
            oauth_error(br#"{"error":"invalid_grant","error_description":"code abc"}"#).as_deref(),
            Some("invalid_grant")
        );
        assert_eq!(oauth_error(br#"{"error":"has spaces and a code"}"#), None);
        assert_eq!(oauth_error(b"<html>"), None);
    }
}

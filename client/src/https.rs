//! JSON over HTTPS to the API: deadlines on connect and on the whole exchange, bounded
//! answers. By default one connection per request; [`Api::pooled`] keeps connections open
//! for the next request (the CLI: one connection per command; agents and bridges, which
//! report every session's events: a handshake per report cost the API more than the
//! session's setup). The API checks a client certificate's expiry and revocation at every
//! request, not only in the handshake, so a kept connection grants nothing more. Optionally
//! through an HTTP proxy ([`Api::with_proxies`]) and observed request by request
//! ([`Api::observed`], the CLI's `--debug`).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bamf_proto::api::ErrorBody;
use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;
use rustls_pki_types::ServerName;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::proxy::Proxies;

/// Largest answer read (listings are small; the SSE stream is read separately).
const MAX_ANSWER: usize = 4 * 1024 * 1024;
/// TCP connect plus TLS handshake.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// One whole request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a pooled connection may take to be ready for the next request.
const POOL_READY_TIMEOUT: Duration = Duration::from_secs(1);
/// Idle connections a pooled endpoint keeps.
const MAX_IDLE: usize = 4;
/// The header in which the API names each request.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
pub enum HttpsError {
    /// The URL is not `https://host[:port]`.
    #[error("the API URL must be https://host[:port]")]
    Url,
    /// Could not connect (or the TLS handshake failed) within the deadline.
    #[error("cannot reach the API at {0}: {1}")]
    Connect(String, String),
    /// The exchange failed or timed out.
    #[error("the API connection failed: {0}")]
    Exchange(String),
    /// The API answered with an error.
    #[error("{status}: {message} ({code})")]
    Status {
        /// HTTP status.
        status: StatusCode,
        /// Stable error code.
        code: String,
        /// Message.
        message: String,
        /// The API's id for the request (also in its logs), when it sent one.
        request_id: Option<String>,
    },
    /// The answer is not the expected JSON.
    #[error("the API's answer is not understood: {0}")]
    Answer(String),
}

impl HttpsError {
    /// The HTTP status, when the API answered.
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            Self::Status { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// The API's id for the request, when it answered with one.
    pub fn request_id(&self) -> Option<&str> {
        match self {
            Self::Status { request_id, .. } => request_id.as_deref(),
            _ => None,
        }
    }
}

/// One finished request, as an [`Observer`] sees it: never headers or bodies (they carry
/// tokens and passwords).
#[derive(Debug)]
pub struct Exchange<'a> {
    /// The method.
    pub method: &'a Method,
    /// The path and query.
    pub path: &'a str,
    /// The answer's status, when there was an answer.
    pub status: Option<StatusCode>,
    /// The API's id for the request.
    pub request_id: Option<&'a str>,
    /// From sending to the answer's head.
    pub elapsed: Duration,
    /// Whether it went over a connection kept from an earlier request.
    pub reused: bool,
}

/// Told about every request an [`Api`] makes.
pub type Observer = Arc<dyn Fn(&Exchange<'_>) + Send + Sync>;

/// A kept HTTP/1 connection.
type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

/// Connections kept for the next request.
#[derive(Default)]
struct Pool {
    idle: Mutex<Vec<Sender>>,
}

impl Pool {
    fn take(&self) -> Option<Sender> {
        self.idle.lock().ok()?.pop()
    }

    fn put(&self, sender: Sender) {
        if let Ok(mut idle) = self.idle.lock()
            && idle.len() < MAX_IDLE
            && !sender.is_closed()
        {
            idle.push(sender);
        }
    }
}

/// An API endpoint: where to connect, what name to verify, which TLS configuration.
#[derive(Clone)]
pub struct Api {
    host: String,
    port: u16,
    /// Connect here instead of resolving `host` (tests, split DNS).
    connect_to: Option<SocketAddr>,
    tls: Arc<rustls::ClientConfig>,
    proxies: Arc<Proxies>,
    /// Kept connections, shared by clones; `None`: one connection per request.
    pool: Option<Arc<Pool>>,
    observer: Option<Observer>,
}

impl std::fmt::Debug for Api {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Api(https://{}:{})", self.host, self.port)
    }
}

impl Api {
    /// An endpoint for `url` (`https://host[:port]`, default port 443).
    ///
    /// # Errors
    ///
    /// [`HttpsError::Url`].
    pub fn new(url: &str, tls: Arc<rustls::ClientConfig>) -> Result<Self, HttpsError> {
        let uri: http::Uri = url
            .trim_end_matches('/')
            .parse()
            .map_err(|_| HttpsError::Url)?;
        if uri.scheme_str() != Some("https") || uri.path().len() > 1 || uri.query().is_some() {
            return Err(HttpsError::Url);
        }
        let host = uri.host().ok_or(HttpsError::Url)?.to_owned();
        Ok(Self {
            port: uri.port_u16().unwrap_or(443),
            host,
            connect_to: None,
            tls,
            proxies: Arc::new(Proxies::none()),
            pool: None,
            observer: None,
        })
    }

    /// Connects through the proxy `proxies` choose for the host (`CONNECT`), if any.
    #[must_use]
    pub fn with_proxies(mut self, proxies: Proxies) -> Self {
        self.proxies = Arc::new(proxies);
        self
    }

    /// The proxies it connects through.
    pub fn proxies(&self) -> &Proxies {
        &self.proxies
    }

    /// Keeps connections open for later requests (shared by clones), so that a command
    /// making several requests uses one connection.
    #[must_use]
    pub fn pooled(mut self) -> Self {
        self.pool = Some(Arc::default());
        self
    }

    /// Tells `observer` about every request.
    #[must_use]
    pub fn observed(mut self, observer: Observer) -> Self {
        self.observer = Some(observer);
        self
    }

    /// Connects to `addr` instead of resolving the host (the name is still verified).
    #[must_use]
    pub fn connect_to(mut self, addr: Option<SocketAddr>) -> Self {
        self.connect_to = addr;
        self
    }

    /// The same endpoint with another TLS configuration (after a certificate renewal).
    #[must_use]
    pub fn with_tls(&self, tls: Arc<rustls::ClientConfig>) -> Self {
        Self {
            tls,
            // Connections made with the old configuration are not reused.
            pool: self.pool.as_ref().map(|_| Arc::default()),
            ..self.clone()
        }
    }

    /// `host:port`.
    pub fn authority(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }

    /// Sends a request with an optional JSON body and bearer token; returns the answer as
    /// `A` (an empty answer reads as `null`, so `()` takes a 204). Callers use the typed
    /// methods of [`crate::api`]; this is their one transport.
    ///
    /// # Errors
    ///
    /// [`HttpsError`]; an API refusal is [`HttpsError::Status`] with its stable code.
    pub async fn call<A: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&(impl Serialize + ?Sized)>,
        bearer: Option<&str>,
    ) -> Result<A, HttpsError> {
        let payload = match body {
            Some(b) => {
                Bytes::from(serde_json::to_vec(b).map_err(|e| HttpsError::Exchange(e.to_string()))?)
            }
            None => Bytes::new(),
        };
        let (status, request_id, bytes) = self.fetch(method, path, payload, bearer).await?;
        answer(status, request_id, &bytes)
    }

    /// `GET path` as text (the CA's PEM at `/api/v1/ca`), without credentials.
    ///
    /// # Errors
    ///
    /// [`HttpsError`]; a non-success answer is [`HttpsError::Status`].
    pub async fn text(&self, path: &str) -> Result<String, HttpsError> {
        let (status, request_id, bytes) = self.fetch(Method::GET, path, Bytes::new(), None).await?;
        if !status.is_success() {
            return answer::<serde_json::Value>(status, request_id, &bytes)
                .and(Err(HttpsError::Answer("unexpected".into())));
        }
        String::from_utf8(bytes.to_vec()).map_err(|e| HttpsError::Answer(e.to_string()))
    }

    /// One request with its whole answer, under [`REQUEST_TIMEOUT`]; the connection goes
    /// back to the pool once the answer is read.
    async fn fetch(
        &self,
        method: Method,
        path: &str,
        payload: Bytes,
        bearer: Option<&str>,
    ) -> Result<(StatusCode, Option<String>, Bytes), HttpsError> {
        let exchange = async {
            let (response, sender) = self.send(method, path, payload, bearer).await?;
            let status = response.status();
            let request_id = request_id(&response);
            let bytes = Limited::new(response.into_body(), MAX_ANSWER)
                .collect()
                .await
                .map_err(|e| HttpsError::Exchange(e.to_string()))?
                .to_bytes();
            if let (Some(pool), Some(sender)) = (&self.pool, sender) {
                pool.put(sender);
            }
            Ok((status, request_id, bytes))
        };
        tokio::time::timeout(REQUEST_TIMEOUT, exchange)
            .await
            .map_err(|_| HttpsError::Exchange("timed out".into()))?
    }

    /// Opens a streaming GET (server-sent events); the caller reads the body with its own
    /// deadlines. Never over a pooled connection.
    ///
    /// # Errors
    ///
    /// [`HttpsError`].
    pub async fn stream(
        &self,
        path: &str,
    ) -> Result<http::Response<hyper::body::Incoming>, HttpsError> {
        let unpooled = Self {
            pool: None,
            ..self.clone()
        };
        let (response, _) = tokio::time::timeout(
            REQUEST_TIMEOUT,
            unpooled.send(Method::GET, path, Bytes::new(), None),
        )
        .await
        .map_err(|_| HttpsError::Exchange("timed out".into()))??;
        if !response.status().is_success() {
            let status = response.status();
            let request_id = request_id(&response);
            let bytes = Limited::new(response.into_body(), 64 * 1024)
                .collect()
                .await
                .map(http_body_util::Collected::to_bytes)
                .unwrap_or_default();
            return answer::<serde_json::Value>(status, request_id, &bytes)
                .and(Err(HttpsError::Answer("unexpected".into())));
        }
        Ok(response)
    }

    /// A new connection: TCP (directly, or through the proxy for this host), then TLS.
    async fn connect(&self) -> Result<Sender, HttpsError> {
        let connect_err =
            |e: &dyn std::fmt::Display| HttpsError::Connect(self.authority(), e.to_string());
        let connect = async {
            let tcp = match (self.proxies.for_host(&self.host), self.connect_to) {
                (Some(proxy), via) => {
                    let target = via.map_or_else(|| self.authority(), |a| a.to_string());
                    proxy.connect(&target).await.map_err(|e| connect_err(&e))?
                }
                (None, Some(addr)) => TcpStream::connect(addr)
                    .await
                    .map_err(|e| connect_err(&e))?,
                (None, None) => TcpStream::connect((self.host.as_str(), self.port))
                    .await
                    .map_err(|e| connect_err(&e))?,
            };
            let _ = tcp.set_nodelay(true);
            let name = ServerName::try_from(self.host.clone()).map_err(|e| connect_err(&e))?;
            TlsConnector::from(self.tls.clone())
                .connect(name, tcp)
                .await
                .map_err(|e| connect_err(&e))
        };
        let tls = tokio::time::timeout(CONNECT_TIMEOUT, connect)
            .await
            .map_err(|_| connect_err(&"timed out"))??;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| HttpsError::Exchange(e.to_string()))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(sender)
    }

    /// A kept connection that is ready for a request, if the pool has one.
    async fn reusable(&self) -> Option<Sender> {
        let pool = self.pool.as_ref()?;
        while let Some(mut sender) = pool.take() {
            if sender.is_closed() {
                continue;
            }
            if let Ok(Ok(())) = tokio::time::timeout(POOL_READY_TIMEOUT, sender.ready()).await {
                return Some(sender);
            }
        }
        None
    }

    /// Sends one request; returns the answer's head and, for a pooled endpoint, the
    /// connection to give back once the body is read.
    async fn send(
        &self,
        method: Method,
        path: &str,
        payload: Bytes,
        bearer: Option<&str>,
    ) -> Result<(http::Response<hyper::body::Incoming>, Option<Sender>), HttpsError> {
        let mut req = Request::builder()
            .method(method.clone())
            .uri(path)
            .header(http::header::HOST, self.authority())
            .header(http::header::CONTENT_TYPE, "application/json");
        if let Some(token) = bearer {
            req = req.header(http::header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let mut req = req
            .body(Full::new(payload))
            .map_err(|e| HttpsError::Exchange(e.to_string()))?;
        let started = Instant::now();
        // A kept connection the server closed meanwhile gives the request back unsent: it
        // then goes over a new connection. Once sent, it is never sent again.
        let mut reused;
        let (answered, sender) = loop {
            let (mut sender, kept) = match self.reusable().await {
                Some(sender) => (sender, true),
                None => (self.connect().await?, false),
            };
            reused = kept;
            match sender.try_send_request(req).await {
                Ok(response) => break (Ok(response), sender),
                Err(mut e) if kept => match e.take_message() {
                    Some(unsent) => req = unsent,
                    None => break (Err(e.into_error()), sender),
                },
                Err(e) => break (Err(e.into_error()), sender),
            }
        };
        if let Some(observer) = &self.observer {
            let response = answered.as_ref().ok();
            let id = response.and_then(request_id);
            observer(&Exchange {
                method: &method,
                path,
                status: response.map(http::Response::status),
                request_id: id.as_deref(),
                elapsed: started.elapsed(),
                reused,
            });
        }
        let response = answered.map_err(|e| HttpsError::Exchange(e.to_string()))?;
        Ok((response, self.pool.is_some().then_some(sender)))
    }
}

/// The API's id for a request, from the answer's header.
fn request_id<B>(response: &http::Response<B>) -> Option<String> {
    response
        .headers()
        .get(REQUEST_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// The answer of a success as `A`, or the API's error as [`HttpsError::Status`].
fn answer<A: DeserializeOwned>(
    status: StatusCode,
    request_id: Option<String>,
    bytes: &[u8],
) -> Result<A, HttpsError> {
    if status.is_success() {
        let bytes = if bytes.is_empty() {
            b"null".as_slice()
        } else {
            bytes
        };
        return serde_json::from_slice(bytes).map_err(|e| HttpsError::Answer(e.to_string()));
    }
    let (code, message, body_id) = match serde_json::from_slice::<ErrorBody>(bytes) {
        Ok(body) => (
            body.error.code,
            body.error.message,
            Some(body.error.request_id).filter(|id| !id.is_empty()),
        ),
        Err(_) => (
            "unknown".to_owned(),
            status.canonical_reason().unwrap_or("error").to_owned(),
            None,
        ),
    };
    Err(HttpsError::Status {
        status,
        code,
        message,
        request_id: request_id.or(body_id),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn refusals_keep_the_code_and_the_request_id() {
        let body = br#"{"error":{"code":"forbidden","message":"no","request_id":"body-id"}}"#;
        let refused = answer::<serde_json::Value>(StatusCode::FORBIDDEN, None, body).unwrap_err();
        assert_eq!(refused.request_id(), Some("body-id"));
        assert_eq!(refused.status(), Some(StatusCode::FORBIDDEN));
        let header = Some("header-id".to_owned());
        let refused = answer::<()>(StatusCode::FORBIDDEN, header, body).unwrap_err();
        assert_eq!(refused.request_id(), Some("header-id"), "the header wins");
        let opaque = answer::<()>(StatusCode::BAD_GATEWAY, None, b"<html>").unwrap_err();
        assert!(
            matches!(&opaque, HttpsError::Status { code, request_id: None, .. } if code == "unknown"),
            "{opaque:?}"
        );
        answer::<()>(StatusCode::NO_CONTENT, None, b"").unwrap();
    }
}

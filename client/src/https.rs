//! JSON over HTTPS to the API: one connection per request (callers make a request every
//! few seconds at most), deadlines on connect and on the whole exchange, bounded answers.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

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

/// Largest answer read (listings are small; the SSE stream is read separately).
const MAX_ANSWER: usize = 4 * 1024 * 1024;
/// TCP connect plus TLS handshake.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// One whole request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

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
}

/// An API endpoint: where to connect, what name to verify, which TLS configuration.
#[derive(Clone)]
pub struct Api {
    host: String,
    port: u16,
    /// Connect here instead of resolving `host` (tests, split DNS).
    connect_to: Option<SocketAddr>,
    tls: Arc<rustls::ClientConfig>,
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
        })
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
        let exchange = async {
            let response = self.send(method, path, payload, bearer).await?;
            let status = response.status();
            let bytes = Limited::new(response.into_body(), MAX_ANSWER)
                .collect()
                .await
                .map_err(|e| HttpsError::Exchange(e.to_string()))?
                .to_bytes();
            answer(status, &bytes)
        };
        tokio::time::timeout(REQUEST_TIMEOUT, exchange)
            .await
            .map_err(|_| HttpsError::Exchange("timed out".into()))?
    }

    /// Opens a streaming GET (server-sent events); the caller reads the body with its own
    /// deadlines.
    ///
    /// # Errors
    ///
    /// [`HttpsError`].
    pub async fn stream(
        &self,
        path: &str,
    ) -> Result<http::Response<hyper::body::Incoming>, HttpsError> {
        let response = tokio::time::timeout(
            REQUEST_TIMEOUT,
            self.send(Method::GET, path, Bytes::new(), None),
        )
        .await
        .map_err(|_| HttpsError::Exchange("timed out".into()))??;
        if !response.status().is_success() {
            let status = response.status();
            let bytes = Limited::new(response.into_body(), 64 * 1024)
                .collect()
                .await
                .map(http_body_util::Collected::to_bytes)
                .unwrap_or_default();
            return answer::<serde_json::Value>(status, &bytes)
                .and(Err(HttpsError::Answer("unexpected".into())));
        }
        Ok(response)
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        payload: Bytes,
        bearer: Option<&str>,
    ) -> Result<http::Response<hyper::body::Incoming>, HttpsError> {
        let connect_err =
            |e: &dyn std::fmt::Display| HttpsError::Connect(self.authority(), e.to_string());
        let connect = async {
            let tcp = match self.connect_to {
                Some(addr) => TcpStream::connect(addr).await,
                None => TcpStream::connect((self.host.as_str(), self.port)).await,
            }
            .map_err(|e| connect_err(&e))?;
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
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| HttpsError::Exchange(e.to_string()))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header(http::header::HOST, self.authority())
            .header(http::header::CONTENT_TYPE, "application/json");
        if let Some(token) = bearer {
            req = req.header(http::header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let req = req
            .body(Full::new(payload))
            .map_err(|e| HttpsError::Exchange(e.to_string()))?;
        sender
            .send_request(req)
            .await
            .map_err(|e| HttpsError::Exchange(e.to_string()))
    }
}

/// The answer of a success as `A`, or the API's error as [`HttpsError::Status`].
fn answer<A: DeserializeOwned>(status: StatusCode, bytes: &[u8]) -> Result<A, HttpsError> {
    if status.is_success() {
        let bytes = if bytes.is_empty() {
            b"null".as_slice()
        } else {
            bytes
        };
        return serde_json::from_slice(bytes).map_err(|e| HttpsError::Answer(e.to_string()));
    }
    let (code, message) = match serde_json::from_slice::<ErrorBody>(bytes) {
        Ok(body) => (body.error.code, body.error.message),
        Err(_) => (
            "unknown".to_owned(),
            status.canonical_reason().unwrap_or("error").to_owned(),
        ),
    };
    Err(HttpsError::Status {
        status,
        code,
        message,
    })
}

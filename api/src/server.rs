//! The HTTPS server: TLS with optional client certificates, hyper 1.x (HTTP/1.1 and HTTP/2),
//! bounded connections and deadlines, request ids, one log line per request, graceful
//! shutdown.
//!
//! Client certificates are *requested* at the handshake and must chain to our CA when
//! presented; routes that need one check the [`Caller`]. Identity comes only from the
//! handshake, never from a header.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bamf_proto::HostName;
use http::{Request, Response};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulConnection;
use rustls::ServerConfig;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use crate::ca::{Authority, CaError};
use crate::connections::{Admission, Limits};
use crate::context::{AppState, Caller, RequestContext};
use crate::routes;
use crate::tls::ServerCertificates;

/// TLS handshake deadline: a client that has not finished by then is not coming.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Deadline for a request's headers (slow-loris).
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections held at once, in all (default).
pub const MAX_CONNECTIONS: usize = 4096;
/// Connections held at once per client address (default).
pub const MAX_PER_ADDRESS: u32 = 64;
/// A connection with nothing in flight this long is closed (default).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// How long an idle connection may take to close once asked.
const CLOSE_GRACE: Duration = Duration::from_secs(5);
/// Concurrent HTTP/2 streams per connection.
const MAX_STREAMS: u32 = 64;
/// HTTP/2 pings find a peer that vanished while a stream is open.
const PING_INTERVAL: Duration = Duration::from_secs(30);
const PING_TIMEOUT: Duration = Duration::from_secs(10);
/// Lifetime of the API's own server certificate; it is re-issued at every start.
const SERVER_CERT_LIFETIME: Duration = Duration::from_secs(30 * 24 * 3600);

/// Why the server could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The server certificate could not be issued.
    #[error("issuing the API's certificate: {0}")]
    Certificate(#[from] CaError),
    /// TLS configuration failed.
    #[error("TLS configuration: {0}")]
    Tls(String),
}

/// Builds the TLS configuration: a fresh key and a certificate for `hosts` issued by our CA
/// (the key never leaves this process), and client certificates optional but, when
/// presented, required to chain to our CA. The certificate presented is chosen per handshake
/// by the returned [`ServerCertificates`]: the internal one, or for the first of `hosts` a
/// public one once it is given (see [`crate::tls`]).
///
/// # Errors
///
/// [`ServerError`] when the certificate or the rustls configuration cannot be made.
pub fn tls_config(
    ca: &Authority,
    hosts: &[HostName],
) -> Result<(Arc<ServerConfig>, Arc<ServerCertificates>), ServerError> {
    let tls_err = |e: &dyn std::fmt::Display| ServerError::Tls(e.to_string());
    let public_host = hosts
        .first()
        .ok_or(ServerError::Tls("no host name".into()))?;
    let key = rcgen::KeyPair::generate().map_err(|e| tls_err(&e))?;
    let csr = rcgen::CertificateParams::default()
        .serialize_request(&key)
        .and_then(|c| c.pem())
        .map_err(|e| tls_err(&e))?;
    let issued = ca.issue_api_server(
        &csr,
        hosts,
        SERVER_CERT_LIFETIME,
        time::OffsetDateTime::now_utc(),
    )?;
    let chain = vec![
        CertificateDer::from_pem_slice(issued.pem.as_bytes()).map_err(|e| tls_err(&e))?,
        CertificateDer::from_pem_slice(ca.cert_pem().as_bytes()).map_err(|e| tls_err(&e))?,
    ];
    let key =
        PrivateKeyDer::from_pem_slice(key.serialize_pem().as_bytes()).map_err(|e| tls_err(&e))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots.add(chain[1].clone()).map_err(|e| tls_err(&e))?;
    let internal =
        rustls::sign::CertifiedKey::from_der(chain, key, &provider).map_err(|e| tls_err(&e))?;
    let certificates = Arc::new(ServerCertificates::new(Arc::new(internal), public_host));
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .allow_unauthenticated()
        .build()
        .map_err(|e| tls_err(&e))?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| tls_err(&e))?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(certificates.clone());
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok((Arc::new(config), certificates))
}

/// How the server treats connections.
#[derive(Debug, Clone)]
pub struct ConnectionPolicy {
    /// Caps and trusted proxies.
    pub limits: Limits,
    /// A connection with no request in flight for this long is closed (HTTP/1 keep-alive
    /// and HTTP/2 alike; a streaming response counts as in flight).
    pub idle_timeout: Duration,
}

impl Default for ConnectionPolicy {
    fn default() -> Self {
        Self {
            limits: Limits {
                max_connections: MAX_CONNECTIONS,
                max_per_address: MAX_PER_ADDRESS,
                trusted_proxies: Vec::new(),
                handshake_timeout: HANDSHAKE_TIMEOUT,
            },
            idle_timeout: IDLE_TIMEOUT,
        }
    }
}

/// Serves until `shutdown`, then lets open requests finish for up to `grace`.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<ServerConfig>,
    state: Arc<AppState>,
    policy: ConnectionPolicy,
    shutdown: CancellationToken,
    grace: Duration,
) {
    let acceptor = TlsAcceptor::from(tls);
    let connections = tokio_util::task::TaskTracker::new();
    let admission = Admission::new(policy.limits.clone());
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(listener = "api", %addr, "listening");
    }
    tokio::spawn(crate::reconcile::run(state.clone()));
    let accept = bamf_runtime::accept::Accept {
        stop: shutdown.clone(),
        tasks: connections.clone(),
        slots: None,
    };
    let on_error = |_: &std::io::Error| {
        metrics::counter!(crate::metrics::ACCEPT_ERRORS).increment(1);
    };
    bamf_runtime::accept::serve(listener, accept, on_error, |mut tcp, peer| {
        // Over a cap: closed at once, and the loop goes on accepting.
        let mut slot = match admission.admit(peer.ip()) {
            Ok(slot) => slot,
            Err(refusal) => {
                metrics::counter!(crate::metrics::CONNECTIONS_REFUSED, "reason" => refusal.as_str())
                    .increment(1);
                return None;
            }
        };
        // Answers go out in several TLS records; with Nagle the later ones wait for the
        // client's delayed ACK (40 ms).
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let state = state.clone();
        let admission = admission.clone();
        let shutdown = shutdown.clone();
        let idle = policy.idle_timeout;
        Some(async move {
            let handshake = admission.limits().handshake_timeout;
            let mut peer = peer;
            if admission.is_trusted_proxy(peer.ip()) {
                let Ok(client) =
                    crate::connections::read_proxy_header(&mut tcp, peer, handshake).await
                else {
                    return;
                };
                if slot.attribute(client.ip()).is_err() {
                    return;
                }
                peer = client;
            }
            let Ok(Ok(tls)) = tokio::time::timeout(handshake, acceptor.accept(tcp)).await else {
                return;
            };
            let caller = Arc::new(Caller::from_peer(tls.get_ref().1.peer_certificates()));
            // The protocol is the one ALPN chose, so no read waits to guess it.
            let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
            let activity = Arc::new(Activity::default());
            let service = {
                let activity = activity.clone();
                hyper::service::service_fn(move |req| {
                    let state = state.clone();
                    let caller = caller.clone();
                    let busy = activity.begin();
                    async move {
                        let response = handle(&state, &caller, peer, req).await;
                        Ok::<_, Infallible>(
                            response.map(|body| InFlight { body, _busy: busy }.boxed_unsync()),
                        )
                    }
                })
            };
            let io = TokioIo::new(tls);
            if h2 {
                let conn = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .timer(TokioTimer::new())
                    .max_concurrent_streams(MAX_STREAMS)
                    .keep_alive_interval(Some(PING_INTERVAL))
                    .keep_alive_timeout(PING_TIMEOUT)
                    .serve_connection(io, service);
                drive(conn, &activity, idle, &shutdown).await;
            } else {
                let conn = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(HEADER_TIMEOUT)
                    .serve_connection(io, service);
                drive(conn, &activity, idle, &shutdown).await;
            }
            drop(slot);
        })
    })
    .await;
    connections.close();
    tracing::info!("shutdown: stopped accepting, draining requests");
    if tokio::time::timeout(grace, connections.wait())
        .await
        .is_err()
    {
        tracing::warn!("shutdown complete: grace period ran out with requests open");
    } else {
        tracing::info!("shutdown complete: every request finished");
    }
}

/// Runs a connection until it ends; closes it gracefully when it has been idle for `idle`
/// or at shutdown, and drops it if it does not close within [`CLOSE_GRACE`] after going idle.
async fn drive<C: GracefulConnection>(
    conn: C,
    activity: &Activity,
    idle: Duration,
    shutdown: &CancellationToken,
) {
    let mut conn = std::pin::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => return,
        () = activity.idle_for(idle) => {
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(CLOSE_GRACE, conn.as_mut()).await;
            return;
        }
        () = shutdown.cancelled() => conn.as_mut().graceful_shutdown(),
    }
    // Shutting down: open requests finish (the server's grace bounds the wait).
    let _ = conn.await;
}

/// Requests in flight on one connection, and when the last one ended.
#[derive(Debug)]
struct Activity {
    state: std::sync::Mutex<(usize, tokio::time::Instant)>,
    changed: tokio::sync::Notify,
}

impl Default for Activity {
    fn default() -> Self {
        Self {
            state: std::sync::Mutex::new((0, tokio::time::Instant::now())),
            changed: tokio::sync::Notify::new(),
        }
    }
}

impl Activity {
    fn lock(&self) -> std::sync::MutexGuard<'_, (usize, tokio::time::Instant)> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A request starts; it is in flight until the returned guard (kept with the response
    /// body) is dropped.
    fn begin(self: &Arc<Self>) -> Busy {
        self.lock().0 += 1;
        self.changed.notify_waiters();
        Busy(self.clone())
    }

    /// Returns once nothing has been in flight for `idle`.
    async fn idle_for(&self, idle: Duration) {
        loop {
            let changed = self.changed.notified();
            let (in_flight, since) = *self.lock();
            if in_flight == 0 {
                let until = since + idle;
                if tokio::time::Instant::now() >= until {
                    return;
                }
                tokio::select! {
                    () = tokio::time::sleep_until(until) => {}
                    () = changed => {}
                }
            } else {
                changed.await;
            }
        }
    }
}

/// A request in flight.
#[derive(Debug)]
struct Busy(Arc<Activity>);

impl Drop for Busy {
    fn drop(&mut self) {
        {
            let mut state = self.0.lock();
            state.0 = state.0.saturating_sub(1);
            state.1 = tokio::time::Instant::now();
        }
        self.0.changed.notify_waiters();
    }
}

/// A response body that keeps its request in flight until it is finished or dropped.
struct InFlight {
    body: crate::error::Body,
    /// Held for its `Drop`.
    _busy: Busy,
}

impl hyper::body::Body for InFlight {
    type Data = hyper::body::Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        std::pin::Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

async fn handle(
    state: &AppState,
    caller: &Arc<Caller>,
    peer: SocketAddr,
    req: Request<Incoming>,
) -> Response<crate::error::Body> {
    let started = std::time::Instant::now();
    let ctx = RequestContext {
        caller: caller.clone(),
        peer,
        request_id: request_id(),
    };
    let (method, path) = (req.method().clone(), req.uri().path().to_owned());
    let routed = routes::route(state, &ctx, req).await;
    let mut response = match routed.reply {
        Ok(r) => r,
        Err(e) => e.into_response(&ctx.request_id),
    };
    // By route template, never the raw path: ids in paths would make unbounded label sets.
    metrics::histogram!(
        crate::metrics::REQUEST_DURATION,
        "route" => routed.template.unwrap_or("unmatched"),
        "method" => method_label(&method),
        "status" => response.status().as_str().to_owned(),
    )
    .record(started.elapsed().as_secs_f64());
    if let Ok(v) = http::HeaderValue::from_str(&ctx.request_id) {
        response.headers_mut().insert("x-request-id", v);
    }
    // Method, path and status only: never headers or bodies, which carry secrets.
    tracing::info!(
        target: "bamf_api::access",
        request_id = ctx.request_id,
        %peer,
        caller = caller.kind(),
        %method,
        path,
        status = response.status().as_u16(),
        duration_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
        "request"
    );
    response
}

/// The method as a label: the ones routes use, else `other` (bounded cardinality).
fn method_label(method: &http::Method) -> &'static str {
    match *method {
        http::Method::GET => "GET",
        http::Method::POST => "POST",
        http::Method::PUT => "PUT",
        http::Method::DELETE => "DELETE",
        _ => "other",
    }
}

/// 64 random bits, hex.
fn request_id() -> String {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 8];
    let _ = ring::rand::SystemRandom::new().fill(&mut bytes);
    bamf_proto::hex::encode(&bytes)
}

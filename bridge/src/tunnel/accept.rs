//! Accepting a tunnel connection: mutual TLS for this bridge's own name (the certificate
//! swapped in place at renewal), the hello the front door already read replayed into the
//! handshake, what the peer's certificate (and, for an agent, its preamble) claims, and the
//! bridge's half of the handover: the outer layer read up to the side's `close_notify`, and
//! after pairing ended with an answer and our `close_notify` ([`hand_over`]), leaving the raw
//! connection to splice.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use arc_swap::ArcSwap;
use bamf_client::e2e::peer_identity;
use bamf_client::tunnel::Records;
use bamf_proto::san::{AgentId, Identity, SessionId};
use bamf_proto::tunnel::{AGENT_PREAMBLE_LEN, Handover, Target, parse_agent_preamble};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;

/// Deadline for the TLS handshake and the agent's preamble.
pub(crate) const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A tunnel side after the handshake: its outer layer, read record by record.
pub(crate) type Stream = TlsStream<Records<Replayed>>;

/// The bridge's certificate, swapped in place when it is renewed.
#[derive(Debug)]
pub struct CertSlot(ArcSwap<CertifiedKey>);

impl CertSlot {
    /// A slot holding `key`.
    pub fn new(key: CertifiedKey) -> Self {
        Self(ArcSwap::from_pointee(key))
    }

    /// Replaces the certificate; new handshakes use it at once.
    pub fn swap(&self, key: CertifiedKey) {
        self.0.store(Arc::new(key));
    }
}

impl ResolvesServerCert for CertSlot {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.load_full())
    }
}

/// Makes a [`CertifiedKey`] from PEM.
///
/// # Errors
///
/// A message naming what did not parse.
pub fn certified_key(cert_pem: &str, key_pem: &str) -> Result<CertifiedKey, String> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let chain = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| "the certificate is not PEM".to_owned())?;
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
        .map_err(|_| "the key is not PEM".to_owned())?;
    let signer = rustls::crypto::ring::sign::any_supported_type(&key)
        .map_err(|e| format!("the key: {e}"))?;
    Ok(CertifiedKey::new(chain, signer))
}

/// A server TLS configuration that requires client certificates chained to `ca_pem` and
/// answers with whatever `slot` holds.
///
/// # Errors
///
/// A message naming the problem.
pub fn server_config(
    ca_pem: &str,
    slot: Arc<CertSlot>,
) -> Result<Arc<rustls::ServerConfig>, String> {
    let roots = bamf_client::roots(ca_pem).map_err(|e| e.to_string())?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()
    .map_err(|e| e.to_string())?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(slot);
    // The outer layer lives for one handover: no session to resume later.
    config.send_tls13_tickets = 0;
    Ok(Arc::new(config))
}

/// What a certificate (and, for agents, the preamble) claims.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Claim {
    pub(crate) session: SessionId,
    /// Which certificate a client side presented (a hash of it; 0 for agents): a session
    /// pairs once per certificate, and attaches again only with a new one.
    pub(crate) certificate: u64,
    pub(crate) agent: AgentId,
    pub(crate) client_side: bool,
    pub(crate) bridge: Option<u32>,
    /// An agent that could not reach the target.
    pub(crate) unreachable: bool,
}

/// Completes the handshake on `stream` (after replaying `buffered`, the hello), reads the
/// claim and then the side's outer layer up to its `close_notify`, within
/// [`HANDSHAKE_TIMEOUT`]; a refusal's reason otherwise.
pub(crate) async fn accept(
    acceptor: &tokio_rustls::TlsAcceptor,
    stream: TcpStream,
    buffered: Vec<u8>,
) -> Result<(Stream, Claim), &'static str> {
    let replayed = Replayed {
        head: buffered,
        at: 0,
        inner: stream,
    };
    let accept = async {
        let mut tls = acceptor.accept(Records::new(replayed)).await.ok()?;
        let identity = peer_identity(tls.get_ref().1.peer_certificates()?)?;
        let claim = match identity {
            Identity::Client {
                session,
                agent,
                bridge,
                ..
            } => Claim {
                session,
                certificate: certificate_id(tls.get_ref().1),
                agent,
                client_side: true,
                bridge: Some(bridge),
                unreachable: false,
            },
            Identity::Agent { agent } => {
                let mut preamble = [0u8; AGENT_PREAMBLE_LEN];
                tls.read_exact(&mut preamble).await.ok()?;
                let (session, target) = parse_agent_preamble(&preamble).ok()?;
                Claim {
                    session,
                    certificate: 0,
                    agent,
                    client_side: false,
                    bridge: None,
                    unreachable: target == Target::Unreachable,
                }
            }
            _ => return Some(Err("wrong_certificate_kind")),
        };
        // Nothing more on the outer layer: its end, and the session's bytes come after it.
        let mut more = [0u8; 1];
        match tls.read(&mut more).await {
            Ok(0) => Some(Ok((tls, claim))),
            Ok(_) => Some(Err("data_on_outer_layer")),
            Err(_) => None,
        }
    };
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, accept).await {
        Ok(Some(accepted)) => accepted,
        Ok(None) => Err("handshake_failed"),
        Err(_) => Err("handshake_timeout"),
    }
}

/// A hash of the peer's certificate, to tell two certificates for one session apart.
fn certificate_id(state: &rustls::CommonState) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    if let Some(leaf) = state.peer_certificates().and_then(|c| c.first()) {
        leaf.as_ref().hash(&mut hasher);
    }
    hasher.finish()
}

/// The bridge's half of the handover once a side is paired (or not): writes `answer` and
/// `close_notify` on its outer layer, within [`HANDSHAKE_TIMEOUT`], and returns the raw
/// connection, positioned where the side's end-to-end bytes begin.
pub(crate) async fn hand_over(mut tls: Stream, answer: Handover) -> std::io::Result<TcpStream> {
    let end = async {
        tls.write_all(&[answer.byte()]).await?;
        tls.get_mut().1.send_close_notify();
        tls.flush().await
    };
    tokio::time::timeout(HANDSHAKE_TIMEOUT, end)
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "handover timed out"))??;
    let (records, _) = tls.into_inner();
    records
        .into_inner()
        .and_then(Replayed::into_tcp)
        .ok_or_else(|| std::io::Error::other("the outer layer did not end at a record boundary"))
}

/// A TCP stream that first yields the bytes the front door already read.
#[derive(Debug)]
pub struct Replayed {
    head: Vec<u8>,
    at: usize,
    inner: TcpStream,
}

impl Replayed {
    /// The TCP stream, once every replayed byte has been read.
    fn into_tcp(self) -> Option<TcpStream> {
        (self.at >= self.head.len()).then_some(self.inner)
    }
}

impl AsyncRead for Replayed {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if self.at < self.head.len() {
            let n = (self.head.len() - self.at).min(buf.remaining());
            let at = self.at;
            buf.put_slice(&self.head[at..at + n]);
            self.at += n;
            if self.at == self.head.len() {
                self.head = Vec::new();
                self.at = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Replayed {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

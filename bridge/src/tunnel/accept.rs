//! Accepting a tunnel connection: mutual TLS for this bridge's own name (the certificate
//! swapped in place at renewal), the hello the front door already read replayed into the
//! handshake, and what the peer's certificate (and, for an agent, its preamble) claims.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use arc_swap::ArcSwap;
use bamf_proto::san::{AgentId, Identity, SessionId};
use bamf_proto::tunnel::{AGENT_PREAMBLE_LEN, Target, parse_agent_preamble};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;

/// Deadline for the TLS handshake and the agent's preamble.
pub(crate) const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A tunnel side after the handshake.
pub(crate) type Stream = TlsStream<Replayed>;

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
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots
            .add(cert.map_err(|_| "the CA is not PEM".to_owned())?)
            .map_err(|e| e.to_string())?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()
    .map_err(|e| e.to_string())?;
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(slot);
    Ok(Arc::new(config))
}

/// What a certificate (and, for agents, the preamble) claims.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Claim {
    pub(crate) session: SessionId,
    pub(crate) agent: AgentId,
    pub(crate) client_side: bool,
    pub(crate) bridge: Option<u32>,
    /// An agent that could not reach the target.
    pub(crate) unreachable: bool,
}

/// Completes the handshake on `stream` (after replaying `buffered`, the hello) and reads the
/// claim, within [`HANDSHAKE_TIMEOUT`]; a refusal's reason otherwise.
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
        let mut tls = acceptor.accept(replayed).await.ok()?;
        let identity = peer_identity(&tls)?;
        let claim = match identity {
            Identity::Client {
                session,
                agent,
                bridge,
                ..
            } => Claim {
                session,
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
                    agent,
                    client_side: false,
                    bridge: None,
                    unreachable: target == Target::Unreachable,
                }
            }
            _ => return Some(Err("wrong_certificate_kind")),
        };
        Some(Ok((tls, claim)))
    };
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, accept).await {
        Ok(Some(accepted)) => accepted,
        Ok(None) => Err("handshake_failed"),
        Err(_) => Err("handshake_timeout"),
    }
}

/// The identity in the verified client certificate.
fn peer_identity(tls: &Stream) -> Option<Identity> {
    use x509_parser::prelude::FromDer;
    let leaf = tls.get_ref().1.peer_certificates()?.first()?;
    let (_, cert) = x509_parser::certificate::X509Certificate::from_der(leaf).ok()?;
    Identity::of_certificate(&cert).ok()
}

/// A TCP stream that first yields the bytes the front door already read.
#[derive(Debug)]
pub struct Replayed {
    head: Vec<u8>,
    at: usize,
    inner: TcpStream,
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

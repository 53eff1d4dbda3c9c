//! The end-to-end session between a client and an agent, and the handover that starts it.
//!
//! Each side authenticates to the bridge with its own TLS session (the *outer* layer); after
//! pairing, the bridge ends that layer and splices the raw connections (see
//! [`bamf_proto::tunnel`] for the handover's steps). Client and agent then run the *inner*
//! TLS 1.3 session over the same TCP connection, mutually authenticated by the internal CA:
//! - the client presents its session certificate and accepts only the agent the certificate
//!   names ([`client_config`]);
//! - the agent presents its agent certificate and accepts only a session certificate that
//!   names it, the session it dialled for and the resource ([`server_config`], then the
//!   agent's own check of [`peer_identity`]).
//!
//! [`Records`] keeps the outer layer from reading one byte of the inner session.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bamf_proto::san::{AgentId, Identity};
use bamf_proto::tunnel::Handover;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

use crate::TlsError;

/// The name the client gives the inner session's server. Not checked (the agent is checked by
/// the identity its certificate carries); `.invalid` so it can never name a real host.
pub const INNER_SERVER_NAME: &str = "agent.bamf.invalid";

/// How long a side waits, after its outer handshake, for the bridge to pair it: the bridge's
/// match timeout (30 s by default) and a margin.
pub const HANDOVER_TIMEOUT: Duration = Duration::from_secs(40);

/// Length of a TLS record header: type, version, length.
const RECORD_HEADER_LEN: usize = 5;

/// A stream whose reads never go past the end of the current TLS record, so that a TLS layer
/// reading through it stops right after the record carrying `close_notify` and leaves what
/// follows (the inner session) unread in the socket. Writes pass through.
#[derive(Debug)]
pub struct Records<S> {
    inner: S,
    header: [u8; RECORD_HEADER_LEN],
    /// Bytes of the current record's header read so far.
    header_read: usize,
    /// Bytes of the current record's body still to come.
    body_left: usize,
}

impl<S> Records<S> {
    /// Wraps `inner`, positioned at a record boundary.
    pub fn new(inner: S) -> Self {
        Self {
            inner,
            header: [0; RECORD_HEADER_LEN],
            header_read: 0,
            body_left: 0,
        }
    }

    /// The stream underneath, or `None` when it stopped inside a record (the TLS layer above
    /// did not end where the handover says it ends).
    pub fn into_inner(self) -> Option<S> {
        (self.header_read == 0 && self.body_left == 0).then_some(self.inner)
    }

    /// The stream underneath.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Records<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let in_header = this.body_left == 0;
        let want = if in_header {
            RECORD_HEADER_LEN - this.header_read
        } else {
            this.body_left
        };
        let want = want.min(buf.remaining());
        if want == 0 {
            return Poll::Ready(Ok(()));
        }
        let dst = buf.initialize_unfilled_to(want);
        let mut limited = ReadBuf::new(dst);
        ready!(Pin::new(&mut this.inner).poll_read(cx, &mut limited))?;
        let got = limited.filled();
        let n = got.len();
        if in_header {
            this.header[this.header_read..this.header_read + n].copy_from_slice(got);
            this.header_read += n;
            if this.header_read == RECORD_HEADER_LEN {
                this.header_read = 0;
                this.body_left = usize::from(u16::from_be_bytes([this.header[3], this.header[4]]));
            }
        } else {
            this.body_left -= n;
        }
        buf.advance(n);
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Records<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// A side's outer layer to the bridge.
pub type Outer = tokio_rustls::client::TlsStream<Records<TcpStream>>;

/// Why a side's handover did not give it the raw connection.
#[derive(Debug, thiserror::Error)]
pub enum HandoverError {
    /// The bridge did not pair this side: the other side never came, or the bridge refused.
    #[error("the bridge closed the tunnel without pairing it (the other side did not come)")]
    Unpaired,
    /// The agent could not reach the resource.
    #[error("the agent could not reach the resource")]
    TargetUnreachable,
    /// The bridge said something the handover does not allow.
    #[error("the bridge broke the tunnel protocol")]
    Protocol,
    /// No answer within the deadline.
    #[error("the bridge did not pair the tunnel in time")]
    TimedOut,
    /// The connection to the bridge failed.
    #[error("the connection to the bridge failed: {0}")]
    Io(#[from] io::Error),
}

/// The side's half of the handover: ends its outer layer with `close_notify`, waits up to
/// `deadline` for the bridge's answer and `close_notify`, and returns the raw connection on
/// which the inner session runs.
///
/// # Errors
///
/// [`HandoverError`]: not paired, the target unreachable, the deadline, or I/O.
pub async fn hand_over(mut outer: Outer, deadline: Duration) -> Result<TcpStream, HandoverError> {
    let exchange = async {
        outer.get_mut().1.send_close_notify();
        outer.flush().await?;
        // One byte, then the end of the outer layer; more is a protocol error.
        let mut answer = [0u8; 2];
        let mut got = 0;
        loop {
            match outer.read(&mut answer[got..]).await {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                    return Err(HandoverError::Unpaired);
                }
                Err(e) => return Err(e.into()),
            }
            if got == answer.len() {
                return Err(HandoverError::Protocol);
            }
        }
        match (got, Handover::from_byte(answer[0])) {
            (1, Some(Handover::Paired)) => Ok(()),
            (1, Some(Handover::TargetUnreachable)) => Err(HandoverError::TargetUnreachable),
            (0, _) => Err(HandoverError::Unpaired),
            _ => Err(HandoverError::Protocol),
        }
    };
    tokio::time::timeout(deadline, exchange)
        .await
        .map_err(|_| HandoverError::TimedOut)??;
    let (records, _) = outer.into_inner();
    records.into_inner().ok_or(HandoverError::Protocol)
}

/// The end-to-end session as the client holds it.
pub type ClientSession = tokio_rustls::client::TlsStream<TcpStream>;
/// The end-to-end session as the agent holds it.
pub type AgentSession = tokio_rustls::server::TlsStream<TcpStream>;

/// Deadline for the inner handshake.
const INNER_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The client's inner handshake on the raw connection `raw` (see [`client_config`]).
///
/// # Errors
///
/// The handshake failed (the agent is not the one the session names, I/O) or timed out.
pub async fn connect(
    raw: TcpStream,
    config: Arc<rustls::ClientConfig>,
) -> io::Result<ClientSession> {
    let name = ServerName::try_from(INNER_SERVER_NAME)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let handshake = tokio_rustls::TlsConnector::from(config).connect(name, raw);
    tokio::time::timeout(INNER_HANDSHAKE_TIMEOUT, handshake)
        .await
        .map_err(|_| {
            io::Error::new(
                io::ErrorKind::TimedOut,
                "the end-to-end handshake timed out",
            )
        })?
}

/// The agent's inner handshake on the raw connection `raw` (see [`server_config`]); the
/// caller checks [`peer_identity`].
///
/// # Errors
///
/// The handshake failed or timed out.
pub async fn accept(raw: TcpStream, config: Arc<rustls::ServerConfig>) -> io::Result<AgentSession> {
    let handshake = tokio_rustls::TlsAcceptor::from(config).accept(raw);
    tokio::time::timeout(INNER_HANDSHAKE_TIMEOUT, handshake)
        .await
        .map_err(|_| {
            io::Error::new(
                io::ErrorKind::TimedOut,
                "the end-to-end handshake timed out",
            )
        })?
}

/// Why a client could not open its end-to-end session.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The session certificate or key did not make a TLS configuration.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// TCP or the outer handshake with the bridge failed.
    #[error("{0}")]
    Dial(io::Error),
    /// The bridge did not hand us over.
    #[error(transparent)]
    Handover(#[from] HandoverError),
    /// The end-to-end handshake with the agent failed.
    #[error("the end-to-end session with the agent failed: {0}")]
    Inner(io::Error),
}

/// Opens a client's end-to-end session: dials bridge `host` at `port` (or at `via`) with the
/// session certificate `cert_pem` (key `key_pem`, CA `ca_pem`), is handed over within
/// [`HANDOVER_TIMEOUT`], and completes the inner handshake with the agent.
///
/// # Errors
///
/// [`OpenError`] names the stage that failed.
pub async fn open(
    host: &str,
    port: u16,
    via: Option<std::net::SocketAddr>,
    ca_pem: &str,
    cert_pem: &str,
    key_pem: &str,
) -> Result<ClientSession, OpenError> {
    let outer_tls = crate::tls_config(ca_pem, Some((cert_pem, key_pem)), &[])?;
    let inner_tls = client_config(ca_pem, cert_pem, key_pem)?;
    let outer = crate::tunnel::dial(host, port, via, outer_tls)
        .await
        .map_err(OpenError::Dial)?;
    let raw = hand_over(outer, HANDOVER_TIMEOUT).await?;
    connect(raw, inner_tls).await.map_err(OpenError::Inner)
}

/// The identity in the certificate a TLS peer presented (verified by the handshake).
pub fn peer_identity(state: &rustls::CommonState) -> Option<Identity> {
    use x509_parser::prelude::FromDer;
    let leaf = state.peer_certificates()?.first()?;
    let (_, cert) = x509_parser::certificate::X509Certificate::from_der(leaf).ok()?;
    Identity::of_certificate(&cert).ok()
}

/// The client's inner TLS configuration: presents the session certificate (`cert_pem`, with
/// `key_pem`) and accepts only the agent that certificate names, certified by `ca_pem`.
///
/// # Errors
///
/// A PEM does not parse, or the certificate is not a session certificate.
pub fn client_config(
    ca_pem: &str,
    cert_pem: &str,
    key_pem: &str,
) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    use rustls_pki_types::PrivateKeyDer;
    use rustls_pki_types::pem::PemObject;
    let chain = certificates(cert_pem, "session certificate")?;
    let agent = match chain.first().and_then(|c| identity_of(c)) {
        Some(Identity::Client { agent, .. }) => agent,
        _ => return Err(TlsError::Pem("session certificate")),
    };
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
        .map_err(|_| TlsError::Pem("private key"))?;
    let provider = provider();
    let verifier = AgentVerifier {
        roots: Arc::new(crate::roots(ca_pem)?),
        agent,
        provider: provider.clone(),
    };
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TlsError::Config(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_client_auth_cert(chain, key)
        .map_err(|e| TlsError::Config(e.to_string()))?;
    Ok(Arc::new(config))
}

/// The agent's inner TLS configuration: presents the agent certificate (`cert_pem`, with
/// `key_pem`) and requires a client certificate certified by `ca_pem`. Which session it
/// names is the agent's to check after the handshake ([`peer_identity`]).
///
/// # Errors
///
/// A PEM does not parse or rustls refuses the configuration.
pub fn server_config(
    ca_pem: &str,
    cert_pem: &str,
    key_pem: &str,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    use rustls_pki_types::PrivateKeyDer;
    use rustls_pki_types::pem::PemObject;
    let chain = certificates(cert_pem, "agent certificate")?;
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
        .map_err(|_| TlsError::Pem("private key"))?;
    let provider = provider();
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(crate::roots(ca_pem)?),
        provider.clone(),
    )
    .build()
    .map_err(|e| TlsError::Config(e.to_string()))?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|e| TlsError::Config(e.to_string()))?;
    // Every inner session is new: no tickets to issue or keep.
    config.send_tls13_tickets = 0;
    Ok(Arc::new(config))
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn certificates(pem: &str, what: &'static str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    use rustls_pki_types::pem::PemObject;
    let chain = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| TlsError::Pem(what))?;
    if chain.is_empty() {
        return Err(TlsError::Pem(what));
    }
    Ok(chain)
}

fn identity_of(der: &CertificateDer<'_>) -> Option<Identity> {
    use x509_parser::prelude::FromDer;
    let (_, cert) = x509_parser::certificate::X509Certificate::from_der(der).ok()?;
    Identity::of_certificate(&cert).ok()
}

/// Accepts one agent: a certificate chained to the internal CA, valid now, for TLS servers,
/// naming `agent`. (Host names mean nothing here: agents are named by identity.)
#[derive(Debug)]
struct AgentVerifier {
    roots: Arc<rustls::RootCertStore>,
    agent: AgentId,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for AgentVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let parsed = rustls::server::ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &parsed,
            &self.roots,
            intermediates,
            now,
            self.provider.signature_verification_algorithms.all,
        )?;
        match identity_of(end_entity) {
            Some(Identity::Agent { agent }) if agent == self.agent => {
                Ok(ServerCertVerified::assertion())
            }
            _ => Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::ApplicationVerificationFailure,
            )),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// A record-bounded reader over `bytes`, read with a large buffer: each read stops at the
    /// next header or record boundary.
    #[tokio::test]
    async fn reads_stop_at_record_boundaries() {
        let mut wire = Vec::new();
        wire.extend_from_slice(&[0x17, 0x03, 0x03, 0x00, 0x03, b'a', b'b', b'c']);
        wire.extend_from_slice(&[0x15, 0x03, 0x03, 0x00, 0x00]);
        wire.extend_from_slice(b"inner bytes");
        let (mut tx, rx) = tokio::io::duplex(1024);
        tx.write_all(&wire).await.unwrap();
        let mut records = Records::new(rx);
        let mut buf = [0u8; 64];
        let mut reads = Vec::new();
        let mut total = 0;
        while total < 13 {
            let n = records.read(&mut buf).await.unwrap();
            reads.push(buf[..n].to_vec());
            total += n;
        }
        assert_eq!(
            reads,
            vec![
                vec![0x17, 0x03, 0x03, 0x00, 0x03],
                b"abc".to_vec(),
                vec![0x15, 0x03, 0x03, 0x00, 0x00]
            ]
        );
        let mut rest = records.into_inner().unwrap();
        let mut inner = [0u8; 11];
        rest.read_exact(&mut inner).await.unwrap();
        assert_eq!(&inner, b"inner bytes");
    }

    #[tokio::test]
    async fn a_stream_stopped_inside_a_record_is_not_handed_back() {
        let (mut tx, rx) = tokio::io::duplex(1024);
        tx.write_all(&[0x17, 0x03, 0x03, 0x00, 0x05, 1])
            .await
            .unwrap();
        let mut records = Records::new(rx);
        let mut buf = [0u8; 64];
        assert_eq!(records.read(&mut buf).await.unwrap(), 5);
        assert_eq!(records.read(&mut buf).await.unwrap(), 1);
        assert!(records.into_inner().is_none());
    }
}

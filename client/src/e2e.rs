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
//! [`crate::tunnel::Records`] keeps the outer layer from reading one byte of the
//! inner session. rustls runs the inner handshake; the inner session's records are
//! [`crate::record`]'s ([`Session`]).

use std::io;
use std::sync::Arc;
use std::time::Duration;

use bamf_proto::san::{AgentId, Identity};
use bamf_proto::tunnel::Handover;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::TlsError;
use crate::proxy::Proxies;

/// The name the client gives the inner session's server. Not checked (the agent is checked by
/// the identity its certificate carries); `.invalid` so it can never name a real host.
pub const INNER_SERVER_NAME: &str = "agent.bamf.invalid";

/// How long a side waits, after its outer handshake, for the bridge to pair it: the bridge's
/// match timeout (30 s by default) and a margin.
pub const HANDOVER_TIMEOUT: Duration = Duration::from_secs(40);

use crate::tunnel::Outer;

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

/// The end-to-end session, on either side: its handshake by rustls, its records by
/// [`crate::record`].
pub use crate::record::Session;

/// Deadline for the inner handshake.
const INNER_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The client's inner handshake on the raw connection `raw` (see [`client_config`]).
///
/// # Errors
///
/// The handshake failed (the agent is not the one the session names, I/O) or timed out.
pub async fn connect(raw: TcpStream, config: Arc<rustls::ClientConfig>) -> io::Result<Session> {
    let name = ServerName::try_from(INNER_SERVER_NAME)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    within_deadline(Session::client(raw, config, name)).await
}

/// The agent's inner handshake on the raw connection `raw` (see [`server_config`]); the
/// caller checks [`peer_identity`].
///
/// # Errors
///
/// The handshake failed or timed out.
pub async fn accept(raw: TcpStream, config: Arc<rustls::ServerConfig>) -> io::Result<Session> {
    within_deadline(Session::server(raw, config)).await
}

/// The inner handshake `handshake`, failed after [`INNER_HANDSHAKE_TIMEOUT`].
async fn within_deadline<T>(handshake: impl Future<Output = io::Result<T>>) -> io::Result<T> {
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
) -> Result<Session, OpenError> {
    open_through(&Proxies::none(), host, port, via, ca_pem, cert_pem, key_pem).await
}

/// [`open`], dialling the bridge through the proxy `proxies` choose for its name, if any.
///
/// # Errors
///
/// As [`open`].
pub async fn open_through(
    proxies: &Proxies,
    host: &str,
    port: u16,
    via: Option<std::net::SocketAddr>,
    ca_pem: &str,
    cert_pem: &str,
    key_pem: &str,
) -> Result<Session, OpenError> {
    let outer_tls = crate::tls_config(ca_pem, Some((cert_pem, key_pem)), &[])?;
    let inner_tls = client_config(ca_pem, cert_pem, key_pem)?;
    let outer = crate::tunnel::dial_through(proxies.for_host(host), host, port, via, outer_tls)
        .await
        .map_err(OpenError::Dial)?;
    let raw = hand_over(outer, HANDOVER_TIMEOUT).await?;
    connect(raw, inner_tls).await.map_err(OpenError::Inner)
}

/// A client's session opened again through the API after its path broke (see
/// [`crate::resume::Reattach`]): `POST /api/v1/sessions/{id}/resume` with a CSR for the
/// session's own key, then the bridge the API chose, retried with back-off until the
/// stream's deadline. An answer that the session is over (ended, not ours, denied) stops it.
pub struct Reopen<'a> {
    /// The API, as the session's user.
    pub api: crate::api::UserApi<'a>,
    /// The session.
    pub session: String,
    /// The session's private key (PEM); it never leaves this process.
    pub key: String,
    /// Where to dial instead of resolving bridge names.
    pub via: Option<std::net::SocketAddr>,
    /// The bridge the path broke on, avoided when another is live.
    pub broken: Option<u32>,
    /// Told once per break, with the first failure, while it keeps trying.
    pub on_retry: fn(&str, &str),
}

impl std::fmt::Debug for Reopen<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reopen")
            .field("session", &self.session)
            .field("broken", &self.broken)
            .finish_non_exhaustive()
    }
}

impl Reopen<'_> {
    /// One try: `Err(None)` when the session is over for good.
    async fn once(&mut self) -> Result<Session, Option<String>> {
        use crate::https::HttpsError;
        let csr = crate::identity::csr_for(&self.key).map_err(|e| Some(e.to_string()))?;
        let request = bamf_proto::api::ResumeRequest {
            csr,
            broken_bridge: self.broken,
        };
        let grant = match self.api.resume(&self.session, &request).await {
            Ok(grant) => grant,
            Err(HttpsError::Status { status, .. })
                if matches!(status.as_u16(), 401 | 403 | 404 | 410) =>
            {
                return Err(None);
            }
            Err(e) => return Err(Some(e.to_string())),
        };
        let (ca, cert) = (&grant.certificate.ca, &grant.certificate.certificate);
        let host = &grant.bridge_host;
        let proxies = self.api.api().proxies();
        let opened = open_through(
            proxies,
            host,
            grant.bridge_port,
            self.via,
            ca,
            cert,
            &self.key,
        )
        .await;
        self.broken = host.split('.').next().and_then(|n| n.parse().ok());
        opened.map_err(|e| Some(format!("{host}: {e}")))
    }
}

impl crate::resume::Reattach<Session> for Reopen<'_> {
    async fn reattach(&mut self) -> Option<Session> {
        let mut backoff =
            crate::backoff::Backoff::new(Duration::from_millis(100), Duration::from_secs(3));
        let mut told = false;
        loop {
            match self.once().await {
                Ok(stream) => return Some(stream),
                Err(None) => return None,
                Err(Some(e)) => {
                    if !told {
                        (self.on_retry)(&self.session, &e);
                        told = true;
                    }
                    tokio::time::sleep(backoff.next_delay()).await;
                }
            }
        }
    }
}

/// The identity in the certificate chain `chain` a TLS peer presented (verified by the
/// handshake).
pub fn peer_identity(chain: &[CertificateDer<'_>]) -> Option<Identity> {
    identity_of(chain.first()?)
}

/// The raw public key (the subject public key's bits) of the certificate a TLS peer
/// presented (its chain `chain`): a session's key, which it must keep when it attaches again.
pub fn peer_key(chain: &[CertificateDer<'_>]) -> Option<Vec<u8>> {
    use x509_parser::prelude::FromDer;
    let leaf = chain.first()?;
    let (_, cert) = x509_parser::certificate::X509Certificate::from_der(leaf).ok()?;
    Some(cert.public_key().subject_public_key.data.to_vec())
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
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TlsError::Config(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_client_auth_cert(chain, key)
        .map_err(|e| TlsError::Config(e.to_string()))?;
    // rustls runs the handshake; the records are ours (crate::record).
    config.enable_secret_extraction = true;
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
    // Every inner session is new: no tickets to issue or keep (and the record layer takes
    // no handshake message after the handshake).
    config.send_tls13_tickets = 0;
    config.enable_secret_extraction = true;
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

//! Fetching the CA from `GET /api/v1/ca` before anything can be verified.
//!
//! A first contact without `--ca-file` does this, and so does a login whose pinned CA no
//! longer verifies (to show what changed). The connection accepts any server certificate, so
//! what it brings back is only a candidate: [`crate::trust`] decides whether to trust it
//! (the user compares its fingerprint, or a script gives the expected one) before any
//! credential is sent, and the login then verifies the API's certificate (chain *and* name)
//! against it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bamf_client::https::HttpsError;
use rustls::DigitallySignedStruct;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

use crate::error::{Error, Result, Status};
use crate::net::Net;

/// Connect, handshake and answer together.
const DEADLINE: Duration = Duration::from_secs(15);
/// A CA bundle is a few KiB.
const MAX_PEM: usize = 256 * 1024;

/// Accepts any certificate (the handshake's signatures are still checked, so the server
/// holds the key of what it presented).
#[derive(Debug)]
struct AcceptAny(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// `GET https://host:port/api/v1/ca` without verifying the server (through the proxy the
/// environment names, like every API call); returns the PEM. Nothing else is sent.
///
/// # Errors
///
/// The API cannot be reached (offline) or does not answer with a PEM certificate.
pub async fn fetch_ca(net: &Net, url: &str, via: Option<SocketAddr>) -> Result<String> {
    let fail = |status: Status, what: &dyn std::fmt::Display| {
        Error::of(
            status,
            format!("cannot fetch the CA from {url}/api/v1/ca: {what}"),
        )
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| fail(Status::Failure, &e))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAny(provider)))
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let api = net.endpoint(url, Arc::new(config), via)?;
    let pem = tokio::time::timeout(DEADLINE, api.text("/api/v1/ca"))
        .await
        .map_err(|_| fail(Status::Offline, &"timed out"))?
        .map_err(|e| {
            let status = if matches!(e, HttpsError::Connect(..)) {
                Status::Offline
            } else {
                Status::Failure
            };
            fail(status, &e)
        })?;
    if pem.len() > MAX_PEM {
        return Err(fail(Status::Failure, &"the answer is too long for a CA"));
    }
    // It must be certificates (tls_config refuses anything else).
    bamf_client::tls_config(&pem, None, &[]).map_err(|e| fail(Status::Failure, &e))?;
    Ok(pem)
}

//! Trust on first use: fetching the CA from `GET /api/v1/ca` before anything can be verified.
//!
//! Only the first login to an API without `--ca-file` does this. The connection accepts any
//! server certificate, so what it brings back is only a candidate: the login that follows
//! verifies the API's certificate (chain *and* name) against it, the user is shown its
//! SHA-256 fingerprint to compare, and it is pinned for every later login.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::rt::TokioIo;
use rustls::DigitallySignedStruct;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::error::{Error, Result};

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

/// `GET https://host:port/api/v1/ca` without verifying the server; returns the PEM.
///
/// # Errors
///
/// The API cannot be reached or does not answer with a PEM certificate.
pub async fn fetch_ca(host: &str, port: u16, via: Option<SocketAddr>) -> Result<String> {
    let fail = |what: &dyn std::fmt::Display| {
        Error::msg(format!(
            "cannot fetch the CA from https://{host}:{port}/api/v1/ca: {what}"
        ))
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| fail(&e))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAny(provider)))
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let exchange = async {
        let tcp = match via {
            Some(addr) => TcpStream::connect(addr).await,
            None => TcpStream::connect((host, port)).await,
        }
        .map_err(|e| fail(&e))?;
        let name = ServerName::try_from(host.to_owned()).map_err(|e| fail(&e))?;
        let tls = TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await
            .map_err(|e| fail(&e))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| fail(&e))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let request = http::Request::get("/api/v1/ca")
            .header(http::header::HOST, format!("{host}:{port}"))
            .body(Empty::<Bytes>::new())
            .map_err(|e| fail(&e))?;
        let response = sender.send_request(request).await.map_err(|e| fail(&e))?;
        let status = response.status();
        let body = Limited::new(response.into_body(), MAX_PEM)
            .collect()
            .await
            .map_err(|e| fail(&e))?
            .to_bytes();
        if !status.is_success() {
            return Err(fail(&format!("the API answered {status}")));
        }
        String::from_utf8(body.to_vec()).map_err(|e| fail(&e))
    };
    let pem = tokio::time::timeout(DEADLINE, exchange)
        .await
        .map_err(|_| fail(&"timed out"))??;
    // It must be certificates (tls_config refuses anything else).
    bamf_client::tls_config(&pem, None, &[]).map_err(|e| fail(&e))?;
    Ok(pem)
}

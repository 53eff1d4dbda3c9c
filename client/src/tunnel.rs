//! Dialling a bridge: TCP to its front door (or any bridge's, which forwards), TLS with the
//! bridge's name as SNI and a session or agent certificate: the outer layer, read record by
//! record so that it can be handed over ([`crate::e2e`]).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::e2e::{Outer, Records};

/// TCP connect plus TLS handshake.
pub const DIAL_TIMEOUT: Duration = Duration::from_secs(10);

/// Dials `host` (a bridge name, `n.bridge.<tunnel-domain>`) at `port`, or at `via` when
/// given, and completes TLS verifying the bridge's certificate for `host`.
///
/// # Errors
///
/// An I/O error naming what failed; a deadline as `TimedOut`.
pub async fn dial(
    host: &str,
    port: u16,
    via: Option<SocketAddr>,
    tls: Arc<rustls::ClientConfig>,
) -> std::io::Result<Outer> {
    let attempt = async {
        let tcp = match via {
            Some(addr) => TcpStream::connect(addr).await?,
            None => TcpStream::connect((host, port)).await?,
        };
        let _ = tcp.set_nodelay(true);
        let name = ServerName::try_from(host.to_owned())
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
        TlsConnector::from(tls)
            .connect(name, Records::new(tcp))
            .await
    };
    tokio::time::timeout(DIAL_TIMEOUT, attempt)
        .await
        .map_err(|_| {
            std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "dialling the bridge timed out",
            )
        })?
}

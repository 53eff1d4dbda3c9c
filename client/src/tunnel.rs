//! Dialling a bridge: TCP to its front door (or any bridge's, which forwards), TLS with the
//! bridge's name as SNI and a session or agent certificate: the outer layer, read record by
//! record so that it can be handed over ([`crate::e2e`]).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls_pki_types::ServerName;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

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
    dial_through(None, host, port, via, tls).await
}

/// [`dial`] through `proxy` when given: it is asked to `CONNECT` to `via`, else to
/// `host:port`, and TLS with the bridge runs inside that tunnel.
///
/// # Errors
///
/// As [`dial`]; a proxy's refusal is an I/O error naming it.
pub async fn dial_through(
    proxy: Option<&crate::proxy::Proxy>,
    host: &str,
    port: u16,
    via: Option<SocketAddr>,
    tls: Arc<rustls::ClientConfig>,
) -> std::io::Result<Outer> {
    let attempt = async {
        let tcp = match (proxy, via) {
            (Some(proxy), via) => {
                let target = via.map_or_else(|| format!("{host}:{port}"), |a| a.to_string());
                proxy
                    .connect(&target)
                    .await
                    .map_err(std::io::Error::other)?
            }
            (None, Some(addr)) => TcpStream::connect(addr).await?,
            (None, None) => TcpStream::connect((host, port)).await?,
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

/// A side's outer layer to the bridge.
pub type Outer = tokio_rustls::client::TlsStream<Records<TcpStream>>;

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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

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

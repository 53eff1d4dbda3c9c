//! Reading a ClientHello off a fresh connection, without terminating TLS.
//!
//! Nothing is allocated until the client sends its first byte, so a connection that never
//! speaks costs only its task and socket. Reads never go past the configured cap, and the
//! caller bounds the whole detection with one deadline.

use std::io;

use bamf_proto::sni::{self, ClientHello, HelloError};
use tokio::net::TcpStream;

/// First allocation for a hello: most hellos fit (openssl and curl send about 300–520 bytes,
/// Chromium's post-quantum hello about 2 KiB).
const FIRST_READ: usize = 2048;

/// Why no hello came out of a connection.
#[derive(Debug, thiserror::Error)]
pub enum DetectError {
    /// The client closed before completing a hello.
    #[error("client closed before sending a complete hello")]
    Closed,
    /// The bytes are not a routable hello.
    #[error(transparent)]
    Hello(#[from] HelloError),
    /// Reading from the client failed.
    #[error("reading the hello: {0}")]
    Io(#[from] io::Error),
}

/// A hello and every byte read to find it, to be replayed upstream unchanged.
#[derive(Debug)]
pub struct Detected {
    /// What the hello says.
    pub hello: ClientHello,
    /// The raw bytes read so far (the hello's records, possibly followed by more).
    pub buffered: Vec<u8>,
}

/// Reads from `stream` until [`sni::parse`] finds a hello or refuses the bytes.
///
/// Cancel safe: dropping the future loses only bytes that will never be routed.
///
/// # Errors
///
/// [`DetectError`] says why this connection will never be routed.
pub async fn client_hello(stream: &TcpStream, max_len: usize) -> Result<Detected, DetectError> {
    // Clients send the hello right after connecting, so it has often arrived by the time we
    // accept: try a read before waiting for readiness, which saves a trip through the
    // reactor. The stack buffer keeps a silent client from costing a heap allocation.
    // (The block ends the array's scope before the first await, so it is never stored in
    // the connection's future.)
    let mut buf: Vec<u8> = {
        let mut first = [0u8; FIRST_READ];
        match stream.try_read(&mut first) {
            Ok(0) => return Err(DetectError::Closed),
            Ok(n) => first[..n].to_vec(),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Vec::new(),
            Err(e) => return Err(e.into()),
        }
    };
    loop {
        if !buf.is_empty()
            && let Some(hello) = sni::parse(&buf, max_len)?
        {
            return Ok(Detected {
                hello,
                buffered: buf,
            });
        }
        stream.readable().await?;
        let filled = buf.len();
        let room = (filled.max(FIRST_READ / 2) * 2).min(max_len) - filled;
        buf.resize(filled + room, 0);
        match stream.try_read(&mut buf[filled..]) {
            Ok(0) => return Err(DetectError::Closed),
            Ok(n) => buf.truncate(filled + n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => buf.truncate(filled),
            Err(e) => return Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::tcp_pair;
    use bamf_proto::sni::build::{client_hello as build_hello, records};
    use tokio::io::AsyncWriteExt;

    #[tokio::test]
    async fn hello_dribbled_one_byte_at_a_time_in_tiny_records() {
        let (mut client, server) = tcp_pair().await;
        let raw = records(&build_hello(Some("slow.example.test"), &["h2"], 1500), 7);
        let sent = raw.clone();
        let writer = tokio::spawn(async move {
            for b in sent {
                client.write_all(&[b]).await.unwrap();
                tokio::task::yield_now().await;
            }
            client
        });
        let detected = client_hello(&server, sni::DEFAULT_MAX_HELLO_LEN)
            .await
            .unwrap();
        assert_eq!(
            detected.hello.server_name.unwrap().as_str(),
            "slow.example.test"
        );
        assert_eq!(detected.buffered, raw);
        drop(writer.await.unwrap());
    }

    #[tokio::test]
    async fn never_reads_past_the_cap() {
        let (mut client, server) = tcp_pair().await;
        // Records of 1 byte: the hello needs more raw bytes than the cap allows.
        let raw = records(&build_hello(Some("a.test"), &[], 4000), 1);
        let writer = tokio::spawn(async move {
            let _ = client.write_all(&raw).await;
            client
        });
        let err = client_hello(&server, 17 * 1024).await.unwrap_err();
        assert!(
            matches!(err, DetectError::Hello(HelloError::TooLarge)),
            "{err}"
        );
        drop(writer.await.unwrap());
    }

    #[tokio::test]
    async fn early_close_and_garbage() {
        let (client, server) = tcp_pair().await;
        drop(client);
        assert!(matches!(
            client_hello(&server, 32768).await,
            Err(DetectError::Closed)
        ));
        let (mut client, server) = tcp_pair().await;
        client
            .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        assert!(matches!(
            client_hello(&server, 32768).await,
            Err(DetectError::Hello(HelloError::NotTls))
        ));
    }

    #[tokio::test]
    async fn a_waiting_detection_is_small() {
        // Every stalled client holds one of these futures: keep it far below the 2 KiB stack
        // buffer it uses for its first read.
        let (_client, server) = tcp_pair().await;
        let future = client_hello(&server, sni::DEFAULT_MAX_HELLO_LEN);
        let size = std::mem::size_of_val(&future);
        assert!(size < 512, "detection future is {size} bytes");
    }
}

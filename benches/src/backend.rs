//! The benchmark backend: a plain TCP server (not TLS) run as a separate process.
//!
//! Protocol on every connection:
//! 1. read one TLS record (the ClientHello the proxy forwarded): 5-byte header + body;
//! 2. write one byte, [`READY`];
//! 3. read one mode byte: EOF ends the connection (connection-rate and idle workloads),
//!    [`MODE_BULK`] counts bytes until EOF then answers the count as a big-endian u64,
//!    [`MODE_ECHO`] echoes everything until EOF, [`MODE_CLOSE`] closes at once.
//!
//! [`MODE_CLOSE`] lets the backend close first, so TIME_WAIT lands on the listening
//! sides and not on the ephemeral ports of the client and of the proxy's upstream leg:
//! at tens of thousands of connections per second over one loopback address, ephemeral
//! ports held in TIME_WAIT would otherwise be what is measured.
//!
//! The process prints its port on stdout and exits when its stdin closes, so it never
//! outlives the harness.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

pub(crate) const READY: u8 = b'R';
pub(crate) const MODE_BULK: u8 = b'B';
pub(crate) const MODE_ECHO: u8 = b'E';
pub(crate) const MODE_CLOSE: u8 = b'C';

pub(crate) fn run() -> Result<()> {
    crate::raise_nofile();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("backend runtime")?;
    rt.block_on(serve())
}

async fn serve() -> Result<()> {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .context("backend bind")?;
    let port = listener.local_addr()?.port();
    {
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        writeln!(out, "{port}")?;
        out.flush()?;
    }
    // Exit when the harness goes away (our stdin is a pipe from it).
    std::thread::spawn(|| {
        use std::io::Read;
        let mut stdin = std::io::stdin();
        let mut buf = [0u8; 64];
        while let Ok(n) = stdin.read(&mut buf) {
            if n == 0 {
                break;
            }
        }
        std::process::exit(0);
    });
    loop {
        match listener.accept().await {
            Ok((sock, _)) => {
                tokio::spawn(async move {
                    // Errors here are the client's or proxy's business (resets at close).
                    let _ = handle(sock).await;
                });
            }
            Err(e) => {
                eprintln!("backend accept: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

async fn handle(mut sock: TcpStream) -> Result<()> {
    sock.set_nodelay(true)?;
    let mut hdr = [0u8; 5];
    sock.read_exact(&mut hdr).await?;
    if hdr[0] != 0x16 {
        bail!("not a TLS handshake record");
    }
    let len = usize::from(u16::from_be_bytes([hdr[3], hdr[4]]));
    let mut hello = vec![0u8; len];
    sock.read_exact(&mut hello).await?;
    sock.write_all(&[READY]).await?;

    let mut mode = [0u8; 1];
    if sock.read(&mut mode).await? == 0 {
        return Ok(());
    }
    match mode[0] {
        MODE_BULK => {
            let mut buf = vec![0u8; 256 * 1024];
            let mut total: u64 = 0;
            loop {
                let n = sock.read(&mut buf).await?;
                if n == 0 {
                    break;
                }
                total += n as u64;
            }
            sock.write_all(&total.to_be_bytes()).await?;
            sock.shutdown().await?;
        }
        MODE_ECHO => {
            let mut buf = vec![0u8; 16 * 1024];
            loop {
                let n = sock.read(&mut buf).await?;
                if n == 0 {
                    break;
                }
                sock.write_all(buf.get(..n).unwrap_or_default()).await?;
            }
        }
        MODE_CLOSE => drop(sock),
        other => bail!("unknown mode byte {other}"),
    }
    Ok(())
}

//! The client side of each workload. Every loop is bounded in time and count.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

use crate::backend::{MODE_BULK, MODE_CLOSE, MODE_ECHO, READY};
use crate::hello::client_hello;

const STEP_TIMEOUT: Duration = Duration::from_secs(10);
const WRITE_SIZE: usize = 64 * 1024;
const ECHO_SIZE: usize = 64;

/// Connects, sends a ClientHello and waits for the backend's ready byte.
async fn open(addr: SocketAddr, hello: &[u8]) -> Result<TcpStream> {
    let work = async {
        let mut s = TcpStream::connect(addr).await.context("connect")?;
        s.set_nodelay(true)?;
        s.write_all(hello).await.context("send hello")?;
        let mut b = [0u8; 1];
        s.read_exact(&mut b).await.context("read ready byte")?;
        ensure!(b[0] == READY, "expected the ready byte, got {:#x}", b[0]);
        anyhow::Ok(s)
    };
    timeout(STEP_TIMEOUT, work)
        .await
        .context("connection not ready within 10 s")?
}

/// Value at quantile `q` (0..=1) of sorted samples.
pub(crate) fn quantile(sorted: &[u64], q: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    let idx = rank.clamp(1, sorted.len()) - 1;
    sorted.get(idx).copied().unwrap_or(0)
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct Throughput {
    pub(crate) bytes: u64,
    pub(crate) secs: f64,
}

impl Throughput {
    pub(crate) fn gbit_per_s(&self) -> f64 {
        self.bytes as f64 * 8.0 / 1e9 / self.secs
    }
}

/// `streams` connections each write 64 KiB chunks for `dur`, then half-close;
/// the backend answers how many bytes it received. Time runs from the moment all
/// streams are ready until the last count arrives.
pub(crate) async fn throughput(
    addr: SocketAddr,
    streams: usize,
    dur: Duration,
) -> Result<Throughput> {
    let mut conns = Vec::with_capacity(streams);
    for _ in 0..streams {
        conns.push(open(addr, &client_hello()).await?);
    }
    let mut chunk = vec![0u8; WRITE_SIZE];
    for (i, b) in chunk.iter_mut().enumerate() {
        *b = (i % 251) as u8;
    }
    let chunk: Arc<[u8]> = chunk.into();
    let start = Instant::now();
    let deadline = start + dur;
    let mut tasks = Vec::with_capacity(streams);
    for mut s in conns {
        let chunk = Arc::clone(&chunk);
        tasks.push(tokio::spawn(async move {
            s.write_all(&[MODE_BULK]).await?;
            let mut sent: u64 = 0;
            while Instant::now() < deadline {
                s.write_all(&chunk).await?;
                sent += chunk.len() as u64;
            }
            s.shutdown().await?;
            let mut count = [0u8; 8];
            timeout(STEP_TIMEOUT, s.read_exact(&mut count))
                .await
                .context("byte count not received within 10 s")??;
            let got = u64::from_be_bytes(count);
            ensure!(
                got == sent,
                "backend received {got} bytes, client sent {sent}"
            );
            anyhow::Ok((got, Instant::now()))
        }));
    }
    let mut bytes = 0;
    let mut end = start;
    for t in tasks {
        let (got, at) = timeout(dur + STEP_TIMEOUT * 2, t)
            .await
            .context("stream did not finish")???;
        bytes += got;
        end = end.max(at);
    }
    let secs = (end - start).as_secs_f64();
    ensure!(bytes > 0 && secs > 0.0, "no data moved");
    Ok(Throughput { bytes, secs })
}

#[derive(Debug, Clone)]
pub(crate) struct ConnRate {
    pub(crate) conns: u64,
    pub(crate) per_sec: f64,
    pub(crate) p50_us: f64,
    pub(crate) p99_us: f64,
}

/// Asks the backend to close `s` first, and waits for the close to arrive.
async fn close_from_backend(mut s: TcpStream) -> Result<()> {
    s.write_all(&[MODE_CLOSE]).await?;
    let mut b = [0u8; 16];
    let n = timeout(STEP_TIMEOUT, s.read(&mut b))
        .await
        .context("backend close not seen within 10 s")??;
    ensure!(n == 0, "expected the backend to close, got {n} bytes");
    Ok(())
}

/// `concurrency` workers loop for `dur`: connect, hello, read the first byte, then the
/// backend closes (see [`MODE_CLOSE`]) and the client closes. Latency is connect start
/// to first byte; the rate counts whole connection lifetimes.
pub(crate) async fn conn_rate(
    addr: SocketAddr,
    concurrency: usize,
    dur: Duration,
) -> Result<ConnRate> {
    let start = Instant::now();
    let deadline = start + dur;
    let mut tasks = Vec::with_capacity(concurrency);
    for _ in 0..concurrency {
        tasks.push(tokio::spawn(async move {
            let hello = client_hello();
            let mut lat = Vec::with_capacity(64 * 1024);
            let mut errors = 0u64;
            let mut last_err = None;
            while Instant::now() < deadline {
                let t0 = Instant::now();
                let one = async {
                    let s = open(addr, &hello).await?;
                    let ns = t0.elapsed().as_nanos() as u64;
                    close_from_backend(s).await?;
                    anyhow::Ok(ns)
                };
                match one.await {
                    Ok(ns) => lat.push(ns),
                    Err(e) => {
                        errors += 1;
                        last_err = Some(format!("{e:#}"));
                        if errors > 50 {
                            break;
                        }
                    }
                }
            }
            (lat, errors, last_err)
        }));
    }
    let mut all = Vec::new();
    let mut errors = 0;
    let mut last_err = None;
    for t in tasks {
        let (lat, e, le) = timeout(dur + STEP_TIMEOUT * 2, t)
            .await
            .context("connection worker did not finish")??;
        all.extend(lat);
        errors += e;
        last_err = last_err.or(le);
    }
    let secs = start.elapsed().as_secs_f64();
    let conns = all.len() as u64;
    // A handful of failures under load (e.g. a backlog overflow) is reported, not fatal;
    // more than 1% means the target does not work.
    if errors > 0 {
        eprintln!(
            "  warning: {errors} failed connections (of {}): {}",
            conns + errors,
            last_err.as_deref().unwrap_or("?")
        );
    }
    ensure!(
        conns > 0 && errors * 100 <= conns,
        "{errors} of {} connections failed; last error: {}",
        conns + errors,
        last_err.as_deref().unwrap_or("?")
    );
    all.sort_unstable();
    Ok(ConnRate {
        conns,
        per_sec: conns as f64 / secs,
        p50_us: quantile(&all, 0.50) as f64 / 1e3,
        p99_us: quantile(&all, 0.99) as f64 / 1e3,
    })
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct Echo {
    pub(crate) p50_us: f64,
    pub(crate) p99_us: f64,
}

/// One connection, `count` round trips of a 64-byte message (after a short warm-up).
pub(crate) async fn echo(addr: SocketAddr, count: usize) -> Result<Echo> {
    let mut s = open(addr, &client_hello()).await?;
    s.write_all(&[MODE_ECHO]).await?;
    let mut msg = [0u8; ECHO_SIZE];
    let mut back = [0u8; ECHO_SIZE];
    let warmup = (count / 10).min(200);
    let mut lat = Vec::with_capacity(count);
    let work = async {
        for i in 0..warmup + count {
            for (j, b) in msg.iter_mut().enumerate() {
                *b = (i + j) as u8;
            }
            let t0 = Instant::now();
            s.write_all(&msg).await?;
            s.read_exact(&mut back).await?;
            let ns = t0.elapsed().as_nanos() as u64;
            ensure!(back == msg, "echo came back altered");
            if i >= warmup {
                lat.push(ns);
            }
        }
        anyhow::Ok(())
    };
    timeout(Duration::from_secs(120), work)
        .await
        .context("echo did not finish within 120 s")??;
    lat.sort_unstable();
    Ok(Echo {
        p50_us: quantile(&lat, 0.50) as f64 / 1e3,
        p99_us: quantile(&lat, 0.99) as f64 / 1e3,
    })
}

/// Opens `n` passthrough connections (hello sent, ready byte read) with 64 in
/// flight at once, and returns them open.
pub(crate) async fn open_idle(addr: SocketAddr, n: usize) -> Result<Vec<TcpStream>> {
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..64usize.min(n.max(1)) {
        let next = Arc::clone(&next);
        tasks.push(tokio::spawn(async move {
            let hello = client_hello();
            let mut mine = Vec::new();
            while next.fetch_add(1, Ordering::Relaxed) < n {
                mine.push(open(addr, &hello).await?);
            }
            anyhow::Ok(mine)
        }));
    }
    let mut all = Vec::with_capacity(n);
    for t in tasks {
        match timeout(Duration::from_secs(120), t).await {
            Ok(Ok(Ok(mine))) => all.extend(mine),
            Ok(Ok(Err(e))) => bail!("after {} connections: {e:#}", all.len()),
            Ok(Err(e)) => bail!("idle worker panicked: {e}"),
            Err(_) => bail!("idle connections not open within 120 s"),
        }
    }
    ensure!(all.len() == n, "opened {} of {n} connections", all.len());
    Ok(all)
}

/// Closes connections opened by [`open_idle`], the backend closing first, 64 at a time.
pub(crate) async fn close_idle(conns: Vec<TcpStream>) -> Result<()> {
    let total = conns.len();
    let mut chunks: Vec<Vec<TcpStream>> = (0..64).map(|_| Vec::new()).collect();
    for (i, c) in conns.into_iter().enumerate() {
        if let Some(chunk) = chunks.get_mut(i % 64) {
            chunk.push(c);
        }
    }
    let mut tasks = Vec::new();
    for chunk in chunks {
        tasks.push(tokio::spawn(async move {
            let mut failed = 0usize;
            for s in chunk {
                if close_from_backend(s).await.is_err() {
                    failed += 1;
                }
            }
            failed
        }));
    }
    let mut failed = 0;
    for t in tasks {
        failed += timeout(Duration::from_secs(120), t)
            .await
            .context("idle connections not closed within 120 s")??;
    }
    ensure!(
        failed == 0,
        "{failed} of {total} idle connections did not close cleanly"
    );
    Ok(())
}

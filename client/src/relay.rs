//! Copying bytes both ways between two streams (TLS or TCP) until both sides finish, with a
//! byte count per direction, an idle deadline, half-close passed on, and a stop signal.
//!
//! Buffers are borrowed from a shared pool only while bytes are in flight: an idle tunnel
//! holds none (the streams' own buffers are all it costs), so idle tunnels stay cheap. Used by
//! the bridge's relay and by the agent.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Mutex;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::time::Instant;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Bytes per borrowed buffer: one TLS record.
pub const BUFFER_SIZE: usize = 16 * 1024;
/// Free buffers kept for reuse; beyond this they are freed, so a burst does not pin memory.
const POOL_KEEP: usize = 256;

/// Buffers shared by every relay of a process.
#[derive(Debug, Default)]
pub struct BufferPool {
    free: Mutex<Vec<Box<[u8]>>>,
}

impl BufferPool {
    fn take(&self) -> Box<[u8]> {
        self.free
            .lock()
            .ok()
            .and_then(|mut f| f.pop())
            .unwrap_or_else(|| vec![0; BUFFER_SIZE].into_boxed_slice())
    }

    fn give(&self, buf: Box<[u8]>) {
        if let Ok(mut f) = self.free.lock()
            && f.len() < POOL_KEEP
        {
            f.push(buf);
        }
    }
}

/// How a relay ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelayEnd {
    /// Both sides finished.
    Closed,
    /// A read or write failed.
    Error,
    /// No bytes either way for the idle timeout.
    IdleTimeout,
    /// The stop signal fired.
    Stopped,
}

/// What a relay moved, and how it ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Relayed {
    /// Bytes read from `a` and written to `b`.
    pub a_to_b: u64,
    /// Bytes read from `b` and written to `a`.
    pub b_to_a: u64,
    /// How it ended.
    pub end: RelayEnd,
}

/// One direction's state.
#[derive(Default)]
struct Direction {
    /// A borrowed buffer with bytes `start..end` still to write.
    pending: Option<(Box<[u8]>, usize, usize)>,
    /// Written bytes may sit in the writer's buffers (TLS) until flushed.
    flush: bool,
    /// The reader reached end of stream.
    eof: bool,
    /// The writer was shut down: this direction is done.
    done: bool,
    moved: u64,
}

impl Direction {
    /// Moves bytes until the reader has nothing now (Pending) or the direction is done.
    fn poll<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        from: &mut R,
        to: &mut W,
        pool: &BufferPool,
        active: &mut bool,
    ) -> Poll<io::Result<()>>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        loop {
            if self.done {
                return Poll::Ready(Ok(()));
            }
            if let Some((buf, start, end)) = &mut self.pending {
                while *start < *end {
                    let n = ready!(Pin::new(&mut *to).poll_write(cx, &buf[*start..*end]))?;
                    if n == 0 {
                        return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                    }
                    *start += n;
                    *active = true;
                }
                if let Some((buf, _, _)) = self.pending.take() {
                    pool.give(buf);
                }
                self.flush = true;
            }
            if self.flush {
                ready!(Pin::new(&mut *to).poll_flush(cx))?;
                self.flush = false;
            }
            if self.eof {
                // The peer may already be gone; the other direction reports that.
                let _ = ready!(Pin::new(&mut *to).poll_shutdown(cx));
                self.done = true;
                continue;
            }
            let mut buf = pool.take();
            let mut read = ReadBuf::new(&mut buf);
            match Pin::new(&mut *from).poll_read(cx, &mut read) {
                Poll::Pending => {
                    // Idle: hold no buffer while waiting.
                    pool.give(buf);
                    return Poll::Pending;
                }
                Poll::Ready(Err(e)) => {
                    pool.give(buf);
                    return Poll::Ready(Err(e));
                }
                Poll::Ready(Ok(())) => {
                    let n = read.filled().len();
                    if n == 0 {
                        pool.give(buf);
                        self.eof = true;
                    } else {
                        self.moved += n as u64;
                        *active = true;
                        self.pending = Some((buf, 0, n));
                    }
                }
            }
        }
    }
}

/// Relays between `a` and `b` until both directions finish (each passes its end of stream on
/// as a shutdown of the other side), one fails, nothing moves for `idle`, or `stop` resolves.
pub async fn relay<A, B>(
    mut a: A,
    mut b: B,
    idle: Duration,
    pool: &BufferPool,
    stop: impl Future<Output = ()>,
) -> Relayed
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let (mut up, mut down) = (Direction::default(), Direction::default());
    let mut last = Instant::now();
    let mut stop = std::pin::pin!(stop);
    let mut timer = std::pin::pin!(tokio::time::sleep(idle));
    let end = std::future::poll_fn(|cx| {
        if stop.as_mut().poll(cx).is_ready() {
            return Poll::Ready(RelayEnd::Stopped);
        }
        let mut active = false;
        let first = up.poll(cx, &mut a, &mut b, pool, &mut active);
        let second = down.poll(cx, &mut b, &mut a, pool, &mut active);
        match (first, second) {
            (Poll::Ready(Err(_)), _) | (_, Poll::Ready(Err(_))) => {
                return Poll::Ready(RelayEnd::Error);
            }
            (Poll::Ready(Ok(())), Poll::Ready(Ok(()))) => return Poll::Ready(RelayEnd::Closed),
            _ => {}
        }
        // One timer for the whole relay, re-armed from the last activity only when it fires.
        if active {
            last = Instant::now();
        }
        while timer.as_mut().poll(cx).is_ready() {
            let deadline = last + idle;
            if Instant::now() >= deadline {
                return Poll::Ready(RelayEnd::IdleTimeout);
            }
            timer.as_mut().reset(deadline);
        }
        Poll::Pending
    })
    .await;
    Relayed {
        a_to_b: up.moved,
        b_to_a: down.moved,
        end,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    #[tokio::test]
    async fn bytes_flow_both_ways_with_half_close_and_counts() {
        let pool = BufferPool::default();
        let (mut client, a) = tokio::io::duplex(1024);
        let (b, mut server) = tokio::io::duplex(1024);
        let relay = tokio::spawn(async move {
            let pool = BufferPool::default();
            relay(a, b, Duration::from_secs(5), &pool, std::future::pending()).await
        });
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let sent = data.clone();
        let writer = tokio::spawn(async move {
            client.write_all(&sent).await.unwrap();
            client.shutdown().await.unwrap();
            let mut back = Vec::new();
            client.read_to_end(&mut back).await.unwrap();
            back
        });
        let mut got = Vec::new();
        server.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, data, "client → server, then end of stream passed on");
        server.write_all(b"reply after half-close").await.unwrap();
        server.shutdown().await.unwrap();
        assert_eq!(writer.await.unwrap(), b"reply after half-close");
        let done = relay.await.unwrap();
        assert_eq!(
            (done.a_to_b, done.b_to_a, done.end),
            (100_000, 22, RelayEnd::Closed)
        );
        drop(pool);
    }

    #[tokio::test(start_paused = true)]
    async fn idle_relays_end_and_hold_no_buffer() {
        let pool = BufferPool::default();
        let (_client, a) = tokio::io::duplex(64);
        let (b, _server) = tokio::io::duplex(64);
        let done = relay(a, b, Duration::from_secs(30), &pool, std::future::pending()).await;
        assert_eq!(done.end, RelayEnd::IdleTimeout);
        // Both directions borrowed a buffer to poll and gave it back when nothing came.
        assert!(pool.free.lock().unwrap().len() <= 2);
    }

    #[tokio::test]
    async fn stop_ends_a_relay_and_keeps_its_counts() {
        let pool = BufferPool::default();
        let (mut client, a) = tokio::io::duplex(64);
        let (b, mut server) = tokio::io::duplex(64);
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let relay = tokio::spawn(async move {
            let pool = BufferPool::default();
            relay(a, b, Duration::from_secs(30), &pool, async {
                let _ = rx.await;
            })
            .await
        });
        client.write_all(b"12345").await.unwrap();
        let mut five = [0u8; 5];
        server.read_exact(&mut five).await.unwrap();
        tx.send(()).unwrap();
        let done = relay.await.unwrap();
        assert_eq!((done.a_to_b, done.end), (5, RelayEnd::Stopped));
        drop(pool);
    }
}

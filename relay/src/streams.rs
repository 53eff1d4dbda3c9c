//! The relay between two byte streams (TLS on either side): bytes go through a buffer
//! borrowed from the shared [`Carriers`] only while they are in flight, and each write is
//! flushed (TLS keeps written bytes in its own buffer until then).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

use crate::carriers::{Carrier, Carriers};
use crate::{Meters, RelayEnd, Side, Transferred};

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

fn take(pool: &Carriers) -> Box<[u8]> {
    match pool.take(false) {
        Carrier::Buffer(buf) => buf,
        // A pipe is never handed out for `bulk = false`; give it back and use a buffer.
        pipe @ Carrier::Pipe { .. } => {
            pool.give(pipe);
            vec![0; crate::BUFFER_SIZE].into_boxed_slice()
        }
    }
}

fn give(pool: &Carriers, buf: Box<[u8]>) {
    pool.give(Carrier::Buffer(buf));
}

impl Direction {
    /// Moves bytes until the reader has nothing now (Pending) or the direction is done.
    fn poll<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        (from, from_side): (&mut R, Side),
        (to, to_side): (&mut W, Side),
        pool: &Carriers,
    ) -> Poll<Result<(), (Side, io::Error)>>
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
                    let n = ready!(Pin::new(&mut *to).poll_write(cx, &buf[*start..*end]))
                        .map_err(|e| (to_side, e))?;
                    if n == 0 {
                        return Poll::Ready(Err((to_side, io::ErrorKind::WriteZero.into())));
                    }
                    *start += n;
                    self.moved += n as u64;
                }
                if let Some((buf, _, _)) = self.pending.take() {
                    give(pool, buf);
                }
                self.flush = true;
            }
            if self.flush {
                ready!(Pin::new(&mut *to).poll_flush(cx)).map_err(|e| (to_side, e))?;
                self.flush = false;
            }
            if self.eof {
                // The peer may already be gone; the other direction reports that.
                let _ = ready!(Pin::new(&mut *to).poll_shutdown(cx));
                self.done = true;
                continue;
            }
            let mut buf = take(pool);
            let mut read = ReadBuf::new(&mut buf);
            match Pin::new(&mut *from).poll_read(cx, &mut read) {
                Poll::Pending => {
                    // Idle: hold no buffer while waiting.
                    give(pool, buf);
                    return Poll::Pending;
                }
                Poll::Ready(Err(e)) => {
                    give(pool, buf);
                    return Poll::Ready(Err((from_side, e)));
                }
                Poll::Ready(Ok(())) => {
                    let n = read.filled().len();
                    if n == 0 {
                        give(pool, buf);
                        self.eof = true;
                    } else {
                        self.pending = Some((buf, 0, n));
                    }
                }
            }
        }
    }

    fn release(&mut self, pool: &Carriers) {
        if let Some((buf, _, _)) = self.pending.take() {
            give(pool, buf);
        }
    }
}

/// Relays between `client` and `upstream` until both directions finish (each passes its end
/// of stream on as a shutdown of the other side), one fails, nothing moves for `idle`, or
/// `stop` resolves. Returns how it ended and what it moved (counted as written); `meters` see
/// the same bytes while they move.
pub async fn relay_streams<C, U>(
    mut client: C,
    mut upstream: U,
    idle: Duration,
    pool: &Carriers,
    meters: &Meters,
    stop: impl Future<Output = ()>,
) -> (RelayEnd, Transferred)
where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    let (mut up, mut down) = (Direction::default(), Direction::default());
    let mut last = Instant::now();
    let mut stop = std::pin::pin!(stop);
    let mut timer = std::pin::pin!(tokio::time::sleep(idle));
    let end = std::future::poll_fn(|cx| {
        if stop.as_mut().poll(cx).is_ready() {
            return Poll::Ready(RelayEnd::Stopped);
        }
        let (up_before, down_before) = (up.moved, down.moved);
        let first = up.poll(
            cx,
            (&mut client, Side::Client),
            (&mut upstream, Side::Upstream),
            pool,
        );
        let second = down.poll(
            cx,
            (&mut upstream, Side::Upstream),
            (&mut client, Side::Client),
            pool,
        );
        let (up_moved, down_moved) = (up.moved - up_before, down.moved - down_before);
        if up_moved + down_moved != 0 {
            last = Instant::now();
            if up_moved != 0 {
                meters.up.increment(up_moved);
            }
            if down_moved != 0 {
                meters.down.increment(down_moved);
            }
        }
        match (first, second) {
            (Poll::Ready(Err((side, e))), _) | (_, Poll::Ready(Err((side, e)))) => {
                return Poll::Ready(RelayEnd::Failed(side, e));
            }
            (Poll::Ready(Ok(())), Poll::Ready(Ok(()))) => return Poll::Ready(RelayEnd::Finished),
            _ => {}
        }
        // One timer for the whole relay, re-armed from the last activity only when it fires.
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
    up.release(pool);
    down.release(pool);
    (
        end,
        Transferred {
            up: up.moved,
            down: down.moved,
        },
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    fn run<C, U>(
        client: C,
        upstream: U,
        idle: Duration,
        stop: impl Future<Output = ()> + Send + 'static,
    ) -> tokio::task::JoinHandle<(RelayEnd, Transferred)>
    where
        C: AsyncRead + AsyncWrite + Unpin + Send + 'static,
        U: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        tokio::spawn(async move {
            let pool = Carriers::new(false);
            relay_streams(client, upstream, idle, &pool, &Meters::default(), stop).await
        })
    }

    #[tokio::test]
    async fn bytes_flow_both_ways_with_half_close_and_counts() {
        let (mut client, a) = tokio::io::duplex(1024);
        let (b, mut server) = tokio::io::duplex(1024);
        let relay = run(a, b, Duration::from_secs(5), std::future::pending());
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
        let (end, moved) = relay.await.unwrap();
        assert!(matches!(end, RelayEnd::Finished), "{end:?}");
        assert_eq!(
            moved,
            Transferred {
                up: 100_000,
                down: 22
            }
        );
    }

    #[tokio::test(start_paused = true)]
    async fn idle_relays_end_and_hold_no_buffer() {
        let pool = Carriers::new(false);
        let (_client, a) = tokio::io::duplex(64);
        let (b, _server) = tokio::io::duplex(64);
        let (end, _) = relay_streams(
            a,
            b,
            Duration::from_secs(30),
            &pool,
            &Meters::default(),
            std::future::pending(),
        )
        .await;
        assert!(matches!(end, RelayEnd::IdleTimeout), "{end:?}");
        // Both directions borrowed a buffer to poll and gave it back when nothing came.
        assert!(pool.buffers.lock().unwrap().len() <= 2);
    }

    #[tokio::test]
    async fn stop_ends_a_relay_and_keeps_its_counts() {
        let (mut client, a) = tokio::io::duplex(64);
        let (b, mut server) = tokio::io::duplex(64);
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let relay = run(a, b, Duration::from_secs(30), async {
            let _ = rx.await;
        });
        client.write_all(b"12345").await.unwrap();
        let mut five = [0u8; 5];
        server.read_exact(&mut five).await.unwrap();
        tx.send(()).unwrap();
        let (end, moved) = relay.await.unwrap();
        assert!(matches!(end, RelayEnd::Stopped), "{end:?}");
        assert_eq!(moved.up, 5);
    }

    /// A stream whose reads fail.
    struct Broken;

    impl AsyncRead for Broken {
        fn poll_read(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            _: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            Poll::Ready(Err(io::ErrorKind::ConnectionReset.into()))
        }
    }

    impl AsyncWrite for Broken {
        fn poll_write(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            b: &[u8],
        ) -> Poll<io::Result<usize>> {
            Poll::Ready(Ok(b.len()))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn a_failure_names_the_side_that_failed() {
        let (_client, a) = tokio::io::duplex(64);
        let (end, _) = run(a, Broken, Duration::from_secs(5), std::future::pending())
            .await
            .unwrap();
        assert!(
            matches!(end, RelayEnd::Failed(Side::Upstream, _)),
            "{end:?}"
        );
        let (_server, b) = tokio::io::duplex(64);
        let (end, _) = run(Broken, b, Duration::from_secs(5), std::future::pending())
            .await
            .unwrap();
        assert!(matches!(end, RelayEnd::Failed(Side::Client, _)), "{end:?}");
    }
}

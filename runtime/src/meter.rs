//! Byte counters that move with the bytes: a stream wrapper that adds each write to a
//! counter as it happens, so a long tunnel shows its traffic while it flows, not only when it
//! ends.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use metrics::Counter;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// `S`, with every byte written into it added to a counter (one atomic add per write, no
/// allocation). Reads pass through untouched: the other direction's wrapper counts them
/// where they are written.
#[derive(Debug)]
pub struct Metered<S> {
    inner: S,
    written: Counter,
}

impl<S> Metered<S> {
    /// Counts the bytes written into `inner` on `written`.
    pub fn new(inner: S, written: Counter) -> Self {
        Self { inner, written }
    }

    /// The wrapped stream.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Metered<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Metered<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let written = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = written {
            self.written.increment(n as u64);
        }
        written
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let written = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = written {
            self.written.increment(n as u64);
        }
        written
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
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    struct Probe(Arc<AtomicU64>);

    impl metrics::CounterFn for Probe {
        fn increment(&self, value: u64) {
            self.0.fetch_add(value, Ordering::Relaxed);
        }
        fn absolute(&self, value: u64) {
            self.0.store(value, Ordering::Relaxed);
        }
    }

    #[tokio::test]
    async fn each_write_is_counted_as_it_happens() {
        let total = Arc::new(AtomicU64::new(0));
        let (a, mut b) = tokio::io::duplex(64);
        let mut a = Metered::new(a, Counter::from_arc(Arc::new(Probe(total.clone()))));
        a.write_all(b"hello").await.unwrap();
        assert_eq!(total.load(Ordering::Relaxed), 5);
        a.write_all(b", world").await.unwrap();
        assert_eq!(total.load(Ordering::Relaxed), 12);
        let mut got = [0u8; 12];
        b.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"hello, world");
        // Reads are not counted here.
        b.write_all(b"x").await.unwrap();
        a.read_exact(&mut [0u8; 1]).await.unwrap();
        assert_eq!(total.load(Ordering::Relaxed), 12);
    }
}

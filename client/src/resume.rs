//! Carrying one local connection through a resumable stream ([`bamf_proto::resume`]): over
//! the end-to-end session while it lasts, and over a new one after it breaks.
//!
//! [`carry`] copies between the local connection (the application's socket, or stdio) and an
//! *attachment* (an end-to-end session with the other side). Bytes read from the application
//! are kept in a replay buffer until the other side acknowledges them; when the buffer holds
//! [`Settings::buffer`] bytes the application is not read (backpressure, never an error).
//! When the attachment breaks (reset, EOF without the stream's end, nothing heard for
//! [`Settings::silence`]), [`Reattach::reattach`] makes a new one within
//! [`Settings::resume_deadline`], both sides say how much they have received, and each sends
//! again from there. The application sees a pause.
//!
//! Reading and writing run as two futures of one task, so that each side always reads the
//! other's frames while it waits to write (two bulk senders cannot block each other).

use std::future::Future;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use bamf_proto::resume::{
    CloseReason, Header, Incoming, MAX_DATA, MAX_HEADER_LEN, Outgoing, StreamError,
};
use bytes::{Buf, BufMut, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::sync::Notify;
use tokio::time::Instant;

/// How a resumable stream behaves.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// Bytes kept for replay per direction at most; beyond, the application is not read.
    pub buffer: usize,
    /// How long a broken stream may take to attach again before it ends `resume_timeout`.
    pub resume_deadline: Duration,
    /// A `PING` goes out after this long without sending anything.
    pub keepalive: Duration,
    /// An attachment that brings nothing for this long is broken.
    pub silence: Duration,
    /// No application byte either way for this long ends the stream.
    pub idle: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            buffer: 4 * 1024 * 1024,
            resume_deadline: Duration::from_secs(60),
            keepalive: Duration::from_secs(10),
            silence: Duration::from_secs(30),
            idle: Duration::from_secs(3600),
        }
    }
}

/// How a resumable stream ended.
#[derive(Debug)]
pub enum End {
    /// Both directions ended and were acknowledged.
    Finished,
    /// The other side closed it abnormally.
    PeerClosed(CloseReason),
    /// Reading or writing the application's side failed.
    LocalError(io::Error),
    /// No application byte moved for [`Settings::idle`].
    IdleTimeout,
    /// It could not attach again within [`Settings::resume_deadline`] (or was told it never
    /// will: the session ended).
    ResumeTimeout,
    /// The caller's stop signal.
    Stopped,
    /// The other side broke the protocol.
    Protocol(StreamError),
}

impl End {
    /// As logged and reported.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Finished => "closed",
            Self::PeerClosed(_) => "peer_closed",
            Self::LocalError(_) => "local_error",
            Self::IdleTimeout => "idle_timeout",
            Self::ResumeTimeout => "resume_timeout",
            Self::Stopped => "stopped",
            Self::Protocol(_) => "protocol_error",
        }
    }
}

/// What a stream carried and how it ended.
#[derive(Debug)]
pub struct Report {
    /// Why it ended.
    pub end: End,
    /// Bytes read from the application (and sent).
    pub sent: u64,
    /// Bytes delivered to the application.
    pub received: u64,
    /// Attachments after the first.
    pub reattached: u32,
    /// Time spent detached, in all.
    pub paused: Duration,
}

/// Makes a new attachment after a break.
pub trait Reattach<S> {
    /// A new end-to-end session for the same stream, or `None` when there will never be one
    /// (the session ended); called again after each break. [`carry`] bounds it with
    /// [`Settings::resume_deadline`].
    fn reattach(&mut self) -> impl Future<Output = Option<S>> + Send;

    /// Resolves when a newer attachment is waiting although the current one looks alive
    /// (the other side attached again first); the current one is then dropped.
    fn superseded(&mut self) -> impl Future<Output = ()> + Send {
        std::future::pending()
    }
}

/// Why one attachment stopped.
enum Step {
    /// The path broke: attach again.
    Broken,
    /// The stream is over.
    Ended(End),
    /// Our side finished (the writer closed its half); wait for the reader.
    WriterDone,
}

/// The sending direction, kept across attachments.
struct Sender {
    out: Outgoing,
    /// Bytes `[out.acked.min(out.end), out.end)`.
    buf: BytesMut,
}

/// What the reader tells the writer.
struct Signals {
    /// The peer acknowledged up to here.
    acked: AtomicU64,
    /// The highest offset ever sent (acknowledgements may not pass it).
    sent: AtomicU64,
    /// Delivered to the application.
    received: AtomicU64,
    /// The peer's FIN was delivered.
    peer_fin: AtomicBool,
    /// Our stream's length with its FIN, once the application's side ended (else `u64::MAX`):
    /// an acknowledgement of exactly this means the peer has all of it.
    fin_total: AtomicU64,
    /// An acknowledgement should go out now, not after [`ACK_DELAY`].
    ack_now: AtomicBool,
    /// An application byte moved (for the idle deadline).
    active: AtomicBool,
    /// Something for the writer to do: an ACK due, room in the buffer.
    wake: Notify,
}

/// Acknowledgements of a trickle wait this long to go out together.
const ACK_DELAY: Duration = Duration::from_millis(100);

/// Carries `local` through `first` and the attachments `reattach` makes, until the stream
/// ends, `stop` fires, or it cannot attach again in time.
///
/// Not an `async fn`: both streams are split (moved to the heap) before the future is
/// made, so a carried stream's future never holds a second copy of the session's TLS state.
pub fn carry<'a, L, S, R>(
    local: L,
    first: S,
    reattach: R,
    settings: &'a Settings,
    stop: impl Future<Output = ()> + 'a,
) -> impl Future<Output = Report> + 'a
where
    L: AsyncRead + AsyncWrite + Unpin + 'a,
    S: AsyncRead + AsyncWrite + Unpin + 'a,
    R: Reattach<S> + 'a,
{
    carry_split(
        tokio::io::split(local),
        tokio::io::split(first),
        reattach,
        settings,
        stop,
    )
}

async fn carry_split<L, S, R>(
    (mut lr, mut lw): (ReadHalf<L>, WriteHalf<L>),
    first: (ReadHalf<S>, WriteHalf<S>),
    mut reattach: R,
    settings: &Settings,
    stop: impl Future<Output = ()>,
) -> Report
where
    L: AsyncRead + AsyncWrite + Unpin,
    S: AsyncRead + AsyncWrite + Unpin,
    R: Reattach<S>,
{
    let mut sender = Sender {
        out: Outgoing::default(),
        buf: BytesMut::new(),
    };
    let mut incoming = Incoming::default();
    let signals = Signals {
        acked: AtomicU64::new(0),
        sent: AtomicU64::new(0),
        received: AtomicU64::new(0),
        peer_fin: AtomicBool::new(false),
        fin_total: AtomicU64::new(u64::MAX),
        ack_now: AtomicBool::new(false),
        active: AtomicBool::new(false),
        wake: Notify::new(),
    };
    let mut stop = std::pin::pin!(stop);
    let mut stream = first;
    let mut report = Report {
        end: End::Finished,
        sent: 0,
        received: 0,
        reattached: 0,
        paused: Duration::ZERO,
    };
    let mut idle_since = Instant::now();
    loop {
        let step = tokio::select! {
            step = attachment(
                &mut lr, &mut lw, stream, &mut sender, &mut incoming, &signals, settings,
                &mut idle_since,
            ) => step,
            () = reattach.superseded() => Step::Broken,
            () = &mut stop => Step::Ended(End::Stopped),
        };
        match step {
            Step::Ended(end) => {
                report.end = end;
                break;
            }
            Step::Broken | Step::WriterDone => {
                let detached = Instant::now();
                let next = tokio::select! {
                    // Boxed: a re-attach (dial, handshakes) is large and rare; inline, it
                    // would size every carried stream for its whole life.
                    s = tokio::time::timeout(settings.resume_deadline, Box::pin(reattach.reattach())) => {
                        s.ok().flatten()
                    }
                    () = &mut stop => {
                        report.end = End::Stopped;
                        break;
                    }
                };
                report.paused += detached.elapsed();
                match next {
                    Some(s) => {
                        stream = tokio::io::split(s);
                        report.reattached += 1;
                    }
                    None => {
                        report.end = End::ResumeTimeout;
                        break;
                    }
                }
            }
        }
    }
    report.sent = sender.out.end;
    report.received = incoming.received - u64::from(incoming.fin);
    report
}

/// One attachment: the `RESUME` exchange, then reading, delivering and writing until it
/// breaks or the stream ends.
#[allow(clippy::too_many_arguments)]
async fn attachment<LR, LW, S>(
    lr: &mut LR,
    lw: &mut LW,
    (mut tr, mut tw): (ReadHalf<S>, WriteHalf<S>),
    sender: &mut Sender,
    incoming: &mut Incoming,
    signals: &Signals,
    settings: &Settings,
    idle_since: &mut Instant,
) -> Step
where
    LR: AsyncRead + Unpin,
    LW: AsyncWrite + Unpin,
    S: AsyncRead + AsyncWrite + Unpin,
{
    // Say how much we have, learn how much they have.
    let window = u32::try_from(settings.buffer).unwrap_or(u32::MAX);
    let hello = Header::Resume {
        received: incoming.received,
        window,
    };
    if write_header(&mut tw, hello).await.is_err() {
        return Step::Broken;
    }
    let (peer_has, peer_window) =
        match tokio::time::timeout(settings.silence, read_header(&mut tr)).await {
            Ok(Ok(Header::Resume { received, window })) => (received, window),
            Ok(Ok(_)) => return Step::Ended(close(&mut tw, CloseReason::Protocol, None).await),
            Ok(Err(ReadError::Protocol(e))) => {
                return Step::Ended(close(&mut tw, CloseReason::Protocol, Some(e)).await);
            }
            Ok(Err(ReadError::Io)) | Err(_) => return Step::Broken,
        };
    match sender.out.on_resume(peer_has) {
        Ok(dropped) => drop_front(&mut sender.buf, dropped),
        Err(e) => return Step::Ended(close(&mut tw, CloseReason::Protocol, Some(e)).await),
    }
    signals.acked.store(sender.out.acked, Ordering::Release);
    signals.sent.store(sender.out.sent, Ordering::Release);
    signals.received.store(incoming.received, Ordering::Release);
    signals.peer_fin.store(incoming.fin, Ordering::Release);
    incoming.acked = incoming.received;

    // What arrived and is not delivered yet. A fresh one per attachment: after a break the
    // peer sends again from what was delivered.
    let inbox = Inbox {
        bytes: std::sync::Mutex::new(Chunks::default()),
        fin: AtomicBool::new(incoming.fin),
        ready: Notify::new(),
    };
    let reader = read_loop(
        &mut tr,
        &inbox,
        peer_window,
        incoming.fin,
        signals,
        settings,
    );
    let deliverer = deliver_loop(lw, &inbox, incoming, signals, settings);
    let writer = write_loop(&mut tw, lr, sender, signals, settings, idle_since);
    let mut reader = std::pin::pin!(reader);
    let mut deliverer = std::pin::pin!(deliverer);
    let step = tokio::select! {
        step = &mut reader => step,
        step = &mut deliverer => step,
        step = writer => step,
    };
    match step {
        Step::WriterDone => {
            let rest = async {
                tokio::select! {
                    step = reader => step,
                    step = deliverer => step,
                }
            };
            tokio::time::timeout(settings.silence, rest)
                .await
                .unwrap_or(Step::Broken)
        }
        other => other,
    }
}

/// Bytes received in one attachment and not yet delivered to the application, and whether
/// the peer's FIN follows them. The reader fills it without ever waiting for the
/// application, so acknowledgements always get through; the peer's window bounds it.
struct Inbox {
    bytes: std::sync::Mutex<Chunks>,
    fin: AtomicBool,
    ready: Notify,
}

/// Payloads in arrival order, each a slice of the buffer it was read into (never copied).
#[derive(Default)]
struct Chunks {
    queue: std::collections::VecDeque<BytesMut>,
    len: usize,
}

impl Chunks {
    fn push(&mut self, chunk: BytesMut) {
        self.len += chunk.len();
        self.queue.push_back(chunk);
    }

    fn pop(&mut self) -> Option<BytesMut> {
        let chunk = self.queue.pop_front()?;
        self.len -= chunk.len();
        if self.queue.is_empty() {
            // An idle stream keeps no queue.
            self.queue = std::collections::VecDeque::new();
        }
        Some(chunk)
    }
}

enum ReadError {
    Io,
    Protocol(StreamError),
}

async fn read_header<R: AsyncRead + Unpin>(r: &mut R) -> Result<Header, ReadError> {
    let mut bytes = [0u8; MAX_HEADER_LEN];
    r.read_exact(&mut bytes[..1])
        .await
        .map_err(|_| ReadError::Io)?;
    let len = Header::len_for(bytes[0]).map_err(ReadError::Protocol)?;
    r.read_exact(&mut bytes[1..len])
        .await
        .map_err(|_| ReadError::Io)?;
    Header::parse(&bytes[..len]).map_err(ReadError::Protocol)
}

async fn write_header<W: AsyncWrite + Unpin>(w: &mut W, header: Header) -> io::Result<()> {
    let mut bytes = [0u8; MAX_HEADER_LEN];
    let n = header.write(&mut bytes);
    w.write_all(&bytes[..n]).await?;
    w.flush().await
}

/// Ends the stream abnormally: tells the peer why (best effort) and closes our half.
async fn close<W: AsyncWrite + Unpin>(
    w: &mut W,
    reason: CloseReason,
    error: Option<StreamError>,
) -> End {
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        let _ = write_header(w, Header::Close { reason }).await;
        let _ = w.shutdown().await;
    })
    .await;
    match (reason, error) {
        (_, Some(e)) => End::Protocol(e),
        (CloseReason::Protocol, None) => End::Protocol(StreamError::UnknownFrame(0)),
        (CloseReason::IdleTimeout, None) => End::IdleTimeout,
        (CloseReason::Stopped, None) => End::Stopped,
        (_, None) => End::LocalError(io::Error::other("closed")),
    }
}

fn drop_front(buf: &mut BytesMut, n: u64) {
    let n = usize::try_from(n).unwrap_or(usize::MAX).min(buf.len());
    buf.advance(n);
    if buf.is_empty() {
        // An idle stream keeps no buffer.
        *buf = BytesMut::new();
    }
}

/// `DATA` frames written together at most: one vectored write of up to 256 KiB, which TLS
/// seals as sixteen records and sends in one system call (and the bridge splices in one go).
/// Fewer, larger writes mean fewer wake-ups of every process down the path: measured against
/// four frames, about 6% less CPU per byte across client, bridge and agent.
const FRAMES_PER_WRITE: usize = 16;

/// What one read of the application takes at most: one batch of frames.
const BATCH: usize = FRAMES_PER_WRITE * MAX_DATA;

/// Writes the next `DATA` frames from `buf` (starting at `from`, at most
/// [`FRAMES_PER_WRITE`] of them) without copying them into one buffer: headers and payloads
/// as one vectored write. Returns the payload bytes written.
async fn write_frames<W: AsyncWrite + Unpin>(
    w: &mut W,
    buf: &[u8],
    mut from: usize,
) -> std::io::Result<usize> {
    // On the heap, and only while writing: an idle stream's task keeps no room for a batch.
    let mut heads = Vec::with_capacity(FRAMES_PER_WRITE * MAX_HEADER_LEN);
    let mut frames = Vec::with_capacity(FRAMES_PER_WRITE);
    let mut total = 0;
    while frames.len() < FRAMES_PER_WRITE {
        let n = buf.len().saturating_sub(from).min(MAX_DATA);
        if n == 0 {
            break;
        }
        let mut head = [0u8; MAX_HEADER_LEN];
        #[allow(clippy::cast_possible_truncation)] // n <= MAX_DATA
        let h = Header::Data { len: n as u16 }.write(&mut head);
        heads.extend_from_slice(&head[..h]);
        frames.push((heads.len(), from, n));
        from += n;
        total += n;
    }
    let mut parts = Vec::with_capacity(2 * frames.len());
    let mut head_start = 0;
    for &(head_end, at, n) in &frames {
        parts.push(std::io::IoSlice::new(&heads[head_start..head_end]));
        parts.push(std::io::IoSlice::new(&buf[at..at + n]));
        head_start = head_end;
    }
    write_all_vectored(w, &mut parts).await?;
    Ok(total)
}

/// Writes every byte of `parts`, in order, with vectored writes.
async fn write_all_vectored<W: AsyncWrite + Unpin>(
    w: &mut W,
    mut parts: &mut [std::io::IoSlice<'_>],
) -> std::io::Result<()> {
    std::io::IoSlice::advance_slices(&mut parts, 0);
    while !parts.is_empty() {
        let n = w.write_vectored(parts).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        std::io::IoSlice::advance_slices(&mut parts, n);
    }
    Ok(())
}

/// Bytes the reader asks the attachment for at a time while frames arrive.
const READ_AHEAD: usize = 64 * 1024;

/// Reads the peer's frames, never waiting for the application: data and the FIN into the
/// inbox (at most the peer's window of it), acknowledgements to the writer.
///
/// Frames are parsed out of one read buffer, and a payload goes to the inbox as a slice of
/// it: no allocation or copy per frame. A stream waiting for its peer holds no buffer (the
/// first bytes after a quiet spell are read into a small one on the stack).
async fn read_loop<R>(
    tr: &mut R,
    inbox: &Inbox,
    window: u32,
    mut fin_seen: bool,
    signals: &Signals,
    settings: &Settings,
) -> Step
where
    R: AsyncRead + Unpin,
{
    let mut acked = signals.acked.load(Ordering::Acquire);
    let most = usize::try_from(window)
        .unwrap_or(usize::MAX)
        .saturating_add(MAX_DATA);
    let mut rx = BytesMut::new();
    loop {
        // Read: what completes the frame at the front of the buffer, or anything.
        let read = async {
            if rx.is_empty() {
                let mut first = [0u8; 2 * MAX_HEADER_LEN];
                let n = tr.read(&mut first).await?;
                if n > 0 {
                    rx = BytesMut::with_capacity(READ_AHEAD);
                    rx.extend_from_slice(&first[..n]);
                }
                Ok(n)
            } else {
                if rx.capacity() - rx.len() < MAX_HEADER_LEN + MAX_DATA {
                    rx.reserve(READ_AHEAD);
                }
                tr.read_buf(&mut rx).await
            }
        };
        match tokio::time::timeout(settings.silence, read).await {
            Ok(Ok(n)) if n > 0 => {}
            _ => {
                // EOF after both ends were acknowledged is the normal end.
                let finished =
                    rx.is_empty() && fin_seen && signals.fin_total.load(Ordering::Acquire) == acked;
                return if finished {
                    Step::Ended(End::Finished)
                } else {
                    Step::Broken
                };
            }
        }
        // Every whole frame the buffer holds.
        while let Some(&kind) = rx.first() {
            let len = match Header::len_for(kind) {
                Ok(len) => len,
                Err(e) => return Step::Ended(End::Protocol(e)),
            };
            if rx.len() < len {
                break;
            }
            let header = match Header::parse(&rx[..len]) {
                Ok(h) => h,
                Err(e) => return Step::Ended(End::Protocol(e)),
            };
            match header {
                Header::Data { len: n } => {
                    let n = usize::from(n);
                    if rx.len() < len + n {
                        break;
                    }
                    if fin_seen {
                        return Step::Ended(End::Protocol(StreamError::AfterFin));
                    }
                    rx.advance(len);
                    let payload = rx.split_to(n);
                    {
                        let Ok(mut bytes) = inbox.bytes.lock() else {
                            return Step::Broken;
                        };
                        if bytes.len + n > most {
                            return Step::Ended(End::Protocol(StreamError::OverWindow));
                        }
                        bytes.push(payload);
                    }
                    inbox.ready.notify_one();
                    continue;
                }
                Header::Ack { received } => {
                    if received < acked || received > signals.sent.load(Ordering::Acquire) {
                        return Step::Ended(End::Protocol(StreamError::BadAck(received)));
                    }
                    acked = received;
                    signals.acked.store(received, Ordering::Release);
                    signals.wake.notify_one();
                }
                Header::Fin => {
                    if fin_seen {
                        return Step::Ended(End::Protocol(StreamError::AfterFin));
                    }
                    fin_seen = true;
                    inbox.fin.store(true, Ordering::Release);
                    inbox.ready.notify_one();
                }
                // Any frame shows the path is alive; a ping needs no answer.
                Header::Ping => {}
                Header::Close { reason } => return Step::Ended(End::PeerClosed(reason)),
                Header::Resume { .. } => {
                    return Step::Ended(End::Protocol(StreamError::UnknownFrame(1)));
                }
            }
            rx.advance(len);
        }
        if rx.is_empty() {
            // Drained: an idle stream keeps no buffer.
            rx = BytesMut::new();
        }
    }
}

/// Delivers the inbox to the application, in order, then the FIN as a write shutdown; what
/// it delivered is what the writer acknowledges. Waiting for the application here is the
/// backpressure: the peer's window fills, then its replay buffer, then it stops reading.
async fn deliver_loop<LW>(
    lw: &mut LW,
    inbox: &Inbox,
    incoming: &mut Incoming,
    signals: &Signals,
    settings: &Settings,
) -> Step
where
    LW: AsyncWrite + Unpin,
{
    let ack_every = (settings.buffer as u64 / 4).max(1);
    loop {
        let ready = inbox.ready.notified();
        // Up to FRAMES_PER_WRITE payloads, written together where the application's side
        // takes vectored writes (a socket); one at a time elsewhere. On the heap, as in
        // `write_frames`.
        let chunks: Vec<BytesMut> = match inbox.bytes.lock() {
            Ok(mut bytes) => std::iter::from_fn(|| bytes.pop())
                .take(FRAMES_PER_WRITE)
                .collect(),
            Err(_) => return Step::Broken,
        };
        match chunks.len() {
            1.. => {
                let mut parts: Vec<_> = chunks.iter().map(|c| std::io::IoSlice::new(c)).collect();
                let mut parts = &mut parts[..];
                std::io::IoSlice::advance_slices(&mut parts, 0);
                // Not `write_all_vectored`: what each write took is counted at once, so a
                // break that cancels this loop mid-batch leaves `received` exact (the peer
                // sends again from it).
                while !parts.is_empty() {
                    match lw.write_vectored(parts).await {
                        Ok(0) => {
                            return Step::Ended(End::LocalError(io::ErrorKind::WriteZero.into()));
                        }
                        Ok(n) => {
                            if let Err(e) = incoming.delivered(n) {
                                return Step::Ended(End::Protocol(e));
                            }
                            std::io::IoSlice::advance_slices(&mut parts, n);
                        }
                        Err(e) => return Step::Ended(End::LocalError(e)),
                    }
                }
                if let Err(e) = lw.flush().await {
                    return Step::Ended(End::LocalError(e));
                }
                signals.active.store(true, Ordering::Release);
                signals.received.store(incoming.received, Ordering::Release);
                if incoming.received - incoming.acked >= ack_every {
                    incoming.acked = incoming.received;
                    signals.ack_now.store(true, Ordering::Release);
                }
                signals.wake.notify_one();
            }
            0 if inbox.fin.load(Ordering::Acquire) && !incoming.fin => {
                if let Err(e) = lw.shutdown().await {
                    return Step::Ended(End::LocalError(e));
                }
                if let Err(e) = incoming.on_fin() {
                    return Step::Ended(End::Protocol(e));
                }
                incoming.acked = incoming.received;
                signals.received.store(incoming.received, Ordering::Release);
                signals.peer_fin.store(true, Ordering::Release);
                signals.ack_now.store(true, Ordering::Release);
                signals.wake.notify_one();
            }
            0 => ready.await,
        }
    }
}

/// Sends: data from the replay buffer (again after a resume, then new), the FIN,
/// acknowledgements and keep-alives; reads the application when the buffer has room.
async fn write_loop<W, LR>(
    tw: &mut W,
    lr: &mut LR,
    sender: &mut Sender,
    signals: &Signals,
    settings: &Settings,
    idle_since: &mut Instant,
) -> Step
where
    W: AsyncWrite + Unpin,
    LR: AsyncRead + Unpin,
{
    let mut acked_sent = signals.received.load(Ordering::Acquire);
    let mut last_sent = Instant::now();
    let mut last_ack = last_sent;
    loop {
        // Forget what the peer acknowledged.
        let acked = signals.acked.load(Ordering::Acquire);
        if acked > sender.out.acked {
            match sender.out.on_ack(acked) {
                Ok(dropped) => drop_front(&mut sender.buf, dropped),
                Err(e) => return Step::Ended(close(tw, CloseReason::Protocol, Some(e)).await),
            }
        }
        if signals.active.swap(false, Ordering::AcqRel) {
            *idle_since = Instant::now();
        }
        // Data not yet sent in this attachment.
        if sender.out.next < sender.out.end {
            let from = usize::try_from(sender.out.next - sender.out.acked.min(sender.out.end))
                .unwrap_or(usize::MAX);
            let Ok(n) = write_frames(tw, &sender.buf, from).await else {
                return Step::Broken;
            };
            sender.out.sent(n as u64);
            signals.sent.store(sender.out.sent, Ordering::Release);
            last_sent = Instant::now();
            if sender.out.next < sender.out.end {
                continue;
            }
            if tw.flush().await.is_err() {
                return Step::Broken;
            }
        }
        if sender.out.fin && sender.out.next == sender.out.end {
            if write_header(tw, Header::Fin).await.is_err() {
                return Step::Broken;
            }
            sender.out.sent(1);
            signals.sent.store(sender.out.sent, Ordering::Release);
            last_sent = Instant::now();
        }
        // Acknowledge what we delivered: at once when asked to, else after ACK_DELAY.
        let received = signals.received.load(Ordering::Acquire);
        let peer_fin = signals.peer_fin.load(Ordering::Acquire);
        let urgent = signals.ack_now.swap(false, Ordering::AcqRel);
        if received > acked_sent && (urgent || last_ack.elapsed() >= ACK_DELAY) {
            if write_header(tw, Header::Ack { received }).await.is_err() {
                return Step::Broken;
            }
            acked_sent = received;
            last_ack = Instant::now();
            last_sent = last_ack;
        }
        // Both ends acknowledged: close our half; the reader waits for theirs.
        if sender.out.finished() && peer_fin && acked_sent == received {
            let _ = tokio::time::timeout(Duration::from_secs(2), tw.shutdown()).await;
            return Step::WriterDone;
        }
        let room = settings.buffer.saturating_sub(sender.buf.len()).min(BATCH);
        let reading = !sender.out.fin && room > 0;
        if reading && sender.buf.capacity() - sender.buf.len() < room.min(4096) {
            sender
                .buf
                .reserve(if sender.buf.is_empty() { 1024 } else { room });
        }
        let ack_at = (received > acked_sent).then_some(last_ack + ACK_DELAY);
        let idle_at = *idle_since + settings.idle;
        let ping_at = last_sent + settings.keepalive;
        let mut into = (&mut sender.buf).limit(room);
        tokio::select! {
            read = lr.read_buf(&mut into), if reading => match read {
                Ok(0) => {
                    sender.out.fin = true;
                    signals.fin_total.store(sender.out.total(), Ordering::Release);
                }
                Ok(n) => {
                    if let Err(e) = sender.out.took(n) {
                        return Step::Ended(close(tw, CloseReason::Protocol, Some(e)).await);
                    }
                    *idle_since = Instant::now();
                }
                Err(e) => {
                    let _ = close(tw, CloseReason::LocalError, None).await;
                    return Step::Ended(End::LocalError(e));
                }
            },
            () = signals.wake.notified() => {}
            () = tokio::time::sleep_until(ack_at.unwrap_or(ping_at)), if ack_at.is_some() => {}
            () = tokio::time::sleep_until(ping_at) => {
                if write_header(tw, Header::Ping).await.is_err() {
                    return Step::Broken;
                }
                last_sent = Instant::now();
            }
            () = tokio::time::sleep_until(idle_at) => {
                if !signals.active.swap(false, Ordering::AcqRel) {
                    return Step::Ended(close(tw, CloseReason::IdleTimeout, None).await);
                }
                *idle_since = Instant::now();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use tokio::io::DuplexStream;
    use tokio::sync::mpsc;

    /// A writer that takes at most 5 bytes per call, across the slices it is given.
    struct Dribble(Vec<u8>);

    impl AsyncWrite for Dribble {
        fn poll_write(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            buf: &[u8],
        ) -> std::task::Poll<std::io::Result<usize>> {
            let n = buf.len().min(5);
            self.0.extend_from_slice(&buf[..n]);
            std::task::Poll::Ready(Ok(n))
        }

        fn poll_write_vectored(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            bufs: &[std::io::IoSlice<'_>],
        ) -> std::task::Poll<std::io::Result<usize>> {
            let mut n = 0;
            for b in bufs {
                let take = b.len().min(5 - n);
                self.0.extend_from_slice(&b[..take]);
                n += take;
            }
            std::task::Poll::Ready(Ok(n))
        }

        fn is_write_vectored(&self) -> bool {
            true
        }

        fn poll_flush(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::task::Poll::Ready(Ok(()))
        }

        fn poll_shutdown(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::task::Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn frames_written_in_pieces_arrive_whole() {
        let mut w = Dribble(Vec::new());
        assert_eq!(write_frames(&mut w, b"_hello world", 1).await.unwrap(), 11);
        assert_eq!(w.0, b"\x02\x00\x0bhello world");

        // A full batch of frames in one write, then the rest (the last frame short), then
        // nothing more.
        let batch = BATCH;
        let buf: Vec<u8> = (0..batch + 2 * MAX_DATA + 10).map(|i| i as u8).collect();
        let mut w = Dribble(Vec::new());
        assert_eq!(write_frames(&mut w, &buf, 0).await.unwrap(), batch);
        assert_eq!(
            write_frames(&mut w, &buf, batch).await.unwrap(),
            buf.len() - batch
        );
        let mut rest = &w.0[..];
        let mut got = Vec::new();
        while !rest.is_empty() {
            let len = Header::len_for(rest[0]).unwrap();
            let Header::Data { len: n } = Header::parse(&rest[..len]).unwrap() else {
                panic!("not data");
            };
            got.extend_from_slice(&rest[len..len + usize::from(n)]);
            rest = &rest[len + usize::from(n)..];
        }
        assert_eq!(got, buf);
        assert_eq!(write_frames(&mut w, &buf, buf.len()).await.unwrap(), 0);
    }

    /// Attachments handed over a channel, as a bridge would pair them.
    struct Links(mpsc::UnboundedReceiver<DuplexStream>);

    impl Reattach<DuplexStream> for Links {
        fn reattach(&mut self) -> impl Future<Output = Option<DuplexStream>> + Send {
            self.0.recv()
        }
    }

    /// A "bridge": two attachments joined by a task; aborting it breaks both at once, as a
    /// killed bridge does.
    fn bridge() -> (DuplexStream, DuplexStream, tokio::task::JoinHandle<()>) {
        let (a, mut a_far) = tokio::io::duplex(64 * 1024);
        let (b, mut b_far) = tokio::io::duplex(64 * 1024);
        let task = tokio::spawn(async move {
            let _ = tokio::io::copy_bidirectional(&mut a_far, &mut b_far).await;
        });
        (a, b, task)
    }

    fn pattern(seed: u8, len: usize) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 11) as u8)
            .collect()
    }

    /// An application: writes `data`, then half-closes, while reading everything sent to it.
    async fn application(mut app: DuplexStream, data: Vec<u8>) -> Vec<u8> {
        let (mut r, mut w) = tokio::io::split(&mut app);
        let write = async {
            for chunk in data.chunks(7919) {
                w.write_all(chunk).await.unwrap();
            }
            w.shutdown().await.unwrap();
        };
        let read = async {
            let mut got = Vec::new();
            r.read_to_end(&mut got).await.unwrap();
            got
        };
        tokio::join!(write, read).1
    }

    fn settings() -> Settings {
        Settings {
            buffer: 256 * 1024,
            resume_deadline: Duration::from_secs(5),
            keepalive: Duration::from_millis(200),
            silence: Duration::from_secs(2),
            idle: Duration::from_secs(30),
        }
    }

    #[tokio::test]
    async fn bytes_survive_broken_attachments_exactly_once_both_ways() {
        let (client_links, client_next) = mpsc::unbounded_channel();
        let (agent_links, agent_next) = mpsc::unbounded_channel();
        let (c, a, mut bridge_task) = bridge();
        let (client_app, client_local) = tokio::io::duplex(64 * 1024);
        let (agent_app, agent_local) = tokio::io::duplex(64 * 1024);
        let up = pattern(1, 24 * 1024 * 1024 + 17);
        let down = pattern(2, 16 * 1024 * 1024 + 5);
        let set = settings();
        let client = tokio::spawn(async move {
            carry(
                client_local,
                c,
                Links(client_next),
                &set,
                std::future::pending(),
            )
            .await
        });
        let agent = tokio::spawn(async move {
            carry(
                agent_local,
                a,
                Links(agent_next),
                &set,
                std::future::pending(),
            )
            .await
        });
        let apps = tokio::spawn({
            let (up, down) = (up.clone(), down.clone());
            async move { tokio::join!(application(client_app, up), application(agent_app, down)) }
        });
        // Kill the "bridge" three times mid-transfer; attach through a new one each time.
        for _ in 0..3 {
            tokio::time::sleep(Duration::from_millis(5)).await;
            bridge_task.abort();
            let (c, a, task) = bridge();
            bridge_task = task;
            tokio::time::sleep(Duration::from_millis(20)).await;
            // (A stream already over has dropped its receiver.)
            let _ = client_links.send(c);
            let _ = agent_links.send(a);
        }
        let (client_got, agent_got) = tokio::time::timeout(Duration::from_secs(60), apps)
            .await
            .unwrap()
            .unwrap();
        assert!(client_got == down, "agent → client differs");
        assert!(agent_got == up, "client → agent differs");
        let (client, agent) = (client.await.unwrap(), agent.await.unwrap());
        assert!(matches!(client.end, End::Finished), "{client:?}");
        assert!(matches!(agent.end, End::Finished), "{agent:?}");
        assert_eq!(
            (client.sent, client.received),
            (up.len() as u64, down.len() as u64)
        );
        assert_eq!(
            (agent.sent, agent.received),
            (down.len() as u64, up.len() as u64)
        );
        assert!(
            client.reattached >= 2 && agent.reattached >= 2,
            "{client:?} {agent:?}"
        );
    }

    /// An application that echoes, behind full replay buffers both ways: acknowledgements
    /// must never wait behind data, or the echo loop closes into a deadlock.
    #[tokio::test]
    async fn an_echo_through_full_buffers_does_not_deadlock() {
        let (_cl, client_next) = mpsc::unbounded_channel();
        let (_al, agent_next) = mpsc::unbounded_channel();
        let (c, a, _task) = bridge();
        let (client_app, client_local) = tokio::io::duplex(16 * 1024);
        let (agent_app, agent_local) = tokio::io::duplex(16 * 1024);
        let mut set = settings();
        set.buffer = 64 * 1024;
        tokio::spawn(async move {
            carry(
                client_local,
                c,
                Links(client_next),
                &set,
                std::future::pending(),
            )
            .await
        });
        tokio::spawn(async move {
            carry(
                agent_local,
                a,
                Links(agent_next),
                &set,
                std::future::pending(),
            )
            .await
        });
        tokio::spawn(async move {
            let (mut r, mut w) = tokio::io::split(agent_app);
            let _ = tokio::io::copy(&mut r, &mut w).await;
            let _ = w.shutdown().await;
        });
        let data = pattern(3, 8 * 1024 * 1024);
        let back = tokio::time::timeout(
            Duration::from_secs(60),
            application(client_app, data.clone()),
        )
        .await
        .expect("deadlocked");
        assert!(back == data);
    }

    #[tokio::test]
    async fn a_stream_that_cannot_attach_again_ends_resume_timeout() {
        let (_links, next) = mpsc::unbounded_channel();
        let (c, _a, task) = bridge();
        let (_app, local) = tokio::io::duplex(1024);
        let mut set = settings();
        set.resume_deadline = Duration::from_millis(300);
        let client = tokio::spawn(async move {
            carry(local, c, Links(next), &set, std::future::pending()).await
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        task.abort();
        let report = tokio::time::timeout(Duration::from_secs(5), client)
            .await
            .unwrap()
            .unwrap();
        assert!(matches!(report.end, End::ResumeTimeout), "{report:?}");
        assert!(report.paused >= Duration::from_millis(300));
    }

    #[tokio::test]
    async fn a_slow_reader_slows_the_sender_and_nothing_fails() {
        let (_cl, client_next) = mpsc::unbounded_channel();
        let (_al, agent_next) = mpsc::unbounded_channel();
        let (c, a, _task) = bridge();
        let (mut client_app, client_local) = tokio::io::duplex(1024);
        let (mut agent_app, agent_local) = tokio::io::duplex(1024);
        let set = settings();
        tokio::spawn(async move {
            carry(
                client_local,
                c,
                Links(client_next),
                &set,
                std::future::pending(),
            )
            .await
        });
        tokio::spawn(async move {
            carry(
                agent_local,
                a,
                Links(agent_next),
                &set,
                std::future::pending(),
            )
            .await
        });
        // The client's application writes as fast as it can; the agent's reads 1 KiB every
        // 10 ms. What the sender got rid of stays bounded by the buffers on the way.
        let written = Arc::new(AtomicU64::new(0));
        let count = written.clone();
        tokio::spawn(async move {
            let chunk = vec![7u8; 4096];
            loop {
                if client_app.write_all(&chunk).await.is_err() {
                    break;
                }
                count.fetch_add(chunk.len() as u64, Ordering::Relaxed);
            }
        });
        let mut read = 0u64;
        let mut buf = [0u8; 1024];
        for _ in 0..100 {
            read += agent_app.read(&mut buf).await.unwrap() as u64;
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let ahead = written.load(Ordering::Relaxed) - read;
        // Replay buffer (256 KiB) + three 64 KiB pipes + one frame + the applications' 1 KiB.
        assert!(
            ahead < 256 * 1024 + 4 * 64 * 1024 + 32 * 1024,
            "{ahead} bytes ahead"
        );
        assert!(read >= 100 * 1024 - 1024);
    }

    use std::sync::Arc;
}

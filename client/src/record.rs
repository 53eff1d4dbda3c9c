//! The end-to-end session's record layer: TLS 1.3 records (RFC 8446 §5.2) sealed and opened
//! in place with the traffic keys rustls negotiated.
//!
//! rustls runs the handshake (certificates, signatures, the key schedule) through its
//! unbuffered API, then hands over the traffic secrets: the split it offers for kernel TLS
//! ([`rustls::kernel`]). The records are this module's: [`Sealer`] and [`Opener`] are sans-I/O,
//! [`Session`] carries them over the TCP connection.
//!
//! Why not rustls' own records: its buffered connection reads the socket 4 KiB at a time and
//! copies each record it opens twice (into a new vector, then out to the reader); profiles put
//! those copies at 11–20% of the agent's CPU while it carries bytes. Here the socket is read up
//! to [`READ_SIZE`] at a time and a record is opened where it was read.
//!
//! What this layer refuses, ending the session (the resumable stream then attaches again):
//! anything that fails authentication; handshake messages after the handshake (key updates and
//! tickets: our peers send neither, and tickets are off); alerts other than `close_notify`;
//! and sealing more records under one key than the cipher's confidentiality limit allows (the
//! next attachment's handshake brings new keys).

use std::io;
use std::ops::Range;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::{Buf, BytesMut};
use ring::aead;
use rustls::client::UnbufferedClientConnection;
use rustls::server::UnbufferedServerConnection;
use rustls::unbuffered::{
    ConnectionState, EncodeError, EncodeTlsData, InsufficientSizeError, UnbufferedConnectionCommon,
    UnbufferedStatus,
};
use rustls::{ConnectionTrafficSecrets, SupportedCipherSuite};
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

/// A record's header: content type, legacy version, length.
const HEADER_LEN: usize = 5;
/// The AEAD tag every record ends with.
const TAG_LEN: usize = 16;
/// Plaintext one record carries at most.
pub const MAX_PLAINTEXT: usize = 16 * 1024;
/// A record's length field at most (RFC 8446 §5.2).
const MAX_CIPHERTEXT: usize = MAX_PLAINTEXT + 256;
/// What a sealed record adds to its plaintext.
const OVERHEAD: usize = HEADER_LEN + 1 + TAG_LEN;

const APPLICATION_DATA: u8 = 23;
const ALERT: u8 = 21;
const HANDSHAKE: u8 = 22;
/// The alert that ends a direction cleanly: level warning, description `close_notify`.
const CLOSE_NOTIFY: [u8; 2] = [1, 0];

/// Bytes a session reads from its socket at a time at most.
pub const READ_SIZE: usize = 128 * 1024;

/// Sealed bytes a session holds before its socket takes them: one batch of the resumable
/// stream's frames ([`crate::resume`] writes up to 256 KiB at a time), so a batch leaves in one
/// system call.
pub const SEALED_BUFFER: usize = 256 * 1024;

/// Handshake bytes a session holds at most before the handshake is done (rustls takes
/// handshake messages up to 64 KiB).
const MAX_HANDSHAKE_BUFFER: usize = 80 * 1024;

/// Why the record layer ended a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    /// The bytes are not a TLS 1.3 record's header.
    #[error("a record's header is not a TLS 1.3 record's")]
    Header,
    /// A record longer than TLS allows.
    #[error("a record is longer than TLS allows")]
    Overflow,
    /// A record failed authentication: altered, or not sealed by the peer.
    #[error("a record failed authentication (altered on the way, or not from the peer)")]
    Authentication,
    /// A handshake message after the handshake (a key update or a ticket).
    #[error("a record carries a handshake message, which this session does not take")]
    Handshake,
    /// A record of a content type TLS 1.3 does not carry after the handshake.
    #[error("a record of unknown content type {0}")]
    ContentType(u8),
    /// The peer sent an alert other than `close_notify`.
    #[error("the peer sent TLS alert {0}")]
    Alert(u8),
    /// The keys sealed or opened as many records as the cipher allows.
    #[error("the session's keys reached the cipher's record limit")]
    KeysUsedUp,
}

impl From<RecordError> for io::Error {
    fn from(e: RecordError) -> Self {
        io::Error::new(io::ErrorKind::InvalidData, e)
    }
}

/// One direction's key, nonce base and record count.
struct Keys {
    key: aead::LessSafeKey,
    iv: [u8; aead::NONCE_LEN],
    seq: u64,
    limit: u64,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keys")
            .field("seq", &self.seq)
            .field("limit", &self.limit)
            .finish_non_exhaustive()
    }
}

impl Keys {
    fn new((seq, secrets): (u64, ConnectionTrafficSecrets), limit: u64) -> io::Result<Self> {
        let (algorithm, key, iv) = match secrets {
            ConnectionTrafficSecrets::Aes128Gcm { key, iv } => (&aead::AES_128_GCM, key, iv),
            ConnectionTrafficSecrets::Aes256Gcm { key, iv } => (&aead::AES_256_GCM, key, iv),
            ConnectionTrafficSecrets::Chacha20Poly1305 { key, iv } => {
                (&aead::CHACHA20_POLY1305, key, iv)
            }
            _ => return Err(io::Error::other("the negotiated cipher is not supported")),
        };
        let key = aead::UnboundKey::new(algorithm, key.as_ref())
            .map_err(|_| io::Error::other("the negotiated key does not fit its cipher"))?;
        let iv = iv
            .as_ref()
            .try_into()
            .map_err(|_| io::Error::other("the negotiated IV is not 12 bytes"))?;
        Ok(Self {
            key: aead::LessSafeKey::new(key),
            iv,
            seq,
            limit,
        })
    }

    /// The next record's nonce (the IV xor the record number), counting the record.
    fn next_nonce(&mut self) -> Result<aead::Nonce, RecordError> {
        if self.seq >= self.limit {
            return Err(RecordError::KeysUsedUp);
        }
        let mut nonce = self.iv;
        for (n, s) in nonce[aead::NONCE_LEN - 8..]
            .iter_mut()
            .zip(self.seq.to_be_bytes())
        {
            *n ^= s;
        }
        self.seq += 1;
        Ok(aead::Nonce::assume_unique_for_key(nonce))
    }
}

/// Seals records with the session's sending key.
#[derive(Debug)]
pub struct Sealer(Keys);

impl Sealer {
    /// Starts a record at the end of `out`: room for its header. Its plaintext (at most
    /// [`MAX_PLAINTEXT`]) goes after it, then [`Sealer::seal`] with what this returned.
    pub fn begin(out: &mut Vec<u8>) -> usize {
        let at = out.len();
        out.extend_from_slice(&[0; HEADER_LEN]);
        at
    }

    /// Seals the record begun at `at` as content `kind`: its plaintext is what follows the
    /// header in `out`.
    ///
    /// # Errors
    ///
    /// [`RecordError::KeysUsedUp`] (`out` then ends at `at` again).
    ///
    /// # Panics
    ///
    /// If `at` was not returned by [`Sealer::begin`] on `out`, or the plaintext is longer than
    /// [`MAX_PLAINTEXT`]: the caller's mistake, never the network's.
    pub fn seal(&mut self, out: &mut Vec<u8>, at: usize, kind: u8) -> Result<(), RecordError> {
        let plaintext = out.len() - at - HEADER_LEN;
        assert!(
            plaintext <= MAX_PLAINTEXT,
            "a record's plaintext is too long"
        );
        let nonce = match self.0.next_nonce() {
            Ok(nonce) => nonce,
            Err(e) => {
                out.truncate(at);
                return Err(e);
            }
        };
        out.push(kind);
        let len = u16::try_from(plaintext + 1 + TAG_LEN).expect("at most MAX_CIPHERTEXT");
        let [hi, lo] = len.to_be_bytes();
        let header = [APPLICATION_DATA, 3, 3, hi, lo];
        out[at..at + HEADER_LEN].copy_from_slice(&header);
        let tag = self
            .0
            .key
            .seal_in_place_separate_tag(nonce, aead::Aad::from(header), &mut out[at + HEADER_LEN..])
            .expect("sealing fails only past ring's own length limit, far above a record's");
        out.extend_from_slice(tag.as_ref());
        Ok(())
    }

    /// Whether the key may seal another record.
    pub fn used_up(&self) -> bool {
        self.0.seq >= self.0.limit
    }
}

/// What a record held, once opened.
#[derive(Debug, PartialEq, Eq)]
pub enum Opened {
    /// Application bytes: where they are in the record.
    Data(Range<usize>),
    /// The peer's `close_notify`: it sends nothing more.
    Close,
}

/// Opens records with the session's receiving key.
#[derive(Debug)]
pub struct Opener(Keys);

impl Opener {
    /// The length of the record at the front of `buf` (header included), once its header is
    /// there.
    ///
    /// # Errors
    ///
    /// The header is not a TLS 1.3 record's, or announces more than TLS allows.
    pub fn record_len(buf: &[u8]) -> Result<Option<usize>, RecordError> {
        let Some(header) = buf.get(..HEADER_LEN) else {
            return Ok(None);
        };
        if header[..3] != [APPLICATION_DATA, 3, 3] {
            return Err(RecordError::Header);
        }
        let len = usize::from(u16::from_be_bytes([header[3], header[4]]));
        if len > MAX_CIPHERTEXT {
            return Err(RecordError::Overflow);
        }
        if len < TAG_LEN + 1 {
            return Err(RecordError::Header);
        }
        Ok(Some(HEADER_LEN + len))
    }

    /// Opens `record` (one whole record, header included) in place.
    ///
    /// # Errors
    ///
    /// [`RecordError`]: the record is not one, fails authentication, or is not application
    /// data or `close_notify`. `record` is then garbage.
    pub fn open(&mut self, record: &mut [u8]) -> Result<Opened, RecordError> {
        if Self::record_len(record)? != Some(record.len()) {
            return Err(RecordError::Header);
        }
        let (header, body) = record.split_at_mut(HEADER_LEN);
        let header: [u8; HEADER_LEN] = (&*header).try_into().map_err(|_| RecordError::Header)?;
        let nonce = self.0.next_nonce()?;
        let plaintext = self
            .0
            .key
            .open_in_place(nonce, aead::Aad::from(header), body)
            .map_err(|_| RecordError::Authentication)?;
        // TLSInnerPlaintext: the content, its type, then zeros of padding.
        let end = plaintext
            .iter()
            .rposition(|&b| b != 0)
            .ok_or(RecordError::ContentType(0))?;
        if end > MAX_PLAINTEXT {
            return Err(RecordError::Overflow);
        }
        match plaintext[end] {
            APPLICATION_DATA => Ok(Opened::Data(HEADER_LEN..HEADER_LEN + end)),
            ALERT if plaintext[..end] == CLOSE_NOTIFY => Ok(Opened::Close),
            ALERT => Err(RecordError::Alert(plaintext.get(1).copied().unwrap_or(0))),
            HANDSHAKE => Err(RecordError::Handshake),
            other => Err(RecordError::ContentType(other)),
        }
    }
}

/// The sealer and opener of a session whose handshake rustls finished.
fn keys(
    secrets: rustls::ExtractedSecrets,
    suite: Option<SupportedCipherSuite>,
) -> io::Result<(Sealer, Opener)> {
    let limit = match suite {
        Some(SupportedCipherSuite::Tls13(suite)) => suite.common.confidentiality_limit,
        _ => return Err(io::Error::other("the end-to-end session is not TLS 1.3")),
    };
    Ok((
        Sealer(Keys::new(secrets.tx, limit)?),
        Opener(Keys::new(secrets.rx, limit)?),
    ))
}

/// An end-to-end session after its handshake: application bytes in, records out, over the
/// raw TCP connection the bridge splices.
pub struct Session {
    io: TcpStream,
    rx: Receiving,
    tx: Sending,
    peer: Vec<CertificateDer<'static>>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("peer", &self.io.peer_addr().ok())
            .finish_non_exhaustive()
    }
}

struct Receiving {
    opener: Opener,
    /// Bytes read from the socket; the record at the front is opened in place once whole.
    buf: BytesMut,
    /// The front record's plaintext not yet read.
    plain: Range<usize>,
    /// Where the front record ends, once opened.
    end: usize,
    /// Application bytes opened during the handshake (they came with its last flight).
    early: BytesMut,
    /// The peer's `close_notify` came.
    closed: bool,
    /// A record failed: the session reads nothing more.
    failed: Option<RecordError>,
}

struct Sending {
    sealer: Sealer,
    /// Sealed records, from `written` on not yet taken by the socket.
    buf: Vec<u8>,
    written: usize,
    /// `close_notify` is sealed.
    closing: bool,
}

impl Session {
    /// The client's handshake on `io` with `config` (TLS 1.3, secret extraction enabled),
    /// naming the server `name`.
    ///
    /// # Errors
    ///
    /// The handshake failed (the peer, I/O).
    pub async fn client(
        io: TcpStream,
        config: Arc<rustls::ClientConfig>,
        name: ServerName<'static>,
    ) -> io::Result<Self> {
        let conn = UnbufferedClientConnection::new(config, name).map_err(tls)?;
        handshake(conn, io).await
    }

    /// The server's handshake on `io` with `config` (TLS 1.3, secret extraction enabled).
    ///
    /// # Errors
    ///
    /// The handshake failed (the peer, I/O).
    pub async fn server(io: TcpStream, config: Arc<rustls::ServerConfig>) -> io::Result<Self> {
        let conn = UnbufferedServerConnection::new(config).map_err(tls)?;
        handshake(conn, io).await
    }

    /// The certificate chain the peer presented (verified by the handshake).
    pub fn peer_certificates(&self) -> &[CertificateDer<'static>] {
        &self.peer
    }
}

fn tls(e: rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

/// rustls' client and server unbuffered connections, as one handshake drives them.
trait Handshaking: std::ops::DerefMut<Target = UnbufferedConnectionCommon<Self::Data>> {
    type Data;
    fn process<'c, 'i>(
        &'c mut self,
        incoming: &'i mut [u8],
    ) -> UnbufferedStatus<'c, 'i, Self::Data>;
    fn into_secrets(self) -> Result<rustls::ExtractedSecrets, rustls::Error>;
}

/// The same two calls on rustls' two connection types.
macro_rules! handshaking {
    ($conn:ty, $data:ty) => {
        impl Handshaking for $conn {
            type Data = $data;
            fn process<'c, 'i>(
                &'c mut self,
                incoming: &'i mut [u8],
            ) -> UnbufferedStatus<'c, 'i, Self::Data> {
                self.process_tls_records(incoming)
            }
            fn into_secrets(self) -> Result<rustls::ExtractedSecrets, rustls::Error> {
                self.dangerous_into_kernel_connection().map(|(s, _)| s)
            }
        }
    };
}

handshaking!(
    UnbufferedClientConnection,
    rustls::client::ClientConnectionData
);
handshaking!(
    UnbufferedServerConnection,
    rustls::server::ServerConnectionData
);

/// Drives `conn`'s handshake over `io` until it is done on this side, then takes its keys.
/// Bytes read past the handshake stay in the session's read buffer; application bytes
/// rustls opened with the handshake's last flight are read first.
async fn handshake<C: Handshaking>(mut conn: C, mut io: TcpStream) -> io::Result<Session> {
    enum Next {
        Go,
        Read,
        Done,
    }
    let mut incoming = BytesMut::with_capacity(MAX_PLAINTEXT);
    let mut outgoing = Vec::new();
    let mut early = BytesMut::new();
    loop {
        let UnbufferedStatus { discard, state } = conn.process(&mut incoming);
        let state = match state {
            Ok(state) => state,
            Err(e) => {
                incoming.advance(discard);
                return Err(refuse(&mut conn, &mut io, &mut incoming, e).await);
            }
        };
        let next = match state {
            ConnectionState::EncodeTlsData(mut state) => {
                encode(&mut state, &mut outgoing)?;
                Next::Go
            }
            ConnectionState::TransmitTlsData(state) => {
                io.write_all(&outgoing).await?;
                outgoing.clear();
                state.done();
                Next::Go
            }
            ConnectionState::ReadTraffic(mut state) => {
                while let Some(record) = state.next_record() {
                    early.extend_from_slice(record.map_err(tls)?.payload);
                }
                Next::Go
            }
            // A server may send before the client's last flight came; done is done on both.
            ConnectionState::WriteTraffic(_) => Next::Done,
            ConnectionState::BlockedHandshake => Next::Read,
            ConnectionState::PeerClosed | ConnectionState::Closed => {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            _ => return Err(io::Error::other("unexpected TLS state in the handshake")),
        };
        incoming.advance(discard);
        match next {
            Next::Go => {}
            Next::Done if !conn.is_handshaking() => break,
            Next::Done | Next::Read => {
                if incoming.len() >= MAX_HANDSHAKE_BUFFER {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "the peer's handshake is too large",
                    ));
                }
                incoming.reserve(MAX_PLAINTEXT);
                if io.read_buf(&mut incoming).await? == 0 {
                    return Err(io::ErrorKind::UnexpectedEof.into());
                }
            }
        }
    }
    let peer = conn
        .peer_certificates()
        .map(|chain| chain.iter().map(|c| c.clone().into_owned()).collect())
        .unwrap_or_default();
    let suite = conn.negotiated_cipher_suite();
    let (sealer, opener) = keys(conn.into_secrets().map_err(tls)?, suite)?;
    if incoming.is_empty() {
        incoming = BytesMut::new();
    }
    Ok(Session {
        io,
        rx: Receiving {
            opener,
            buf: incoming,
            plain: 0..0,
            end: 0,
            early,
            closed: false,
            failed: None,
        },
        tx: Sending {
            sealer,
            buf: Vec::new(),
            written: 0,
            closing: false,
        },
        peer,
    })
}

/// Appends the handshake record `state` holds to `out`.
fn encode<Data>(state: &mut EncodeTlsData<'_, Data>, out: &mut Vec<u8>) -> io::Result<()> {
    let at = out.len();
    out.resize(at + MAX_PLAINTEXT, 0);
    let n = match state.encode(&mut out[at..]) {
        Err(EncodeError::InsufficientSize(InsufficientSizeError { required_size })) => {
            out.resize(at + required_size, 0);
            state.encode(&mut out[at..])
        }
        other => other,
    }
    .map_err(io::Error::other)?;
    out.truncate(at + n);
    Ok(())
}

/// The handshake failed with `error`: sends the alert rustls queued for it, so the peer
/// learns why rather than seeing the connection drop, and returns the error.
async fn refuse<C: Handshaking>(
    conn: &mut C,
    io: &mut TcpStream,
    incoming: &mut [u8],
    error: rustls::Error,
) -> io::Error {
    // The alert rustls queued is the one record left to encode (it offers no transmit
    // step after an error: the bytes are sent here).
    let mut alert = Vec::new();
    if let Ok(ConnectionState::EncodeTlsData(mut state)) = conn.process(incoming).state
        && encode(&mut state, &mut alert).is_ok()
    {
        let _ = tokio::time::timeout(ALERT_TIMEOUT, io.write_all(&alert)).await;
    }
    tls(error)
}

/// How long a failed handshake's alert may take to leave.
const ALERT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1);

impl Receiving {
    /// Opens the next whole record in the buffer, if there is one; `Ok(true)` if it did.
    fn open_next(&mut self) -> Result<bool, RecordError> {
        loop {
            if let Some(e) = self.failed {
                return Err(e);
            }
            let len = match Opener::record_len(&self.buf) {
                Ok(Some(len)) if len <= self.buf.len() => len,
                Ok(_) => return Ok(false),
                Err(e) => {
                    self.failed = Some(e);
                    return Err(e);
                }
            };
            match self.opener.open(&mut self.buf[..len]) {
                Ok(Opened::Data(plain)) if plain.is_empty() => self.buf.advance(len),
                Ok(Opened::Data(plain)) => {
                    self.plain = plain;
                    self.end = len;
                    return Ok(true);
                }
                Ok(Opened::Close) => {
                    self.buf.advance(len);
                    self.closed = true;
                    return Ok(true);
                }
                Err(e) => {
                    self.failed = Some(e);
                    return Err(e);
                }
            }
        }
    }

    /// Drops the front record, all of it read.
    fn consume(&mut self) {
        self.buf.advance(self.end);
        self.plain = 0..0;
        self.end = 0;
        if self.buf.is_empty() {
            // A session waiting for its peer holds no buffer.
            self.buf = BytesMut::new();
        }
    }

    /// Reads what the socket has (some bytes, or 0 at its end).
    fn poll_fill(&mut self, io: &TcpStream, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        loop {
            if self.buf.is_empty() {
                // Nothing buffered: wait for bytes before taking room for them.
                self.buf = BytesMut::new();
                ready!(io.poll_read_ready(cx))?;
            }
            let record = Opener::record_len(&self.buf).ok().flatten().unwrap_or(0);
            self.buf
                .reserve(READ_SIZE.max(record.saturating_sub(self.buf.len())));
            match io.try_read_buf(&mut self.buf) {
                Ok(n) => return Poll::Ready(Ok(n)),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if !self.buf.is_empty() {
                        ready!(io.poll_read_ready(cx))?;
                    }
                }
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl Sending {
    fn pending(&self) -> usize {
        self.buf.len() - self.written
    }

    /// Seals up to [`SEALED_BUFFER`] of `parts` less what is pending; returns the bytes taken.
    fn seal(&mut self, parts: &[io::IoSlice<'_>]) -> Result<usize, RecordError> {
        let room = SEALED_BUFFER.saturating_sub(self.pending());
        let total = parts.iter().map(|p| p.len()).sum::<usize>().min(room);
        if total == 0 {
            return Ok(0);
        }
        self.buf
            .reserve(total + total.div_ceil(MAX_PLAINTEXT) * OVERHEAD);
        let mut pieces = parts.iter().map(|p| &p[..]).filter(|p| !p.is_empty());
        let mut piece: &[u8] = &[];
        let mut taken = 0;
        while taken < total {
            if self.sealer.used_up() {
                break;
            }
            let at = Sealer::begin(&mut self.buf);
            let mut record = 0;
            while record < MAX_PLAINTEXT && taken < total {
                if piece.is_empty() {
                    piece = pieces.next().unwrap_or_default();
                }
                let n = piece.len().min(MAX_PLAINTEXT - record).min(total - taken);
                self.buf.extend_from_slice(&piece[..n]);
                piece = &piece[n..];
                record += n;
                taken += n;
            }
            self.sealer.seal(&mut self.buf, at, APPLICATION_DATA)?;
        }
        if taken == 0 {
            return Err(RecordError::KeysUsedUp);
        }
        Ok(taken)
    }

    /// Writes what is sealed until the socket has it all.
    fn poll_drain(&mut self, io: &mut TcpStream, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.written < self.buf.len() {
            let n = ready!(Pin::new(&mut *io).poll_write(cx, &self.buf[self.written..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.written += n;
        }
        // A session with nothing to send holds no buffer.
        self.buf = Vec::new();
        self.written = 0;
        Poll::Ready(Ok(()))
    }
}

impl AsyncRead for Session {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let rx = &mut this.rx;
        if !rx.early.is_empty() {
            let n = rx.early.len().min(out.remaining());
            out.put_slice(&rx.early[..n]);
            rx.early.advance(n);
            if rx.early.is_empty() {
                rx.early = BytesMut::new();
            }
            return Poll::Ready(Ok(()));
        }
        let mut filled = false;
        loop {
            if !rx.plain.is_empty() {
                let n = rx.plain.len().min(out.remaining());
                out.put_slice(&rx.buf[rx.plain.start..rx.plain.start + n]);
                rx.plain.start += n;
                filled |= n > 0;
                if !rx.plain.is_empty() {
                    return Poll::Ready(Ok(()));
                }
                rx.consume();
                if out.remaining() == 0 {
                    return Poll::Ready(Ok(()));
                }
            }
            if rx.closed {
                return Poll::Ready(Ok(()));
            }
            // Whole records already read are opened without another system call.
            match rx.open_next() {
                Ok(true) => continue,
                Ok(false) => {}
                Err(_) if filled => return Poll::Ready(Ok(())),
                Err(e) => return Poll::Ready(Err(e.into())),
            }
            if filled {
                return Poll::Ready(Ok(()));
            }
            match ready!(rx.poll_fill(&this.io, cx)) {
                Ok(0) => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the peer closed the connection without close_notify",
                    )));
                }
                Ok(_) => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl AsyncWrite for Session {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_vectored(cx, &[io::IoSlice::new(buf)])
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        parts: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let tx = &mut this.tx;
        if tx.closing {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        if tx.pending() >= SEALED_BUFFER {
            ready!(tx.poll_drain(&mut this.io, cx))?;
        }
        let taken = tx.seal(parts)?;
        // Send what the socket takes now; the rest goes with the next write or the flush.
        if let Poll::Ready(Err(e)) = tx.poll_drain(&mut this.io, cx)
            && taken == 0
        {
            return Poll::Ready(Err(e));
        }
        Poll::Ready(Ok(taken))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.tx.poll_drain(&mut this.io, cx))?;
        Pin::new(&mut this.io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let tx = &mut this.tx;
        if !tx.closing {
            tx.closing = true;
            let at = Sealer::begin(&mut tx.buf);
            tx.buf.extend_from_slice(&CLOSE_NOTIFY);
            // Keys used up: the peer sees the connection end without it, as a break.
            let _ = tx.sealer.seal(&mut tx.buf, at, ALERT);
        }
        ready!(tx.poll_drain(&mut this.io, cx))?;
        Pin::new(&mut this.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::crypto::cipher::{AeadKey, Iv};

    fn pair(limit: u64) -> (Sealer, Opener) {
        let secrets = || {
            (
                0,
                ConnectionTrafficSecrets::Aes256Gcm {
                    key: AeadKey::from([7; 32]),
                    iv: Iv::from([9; 12]),
                },
            )
        };
        (
            Sealer(Keys::new(secrets(), limit).unwrap()),
            Opener(Keys::new(secrets(), limit).unwrap()),
        )
    }

    fn sealed(sealer: &mut Sealer, kind: u8, plaintext: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let at = Sealer::begin(&mut out);
        out.extend_from_slice(plaintext);
        sealer.seal(&mut out, at, kind).unwrap();
        out
    }

    const SERVER_NAME: &str = "server.test.invalid";

    fn name() -> ServerName<'static> {
        ServerName::try_from(SERVER_NAME).unwrap()
    }

    /// A certificate for [`SERVER_NAME`] and configurations for both sides
    /// (as e2e's: TLS 1.3, secret extraction, no tickets), without client authentication.
    fn configs() -> (Arc<rustls::ClientConfig>, Arc<rustls::ServerConfig>) {
        use rustls_pki_types::PrivateKeyDer;
        use rustls_pki_types::pem::PemObject;
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec![SERVER_NAME.to_owned()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        roots.add(cert.der().clone()).unwrap();
        let mut client = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        client.enable_secret_extraction = true;
        let mut server = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![cert.der().clone()],
                PrivateKeyDer::from_pem_slice(key.serialize_pem().as_bytes()).unwrap(),
            )
            .unwrap();
        server.enable_secret_extraction = true;
        server.send_tls13_tickets = 0;
        (Arc::new(client), Arc::new(server))
    }

    async fn connected() -> (TcpStream, TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let dial = TcpStream::connect(listener.local_addr().unwrap());
        let (dialled, accepted) = tokio::join!(dial, listener.accept());
        (dialled.unwrap(), accepted.unwrap().0)
    }

    /// A client session and a server session, handshaken with each other.
    async fn sessions() -> (Session, Session) {
        let (client, server) = configs();
        let (c, s) = connected().await;
        let (ours, theirs) = tokio::join!(
            Session::client(c, client, name()),
            Session::server(s, server)
        );
        (ours.unwrap(), theirs.unwrap())
    }

    /// Sends `bytes` one way and the same back the other, at once, then closes; returns what
    /// each side read (to its end: `close_notify`).
    async fn exchange<A, B>(mut a: A, mut b: B, bytes: &[u8]) -> (Vec<u8>, Vec<u8>)
    where
        A: AsyncRead + AsyncWrite + Unpin,
        B: AsyncRead + AsyncWrite + Unpin,
    {
        let (mut ar, mut aw) = tokio::io::split(&mut a);
        let (mut br, mut bw) = tokio::io::split(&mut b);
        let (_, _, got_a, got_b) = tokio::join!(
            async {
                aw.write_all(bytes).await.unwrap();
                aw.shutdown().await.unwrap();
            },
            async {
                bw.write_all(bytes).await.unwrap();
                bw.shutdown().await.unwrap();
            },
            async {
                let mut v = Vec::new();
                ar.read_to_end(&mut v).await.unwrap();
                v
            },
            async {
                let mut v = Vec::new();
                br.read_to_end(&mut v).await.unwrap();
                v
            },
        );
        (got_a, got_b)
    }

    fn sample(len: usize) -> Vec<u8> {
        (0..len)
            .map(|i| u8::try_from(i * 31 % 251).unwrap())
            .collect()
    }

    #[tokio::test]
    async fn a_session_speaks_tls_with_rustls_own_records_either_way() {
        let (client, server) = configs();
        let bytes = sample(3 * 1024 * 1024 + 17);
        // Our client, rustls' server (its buffered connection, the reference).
        let (c, s) = connected().await;
        let acceptor = tokio_rustls::TlsAcceptor::from(server.clone());
        let (ours, theirs) = tokio::join!(
            Session::client(c, client.clone(), name()),
            acceptor.accept(s)
        );
        let (got_ours, got_theirs) = exchange(ours.unwrap(), theirs.unwrap(), &bytes).await;
        assert!(got_ours == bytes && got_theirs == bytes);
        // rustls' client, our server (bytes that come with the client's last handshake flight:
        // `bytes_that_came_with_the_last_handshake_flight_are_read_first`).
        let (c, s) = connected().await;
        let name = ServerName::try_from(SERVER_NAME).unwrap();
        let connector = tokio_rustls::TlsConnector::from(client);
        let (theirs, ours) = tokio::join!(connector.connect(name, c), Session::server(s, server));
        let (got_theirs, got_ours) = exchange(theirs.unwrap(), ours.unwrap(), &bytes).await;
        assert!(got_ours == bytes && got_theirs == bytes);
    }

    #[tokio::test]
    async fn a_quiet_session_holds_no_buffer() {
        let (mut ours, mut theirs) = sessions().await;
        let bytes = sample(5 * MAX_PLAINTEXT + 3);
        ours.write_all(&bytes).await.unwrap();
        ours.flush().await.unwrap();
        let mut got = vec![0; bytes.len()];
        theirs.read_exact(&mut got).await.unwrap();
        assert_eq!(got, bytes);
        // Both ends idle now: nothing kept for reading or for writing.
        assert_eq!((ours.tx.buf.capacity(), ours.rx.buf.capacity()), (0, 0));
        assert_eq!((theirs.tx.buf.capacity(), theirs.rx.buf.capacity()), (0, 0));
    }

    #[tokio::test]
    async fn bytes_that_came_with_the_last_handshake_flight_are_read_first() {
        let (client, server) = configs();
        // Client ↔ relay ↔ server. The relay passes the ClientHello at once, then holds what
        // the client sends next (its last flight and its first bytes) and passes it in one
        // write: the server reads both at once, as a busy network may deliver them.
        let (c, relay_client) = connected().await;
        let (relay_server, s) = connected().await;
        tokio::spawn(async move {
            let (mut from_client, mut to_client) = relay_client.into_split();
            let (mut from_server, mut to_server) = relay_server.into_split();
            tokio::spawn(async move {
                let _ = tokio::io::copy(&mut from_server, &mut to_client).await;
            });
            let mut buf = vec![0u8; 64 * 1024];
            let n = from_client.read(&mut buf).await.unwrap();
            to_server.write_all(&buf[..n]).await.unwrap();
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            let n = from_client.read(&mut buf).await.unwrap();
            to_server.write_all(&buf[..n]).await.unwrap();
            let _ = tokio::io::copy(&mut from_client, &mut to_server).await;
        });
        let connector = tokio_rustls::TlsConnector::from(client);
        let theirs = async {
            let mut tls = connector.connect(name(), c).await.unwrap();
            tls.write_all(b"first bytes").await.unwrap();
            tls.flush().await.unwrap();
            tls
        };
        let (_theirs, ours) = tokio::join!(theirs, Session::server(s, server));
        let mut ours = ours.unwrap();
        assert_eq!(
            &ours.rx.early[..],
            b"first bytes",
            "not read with the handshake"
        );
        let mut got = [0u8; 11];
        ours.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"first bytes");
        assert_eq!(ours.rx.early.capacity(), 0, "kept after it was read");
    }

    #[tokio::test]
    async fn a_refused_handshake_tells_the_peer_why() {
        // A client that trusts another certificate refuses the server's; the server hears
        // the alert rather than an unexplained end of the connection.
        let (_, server) = configs();
        let (client, _) = configs();
        let (c, s) = connected().await;
        let (ours, theirs) = tokio::join!(
            Session::client(c, client, name()),
            Session::server(s, server)
        );
        let client_error = ours.unwrap_err().to_string();
        assert!(
            client_error.contains("invalid peer certificate"),
            "{client_error}"
        );
        let server_error = theirs.unwrap_err().to_string();
        assert!(server_error.contains("alert"), "{server_error}");
    }

    #[tokio::test]
    async fn bytes_altered_on_the_way_end_the_session_with_an_error() {
        let (mut ours, theirs) = sessions().await;
        // The server's socket, as a bridge could alter it: a record with one bit flipped.
        let mut raw = theirs.io;
        let mut record = sealed(&mut { theirs.tx }.sealer, APPLICATION_DATA, b"marker");
        record[HEADER_LEN] ^= 0x80;
        raw.write_all(&record).await.unwrap();
        let mut buf = [0u8; 64];
        let e = ours.read(&mut buf).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        assert!(e.to_string().contains("authentication"), "{e}");
        // And it stays ended.
        assert!(ours.read(&mut buf).await.is_err());
    }

    #[tokio::test]
    async fn a_session_whose_key_is_used_up_fails_its_writes_and_its_peer_reads_what_came() {
        let (mut ours, mut theirs) = sessions().await;
        // Two records left under this key.
        ours.tx.sealer.0.limit = ours.tx.sealer.0.seq + 2;
        let bytes = sample(3 * MAX_PLAINTEXT);
        // Half of it fits the two records left; the rest is refused.
        assert_eq!(ours.write(&bytes).await.unwrap(), 2 * MAX_PLAINTEXT);
        let e = ours.write(&bytes[2 * MAX_PLAINTEXT..]).await.unwrap_err();
        assert!(e.to_string().contains("record limit"), "{e}");
        ours.flush().await.unwrap();
        let mut got = vec![0; 2 * MAX_PLAINTEXT];
        theirs.read_exact(&mut got).await.unwrap();
        assert_eq!(got, bytes[..2 * MAX_PLAINTEXT]);
    }

    #[test]
    fn records_open_in_order_where_they_lie() {
        let (mut sealer, mut opener) = pair(u64::MAX);
        for text in [&b"hello"[..], &[0x5a; MAX_PLAINTEXT], b"x"] {
            let mut record = sealed(&mut sealer, APPLICATION_DATA, text);
            assert_eq!(record.len(), text.len() + OVERHEAD);
            assert_eq!(Opener::record_len(&record), Ok(Some(record.len())));
            let Ok(Opened::Data(range)) = opener.open(&mut record) else {
                panic!("not data");
            };
            assert_eq!(&record[range], text);
        }
        let mut close = sealed(&mut sealer, ALERT, &CLOSE_NOTIFY);
        assert_eq!(opener.open(&mut close), Ok(Opened::Close));
    }

    #[test]
    fn an_altered_reordered_or_foreign_record_is_refused() {
        let (mut sealer, mut opener) = pair(u64::MAX);
        let first = sealed(&mut sealer, APPLICATION_DATA, b"first");
        let second = sealed(&mut sealer, APPLICATION_DATA, b"second");
        // Out of order: the second record under the first one's nonce.
        assert_eq!(
            opener.open(&mut second.clone()),
            Err(RecordError::Authentication)
        );
        let (mut sealer, mut opener) = pair(u64::MAX);
        let mut altered = sealed(&mut sealer, APPLICATION_DATA, b"first");
        assert_eq!(altered, first);
        let last = altered.len() - 1;
        altered[last] ^= 1;
        assert_eq!(opener.open(&mut altered), Err(RecordError::Authentication));
        // A handshake message (a key update) or another alert ends the session.
        let (mut sealer, mut opener) = pair(u64::MAX);
        let mut update = sealed(&mut sealer, HANDSHAKE, &[24, 0, 0, 1, 0]);
        assert_eq!(opener.open(&mut update), Err(RecordError::Handshake));
        let mut alert = sealed(&mut sealer, ALERT, &[2, 42]);
        assert_eq!(opener.open(&mut alert), Err(RecordError::Alert(42)));
    }

    #[test]
    fn headers_that_are_not_tls_13_records_are_refused() {
        assert_eq!(Opener::record_len(&[23, 3]), Ok(None));
        for (header, refused) in [
            ([22, 3, 3, 0, 40], RecordError::Header), // a handshake record
            ([23, 3, 1, 0, 40], RecordError::Header), // another version
            ([23, 3, 3, 0, 16], RecordError::Header), // shorter than a tag and a type
            ([23, 3, 3, 0x41, 1], RecordError::Overflow), // longer than TLS allows
        ] {
            assert_eq!(Opener::record_len(&header), Err(refused), "{header:?}");
        }
        // Garbage of every length never panics.
        let (_, mut opener) = pair(u64::MAX);
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        for len in 0..2000 {
            let mut bytes: Vec<u8> = (0..len)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    state.to_le_bytes()[0]
                })
                .collect();
            if len > 5 {
                bytes[..5].copy_from_slice(&[23, 3, 3, 0, 0]);
                let body = u16::try_from(len - 5).unwrap_or(u16::MAX).to_be_bytes();
                bytes[3..5].copy_from_slice(&body);
            }
            assert!(opener.open(&mut bytes).is_err());
        }
    }

    #[test]
    fn a_key_seals_no_more_records_than_its_limit() {
        let (mut sealer, mut opener) = pair(2);
        let mut a = sealed(&mut sealer, APPLICATION_DATA, b"a");
        let mut b = sealed(&mut sealer, APPLICATION_DATA, b"b");
        assert!(sealer.used_up());
        let mut out = vec![1, 2, 3];
        let at = Sealer::begin(&mut out);
        out.extend_from_slice(b"c");
        assert_eq!(
            sealer.seal(&mut out, at, APPLICATION_DATA),
            Err(RecordError::KeysUsedUp)
        );
        assert_eq!(out, [1, 2, 3]);
        assert!(opener.open(&mut a).is_ok());
        assert!(opener.open(&mut b).is_ok());
        let mut c = a.clone();
        assert_eq!(opener.open(&mut c), Err(RecordError::KeysUsedUp));
    }
}

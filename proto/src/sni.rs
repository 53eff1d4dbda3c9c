//! TLS ClientHello detection: the server name (SNI) and ALPN list, without terminating TLS.
//!
//! [`parse`] takes every byte received on a connection so far and answers: need more bytes
//! (`Ok(None)`), found ([`ClientHello`]), not TLS, too large, or malformed. It handles a hello
//! split across any number of reads *and* across several handshake records (RFC 8446 §5.1
//! lets a client fragment a handshake message over records; HAProxy's `req.ssl_sni` does not
//! follow it), and post-quantum hellos of several KiB. A hello that fits one record is parsed
//! in place; a fragmented one is reassembled into one buffer bounded by the caller's cap.
//!
//! The caller keeps the raw bytes and replays them upstream unchanged: this module only reads.

use crate::HostName;
use crate::host::HostNameError;

/// Bytes in a TLS record header: content type, legacy version, length.
pub const RECORD_HEADER_LEN: usize = 5;

/// Largest plaintext record payload (RFC 8446 §5.1: 2^14).
pub const MAX_RECORD_PAYLOAD: usize = 1 << 14;

/// Default cap on the raw bytes of a hello, record headers included.
///
/// 32 KiB holds 16 KiB of handshake data (two full records) with room to spare: today's
/// post-quantum hellos are about 2 KiB, hybrid ML-KEM-1024 ones about 3 KiB.
pub const DEFAULT_MAX_HELLO_LEN: usize = 32 * 1024;

const CONTENT_TYPE_HANDSHAKE: u8 = 0x16;
const HANDSHAKE_CLIENT_HELLO: u8 = 0x01;
const HANDSHAKE_HEADER_LEN: usize = 4;
const EXTENSION_SERVER_NAME: u16 = 0;
const EXTENSION_ALPN: u16 = 16;
const NAME_TYPE_HOST_NAME: u8 = 0;

/// What the front door needs from a ClientHello.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientHello {
    /// The `host_name` from the server_name extension, lower-cased; `None` when absent.
    pub server_name: Option<HostName>,
    /// The ALPN protocol names offered, in the client's order; empty when absent.
    pub alpn: AlpnList,
    /// How many bytes at the start of the buffer the records carrying the hello take.
    pub len: usize,
}

/// ALPN protocol names as sent on the wire: each a length byte and 1 to 255 bytes.
///
/// Kept in wire form (one allocation) and validated on construction.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct AlpnList(Vec<u8>);

impl AlpnList {
    /// The protocol names in the client's order.
    pub fn iter(&self) -> impl Iterator<Item = &[u8]> {
        let mut rest = self.0.as_slice();
        std::iter::from_fn(move || {
            let (&len, tail) = rest.split_first()?;
            let (name, tail) = tail.split_at_checked(usize::from(len))?;
            rest = tail;
            Some(name)
        })
    }

    /// Whether the client offered no ALPN.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl std::fmt::Debug for AlpnList {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.iter().map(String::from_utf8_lossy))
            .finish()
    }
}

/// Why the bytes will never become a routable ClientHello.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HelloError {
    /// The first bytes are not a TLS handshake record (plain HTTP, SSLv2, garbage).
    #[error("not TLS")]
    NotTls,
    /// The hello (or one of its records) is larger than the cap.
    #[error("client hello larger than the limit")]
    TooLarge,
    /// A TLS handshake record whose contents break the protocol.
    #[error("malformed client hello: {0}")]
    Malformed(#[from] Malformed),
}

/// Which rule a malformed hello breaks. Stable names: they become metric and log values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Malformed {
    /// A zero-length handshake record (RFC 8446 §5.1 forbids them).
    #[error("empty handshake record")]
    EmptyRecord,
    /// A non-handshake record arrived before the hello was complete.
    #[error("record of another type inside the hello")]
    InterleavedRecord,
    /// The first handshake message is not a ClientHello.
    #[error("first handshake message is not a client hello")]
    NotClientHello,
    /// A length field points past the end of its enclosing structure.
    #[error("length field overruns its container")]
    Truncated,
    /// Bytes left over inside a structure that should have been consumed exactly.
    #[error("trailing bytes inside a structure")]
    TrailingBytes,
    /// A vector that must not be empty is, or a cipher-suite list has odd length.
    #[error("invalid vector length")]
    BadVector,
    /// Two extensions of the same type (RFC 8446 §4.2).
    #[error("duplicate extension")]
    DuplicateExtension,
    /// More than one `host_name` entry (RFC 6066 §3).
    #[error("more than one host name")]
    DuplicateServerName,
    /// The `host_name` is not a valid DNS host name.
    #[error("invalid server name: {0}")]
    InvalidServerName(HostNameError),
    /// An empty ALPN protocol name (RFC 7301 §3.1).
    #[error("empty ALPN protocol name")]
    EmptyAlpnName,
}

impl Malformed {
    /// A short, stable, snake_case name for metrics and logs.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::EmptyRecord => "empty_record",
            Self::InterleavedRecord => "interleaved_record",
            Self::NotClientHello => "not_client_hello",
            Self::Truncated => "truncated",
            Self::TrailingBytes => "trailing_bytes",
            Self::BadVector => "bad_vector",
            Self::DuplicateExtension => "duplicate_extension",
            Self::DuplicateServerName => "duplicate_server_name",
            Self::InvalidServerName(_) => "invalid_server_name",
            Self::EmptyAlpnName => "empty_alpn_name",
        }
    }
}

/// Parses the ClientHello at the start of `buf`, the bytes received so far.
///
/// `max_len` caps the raw bytes (record headers included) the hello may take; a caller never
/// needs to buffer more than that. Returns `Ok(None)` while more bytes are needed.
///
/// # Errors
///
/// [`HelloError`] as soon as the bytes cannot become a hello within `max_len`: the caller can
/// stop reading at once.
pub fn parse(buf: &[u8], max_len: usize) -> Result<Option<ClientHello>, HelloError> {
    let Some(records) = Records::scan(buf, max_len)? else {
        return Ok(None);
    };
    let body = records.hello_body();
    let mut hello = parse_body(&body)?;
    hello.len = records.end;
    Ok(Some(hello))
}

/// The handshake records that carry one complete ClientHello.
struct Records<'a> {
    buf: &'a [u8],
    /// Where the record that completes the hello ends.
    end: usize,
    /// Length of the ClientHello body (after its 4-byte handshake header).
    body_len: usize,
}

impl<'a> Records<'a> {
    /// Walks record headers until the hello is complete, or says why it never will be.
    fn scan(buf: &'a [u8], max_len: usize) -> Result<Option<Self>, HelloError> {
        let mut pos = 0;
        // Handshake bytes seen so far, and the first four of them (the message header).
        let mut handshake_len = 0usize;
        let mut header = [0u8; HANDSHAKE_HEADER_LEN];
        let mut needed: Option<usize> = None;
        loop {
            let rest = &buf[pos..];
            // Classify as early as the bytes allow, so garbage is refused on its first byte.
            if let Some(&content_type) = rest.first()
                && content_type != CONTENT_TYPE_HANDSHAKE
            {
                return Err(if pos == 0 {
                    HelloError::NotTls
                } else {
                    Malformed::InterleavedRecord.into()
                });
            }
            if let Some(&major) = rest.get(1)
                && major != 0x03
            {
                return Err(if pos == 0 {
                    HelloError::NotTls
                } else {
                    Malformed::InterleavedRecord.into()
                });
            }
            let Some(record_header) = rest.get(..RECORD_HEADER_LEN) else {
                return incomplete(buf, max_len);
            };
            let payload_len = usize::from(u16::from_be_bytes([record_header[3], record_header[4]]));
            if payload_len == 0 {
                return Err(Malformed::EmptyRecord.into());
            }
            if payload_len > MAX_RECORD_PAYLOAD || pos + RECORD_HEADER_LEN + payload_len > max_len {
                return Err(HelloError::TooLarge);
            }
            let Some(payload) = rest.get(RECORD_HEADER_LEN..RECORD_HEADER_LEN + payload_len) else {
                return incomplete(buf, max_len);
            };
            for (i, &b) in payload.iter().enumerate() {
                if let Some(slot) = header.get_mut(handshake_len + i) {
                    *slot = b;
                } else {
                    break;
                }
            }
            handshake_len += payload_len;
            pos += RECORD_HEADER_LEN + payload_len;
            if needed.is_none() && handshake_len >= HANDSHAKE_HEADER_LEN {
                if header[0] != HANDSHAKE_CLIENT_HELLO {
                    return Err(Malformed::NotClientHello.into());
                }
                let body_len = usize::from(header[1]) << 16
                    | usize::from(header[2]) << 8
                    | usize::from(header[3]);
                // Raw bytes are at least the handshake bytes plus one record header.
                if HANDSHAKE_HEADER_LEN + body_len + RECORD_HEADER_LEN > max_len {
                    return Err(HelloError::TooLarge);
                }
                needed = Some(HANDSHAKE_HEADER_LEN + body_len);
            }
            if let Some(n) = needed
                && handshake_len >= n
            {
                return Ok(Some(Self {
                    buf,
                    end: pos,
                    body_len: n - HANDSHAKE_HEADER_LEN,
                }));
            }
        }
    }

    /// The handshake payloads of the records, in order.
    fn fragments(&self) -> impl Iterator<Item = &'a [u8]> {
        let mut rest = &self.buf[..self.end];
        std::iter::from_fn(move || {
            let header = rest.get(..RECORD_HEADER_LEN)?;
            let len = usize::from(u16::from_be_bytes([header[3], header[4]]));
            let payload = rest.get(RECORD_HEADER_LEN..RECORD_HEADER_LEN + len)?;
            rest = &rest[RECORD_HEADER_LEN + len..];
            Some(payload)
        })
    }

    /// The ClientHello body: borrowed when one record holds it, reassembled otherwise.
    fn hello_body(&self) -> std::borrow::Cow<'a, [u8]> {
        let start = HANDSHAKE_HEADER_LEN;
        let end = start + self.body_len;
        let mut fragments = self.fragments();
        if let Some(first) = fragments.next()
            && let Some(body) = first.get(start..end)
        {
            return std::borrow::Cow::Borrowed(body);
        }
        let mut joined = Vec::with_capacity(end);
        for fragment in self.fragments() {
            joined.extend_from_slice(fragment);
            if joined.len() >= end {
                break;
            }
        }
        joined.truncate(end);
        joined.drain(..start);
        std::borrow::Cow::Owned(joined)
    }
}

fn incomplete<T>(buf: &[u8], max_len: usize) -> Result<Option<T>, HelloError> {
    if buf.len() >= max_len {
        Err(HelloError::TooLarge)
    } else {
        Ok(None)
    }
}

/// Parses a ClientHello body (RFC 8446 §4.1.2; TLS 1.0–1.2 hellos share the layout).
fn parse_body(body: &[u8]) -> Result<ClientHello, Malformed> {
    let mut r = Reader(body);
    r.take(2)?; // legacy_version: not ours to judge; the backend negotiates
    r.take(32)?; // random
    let session_id = r.vec_u8()?;
    if session_id.len() > 32 {
        return Err(Malformed::BadVector);
    }
    let suites = r.vec_u16()?;
    if suites.is_empty() || !suites.len().is_multiple_of(2) {
        return Err(Malformed::BadVector);
    }
    if r.vec_u8()?.is_empty() {
        return Err(Malformed::BadVector); // compression methods
    }
    let mut hello = ClientHello {
        server_name: None,
        alpn: AlpnList::default(),
        len: 0,
    };
    // A hello without extensions (SSLv3 style) ends here; anything else must be exactly one
    // extensions block.
    if r.0.is_empty() {
        return Ok(hello);
    }
    let mut extensions = Reader(r.vec_u16()?);
    r.finish()?;
    let mut seen: Vec<u16> = Vec::new();
    while !extensions.0.is_empty() {
        let kind = extensions.u16()?;
        let data = extensions.vec_u16()?;
        if seen.contains(&kind) {
            return Err(Malformed::DuplicateExtension);
        }
        // At most 16 KiB / 4 bytes of extensions fit the cap, so this list stays small; the
        // linear scan is cheaper than hashing for the 10–20 extensions real clients send.
        seen.push(kind);
        match kind {
            EXTENSION_SERVER_NAME => hello.server_name = parse_server_name(data)?,
            EXTENSION_ALPN => hello.alpn = parse_alpn(data)?,
            _ => {}
        }
    }
    Ok(hello)
}

/// The server_name extension (RFC 6066 §3): a non-empty list of (type, name) entries.
fn parse_server_name(data: &[u8]) -> Result<Option<HostName>, Malformed> {
    let mut outer = Reader(data);
    let mut list = Reader(outer.vec_u16()?);
    outer.finish()?;
    if list.0.is_empty() {
        return Err(Malformed::BadVector);
    }
    let mut host = None;
    while !list.0.is_empty() {
        let name_type = list.u8()?;
        // Unknown name types have no defined layout; like rustls, read them as opaque<u16>.
        let name = list.vec_u16()?;
        if name_type != NAME_TYPE_HOST_NAME {
            continue;
        }
        if host.is_some() {
            return Err(Malformed::DuplicateServerName);
        }
        host = Some(HostName::parse(name).map_err(Malformed::InvalidServerName)?);
    }
    Ok(host)
}

/// The ALPN extension (RFC 7301 §3.1): a non-empty list of non-empty names.
fn parse_alpn(data: &[u8]) -> Result<AlpnList, Malformed> {
    let mut outer = Reader(data);
    let list = outer.vec_u16()?;
    outer.finish()?;
    if list.is_empty() {
        return Err(Malformed::BadVector);
    }
    let mut names = Reader(list);
    while !names.0.is_empty() {
        if names.vec_u8()?.is_empty() {
            return Err(Malformed::EmptyAlpnName);
        }
    }
    Ok(AlpnList(list.to_vec()))
}

/// A cursor over a byte slice whose reads fail with [`Malformed::Truncated`] instead of
/// panicking.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], Malformed> {
        let (head, tail) = self.0.split_at_checked(n).ok_or(Malformed::Truncated)?;
        self.0 = tail;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, Malformed> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, Malformed> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    fn vec_u8(&mut self) -> Result<&'a [u8], Malformed> {
        let len = self.u8()?;
        self.take(usize::from(len))
    }

    fn vec_u16(&mut self) -> Result<&'a [u8], Malformed> {
        let len = self.u16()?;
        self.take(usize::from(len))
    }

    fn finish(&self) -> Result<(), Malformed> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(Malformed::TrailingBytes)
        }
    }
}

/// Builders for hand-made hellos, shared by this crate's tests, the bridge's tests and the
/// benchmarks so that there is one definition of what a synthetic hello looks like.
pub mod build {
    use super::{CONTENT_TYPE_HANDSHAKE, HANDSHAKE_CLIENT_HELLO, MAX_RECORD_PAYLOAD};

    /// A minimal TLS 1.3 ClientHello handshake message (header included), with the given
    /// server name and ALPN names, and `padding` extra bytes in a padding extension (to reach
    /// post-quantum sizes).
    pub fn client_hello(server_name: Option<&str>, alpn: &[&str], padding: usize) -> Vec<u8> {
        let mut ext = Vec::new();
        if let Some(name) = server_name {
            let name = name.as_bytes();
            push_u16(&mut ext, 0);
            push_u16(&mut ext, len16(name.len() + 5));
            push_u16(&mut ext, len16(name.len() + 3));
            ext.push(0);
            push_u16(&mut ext, len16(name.len()));
            ext.extend_from_slice(name);
        }
        // supported_versions: TLS 1.3, 1.2
        ext.extend_from_slice(&[0x00, 0x2b, 0x00, 0x05, 0x04, 0x03, 0x04, 0x03, 0x03]);
        // supported_groups: x25519
        ext.extend_from_slice(&[0x00, 0x0a, 0x00, 0x04, 0x00, 0x02, 0x00, 0x1d]);
        // signature_algorithms: ecdsa_secp256r1_sha256, rsa_pss_rsae_sha256
        ext.extend_from_slice(&[0x00, 0x0d, 0x00, 0x06, 0x00, 0x04, 0x04, 0x03, 0x08, 0x04]);
        // key_share: x25519 with a fixed 32-byte public key
        ext.extend_from_slice(&[0x00, 0x33, 0x00, 0x26, 0x00, 0x24, 0x00, 0x1d, 0x00, 0x20]);
        ext.extend_from_slice(&[0x42; 32]);
        if !alpn.is_empty() {
            let list: Vec<u8> = alpn
                .iter()
                .flat_map(|p| {
                    let mut e = vec![u8::try_from(p.len()).unwrap_or(u8::MAX)];
                    e.extend_from_slice(p.as_bytes());
                    e
                })
                .collect();
            push_u16(&mut ext, 16);
            push_u16(&mut ext, len16(list.len() + 2));
            push_u16(&mut ext, len16(list.len()));
            ext.extend_from_slice(&list);
        }
        if padding > 0 {
            push_u16(&mut ext, 21);
            push_u16(&mut ext, len16(padding));
            ext.resize(ext.len() + padding, 0);
        }
        let mut body = vec![0x03, 0x03];
        body.extend_from_slice(&[0x11; 32]); // random
        body.push(32);
        body.extend_from_slice(&[0x22; 32]); // session id
        body.extend_from_slice(&[0x00, 0x06, 0x13, 0x01, 0x13, 0x02, 0x13, 0x03]);
        body.extend_from_slice(&[0x01, 0x00]); // compression: null
        push_u16(&mut body, len16(ext.len()));
        body.extend_from_slice(&ext);
        let mut msg = vec![HANDSHAKE_CLIENT_HELLO];
        let len = u32::try_from(body.len()).unwrap_or(u32::MAX).to_be_bytes();
        msg.extend_from_slice(&len[1..]);
        msg.extend_from_slice(&body);
        msg
    }

    /// Frames a handshake message into records of at most `fragment` payload bytes each.
    ///
    /// `fragment` is clamped to 1..=2^14.
    pub fn records(handshake: &[u8], fragment: usize) -> Vec<u8> {
        let fragment = fragment.clamp(1, MAX_RECORD_PAYLOAD);
        let mut out = Vec::with_capacity(handshake.len() + 5 * handshake.len().div_ceil(fragment));
        for chunk in handshake.chunks(fragment) {
            out.extend_from_slice(&[CONTENT_TYPE_HANDSHAKE, 0x03, 0x01]);
            push_u16(&mut out, len16(chunk.len()));
            out.extend_from_slice(chunk);
        }
        out
    }

    fn push_u16(out: &mut Vec<u8>, v: u16) {
        out.extend_from_slice(&v.to_be_bytes());
    }

    fn len16(n: usize) -> u16 {
        u16::try_from(n).unwrap_or(u16::MAX)
    }
}

#[cfg(test)]
mod tests;

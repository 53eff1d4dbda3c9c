//! PROXY protocol version 2 headers (haproxy.org `proxy-protocol.txt`, §2.2).
//!
//! The front door may prefix each upstream connection with this header, so that the backend
//! learns the client's address although the TCP connection comes from the bridge. When the
//! hello carried a server name, it travels in a `PP2_TYPE_AUTHORITY` TLV.

use std::net::{IpAddr, SocketAddr};

use crate::HostName;

/// The 12-byte signature every v2 header starts with.
pub const SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";

/// Version 2, command PROXY.
const VERSION_COMMAND_PROXY: u8 = 0x21;
/// Version 2, command LOCAL (health checks; no addresses).
const VERSION_COMMAND_LOCAL: u8 = 0x20;
const FAMILY_TCP4: u8 = 0x11;
const FAMILY_TCP6: u8 = 0x21;
const FAMILY_UNSPEC: u8 = 0x00;
/// TLV type carrying the host name the client asked for (SNI).
pub const TLV_AUTHORITY: u8 = 0x02;

/// The connection a header describes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// The client's address as the bridge saw it.
    pub source: SocketAddr,
    /// The address the client connected to (the bridge's listener).
    pub destination: SocketAddr,
    /// The server name from the client's hello, if any.
    pub authority: Option<HostName>,
}

impl Header {
    /// Appends the encoded header to `out`.
    ///
    /// Mixed families (an IPv4 client on an IPv6 listener) are sent as IPv6, the IPv4 address
    /// mapped into it, as the specification asks.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let (family, addresses) = match (self.source.ip(), self.destination.ip()) {
            (IpAddr::V4(src), IpAddr::V4(dst)) => {
                let mut a = Vec::with_capacity(12);
                a.extend_from_slice(&src.octets());
                a.extend_from_slice(&dst.octets());
                (FAMILY_TCP4, a)
            }
            (src, dst) => {
                let mut a = Vec::with_capacity(36);
                a.extend_from_slice(&to_v6(src).octets());
                a.extend_from_slice(&to_v6(dst).octets());
                (FAMILY_TCP6, a)
            }
        };
        let authority = self.authority.as_ref().map(|h| h.as_str().as_bytes());
        // A host name is at most 253 bytes, so the whole header fits a u16 length.
        let tlv_len = authority.map_or(0, |a| 3 + a.len());
        let len = addresses.len() + 4 + tlv_len;
        out.reserve(16 + len);
        out.extend_from_slice(&SIGNATURE);
        out.push(VERSION_COMMAND_PROXY);
        out.push(family);
        out.extend_from_slice(&u16::try_from(len).unwrap_or(u16::MAX).to_be_bytes());
        out.extend_from_slice(&addresses);
        out.extend_from_slice(&self.source.port().to_be_bytes());
        out.extend_from_slice(&self.destination.port().to_be_bytes());
        if let Some(a) = authority {
            out.push(TLV_AUTHORITY);
            out.extend_from_slice(&u16::try_from(a.len()).unwrap_or(u16::MAX).to_be_bytes());
            out.extend_from_slice(a);
        }
    }

    /// The encoded header as a new buffer.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode(&mut out);
        out
    }
}

fn to_v6(ip: IpAddr) -> std::net::Ipv6Addr {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    }
}

/// What [`decode`] found at the start of a buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decoded {
    /// A PROXY command with the connection's addresses.
    Proxy {
        /// The header.
        header: Header,
        /// How many bytes of the buffer the header took.
        len: usize,
    },
    /// A LOCAL command (or an address family we do not carry): use the real peer address.
    Local {
        /// How many bytes of the buffer the header took.
        len: usize,
    },
}

/// Why bytes are not a PROXY v2 header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The buffer does not start with the v2 signature.
    #[error("no PROXY v2 signature")]
    NoSignature,
    /// Signature present, but the version, command, lengths or TLVs are wrong.
    #[error("malformed PROXY v2 header")]
    Malformed,
}

/// Decodes a header from the start of `buf`; `Ok(None)` means more bytes are needed.
///
/// # Errors
///
/// [`DecodeError`] when the bytes cannot start a valid v2 header.
pub fn decode(buf: &[u8]) -> Result<Option<Decoded>, DecodeError> {
    let sig_len = buf.len().min(SIGNATURE.len());
    if buf[..sig_len] != SIGNATURE[..sig_len] {
        return Err(DecodeError::NoSignature);
    }
    let Some(fixed) = buf.get(..16) else {
        return Ok(None);
    };
    let len = usize::from(u16::from_be_bytes([fixed[14], fixed[15]]));
    let Some(body) = buf.get(16..16 + len) else {
        return Ok(None);
    };
    let total = 16 + len;
    match fixed[12] {
        VERSION_COMMAND_LOCAL => return Ok(Some(Decoded::Local { len: total })),
        VERSION_COMMAND_PROXY => {}
        _ => return Err(DecodeError::Malformed),
    }
    let (source, destination, rest) = match fixed[13] {
        FAMILY_TCP4 => {
            let a = body.get(..12).ok_or(DecodeError::Malformed)?;
            let ip = |i: usize| IpAddr::from([a[i], a[i + 1], a[i + 2], a[i + 3]]);
            let port = |i: usize| u16::from_be_bytes([a[i], a[i + 1]]);
            let src = SocketAddr::new(ip(0), port(8));
            let dst = SocketAddr::new(ip(4), port(10));
            (src, dst, &body[12..])
        }
        FAMILY_TCP6 => {
            let a = body.get(..36).ok_or(DecodeError::Malformed)?;
            let ip = |i: usize| {
                let mut o = [0u8; 16];
                o.copy_from_slice(&a[i..i + 16]);
                IpAddr::from(o)
            };
            let port = |i: usize| u16::from_be_bytes([a[i], a[i + 1]]);
            let src = SocketAddr::new(ip(0), port(32));
            let dst = SocketAddr::new(ip(16), port(34));
            (src, dst, &body[36..])
        }
        FAMILY_UNSPEC => return Ok(Some(Decoded::Local { len: total })),
        _ => return Err(DecodeError::Malformed),
    };
    let mut authority = None;
    let mut tlvs = rest;
    while !tlvs.is_empty() {
        let head = tlvs.get(..3).ok_or(DecodeError::Malformed)?;
        let tlv_len = usize::from(u16::from_be_bytes([head[1], head[2]]));
        let value = tlvs.get(3..3 + tlv_len).ok_or(DecodeError::Malformed)?;
        if head[0] == TLV_AUTHORITY {
            authority = Some(HostName::parse(value).map_err(|_| DecodeError::Malformed)?);
        }
        tlvs = &tlvs[3 + tlv_len..];
    }
    let header = Header {
        source,
        destination,
        authority,
    };
    Ok(Some(Decoded::Proxy { header, len: total }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(src: &str, dst: &str, authority: Option<&str>) -> Header {
        Header {
            source: src.parse().unwrap(),
            destination: dst.parse().unwrap(),
            authority: authority.map(|a| a.parse().unwrap()),
        }
    }

    #[test]
    fn ipv4_layout_matches_the_specification() {
        let bytes = header("192.0.2.1:40000", "198.51.100.2:443", None).to_bytes();
        let mut expected = SIGNATURE.to_vec();
        expected.extend_from_slice(&[0x21, 0x11, 0x00, 0x0c]);
        expected.extend_from_slice(&[192, 0, 2, 1, 198, 51, 100, 2]);
        expected.extend_from_slice(&40000u16.to_be_bytes());
        expected.extend_from_slice(&443u16.to_be_bytes());
        assert_eq!(bytes, expected);
    }

    #[test]
    fn round_trips_every_family_and_the_authority() {
        for h in [
            header("127.0.0.1:1", "127.0.0.1:2", Some("api.example.test")),
            header("[::1]:5", "[2001:db8::1]:443", None),
        ] {
            let bytes = h.to_bytes();
            let decoded = decode(&bytes).unwrap().unwrap();
            assert_eq!(
                decoded,
                Decoded::Proxy {
                    header: h,
                    len: bytes.len()
                }
            );
            for cut in 0..bytes.len() {
                assert_eq!(decode(&bytes[..cut]), Ok(None), "prefix of {cut} bytes");
            }
        }
    }

    #[test]
    fn mixed_families_are_sent_as_mapped_ipv6() {
        let bytes = header("127.0.0.1:9", "[::1]:443", None).to_bytes();
        let Some(Decoded::Proxy { header, .. }) = decode(&bytes).unwrap() else {
            panic!("not a proxy header");
        };
        assert_eq!(header.source, "[::ffff:127.0.0.1]:9".parse().unwrap());
    }

    #[test]
    fn rejects_what_is_not_a_header() {
        assert_eq!(decode(b"GET / HTTP/1.1\r\n"), Err(DecodeError::NoSignature));
        let mut bad = header("127.0.0.1:1", "127.0.0.1:2", None).to_bytes();
        bad[12] = 0x31;
        assert_eq!(decode(&bad), Err(DecodeError::Malformed));
        let mut short = header("127.0.0.1:1", "127.0.0.1:2", None).to_bytes();
        short[15] = 4; // claims 4 address bytes for TCP4
        assert_eq!(decode(&short[..20]), Err(DecodeError::Malformed));
    }
}

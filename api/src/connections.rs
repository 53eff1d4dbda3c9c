//! Which connections the API holds: a global cap, a cap per client address, and the client
//! address itself when the connection comes through a trusted proxy (a PROXY v2 header).
//!
//! Over a cap a connection is accepted and closed at once, so the accept loop never stops
//! accepting: one client holding many connections (idle ones included) costs only its own
//! share. IPv6 clients are counted per /64, the block one subscriber usually holds.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bamf_proto::proxy_v2;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// An address block, `10.0.0.0/8` or a single address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Whether `ip` is inside the block (an IPv4-mapped IPv6 address counts as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, canonical(ip)) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

impl FromStr for Cidr {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let (addr, prefix) = match text.split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (text, None),
        };
        let addr: IpAddr = addr
            .trim()
            .parse()
            .map_err(|_| format!("'{text}' is not an address or address/prefix"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("'{text}': the prefix must be 0-{max}"))?,
        };
        Ok(Self {
            addr: canonical(addr),
            prefix,
        })
    }
}

/// IPv4-mapped IPv6 addresses as IPv4.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 @ IpAddr::V4(_) => v4,
    }
}

/// The key one client's connections are counted under: its IPv4 address, or its IPv6 /64.
fn client_key(ip: IpAddr) -> IpAddr {
    match canonical(ip) {
        IpAddr::V6(v6) => {
            let bits = u128::from(v6) & (u128::MAX << 64);
            IpAddr::V6(Ipv6Addr::from(bits))
        }
        v4 @ IpAddr::V4(_) => v4,
    }
}

/// The connection limits, from configuration.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Connections held at once, in all.
    pub max_connections: usize,
    /// Connections held at once per client (address, or IPv6 /64).
    pub max_per_address: u32,
    /// Peers whose connections start with a PROXY v2 header naming the real client.
    pub trusted_proxies: Vec<Cidr>,
    /// Deadline for a trusted proxy's PROXY header (and for the TLS handshake).
    pub handshake_timeout: Duration,
}

/// Counts the connections held, in all and per client.
#[derive(Debug)]
pub struct Admission {
    limits: Limits,
    held: Mutex<(usize, HashMap<IpAddr, u32>)>,
}

/// A held connection's place; given back when dropped.
#[derive(Debug)]
pub struct Slot {
    admission: Arc<Admission>,
    /// The client it is counted under, if counted per client (not a trusted proxy).
    client: Option<IpAddr>,
}

/// Why a connection was closed at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The global cap is reached.
    Full,
    /// This client holds its share.
    PerAddress,
    /// A trusted proxy sent a malformed PROXY header, or nothing in time.
    ProxyHeader,
}

impl Refusal {
    /// For logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Full => "connection limit",
            Self::PerAddress => "per-address connection limit",
            Self::ProxyHeader => "malformed or late PROXY header from a trusted proxy",
        }
    }
}

impl Admission {
    /// Starts with nothing held.
    pub fn new(limits: Limits) -> Arc<Self> {
        Arc::new(Self {
            limits,
            held: Mutex::default(),
        })
    }

    /// The limits in force.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    fn held(&self) -> std::sync::MutexGuard<'_, (usize, HashMap<IpAddr, u32>)> {
        self.held
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Takes a place for a connection from `peer` (counted per client unless it is a
    /// trusted proxy, whose clients are counted once their address is known).
    ///
    /// # Errors
    ///
    /// [`Refusal::Full`] or [`Refusal::PerAddress`].
    pub fn admit(self: &Arc<Self>, peer: IpAddr) -> Result<Slot, Refusal> {
        let proxied = self.is_trusted_proxy(peer);
        let mut held = self.held();
        if held.0 >= self.limits.max_connections {
            return Err(Refusal::Full);
        }
        let client = if proxied {
            None
        } else {
            let key = client_key(peer);
            let count = held.1.entry(key).or_insert(0);
            if *count >= self.limits.max_per_address {
                return Err(Refusal::PerAddress);
            }
            *count += 1;
            Some(key)
        };
        held.0 += 1;
        Ok(Slot {
            admission: self.clone(),
            client,
        })
    }

    /// Whether connections from `peer` carry a PROXY header.
    pub fn is_trusted_proxy(&self, peer: IpAddr) -> bool {
        self.limits
            .trusted_proxies
            .iter()
            .any(|net| net.contains(peer))
    }
}

impl Slot {
    /// Counts this proxy connection under the client the proxy named.
    ///
    /// # Errors
    ///
    /// [`Refusal::PerAddress`] when that client holds its share.
    pub fn attribute(&mut self, client: IpAddr) -> Result<(), Refusal> {
        if self.client.is_some() {
            return Ok(());
        }
        let key = client_key(client);
        let mut held = self.admission.held();
        let count = held.1.entry(key).or_insert(0);
        if *count >= self.admission.limits.max_per_address {
            return Err(Refusal::PerAddress);
        }
        *count += 1;
        self.client = Some(key);
        Ok(())
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut held = self.admission.held();
        held.0 = held.0.saturating_sub(1);
        if let Some(key) = self.client
            && let Some(count) = held.1.get_mut(&key)
        {
            *count = count.saturating_sub(1);
            if *count == 0 {
                held.1.remove(&key);
            }
        }
    }
}

/// Reads the PROXY v2 header a trusted proxy sends first, and returns the client's
/// address (the proxy's own for a LOCAL header, e.g. a health check). Reads exactly the
/// header's bytes, so what follows (the TLS ClientHello) stays in the socket.
///
/// A connection from a trusted proxy may also come without a header: one the proxy makes
/// on its own behalf (a bridge calling the API from the same address its front door
/// forwards from). Its first byte tells: a PROXY v2 header starts with `\r`, a TLS
/// handshake with `0x16`; without a header the client is the proxy itself. Trust is
/// unchanged: the proxy is trusted either way, and a proxy that forwards clients must send
/// the header on each of their connections (a client's own header would otherwise be read).
///
/// # Errors
///
/// [`Refusal::ProxyHeader`] when it is malformed or nothing arrives in time.
pub async fn read_proxy_header(
    tcp: &mut TcpStream,
    peer: SocketAddr,
    deadline: Duration,
) -> Result<SocketAddr, Refusal> {
    let read = async {
        let mut first = [0u8; 1];
        if tcp.peek(&mut first).await.ok()? == 0 {
            return None;
        }
        if first[0] != proxy_v2::SIGNATURE[0] {
            return Some(peer);
        }
        // The fixed part says how long the rest is.
        let mut head = [0u8; 16];
        tcp.read_exact(&mut head).await.ok()?;
        // Not a PROXY header: refused before reading a length it gave.
        proxy_v2::decode(&head).ok()?;
        let len = usize::from(u16::from_be_bytes([head[14], head[15]]));
        let mut header = head.to_vec();
        header.resize(16 + len, 0);
        tcp.read_exact(&mut header[16..]).await.ok()?;
        match proxy_v2::decode(&header) {
            Ok(Some(proxy_v2::Decoded::Proxy { header, .. })) => Some(header.source),
            Ok(Some(proxy_v2::Decoded::Local { .. })) => Some(peer),
            _ => None,
        }
    };
    tokio::time::timeout(deadline, read)
        .await
        .ok()
        .flatten()
        .ok_or(Refusal::ProxyHeader)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(per_address: u32, total: usize, trusted: &[&str]) -> Limits {
        Limits {
            max_connections: total,
            max_per_address: per_address,
            trusted_proxies: trusted.iter().map(|t| t.parse().unwrap()).collect(),
            handshake_timeout: Duration::from_secs(1),
        }
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn blocks_parse_and_match() {
        let net: Cidr = "10.1.0.0/16".parse().unwrap();
        assert!(net.contains(ip("10.1.200.3")));
        assert!(!net.contains(ip("10.2.0.1")));
        assert!(net.contains(ip("::ffff:10.1.0.9")), "mapped IPv4");
        let one: Cidr = "192.0.2.7".parse().unwrap();
        assert!(one.contains(ip("192.0.2.7")) && !one.contains(ip("192.0.2.8")));
        let v6: Cidr = "2001:db8::/32".parse().unwrap();
        assert!(v6.contains(ip("2001:db8:1::1")) && !v6.contains(ip("10.0.0.1")));
        assert!("0.0.0.0/0".parse::<Cidr>().unwrap().contains(ip("8.8.8.8")));
        for bad in ["10.0.0.0/33", "nope", "10.0.0.0/x", "::/129", ""] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad}");
        }
    }

    #[test]
    fn each_client_holds_its_share_and_places_come_back() {
        let admission = Admission::new(limits(2, 3, &[]));
        let a1 = admission.admit(ip("192.0.2.1")).unwrap();
        let _a2 = admission.admit(ip("192.0.2.1")).unwrap();
        assert_eq!(
            admission.admit(ip("192.0.2.1")).unwrap_err(),
            Refusal::PerAddress
        );
        let _b = admission.admit(ip("192.0.2.2")).unwrap();
        assert_eq!(admission.admit(ip("192.0.2.3")).unwrap_err(), Refusal::Full);
        drop(a1);
        assert!(admission.admit(ip("192.0.2.1")).is_ok());
    }

    #[test]
    fn an_ipv6_client_is_its_slash_64() {
        let admission = Admission::new(limits(1, 10, &[]));
        let _a = admission.admit(ip("2001:db8:0:1::1")).unwrap();
        assert!(admission.admit(ip("2001:db8:0:1::2")).is_err());
        assert!(admission.admit(ip("2001:db8:0:2::1")).is_ok());
    }

    #[test]
    fn a_trusted_proxy_is_counted_per_client_it_names() {
        let admission = Admission::new(limits(1, 10, &["10.0.0.0/8"]));
        let mut first = admission.admit(ip("10.0.0.5")).unwrap();
        let mut second = admission.admit(ip("10.0.0.5")).unwrap();
        first.attribute(ip("192.0.2.1")).unwrap();
        assert_eq!(
            second.attribute(ip("192.0.2.1")).unwrap_err(),
            Refusal::PerAddress
        );
        second.attribute(ip("192.0.2.2")).unwrap();
        assert!(admission.admit(ip("11.0.0.1")).is_ok());
    }

    #[tokio::test]
    async fn the_proxy_header_is_read_exactly_and_on_time() {
        use tokio::io::AsyncWriteExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let client: SocketAddr = "192.0.2.9:5555".parse().unwrap();
        let mut sent = proxy_v2::Header {
            source: client,
            destination: addr,
            authority: None,
        }
        .to_bytes();
        sent.extend_from_slice(b"\x16hello");
        let writer = tokio::spawn(async move {
            let mut s = TcpStream::connect(addr).await.unwrap();
            s.write_all(&sent).await.unwrap();
            s
        });
        let (mut tcp, peer) = listener.accept().await.unwrap();
        let got = read_proxy_header(&mut tcp, peer, Duration::from_secs(1))
            .await
            .unwrap();
        assert_eq!(got, client);
        let mut rest = [0u8; 6];
        tcp.read_exact(&mut rest).await.unwrap();
        assert_eq!(&rest, b"\x16hello", "the ClientHello stays");
        drop(writer.await.unwrap());

        // Silence, and garbage, are refused.
        let _silent = TcpStream::connect(addr).await.unwrap();
        let (mut tcp, peer) = listener.accept().await.unwrap();
        let late = read_proxy_header(&mut tcp, peer, Duration::from_millis(100)).await;
        assert_eq!(late.unwrap_err(), Refusal::ProxyHeader);
        let mut garbage = TcpStream::connect(addr).await.unwrap();
        let mut broken = proxy_v2::SIGNATURE.to_vec();
        broken.extend_from_slice(&[0x99; 20]);
        garbage.write_all(&broken).await.unwrap();
        let (mut tcp, peer) = listener.accept().await.unwrap();
        let bad = read_proxy_header(&mut tcp, peer, Duration::from_secs(1)).await;
        assert_eq!(bad.unwrap_err(), Refusal::ProxyHeader);
        let mut cut = TcpStream::connect(addr).await.unwrap();
        cut.write_all(b"\r\n\r\nnope").await.unwrap();
        cut.shutdown().await.unwrap();
        let (mut tcp, peer) = listener.accept().await.unwrap();
        let bad = read_proxy_header(&mut tcp, peer, Duration::from_secs(1)).await;
        assert_eq!(bad.unwrap_err(), Refusal::ProxyHeader);

        // The proxy's own connection, without a header: the client is the proxy, and the
        // ClientHello is left untouched.
        let mut own = TcpStream::connect(addr).await.unwrap();
        own.write_all(b"\x16\x03\x01hello").await.unwrap();
        let (mut tcp, peer) = listener.accept().await.unwrap();
        let got = read_proxy_header(&mut tcp, peer, Duration::from_secs(1))
            .await
            .unwrap();
        assert_eq!(got, peer);
        let mut rest = [0u8; 8];
        tcp.read_exact(&mut rest).await.unwrap();
        assert_eq!(&rest, b"\x16\x03\x01hello");
        drop(own);
    }
}

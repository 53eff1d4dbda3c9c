//! HTTP proxies from the environment (`HTTPS_PROXY`, `ALL_PROXY`, `NO_PROXY`), as curl reads
//! them, and the `CONNECT` that opens a tunnel through one.
//!
//! The environment is parsed once, at the edge, into a [`Proxies`]; a bad value is an error
//! there, never a surprise at the first request. Only `http://` proxies are supported (the
//! TLS session with the API runs inside the tunnel either way).

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Longest proxy answer header read.
const MAX_ANSWER_HEAD: usize = 8 * 1024;
/// Connecting to the proxy, and its answer to `CONNECT`.
const PROXY_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a proxy setting or a tunnel through it failed.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// The variable does not hold an `http://host:port` URL.
    #[error("{variable}: '{value}' is not a proxy URL (http://host:port)")]
    Url {
        /// Which variable.
        variable: &'static str,
        /// Its value (a proxy URL with a password is shown without it).
        value: String,
    },
    /// The proxy could not be reached or the tunnel not be opened.
    #[error("the proxy {proxy} could not open a tunnel to {target}: {why}")]
    Tunnel {
        /// The proxy, `host:port`.
        proxy: String,
        /// Where to.
        target: String,
        /// Why.
        why: String,
    },
}

/// An `http://[user:password@]host:port` proxy.
#[derive(Clone, PartialEq, Eq)]
pub struct Proxy {
    host: String,
    port: u16,
    /// `user:password`, base64, for `Proxy-Authorization: Basic`.
    basic: Option<String>,
}

impl std::fmt::Debug for Proxy {
    /// Never the credentials.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Proxy(http://{}:{})", self.host, self.port)
    }
}

impl Proxy {
    /// Parses `http://[user:password@]host[:port]` (port 80 by default; a bare
    /// `host:port` is taken as http, as curl does).
    ///
    /// # Errors
    ///
    /// [`ProxyError::Url`] (named after `variable`).
    pub fn parse(variable: &'static str, text: &str) -> Result<Self, ProxyError> {
        let shown = match text.split_once('@') {
            Some((_, host)) => format!("http://***@{host}"),
            None => text.to_owned(),
        };
        let bad = || ProxyError::Url {
            variable,
            value: shown.clone(),
        };
        let rest = match text.split_once("://") {
            Some(("http" | "HTTP", rest)) => rest,
            Some(_) => return Err(bad()),
            None => text,
        };
        let rest = rest.trim_end_matches('/');
        let (credentials, authority) = match rest.rsplit_once('@') {
            Some((c, a)) => (Some(c), a),
            None => (None, rest),
        };
        if authority.is_empty() || authority.contains('/') {
            return Err(bad());
        }
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || authority.starts_with('[') => {
                (h, p.parse::<u16>().map_err(|_| bad())?)
            }
            _ => (authority, 80),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            return Err(bad());
        }
        Ok(Self {
            host: host.to_owned(),
            port,
            basic: credentials.map(|c| base64(c.as_bytes())),
        })
    }

    /// `host:port`.
    pub fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// Connects to the proxy and asks it for a tunnel to `target` (`host:port`); returns the
    /// connection once the proxy answered 2xx, ready for the TLS handshake.
    ///
    /// # Errors
    ///
    /// [`ProxyError::Tunnel`]: the proxy is unreachable, refuses, or answers nonsense.
    pub async fn connect(&self, target: &str) -> Result<TcpStream, ProxyError> {
        let fail = |why: String| ProxyError::Tunnel {
            proxy: self.authority(),
            target: target.to_owned(),
            why,
        };
        let exchange = async {
            let mut tcp = TcpStream::connect((self.host.as_str(), self.port))
                .await
                .map_err(|e| fail(e.to_string()))?;
            let _ = tcp.set_nodelay(true);
            let mut request = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n");
            if let Some(basic) = &self.basic {
                request.push_str(&format!("Proxy-Authorization: Basic {basic}\r\n"));
            }
            request.push_str("\r\n");
            tcp.write_all(request.as_bytes())
                .await
                .map_err(|e| fail(e.to_string()))?;
            // Read the answer's head byte by byte: nothing of the tunnel may be consumed.
            let mut head = Vec::with_capacity(256);
            while !head.ends_with(b"\r\n\r\n") {
                if head.len() >= MAX_ANSWER_HEAD {
                    return Err(fail("its answer's head is too long".into()));
                }
                let byte = tcp.read_u8().await.map_err(|e| fail(e.to_string()))?;
                head.push(byte);
            }
            let status_line = head.split(|b| *b == b'\n').next().unwrap_or_default();
            let status_line = String::from_utf8_lossy(status_line).trim().to_owned();
            let code = status_line.split_whitespace().nth(1).unwrap_or_default();
            if !status_line.starts_with("HTTP/1.") || !code.starts_with('2') || code.len() != 3 {
                return Err(fail(format!("it answered '{status_line}'")));
            }
            Ok(tcp)
        };
        tokio::time::timeout(PROXY_TIMEOUT, exchange)
            .await
            .map_err(|_| fail("timed out".into()))?
    }
}

/// One `NO_PROXY` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Bypass {
    /// `*`: every host.
    All,
    /// A host name and its subdomains (a leading dot is dropped), or an IP address.
    Host(String),
}

/// Which proxy, if any, to use for a host: `HTTPS_PROXY` (or `https_proxy`, else
/// `ALL_PROXY` / `all_proxy`), except for hosts in `NO_PROXY` / `no_proxy`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Proxies {
    proxy: Option<Proxy>,
    bypass: Vec<Bypass>,
}

impl Proxies {
    /// No proxy at all.
    pub fn none() -> Self {
        Self::default()
    }

    /// From the process environment.
    ///
    /// # Errors
    ///
    /// [`ProxyError::Url`] when a proxy variable is set to something that is not a URL.
    pub fn from_env() -> Result<Self, ProxyError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// From variables given by `lookup` (tests).
    ///
    /// # Errors
    ///
    /// As [`Proxies::from_env`].
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ProxyError> {
        let first = |names: &[&'static str]| {
            names.iter().find_map(|name| {
                lookup(name)
                    .filter(|v| !v.trim().is_empty())
                    .map(|v| (*name, v.trim().to_owned()))
            })
        };
        let proxy = first(&["https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"])
            .map(|(name, value)| Proxy::parse(name, &value))
            .transpose()?;
        let bypass = first(&["no_proxy", "NO_PROXY"])
            .map(|(_, value)| {
                value
                    .split([',', ' '])
                    .map(str::trim)
                    .filter(|e| !e.is_empty())
                    .map(|entry| {
                        if entry == "*" {
                            return Bypass::All;
                        }
                        // A port is allowed and ignored; an IPv6 address keeps its colons.
                        let host = if entry.starts_with('[') {
                            entry
                                .trim_start_matches('[')
                                .split(']')
                                .next()
                                .unwrap_or(entry)
                        } else if entry.matches(':').count() == 1 {
                            entry.split(':').next().unwrap_or(entry)
                        } else {
                            entry
                        };
                        Bypass::Host(host.trim_start_matches('.').to_ascii_lowercase())
                    })
                    .collect()
            })
            .unwrap_or_default();
        Ok(Self { proxy, bypass })
    }

    /// The proxy for `host`, or `None` to connect directly.
    pub fn for_host(&self, host: &str) -> Option<&Proxy> {
        let proxy = self.proxy.as_ref()?;
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .trim_end_matches('.')
            .to_ascii_lowercase();
        let bypassed = self.bypass.iter().any(|b| match b {
            Bypass::All => true,
            Bypass::Host(h) => {
                host == *h
                    || (host.len() > h.len()
                        && host.ends_with(h.as_str())
                        && host.as_bytes()[host.len() - h.len() - 1] == b'.')
            }
        });
        (!bypassed).then_some(proxy)
    }
}

/// Standard base64 with padding (for `Proxy-Authorization: Basic`).
fn base64(input: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(input.len().div_ceil(3) * 4);
    for chunk in input.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let pairs: Vec<(String, String)> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        move |name| {
            pairs
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
        }
    }

    #[test]
    fn the_environment_decides_like_curl() {
        let none = Proxies::from_lookup(env(&[])).unwrap();
        assert!(none.for_host("bamf.example.com").is_none());

        let p = Proxies::from_lookup(env(&[
            ("HTTPS_PROXY", "http://proxy.corp:3128"),
            ("NO_PROXY", "localhost, .internal.corp,10.0.0.1:443"),
        ]))
        .unwrap();
        assert_eq!(
            p.for_host("bamf.example.com").unwrap().authority(),
            "proxy.corp:3128"
        );
        assert!(p.for_host("localhost").is_none());
        assert!(p.for_host("LOCALHOST.").is_none());
        assert!(p.for_host("api.internal.corp").is_none());
        assert!(p.for_host("internal.corp").is_none());
        assert!(p.for_host("notinternal.corp").is_some());
        assert!(p.for_host("10.0.0.1").is_none());
        assert!(p.for_host("10.0.0.2").is_some());

        let all =
            Proxies::from_lookup(env(&[("ALL_PROXY", "proxy:8080"), ("no_proxy", "*")])).unwrap();
        assert!(all.for_host("anything").is_none());
        let lower = Proxies::from_lookup(env(&[
            ("https_proxy", "http://a:1"),
            ("HTTPS_PROXY", "http://b:2"),
        ]))
        .unwrap();
        assert_eq!(lower.for_host("x").unwrap().authority(), "a:1");
    }

    #[test]
    fn bad_proxies_are_refused_and_passwords_never_shown() {
        assert!(Proxy::parse("HTTPS_PROXY", "socks5://p:1080").is_err());
        assert!(Proxy::parse("HTTPS_PROXY", "http://p:notaport").is_err());
        assert!(Proxy::parse("HTTPS_PROXY", "http://").is_err());
        let e = Proxy::parse("HTTPS_PROXY", "http://user:s3cret@p:x")
            .unwrap_err()
            .to_string();
        assert!(!e.contains("s3cret"), "{e}");
        let p = Proxy::parse("HTTPS_PROXY", "http://user:s3cret@p:3128/").unwrap();
        assert!(!format!("{p:?}").contains("s3cret"));
        assert_eq!(p.basic.as_deref(), Some("dXNlcjpzM2NyZXQ="));
        assert_eq!(Proxy::parse("X", "http://p").unwrap().authority(), "p:80");
        assert_eq!(base64(b"ab"), "YWI=");
        assert_eq!(base64(b"abc"), "YWJj");
        assert_eq!(base64(b"a"), "YQ==");
    }

    #[tokio::test]
    async fn connect_sends_connect_and_waits_for_2xx() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut head = Vec::new();
            while !head.ends_with(b"\r\n\r\n") {
                head.push(s.read_u8().await.unwrap());
            }
            s.write_all(b"HTTP/1.1 200 Connection established\r\n\r\nX")
                .await
                .unwrap();
            String::from_utf8(head).unwrap()
        });
        let proxy = Proxy::parse("HTTPS_PROXY", &format!("http://{addr}")).unwrap();
        let mut tunnel = proxy.connect("api.example:443").await.unwrap();
        assert_eq!(
            tunnel.read_u8().await.unwrap(),
            b'X',
            "nothing past the head is eaten"
        );
        let head = server.await.unwrap();
        assert!(
            head.starts_with("CONNECT api.example:443 HTTP/1.1\r\n"),
            "{head}"
        );

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let _ = s.write_all(b"HTTP/1.1 403 Forbidden\r\n\r\n").await;
        });
        let proxy = Proxy::parse("HTTPS_PROXY", &format!("http://{addr}")).unwrap();
        let e = proxy.connect("api.example:443").await.unwrap_err();
        assert!(e.to_string().contains("403"), "{e}");
    }
}

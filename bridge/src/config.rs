//! Configuration: a TOML file and command-line flags become one typed [`Config`].
//!
//! Two steps, as everywhere in BAMF: [`RawConfig`] is what the file and flags say (strict:
//! unknown keys are errors), [`Config`] is what the bridge runs on (addresses, durations,
//! host names, all parsed). Building a `Config` collects *every* problem before failing, so
//! an operator fixes a file in one pass, and it never binds a socket.

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::path::Path;
use std::time::Duration;

use bamf_proto::HostName;
use bamf_proto::sni::DEFAULT_MAX_HELLO_LEN;
use serde::Deserialize;

use crate::route::{Router, Wildcard};

/// Defaults, each with the reason for its value.
pub mod defaults {
    use std::time::Duration;

    /// The public port of the product.
    pub const LISTEN: &str = "0.0.0.0:443";
    /// Enough for a busy bridge; each connection is a few KiB while idle.
    pub const MAX_CONNECTIONS: usize = 10_000;
    /// A real client sends its hello in the first packet; 10 s covers a lossy mobile link
    /// and bounds how long a silent client holds a slot.
    pub const DETECT_TIMEOUT: Duration = Duration::from_secs(10);
    /// Upstreams are in the same cluster or data centre: 5 s means it is not coming.
    pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
    /// Interactive sessions sit idle for long stretches; an hour matches common SSH habits.
    pub const IDLE_TIMEOUT: Duration = Duration::from_secs(3600);
    /// Kubernetes' default termination grace is 30 s; we leave it a margin to report.
    pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(25);
    /// Design: both sides of a tunnel meet within 30 s or are closed.
    pub const MATCH_TIMEOUT: Duration = Duration::from_secs(30);
    /// Design: bridges heartbeat every 10 s.
    pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(10);
    /// Tunnels waiting for their other side: a burst of connects, bounded.
    pub const MAX_PENDING: usize = 10_000;
    /// Where a bridge keeps its key and certificates.
    pub const DATA_DIR: &str = "/var/lib/bamf-bridge";
}

/// Upper bound on `max_hello_size`: far above any real hello, still a bounded buffer.
const MAX_HELLO_SIZE_CEILING: usize = 256 * 1024;
/// Smallest `max_hello_size` that still lets every real client through.
const MAX_HELLO_SIZE_FLOOR: usize = 16 * 1024 + 2 * bamf_proto::sni::RECORD_HEADER_LEN;

/// The file and flag form of the configuration. Every field is optional here; [`Config`]
/// decides defaults and requirements.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// Public front-door address.
    pub listen: Option<String>,
    /// Address for connections forwarded by peer bridges (handled locally only).
    pub peer_listen: Option<String>,
    /// Admin address serving `/metrics`, `/health` and `/ready`.
    pub metrics: Option<String>,
    /// This bridge's ordinal `n` (its name is `n.bridge.<tunnel_domain>`).
    pub ordinal: Option<u32>,
    /// Domain under which bridges are named.
    pub tunnel_domain: Option<String>,
    /// Where peer `n` listens, with `{n}` in place of the ordinal.
    pub peer_address: Option<String>,
    /// Backend for connections to this bridge's own name (until the tunnel relay exists).
    pub local_backend: Option<String>,
    /// `"reject"` or a backend address for hellos without a routed name.
    pub default: Option<String>,
    /// Send a PROXY v2 header to static, default and local backends.
    pub proxy_protocol: Option<bool>,
    /// Tokio worker threads (default: one per core).
    pub threads: Option<usize>,
    /// Relay with splice(2) (zero-copy); `false` copies through user-space buffers.
    pub splice: Option<bool>,
    /// Where the bridge keeps its key and certificates (tunnel mode).
    pub data_dir: Option<String>,
    /// The API: setting it turns on the tunnel relay for this bridge's own name.
    pub api: Option<RawApi>,
    /// Resource limits.
    #[serde(default)]
    pub limits: RawLimits,
    /// Static routes by host name.
    #[serde(default, rename = "route")]
    pub routes: Vec<RawRoute>,
}

/// `[limits]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLimits {
    /// Concurrent connections across all listeners.
    pub max_connections: Option<usize>,
    /// Bytes of ClientHello (as received, record headers included) buffered at most.
    pub max_hello_size: Option<usize>,
    /// Deadline from accept to a complete hello, e.g. `"10s"`.
    pub detect_timeout: Option<String>,
    /// Deadline for the upstream TCP connect.
    pub connect_timeout: Option<String>,
    /// A connection with no bytes either way for this long is closed.
    pub idle_timeout: Option<String>,
    /// How long shutdown waits for connections to finish.
    pub shutdown_grace: Option<String>,
    /// How long the first side of a tunnel waits for the other.
    pub match_timeout: Option<String>,
    /// Tunnels waiting for their other side, at most.
    pub max_pending: Option<usize>,
}

/// `[api]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawApi {
    /// `https://host[:port]` of the API.
    pub url: Option<String>,
    /// PEM file with the BAMF CA certificate (verifies the API before joining).
    pub ca_file: Option<String>,
    /// Connect to this `ip:port` instead of resolving the URL's host.
    pub address: Option<String>,
    /// Heartbeat period, e.g. `"10s"`.
    pub heartbeat_interval: Option<String>,
}

/// `[[route]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    /// Exact host name, or `*.suffix` for every name under `suffix`.
    pub host: String,
    /// `host:port` of the backend.
    pub backend: String,
    /// Overrides the global `proxy_protocol` for this route.
    pub proxy_protocol: Option<bool>,
}

impl RawConfig {
    /// Reads a TOML file.
    ///
    /// # Errors
    ///
    /// The file cannot be read or is not valid TOML of this shape; the message names the
    /// file and the problem.
    pub fn from_file(path: &Path) -> Result<Self, ConfigErrors> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigErrors::one(format!("{}: {e}", path.display())))?;
        toml::from_str(&text).map_err(|e| ConfigErrors::one(format!("{}: {e}", path.display())))
    }
}

/// Where a connection is sent, and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstream {
    /// Address to connect to.
    pub addr: UpstreamAddr,
    /// Prefix the connection with a PROXY v2 header.
    pub proxy_protocol: bool,
}

/// A `host:port` to connect to: an IP literal, or a DNS name resolved at connect time (peer
/// pods come and go, so their names are never resolved once and cached).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpstreamAddr {
    /// An IP address and port.
    Ip(SocketAddr),
    /// A host name and port.
    Name(HostName, u16),
}

impl UpstreamAddr {
    /// Parses `ip:port`, `[v6]:port` or `name:port`.
    ///
    /// # Errors
    ///
    /// A message saying what is wrong with the text.
    pub fn parse(text: &str) -> Result<Self, String> {
        if let Ok(addr) = text.parse::<SocketAddr>() {
            return Ok(Self::Ip(addr));
        }
        let (host, port) = text
            .rsplit_once(':')
            .ok_or_else(|| format!("'{text}' is not host:port"))?;
        let port: u16 = port
            .parse()
            .map_err(|_| format!("'{text}' has an invalid port"))?;
        if port == 0 {
            return Err(format!("'{text}' has port 0"));
        }
        let host = host
            .parse::<HostName>()
            .map_err(|e| format!("'{text}': {e}"))?;
        Ok(Self::Name(host, port))
    }
}

impl fmt::Display for UpstreamAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Ip(a) => a.fmt(f),
            Self::Name(h, p) => write!(f, "{h}:{p}"),
        }
    }
}

/// The peer address template: `{n}` replaced by a peer's ordinal gives its `host:port`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerTemplate(String);

impl PeerTemplate {
    /// Parses a template; it must contain `{n}` and give a valid address for any ordinal.
    ///
    /// # Errors
    ///
    /// A message saying what is wrong.
    pub fn parse(text: &str) -> Result<Self, String> {
        if !text.contains("{n}") {
            return Err(format!("peer_address '{text}' has no {{n}} placeholder"));
        }
        UpstreamAddr::parse(&text.replace("{n}", "0")).map_err(|e| format!("peer_address: {e}"))?;
        Ok(Self(text.to_owned()))
    }

    /// The address of peer `n`.
    pub fn address(&self, n: u32) -> UpstreamAddr {
        // `parse` proved that any decimal in place of {n} yields a valid address.
        UpstreamAddr::parse(&self.0.replace("{n}", &n.to_string()))
            .unwrap_or_else(|_| UpstreamAddr::Ip(SocketAddr::from(([0, 0, 0, 0], 0))))
    }
}

impl fmt::Display for PeerTemplate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// This bridge's place among its peers.
#[derive(Debug, Clone)]
pub struct BridgeIdentity {
    /// The ordinal `n` of `n.bridge.<tunnel_domain>`.
    pub ordinal: u32,
    /// The tunnel domain.
    pub tunnel_domain: HostName,
    /// How to reach the others; without it, names of other bridges are refused.
    pub peers: Option<PeerTemplate>,
}

/// What to do with a hello that names no routed host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DefaultRoute {
    /// Send a TLS `unrecognized_name` alert and close.
    Reject,
    /// Pass the connection to this backend.
    Backend(Upstream),
}

/// Resource limits, typed.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Concurrent connections across all listeners.
    pub max_connections: NonZeroUsize,
    /// Raw hello bytes buffered at most.
    pub max_hello_size: usize,
    /// Accept to complete hello.
    pub detect_timeout: Duration,
    /// Upstream TCP connect.
    pub connect_timeout: Duration,
    /// No bytes either way for this long closes the connection.
    pub idle_timeout: Duration,
    /// Shutdown drain.
    pub shutdown_grace: Duration,
}

/// The bridge's configuration, every value parsed.
#[derive(Debug, Clone)]
pub struct Config {
    /// Public front-door address.
    pub listen: SocketAddr,
    /// Peer-forwarded connections' address.
    pub peer_listen: Option<SocketAddr>,
    /// Admin (metrics, health, readiness) address.
    pub metrics: Option<SocketAddr>,
    /// The routing table.
    pub router: Router,
    /// Limits.
    pub limits: Limits,
    /// Tokio worker threads.
    pub threads: Option<NonZeroUsize>,
    /// Relay with splice(2).
    pub splice: bool,
    /// Tunnel relay settings, when `[api]` is configured.
    pub tunnel: Option<TunnelConfig>,
}

/// The tunnel relay's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TunnelConfig {
    /// Key and certificate files.
    pub data_dir: std::path::PathBuf,
    /// The API's URL.
    pub api_url: String,
    /// The CA certificate file.
    pub ca_file: std::path::PathBuf,
    /// Where to connect to reach the API, instead of resolving its host.
    pub api_address: Option<SocketAddr>,
    /// Heartbeat period.
    pub heartbeat_interval: Duration,
    /// How long one side waits for the other.
    pub match_timeout: Duration,
    /// Waiting sides at most.
    pub max_pending: usize,
}

/// Every problem found in a configuration.
#[derive(Debug)]
pub struct ConfigErrors(pub Vec<String>);

impl ConfigErrors {
    fn one(message: String) -> Self {
        Self(vec![message])
    }
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "  - {e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// Collects problems while a [`Config`] is built.
#[derive(Default)]
struct Problems(Vec<String>);

impl Problems {
    fn check<T>(&mut self, result: Result<T, String>) -> Option<T> {
        result.map_err(|e| self.0.push(e)).ok()
    }
}

fn parse_socket_addr(field: &str, text: &str) -> Result<SocketAddr, String> {
    text.parse()
        .map_err(|_| format!("{field}: '{text}' is not an ip:port address"))
}

fn parse_duration(field: &str, text: Option<&str>, default: Duration) -> Result<Duration, String> {
    let Some(text) = text else {
        return Ok(default);
    };
    let d = humantime::parse_duration(text)
        .map_err(|e| format!("{field}: '{text}' is not a duration like \"10s\" ({e})"))?;
    if d.is_zero() {
        return Err(format!("{field}: must be greater than zero"));
    }
    Ok(d)
}

fn parse_upstream(field: &str, text: &str, proxy_protocol: bool) -> Result<Upstream, String> {
    let addr = UpstreamAddr::parse(text).map_err(|e| format!("{field}: {e}"))?;
    Ok(Upstream {
        addr,
        proxy_protocol,
    })
}

impl TryFrom<RawConfig> for Config {
    type Error = ConfigErrors;

    fn try_from(raw: RawConfig) -> Result<Self, ConfigErrors> {
        let mut p = Problems::default();
        let listen = p.check(parse_socket_addr(
            "listen",
            raw.listen.as_deref().unwrap_or(defaults::LISTEN),
        ));
        let peer_listen = raw
            .peer_listen
            .as_deref()
            .and_then(|t| p.check(parse_socket_addr("peer_listen", t)));
        let metrics = raw
            .metrics
            .as_deref()
            .and_then(|t| p.check(parse_socket_addr("metrics", t)));
        let proxy_protocol = raw.proxy_protocol.unwrap_or(false);

        let identity = match (raw.ordinal, raw.tunnel_domain.as_deref()) {
            (Some(ordinal), Some(domain)) => {
                let domain = p.check(
                    domain
                        .parse::<HostName>()
                        .map_err(|e| format!("tunnel_domain: '{domain}': {e}")),
                );
                let peers = raw
                    .peer_address
                    .as_deref()
                    .and_then(|t| p.check(PeerTemplate::parse(t)));
                domain.map(|tunnel_domain| BridgeIdentity {
                    ordinal,
                    tunnel_domain,
                    peers,
                })
            }
            (None, None) => {
                if raw.peer_address.is_some() {
                    p.0.push("peer_address needs ordinal and tunnel_domain".into());
                }
                None
            }
            (Some(_), None) => {
                p.0.push("ordinal is set but tunnel_domain is not".into());
                None
            }
            (None, Some(_)) => {
                p.0.push("tunnel_domain is set but ordinal is not".into());
                None
            }
        };
        if peer_listen.is_some() && identity.is_none() {
            p.0.push("peer_listen needs ordinal and tunnel_domain".into());
        }
        let local = raw
            .local_backend
            .as_deref()
            .and_then(|t| p.check(parse_upstream("local_backend", t, proxy_protocol)));
        if local.is_some() && identity.is_none() {
            p.0.push("local_backend needs ordinal and tunnel_domain".into());
        }

        let tunnel = match &raw.api {
            None => {
                if raw.data_dir.is_some() {
                    p.0.push(
                        "data_dir is set but [api] is not (it is for the tunnel relay)".into(),
                    );
                }
                None
            }
            Some(api) => {
                if identity.is_none() {
                    p.0.push("[api] (the tunnel relay) needs ordinal and tunnel_domain".into());
                }
                if local.is_some() {
                    p.0.push("local_backend and [api] exclude each other: with [api] this bridge serves its own name".into());
                }
                let url = api.url.clone();
                if url.is_none() {
                    p.0.push("api.url: missing (https://host[:port] of the API)".into());
                }
                if url.as_deref().is_some_and(|u| !u.starts_with("https://")) {
                    p.0.push("api.url: must start with https://".into());
                }
                let ca_file = api.ca_file.clone();
                if ca_file.is_none() {
                    p.0.push("api.ca_file: missing (PEM of the BAMF CA)".into());
                }
                let api_address = api
                    .address
                    .as_deref()
                    .and_then(|t| p.check(parse_socket_addr("api.address", t)));
                let heartbeat_interval = p.check(parse_duration(
                    "api.heartbeat_interval",
                    api.heartbeat_interval.as_deref(),
                    defaults::HEARTBEAT_INTERVAL,
                ));
                let match_timeout = p.check(parse_duration(
                    "limits.match_timeout",
                    raw.limits.match_timeout.as_deref(),
                    defaults::MATCH_TIMEOUT,
                ));
                let max_pending = raw.limits.max_pending.unwrap_or(defaults::MAX_PENDING);
                if max_pending == 0 {
                    p.0.push("limits.max_pending: must be at least 1".into());
                }
                match (url, ca_file, heartbeat_interval, match_timeout) {
                    (
                        Some(api_url),
                        Some(ca_file),
                        Some(heartbeat_interval),
                        Some(match_timeout),
                    ) => Some(TunnelConfig {
                        data_dir: raw.data_dir.as_deref().unwrap_or(defaults::DATA_DIR).into(),
                        api_url,
                        ca_file: ca_file.into(),
                        api_address,
                        heartbeat_interval,
                        match_timeout,
                        max_pending,
                    }),
                    _ => None,
                }
            }
        };

        let default = match raw.default.as_deref() {
            None | Some("reject") => Some(DefaultRoute::Reject),
            Some(t) => p
                .check(parse_upstream("default", t, proxy_protocol))
                .map(DefaultRoute::Backend),
        };

        let mut exact = HashMap::new();
        let mut wildcards = Vec::new();
        for route in &raw.routes {
            let field = format!("route '{}'", route.host);
            let Some(upstream) = p.check(parse_upstream(
                &field,
                &route.backend,
                route.proxy_protocol.unwrap_or(proxy_protocol),
            )) else {
                continue;
            };
            if let Some(suffix) = route.host.strip_prefix("*.") {
                match suffix.parse::<HostName>() {
                    Ok(suffix) if wildcards.iter().any(|w: &Wildcard| w.suffix == suffix) => {
                        p.0.push(format!("{field}: listed twice"));
                    }
                    Ok(suffix) => wildcards.push(Wildcard { suffix, upstream }),
                    Err(e) => p.0.push(format!("{field}: {e}")),
                }
            } else {
                match route.host.parse::<HostName>() {
                    Ok(host) => {
                        if let Some(id) = &identity
                            && crate::route::bridge_ordinal(&host, &id.tunnel_domain).is_some()
                        {
                            p.0.push(format!("{field}: inside the bridge names of tunnel_domain"));
                        }
                        if exact.insert(host, upstream).is_some() {
                            p.0.push(format!("{field}: listed twice"));
                        }
                    }
                    Err(e) => {
                        p.0.push(format!("{field}: {e} (use '*.suffix' for a wildcard)"))
                    }
                }
            }
        }

        let l = &raw.limits;
        let max_connections = match l.max_connections {
            None => NonZeroUsize::new(defaults::MAX_CONNECTIONS),
            Some(n) => p.check(
                NonZeroUsize::new(n)
                    .ok_or_else(|| "limits.max_connections: must be at least 1".into()),
            ),
        };
        let max_hello_size = l.max_hello_size.unwrap_or(DEFAULT_MAX_HELLO_LEN);
        if !(MAX_HELLO_SIZE_FLOOR..=MAX_HELLO_SIZE_CEILING).contains(&max_hello_size) {
            p.0.push(format!(
                "limits.max_hello_size: {max_hello_size} is outside {MAX_HELLO_SIZE_FLOOR}..={MAX_HELLO_SIZE_CEILING} bytes"
            ));
        }
        let detect_timeout = p.check(parse_duration(
            "limits.detect_timeout",
            l.detect_timeout.as_deref(),
            defaults::DETECT_TIMEOUT,
        ));
        let connect_timeout = p.check(parse_duration(
            "limits.connect_timeout",
            l.connect_timeout.as_deref(),
            defaults::CONNECT_TIMEOUT,
        ));
        let idle_timeout = p.check(parse_duration(
            "limits.idle_timeout",
            l.idle_timeout.as_deref(),
            defaults::IDLE_TIMEOUT,
        ));
        let shutdown_grace = p.check(parse_duration(
            "limits.shutdown_grace",
            l.shutdown_grace.as_deref(),
            defaults::SHUTDOWN_GRACE,
        ));
        let threads = match raw.threads {
            None => None,
            Some(n) => p.check(
                NonZeroUsize::new(n)
                    .map(Some)
                    .ok_or_else(|| "threads: must be at least 1".into()),
            ),
        }
        .flatten();

        // Every field was checked; only now can the typed values be put together.
        match (
            listen,
            default,
            max_connections,
            detect_timeout,
            connect_timeout,
            idle_timeout,
            shutdown_grace,
        ) {
            (
                Some(listen),
                Some(default),
                Some(max_connections),
                Some(detect_timeout),
                Some(connect_timeout),
                Some(idle_timeout),
                Some(shutdown_grace),
            ) if p.0.is_empty() => Ok(Config {
                listen,
                peer_listen,
                metrics,
                router: Router::new(identity, local, tunnel.is_some(), exact, wildcards, default),
                limits: Limits {
                    max_connections,
                    max_hello_size,
                    detect_timeout,
                    connect_timeout,
                    idle_timeout,
                    shutdown_grace,
                },
                threads,
                splice: raw.splice.unwrap_or(true),
                tunnel,
            }),
            _ => Err(ConfigErrors(p.0)),
        }
    }
}

/// Command-line flags; each overrides the file's value, routes add to the file's routes.
#[derive(Debug, Default, clap::Args)]
pub struct Flags {
    /// Public front-door address [default: 0.0.0.0:443]
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<String>,
    /// Address for connections forwarded by peer bridges
    #[arg(long, value_name = "ADDR")]
    pub peer_listen: Option<String>,
    /// Admin address serving /metrics, /health and /ready
    #[arg(long, value_name = "ADDR")]
    pub metrics: Option<String>,
    /// This bridge's ordinal n (its name is n.bridge.<tunnel-domain>)
    #[arg(long, env = "BAMF_BRIDGE_ORDINAL", value_name = "N")]
    pub ordinal: Option<String>,
    /// Domain under which bridges are named
    #[arg(long, value_name = "DOMAIN")]
    pub tunnel_domain: Option<String>,
    /// Peer address template, e.g. bamf-bridge-{n}.bamf-bridge-headless:8443
    #[arg(long, value_name = "TEMPLATE")]
    pub peer_address: Option<String>,
    /// Backend for this bridge's own name
    #[arg(long, value_name = "ADDR")]
    pub local_backend: Option<String>,
    /// Static route; HOST may be *.suffix (repeatable)
    #[arg(long = "route", value_name = "HOST=ADDR")]
    pub routes: Vec<String>,
    /// What to do with no or unknown SNI: reject, or a backend ADDR [default: reject]
    #[arg(long, value_name = "reject|ADDR")]
    pub default: Option<String>,
    /// Send a PROXY v2 header to static, default and local backends
    #[arg(long)]
    pub proxy_protocol: bool,
    /// Concurrent connections [default: 10000]
    #[arg(long, value_name = "N")]
    pub max_connections: Option<String>,
    /// Largest ClientHello buffered, in bytes [default: 32768]
    #[arg(long, value_name = "BYTES")]
    pub max_hello_size: Option<String>,
    /// Accept-to-hello deadline [default: 10s]
    #[arg(long, value_name = "DURATION")]
    pub detect_timeout: Option<String>,
    /// Upstream connect deadline [default: 5s]
    #[arg(long, value_name = "DURATION")]
    pub connect_timeout: Option<String>,
    /// Close connections idle this long [default: 1h]
    #[arg(long, value_name = "DURATION")]
    pub idle_timeout: Option<String>,
    /// Shutdown drain deadline [default: 25s]
    #[arg(long, value_name = "DURATION")]
    pub shutdown_grace: Option<String>,
    /// Tokio worker threads [default: one per core]
    #[arg(long, value_name = "N")]
    pub threads: Option<String>,
    /// Copy through user-space buffers instead of splice(2)
    #[arg(long)]
    pub no_splice: bool,
    /// API URL; turns on the tunnel relay for this bridge's own name
    #[arg(long, env = "BAMF_API_URL", value_name = "URL")]
    pub api_url: Option<String>,
    /// PEM file of the BAMF CA (verifies the API)
    #[arg(long, value_name = "FILE")]
    pub api_ca_file: Option<String>,
    /// Connect to the API at this ip:port instead of resolving its host
    #[arg(long, value_name = "ADDR")]
    pub api_address: Option<String>,
    /// Heartbeat period [default: 10s]
    #[arg(long, value_name = "DURATION")]
    pub heartbeat_interval: Option<String>,
    /// Where the bridge keeps its key and certificates [default: /var/lib/bamf-bridge]
    #[arg(long, env = "BAMF_BRIDGE_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<String>,
    /// How long one side of a tunnel waits for the other [default: 30s]
    #[arg(long, value_name = "DURATION")]
    pub match_timeout: Option<String>,
}

impl Flags {
    /// Lays the flags over a file's configuration.
    ///
    /// # Errors
    ///
    /// Every flag whose text is not a valid value.
    pub fn apply(self, raw: &mut RawConfig) -> Result<(), ConfigErrors> {
        let mut p = Problems::default();
        fn number<T: std::str::FromStr>(
            p: &mut Problems,
            flag: &str,
            text: Option<String>,
        ) -> Option<T> {
            let text = text?;
            p.check(
                text.parse()
                    .map_err(|_| format!("--{flag}: '{text}' is not a number")),
            )
        }
        let set = |slot: &mut Option<String>, v: Option<String>| {
            if v.is_some() {
                *slot = v;
            }
        };
        set(&mut raw.listen, self.listen);
        set(&mut raw.peer_listen, self.peer_listen);
        set(&mut raw.metrics, self.metrics);
        set(&mut raw.tunnel_domain, self.tunnel_domain);
        set(&mut raw.peer_address, self.peer_address);
        set(&mut raw.local_backend, self.local_backend);
        set(&mut raw.default, self.default);
        set(&mut raw.limits.detect_timeout, self.detect_timeout);
        set(&mut raw.limits.connect_timeout, self.connect_timeout);
        set(&mut raw.limits.idle_timeout, self.idle_timeout);
        set(&mut raw.limits.shutdown_grace, self.shutdown_grace);
        set(&mut raw.limits.match_timeout, self.match_timeout);
        set(&mut raw.data_dir, self.data_dir);
        if self.api_url.is_some()
            || self.api_ca_file.is_some()
            || self.api_address.is_some()
            || self.heartbeat_interval.is_some()
        {
            let api = raw.api.get_or_insert_with(RawApi::default);
            set(&mut api.url, self.api_url);
            set(&mut api.ca_file, self.api_ca_file);
            set(&mut api.address, self.api_address);
            set(&mut api.heartbeat_interval, self.heartbeat_interval);
        }
        if let Some(n) = number(&mut p, "ordinal", self.ordinal) {
            raw.ordinal = Some(n);
        }
        if let Some(n) = number(&mut p, "max-connections", self.max_connections) {
            raw.limits.max_connections = Some(n);
        }
        if let Some(n) = number(&mut p, "max-hello-size", self.max_hello_size) {
            raw.limits.max_hello_size = Some(n);
        }
        if let Some(n) = number(&mut p, "threads", self.threads) {
            raw.threads = Some(n);
        }
        if self.proxy_protocol {
            raw.proxy_protocol = Some(true);
        }
        if self.no_splice {
            raw.splice = Some(false);
        }
        for route in self.routes {
            match route.split_once('=') {
                Some((host, backend)) => raw.routes.push(RawRoute {
                    host: host.to_owned(),
                    backend: backend.to_owned(),
                    proxy_protocol: None,
                }),
                None => p.0.push(format!("--route: '{route}' is not HOST=ADDR")),
            }
        }
        if p.0.is_empty() {
            Ok(())
        } else {
            Err(ConfigErrors(p.0))
        }
    }
}

/// Builds the configuration from an optional file and flags, collecting every problem.
///
/// # Errors
///
/// [`ConfigErrors`] lists each problem, flags and file together.
pub fn load(file: Option<&Path>, flags: Flags) -> Result<Config, ConfigErrors> {
    let mut raw = match file {
        Some(path) => RawConfig::from_file(path)?,
        None => RawConfig::default(),
    };
    let flag_errors = flags.apply(&mut raw).err();
    match (Config::try_from(raw), flag_errors) {
        (Ok(config), None) => Ok(config),
        (Ok(_), Some(e)) => Err(e),
        (Err(mut e), flag_errors) => {
            if let Some(f) = flag_errors {
                e.0.splice(0..0, f.0);
            }
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn from_toml(text: &str) -> Result<Config, ConfigErrors> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigErrors::one(e.to_string()))?;
        Config::try_from(raw)
    }

    #[test]
    fn defaults_are_usable() {
        let c = from_toml("").unwrap();
        assert_eq!(c.listen, "0.0.0.0:443".parse().unwrap());
        assert_eq!(c.limits.detect_timeout, Duration::from_secs(10));
        assert_eq!(c.limits.max_hello_size, DEFAULT_MAX_HELLO_LEN);
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let e = from_toml(
            r#"
            listen = "nope"
            default = "also nope"
            ordinal = 1
            [limits]
            detect_timeout = "10 parsecs"
            idle_timeout = "0s"
            max_connections = 0
            max_hello_size = 100
            [[route]]
            host = "a..b"
            backend = "127.0.0.1:1"
            [[route]]
            host = "ok.test"
            backend = "ok.test"
            "#,
        )
        .unwrap_err();
        let text = e.to_string();
        for needle in [
            "listen",
            "default",
            "ordinal is set but tunnel_domain is not",
            "detect_timeout",
            "idle_timeout",
            "max_connections",
            "max_hello_size",
            "route 'a..b'",
            "route 'ok.test'",
        ] {
            assert!(text.contains(needle), "missing {needle} in:\n{text}");
        }
        assert_eq!(e.0.len(), 9, "{text}");
    }

    #[test]
    fn unknown_keys_are_refused() {
        let e = from_toml("listn = \"0.0.0.0:443\"").unwrap_err();
        assert!(e.to_string().contains("listn"), "{e}");
        let e = from_toml("[limits]\nidle = \"1s\"").unwrap_err();
        assert!(e.to_string().contains("idle"), "{e}");
    }

    #[test]
    fn flags_override_and_add() {
        let mut raw: RawConfig = toml::from_str(
            "listen = \"127.0.0.1:1\"\n[[route]]\nhost = \"a.test\"\nbackend = \"127.0.0.1:2\"",
        )
        .unwrap();
        let flags = Flags {
            listen: Some("127.0.0.1:3".into()),
            routes: vec!["*.b.test=127.0.0.1:4".into(), "broken".into()],
            threads: Some("x".into()),
            ..Flags::default()
        };
        let e = flags.apply(&mut raw).unwrap_err();
        assert_eq!(e.0.len(), 2, "{e}");
        assert_eq!(raw.listen.as_deref(), Some("127.0.0.1:3"));
        assert_eq!(raw.routes.len(), 2);
    }

    #[test]
    fn static_routes_may_not_shadow_bridge_names() {
        let e = from_toml(
            r#"
            ordinal = 0
            tunnel_domain = "tunnel.test"
            [[route]]
            host = "3.bridge.tunnel.test"
            backend = "127.0.0.1:1"
            "#,
        )
        .unwrap_err();
        assert!(e.to_string().contains("bridge names"), "{e}");
    }

    #[test]
    fn peer_template_needs_placeholder_and_valid_address() {
        assert!(PeerTemplate::parse("bamf-bridge-{n}.bamf-bridge-headless:8443").is_ok());
        assert!(PeerTemplate::parse("bamf-bridge.headless:8443").is_err());
        assert!(PeerTemplate::parse("bamf-bridge-{n}:http").is_err());
        let t = PeerTemplate::parse("10.0.0.{n}:8443").unwrap();
        assert_eq!(
            t.address(7),
            UpstreamAddr::Ip("10.0.0.7:8443".parse().unwrap())
        );
    }

    #[test]
    fn example_configs_parse() {
        let dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples");
        let mut seen = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("bridge") && n.ends_with(".toml"))
            {
                load(Some(&path), Flags::default())
                    .unwrap_or_else(|e| panic!("{}:\n{e}", path.display()));
                seen += 1;
            }
        }
        assert!(seen > 0, "no bridge example under {}", dir.display());
    }
}

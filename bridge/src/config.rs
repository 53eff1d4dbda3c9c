//! Configuration: a TOML file and command-line flags become one typed [`Config`].
//!
//! Two steps, as everywhere in BAMF: [`RawConfig`] is what the file and flags say (strict:
//! unknown keys are errors), [`Config`] is what the bridge runs on (addresses, durations,
//! host names, all parsed). Building a `Config` collects *every* problem before failing, so
//! an operator fixes a file in one pass, and it never binds a socket. The routing table is
//! built from the checked [`RouteSpecs`] by [`crate::route`]; the shared parsers and the
//! problem list come from [`bamf_runtime::config`].

use std::collections::HashSet;
use std::fmt;
use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::path::Path;
use std::time::Duration;

use bamf_proto::HostName;
use bamf_proto::sni::DEFAULT_MAX_HELLO_LEN;
pub use bamf_runtime::config::{ConfigErrors, HostPort};
use bamf_runtime::config::{Problems, load_toml, socket_addr};
use serde::Deserialize;

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

/// Where a connection is sent, and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstream {
    /// Address to connect to (peer pods come and go, so names are resolved at each connect).
    pub addr: HostPort,
    /// Prefix the connection with a PROXY v2 header.
    pub proxy_protocol: bool,
}

impl Upstream {
    fn parse(field: &str, text: &str, proxy_protocol: bool) -> Result<Self, String> {
        Ok(Self {
            addr: HostPort::field(field, text)?,
            proxy_protocol,
        })
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
        HostPort::field("peer_address", &text.replace("{n}", "0"))?;
        Ok(Self(text.to_owned()))
    }

    /// The address of peer `n`.
    pub fn address(&self, n: u32) -> HostPort {
        // `parse` proved that any decimal in place of {n} yields a valid address.
        HostPort::parse(&self.0.replace("{n}", &n.to_string()))
            .unwrap_or_else(|_| HostPort::Ip(SocketAddr::from(([0, 0, 0, 0], 0))))
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

impl BridgeIdentity {
    /// For a name under `bridge.<tunnel_domain>`: `Some(Some(n))` for `<n>.bridge.<domain>`
    /// with a canonical decimal `n`, `Some(None)` for any other name in that namespace, `None`
    /// outside it.
    pub fn bridge_ordinal(&self, name: &HostName) -> Option<Option<u32>> {
        name.bridge_ordinal(&self.tunnel_domain)
    }
}

/// What to do with a hello that names no routed host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DefaultRoute {
    /// Send a TLS `unrecognized_name` alert and close.
    Reject,
    /// Pass the connection to this backend.
    Backend(Upstream),
}

/// The host side of a static route.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum HostPattern {
    /// This name only.
    Exact(HostName),
    /// `*.suffix`: any name with one or more labels before `.suffix` (the suffix is held).
    Wildcard(HostName),
}

/// `[[route]]`, parsed: no two routes have the same host pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaticRoute {
    /// The names it takes.
    pub host: HostPattern,
    /// Where they go.
    pub upstream: Upstream,
}

/// Everything the routing table ([`crate::route::Router`]) is built from, checked.
#[derive(Debug, Clone)]
pub struct RouteSpecs {
    /// This bridge's name and peers, when it has a name.
    pub identity: Option<BridgeIdentity>,
    /// The backend of this bridge's own name, without a tunnel relay.
    pub local: Option<Upstream>,
    /// This bridge's own name is served by the tunnel relay.
    pub tunnel: bool,
    /// Static routes, in file order then flag order.
    pub statics: Vec<StaticRoute>,
    /// For names no route takes.
    pub default: DefaultRoute,
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
    /// What the routing table is built from.
    pub routes: RouteSpecs,
    /// Limits.
    pub limits: Limits,
    /// Tokio worker threads.
    pub threads: Option<NonZeroUsize>,
    /// Relay with splice(2).
    pub splice: bool,
    /// Tunnel relay settings, when `[api]` is configured.
    pub tunnel: Option<TunnelConfig>,
}

impl Config {
    /// This bridge's ordinal, when it has a name.
    pub fn ordinal(&self) -> Option<u32> {
        self.routes.identity.as_ref().map(|id| id.ordinal)
    }
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

impl TryFrom<RawConfig> for Config {
    type Error = ConfigErrors;

    fn try_from(raw: RawConfig) -> Result<Self, ConfigErrors> {
        let mut p = Problems::new();
        let listen = p.check(socket_addr(
            "listen",
            raw.listen.as_deref().unwrap_or(defaults::LISTEN),
        ));
        let peer_listen = p.socket_addr("peer_listen", raw.peer_listen.as_deref());
        let metrics = p.socket_addr("metrics", raw.metrics.as_deref());
        let proxy_protocol = raw.proxy_protocol.unwrap_or(false);

        let identity = identity(&mut p, &raw);
        if peer_listen.is_some() && identity.is_none() {
            p.push("peer_listen needs ordinal and tunnel_domain");
        }
        let local = raw
            .local_backend
            .as_deref()
            .and_then(|t| p.check(Upstream::parse("local_backend", t, proxy_protocol)));
        if local.is_some() && identity.is_none() {
            p.push("local_backend needs ordinal and tunnel_domain");
        }
        let tunnel = tunnel(&mut p, &raw, identity.is_some(), local.is_some());
        let default = match raw.default.as_deref() {
            None | Some("reject") => Some(DefaultRoute::Reject),
            Some(t) => p
                .check(Upstream::parse("default", t, proxy_protocol))
                .map(DefaultRoute::Backend),
        };
        let statics = static_routes(&mut p, &raw.routes, identity.as_ref(), proxy_protocol);
        let limits = limits(&mut p, &raw.limits);
        let threads = match raw.threads {
            None => None,
            Some(n) => p.check(
                NonZeroUsize::new(n)
                    .map(Some)
                    .ok_or_else(|| "threads: must be at least 1".into()),
            ),
        }
        .flatten();

        let config = match (listen, default, limits) {
            (Some(listen), Some(default), Some(limits)) => Some(Config {
                listen,
                peer_listen,
                metrics,
                routes: RouteSpecs {
                    identity,
                    local,
                    tunnel: tunnel.is_some(),
                    statics,
                    default,
                },
                limits,
                threads,
                splice: raw.splice.unwrap_or(true),
                tunnel,
            }),
            _ => None,
        };
        p.finish(config)
    }
}

/// `ordinal`, `tunnel_domain` and `peer_address`: all or none of the first two.
fn identity(p: &mut Problems, raw: &RawConfig) -> Option<BridgeIdentity> {
    match (raw.ordinal, raw.tunnel_domain.as_deref()) {
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
                p.push("peer_address needs ordinal and tunnel_domain");
            }
            None
        }
        (Some(_), None) => {
            p.push("ordinal is set but tunnel_domain is not");
            None
        }
        (None, Some(_)) => {
            p.push("tunnel_domain is set but ordinal is not");
            None
        }
    }
}

/// `[api]` and the tunnel relay's limits; `None` without `[api]`.
fn tunnel(
    p: &mut Problems,
    raw: &RawConfig,
    has_identity: bool,
    has_local: bool,
) -> Option<TunnelConfig> {
    let Some(api) = &raw.api else {
        if raw.data_dir.is_some() {
            p.push("data_dir is set but [api] is not (it is for the tunnel relay)");
        }
        return None;
    };
    if !has_identity {
        p.push("[api] (the tunnel relay) needs ordinal and tunnel_domain");
    }
    if has_local {
        p.push(
            "local_backend and [api] exclude each other: with [api] this bridge serves its own name",
        );
    }
    let api_url = api.url.clone();
    match api_url.as_deref() {
        None => p.push("api.url: missing (https://host[:port] of the API)"),
        Some(u) if !u.starts_with("https://") => p.push("api.url: must start with https://"),
        Some(_) => {}
    }
    let ca_file = api.ca_file.clone();
    if ca_file.is_none() {
        p.push("api.ca_file: missing (PEM of the BAMF CA)");
    }
    let api_address = p.socket_addr("api.address", api.address.as_deref());
    let heartbeat_interval = p.duration(
        "api.heartbeat_interval",
        api.heartbeat_interval.as_deref(),
        defaults::HEARTBEAT_INTERVAL,
    );
    let match_timeout = p.duration(
        "limits.match_timeout",
        raw.limits.match_timeout.as_deref(),
        defaults::MATCH_TIMEOUT,
    );
    let max_pending = raw.limits.max_pending.unwrap_or(defaults::MAX_PENDING);
    if max_pending == 0 {
        p.push("limits.max_pending: must be at least 1");
    }
    Some(TunnelConfig {
        data_dir: raw.data_dir.as_deref().unwrap_or(defaults::DATA_DIR).into(),
        api_url: api_url?,
        ca_file: ca_file?.into(),
        api_address,
        heartbeat_interval: heartbeat_interval?,
        match_timeout: match_timeout?,
        max_pending,
    })
}

/// `[[route]]`: each backend parsed, each host pattern once, none inside the bridge names.
fn static_routes(
    p: &mut Problems,
    raw: &[RawRoute],
    identity: Option<&BridgeIdentity>,
    proxy_protocol: bool,
) -> Vec<StaticRoute> {
    let mut routes: Vec<StaticRoute> = Vec::with_capacity(raw.len());
    let mut seen = HashSet::new();
    for route in raw {
        let field = format!("route '{}'", route.host);
        let proxy_protocol = route.proxy_protocol.unwrap_or(proxy_protocol);
        let Some(upstream) = p.check(Upstream::parse(&field, &route.backend, proxy_protocol))
        else {
            continue;
        };
        let host = match route.host.strip_prefix("*.") {
            Some(suffix) => suffix.parse().map(HostPattern::Wildcard),
            None => route.host.parse().map(HostPattern::Exact),
        };
        let host = match host {
            Ok(host) => host,
            Err(e) if route.host.starts_with("*.") => {
                p.push(format!("{field}: {e}"));
                continue;
            }
            Err(e) => {
                p.push(format!("{field}: {e} (use '*.suffix' for a wildcard)"));
                continue;
            }
        };
        if let (HostPattern::Exact(name), Some(id)) = (&host, identity)
            && id.bridge_ordinal(name).is_some()
        {
            p.push(format!("{field}: inside the bridge names of tunnel_domain"));
        }
        if !seen.insert(host.clone()) {
            p.push(format!("{field}: listed twice"));
            continue;
        }
        routes.push(StaticRoute { host, upstream });
    }
    routes
}

/// `[limits]` of the front door (the tunnel relay's are read by [`tunnel`]).
fn limits(p: &mut Problems, l: &RawLimits) -> Option<Limits> {
    let max_connections = match l.max_connections {
        None => NonZeroUsize::new(defaults::MAX_CONNECTIONS),
        Some(n) => p.check(
            NonZeroUsize::new(n).ok_or_else(|| "limits.max_connections: must be at least 1".into()),
        ),
    };
    let max_hello_size = l.max_hello_size.unwrap_or(DEFAULT_MAX_HELLO_LEN);
    if !(MAX_HELLO_SIZE_FLOOR..=MAX_HELLO_SIZE_CEILING).contains(&max_hello_size) {
        p.push(format!(
            "limits.max_hello_size: {max_hello_size} is outside {MAX_HELLO_SIZE_FLOOR}..={MAX_HELLO_SIZE_CEILING} bytes"
        ));
    }
    let mut timeout = |field: &str, text: &Option<String>, default: Duration| {
        p.duration(field, text.as_deref(), default)
    };
    let detect_timeout = timeout(
        "limits.detect_timeout",
        &l.detect_timeout,
        defaults::DETECT_TIMEOUT,
    );
    let connect_timeout = timeout(
        "limits.connect_timeout",
        &l.connect_timeout,
        defaults::CONNECT_TIMEOUT,
    );
    let idle_timeout = timeout(
        "limits.idle_timeout",
        &l.idle_timeout,
        defaults::IDLE_TIMEOUT,
    );
    let shutdown_grace = timeout(
        "limits.shutdown_grace",
        &l.shutdown_grace,
        defaults::SHUTDOWN_GRACE,
    );
    Some(Limits {
        max_connections: max_connections?,
        max_hello_size,
        detect_timeout: detect_timeout?,
        connect_timeout: connect_timeout?,
        idle_timeout: idle_timeout?,
        shutdown_grace: shutdown_grace?,
    })
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
    /// This bridge's ordinal n (its name is `n.bridge.<tunnel-domain>`)
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
        let mut p = Problems::new();
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
                None => p.push(format!("--route: '{route}' is not HOST=ADDR")),
            }
        }
        p.finish(Some(()))
    }
}

/// Builds the configuration from an optional file and flags, collecting every problem.
///
/// # Errors
///
/// [`ConfigErrors`] lists each problem, flags and file together.
pub fn load(file: Option<&Path>, flags: Flags) -> Result<Config, ConfigErrors> {
    let mut raw = match file {
        Some(path) => load_toml(path)?,
        None => RawConfig::default(),
    };
    let flag_errors = flags.apply(&mut raw).err();
    match (Config::try_from(raw), flag_errors) {
        (Ok(config), None) => Ok(config),
        (Ok(_), Some(e)) => Err(e),
        (Err(mut e), flag_errors) => {
            if let Some(f) = flag_errors {
                e.prepend(f);
            }
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn from_toml(text: &str) -> Result<Config, ConfigErrors> {
        Config::try_from(bamf_runtime::config::parse_toml::<RawConfig>(
            "bridge.toml",
            text,
        )?)
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
        assert_eq!(e.len(), 9, "{text}");
    }

    #[test]
    fn unknown_keys_are_refused() {
        let e = from_toml("listn = \"0.0.0.0:443\"").unwrap_err();
        assert!(e.to_string().contains("bridge.toml:1:1: "), "{e}");
        assert!(e.to_string().contains("listn"), "{e}");
        let e = from_toml("[limits]\nidle = \"1s\"").unwrap_err();
        assert!(e.to_string().contains("bridge.toml:2:1: "), "{e}");
        assert!(e.to_string().contains("idle"), "{e}");
    }

    #[test]
    fn flags_override_and_add() {
        let mut raw: RawConfig = bamf_runtime::config::parse_toml(
            "bridge.toml",
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
        assert_eq!(e.len(), 2, "{e}");
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
        assert_eq!(t.address(7), HostPort::Ip("10.0.0.7:8443".parse().unwrap()));
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

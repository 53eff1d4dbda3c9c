//! Configuration: a TOML file becomes one typed [`Config`].
//!
//! Two steps, as in the bridge: [`RawConfig`] is what the file says (strict: unknown keys are
//! errors), [`Config`] is what the agent runs on (names, addresses, durations and the CA
//! bundle, all parsed). Building a `Config` collects *every* problem before failing, so an
//! operator fixes a file in one pass, and nothing is bound or contacted before it succeeds.
//! The shared parsers and the problem list come from [`bamf_runtime::config`].

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bamf_proto::san::Name;
pub use bamf_runtime::config::{ConfigErrors, HostPort};
use bamf_runtime::config::{Problems, load_toml};
use serde::Deserialize;

/// Defaults, each with the reason for its value.
pub mod defaults {
    use std::time::Duration;

    /// Far above what one agent host serves; each open tunnel holds two sockets and two
    /// 16 KiB buffers, so the bound is also a memory bound (about 32 MiB).
    pub const MAX_TUNNELS: usize = 1024;
    /// Interactive sessions sit idle for long stretches; an hour matches common SSH habits
    /// and the bridge's own idle timeout.
    pub const IDLE_TIMEOUT: Duration = Duration::from_secs(3600);
    /// Targets sit next to the agent: 10 s means the target is not coming.
    pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
    /// Kubernetes' default termination grace is 30 s; we leave it a margin to report.
    pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(25);
    /// A bridge restart or a client's network change heals in seconds; a minute covers a
    /// slow one without holding a dead session's resource connection long.
    pub const RESUME_TIMEOUT: Duration = Duration::from_secs(60);
    /// Enough to keep a fast link busy while acknowledgements travel; a full buffer only
    /// slows the resource down.
    pub const RESUME_BUFFER: usize = 4 * 1024 * 1024;
}

/// Bounds of `resume_buffer`.
const RESUME_BUFFER_RANGE: std::ops::RangeInclusive<usize> = 64 * 1024..=256 * 1024 * 1024;

/// Most resources one agent may serve (the API refuses larger catalogs).
pub const MAX_RESOURCES: usize = 1000;
/// Most labels per resource (the API's limit).
pub const MAX_LABELS: usize = 32;
/// Longest label key (the API's limit).
const MAX_LABEL_KEY: usize = 63;
/// Longest label value (the API's limit).
const MAX_LABEL_VALUE: usize = 253;
/// More tunnels than this is a typo, not a plan.
const MAX_TUNNELS_CEILING: usize = 1_000_000;

/// The file form of the configuration. Every field is optional here; [`Config`] decides
/// defaults and requirements, so that a missing key is reported with all other problems.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// The agent's name (unique among agents).
    pub name: Option<String>,
    /// `https://host[:port]` of the API.
    pub api_url: Option<String>,
    /// PEM file of the CA that signs the API's certificate.
    pub api_ca_file: Option<String>,
    /// Directory of the agent's key, certificate and identity.
    pub data_dir: Option<String>,
    /// `ip:port` for HTTP `/health`, `/ready` and `/metrics`.
    pub health_listen: Option<String>,
    /// `ip:port` to dial bridges at instead of resolving their names.
    pub bridge_address: Option<String>,
    /// `ip:port` to reach the API at instead of resolving the host of `api_url`.
    pub api_address: Option<String>,
    /// Tunnels open at once.
    pub max_tunnels: Option<usize>,
    /// A tunnel with no bytes either way for this long is closed, e.g. `"1h"`.
    pub idle_timeout: Option<String>,
    /// Deadline for connecting to a resource.
    pub connect_timeout: Option<String>,
    /// How long shutdown waits for open tunnels.
    pub shutdown_grace: Option<String>,
    /// How long a tunnel whose path broke waits for the client to attach again.
    pub resume_timeout: Option<String>,
    /// Bytes from a resource kept per tunnel until the client acknowledges them; a resource
    /// is not read beyond (a size in bytes).
    pub resume_buffer: Option<usize>,
    /// What this agent serves.
    #[serde(default)]
    pub resources: Vec<RawResource>,
}

/// `[[resources]]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawResource {
    /// Resource name, unique across the whole deployment.
    pub name: Option<String>,
    /// `ssh`, `postgres` or `tcp`.
    pub kind: Option<String>,
    /// `host:port` as seen from the agent.
    pub address: Option<String>,
    /// Labels for access rules.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// Reads and parses the configuration file at `path`.
///
/// # Errors
///
/// Every problem found, at once.
pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
    let raw: RawConfig = load_toml(path)?;
    // A relative `api_ca_file` is relative to the configuration file, like an include.
    let base = path.parent().unwrap_or(Path::new("."));
    Config::build(raw, base)
}

/// The kind of a resource: the API's, one definition.
pub use bamf_proto::api::ResourceKind as Kind;

/// The API's URL, `https://host[:port]` without a path: what `bamf_client::https::Api`
/// accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiUrl(String);

impl ApiUrl {
    /// Parses an API URL.
    ///
    /// # Errors
    ///
    /// A message saying what is wrong.
    pub fn parse(text: &str) -> Result<Self, String> {
        let bad = || format!("api_url: '{text}' is not https://host[:port]");
        let uri: http::Uri = text.trim_end_matches('/').parse().map_err(|_| bad())?;
        if uri.scheme_str() != Some("https") || uri.path().len() > 1 || uri.query().is_some() {
            return Err(bad());
        }
        let host = uri.host().ok_or_else(bad)?;
        if host.is_empty() || uri.port().is_some_and(|p| p.as_u16() == 0) {
            return Err(bad());
        }
        Ok(Self(text.trim_end_matches('/').to_owned()))
    }

    /// The URL.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The CA bundle that verifies the API before the agent has joined: its file and content,
/// proved to hold at least one certificate.
#[derive(Clone, PartialEq, Eq)]
pub struct CaBundle {
    /// Where it was read from.
    pub path: PathBuf,
    /// The PEM text.
    pub pem: String,
}

impl fmt::Debug for CaBundle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CaBundle({})", self.path.display())
    }
}

impl CaBundle {
    fn read(path: PathBuf) -> Result<Self, String> {
        let pem = std::fs::read_to_string(&path)
            .map_err(|e| format!("api_ca_file: {}: {e}", path.display()))?;
        bamf_client::tls_config(&pem, None, &[])
            .map_err(|e| format!("api_ca_file: {}: {e}", path.display()))?;
        Ok(Self { path, pem })
    }
}

/// One resource the agent serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resource {
    /// Its name.
    pub name: Name,
    /// Its kind.
    pub kind: Kind,
    /// Where the agent connects for it.
    pub address: HostPort,
    /// Labels for access rules.
    pub labels: BTreeMap<String, String>,
}

/// Limits and deadlines, typed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Tunnels open at once; dial commands beyond are dropped.
    pub max_tunnels: NonZeroUsize,
    /// No bytes either way for this long closes a tunnel.
    pub idle_timeout: Duration,
    /// Deadline for connecting to a resource.
    pub connect_timeout: Duration,
    /// How long shutdown waits for open tunnels before cutting them.
    pub shutdown_grace: Duration,
    /// How long a tunnel whose path broke waits for the client to attach again.
    pub resume_timeout: Duration,
    /// Replay buffer per tunnel.
    pub resume_buffer: usize,
}

/// The agent's configuration, every value parsed.
#[derive(Debug, Clone)]
pub struct Config {
    /// The agent's name.
    pub name: Name,
    /// The API.
    pub api_url: ApiUrl,
    /// Verifies the API before joining.
    pub api_ca: CaBundle,
    /// Key, certificate and identity files.
    pub data_dir: PathBuf,
    /// HTTP `/health`, `/ready` and `/metrics`.
    pub health_listen: Option<SocketAddr>,
    /// Dial bridges here instead of resolving their names.
    pub bridge_address: Option<SocketAddr>,
    /// Reach the API here instead of resolving its host.
    pub api_address: Option<SocketAddr>,
    /// Limits and deadlines.
    pub limits: Limits,
    /// What the agent serves, in file order.
    pub resources: Vec<Resource>,
}

impl Config {
    /// The resource called `name`.
    pub fn resource(&self, name: &str) -> Option<&Resource> {
        self.resources.iter().find(|r| r.name.as_str() == name)
    }

    /// Builds a configuration; relative file paths are taken relative to `base`.
    ///
    /// # Errors
    ///
    /// Every problem found.
    pub fn build(raw: RawConfig, base: &Path) -> Result<Self, ConfigErrors> {
        let mut p = Problems::new();
        let name = p.required("name", raw.name.as_deref()).and_then(|t| {
            p.check(t.parse::<Name>().map_err(|_| {
                format!("name: '{t}' must be 1-63 of a-z 0-9 - _ . starting with a letter or digit")
            }))
        });
        let api_url = p
            .required("api_url", raw.api_url.as_deref())
            .and_then(|t| p.check(ApiUrl::parse(t)));
        let api_ca = p
            .required("api_ca_file", raw.api_ca_file.as_deref())
            .and_then(|t| p.check(CaBundle::read(base.join(t))));
        let data_dir = p
            .required("data_dir", raw.data_dir.as_deref())
            .and_then(|t| {
                if t.is_empty() {
                    p.push("data_dir: must not be empty");
                    None
                } else {
                    Some(PathBuf::from(t))
                }
            });
        let health_listen = p.socket_addr("health_listen", raw.health_listen.as_deref());
        let bridge_address = p.socket_addr("bridge_address", raw.bridge_address.as_deref());
        let api_address = p.socket_addr("api_address", raw.api_address.as_deref());
        let max_tunnels = p.check(
            NonZeroUsize::new(raw.max_tunnels.unwrap_or(defaults::MAX_TUNNELS))
                .filter(|n| n.get() <= MAX_TUNNELS_CEILING)
                .ok_or_else(|| format!("max_tunnels: must be between 1 and {MAX_TUNNELS_CEILING}")),
        );
        let idle_timeout = p.duration(
            "idle_timeout",
            raw.idle_timeout.as_deref(),
            defaults::IDLE_TIMEOUT,
        );
        let connect_timeout = p.duration(
            "connect_timeout",
            raw.connect_timeout.as_deref(),
            defaults::CONNECT_TIMEOUT,
        );
        let resume_timeout = p.duration(
            "resume_timeout",
            raw.resume_timeout.as_deref(),
            defaults::RESUME_TIMEOUT,
        );
        let resume_buffer = p.check(
            Some(raw.resume_buffer.unwrap_or(defaults::RESUME_BUFFER))
                .filter(|n| RESUME_BUFFER_RANGE.contains(n))
                .ok_or_else(|| {
                    format!(
                        "resume_buffer: must be between {} and {} bytes",
                        RESUME_BUFFER_RANGE.start(),
                        RESUME_BUFFER_RANGE.end()
                    )
                }),
        );
        // Zero is meaningful here: cut open tunnels at once.
        let shutdown_grace = p.duration_or_zero(
            "shutdown_grace",
            raw.shutdown_grace.as_deref(),
            defaults::SHUTDOWN_GRACE,
        );

        if raw.resources.len() > MAX_RESOURCES {
            p.push(format!("resources: at most {MAX_RESOURCES}"));
        }
        let mut resources = Vec::with_capacity(raw.resources.len());
        let mut seen = HashSet::new();
        for (i, r) in raw.resources.into_iter().enumerate() {
            let at = match &r.name {
                Some(n) => format!("resources[{i}] '{n}'"),
                None => format!("resources[{i}]"),
            };
            // Duplicates are judged on the names as written, valid or not.
            if let Some(name) = &r.name
                && !seen.insert(name.clone())
            {
                p.push(format!("{at}: the name is listed twice"));
            }
            if let Some(resource) = parse_resource(&mut p, &at, r) {
                resources.push(resource);
            }
        }

        let limits = || {
            Some(Limits {
                max_tunnels: max_tunnels?,
                idle_timeout: idle_timeout?,
                connect_timeout: connect_timeout?,
                shutdown_grace: shutdown_grace?,
                resume_timeout: resume_timeout?,
                resume_buffer: resume_buffer?,
            })
        };
        let config = || {
            Some(Self {
                name: name?,
                api_url: api_url?,
                api_ca: api_ca?,
                data_dir: base_relative(base, data_dir?),
                health_listen,
                bridge_address,
                api_address,
                limits: limits()?,
                resources,
            })
        };
        p.finish(config())
    }
}

/// `data_dir` is taken as written when absolute, else relative to the configuration file.
fn base_relative(base: &Path, dir: PathBuf) -> PathBuf {
    if dir.is_absolute() {
        dir
    } else {
        base.join(dir)
    }
}

fn parse_resource(p: &mut Problems, at: &str, r: RawResource) -> Option<Resource> {
    let name = p
        .required(&format!("{at}: name"), r.name.as_deref())
        .and_then(|t| {
            p.check(t.parse::<Name>().map_err(|_| {
                format!("{at}: name must be 1-63 of a-z 0-9 - _ . starting with a letter or digit")
            }))
        });
    let kind = p
        .required(&format!("{at}: kind"), r.kind.as_deref())
        .and_then(|t| {
            p.check(
                t.parse::<Kind>()
                    .map_err(|_| format!("{at}: kind '{t}' is not ssh, postgres or tcp")),
            )
        });
    let address = p
        .required(&format!("{at}: address"), r.address.as_deref())
        .and_then(|t| p.check(HostPort::parse(t).map_err(|e| format!("{at}: address {e}"))));
    let mut labels_ok = true;
    if r.labels.len() > MAX_LABELS {
        p.push(format!("{at}: at most {MAX_LABELS} labels"));
        labels_ok = false;
    }
    for (k, v) in &r.labels {
        if !(1..=MAX_LABEL_KEY).contains(&k.len()) || v.len() > MAX_LABEL_VALUE {
            p.push(format!(
                "{at}: label '{k}': keys are 1-{MAX_LABEL_KEY} characters, values up to {MAX_LABEL_VALUE}"
            ));
            labels_ok = false;
        }
    }
    Some(Resource {
        name: name?,
        kind: kind?,
        address: address?,
        labels: labels_ok.then_some(r.labels)?,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// A scratch directory with a CA file (a real self-signed certificate, so the CA check
    /// parses it), removed on drop.
    struct Dir(PathBuf);

    impl Dir {
        fn new(tag: &str) -> Self {
            let path = std::env::temp_dir()
                .join(format!("bamf-agent-config-{tag}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&path);
            std::fs::create_dir_all(&path).unwrap();
            std::fs::write(path.join("ca.crt"), include_str!("../testdata/ca.crt")).unwrap();
            Self(path)
        }

        fn parse(&self, text: &str) -> Result<Config, ConfigErrors> {
            let file = self.0.join("agent.toml");
            std::fs::write(&file, text).unwrap();
            load(&file)
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    const GOOD: &str = r#"
name = "edge-1"
api_url = "https://bamf.example.com:8443/"
api_ca_file = "ca.crt"
data_dir = "/var/lib/bamf-agent"
health_listen = "127.0.0.1:9091"
bridge_address = "127.0.0.1:8443"
api_address = "127.0.0.1:8444"
max_tunnels = 8
idle_timeout = "5m"
resume_timeout = "30s"
resume_buffer = 1048576
connect_timeout = "2s"
shutdown_grace = "0s"

[[resources]]
name = "db-1"
kind = "postgres"
address = "10.0.0.5:5432"
labels = { env = "dev" }

[[resources]]
name = "ssh-1"
kind = "ssh"
address = "bastion.internal:22"
"#;

    #[test]
    fn a_good_file_parses_into_typed_values() {
        let dir = Dir::new("good");
        let c = dir.parse(GOOD).unwrap();
        assert_eq!(c.name.as_str(), "edge-1");
        assert_eq!(c.api_url.as_str(), "https://bamf.example.com:8443");
        assert_eq!(c.api_ca.path, dir.0.join("ca.crt"));
        assert!(c.api_ca.pem.contains("BEGIN CERTIFICATE"));
        assert_eq!(c.data_dir, PathBuf::from("/var/lib/bamf-agent"));
        assert_eq!(c.health_listen, Some("127.0.0.1:9091".parse().unwrap()));
        assert_eq!(c.bridge_address, Some("127.0.0.1:8443".parse().unwrap()));
        assert_eq!(c.api_address, Some("127.0.0.1:8444".parse().unwrap()));
        assert_eq!(
            c.limits,
            Limits {
                max_tunnels: NonZeroUsize::new(8).unwrap(),
                idle_timeout: Duration::from_secs(300),
                connect_timeout: Duration::from_secs(2),
                shutdown_grace: Duration::ZERO,
                resume_timeout: Duration::from_secs(30),
                resume_buffer: 1024 * 1024,
            }
        );
        let db = c.resource("db-1").unwrap();
        assert_eq!(db.kind, Kind::Postgres);
        assert_eq!(db.address, HostPort::Ip("10.0.0.5:5432".parse().unwrap()));
        assert_eq!(db.labels["env"], "dev");
        let ssh = c.resource("ssh-1").unwrap();
        assert_eq!(ssh.address.to_string(), "bastion.internal:22");
        assert!(ssh.labels.is_empty());
        assert!(c.resource("nope").is_none());
    }

    #[test]
    fn defaults_apply_and_relative_paths_follow_the_file() {
        let dir = Dir::new("defaults");
        let c = dir
            .parse(
                r#"name = "a"
api_url = "https://localhost"
api_ca_file = "ca.crt"
data_dir = "state"
"#,
            )
            .unwrap();
        assert_eq!(c.data_dir, dir.0.join("state"));
        assert_eq!(c.limits.max_tunnels.get(), defaults::MAX_TUNNELS);
        assert_eq!(c.limits.idle_timeout, defaults::IDLE_TIMEOUT);
        assert_eq!(c.limits.connect_timeout, defaults::CONNECT_TIMEOUT);
        assert_eq!(c.limits.shutdown_grace, defaults::SHUTDOWN_GRACE);
        assert!(c.resources.is_empty() && c.health_listen.is_none());
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let dir = Dir::new("bad");
        let errors = dir
            .parse(
                r#"name = "Edge 1"
api_url = "http://bamf.example.com/path"
api_ca_file = "missing.crt"
health_listen = "localhost:9091"
bridge_address = "nope"
max_tunnels = 0
idle_timeout = "forever"
connect_timeout = "0s"
shutdown_grace = "soon"

[[resources]]
name = "db-1"
kind = "mysql"
address = "10.0.0.5"

[[resources]]
kind = "tcp"
address = "host:0"
labels = { "" = "x" }

[[resources]]
name = "db-1"
kind = "tcp"
address = "10.0.0.6:5432"

[[resources]]
name = "db-1"
kind = "tcp"
address = "10.0.0.7:5432"
"#,
            )
            .unwrap_err();
        let expected = [
            "name: 'Edge 1'",
            "api_url: 'http://bamf.example.com/path'",
            "api_ca_file:",
            "missing.crt",
            "data_dir: required",
            "health_listen: 'localhost:9091'",
            "bridge_address: 'nope'",
            "max_tunnels: must be between 1",
            "idle_timeout: 'forever'",
            "connect_timeout: must be greater than zero",
            "shutdown_grace: 'soon'",
            "resources[0] 'db-1': kind 'mysql'",
            "resources[0] 'db-1': address '10.0.0.5' is not host:port",
            "resources[1]: name: required",
            "resources[1]: address 'host:0' has port 0",
            "resources[1]: label ''",
            "resources[2] 'db-1': the name is listed twice",
            "resources[3] 'db-1': the name is listed twice",
        ];
        let text = errors.problems().join("\n");
        for e in expected {
            assert!(text.contains(e), "missing {e:?} in:\n{text}");
        }
        // `api_ca_file:` and `missing.crt` are one problem.
        assert_eq!(errors.len(), expected.len() - 1, "{text}");
    }

    #[test]
    fn unknown_keys_and_wrong_types_are_refused() {
        let dir = Dir::new("unknown");
        let base =
            "name = \"a\"\napi_url = \"https://h\"\napi_ca_file = \"ca.crt\"\ndata_dir = \"d\"\n";
        let e = dir.parse(&format!("{base}listen = \"x\"\n")).unwrap_err();
        assert!(e.problems()[0].contains("agent.toml:5:1: "), "{e}");
        assert!(e.problems()[0].contains("unknown field `listen`"), "{e}");
        let e = dir
            .parse(&format!(
                "{base}[[resources]]\nname = \"r\"\nkind = \"tcp\"\naddress = \"h:1\"\nport = 1\n"
            ))
            .unwrap_err();
        assert!(e.problems()[0].contains("unknown field `port`"), "{e}");
        let e = dir
            .parse(&format!("{base}max_tunnels = \"many\"\n"))
            .unwrap_err();
        assert!(e.problems()[0].contains(":5:15: max_tunnels: "), "{e}");
    }

    #[test]
    fn api_urls_are_https_host_and_port_only() {
        for good in [
            "https://h",
            "https://h:443",
            "https://h.example.com:8443/",
            "https://127.0.0.1:1",
        ] {
            assert!(ApiUrl::parse(good).is_ok(), "{good}");
        }
        for bad in [
            "http://h",
            "https://",
            "https://h/api",
            "https://h?x=1",
            "h:443",
            "https://h:0",
            "",
        ] {
            assert!(ApiUrl::parse(bad).is_err(), "{bad}");
        }
    }
}

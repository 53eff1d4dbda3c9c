//! The configuration kit every BAMF binary builds its `Config` with.
//!
//! Configuration is read in two steps: a strict `RawConfig` (serde, unknown keys refused)
//! becomes a typed `Config`. This module holds what those steps share, so that every binary
//! reports problems the same way:
//!
//! - [`load_toml`] / [`parse_toml`]: the file, with `file:line:column` on syntax errors and
//!   unknown keys;
//! - [`Problems`]: collects every problem while a `Config` is built, so an operator fixes a
//!   file in one pass; [`ConfigErrors`] is the list it yields;
//! - one parser per kind of value: [`duration`], [`socket_addr`] (`ip:port`, for addresses
//!   that are bound or dialled as given) and [`HostPort`] (`host:port`, a name resolved at
//!   each connect).
//!
//! Every message starts with the field it is about (`limits.idle_timeout: ...`).

use std::fmt;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use bamf_proto::HostName;
use serde::de::DeserializeOwned;
use tokio::net::TcpStream;

/// Every problem found in a configuration, in the order found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(Vec<String>);

impl ConfigErrors {
    /// A list of one problem.
    pub fn one(problem: impl Into<String>) -> Self {
        Self(vec![problem.into()])
    }

    /// Each problem, one line each.
    pub fn problems(&self) -> &[String] {
        &self.0
    }

    /// How many problems.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Never true for a list that was returned as an error; here for completeness.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Puts `earlier` (say, the flags' problems) before these.
    pub fn prepend(&mut self, earlier: ConfigErrors) {
        self.0.splice(0..0, earlier.0);
    }
}

impl fmt::Display for ConfigErrors {
    /// One problem a line, each as a list item.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, problem) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "  - {problem}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// Collects problems while a configuration is built.
#[derive(Debug, Default)]
pub struct Problems(Vec<String>);

impl Problems {
    /// No problems yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records a problem.
    pub fn push(&mut self, problem: impl Into<String>) {
        self.0.push(problem.into());
    }

    /// The value, or `None` with its problem recorded.
    pub fn check<T>(&mut self, result: Result<T, String>) -> Option<T> {
        result.map_err(|e| self.0.push(e)).ok()
    }

    /// `value`, or `None` with "`field`: required" recorded.
    pub fn required<'a>(&mut self, field: &str, value: Option<&'a str>) -> Option<&'a str> {
        if value.is_none() {
            self.0.push(format!("{field}: required"));
        }
        value
    }

    /// An optional `ip:port` field ([`socket_addr`]): `None` when absent, or invalid (then
    /// recorded).
    pub fn socket_addr(&mut self, field: &str, text: Option<&str>) -> Option<SocketAddr> {
        text.and_then(|t| self.check(socket_addr(field, t)))
    }

    /// A duration field ([`duration`]): `default` when absent, `None` when invalid (then
    /// recorded).
    pub fn duration(
        &mut self,
        field: &str,
        text: Option<&str>,
        default: Duration,
    ) -> Option<Duration> {
        self.check(duration(field, text, default))
    }

    /// As [`Problems::duration`], zero allowed ([`duration_or_zero`]).
    pub fn duration_or_zero(
        &mut self,
        field: &str,
        text: Option<&str>,
        default: Duration,
    ) -> Option<Duration> {
        self.check(duration_or_zero(field, text, default))
    }

    /// No problem recorded so far.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// `Ok(value)` when nothing was recorded and the value could be built, else every
    /// problem recorded.
    ///
    /// # Errors
    ///
    /// The problems recorded; `value` is `None` only when some were.
    pub fn finish<T>(self, value: Option<T>) -> Result<T, ConfigErrors> {
        match value {
            Some(value) if self.0.is_empty() => Ok(value),
            // A missing value always comes with its problem; an empty list here would be a
            // bug, and still must not pass for a valid configuration.
            _ if self.0.is_empty() => Err(ConfigErrors::one("configuration incomplete")),
            _ => Err(ConfigErrors(self.0)),
        }
    }
}

/// Reads and parses the TOML file at `path` into `T`.
///
/// # Errors
///
/// The file cannot be read, or is not TOML of `T`'s shape; the one problem starts with
/// `path:line:column` where the parser could place it.
pub fn load_toml<T: DeserializeOwned>(path: &Path) -> Result<T, ConfigErrors> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigErrors::one(format!("{}: {e}", path.display())))?;
    parse_toml(&path.display().to_string(), &text)
}

/// Parses TOML `text` into `T`; `name` (a file name) starts the problem's message.
///
/// # Errors
///
/// `text` is not TOML of `T`'s shape: `name:line:column: key: what is wrong`.
pub fn parse_toml<T: DeserializeOwned>(name: &str, text: &str) -> Result<T, ConfigErrors> {
    toml::from_str(text).map_err(|e| {
        let message = e.message().trim().replace('\n', " ");
        let Some(span) = e.span() else {
            return ConfigErrors::one(format!("{name}: {message}"));
        };
        let at = Position::of(text, span.start);
        // The parser's message often lacks the key ("invalid type: string, expected usize"):
        // name it, as every other problem names its field.
        let problem = match at.key.filter(|k| !message.contains(&format!("`{k}`"))) {
            Some(key) => format!("{name}:{}:{}: {key}: {message}", at.line, at.column),
            None => format!("{name}:{}:{}: {message}", at.line, at.column),
        };
        ConfigErrors::one(problem)
    })
}

/// Where a byte offset falls in a text, for people: 1-based line and column (in characters).
struct Position<'a> {
    line: usize,
    column: usize,
    /// The key of a `key = value` line, if the offset is on one.
    key: Option<&'a str>,
}

impl<'a> Position<'a> {
    fn of(text: &'a str, offset: usize) -> Self {
        let offset = offset.min(text.len());
        let before = text.get(..offset).unwrap_or(text);
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let line_text = text[line_start..].lines().next().unwrap_or("");
        let key = line_text
            .split_once('=')
            .map(|(k, _)| k.trim().trim_matches('"'))
            .filter(|k| !k.is_empty() && !k.starts_with('['));
        Self {
            line: before.matches('\n').count() + 1,
            column: before[line_start..].chars().count() + 1,
            key,
        }
    }
}

/// Parses an optional duration like `"10s"` or `"1h 30m"`: `default` when absent; zero is
/// refused (a zero timeout would end everything at once).
///
/// # Errors
///
/// `field: ...` saying what is wrong.
pub fn duration(field: &str, text: Option<&str>, default: Duration) -> Result<Duration, String> {
    let d = duration_or_zero(field, text, default)?;
    if d.is_zero() {
        return Err(format!("{field}: must be greater than zero"));
    }
    Ok(d)
}

/// As [`duration`], for the few fields where zero means "not at all" (a shutdown grace of
/// zero cuts at once).
///
/// # Errors
///
/// `field: ...` saying what is wrong.
pub fn duration_or_zero(
    field: &str,
    text: Option<&str>,
    default: Duration,
) -> Result<Duration, String> {
    let Some(text) = text else {
        return Ok(default);
    };
    humantime::parse_duration(text)
        .map_err(|e| format!("{field}: '{text}' is not a duration like \"10s\" ({e})"))
}

/// Parses an `ip:port` (or `[v6]:port`) address: one that is bound, or dialled without
/// resolving a name.
///
/// # Errors
///
/// `field: '...' is not an ip:port address`.
pub fn socket_addr(field: &str, text: &str) -> Result<SocketAddr, String> {
    text.parse()
        .map_err(|_| format!("{field}: '{text}' is not an ip:port address"))
}

/// A `host:port` to connect to: an IP literal, or a DNS name resolved at each connect (the
/// other end may move, so a name is never resolved once and cached).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostPort {
    /// An IP address and port.
    Ip(SocketAddr),
    /// A host name and port.
    Name(HostName, u16),
}

impl HostPort {
    /// Parses `ip:port`, `[v6]:port` or `name:port`; port 0 is refused (nothing listens
    /// there).
    ///
    /// # Errors
    ///
    /// A message saying what is wrong with the text (without a field name: callers add it).
    pub fn parse(text: &str) -> Result<Self, String> {
        if let Ok(addr) = text.parse::<SocketAddr>() {
            if addr.port() == 0 {
                return Err(format!("'{text}' has port 0"));
            }
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

    /// Parses the value of `field`; the message starts with the field.
    ///
    /// # Errors
    ///
    /// `field: ...` saying what is wrong.
    pub fn field(field: &str, text: &str) -> Result<Self, String> {
        Self::parse(text).map_err(|e| format!("{field}: {e}"))
    }

    /// Connects: an IP directly, a name through the resolver (each address in turn). The
    /// caller bounds the wait.
    ///
    /// # Errors
    ///
    /// The resolver's or the connect's error.
    pub async fn connect(&self) -> std::io::Result<TcpStream> {
        match self {
            Self::Ip(a) => TcpStream::connect(a).await,
            Self::Name(host, port) => TcpStream::connect((host.as_str(), *port)).await,
        }
    }
}

impl fmt::Display for HostPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Ip(a) => a.fmt(f),
            Self::Name(h, p) => write!(f, "{h}:{p}"),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Raw {
        listen: Option<String>,
        max: Option<usize>,
        #[serde(default)]
        limits: Limits,
    }

    #[derive(Debug, Default, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Limits {
        idle: Option<String>,
    }

    #[test]
    fn toml_problems_carry_file_line_column_and_key() {
        let e = parse_toml::<Raw>("b.toml", "listen = \"x\"\n\n  listn = 1\n").unwrap_err();
        let text = &e.problems()[0];
        assert!(text.starts_with("b.toml:3:3: "), "{text}");
        assert!(text.contains("unknown field `listn`"), "{text}");
        let e = parse_toml::<Raw>("b.toml", "max = \"many\"\n").unwrap_err();
        assert!(e.problems()[0].starts_with("b.toml:1:7: max: "), "{e}");
        let e = parse_toml::<Raw>("b.toml", "[limits]\nidel = \"1s\"\n").unwrap_err();
        assert!(e.problems()[0].starts_with("b.toml:2:1: "), "{e}");
        assert!(e.problems()[0].contains("idel"), "{e}");
        let e = parse_toml::<Raw>("b.toml", "listen = [\n").unwrap_err();
        assert!(e.problems()[0].starts_with("b.toml:"), "{e}");
        assert_eq!(e.len(), 1);
    }

    #[test]
    fn problems_are_all_kept_and_listed() {
        let mut p = Problems::new();
        assert_eq!(p.check(duration("a", Some("0s"), Duration::ZERO)), None);
        assert_eq!(p.required("b", None), None);
        assert_eq!(p.check(socket_addr("c", "nope")), None);
        assert_eq!(p.check(HostPort::field("d", "h:0")), None);
        let e = p.finish(Some(())).unwrap_err();
        assert_eq!(
            e.to_string(),
            "  - a: must be greater than zero\n  - b: required\n  \
             - c: 'nope' is not an ip:port address\n  - d: 'h:0' has port 0"
        );
        assert_eq!(Problems::new().finish(Some(7)), Ok(7));
        assert!(Problems::new().finish::<()>(None).is_err());
    }

    #[test]
    fn durations_have_defaults_units_and_a_floor() {
        let ten = Duration::from_secs(10);
        assert_eq!(duration("t", None, ten), Ok(ten));
        assert_eq!(
            duration("t", Some("1m 5s"), ten),
            Ok(Duration::from_secs(65))
        );
        assert!(
            duration("t", Some("10"), ten)
                .unwrap_err()
                .starts_with("t: '10'")
        );
        assert_eq!(duration_or_zero("g", Some("0s"), ten), Ok(Duration::ZERO));
    }

    #[test]
    fn host_ports_are_ips_or_names_never_port_zero() {
        assert_eq!(
            HostPort::parse("[::1]:443"),
            Ok(HostPort::Ip("[::1]:443".parse().unwrap()))
        );
        let name = HostPort::parse("Bastion.internal:22").unwrap();
        assert_eq!(name.to_string(), "bastion.internal:22");
        for bad in ["10.0.0.1:0", "h:0", "h", "h:http", "a..b:1", ":1"] {
            assert!(HostPort::parse(bad).is_err(), "{bad}");
        }
    }
}

//! Identities carried in certificates as SAN URIs: the only definition of the grammar.
//!
//! The internal CA writes these URIs; bridges and the API read them back to decide who is on
//! the other end of a TLS connection and what it may do. Parsing is strict: a URI outside the
//! grammar, a part we do not know, a duplicate, a malformed id, or a set of parts that does
//! not make exactly one identity is refused, so a certificate means one thing or nothing.
//!
//! ```text
//! bamf://kind/<client|agent|bridge|user>     exactly one, always
//! bamf://user/<name>                          user and client (the session's user)
//! bamf://agent/<uuid>                         agent and client (the session's agent)
//! bamf://bridge/<n>                           bridge and client (the bridge it is pinned to)
//! bamf://session/<uuid>                       client
//! bamf://resource/<name>                      client
//! ```

use std::fmt;
use std::str::FromStr;

/// Every SAN URI starts with this.
pub const SCHEME: &str = "bamf://";

/// Longest [`Name`]: one DNS label's worth, so names fit host names and labels alike.
pub const MAX_NAME_LEN: usize = 63;

/// Why a set of SAN URIs is not an [`Identity`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SanError {
    /// A URI that does not start with `bamf://`.
    #[error("not a bamf:// URI")]
    Scheme,
    /// `bamf://<part>/…` with a part outside the grammar, or no value.
    #[error("unknown or empty URI part")]
    UnknownPart,
    /// The same part twice.
    #[error("duplicate {0} URI")]
    Duplicate(&'static str),
    /// A value that does not parse (bad uuid, name or ordinal).
    #[error("malformed {0}")]
    Malformed(&'static str),
    /// No `kind` URI.
    #[error("no kind URI")]
    NoKind,
    /// The kind needs a part that is missing.
    #[error("{kind} identity without {part}")]
    Missing {
        /// The kind.
        kind: &'static str,
        /// The part it needs.
        part: &'static str,
    },
    /// The kind does not allow a part that is present.
    #[error("{kind} identity must not carry {part}")]
    Unexpected {
        /// The kind.
        kind: &'static str,
        /// The part it forbids.
        part: &'static str,
    },
}

/// A UUID in its canonical lower-case, hyphenated text form (36 characters).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Uuid([u8; 16]);

impl Uuid {
    /// Wraps 16 bytes.
    pub const fn from_bytes(bytes: [u8; 16]) -> Self {
        Self(bytes)
    }

    /// A version 4 (random) UUID from 16 random bytes: the caller supplies the randomness,
    /// this sets the version and variant bits (RFC 9562 §5.4).
    pub const fn new_v4(mut random: [u8; 16]) -> Self {
        random[6] = (random[6] & 0x0f) | 0x40;
        random[8] = (random[8] & 0x3f) | 0x80;
        Self(random)
    }

    /// The 16 bytes.
    pub const fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }
}

impl FromStr for Uuid {
    type Err = ();

    /// Only the canonical form: 8-4-4-4-12 lower-case hex digits.
    fn from_str(s: &str) -> Result<Self, ()> {
        let b = s.as_bytes();
        if b.len() != 36 {
            return Err(());
        }
        let mut out = [0u8; 16];
        let mut nibbles = 0usize;
        for (i, &c) in b.iter().enumerate() {
            if matches!(i, 8 | 13 | 18 | 23) {
                if c != b'-' {
                    return Err(());
                }
                continue;
            }
            let v = match c {
                b'0'..=b'9' => c - b'0',
                b'a'..=b'f' => c - b'a' + 10,
                _ => return Err(()),
            };
            out[nibbles / 2] |= if nibbles.is_multiple_of(2) { v << 4 } else { v };
            nibbles += 1;
        }
        Ok(Self(out))
    }
}

impl fmt::Display for Uuid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, byte) in self.0.iter().enumerate() {
            if matches!(i, 4 | 6 | 8 | 10) {
                f.write_str("-")?;
            }
            write!(f, "{byte:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Uuid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

macro_rules! uuid_id {
    ($(#[$doc:meta])* $name:ident, $what:literal) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(pub Uuid);

        impl FromStr for $name {
            type Err = SanError;

            fn from_str(s: &str) -> Result<Self, SanError> {
                s.parse().map(Self).map_err(|()| SanError::Malformed($what))
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self.0)
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
                text.parse().map_err(serde::de::Error::custom)
            }
        }

        #[cfg(feature = "schema")]
        impl schemars::JsonSchema for $name {
            fn schema_name() -> std::borrow::Cow<'static, str> {
                "Uuid".into()
            }

            fn inline_schema() -> bool {
                true
            }

            fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
                schemars::json_schema!({"type": "string", "format": "uuid"})
            }
        }
    };
}

uuid_id!(
    /// A session: one client–agent pairing through one bridge.
    SessionId,
    "session id"
);
uuid_id!(
    /// An agent, assigned by the API when it joins.
    AgentId,
    "agent id"
);

/// A user or resource name: 1 to 63 characters of `a-z 0-9 - _ .`, starting with a letter
/// or digit. Lower case only, so that names compare as they read.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Name(String);

impl Name {
    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for Name {
    type Err = SanError;

    fn from_str(s: &str) -> Result<Self, SanError> {
        let ok = (1..=MAX_NAME_LEN).contains(&s.len())
            && s.as_bytes()[0].is_ascii_lowercase() | s.as_bytes()[0].is_ascii_digit()
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_.".contains(&b));
        if ok {
            Ok(Self(s.to_owned()))
        } else {
            Err(SanError::Malformed("name"))
        }
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Name({})", self.0)
    }
}

/// Who a certificate speaks for. Each variant holds exactly the parts its kind requires.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Identity {
    /// A logged-in user (the `bamf` CLI's user certificate).
    User {
        /// The user.
        user: Name,
    },
    /// An agent beside the targets.
    Agent {
        /// The agent.
        agent: AgentId,
    },
    /// A bridge.
    Bridge {
        /// Its ordinal.
        ordinal: u32,
    },
    /// The client side of one session, pinned to one bridge and one agent.
    Client {
        /// The session.
        session: SessionId,
        /// The user it was issued to.
        user: Name,
        /// The resource it reaches.
        resource: Name,
        /// The agent that serves the resource.
        agent: AgentId,
        /// The only bridge that accepts it.
        bridge: u32,
    },
}

/// The parts of a SAN URI, in the order [`Identity::uris`] writes them.
#[derive(Debug, Default)]
struct Parts {
    kind: Option<String>,
    user: Option<Name>,
    agent: Option<AgentId>,
    bridge: Option<u32>,
    session: Option<SessionId>,
    resource: Option<Name>,
}

fn set<T>(slot: &mut Option<T>, value: T, part: &'static str) -> Result<(), SanError> {
    if slot.replace(value).is_some() {
        return Err(SanError::Duplicate(part));
    }
    Ok(())
}

/// A bridge ordinal: canonical decimal (no sign, no leading zeros), fits `u32`.
fn ordinal(s: &str) -> Result<u32, SanError> {
    let canonical =
        !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) && (s == "0" || !s.starts_with('0'));
    canonical
        .then(|| s.parse().ok())
        .flatten()
        .ok_or(SanError::Malformed("bridge ordinal"))
}

impl Identity {
    /// The kind's name, as written in `bamf://kind/<kind>`.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::User { .. } => "user",
            Self::Agent { .. } => "agent",
            Self::Bridge { .. } => "bridge",
            Self::Client { .. } => "client",
        }
    }

    /// The SAN URIs that encode this identity.
    pub fn uris(&self) -> Vec<String> {
        let mut out = vec![format!("{SCHEME}kind/{}", self.kind())];
        match self {
            Self::User { user } => out.push(format!("{SCHEME}user/{user}")),
            Self::Agent { agent } => out.push(format!("{SCHEME}agent/{agent}")),
            Self::Bridge { ordinal } => out.push(format!("{SCHEME}bridge/{ordinal}")),
            Self::Client {
                session,
                user,
                resource,
                agent,
                bridge,
            } => {
                out.push(format!("{SCHEME}user/{user}"));
                out.push(format!("{SCHEME}agent/{agent}"));
                out.push(format!("{SCHEME}bridge/{bridge}"));
                out.push(format!("{SCHEME}session/{session}"));
                out.push(format!("{SCHEME}resource/{resource}"));
            }
        }
        out
    }

    /// Reads an identity from every URI SAN of a certificate.
    ///
    /// # Errors
    ///
    /// [`SanError`] for anything outside the grammar, any duplicate, or a set of parts that
    /// is not exactly one identity.
    pub fn from_uris<'a>(uris: impl IntoIterator<Item = &'a str>) -> Result<Self, SanError> {
        let mut p = Parts::default();
        for uri in uris {
            let rest = uri.strip_prefix(SCHEME).ok_or(SanError::Scheme)?;
            let (part, value) = rest.split_once('/').ok_or(SanError::UnknownPart)?;
            if value.is_empty() || value.contains('/') {
                return Err(SanError::UnknownPart);
            }
            match part {
                "kind" => set(&mut p.kind, value.to_owned(), "kind")?,
                "user" => set(&mut p.user, value.parse()?, "user")?,
                "agent" => set(&mut p.agent, value.parse()?, "agent")?,
                "bridge" => set(&mut p.bridge, ordinal(value)?, "bridge")?,
                "session" => set(&mut p.session, value.parse()?, "session")?,
                "resource" => set(&mut p.resource, value.parse()?, "resource")?,
                _ => return Err(SanError::UnknownPart),
            }
        }
        let kind = p.kind.take().ok_or(SanError::NoKind)?;
        let identity = match kind.as_str() {
            "user" => Self::User {
                user: take(&mut p.user, "user", "user")?,
            },
            "agent" => Self::Agent {
                agent: take(&mut p.agent, "agent", "agent")?,
            },
            "bridge" => Self::Bridge {
                ordinal: take(&mut p.bridge, "bridge", "bridge")?,
            },
            "client" => Self::Client {
                session: take(&mut p.session, "client", "session")?,
                user: take(&mut p.user, "client", "user")?,
                resource: take(&mut p.resource, "client", "resource")?,
                agent: take(&mut p.agent, "client", "agent")?,
                bridge: take(&mut p.bridge, "client", "bridge")?,
            },
            _ => return Err(SanError::Malformed("kind")),
        };
        // Whatever the kind did not take is a part it must not carry.
        let kind = identity.kind();
        let unexpected = [
            ("user", p.user.is_some()),
            ("agent", p.agent.is_some()),
            ("bridge", p.bridge.is_some()),
            ("session", p.session.is_some()),
            ("resource", p.resource.is_some()),
        ];
        if let Some((part, _)) = unexpected.iter().find(|(_, present)| *present) {
            return Err(SanError::Unexpected { kind, part });
        }
        Ok(identity)
    }

    /// The identity a certificate's SAN URIs name (with the `x509` feature).
    ///
    /// # Errors
    ///
    /// [`SanError`] as for [`Identity::from_uris`]; no SAN extension reads as no URIs.
    #[cfg(feature = "x509")]
    pub fn of_certificate(
        cert: &x509_parser::certificate::X509Certificate<'_>,
    ) -> Result<Self, SanError> {
        let san = cert.subject_alternative_name().ok().flatten();
        let uris = san.into_iter().flat_map(|san| {
            san.value.general_names.iter().filter_map(|n| match n {
                x509_parser::extensions::GeneralName::URI(u) => Some(*u),
                _ => None,
            })
        });
        Self::from_uris(uris)
    }
}

fn take<T>(slot: &mut Option<T>, kind: &'static str, part: &'static str) -> Result<T, SanError> {
    slot.take().ok_or(SanError::Missing { kind, part })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SESSION: &str = "6f1c2d3e-4b5a-4c6d-8e7f-0a1b2c3d4e5f";
    const AGENT: &str = "0123abcd-0000-4000-8000-00000000cafe";

    fn client() -> Identity {
        Identity::Client {
            session: SESSION.parse().unwrap(),
            user: "alice".parse().unwrap(),
            resource: "db-prod".parse().unwrap(),
            agent: AGENT.parse().unwrap(),
            bridge: 3,
        }
    }

    fn parse(uris: &[String]) -> Result<Identity, SanError> {
        Identity::from_uris(uris.iter().map(String::as_str))
    }

    #[test]
    fn every_kind_round_trips_in_any_order() {
        for id in [
            Identity::User {
                user: "alice".parse().unwrap(),
            },
            Identity::Agent {
                agent: AGENT.parse().unwrap(),
            },
            Identity::Bridge { ordinal: 0 },
            client(),
        ] {
            let mut uris = id.uris();
            assert_eq!(parse(&uris), Ok(id.clone()));
            uris.reverse();
            assert_eq!(parse(&uris), Ok(id));
        }
    }

    #[test]
    fn v4_uuids_carry_version_and_variant() {
        let id = Uuid::new_v4([0xff; 16]).to_string();
        assert_eq!(&id[14..15], "4");
        assert_eq!(&id[19..20], "b");
        assert_eq!(id.parse::<Uuid>().unwrap().to_string(), id);
    }

    #[test]
    fn uuids_are_canonical_only() {
        let id: Uuid = SESSION.parse().unwrap();
        assert_eq!(id.to_string(), SESSION);
        for bad in [
            "6F1C2D3E-4B5A-4C6D-8E7F-0A1B2C3D4E5F", // upper case
            "6f1c2d3e4b5a4c6d8e7f0a1b2c3d4e5f",     // no hyphens
            "6f1c2d3e-4b5a-4c6d-8e7f-0a1b2c3d4e5",  // short
            "6f1c2d3e-4b5a-4c6d-8e7f-0a1b2c3d4e5g", // not hex
            "{6f1c2d3e-4b5a-4c6d-8e7f-0a1b2c3d4e5}",
        ] {
            assert!(bad.parse::<Uuid>().is_err(), "{bad}");
        }
    }

    #[test]
    fn strict_parsing_refuses_everything_outside_the_grammar() {
        let base = client().uris();
        let with = |extra: &str| {
            let mut u = base.clone();
            u.push(extra.to_owned());
            parse(&u)
        };
        assert_eq!(with("spiffe://td/user/alice"), Err(SanError::Scheme));
        assert_eq!(with("bamf://role/admin"), Err(SanError::UnknownPart));
        assert_eq!(with("bamf://user"), Err(SanError::UnknownPart));
        assert_eq!(with("bamf://user/"), Err(SanError::UnknownPart));
        assert_eq!(with("bamf://user/bob/extra"), Err(SanError::UnknownPart));
        assert_eq!(with("bamf://user/bob"), Err(SanError::Duplicate("user")));
        assert_eq!(with("bamf://kind/client"), Err(SanError::Duplicate("kind")));
        let replace = |i: usize, uri: &str| {
            let mut u = base.clone();
            u[i] = uri.to_owned();
            parse(&u)
        };
        assert_eq!(
            replace(1, "bamf://user/Alice"),
            Err(SanError::Malformed("name"))
        );
        assert_eq!(
            replace(2, "bamf://agent/not-a-uuid"),
            Err(SanError::Malformed("agent id"))
        );
        assert_eq!(
            replace(3, "bamf://bridge/03"),
            Err(SanError::Malformed("bridge ordinal"))
        );
        assert_eq!(
            replace(3, "bamf://bridge/-1"),
            Err(SanError::Malformed("bridge ordinal"))
        );
        assert_eq!(
            replace(3, "bamf://bridge/4294967296"),
            Err(SanError::Malformed("bridge ordinal"))
        );
        assert_eq!(
            replace(0, "bamf://kind/admin"),
            Err(SanError::Malformed("kind"))
        );
    }

    #[test]
    fn a_kind_gets_exactly_its_parts() {
        let mut uris = client().uris();
        uris.retain(|u| !u.contains("/session/"));
        assert_eq!(
            parse(&uris),
            Err(SanError::Missing {
                kind: "client",
                part: "session"
            })
        );
        // An agent certificate that also claims a session is not an agent certificate.
        let mut agent = Identity::Agent {
            agent: AGENT.parse().unwrap(),
        }
        .uris();
        agent.push(format!("bamf://session/{SESSION}"));
        assert_eq!(
            parse(&agent),
            Err(SanError::Unexpected {
                kind: "agent",
                part: "session"
            })
        );
        let mut user = Identity::User {
            user: "alice".parse().unwrap(),
        }
        .uris();
        user.push("bamf://bridge/0".into());
        assert_eq!(
            parse(&user),
            Err(SanError::Unexpected {
                kind: "user",
                part: "bridge"
            })
        );
        assert_eq!(parse(&[]), Err(SanError::NoKind));
    }

    #[test]
    fn names_follow_their_rule() {
        for good in ["a", "db-prod", "web_1.eu", "0day"] {
            assert!(good.parse::<Name>().is_ok(), "{good}");
        }
        for bad in ["", "-x", ".x", "Alice", "a b", "a/b", "é", &"a".repeat(64)] {
            assert!(bad.parse::<Name>().is_err(), "{bad}");
        }
    }
}

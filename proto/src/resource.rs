//! Resource kinds: how clients speak to a resource (`ssh`, `postgres`, `tcp`), as agents
//! configure and report them, roles select them and the API answers them.

use std::fmt;

use serde::{Deserialize, Serialize};

#[cfg(feature = "schema")]
use schemars::JsonSchema;

/// The kind of a resource, which tells clients how to speak to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum ResourceKind {
    /// An SSH server.
    Ssh,
    /// A PostgreSQL server.
    Postgres,
    /// Any TCP service.
    Tcp,
}

impl ResourceKind {
    /// Every kind.
    pub const ALL: [Self; 3] = [Self::Ssh, Self::Postgres, Self::Tcp];

    /// Its name in the API and in configuration files.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ssh => "ssh",
            Self::Postgres => "postgres",
            Self::Tcp => "tcp",
        }
    }
}

impl fmt::Display for ResourceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Not one of [`ResourceKind::ALL`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown resource kind {0:?} (expected ssh, postgres or tcp)")]
pub struct UnknownKind(pub String);

impl std::str::FromStr for ResourceKind {
    type Err = UnknownKind;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| UnknownKind(s.to_owned()))
    }
}

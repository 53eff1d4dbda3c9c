//! The CLI's files under `~/.bamf/` (or `$BAMF_HOME`): a 0700 directory of 0600 files.
//!
//! | file | what |
//! |---|---|
//! | `config.json` | API URL, the address to dial instead of resolving names (`via`), user |
//! | `token.json` | the API token, its user and expiry |
//! | `user-key.pem` | the user's private key (made here, never sent) |
//! | `user-cert.pem` | the user certificate the API signed for that key |
//! | `ca.pem` | the BAMF CA that the API's certificate must chain to |
//!
//! Every file is written whole to a temporary file and renamed, so a crash never leaves half
//! a key. A login writes `token.json` last: it is what makes the others count.

use std::net::SocketAddr;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use bamf_client::identity::{read_optional, write_private};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// `config.json`.
pub const CONFIG: &str = "config.json";
/// `token.json`.
pub const TOKEN: &str = "token.json";
/// The user's private key.
pub const USER_KEY: &str = "user-key.pem";
/// The user's certificate.
pub const USER_CERT: &str = "user-cert.pem";
/// The CA the API is verified against.
pub const CA: &str = "ca.pem";

/// Where the API is and who logs in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Config {
    /// `https://host[:port]`.
    pub api: String,
    /// `ip:port` to connect to instead of resolving names (API and tunnels).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub via: Option<String>,
    /// The user of the last login.
    pub user: String,
}

/// `token.json`: the API token of the current login.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Token {
    /// Opaque `bamf_…` bearer token.
    pub token: String,
    /// Whose.
    pub user: String,
    /// Unix seconds.
    pub expires_at: i64,
}

/// The CLI's directory.
#[derive(Debug, Clone)]
pub struct Home {
    dir: PathBuf,
}

impl Home {
    /// `$BAMF_HOME`, else `$HOME/.bamf`.
    ///
    /// # Errors
    ///
    /// Neither variable is set.
    pub fn locate() -> Result<Self> {
        let from_env = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty());
        let dir = match (from_env("BAMF_HOME"), from_env("HOME")) {
            (Some(dir), _) => PathBuf::from(dir),
            (None, Some(home)) => PathBuf::from(home).join(".bamf"),
            (None, None) => {
                return Err(Error::msg(
                    "neither BAMF_HOME nor HOME is set: cannot find the bamf directory",
                ));
            }
        };
        Ok(Self { dir })
    }

    /// A home at `dir` (tests).
    pub fn at(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Path of a file in the directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Creates the directory 0700, or tightens it to 0700 when it exists.
    ///
    /// # Errors
    ///
    /// The directory cannot be created or its mode set.
    pub fn ensure(&self) -> Result<()> {
        let fail = |e: std::io::Error| Error::msg(format!("{}: {e}", self.dir.display()));
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.dir)
            .map_err(fail)?;
        std::fs::set_permissions(&self.dir, std::fs::Permissions::from_mode(0o700)).map_err(fail)
    }

    /// Reads a file, `None` when absent.
    ///
    /// # Errors
    ///
    /// Any failure but absence.
    pub fn read(&self, name: &str) -> Result<Option<String>> {
        Ok(read_optional(&self.path(name))?)
    }

    /// Writes a file 0600, atomically.
    ///
    /// # Errors
    ///
    /// The file cannot be written.
    pub fn write(&self, name: &str, contents: &str) -> Result<()> {
        self.ensure()?;
        Ok(write_private(&self.path(name), contents)?)
    }

    /// Removes a file; absence is fine.
    ///
    /// # Errors
    ///
    /// Any failure but absence.
    pub fn remove(&self, name: &str) -> Result<()> {
        match std::fs::remove_file(self.path(name)) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::msg(format!("{}: {e}", self.path(name).display()))),
        }
    }

    /// `config.json`, `None` when absent or unreadable as JSON (a login rewrites it).
    ///
    /// # Errors
    ///
    /// The file exists but cannot be read.
    pub fn config(&self) -> Result<Option<Config>> {
        Ok(self
            .read(CONFIG)?
            .and_then(|text| serde_json::from_str(&text).ok()))
    }

    /// Writes `config.json`.
    ///
    /// # Errors
    ///
    /// The file cannot be written.
    pub fn write_config(&self, config: &Config) -> Result<()> {
        let text = serde_json::to_string_pretty(config).map_err(|e| Error::msg(e.to_string()))?;
        self.write(CONFIG, &text)
    }

    /// `token.json`, `None` when absent or unreadable as JSON.
    ///
    /// # Errors
    ///
    /// The file exists but cannot be read.
    pub fn token(&self) -> Result<Option<Token>> {
        Ok(self
            .read(TOKEN)?
            .and_then(|text| serde_json::from_str(&text).ok()))
    }

    /// Writes `token.json`.
    ///
    /// # Errors
    ///
    /// The file cannot be written.
    pub fn write_token(&self, token: &Token) -> Result<()> {
        let text = serde_json::to_string_pretty(token).map_err(|e| Error::msg(e.to_string()))?;
        self.write(TOKEN, &text)
    }
}

/// The address to dial instead of resolving names: `BAMF_VIA` when set, else the login's.
///
/// # Errors
///
/// The address is not `ip:port`.
pub fn effective_via(config: &Config) -> Result<Option<SocketAddr>> {
    let from_env = std::env::var("BAMF_VIA").ok().filter(|v| !v.is_empty());
    match from_env.as_deref().or(config.via.as_deref()) {
        None => Ok(None),
        Some(text) => parse_via(text).map(Some),
    }
}

/// Parses an `ip:port` address for `--via` / `BAMF_VIA`.
///
/// # Errors
///
/// Not `ip:port`.
pub fn parse_via(text: &str) -> Result<SocketAddr> {
    text.parse()
        .map_err(|_| Error::msg(format!("via address '{text}' is not ip:port")))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn files_are_private_and_the_directory_is_0700() {
        let dir = std::env::temp_dir().join(format!("bamf-cli-home-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let home = Home::at(&dir);
        assert!(home.config().unwrap().is_none());
        let config = Config {
            api: "https://bamf.example.com".into(),
            via: None,
            user: "alice".into(),
        };
        home.write_config(&config).unwrap();
        assert_eq!(home.config().unwrap().unwrap(), config);
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&home.path(CONFIG)), 0o600);
        home.write(TOKEN, "not json").unwrap();
        assert!(
            home.token().unwrap().is_none(),
            "a damaged token is no login"
        );
        home.remove(TOKEN).unwrap();
        home.remove(TOKEN).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

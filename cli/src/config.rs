//! The CLI's files under `~/.bamf/` (or `$BAMF_HOME`): a 0700 directory of 0600 files, one
//! profile per API.
//!
//! ```text
//! ~/.bamf/
//!   current-profile           the profile commands use by default (its name)
//!   profiles/<name>/
//!     config.json             API URL, the address to dial instead of resolving names, user
//!     token.json              the API token, its user and expiry
//!     user-key.pem            the user's private key (made here, never sent)
//!     user-cert.pem           the user certificate the API signed for that key
//!     ca.pem                  the BAMF CA that the API's certificate must chain to (the pin)
//! ```
//!
//! Every file is written whole to a temporary file and renamed, so a crash never leaves half
//! a key. A login writes `token.json` last: it is what makes the others count. The layout of
//! earlier versions (those files directly in `~/.bamf/`) is moved into a profile the first
//! time the directory is opened.

use std::net::SocketAddr;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use bamf_client::identity::{read_optional, write_private};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result, Status};

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
/// The name of the current profile, in the home directory.
const CURRENT: &str = "current-profile";
/// Where the profiles are, in the home directory.
const PROFILES: &str = "profiles";
/// A profile's files, moved last-to-first-written when migrating (config last).
const PROFILE_FILES: [&str; 5] = [TOKEN, USER_KEY, USER_CERT, CA, CONFIG];

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
#[derive(Clone, Serialize, Deserialize)]
pub struct Token {
    /// Opaque `bamf_…` bearer token.
    pub token: String,
    /// Whose.
    pub user: String,
    /// Unix seconds.
    pub expires_at: i64,
}

impl std::fmt::Debug for Token {
    /// Never the token.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Token")
            .field("user", &self.user)
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

/// A profile's name: 1-64 of `a-z A-Z 0-9 . _ -`, not starting with a dot (it names a
/// directory).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ProfileName(String);

impl std::str::FromStr for ProfileName {
    type Err = String;

    fn from_str(text: &str) -> std::result::Result<Self, Self::Err> {
        let ok = (1..=64).contains(&text.len())
            && !text.starts_with('.')
            && text
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        if ok {
            Ok(Self(text.to_owned()))
        } else {
            Err(format!(
                "'{text}' is not a profile name (1-64 of a-z A-Z 0-9 . _ -, not starting with .)"
            ))
        }
    }
}

impl std::fmt::Display for ProfileName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl ProfileName {
    /// The name a login to `url` gets by default: the API's host, with `-PORT` when the
    /// port is not 443 (`bamf.example.com`, `localhost-8443`).
    ///
    /// # Errors
    ///
    /// The URL has no host that makes a name.
    pub fn for_url(url: &str) -> Result<Self> {
        let uri: http::Uri = url
            .parse()
            .map_err(|_| Error::usage(format!("{url}: not a URL")))?;
        let host = uri
            .host()
            .ok_or_else(|| Error::usage(format!("{url}: no host")))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_ascii_lowercase()
            .replace(':', "-");
        let name = match uri.port_u16() {
            Some(port) if port != 443 => format!("{host}-{port}"),
            _ => host,
        };
        name.parse().map_err(Error::usage)
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The CLI's directory: profiles and which one is current.
#[derive(Debug, Clone)]
pub struct Home {
    dir: PathBuf,
}

impl Home {
    /// `$BAMF_HOME`, else `$HOME/.bamf`; an earlier single-profile layout there is moved
    /// into a profile.
    ///
    /// # Errors
    ///
    /// Neither variable is set, or the migration fails.
    pub fn locate() -> Result<Self> {
        let from_env = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty());
        let dir = match (from_env("BAMF_HOME"), from_env("HOME")) {
            (Some(dir), _) => PathBuf::from(dir),
            (None, Some(home)) => PathBuf::from(home).join(".bamf"),
            (None, None) => {
                return Err(Error::usage(
                    "neither BAMF_HOME nor HOME is set: cannot find the bamf directory",
                ));
            }
        };
        let home = Self { dir };
        home.migrate()?;
        Ok(home)
    }

    /// A home at `dir` (tests).
    pub fn at(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Moves the files of the single-profile layout (`config.json` and its companions
    /// directly in the directory) into the profile named after their API, and makes it
    /// current. Each file is renamed (atomic); `config.json` goes last, so an interrupted
    /// migration is finished by the next run.
    fn migrate(&self) -> Result<()> {
        let old = Profile {
            name: ProfileName("legacy".into()),
            dir: self.dir.clone(),
        };
        let Some(config) = old.config()? else {
            return Ok(());
        };
        let name = ProfileName::for_url(&config.api)?;
        let profile = self.profile(&name);
        if profile.config()?.is_some() {
            // Already there (a newer login): the old files are stale.
            for file in PROFILE_FILES {
                old.remove(file)?;
            }
            return Ok(());
        }
        profile.ensure()?;
        for file in PROFILE_FILES {
            let (from, to) = (old.path(file), profile.path(file));
            match std::fs::rename(&from, &to) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(Error::msg(format!(
                        "moving {} into profile {name}: {e}",
                        from.display()
                    )));
                }
            }
        }
        if self.current_name()?.is_none() {
            self.set_current(&name)?;
        }
        Ok(())
    }

    /// The profile `name` (which may not exist yet).
    pub fn profile(&self, name: &ProfileName) -> Profile {
        Profile {
            name: name.clone(),
            dir: self.dir.join(PROFILES).join(name.as_str()),
        }
    }

    /// Every profile with a configuration, by name.
    ///
    /// # Errors
    ///
    /// The directory cannot be read.
    pub fn profiles(&self) -> Result<Vec<Profile>> {
        let dir = self.dir.join(PROFILES);
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(Error::msg(format!("{}: {e}", dir.display()))),
        };
        let mut found = Vec::new();
        for entry in entries.flatten() {
            let Some(name) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<ProfileName>().ok())
            else {
                continue;
            };
            let profile = self.profile(&name);
            if profile.config()?.is_some() {
                found.push(profile);
            }
        }
        found.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(found)
    }

    /// The name in `current-profile`, if any.
    ///
    /// # Errors
    ///
    /// The file exists but cannot be read.
    pub fn current_name(&self) -> Result<Option<ProfileName>> {
        let text = read_optional(&self.dir.join(CURRENT))?;
        Ok(text.and_then(|t| t.trim().parse().ok()))
    }

    /// Makes `name` the current profile.
    ///
    /// # Errors
    ///
    /// The file cannot be written.
    pub fn set_current(&self, name: &ProfileName) -> Result<()> {
        ensure_dir(&self.dir)?;
        Ok(write_private(
            &self.dir.join(CURRENT),
            &format!("{name}\n"),
        )?)
    }

    /// Forgets which profile is current.
    ///
    /// # Errors
    ///
    /// The file cannot be removed.
    pub fn clear_current(&self) -> Result<()> {
        remove_file(&self.dir.join(CURRENT))
    }

    /// The profile a command uses: `wanted` (`--profile` / `BAMF_PROFILE`), else the
    /// current one, else the only one.
    ///
    /// # Errors
    ///
    /// [`Error::NotLoggedIn`] when there is none; not found when `wanted` does not exist.
    pub fn select(&self, wanted: Option<&ProfileName>) -> Result<Profile> {
        if let Some(name) = wanted {
            let profile = self.profile(name);
            if profile.config()?.is_none() {
                return Err(Error::of(
                    Status::NotFound,
                    format!(
                        "there is no profile '{name}': `bamf profiles ls` lists them; \
                         `bamf login --api URL --profile {name}` adds it"
                    ),
                ));
            }
            return Ok(profile);
        }
        if let Some(name) = self.current_name()? {
            let profile = self.profile(&name);
            if profile.config()?.is_some() {
                return Ok(profile);
            }
        }
        let mut all = self.profiles()?;
        match all.len() {
            1 => Ok(all.remove(0)),
            0 => Err(Error::NotLoggedIn),
            _ => Err(Error::of(
                Status::AuthNeeded,
                "no current profile: choose one with `bamf profiles use NAME` or --profile",
            )),
        }
    }
}

/// One API's login: a 0700 directory of 0600 files.
#[derive(Debug, Clone)]
pub struct Profile {
    name: ProfileName,
    dir: PathBuf,
}

impl Profile {
    /// A profile in `dir` (tests).
    pub fn at(name: ProfileName, dir: impl Into<PathBuf>) -> Self {
        Self {
            name,
            dir: dir.into(),
        }
    }

    /// Its name.
    pub fn name(&self) -> &ProfileName {
        &self.name
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Path of a file in the directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Creates the directory (and the home above it) 0700, or tightens it to 0700.
    ///
    /// # Errors
    ///
    /// The directory cannot be created or its mode set.
    pub fn ensure(&self) -> Result<()> {
        ensure_dir(&self.dir)?;
        // The home and `profiles/` too: nothing under them is for other users.
        if let Some(profiles) = self.dir.parent().filter(|p| p.ends_with(PROFILES)) {
            for dir in [Some(profiles), profiles.parent()].into_iter().flatten() {
                std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
                    .map_err(|e| Error::msg(format!("{}: {e}", dir.display())))?;
            }
        }
        Ok(())
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
        remove_file(&self.path(name))
    }

    /// Removes the whole profile.
    ///
    /// # Errors
    ///
    /// The directory cannot be removed.
    pub fn delete(&self) -> Result<()> {
        match std::fs::remove_dir_all(&self.dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::msg(format!("{}: {e}", self.dir.display()))),
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

fn ensure_dir(dir: &Path) -> Result<()> {
    let fail = |e: std::io::Error| Error::msg(format!("{}: {e}", dir.display()));
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(fail)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(fail)
}

fn remove_file(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::msg(format!("{}: {e}", path.display()))),
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
        .map_err(|_| Error::usage(format!("via address '{text}' is not ip:port")))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn scratch(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("bamf-cli-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn files_are_private_and_the_directories_0700() {
        let dir = scratch("home");
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let home = Home::at(&dir);
        let profile = home.profile(&"bamf.example.com".parse().unwrap());
        assert!(profile.config().unwrap().is_none());
        let config = Config {
            api: "https://bamf.example.com".into(),
            via: None,
            user: "alice".into(),
        };
        profile.write_config(&config).unwrap();
        assert_eq!(profile.config().unwrap().unwrap(), config);
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&dir.join(PROFILES)), 0o700);
        assert_eq!(mode(profile.dir()), 0o700);
        assert_eq!(mode(&profile.path(CONFIG)), 0o600);
        profile.write(TOKEN, "not json").unwrap();
        assert!(
            profile.token().unwrap().is_none(),
            "a damaged token is no login"
        );
        profile.remove(TOKEN).unwrap();
        profile.remove(TOKEN).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn names_are_parsed_and_derived_from_the_url() {
        assert!("a/b".parse::<ProfileName>().is_err());
        assert!("..".parse::<ProfileName>().is_err());
        assert!("".parse::<ProfileName>().is_err());
        assert!("prod-eu.1_x".parse::<ProfileName>().is_ok());
        let name = |url: &str| ProfileName::for_url(url).unwrap().to_string();
        assert_eq!(name("https://bamf.example.com"), "bamf.example.com");
        assert_eq!(name("https://bamf.example.com:443"), "bamf.example.com");
        assert_eq!(name("https://LocalHost:8443"), "localhost-8443");
        assert_eq!(name("https://[::1]:9000"), "--1-9000");
    }

    #[test]
    fn the_single_profile_layout_moves_into_a_profile() {
        let dir = scratch("migrate");
        let old = Profile::at(ProfileName("legacy".into()), &dir);
        old.write_config(&Config {
            api: "https://localhost:8443".into(),
            via: Some("127.0.0.1:8443".into()),
            user: "alice".into(),
        })
        .unwrap();
        old.write(CA, "pinned").unwrap();
        old.write(
            TOKEN,
            "{\"token\":\"t\",\"user\":\"alice\",\"expires_at\":1}",
        )
        .unwrap();
        let home = Home::at(&dir);
        home.migrate().unwrap();
        assert!(!dir.join(CONFIG).exists() && !dir.join(CA).exists());
        let selected = home.select(None).unwrap();
        assert_eq!(selected.name().as_str(), "localhost-8443");
        assert_eq!(selected.read(CA).unwrap().as_deref(), Some("pinned"));
        assert_eq!(selected.config().unwrap().unwrap().user, "alice");
        assert_eq!(selected.token().unwrap().unwrap().token, "t");
        assert_eq!(home.current_name().unwrap(), Some(selected.name().clone()));
        // Nothing left to move: a second run changes nothing.
        home.migrate().unwrap();
        assert_eq!(home.profiles().unwrap().len(), 1);
        // A profile asked for by name must exist.
        let missing = home.select(Some(&"other".parse().unwrap())).unwrap_err();
        assert_eq!(missing.status(), 5);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

//! DNS host names as BAMF routes them.

use std::fmt;

/// Longest host name in its textual form, without a trailing dot (RFC 1035 §2.3.4: 255 octets
/// on the wire, which is 253 characters of text).
pub const MAX_HOST_NAME_LEN: usize = 253;

/// Longest label between two dots (RFC 1035 §2.3.4).
pub const MAX_LABEL_LEN: usize = 63;

/// A DNS host name: 1 to 253 characters, dot-separated labels of 1 to 63 characters drawn from
/// `a-z`, `0-9`, `-` and `_`, no trailing dot, stored lower-case.
///
/// Underscores are accepted because internal names carry them often enough (service records,
/// some cloud hostnames) and routing on them is harmless; everything else outside LDH is not.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HostName(String);

/// Why bytes are not a [`HostName`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HostNameError {
    /// No characters at all.
    #[error("host name is empty")]
    Empty,
    /// More than [`MAX_HOST_NAME_LEN`] characters.
    #[error("host name is longer than {MAX_HOST_NAME_LEN} characters")]
    TooLong,
    /// Two dots in a row, or a leading or trailing dot.
    #[error("host name has an empty label")]
    EmptyLabel,
    /// A label longer than [`MAX_LABEL_LEN`].
    #[error("host name has a label longer than {MAX_LABEL_LEN} characters")]
    LabelTooLong,
    /// A byte outside `A-Z a-z 0-9 - _ .` (this includes NUL and every non-ASCII byte).
    #[error("host name has a character outside letters, digits, '-', '_' and '.'")]
    InvalidCharacter,
}

impl HostName {
    /// Validates `bytes` as a host name and lower-cases it.
    ///
    /// # Errors
    ///
    /// [`HostNameError`] says which rule the bytes break.
    pub fn parse(bytes: &[u8]) -> Result<Self, HostNameError> {
        if bytes.is_empty() {
            return Err(HostNameError::Empty);
        }
        if bytes.len() > MAX_HOST_NAME_LEN {
            return Err(HostNameError::TooLong);
        }
        for label in bytes.split(|&b| b == b'.') {
            if label.is_empty() {
                return Err(HostNameError::EmptyLabel);
            }
            if label.len() > MAX_LABEL_LEN {
                return Err(HostNameError::LabelTooLong);
            }
            if !label
                .iter()
                .all(|&b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            {
                return Err(HostNameError::InvalidCharacter);
            }
        }
        // Every byte is ASCII (checked above), so this conversion cannot fail and needs no
        // replacement characters.
        let text = bytes.iter().map(|&b| char::from(b.to_ascii_lowercase()));
        Ok(Self(text.collect()))
    }

    /// The name, lower-case.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The name bridge `ordinal` is reached by: `<ordinal>.bridge.<tunnel_domain>`.
    ///
    /// # Errors
    ///
    /// [`HostNameError::TooLong`] when the domain leaves no room for the prefix.
    pub fn bridge(ordinal: u32, tunnel_domain: &HostName) -> Result<Self, HostNameError> {
        format!("{ordinal}.bridge.{tunnel_domain}").parse()
    }

    /// The inverse of [`HostName::bridge`]: for a name under `bridge.<tunnel_domain>`,
    /// `Some(Some(n))` for `<n>.bridge.<tunnel_domain>` with a canonical decimal `n`,
    /// `Some(None)` for any other name in that namespace, `None` outside it.
    pub fn bridge_ordinal(&self, tunnel_domain: &HostName) -> Option<Option<u32>> {
        let prefix = self
            .0
            .strip_suffix(tunnel_domain.as_str())?
            .strip_suffix(".bridge.")?;
        let canonical = !prefix.is_empty()
            && prefix.bytes().all(|b| b.is_ascii_digit())
            && (prefix == "0" || !prefix.starts_with('0'));
        Some(if canonical { prefix.parse().ok() } else { None })
    }
}

impl std::str::FromStr for HostName {
    type Err = HostNameError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s.as_bytes())
    }
}

impl fmt::Display for HostName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for HostName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "HostName({})", self.0)
    }
}

impl AsRef<str> for HostName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lower_cases_and_accepts_ldh_and_underscore() {
        let name = HostName::parse(b"Api.Example-1.TEST").unwrap();
        assert_eq!(name.as_str(), "api.example-1.test");
        assert!(HostName::parse(b"_svc.example.test").is_ok());
        assert!(HostName::parse(b"localhost").is_ok());
    }

    #[test]
    fn bridge_names_round_trip() {
        let domain = HostName::parse(b"tunnel.test").unwrap();
        let name = HostName::bridge(12, &domain).unwrap();
        assert_eq!(name.as_str(), "12.bridge.tunnel.test");
        assert_eq!(name.bridge_ordinal(&domain), Some(Some(12)));
        for other in [
            "01.bridge.tunnel.test",
            "x.bridge.tunnel.test",
            "1.2.bridge.tunnel.test",
        ] {
            let n = HostName::parse(other.as_bytes()).unwrap();
            assert_eq!(n.bridge_ordinal(&domain), Some(None), "{other}");
        }
        let outside = HostName::parse(b"api.tunnel.test").unwrap();
        assert_eq!(outside.bridge_ordinal(&domain), None);
    }

    #[test]
    fn rejects_each_broken_rule() {
        assert_eq!(HostName::parse(b""), Err(HostNameError::Empty));
        assert_eq!(HostName::parse(b"a..b"), Err(HostNameError::EmptyLabel));
        assert_eq!(
            HostName::parse(b"example.test."),
            Err(HostNameError::EmptyLabel)
        );
        assert_eq!(HostName::parse(b".example"), Err(HostNameError::EmptyLabel));
        assert_eq!(
            HostName::parse(b"a\0b"),
            Err(HostNameError::InvalidCharacter)
        );
        assert_eq!(
            HostName::parse(b"a b"),
            Err(HostNameError::InvalidCharacter)
        );
        assert_eq!(
            HostName::parse("é.test".as_bytes()),
            Err(HostNameError::InvalidCharacter)
        );
        let label = [b'a'; 64];
        assert_eq!(HostName::parse(&label), Err(HostNameError::LabelTooLong));
        let long = [b"a.".repeat(127).as_slice(), b"a"].concat();
        assert_eq!(long.len(), 255);
        assert_eq!(HostName::parse(&long), Err(HostNameError::TooLong));
        let max = [b"a.".repeat(126).as_slice(), b"a"].concat();
        assert_eq!(max.len(), MAX_HOST_NAME_LEN);
        assert!(HostName::parse(&max).is_ok());
    }
}

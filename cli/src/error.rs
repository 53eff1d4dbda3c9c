//! What a command can end with besides success, how API errors read to a person, and the
//! exit status each failure gives.
//!
//! | status | meaning |
//! |---|---|
//! | 0 | success |
//! | 1 | any other failure (a conflict, a server error, a file that cannot be written) |
//! | 2 | usage: a bad argument, flag or value |
//! | 3 | authentication needed: not logged in, the login expired, wrong password |
//! | 4 | denied: the login is valid but may not do this (not an administrator, rate limited) |
//! | 5 | not found: no such resource you may reach, user, role, session, profile |
//! | 6 | offline: the API, the bridge or the resource cannot be reached now |
//! | 7 | not trusted: the API's CA is unknown and was not confirmed, or it changed |
//!
//! `bamf ssh|scp|sftp`, `bamf psql` and `bamf tcp --exec` exit with the status of the program
//! they ran.

use bamf_client::https::HttpsError;

/// The exit status of a kind of failure (see the module's table).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// 1.
    Failure,
    /// 2.
    Usage,
    /// 3.
    AuthNeeded,
    /// 4.
    Denied,
    /// 5.
    NotFound,
    /// 6.
    Offline,
    /// 7.
    Untrusted,
}

impl Status {
    /// The process exit status.
    pub fn code(self) -> u8 {
        match self {
            Self::Failure => 1,
            Self::Usage => 2,
            Self::AuthNeeded => 3,
            Self::Denied => 4,
            Self::NotFound => 5,
            Self::Offline => 6,
            Self::Untrusted => 7,
        }
    }

    /// A stable word for `--json` errors.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Failure => "failure",
            Self::Usage => "usage",
            Self::AuthNeeded => "auth_needed",
            Self::Denied => "denied",
            Self::NotFound => "not_found",
            Self::Offline => "offline",
            Self::Untrusted => "untrusted",
        }
    }
}

/// Why a command failed. Each is one line (or a short paragraph) for a person; none carries
/// a backtrace or a secret.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No usable login: missing, expired, or the API no longer accepts the token.
    #[error("not logged in (or the login expired): run `bamf login`")]
    NotLoggedIn,
    /// A failure of a kind, with its message and the API's request id when it answered.
    #[error("{message}")]
    Failed {
        /// Which kind (the exit status).
        status: Status,
        /// For a person.
        message: String,
        /// The API's id for the failed request.
        request_id: Option<String>,
    },
    /// A child process (ssh, psql, `tcp --exec`) ended with this status: exit with it,
    /// quietly.
    #[error("exited with status {0}")]
    Exit(u8),
}

impl Error {
    /// A failure (status 1) with `message`.
    pub fn msg(message: impl Into<String>) -> Self {
        Self::of(Status::Failure, message)
    }

    /// A failure of kind `status` with `message`.
    pub fn of(status: Status, message: impl Into<String>) -> Self {
        Self::Failed {
            status,
            message: message.into(),
            request_id: None,
        }
    }

    /// A usage error (status 2).
    pub fn usage(message: impl Into<String>) -> Self {
        Self::of(Status::Usage, message)
    }

    /// The exit status.
    pub fn status(&self) -> u8 {
        match self {
            Self::NotLoggedIn => Status::AuthNeeded.code(),
            Self::Failed { status, .. } => status.code(),
            Self::Exit(code) => *code,
        }
    }

    /// The kind, for `--json` errors.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::NotLoggedIn => Status::AuthNeeded.as_str(),
            Self::Failed { status, .. } => status.as_str(),
            Self::Exit(_) => "child_exit",
        }
    }

    /// The API's id for the failed request, when the API answered.
    pub fn request_id(&self) -> Option<&str> {
        match self {
            Self::Failed { request_id, .. } => request_id.as_deref(),
            _ => None,
        }
    }

    /// The same failure with another message (the kind and request id stay).
    #[must_use]
    pub fn reworded(self, message: impl FnOnce(&str) -> String) -> Self {
        match self {
            Self::Failed {
                status,
                message: old,
                request_id,
            } => Self::Failed {
                status,
                message: message(&old),
                request_id,
            },
            other => other,
        }
    }

    /// An API error on an authenticated call: 401 means the login is gone; others keep
    /// the API's message, stable code and request id, and the kind follows the code.
    pub fn api(e: HttpsError) -> Self {
        let request_id = e.request_id().map(str::to_owned);
        match e {
            HttpsError::Status { code, .. } if code == "unauthenticated" => Self::NotLoggedIn,
            HttpsError::Status { code, message, .. } => {
                let (status, message) = match code.as_str() {
                    "forbidden" => (
                        Status::Denied,
                        format!("{message}: this needs an administrator (forbidden)"),
                    ),
                    "rate_limited" => (Status::Denied, format!("{message} (rate_limited)")),
                    "not_found" => (Status::NotFound, format!("{message} (not_found)")),
                    "offline" | "not_ready" => (Status::Offline, format!("{message} ({code})")),
                    "bad_request" | "payload_too_large" => {
                        (Status::Usage, format!("{message} ({code})"))
                    }
                    _ => (Status::Failure, format!("{message} ({code})")),
                };
                Self::Failed {
                    status,
                    message,
                    request_id,
                }
            }
            HttpsError::Connect(..) => Self::of(Status::Offline, e.to_string()),
            HttpsError::Exchange(ref why) if why.contains("timed out") => {
                Self::of(Status::Offline, e.to_string())
            }
            other => Self::msg(other.to_string()),
        }
    }
}

impl From<bamf_client::identity::IdentityError> for Error {
    fn from(e: bamf_client::identity::IdentityError) -> Self {
        Self::msg(e.to_string())
    }
}

impl From<bamf_client::TlsError> for Error {
    fn from(e: bamf_client::TlsError) -> Self {
        Self::msg(e.to_string())
    }
}

/// Result of a command.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_codes_map_to_distinct_statuses_and_keep_the_request_id() {
        let refusal = |code: &str| {
            Error::api(HttpsError::Status {
                status: http::StatusCode::BAD_REQUEST,
                code: code.into(),
                message: "m".into(),
                request_id: Some("rid-1".into()),
            })
        };
        assert_eq!(refusal("unauthenticated").status(), 3);
        assert_eq!(refusal("forbidden").status(), 4);
        assert_eq!(refusal("not_found").status(), 5);
        assert_eq!(refusal("offline").status(), 6);
        assert_eq!(refusal("bad_request").status(), 2);
        assert_eq!(refusal("conflict").status(), 1);
        assert_eq!(refusal("conflict").request_id(), Some("rid-1"));
        let unreachable = Error::api(HttpsError::Connect("h:1".into(), "refused".into()));
        assert_eq!(unreachable.status(), 6);
        let codes: std::collections::BTreeSet<u8> = [
            Status::Failure,
            Status::Usage,
            Status::AuthNeeded,
            Status::Denied,
            Status::NotFound,
            Status::Offline,
            Status::Untrusted,
        ]
        .iter()
        .map(|s| s.code())
        .collect();
        assert_eq!(codes.len(), 7, "every kind has its own status");
    }
}

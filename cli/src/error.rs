//! What a command can end with besides success, and how API errors read to a person.

use bamf_client::https::HttpsError;

/// Why a command failed. Each is one line for a person; none carries a backtrace.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No usable login: missing, expired, or the API no longer accepts the token.
    #[error("not logged in (or the login expired): run `bamf login`")]
    NotLoggedIn,
    /// A failure with its message.
    #[error("{0}")]
    Message(String),
    /// A child process (psql, `tcp --exec`) ended with this status: exit with it, quietly.
    #[error("exited with status {0}")]
    Exit(u8),
}

impl Error {
    /// A failure with `message`.
    pub fn msg(message: impl Into<String>) -> Self {
        Self::Message(message.into())
    }

    /// An API error on an authenticated call: 401 means the login is gone; others keep
    /// the API's message and stable code.
    pub fn api(e: HttpsError) -> Self {
        match e {
            HttpsError::Status { code, .. } if code == "unauthenticated" => Self::NotLoggedIn,
            HttpsError::Status { code, message, .. } if code == "forbidden" => Self::Message(
                format!("{message}: this needs an administrator (forbidden)"),
            ),
            HttpsError::Status { code, message, .. } => {
                Self::Message(format!("{message} ({code})"))
            }
            other => Self::Message(other.to_string()),
        }
    }
}

impl From<bamf_client::identity::IdentityError> for Error {
    fn from(e: bamf_client::identity::IdentityError) -> Self {
        Self::Message(e.to_string())
    }
}

impl From<bamf_client::TlsError> for Error {
    fn from(e: bamf_client::TlsError) -> Self {
        Self::Message(e.to_string())
    }
}

/// Result of a command.
pub type Result<T, E = Error> = std::result::Result<T, E>;

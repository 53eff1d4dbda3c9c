//! A bot's login (`bamf login --bot-token-file FILE`): the join token read from its file,
//! the first credentials, and the mark that makes later commands renew them (`crate::bot`).

use bamf_client::https::{Api, HttpsError};
use bamf_proto::api::{BotJoinRequest, Login};

use crate::config::Profile;
use crate::error::{Error, Result};

/// Marks a login as a bot's; holds its credentials' lifetime in seconds.
pub const BOT: &str = "bot";

pub(crate) fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

/// Reads the join token from `path` (one line).
///
/// # Errors
///
/// The file cannot be read or is empty.
pub fn read_token(path: &std::path::Path) -> Result<String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::msg(format!("{}: {e}", path.display())))?;
    let token = text.trim().to_owned();
    if token.is_empty() {
        return Err(Error::msg(format!("{}: no bot token", path.display())));
    }
    Ok(token)
}

/// The bot's first credentials.
///
/// # Errors
///
/// The API refuses the token (used, expired, unknown) or cannot be reached.
pub async fn join(api: &Api, token: String, csr: String) -> Result<Login> {
    api.bot_join(&BotJoinRequest { token, csr })
        .await
        .map_err(|e| match e {
            HttpsError::Status { code, .. } if code == "unauthenticated" => Error::msg(
                "bot login failed: the bot token is unknown, used or expired (ask for a new one)",
            ),
            e => Error::msg(format!("bot login failed: {}", Error::api(e))),
        })
}

/// Marks `profile`'s login as a bot's whose credentials live until `expires_at` (Unix
/// seconds).
///
/// # Errors
///
/// The file cannot be written.
pub fn mark(profile: &Profile, expires_at: i64) -> Result<()> {
    profile.write(BOT, &(expires_at - now()).max(1).to_string())
}

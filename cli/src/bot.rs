//! Bots (machine identities) in the CLI: `bamf bots add` (admin), `bamf login
//! --bot-token-file FILE` (the bot joins: non-interactive), and renewal at half-life on its
//! own: every command run as a bot first renews the credentials once half their lifetime has
//! passed, so a job that keeps running `bamf` outlives its first credentials.

use bamf_proto::api::{BotRenewRequest, BotRequest};

use crate::bot_login::{BOT, mark, now};
use crate::config::{Token, USER_CERT, USER_KEY};
use crate::error::{Error, Result};
use crate::net::Net;
use crate::output;
use crate::session::Ctx;

/// Renews a bot's credentials once half their lifetime has passed (not for people's
/// logins); returns the login to use.
///
/// # Errors
///
/// The renewal is refused (the bot was deleted or revoked) or the files cannot be written.
pub async fn renewed(ctx: Ctx, net: &Net) -> Result<Ctx> {
    let Some(lifetime) = ctx
        .profile
        .read(BOT)?
        .and_then(|t| t.trim().parse::<i64>().ok())
    else {
        return Ok(ctx);
    };
    if now() < ctx.token.expires_at - lifetime / 2 {
        return Ok(ctx);
    }
    let (key, csr) = bamf_client::identity::key_and_csr()?;
    let answer = ctx
        .user()
        .bot_renew(&BotRenewRequest { csr })
        .await
        .map_err(Error::api)?;
    let profile = ctx.profile.clone();
    profile.write(USER_KEY, &key)?;
    profile.write(USER_CERT, &answer.certificate.certificate)?;
    let expires_at = answer.token_expires_at_ms / 1000;
    profile.write_token(&Token {
        token: answer.token,
        user: answer.user,
        expires_at,
    })?;
    mark(&profile, expires_at)?;
    output::note(format!(
        "renewed the bot's credentials until {}",
        output::time(Some(expires_at))
    ));
    Ctx::load(profile, net)
}

/// `bamf bots add NAME --role R`: prints the one-time join token on stdout.
///
/// # Errors
///
/// The API refuses (not an administrator, name taken, unknown role).
pub async fn add(
    ctx: &Ctx,
    name: String,
    roles: Vec<String>,
    ttl: std::time::Duration,
) -> Result<()> {
    let answer = ctx
        .user()
        .create_bot(&BotRequest {
            name,
            roles,
            token_ttl_ms: Some(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX)),
        })
        .await
        .map_err(Error::api)?;
    output::note(format!(
        "bot {} created; its join token (shown once) is valid until {}; its credentials live {} s \
         and it renews them itself: bamf login --api URL --bot-token-file FILE",
        answer.name,
        output::time(Some(answer.token_expires_at_ms / 1000)),
        answer.credential_lifetime_ms / 1000
    ));
    output::raw(&format!("{}\n", answer.token));
    Ok(())
}

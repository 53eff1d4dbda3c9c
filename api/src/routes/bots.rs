//! Bots (machine identities): an administrator makes one bound to roles and gets its
//! one-time join token; the bot joins with it and renews its short-lived credentials on its
//! own before they expire; deleting the bot's user (or revoking its certificate) ends it.

use std::time::Duration;

use bamf_proto::api::{BotJoinRequest, BotRenewRequest, BotRequest, Login, NewBot};
use bamf_proto::san::Name;

use super::Call;
use crate::access::bearer;
use crate::auth;
use crate::context::audit;
use crate::error::ApiError;
use crate::now_ms;
use crate::store::BotCreated;

/// A bot join token's default lifetime.
const TOKEN_TTL: Duration = Duration::from_secs(3600);
/// The longest a bot join token may live.
const MAX_TOKEN_TTL: Duration = Duration::from_secs(30 * 86_400);

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

pub(super) async fn create(call: &Call<'_>, body: BotRequest) -> Result<NewBot, ApiError> {
    let name: Name = body.name.parse().map_err(|_| {
        ApiError::BadRequest("name: lower-case letters, digits, '-', '_', '.'".into())
    })?;
    let ttl = body.token_ttl_ms.map_or(TOKEN_TTL, Duration::from_millis);
    if ttl.is_zero() || ttl > MAX_TOKEN_TTL {
        return Err(ApiError::BadRequest(
            "token_ttl_ms: between 1 ms and 30 days".into(),
        ));
    }
    let token = auth::new_token().map_err(|_| ApiError::Internal)?;
    let now = now_ms();
    let expires = now.saturating_add(millis(ttl));
    let created = call
        .state
        .store
        .create_bot(
            name.as_str(),
            &body.roles,
            &auth::token_hash(&token),
            expires,
            now,
        )
        .await?;
    match created {
        BotCreated::Created => {}
        BotCreated::NameTaken => return Err(ApiError::Conflict("a user of that name exists")),
        BotCreated::UnknownRole(role) => {
            return Err(ApiError::BadRequest(format!("roles: no role named {role}")));
        }
    }
    call.audit(
        "bot.create",
        "allowed",
        serde_json::json!({"bot": name.as_str(), "roles": body.roles}),
    )
    .await;
    Ok(NewBot {
        name: name.as_str().to_owned(),
        token,
        token_expires_at_ms: expires,
        credential_lifetime_ms: millis(call.state.bot_lifetime),
    })
}

pub(super) async fn join(call: &Call<'_>, body: BotJoinRequest) -> Result<Login, ApiError> {
    let (state, ctx) = (call.state, call.ctx);
    let detail =
        serde_json::json!({"address": ctx.peer.ip().to_string(), "request_id": ctx.request_id});
    let Some(bot) = state
        .store
        .use_bot_token(&auth::token_hash(&body.token), now_ms())
        .await?
    else {
        audit(
            state,
            format!("anonymous:{}", ctx.peer.ip()),
            "bot.join",
            "denied",
            detail,
        )
        .await;
        return Err(ApiError::Unauthenticated);
    };
    let name: Name = bot.parse().map_err(|_| ApiError::Internal)?;
    let login = super::session::grant(state, &name, &body.csr, state.bot_lifetime).await?;
    audit(state, format!("user:{bot}"), "bot.join", "allowed", detail).await;
    Ok(login)
}

pub(super) async fn renew(call: &Call<'_>, body: BotRenewRequest) -> Result<Login, ApiError> {
    let state = call.state;
    let (user, _) = call.principal.user()?;
    if !state.store.is_bot(user).await? {
        return Err(ApiError::Forbidden);
    }
    let name: Name = user.parse().map_err(|_| ApiError::Internal)?;
    let login = super::session::grant(state, &name, &body.csr, state.bot_lifetime).await?;
    // The credentials renewed stop working: a stolen copy does not outlive the renewal.
    if let Some(token) = bearer(call.headers) {
        state.store.delete_token(&auth::token_hash(token)).await?;
    }
    call.audit("bot.renew", "allowed", serde_json::json!({}))
        .await;
    Ok(login)
}

//! Signing in and out, and asking who one is.

use bamf_proto::api::{Login, LoginRequest, Whoami};
use bamf_proto::san::{Identity, Name};

use super::Call;
use crate::access::{Principal, bearer};
use crate::auth;
use crate::context::{Caller, audit};
use crate::error::ApiError;
use crate::now_ms;

pub(super) async fn login(call: &Call<'_>, body: LoginRequest) -> Result<Login, ApiError> {
    let (state, ctx) = (call.state, call.ctx);
    let detail =
        serde_json::json!({"address": ctx.peer.ip().to_string(), "request_id": ctx.request_id});
    // A user name outside the grammar is simply an unknown user (same answer, same work).
    let name: Option<Name> = body.user.parse().ok();
    let actor = name.as_ref().map_or_else(
        || format!("anonymous:{}", ctx.peer.ip()),
        |n| format!("user:{n}"),
    );
    // Password login off (`auth.local.enabled: false`): refused before any work, except
    // for the break-glass users the configuration names.
    if !state.sso.password_allowed(&body.user) {
        let detail = serde_json::json!({"address": ctx.peer.ip().to_string(),
            "request_id": ctx.request_id, "reason": "local_login_disabled"});
        audit(state, actor, "auth.login", "denied", detail).await;
        return Err(ApiError::LocalLoginDisabled);
    }
    let detail = if state.sso.local_enabled {
        detail
    } else {
        serde_json::json!({"address": ctx.peer.ip().to_string(),
            "request_id": ctx.request_id, "break_glass": true})
    };
    // Failures from this address that any replica saw (Redis; none in process, where the
    // guard below counts them all). A presence outage leaves each replica's own limits.
    let address = ctx.peer.ip();
    let limits = &state.login_limits;
    let shared = match state.presence.login_failures(address).await {
        Ok(failures) => failures,
        Err(e) => {
            tracing::warn!(error = %e, "shared login limits unavailable; this replica's apply");
            0
        }
    };
    if shared >= limits.max() {
        audit(state, actor, "auth.login", "rate_limited", detail).await;
        return Err(ApiError::TooManyRequests(limits.window().as_secs()));
    }
    // Limits are decided before any work, and the attempt counts from now on.
    let user_key: String = body.user.chars().take(64).collect();
    let attempt = match limits.admit(address, &user_key) {
        Ok(attempt) => attempt,
        Err(refused) => {
            audit(state, actor, "auth.login", "rate_limited", detail).await;
            return Err(ApiError::TooManyRequests(refused.retry_after.as_secs() + 1));
        }
    };
    // The same lookup for every name, known or not.
    let lookup = name.as_ref().map_or("-", Name::as_str);
    let stored = state
        .store
        .password_hash(lookup)
        .await?
        .filter(|_| name.is_some());
    let matched = match attempt.verify(body.password, stored).await {
        Ok(matched) => matched,
        Err(refused) => {
            audit(state, actor, "auth.login", "rate_limited", detail).await;
            return Err(ApiError::TooManyRequests(refused.retry_after.as_secs() + 1));
        }
    };
    let Some(user) = name.filter(|_| matched) else {
        drop(attempt);
        if let Err(e) = state
            .presence
            .record_login_failure(address, limits.window())
            .await
        {
            tracing::warn!(error = %e, "cannot count a login failure across replicas");
        }
        audit(state, actor, "auth.login", "denied", detail).await;
        return Err(ApiError::Unauthenticated);
    };
    attempt.succeeded();

    match grant(state, &user, &body.csr, state.lifetimes.user).await {
        Ok(login) => {
            audit(state, actor, "auth.login", "allowed", detail).await;
            Ok(login)
        }
        Err(e) => {
            let detail = serde_json::json!({"reason": "csr", "request_id": ctx.request_id});
            audit(state, actor, "auth.login", "failed", detail).await;
            Err(e)
        }
    }
}

/// What every successful sign-in gets, password, single sign-on or bot: a user certificate
/// for the CSR and an API token, both with `lifetime` (the user lifetime, or a bot's).
pub(super) async fn grant(
    state: &crate::context::AppState,
    user: &Name,
    csr: &str,
    lifetime: std::time::Duration,
) -> Result<Login, ApiError> {
    let identity = Identity::User { user: user.clone() };
    let issued = super::issue_for(state, csr, &identity, None, lifetime).await?;
    let token = auth::new_token().map_err(|_| ApiError::Internal)?;
    let now = now_ms();
    let expires_ms = now.saturating_add(i64::try_from(lifetime.as_millis()).unwrap_or(i64::MAX));
    state
        .store
        .put_token(&auth::token_hash(&token), user.as_str(), expires_ms, now)
        .await?;
    Ok(Login {
        user: user.as_str().to_owned(),
        token,
        token_expires_at_ms: expires_ms,
        certificate: super::certificate(state, issued),
    })
}

pub(super) async fn logout(call: &Call<'_>) -> Result<(), ApiError> {
    if let Some(token) = bearer(call.headers) {
        call.state
            .store
            .delete_token(&auth::token_hash(token))
            .await?;
    }
    call.audit("auth.logout", "allowed", serde_json::json!({}))
        .await;
    Ok(())
}

pub(super) async fn whoami(call: &Call<'_>) -> Result<Whoami, ApiError> {
    if let Principal::User { name, roles } = &call.principal {
        return Ok(Whoami::Token {
            kind: "user".into(),
            user: name.clone(),
            roles: roles.iter().map(|r| r.name.clone()).collect(),
        });
    }
    let Caller::Certified {
        identity,
        serial,
        fingerprint,
        ..
    } = call.ctx.caller.as_ref()
    else {
        return Err(ApiError::Unauthenticated);
    };
    Ok(Whoami::Certificate {
        kind: identity.kind().to_owned(),
        uris: identity.uris(),
        serial: serial.clone(),
        fingerprint: fingerprint.clone(),
    })
}

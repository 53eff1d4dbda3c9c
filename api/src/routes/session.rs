//! Signing in and out, and asking who one is.

use bamf_proto::san::{Identity, Name};
use http::StatusCode;
use serde::Deserialize;

use super::{Call, Principal, Reply, bearer, no_content, now_ms};
use crate::auth;
use crate::error::{ApiError, json_response};
use crate::presence::Presence;

/// `POST /api/v1/auth/login`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LoginRequest {
    user: String,
    password: String,
    /// PEM CSR for the user certificate; the key stays with the client.
    csr: String,
}

pub(super) async fn login<P: Presence>(call: &Call<'_, P>) -> Reply {
    let (state, ctx) = (call.state, call.ctx);
    let body: LoginRequest = call.json()?;
    let detail =
        serde_json::json!({"address": ctx.peer.ip().to_string(), "request_id": ctx.request_id});
    // A user name outside the grammar is simply an unknown user (same answer, same work).
    let name: Option<Name> = body.user.parse().ok();
    let actor = name.as_ref().map_or_else(
        || format!("anonymous:{}", ctx.peer.ip()),
        |n| format!("user:{n}"),
    );
    // Limits are decided before any work, and the attempt counts from now on.
    let user_key: String = body.user.chars().take(64).collect();
    let attempt = match state.login_limits.admit(ctx.peer.ip(), &user_key) {
        Ok(attempt) => attempt,
        Err(refused) => {
            super::audit(state, actor, "auth.login", "rate_limited", detail).await;
            return Err(ApiError::TooManyRequests(refused.retry_after.as_secs() + 1));
        }
    };
    // The same lookup for every name, known or not.
    let lookup = name.as_ref().map_or("-", Name::as_str);
    let stored = state
        .store
        .password_hash(lookup)
        .await
        .map_err(super::store_failed)?
        .filter(|_| name.is_some());
    let matched = match attempt.verify(body.password, stored).await {
        Ok(matched) => matched,
        Err(refused) => {
            super::audit(state, actor, "auth.login", "rate_limited", detail).await;
            return Err(ApiError::TooManyRequests(refused.retry_after.as_secs() + 1));
        }
    };
    let Some(user) = name.filter(|_| matched) else {
        drop(attempt);
        super::audit(state, actor, "auth.login", "denied", detail).await;
        return Err(ApiError::Unauthenticated);
    };
    attempt.succeeded();

    let identity = Identity::User { user: user.clone() };
    let lifetime = state.lifetimes.user;
    let certificate = match super::issue(state, &body.csr, &identity, None).await {
        Ok(issued) => issued,
        Err(e) => {
            let detail = serde_json::json!({"reason": "csr", "request_id": ctx.request_id});
            super::audit(state, actor, "auth.login", "failed", detail).await;
            return Err(e);
        }
    };
    let token = auth::new_token().map_err(|_| ApiError::Internal)?;
    let now = now_ms();
    let expires_ms = now.saturating_add(i64::try_from(lifetime.as_millis()).unwrap_or(i64::MAX));
    state
        .store
        .put_token(&auth::token_hash(&token), user.as_str(), expires_ms, now)
        .await
        .map_err(super::store_failed)?;
    super::audit(state, actor, "auth.login", "allowed", detail).await;
    let expires = time::OffsetDateTime::now_utc() + lifetime;
    Ok(json_response(
        StatusCode::OK,
        &serde_json::json!({
            "user": user.as_str(),
            "token": token,
            "token_expires_at": expires.unix_timestamp(),
            "certificate": certificate.pem,
            "certificate_expires_at": certificate.not_after.unix_timestamp(),
            "ca": state.ca.cert_pem(),
        }),
    ))
}

pub(super) async fn logout<P: Presence>(call: &Call<'_, P>, parts: &http::request::Parts) -> Reply {
    if let Some(token) = bearer(parts) {
        call.state
            .store
            .delete_token(&auth::token_hash(token))
            .await
            .map_err(super::store_failed)?;
    }
    call.audit("auth.logout", "allowed", serde_json::json!({}))
        .await;
    Ok(no_content())
}

pub(super) fn whoami<P: Presence>(call: &Call<'_, P>) -> Reply {
    let body = match &call.principal {
        Principal::User { name, roles } => {
            let roles: Vec<&str> = roles.iter().map(|r| r.name.as_str()).collect();
            serde_json::json!({"kind": "user", "user": name, "roles": roles, "via": "token"})
        }
        _ => {
            let crate::server::Caller::Certified {
                identity,
                serial,
                fingerprint,
            } = call.ctx.caller.as_ref()
            else {
                return Err(ApiError::Unauthenticated);
            };
            serde_json::json!({"kind": identity.kind(), "uris": identity.uris(), "serial": serial,
                "fingerprint": fingerprint, "via": "certificate"})
        }
    };
    Ok(json_response(StatusCode::OK, &body))
}

//! The router: every route of the API in one match, by method and path segments.
//!
//! Which callers a route accepts is decided here too, next to the route: by client
//! certificate (the [`Caller`] the TLS layer established) or by API token
//! (`Authorization: Bearer …`).

use std::time::Duration;

use bamf_proto::san::{Identity, Name};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use serde::Deserialize;
use serde::de::DeserializeOwned;

use crate::auth;
use crate::error::{ApiError, json_response};
use crate::presence::Presence;
use crate::server::{AppState, Caller, RequestContext};
use crate::store::NewAuditEvent;

/// Largest request body: requests are small JSON documents (a CSR is about 500 bytes).
pub const MAX_BODY: usize = 64 * 1024;
/// Deadline for receiving a request body (slow senders).
const BODY_TIMEOUT: Duration = Duration::from_secs(10);

type Reply = Result<Response<Full<Bytes>>, ApiError>;

/// Routes one request.
///
/// # Errors
///
/// [`ApiError`] for every refusal; the server turns it into a JSON response.
pub async fn route<P: Presence>(
    state: &AppState<P>,
    ctx: &RequestContext,
    req: Request<Incoming>,
) -> Reply {
    let path = req.uri().path().to_owned();
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let method = req.method().clone();
    match (&method, segments.as_slice()) {
        // Public.
        (&Method::GET, ["health"]) => Ok(json_response(
            StatusCode::OK,
            &serde_json::json!({"status": "ok"}),
        )),
        (&Method::GET, ["ready"]) => ready(state).await,
        (&Method::GET, ["metrics"]) => Ok(metrics(state)),
        (&Method::GET, ["api", "v1", "ca"]) => Ok(pem_response(state.ca.cert_pem())),
        (&Method::POST, ["api", "v1", "auth", "login"]) => {
            login(state, ctx, read_json(req).await?).await
        }
        // Token holders.
        (&Method::POST, ["api", "v1", "auth", "logout"]) => logout(state, ctx, &req).await,
        // Certificate or token holders: who am I.
        (&Method::GET, ["api", "v1", "whoami"]) => whoami(state, ctx, &req).await,
        (
            _,
            ["health" | "ready" | "metrics"]
            | ["api", "v1", "ca" | "whoami"]
            | ["api", "v1", "auth", "login" | "logout"],
        ) => Err(ApiError::MethodNotAllowed),
        _ => Err(ApiError::NotFound),
    }
}

/// Reads a JSON body of at most [`MAX_BODY`] bytes into `T` (whose fields must be
/// `deny_unknown_fields`). Error messages name fields and positions, never values: a value
/// may be a password.
async fn read_json<T: DeserializeOwned>(req: Request<Incoming>) -> Result<T, ApiError> {
    let body = Limited::new(req.into_body(), MAX_BODY);
    let bytes = match tokio::time::timeout(BODY_TIMEOUT, body.collect()).await {
        Ok(Ok(collected)) => collected.to_bytes(),
        Ok(Err(e))
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some() =>
        {
            return Err(ApiError::PayloadTooLarge);
        }
        Ok(Err(_)) | Err(_) => {
            return Err(ApiError::BadRequest(
                "request body could not be read".into(),
            ));
        }
    };
    serde_json::from_slice(&bytes).map_err(|e| {
        let text = e.to_string();
        let field_error = text.starts_with("unknown field") || text.starts_with("missing field");
        ApiError::BadRequest(if field_error {
            // "unknown field `x`, expected one of …": names from the schema and the request.
            format!(
                "invalid request: {}",
                text.split(" at line").next().unwrap_or_default()
            )
        } else {
            format!("invalid JSON at line {} column {}", e.line(), e.column())
        })
    })
}

async fn ready<P: Presence>(state: &AppState<P>) -> Reply {
    if let Err(e) = state.store.ping().await {
        tracing::warn!(error = %e, "readiness: store unavailable");
        return Err(ApiError::Unavailable("store"));
    }
    if let Err(e) = state.presence.ping().await {
        tracing::warn!(error = %e, "readiness: presence unavailable");
        return Err(ApiError::Unavailable("presence"));
    }
    Ok(json_response(
        StatusCode::OK,
        &serde_json::json!({"status": "ready", "store": "ok", "presence": "ok"}),
    ))
}

fn metrics<P: Presence>(state: &AppState<P>) -> Response<Full<Bytes>> {
    let text = state
        .metrics
        .as_ref()
        .map(|h| h.render())
        .unwrap_or_default();
    let mut r = Response::new(Full::new(Bytes::from(text)));
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    r
}

fn pem_response(pem: &str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(pem.to_owned())));
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/x-pem-file"),
    );
    r
}

/// Appends an audit event. A failure is logged, never shown to the caller, and does not
/// undo the action (the store being down is already reported by `/ready`).
async fn audit<P: Presence>(
    state: &AppState<P>,
    actor: String,
    kind: &str,
    outcome: &str,
    detail: serde_json::Value,
) {
    let event = NewAuditEvent {
        at: now_ms(),
        actor,
        kind: kind.to_owned(),
        outcome: outcome.to_owned(),
        detail: detail.to_string(),
    };
    if let Err(e) = state.store.append_audit(&event).await {
        tracing::error!(error = %e, kind, "audit event could not be written");
    }
}

fn now_ms() -> i64 {
    i64::try_from(time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000)
        .unwrap_or(i64::MAX)
}

/// `POST /api/v1/auth/login`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LoginRequest {
    user: String,
    password: String,
    /// PEM CSR for the user certificate; the key stays with the client.
    csr: String,
}

async fn login<P: Presence>(
    state: &AppState<P>,
    ctx: &RequestContext,
    body: LoginRequest,
) -> Reply {
    let address_key = format!("addr:{}", ctx.peer.ip());
    let user_key = format!("user:{}", body.user);
    let detail =
        serde_json::json!({"address": ctx.peer.ip().to_string(), "request_id": ctx.request_id});
    // A user name outside the grammar is simply an unknown user (same answer, same time).
    let name: Option<Name> = body.user.parse().ok();
    let actor = name.as_ref().map_or_else(
        || format!("anonymous:{}", ctx.peer.ip()),
        |n| format!("user:{n}"),
    );
    for key in [&address_key, &user_key] {
        if let Err(retry) = state.login_limits.check(key) {
            audit(state, actor, "auth.login", "rate_limited", detail).await;
            return Err(ApiError::TooManyRequests(retry.as_secs() + 1));
        }
    }
    let stored = match &name {
        Some(n) => state.store.password_hash(n.as_str()).await.map_err(|e| {
            tracing::error!(error = %e, "login: store failed");
            ApiError::Internal
        })?,
        None => None,
    };
    let password = body.password;
    let matched =
        tokio::task::spawn_blocking(move || auth::verify_password(&password, stored.as_deref()))
            .await
            .unwrap_or(false);
    let Some(user) = name.filter(|_| matched) else {
        state.login_limits.fail(&address_key);
        state.login_limits.fail(&user_key);
        audit(state, actor, "auth.login", "denied", detail).await;
        return Err(ApiError::Unauthenticated);
    };
    state.login_limits.clear(&user_key);

    let identity = Identity::User { user: user.clone() };
    let lifetime = state.lifetimes.user;
    let certificate = match state.ca.issue(
        &body.csr,
        &identity,
        None,
        lifetime,
        time::OffsetDateTime::now_utc(),
    ) {
        Ok(issued) => issued,
        Err(e) => {
            audit(
                state,
                actor,
                "auth.login",
                "failed",
                serde_json::json!({"reason": "csr", "request_id": ctx.request_id}),
            )
            .await;
            return Err(ApiError::BadRequest(format!("csr: {e}")));
        }
    };
    let token = auth::new_token().map_err(|_| ApiError::Internal)?;
    state
        .presence
        .put_token(&auth::token_hash(&token), user.as_str(), lifetime)
        .await
        .map_err(|e| {
            tracing::error!(error = %e, "login: presence failed");
            ApiError::Unavailable("presence")
        })?;
    audit(state, actor, "auth.login", "allowed", detail).await;
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

/// The token in `Authorization: Bearer …`, if any.
fn bearer(req: &Request<Incoming>) -> Option<&str> {
    req.headers()
        .get(http::header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
}

/// The user a valid bearer token belongs to.
async fn token_user<P: Presence>(
    state: &AppState<P>,
    req: &Request<Incoming>,
) -> Result<String, ApiError> {
    let token = bearer(req).ok_or(ApiError::Unauthenticated)?;
    state
        .presence
        .token_user(&auth::token_hash(token))
        .await
        .map_err(|_| ApiError::Unavailable("presence"))?
        .ok_or(ApiError::Unauthenticated)
}

async fn logout<P: Presence>(
    state: &AppState<P>,
    ctx: &RequestContext,
    req: &Request<Incoming>,
) -> Reply {
    let user = token_user(state, req).await?;
    if let Some(token) = bearer(req) {
        state
            .presence
            .revoke_token(&auth::token_hash(token))
            .await
            .map_err(|_| ApiError::Unavailable("presence"))?;
    }
    audit(
        state,
        format!("user:{user}"),
        "auth.logout",
        "allowed",
        serde_json::json!({"request_id": ctx.request_id}),
    )
    .await;
    let mut r = Response::new(Full::new(Bytes::new()));
    *r.status_mut() = StatusCode::NO_CONTENT;
    Ok(r)
}

async fn whoami<P: Presence>(
    state: &AppState<P>,
    ctx: &RequestContext,
    req: &Request<Incoming>,
) -> Reply {
    if let Caller::Certified { identity, serial } = ctx.caller.as_ref() {
        return Ok(json_response(
            StatusCode::OK,
            &serde_json::json!({"kind": identity.kind(), "uris": identity.uris(), "serial": serial, "via": "certificate"}),
        ));
    }
    let user = token_user(state, req).await?;
    let roles = state
        .store
        .user_roles(&user)
        .await
        .map_err(|_| ApiError::Internal)?;
    Ok(json_response(
        StatusCode::OK,
        &serde_json::json!({"kind": "user", "user": user, "roles": roles, "via": "token"}),
    ))
}

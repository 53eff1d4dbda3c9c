//! The router: every route of the API in one match, by method and path segments.
//!
//! Which callers a route accepts is decided here too, next to the route: by client
//! certificate (the [`Caller`] the TLS layer established) or by API token
//! (`Authorization: Bearer …`).

use std::time::Duration;

use bamf_proto::HostName;
use bamf_proto::san::{AgentId, Identity, Name, Uuid};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use serde::Deserialize;
use serde::de::DeserializeOwned;

use crate::auth;
use crate::error::{ApiError, json_response};
use crate::presence::Presence;
use crate::server::{AppState, Caller, RequestContext};
use crate::store::{JoinKind, JoinOutcome, JoinToken, NewAuditEvent};

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
        // Administrators.
        (&Method::POST, ["api", "v1", "join-tokens"]) => create_join_token(state, ctx, req).await,
        (&Method::GET, ["api", "v1", "join-tokens"]) => list_join_tokens(state, ctx, &req).await,
        (&Method::DELETE, ["api", "v1", "join-tokens", id]) => {
            revoke_join_token(state, ctx, &req, id).await
        }
        // Join tokens (the token is in the body): agents and bridges get their certificates.
        (&Method::POST, ["api", "v1", "agents", "join"]) => {
            join_agent(state, ctx, read_json(req).await?).await
        }
        (&Method::POST, ["api", "v1", "bridges", "join"]) => {
            join_bridge(state, ctx, read_json(req).await?).await
        }
        (
            _,
            ["health" | "ready" | "metrics"]
            | ["api", "v1", "ca" | "whoami" | "join-tokens"]
            | ["api", "v1", "auth", "login" | "logout"]
            | ["api", "v1", "join-tokens", _]
            | ["api", "v1", "agents" | "bridges", "join"],
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
    user_of(state, bearer(req)).await
}

/// The user `token` belongs to, if it is valid.
async fn user_of<P: Presence>(
    state: &AppState<P>,
    token: Option<&str>,
) -> Result<String, ApiError> {
    let token = token.ok_or(ApiError::Unauthenticated)?;
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

/// The administrator behind the bearer token; refusals are audited.
async fn admin<P: Presence>(
    state: &AppState<P>,
    ctx: &RequestContext,
    token: Option<&str>,
    action: &str,
) -> Result<String, ApiError> {
    let user = user_of(state, token).await?;
    let roles = state
        .store
        .user_roles(&user)
        .await
        .map_err(|_| ApiError::Internal)?;
    if !roles.iter().any(|r| r == "admin") {
        let detail = serde_json::json!({"action": action, "request_id": ctx.request_id});
        audit(
            state,
            format!("user:{user}"),
            "admin.denied",
            "denied",
            detail,
        )
        .await;
        return Err(ApiError::Forbidden);
    }
    Ok(user)
}

/// Longest a join token may live.
const MAX_JOIN_TTL: Duration = Duration::from_secs(30 * 24 * 3600);
/// Most uses one join token may allow.
const MAX_JOIN_USES: i64 = 10_000;

/// `POST /api/v1/join-tokens`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewJoinToken {
    /// `agent` or `bridge`.
    kind: String,
    /// Seconds until it expires.
    ttl_seconds: u64,
    /// How many joins it admits.
    max_uses: i64,
}

async fn create_join_token<P: Presence>(
    state: &AppState<P>,
    ctx: &RequestContext,
    req: Request<Incoming>,
) -> Reply {
    // Read the (bounded) body before answering, so a refusal never races an unread upload.
    let token = bearer(&req).map(str::to_owned);
    let body: NewJoinToken = read_json(req).await?;
    let user = admin(state, ctx, token.as_deref(), "join_token.create").await?;
    let kind = JoinKind::parse(&body.kind)
        .ok_or_else(|| ApiError::BadRequest("kind must be \"agent\" or \"bridge\"".into()))?;
    let ttl = Duration::from_secs(body.ttl_seconds);
    if ttl.is_zero() || ttl > MAX_JOIN_TTL {
        return Err(ApiError::BadRequest(format!(
            "ttl_seconds must be 1..={}",
            MAX_JOIN_TTL.as_secs()
        )));
    }
    if !(1..=MAX_JOIN_USES).contains(&body.max_uses) {
        return Err(ApiError::BadRequest(format!(
            "max_uses must be 1..={MAX_JOIN_USES}"
        )));
    }
    let secret = auth::new_token().map_err(|_| ApiError::Internal)?;
    let now = now_ms();
    let token = JoinToken {
        id: new_uuid()?.to_string(),
        kind,
        expires_at: now + i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX),
        max_uses: body.max_uses,
        uses: 0,
        revoked: false,
        created_by: format!("user:{user}"),
        created_at: now,
    };
    state
        .store
        .create_join_token(&token, &auth::token_hash(&secret))
        .await
        .map_err(|_| ApiError::Internal)?;
    let detail = serde_json::json!({"id": token.id, "kind": kind.as_str(), "max_uses": token.max_uses, "request_id": ctx.request_id});
    audit(
        state,
        token.created_by.clone(),
        "join_token.create",
        "allowed",
        detail,
    )
    .await;
    Ok(json_response(
        StatusCode::CREATED,
        &serde_json::json!({"id": token.id, "kind": kind.as_str(), "token": secret, "expires_at": token.expires_at / 1000, "max_uses": token.max_uses}),
    ))
}

async fn list_join_tokens<P: Presence>(
    state: &AppState<P>,
    ctx: &RequestContext,
    req: &Request<Incoming>,
) -> Reply {
    admin(state, ctx, bearer(req), "join_token.list").await?;
    let tokens = state
        .store
        .join_tokens()
        .await
        .map_err(|_| ApiError::Internal)?;
    let items: Vec<_> = tokens
        .iter()
        .map(|t| {
            serde_json::json!({"id": t.id, "kind": t.kind.as_str(), "expires_at": t.expires_at / 1000, "max_uses": t.max_uses,
                "uses": t.uses, "revoked": t.revoked, "created_by": t.created_by, "created_at": t.created_at / 1000})
        })
        .collect();
    Ok(json_response(
        StatusCode::OK,
        &serde_json::json!({"items": items}),
    ))
}

async fn revoke_join_token<P: Presence>(
    state: &AppState<P>,
    ctx: &RequestContext,
    req: &Request<Incoming>,
    id: &str,
) -> Reply {
    let user = admin(state, ctx, bearer(req), "join_token.revoke").await?;
    if !state
        .store
        .revoke_join_token(id)
        .await
        .map_err(|_| ApiError::Internal)?
    {
        return Err(ApiError::NotFound);
    }
    audit(
        state,
        format!("user:{user}"),
        "join_token.revoke",
        "allowed",
        serde_json::json!({"id": id, "request_id": ctx.request_id}),
    )
    .await;
    let mut r = Response::new(Full::new(Bytes::new()));
    *r.status_mut() = StatusCode::NO_CONTENT;
    Ok(r)
}

/// A random (v4) UUID.
fn new_uuid() -> Result<Uuid, ApiError> {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 16];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| ApiError::Internal)?;
    Ok(Uuid::new_v4(bytes))
}

/// `POST /api/v1/agents/join`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AgentJoin {
    token: String,
    /// Unique agent name (the rule for duplicates: a second agent may not take a name in
    /// use; an agent that lost its key is deleted by an administrator and joins again).
    name: String,
    csr: String,
}

async fn join_agent<P: Presence>(
    state: &AppState<P>,
    ctx: &RequestContext,
    body: AgentJoin,
) -> Reply {
    let actor = format!("anonymous:{}", ctx.peer.ip());
    let name: Name = body.name.parse().map_err(|_| {
        ApiError::BadRequest(
            "name must be 1-63 of a-z 0-9 - _ . starting with a letter or digit".into(),
        )
    })?;
    let agent = AgentId(new_uuid()?);
    let identity = Identity::Agent { agent };
    // The CSR is checked before the token is spent.
    let certificate = state
        .ca
        .issue(
            &body.csr,
            &identity,
            None,
            state.lifetimes.agent,
            time::OffsetDateTime::now_utc(),
        )
        .map_err(|e| ApiError::BadRequest(format!("csr: {e}")))?;
    let outcome = state
        .store
        .join_agent(
            &auth::token_hash(&body.token),
            &agent.to_string(),
            name.as_str(),
            now_ms(),
        )
        .await
        .map_err(|_| ApiError::Internal)?;
    let detail = serde_json::json!({"name": name.as_str(), "request_id": ctx.request_id});
    match outcome {
        JoinOutcome::Joined => {
            audit(
                state,
                format!("agent:{agent}"),
                "join.agent",
                "allowed",
                detail,
            )
            .await;
            Ok(json_response(
                StatusCode::CREATED,
                &serde_json::json!({"agent_id": agent.to_string(), "name": name.as_str(), "certificate": certificate.pem,
                    "certificate_expires_at": certificate.not_after.unix_timestamp(), "ca": state.ca.cert_pem()}),
            ))
        }
        JoinOutcome::InvalidToken => {
            audit(state, actor, "join.agent", "denied", detail).await;
            Err(ApiError::Unauthenticated)
        }
        JoinOutcome::NameTaken => {
            audit(state, actor, "join.agent", "denied", detail).await;
            Err(ApiError::Conflict("an agent with this name exists"))
        }
    }
}

/// `POST /api/v1/bridges/join`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BridgeJoin {
    token: String,
    ordinal: u32,
    csr: String,
}

async fn join_bridge<P: Presence>(
    state: &AppState<P>,
    ctx: &RequestContext,
    body: BridgeJoin,
) -> Reply {
    let name: HostName = format!("{}.bridge.{}", body.ordinal, state.tunnel_domain)
        .parse()
        .map_err(|_| ApiError::BadRequest("ordinal does not make a valid bridge name".into()))?;
    let identity = Identity::Bridge {
        ordinal: body.ordinal,
    };
    let certificate = state
        .ca
        .issue(
            &body.csr,
            &identity,
            Some(&name),
            state.lifetimes.bridge,
            time::OffsetDateTime::now_utc(),
        )
        .map_err(|e| ApiError::BadRequest(format!("csr: {e}")))?;
    let outcome = state
        .store
        .join_bridge(&auth::token_hash(&body.token), body.ordinal, now_ms())
        .await
        .map_err(|_| ApiError::Internal)?;
    let detail = serde_json::json!({"ordinal": body.ordinal, "request_id": ctx.request_id});
    if outcome != JoinOutcome::Joined {
        audit(
            state,
            format!("anonymous:{}", ctx.peer.ip()),
            "join.bridge",
            "denied",
            detail,
        )
        .await;
        return Err(ApiError::Unauthenticated);
    }
    audit(
        state,
        format!("bridge:{}", body.ordinal),
        "join.bridge",
        "allowed",
        detail,
    )
    .await;
    Ok(json_response(
        StatusCode::CREATED,
        &serde_json::json!({"name": name.as_str(), "certificate": certificate.pem,
            "certificate_expires_at": certificate.not_after.unix_timestamp(), "ca": state.ca.cert_pem()}),
    ))
}

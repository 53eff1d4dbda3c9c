//! The router: every route of the API in one table ([`ROUTES`]): method, path, who may call
//! it, and the endpoint that answers.
//!
//! Who may call is decided here, before any handler runs, from the client certificate the
//! TLS layer verified ([`Caller`]) or the API token (`Authorization: Bearer …`). Every
//! refusal of credentials is audited. `docs/openapi.yaml` describes the same table; a test
//! fails when the two disagree.

mod admin;
mod fleet;
mod join;
mod session;
mod tunnel;

use std::time::Duration;

use bamf_proto::san::{AgentId, Identity, Uuid};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::{Bytes, Incoming};
use serde::de::DeserializeOwned;

use crate::error::{ApiError, Body, full, json_response};
use crate::now_ms;
use crate::presence::Presence;
use crate::rbac;
use crate::server::{AppState, Caller, RequestContext};
use crate::store::{CertificateRef, NewAuditEvent, Role};

/// Largest request body: requests are small JSON documents (a CSR is about 500 bytes).
pub const MAX_BODY: usize = 64 * 1024;
/// Deadline for receiving a request body (slow senders).
const BODY_TIMEOUT: Duration = Duration::from_secs(10);

type Reply = Result<Response<Body>, ApiError>;

/// Who may call a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Anyone (health, the CA certificate, login).
    Public,
    /// Anyone holding a join token, which travels in the body.
    JoinToken,
    /// A signed-in user (API token).
    User,
    /// A user bound to the `admin` role.
    Admin,
    /// An agent, by its agent certificate.
    Agent,
    /// A bridge, by its bridge certificate.
    Bridge,
    /// A user by token, or anyone with a valid certificate of ours.
    UserOrCertificate,
}

/// What answers a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    Health,
    Ready,
    Metrics,
    Ca,
    Login,
    Logout,
    Whoami,
    Resources,
    CreateJoinToken,
    ListJoinTokens,
    RevokeJoinToken,
    JoinAgent,
    JoinBridge,
    RenewAgent,
    RenewBridge,
    AgentHeartbeat,
    ListAgents,
    DeleteAgent,
    ListBridges,
    ListUsers,
    CreateUser,
    DeleteUser,
    SetPassword,
    BindRole,
    UnbindRole,
    ListRoles,
    CreateRole,
    UpdateRole,
    DeleteRole,
    Audit,
    Revoke,
    ListRevocations,
    Connect,
    AgentCommands,
    BridgeHeartbeat,
    BridgeControl,
    BridgeReports,
    ListSessions,
    DeleteSession,
}

/// One route.
#[derive(Debug)]
pub struct Route {
    /// HTTP method.
    pub method: Method,
    /// Path template; `{name}` matches one segment.
    pub path: &'static str,
    /// Who may call it.
    pub access: Access,
    /// What answers.
    pub endpoint: Endpoint,
}

const fn r(method: Method, path: &'static str, access: Access, endpoint: Endpoint) -> Route {
    Route {
        method,
        path,
        access,
        endpoint,
    }
}

use Access::{Admin, Agent, Bridge, JoinToken, Public, User, UserOrCertificate};
use Endpoint as E;

/// The whole API.
#[rustfmt::skip]
pub static ROUTES: &[Route] = &[
    r(Method::GET,    "/health",                            Public,            E::Health),
    r(Method::GET,    "/ready",                             Public,            E::Ready),
    r(Method::GET,    "/metrics",                           Public,            E::Metrics),
    r(Method::GET,    "/api/v1/ca",                         Public,            E::Ca),
    r(Method::POST,   "/api/v1/auth/login",                 Public,            E::Login),
    r(Method::POST,   "/api/v1/auth/logout",                User,              E::Logout),
    r(Method::GET,    "/api/v1/whoami",                     UserOrCertificate, E::Whoami),
    r(Method::GET,    "/api/v1/resources",                  User,              E::Resources),
    // Sessions.
    r(Method::POST,   "/api/v1/connect",                    User,              E::Connect),
    r(Method::GET,    "/api/v1/sessions",                   Admin,             E::ListSessions),
    r(Method::DELETE, "/api/v1/sessions/{id}",              Admin,             E::DeleteSession),
    // Agents and bridges: joining, renewing, reporting, commands.
    r(Method::POST,   "/api/v1/agents/join",                JoinToken,         E::JoinAgent),
    r(Method::POST,   "/api/v1/bridges/join",               JoinToken,         E::JoinBridge),
    r(Method::POST,   "/api/v1/agents/renew",               Agent,             E::RenewAgent),
    r(Method::POST,   "/api/v1/agents/heartbeat",           Agent,             E::AgentHeartbeat),
    r(Method::GET,    "/api/v1/agent/commands",             Agent,             E::AgentCommands),
    r(Method::POST,   "/api/v1/bridges/renew",              Bridge,            E::RenewBridge),
    r(Method::POST,   "/api/v1/bridges/heartbeat",          Bridge,            E::BridgeHeartbeat),
    r(Method::GET,    "/api/v1/bridges/control",            Bridge,            E::BridgeControl),
    r(Method::POST,   "/api/v1/bridges/reports",            Bridge,            E::BridgeReports),
    // Administration.
    r(Method::POST,   "/api/v1/join-tokens",                Admin,             E::CreateJoinToken),
    r(Method::GET,    "/api/v1/join-tokens",                Admin,             E::ListJoinTokens),
    r(Method::DELETE, "/api/v1/join-tokens/{id}",           Admin,             E::RevokeJoinToken),
    r(Method::GET,    "/api/v1/agents",                     Admin,             E::ListAgents),
    r(Method::DELETE, "/api/v1/agents/{id}",                Admin,             E::DeleteAgent),
    r(Method::GET,    "/api/v1/bridges",                    Admin,             E::ListBridges),
    r(Method::GET,    "/api/v1/users",                      Admin,             E::ListUsers),
    r(Method::POST,   "/api/v1/users",                      Admin,             E::CreateUser),
    r(Method::DELETE, "/api/v1/users/{name}",               Admin,             E::DeleteUser),
    r(Method::PUT,    "/api/v1/users/{name}/password",      Admin,             E::SetPassword),
    r(Method::PUT,    "/api/v1/users/{name}/roles/{role}",  Admin,             E::BindRole),
    r(Method::DELETE, "/api/v1/users/{name}/roles/{role}",  Admin,             E::UnbindRole),
    r(Method::GET,    "/api/v1/roles",                      Admin,             E::ListRoles),
    r(Method::POST,   "/api/v1/roles",                      Admin,             E::CreateRole),
    r(Method::PUT,    "/api/v1/roles/{name}",               Admin,             E::UpdateRole),
    r(Method::DELETE, "/api/v1/roles/{name}",               Admin,             E::DeleteRole),
    r(Method::GET,    "/api/v1/audit",                      Admin,             E::Audit),
    r(Method::POST,   "/api/v1/revocations",                Admin,             E::Revoke),
    r(Method::GET,    "/api/v1/revocations",                Admin,             E::ListRevocations),
];

/// The route for `method` and `path`, with the path's parameters in template order.
///
/// # Errors
///
/// [`ApiError::NotFound`] when no template matches the path,
/// [`ApiError::MethodNotAllowed`] when one does but not with this method.
pub fn resolve<'p>(
    method: &Method,
    path: &'p str,
) -> Result<(&'static Route, Vec<&'p str>), ApiError> {
    let mut path_known = false;
    for route in ROUTES {
        let Some(params) = match_path(route.path, path) else {
            continue;
        };
        if route.method == *method {
            return Ok((route, params));
        }
        path_known = true;
    }
    Err(if path_known {
        ApiError::MethodNotAllowed
    } else {
        ApiError::NotFound
    })
}

fn match_path<'p>(template: &str, path: &'p str) -> Option<Vec<&'p str>> {
    let mut want = template.split('/');
    let mut got = path.split('/');
    let mut params = Vec::new();
    loop {
        match (want.next(), got.next()) {
            (None, None) => return Some(params),
            (Some(w), Some(g)) if w.starts_with('{') && !g.is_empty() => params.push(g),
            (Some(w), Some(g)) if w == g => {}
            _ => return None,
        }
    }
}

/// Who the request was authenticated as.
#[derive(Debug, Clone)]
pub enum Principal {
    /// Nobody (public and join-token routes).
    Anonymous,
    /// A signed-in user with the roles that apply to them.
    User {
        /// Name.
        name: String,
        /// `everyone` and the bound roles.
        roles: Vec<Role>,
    },
    /// An agent.
    Agent(AgentId),
    /// A bridge.
    Bridge(u32),
    /// Some other valid certificate of ours (session, user): only `whoami` takes it.
    Certificate(Identity),
}

impl Principal {
    /// The actor for audit events.
    fn actor(&self, ctx: &RequestContext) -> String {
        match self {
            Self::Anonymous => format!("anonymous:{}", ctx.peer.ip()),
            Self::User { name, .. } => format!("user:{name}"),
            Self::Agent(id) => format!("agent:{id}"),
            Self::Bridge(n) => format!("bridge:{n}"),
            Self::Certificate(identity) => format!("certificate:{}", identity.kind()),
        }
    }

    fn user(&self) -> Result<(&str, &[Role]), ApiError> {
        match self {
            Self::User { name, roles } => Ok((name, roles)),
            _ => Err(ApiError::Unauthenticated),
        }
    }
}

/// One request, authenticated, with its body read: what handlers get.
pub(crate) struct Call<'a, P> {
    state: &'a AppState<P>,
    ctx: &'a RequestContext,
    principal: Principal,
    params: Vec<&'a str>,
    query: Option<&'a str>,
    body: Bytes,
}

impl<P: Presence> Call<'_, P> {
    /// The body as `T` (whose fields are `deny_unknown_fields`). Error messages name fields
    /// and positions, never values: a value may be a password.
    fn json<T: DeserializeOwned>(&self) -> Result<T, ApiError> {
        serde_json::from_slice(&self.body).map_err(|e| {
            let text = e.to_string();
            let field_error =
                text.starts_with("unknown field") || text.starts_with("missing field");
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

    /// Path parameter `i`.
    fn param(&self, i: usize) -> &str {
        self.params.get(i).copied().unwrap_or_default()
    }

    fn actor(&self) -> String {
        self.principal.actor(self.ctx)
    }

    /// Appends an audit event. A failure is logged, never shown to the caller, and does not
    /// undo the action (the store being down is already reported by `/ready`).
    async fn audit(&self, kind: &str, outcome: &str, detail: serde_json::Value) {
        self.audit_as(self.actor(), kind, outcome, detail).await;
    }

    /// [`Call::audit`] for an actor other than the caller (e.g. the agent that just joined).
    async fn audit_as(
        &self,
        actor: String,
        kind: &str,
        outcome: &str,
        mut detail: serde_json::Value,
    ) {
        if let Some(object) = detail.as_object_mut() {
            object.insert("request_id".into(), self.ctx.request_id.clone().into());
        }
        audit(self.state, actor, kind, outcome, detail).await;
    }
}

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
    let (parts, body) = req.into_parts();
    let path = parts.uri.path();
    let (route, params) = resolve(&parts.method, path)?;
    // The (bounded) body is read before answering, so a refusal never races an unread upload.
    let body = read_body(body).await?;
    let principal = authenticate(state, ctx, &parts, route).await?;
    let call = Call {
        state,
        ctx,
        principal,
        params,
        query: parts.uri.query(),
        body,
    };
    match route.endpoint {
        E::Health => Ok(json_response(
            StatusCode::OK,
            &serde_json::json!({"status": "ok"}),
        )),
        E::Ready => ready(state).await,
        E::Metrics => Ok(metrics(state)),
        E::Ca => Ok(pem_response(state.ca.cert_pem())),
        E::Login => session::login(&call).await,
        E::Logout => session::logout(&call, &parts).await,
        E::Whoami => session::whoami(&call),
        E::Resources => fleet::resources(&call).await,
        E::CreateJoinToken => join::create_token(&call).await,
        E::ListJoinTokens => join::list_tokens(&call).await,
        E::RevokeJoinToken => join::revoke_token(&call).await,
        E::JoinAgent => join::join_agent(&call).await,
        E::JoinBridge => join::join_bridge(&call).await,
        E::RenewAgent => join::renew_agent(&call).await,
        E::RenewBridge => join::renew_bridge(&call).await,
        E::AgentHeartbeat => fleet::agent_heartbeat(&call).await,
        E::ListAgents => fleet::list_agents(&call).await,
        E::DeleteAgent => fleet::delete_agent(&call).await,
        E::ListBridges => fleet::list_bridges(&call).await,
        E::ListUsers => admin::list_users(&call).await,
        E::CreateUser => admin::create_user(&call).await,
        E::DeleteUser => admin::delete_user(&call).await,
        E::SetPassword => admin::set_password(&call).await,
        E::BindRole => admin::bind_role(&call).await,
        E::UnbindRole => admin::unbind_role(&call).await,
        E::ListRoles => admin::list_roles(&call).await,
        E::CreateRole => admin::create_role(&call).await,
        E::UpdateRole => admin::update_role(&call).await,
        E::DeleteRole => admin::delete_role(&call).await,
        E::Audit => admin::audit_events(&call).await,
        E::Revoke => admin::revoke(&call).await,
        E::ListRevocations => admin::revocations(&call).await,
        E::Connect => tunnel::connect(&call).await,
        E::AgentCommands => tunnel::agent_commands(&call).await,
        E::BridgeHeartbeat => tunnel::bridge_heartbeat(&call).await,
        E::BridgeControl => tunnel::bridge_control(&call).await,
        E::BridgeReports => tunnel::bridge_reports(&call).await,
        E::ListSessions => tunnel::list_sessions(&call).await,
        E::DeleteSession => tunnel::delete_session(&call).await,
    }
}

/// Reads a body of at most [`MAX_BODY`] bytes within [`BODY_TIMEOUT`].
async fn read_body(body: Incoming) -> Result<Bytes, ApiError> {
    let body = Limited::new(body, MAX_BODY);
    match tokio::time::timeout(BODY_TIMEOUT, body.collect()).await {
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(e))
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some() =>
        {
            Err(ApiError::PayloadTooLarge)
        }
        Ok(Err(_)) | Err(_) => Err(ApiError::BadRequest(
            "request body could not be read".into(),
        )),
    }
}

/// Establishes who is calling and whether `route` admits them. Refusals are audited.
async fn authenticate<P: Presence>(
    state: &AppState<P>,
    ctx: &RequestContext,
    parts: &http::request::Parts,
    route: &Route,
) -> Result<Principal, ApiError> {
    let refuse = |actor: String, reason: &'static str, error: ApiError| async move {
        let detail = serde_json::json!({"route": route.path, "method": route.method.as_str(),
            "reason": reason, "request_id": ctx.request_id});
        audit(state, actor, "auth.refused", "denied", detail).await;
        Err(error)
    };
    let anonymous = || format!("anonymous:{}", ctx.peer.ip());
    match route.access {
        Access::Public | Access::JoinToken => Ok(Principal::Anonymous),
        Access::User | Access::Admin => {
            let principal = match token_user(state, parts).await? {
                TokenCheck::Missing => {
                    return refuse(anonymous(), "no credentials", ApiError::Unauthenticated).await;
                }
                TokenCheck::Invalid => {
                    return refuse(anonymous(), "invalid token", ApiError::Unauthenticated).await;
                }
                TokenCheck::User(p) => p,
            };
            if route.access == Access::Admin {
                let (name, roles) = principal.user()?;
                if !roles.iter().any(|r| r.name == rbac::ADMIN) {
                    return refuse(
                        format!("user:{name}"),
                        "not an administrator",
                        ApiError::Forbidden,
                    )
                    .await;
                }
            }
            Ok(principal)
        }
        Access::Agent | Access::Bridge | Access::UserOrCertificate => {
            let Caller::Certified {
                identity,
                serial,
                fingerprint,
            } = ctx.caller.as_ref()
            else {
                if route.access == Access::UserOrCertificate {
                    return match token_user(state, parts).await? {
                        TokenCheck::User(p) => Ok(p),
                        TokenCheck::Missing => {
                            refuse(anonymous(), "no credentials", ApiError::Unauthenticated).await
                        }
                        TokenCheck::Invalid => {
                            refuse(anonymous(), "invalid token", ApiError::Unauthenticated).await
                        }
                    };
                }
                let reason = if bearer(parts).is_some() {
                    "token on a certificate route"
                } else {
                    "no client certificate"
                };
                return refuse(anonymous(), reason, ApiError::Unauthenticated).await;
            };
            let principal = match (route.access, identity) {
                (Access::Agent | Access::UserOrCertificate, Identity::Agent { agent }) => {
                    Principal::Agent(*agent)
                }
                (Access::Bridge | Access::UserOrCertificate, Identity::Bridge { ordinal }) => {
                    Principal::Bridge(*ordinal)
                }
                (Access::UserOrCertificate, other) => Principal::Certificate(other.clone()),
                (_, other) => {
                    let actor = format!("certificate:{}", other.kind());
                    return refuse(actor, "wrong certificate kind", ApiError::Forbidden).await;
                }
            };
            let certificate = CertificateRef {
                serial: Some(serial.clone()),
                fingerprint: Some(fingerprint.clone()),
            };
            let revoked = state.store.is_revoked(&certificate).await.map_err(|e| {
                tracing::error!(error = %e, "revocation check failed");
                ApiError::Unavailable("store")
            })?;
            if revoked {
                let actor = principal.actor(ctx);
                return refuse(actor, "revoked certificate", ApiError::Unauthenticated).await;
            }
            if let Principal::Agent(agent) = &principal {
                // A deleted agent's later certificates are refused too, not only the last.
                let known = state
                    .store
                    .agent(&agent.to_string())
                    .await
                    .map_err(|_| ApiError::Unavailable("store"))?;
                if known.is_none() {
                    let actor = principal.actor(ctx);
                    return refuse(actor, "unknown agent", ApiError::Unauthenticated).await;
                }
            }
            Ok(principal)
        }
    }
}

enum TokenCheck {
    Missing,
    Invalid,
    User(Principal),
}

/// The user behind the bearer token, with their roles.
async fn token_user<P: Presence>(
    state: &AppState<P>,
    parts: &http::request::Parts,
) -> Result<TokenCheck, ApiError> {
    let Some(token) = bearer(parts) else {
        return Ok(TokenCheck::Missing);
    };
    // Bound to the user's id: a deleted or disabled user's tokens stop working at once, and
    // a user created again under the same name does not inherit them.
    let user = state
        .store
        .token_user(&crate::auth::token_hash(token), now_ms())
        .await
        .map_err(|_| ApiError::Unavailable("store"))?;
    let Some(name) = user else {
        return Ok(TokenCheck::Invalid);
    };
    let roles = state
        .store
        .effective_roles(&name)
        .await
        .map_err(|_| ApiError::Unavailable("store"))?;
    Ok(TokenCheck::User(Principal::User { name, roles }))
}

/// The token in `Authorization: Bearer …`, if any.
fn bearer(parts: &http::request::Parts) -> Option<&str> {
    parts
        .headers
        .get(http::header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
}

/// How long `/ready` waits for its dependencies, together: well inside a 1 s probe.
const READY_WAIT: std::time::Duration = std::time::Duration::from_millis(500);

async fn ready<P: Presence>(state: &AppState<P>) -> Reply {
    let unavailable = |what: &'static str, e: &dyn std::fmt::Display| {
        tracing::warn!(error = %e, "readiness: {what} unavailable");
        ApiError::Unavailable(what)
    };
    // Both asked at once, under one deadline: a dependency that hangs is as down as one
    // that refuses.
    let (store, presence) = tokio::join!(
        tokio::time::timeout(READY_WAIT, state.store.ping()),
        tokio::time::timeout(READY_WAIT, state.presence.ping()),
    );
    match store {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(unavailable("store", &e)),
        Err(e) => return Err(unavailable("store", &e)),
    }
    match presence {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(unavailable("presence", &e)),
        Err(e) => return Err(unavailable("presence", &e)),
    }
    Ok(json_response(
        StatusCode::OK,
        &serde_json::json!({"status": "ready", "store": "ok", "presence": "ok"}),
    ))
}

fn metrics<P: Presence>(state: &AppState<P>) -> Response<Body> {
    let text = state
        .metrics
        .as_ref()
        .map(|h| h.render())
        .unwrap_or_default();
    let mut r = Response::new(full(text));
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    r
}

fn pem_response(pem: &str) -> Response<Body> {
    let mut r = Response::new(full(pem.to_owned()));
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/x-pem-file"),
    );
    r
}

/// 204 No Content.
fn no_content() -> Response<Body> {
    let mut r = Response::new(full(Bytes::new()));
    *r.status_mut() = StatusCode::NO_CONTENT;
    r
}

/// Appends an audit event; see [`Call::audit`].
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

/// A random (v4) UUID.
fn new_uuid() -> Result<Uuid, ApiError> {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 16];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| ApiError::Internal)?;
    Ok(Uuid::new_v4(bytes))
}

/// Issues a certificate with the configured lifetime for `identity` and records it, so that
/// revoking it by serial or by fingerprint finds whom it names.
async fn issue<P>(
    state: &AppState<P>,
    csr: &str,
    identity: &Identity,
    dns: Option<&bamf_proto::HostName>,
) -> Result<crate::ca::Issued, ApiError> {
    use crate::store::CertificateSubject as Subject;
    let now = time::OffsetDateTime::now_utc();
    let issued = state
        .ca
        .issue(
            csr,
            identity,
            dns,
            state.lifetimes.for_identity(identity),
            now,
        )
        .map_err(|e| ApiError::BadRequest(format!("csr: {e}")))?;
    let subject = match identity {
        Identity::User { user } => Subject::User(user.to_string()),
        Identity::Agent { agent } => Subject::Agent(agent.to_string()),
        Identity::Bridge { ordinal } => Subject::Bridge(*ordinal),
        Identity::Client { session, .. } => Subject::Session(session.to_string()),
    };
    state
        .store
        .record_certificate(
            &issued.serial,
            &issued.fingerprint,
            &subject,
            crate::unix_ms(now),
            crate::unix_ms(issued.not_after),
        )
        .await
        .map_err(store_failed)?;
    Ok(issued)
}

/// Logs a store failure where it happened and answers `internal`.
fn store_failed(e: crate::store::StoreError) -> ApiError {
    tracing::error!(error = %e, "store operation failed");
    ApiError::Internal
}

#[cfg(test)]
mod tests;

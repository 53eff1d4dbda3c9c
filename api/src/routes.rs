//! The router: every route of the API in one table ([`ROUTES`]). Each row is the whole
//! route: method, path, who may call it ([`Access`]), what it is for, the contract types of
//! its request and answer (from `bamf_proto::api`), and the handler. The row's types are the
//! handler's: the row's macro parses the body into the request type and serializes the
//! handler's answer, so a row cannot claim a type its handler does not use.
//! `docs/openapi.yaml` is generated from this table ([`crate::openapi`]); a test fails when
//! the committed document differs.

mod admin;
mod bots;
mod call;
mod fleet;
mod join;
mod session;
mod sso;
mod status;
mod tunnel;

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use bamf_proto::api::{self as wire, Page};
use bamf_proto::san::{Identity, Uuid};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::{Bytes, Incoming};
use schemars::{JsonSchema, Schema, SchemaGenerator};

pub use crate::access::Access;
use crate::access::authenticate;
use crate::context::{AppState, RequestContext};
use crate::error::{ApiError, Body, full, json_response};
pub use call::Call;

/// Largest request body: requests are small JSON documents (a CSR is about 500 bytes).
pub const MAX_BODY: usize = 64 * 1024;
/// Most sessions a bridge's or an agent's heartbeat may list (every one it carries).
const MAX_LISTED_SESSIONS: usize = 20_000;

/// Refuses a heartbeat listing more than [`MAX_LISTED_SESSIONS`] sessions.
fn check_listed_sessions(sessions: &[String]) -> Result<(), ApiError> {
    if sessions.len() > MAX_LISTED_SESSIONS {
        return Err(ApiError::BadRequest(format!(
            "at most {MAX_LISTED_SESSIONS} sessions"
        )));
    }
    Ok(())
}

/// Largest body on bridges' and agents' routes: their heartbeats list every session they
/// carry (up to [`MAX_LISTED_SESSIONS`], at about 40 bytes each). Only holders of a bridge or agent
/// certificate get past authentication, and the body is read before it, so this stays a
/// small multiple of `MAX_BODY`.
pub const MAX_PEER_BODY: usize = 1024 * 1024;
/// Deadline for receiving a request body (slow senders).
const BODY_TIMEOUT: Duration = Duration::from_secs(10);

type Reply = Result<Response<Body>, ApiError>;
/// A handler's work in progress.
pub type Pending<'c> = Pin<Box<dyn Future<Output = Reply> + Send + 'c>>;
/// What answers a route: the row's macro wraps the typed handler into this.
pub type Handler = for<'c> fn(&'c Call<'c>) -> Pending<'c>;
/// A contract type's JSON schema (a `$ref` into the generator's definitions).
pub type SchemaFn = fn(&mut SchemaGenerator) -> Schema;

/// The schema of `T`, as a reference.
fn schema<T: JsonSchema>(generator: &mut SchemaGenerator) -> Schema {
    generator.subschema_for::<T>()
}

/// What a route answers when it succeeds.
#[derive(Debug, Clone, Copy)]
pub enum Answer {
    /// JSON of the given schema, with `status` (or `also` when the handler says so).
    Json {
        /// The usual status.
        status: StatusCode,
        /// Another success status the handler may choose.
        also: Option<StatusCode>,
        /// The body's schema.
        schema: SchemaFn,
    },
    /// 204, no body.
    NoContent,
    /// A body of this media type that is not JSON (PEM, Prometheus text, event streams).
    Raw(&'static str),
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
    /// What it does, in one line.
    pub summary: &'static str,
    /// Query parameters it takes.
    pub query: &'static [&'static str],
    /// The request body's schema, when it takes one.
    pub request: Option<SchemaFn>,
    /// What it answers.
    pub answer: Answer,
    /// What answers.
    pub handler: Handler,
}

/// The typed part of a row: request, answer and the wrapped handler.
#[derive(Debug)]
pub struct Endpoint {
    request: Option<SchemaFn>,
    answer: Answer,
    handler: Handler,
}

const fn r(
    method: Method,
    path: &'static str,
    access: Access,
    summary: &'static str,
    endpoint: Endpoint,
) -> Route {
    Route {
        method,
        path,
        access,
        summary,
        query: &[],
        request: endpoint.request,
        answer: endpoint.answer,
        handler: endpoint.handler,
    }
}

impl Route {
    const fn with_query(mut self, query: &'static [&'static str]) -> Self {
        self.query = query;
        self
    }
}

/// An [`Endpoint`] whose handler runs `$body` with the request as `$call`.
macro_rules! endpoint {
    ($request:expr, $answer:expr, |$call:ident| $body:expr) => {
        Endpoint {
            request: $request,
            answer: $answer,
            handler: {
                fn wrapped<'c>($call: &'c Call<'c>) -> Pending<'c> {
                    Box::pin(async move { $body })
                }
                wrapped
            },
        }
    };
}

/// Wraps a typed handler into an [`Endpoint`]:
///
/// - `json!(OK, handler => Answer)`: `handler(&Call) -> Result<Answer, ApiError>`;
/// - `json!(OK, handler[Request] => Answer)`: the same with the body parsed as `Request`;
/// - `json!(CREATED | OK, handler[Request] => Answer)`: the handler also picks the status;
/// - `none!(handler)`, `none!(handler[Request])`: 204 No Content;
/// - `raw!("media/type", handler)`: the handler builds the response.
macro_rules! json {
    ($status:ident, $handler:path => $answer:ty) => {
        endpoint!(None, answer::<$answer>(StatusCode::$status, None), |call| {
            let answer: $answer = $handler(call).await?;
            Ok(json_response(StatusCode::$status, &answer))
        })
    };
    ($status:ident, $handler:path [$request:ty] => $answer:ty) => {
        endpoint!(
            Some(schema::<$request>),
            answer::<$answer>(StatusCode::$status, None),
            |call| {
                let answer: $answer = $handler(call, call.json::<$request>()?).await?;
                Ok(json_response(StatusCode::$status, &answer))
            }
        )
    };
    ($status:ident | $also:ident, $handler:path [$request:ty] => $answer:ty) => {
        endpoint!(
            Some(schema::<$request>),
            answer::<$answer>(StatusCode::$status, Some(StatusCode::$also)),
            |call| {
                let (status, answer): (StatusCode, $answer) =
                    $handler(call, call.json::<$request>()?).await?;
                Ok(json_response(status, &answer))
            }
        )
    };
}

macro_rules! none {
    ($handler:path) => {
        endpoint!(None, Answer::NoContent, |call| {
            $handler(call).await?;
            Ok(no_content())
        })
    };
    ($handler:path [$request:ty]) => {
        endpoint!(Some(schema::<$request>), Answer::NoContent, |call| {
            $handler(call, call.json::<$request>()?).await?;
            Ok(no_content())
        })
    };
}

macro_rules! raw {
    ($media:literal, $handler:path) => {
        endpoint!(None, Answer::Raw($media), |call| $handler(call).await)
    };
}

/// A JSON answer of type `T`.
const fn answer<T: JsonSchema>(status: StatusCode, also: Option<StatusCode>) -> Answer {
    Answer::Json {
        status,
        also,
        schema: schema::<T>,
    }
}

use Access::{Admin, Agent, Bridge, JoinToken, Public, User, UserOrCertificate};
use Method as M;

/// The whole API.
#[rustfmt::skip]
pub static ROUTES: &[Route] = &[
    r(M::GET, "/health", Public, "The process is alive.",
        json!(OK, status::health => wire::Health)),
    r(M::GET, "/ready", Public, "Store and presence answer (else 503 not_ready).",
        json!(OK, status::ready => wire::Readiness)),
    r(M::GET, "/metrics", Public, "Prometheus metrics (text format).",
        raw!("text/plain; version=0.0.4", status::metrics)),
    r(M::GET, "/api/v1/ca", Public, "The CA certificate, PEM.",
        raw!("application/x-pem-file", status::ca)),
    r(M::GET, "/api/v1/openapi.json", Public, "This API's OpenAPI document.",
        raw!("application/json", status::openapi)),
    r(M::POST, "/api/v1/auth/login", Public,
        "Sign in: an API token, and a user certificate for the CSR. Attempts are audited and limited per address and per user.",
        json!(OK, session::login[wire::LoginRequest] => wire::Login)),
    r(M::GET, "/api/v1/auth/providers", Public,
        "How users sign in here: whether password login is open, and the single sign-on providers.",
        json!(OK, sso::providers => wire::AuthMethods)),
    r(M::POST, "/api/v1/auth/sso/begin", Public,
        "Begin a single sign-on: the provider's authorization URL for the caller's loopback redirect; the flow (state, nonce, PKCE) is kept for 5 minutes, for one use.",
        json!(OK, sso::begin[wire::SsoBeginRequest] => wire::SsoBegin)),
    r(M::POST, "/api/v1/auth/sso/finish", Public,
        "Finish a single sign-on with the code and state the provider returned: the ID token is validated, roles follow the claims, and the answer is a login's. Attempts are audited.",
        json!(OK, sso::finish[wire::SsoFinishRequest] => wire::Login)),
    r(M::POST, "/api/v1/auth/sso/device/begin", Public,
        "Begin a single sign-on for a machine without a browser (device authorization grant): a code and a page for the user; the provider's device code stays here.",
        json!(OK, sso::device_begin[wire::SsoDeviceBeginRequest] => wire::SsoDevice)),
    r(M::POST, "/api/v1/auth/sso/device/poll", Public,
        "Poll a device sign-in: 400 authorization_pending (or slow_down) until the user finished, then a login's answer, once.",
        json!(OK, sso::device_poll[wire::SsoDevicePollRequest] => wire::Login)),
    r(M::POST, "/api/v1/bots/join", JoinToken,
        "A bot's first credentials for its one-time join token: an API token and a user certificate, both short-lived.",
        json!(OK, bots::join[wire::BotJoinRequest] => wire::Login)),
    r(M::POST, "/api/v1/bots/renew", User,
        "A bot renews its credentials before they expire: a new token and certificate; the token of this request stops working.",
        json!(OK, bots::renew[wire::BotRenewRequest] => wire::Login)),
    r(M::POST, "/api/v1/auth/logout", User, "Revoke the API token of this request.",
        none!(session::logout)),
    r(M::GET, "/api/v1/whoami", UserOrCertificate,
        "The caller: a token's user with roles, or a certificate's identity.",
        json!(OK, session::whoami => wire::Whoami)),
    r(M::GET, "/api/v1/resources", User,
        "The resources the caller's roles allow, with whether their agent is online.",
        json!(OK, fleet::resources => Page<wire::Resource>)),
    // Sessions.
    r(M::POST, "/api/v1/connect", User,
        "Open a session to a resource: a session certificate for the CSR, and the bridge to dial. A resource that does not exist and one the caller may not reach are both 404.",
        json!(CREATED, tunnel::connect[wire::ConnectRequest] => wire::SessionGrant)),
    r(M::GET, "/api/v1/sessions", Admin, "Sessions, newest first, paged.",
        json!(OK, tunnel::list_sessions => Page<wire::SessionRecord>))
        .with_query(wire::SessionQuery::PARAMS),
    r(M::DELETE, "/api/v1/sessions/{id}", Admin,
        "End a session; its bridge closes the tunnel within a heartbeat.",
        none!(tunnel::delete_session)),
    r(M::POST, "/api/v1/sessions/{id}/resume", User,
        "The session's path broke: a certificate for the same session on a live bridge, for a CSR of the session's own key; the agent is told to attach again. 410 once the session ended.",
        json!(OK, tunnel::resume_session[wire::ResumeRequest] => wire::SessionGrant)),
    // Agents and bridges: joining, renewing, reporting, commands.
    r(M::POST, "/api/v1/agents/join", JoinToken,
        "An agent joins with a join token and gets its certificate. Names are unique (409 when taken).",
        json!(CREATED, join::join_agent[wire::AgentJoinRequest] => wire::AgentCertificate)),
    r(M::POST, "/api/v1/bridges/join", JoinToken,
        "A bridge joins with a join token and gets its certificate, for <ordinal>.bridge.<tunnel-domain>.",
        json!(CREATED, join::join_bridge[wire::BridgeJoinRequest] => wire::BridgeCertificate)),
    r(M::POST, "/api/v1/agents/renew", Agent, "A new agent certificate for the same identity.",
        json!(OK, join::renew_agent[wire::RenewRequest] => wire::AgentCertificate)),
    r(M::POST, "/api/v1/agents/heartbeat", Agent,
        "The agent is alive; its whole catalog of resources, every time.",
        json!(OK, fleet::agent_heartbeat[wire::AgentHeartbeat] => wire::AgentHeartbeatAnswer)),
    r(M::POST, "/api/v1/agent/sessions/end", Agent,
        "The agent's accounts of sessions that are over: why, and the application's bytes each way.",
        json!(OK, tunnel::sessions_ended[wire::SessionEnds] => wire::ReportsAnswer)),
    r(M::GET, "/api/v1/agent/commands", Agent,
        "Server-sent events: one `dial` event (a DialCommand) per session to serve, comments as keep-alives.",
        raw!("text/event-stream", tunnel::agent_commands)),
    r(M::POST, "/api/v1/bridges/renew", Bridge, "A new bridge certificate for the same identity.",
        json!(OK, join::renew_bridge[wire::RenewRequest] => wire::BridgeCertificate)),
    r(M::POST, "/api/v1/bridges/heartbeat", Bridge,
        "The bridge is alive: its load, its open sessions; the answer lists sessions to end.",
        json!(OK, tunnel::bridge_heartbeat[wire::BridgeHeartbeat] => wire::BridgeHeartbeatAnswer)),
    r(M::GET, "/api/v1/bridges/control", Bridge,
        "Held open by each bridge while it lives: when it ends, no session is placed on the bridge.",
        raw!("text/event-stream", tunnel::bridge_control)),
    r(M::POST, "/api/v1/bridges/reports", Bridge, "Session starts and ends, with byte counts.",
        json!(OK, tunnel::bridge_reports[wire::Reports] => wire::ReportsAnswer)),
    // Administration.
    r(M::POST, "/api/v1/join-tokens", Admin,
        "A join token for agents or bridges; the secret is in this answer only.",
        json!(CREATED, join::create_token[wire::JoinTokenRequest] => wire::NewJoinToken)),
    r(M::GET, "/api/v1/join-tokens", Admin, "Join tokens (never their secrets).",
        json!(OK, join::list_tokens => Page<wire::JoinTokenRecord>)),
    r(M::DELETE, "/api/v1/join-tokens/{id}", Admin, "Revoke a join token.",
        none!(join::revoke_token)),
    r(M::GET, "/api/v1/agents", Admin, "Agents, with whether they are online.",
        json!(OK, fleet::list_agents => Page<wire::AgentRecord>)),
    r(M::DELETE, "/api/v1/agents/{id}", Admin,
        "Delete an agent: its resources go, its certificates are revoked, its sessions end.",
        none!(fleet::delete_agent)),
    r(M::GET, "/api/v1/bridges", Admin, "Bridges, with load and state.",
        json!(OK, fleet::list_bridges => Page<wire::BridgeRecord>)),
    r(M::GET, "/api/v1/users", Admin, "Users, with their roles.",
        json!(OK, admin::list_users => Page<wire::UserRecord>)),
    r(M::POST, "/api/v1/users", Admin, "Create a user, optionally with roles.",
        json!(CREATED, admin::create_user[wire::UserRequest] => wire::UserRecord)),
    r(M::DELETE, "/api/v1/users/{name}", Admin,
        "Delete a user: their tokens, certificates and sessions end.",
        none!(admin::delete_user)),
    r(M::PUT, "/api/v1/users/{name}/password", Admin, "Set a user's password.",
        none!(admin::set_password[wire::PasswordRequest])),
    r(M::PUT, "/api/v1/users/{name}/roles/{role}", Admin, "Bind a role to a user.",
        none!(admin::bind_role)),
    r(M::DELETE, "/api/v1/users/{name}/roles/{role}", Admin, "Unbind a role from a user.",
        none!(admin::unbind_role)),
    r(M::POST, "/api/v1/bots", Admin,
        "Create a bot (a machine identity: a user without a password) bound to roles, with its one-time join token; delete it as a user to revoke it.",
        json!(CREATED, bots::create[wire::BotRequest] => wire::NewBot)),
    r(M::GET, "/api/v1/roles", Admin, "Roles with their rules.",
        json!(OK, admin::list_roles => Page<wire::RoleRecord>)),
    r(M::POST, "/api/v1/roles", Admin, "Create a role.",
        json!(CREATED, admin::create_role[wire::RoleRequest] => wire::RoleRecord)),
    r(M::PUT, "/api/v1/roles/{name}", Admin, "Replace a role's rules.",
        json!(OK, admin::update_role[wire::RoleRequest] => wire::RoleRecord)),
    r(M::DELETE, "/api/v1/roles/{name}", Admin, "Delete a role (not a built-in one).",
        none!(admin::delete_role)),
    r(M::GET, "/api/v1/audit", Admin, "The audit log, newest first, paged.",
        json!(OK, admin::audit_events => Page<wire::AuditEvent>))
        .with_query(wire::AuditQuery::PARAMS),
    r(M::POST, "/api/v1/revocations", Admin,
        "Revoke a certificate by serial or fingerprint, and everything derived from it (201 new, 200 known).",
        json!(CREATED | OK, admin::revoke[wire::RevocationRequest] => wire::RevocationRecord)),
    r(M::GET, "/api/v1/revocations", Admin, "Revoked certificates.",
        json!(OK, admin::revocations => Page<wire::RevocationRecord>)),
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

/// A routed request: the route's template (for metrics) and the answer.
#[derive(Debug)]
pub struct Routed {
    /// The matched template, or `None` when no route matched.
    pub template: Option<&'static str>,
    /// The answer.
    pub reply: Reply,
}

/// Routes one request.
pub async fn route(state: &AppState, ctx: &RequestContext, req: Request<Incoming>) -> Routed {
    let (parts, body) = req.into_parts();
    let path = parts.uri.path();
    let (route, params) = match resolve(&parts.method, path) {
        Ok(found) => found,
        Err(e) => {
            return Routed {
                template: None,
                reply: Err(e),
            };
        }
    };
    let reply = async {
        // The (bounded) body is read before answering, so a refusal never races an unread
        // upload.
        let limit = match route.access {
            Access::Bridge | Access::Agent => MAX_PEER_BODY,
            _ => MAX_BODY,
        };
        let body = read_body(body, limit).await?;
        let principal = authenticate(state, ctx, &parts, route.access, route.path).await?;
        let call = Call {
            state,
            ctx,
            principal,
            params,
            query: parts.uri.query(),
            headers: &parts.headers,
            body,
        };
        (route.handler)(&call).await
    }
    .await;
    Routed {
        template: Some(route.path),
        reply,
    }
}

/// Reads a body of at most `limit` bytes within [`BODY_TIMEOUT`].
async fn read_body(body: Incoming, limit: usize) -> Result<Bytes, ApiError> {
    let body = Limited::new(body, limit);
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

/// 204 No Content.
fn no_content() -> Response<Body> {
    let mut r = Response::new(full(Bytes::new()));
    *r.status_mut() = StatusCode::NO_CONTENT;
    r
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
async fn issue(
    state: &AppState,
    csr: &str,
    identity: &Identity,
    dns: Option<&bamf_proto::HostName>,
) -> Result<crate::ca::Issued, ApiError> {
    let lifetime = state.lifetimes.for_identity(identity);
    issue_for(state, csr, identity, dns, lifetime).await
}

/// [`issue`] with a lifetime of the caller's choosing (a bot's shorter one).
async fn issue_for(
    state: &AppState,
    csr: &str,
    identity: &Identity,
    dns: Option<&bamf_proto::HostName>,
    lifetime: std::time::Duration,
) -> Result<crate::ca::Issued, ApiError> {
    let (issued, record) = sign(state, csr, identity, dns, lifetime)?;
    state.store.record_certificate(&record).await?;
    Ok(issued)
}

/// Signs a certificate for `identity` and says how to record it; the caller records it
/// (before handing it out) in the same transaction as what it is for, or alone
/// ([`issue_for`]).
fn sign(
    state: &AppState,
    csr: &str,
    identity: &Identity,
    dns: Option<&bamf_proto::HostName>,
    lifetime: std::time::Duration,
) -> Result<(crate::ca::Issued, crate::store::NewCertificate), ApiError> {
    use crate::store::CertificateSubject as Subject;
    let now = time::OffsetDateTime::now_utc();
    let issued = state
        .ca
        .issue(csr, identity, dns, lifetime, now)
        .map_err(|e| ApiError::BadRequest(format!("csr: {e}")))?;
    let subject = match identity {
        Identity::User { user } => Subject::User(user.to_string()),
        Identity::Agent { agent } => Subject::Agent(agent.to_string()),
        Identity::Bridge { ordinal } => Subject::Bridge(*ordinal),
        Identity::Client { session, .. } => Subject::Session(session.to_string()),
    };
    let record = crate::store::NewCertificate {
        serial: issued.serial.clone(),
        fingerprint: issued.fingerprint.clone(),
        subject,
        issued_at: crate::unix_ms(now),
        expires_at: crate::unix_ms(issued.not_after),
    };
    Ok((issued, record))
}

/// A page's cursor (opaque to clients) as the number it stands for.
fn cursor(text: Option<&str>) -> Result<Option<i64>, ApiError> {
    text.map(|c| {
        c.parse::<i64>()
            .map_err(|_| ApiError::BadRequest("malformed cursor".into()))
    })
    .transpose()
}

/// One page of `rows` (newest first), each made an item: when the page is full, its
/// `next_cursor` is the last row's `key`.
fn page<S, T>(
    rows: Vec<S>,
    limit: u32,
    key: impl Fn(&S) -> i64,
    item: impl FnMut(S) -> Result<T, ApiError>,
) -> Result<Page<T>, ApiError> {
    let full = rows.len() == usize::try_from(limit).unwrap_or(usize::MAX);
    let next_cursor = rows
        .last()
        .filter(|_| full)
        .map(|last| key(last).to_string());
    let items = rows.into_iter().map(item).collect::<Result<_, _>>()?;
    Ok(Page { items, next_cursor })
}

/// The answer's form of an issued certificate, with the CA that signed it.
fn certificate(state: &AppState, issued: crate::ca::Issued) -> wire::IssuedCertificate {
    wire::IssuedCertificate {
        certificate: issued.pem,
        serial: issued.serial,
        certificate_expires_at_ms: crate::unix_ms(issued.not_after),
        ca: state.ca.cert_pem().to_owned(),
    }
}

#[cfg(test)]
mod tests;

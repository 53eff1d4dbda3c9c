//! The API's contract: the JSON body of every request and answer of `bamf-api`, defined once
//! and used by the API's handlers and by every caller (bridge, agent, CLI) through
//! `bamf_client::api`.
//!
//! Conventions, the same on every route:
//!
//! - **Times** are Unix milliseconds and durations milliseconds; every such field says so in
//!   its name (`*_ms`), so a value can never be read in the wrong unit.
//! - **Listings** answer a [`Page`]: `items`, and `next_cursor` when more can be had by
//!   asking again with `cursor=<next_cursor>` (an opaque string). Listings that are never
//!   long answer everything at once with `next_cursor` absent.
//! - **Requests** refuse unknown fields (a typo is an error, not a silently ignored option);
//!   **answers** may grow fields, so callers ignore the ones they do not know.
//! - **Errors** are [`ErrorBody`] with a stable `code`.
//!
//! With the `schema` feature every type describes itself as a JSON schema; the API's test
//! checks `docs/openapi.yaml` against these descriptions field by field.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::rbac::Rule;
pub use crate::resource::{ResourceKind, UnknownKind};
use crate::san::SessionId;
use crate::tunnel::SessionEvent;

#[cfg(feature = "schema")]
use schemars::JsonSchema;

/// Declares contract types: derives serde (and the schema when enabled) in one place.
macro_rules! contract {
    ($($item:item)*) => {
        $(
            #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
            #[cfg_attr(feature = "schema", derive(JsonSchema))]
            $item
        )*
    };
}

// ----------------------------------------------------------------------------------------
// Shared shapes.

contract! {
    /// One page of a listing.
    #[cfg_attr(feature = "schema", schemars(rename = "PageOf{T}"))]
    pub struct Page<T> {
        /// The entries.
        pub items: Vec<T>,
        /// Where the next page starts (`?cursor=`), when there may be one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub next_cursor: Option<String>,
    }

    /// Every refusal: `{"error": {…}}`.
    pub struct ErrorBody {
        /// The refusal.
        pub error: ErrorDetail,
    }

    /// A refusal's detail.
    pub struct ErrorDetail {
        /// Stable code: `unauthenticated`, `forbidden`, `not_found`, `method_not_allowed`,
        /// `conflict`, `bad_request`, `payload_too_large`, `rate_limited`, `not_ready`,
        /// `offline`, `internal`.
        pub code: String,
        /// What went wrong, for people; never a secret.
        pub message: String,
        /// The request's id, also in the API's logs.
        pub request_id: String,
    }

    /// A certificate issued for the caller's CSR, with the CA that signed it.
    pub struct IssuedCertificate {
        /// The certificate, PEM.
        pub certificate: String,
        /// Its serial number, lower-case hex.
        pub serial: String,
        /// When it expires.
        pub certificate_expires_at_ms: i64,
        /// The CA certificate, PEM.
        pub ca: String,
    }

    /// `GET /health`.
    pub struct Health {
        /// `ok`.
        pub status: String,
    }

    /// `GET /ready`, when ready (otherwise an error `not_ready`).
    pub struct Readiness {
        /// `ready`.
        pub status: String,
        /// `ok`.
        pub store: String,
        /// `ok`.
        pub presence: String,
    }
}

impl<T> Default for Page<T> {
    fn default() -> Self {
        Self {
            items: Vec::new(),
            next_cursor: None,
        }
    }
}

impl<T> Page<T> {
    /// Everything, in one page.
    pub fn all(items: Vec<T>) -> Self {
        Self {
            items,
            next_cursor: None,
        }
    }
}

/// What a join token admits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum JoinKind {
    /// Agents.
    Agent,
    /// Bridges.
    Bridge,
}

impl JoinKind {
    /// Its name in the API and in the store.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Agent => "agent",
            Self::Bridge => "bridge",
        }
    }

    /// From its stored form.
    pub fn parse(text: &str) -> Option<Self> {
        [Self::Agent, Self::Bridge]
            .into_iter()
            .find(|k| k.as_str() == text)
    }
}

/// The states of a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum SessionState {
    /// Issued; its sides have not paired yet.
    Pending,
    /// Paired: bytes flow.
    Active,
    /// Over.
    Ended,
}

impl SessionState {
    /// Its name in the API and in the store.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Active => "active",
            Self::Ended => "ended",
        }
    }

    /// Parses a stored or queried state.
    pub fn parse(text: &str) -> Option<Self> {
        [Self::Pending, Self::Active, Self::Ended]
            .into_iter()
            .find(|s| s.as_str() == text)
    }
}

// ----------------------------------------------------------------------------------------
// Signing in.

contract! {
    /// `POST /api/v1/auth/login`.
    #[serde(deny_unknown_fields)]
    pub struct LoginRequest {
        /// User name.
        pub user: String,
        /// Password.
        pub password: String,
        /// PEM CSR for the user certificate; the key stays with the client.
        pub csr: String,
    }

    /// The answer to a login.
    pub struct Login {
        /// The user signed in.
        pub user: String,
        /// API token (`Authorization: Bearer …`).
        pub token: String,
        /// When the token expires.
        pub token_expires_at_ms: i64,
        /// The user certificate.
        #[serde(flatten)]
        pub certificate: IssuedCertificate,
    }

    /// `GET /api/v1/auth/providers`: how users sign in here.
    pub struct AuthMethods {
        /// Whether password login is open (`auth.local.enabled`).
        pub local_enabled: bool,
        /// The single sign-on provider used when none is named.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub default_provider: Option<String>,
        /// The single sign-on (OpenID Connect) providers, by name.
        pub providers: Vec<SsoProvider>,
    }

    /// One single sign-on provider.
    pub struct SsoProvider {
        /// Its name (`bamf login --sso NAME`).
        pub name: String,
        /// Its issuer URL.
        pub issuer: String,
    }

    /// `POST /api/v1/auth/sso/begin`: start a single sign-on. The API keeps the flow (state,
    /// nonce, its own PKCE verifier) for a few minutes, for one use.
    #[serde(deny_unknown_fields)]
    pub struct SsoBeginRequest {
        /// The provider; the default provider when absent.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub provider: Option<String>,
        /// Where the provider sends the browser back: the CLI's loopback listener,
        /// `http://127.0.0.1:<port>/callback` (or `[::1]`, `localhost`).
        pub redirect_uri: String,
        /// BASE64URL(SHA-256(verifier)) of a verifier the client keeps: finishing the flow
        /// needs it, so a code and state seen elsewhere are not enough.
        pub code_challenge: String,
    }

    /// The answer to `POST /api/v1/auth/sso/begin`.
    pub struct SsoBegin {
        /// The provider chosen.
        pub provider: String,
        /// Open this in a browser.
        pub authorization_url: String,
        /// The state the provider returns with the code.
        pub state: String,
        /// The flow must finish before this.
        pub expires_at_ms: i64,
    }

    /// `POST /api/v1/auth/sso/finish`: the code and state the provider returned; answered
    /// like a password login.
    #[serde(deny_unknown_fields)]
    pub struct SsoFinishRequest {
        /// The `state` returned with the code.
        pub state: String,
        /// The authorization code.
        pub code: String,
        /// The verifier whose challenge began the flow.
        pub code_verifier: String,
        /// PEM CSR for the user certificate; the key stays with the client.
        pub csr: String,
    }

    /// `POST /api/v1/auth/sso/device/begin`: single sign-on for a machine without a
    /// browser (device authorization grant, where the provider offers it).
    #[serde(deny_unknown_fields)]
    pub struct SsoDeviceBeginRequest {
        /// The provider; the default provider when absent.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub provider: Option<String>,
    }

    /// The answer to `POST /api/v1/auth/sso/device/begin`: what to show the user.
    pub struct SsoDevice {
        /// The provider chosen.
        pub provider: String,
        /// What the caller polls with (the provider's device code stays in the API).
        pub handle: String,
        /// The code the user enters at the verification page.
        pub user_code: String,
        /// The verification page, to open on any device.
        pub verification_uri: String,
        /// The page with the code filled in, when the provider offers it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub verification_uri_complete: Option<String>,
        /// How long to wait between polls.
        pub interval_ms: i64,
        /// The grant expires then.
        pub expires_at_ms: i64,
    }

    /// `POST /api/v1/auth/sso/device/poll`: answered like a login once the user signed in;
    /// until then 400 `authorization_pending` (or `slow_down`).
    #[serde(deny_unknown_fields)]
    pub struct SsoDevicePollRequest {
        /// The handle from begin.
        pub handle: String,
        /// PEM CSR for the user certificate; the key stays with the client.
        pub csr: String,
    }

    /// `POST /api/v1/bots`: a machine identity (a user without a password) bound to roles,
    /// and its one-time join token.
    #[serde(deny_unknown_fields)]
    pub struct BotRequest {
        /// The bot's user name.
        pub name: String,
        /// Roles it is bound to.
        #[serde(default)]
        pub roles: Vec<String>,
        /// How long the join token lives (default one hour).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub token_ttl_ms: Option<u64>,
    }

    /// A new bot: the join token is shown this once.
    pub struct NewBot {
        /// The bot's user name.
        pub name: String,
        /// The one-time join token.
        pub token: String,
        /// When the join token expires.
        pub token_expires_at_ms: i64,
        /// How long each of its credentials lives (it renews them at half-life).
        pub credential_lifetime_ms: i64,
    }

    /// `POST /api/v1/bots/join`: a bot's first credentials, for its join token.
    #[serde(deny_unknown_fields)]
    pub struct BotJoinRequest {
        /// The one-time join token.
        pub token: String,
        /// PEM CSR for the user certificate; the key stays with the bot.
        pub csr: String,
    }

    /// `POST /api/v1/bots/renew`: new credentials for the bot of this token (which then
    /// stops working).
    #[serde(deny_unknown_fields)]
    pub struct BotRenewRequest {
        /// PEM CSR for the new user certificate.
        pub csr: String,
    }

    /// `GET /api/v1/whoami`.
    #[serde(tag = "via", rename_all = "snake_case")]
    pub enum Whoami {
        /// A signed-in user, by API token.
        Token {
            /// `user`.
            kind: String,
            /// The user's name.
            user: String,
            /// `everyone` and the bound roles.
            roles: Vec<String>,
        },
        /// A certificate of ours.
        Certificate {
            /// `user`, `agent`, `bridge` or `client`.
            kind: String,
            /// The identity's `bamf://` URIs.
            uris: Vec<String>,
            /// Serial number, lower-case hex.
            serial: String,
            /// SHA-256 of the certificate, lower-case hex.
            fingerprint: String,
        },
    }
}

// ----------------------------------------------------------------------------------------
// Resources and sessions.

contract! {
    /// A resource the caller may reach (`GET /api/v1/resources`).
    pub struct Resource {
        /// Unique name.
        pub name: String,
        /// How to speak to it.
        pub kind: ResourceKind,
        /// Labels, for access rules and filtering.
        pub labels: BTreeMap<String, String>,
        /// The name of the agent that serves it.
        pub agent: String,
        /// Whether that agent is online.
        pub online: bool,
    }

    /// `POST /api/v1/connect`.
    #[serde(deny_unknown_fields)]
    pub struct ConnectRequest {
        /// The resource's name.
        pub resource: String,
        /// PEM CSR for the session certificate; the key stays with the client.
        pub csr: String,
    }

    /// `POST /api/v1/sessions/{id}/resume`: the session's path broke; a certificate for
    /// the same session on a live bridge. The CSR must be for the session's own key (the
    /// one its first certificate certified): that is what proves the caller holds it.
    #[serde(deny_unknown_fields)]
    pub struct ResumeRequest {
        /// PEM CSR for the session's key.
        pub csr: String,
        /// The bridge whose path broke, avoided when another is live.
        pub broken_bridge: Option<u32>,
    }

    /// A session, ready to dial: where, and with which certificate.
    pub struct SessionGrant {
        /// The session.
        pub session_id: String,
        /// The resource.
        pub resource: String,
        /// Its kind.
        pub kind: ResourceKind,
        /// The bridge's name (SNI), `<n>.bridge.<tunnel-domain>`.
        pub bridge_host: String,
        /// The bridges' public port.
        pub bridge_port: u16,
        /// The session certificate.
        #[serde(flatten)]
        pub certificate: IssuedCertificate,
    }

    /// A session as administrators list it (`GET /api/v1/sessions`).
    pub struct SessionRecord {
        /// The session.
        pub id: String,
        /// Who opened it.
        pub user: String,
        /// To what.
        pub resource: String,
        /// Through which agent.
        pub agent_id: String,
        /// On which bridge.
        pub bridge: u32,
        /// Where it is in its life.
        pub state: SessionState,
        /// When it was issued.
        pub created_at_ms: i64,
        /// When its sides paired.
        pub started_at_ms: Option<i64>,
        /// When it ended.
        pub ended_at_ms: Option<i64>,
        /// Client → agent bytes (known once it ended).
        pub bytes_up: i64,
        /// Agent → client bytes.
        pub bytes_down: i64,
        /// Why it ended, e.g. `closed`, `idle_timeout`, `killed`, `resume_timeout`.
        pub end_reason: Option<String>,
        /// Attachments after the first (its path broke and both sides attached again).
        pub reattaches: i64,
        /// Every bridge it went through, in order.
        pub bridges: Vec<u32>,
        /// Since when its path is broken and it waits for both sides to attach again.
        pub detached_at_ms: Option<i64>,
    }
}

/// `GET /api/v1/sessions?state=&user=&cursor=&limit=`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SessionQuery {
    /// Only sessions in this state.
    pub state: Option<SessionState>,
    /// Only this user's.
    pub user: Option<String>,
    /// Where to continue ([`Page::next_cursor`]).
    pub cursor: Option<String>,
    /// Page size, 1..=[`MAX_PAGE`].
    pub limit: Option<u32>,
}

/// `GET /api/v1/audit?actor=&kind=&since_ms=&until_ms=&cursor=&limit=`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditQuery {
    /// Only events by this actor (`user:alice`, `agent:<id>`, …).
    pub actor: Option<String>,
    /// Only events of this kind (`auth.login`, `connect`, …).
    pub kind: Option<String>,
    /// Only events at or after this time.
    pub since_ms: Option<i64>,
    /// Only events before this time.
    pub until_ms: Option<i64>,
    /// Where to continue ([`Page::next_cursor`]).
    pub cursor: Option<String>,
    /// Page size, 1..=[`MAX_PAGE`].
    pub limit: Option<u32>,
}

/// Longest page of a paged listing.
pub const MAX_PAGE: u32 = 500;
/// Page size when the query gives none.
pub const DEFAULT_PAGE: u32 = 100;

/// Why a query string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueryError {
    /// A parameter this route does not take.
    #[error("unknown query parameter {name:?} (expected {expected})")]
    Unknown {
        /// The parameter given.
        name: String,
        /// The ones this route takes.
        expected: String,
    },
    /// A value of the wrong form.
    #[error("{0}")]
    Value(String),
}

/// One `name=value` of a query string, decoded.
type Pair<'q> = (std::borrow::Cow<'q, str>, std::borrow::Cow<'q, str>);

/// The query string's pairs, refusing names outside `expected`.
fn pairs<'q>(
    query: &'q str,
    expected: &'static [&'static str],
) -> Result<Vec<Pair<'q>>, QueryError> {
    form_urlencoded::parse(query.as_bytes())
        .map(|(k, v)| {
            if expected.contains(&k.as_ref()) {
                Ok((k, v))
            } else {
                Err(QueryError::Unknown {
                    name: k.into_owned(),
                    expected: expected.join(", "),
                })
            }
        })
        .collect()
}

fn limit(text: &str) -> Result<u32, QueryError> {
    text.parse::<u32>()
        .ok()
        .filter(|l| (1..=MAX_PAGE).contains(l))
        .ok_or_else(|| QueryError::Value(format!("limit must be 1..={MAX_PAGE}")))
}

fn millis(name: &str, text: &str) -> Result<i64, QueryError> {
    text.parse::<i64>()
        .map_err(|_| QueryError::Value(format!("{name} is Unix milliseconds")))
}

/// A query string (with its `?`, or empty) from the pairs whose value is present.
fn query_string(pairs: &[(&str, Option<String>)]) -> String {
    let mut q = form_urlencoded::Serializer::new(String::new());
    for (k, v) in pairs {
        if let Some(v) = v {
            q.append_pair(k, v);
        }
    }
    let q = q.finish();
    if q.is_empty() { q } else { format!("?{q}") }
}

impl SessionQuery {
    /// The parameters' names.
    pub const PARAMS: &'static [&'static str] = &["state", "user", "cursor", "limit"];

    /// Parses the query string (without `?`).
    ///
    /// # Errors
    ///
    /// [`QueryError`] for an unknown parameter or a malformed value.
    pub fn parse(query: &str) -> Result<Self, QueryError> {
        let mut q = Self::default();
        for (key, value) in pairs(query, Self::PARAMS)? {
            match key.as_ref() {
                "state" => {
                    q.state = Some(SessionState::parse(&value).ok_or_else(|| {
                        QueryError::Value("state is pending, active or ended".into())
                    })?);
                }
                "user" => q.user = Some(value.into_owned()),
                "cursor" => q.cursor = Some(value.into_owned()),
                _ => q.limit = Some(limit(&value)?),
            }
        }
        Ok(q)
    }

    /// The query string, with its `?` (empty when nothing is set).
    pub fn to_query(&self) -> String {
        query_string(&[
            ("state", self.state.map(|s| s.as_str().to_owned())),
            ("user", self.user.clone()),
            ("cursor", self.cursor.clone()),
            ("limit", self.limit.map(|l| l.to_string())),
        ])
    }
}

impl AuditQuery {
    /// The parameters' names.
    pub const PARAMS: &'static [&'static str] =
        &["actor", "kind", "since_ms", "until_ms", "cursor", "limit"];

    /// Parses the query string (without `?`).
    ///
    /// # Errors
    ///
    /// [`QueryError`] for an unknown parameter or a malformed value.
    pub fn parse(query: &str) -> Result<Self, QueryError> {
        let mut q = Self::default();
        for (key, value) in pairs(query, Self::PARAMS)? {
            match key.as_ref() {
                "actor" => q.actor = Some(value.into_owned()),
                "kind" => q.kind = Some(value.into_owned()),
                "since_ms" => q.since_ms = Some(millis("since_ms", &value)?),
                "until_ms" => q.until_ms = Some(millis("until_ms", &value)?),
                "cursor" => q.cursor = Some(value.into_owned()),
                _ => q.limit = Some(limit(&value)?),
            }
        }
        Ok(q)
    }

    /// The query string, with its `?` (empty when nothing is set).
    pub fn to_query(&self) -> String {
        query_string(&[
            ("actor", self.actor.clone()),
            ("kind", self.kind.clone()),
            ("since_ms", self.since_ms.map(|t| t.to_string())),
            ("until_ms", self.until_ms.map(|t| t.to_string())),
            ("cursor", self.cursor.clone()),
            ("limit", self.limit.map(|l| l.to_string())),
        ])
    }
}

// ----------------------------------------------------------------------------------------
// Agents and bridges: joining, renewing, reporting.

contract! {
    /// `POST /api/v1/agents/join`.
    #[serde(deny_unknown_fields)]
    pub struct AgentJoinRequest {
        /// The join token.
        pub token: String,
        /// Unique agent name.
        pub name: String,
        /// PEM CSR for the agent certificate.
        pub csr: String,
    }

    /// `POST /api/v1/bridges/join`.
    #[serde(deny_unknown_fields)]
    pub struct BridgeJoinRequest {
        /// The join token.
        pub token: String,
        /// The bridge's ordinal (its pod's index in the StatefulSet).
        pub ordinal: u32,
        /// PEM CSR for the bridge certificate.
        pub csr: String,
    }

    /// `POST /api/v1/agents/renew` and `/bridges/renew`: a certificate for the same identity.
    #[serde(deny_unknown_fields)]
    pub struct RenewRequest {
        /// PEM CSR (for a new key, or the same one).
        pub csr: String,
    }

    /// An agent's certificate, from a join or a renewal.
    pub struct AgentCertificate {
        /// The agent's id (what its certificate names).
        pub agent_id: String,
        /// Its name (given on join).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub name: Option<String>,
        /// The certificate.
        #[serde(flatten)]
        pub certificate: IssuedCertificate,
    }

    /// A bridge's certificate, from a join or a renewal.
    pub struct BridgeCertificate {
        /// The name it is reached by, `<ordinal>.bridge.<tunnel-domain>`.
        pub name: String,
        /// Its ordinal.
        pub ordinal: u32,
        /// The certificate.
        #[serde(flatten)]
        pub certificate: IssuedCertificate,
    }

    /// `POST /api/v1/agents/heartbeat`: the agent's whole catalog, every time.
    #[serde(deny_unknown_fields)]
    pub struct AgentHeartbeat {
        /// What the agent serves.
        pub resources: Vec<ReportedResource>,
        /// Ids of the sessions it serves now (open or attaching again).
        #[serde(default)]
        pub sessions: Vec<String>,
    }

    /// One resource an agent serves.
    #[serde(deny_unknown_fields)]
    pub struct ReportedResource {
        /// Unique name.
        pub name: String,
        /// Its kind.
        pub kind: ResourceKind,
        /// Labels.
        #[serde(default)]
        pub labels: BTreeMap<String, String>,
    }

    /// The answer to an agent's heartbeat.
    pub struct AgentHeartbeatAnswer {
        /// When to report next.
        pub interval_ms: u64,
        /// Names another agent serves already: not taken.
        pub ignored: Vec<String>,
        /// Of the sessions reported, those that ended (killed, revoked, their user or
        /// agent deleted, timed out): the agent closes them and their resource connections.
        #[serde(default)]
        pub end: Vec<String>,
    }

    /// `POST /api/v1/bridges/heartbeat`.
    #[serde(deny_unknown_fields)]
    pub struct BridgeHeartbeat {
        /// Open tunnels.
        pub load: u32,
        /// Alive but taking no new sessions.
        pub draining: bool,
        /// Ids of the sessions whose tunnels are open on this bridge.
        #[serde(default)]
        pub sessions: Vec<String>,
        /// When this bridge process started: sessions older than it that it does not list
        /// were lost with its previous process.
        #[serde(default)]
        pub started_at_ms: Option<i64>,
    }

    /// The answer to a bridge's heartbeat.
    pub struct BridgeHeartbeatAnswer {
        /// When to report next.
        pub interval_ms: u64,
        /// Sessions to end now, or never to pair.
        pub kill: Vec<String>,
    }

    /// `POST /api/v1/bridges/reports`.
    #[serde(deny_unknown_fields)]
    pub struct Reports {
        /// Session starts and ends, oldest first.
        pub events: Vec<SessionEvent>,
    }

    /// The answer to reports (a bridge's, or an agent's session ends).
    pub struct ReportsAnswer {
        /// How many events were applied (the others named unknown sessions).
        pub applied: u32,
    }

    /// `POST /api/v1/agent/sessions/end`: the agent's accounts of sessions that are over,
    /// oldest first (sent together: one request, and one write at the API, for many).
    #[serde(deny_unknown_fields)]
    pub struct SessionEnds {
        /// The sessions' ends.
        pub ends: Vec<SessionEnd>,
    }

    /// The agent's account of a session that is over (only the ends know: a bridge sees its
    /// attachment end, not the session).
    #[serde(deny_unknown_fields)]
    pub struct SessionEnd {
        /// The session.
        pub session: SessionId,
        /// Why: `closed`, `idle_timeout`, `resume_timeout`, `peer_closed`, `resource_error`…
        pub reason: String,
        /// Application bytes from the client to the resource.
        pub bytes_up: u64,
        /// Application bytes from the resource to the client.
        pub bytes_down: u64,
        /// Attachments after the first.
        pub reattaches: u32,
        /// Time spent detached, in all.
        pub paused_ms: u64,
    }

    /// An agent, as administrators list it.
    pub struct AgentRecord {
        /// Its id.
        pub id: String,
        /// Its name.
        pub name: String,
        /// Whether it reported recently.
        pub online: bool,
        /// When it joined.
        pub joined_at_ms: i64,
        /// When it last reported.
        pub last_seen_at_ms: Option<i64>,
    }

    /// A bridge, as administrators list it.
    pub struct BridgeRecord {
        /// Its ordinal.
        pub ordinal: u32,
        /// The name it is reached by.
        pub host: String,
        /// Whether it reported recently.
        pub online: bool,
        /// Open tunnels, when online.
        pub load: Option<u32>,
        /// Whether it takes no new sessions.
        pub draining: bool,
        /// When it joined.
        pub joined_at_ms: i64,
        /// When it last reported.
        pub last_seen_at_ms: Option<i64>,
    }
}

// ----------------------------------------------------------------------------------------
// Administration.

contract! {
    /// `POST /api/v1/join-tokens`.
    #[serde(deny_unknown_fields)]
    pub struct JoinTokenRequest {
        /// What it admits.
        pub kind: JoinKind,
        /// How long it lives.
        pub ttl_ms: u64,
        /// How many joins it admits.
        pub max_uses: i64,
    }

    /// A new join token: the secret is shown this once.
    pub struct NewJoinToken {
        /// Its id (to list and revoke it).
        pub id: String,
        /// What it admits.
        pub kind: JoinKind,
        /// The secret.
        pub token: String,
        /// When it expires.
        pub expires_at_ms: i64,
        /// How many joins it admits.
        pub max_uses: i64,
    }

    /// A join token, as listed (never the secret).
    pub struct JoinTokenRecord {
        /// Its id.
        pub id: String,
        /// What it admits.
        pub kind: JoinKind,
        /// When it expires.
        pub expires_at_ms: i64,
        /// How many joins it admits.
        pub max_uses: i64,
        /// How many it admitted.
        pub uses: i64,
        /// Whether it was revoked.
        pub revoked: bool,
        /// Who made it.
        pub created_by: String,
        /// When.
        pub created_at_ms: i64,
    }

    /// A user.
    pub struct UserRecord {
        /// The name.
        pub name: String,
        /// Bound roles.
        pub roles: Vec<String>,
        /// When the user was created.
        pub created_at_ms: i64,
    }

    /// `POST /api/v1/users`.
    #[serde(deny_unknown_fields)]
    pub struct UserRequest {
        /// The name.
        pub name: String,
        /// The first password.
        pub password: String,
        /// Roles to bind at once.
        #[serde(default)]
        pub roles: Vec<String>,
    }

    /// `PUT /api/v1/users/{name}/password`.
    #[serde(deny_unknown_fields)]
    pub struct PasswordRequest {
        /// The new password.
        pub password: String,
    }

    /// A role.
    pub struct RoleRecord {
        /// The name.
        pub name: String,
        /// Rules that grant access.
        pub allow: Vec<Rule>,
        /// Rules that take it away again; they win.
        pub deny: Vec<Rule>,
        /// Whether it is built in (`admin`, `everyone`).
        pub builtin: bool,
    }

    /// `POST /api/v1/roles` (with `name`) and `PUT /api/v1/roles/{name}` (without).
    #[serde(deny_unknown_fields)]
    pub struct RoleRequest {
        /// The name, on creation only.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub name: Option<String>,
        /// Rules that grant access.
        #[serde(default)]
        pub allow: Vec<Rule>,
        /// Rules that take it away again.
        #[serde(default)]
        pub deny: Vec<Rule>,
    }

    /// One audit event.
    pub struct AuditEvent {
        /// Its position in the log.
        pub id: i64,
        /// When it happened.
        pub at_ms: i64,
        /// Who acted (`user:alice`, `agent:<id>`, `anonymous:<ip>`, …).
        pub actor: String,
        /// What happened (`auth.login`, `connect`, …).
        pub kind: String,
        /// `allowed`, `denied`, `rate_limited`, `failed`, `not_found`.
        pub outcome: String,
        /// Details, by kind.
        pub detail: serde_json::Value,
    }

    /// `POST /api/v1/revocations`: by serial, by fingerprint, or both.
    #[serde(deny_unknown_fields)]
    pub struct RevocationRequest {
        /// Serial, lower-case hex.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub serial: Option<String>,
        /// SHA-256 fingerprint, lower-case hex.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub fingerprint: Option<String>,
        /// Why, 1-200 characters.
        pub reason: String,
    }

    /// A revocation.
    pub struct RevocationRecord {
        /// Serial, lower-case hex.
        pub serial: Option<String>,
        /// SHA-256 fingerprint, lower-case hex.
        pub fingerprint: Option<String>,
        /// Why.
        pub reason: String,
        /// Who revoked it.
        pub revoked_by: String,
        /// When.
        pub revoked_at_ms: i64,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn answers_flatten_the_certificate_and_tolerate_new_fields() {
        let grant = SessionGrant {
            session_id: "s".into(),
            resource: "db".into(),
            kind: ResourceKind::Postgres,
            bridge_host: "0.bridge.example.test".into(),
            bridge_port: 443,
            certificate: IssuedCertificate {
                certificate: "PEM".into(),
                serial: "01".into(),
                certificate_expires_at_ms: 5,
                ca: "CA".into(),
            },
        };
        let mut v = serde_json::to_value(&grant).unwrap();
        assert_eq!(v["kind"], "postgres");
        assert_eq!(v["certificate_expires_at_ms"], 5);
        v["added_later"] = serde_json::json!(1);
        assert_eq!(serde_json::from_value::<SessionGrant>(v).unwrap(), grant);
    }

    #[test]
    fn requests_refuse_unknown_fields() {
        let text = r#"{"resource":"db","csr":"x","sneaky":1}"#;
        assert!(serde_json::from_str::<ConnectRequest>(text).is_err());
        let whoami = Whoami::Token {
            kind: "user".into(),
            user: "alice".into(),
            roles: vec!["everyone".into()],
        };
        let v = serde_json::to_value(&whoami).unwrap();
        assert_eq!(v["via"], "token");
    }

    #[test]
    fn queries_round_trip_and_refuse_unknown_names() {
        let q = SessionQuery {
            state: Some(SessionState::Active),
            user: Some("a b".into()),
            cursor: Some("17".into()),
            limit: Some(5),
        };
        let text = q.to_query();
        assert_eq!(text, "?state=active&user=a+b&cursor=17&limit=5");
        assert_eq!(SessionQuery::parse(&text[1..]).unwrap(), q);
        assert_eq!(SessionQuery::default().to_query(), "");
        let err = SessionQuery::parse("before=1").unwrap_err();
        assert!(
            err.to_string().contains("state, user, cursor, limit"),
            "{err}"
        );
        assert!(SessionQuery::parse("limit=0").is_err());
        assert!(SessionQuery::parse("state=gone").is_err());
        let a = AuditQuery::parse("since_ms=5&limit=500").unwrap();
        assert_eq!((a.since_ms, a.limit), (Some(5), Some(500)));
        assert!(AuditQuery::parse("since=5").is_err());
        assert!("ftp".parse::<ResourceKind>().is_err());
        assert_eq!("ssh".parse::<ResourceKind>().unwrap(), ResourceKind::Ssh);
    }
}

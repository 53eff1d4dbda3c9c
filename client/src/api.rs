//! Typed calls to the API: one method per route, taking and returning the contract's types
//! (`bamf_proto::api`), so no caller builds a body or reads an answer by hand.
//!
//! Agents and bridges call with their client certificate (the [`Api`]'s TLS configuration);
//! users with their API token, through [`Api::user`].

use bamf_proto::api::{
    AgentCertificate, AgentHeartbeat, AgentHeartbeatAnswer, AgentJoinRequest, AgentRecord,
    AuditEvent, AuditQuery, AuthMethods, BotJoinRequest, BotRenewRequest, BotRequest,
    BridgeCertificate, BridgeHeartbeat, BridgeHeartbeatAnswer, BridgeJoinRequest, BridgeRecord,
    ConnectRequest, Health, JoinTokenRecord, JoinTokenRequest, Login, LoginRequest, NewBot,
    NewJoinToken, Page, PasswordRequest, RenewRequest, Reports, ReportsAnswer, Resource,
    ResumeRequest, RevocationRecord, RevocationRequest, RoleRecord, RoleRequest, SessionEnds,
    SessionGrant, SessionQuery, SessionRecord, SsoBegin, SsoBeginRequest, SsoDevice,
    SsoDeviceBeginRequest, SsoDevicePollRequest, SsoFinishRequest, UserRecord, UserRequest, Whoami,
};
use http::Method;

use crate::https::{Api, HttpsError};

type Answer<T> = Result<T, HttpsError>;

/// No body.
const NONE: Option<&()> = None;

/// A path segment (a name or an id), percent-encoded.
pub fn segment(text: &str) -> String {
    form_urlencoded::byte_serialize(text.as_bytes())
        .collect::<String>()
        .replace('+', "%20")
}

impl Api {
    /// The routes a signed-in user calls, with `token`.
    pub fn user<'a>(&'a self, token: &'a str) -> UserApi<'a> {
        UserApi { api: self, token }
    }

    /// `GET /api/v1/agent/commands`: the event stream, for the caller to read.
    ///
    /// # Errors
    ///
    /// [`HttpsError`].
    pub async fn agent_commands(&self) -> Answer<http::Response<hyper::body::Incoming>> {
        self.stream("/api/v1/agent/commands").await
    }

    /// `GET /api/v1/bridges/control`: the stream held open while the bridge lives.
    ///
    /// # Errors
    ///
    /// [`HttpsError`].
    pub async fn bridge_control(&self) -> Answer<http::Response<hyper::body::Incoming>> {
        self.stream("/api/v1/bridges/control").await
    }
}

/// The API as a signed-in user (see [`Api::user`]).
#[derive(Clone, Copy)]
pub struct UserApi<'a> {
    api: &'a Api,
    token: &'a str,
}

impl<'a> UserApi<'a> {
    /// The endpoint it calls.
    pub fn api(&self) -> &'a Api {
        self.api
    }
}

impl std::fmt::Debug for UserApi<'_> {
    /// Never the token.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UserApi")
            .field("api", self.api)
            .finish_non_exhaustive()
    }
}

/// One typed method per route: `name(args) -> Answer: METHOD(path format) [, body]`, on a
/// type whose `$api` is the endpoint and `$bearer` the token it sends, if any.
macro_rules! routes {
    (impl $ty:ty { |$this:ident| $api:expr, $bearer:expr } $(
        $(#[$doc:meta])*
        fn $name:ident($($arg:ident: $argty:ty),*) -> $answer:ty: $method:ident ($($path:tt)+) $(, $body:ident)?;
    )*) => {
        impl $ty {
            $(
                $(#[$doc])*
                ///
                /// # Errors
                ///
                /// [`HttpsError`]; a refusal is [`HttpsError::Status`] with its stable code.
                pub async fn $name(&self, $($arg: $argty),*) -> Answer<$answer> {
                    let $this = self;
                    let path = format!($($path)+);
                    $api.call(Method::$method, &path, routes!(@body $($body)?), $bearer).await
                }
            )*
        }
    };
    (@body) => { NONE };
    (@body $body:ident) => { Some($body) };
}

routes! {
    impl Api { |this| this, None }
    /// `GET /health`: the process answers.
    fn health() -> Health: GET("/health");
    /// `POST /api/v1/auth/login`.
    fn login(request: &LoginRequest) -> Login: POST("/api/v1/auth/login"), request;
    /// `GET /api/v1/auth/providers`: password login's switch and the SSO providers.
    fn auth_methods() -> AuthMethods: GET("/api/v1/auth/providers");
    /// `POST /api/v1/auth/sso/begin`.
    fn sso_begin(request: &SsoBeginRequest) -> SsoBegin: POST("/api/v1/auth/sso/begin"), request;
    /// `POST /api/v1/auth/sso/finish`: answered like a password login.
    fn sso_finish(request: &SsoFinishRequest) -> Login: POST("/api/v1/auth/sso/finish"), request;
    /// `POST /api/v1/auth/sso/device/begin`: a device sign-in's code and page.
    fn sso_device_begin(request: &SsoDeviceBeginRequest) -> SsoDevice:
        POST("/api/v1/auth/sso/device/begin"), request;
    /// `POST /api/v1/auth/sso/device/poll`: 400 `authorization_pending` until done.
    fn sso_device_poll(request: &SsoDevicePollRequest) -> Login:
        POST("/api/v1/auth/sso/device/poll"), request;
    /// `POST /api/v1/bots/join`: a bot's first credentials.
    fn bot_join(request: &BotJoinRequest) -> Login: POST("/api/v1/bots/join"), request;
    /// `POST /api/v1/agents/join`.
    fn join_agent(request: &AgentJoinRequest) -> AgentCertificate:
        POST("/api/v1/agents/join"), request;
    /// `POST /api/v1/bridges/join`.
    fn join_bridge(request: &BridgeJoinRequest) -> BridgeCertificate:
        POST("/api/v1/bridges/join"), request;
    /// `POST /api/v1/agents/renew`, as the agent of this endpoint's certificate.
    fn renew_agent(request: &RenewRequest) -> AgentCertificate:
        POST("/api/v1/agents/renew"), request;
    /// `POST /api/v1/bridges/renew`, as the bridge of this endpoint's certificate.
    fn renew_bridge(request: &RenewRequest) -> BridgeCertificate:
        POST("/api/v1/bridges/renew"), request;
    /// `POST /api/v1/agents/heartbeat`.
    fn agent_heartbeat(beat: &AgentHeartbeat) -> AgentHeartbeatAnswer:
        POST("/api/v1/agents/heartbeat"), beat;
    /// `POST /api/v1/bridges/heartbeat`.
    fn bridge_heartbeat(beat: &BridgeHeartbeat) -> BridgeHeartbeatAnswer:
        POST("/api/v1/bridges/heartbeat"), beat;
    /// `POST /api/v1/bridges/reports`.
    fn bridge_reports(reports: &Reports) -> ReportsAnswer: POST("/api/v1/bridges/reports"), reports;
    /// `POST /api/v1/agent/sessions/end`.
    fn sessions_ended(ends: &SessionEnds) -> ReportsAnswer: POST("/api/v1/agent/sessions/end"), ends;
}

routes! {
    impl UserApi<'_> { |this| this.api, Some(this.token) }
    /// `POST /api/v1/auth/logout`: this token stops working.
    fn logout() -> (): POST("/api/v1/auth/logout");
    /// `POST /api/v1/bots/renew`: a bot's new credentials; this token stops working.
    fn bot_renew(request: &BotRenewRequest) -> Login: POST("/api/v1/bots/renew"), request;
    /// `POST /api/v1/bots` (admin): a bot and its one-time join token.
    fn create_bot(request: &BotRequest) -> NewBot: POST("/api/v1/bots"), request;
    /// `GET /api/v1/whoami`.
    fn whoami() -> Whoami: GET("/api/v1/whoami");
    /// `GET /api/v1/resources`: what the caller may reach.
    fn resources() -> Page<Resource>: GET("/api/v1/resources");
    /// `POST /api/v1/connect`: a session to `request.resource`.
    fn connect(request: &ConnectRequest) -> SessionGrant: POST("/api/v1/connect"), request;
    /// `GET /api/v1/sessions`.
    fn sessions(query: &SessionQuery) -> Page<SessionRecord>:
        GET("/api/v1/sessions{}", query.to_query());
    /// `DELETE /api/v1/sessions/{id}`.
    fn kill_session(id: &str) -> (): DELETE("/api/v1/sessions/{}", segment(id));
    /// `POST /api/v1/sessions/{id}/resume`: the session again, on a live bridge.
    fn resume(id: &str, request: &ResumeRequest) -> SessionGrant:
        POST("/api/v1/sessions/{}/resume", segment(id)), request;
    /// `GET /api/v1/users`.
    fn users() -> Page<UserRecord>: GET("/api/v1/users");
    /// `POST /api/v1/users`.
    fn create_user(request: &UserRequest) -> UserRecord: POST("/api/v1/users"), request;
    /// `DELETE /api/v1/users/{name}`.
    fn delete_user(name: &str) -> (): DELETE("/api/v1/users/{}", segment(name));
    /// `PUT /api/v1/users/{name}/password`.
    fn set_password(name: &str, request: &PasswordRequest) -> ():
        PUT("/api/v1/users/{}/password", segment(name)), request;
    /// `PUT /api/v1/users/{name}/roles/{role}`.
    fn bind_role(user: &str, role: &str) -> ():
        PUT("/api/v1/users/{}/roles/{}", segment(user), segment(role));
    /// `DELETE /api/v1/users/{name}/roles/{role}`.
    fn unbind_role(user: &str, role: &str) -> ():
        DELETE("/api/v1/users/{}/roles/{}", segment(user), segment(role));
    /// `GET /api/v1/roles`.
    fn roles() -> Page<RoleRecord>: GET("/api/v1/roles");
    /// `POST /api/v1/roles`.
    fn create_role(request: &RoleRequest) -> RoleRecord: POST("/api/v1/roles"), request;
    /// `PUT /api/v1/roles/{name}`.
    fn update_role(name: &str, request: &RoleRequest) -> RoleRecord:
        PUT("/api/v1/roles/{}", segment(name)), request;
    /// `DELETE /api/v1/roles/{name}`.
    fn delete_role(name: &str) -> (): DELETE("/api/v1/roles/{}", segment(name));
    /// `GET /api/v1/join-tokens`.
    fn join_tokens() -> Page<JoinTokenRecord>: GET("/api/v1/join-tokens");
    /// `POST /api/v1/join-tokens`.
    fn create_join_token(request: &JoinTokenRequest) -> NewJoinToken:
        POST("/api/v1/join-tokens"), request;
    /// `DELETE /api/v1/join-tokens/{id}`.
    fn revoke_join_token(id: &str) -> (): DELETE("/api/v1/join-tokens/{}", segment(id));
    /// `GET /api/v1/agents`.
    fn agents() -> Page<AgentRecord>: GET("/api/v1/agents");
    /// `DELETE /api/v1/agents/{id}`.
    fn delete_agent(id: &str) -> (): DELETE("/api/v1/agents/{}", segment(id));
    /// `GET /api/v1/bridges`.
    fn bridges() -> Page<BridgeRecord>: GET("/api/v1/bridges");
    /// `GET /api/v1/audit`.
    fn audit(query: &AuditQuery) -> Page<AuditEvent>: GET("/api/v1/audit{}", query.to_query());
    /// `GET /api/v1/revocations`.
    fn revocations() -> Page<RevocationRecord>: GET("/api/v1/revocations");
    /// `POST /api/v1/revocations`.
    fn revoke(request: &RevocationRequest) -> RevocationRecord:
        POST("/api/v1/revocations"), request;
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_token_never_shows_in_debug() {
        let key = rcgen::KeyPair::generate().unwrap();
        let ca = rcgen::CertificateParams::default()
            .self_signed(&key)
            .unwrap()
            .pem();
        let tls = crate::tls_config(&ca, None, &[]).unwrap();
        let api = Api::new("https://api.example.test", tls).unwrap();
        let text = format!("{:?}", api.user("bamf_secret-token"));
        assert!(!text.contains("secret"), "{text}");
    }

    #[test]
    fn segments_are_escaped() {
        assert_eq!(segment("a b/c"), "a%20b%2Fc");
        assert_eq!(segment("db-1"), "db-1");
    }
}

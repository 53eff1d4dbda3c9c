//! What a request is handled with: the state every handler can reach ([`AppState`]), who
//! is calling by the TLS handshake ([`Caller`], [`RequestContext`]), and one authenticated
//! request with its body read ([`Call`]), with the helpers handlers share (typed body,
//! path parameters, audit).

use std::net::SocketAddr;
use std::sync::Arc;

use bamf_proto::HostName;
use bamf_proto::san::Identity;
use hyper::body::Bytes;
use metrics_exporter_prometheus::PrometheusHandle;
use rustls_pki_types::CertificateDer;
use serde::de::DeserializeOwned;
use tokio_util::sync::CancellationToken;

use crate::access::Principal;
use crate::auth::LoginGuard;
use crate::ca::{Authority, Lifetimes};
use crate::error::ApiError;
use crate::now_ms;
use crate::presence::Presence;
use crate::store::{NewAuditEvent, Store};

/// What every request handler can reach.
#[derive(Debug)]
pub struct AppState {
    /// The durable store.
    pub store: Store,
    /// Liveness and agent commands.
    pub presence: Presence,
    /// The internal CA.
    pub ca: Arc<Authority>,
    /// Prometheus handle, when metrics are installed.
    pub metrics: Option<PrometheusHandle>,
    /// Certificate lifetimes (user certificates and API tokens share the user lifetime).
    pub lifetimes: Lifetimes,
    /// Failed-login limits, per client address and per user name.
    pub login_limits: LoginGuard,
    /// Bridges are named `<n>.bridge.<tunnel_domain>`.
    pub tunnel_domain: HostName,
    /// The bridges' public (front door) port, for clients and agents.
    pub tunnel_port: u16,
    /// Cancelled at shutdown: long-lived responses (command streams) end with it.
    pub shutdown: CancellationToken,
    /// Bridges whose control stream ended, for the reconciler.
    pub lost_bridges: Arc<crate::placement::LostBridges>,
}

/// What the router knows about a request besides the request itself.
#[derive(Debug, Clone)]
pub struct RequestContext {
    /// Who is calling, from the TLS handshake.
    pub caller: Arc<Caller>,
    /// The client's address.
    pub peer: SocketAddr,
    /// This request's id (in the response header, error bodies and logs).
    pub request_id: String,
}

/// Who is calling, as established by the TLS handshake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// No client certificate (user routes authenticate by token instead).
    Anonymous,
    /// A client certificate that chains to our CA and carries a valid identity.
    Certified {
        /// Its identity.
        identity: Identity,
        /// Its serial, lower-case hex (checked against revocations by the routes).
        serial: String,
        /// SHA-256 of its DER, lower-case hex (revocations may name it instead).
        fingerprint: String,
    },
}

impl Caller {
    /// Reads the caller from the verified peer certificate chain, if any. A certificate of
    /// ours whose identity does not parse is treated as none: such a caller can only reach
    /// public routes.
    pub(crate) fn from_peer(certs: Option<&[CertificateDer<'static>]>) -> Self {
        let Some(leaf) = certs.and_then(<[_]>::first) else {
            return Self::Anonymous;
        };
        use x509_parser::prelude::FromDer;
        let Ok((_, cert)) = x509_parser::certificate::X509Certificate::from_der(leaf) else {
            return Self::Anonymous;
        };
        match Identity::of_certificate(&cert) {
            Ok(identity) => Self::Certified {
                identity,
                serial: cert
                    .raw_serial()
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect(),
                fingerprint: crate::ca::fingerprint(leaf),
            },
            Err(_) => Self::Anonymous,
        }
    }

    pub(crate) fn kind(&self) -> &'static str {
        match self {
            Self::Anonymous => "anonymous",
            Self::Certified { identity, .. } => identity.kind(),
        }
    }
}

/// One request, authenticated, with its body read: what handlers get.
#[derive(Debug)]
pub struct Call<'a> {
    /// The API's state.
    pub state: &'a AppState,
    /// Who is calling, from where, under which request id.
    pub ctx: &'a RequestContext,
    /// Who the request was authenticated as.
    pub principal: Principal,
    /// Path parameters, in template order.
    pub params: Vec<&'a str>,
    /// The query string, without `?`.
    pub query: Option<&'a str>,
    /// The request's headers.
    pub headers: &'a http::HeaderMap,
    /// The body (bounded by the router).
    pub body: Bytes,
}

impl Call<'_> {
    /// The body as `T` (whose fields are `deny_unknown_fields`). Error messages name fields
    /// and positions, never values: a value may be a password.
    ///
    /// # Errors
    ///
    /// [`ApiError::BadRequest`].
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, ApiError> {
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
    pub fn param(&self, i: usize) -> &str {
        self.params.get(i).copied().unwrap_or_default()
    }

    /// The caller, as audit events name it.
    pub fn actor(&self) -> String {
        self.principal.actor(self.ctx)
    }

    /// Appends an audit event. A failure is logged, never shown to the caller, and does not
    /// undo the action (the store being down is already reported by `/ready`).
    pub async fn audit(&self, kind: &str, outcome: &str, detail: serde_json::Value) {
        self.audit_as(self.actor(), kind, outcome, detail).await;
    }

    /// [`Call::audit`] for an actor other than the caller (e.g. the agent that just joined).
    pub async fn audit_as(
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

/// Appends an audit event; see [`Call::audit`].
pub async fn audit(
    state: &AppState,
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

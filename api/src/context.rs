//! What a request is handled with: the state every handler can reach ([`AppState`]), who
//! is calling by the TLS handshake ([`Caller`], [`RequestContext`]), and the audit log
//! every layer writes to ([`audit`]).

use std::net::SocketAddr;
use std::sync::Arc;

use bamf_proto::HostName;
use bamf_proto::san::Identity;
use metrics_exporter_prometheus::PrometheusHandle;
use rustls_pki_types::CertificateDer;
use tokio_util::sync::CancellationToken;

use crate::auth::LoginGuard;
use crate::ca::{Authority, Lifetimes};
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
    /// The OpenAPI document served at `/api/v1/openapi.json` (see [`crate::openapi`]).
    pub openapi: &'static str,
    /// Bridges whose control stream ended, for the reconciler.
    pub lost_bridges: Arc<crate::placement::LostBridges>,
    /// How long a detached session waits for its sides to attach again before it ends
    /// `resume_timeout` (the agent's own deadline; the API waits a little longer for the
    /// agent's account).
    pub resume_deadline: std::time::Duration,
    /// Sign-in methods: password login's switch and the single sign-on providers.
    pub sso: crate::sso::Sso,
    /// How long a bot's API token and certificate live (it renews them at half-life).
    pub bot_lifetime: std::time::Duration,
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
        /// When it expires, Unix milliseconds: checked at every request, since a kept
        /// connection outlives the handshake that verified it.
        not_after: i64,
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
                serial: bamf_proto::hex::encode(cert.raw_serial()),
                fingerprint: crate::ca::fingerprint(leaf),
                not_after: cert.validity().not_after.timestamp().saturating_mul(1000),
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

/// An audit event happening now.
pub fn audit_event(
    actor: String,
    kind: &str,
    outcome: &str,
    detail: &serde_json::Value,
) -> NewAuditEvent {
    NewAuditEvent {
        at: now_ms(),
        actor,
        kind: kind.to_owned(),
        outcome: outcome.to_owned(),
        detail: detail.to_string(),
    }
}

/// Appends an audit event. A failure is logged, never shown to the caller, and does not
/// undo the action (the store being down is already reported by `/ready`).
pub async fn audit(
    state: &AppState,
    actor: String,
    kind: &str,
    outcome: &str,
    detail: serde_json::Value,
) {
    append(state, &audit_event(actor, kind, outcome, &detail)).await;
}

/// Appends `event`; a failure is logged (see [`audit`]).
pub async fn append(state: &AppState, event: &NewAuditEvent) {
    if let Err(e) = state.store.append_audit(event).await {
        tracing::error!(error = %e, kind = event.kind, "audit event could not be written");
    }
}

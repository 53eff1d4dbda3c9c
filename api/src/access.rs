//! Access: who may call a route ([`Access`], a column of the route table), and who a
//! request is from ([`Principal`]), established by `authenticate` from the client
//! certificate the TLS layer verified or the API token (`Authorization: Bearer …`), before
//! any handler runs. Every refusal of credentials is audited.

use bamf_proto::san::{AgentId, Identity};

use crate::context::{AppState, Caller, RequestContext, audit};
use crate::error::ApiError;
use crate::now_ms;
use crate::rbac;
use crate::store::{CertificateRef, Role};

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
    pub(crate) fn actor(&self, ctx: &RequestContext) -> String {
        match self {
            Self::Anonymous => format!("anonymous:{}", ctx.peer.ip()),
            Self::User { name, .. } => format!("user:{name}"),
            Self::Agent(id) => format!("agent:{id}"),
            Self::Bridge(n) => format!("bridge:{n}"),
            Self::Certificate(identity) => format!("certificate:{}", identity.kind()),
        }
    }

    /// The signed-in user's name and roles.
    ///
    /// # Errors
    ///
    /// [`ApiError::Unauthenticated`] for any other principal.
    pub fn user(&self) -> Result<(&str, &[Role]), ApiError> {
        match self {
            Self::User { name, roles } => Ok((name, roles)),
            _ => Err(ApiError::Unauthenticated),
        }
    }
}

/// Establishes who is calling and whether `route` admits them. Refusals are audited.
pub(crate) async fn authenticate(
    state: &AppState,
    ctx: &RequestContext,
    parts: &http::request::Parts,
    access: Access,
    route: &'static str,
) -> Result<Principal, ApiError> {
    let refuse = |actor: String, reason: &'static str, error: ApiError| async move {
        let detail = serde_json::json!({"route": route, "method": parts.method.as_str(),
            "reason": reason, "request_id": ctx.request_id});
        audit(state, actor, "auth.refused", "denied", detail).await;
        Err(error)
    };
    let anonymous = || format!("anonymous:{}", ctx.peer.ip());
    match access {
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
            if access == Access::Admin {
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
                not_after,
            } = ctx.caller.as_ref()
            else {
                if access == Access::UserOrCertificate {
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
                let reason = if bearer(&parts.headers).is_some() {
                    "token on a certificate route"
                } else {
                    "no client certificate"
                };
                return refuse(anonymous(), reason, ApiError::Unauthenticated).await;
            };
            let principal = match (access, identity) {
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
            // The handshake checked it then; a kept connection may be used after.
            if crate::now_ms() > *not_after {
                let actor = principal.actor(ctx);
                return refuse(actor, "expired certificate", ApiError::Unauthenticated).await;
            }
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
async fn token_user(
    state: &AppState,
    parts: &http::request::Parts,
) -> Result<TokenCheck, ApiError> {
    let Some(token) = bearer(&parts.headers) else {
        return Ok(TokenCheck::Missing);
    };
    // Bound to the user's id: a deleted or disabled user's tokens stop working at once, and
    // a user created again under the same name does not inherit them.
    let found = state
        .store
        .token_principal(&crate::auth::token_hash(token), now_ms())
        .await
        .map_err(|_| ApiError::Unavailable("store"))?;
    let Some((name, roles)) = found else {
        return Ok(TokenCheck::Invalid);
    };
    Ok(TokenCheck::User(Principal::User { name, roles }))
}

/// The token in `Authorization: Bearer …`, if any.
pub(crate) fn bearer(headers: &http::HeaderMap) -> Option<&str> {
    headers
        .get(http::header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
}

//! Join tokens, and how agents and bridges get and renew their certificates.

use std::time::Duration;

use bamf_proto::HostName;
use bamf_proto::api::{
    AgentCertificate, AgentJoinRequest, BridgeCertificate, BridgeJoinRequest, JoinTokenRecord,
    JoinTokenRequest, NewJoinToken, Page, RenewRequest,
};
use bamf_proto::san::{AgentId, Identity, Name};

use super::Call;
use super::{certificate, issue, new_uuid};
use crate::access::Principal;
use crate::auth;
use crate::error::ApiError;
use crate::now_ms;
use crate::store::{JoinOutcome, JoinToken};

/// Longest a join token may live.
const MAX_JOIN_TTL: Duration = Duration::from_secs(30 * 24 * 3600);
/// Most uses one join token may allow.
const MAX_JOIN_USES: i64 = 10_000;

pub(super) async fn create_token(
    call: &Call<'_>,
    body: JoinTokenRequest,
) -> Result<NewJoinToken, ApiError> {
    let ttl = Duration::from_millis(body.ttl_ms);
    if ttl.is_zero() || ttl > MAX_JOIN_TTL {
        return Err(ApiError::BadRequest(format!(
            "ttl_ms must be 1..={}",
            MAX_JOIN_TTL.as_millis()
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
        kind: body.kind,
        expires_at: now + i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX),
        max_uses: body.max_uses,
        uses: 0,
        revoked: false,
        created_by: call.actor(),
        created_at: now,
    };
    call.state
        .store
        .create_join_token(&token, &auth::token_hash(&secret))
        .await?;
    let detail = serde_json::json!({"id": token.id, "kind": token.kind.as_str(), "max_uses": token.max_uses});
    call.audit("join_token.create", "allowed", detail).await;
    Ok(NewJoinToken {
        id: token.id,
        kind: token.kind,
        token: secret,
        expires_at_ms: token.expires_at,
        max_uses: token.max_uses,
    })
}

pub(super) async fn list_tokens(call: &Call<'_>) -> Result<Page<JoinTokenRecord>, ApiError> {
    let tokens = call.state.store.join_tokens().await?;
    Ok(Page::all(
        tokens
            .into_iter()
            .map(|t| JoinTokenRecord {
                id: t.id,
                kind: t.kind,
                expires_at_ms: t.expires_at,
                max_uses: t.max_uses,
                uses: t.uses,
                revoked: t.revoked,
                created_by: t.created_by,
                created_at_ms: t.created_at,
            })
            .collect(),
    ))
}

pub(super) async fn revoke_token(call: &Call<'_>) -> Result<(), ApiError> {
    let id = call.param(0);
    if !call.state.store.revoke_join_token(id).await? {
        return Err(ApiError::NotFound);
    }
    call.audit(
        "join_token.revoke",
        "allowed",
        serde_json::json!({"id": id}),
    )
    .await;
    Ok(())
}

/// Names are unique: a second agent may not take a name in use; an agent that lost its key
/// is deleted by an administrator and joins again.
pub(super) async fn join_agent(
    call: &Call<'_>,
    body: AgentJoinRequest,
) -> Result<AgentCertificate, ApiError> {
    let state = call.state;
    let name: Name = body.name.parse().map_err(|_| {
        ApiError::BadRequest(
            "name must be 1-63 of a-z 0-9 - _ . starting with a letter or digit".into(),
        )
    })?;
    let agent = AgentId(new_uuid()?);
    // The CSR is checked before the token is spent.
    let issued = issue(call.state, &body.csr, &Identity::Agent { agent }, None).await?;
    let outcome = state
        .store
        .join_agent(
            &auth::token_hash(&body.token),
            &agent.to_string(),
            name.as_str(),
            now_ms(),
        )
        .await?;
    let detail = serde_json::json!({"name": name.as_str(), "agent_id": agent.to_string()});
    match outcome {
        JoinOutcome::Joined => {
            state
                .store
                .set_agent_serial(&agent.to_string(), &issued.serial)
                .await?;
            call.audit_as(format!("agent:{agent}"), "join.agent", "allowed", detail)
                .await;
            Ok(AgentCertificate {
                agent_id: agent.to_string(),
                name: Some(name.as_str().to_owned()),
                certificate: certificate(state, issued),
            })
        }
        JoinOutcome::InvalidToken => {
            call.audit("join.agent", "denied", detail).await;
            Err(ApiError::Unauthenticated)
        }
        JoinOutcome::NameTaken => {
            call.audit("join.agent", "denied", detail).await;
            Err(ApiError::Conflict("an agent with this name exists"))
        }
    }
}

pub(super) async fn join_bridge(
    call: &Call<'_>,
    body: BridgeJoinRequest,
) -> Result<BridgeCertificate, ApiError> {
    let state = call.state;
    let name = bridge_name(call, body.ordinal)?;
    let identity = Identity::Bridge {
        ordinal: body.ordinal,
    };
    let issued = issue(call.state, &body.csr, &identity, Some(&name)).await?;
    let outcome = state
        .store
        .join_bridge(&auth::token_hash(&body.token), body.ordinal, now_ms())
        .await?;
    let detail = serde_json::json!({"ordinal": body.ordinal});
    if outcome != JoinOutcome::Joined {
        call.audit("join.bridge", "denied", detail).await;
        return Err(ApiError::Unauthenticated);
    }
    state
        .store
        .set_bridge_serial(body.ordinal, &issued.serial)
        .await?;
    call.audit_as(
        format!("bridge:{}", body.ordinal),
        "join.bridge",
        "allowed",
        detail,
    )
    .await;
    Ok(BridgeCertificate {
        name: name.to_string(),
        ordinal: body.ordinal,
        certificate: certificate(state, issued),
    })
}

pub(super) async fn renew_agent(
    call: &Call<'_>,
    body: RenewRequest,
) -> Result<AgentCertificate, ApiError> {
    let Principal::Agent(agent) = call.principal else {
        return Err(ApiError::Forbidden);
    };
    let issued = issue(call.state, &body.csr, &Identity::Agent { agent }, None).await?;
    call.state
        .store
        .set_agent_serial(&agent.to_string(), &issued.serial)
        .await?;
    call.audit(
        "renew.agent",
        "allowed",
        serde_json::json!({"serial": issued.serial}),
    )
    .await;
    Ok(AgentCertificate {
        agent_id: agent.to_string(),
        name: None,
        certificate: certificate(call.state, issued),
    })
}

pub(super) async fn renew_bridge(
    call: &Call<'_>,
    body: RenewRequest,
) -> Result<BridgeCertificate, ApiError> {
    let Principal::Bridge(ordinal) = call.principal else {
        return Err(ApiError::Forbidden);
    };
    let name = bridge_name(call, ordinal)?;
    let issued = issue(
        call.state,
        &body.csr,
        &Identity::Bridge { ordinal },
        Some(&name),
    )
    .await?;
    call.state
        .store
        .set_bridge_serial(ordinal, &issued.serial)
        .await?;
    call.audit(
        "renew.bridge",
        "allowed",
        serde_json::json!({"serial": issued.serial}),
    )
    .await;
    Ok(BridgeCertificate {
        name: name.to_string(),
        ordinal,
        certificate: certificate(call.state, issued),
    })
}

/// `<ordinal>.bridge.<tunnel-domain>`.
fn bridge_name(call: &Call<'_>, ordinal: u32) -> Result<HostName, ApiError> {
    HostName::bridge(ordinal, &call.state.tunnel_domain)
        .map_err(|_| ApiError::BadRequest("ordinal does not make a valid bridge name".into()))
}

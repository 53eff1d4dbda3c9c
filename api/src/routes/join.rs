//! Join tokens, and how agents and bridges get and renew their certificates.

use std::time::Duration;

use bamf_proto::HostName;
use bamf_proto::san::{AgentId, Identity, Name};
use http::StatusCode;
use serde::Deserialize;

use super::{Call, Principal, Reply, issue, new_uuid, no_content, now_ms, store_failed};
use crate::auth;
use crate::ca::Issued;
use crate::error::{ApiError, json_response};
use crate::presence::Presence;
use crate::store::{JoinKind, JoinOutcome, JoinToken};

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

pub(super) async fn create_token<P: Presence>(call: &Call<'_, P>) -> Reply {
    let body: NewJoinToken = call.json()?;
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
        created_by: call.actor(),
        created_at: now,
    };
    call.state
        .store
        .create_join_token(&token, &auth::token_hash(&secret))
        .await
        .map_err(store_failed)?;
    let detail =
        serde_json::json!({"id": token.id, "kind": kind.as_str(), "max_uses": token.max_uses});
    call.audit("join_token.create", "allowed", detail).await;
    Ok(json_response(
        StatusCode::CREATED,
        &serde_json::json!({"id": token.id, "kind": kind.as_str(), "token": secret,
            "expires_at": token.expires_at / 1000, "max_uses": token.max_uses}),
    ))
}

pub(super) async fn list_tokens<P: Presence>(call: &Call<'_, P>) -> Reply {
    let tokens = call.state.store.join_tokens().await.map_err(store_failed)?;
    let items: Vec<_> = tokens
        .iter()
        .map(|t| {
            serde_json::json!({"id": t.id, "kind": t.kind.as_str(), "expires_at": t.expires_at / 1000,
                "max_uses": t.max_uses, "uses": t.uses, "revoked": t.revoked,
                "created_by": t.created_by, "created_at": t.created_at / 1000})
        })
        .collect();
    Ok(json_response(
        StatusCode::OK,
        &serde_json::json!({"items": items}),
    ))
}

pub(super) async fn revoke_token<P: Presence>(call: &Call<'_, P>) -> Reply {
    let id = call.param(0);
    if !call
        .state
        .store
        .revoke_join_token(id)
        .await
        .map_err(store_failed)?
    {
        return Err(ApiError::NotFound);
    }
    call.audit(
        "join_token.revoke",
        "allowed",
        serde_json::json!({"id": id}),
    )
    .await;
    Ok(no_content())
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

pub(super) async fn join_agent<P: Presence>(call: &Call<'_, P>) -> Reply {
    let state = call.state;
    let body: AgentJoin = call.json()?;
    let name: Name = body.name.parse().map_err(|_| {
        ApiError::BadRequest(
            "name must be 1-63 of a-z 0-9 - _ . starting with a letter or digit".into(),
        )
    })?;
    let agent = AgentId(new_uuid()?);
    // The CSR is checked before the token is spent.
    let certificate = issue(call.state, &body.csr, &Identity::Agent { agent }, None).await?;
    let outcome = state
        .store
        .join_agent(
            &auth::token_hash(&body.token),
            &agent.to_string(),
            name.as_str(),
            now_ms(),
        )
        .await
        .map_err(store_failed)?;
    let detail = serde_json::json!({"name": name.as_str(), "agent_id": agent.to_string()});
    match outcome {
        JoinOutcome::Joined => {
            state
                .store
                .set_agent_serial(&agent.to_string(), &certificate.serial)
                .await
                .map_err(store_failed)?;
            call.audit_as(format!("agent:{agent}"), "join.agent", "allowed", detail)
                .await;
            let about = serde_json::json!({"agent_id": agent.to_string(), "name": name.as_str()});
            Ok(certificate_response(
                call,
                about,
                &certificate,
                StatusCode::CREATED,
            ))
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

/// `POST /api/v1/bridges/join`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BridgeJoin {
    token: String,
    ordinal: u32,
    csr: String,
}

pub(super) async fn join_bridge<P: Presence>(call: &Call<'_, P>) -> Reply {
    let state = call.state;
    let body: BridgeJoin = call.json()?;
    let name = bridge_name(call, body.ordinal)?;
    let identity = Identity::Bridge {
        ordinal: body.ordinal,
    };
    let certificate = issue(call.state, &body.csr, &identity, Some(&name)).await?;
    let outcome = state
        .store
        .join_bridge(&auth::token_hash(&body.token), body.ordinal, now_ms())
        .await
        .map_err(store_failed)?;
    let detail = serde_json::json!({"ordinal": body.ordinal});
    if outcome != JoinOutcome::Joined {
        call.audit("join.bridge", "denied", detail).await;
        return Err(ApiError::Unauthenticated);
    }
    state
        .store
        .set_bridge_serial(body.ordinal, &certificate.serial)
        .await
        .map_err(store_failed)?;
    call.audit_as(
        format!("bridge:{}", body.ordinal),
        "join.bridge",
        "allowed",
        detail,
    )
    .await;
    let about = serde_json::json!({"name": name.as_str(), "ordinal": body.ordinal});
    Ok(certificate_response(
        call,
        about,
        &certificate,
        StatusCode::CREATED,
    ))
}

/// `POST /api/v1/agents/renew` and `/bridges/renew`: a new certificate for the same
/// identity, for a new key (the key may also stay the same).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Renewal {
    csr: String,
}

pub(super) async fn renew_agent<P: Presence>(call: &Call<'_, P>) -> Reply {
    let Principal::Agent(agent) = call.principal else {
        return Err(ApiError::Forbidden);
    };
    let body: Renewal = call.json()?;
    let certificate = issue(call.state, &body.csr, &Identity::Agent { agent }, None).await?;
    call.state
        .store
        .set_agent_serial(&agent.to_string(), &certificate.serial)
        .await
        .map_err(store_failed)?;
    call.audit(
        "renew.agent",
        "allowed",
        serde_json::json!({"serial": certificate.serial}),
    )
    .await;
    let about = serde_json::json!({"agent_id": agent.to_string()});
    Ok(certificate_response(
        call,
        about,
        &certificate,
        StatusCode::OK,
    ))
}

pub(super) async fn renew_bridge<P: Presence>(call: &Call<'_, P>) -> Reply {
    let Principal::Bridge(ordinal) = call.principal else {
        return Err(ApiError::Forbidden);
    };
    let body: Renewal = call.json()?;
    let name = bridge_name(call, ordinal)?;
    let certificate = issue(
        call.state,
        &body.csr,
        &Identity::Bridge { ordinal },
        Some(&name),
    )
    .await?;
    call.state
        .store
        .set_bridge_serial(ordinal, &certificate.serial)
        .await
        .map_err(store_failed)?;
    call.audit(
        "renew.bridge",
        "allowed",
        serde_json::json!({"serial": certificate.serial}),
    )
    .await;
    let about = serde_json::json!({"name": name.as_str(), "ordinal": ordinal});
    Ok(certificate_response(
        call,
        about,
        &certificate,
        StatusCode::OK,
    ))
}

/// `<ordinal>.bridge.<tunnel-domain>`.
fn bridge_name<P>(call: &Call<'_, P>, ordinal: u32) -> Result<HostName, ApiError> {
    format!("{ordinal}.bridge.{}", call.state.tunnel_domain)
        .parse()
        .map_err(|_| ApiError::BadRequest("ordinal does not make a valid bridge name".into()))
}

/// The certificate answer: `about` (an object naming the holder) plus the certificate
/// fields and the CA.
fn certificate_response<P>(
    call: &Call<'_, P>,
    mut about: serde_json::Value,
    certificate: &Issued,
    status: StatusCode,
) -> http::Response<crate::error::Body> {
    if let Some(object) = about.as_object_mut() {
        object.insert("certificate".into(), certificate.pem.clone().into());
        object.insert("serial".into(), certificate.serial.clone().into());
        object.insert(
            "certificate_expires_at".into(),
            certificate.not_after.unix_timestamp().into(),
        );
        object.insert("ca".into(), call.state.ca.cert_pem().into());
    }
    json_response(status, &about)
}

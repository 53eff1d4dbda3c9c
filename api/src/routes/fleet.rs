//! Agents, bridges and the resources agents report.

use std::collections::BTreeMap;
use std::time::Duration;

use bamf_proto::san::{AgentId, Name};
use http::StatusCode;
use serde::Deserialize;

use super::{Call, Principal, Reply, no_content, now_ms, store_failed};
use crate::error::{ApiError, json_response};
use crate::presence::Presence;
use crate::rbac;

/// How often agents report (the answer tells them), and how long a report keeps them
/// online (design: every 15 s, TTL 45 s).
const AGENT_HEARTBEAT: Duration = Duration::from_secs(15);
const AGENT_TTL: Duration = Duration::from_secs(45);
/// Most resources one agent may report.
const MAX_RESOURCES: usize = 1000;
/// Most labels per resource.
const MAX_LABELS: usize = 32;

/// `POST /api/v1/agents/heartbeat`: the agent's whole catalog, every time.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Heartbeat {
    resources: Vec<ReportedResource>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReportedResource {
    name: String,
    kind: String,
    #[serde(default)]
    labels: BTreeMap<String, String>,
}

pub(super) async fn agent_heartbeat<P: Presence>(call: &Call<'_, P>) -> Reply {
    let Principal::Agent(agent) = call.principal else {
        return Err(ApiError::Forbidden);
    };
    let body: Heartbeat = call.json()?;
    if body.resources.len() > MAX_RESOURCES {
        return Err(ApiError::BadRequest(format!(
            "at most {MAX_RESOURCES} resources"
        )));
    }
    let mut catalog = Vec::with_capacity(body.resources.len());
    for r in body.resources {
        let name: Name = r
            .name
            .parse()
            .map_err(|_| ApiError::BadRequest("resource names are 1-63 of a-z 0-9 - _ .".into()))?;
        if !rbac::KINDS.contains(&r.kind.as_str()) {
            return Err(ApiError::BadRequest(
                "resource kind must be ssh, postgres or tcp".into(),
            ));
        }
        let labels_ok = r.labels.len() <= MAX_LABELS
            && r.labels
                .iter()
                .all(|(k, v)| (1..=63).contains(&k.len()) && v.len() <= 253);
        if !labels_ok {
            return Err(ApiError::BadRequest(format!(
                "at most {MAX_LABELS} labels per resource; keys 1-63, values up to 253 characters"
            )));
        }
        catalog.push((name.as_str().to_owned(), r.kind, r.labels));
    }
    let taken = call
        .state
        .store
        .replace_resources(&agent.to_string(), &catalog, now_ms())
        .await
        .map_err(store_failed)?;
    call.state
        .presence
        .heartbeat_agent(agent, AGENT_TTL)
        .await
        .map_err(|_| ApiError::Unavailable("presence"))?;
    if !taken.is_empty() {
        tracing::warn!(%agent, ?taken, "resource names reported by another agent were ignored");
    }
    Ok(json_response(
        StatusCode::OK,
        &serde_json::json!({"interval_seconds": AGENT_HEARTBEAT.as_secs(), "ignored": taken}),
    ))
}

/// `GET /api/v1/resources`: what the caller may reach, with whether its agent is online.
pub(super) async fn resources<P: Presence>(call: &Call<'_, P>) -> Reply {
    let (_, roles) = call.principal.user()?;
    let all = call.state.store.resources().await.map_err(store_failed)?;
    let mut items = Vec::new();
    for r in &all {
        let resource = rbac::Resource {
            name: &r.name,
            kind: &r.kind,
            labels: &r.labels,
        };
        let allowed = rbac::decide(
            roles.iter().map(|role| (role.name.as_str(), &role.rules)),
            &resource,
        )
        .allowed();
        if !allowed {
            continue;
        }
        items.push(
            serde_json::json!({"name": r.name, "kind": r.kind, "labels": r.labels,
            "agent": r.agent_name, "online": online(call, &r.agent_id).await?}),
        );
    }
    Ok(json_response(
        StatusCode::OK,
        &serde_json::json!({"items": items}),
    ))
}

async fn online<P: Presence>(call: &Call<'_, P>, agent_id: &str) -> Result<bool, ApiError> {
    let Ok(id) = agent_id.parse::<AgentId>() else {
        return Ok(false);
    };
    call.state
        .presence
        .agent_online(id)
        .await
        .map_err(|_| ApiError::Unavailable("presence"))
}

pub(super) async fn list_agents<P: Presence>(call: &Call<'_, P>) -> Reply {
    let agents = call.state.store.agents().await.map_err(store_failed)?;
    let mut items = Vec::with_capacity(agents.len());
    for a in &agents {
        items.push(
            serde_json::json!({"id": a.id, "name": a.name, "online": online(call, &a.id).await?,
            "joined_at": a.joined_at / 1000, "last_seen_at": a.last_seen_at.map(|t| t / 1000)}),
        );
    }
    Ok(json_response(
        StatusCode::OK,
        &serde_json::json!({"items": items}),
    ))
}

/// Deletes an agent: its resources go, its certificate is revoked, and its name is free for
/// a new join.
pub(super) async fn delete_agent<P: Presence>(call: &Call<'_, P>) -> Reply {
    let id = call.param(0);
    let deleted = call
        .state
        .store
        .delete_agent(id, &call.actor(), now_ms())
        .await
        .map_err(store_failed)?
        .ok_or(ApiError::NotFound)?;
    call.audit(
        "agent.delete",
        "allowed",
        serde_json::json!({"id": deleted.id, "name": deleted.name, "serial": deleted.cert_serial}),
    )
    .await;
    Ok(no_content())
}

pub(super) async fn list_bridges<P: Presence>(call: &Call<'_, P>) -> Reply {
    let bridges = call.state.store.bridges().await.map_err(store_failed)?;
    let live = call
        .state
        .presence
        .live_bridges()
        .await
        .map_err(|_| ApiError::Unavailable("presence"))?;
    let items: Vec<_> = bridges
        .iter()
        .map(|b| {
            let status = live.iter().find(|s| s.ordinal == b.ordinal);
            serde_json::json!({"ordinal": b.ordinal,
                "host": format!("{}.bridge.{}", b.ordinal, call.state.tunnel_domain),
                "online": status.is_some(), "load": status.map(|s| s.load),
                "draining": status.is_some_and(|s| s.draining),
                "joined_at": b.joined_at / 1000, "last_seen_at": b.last_seen_at.map(|t| t / 1000)})
        })
        .collect();
    Ok(json_response(
        StatusCode::OK,
        &serde_json::json!({"items": items}),
    ))
}

//! Agents, bridges and the resources agents report.

use std::time::Duration;

use bamf_proto::HostName;
use bamf_proto::api::{
    AgentHeartbeat, AgentHeartbeatAnswer, AgentRecord, BridgeRecord, Page, Resource,
};
use bamf_proto::san::{AgentId, Name};

use super::Call;
use crate::error::ApiError;
use crate::{now_ms, rbac};

/// How often agents report (the answer tells them), and how long a report keeps them
/// online (design: every 15 s, TTL 45 s).
const AGENT_HEARTBEAT: Duration = Duration::from_secs(15);
const AGENT_TTL: Duration = Duration::from_secs(45);
/// Most resources one agent may report.
const MAX_RESOURCES: usize = 1000;
/// Most labels per resource.
const MAX_LABELS: usize = 32;

pub(super) async fn agent_heartbeat(
    call: &Call<'_>,
    body: AgentHeartbeat,
) -> Result<AgentHeartbeatAnswer, ApiError> {
    let crate::access::Principal::Agent(agent) = call.principal else {
        return Err(ApiError::Forbidden);
    };
    super::check_listed_sessions(&body.sessions)?;
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
        let labels_ok = r.labels.len() <= MAX_LABELS
            && r.labels
                .iter()
                .all(|(k, v)| (1..=63).contains(&k.len()) && v.len() <= 253);
        if !labels_ok {
            return Err(ApiError::BadRequest(format!(
                "at most {MAX_LABELS} labels per resource; keys 1-63, values up to 253 characters"
            )));
        }
        catalog.push((
            name.as_str().to_owned(),
            r.kind.as_str().to_owned(),
            r.labels,
        ));
    }
    let taken = call
        .state
        .store
        .replace_resources(&agent.to_string(), &catalog, now_ms())
        .await?;
    call.state
        .presence
        .heartbeat_agent(agent, AGENT_TTL)
        .await?;
    if !taken.is_empty() {
        tracing::warn!(%agent, ?taken, "resource names reported by another agent were ignored");
    }
    // Sessions that ended while the agent still holds them (a kill reaches the bridge at
    // once; the agent, waiting to attach again, learns it here).
    let end = call.state.store.sessions_to_kill(&body.sessions).await?;
    Ok(AgentHeartbeatAnswer {
        interval_ms: millis(AGENT_HEARTBEAT),
        ignored: taken,
        end,
    })
}

/// A duration as the API's milliseconds.
pub(super) fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// `GET /api/v1/resources`: what the caller may reach, with whether its agent is online.
pub(super) async fn resources(call: &Call<'_>) -> Result<Page<Resource>, ApiError> {
    let (_, roles) = call.principal.user()?;
    let all = call.state.store.resources().await?;
    let mut items = Vec::new();
    for r in all {
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
        let online = online(call, &r.agent_id).await?;
        items.push(Resource {
            kind: r.kind.parse().map_err(|e| {
                tracing::error!(error = %e, resource = r.name, "stored resource kind");
                ApiError::Internal
            })?,
            name: r.name,
            labels: r.labels,
            agent: r.agent_name,
            online,
        });
    }
    Ok(Page::all(items))
}

async fn online(call: &Call<'_>, agent_id: &str) -> Result<bool, ApiError> {
    let Ok(id) = agent_id.parse::<AgentId>() else {
        return Ok(false);
    };
    Ok(call.state.presence.agent_online(id).await?)
}

pub(super) async fn list_agents(call: &Call<'_>) -> Result<Page<AgentRecord>, ApiError> {
    let agents = call.state.store.agents().await?;
    let mut items = Vec::with_capacity(agents.len());
    for a in agents {
        items.push(AgentRecord {
            online: online(call, &a.id).await?,
            id: a.id,
            name: a.name,
            joined_at_ms: a.joined_at,
            last_seen_at_ms: a.last_seen_at,
        });
    }
    Ok(Page::all(items))
}

/// Deletes an agent: its resources go, its certificate is revoked, and its name is free for
/// a new join.
pub(super) async fn delete_agent(call: &Call<'_>) -> Result<(), ApiError> {
    let id = call.param(0);
    let deleted = call
        .state
        .store
        .delete_agent(id, &call.actor(), now_ms())
        .await?
        .ok_or(ApiError::NotFound)?;
    call.audit(
        "agent.delete",
        "allowed",
        serde_json::json!({"id": deleted.id, "name": deleted.name, "serial": deleted.cert_serial}),
    )
    .await;
    Ok(())
}

pub(super) async fn list_bridges(call: &Call<'_>) -> Result<Page<BridgeRecord>, ApiError> {
    let bridges = call.state.store.bridges().await?;
    let live = call.state.presence.live_bridges().await?;
    let items = bridges
        .into_iter()
        .map(|b| {
            let status = live.iter().find(|s| s.ordinal == b.ordinal);
            BridgeRecord {
                ordinal: b.ordinal,
                host: HostName::bridge(b.ordinal, &call.state.tunnel_domain)
                    .map(|h| h.to_string())
                    .unwrap_or_default(),
                online: status.is_some(),
                load: status.map(|s| s.load),
                draining: status.is_some_and(|s| s.draining),
                joined_at_ms: b.joined_at,
                last_seen_at_ms: b.last_seen_at,
            }
        })
        .collect();
    Ok(Page::all(items))
}

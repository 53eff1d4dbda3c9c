//! Sessions: `/connect`, the agents' command stream, the bridges' heartbeats and reports,
//! and listing and killing sessions.

use std::time::Duration;

use bamf_proto::san::{AgentId, Identity, Name, SessionId};
use bamf_proto::tunnel::{DialCommand, SessionEvent};
use http::{Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::{Bytes, Frame};
use serde::Deserialize;

use super::{Call, Principal, Reply, new_uuid, no_content, now_ms, store_failed};
use crate::error::{ApiError, Body, json_response};
use crate::placement::{self, BRIDGE_HEARTBEAT, BRIDGE_TTL, CONTROL_KEEP_ALIVE};
use crate::presence::{BridgeStatus, Presence};
use crate::rbac;
use crate::store::{CertificateRef, Report, Session, SessionFilter};

/// Comment lines on an idle command stream, so proxies and the agent see it alive.
const KEEP_ALIVE: Duration = Duration::from_secs(15);
/// Most live sessions one heartbeat may list.
const MAX_LIVE: usize = 20_000;
/// Most events in one report.
const MAX_EVENTS: usize = 1000;

/// `POST /api/v1/connect`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ConnectRequest {
    resource: String,
    /// PEM CSR for the session certificate; the key stays with the client.
    csr: String,
}

pub(super) async fn connect<P: Presence>(call: &Call<'_, P>) -> Reply {
    let state = call.state;
    let (user, roles) = call.principal.user()?;
    let body: ConnectRequest = call.json()?;
    let detail = |extra: serde_json::Value| {
        let mut d = serde_json::json!({"resource": body.resource});
        if let (Some(d), Some(extra)) = (d.as_object_mut(), extra.as_object()) {
            d.extend(extra.clone());
        }
        d
    };
    // A resource the caller may not reach and one that does not exist are answered alike,
    // after the same work (including the audit write): the answer must not reveal names.
    let resources = state.store.resources().await.map_err(store_failed)?;
    let Some(resource) = resources.iter().find(|r| r.name == body.resource) else {
        call.audit("connect", "not_found", detail(serde_json::json!({})))
            .await;
        return Err(ApiError::Inaccessible);
    };
    let decision = rbac::decide(
        roles.iter().map(|r| (r.name.as_str(), &r.rules)),
        &rbac::Resource {
            name: &resource.name,
            kind: &resource.kind,
            labels: &resource.labels,
        },
    );
    if !decision.allowed() {
        let role = match &decision {
            rbac::Decision::Denied { role } => Some(role.as_str()),
            _ => None,
        };
        call.audit(
            "connect",
            "denied",
            detail(serde_json::json!({"denied_by": role})),
        )
        .await;
        return Err(ApiError::Inaccessible);
    }
    let agent: AgentId = resource.agent_id.parse().map_err(|_| ApiError::Internal)?;
    let presence_err = |_| ApiError::Unavailable("presence");
    // A revoked agent is offline, whatever its last heartbeat said.
    let revoked = match state
        .store
        .agent(&resource.agent_id)
        .await
        .map_err(store_failed)?
        .and_then(|a| a.cert_serial)
    {
        Some(serial) => state
            .store
            .is_revoked(&CertificateRef {
                serial: Some(serial),
                fingerprint: None,
            })
            .await
            .map_err(store_failed)?,
        None => false,
    };
    if revoked
        || !state
            .presence
            .agent_online(agent)
            .await
            .map_err(presence_err)?
    {
        return Err(ApiError::Offline("the resource's agent is offline"));
    }
    let live = state.presence.live_bridges().await.map_err(presence_err)?;
    let bridge = placement::choose(live).ok_or(ApiError::Offline("no bridge is available"))?;
    let session = SessionId(new_uuid()?);
    let identity = Identity::Client {
        session,
        user: user.parse::<Name>().map_err(|_| ApiError::Internal)?,
        resource: resource
            .name
            .parse::<Name>()
            .map_err(|_| ApiError::Internal)?,
        agent,
        bridge: bridge.ordinal,
    };
    let now = now_ms();
    state
        .store
        .create_session(&Session {
            id: session.to_string(),
            user: user.to_owned(),
            resource: resource.name.clone(),
            agent_id: resource.agent_id.clone(),
            bridge: bridge.ordinal,
            state: "pending".into(),
            created_at: now,
            started_at: None,
            ended_at: None,
            bytes_up: 0,
            bytes_down: 0,
            end_reason: None,
        })
        .await
        .map_err(store_failed)?;
    // After the row: a certificate revoked at once finds its session to end.
    let certificate = super::issue(state, &body.csr, &identity, None).await?;
    let bridge_host = format!("{}.bridge.{}", bridge.ordinal, state.tunnel_domain);
    let command = DialCommand {
        session,
        agent,
        resource: resource.name.clone(),
        bridge_host: bridge_host.clone(),
        bridge_port: state.tunnel_port,
    };
    let text = serde_json::to_string(&command).map_err(|_| ApiError::Internal)?;
    let delivered = state
        .presence
        .publish_command(agent, &text)
        .await
        .map_err(presence_err)?;
    if delivered == 0 {
        let _ = state
            .store
            .end_session(&session.to_string(), "agent_unreachable", now_ms())
            .await;
        return Err(ApiError::Offline(
            "the resource's agent is not listening for commands",
        ));
    }
    call.audit(
        "connect",
        "allowed",
        detail(serde_json::json!({"session": session.to_string(), "bridge": bridge.ordinal,
            "allowed_by": match &decision { rbac::Decision::Allowed { role } => Some(role.as_str()), _ => None }})),
    )
    .await;
    Ok(json_response(
        StatusCode::CREATED,
        &serde_json::json!({"session_id": session.to_string(), "resource": resource.name,
            "kind": resource.kind, "bridge_host": bridge_host, "bridge_port": state.tunnel_port,
            "certificate": certificate.pem,
            "certificate_expires_at": certificate.not_after.unix_timestamp(),
            "ca": state.ca.cert_pem()}),
    ))
}

/// `GET /api/v1/agent/commands`: server-sent events, one `dial` event per command, comment
/// lines as keep-alives. Ends at shutdown (the agent reconnects to another replica).
pub(super) async fn agent_commands<P: Presence>(call: &Call<'_, P>) -> Reply {
    let Principal::Agent(agent) = call.principal else {
        return Err(ApiError::Forbidden);
    };
    let mut commands = call
        .state
        .presence
        .subscribe_commands(agent)
        .await
        .map_err(|_| ApiError::Unavailable("presence"))?;
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(16);
    let shutdown = call.state.shutdown.clone();
    tokio::spawn(async move {
        if tx
            .send(Bytes::from_static(b": connected\n\n"))
            .await
            .is_err()
        {
            return;
        }
        let mut keep_alive = tokio::time::interval(KEEP_ALIVE);
        keep_alive.tick().await;
        loop {
            let frame = tokio::select! {
                () = shutdown.cancelled() => break,
                () = tx.closed() => break,
                command = commands.recv() => match command {
                    Some(c) => Bytes::from(format!("event: dial\ndata: {c}\n\n")),
                    None => break,
                },
                _ = keep_alive.tick() => Bytes::from_static(b": keep-alive\n\n"),
            };
            if tx.send(frame).await.is_err() {
                break;
            }
        }
    });
    call.audit("agent.commands", "allowed", serde_json::json!({}))
        .await;
    Ok(event_stream(rx))
}

/// `GET /api/v1/bridges/control`: a server-sent event stream of keep-alive comments, held
/// open by each bridge for as long as it lives. When it ends without the API shutting down
/// (the bridge died, or its connection did), the bridge is forgotten at once, so no new
/// session is placed on it before its next heartbeat (see [`placement`]).
pub(super) async fn bridge_control<P: Presence>(call: &Call<'_, P>) -> Reply {
    let Principal::Bridge(ordinal) = call.principal else {
        return Err(ApiError::Forbidden);
    };
    // A reconnecting stream counts as a sign of life.
    call.state
        .store
        .bridge_seen(ordinal, now_ms())
        .await
        .map_err(store_failed)?;
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(4);
    let shutdown = call.state.shutdown.clone();
    let lost = call.state.lost_bridges.clone();
    tokio::spawn(async move {
        let mut keep_alive = tokio::time::interval(CONTROL_KEEP_ALIVE);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tx.closed() => break,
                _ = keep_alive.tick() => {
                    if tx.send(Bytes::from_static(b": alive\n\n")).await.is_err() {
                        break;
                    }
                }
            }
        }
        // The body was dropped: the connection failed or closed.
        if !shutdown.is_cancelled() {
            lost.push(ordinal, now_ms());
        }
    });
    call.audit("bridge.control", "allowed", serde_json::json!({}))
        .await;
    Ok(event_stream(rx))
}

/// A `text/event-stream` response whose body is what `rx` yields, until it ends.
fn event_stream(mut rx: tokio::sync::mpsc::Receiver<Bytes>) -> Response<Body> {
    let stream = futures_util::stream::poll_fn(move |cx| {
        rx.poll_recv(cx)
            .map(|b| b.map(|b| Ok::<_, std::convert::Infallible>(Frame::data(b))))
    });
    let body: Body = http_body_util::StreamBody::new(stream).boxed_unsync();
    let mut response = Response::new(body);
    let headers = response.headers_mut();
    headers.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(
        http::header::CACHE_CONTROL,
        http::HeaderValue::from_static("no-store"),
    );
    response
}

/// `POST /api/v1/bridges/heartbeat`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BridgeHeartbeat {
    /// Open tunnels.
    load: u32,
    /// Alive but taking no new sessions.
    draining: bool,
    /// Ids of the sessions whose tunnels are open on this bridge.
    #[serde(default)]
    sessions: Vec<String>,
    /// When this bridge process started (Unix ms): sessions older than it that it does not
    /// list were lost with its previous process.
    #[serde(default)]
    started_at_ms: Option<i64>,
}

pub(super) async fn bridge_heartbeat<P: Presence>(call: &Call<'_, P>) -> Reply {
    let Principal::Bridge(ordinal) = call.principal else {
        return Err(ApiError::Forbidden);
    };
    let body: BridgeHeartbeat = call.json()?;
    if body.sessions.len() > MAX_LIVE {
        return Err(ApiError::BadRequest(format!("at most {MAX_LIVE} sessions")));
    }
    let status = BridgeStatus {
        ordinal,
        load: body.load,
        draining: body.draining,
    };
    // The store first: it is what says the bridge lives, whatever happens to presence.
    call.state
        .store
        .bridge_seen(ordinal, now_ms())
        .await
        .map_err(store_failed)?;
    call.state
        .presence
        .heartbeat_bridge(status, BRIDGE_TTL)
        .await
        .map_err(|_| ApiError::Unavailable("presence"))?;
    if let Some(started_at) = body.started_at_ms {
        let lost = call
            .state
            .store
            .end_sessions_before_restart(ordinal, started_at, &body.sessions, now_ms())
            .await
            .map_err(store_failed)?;
        if !lost.is_empty() {
            tracing::warn!(bridge = ordinal, sessions = ?lost, "sessions ended: their bridge restarted");
        }
    }
    let mut kill = call
        .state
        .store
        .sessions_to_kill(&body.sessions)
        .await
        .map_err(store_failed)?;
    // And those ended before they paired (killed, revoked, their user or agent deleted)
    // while their certificate may still be used: the bridge refuses to pair them.
    let window = call.state.lifetimes.session + BRIDGE_TTL;
    let since = now_ms().saturating_sub(i64::try_from(window.as_millis()).unwrap_or(i64::MAX));
    kill.extend(
        call.state
            .store
            .ended_unpaired(ordinal, since)
            .await
            .map_err(store_failed)?,
    );
    Ok(json_response(
        StatusCode::OK,
        &serde_json::json!({"interval_seconds": BRIDGE_HEARTBEAT.as_secs(), "kill": kill}),
    ))
}

/// `POST /api/v1/bridges/reports`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Reports {
    events: Vec<SessionEvent>,
}

pub(super) async fn bridge_reports<P: Presence>(call: &Call<'_, P>) -> Reply {
    let Principal::Bridge(ordinal) = call.principal else {
        return Err(ApiError::Forbidden);
    };
    let body: Reports = call.json()?;
    if body.events.len() > MAX_EVENTS {
        return Err(ApiError::BadRequest(format!("at most {MAX_EVENTS} events")));
    }
    let mut applied = 0;
    for event in body.events {
        let (session, report, kind) = match event {
            SessionEvent::Start { session, at_ms } => {
                (session, Report::Started { at: at_ms }, "session.start")
            }
            SessionEvent::End {
                session,
                started_at_ms,
                at_ms,
                bytes_up,
                bytes_down,
                reason,
            } => {
                if reason.is_empty() || reason.len() > 64 {
                    return Err(ApiError::BadRequest(
                        "reason must be 1-64 characters".into(),
                    ));
                }
                let report = Report::Ended {
                    started_at: started_at_ms,
                    at: at_ms,
                    bytes_up: i64::try_from(bytes_up).unwrap_or(i64::MAX),
                    bytes_down: i64::try_from(bytes_down).unwrap_or(i64::MAX),
                    reason,
                };
                (session, report, "session.end")
            }
        };
        let id = session.to_string();
        if call
            .state
            .store
            .apply_report(&id, ordinal, &report)
            .await
            .map_err(store_failed)?
        {
            applied += 1;
            let detail = match &report {
                Report::Started { .. } => serde_json::json!({"session": id}),
                Report::Ended {
                    bytes_up,
                    bytes_down,
                    reason,
                    ..
                } => {
                    serde_json::json!({"session": id, "bytes_up": bytes_up, "bytes_down": bytes_down, "reason": reason})
                }
            };
            call.audit(kind, "allowed", detail).await;
        } else {
            tracing::warn!(session = %id, bridge = ordinal, "report for an unknown session or another bridge's: ignored");
        }
    }
    Ok(json_response(
        StatusCode::OK,
        &serde_json::json!({"applied": applied}),
    ))
}

/// `GET /api/v1/sessions?state=&user=&before=&limit=` (`before`: Unix ms of `created_at`).
pub(super) async fn list_sessions<P: Presence>(call: &Call<'_, P>) -> Reply {
    let mut filter = SessionFilter::default();
    let mut before = None;
    let mut limit = 100;
    for (key, value) in form_urlencoded::parse(call.query.unwrap_or_default().as_bytes()) {
        match key.as_ref() {
            "state" => filter.state = Some(value.into_owned()),
            "user" => filter.user = Some(value.into_owned()),
            "before" => {
                before =
                    Some(value.parse::<i64>().map_err(|_| {
                        ApiError::BadRequest("before is a created_at_ms value".into())
                    })?);
            }
            "limit" => {
                limit = value
                    .parse::<u32>()
                    .ok()
                    .filter(|l| (1..=500).contains(l))
                    .ok_or_else(|| ApiError::BadRequest("limit must be 1..=500".into()))?;
            }
            other => {
                return Err(ApiError::BadRequest(format!(
                    "unknown query parameter {other:?} (state, user, before, limit)"
                )));
            }
        }
    }
    let sessions = call
        .state
        .store
        .sessions(&filter, before, limit)
        .await
        .map_err(store_failed)?;
    let items: Vec<_> = sessions
        .iter()
        .map(|s| {
            serde_json::json!({"id": s.id, "user": s.user, "resource": s.resource, "agent_id": s.agent_id,
                "bridge": s.bridge, "state": s.state, "created_at_ms": s.created_at,
                "started_at_ms": s.started_at, "ended_at_ms": s.ended_at, "bytes_up": s.bytes_up,
                "bytes_down": s.bytes_down, "end_reason": s.end_reason})
        })
        .collect();
    Ok(json_response(
        StatusCode::OK,
        &serde_json::json!({"items": items}),
    ))
}

/// `DELETE /api/v1/sessions/{id}`: ends the session; its bridge closes the tunnel at its
/// next heartbeat.
pub(super) async fn delete_session<P: Presence>(call: &Call<'_, P>) -> Reply {
    let id = call.param(0);
    let session = call
        .state
        .store
        .session(id)
        .await
        .map_err(store_failed)?
        .ok_or(ApiError::NotFound)?;
    let ended = call
        .state
        .store
        .end_session(&session.id, "killed", now_ms())
        .await
        .map_err(store_failed)?;
    call.audit(
        "session.kill",
        "allowed",
        serde_json::json!({"session": session.id, "was": session.state, "ended": ended}),
    )
    .await;
    Ok(no_content())
}

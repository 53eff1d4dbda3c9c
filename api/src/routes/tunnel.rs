//! Sessions: `/connect`, the agents' command stream, the bridges' heartbeats and reports,
//! and listing and killing sessions.

use std::time::Duration;

use bamf_proto::HostName;
use bamf_proto::api::{
    BridgeHeartbeat, BridgeHeartbeatAnswer, ConnectRequest, DEFAULT_PAGE, Page, Reports,
    ReportsAnswer, ResumeRequest, SessionEnds, SessionGrant, SessionQuery, SessionRecord,
    SessionState,
};
use bamf_proto::san::{AgentId, Identity, Name, SessionId};
use bamf_proto::tunnel::{DialCommand, SessionEvent};
use http::Response;
use http_body_util::BodyExt;
use hyper::body::{Bytes, Frame};

use super::Call;
use super::fleet::millis;
use super::{Reply, certificate, new_uuid};
use crate::access::Principal;
use crate::error::{ApiError, Body};
use crate::now_ms;
use crate::placement::{self, BRIDGE_HEARTBEAT, BRIDGE_TTL, CONTROL_KEEP_ALIVE};
use crate::presence::BridgeStatus;
use crate::rbac;
use crate::store::{AgentEnd, Report, Session, SessionFilter};

/// Comment lines on an idle command stream, so proxies and the agent see it alive.
const KEEP_ALIVE: Duration = Duration::from_secs(15);
/// Most events in one report.
const MAX_EVENTS: usize = 1000;

pub(super) async fn connect(
    call: &Call<'_>,
    body: ConnectRequest,
) -> Result<SessionGrant, ApiError> {
    let state = call.state;
    let (user, roles) = call.principal.user()?;
    let detail = |extra: serde_json::Value| {
        let mut d = serde_json::json!({"resource": body.resource});
        if let (Some(d), Some(extra)) = (d.as_object_mut(), extra.as_object()) {
            d.extend(extra.clone());
        }
        d
    };
    // A resource the caller may not reach and one that does not exist are answered alike,
    // after the same work (including the audit write): the answer must not reveal names.
    let Some(resource) = state.store.resource(&body.resource).await? else {
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
    // A revoked agent is offline, whatever its last heartbeat said.
    let revoked = state
        .store
        .agent_revoked(&resource.agent_id)
        .await?
        .unwrap_or(false);
    if revoked || !state.presence.agent_online(agent).await? {
        return Err(ApiError::Offline("the resource's agent is offline"));
    }
    let live = state.presence.live_bridges().await?;
    let bridge = placement::choose(live).ok_or(ApiError::Offline("no bridge is available"))?;
    let client_key = crate::ca::csr_key_id(&body.csr)
        .map_err(|_| ApiError::BadRequest("csr is not a valid PEM CSR".into()))?;
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
    // Signed before anything is written: the session row, its certificate and the audit
    // event that allowed it go in one transaction (one commit on the setup path), before
    // the certificate is handed out (a certificate revoked at once finds its session).
    let (issued, record) = super::sign(
        state,
        &body.csr,
        &identity,
        None,
        state.lifetimes.for_identity(&identity),
    )?;
    let allowed = call.audit_event(
        "connect",
        "allowed",
        detail(serde_json::json!({"session": session.to_string(), "bridge": bridge.ordinal,
            "allowed_by": match &decision { rbac::Decision::Allowed { role } => Some(role.as_str()), _ => None }})),
    );
    let now = now_ms();
    state
        .store
        .create_session(
            &Session {
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
                client_key: Some(client_key),
                bridges: vec![bridge.ordinal],
                reattaches: 0,
                detached_at: None,
            },
            &record,
            &allowed,
        )
        .await?;
    let bridge_host =
        tell_agent(state, session, agent, &resource.name, bridge.ordinal, false).await?;
    if bridge_host.is_none() {
        // Allowed and recorded, but the agent's command stream went away meanwhile: the
        // session ends at once, with the reason in its row.
        let _ = state
            .store
            .end_session(&session.to_string(), "agent_unreachable", now_ms())
            .await;
        return Err(ApiError::Offline(
            "the resource's agent is not listening for commands",
        ));
    }
    Ok(SessionGrant {
        session_id: session.to_string(),
        kind: resource.kind.parse().map_err(|_| ApiError::Internal)?,
        resource: resource.name.clone(),
        bridge_host: bridge_host.unwrap_or_default(),
        bridge_port: state.tunnel_port,
        certificate: certificate(state, issued),
    })
}

/// Sends `agent` the dial command for `session` through bridge `ordinal`; the bridge's host
/// name, or `None` when no replica holds the agent's command stream.
async fn tell_agent(
    state: &crate::context::AppState,
    session: SessionId,
    agent: AgentId,
    resource: &str,
    ordinal: u32,
    reattach: bool,
) -> Result<Option<String>, ApiError> {
    let bridge_host = HostName::bridge(ordinal, &state.tunnel_domain)
        .map_err(|_| ApiError::Internal)?
        .to_string();
    let command = DialCommand {
        session,
        agent,
        resource: resource.to_owned(),
        bridge_host: bridge_host.clone(),
        bridge_port: state.tunnel_port,
        reattach,
    };
    let text = serde_json::to_string(&command).map_err(|_| ApiError::Internal)?;
    let delivered = state.presence.publish_command(agent, &text).await?;
    Ok((delivered > 0).then_some(bridge_host))
}

/// `POST /api/v1/sessions/{id}/resume`: the caller's session lost its path; it goes on
/// through a live bridge (another than `broken_bridge` when there is one) with a certificate
/// for the session's own key, and the agent is told to attach there too. Refused: another
/// user's or an unknown session (404, alike), an ended one (410: killed, revoked, timed
/// out), a CSR for another key (403: whoever asks must hold the session's key), a resource
/// the caller may no longer reach (404), an offline agent or no bridge (503, worth
/// retrying). Every attempt is audited.
pub(super) async fn resume_session(
    call: &Call<'_>,
    body: ResumeRequest,
) -> Result<SessionGrant, ApiError> {
    let state = call.state;
    let (user, roles) = call.principal.user()?;
    let id = call.param(0).to_owned();
    let refuse = |why: &'static str, error: ApiError| async move {
        call.audit(
            "session.resume",
            "refused",
            serde_json::json!({"session": id, "reason": why}),
        )
        .await;
        Err(error)
    };
    let Some(session) = state
        .store
        .session(call.param(0))
        .await?
        .filter(|s| s.user == user)
    else {
        return refuse("unknown", ApiError::NotFound).await;
    };
    if session.state == "ended" {
        return refuse("ended", ApiError::Gone("the session has ended")).await;
    }
    let key = crate::ca::csr_key_id(&body.csr)
        .map_err(|_| ApiError::BadRequest("csr is not a valid PEM CSR".into()))?;
    if session.client_key.as_deref() != Some(key.as_str()) {
        return refuse("not_the_session_key", ApiError::Forbidden).await;
    }
    // Roles may have changed since the session began.
    let allowed = state.store.resource(&session.resource).await?.filter(|r| {
        rbac::decide(
            roles.iter().map(|r| (r.name.as_str(), &r.rules)),
            &rbac::Resource {
                name: &r.name,
                kind: &r.kind,
                labels: &r.labels,
            },
        )
        .allowed()
    });
    let Some(resource) = allowed else {
        return refuse("denied", ApiError::Inaccessible).await;
    };
    let agent: AgentId = session.agent_id.parse().map_err(|_| ApiError::Internal)?;
    if !state.presence.agent_online(agent).await? {
        return Err(ApiError::Offline("the resource's agent is offline"));
    }
    let live = state.presence.live_bridges().await?;
    let others: Vec<_> = live
        .iter()
        .filter(|b| Some(b.ordinal) != body.broken_bridge)
        .cloned()
        .collect();
    let bridge = placement::choose(if others.is_empty() { live } else { others })
        .ok_or(ApiError::Offline("no bridge is available"))?;
    if !state
        .store
        .reattach_session(&session.id, bridge.ordinal)
        .await?
    {
        return refuse("ended", ApiError::Gone("the session has ended")).await;
    }
    let session_id: SessionId = session.id.parse().map_err(|_| ApiError::Internal)?;
    let identity = Identity::Client {
        session: session_id,
        user: user.parse::<Name>().map_err(|_| ApiError::Internal)?,
        resource: session
            .resource
            .parse::<Name>()
            .map_err(|_| ApiError::Internal)?,
        agent,
        bridge: bridge.ordinal,
    };
    let issued = super::issue(state, &body.csr, &identity, None).await?;
    let Some(bridge_host) = tell_agent(
        state,
        session_id,
        agent,
        &session.resource,
        bridge.ordinal,
        true,
    )
    .await?
    else {
        return Err(ApiError::Offline(
            "the resource's agent is not listening for commands",
        ));
    };
    call.audit(
        "session.resume",
        "allowed",
        serde_json::json!({"session": session.id, "bridge": bridge.ordinal,
            "from": session.bridge, "reattaches": session.reattaches + 1}),
    )
    .await;
    Ok(SessionGrant {
        session_id: session.id,
        kind: resource.kind.parse().map_err(|_| ApiError::Internal)?,
        resource: resource.name.clone(),
        bridge_host,
        bridge_port: state.tunnel_port,
        certificate: certificate(state, issued),
    })
}

/// `POST /api/v1/agent/sessions/end`: the agent says some of its sessions are over.
pub(super) async fn sessions_ended(
    call: &Call<'_>,
    body: SessionEnds,
) -> Result<ReportsAnswer, ApiError> {
    let Principal::Agent(agent) = call.principal else {
        return Err(ApiError::Forbidden);
    };
    if body.ends.len() > MAX_EVENTS {
        return Err(ApiError::BadRequest(format!("at most {MAX_EVENTS} ends")));
    }
    let mut ends = Vec::with_capacity(body.ends.len());
    for end in body.ends {
        if end.reason.is_empty() || end.reason.len() > 64 {
            return Err(ApiError::BadRequest(
                "reason must be 1-64 characters".into(),
            ));
        }
        let session = end.session.to_string();
        let event = call.audit_event(
            "session.end",
            "allowed",
            serde_json::json!({"session": session, "reason": end.reason, "bytes_up": end.bytes_up,
                "bytes_down": end.bytes_down, "reattaches": end.reattaches, "paused_ms": end.paused_ms}),
        );
        let end = AgentEnd {
            session,
            reason: end.reason,
            bytes_up: i64::try_from(end.bytes_up).unwrap_or(i64::MAX),
            bytes_down: i64::try_from(end.bytes_down).unwrap_or(i64::MAX),
        };
        ends.push((end, event));
    }
    // One transaction for all of them.
    let done = call
        .state
        .store
        .end_sessions_by_agent(&agent.to_string(), &ends, now_ms())
        .await?;
    let sessions = ends.iter().map(|(end, _)| end.session.as_str());
    Ok(applied(sessions, &done, &format!("agent:{agent}")))
}

/// The answer to a batch of reports from `from` about `sessions`, of which `done` applied;
/// each that did not (an unknown session, or another reporter's) is logged.
fn applied<'a>(
    sessions: impl Iterator<Item = &'a str>,
    done: &[bool],
    from: &str,
) -> ReportsAnswer {
    let mut applied = 0;
    for (session, &done) in sessions.zip(done) {
        if done {
            applied += 1;
        } else {
            tracing::warn!(
                session,
                from,
                "report for an unknown session or another's: ignored"
            );
        }
    }
    ReportsAnswer { applied }
}

/// `GET /api/v1/agent/commands`: server-sent events, one `dial` event per command, comment
/// lines as keep-alives. Ends at shutdown (the agent reconnects to another replica).
pub(super) async fn agent_commands(call: &Call<'_>) -> Reply {
    let Principal::Agent(agent) = call.principal else {
        return Err(ApiError::Forbidden);
    };
    let mut commands = call.state.presence.subscribe_commands(agent).await?;
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
pub(super) async fn bridge_control(call: &Call<'_>) -> Reply {
    let Principal::Bridge(ordinal) = call.principal else {
        return Err(ApiError::Forbidden);
    };
    // A reconnecting stream counts as a sign of life.
    call.state.store.bridge_seen(ordinal, now_ms()).await?;
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

pub(super) async fn bridge_heartbeat(
    call: &Call<'_>,
    body: BridgeHeartbeat,
) -> Result<BridgeHeartbeatAnswer, ApiError> {
    let Principal::Bridge(ordinal) = call.principal else {
        return Err(ApiError::Forbidden);
    };
    super::check_listed_sessions(&body.sessions)?;
    let status = BridgeStatus {
        ordinal,
        load: body.load,
        draining: body.draining,
    };
    // The store first: it is what says the bridge lives, whatever happens to presence.
    call.state.store.bridge_seen(ordinal, now_ms()).await?;
    call.state
        .presence
        .heartbeat_bridge(status, BRIDGE_TTL)
        .await?;
    if let Some(started_at) = body.started_at_ms {
        let lost = call
            .state
            .store
            .end_sessions_before_restart(ordinal, started_at, &body.sessions, now_ms())
            .await?;
        if !lost.is_empty() {
            tracing::warn!(bridge = ordinal, sessions = ?lost, "sessions lost their bridge (it restarted): detached");
        }
    }
    let mut kill = call.state.store.sessions_to_kill(&body.sessions).await?;
    // And those ended before they paired (killed, revoked, their user or agent deleted)
    // while their certificate may still be used: the bridge refuses to pair them.
    let window = call.state.lifetimes.session + BRIDGE_TTL;
    let since = now_ms().saturating_sub(i64::try_from(window.as_millis()).unwrap_or(i64::MAX));
    kill.extend(call.state.store.ended_unpaired(ordinal, since).await?);
    Ok(BridgeHeartbeatAnswer {
        interval_ms: millis(BRIDGE_HEARTBEAT),
        kill,
    })
}

pub(super) async fn bridge_reports(
    call: &Call<'_>,
    body: Reports,
) -> Result<ReportsAnswer, ApiError> {
    let Principal::Bridge(ordinal) = call.principal else {
        return Err(ApiError::Forbidden);
    };
    if body.events.len() > MAX_EVENTS {
        return Err(ApiError::BadRequest(format!("at most {MAX_EVENTS} events")));
    }
    let mut reports = Vec::with_capacity(body.events.len());
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
        let event = call.audit_event(kind, "allowed", detail);
        reports.push((id, report, event));
    }
    // One transaction for the whole report.
    let done = call.state.store.apply_reports(ordinal, &reports).await?;
    let sessions = reports.iter().map(|(id, _, _)| id.as_str());
    Ok(applied(sessions, &done, &format!("bridge:{ordinal}")))
}

/// Newest first; the cursor is the last session's `created_at_ms`.
pub(super) async fn list_sessions(call: &Call<'_>) -> Result<Page<SessionRecord>, ApiError> {
    let query = SessionQuery::parse(call.query.unwrap_or_default())
        .map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let before = super::cursor(query.cursor.as_deref())?;
    let limit = query.limit.unwrap_or(DEFAULT_PAGE);
    let filter = SessionFilter {
        state: query.state.map(|s| s.as_str().to_owned()),
        user: query.user,
    };
    let sessions = call.state.store.sessions(&filter, before, limit).await?;
    super::page(
        sessions,
        limit,
        |s| s.created_at,
        |s| {
            Ok(SessionRecord {
                state: SessionState::parse(&s.state).ok_or(ApiError::Internal)?,
                id: s.id,
                user: s.user,
                resource: s.resource,
                agent_id: s.agent_id,
                bridge: s.bridge,
                created_at_ms: s.created_at,
                started_at_ms: s.started_at,
                ended_at_ms: s.ended_at,
                bytes_up: s.bytes_up,
                bytes_down: s.bytes_down,
                end_reason: s.end_reason,
                reattaches: s.reattaches,
                bridges: s.bridges,
                detached_at_ms: s.detached_at,
            })
        },
    )
}

/// `DELETE /api/v1/sessions/{id}`: ends the session; its bridge closes the tunnel at its
/// next heartbeat.
pub(super) async fn delete_session(call: &Call<'_>) -> Result<(), ApiError> {
    let id = call.param(0);
    let session = call
        .state
        .store
        .session(id)
        .await?
        .ok_or(ApiError::NotFound)?;
    let ended = call
        .state
        .store
        .end_session(&session.id, "killed", now_ms())
        .await?;
    call.audit(
        "session.kill",
        "allowed",
        serde_json::json!({"session": session.id, "was": session.state, "ended": ended}),
    )
    .await;
    Ok(())
}

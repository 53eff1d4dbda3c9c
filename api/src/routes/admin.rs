//! Administration: users, roles, bindings, revocations and the audit log.

use bamf_proto::api::{
    AuditEvent, AuditQuery, DEFAULT_PAGE, Page, PasswordRequest, RevocationRecord,
    RevocationRequest, RoleRecord, RoleRequest, UserRecord, UserRequest,
};
use bamf_proto::san::Name;
use http::StatusCode;

use super::Call;
use crate::auth;
use crate::error::ApiError;
use crate::now_ms;
use crate::rbac::{self, Rules};
use crate::store::{AuditFilter, CertificateRef, RoleChange};

/// Shortest password an administrator may set.
const MIN_PASSWORD: usize = 12;
/// Longest password (hashing cost grows with it).
const MAX_PASSWORD: usize = 1024;

fn name(text: &str, what: &str) -> Result<Name, ApiError> {
    text.parse().map_err(|_| {
        ApiError::BadRequest(format!(
            "{what} must be 1-63 of a-z 0-9 - _ . starting with a letter or digit"
        ))
    })
}

async fn hash(password: String) -> Result<String, ApiError> {
    if !(MIN_PASSWORD..=MAX_PASSWORD).contains(&password.chars().count()) {
        return Err(ApiError::BadRequest(format!(
            "password must be {MIN_PASSWORD}-{MAX_PASSWORD} characters"
        )));
    }
    tokio::task::spawn_blocking(move || auth::hash_password(&password))
        .await
        .map_err(|_| ApiError::Internal)?
        .map_err(|_| ApiError::Internal)
}

/// The caller's own name (admin routes are user routes).
fn caller<'a>(call: &'a Call<'_>) -> Result<&'a str, ApiError> {
    call.principal.user().map(|(name, _)| name)
}

pub(super) async fn list_users(call: &Call<'_>) -> Result<Page<UserRecord>, ApiError> {
    let users = call.state.store.users().await?;
    Ok(Page::all(
        users
            .into_iter()
            .map(|u| UserRecord {
                name: u.name,
                roles: u.roles,
                created_at_ms: u.created_at,
            })
            .collect(),
    ))
}

pub(super) async fn create_user(
    call: &Call<'_>,
    body: UserRequest,
) -> Result<UserRecord, ApiError> {
    let user = name(&body.name, "name")?;
    let store = &call.state.store;
    for role in &body.roles {
        if !store.role_exists(role).await? {
            return Err(ApiError::BadRequest(format!("no role named {role:?}")));
        }
    }
    let hashed = hash(body.password).await?;
    let now = now_ms();
    if !store.create_user(user.as_str(), &hashed, now).await? {
        return Err(ApiError::Conflict("a user with this name exists"));
    }
    for role in &body.roles {
        store.bind_role(user.as_str(), role).await?;
    }
    call.audit(
        "user.create",
        "allowed",
        serde_json::json!({"user": user.as_str(), "roles": body.roles}),
    )
    .await;
    Ok(UserRecord {
        name: user.as_str().to_owned(),
        roles: body.roles,
        created_at_ms: now,
    })
}

pub(super) async fn delete_user(call: &Call<'_>) -> Result<(), ApiError> {
    let user = call.param(0);
    if user == caller(call)? {
        return Err(ApiError::Conflict(
            "administrators cannot delete themselves",
        ));
    }
    let ended = call
        .state
        .store
        .delete_user(user, &call.actor(), now_ms())
        .await?
        .ok_or(ApiError::NotFound)?;
    call.audit(
        "user.delete",
        "allowed",
        serde_json::json!({"user": user, "ended_sessions": ended}),
    )
    .await;
    Ok(())
}

pub(super) async fn set_password(call: &Call<'_>, body: PasswordRequest) -> Result<(), ApiError> {
    let user = call.param(0);
    let hashed = hash(body.password).await?;
    if !call.state.store.set_password_hash(user, &hashed).await? {
        return Err(ApiError::NotFound);
    }
    call.audit(
        "user.password",
        "allowed",
        serde_json::json!({"user": user}),
    )
    .await;
    Ok(())
}

pub(super) async fn bind_role(call: &Call<'_>) -> Result<(), ApiError> {
    let (user, role) = (call.param(0), call.param(1));
    let store = &call.state.store;
    if !store.user_enabled(user).await? || !store.role_exists(role).await? {
        return Err(ApiError::NotFound);
    }
    store.bind_role(user, role).await?;
    call.audit(
        "role.bind",
        "allowed",
        serde_json::json!({"user": user, "role": role}),
    )
    .await;
    Ok(())
}

pub(super) async fn unbind_role(call: &Call<'_>) -> Result<(), ApiError> {
    let (user, role) = (call.param(0), call.param(1));
    if role == rbac::EVERYONE {
        return Err(ApiError::Conflict("every user holds the everyone role"));
    }
    if role == rbac::ADMIN && user == caller(call)? {
        return Err(ApiError::Conflict(
            "administrators cannot remove their own admin role",
        ));
    }
    if !call.state.store.unbind_role(user, role).await? {
        return Err(ApiError::NotFound);
    }
    call.audit(
        "role.unbind",
        "allowed",
        serde_json::json!({"user": user, "role": role}),
    )
    .await;
    Ok(())
}

fn role_record(name: String, rules: Rules, builtin: bool) -> RoleRecord {
    RoleRecord {
        name,
        allow: rules.allow,
        deny: rules.deny,
        builtin,
    }
}

pub(super) async fn list_roles(call: &Call<'_>) -> Result<Page<RoleRecord>, ApiError> {
    let roles = call.state.store.roles().await?;
    Ok(Page::all(
        roles
            .into_iter()
            .map(|r| role_record(r.name, r.rules, r.builtin))
            .collect(),
    ))
}

/// The request's rules, checked.
fn rules(body: RoleRequest) -> Result<Rules, ApiError> {
    let rules = Rules {
        allow: body.allow,
        deny: body.deny,
    };
    rules
        .check()
        .map_err(|e| ApiError::BadRequest(e.to_string()))?;
    Ok(rules)
}

pub(super) async fn create_role(
    call: &Call<'_>,
    mut body: RoleRequest,
) -> Result<RoleRecord, ApiError> {
    let role = name(body.name.take().as_deref().unwrap_or_default(), "name")?;
    let rules = rules(body)?;
    if !call
        .state
        .store
        .create_role(role.as_str(), &rules, now_ms())
        .await?
    {
        return Err(ApiError::Conflict("a role with this name exists"));
    }
    call.audit(
        "role.create",
        "allowed",
        serde_json::json!({"role": role.as_str(), "rules": rules}),
    )
    .await;
    Ok(role_record(role.as_str().to_owned(), rules, false))
}

pub(super) async fn update_role(
    call: &Call<'_>,
    body: RoleRequest,
) -> Result<RoleRecord, ApiError> {
    let role = call.param(0);
    if body.name.is_some() {
        return Err(ApiError::BadRequest(
            "the role's name is in the path; it cannot be changed".into(),
        ));
    }
    let rules = rules(body)?;
    match call.state.store.update_role(role, &rules).await? {
        RoleChange::Done => {}
        RoleChange::Missing => return Err(ApiError::NotFound),
        RoleChange::Builtin => return Err(ApiError::Conflict("the admin role cannot be changed")),
    }
    call.audit(
        "role.update",
        "allowed",
        serde_json::json!({"role": role, "rules": rules}),
    )
    .await;
    // Only `admin` refuses changes; `everyone` is built in and editable.
    let builtin = role == rbac::EVERYONE;
    Ok(role_record(role.to_owned(), rules, builtin))
}

pub(super) async fn delete_role(call: &Call<'_>) -> Result<(), ApiError> {
    let role = call.param(0);
    match call.state.store.delete_role(role).await? {
        RoleChange::Done => {}
        RoleChange::Missing => return Err(ApiError::NotFound),
        RoleChange::Builtin => {
            return Err(ApiError::Conflict("built-in roles cannot be deleted"));
        }
    }
    call.audit("role.delete", "allowed", serde_json::json!({"role": role}))
        .await;
    Ok(())
}

/// The audit log, newest first; the cursor is the last event's id.
pub(super) async fn audit_events(call: &Call<'_>) -> Result<Page<AuditEvent>, ApiError> {
    let query = AuditQuery::parse(call.query.unwrap_or_default())
        .map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let cursor = super::cursor(query.cursor.as_deref())?;
    let limit = query.limit.unwrap_or(DEFAULT_PAGE);
    let filter = AuditFilter {
        actor: query.actor,
        kind: query.kind,
        since: query.since_ms,
        until: query.until_ms,
    };
    let events = call.state.store.audit(&filter, cursor, limit).await?;
    super::page(
        events,
        limit,
        |e| e.id,
        |e| {
            Ok(AuditEvent {
                id: e.id,
                at_ms: e.event.at,
                detail: serde_json::from_str(&e.event.detail).unwrap_or(serde_json::Value::Null),
                actor: e.event.actor,
                kind: e.event.kind,
                outcome: e.event.outcome,
            })
        },
    )
}

/// By serial, by fingerprint, or both (lower-case hex); 201 when new, 200 when known.
pub(super) async fn revoke(
    call: &Call<'_>,
    body: RevocationRequest,
) -> Result<(StatusCode, RevocationRecord), ApiError> {
    let hex = |v: &Option<String>, max: usize| {
        v.as_deref().is_none_or(|s| {
            (1..=max).contains(&s.len())
                && s.bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        })
    };
    if body.serial.is_none() && body.fingerprint.is_none() {
        return Err(ApiError::BadRequest("give serial or fingerprint".into()));
    }
    if !hex(&body.serial, 40) || !hex(&body.fingerprint, 64) {
        return Err(ApiError::BadRequest(
            "serial (up to 40) and fingerprint (64) are lower-case hex".into(),
        ));
    }
    if body.reason.is_empty() || body.reason.len() > 200 {
        return Err(ApiError::BadRequest(
            "reason must be 1-200 characters".into(),
        ));
    }
    let certificate = CertificateRef {
        serial: body.serial,
        fingerprint: body.fingerprint,
    };
    let (actor, now) = (call.actor(), now_ms());
    let revoked = call
        .state
        .store
        .revoke(&certificate, &body.reason, &actor, now)
        .await?;
    call.audit(
        "certificate.revoke",
        "allowed",
        serde_json::json!({"serial": certificate.serial, "fingerprint": certificate.fingerprint,
            "reason": body.reason, "new": revoked.added, "kind": revoked.kind,
            "ended_sessions": revoked.ended_sessions, "ended_tokens": revoked.ended_tokens}),
    )
    .await;
    let status = if revoked.added {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((
        status,
        RevocationRecord {
            serial: certificate.serial,
            fingerprint: certificate.fingerprint,
            reason: body.reason,
            revoked_by: actor,
            revoked_at_ms: now,
        },
    ))
}

pub(super) async fn revocations(call: &Call<'_>) -> Result<Page<RevocationRecord>, ApiError> {
    let list = call.state.store.revocations().await?;
    Ok(Page::all(
        list.into_iter()
            .map(|r| RevocationRecord {
                serial: r.certificate.serial,
                fingerprint: r.certificate.fingerprint,
                reason: r.reason,
                revoked_by: r.revoked_by,
                revoked_at_ms: r.revoked_at,
            })
            .collect(),
    ))
}

//! Administration: users, roles, bindings, revocations and the audit log.

use bamf_proto::san::Name;
use http::StatusCode;
use serde::Deserialize;

use super::{Call, Reply, no_content, now_ms, store_failed};
use crate::auth;
use crate::error::{ApiError, json_response};
use crate::presence::Presence;
use crate::rbac::{self, Rules};
use crate::store::{AuditFilter, CertificateRef, MAX_AUDIT_PAGE, RoleChange};

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
fn caller<'a, P>(call: &'a Call<'_, P>) -> Result<&'a str, ApiError> {
    call.principal.user().map(|(name, _)| name)
}

pub(super) async fn list_users<P: Presence>(call: &Call<'_, P>) -> Reply {
    let users = call.state.store.users().await.map_err(store_failed)?;
    let items: Vec<_> = users
        .iter()
        .map(|u| serde_json::json!({"name": u.name, "roles": u.roles, "created_at": u.created_at / 1000}))
        .collect();
    Ok(json_response(
        StatusCode::OK,
        &serde_json::json!({"items": items}),
    ))
}

/// `POST /api/v1/users`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewUser {
    name: String,
    password: String,
    #[serde(default)]
    roles: Vec<String>,
}

pub(super) async fn create_user<P: Presence>(call: &Call<'_, P>) -> Reply {
    let body: NewUser = call.json()?;
    let user = name(&body.name, "name")?;
    let store = &call.state.store;
    for role in &body.roles {
        if !store.role_exists(role).await.map_err(store_failed)? {
            return Err(ApiError::BadRequest(format!("no role named {role:?}")));
        }
    }
    let hashed = hash(body.password).await?;
    if !store
        .create_user(user.as_str(), &hashed, now_ms())
        .await
        .map_err(store_failed)?
    {
        return Err(ApiError::Conflict("a user with this name exists"));
    }
    for role in &body.roles {
        store
            .bind_role(user.as_str(), role)
            .await
            .map_err(store_failed)?;
    }
    call.audit(
        "user.create",
        "allowed",
        serde_json::json!({"user": user.as_str(), "roles": body.roles}),
    )
    .await;
    Ok(json_response(
        StatusCode::CREATED,
        &serde_json::json!({"name": user.as_str(), "roles": body.roles}),
    ))
}

pub(super) async fn delete_user<P: Presence>(call: &Call<'_, P>) -> Reply {
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
        .await
        .map_err(store_failed)?
        .ok_or(ApiError::NotFound)?;
    call.audit(
        "user.delete",
        "allowed",
        serde_json::json!({"user": user, "ended_sessions": ended}),
    )
    .await;
    Ok(no_content())
}

/// `PUT /api/v1/users/{name}/password`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewPassword {
    password: String,
}

pub(super) async fn set_password<P: Presence>(call: &Call<'_, P>) -> Reply {
    let user = call.param(0);
    let body: NewPassword = call.json()?;
    let hashed = hash(body.password).await?;
    if !call
        .state
        .store
        .set_password_hash(user, &hashed)
        .await
        .map_err(store_failed)?
    {
        return Err(ApiError::NotFound);
    }
    call.audit(
        "user.password",
        "allowed",
        serde_json::json!({"user": user}),
    )
    .await;
    Ok(no_content())
}

pub(super) async fn bind_role<P: Presence>(call: &Call<'_, P>) -> Reply {
    let (user, role) = (call.param(0), call.param(1));
    let store = &call.state.store;
    if !store.user_enabled(user).await.map_err(store_failed)?
        || !store.role_exists(role).await.map_err(store_failed)?
    {
        return Err(ApiError::NotFound);
    }
    store.bind_role(user, role).await.map_err(store_failed)?;
    call.audit(
        "role.bind",
        "allowed",
        serde_json::json!({"user": user, "role": role}),
    )
    .await;
    Ok(no_content())
}

pub(super) async fn unbind_role<P: Presence>(call: &Call<'_, P>) -> Reply {
    let (user, role) = (call.param(0), call.param(1));
    if role == rbac::EVERYONE {
        return Err(ApiError::Conflict("every user holds the everyone role"));
    }
    if role == rbac::ADMIN && user == caller(call)? {
        return Err(ApiError::Conflict(
            "administrators cannot remove their own admin role",
        ));
    }
    if !call
        .state
        .store
        .unbind_role(user, role)
        .await
        .map_err(store_failed)?
    {
        return Err(ApiError::NotFound);
    }
    call.audit(
        "role.unbind",
        "allowed",
        serde_json::json!({"user": user, "role": role}),
    )
    .await;
    Ok(no_content())
}

pub(super) async fn list_roles<P: Presence>(call: &Call<'_, P>) -> Reply {
    let roles = call.state.store.roles().await.map_err(store_failed)?;
    let items: Vec<_> = roles
        .iter()
        .map(|r| serde_json::json!({"name": r.name, "allow": r.rules.allow, "deny": r.rules.deny, "builtin": r.builtin}))
        .collect();
    Ok(json_response(
        StatusCode::OK,
        &serde_json::json!({"items": items}),
    ))
}

/// `POST /api/v1/roles` and `PUT /api/v1/roles/{name}` (without `name`).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RoleBody {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    allow: Vec<rbac::Rule>,
    #[serde(default)]
    deny: Vec<rbac::Rule>,
}

impl RoleBody {
    fn rules(self) -> Result<Rules, ApiError> {
        let rules = Rules {
            allow: self.allow,
            deny: self.deny,
        };
        rules
            .check()
            .map_err(|e| ApiError::BadRequest(e.to_string()))?;
        Ok(rules)
    }
}

pub(super) async fn create_role<P: Presence>(call: &Call<'_, P>) -> Reply {
    let mut body: RoleBody = call.json()?;
    let role = name(body.name.take().as_deref().unwrap_or_default(), "name")?;
    let rules = body.rules()?;
    if !call
        .state
        .store
        .create_role(role.as_str(), &rules, now_ms())
        .await
        .map_err(store_failed)?
    {
        return Err(ApiError::Conflict("a role with this name exists"));
    }
    call.audit(
        "role.create",
        "allowed",
        serde_json::json!({"role": role.as_str(), "rules": rules}),
    )
    .await;
    Ok(json_response(
        StatusCode::CREATED,
        &serde_json::json!({"name": role.as_str(), "allow": rules.allow, "deny": rules.deny}),
    ))
}

pub(super) async fn update_role<P: Presence>(call: &Call<'_, P>) -> Reply {
    let role = call.param(0);
    let body: RoleBody = call.json()?;
    if body.name.is_some() {
        return Err(ApiError::BadRequest(
            "the role's name is in the path; it cannot be changed".into(),
        ));
    }
    let rules = body.rules()?;
    match call
        .state
        .store
        .update_role(role, &rules)
        .await
        .map_err(store_failed)?
    {
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
    Ok(json_response(
        StatusCode::OK,
        &serde_json::json!({"name": role, "allow": rules.allow, "deny": rules.deny}),
    ))
}

pub(super) async fn delete_role<P: Presence>(call: &Call<'_, P>) -> Reply {
    let role = call.param(0);
    match call
        .state
        .store
        .delete_role(role)
        .await
        .map_err(store_failed)?
    {
        RoleChange::Done => {}
        RoleChange::Missing => return Err(ApiError::NotFound),
        RoleChange::Builtin => {
            return Err(ApiError::Conflict("built-in roles cannot be deleted"));
        }
    }
    call.audit("role.delete", "allowed", serde_json::json!({"role": role}))
        .await;
    Ok(no_content())
}

/// `GET /api/v1/audit?actor=&kind=&since=&until=&cursor=&limit=` (times in Unix seconds).
pub(super) async fn audit_events<P: Presence>(call: &Call<'_, P>) -> Reply {
    let mut filter = AuditFilter::default();
    let mut cursor = None;
    let mut limit = 100;
    let seconds = |v: &str| {
        v.parse::<i64>()
            .ok()
            .and_then(|s| s.checked_mul(1000))
            .ok_or_else(|| ApiError::BadRequest("since and until are Unix seconds".into()))
    };
    for (key, value) in form_urlencoded::parse(call.query.unwrap_or_default().as_bytes()) {
        match key.as_ref() {
            "actor" => filter.actor = Some(value.into_owned()),
            "kind" => filter.kind = Some(value.into_owned()),
            "since" => filter.since = Some(seconds(&value)?),
            "until" => filter.until = Some(seconds(&value)?),
            "cursor" => {
                cursor = Some(
                    value
                        .parse::<i64>()
                        .map_err(|_| ApiError::BadRequest("malformed cursor".into()))?,
                );
            }
            "limit" => {
                limit = value
                    .parse::<u32>()
                    .ok()
                    .filter(|l| (1..=MAX_AUDIT_PAGE).contains(l))
                    .ok_or_else(|| {
                        ApiError::BadRequest(format!("limit must be 1..={MAX_AUDIT_PAGE}"))
                    })?;
            }
            other => {
                return Err(ApiError::BadRequest(format!(
                    "unknown query parameter {other:?} (actor, kind, since, until, cursor, limit)"
                )));
            }
        }
    }
    let events = call
        .state
        .store
        .audit(&filter, cursor, limit)
        .await
        .map_err(store_failed)?;
    let next = (events.len() == usize::try_from(limit).unwrap_or(usize::MAX))
        .then(|| events.last().map(|e| e.id.to_string()))
        .flatten();
    let items: Vec<_> = events
        .iter()
        .map(|e| {
            let detail: serde_json::Value =
                serde_json::from_str(&e.event.detail).unwrap_or(serde_json::Value::Null);
            serde_json::json!({"id": e.id, "at_ms": e.event.at, "actor": e.event.actor,
                "kind": e.event.kind, "outcome": e.event.outcome, "detail": detail})
        })
        .collect();
    Ok(json_response(
        StatusCode::OK,
        &serde_json::json!({"items": items, "next_cursor": next}),
    ))
}

/// `POST /api/v1/revocations`: by serial, by fingerprint, or both (lower-case hex).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewRevocation {
    #[serde(default)]
    serial: Option<String>,
    #[serde(default)]
    fingerprint: Option<String>,
    reason: String,
}

pub(super) async fn revoke<P: Presence>(call: &Call<'_, P>) -> Reply {
    let body: NewRevocation = call.json()?;
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
    let revoked = call
        .state
        .store
        .revoke(&certificate, &body.reason, &call.actor(), now_ms())
        .await
        .map_err(store_failed)?;
    call.audit(
        "certificate.revoke",
        "allowed",
        serde_json::json!({"serial": certificate.serial, "fingerprint": certificate.fingerprint,
            "reason": body.reason, "new": revoked.added, "kind": revoked.kind,
            "ended_sessions": revoked.ended_sessions, "ended_tokens": revoked.ended_tokens}),
    )
    .await;
    Ok(json_response(
        if revoked.added {
            StatusCode::CREATED
        } else {
            StatusCode::OK
        },
        &serde_json::json!({"serial": certificate.serial, "fingerprint": certificate.fingerprint,
            "reason": body.reason}),
    ))
}

pub(super) async fn revocations<P: Presence>(call: &Call<'_, P>) -> Reply {
    let list = call.state.store.revocations().await.map_err(store_failed)?;
    let items: Vec<_> = list
        .iter()
        .map(|r| {
            serde_json::json!({"serial": r.certificate.serial, "fingerprint": r.certificate.fingerprint,
                "reason": r.reason, "revoked_by": r.revoked_by, "revoked_at": r.revoked_at / 1000})
        })
        .collect();
    Ok(json_response(
        StatusCode::OK,
        &serde_json::json!({"items": items}),
    ))
}

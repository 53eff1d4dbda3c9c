//! Single sign-on routes: which methods exist, beginning a sign-in at a provider, and
//! finishing it with the code the browser brought back (see [`crate::sso`]). Every attempt
//! is audited (`auth.sso`) with the provider and the outcome; codes, tokens, states and
//! secrets are never written anywhere.

use bamf_proto::api::{
    AuthMethods, Login, SsoBegin, SsoBeginRequest, SsoDevice, SsoDeviceBeginRequest,
    SsoDevicePollRequest, SsoFinishRequest, SsoProvider,
};

use super::Call;
use crate::context::{AppState, RequestContext, audit};
use crate::error::ApiError;
use crate::now_ms;
use crate::sso::{self, DeviceFlow, DevicePoll, FLOW_TTL, Flow, SsoFailure};
use crate::store::SsoSignIn;

/// The presence key of a flow.
fn flow_key(state: &str) -> String {
    format!("sso:{state}")
}

/// A provider name from the network, bounded and printable, for messages.
fn shown(name: &str) -> String {
    name.chars()
        .take(64)
        .map(|c| if c.is_ascii_graphic() { c } else { '?' })
        .collect()
}

pub(super) async fn providers(call: &Call<'_>) -> Result<AuthMethods, ApiError> {
    let sso = &call.state.sso;
    Ok(AuthMethods {
        local_enabled: sso.local_enabled,
        default_provider: sso.default_provider.clone(),
        providers: sso
            .providers
            .values()
            .map(|p| SsoProvider {
                name: p.settings.name.clone(),
                issuer: p.settings.issuer.clone(),
            })
            .collect(),
    })
}

async fn audited(
    state: &AppState,
    ctx: &RequestContext,
    provider: &str,
    outcome: &str,
    reason: &str,
    user: Option<&str>,
) {
    let actor = user.map_or_else(
        || format!("anonymous:{}", ctx.peer.ip()),
        |u| format!("user:{u}"),
    );
    let detail = serde_json::json!({
        "provider": shown(provider),
        "reason": reason,
        "address": ctx.peer.ip().to_string(),
        "request_id": ctx.request_id,
    });
    audit(state, actor, "auth.sso", outcome, detail).await;
}

fn unknown_provider(name: Option<&str>) -> ApiError {
    ApiError::UnknownProvider(match name {
        Some(n) => format!("no single sign-on provider named {}", shown(n)),
        None => {
            "no single sign-on provider is configured (or none is the default): name one".into()
        }
    })
}

/// The provider a sign-in asks for (`None`: the default), or the refusal, audited.
async fn asked_provider<'s>(
    state: &'s AppState,
    ctx: &RequestContext,
    asked: Option<&str>,
) -> Result<&'s crate::sso::Provider, ApiError> {
    if let Some(provider) = state.sso.provider(asked) {
        return Ok(provider);
    }
    let name = asked.unwrap_or("-");
    audited(state, ctx, name, "denied", "unknown_provider", None).await;
    Err(unknown_provider(asked))
}

/// A provider failure as the caller sees it: the provider's own trouble is a 502, a token
/// we refuse is a 401 with the reason.
fn failure(e: &SsoFailure) -> ApiError {
    match e {
        SsoFailure::Provider(_) | SsoFailure::Discovery(_) => ApiError::ProviderUnavailable,
        SsoFailure::NoIdToken | SsoFailure::Token(_) => ApiError::SsoRefused(e.reason()),
    }
}

pub(super) async fn begin(call: &Call<'_>, body: SsoBeginRequest) -> Result<SsoBegin, ApiError> {
    let (state, ctx) = (call.state, call.ctx);
    let asked = body.provider.as_deref();
    let provider = asked_provider(state, ctx, asked).await?;
    let name = provider.settings.name.clone();
    if !sso::loopback_redirect(&body.redirect_uri) {
        return Err(ApiError::BadRequest(
            "redirect_uri: must be http://127.0.0.1:<port>/… (or [::1], localhost)".into(),
        ));
    }
    if !sso::is_challenge(&body.code_challenge) {
        return Err(ApiError::BadRequest(
            "code_challenge: must be BASE64URL(SHA-256(verifier)), 43 characters".into(),
        ));
    }
    let random = |n| sso::random(n).map_err(|_| ApiError::Internal);
    let (flow_state, nonce, verifier) = (random(32)?, random(32)?, random(32)?);
    let url = match provider
        .authorization_url(
            &body.redirect_uri,
            &flow_state,
            &nonce,
            &sso::challenge(&verifier),
        )
        .await
    {
        Ok(url) => url,
        Err(e) => {
            tracing::warn!(provider = %name, error = %e, "single sign-on could not begin");
            audited(state, ctx, &name, "failed", e.reason(), None).await;
            return Err(failure(&e));
        }
    };
    let flow = Flow {
        provider: name.clone(),
        nonce,
        verifier,
        redirect_uri: body.redirect_uri,
        client_challenge: body.code_challenge,
    };
    let value = serde_json::to_string(&flow).map_err(|_| ApiError::Internal)?;
    if !state
        .presence
        .put_once(&flow_key(&flow_state), &value, FLOW_TTL)
        .await?
    {
        return Err(ApiError::Unavailable("sign-in flows"));
    }
    audited(state, ctx, &name, "begun", "-", None).await;
    let ttl = i64::try_from(FLOW_TTL.as_millis()).unwrap_or(i64::MAX);
    Ok(SsoBegin {
        provider: name,
        authorization_url: url,
        state: flow_state,
        expires_at_ms: now_ms().saturating_add(ttl),
    })
}

pub(super) async fn finish(call: &Call<'_>, body: SsoFinishRequest) -> Result<Login, ApiError> {
    let (state, ctx) = (call.state, call.ctx);
    if body.state.is_empty()
        || body.state.len() > 128
        || body.code.is_empty()
        || body.code.len() > 4096
    {
        return Err(ApiError::BadRequest(
            "state and code: 1-128 and 1-4096 characters".into(),
        ));
    }
    // Taken once: a replayed state, or one past its TTL, finds nothing.
    let Some(flow) = state.presence.take_once(&flow_key(&body.state)).await? else {
        audited(state, ctx, "-", "denied", "unknown_flow", None).await;
        return Err(ApiError::SsoRefused("unknown_flow"));
    };
    let flow: Flow = serde_json::from_str(&flow).map_err(|_| ApiError::Internal)?;
    let name = flow.provider.clone();
    if !sso::is_verifier(&body.code_verifier)
        || !sso::jwt::constant_time_eq(
            sso::challenge(&body.code_verifier).as_bytes(),
            flow.client_challenge.as_bytes(),
        )
    {
        audited(state, ctx, &name, "denied", "client_verifier", None).await;
        return Err(ApiError::SsoRefused("client_verifier"));
    }
    let Some(provider) = state.sso.provider(Some(&name)) else {
        audited(state, ctx, &name, "denied", "unknown_provider", None).await;
        return Err(unknown_provider(Some(&name)));
    };
    let claims = match provider
        .sign_in(&body.code, &flow.redirect_uri, &flow.verifier, &flow.nonce)
        .await
    {
        Ok(claims) => claims,
        Err(e) => {
            tracing::warn!(provider = %name, error = %e, "single sign-on refused");
            audited(state, ctx, &name, "denied", e.reason(), None).await;
            return Err(failure(&e));
        }
    };
    complete(state, ctx, provider, &claims, &body.csr).await
}

/// A sign-in whose ID token was validated: the user found or made from the claims, the
/// roles they map to bound, and a login's answer.
async fn complete(
    state: &AppState,
    ctx: &RequestContext,
    provider: &sso::Provider,
    claims: &sso::jwt::Claims,
    csr: &str,
) -> Result<Login, ApiError> {
    let name = provider.settings.name.clone();
    let settings = &provider.settings;
    let Some(user) = sso::user_name(claims, &settings.username_claims) else {
        audited(state, ctx, &name, "denied", "no_user_name", None).await;
        return Err(ApiError::SsoRefused("no_user_name"));
    };
    let roles = sso::mapped_roles(claims, &settings.rules);
    let signed = state
        .store
        .sso_sign_in(&name, &claims.sub, user.as_str(), &roles, now_ms())
        .await?;
    let (user_name, created, bound) = match signed {
        SsoSignIn::User {
            name: user_name,
            created,
            roles,
        } => (user_name, created, roles),
        SsoSignIn::NameTaken => {
            audited(
                state,
                ctx,
                &name,
                "denied",
                "name_taken",
                Some(user.as_str()),
            )
            .await;
            return Err(ApiError::Conflict(
                "the user name this sign-in gives belongs to another user; an administrator must resolve it",
            ));
        }
        SsoSignIn::Disabled => {
            audited(state, ctx, &name, "denied", "disabled", Some(user.as_str())).await;
            return Err(ApiError::SsoRefused("disabled"));
        }
    };
    let user: bamf_proto::san::Name = user_name.parse().map_err(|_| ApiError::Internal)?;
    if bound.len() < roles.len() {
        tracing::warn!(provider = %name, user = %user_name, wanted = ?roles, bound = ?bound,
            "some roles the claims map to do not exist");
    }
    match super::session::grant(state, &user, csr, state.lifetimes.user).await {
        Ok(login) => {
            let detail = serde_json::json!({
                "provider": name, "reason": "-", "created": created, "roles": bound,
                "address": ctx.peer.ip().to_string(), "request_id": ctx.request_id,
            });
            audit(
                state,
                format!("user:{user_name}"),
                "auth.sso",
                "allowed",
                detail,
            )
            .await;
            Ok(login)
        }
        Err(e) => {
            audited(state, ctx, &name, "failed", "csr", Some(&user_name)).await;
            Err(e)
        }
    }
}

/// The presence key of a device grant.
fn device_key(handle: &str) -> String {
    format!("sso-device:{handle}")
}

pub(super) async fn device_begin(
    call: &Call<'_>,
    body: SsoDeviceBeginRequest,
) -> Result<SsoDevice, ApiError> {
    let (state, ctx) = (call.state, call.ctx);
    let asked = body.provider.as_deref();
    let provider = asked_provider(state, ctx, asked).await?;
    let name = provider.settings.name.clone();
    let start = match provider.device_begin().await {
        Ok(start) => start,
        Err(e) => {
            tracing::warn!(provider = %name, error = %e, "device sign-in could not begin");
            audited(state, ctx, &name, "failed", e.reason(), None).await;
            return Err(failure(&e));
        }
    };
    let handle = sso::random(32).map_err(|_| ApiError::Internal)?;
    let ttl = std::time::Duration::from_secs(start.expires_in);
    let expires_at_ms = now_ms().saturating_add(i64::try_from(ttl.as_millis()).unwrap_or(0));
    let flow = DeviceFlow {
        provider: name.clone(),
        device_code: start.device_code,
        expires_at_ms,
    };
    let value = serde_json::to_string(&flow).map_err(|_| ApiError::Internal)?;
    if !state
        .presence
        .put_once(&device_key(&handle), &value, ttl)
        .await?
    {
        return Err(ApiError::Unavailable("sign-in flows"));
    }
    audited(state, ctx, &name, "begun", "device", None).await;
    Ok(SsoDevice {
        provider: name,
        handle,
        user_code: start.user_code,
        verification_uri: start.verification_uri,
        verification_uri_complete: start.verification_uri_complete,
        interval_ms: i64::try_from(start.interval.saturating_mul(1000)).unwrap_or(5000),
        expires_at_ms,
    })
}

pub(super) async fn device_poll(
    call: &Call<'_>,
    body: SsoDevicePollRequest,
) -> Result<Login, ApiError> {
    let (state, ctx) = (call.state, call.ctx);
    if body.handle.is_empty() || body.handle.len() > 128 {
        return Err(ApiError::BadRequest("handle: 1-128 characters".into()));
    }
    // Taken for the poll and put back while the user has not finished: a finished grant is
    // used once.
    let key = device_key(&body.handle);
    let Some(text) = state.presence.take_once(&key).await? else {
        audited(state, ctx, "-", "denied", "unknown_flow", None).await;
        return Err(ApiError::SsoRefused("unknown_flow"));
    };
    let flow: DeviceFlow = serde_json::from_str(&text).map_err(|_| ApiError::Internal)?;
    let Some(provider) = state.sso.provider(Some(&flow.provider)) else {
        return Err(unknown_provider(Some(&flow.provider)));
    };
    let put_back = |slow| async move {
        let left = flow.expires_at_ms.saturating_sub(now_ms());
        if left > 0 {
            let ttl = std::time::Duration::from_millis(u64::try_from(left).unwrap_or(0));
            state.presence.put_once(&key, &text, ttl).await?;
        }
        Err::<Login, ApiError>(ApiError::SsoPending(slow))
    };
    match provider.device_poll(&flow.device_code).await {
        Ok(DevicePoll::Pending) => put_back(false).await,
        Ok(DevicePoll::SlowDown) => put_back(true).await,
        Ok(DevicePoll::Done(claims)) => complete(state, ctx, provider, &claims, &body.csr).await,
        Err(e) => {
            tracing::warn!(provider = %flow.provider, error = %e, "device sign-in refused");
            audited(state, ctx, &flow.provider, "denied", e.reason(), None).await;
            Err(failure(&e))
        }
    }
}

//! What probes, scrapers and first-time clients read: health, readiness, metrics, the CA
//! certificate and the OpenAPI document.

use std::time::Duration;

use bamf_proto::api::{Health, Readiness};
use http::Response;

use super::Call;
use super::Reply;
use crate::error::{ApiError, Body, full};

/// How long `/ready` waits for its dependencies, together: well inside a 1 s probe.
const READY_WAIT: Duration = Duration::from_millis(500);

pub(super) async fn health(_: &Call<'_>) -> Result<Health, ApiError> {
    Ok(Health {
        status: "ok".into(),
    })
}

pub(super) async fn ready(call: &Call<'_>) -> Result<Readiness, ApiError> {
    let state = call.state;
    let unavailable = |what: &'static str, e: &dyn std::fmt::Display| {
        tracing::warn!(error = %e, "readiness: {what} unavailable");
        ApiError::Unavailable(what)
    };
    // Both asked at once, under one deadline: a dependency that hangs is as down as one
    // that refuses.
    let (store, presence) = tokio::join!(
        tokio::time::timeout(READY_WAIT, state.store.ping()),
        tokio::time::timeout(READY_WAIT, state.presence.ping()),
    );
    match store {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(unavailable("store", &e)),
        Err(e) => return Err(unavailable("store", &e)),
    }
    match presence {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(unavailable("presence", &e)),
        Err(e) => return Err(unavailable("presence", &e)),
    }
    Ok(Readiness {
        status: "ready".into(),
        store: "ok".into(),
        presence: "ok".into(),
    })
}

pub(super) async fn metrics(call: &Call<'_>) -> Reply {
    let text = call
        .state
        .metrics
        .as_ref()
        .map(|h| h.render())
        .unwrap_or_default();
    Ok(with_type(text, "text/plain; version=0.0.4; charset=utf-8"))
}

pub(super) async fn ca(call: &Call<'_>) -> Reply {
    Ok(with_type(
        call.state.ca.cert_pem().to_owned(),
        "application/x-pem-file",
    ))
}

pub(super) async fn openapi(call: &Call<'_>) -> Reply {
    Ok(with_type(call.state.openapi.to_owned(), "application/json"))
}

fn with_type(text: String, content_type: &'static str) -> Response<Body> {
    let mut r = Response::new(full(text));
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(content_type),
    );
    r
}

//! The router: every route of the API in one match, by method and path segments.
//!
//! Which callers a route accepts is decided here too, next to the route, from the
//! [`Caller`] the TLS layer established.

use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};

use crate::error::{ApiError, json_response};
use crate::presence::Presence;
use crate::server::{AppState, Caller};

/// Routes one request.
///
/// # Errors
///
/// [`ApiError`] for every refusal; the server turns it into a JSON response.
pub async fn route<P: Presence>(
    state: &AppState<P>,
    caller: &Caller,
    req: &Request<Incoming>,
) -> Result<Response<Full<Bytes>>, ApiError> {
    let path = req.uri().path();
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let method = req.method();
    match (method, segments.as_slice()) {
        // Public.
        (&Method::GET, ["health"]) => Ok(json_response(
            StatusCode::OK,
            &serde_json::json!({"status": "ok"}),
        )),
        (&Method::GET, ["ready"]) => ready(state).await,
        (&Method::GET, ["metrics"]) => Ok(metrics(state)),
        (&Method::GET, ["api", "v1", "ca"]) => Ok(pem_response(state.ca.cert_pem())),
        // Any caller with a certificate of ours: who am I (the CLI's `status`, agents' and
        // bridges' self-check).
        (&Method::GET, ["api", "v1", "whoami"]) => whoami(caller),
        (_, ["health" | "ready" | "metrics"] | ["api", "v1", "ca" | "whoami"]) => {
            Err(ApiError::MethodNotAllowed)
        }
        _ => Err(ApiError::NotFound),
    }
}

async fn ready<P: Presence>(state: &AppState<P>) -> Result<Response<Full<Bytes>>, ApiError> {
    if let Err(e) = state.store.ping().await {
        tracing::warn!(error = %e, "readiness: store unavailable");
        return Err(ApiError::Unavailable("store"));
    }
    if let Err(e) = state.presence.ping().await {
        tracing::warn!(error = %e, "readiness: presence unavailable");
        return Err(ApiError::Unavailable("presence"));
    }
    Ok(json_response(
        StatusCode::OK,
        &serde_json::json!({"status": "ready", "store": "ok", "presence": "ok"}),
    ))
}

fn metrics<P: Presence>(state: &AppState<P>) -> Response<Full<Bytes>> {
    let text = state
        .metrics
        .as_ref()
        .map(|h| h.render())
        .unwrap_or_default();
    let mut r = Response::new(Full::new(Bytes::from(text)));
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    r
}

fn pem_response(pem: &str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(pem.to_owned())));
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/x-pem-file"),
    );
    r
}

fn whoami(caller: &Caller) -> Result<Response<Full<Bytes>>, ApiError> {
    let Caller::Certified { identity, serial } = caller else {
        return Err(ApiError::Unauthenticated);
    };
    Ok(json_response(
        StatusCode::OK,
        &serde_json::json!({"kind": identity.kind(), "uris": identity.uris(), "serial": serial}),
    ))
}

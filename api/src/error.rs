//! API errors: each maps to one HTTP status and one stable machine code.
//!
//! Internal details never reach the response: a store or presence failure is logged where
//! it happens and answered as `internal` or `not_ready`. Authentication failures all look
//! the same from outside (`unauthenticated`), whatever the reason.

use http::{HeaderValue, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;

use bamf_proto::api::{ErrorBody, ErrorDetail};

use crate::presence::PresenceError;
use crate::store::StoreError;

/// Every response body: whole (JSON, PEM, metrics) or streamed (server-sent events).
pub type Body = http_body_util::combinators::UnsyncBoxBody<Bytes, std::convert::Infallible>;

/// A whole body.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into()).boxed_unsync()
}

/// A refusal or failure, as the caller will see it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ApiError {
    /// No valid credentials for a route that needs them.
    #[error("authentication required")]
    Unauthenticated,
    /// Valid credentials, not allowed here.
    #[error("not allowed")]
    Forbidden,
    /// No such route or object.
    #[error("not found")]
    NotFound,
    /// A resource that does not exist or that the caller may not reach: the two are
    /// answered alike so the answer does not reveal which names exist.
    #[error("no such resource, or you may not reach it")]
    Inaccessible,
    /// The object exists already (e.g. an agent name).
    #[error("{0}")]
    Conflict(&'static str),
    /// The route exists, the method does not.
    #[error("method not allowed")]
    MethodNotAllowed,
    /// The request body or parameters are invalid; the message says which field, never
    /// internal state.
    #[error("{0}")]
    BadRequest(String),
    /// The body is larger than the limit.
    #[error("request body too large")]
    PayloadTooLarge,
    /// Too many failed attempts; retry after this many seconds.
    #[error("too many attempts; retry later")]
    TooManyRequests(u64),
    /// A dependency (store, presence) is unavailable.
    #[error("{0} unavailable")]
    Unavailable(&'static str),
    /// What the request needs is not there right now (the agent is offline, no bridge is
    /// live); worth retrying.
    #[error("{0}")]
    Offline(&'static str),
    /// It existed and is over for good (an ended session cannot resume).
    #[error("{0}")]
    Gone(&'static str),
    /// Password login is turned off here (`auth.local.enabled: false`).
    #[error(
        "password login is disabled on this server: sign in with single sign-on (bamf login --sso)"
    )]
    LocalLoginDisabled,
    /// No such single sign-on provider (or none is configured).
    #[error("{0}")]
    UnknownProvider(String),
    /// A single sign-on was refused; the reason is a stable word (`audience`, `nonce`,
    /// `expired`, `unknown_flow`, …), never a token, code or secret.
    #[error("single sign-on refused: {0}")]
    SsoRefused(&'static str),
    /// A device grant the user has not finished yet; `true`: poll less often.
    #[error("the sign-in is not finished yet; poll again")]
    SsoPending(bool),
    /// The identity provider could not be reached or answered wrongly.
    #[error("the identity provider is unreachable or answered wrongly; try again")]
    ProviderUnavailable,
    /// Anything else; details are in the log under the request id.
    #[error("internal error")]
    Internal,
}

impl ApiError {
    /// Status and stable code.
    pub fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            Self::Unauthenticated => (StatusCode::UNAUTHORIZED, "unauthenticated"),
            Self::Forbidden => (StatusCode::FORBIDDEN, "forbidden"),
            Self::NotFound | Self::Inaccessible => (StatusCode::NOT_FOUND, "not_found"),
            Self::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            Self::MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
            Self::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            Self::PayloadTooLarge => (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
            Self::TooManyRequests(_) => (StatusCode::TOO_MANY_REQUESTS, "rate_limited"),
            Self::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "not_ready"),
            Self::Offline(_) => (StatusCode::SERVICE_UNAVAILABLE, "offline"),
            Self::Gone(_) => (StatusCode::GONE, "gone"),
            Self::LocalLoginDisabled => (StatusCode::FORBIDDEN, "local_login_disabled"),
            Self::UnknownProvider(_) => (StatusCode::NOT_FOUND, "unknown_provider"),
            Self::SsoRefused(_) => (StatusCode::UNAUTHORIZED, "sso_refused"),
            Self::SsoPending(false) => (StatusCode::BAD_REQUEST, "authorization_pending"),
            Self::SsoPending(true) => (StatusCode::BAD_REQUEST, "slow_down"),
            Self::ProviderUnavailable => (StatusCode::BAD_GATEWAY, "provider_unavailable"),
            Self::Internal => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        }
    }

    /// The JSON response: [`ErrorBody`].
    pub fn into_response(self, request_id: &str) -> Response<Body> {
        let (status, code) = self.status_and_code();
        let body = ErrorBody {
            error: ErrorDetail {
                code: code.to_owned(),
                message: self.to_string(),
                request_id: request_id.to_owned(),
            },
        };
        let mut response = json_response(status, &body);
        if let Self::TooManyRequests(seconds) = self {
            response
                .headers_mut()
                .insert(http::header::RETRY_AFTER, HeaderValue::from(seconds.max(1)));
        }
        response
    }
}

/// A store failure is logged here, once, and answered `internal`: its detail stays in the log.
impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        tracing::error!(error = %e, "store operation failed");
        Self::Internal
    }
}

/// A presence failure is logged here, once, and answered `not_ready`.
impl From<PresenceError> for ApiError {
    fn from(e: PresenceError) -> Self {
        tracing::error!(error = %e, "presence operation failed");
        Self::Unavailable("presence")
    }
}

/// A JSON response with the given status.
pub fn json_response<T: serde::Serialize + ?Sized>(status: StatusCode, body: &T) -> Response<Body> {
    // Contract types always serialize; an empty object would only hide a bug.
    let text = serde_json::to_string(body).unwrap_or_else(|e| {
        tracing::error!(error = %e, "answer could not be serialized");
        String::from("{}")
    });
    let mut r = Response::new(full(text));
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn errors_carry_status_code_and_request_id_only() {
        let r = ApiError::Unavailable("store").into_response("req-1");
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        let body = r.into_body().collect().await.unwrap().to_bytes();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["error"]["code"], "not_ready");
        assert_eq!(v["error"]["message"], "store unavailable");
        assert_eq!(v["error"]["request_id"], "req-1");
    }
}

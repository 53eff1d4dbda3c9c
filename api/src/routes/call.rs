//! One request, authenticated, with its body read: what handlers get, with the helpers
//! they share (typed body, path parameters, audit as the caller).

use hyper::body::Bytes;
use serde::de::DeserializeOwned;

use crate::access::Principal;
use crate::context::{AppState, RequestContext, append, audit_event};
use crate::error::ApiError;

/// One request, authenticated, with its body read: what handlers get.
#[derive(Debug)]
pub struct Call<'a> {
    /// The API's state.
    pub state: &'a AppState,
    /// Who is calling, from where, under which request id.
    pub ctx: &'a RequestContext,
    /// Who the request was authenticated as.
    pub principal: Principal,
    /// Path parameters, in template order.
    pub params: Vec<&'a str>,
    /// The query string, without `?`.
    pub query: Option<&'a str>,
    /// The request's headers.
    pub headers: &'a http::HeaderMap,
    /// The body (bounded by the router).
    pub body: Bytes,
}

impl Call<'_> {
    /// The body as `T` (whose fields are `deny_unknown_fields`). Error messages name fields
    /// and positions, never values: a value may be a password.
    ///
    /// # Errors
    ///
    /// [`ApiError::BadRequest`].
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, ApiError> {
        serde_json::from_slice(&self.body).map_err(|e| {
            let text = e.to_string();
            let field_error =
                text.starts_with("unknown field") || text.starts_with("missing field");
            ApiError::BadRequest(if field_error {
                // "unknown field `x`, expected one of …": names from the schema and the request.
                format!(
                    "invalid request: {}",
                    text.split(" at line").next().unwrap_or_default()
                )
            } else {
                format!("invalid JSON at line {} column {}", e.line(), e.column())
            })
        })
    }

    /// Path parameter `i`.
    pub fn param(&self, i: usize) -> &str {
        self.params.get(i).copied().unwrap_or_default()
    }

    /// The caller, as audit events name it.
    pub fn actor(&self) -> String {
        self.principal.actor(self.ctx)
    }

    /// Appends an audit event. A failure is logged, never shown to the caller, and does not
    /// undo the action (the store being down is already reported by `/ready`).
    pub async fn audit(&self, kind: &str, outcome: &str, detail: serde_json::Value) {
        self.audit_as(self.actor(), kind, outcome, detail).await;
    }

    /// [`Call::audit`] for an actor other than the caller (e.g. the agent that just joined).
    pub async fn audit_as(
        &self,
        actor: String,
        kind: &str,
        outcome: &str,
        detail: serde_json::Value,
    ) {
        append(self.state, &self.event_as(actor, kind, outcome, detail)).await;
    }

    /// The event [`Call::audit`] would append, for the caller to write in a transaction of
    /// its own.
    pub fn audit_event(
        &self,
        kind: &str,
        outcome: &str,
        detail: serde_json::Value,
    ) -> crate::store::NewAuditEvent {
        self.event_as(self.actor(), kind, outcome, detail)
    }

    fn event_as(
        &self,
        actor: String,
        kind: &str,
        outcome: &str,
        mut detail: serde_json::Value,
    ) -> crate::store::NewAuditEvent {
        if let Some(object) = detail.as_object_mut() {
            object.insert("request_id".into(), self.ctx.request_id.clone().into());
        }
        audit_event(actor, kind, outcome, &detail)
    }
}

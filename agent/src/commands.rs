//! Following the command stream: `GET /api/v1/agent/commands` over mTLS, a server-sent
//! event stream of `dial` events (each a [`DialCommand`] as JSON) and keep-alive comments
//! about every 15 s.
//!
//! The stream is reconnected whenever it ends or fails: at once (with jitter under a
//! second) when it had been open, since the API was there a moment ago (a restart, say);
//! after a back-off of one second doubling to 30 s with jitter when it cannot be opened,
//! except that an API answering "unavailable" (its Redis is down) is asked again every
//! [`UNAVAILABLE_RETRY`] at most, so commands flow again soon after Redis returns. A stream
//! silent for [`SILENCE`] (not even a keep-alive) is taken for dead: a half-open TCP
//! connection otherwise looks exactly like a quiet one. A 401 or 403 means the agent was
//! revoked or deleted: it is logged as an error and retried every [`REFUSED_RETRY`] in case
//! an operator restores it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bamf_client::https::HttpsError;
use bamf_proto::san::AgentId;
use bamf_proto::tunnel::DialCommand;
use http::StatusCode;
use http_body_util::BodyExt;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::enroll::{Tls, millis};
use crate::sse;
use crate::tunnel::Tunnels;
use bamf_client::backoff::Backoff;

/// Twice the keep-alive period: no byte for this long means the stream is dead.
pub const SILENCE: Duration = Duration::from_secs(30);
/// Longest wait before asking again an API that answered "unavailable".
pub const UNAVAILABLE_RETRY: Duration = Duration::from_secs(2);
/// Retry period after a refusal of the agent's certificate.
pub const REFUSED_RETRY: Duration = Duration::from_secs(60);
const BACKOFF_MIN: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// Why one connection of the stream ended.
#[derive(Debug, thiserror::Error)]
enum StreamEnd {
    #[error("{0}")]
    Http(HttpsError),
    #[error("the answer is not an event stream (content type {0:?})")]
    NotEventStream(String),
    #[error("the API closed the stream")]
    Closed,
    #[error("no bytes for {}s", SILENCE.as_secs())]
    Silent,
    #[error("reading the stream failed: {0}")]
    Read(String),
    #[error(transparent)]
    Parse(#[from] sse::SseError),
}

/// Follows the command stream until `stop` is cancelled, handing dial commands for
/// `agent` to `tunnels`. `connected` is true while a stream is open (readiness).
pub async fn follow(
    tls: watch::Receiver<Arc<Tls>>,
    tunnels: Tunnels,
    connected: Arc<AtomicBool>,
    stop: CancellationToken,
) {
    let mut backoff = Backoff::new(BACKOFF_MIN, BACKOFF_MAX);
    loop {
        let (api, agent) = {
            let tls = tls.borrow();
            (tls.api.clone(), tls.agent_id)
        };
        let opened = Instant::now();
        let mut up_since = None;
        let session = async {
            let response = api.agent_commands().await.map_err(StreamEnd::Http)?;
            let content_type = response
                .headers()
                .get(http::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned();
            if !content_type.starts_with("text/event-stream") {
                return Err(StreamEnd::NotEventStream(content_type));
            }
            connected.store(true, Ordering::Release);
            up_since = Some(Instant::now());
            tracing::info!("command stream connected");
            read(response.into_body(), agent, &tunnels).await
        };
        let Some(end) = stop.run_until_cancelled(session).await else {
            connected.store(false, Ordering::Release);
            return;
        };
        connected.store(false, Ordering::Release);
        let Err(end) = end;
        let status = match &end {
            StreamEnd::Http(e) => e.status(),
            _ => None,
        };
        let refused = matches!(
            status,
            Some(StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN)
        );
        let delay = retry_delay(&mut backoff, up_since.is_some(), status);
        if refused {
            tracing::error!(
                error = %end,
                retry_in_ms = millis(delay),
                "the API refused the command stream: this agent was revoked or deleted. An \
                 administrator can remove the revocation, or delete the agent and give it a \
                 new join token"
            );
        } else if up_since.is_some() {
            tracing::warn!(
                error = %end,
                connected_ms = millis(opened.elapsed()),
                retry_in_ms = millis(delay),
                "command stream lost; reconnecting"
            );
        } else {
            tracing::warn!(
                error = %end,
                retry_in_ms = millis(delay),
                "cannot open the command stream; retrying"
            );
        }
        if stop
            .run_until_cancelled(tokio::time::sleep(delay))
            .await
            .is_none()
        {
            return;
        }
    }
}

/// How long to wait before reconnecting: at once (jitter only) after a stream that was
/// open, [`REFUSED_RETRY`] after a refusal, at most [`UNAVAILABLE_RETRY`] while the API
/// answers 503, the growing back-off otherwise.
fn retry_delay(backoff: &mut Backoff, was_open: bool, status: Option<StatusCode>) -> Duration {
    if was_open {
        backoff.reset();
    }
    match status {
        Some(StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN) => REFUSED_RETRY,
        Some(StatusCode::SERVICE_UNAVAILABLE) => backoff.next_delay().min(UNAVAILABLE_RETRY),
        _ => backoff.next_delay(),
    }
}

/// Reads one stream until it ends, fails or falls silent.
async fn read(
    mut body: hyper::body::Incoming,
    agent: AgentId,
    tunnels: &Tunnels,
) -> Result<std::convert::Infallible, StreamEnd> {
    let mut parser = sse::Parser::new();
    let mut events = Vec::new();
    loop {
        let frame = tokio::time::timeout(SILENCE, body.frame())
            .await
            .map_err(|_| StreamEnd::Silent)?
            .ok_or(StreamEnd::Closed)?
            .map_err(|e| StreamEnd::Read(e.to_string()))?;
        let Ok(data) = frame.into_data() else {
            continue; // trailers
        };
        parser.feed(&data, &mut events)?;
        for event in events.drain(..) {
            handle(event, agent, tunnels);
        }
    }
}

/// Acts on one event.
fn handle(event: sse::Event, agent: AgentId, tunnels: &Tunnels) {
    if event.event != "dial" {
        tracing::debug!(event = %event.event, "unknown command stream event ignored");
        return;
    }
    let cmd: DialCommand = match serde_json::from_str(&event.data) {
        Ok(cmd) => cmd,
        Err(e) => {
            tracing::warn!(error = %e, "malformed dial command ignored");
            return;
        }
    };
    if cmd.agent != agent {
        tracing::warn!(for_agent = %cmd.agent, session = %cmd.session, "dial command for another agent ignored");
        return;
    }
    tracing::debug!(session = %cmd.session, resource = %cmd.resource, "dial command");
    tunnels.dispatch(cmd);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_api_that_was_there_is_asked_again_at_once() {
        let mut backoff = Backoff::new(BACKOFF_MIN, BACKOFF_MAX);
        // The API is down for a while: the back-off grows to its ceiling.
        for _ in 0..10 {
            retry_delay(&mut backoff, false, None);
        }
        assert!(retry_delay(&mut backoff, false, None) >= BACKOFF_MAX / 2);
        // Its Redis is down: asked again within 2 s however long it has been.
        assert!(
            retry_delay(&mut backoff, false, Some(StatusCode::SERVICE_UNAVAILABLE))
                <= UNAVAILABLE_RETRY
        );
        // A stream opened, then ended (the API restarted): back within a second.
        assert!(retry_delay(&mut backoff, true, None) <= BACKOFF_MIN);
        assert_eq!(
            retry_delay(&mut backoff, true, Some(StatusCode::FORBIDDEN)),
            REFUSED_RETRY
        );
    }
}

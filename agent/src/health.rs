//! The health listener: HTTP `/health` (the process is alive) and `/ready` (joined, command
//! stream connected, not draining), for probes only.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Probe requests served at once.
const MAX_CONNECTIONS: usize = 16;
/// Bound on how long a prober may take to send its request headers.
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);

/// What readiness is made of.
#[derive(Debug, Default)]
pub struct State {
    /// The agent has an identity.
    pub joined: AtomicBool,
    /// The command stream is open.
    pub connected: Arc<AtomicBool>,
    /// Shutdown has begun.
    pub draining: AtomicBool,
}

impl State {
    /// `Ok` when ready, else why not.
    fn readiness(&self) -> Result<(), &'static str> {
        if self.draining.load(Ordering::Acquire) {
            Err("draining")
        } else if !self.joined.load(Ordering::Acquire) {
            Err("not joined")
        } else if !self.connected.load(Ordering::Acquire) {
            Err("command stream not connected")
        } else {
            Ok(())
        }
    }
}

/// Serves probes on `listener` until `stop` is cancelled.
pub async fn serve(listener: TcpListener, state: Arc<State>, stop: CancellationToken) {
    let tracker = TaskTracker::new();
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Some(Ok(slot)) = stop
            .run_until_cancelled(slots.clone().acquire_owned())
            .await
        else {
            break;
        };
        let Some(accepted) = stop.run_until_cancelled(listener.accept()).await else {
            break;
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                tracing::debug!(error = %e, "health listener accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let state = state.clone();
        let stop = stop.clone();
        tracker.spawn(async move {
            let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                let response = respond(&req, &state);
                async move { Ok::<_, Infallible>(response) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .keep_alive(false)
                .serve_connection(TokioIo::new(stream), service);
            let _ = stop
                .run_until_cancelled(tokio::time::timeout(HEADER_TIMEOUT * 2, conn))
                .await;
            drop(slot);
        });
    }
    tracker.close();
    tracker.wait().await;
}

fn respond(req: &Request<Incoming>, state: &State) -> Response<Full<Bytes>> {
    let text = |status: StatusCode, body: &str| {
        let mut r = Response::new(Full::new(Bytes::from(format!("{body}\n"))));
        *r.status_mut() = status;
        r.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        r
    };
    if req.method() != Method::GET {
        return text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed");
    }
    match req.uri().path() {
        "/health" => text(StatusCode::OK, "ok"),
        "/ready" => match state.readiness() {
            Ok(()) => text(StatusCode::OK, "ready"),
            Err(why) => text(StatusCode::SERVICE_UNAVAILABLE, why),
        },
        _ => text(StatusCode::NOT_FOUND, "not found"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_needs_a_join_and_a_stream_and_ends_with_the_drain() {
        let state = State::default();
        assert_eq!(state.readiness(), Err("not joined"));
        state.joined.store(true, Ordering::Release);
        assert_eq!(state.readiness(), Err("command stream not connected"));
        state.connected.store(true, Ordering::Release);
        assert_eq!(state.readiness(), Ok(()));
        state.draining.store(true, Ordering::Release);
        assert_eq!(state.readiness(), Err("draining"));
    }
}

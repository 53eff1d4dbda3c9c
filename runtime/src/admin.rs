//! The admin listener of a BAMF process: `GET /health` (alive), `GET /ready` (should get new
//! work) and `GET /metrics` (Prometheus text), for probes and scrapers only.
//!
//! It is small on purpose: a few connections at once, a deadline on the request headers and
//! on the whole exchange, one request per connection, GET only.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper_util::rt::{TokioIo, TokioTimer};
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::accept::{self, Accept};

/// Requests served at once; the admin port is for probes and scrapers, not the public.
const MAX_CONNECTIONS: usize = 32;
/// Bound on how long a prober may take to send its request headers.
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// Bound on a whole exchange: headers, then rendering and writing the answer.
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(10);
/// Histograms are summarised lazily; upkeep at this period keeps their memory bounded.
const UPKEEP_PERIOD: Duration = Duration::from_secs(5);

const PLAIN: &str = "text/plain; charset=utf-8";
const PROMETHEUS: &str = "text/plain; version=0.0.4; charset=utf-8";

/// What the admin listener serves.
#[derive(Clone)]
pub struct Admin {
    ready: Arc<dyn Fn() -> Result<(), &'static str> + Send + Sync>,
    metrics: Option<PrometheusHandle>,
}

impl std::fmt::Debug for Admin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admin")
            .field("metrics", &self.metrics.is_some())
            .finish_non_exhaustive()
    }
}

impl Admin {
    /// Serves `/ready` from `ready`, which says whether the process should get new work:
    /// `Ok`, or why not (the body of the 503, such as `"draining"`). It runs on every probe,
    /// so it must be cheap (read a flag or two). `/metrics` renders `metrics` when given (404
    /// without).
    pub fn new(
        ready: impl Fn() -> Result<(), &'static str> + Send + Sync + 'static,
        metrics: Option<PrometheusHandle>,
    ) -> Self {
        Self {
            ready: Arc::new(ready),
            metrics,
        }
    }

    /// Serves on `listener` until `stop`, then waits for the requests in flight (each is
    /// bounded by `EXCHANGE_TIMEOUT`). The caller logs the address, under its own name for
    /// the listener.
    pub async fn serve(self, listener: TcpListener, stop: CancellationToken) {
        let tasks = TaskTracker::new();
        if let Some(handle) = self.metrics.clone() {
            let stop = stop.clone();
            tasks.spawn(async move {
                let mut tick = tokio::time::interval(UPKEEP_PERIOD);
                while stop.run_until_cancelled(tick.tick()).await.is_some() {
                    handle.run_upkeep();
                }
            });
        }
        let accept = Accept {
            stop: stop.clone(),
            tasks: tasks.clone(),
            slots: Some(Arc::new(Semaphore::new(MAX_CONNECTIONS))),
        };
        let admin = Arc::new(self);
        accept::serve(
            listener,
            accept,
            |_| {},
            |stream, _| {
                let admin = admin.clone();
                let stop = stop.clone();
                Some(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let response = admin.respond(&req);
                        async move { Ok::<_, Infallible>(response) }
                    });
                    let conn = hyper::server::conn::http1::Builder::new()
                        .timer(TokioTimer::new())
                        .header_read_timeout(HEADER_TIMEOUT)
                        .keep_alive(false)
                        .serve_connection(TokioIo::new(stream), service);
                    // A prober that stops reading is cut at the deadline; its error is its own.
                    let _ = stop
                        .run_until_cancelled(tokio::time::timeout(EXCHANGE_TIMEOUT, conn))
                        .await;
                })
            },
        )
        .await;
        tasks.close();
        tasks.wait().await;
    }

    fn respond(&self, req: &Request<Incoming>) -> Response<Full<Bytes>> {
        if req.method() != Method::GET {
            return text(
                StatusCode::METHOD_NOT_ALLOWED,
                "method not allowed\n",
                PLAIN,
            );
        }
        match req.uri().path() {
            "/health" => text(StatusCode::OK, "ok\n", PLAIN),
            "/ready" => match (self.ready)() {
                Ok(()) => text(StatusCode::OK, "ready\n", PLAIN),
                Err(why) => text(StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n"), PLAIN),
            },
            "/metrics" => match &self.metrics {
                Some(h) => text(StatusCode::OK, h.render(), PROMETHEUS),
                None => text(StatusCode::NOT_FOUND, "metrics are not enabled\n", PLAIN),
            },
            _ => text(StatusCode::NOT_FOUND, "not found\n", PLAIN),
        }
    }
}

fn text(
    status: StatusCode,
    body: impl Into<Bytes>,
    content_type: &'static str,
) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(content_type),
    );
    r
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    async fn get(addr: std::net::SocketAddr, request: &str) -> String {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(request.as_bytes()).await.unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    }

    #[tokio::test]
    async fn health_readiness_and_method_rules() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let draining = Arc::new(AtomicBool::new(false));
        let flag = draining.clone();
        let admin = Admin::new(
            move || {
                if flag.load(Ordering::Acquire) {
                    Err("draining")
                } else {
                    Ok(())
                }
            },
            None,
        );
        let stop = CancellationToken::new();
        let served = tokio::spawn(admin.serve(listener, stop.clone()));
        let req = |path: &str| format!("GET {path} HTTP/1.1\r\nhost: x\r\n\r\n");
        assert!(get(addr, &req("/health")).await.starts_with("HTTP/1.1 200"));
        let ready = get(addr, &req("/ready")).await;
        assert!(ready.starts_with("HTTP/1.1 200") && ready.ends_with("ready\n"));
        draining.store(true, Ordering::Release);
        let ready = get(addr, &req("/ready")).await;
        assert!(ready.starts_with("HTTP/1.1 503") && ready.ends_with("draining\n"));
        assert!(
            get(addr, &req("/metrics"))
                .await
                .starts_with("HTTP/1.1 404")
        );
        let post = get(
            addr,
            "POST /health HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\n\r\n",
        )
        .await;
        assert!(post.starts_with("HTTP/1.1 405"), "{post}");
        stop.cancel();
        served.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_prober_is_cut_at_the_header_deadline() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = CancellationToken::new();
        tokio::spawn(Admin::new(|| Ok(()), None).serve(listener, stop.clone()));
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /hea").await.unwrap();
        let started = tokio::time::Instant::now();
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out).await;
        assert!(
            started.elapsed() <= EXCHANGE_TIMEOUT,
            "{:?}",
            started.elapsed()
        );
        stop.cancel();
    }
}

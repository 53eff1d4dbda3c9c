//! Presence: the agent reports its whole resource catalog to the API on an interval the API
//! sets (design: every 15 s, kept online for 45 s), so a lost report or an API restart costs
//! nothing durable.

use std::sync::Arc;
use std::time::Duration;

use bamf_proto::api::{AgentHeartbeat, ReportedResource};
use http::StatusCode;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::enroll::{Tls, millis};
use crate::tunnel::Tunnels;
use bamf_client::backoff::Backoff;

/// Until the API says otherwise.
const DEFAULT_INTERVAL: Duration = Duration::from_secs(15);
/// Bounds on the interval the API asks for: never hammer it, never outlive the presence TTL
/// by much.
const MIN_INTERVAL: Duration = Duration::from_secs(1);
const MAX_INTERVAL: Duration = Duration::from_secs(300);

/// The heartbeat body: every resource with its kind and labels.
pub fn catalog(config: &Config) -> AgentHeartbeat {
    AgentHeartbeat {
        sessions: Vec::new(),
        resources: config
            .resources
            .iter()
            .map(|r| ReportedResource {
                name: r.name.as_str().to_owned(),
                kind: r.kind,
                labels: r.labels.clone(),
            })
            .collect(),
    }
}

/// Reports the catalog and the sessions served until `stop` is cancelled, and ends the
/// sessions the API answers are over. Failures are retried sooner (back-off from one second
/// up to the interval); a refusal (401/403) means the agent was revoked or deleted.
pub async fn report_forever(
    config: Arc<Config>,
    tls: watch::Receiver<Arc<Tls>>,
    tunnels: Tunnels,
    stop: CancellationToken,
) {
    let mut body = catalog(&config);
    let mut interval = DEFAULT_INTERVAL;
    let mut backoff = Backoff::new(Duration::from_secs(1), interval);
    let mut ignored: Option<Vec<String>> = None;
    let mut healthy = None;
    loop {
        let api = tls.borrow().api.clone();
        body.sessions = tunnels.sessions().iter().map(ToString::to_string).collect();
        let Some(result) = stop.run_until_cancelled(api.agent_heartbeat(&body)).await else {
            return;
        };
        let delay = match result {
            Ok(answer) => {
                tunnels.end(&answer.end);
                interval =
                    Duration::from_millis(answer.interval_ms).clamp(MIN_INTERVAL, MAX_INTERVAL);
                backoff = Backoff::new(Duration::from_secs(1), interval);
                let now_ignored = answer.ignored;
                if ignored.as_ref() != Some(&now_ignored) && !now_ignored.is_empty() {
                    tracing::warn!(
                        ignored = ?now_ignored,
                        "the API ignored resources whose names another agent serves"
                    );
                }
                ignored = Some(now_ignored);
                if healthy != Some(true) {
                    tracing::info!(
                        resources = config.resources.len(),
                        interval_s = interval.as_secs(),
                        "resources reported"
                    );
                }
                healthy = Some(true);
                backoff.reset();
                interval
            }
            Err(e) => {
                let delay = backoff.next_delay();
                if matches!(
                    e.status(),
                    Some(StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN)
                ) {
                    tracing::error!(
                        error = %e,
                        retry_in_ms = millis(delay),
                        "heartbeat refused: this agent was revoked or deleted"
                    );
                } else if healthy != Some(false) {
                    tracing::warn!(error = %e, retry_in_ms = millis(delay), "heartbeat failed");
                } else {
                    tracing::debug!(error = %e, retry_in_ms = millis(delay), "heartbeat failed");
                }
                healthy = Some(false);
                delay
            }
        };
        if stop
            .run_until_cancelled(tokio::time::sleep(delay))
            .await
            .is_none()
        {
            return;
        }
    }
}

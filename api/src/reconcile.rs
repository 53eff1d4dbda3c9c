//! Sessions of bridges that are gone (see [`crate::placement`] for how a death is noticed):
//! the one task that reads lost bridges and silent heartbeats and detaches their sessions
//! (or ends those that never paired `bridge_lost`), and ends `resume_timeout` the detached
//! sessions whose sides did not attach again in time.

use std::sync::Arc;
use std::time::Duration;

use crate::context::AppState;
use crate::now_ms;
use crate::placement::{BRIDGE_HEARTBEAT, BRIDGE_TTL, LOST_GRACE};

/// The agent reports a session's end itself when it gives up waiting; the API waits this
/// much longer before it ends the session on its own.
const AGENT_REPORT_GRACE: Duration = Duration::from_secs(5);

/// Loses the sessions of lost bridges, until shutdown: those whose control stream ended
/// (after [`LOST_GRACE`], unless the bridge heartbeated since), and every heartbeat
/// interval those of bridges silent for the TTL; every second, ends the detached sessions
/// past the resume deadline.
pub async fn run(state: Arc<AppState>) {
    let mut sweep = tokio::time::interval(BRIDGE_HEARTBEAT);
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut detached = tokio::time::interval(Duration::from_secs(1));
    detached.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Heartbeats cannot be recorded while the store is down: a bridge counts as silent only
    // once the store has answered for a whole TTL.
    let mut store_up_since: Option<tokio::time::Instant> = None;
    loop {
        tokio::select! {
            () = state.shutdown.cancelled() => return,
            _ = detached.tick() => {
                let before = now_ms() - millis(state.resume_deadline + AGENT_REPORT_GRACE);
                match state.store.end_detached(before, now_ms()).await {
                    Ok(ended) if !ended.is_empty() => {
                        tracing::warn!(sessions = ?ended, "sessions ended: their sides did not attach again in time");
                    }
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "ending timed-out detached sessions failed"),
                }
            }
            _ = sweep.tick() => {
                if state.store.ping().await.is_err() {
                    store_up_since = None;
                    continue;
                }
                if store_up_since.get_or_insert_with(tokio::time::Instant::now).elapsed() < BRIDGE_TTL {
                    continue;
                }
                let silent_since = now_ms() - millis(BRIDGE_TTL);
                match state.store.end_sessions_of_silent_bridges(silent_since, now_ms()).await {
                    Ok(lost) if !lost.is_empty() => {
                        tracing::warn!(sessions = ?lost, "sessions lost their bridge (it stopped heartbeating): detached");
                    }
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "reconciling sessions of silent bridges failed"),
                }
            }
            () = state.lost_bridges.added.notified() => {
                for (ordinal, at_ms) in state.lost_bridges.take() {
                    // No new session goes there from now on.
                    if let Err(e) = state.presence.forget_bridge(ordinal).await {
                        tracing::warn!(bridge = ordinal, error = %e, "forgetting a lost bridge failed");
                    }
                    tracing::warn!(bridge = ordinal, "bridge control stream ended: no new sessions placed there");
                    let state = state.clone();
                    tokio::spawn(async move {
                        tokio::select! {
                            () = state.shutdown.cancelled() => {}
                            () = tokio::time::sleep(LOST_GRACE) => {
                                end_if_still_gone(&state, ordinal, at_ms).await;
                            }
                        }
                    });
                }
            }
        }
    }
}

async fn end_if_still_gone(state: &AppState, ordinal: u32, lost_at_ms: i64) {
    match state
        .store
        .end_sessions_of_lost_bridge(ordinal, lost_at_ms, now_ms())
        .await
    {
        Ok(lost) if !lost.is_empty() => {
            tracing::warn!(bridge = ordinal, sessions = ?lost, "sessions lost their bridge (it is gone): detached");
        }
        Ok(_) => {}
        Err(e) => {
            tracing::warn!(bridge = ordinal, error = %e, "ending a lost bridge's sessions failed")
        }
    }
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

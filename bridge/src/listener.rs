//! Accept loops: one per listener, sharing one connection limit.

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::frontdoor::{self, Shared};
use crate::metrics;
use crate::route::Entry;

/// First pause after an accept error; doubles while errors continue.
const BACKOFF_START: Duration = Duration::from_millis(1);
/// Longest pause: out of file descriptors usually clears within a second as connections end.
const BACKOFF_MAX: Duration = Duration::from_secs(1);

/// Accepts until `stop`, each connection holding one slot of `slots` for its lifetime.
///
/// The slot is taken *before* accepting: at the limit, new connections wait in the kernel's
/// accept queue instead of being accepted and dropped.
pub(crate) async fn accept_loop(
    listener: TcpListener,
    entry: Entry,
    shared: Arc<Shared>,
    slots: Arc<Semaphore>,
    connections: TaskTracker,
    stop: CancellationToken,
) {
    let mut backoff = BACKOFF_START;
    loop {
        let Some(Ok(permit)) = stop
            .run_until_cancelled(slots.clone().acquire_owned())
            .await
        else {
            return;
        };
        let Some(accepted) = stop.run_until_cancelled(listener.accept()).await else {
            return;
        };
        match accepted {
            Ok((stream, peer)) => {
                backoff = BACKOFF_START;
                let shared = shared.clone();
                connections.spawn(async move {
                    frontdoor::serve(stream, peer, entry, shared).await;
                    drop(permit);
                });
            }
            Err(e) => {
                // EMFILE and friends: retrying at once would spin. Back off and keep serving.
                metrics::accept_error(entry);
                if backoff == BACKOFF_START {
                    tracing::warn!(listener = entry.as_str(), error = %e, "accept failed; backing off");
                }
                drop(permit);
                if stop
                    .run_until_cancelled(tokio::time::sleep(backoff))
                    .await
                    .is_none()
                {
                    return;
                }
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
        }
    }
}

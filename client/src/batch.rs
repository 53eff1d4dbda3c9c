//! What bridges and agents tell the API about sessions (starts, ends, byte counts), sent in
//! batches: the first event of a batch waits a moment for others to go with it, so a busy
//! bridge or agent makes one request, and the API one write, for many sessions. A batch the
//! API cannot take now is retried with jittered back-off until it can; the queue in front
//! is the caller's bounded channel.

use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::https::HttpsError;

/// How events are grouped and retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Batching {
    /// Events per request at most.
    pub max: usize,
    /// How long the first event of a batch waits for others.
    pub linger: Duration,
    /// Back-off bounds between attempts while the API is unavailable.
    pub retry: (Duration, Duration),
}

/// Sends what arrives on `events` through `send`, in batches (see [`Batching`]), until
/// `events` closes; `what` names the events in logs. `send` gets the batch and gives it
/// back with how its request went. A batch the API refuses (4xx: retrying cannot help) is
/// dropped and logged; other failures are retried.
///
/// At `stop`, what is queued is still sent (the caller bounds how long it waits), and a batch
/// waiting for its next attempt is given up.
pub async fn deliver<T, F>(
    what: &'static str,
    mut events: mpsc::Receiver<T>,
    stop: CancellationToken,
    batching: Batching,
    mut send: impl FnMut(Vec<T>) -> F,
) where
    F: Future<Output = (Vec<T>, Result<(), HttpsError>)>,
{
    let max = batching.max.max(1);
    let mut batch: Vec<T> = Vec::new();
    let mut failures = 0u32;
    let mut retry = Backoff::new(batching.retry.0, batching.retry.1);
    loop {
        if batch.is_empty() {
            tokio::select! {
                n = events.recv_many(&mut batch, max) => if n == 0 { return },
                () = stop.cancelled() => {
                    if events.is_empty() { return }
                    events.recv_many(&mut batch, max).await;
                }
            }
            let linger = tokio::time::sleep(batching.linger);
            tokio::pin!(linger);
            while batch.len() < max && !stop.is_cancelled() {
                let room = max - batch.len();
                tokio::select! {
                    n = events.recv_many(&mut batch, room) => if n == 0 { break },
                    () = &mut linger => break,
                    () = stop.cancelled() => break,
                }
            }
        }
        let (sent, result) = send(batch).await;
        batch = sent;
        match result {
            Ok(()) => {
                if failures > 0 {
                    tracing::info!(
                        what,
                        events = batch.len(),
                        failures,
                        "delivered after failures"
                    );
                }
                batch.clear();
                failures = 0;
                retry.reset();
            }
            Err(e) if e.status().is_some_and(|s| s.is_client_error()) => {
                tracing::error!(what, error = %e, events = batch.len(), "the API refused them; dropped");
                batch.clear();
            }
            Err(e) => {
                failures += 1;
                if failures == 1 || failures.is_multiple_of(10) {
                    tracing::warn!(what, error = %e, failures, queued = batch.len() + events.len(), "the API is unavailable; will retry");
                }
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(retry.next_delay()) => {}
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use http::StatusCode;

    use super::*;

    const BATCHING: Batching = Batching {
        max: 3,
        linger: Duration::from_millis(50),
        retry: (Duration::from_millis(100), Duration::from_millis(100)),
    };

    fn status(status: StatusCode) -> HttpsError {
        HttpsError::Status {
            status,
            code: "x".into(),
            message: "x".into(),
            request_id: None,
        }
    }

    /// Runs `deliver` over `events` with answers taken from `answers` in turn (then `Ok`);
    /// returns the batches `send` saw.
    async fn run(
        events: Vec<u32>,
        answers: Vec<Result<(), HttpsError>>,
        stop: CancellationToken,
    ) -> Vec<Vec<u32>> {
        let (tx, rx) = mpsc::channel(16);
        for e in events {
            tx.send(e).await.unwrap_or_default();
        }
        drop(tx);
        let seen = Arc::new(Mutex::new(Vec::new()));
        let answers = Mutex::new(answers.into_iter());
        let log = seen.clone();
        deliver("test", rx, stop, BATCHING, |batch: Vec<u32>| {
            log.lock()
                .map(|mut l| l.push(batch.clone()))
                .unwrap_or_default();
            let answer = answers.lock().ok().and_then(|mut a| a.next());
            std::future::ready((batch, answer.unwrap_or(Ok(()))))
        })
        .await;
        seen.lock().map(|s| s.clone()).unwrap_or_default()
    }

    #[tokio::test(start_paused = true)]
    async fn events_go_in_batches_of_at_most_max_in_order() {
        let seen = run(vec![1, 2, 3, 4, 5], vec![], CancellationToken::new()).await;
        assert_eq!(seen, vec![vec![1, 2, 3], vec![4, 5]]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_batch_the_api_cannot_take_now_is_sent_again_and_a_refused_one_is_dropped() {
        let answers = vec![
            Err(status(StatusCode::SERVICE_UNAVAILABLE)),
            Err(HttpsError::Exchange("reset".into())),
            Ok(()),
            Err(status(StatusCode::BAD_REQUEST)),
        ];
        let seen = run(vec![1, 2, 3, 4], answers, CancellationToken::new()).await;
        assert_eq!(
            seen,
            vec![vec![1, 2, 3], vec![1, 2, 3], vec![1, 2, 3], vec![4]]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_first_event_waits_for_company_up_to_the_linger() {
        let (tx, rx) = mpsc::channel(16);
        let seen = Arc::new(Mutex::new(Vec::<(Vec<u32>, tokio::time::Instant)>::new()));
        let log = seen.clone();
        let started = tokio::time::Instant::now();
        let task = tokio::spawn(deliver(
            "test",
            rx,
            CancellationToken::new(),
            BATCHING,
            move |batch: Vec<u32>| {
                let at = tokio::time::Instant::now();
                log.lock()
                    .map(|mut l| l.push((batch.clone(), at)))
                    .unwrap_or_default();
                std::future::ready((batch, Ok(())))
            },
        ));
        tx.send(1).await.unwrap_or_default();
        tokio::time::sleep(Duration::from_millis(20)).await;
        tx.send(2).await.unwrap_or_default();
        tokio::time::sleep(Duration::from_millis(100)).await;
        tx.send(3).await.unwrap_or_default();
        drop(tx);
        task.await.unwrap_or_default();
        let seen = seen.lock().map(|s| s.clone()).unwrap_or_default();
        let batches: Vec<_> = seen.iter().map(|(b, _)| b.clone()).collect();
        assert_eq!(batches, vec![vec![1, 2], vec![3]]);
        assert_eq!(seen[0].1 - started, BATCHING.linger);
    }

    #[tokio::test(start_paused = true)]
    async fn at_stop_what_is_queued_still_goes_but_a_failing_batch_is_given_up() {
        let stop = CancellationToken::new();
        stop.cancel();
        let seen = run(vec![1, 2, 3, 4], vec![], stop.clone()).await;
        assert_eq!(seen, vec![vec![1, 2, 3], vec![4]], "no linger at stop");
        let failing = vec![Err(status(StatusCode::SERVICE_UNAVAILABLE))];
        let seen = run(vec![1], failing, stop).await;
        assert_eq!(seen, vec![vec![1]], "not retried after stop");
    }
}

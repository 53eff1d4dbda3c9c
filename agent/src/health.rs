//! Readiness for the health listener: `/ready` is 200 once the agent has joined and its
//! command stream is connected, until shutdown begins. The listener itself (`/health`,
//! `/ready`, `/metrics`) is [`bamf_runtime::admin`].

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bamf_runtime::admin::Admin;
use metrics_exporter_prometheus::PrometheusHandle;

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
    pub fn readiness(&self) -> Result<(), &'static str> {
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

/// The health listener's service: readiness from `state`, metrics from `metrics`.
pub fn admin(state: Arc<State>, metrics: Option<PrometheusHandle>) -> Admin {
    Admin::new(move || state.readiness(), metrics)
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

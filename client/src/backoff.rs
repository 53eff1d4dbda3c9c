//! Exponential back-off with jitter, for everything agents and bridges retry against the API.
//!
//! A fleet of agents (or a StatefulSet of bridges) that lost the API at the same moment must not come back in lock-step,
//! so each delay is drawn between half the current step and the full step ("equal jitter":
//! never shorter than half, so a flapping API still gets breathing room).

use std::time::Duration;

/// Doubling delays from `initial` up to `max`, each jittered.
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    step: Duration,
}

impl Backoff {
    /// Starts at `initial`, doubles up to `max`.
    pub fn new(initial: Duration, max: Duration) -> Self {
        Self {
            initial,
            max,
            step: initial,
        }
    }

    /// The next delay, with fresh randomness.
    pub fn next_delay(&mut self) -> Duration {
        self.next_with(random_unit())
    }

    /// The next delay for `unit` in `[0, 1)`: between half the current step and the step.
    fn next_with(&mut self, unit: f64) -> Duration {
        let step = self.step;
        self.step = (self.step * 2).min(self.max);
        step.mul_f64(0.5 + unit.clamp(0.0, 1.0) / 2.0)
    }

    /// Back to the initial step (after a connection that lasted).
    pub fn reset(&mut self) {
        self.step = self.initial;
    }
}

/// A uniform number in `[0, 1)` from the system's random source (ring, already linked for
/// TLS). If the source fails, no jitter (0.5 of the range) is better than no retry.
fn random_unit() -> f64 {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 8];
    if ring::rand::SystemRandom::new().fill(&mut bytes).is_err() {
        return 0.5;
    }
    // 53 random bits make every representable value of the unit interval's grid.
    (u64::from_le_bytes(bytes) >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_to_the_cap_within_the_jitter_bounds() {
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(30));
        let steps = [1, 2, 4, 8, 16, 30, 30, 30];
        for (i, &step) in steps.iter().enumerate() {
            let step = Duration::from_secs(step);
            // Extremes of the unit interval, on two copies of the same state.
            let mut low = b.clone();
            assert_eq!(low.next_with(0.0), step / 2, "step {i}");
            let mut high = b.clone();
            assert_eq!(high.next_with(1.0), step, "step {i}");
            let d = b.next_delay();
            assert!(d >= step / 2 && d <= step, "step {i}: {d:?}");
        }
        b.reset();
        assert!(b.next_delay() <= Duration::from_secs(1));
    }

    #[test]
    fn random_units_stay_in_the_unit_interval_and_vary() {
        let draws: Vec<f64> = (0..64).map(|_| random_unit()).collect();
        assert!(draws.iter().all(|u| (0.0..1.0).contains(u)));
        assert!(draws.iter().any(|&u| u != draws[0]));
    }
}

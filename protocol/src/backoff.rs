//! How long to wait before trying again, the one formula every retry loop
//! uses (AWS calls, reconnects, reports that could not be applied): doubling
//! from `first`, capped, with "equal jitter" — half the step fixed, half
//! random — so that many workers retrying at once spread out, yet none
//! retries at once.

use std::time::Duration;

/// A retry policy: the first step and the longest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub first: Duration,
    pub cap: Duration,
}

impl Backoff {
    /// AWS calls: 100 ms doubling to 5 s.
    pub const AWS: Self = Self {
        first: Duration::from_millis(100),
        cap: Duration::from_secs(5),
    };
    /// Reconnecting to RabbitMQ or Redis, retrying a store update: 200 ms
    /// doubling to 5 s.
    pub const RECONNECT: Self = Self {
        first: Duration::from_millis(200),
        cap: Duration::from_secs(5),
    };

    /// The wait before retry `attempt` (0 = the first retry): between half
    /// and all of `first · 2^attempt`, at most `cap`.
    pub fn delay(self, attempt: u32) -> Duration {
        let step = self
            .first
            .saturating_mul(1u32 << attempt.min(16))
            .min(self.cap);
        step / 2 + (step / 2).mul_f64(fastrand::f64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_from_the_first_step_and_stop_at_the_cap() {
        let policy = Backoff::RECONNECT;
        for _ in 0..100 {
            let first = policy.delay(0);
            assert!(first >= Duration::from_millis(100) && first <= Duration::from_millis(200));
            let third = policy.delay(2);
            assert!(third >= Duration::from_millis(400) && third <= Duration::from_millis(800));
            for attempt in [10, 31, u32::MAX] {
                let capped = policy.delay(attempt);
                assert!(capped >= Duration::from_millis(2_500) && capped <= policy.cap);
            }
        }
    }
}

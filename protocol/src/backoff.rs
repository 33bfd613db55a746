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

/// The one rule of every reconnect loop (the scheduler's and the worker's):
/// back off further after each failure, and start over from the shortest
/// step only after a connection that lasted [`Reconnects::STABLE`].
/// Resetting on every successful connect would retry at once a connection
/// that keeps failing soon after it opens (a cluster electing new queue
/// leaders), and every reconnect hands the deliveries held back to the
/// queue, each return counting toward its delivery limit.
#[derive(Debug, Default)]
pub struct Reconnects {
    failures: u32,
}

impl Reconnects {
    /// A connection that lasted this long was a good one.
    pub const STABLE: Duration = Duration::from_secs(30);

    /// The wait before the next try: after connecting failed (`lasted`
    /// `None`), or after losing a connection that had lasted `lasted`.
    pub fn next_delay(&mut self, lasted: Option<Duration>) -> Duration {
        if lasted.is_some_and(|lasted| lasted >= Self::STABLE) {
            self.failures = 0;
        }
        let delay = Backoff::RECONNECT.delay(self.failures);
        self.failures = self.failures.saturating_add(1);
        delay
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connection_that_fails_soon_after_it_opened_backs_off_further_and_a_lasting_one_starts_over()
     {
        let cap = Backoff::RECONNECT.cap;
        let mut reconnects = Reconnects::default();
        for _ in 0..10 {
            // Connected, lost within a second: no reset.
            reconnects.next_delay(Some(Duration::from_secs(1)));
        }
        let delay = reconnects.next_delay(Some(Duration::from_secs(1)));
        assert!(delay >= cap / 2, "backed off to the cap: {delay:?}");
        let delay = reconnects.next_delay(Some(Reconnects::STABLE));
        assert!(
            delay <= Backoff::RECONNECT.first,
            "a lasting connection starts over: {delay:?}"
        );
        let delay = reconnects.next_delay(None);
        assert!(delay >= Backoff::RECONNECT.first / 2 && delay <= Backoff::RECONNECT.first * 2);
    }

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

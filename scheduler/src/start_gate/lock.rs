//! One start of a campaign passes the gate at a time: a short lock in Redis
//! (`SET NX PX`), waited for a few seconds (an event burst starts one
//! campaign many times at once), expiring by itself if its holder dies.

use std::time::Duration;

use uuid::Uuid;

use crate::{Scheduler, SchedulerError};

/// Deletes the lock only while it holds the caller's value.
static RELEASE: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| {
    redis::Script::new(
        "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0",
    )
});

/// How long one start holds its campaign's start lock at most.
const START_LOCK: Duration = Duration::from_secs(30);
/// How long a start waits for another start of the same campaign to pass
/// the gate.
const START_LOCK_WAIT: Duration = Duration::from_secs(5);

impl Scheduler {
    /// Takes the campaign's start lock, waiting a few seconds for another
    /// start of it; the lock's value, to release it.
    pub(super) async fn take_start_lock(&self, campaign: &str) -> Result<String, SchedulerError> {
        let key = self.ledger().names().campaign_start_lock_key(campaign);
        let value = Uuid::new_v4().to_string();
        let deadline = tokio::time::Instant::now() + START_LOCK_WAIT;
        loop {
            let mut connection = self.ledger().connection();
            let taken: Option<String> = redis::cmd("SET")
                .arg(&key)
                .arg(&value)
                .arg("NX")
                .arg("PX")
                .arg(u64::try_from(START_LOCK.as_millis()).unwrap_or(u64::MAX))
                .query_async(&mut connection)
                .await?;
            if taken.is_some() {
                return Ok(value);
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(SchedulerError::StartBusy(format!(
                    "another start of campaign {campaign} is passing the start gate; try again in a moment"
                )));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Releases the lock if it is still ours, in one step (a lock that
    /// expired and was taken by another start is not removed); it expires
    /// by itself anyway.
    pub(super) async fn release_start_lock(&self, campaign: &str, value: &str) {
        let key = self.ledger().names().campaign_start_lock_key(campaign);
        let mut connection = self.ledger().connection();
        let released: Result<u8, _> = RELEASE
            .key(&key)
            .arg(value)
            .invoke_async(&mut connection)
            .await;
        if let Err(error) = released {
            tracing::warn!(campaign, error = %error, "start lock not released; it expires by itself");
        }
    }
}

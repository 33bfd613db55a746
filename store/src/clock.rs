//! Keeping a service on the clock every flotilla service shares: Redis's.
//! Hosts' clocks disagree (by seconds, or by minutes on a host whose NTP is
//! broken), and flotilla compares times one process wrote with times another
//! reads: a send's poll deadline, a send claim's age, a message's signature
//! time, a maintenance window's edges and freezes. So each worker and
//! scheduler measures how far its host's clock is off Redis's `TIME` and
//! sets `protocol::clock`'s offset, which every `UnixMillis::now` adds —
//! once before it starts work, then every [`RESYNC_EVERY`].
//!
//! In a Redis Cluster the node that answers `TIME` is any one of them (they
//! keep their own clocks, NTP-synchronised like any server); token buckets
//! already read `TIME` of their key's node in their script.

use std::time::Duration;

use crate::{Store, StoreError};

/// How often the offset is measured again (clocks drift; NTP steps them).
pub const RESYNC_EVERY: Duration = Duration::from_secs(30);

/// A slower answer says too little about when Redis read its clock: the
/// measurement is dropped and the offset kept.
const MAX_ROUND_TRIP_MS: u64 = 500;

/// Past this difference a host's clock is worth an operator's look.
const WARN_OFF_MS: u64 = 1_000;

/// Measures how far this host's clock is off Redis's and sets it as the
/// process's offset. `Ok(None)`: nothing to correct (the in-memory store runs
/// on this host's clock) or the answer came too slowly to trust.
pub async fn sync<S: Store>(store: &S) -> Result<Option<i64>, StoreError> {
    let sent = protocol::clock::host_now_ms();
    let Some(server) = store.server_time_ms().await? else {
        return Ok(None);
    };
    let received = protocol::clock::host_now_ms();
    let round_trip = received.saturating_sub(sent);
    if round_trip > MAX_ROUND_TRIP_MS {
        tracing::debug!(round_trip, "clock: Redis answered too slowly to measure");
        return Ok(None);
    }
    // Redis read its clock about half-way through the round trip.
    let midpoint = sent.saturating_add(round_trip / 2);
    let offset = i64::try_from(server)
        .unwrap_or(i64::MAX)
        .saturating_sub(i64::try_from(midpoint).unwrap_or(i64::MAX));
    let before = protocol::clock::offset_ms();
    protocol::clock::set_offset_ms(offset);
    if offset.unsigned_abs() > WARN_OFF_MS && before.abs_diff(offset) > WARN_OFF_MS {
        tracing::warn!(
            offset_ms = offset,
            "this host's clock is off Redis's by more than a second; flotilla keeps Redis's time (fix the host's NTP)"
        );
    }
    Ok(Some(offset))
}

/// [`sync`] every [`RESYNC_EVERY`], forever (a service syncs once itself
/// before it starts work). A failed measurement keeps the last offset: Redis
/// unreachable stops sends on its own (every gate reads Redis and fails
/// closed).
pub async fn keep_in_step<S: Store>(store: S) {
    loop {
        tokio::time::sleep(RESYNC_EVERY).await;
        if let Err(error) = sync(&store).await {
            tracing::debug!(%error, "clock: could not read Redis's time; keeping the offset");
        }
    }
}

/// A service's first [`sync`], before it starts work; an error is logged and
/// the host's clock used until the next one.
pub async fn sync_at_start<S: Store>(store: &S) {
    match sync(store).await {
        Ok(Some(offset)) => tracing::info!(offset_ms = offset, "clock: on Redis's time"),
        Ok(None) => {}
        Err(error) => {
            tracing::warn!(%error, "clock: could not read Redis's time yet; on this host's clock until it can")
        }
    }
}

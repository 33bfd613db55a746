//! Keeping a service on the clock every flotilla service shares: Redis's.
//! Hosts' clocks disagree (by seconds, or by minutes on a host whose NTP is
//! broken), and flotilla compares times one process wrote with times another
//! reads: a send's poll deadline, a send claim's age, a message's signature
//! time, a maintenance window's edges and freezes. So each worker and
//! scheduler measures how far its host's clock is off Redis's `TIME` and
//! sets `protocol::clock`'s offset, which every `UnixMillis::now` adds —
//! once before it starts work, then every [`RESYNC_EVERY`] (every
//! [`RETRY_EVERY`] until a first measurement succeeds).
//!
//! In a Redis Cluster the node that answers `TIME` is any one of them (they
//! keep their own clocks, NTP-synchronised like any server); token buckets
//! already read `TIME` of their key's node in their script.

use std::time::{Duration, Instant};

use crate::{Store, StoreError};

/// How often the offset is measured again (clocks drift; NTP steps them).
pub const RESYNC_EVERY: Duration = Duration::from_secs(30);

/// How often a service that has not measured its offset yet tries again.
pub const RETRY_EVERY: Duration = Duration::from_secs(1);

/// A slower answer says too little about when Redis read its clock (it is
/// known to half the round trip): the measurement is dropped.
const MAX_ROUND_TRIP: Duration = Duration::from_millis(200);

/// Past this difference a host's clock is worth an operator's look.
const WARN_OFF_MS: u64 = 1_000;

/// What one measurement found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Measured {
    /// The shared clock is this many ms ahead of the host's (negative:
    /// behind); set as the process's offset.
    Offset(i64),
    /// The store runs on this host's clock (in memory): nothing to correct.
    HostClock,
    /// Redis answered too slowly (this round trip) to say when it read its
    /// clock; the offset is kept.
    TooSlow(Duration),
}

/// Measures how far this host's clock is off Redis's and sets it as the
/// process's offset.
pub async fn sync<S: Store>(store: &S) -> Result<Measured, StoreError> {
    let sent = protocol::clock::host_now_ms();
    let started = Instant::now();
    let Some(server) = store.server_time_ms().await? else {
        return Ok(Measured::HostClock);
    };
    let round_trip = started.elapsed();
    if round_trip > MAX_ROUND_TRIP {
        return Ok(Measured::TooSlow(round_trip));
    }
    // Redis read its clock about half-way through the round trip (measured
    // on the monotonic clock: the wall clock may step meanwhile).
    let half = u64::try_from(round_trip.as_millis() / 2).unwrap_or(0);
    let midpoint = sent.saturating_add(half);
    let offset = i64::try_from(server)
        .unwrap_or(i64::MAX)
        .saturating_sub(i64::try_from(midpoint).unwrap_or(i64::MAX));
    let before = protocol::clock::measured().then(protocol::clock::offset_ms);
    protocol::clock::set_offset_ms(offset);
    let newly_off = before.is_none_or(|before| before.abs_diff(offset) > WARN_OFF_MS);
    if offset.unsigned_abs() > WARN_OFF_MS && newly_off {
        tracing::warn!(
            offset_ms = offset,
            "clock: this host's clock is off Redis's by more than a second; flotilla keeps Redis's time (fix the host's NTP)"
        );
    }
    Ok(Measured::Offset(offset))
}

/// A service's first [`sync`], before it starts work. Without an answer it
/// says so and goes on with the host's clock; [`keep_in_step`] tries again
/// every [`RETRY_EVERY`].
pub async fn sync_at_start<S: Store>(store: &S) {
    match sync(store).await {
        Ok(Measured::Offset(offset)) => {
            tracing::info!(offset_ms = offset, "clock: on Redis's time");
        }
        Ok(Measured::HostClock) => {}
        Ok(Measured::TooSlow(round_trip)) => tracing::warn!(
            ?round_trip,
            "clock: Redis answered too slowly to measure this host's offset; on this host's clock until it can"
        ),
        Err(error) => tracing::warn!(
            %error,
            "clock: cannot read Redis's time yet; on this host's clock until it can"
        ),
    }
}

/// [`sync`] forever (this future never completes): every [`RETRY_EVERY`]
/// until a measurement succeeds, then every [`RESYNC_EVERY`]. A failed one keeps the last offset: Redis
/// unreachable stops sends on its own (every gate reads Redis and fails
/// closed).
pub async fn keep_in_step<S: Store>(store: S) {
    loop {
        let every = if protocol::clock::measured() {
            RESYNC_EVERY
        } else {
            RETRY_EVERY
        };
        tokio::time::sleep(every).await;
        match sync(&store).await {
            Ok(Measured::Offset(offset)) => tracing::debug!(offset_ms = offset, "clock: measured"),
            // Nothing to keep in step; and never return (services select
            // on this beside their work).
            Ok(Measured::HostClock) => std::future::pending::<()>().await,
            Ok(Measured::TooSlow(round_trip)) => {
                tracing::debug!(?round_trip, "clock: Redis answered too slowly to measure");
            }
            Err(error) => {
                tracing::debug!(%error, "clock: cannot read Redis's time; keeping the offset");
            }
        }
    }
}

//! flotilla's wall clock: this host's, corrected to the one clock every
//! service shares — Redis's (`TIME`). Hosts' clocks disagree by seconds, and a
//! host with a broken NTP by minutes; flotilla compares times written by one
//! process with times read by another (a send's deadline, a claim's age, a
//! message's signature time, a window's end), so each service measures how
//! far its host is off Redis (`store::clock`) and every
//! [`UnixMillis::now`](crate::job::UnixMillis::now) adds that offset. A
//! process that never measured (the CLI, the in-memory backend, which runs on
//! this host's clock) reads its host's clock unchanged.

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};

/// Milliseconds to add to this host's clock to read the shared one.
static OFFSET_MS: AtomicI64 = AtomicI64::new(0);
/// Whether [`OFFSET_MS`] was measured (else it is 0: the host's clock).
static MEASURED: AtomicBool = AtomicBool::new(false);

/// How far the shared clock is ahead of this host's (negative: behind), in ms.
pub fn offset_ms() -> i64 {
    OFFSET_MS.load(Ordering::Relaxed)
}

/// Sets how far the shared clock is ahead of this host's, in ms (measured).
pub fn set_offset_ms(offset: i64) {
    OFFSET_MS.store(offset, Ordering::Relaxed);
    MEASURED.store(true, Ordering::Relaxed);
}

/// Whether this process measured its offset yet.
pub fn measured() -> bool {
    MEASURED.load(Ordering::Relaxed)
}

/// This host's clock, uncorrected: Unix ms (0 for a clock set before 1970).
pub fn host_now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// The shared clock now: this host's, corrected by [`offset_ms`].
pub fn now_ms() -> u64 {
    corrected(host_now_ms(), offset_ms())
}

/// [`now_ms`] as a UTC date-time (the Unix epoch if out of chrono's range).
pub fn now_utc() -> chrono::DateTime<chrono::Utc> {
    i64::try_from(now_ms())
        .ok()
        .and_then(chrono::DateTime::from_timestamp_millis)
        .unwrap_or_default()
}

fn corrected(host_ms: u64, offset_ms: i64) -> u64 {
    host_ms.saturating_add_signed(offset_ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_offset_corrects_the_host_clock_both_ways() {
        let host = 1_800_000_000_000;
        assert_eq!(corrected(host, -300_000), host - 300_000);
        assert_eq!(corrected(host, 300_000), host + 300_000);
        assert_eq!(corrected(0, -1), 0, "never before 1970");
        assert_eq!(corrected(u64::MAX, 1), u64::MAX);
    }
}

//! Why a run's jobs wait here, told to the scheduler for `run show` and
//! the console: sends held back by a gate (a kill switch, a pause, a
//! window) and jobs retrying after an error, with the cause and the next try.
//!
//! Noted only when a job waits for a gate or retries — never on a job that
//! goes through — and written in one Redis round trip per run every
//! [`FLUSH_EVERY`], whatever the number of jobs: a kill switch holding
//! thousands of batches costs Redis a few writes a second, not thousands.
//! Each note carries its own end (`until`), so a note of a job that has since
//! been sent, or of a worker that died, reads as stale within seconds without
//! anyone deleting it; the key expires [`NOTES_TTL`] after the last write.
//! A rate-limited job is not noted: waiting for tokens is the pace the
//! campaign asked for, not a hold.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use protocol::job::ExecuteJob;
use store::Store;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// How often the notes go to Redis.
pub const FLUSH_EVERY: Duration = Duration::from_secs(2);
/// How long a run's notes outlive the last write.
pub const NOTES_TTL: Duration = Duration::from_secs(120);
/// The longest cause kept in a note (errors can be long).
const MAX_CAUSE_CHARS: usize = 200;

/// The notes taken since the last flush, per run: field → value.
#[derive(Clone, Default)]
pub struct WaitNotes(Arc<Mutex<HashMap<Uuid, HashMap<String, String>>>>);

impl WaitNotes {
    /// An Execute job's send is held until about `until_ms` by `cause`.
    pub fn held(&self, job: &ExecuteJob, until_ms: u64, cause: &str) {
        let value = store::WaitNote::Held {
            until_ms,
            targets: u32::try_from(job.batch.instance_ids.len()).unwrap_or(u32::MAX),
            cause: bounded(cause),
        };
        self.put(job.run.run_id, format!("held:{}", job.job_id), value);
    }

    /// A job of `location` failed with `cause` and comes back at `next_ms`.
    pub fn retrying(&self, job: &protocol::Job, next_ms: u64, cause: &str) {
        let location = job.location();
        let value = store::WaitNote::Retrying {
            until_ms: next_ms,
            job: job.kind().to_string(),
            cause: bounded(cause),
        };
        self.put(
            job.run().run_id,
            format!("retry:{}/{}", location.account_id, location.region),
            value,
        );
    }

    fn put(&self, run_id: Uuid, field: String, note: store::WaitNote) {
        // A poisoned lock only loses notes: they are an explanation, never
        // a decision.
        if let Ok(mut notes) = self.0.lock() {
            notes
                .entry(run_id)
                .or_default()
                .insert(field, note.encode());
        }
    }

    fn take(&self) -> HashMap<Uuid, HashMap<String, String>> {
        self.0
            .lock()
            .map(|mut notes| std::mem::take(&mut *notes))
            .unwrap_or_default()
    }
}

fn bounded(cause: &str) -> String {
    let first_line = cause.lines().next().unwrap_or_default();
    first_line.chars().take(MAX_CAUSE_CHARS).collect()
}

/// Writes the notes every [`FLUSH_EVERY`] until `stop`. Redis out of reach
/// loses the notes of that round (the next hold notes again).
pub async fn flush<S: Store>(store: S, notes: WaitNotes, stop: CancellationToken) {
    let mut every = tokio::time::interval(FLUSH_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = every.tick() => {}
        }
        for (run_id, fields) in notes.take() {
            let fields: Vec<(String, String)> = fields.into_iter().collect();
            if let Err(error) = store.note_waits(run_id, &fields, NOTES_TTL).await {
                tracing::debug!(%run_id, error = %error, "could not note why jobs wait");
            }
        }
    }
}

//! Queue, exchange and Redis key names: the one place scheduler and worker agree on them.
//!
//! RabbitMQ topology (names prefixed per deployment, so tests can use their own):
//! - `jobs` (direct exchange) routes `bulk` and `urgent` to the two work queues;
//!   workers consume urgent with priority, so an event-triggered agent install
//!   never waits behind a million-instance scan;
//! - `reports` queue: worker → scheduler results;
//! - `dead-letter` exchange and queue: poison messages and exhausted retries;
//! - `delayed.<seconds>s.<priority>` queues: messages due `<seconds>` after
//!   they were published, moved back into `jobs` by the workers' delay pumps
//!   (`broker::delay`) — how a worker waits for a command without holding a
//!   delivery; `delayed.60s.reports` likewise for reports, pumped by schedulers.
//!
//! Redis keys of one run share the hash tag `{<run-id>}`, so they live on one Redis
//! Cluster slot and one Lua script can update them atomically.

use uuid::Uuid;

use crate::job::Priority;

/// Delays a worker may ask for, in seconds; each is one TTL'd queue.
pub const DELAY_STEPS_SECONDS: [u32; 6] = [1, 2, 5, 15, 60, 300];

/// The step of [`DELAY_STEPS_SECONDS`] a delay of `seconds` waits: the
/// smallest at least that long, or the longest.
pub fn delay_step(seconds: u32) -> u32 {
    DELAY_STEPS_SECONDS
        .into_iter()
        .find(|step| *step >= seconds)
        .unwrap_or(DELAY_STEPS_SECONDS[DELAY_STEPS_SECONDS.len() - 1])
}

/// How long a report whose results could not be written waits before it is
/// tried again.
pub const REPORT_RETRY_SECONDS: u32 = 60;

/// The scheme of the in-memory backends: `memory://<name>` as the AMQP or
/// Redis URL selects the in-memory broker or Redis of that name, shared by
/// everything in this process that names the same `<name>` (how `flotilla
/// demo` runs without services).
pub const MEMORY_SCHEME: &str = "memory://";

/// The instance name of an in-memory backend URL, `None` for a real one.
pub fn in_memory_name(url: &str) -> Option<&str> {
    url.strip_prefix(MEMORY_SCHEME)
}

/// Names for one deployment; `prefix` is `flotilla` unless tests isolate themselves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Names {
    prefix: String,
}

impl Default for Names {
    fn default() -> Self {
        Self::new("flotilla")
    }
}

impl Names {
    pub fn new(prefix: impl Into<String>) -> Self {
        Self {
            prefix: prefix.into(),
        }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn jobs_exchange(&self) -> String {
        format!("{}.jobs", self.prefix)
    }

    pub fn bulk_queue(&self) -> String {
        format!("{}.jobs.bulk", self.prefix)
    }

    pub fn urgent_queue(&self) -> String {
        format!("{}.jobs.urgent", self.prefix)
    }

    pub fn reports_queue(&self) -> String {
        format!("{}.reports", self.prefix)
    }

    pub fn dead_letter_exchange(&self) -> String {
        format!("{}.dead-letter", self.prefix)
    }

    pub fn dead_letter_queue(&self) -> String {
        format!("{}.dead-letter", self.prefix)
    }

    /// The routing key of a priority on the jobs exchange.
    pub fn work_queue(&self, priority: Priority) -> String {
        match priority {
            Priority::Bulk => self.bulk_queue(),
            Priority::Urgent => self.urgent_queue(),
        }
    }

    /// The delay queue for the smallest step at least `seconds` long; workers'
    /// delay pumps move its messages back into the work queue of `priority`
    /// when they are due.
    pub fn delay_queue(&self, seconds: u32, priority: Priority) -> String {
        self.delay_queue_of_step(delay_step(seconds), priority)
    }

    /// The delay queue of one of [`DELAY_STEPS_SECONDS`]. (`delayed.`, not the
    /// `delay.` of the TTL queues flotilla used before: see `broker::delay`.)
    pub fn delay_queue_of_step(&self, step_seconds: u32, priority: Priority) -> String {
        format!(
            "{}.delayed.{step_seconds}s.{}",
            self.prefix,
            priority.as_str()
        )
    }

    /// Where a report waits [`REPORT_RETRY_SECONDS`] before it returns to the
    /// reports queue: one whose results could not be written (its run paused)
    /// is tried again later instead of blocking every other run's reports.
    pub fn reports_delay_queue(&self) -> String {
        format!("{}.delayed.{REPORT_RETRY_SECONDS}s.reports", self.prefix)
    }

    /// The TTL'd delay queues of flotilla before 0.2 (dead-lettering back to
    /// `jobs`), which `flotilla admin purge` still removes.
    pub fn legacy_delay_queues(&self) -> Vec<String> {
        let mut queues = Vec::new();
        for priority in [Priority::Bulk, Priority::Urgent] {
            for step in DELAY_STEPS_SECONDS {
                queues.push(format!(
                    "{}.delay.{step}s.{}",
                    self.prefix,
                    priority.as_str()
                ));
            }
        }
        queues
    }

    /// The audit trail: a stream of JSON records, trimmed to 30 days.
    pub fn audit_stream_key(&self) -> String {
        format!("{}:audit", self.prefix)
    }

    /// The id of the last audit record written to files.
    pub fn audit_export_mark_key(&self) -> String {
        format!("{}:audit:exported", self.prefix)
    }

    /// Which scheduler replica exports audit records to files now.
    pub fn audit_export_lease_key(&self) -> String {
        format!("{}:audit:export-lease", self.prefix)
    }

    /// API tokens made through the API: hex SHA-256 → record (never a token).
    pub fn tokens_key(&self) -> String {
        format!("{}:tokens", self.prefix)
    }

    /// One console session, by the hex SHA-256 of its cookie (never the
    /// cookie itself); expires with the session.
    pub fn session_key(&self, sha256: &str) -> String {
        format!("{}:session:{sha256}", self.prefix)
    }

    /// Set once, when a deployment's first scheduler starts (see the kill switch).
    pub fn deployment_key(&self) -> String {
        format!("{}:deployment", self.prefix)
    }

    /// Set while the global kill switch also cancels commands in flight.
    pub fn kill_cancel_key(&self) -> String {
        format!("{}:kill:cancel", self.prefix)
    }

    /// Set while a campaign's kill switch also cancels its commands in flight.
    pub fn campaign_kill_cancel_key(&self, campaign: &str) -> String {
        format!("{}:kill:cancel:campaign:{campaign}", self.prefix)
    }

    /// The global kill switch: an explicit `released` or `engaged:<reason>`
    /// record; anything else, or none, stops every send.
    pub fn kill_switch_key(&self) -> String {
        format!("{}:kill", self.prefix)
    }

    /// A campaign's kill switch (engaged by an alert or an operator).
    pub fn campaign_kill_key(&self, campaign: &str) -> String {
        format!("{}:kill:campaign:{campaign}", self.prefix)
    }

    /// Pub/sub channel announcing kill switch changes to every worker.
    pub fn kill_channel(&self) -> String {
        format!("{}:kill:changes", self.prefix)
    }

    /// A campaign's versions. Campaign keys share the `{campaigns}` hash tag:
    /// a new version and the index change in one script (one cluster slot).
    pub fn campaign_key(&self, campaign: &str) -> String {
        format!("{}:{{campaigns}}:{campaign}", self.prefix)
    }

    pub fn campaigns_index_key(&self) -> String {
        format!("{}:{{campaigns}}", self.prefix)
    }

    /// The keys of `campaign_apply.lua`: the campaign, the index.
    pub fn campaign_script_keys(&self, campaign: &str) -> [String; 2] {
        [self.campaign_key(campaign), self.campaigns_index_key()]
    }

    /// The notification outbox: delivery id → when it is next due (Unix ms).
    /// The outbox's keys share the `{notify}` hash tag: a delivery and the
    /// queue change together in one script (one cluster slot).
    pub fn notify_due_key(&self) -> String {
        format!("{}:{{notify}}:due", self.prefix)
    }

    /// One notification of the outbox: its event, bodies, webhook reference
    /// (never the URL), tries and state; kept a week once settled, so the
    /// same delivery id is never queued twice.
    pub fn notify_delivery_key(&self, delivery: Uuid) -> String {
        format!("{}:{{notify}}:delivery:{delivery}", self.prefix)
    }

    /// The keys of `notify_enqueue.lua` and `notify_settle.lua`: the due
    /// queue, the delivery.
    pub fn notify_script_keys(&self, delivery: Uuid) -> [String; 2] {
        [self.notify_due_key(), self.notify_delivery_key(delivery)]
    }

    /// The run record (state, reason, totals) as a hash.
    pub fn run_key(&self, run_id: Uuid) -> String {
        format!("{}:run:{{{run_id}}}", self.prefix)
    }

    /// Live counters of a run (per status) as a hash.
    pub fn run_counters_key(&self, run_id: Uuid) -> String {
        format!("{}:run:{{{run_id}}}:counters", self.prefix)
    }

    /// The command a job already sent: a redelivered Execute resumes polling it.
    pub fn job_command_key(&self, run_id: Uuid, job_id: Uuid) -> String {
        format!("{}:run:{{{run_id}}}:job:{job_id}:command", self.prefix)
    }

    /// The run's send record, append-only for workers (`HSETNX` only): per
    /// job, `<job>` = when a delivery was about to send it and
    /// `<job>:command` = the command it sent.
    pub fn run_sends_key(&self, run_id: Uuid) -> String {
        format!("{}:run:{{{run_id}}}:sends", self.prefix)
    }

    /// Why the run's jobs wait, as workers note it (held sends, retries):
    /// a hash of notes that end by themselves (`store::WaitNote`).
    pub fn run_waits_key(&self, run_id: Uuid) -> String {
        format!("{}:run:{{{run_id}}}:waits", self.prefix)
    }

    /// The run's locations in admission order (FIFO), one `account/region` each.
    pub fn run_locations_key(&self, run_id: Uuid) -> String {
        format!("{}:run:{{{run_id}}}:locations", self.prefix)
    }

    /// The run's locations as a set, for a worker's "is this one of the run's?".
    pub fn run_location_set_key(&self, run_id: Uuid) -> String {
        format!("{}:run:{{{run_id}}}:location-set", self.prefix)
    }

    /// Per location: discovery progress, its targets and its execution progress.
    pub fn run_location_state_key(&self, run_id: Uuid) -> String {
        format!("{}:run:{{{run_id}}}:location-state", self.prefix)
    }

    /// Discovered pages of targets, per location and page, waiting for admission.
    pub fn run_pages_key(&self, run_id: Uuid) -> String {
        format!("{}:run:{{{run_id}}}:pages", self.prefix)
    }

    /// Batches of active locations waiting for room under max_concurrency (FIFO).
    pub fn run_pending_key(&self, run_id: Uuid) -> String {
        format!("{}:run:{{{run_id}}}:pending", self.prefix)
    }

    /// Per-target windows: batches whose window is closed, scored by the
    /// window's index (from 1), taken again when it opens.
    pub fn run_parked_key(&self, run_id: Uuid) -> String {
        format!("{}:run:{{{run_id}}}:parked", self.prefix)
    }

    /// Batches admitted and not yet reported: what a restarted scheduler re-publishes.
    pub fn run_admitted_key(&self, run_id: Uuid) -> String {
        format!("{}:run:{{{run_id}}}:admitted", self.prefix)
    }

    /// Reports already applied, so a redelivered report is applied once.
    pub fn run_applied_key(&self, run_id: Uuid) -> String {
        format!("{}:run:{{{run_id}}}:applied", self.prefix)
    }

    pub fn runs_index_key(&self) -> String {
        format!("{}:runs", self.prefix)
    }

    /// Fully discovered locations waiting for admission (FIFO).
    pub fn run_ready_key(&self, run_id: Uuid) -> String {
        format!("{}:run:{{{run_id}}}:ready", self.prefix)
    }

    /// Locations whose discovery is open (their Discover job published) and
    /// not finished: at most the scheduler's discovery window.
    pub fn run_discovering_key(&self, run_id: Uuid) -> String {
        format!("{}:run:{{{run_id}}}:discovering", self.prefix)
    }

    /// The eleven keys every run script gets, in the order of `run_prelude.lua`.
    pub fn run_script_keys(&self, run_id: Uuid) -> [String; 11] {
        [
            self.run_key(run_id),
            self.run_locations_key(run_id),
            self.run_location_state_key(run_id),
            self.run_pages_key(run_id),
            self.run_pending_key(run_id),
            self.run_admitted_key(run_id),
            self.run_applied_key(run_id),
            self.run_counters_key(run_id),
            self.run_ready_key(run_id),
            self.run_discovering_key(run_id),
            self.run_parked_key(run_id),
        ]
    }

    /// A token bucket shared by every worker for one account-region-API.
    pub fn token_bucket_key(&self, account_id: &str, region: &str, api: &str) -> String {
        format!("{}:rate:{{{account_id}:{region}}}:{api}", self.prefix)
    }

    /// Runs waiting to start (an event's delay), scored by when they may start.
    /// The alerts firing for a campaign (from Alertmanager's webhooks):
    /// alert identity → JSON (name, summary, since when).
    pub fn campaign_alerts_key(&self, campaign: &str) -> String {
        format!("{}:alerts:campaign:{campaign}", self.prefix)
    }

    /// The change calendar: freeze id → freeze (JSON).
    pub fn calendar_key(&self) -> String {
        format!("{}:calendar", self.prefix)
    }

    /// Runs a change freeze paused (to resume when it ends).
    pub fn frozen_runs_key(&self) -> String {
        format!("{}:runs:frozen", self.prefix)
    }

    /// Runs that are not over, by creation time (Unix ms): the index every
    /// "live runs" question reads (the start gate's one-live-run rule,
    /// recovery, the gauges), so their cost follows live runs, not history.
    /// Entries of runs found settled (completed, or drained) are removed by
    /// whoever reads them.
    pub fn live_runs_key(&self) -> String {
        format!("{}:runs:live", self.prefix)
    }

    /// One campaign's runs by creation time (Unix ms), for listing a
    /// campaign's runs without reading every run.
    pub fn campaign_runs_key(&self, campaign: &str) -> String {
        format!("{}:runs:campaign:{campaign}", self.prefix)
    }

    /// Held for a few seconds while one start of `campaign` passes the start
    /// gate, so two starts at once cannot both find no live run.
    pub fn campaign_start_lock_key(&self, campaign: &str) -> String {
        format!("{}:{{campaigns}}:{campaign}:starting", self.prefix)
    }

    /// The fleet compliance view: instance id → its latest state (JSON).
    pub fn compliance_key(&self) -> String {
        format!("{}:compliance:instances", self.prefix)
    }

    /// One UTC day's compliance counts (`YYYY-MM-DD`).
    pub fn compliance_day_key(&self, day: &str) -> String {
        format!("{}:compliance:day:{day}", self.prefix)
    }

    /// Runs with maintenance windows: run id → when to look at it next (Unix ms).
    pub fn windowed_runs_key(&self) -> String {
        format!("{}:runs:windowed", self.prefix)
    }

    /// Runs baking between two waves: run id → when the bake ends (Unix ms).
    pub fn baking_runs_key(&self) -> String {
        format!("{}:runs:baking", self.prefix)
    }

    pub fn pending_runs_key(&self) -> String {
        format!("{}:runs:pending", self.prefix)
    }

    /// Per campaign: the last schedule occurrence fired (Unix ms). The
    /// schedule's keys share the `{schedule}` hash tag: a fire checks the lease
    /// in the same script (one cluster slot).
    pub fn schedule_fired_key(&self) -> String {
        format!("{}:{{schedule}}:fired", self.prefix)
    }

    /// The last fencing token handed out with the leader lease.
    pub fn scheduler_lease_token_key(&self) -> String {
        format!("{}:{{schedule}}:lease:token", self.prefix)
    }

    /// Every schedule fire (`campaign occurrence holder`), newest last.
    /// Per campaign: the occurrence (Unix ms) the start gate refused, so a
    /// refused occurrence is skipped and recorded once, not every tick.
    pub fn schedule_skipped_key(&self) -> String {
        format!("{}:{{schedule}}:skipped", self.prefix)
    }

    pub fn schedule_fires_key(&self) -> String {
        format!("{}:{{schedule}}:fires", self.prefix)
    }

    /// The scheduler leader lease (value: holder id; fencing token alongside).
    pub fn scheduler_lease_key(&self) -> String {
        format!("{}:{{schedule}}:lease", self.prefix)
    }

    /// The keys of `schedule_acquire.lua`: the lease, its token counter.
    pub fn schedule_acquire_keys(&self) -> [String; 2] {
        [self.scheduler_lease_key(), self.scheduler_lease_token_key()]
    }

    /// The keys of `schedule_fire.lua`: the lease, the fired hash, the log.
    pub fn schedule_fire_keys(&self) -> [String; 3] {
        [
            self.scheduler_lease_key(),
            self.schedule_fired_key(),
            self.schedule_fires_key(),
        ]
    }
}

/// The Redis Cluster hash slot of `key` (CRC16/XMODEM of its hash tag — the
/// part between the first `{` and the next `}` when not empty — or of the
/// whole key, modulo 16384), as `CLUSTER KEYSLOT` answers. A script's keys
/// must all be in one slot.
pub fn hash_slot(key: &str) -> u16 {
    let bytes = key.as_bytes();
    let hashed = bytes
        .iter()
        .position(|&byte| byte == b'{')
        .and_then(|open| {
            let rest = &bytes[open + 1..];
            let close = rest.iter().position(|&byte| byte == b'}')?;
            (close > 0).then(|| &rest[..close])
        })
        .unwrap_or(bytes);
    crc16::State::<crc16::XMODEM>::calculate(hashed) % 16384
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_of_one_run_share_a_hash_tag() {
        let names = Names::default();
        let run_id = Uuid::nil();
        let tag = format!("{{{run_id}}}");
        assert!(names.run_key(run_id).contains(&tag));
        assert!(names.run_counters_key(run_id).contains(&tag));
        assert!(names.job_command_key(run_id, Uuid::nil()).contains(&tag));
        for key in [
            names.run_locations_key(run_id),
            names.run_location_set_key(run_id),
            names.run_location_state_key(run_id),
            names.run_pages_key(run_id),
            names.run_pending_key(run_id),
            names.run_parked_key(run_id),
            names.run_admitted_key(run_id),
            names.run_applied_key(run_id),
        ] {
            assert!(key.contains(&tag), "{key}");
        }
    }

    #[test]
    fn hash_slots_are_redis_clusters() {
        // Values from Redis' CLUSTER KEYSLOT documentation and spec.
        assert_eq!(hash_slot("somekey"), 11058);
        assert_eq!(hash_slot("foo{hash_tag}"), hash_slot("hash_tag"));
        assert_eq!(hash_slot("123456789"), 0x31C3);
        assert_ne!(hash_slot("foo{}{bar}"), hash_slot("bar"));
        assert_eq!(hash_slot("foo{{bar}}zap"), hash_slot("{bar"));
    }

    #[test]
    fn every_scripts_keys_are_in_one_hash_slot() {
        let names = Names::new("flotilla-test");
        let run_id = Uuid::new_v4();
        let lists: Vec<(&str, Vec<String>)> = vec![
            ("run scripts", names.run_script_keys(run_id).to_vec()),
            (
                "campaign_apply",
                names.campaign_script_keys("nightly-scan").to_vec(),
            ),
            ("campaign_approve", vec![names.campaign_key("nightly-scan")]),
            ("schedule_acquire", names.schedule_acquire_keys().to_vec()),
            ("schedule_fire", names.schedule_fire_keys().to_vec()),
            (
                "notify_enqueue/notify_settle",
                names.notify_script_keys(Uuid::new_v4()).to_vec(),
            ),
            (
                "take_tokens",
                vec![names.token_bucket_key("123456789012", "us-east-1", "SendCommand")],
            ),
            (
                "reclaim_send/release_send",
                vec![names.job_command_key(run_id, Uuid::new_v4())],
            ),
        ];
        for (script, keys) in lists {
            let slot = hash_slot(&keys[0]);
            for key in &keys {
                assert_eq!(
                    hash_slot(key),
                    slot,
                    "{script}: {key} is in another slot than {}",
                    keys[0]
                );
            }
        }
    }

    #[test]
    fn delays_round_up_to_a_queue_that_exists() {
        let names = Names::new("t");
        assert_eq!(names.delay_queue(0, Priority::Bulk), "t.delayed.1s.bulk");
        assert_eq!(names.delay_queue(2, Priority::Bulk), "t.delayed.2s.bulk");
        assert_eq!(names.delay_queue(3, Priority::Bulk), "t.delayed.5s.bulk");
        assert_eq!(names.delay_queue(5, Priority::Bulk), "t.delayed.5s.bulk");
        assert_eq!(
            names.delay_queue(6, Priority::Urgent),
            "t.delayed.15s.urgent"
        );
        assert_eq!(
            names.delay_queue(10_000, Priority::Bulk),
            "t.delayed.300s.bulk"
        );
    }

    #[test]
    fn prefixes_isolate_deployments() {
        assert_ne!(Names::new("a").bulk_queue(), Names::new("b").bulk_queue());
        assert_ne!(
            Names::new("a").kill_switch_key(),
            Names::new("b").kill_switch_key()
        );
    }
}

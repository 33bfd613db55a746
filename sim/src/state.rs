//! The simulator's mutable state: sessions, commands, rate buckets, patch states,
//! faults and counters. One mutex, held only for short, non-async sections.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap, HashSet};
use std::sync::{Mutex, MutexGuard};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::fleet::{Fleet, InstanceKey, Outcome};
use crate::profile::{Bucket, FleetProfile};

/// Simulated time: real time since start multiplied by the profile's time scale.
#[derive(Debug)]
pub struct Clock {
    started: Instant,
    started_epoch_seconds: f64,
    scale: f64,
}

impl Clock {
    fn new(scale: f64) -> Self {
        let started_epoch_seconds = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        Self {
            started: Instant::now(),
            started_epoch_seconds,
            scale,
        }
    }

    /// Simulated seconds since the simulator started.
    pub fn now(&self) -> f64 {
        self.started.elapsed().as_secs_f64() * self.scale
    }

    /// A simulated instant as epoch seconds, for AWS timestamps.
    pub fn epoch(&self, sim_seconds: f64) -> f64 {
        self.started_epoch_seconds + sim_seconds
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Api {
    AssumeRole,
    SendCommand,
    ListCommandInvocations,
    DescribeInstanceInformation,
    OtherSsm,
}

#[derive(Debug)]
struct TokenBucket {
    tokens: f64,
    refreshed: Instant,
}

#[derive(Debug, Clone)]
pub struct Session {
    pub account: u32,
    pub expires_epoch_seconds: f64,
}

#[derive(Debug, Clone)]
pub struct Invocation {
    pub instance: InstanceKey,
    pub instance_id: String,
    pub outcome: Outcome,
    pub online: bool,
    /// Simulated seconds the document runs.
    pub seconds: f64,
}

#[derive(Debug, Clone)]
pub struct Command {
    pub id: String,
    pub account: u32,
    pub region: u8,
    pub document: String,
    /// SendCommand's DocumentVersion, `$DEFAULT` when it named none.
    pub document_version: String,
    pub parameters: serde_json::Value,
    pub comment: String,
    pub requested_at: f64,
    /// Wall-clock time (Unix ms) the SendCommand arrived, for tests that compare
    /// it with when they engaged a kill switch.
    pub received_unix_ms: u64,
    pub timeout_seconds: f64,
    pub max_concurrency: String,
    pub max_errors: String,
    pub cancelled_at: Option<f64>,
    pub invocations: Vec<Invocation>,
    /// SendCommand's OutputS3BucketName and OutputS3KeyPrefix.
    pub output_s3: Option<(String, String)>,
    /// CloudWatchOutputConfig's log group, when enabled.
    pub cloudwatch_log_group: Option<String>,
    /// Invocations (indexes) whose output objects are not written yet.
    pub outputs_pending: Vec<usize>,
}

/// Seconds between SendCommand and the agent picking the command up.
pub const DELIVERY_SECONDS: f64 = 1.0;

/// An invocation's state at a simulated instant: (Status, StatusDetails, start, end).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct InvocationState {
    pub status: &'static str,
    pub details: &'static str,
    pub started: Option<f64>,
    pub finished: Option<f64>,
    pub response_code: i32,
}

impl Command {
    /// When the invocation becomes terminal (simulated seconds), ignoring cancels.
    pub fn finish_time(&self, invocation: &Invocation) -> f64 {
        let start = self.requested_at + DELIVERY_SECONDS;
        if !invocation.online {
            return self.requested_at + self.timeout_seconds;
        }
        match invocation.outcome {
            Outcome::Undeliverable => start,
            Outcome::TimedOut => start + self.timeout_seconds,
            Outcome::Success | Outcome::Failed => {
                start + invocation.seconds.min(self.timeout_seconds)
            }
        }
    }

    pub fn state(&self, invocation: &Invocation, now: f64) -> InvocationState {
        let start = self.requested_at + DELIVERY_SECONDS;
        let finish = self.finish_time(invocation);
        let pending = |status, details| InvocationState {
            status,
            details,
            started: None,
            finished: None,
            response_code: -1,
        };
        if let Some(cancelled) = self.cancelled_at
            && cancelled < finish
            && now >= cancelled
        {
            return InvocationState {
                status: "Cancelled",
                details: "Cancelled",
                started: (cancelled > start).then_some(start),
                finished: Some(cancelled),
                response_code: -1,
            };
        }
        if now < finish {
            return if now < start || !invocation.online {
                pending("Pending", "Pending")
            } else {
                InvocationState {
                    status: "InProgress",
                    details: "InProgress",
                    started: Some(start),
                    finished: None,
                    response_code: -1,
                }
            };
        }
        let (status, details, code, started) = match (invocation.online, invocation.outcome) {
            (false, _) => ("TimedOut", "DeliveryTimedOut", -1, None),
            (true, Outcome::Undeliverable) => ("Failed", "Undeliverable", -1, None),
            (true, Outcome::TimedOut) => ("TimedOut", "ExecutionTimedOut", -1, Some(start)),
            (true, Outcome::Success) if invocation.seconds <= self.timeout_seconds => {
                ("Success", "Success", 0, Some(start))
            }
            (true, Outcome::Success | Outcome::Failed)
                if invocation.seconds > self.timeout_seconds =>
            {
                ("TimedOut", "ExecutionTimedOut", -1, Some(start))
            }
            (true, _) => ("Failed", "Failed", 1, Some(start)),
        };
        InvocationState {
            status,
            details,
            started,
            finished: Some(finish),
            response_code: code,
        }
    }
}

/// The result of one patch operation on one instance, effective from `at`.
#[derive(Debug, Clone, Copy)]
pub struct PatchRecord {
    pub at: f64,
    pub started: f64,
    pub install: bool,
    pub succeeded: bool,
    pub no_reboot: bool,
}

/// A fault the admin surface injected.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Fault {
    /// The next `count` calls of `operation` fail with `code` (e.g.
    /// InternalServerError, ThrottlingException).
    FailNext {
        operation: String,
        code: String,
        count: u32,
    },
    /// AssumeRole into this account is denied from now on.
    RemoveRole { account_id: String },
    /// Every call signed for this region fails with 503 ServiceUnavailable.
    DarkRegion { region: String },
    /// The next `count` answers to `operation` are held back `millis` after the
    /// work is done: the caller has not heard yet whether its call succeeded (a
    /// slow network, or a caller that dies waiting).
    DelayNext {
        operation: String,
        millis: u64,
        count: u32,
    },
}

#[derive(Debug, Default, Clone, Serialize)]
pub struct Stats {
    pub calls: BTreeMap<String, u64>,
    pub throttles: BTreeMap<String, u64>,
    pub injected_failures: u64,
    /// Wall-clock time (Unix ms) of the latest SendCommand or CancelCommand accepted.
    pub last_mutating_call_unix_ms: Option<u64>,
    pub commands: u64,
    pub invocations: u64,
}

#[derive(Debug, Default)]
pub struct Inner {
    pub sessions: HashMap<String, Session>,
    pub commands: HashMap<String, Command>,
    pub commands_by_account: HashMap<u32, Vec<String>>,
    /// Per account, finish times of invocations not yet terminal (min-heap).
    pub pending: HashMap<u32, BinaryHeap<Reverse<u64>>>,
    buckets: HashMap<(u32, u8, Api), TokenBucket>,
    /// How many times each (instance, document) ran; documents by index into
    /// `documents`, so a million entries do not hold a million name copies.
    pub executions: HashMap<(InstanceKey, u32), u32>,
    pub documents: Vec<String>,
    pub patch_records: HashMap<InstanceKey, Vec<PatchRecord>>,
    pub fail_next: Vec<(String, String, u32)>,
    /// (operation, delay in ms, answers left)
    pub delay_next: Vec<(String, u64, u32)>,
    pub removed_roles: HashSet<u32>,
    /// Tag keys removed from instances (RemoveTagsFromResource).
    pub removed_tags: HashMap<InstanceKey, Vec<String>>,
    pub dark_regions: HashSet<String>,
    /// S3 objects by `bucket/key` (results files written to the simulator).
    pub objects: std::collections::BTreeMap<String, crate::s3::StoredObject>,
    /// Commands with an S3 output location and invocations not yet written.
    pub outputs_due: Vec<String>,
    pub stats: Stats,
    pub next_session: u64,
}

#[derive(Debug)]
pub struct SimState {
    pub fleet: Fleet,
    pub clock: Clock,
    inner: Mutex<Inner>,
}

impl SimState {
    pub fn new(profile: FleetProfile) -> Self {
        Self {
            clock: Clock::new(profile.time_scale),
            fleet: Fleet::new(profile),
            inner: Mutex::new(Inner::default()),
        }
    }

    /// A function giving an instance as it is now: derived from the fleet,
    /// less any tags removed since (read once per request).
    pub fn instances(&self) -> impl Fn(InstanceKey) -> crate::fleet::Instance + '_ {
        let removed = self.lock().removed_tags.clone();
        move |key| {
            let mut instance = self.fleet.instance(key);
            if let Some(keys) = removed.get(&key) {
                instance.tags.retain(|(tag, _)| !keys.contains(tag));
            }
            instance
        }
    }

    pub fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves counters, not invariants, behind.
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Writes the output object of every invocation with an S3 output
    /// location that has ended by now, as SSM does when a plugin finishes:
    /// `<prefix>/<command id>/<instance id>/<plugin>/stdout`. Called before
    /// S3 is read, which is when anyone can tell.
    pub fn write_due_outputs(&self, inner: &mut Inner) {
        let now = self.clock.now();
        let mut written = Vec::new();
        let due = std::mem::take(&mut inner.outputs_due);
        for command_id in due {
            let Some(command) = inner.commands.get_mut(&command_id) else {
                continue;
            };
            let Some((bucket, prefix)) = command.output_s3.clone() else {
                continue;
            };
            let mut still = Vec::new();
            for index in std::mem::take(&mut command.outputs_pending) {
                let Some(invocation) = command.invocations.get(index) else {
                    continue;
                };
                let state = command.state(invocation, now);
                if state.finished.is_none() {
                    still.push(index);
                    continue;
                }
                let plugin = crate::ssm::plugin_directory(&command.document);
                let prefix = if prefix.is_empty() {
                    String::new()
                } else {
                    format!("{prefix}/")
                };
                let key = format!(
                    "{bucket}/{prefix}{}/{}/{plugin}/stdout",
                    command.id, invocation.instance_id
                );
                let body = crate::ssm::output_of(command, invocation, state.details);
                written.push((key, body));
            }
            let pending = !still.is_empty();
            command.outputs_pending = still;
            if pending {
                inner.outputs_due.push(command_id);
            }
        }
        for (key, body) in written {
            inner.objects.insert(
                key,
                crate::s3::StoredObject {
                    body: body.into(),
                    last_modified: crate::s3::http_date(),
                },
            );
        }
    }

    pub fn bucket_config(&self, api: Api) -> Bucket {
        let limits = &self.fleet.profile.api_limits;
        match api {
            Api::AssumeRole => limits.assume_role,
            Api::SendCommand => limits.send_command,
            Api::ListCommandInvocations => limits.list_command_invocations,
            Api::DescribeInstanceInformation => limits.describe_instance_information,
            Api::OtherSsm => limits.other_ssm,
        }
    }
}

impl Inner {
    /// Takes one token from the account-region-API bucket; false means throttle.
    pub fn take_token(&mut self, key: (u32, u8, Api), config: Bucket) -> bool {
        let now = Instant::now();
        let bucket = self.buckets.entry(key).or_insert(TokenBucket {
            tokens: config.burst,
            refreshed: now,
        });
        let elapsed = now.duration_since(bucket.refreshed).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * config.rate).min(config.burst);
        bucket.refreshed = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Invocations of `account` not terminal at `now` (simulated seconds).
    pub fn pending_invocations(&mut self, account: u32, now: f64) -> usize {
        let heap = self.pending.entry(account).or_default();
        let now_ms = (now * 1000.0) as u64;
        while heap.peek().is_some_and(|Reverse(finish)| *finish <= now_ms) {
            heap.pop();
        }
        heap.len()
    }

    /// The index of a document name in `documents`, adding it when new.
    pub fn document_index(&mut self, document: &str) -> u32 {
        match self.documents.iter().position(|d| d == document) {
            Some(index) => index as u32,
            None => {
                self.documents.push(document.to_string());
                (self.documents.len() - 1) as u32
            }
        }
    }

    /// Consumes one matching `delay_next` fault, returning how long to hold the answer.
    pub fn injected_delay(&mut self, operation: &str) -> Option<std::time::Duration> {
        let position = self
            .delay_next
            .iter()
            .position(|(op, _, count)| op == operation && *count > 0)?;
        let (_, millis, count) = &mut self.delay_next[position];
        *count -= 1;
        let delay = std::time::Duration::from_millis(*millis);
        if self.delay_next[position].2 == 0 {
            self.delay_next.remove(position);
        }
        Some(delay)
    }

    /// Consumes one matching `fail_next` fault, returning its error code.
    pub fn injected_failure(&mut self, operation: &str) -> Option<String> {
        let position = self
            .fail_next
            .iter()
            .position(|(op, _, count)| op == operation && *count > 0)?;
        let (_, code, count) = &mut self.fail_next[position];
        *count -= 1;
        let code = code.clone();
        if self.fail_next[position].2 == 0 {
            self.fail_next.remove(position);
        }
        self.stats.injected_failures += 1;
        Some(code)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn command(
        outcome: Outcome,
        online: bool,
        seconds: f64,
        timeout: f64,
    ) -> (Command, Invocation) {
        let invocation = Invocation {
            instance: InstanceKey {
                account: 1,
                region: 0,
                index: 0,
            },
            instance_id: "i-00000000000000000".into(),
            outcome,
            online,
            seconds,
        };
        let command = Command {
            id: "c".into(),
            account: 1,
            region: 0,
            document: "AWS-RunShellScript".into(),
            document_version: "$DEFAULT".into(),
            parameters: serde_json::Value::Null,
            comment: String::new(),
            requested_at: 100.0,
            received_unix_ms: 0,
            timeout_seconds: timeout,
            max_concurrency: "50".into(),
            max_errors: "0".into(),
            cancelled_at: None,
            invocations: vec![invocation.clone()],
            output_s3: None,
            cloudwatch_log_group: None,
            outputs_pending: Vec::new(),
        };
        (command, invocation)
    }

    fn details(
        command: &Command,
        invocation: &Invocation,
        at: f64,
    ) -> (&'static str, &'static str) {
        let state = command.state(invocation, at);
        (state.status, state.details)
    }

    #[test]
    fn invocations_go_pending_then_in_progress_then_terminal() {
        let (command, invocation) = command(Outcome::Success, true, 30.0, 600.0);
        assert_eq!(
            details(&command, &invocation, 100.5),
            ("Pending", "Pending")
        );
        assert_eq!(
            details(&command, &invocation, 101.5),
            ("InProgress", "InProgress")
        );
        assert_eq!(
            details(&command, &invocation, 130.9),
            ("InProgress", "InProgress")
        );
        assert_eq!(
            details(&command, &invocation, 131.0),
            ("Success", "Success")
        );
        assert_eq!(command.state(&invocation, 200.0).response_code, 0);
        assert_eq!(command.state(&invocation, 200.0).started, Some(101.0));
    }

    #[test]
    fn failures_and_timeouts_have_ssms_details() {
        let (c, i) = command(Outcome::Failed, true, 30.0, 600.0);
        assert_eq!(details(&c, &i, 200.0), ("Failed", "Failed"));
        assert_eq!(c.state(&i, 200.0).response_code, 1);
        let (c, i) = command(Outcome::TimedOut, true, 30.0, 60.0);
        assert_eq!(details(&c, &i, 150.0), ("InProgress", "InProgress"));
        assert_eq!(details(&c, &i, 161.0), ("TimedOut", "ExecutionTimedOut"));
        let (c, i) = command(Outcome::Success, true, 90.0, 60.0);
        assert_eq!(
            details(&c, &i, 161.0),
            ("TimedOut", "ExecutionTimedOut"),
            "longer than its timeout"
        );
        let (c, i) = command(Outcome::Undeliverable, true, 30.0, 600.0);
        assert_eq!(details(&c, &i, 102.0), ("Failed", "Undeliverable"));
    }

    #[test]
    fn offline_instances_stay_pending_until_delivery_times_out() {
        let (c, i) = command(Outcome::Success, false, 30.0, 600.0);
        assert_eq!(details(&c, &i, 500.0), ("Pending", "Pending"));
        assert_eq!(details(&c, &i, 700.0), ("TimedOut", "DeliveryTimedOut"));
    }

    #[test]
    fn cancelling_stops_unfinished_invocations_only() {
        let (mut c, i) = command(Outcome::Success, true, 30.0, 600.0);
        c.cancelled_at = Some(110.0);
        assert_eq!(details(&c, &i, 105.0), ("InProgress", "InProgress"));
        assert_eq!(details(&c, &i, 111.0), ("Cancelled", "Cancelled"));
        c.cancelled_at = Some(500.0);
        assert_eq!(
            details(&c, &i, 600.0),
            ("Success", "Success"),
            "finished before the cancel"
        );
    }

    #[test]
    fn token_buckets_refill_at_their_rate() {
        let mut inner = Inner::default();
        let config = Bucket {
            rate: 1000.0,
            burst: 2.0,
        };
        let key = (1, 0, Api::SendCommand);
        assert!(inner.take_token(key, config));
        assert!(inner.take_token(key, config));
        assert!(!inner.take_token(key, config));
        std::thread::sleep(std::time::Duration::from_millis(5));
        assert!(
            inner.take_token(key, config),
            "refilled after 5 ms at 1000/s"
        );
        assert!(
            inner.take_token((2, 0, Api::SendCommand), config),
            "buckets are per account"
        );
    }
}

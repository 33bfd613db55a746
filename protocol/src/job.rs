//! Jobs: the messages workers consume from RabbitMQ.
//!
//! A job is small and self-describing: it carries everything a worker needs (role,
//! rate limits, the step to run) so that any worker can take any job without
//! reading the campaign. Every job has a stable `job_id`; a job delivered twice
//! finds its earlier progress under that id (the command it already sent) and
//! resumes instead of repeating work.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::campaign::{ApiRateLimits, ExecutionRole, Step, TargetSelection};

/// Milliseconds since the Unix epoch, UTC. Compact and exact on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct UnixMillis(pub u64);

impl UnixMillis {
    /// Now, on the clock every service shares ([`crate::clock`]: this
    /// host's, corrected to Redis's once a service has measured the difference).
    pub fn now() -> Self {
        Self(crate::clock::now_ms())
    }

    /// This instant as a UTC date-time; `None` outside chrono's range.
    pub fn to_datetime(self) -> Option<chrono::DateTime<chrono::Utc>> {
        i64::try_from(self.0)
            .ok()
            .and_then(chrono::DateTime::from_timestamp_millis)
    }

    /// RFC 3339 in UTC with milliseconds (`2026-12-06T22:29:21.123Z`), as
    /// scripts read times; `None` outside chrono's range.
    pub fn to_rfc3339(self) -> Option<String> {
        self.to_datetime()
            .map(|at| at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
    }
}

/// One account-region pair of a run.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Location {
    pub account_id: String,
    pub region: String,
}

impl Location {
    /// Checks both parts (a 12-digit account, a region name): a location
    /// read from a message or Redis is only used after this.
    pub fn validate(&self) -> Result<(), String> {
        if !crate::campaign::is_account_id(&self.account_id) {
            return Err(format!(
                "account {:?} is not a 12-digit AWS account id",
                self.account_id
            ));
        }
        if !crate::campaign::is_region(&self.region) {
            return Err(format!(
                "region {:?} is not an AWS region name",
                self.region
            ));
        }
        Ok(())
    }
}

/// What every job of a run carries about the run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunContext {
    pub run_id: Uuid,
    pub campaign: String,
    /// The stored campaign version the run uses.
    pub campaign_version: u32,
    /// Role name and ExternalId only: credentials never travel in messages.
    pub role: ExecutionRole,
    pub api_rate_limits: ApiRateLimits,
    /// Event-triggered runs go through the urgent queue.
    pub priority: Priority,
    /// Where SSM keeps each command's full output (SendCommand's settings).
    pub output_logging: Option<crate::campaign::OutputLogging>,
}

/// Which work queue a run's jobs take.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Priority {
    Bulk,
    Urgent,
}

impl Priority {
    /// The routing key on the jobs exchange (and the label in metrics).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Bulk => "bulk",
            Self::Urgent => "urgent",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Job {
    Discover(DiscoverJob),
    Execute(ExecuteJob),
    Poll(PollJob),
}

impl Job {
    pub fn job_id(&self) -> Uuid {
        match self {
            Self::Discover(job) => job.job_id,
            Self::Execute(job) => job.job_id,
            Self::Poll(job) => job.job_id,
        }
    }

    pub fn run(&self) -> &RunContext {
        match self {
            Self::Discover(job) => &job.run,
            Self::Execute(job) => &job.run,
            Self::Poll(job) => &job.execute.run,
        }
    }

    pub fn location(&self) -> &Location {
        match self {
            Self::Discover(job) => &job.location,
            Self::Execute(job) => &job.location,
            Self::Poll(job) => &job.execute.location,
        }
    }

    /// A label for metrics and logs (never an id).
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Discover(_) => "discover",
            Self::Execute(_) => "execute",
            Self::Poll(_) => "poll",
        }
    }
}

/// List one page of a location's managed instances matching the campaign's targets.
/// A page that has a next token publishes the next page's job, so a redelivery
/// repeats one page, never the whole location.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DiscoverJob {
    pub job_id: Uuid,
    pub run: RunContext,
    pub location: Location,
    pub targets: TargetSelection,
    /// 0 for the first page.
    pub page: u32,
    pub next_token: Option<String>,
    /// Per-target windows: which tag names each instance's window, and the
    /// windows' names (the worker says which each target is in).
    pub window_tag: Option<WindowTag>,
}

/// A campaign's per-target windows, as discovery needs them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WindowTag {
    pub tag: String,
    /// The windows' names, in the campaign's order.
    pub names: Vec<String>,
}

/// The maintenance window of a batch's instances (`window_tag` campaigns):
/// the worker sends only while it is open, by its own clock.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum TargetWindow {
    /// Their tag `tag` says `name`: sent only while that window is open.
    Named {
        tag: String,
        name: String,
        /// `cron(…)` or `rate(…)`, validated when the campaign was.
        schedule: String,
        /// IANA name.
        timezone: String,
        duration_ms: u64,
    },
    /// They have no tag `tag` naming one of the windows `names`: never sent.
    Untagged { tag: String, names: Vec<String> },
}

impl TargetWindow {
    /// Where the window stands at `now`; Err for a window that cannot be
    /// read (it is then closed for good: fail closed) or an untagged batch.
    pub fn state_at(
        &self,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<crate::campaign::WindowState, String> {
        match self {
            Self::Named {
                schedule,
                timezone,
                duration_ms,
                ..
            } => {
                let window = crate::campaign::MaintenanceWindow {
                    name: None,
                    schedule: crate::schedule::Schedule::parse(schedule, Some(timezone))?,
                    duration: std::time::Duration::from_millis(*duration_ms),
                };
                Ok(window.state_at(now))
            }
            Self::Untagged { tag, names } => Err(format!(
                "not sent: the instance has no tag {tag:?} naming one of the campaign's maintenance windows ({})",
                names.join(", ")
            )),
        }
    }
}

/// Up to 50 targets of one location: one SendCommand.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Batch {
    /// Unique within the location and run; stable across redeliveries.
    pub batch_id: u32,
    pub instance_ids: Vec<String>,
}

/// SendCommand's limit on InstanceIds.
pub const MAX_BATCH_SIZE: usize = 50;

/// Run one step on one batch: check safety, take rate tokens, SendCommand, then Poll.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExecuteJob {
    pub job_id: Uuid,
    pub run: RunContext,
    pub location: Location,
    pub batch: Batch,
    /// Index into the campaign's steps.
    pub step_index: u16,
    pub step: Step,
    /// True for patch documents: results carry compliance counts.
    pub collect_patch_compliance: bool,
    /// For a step that changes hosts: the run's target selection, which the
    /// sending worker checks the batch against (one
    /// DescribeInstanceInformation) right before SendCommand, sending only to
    /// the instances that still match. `None` for read-only steps.
    pub recheck: Option<crate::campaign::TargetSelection>,
    /// Per-target windows: the batch's instances' window; `None` without
    /// `window_tag` (the run's own windows, if any, hold every batch).
    pub window: Option<TargetWindow>,
}

impl ExecuteJob {
    /// The id of the Execute job for one step of one batch: the same whoever
    /// derives it and however often, so a job published twice is one job, and its
    /// idempotency record in Redis stops the second copy from sending again.
    pub fn derive_id(run_id: Uuid, location: &Location, batch_id: u32, step_index: u16) -> Uuid {
        let name = format!(
            "execute/{}/{}/{batch_id}/{step_index}",
            location.account_id, location.region
        );
        Uuid::new_v5(&run_id, name.as_bytes())
    }
}

impl DiscoverJob {
    /// The id of the Discover job for one page of one location (see [`ExecuteJob::derive_id`]).
    pub fn derive_id(run_id: Uuid, location: &Location, page: u32) -> Uuid {
        let name = format!(
            "discover/{}/{}/{page}",
            location.account_id, location.region
        );
        Uuid::new_v5(&run_id, name.as_bytes())
    }
}

/// Look at a sent command's invocations; re-published through a delay queue until
/// every target is terminal or the deadline passes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PollJob {
    pub job_id: Uuid,
    /// The Execute job that sent the command: what ran, where, on which batch.
    pub execute: ExecuteJob,
    pub command_id: String,
    pub sent_at: UnixMillis,
    /// After this, targets still running are reported as timed out.
    pub deadline: UnixMillis,
    /// How many polls came before this one (drives the growing delay).
    pub attempt: u32,
    /// CancelCommand was called for the command (a kill switch with
    /// cancel-in-flight, or the run was cancelled): not called again.
    pub cancel_sent: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_ids_are_stable_and_distinct() {
        let run = Uuid::new_v4();
        let here = Location {
            account_id: "111122223333".into(),
            region: "us-east-1".into(),
        };
        let there = Location {
            region: "us-west-2".into(),
            ..here.clone()
        };
        assert_eq!(
            ExecuteJob::derive_id(run, &here, 3, 0),
            ExecuteJob::derive_id(run, &here, 3, 0)
        );
        let ids = [
            ExecuteJob::derive_id(run, &here, 3, 0),
            ExecuteJob::derive_id(run, &here, 3, 1),
            ExecuteJob::derive_id(run, &here, 4, 0),
            ExecuteJob::derive_id(run, &there, 3, 0),
            ExecuteJob::derive_id(Uuid::new_v4(), &here, 3, 0),
            DiscoverJob::derive_id(run, &here, 3),
        ];
        let distinct: std::collections::HashSet<_> = ids.iter().collect();
        assert_eq!(distinct.len(), ids.len());
    }
}

//! Reports: what workers tell the scheduler, on the reports queue.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::campaign::Platform;
use crate::job::{Location, UnixMillis};
use crate::status::StatusDetail;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Report {
    TargetsDiscovered(TargetsDiscovered),
    LocationFailed(LocationFailed),
    StepResults(StepResults),
}

impl Report {
    pub fn run_id(&self) -> Uuid {
        match self {
            Self::TargetsDiscovered(report) => report.run_id,
            Self::LocationFailed(report) => report.run_id,
            Self::StepResults(report) => report.run_id,
        }
    }
}

/// Several reports in one message (envelope kind
/// [`crate::envelope::MessageKind::Reports`]): a worker sends what its jobs
/// report within a few milliseconds together — one publish, one signature
/// and one delivery for all. Each is checked and applied as if it came alone.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reports(pub Vec<Report>);

/// The most reports one [`Reports`] message carries; a scheduler refuses
/// more (and none) without acting on any of them.
pub const MAX_BUNDLED_REPORTS: usize = 64;

/// One page of discovered targets; the scheduler turns it into one batch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TargetsDiscovered {
    pub run_id: Uuid,
    pub location: Location,
    pub page: u32,
    pub targets: Vec<DiscoveredTarget>,
    /// True on the location's last page: its target count is now known.
    pub last_page: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiscoveredTarget {
    pub instance_id: String,
    pub platform: Option<Platform>,
    pub online: bool,
    /// Per-target windows: the window the instance's `window_tag` tag names
    /// (one of the campaign's); None without `window_tag`, or when it names none.
    pub window: Option<String>,
}

/// The location cannot be worked on as a whole (counts against location_max_errors).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LocationFailed {
    pub run_id: Uuid,
    pub location: Location,
    pub reason: LocationFailure,
    /// What AWS said, for the operator; never credentials.
    pub detail: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum LocationFailure {
    /// The execution role could not be assumed (missing, trust policy, ExternalId).
    AccessDenied,
    /// AWS refused the location's requests (e.g. the region is not enabled
    /// for the account, a bad parameter), or the job could not be acted on:
    /// repeating will not help. (Variant 1 on the wire, as before.)
    Rejected,
    /// Retries were exhausted on a transient error.
    RetriesExhausted,
    /// SSM refused to send a step here for what the location's targets
    /// share (a document of the deployment's own missing or different in
    /// this account, its parameters): the location fails, its targets are
    /// reported Not Started, and the target error budget is not charged.
    SendRefused,
    /// SSM refused an AWS-owned document's step itself (unknown name,
    /// version, parameters, output settings): every location would fail
    /// alike, so the run halts with the cause; no target is charged.
    StepRefused,
}

impl LocationFailure {
    /// True when the failure is the step's, not the location's: the run
    /// halts at the first one.
    pub fn is_run_wide(self) -> bool {
        self == Self::StepRefused
    }
}

/// Terminal results of one step on (part of) one batch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepResults {
    pub run_id: Uuid,
    pub location: Location,
    pub batch_id: u32,
    pub step_index: u16,
    pub results: Vec<TargetResult>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TargetResult {
    pub instance_id: String,
    /// SSM's status detail; its coarse status is `status.status()`.
    pub status: StatusDetail,
    /// None for targets never sent the step.
    pub command_id: Option<String>,
    pub requested_at: Option<UnixMillis>,
    pub started_at: Option<UnixMillis>,
    pub finished_at: Option<UnixMillis>,
    pub response_code: Option<i32>,
    /// The start of the command's output, as SSM returns it (at most 2,500 characters).
    pub output_excerpt: String,
    pub compliance: Option<PatchCompliance>,
    /// Why `compliance` is missing for a patch step the target succeeded on
    /// (DescribeInstancePatchStates failed): the result is reported anyway,
    /// with its true status.
    pub compliance_missing: Option<String>,
}

impl TargetResult {
    /// A target the step was never sent to, and why (the first 500
    /// characters of it).
    pub fn not_started(instance_id: &str, reason: &str) -> Self {
        Self {
            instance_id: instance_id.to_string(),
            status: StatusDetail::NotStarted,
            command_id: None,
            requested_at: None,
            started_at: None,
            finished_at: None,
            response_code: None,
            output_excerpt: reason.chars().take(500).collect(),
            compliance: None,
            compliance_missing: None,
        }
    }
}

/// Patch compliance counts of one instance, as DescribeInstancePatchStates reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct PatchCompliance {
    pub operation: PatchOperation,
    pub installed: u32,
    pub installed_other: u32,
    pub installed_pending_reboot: u32,
    pub installed_rejected: u32,
    pub missing: u32,
    pub failed: u32,
    pub not_applicable: u32,
    pub critical_non_compliant: u32,
    pub security_non_compliant: u32,
    pub other_non_compliant: u32,
}

impl PatchCompliance {
    /// Compliant when nothing is missing, failed or waiting for a reboot.
    pub fn is_compliant(&self) -> bool {
        self.missing == 0 && self.failed == 0 && self.installed_pending_reboot == 0
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub enum PatchOperation {
    #[default]
    Scan,
    Install,
}

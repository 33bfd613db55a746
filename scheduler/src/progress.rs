//! A run's progress as operators see it, read from the run's ledger fields
//! and result counters.

use protocol::run_fields::RunField;
use std::collections::{BTreeMap, HashMap};

use protocol::run::RunState;
use uuid::Uuid;

use crate::SchedulerError;
use crate::ledger::RunFields;

/// A run's progress, as operators see it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RunProgress {
    pub run_id: Uuid,
    pub campaign: String,
    /// The stored campaign version it runs (absent for runs of unstored specs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub campaign_version: Option<u32>,
    pub state: RunState,
    pub reason: String,
    /// Every result is in: the run completed, or stopped and reported what it
    /// never started.
    pub finished: bool,
    pub total_targets: u64,
    pub locations: u64,
    pub locations_discovered: u64,
    pub locations_failed: u64,
    pub locations_done: u64,
    pub active_locations: u64,
    pub targets_in_flight: u64,
    pub failures: u64,
    pub allowed_errors: Option<u64>,
    /// Results per step, by SSM status detail (`Success`, `Failed`, `Not Started`, …).
    pub results: BTreeMap<u16, BTreeMap<String, u64>>,
    /// Where the per-target results files go: a directory or `s3://…`.
    pub results_location: String,
    /// The principal that started it: a token's name, `anonymous`,
    /// `schedule:<campaign>` or `event:<instance>`.
    #[serde(default)]
    pub started_by: String,
    /// What its starter overrode (accounts, regions, instances, parameters),
    /// and who; absent for a run of the campaign as stored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overrides: Option<String>,
    /// A rollout's waves (empty without one, or before discovery ends).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub waves: Vec<crate::rollout::WaveProgress>,
    /// While baking between two waves: when the bake ends (Unix ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bake_until_ms: Option<u64>,
    /// When the run was made (Unix ms).
    #[serde(default)]
    pub created_ms: u64,
    /// When it reached a final state (Unix ms, Redis's clock); absent while
    /// it lives and for runs ended by older versions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended_ms: Option<u64>,
    /// The most common causes of failure, most targets first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub top_failures: Vec<FailureKind>,
    /// Set when the run's record cannot be read (a garbled field, a deleted
    /// hash): why. Such a run is listed as Halted with nothing counted; the
    /// scheduler skips it and goes on with every other run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unreadable: Option<String>,
}

/// Failed targets of one step and status with one cause (the first line of
/// their output, host-specific parts masked).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FailureKind {
    pub step: u16,
    pub status: String,
    pub cause: String,
    pub targets: u64,
}

/// Causes a run's progress lists.
const TOP_FAILURES: usize = 10;

impl RunProgress {
    /// The listing of a run whose record cannot be read.
    pub fn unreadable(run_id: Uuid, why: String) -> Self {
        Self {
            run_id,
            campaign: String::new(),
            campaign_version: None,
            state: RunState::Halted,
            reason: format!("run record unreadable: {why}"),
            finished: true,
            total_targets: 0,
            locations: 0,
            locations_discovered: 0,
            locations_failed: 0,
            locations_done: 0,
            active_locations: 0,
            targets_in_flight: 0,
            failures: 0,
            allowed_errors: None,
            results: BTreeMap::new(),
            results_location: String::new(),
            started_by: String::new(),
            overrides: None,
            waves: Vec::new(),
            bake_until_ms: None,
            created_ms: 0,
            ended_ms: None,
            top_failures: Vec::new(),
            unreadable: Some(why),
        }
    }

    /// Results of one step, summed over statuses.
    pub fn step_results(&self, step_index: u16) -> u64 {
        self.results
            .get(&step_index)
            .map_or(0, |statuses| statuses.values().sum())
    }
}

pub(crate) fn progress_from(
    run_id: Uuid,
    fields: &RunFields,
    counters: HashMap<String, u64>,
) -> Result<RunProgress, SchedulerError> {
    let mut results: BTreeMap<u16, BTreeMap<String, u64>> = BTreeMap::new();
    let mut top_failures = Vec::new();
    for (field, count) in counters {
        if let Some(kind) = field.strip_prefix("f:") {
            let mut parts = kind.splitn(3, ':');
            if let (Some(step), Some(status), Some(cause)) =
                (parts.next(), parts.next(), parts.next())
                && let Ok(step) = step.parse()
            {
                top_failures.push(FailureKind {
                    step,
                    status: status.to_string(),
                    cause: cause.to_string(),
                    targets: count,
                });
            }
            continue;
        }
        let Some((step, status)) = field.split_once(':') else {
            continue;
        };
        let Ok(step) = step.parse::<u16>() else {
            continue;
        };
        *results
            .entry(step)
            .or_default()
            .entry(status.to_string())
            .or_default() += count;
    }
    let state = fields.state()?;
    Ok(RunProgress {
        run_id,
        campaign: fields
            .get(RunField::Campaign)
            .unwrap_or_default()
            .to_string(),
        campaign_version: fields
            .get(RunField::CampaignVersion)
            .and_then(|version| version.parse().ok()),
        state,
        finished: state == RunState::Completed
            || (state.is_final() && fields.get(RunField::Drained).is_some()),
        reason: fields.get(RunField::Reason).unwrap_or_default().to_string(),
        total_targets: fields.number(RunField::Total)?,
        locations: fields.number(RunField::LocationCount)?,
        locations_discovered: fields.number(RunField::DiscoveredLocations)?,
        locations_failed: fields.number(RunField::FailedLocations)?,
        locations_done: fields.number(RunField::LocationsDone)?,
        active_locations: fields.number(RunField::ActiveLocations)?,
        targets_in_flight: fields.number(RunField::InFlight)?,
        failures: fields.number(RunField::Failures)?,
        allowed_errors: fields.optional_number(RunField::AllowedErrors)?,
        results,
        // Runs recorded before the field's rename name it `output_dir`.
        results_location: fields
            .get(RunField::ResultsLocation)
            .or_else(|| fields.get(RunField::OutputDir))
            .unwrap_or_default()
            .to_string(),
        started_by: fields
            .get(RunField::StartedBy)
            .unwrap_or_default()
            .to_string(),
        overrides: fields.get(RunField::Overrides).map(str::to_string),
        waves: crate::rollout::waves_of(fields)?,
        bake_until_ms: if state == RunState::Baking {
            Some(fields.number(RunField::BakeUntil)?)
        } else {
            None
        },
        created_ms: fields.number(RunField::CreatedMs)?,
        ended_ms: fields.optional_number(RunField::EndedMs)?,
        top_failures: {
            top_failures.sort_by(|a, b| {
                b.targets
                    .cmp(&a.targets)
                    .then_with(|| (a.step, &a.status, &a.cause).cmp(&(b.step, &b.status, &b.cause)))
            });
            top_failures.truncate(TOP_FAILURES);
            top_failures
        },
        unreadable: None,
    })
}

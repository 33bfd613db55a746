//! What the ledger stores, as Rust sees it: batch entries, location
//! statuses, a run's fields, and how they map to the run's Redis keys. No IO.

use std::collections::HashMap;

use protocol::job::Location;
use protocol::run::RunState;
use protocol::run_fields::{RunField, WaveField};
use serde::{Deserialize, Serialize};

use crate::SchedulerError;
use crate::scripts::BATCH_STRIDE;

/// A batch waiting for, or holding, room under max_concurrency.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchEntry {
    /// `account/region`
    #[serde(rename = "l")]
    pub location: String,
    #[serde(rename = "b")]
    pub batch_id: u32,
    #[serde(rename = "s")]
    pub step_index: u16,
    #[serde(rename = "i")]
    pub instance_ids: Vec<String>,
    /// Per-target windows: the index (from 1) of the campaign's window its
    /// instances are in, 0 for none; absent without `window_tag`.
    #[serde(rename = "w", default, skip_serializing_if = "Option::is_none")]
    pub window: Option<u16>,
}

impl BatchEntry {
    pub fn key(&self) -> String {
        format!("{}|{}|{}", self.location, self.batch_id, self.step_index)
    }

    pub fn location(&self) -> Result<Location, SchedulerError> {
        parse_location(&self.location)
    }
}

pub fn location_key(location: &Location) -> String {
    format!("{}/{}", location.account_id, location.region)
}

pub fn parse_location(key: &str) -> Result<Location, SchedulerError> {
    let (account_id, region) = key
        .split_once('/')
        .ok_or_else(|| SchedulerError::Corrupt(format!("location key {key:?}")))?;
    Ok(Location {
        account_id: account_id.to_string(),
        region: region.to_string(),
    })
}

/// One location of a run, as operators see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LocationStatus {
    pub account_id: String,
    pub region: String,
    /// queued (discovery not opened yet), discovering, failed, waiting,
    /// active or done.
    pub state: String,
    pub targets: u64,
    /// Batches not yet through every step (active locations).
    pub batches_left: u64,
    pub failure: Option<String>,
    /// Targets whose results are in, and how many of them failed.
    #[serde(default)]
    pub results: u64,
    #[serde(default)]
    pub target_failures: u64,
}

/// What the ledger knows about a report's claims, read before the report is
/// acted on.
/// What recording a page of discovered targets did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageRecorded {
    /// False for a page recorded before (a redelivered report).
    pub new: bool,
    /// This page was the location's last one in: it is ready for admission.
    pub location_discovered: bool,
    /// ... and every location of the run is discovered: the total is known.
    pub all_discovered: bool,
}

/// One results report as the ledger applies it ([`super::Ledger::apply_results_bundle`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResultsApplication {
    /// The batch-step's [`BatchEntry::key`].
    pub entry_key: String,
    /// The batch's [`location_key`].
    pub location: String,
    /// Targets reported (all leave the in-flight count).
    pub targets: usize,
    /// Targets that count against the error budget.
    pub failures: u64,
    /// Targets per `step:status`, failed targets per `f:step:status:cause`.
    pub counters: HashMap<String, u64>,
    /// The batch's next step (its targets that succeeded), if there is one.
    pub next: Option<BatchEntry>,
}

/// What a report is checked against ([`super::Ledger::report_scope`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScopeQuery<'a> {
    /// Its location is one of the run's (a discovery report).
    Location,
    /// ... and whether execution began there (a failed location).
    Execution,
    /// ... and the batch-step with this [`BatchEntry::key`]: admitted, or
    /// applied already (a results report).
    Batch(&'a str),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportScope {
    /// The report's location is one of the run's.
    pub location_in_run: bool,
    /// The batch-step the report is about, while it is admitted.
    pub admitted: Option<BatchEntry>,
    /// Its results were applied already (a redelivered report).
    pub applied: bool,
    /// Execution began in the location (its batches were activated): only
    /// then can a send have been refused there.
    pub executing: bool,
}

/// What `create_run` stores about a run besides its locations.
#[derive(Debug, Clone)]
pub struct NewRun<'a> {
    pub campaign: &'a str,
    pub campaign_version: u32,
    /// The spec as JSON, to rebuild the campaign after a restart.
    pub spec_json: &'a str,
    pub priority: &'a str,
    pub location_concurrency: u64,
    pub allowed_location_errors: u64,
    pub results_location: &'a str,
    /// The location limit the run's spec is read back under.
    pub max_locations: u64,
    pub created_ms: u64,
    /// Discovering at once, or Pending until `start_after_ms`.
    pub start_after_ms: Option<u64>,
    /// Stop after discovery (a plan of what would be targeted).
    pub plan_only: bool,
    /// Targets instead of the campaign's (an event's one instance), as JSON.
    pub targets_json: Option<&'a str>,
    /// What started the run (operator, schedule, event), for operators.
    pub started_by: &'a str,
    /// A rollout's bake time between waves (ms); None without a rollout.
    pub rollout_bake_ms: Option<u64>,
    /// Started during a change freeze by an override, and why.
    pub freeze_override: Option<&'a str>,
    /// What the starter overrode, and who.
    pub overrides: Option<&'a str>,
    /// With maintenance windows: the end of the one open at creation (0
    /// while all are closed); workers send only before it.
    pub send_until_ms: Option<u64>,
}

/// A run as the ledger holds it (the run hash, counters separately), read
/// by [`RunField`]: the names are written once (`protocol::run_fields`), and
/// a required field that is missing, or a number that does not parse, is an
/// error — never a silent 0.
#[derive(Debug, Clone, Default)]
pub struct RunFields(pub HashMap<String, String>);

impl RunFields {
    pub fn get(&self, field: RunField) -> Option<&str> {
        self.0.get(field.as_str()).map(String::as_str)
    }

    /// A required field's text; absent, the record is broken.
    pub fn required(&self, field: RunField) -> Result<&str, SchedulerError> {
        self.get(field).ok_or_else(|| {
            SchedulerError::Corrupt(format!("the run record has no {}", field.as_str()))
        })
    }

    /// A counter or limit. Absent: an error for a required field, 0 for an
    /// optional one (not written yet); not a number: an error.
    pub fn number(&self, field: RunField) -> Result<u64, SchedulerError> {
        match self.get(field) {
            Some(text) => parse_number(field.as_str(), text),
            None if field.is_required() => Err(SchedulerError::Corrupt(format!(
                "the run record has no {}",
                field.as_str()
            ))),
            None => Ok(0),
        }
    }

    /// An optional number: `None` while it is not written.
    pub fn optional_number(&self, field: RunField) -> Result<Option<u64>, SchedulerError> {
        self.get(field)
            .map(|text| parse_number(field.as_str(), text))
            .transpose()
    }

    /// A field of rollout wave `wave` (0-based).
    pub fn wave(&self, wave: u64, field: WaveField) -> Option<&str> {
        self.0.get(&field.of(wave)).map(String::as_str)
    }

    /// A number of rollout wave `wave`: `None` while it is not written.
    pub fn wave_number(&self, wave: u64, field: WaveField) -> Result<Option<u64>, SchedulerError> {
        self.wave(wave, field)
            .map(|text| parse_number(&field.of(wave), text))
            .transpose()
    }

    pub fn state(&self) -> Result<RunState, SchedulerError> {
        parse_run_state(self.get(RunField::State))
    }

    /// A final run with nothing left to do: completed, or drained (the
    /// targets it never started reported as such).
    pub fn is_settled(&self, state: RunState) -> bool {
        state.is_final() && (state == RunState::Completed || self.get(RunField::Drained).is_some())
    }
}

/// A number of the run hash: a counter may dip below zero between two
/// updates of one report (read as 0); anything else that is not a number
/// is an error.
fn parse_number(name: &str, text: &str) -> Result<u64, SchedulerError> {
    text.parse::<i64>()
        .map(|value| u64::try_from(value).unwrap_or(0))
        .map_err(|_| {
            SchedulerError::Corrupt(format!("run record field {name} is {text:?}, not a number"))
        })
}

/// The run hash's `state` field.
pub(super) fn parse_run_state(state: Option<&str>) -> Result<RunState, SchedulerError> {
    state
        .ok_or_else(|| SchedulerError::Corrupt("run without a state".into()))?
        .parse()
        .map_err(SchedulerError::Corrupt)
}

/// The run hash `create_run` writes.
pub(super) fn run_hash_fields(run: &NewRun<'_>, location_count: usize) -> Vec<(RunField, String)> {
    let state = if run.start_after_ms.is_some() {
        RunState::Pending
    } else {
        RunState::Discovering
    };
    let mut fields: Vec<(RunField, String)> = vec![
        (RunField::Campaign, run.campaign.to_string()),
        (RunField::CampaignVersion, run.campaign_version.to_string()),
        (RunField::Spec, run.spec_json.to_string()),
        (RunField::Priority, run.priority.to_string()),
        (RunField::State, state.as_str().to_string()),
        (RunField::Reason, format!("started by {}", run.started_by)),
        (RunField::StartedBy, run.started_by.to_string()),
        (RunField::PlanOnly, u8::from(run.plan_only).to_string()),
        (RunField::CreatedMs, run.created_ms.to_string()),
        (RunField::LocationCount, location_count.to_string()),
        (
            RunField::LocationConcurrency,
            run.location_concurrency.to_string(),
        ),
        (
            RunField::AllowedLocationErrors,
            run.allowed_location_errors.to_string(),
        ),
        (RunField::ResultsLocation, run.results_location.to_string()),
        (RunField::MaxLocations, run.max_locations.to_string()),
        (RunField::Total, "0".into()),
        (RunField::InFlight, "0".into()),
        (RunField::Failures, "0".into()),
        (RunField::DiscoveredLocations, "0".into()),
        (RunField::FailedLocations, "0".into()),
        (RunField::LocationsDone, "0".into()),
    ];
    if let Some(targets) = run.targets_json {
        fields.push((RunField::Targets, targets.to_string()));
    }
    if let Some(until) = run.send_until_ms {
        fields.push((RunField::SendUntilMs, until.to_string()));
    }
    if let Some(why) = run.freeze_override {
        fields.push((RunField::FreezeOverride, why.to_string()));
    }
    if let Some(overrides) = run.overrides {
        fields.push((RunField::Overrides, overrides.to_string()));
    }
    if let Some(bake_ms) = run.rollout_bake_ms {
        fields.push((RunField::Rollout, "1".into()));
        fields.push((RunField::BakeMs, bake_ms.to_string()));
    }
    fields
}

/// Every location with its state, from the `location-state` hash.
pub(super) fn location_statuses(
    locations: &[String],
    state: &HashMap<String, String>,
) -> Result<Vec<LocationStatus>, SchedulerError> {
    let number = |key: String| state.get(&key).and_then(|value| value.parse::<i64>().ok());
    let mut statuses = Vec::with_capacity(locations.len());
    for key in locations {
        let location = parse_location(key)?;
        let failure = state.get(&format!("{key}:failed")).cloned();
        let pages = number(format!("{key}:pages"));
        let seen = number(format!("{key}:pages_seen")).unwrap_or(0);
        let remaining = number(format!("{key}:remaining")).unwrap_or(0).max(0);
        let opened = state.contains_key(&format!("{key}:published"));
        let label = if failure.is_some() {
            "failed"
        } else if state.contains_key(&format!("{key}:closed")) {
            // Its discovery ended with the run (a cancel).
            "closed"
        } else if pages.is_none() && seen == 0 && !opened {
            // Outside the discovery window so far (or being opened now).
            "queued"
        } else if pages != Some(seen) {
            "discovering"
        } else if !state.contains_key(&format!("{key}:activated")) {
            "waiting"
        } else if remaining > 0 {
            "active"
        } else {
            "done"
        };
        statuses.push(LocationStatus {
            account_id: location.account_id,
            region: location.region,
            state: label.to_string(),
            targets: u64::try_from(number(format!("{key}:targets")).unwrap_or(0)).unwrap_or(0),
            batches_left: u64::try_from(remaining).unwrap_or(0),
            failure,
            results: u64::try_from(number(format!("{key}:results")).unwrap_or(0)).unwrap_or(0),
            target_failures: u64::try_from(number(format!("{key}:target_failures")).unwrap_or(0))
                .unwrap_or(0),
        });
    }
    Ok(statuses)
}

/// A discovered page as the ledger keeps it until admission: its instance
/// ids, or — per-target windows — its ids by window.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum StoredPage {
    Ids(Vec<String>),
    Windowed(Vec<WindowGroup>),
}

/// The instances of a page in one window.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WindowGroup {
    /// The window's index (from 1) in the campaign's windows; 0 for none.
    #[serde(rename = "w")]
    pub window: u16,
    #[serde(rename = "i")]
    pub instance_ids: Vec<String>,
}

/// A never-admitted page (`location:page` → ids) as the batches it would
/// have been (one per window group).
pub(super) fn page_entries(
    field: &str,
    page: StoredPage,
) -> Result<Vec<BatchEntry>, SchedulerError> {
    let (location, number) = field
        .rsplit_once(':')
        .ok_or_else(|| SchedulerError::Corrupt(format!("page field {field:?}")))?;
    let number: u32 = number
        .parse()
        .map_err(|_| SchedulerError::Corrupt(format!("page field {field:?}")))?;
    let entry = |chunk: u32, instance_ids: Vec<String>, window: Option<u16>| BatchEntry {
        location: location.to_string(),
        batch_id: number.saturating_mul(BATCH_STRIDE).saturating_add(chunk),
        step_index: 0,
        instance_ids,
        window,
    };
    Ok(match page {
        StoredPage::Ids(ids) => vec![entry(0, ids, None)],
        StoredPage::Windowed(groups) => (0u32..)
            .zip(groups)
            .map(|(chunk, group)| entry(chunk, group.instance_ids, Some(group.window)))
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn record(pairs: &[(&str, &str)]) -> RunFields {
        RunFields(
            pairs
                .iter()
                .map(|(name, value)| (name.to_string(), value.to_string()))
                .collect(),
        )
    }

    #[test]
    fn a_missing_required_field_or_a_garbled_number_is_an_error_not_a_zero() {
        let fields = record(&[("total", "12"), ("failures", "x"), ("wave:1:targets", "5")]);
        assert_eq!(fields.number(RunField::Total).unwrap(), 12);
        let missing = fields.number(RunField::InFlight).unwrap_err().to_string();
        assert!(missing.contains("no in_flight"), "{missing}");
        let garbled = fields.number(RunField::Failures).unwrap_err().to_string();
        assert!(garbled.contains("failures is \"x\""), "{garbled}");
        // Optional fields not written yet read as 0 (or None).
        assert_eq!(fields.number(RunField::Wave).unwrap(), 0);
        assert_eq!(
            fields.optional_number(RunField::AllowedErrors).unwrap(),
            None
        );
        assert_eq!(fields.wave_number(1, WaveField::Targets).unwrap(), Some(5));
        assert_eq!(fields.wave_number(0, WaveField::Targets).unwrap(), None);
        assert!(fields.required(RunField::Campaign).is_err());
    }
}

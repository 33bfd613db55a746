//! What the ledger stores, as Rust sees it: batch entries, location
//! statuses, a run's fields, and how they map to the run's Redis keys. No IO.

use std::collections::HashMap;

use protocol::job::Location;
use protocol::run::RunState;
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

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportScope {
    /// The report's location is one of the run's.
    pub location_in_run: bool,
    /// The batch-step the report is about, while it is admitted.
    pub admitted: Option<BatchEntry>,
    /// Its results were applied already (a redelivered report).
    pub applied: bool,
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
    /// With maintenance windows: the end of the one open at creation (0
    /// while all are closed); workers send only before it.
    pub send_until_ms: Option<u64>,
}

/// A run as the ledger holds it (the run hash, counters separately).
#[derive(Debug, Clone, Default)]
pub struct RunFields(pub HashMap<String, String>);

impl RunFields {
    pub fn get(&self, field: &str) -> Option<&str> {
        self.0.get(field).map(String::as_str)
    }

    pub fn number(&self, field: &str) -> u64 {
        self.get(field)
            .and_then(|value| value.parse::<i64>().ok())
            .map_or(0, |value| u64::try_from(value).unwrap_or(0))
    }

    pub fn state(&self) -> Result<RunState, SchedulerError> {
        parse_run_state(self.get("state"))
    }

    /// A final run with nothing left to do: completed, or drained (the
    /// targets it never started reported as such).
    pub fn is_settled(&self, state: RunState) -> bool {
        state.is_final() && (state == RunState::Completed || self.get("drained").is_some())
    }
}

/// The run hash's `state` field.
pub(super) fn parse_run_state(state: Option<&str>) -> Result<RunState, SchedulerError> {
    state
        .ok_or_else(|| SchedulerError::Corrupt("run without a state".into()))?
        .parse()
        .map_err(SchedulerError::Corrupt)
}

/// The run hash `create_run` writes.
pub(super) fn run_hash_fields(
    run: &NewRun<'_>,
    location_count: usize,
) -> Vec<(&'static str, String)> {
    let state = if run.start_after_ms.is_some() {
        RunState::Pending
    } else {
        RunState::Discovering
    };
    let mut fields: Vec<(&'static str, String)> = vec![
        ("campaign", run.campaign.to_string()),
        ("campaign_version", run.campaign_version.to_string()),
        ("spec", run.spec_json.to_string()),
        ("priority", run.priority.to_string()),
        ("state", state.as_str().to_string()),
        ("reason", format!("started by {}", run.started_by)),
        ("started_by", run.started_by.to_string()),
        ("plan_only", u8::from(run.plan_only).to_string()),
        ("created_ms", run.created_ms.to_string()),
        ("location_count", location_count.to_string()),
        ("location_concurrency", run.location_concurrency.to_string()),
        (
            "allowed_location_errors",
            run.allowed_location_errors.to_string(),
        ),
        ("results_location", run.results_location.to_string()),
        ("max_locations", run.max_locations.to_string()),
        ("total", "0".into()),
        ("in_flight", "0".into()),
        ("failures", "0".into()),
        ("discovered_locations", "0".into()),
        ("failed_locations", "0".into()),
        ("locations_done", "0".into()),
    ];
    if let Some(targets) = run.targets_json {
        fields.push(("targets", targets.to_string()));
    }
    if let Some(until) = run.send_until_ms {
        fields.push(("send_until_ms", until.to_string()));
    }
    if let Some(why) = run.freeze_override {
        fields.push(("freeze_override", why.to_string()));
    }
    if let Some(bake_ms) = run.rollout_bake_ms {
        fields.push(("rollout", "1".into()));
        fields.push(("bake_ms", bake_ms.to_string()));
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

/// A never-admitted page (`location:page` → ids) as the batch it would have been.
pub(super) fn page_entry(
    field: &str,
    instance_ids: Vec<String>,
) -> Result<BatchEntry, SchedulerError> {
    let (location, page) = field
        .rsplit_once(':')
        .ok_or_else(|| SchedulerError::Corrupt(format!("page field {field:?}")))?;
    let page: u32 = page
        .parse()
        .map_err(|_| SchedulerError::Corrupt(format!("page field {field:?}")))?;
    Ok(BatchEntry {
        location: location.to_string(),
        batch_id: page.saturating_mul(BATCH_STRIDE),
        step_index: 0,
        instance_ids,
    })
}

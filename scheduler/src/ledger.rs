//! The run ledger in Redis (real, or the in-memory one of `memory://` URLs):
//! everything the scheduler knows about a run, so a restarted scheduler (or
//! another replica) continues where it was. Every update is one Lua script
//! over the run's keys (one `{run-id}` hash tag; the scripts are in
//! [`crate::scripts`]), and every update from a report is applied at most once
//! (the `applied` set), so a redelivered report changes nothing.
//!
//! Keys (see `protocol::names`): the run hash (state, totals, limits, counts),
//! `locations` (FIFO), `location-state` (per location: pages, failure,
//! batches remaining), `pages` (discovered targets not yet admitted), `pending`
//! (batches waiting for room), `admitted` (sent to workers, not yet reported),
//! `applied` (reports already counted) and `counters` (results per step and status).

use std::collections::HashMap;

use protocol::job::Location;
use protocol::names::Names;
use protocol::run::RunState;
use redis::{AsyncCommands, Script};
use serde::{Deserialize, Serialize};
use store::Connection;
use uuid::Uuid;

use crate::SchedulerError;
use crate::scripts::{
    ADMIT, APPLY_RESULTS, BATCH_STRIDE, COMPLETE_IF_DONE, LOCATION_FAILED, MARK_DRAINED,
    RECORD_PAGE, START_EXECUTION, TRANSITION,
};

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
    /// discovering, failed, waiting, active or done.
    pub state: String,
    pub targets: u64,
    /// Batches not yet through every step (active locations).
    pub batches_left: u64,
    pub failure: Option<String>,
}

/// What the ledger knows about a report's claims, read before the report is
/// acted on.
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
    pub created_ms: u64,
    /// Discovering at once, or Pending until `start_after_ms`.
    pub start_after_ms: Option<u64>,
    /// Stop after discovery (a plan of what would be targeted).
    pub plan_only: bool,
    /// Targets instead of the campaign's (an event's one instance), as JSON.
    pub targets_json: Option<&'a str>,
    /// What started the run (operator, schedule, event), for operators.
    pub started_by: &'a str,
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
}

/// The run hash's `state` field.
fn parse_run_state(state: Option<&str>) -> Result<RunState, SchedulerError> {
    state
        .ok_or_else(|| SchedulerError::Corrupt("run without a state".into()))?
        .parse()
        .map_err(SchedulerError::Corrupt)
}

/// The ledger of every run, in Redis (real or in memory).
#[derive(Clone)]
pub struct Ledger {
    connection: Connection,
    names: Names,
}

/// The run hash `create_run` writes.
fn run_hash_fields(run: &NewRun<'_>, location_count: usize) -> Vec<(&'static str, String)> {
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
    fields
}

/// Every location with its state, from the `location-state` hash.
fn location_statuses(
    locations: &[String],
    state: &HashMap<String, String>,
    next_location: u64,
) -> Result<Vec<LocationStatus>, SchedulerError> {
    let number = |key: String| state.get(&key).and_then(|value| value.parse::<i64>().ok());
    let mut statuses = Vec::with_capacity(locations.len());
    for (index, key) in locations.iter().enumerate() {
        let location = parse_location(key)?;
        let failure = state.get(&format!("{key}:failed")).cloned();
        let pages = number(format!("{key}:pages"));
        let seen = number(format!("{key}:pages_seen")).unwrap_or(0);
        let remaining = number(format!("{key}:remaining")).unwrap_or(0).max(0);
        let label = if failure.is_some() {
            "failed"
        } else if pages != Some(seen) {
            "discovering"
        } else if (index as u64) >= next_location {
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
        });
    }
    Ok(statuses)
}

/// A never-admitted page (`location:page` → ids) as the batch it would have been.
fn page_entry(field: &str, instance_ids: Vec<String>) -> Result<BatchEntry, SchedulerError> {
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

impl Ledger {
    pub fn new(connection: Connection, names: Names) -> Self {
        Self { connection, names }
    }

    pub fn names(&self) -> &Names {
        &self.names
    }

    /// The connection the campaign store, schedules, audit and tokens share.
    pub(crate) fn connection(&self) -> Connection {
        self.connection.clone()
    }

    fn keys(&self, run_id: Uuid) -> [String; 8] {
        let names = &self.names;
        [
            names.run_key(run_id),
            names.run_locations_key(run_id),
            names.run_location_state_key(run_id),
            names.run_pages_key(run_id),
            names.run_pending_key(run_id),
            names.run_admitted_key(run_id),
            names.run_applied_key(run_id),
            names.run_counters_key(run_id),
        ]
    }

    fn invocation<'a>(&self, script: &'a Script, run_id: Uuid) -> redis::ScriptInvocation<'a> {
        let mut invocation = script.prepare_invoke();
        for key in self.keys(run_id) {
            invocation.key(key);
        }
        invocation
    }

    pub async fn create_run(
        &self,
        run_id: Uuid,
        run: &NewRun<'_>,
        locations: &[Location],
    ) -> Result<(), SchedulerError> {
        let location_keys: Vec<String> = locations.iter().map(location_key).collect();
        let mut connection = self.connection.clone();
        let fields = run_hash_fields(run, locations.len());
        let mut pipe = redis::pipe();
        pipe.atomic()
            .hset_multiple(self.names.run_key(run_id), &fields);
        if let Some(start_after_ms) = run.start_after_ms {
            pipe.zadd(
                self.names.pending_runs_key(),
                run_id.to_string(),
                start_after_ms,
            );
        }
        if !location_keys.is_empty() {
            pipe.rpush(self.names.run_locations_key(run_id), &location_keys);
            // Bounded commands: one SADD of 200,000 members would stall Redis.
            for chunk in location_keys.chunks(10_000) {
                pipe.sadd(self.names.run_location_set_key(run_id), chunk);
            }
        }
        pipe.zadd(
            self.names.runs_index_key(),
            run_id.to_string(),
            run.created_ms,
        );
        let () = pipe.query_async(&mut connection).await?;
        Ok(())
    }

    /// Records what every job of the run must match (idempotent: the same
    /// run always yields the same contract). Before the first job is published.
    pub async fn record_contract(
        &self,
        run_id: Uuid,
        contract: &protocol::run::RunContract,
    ) -> Result<(), SchedulerError> {
        let json = serde_json::to_string(contract)?;
        let mut connection = self.connection.clone();
        let () = connection
            .hset(self.names.run_key(run_id), "contract", json)
            .await?;
        Ok(())
    }

    /// Reads what a report about `location` (and, for results, the batch-step
    /// `entry_key`) must match, in one round trip.
    pub async fn report_scope(
        &self,
        run_id: Uuid,
        location: &Location,
        entry_key: Option<&str>,
    ) -> Result<ReportScope, SchedulerError> {
        let location = location_key(location);
        let mut connection = self.connection.clone();
        let key = entry_key.unwrap_or_default();
        let (location_in_run, admitted, applied): (bool, Option<String>, bool) = redis::pipe()
            .sismember(self.names.run_location_set_key(run_id), &location)
            .hget(self.names.run_admitted_key(run_id), key)
            .sismember(self.names.run_applied_key(run_id), format!("results:{key}"))
            .query_async(&mut connection)
            .await?;
        let admitted = match (entry_key, admitted) {
            (Some(_), Some(raw)) => Some(serde_json::from_str(&raw)?),
            _ => None,
        };
        Ok(ReportScope {
            location_in_run,
            admitted,
            applied: entry_key.is_some() && applied,
        })
    }

    /// Returns (new, discovery complete).
    pub async fn record_page(
        &self,
        run_id: Uuid,
        location: &Location,
        page: u32,
        instance_ids: &[String],
        last_page: bool,
    ) -> Result<(bool, bool), SchedulerError> {
        let mut connection = self.connection.clone();
        let ids = serde_json::to_string(instance_ids)?;
        let (new, complete): (u8, u8) = self
            .invocation(&RECORD_PAGE, run_id)
            .arg(location_key(location))
            .arg(page)
            .arg(ids)
            .arg(instance_ids.len())
            .arg(u8::from(last_page))
            .invoke_async(&mut connection)
            .await?;
        Ok((new == 1, complete == 1))
    }

    /// Returns (new, discovery complete).
    pub async fn record_location_failed(
        &self,
        run_id: Uuid,
        location: &Location,
        reason: &str,
    ) -> Result<(bool, bool), SchedulerError> {
        let mut connection = self.connection.clone();
        let (new, complete): (u8, u8) = self
            .invocation(&LOCATION_FAILED, run_id)
            .arg(location_key(location))
            .arg(reason)
            .invoke_async(&mut connection)
            .await?;
        Ok((new == 1, complete == 1))
    }

    pub async fn start_execution(
        &self,
        run_id: Uuid,
        max_in_flight: u64,
        batch_size: u64,
        allowed_errors: u64,
    ) -> Result<RunState, SchedulerError> {
        let mut connection = self.connection.clone();
        let state: String = self
            .invocation(&START_EXECUTION, run_id)
            .arg(max_in_flight)
            .arg(batch_size)
            .arg(allowed_errors)
            .invoke_async(&mut connection)
            .await?;
        state.parse().map_err(SchedulerError::Corrupt)
    }

    pub async fn admit(&self, run_id: Uuid) -> Result<Vec<BatchEntry>, SchedulerError> {
        let mut connection = self.connection.clone();
        let raw: Vec<String> = self
            .invocation(&ADMIT, run_id)
            .invoke_async(&mut connection)
            .await?;
        raw.iter()
            .map(|entry| serde_json::from_str(entry).map_err(SchedulerError::from))
            .collect()
    }

    /// Returns (new, state after).
    #[allow(clippy::too_many_arguments)]
    pub async fn apply_results(
        &self,
        run_id: Uuid,
        entry_key: &str,
        location: &Location,
        targets: usize,
        failures: u64,
        counters: &HashMap<String, u64>,
        next: Option<&BatchEntry>,
    ) -> Result<(bool, RunState), SchedulerError> {
        let mut connection = self.connection.clone();
        let next = next
            .map(serde_json::to_string)
            .transpose()?
            .unwrap_or_default();
        let (new, state): (u8, String) = self
            .invocation(&APPLY_RESULTS, run_id)
            .arg(entry_key)
            .arg(location_key(location))
            .arg(targets)
            .arg(failures)
            .arg(serde_json::to_string(counters)?)
            .arg(next)
            .invoke_async(&mut connection)
            .await?;
        Ok((new == 1, state.parse().map_err(SchedulerError::Corrupt)?))
    }

    pub async fn complete_if_done(&self, run_id: Uuid) -> Result<RunState, SchedulerError> {
        let mut connection = self.connection.clone();
        let state: String = self
            .invocation(&COMPLETE_IF_DONE, run_id)
            .invoke_async(&mut connection)
            .await?;
        state.parse().map_err(SchedulerError::Corrupt)
    }

    /// Moves the run from one of `from` to `to`; false if it was in none of them.
    pub async fn transition(
        &self,
        run_id: Uuid,
        from: &[RunState],
        to: RunState,
        reason: &str,
    ) -> Result<bool, SchedulerError> {
        let mut connection = self.connection.clone();
        let from: Vec<&str> = from.iter().map(|state| state.as_str()).collect();
        let changed: u8 = self
            .invocation(&TRANSITION, run_id)
            .arg(from.join(","))
            .arg(to.as_str())
            .arg(reason)
            .invoke_async(&mut connection)
            .await?;
        Ok(changed == 1)
    }

    pub async fn run_fields(&self, run_id: Uuid) -> Result<Option<RunFields>, SchedulerError> {
        let mut connection = self.connection.clone();
        let fields: HashMap<String, String> =
            connection.hgetall(self.names.run_key(run_id)).await?;
        Ok((!fields.is_empty()).then_some(RunFields(fields)))
    }

    pub async fn counters(&self, run_id: Uuid) -> Result<HashMap<String, u64>, SchedulerError> {
        let mut connection = self.connection.clone();
        Ok(connection
            .hgetall(self.names.run_counters_key(run_id))
            .await?)
    }

    /// The run's locations in admission order.
    pub async fn locations(&self, run_id: Uuid) -> Result<Vec<Location>, SchedulerError> {
        let mut connection = self.connection.clone();
        let keys: Vec<String> = connection
            .lrange(self.names.run_locations_key(run_id), 0, -1)
            .await?;
        keys.iter().map(|key| parse_location(key)).collect()
    }

    /// Every location with its state, in admission order.
    pub async fn location_statuses(
        &self,
        run_id: Uuid,
    ) -> Result<Vec<LocationStatus>, SchedulerError> {
        let mut connection = self.connection.clone();
        let locations: Vec<String> = connection
            .lrange(self.names.run_locations_key(run_id), 0, -1)
            .await?;
        let state: HashMap<String, String> = connection
            .hgetall(self.names.run_location_state_key(run_id))
            .await?;
        let next_location: Option<u64> = connection
            .hget(self.names.run_key(run_id), "next_location")
            .await?;
        location_statuses(&locations, &state, next_location.unwrap_or(0))
    }

    /// Batches sent to workers and not reported yet (re-published on recovery).
    pub async fn admitted(&self, run_id: Uuid) -> Result<Vec<BatchEntry>, SchedulerError> {
        let mut connection = self.connection.clone();
        let raw: Vec<String> = connection
            .hvals(self.names.run_admitted_key(run_id))
            .await?;
        raw.iter()
            .map(|entry| serde_json::from_str(entry).map_err(SchedulerError::from))
            .collect()
    }

    /// Everything a halted or cancelled run will never start: pending batches and
    /// the pages of locations never admitted.
    pub async fn never_started(&self, run_id: Uuid) -> Result<Vec<BatchEntry>, SchedulerError> {
        let mut connection = self.connection.clone();
        let pending: Vec<String> = connection
            .lrange(self.names.run_pending_key(run_id), 0, -1)
            .await?;
        let mut entries: Vec<BatchEntry> = pending
            .iter()
            .map(|entry| serde_json::from_str(entry))
            .collect::<Result<_, _>>()?;
        let pages: HashMap<String, String> =
            connection.hgetall(self.names.run_pages_key(run_id)).await?;
        for (field, ids) in pages {
            entries.push(page_entry(&field, serde_json::from_str(&ids)?)?);
        }
        Ok(entries)
    }

    /// Counts the never-started targets once; true the first time.
    pub async fn mark_drained(
        &self,
        run_id: Uuid,
        counters: &HashMap<String, u64>,
    ) -> Result<bool, SchedulerError> {
        let mut connection = self.connection.clone();
        let first: u8 = self
            .invocation(&MARK_DRAINED, run_id)
            .arg(serde_json::to_string(counters)?)
            .invoke_async(&mut connection)
            .await?;
        Ok(first == 1)
    }

    /// Pending runs whose start time has come, and forgets them as pending.
    pub async fn take_due_runs(&self, now_ms: u64) -> Result<Vec<Uuid>, SchedulerError> {
        let mut connection = self.connection.clone();
        let key = self.names.pending_runs_key();
        let due: Vec<String> = connection.zrangebyscore(&key, 0, now_ms).await?;
        let mut taken = Vec::new();
        for id in due {
            // ZREM decides which replica starts it.
            let removed: u32 = connection.zrem(&key, &id).await?;
            if removed == 1
                && let Ok(run_id) = id.parse()
            {
                taken.push(run_id);
            }
        }
        Ok(taken)
    }

    /// Runs newest first.
    pub async fn run_ids(&self) -> Result<Vec<Uuid>, SchedulerError> {
        let mut connection = self.connection.clone();
        let ids: Vec<String> = connection
            .zrevrange(self.names.runs_index_key(), 0, -1)
            .await?;
        Ok(ids.iter().filter_map(|id| id.parse().ok()).collect())
    }
}

//! The run ledger in Redis: everything the scheduler knows about a run, so a
//! restarted scheduler (or another replica) continues where it was. Every update
//! is one Lua script over the run's keys (one `{run-id}` hash tag), and every
//! update from a report is applied at most once (the `applied` set), so a
//! redelivered report changes nothing. [`crate::twin`] does the same in process.
//!
//! Keys (see `protocol::names`): the run hash (state, totals, limits, counts),
//! `locations` (FIFO), `location-state` (per location: pages, failure,
//! batches remaining), `pages` (discovered targets not yet admitted), `pending`
//! (batches waiting for room), `admitted` (sent to workers, not yet reported),
//! `applied` (reports already counted) and `counters` (results per step and status).

use std::collections::HashMap;
use std::sync::LazyLock;

use protocol::job::Location;
use protocol::names::Names;
use protocol::run::RunState;
use redis::aio::ConnectionManager;
use redis::{AsyncCommands, Script};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::SchedulerError;
use crate::twin::Twin;

/// Shared by every script: the eight keys of one run, and a halt that never
/// overrides a final state.
const PRELUDE: &str = r"
local run, locations, locstate, pages, pending, admitted, applied, counters =
  KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7], KEYS[8]
local function halt(reason)
  local state = redis.call('HGET', run, 'state')
  if state ~= 'Completed' and state ~= 'Cancelled' and state ~= 'Halted' then
    redis.call('HSET', run, 'state', 'Halted', 'reason', reason, 'halt_reason', reason)
  end
end
local function location_count() return tonumber(redis.call('HGET', run, 'location_count')) end
local function location_discovered()
  return redis.call('HINCRBY', run, 'discovered_locations', 1) == location_count()
end
";

fn script(body: &str) -> Script {
    Script::new(&format!("{PRELUDE}\n{body}"))
}

/// ARGV location, page, ids (JSON), count, last (0/1). Returns {new, discovery complete}.
static RECORD_PAGE: LazyLock<Script> = LazyLock::new(|| {
    script(
        r"
local loc, page, n = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[4])
if redis.call('SADD', applied, 'page:' .. loc .. ':' .. page) == 0 then return {0, 0} end
if redis.call('HEXISTS', locstate, loc .. ':failed') == 1 then return {1, 0} end
if n > 0 then redis.call('HSET', pages, loc .. ':' .. page, ARGV[3]) end
redis.call('HINCRBY', locstate, loc .. ':targets', n)
redis.call('HINCRBY', run, 'total', n)
local seen = redis.call('HINCRBY', locstate, loc .. ':pages_seen', 1)
if ARGV[5] == '1' then redis.call('HSET', locstate, loc .. ':pages', page + 1) end
local expected = tonumber(redis.call('HGET', locstate, loc .. ':pages'))
if expected and seen == expected and location_discovered() then return {1, 1} end
return {1, 0}
",
    )
});

/// ARGV location, reason. Returns {new, discovery complete}.
static LOCATION_FAILED: LazyLock<Script> = LazyLock::new(|| {
    script(
        r"
local loc = ARGV[1]
if redis.call('SADD', applied, 'failed:' .. loc) == 0 then return {0, 0} end
local expected = tonumber(redis.call('HGET', locstate, loc .. ':pages'))
local seen = tonumber(redis.call('HGET', locstate, loc .. ':pages_seen')) or 0
local was_discovered = expected and seen == expected
redis.call('HSET', locstate, loc .. ':failed', ARGV[2])
local failed = redis.call('HINCRBY', run, 'failed_locations', 1)
local allowed = tonumber(redis.call('HGET', run, 'allowed_location_errors'))
if failed > allowed then
  halt('location_max_errors exceeded: ' .. failed .. ' locations failed, ' .. allowed ..
       ' allowed (latest ' .. loc .. ': ' .. ARGV[2] .. ')')
end
if not was_discovered and location_discovered() then return {1, 1} end
return {1, 0}
",
    )
});

/// ARGV max in flight, batch size, allowed errors. Returns the state.
static START_EXECUTION: LazyLock<Script> = LazyLock::new(|| {
    script(
        r"
redis.call('HSET', run, 'max_in_flight', ARGV[1], 'batch_size', ARGV[2], 'allowed_errors', ARGV[3])
if redis.call('HGET', run, 'state') == 'Discovering' then
  redis.call('HSET', run, 'state', 'Running', 'reason', 'discovery complete')
end
return redis.call('HGET', run, 'state')
",
    )
});

/// Releases locations FIFO up to the location concurrency and batches up to
/// max in flight. Returns the admitted batches (JSON entries).
static ADMIT: LazyLock<Script> = LazyLock::new(|| {
    script(
        r"
if redis.call('HGET', run, 'state') ~= 'Running' then return {} end
local batch_size = tonumber(redis.call('HGET', run, 'batch_size'))
local function activate(loc)
  local page_count = tonumber(redis.call('HGET', locstate, loc .. ':pages')) or 0
  local chunks = 0
  for p = 0, page_count - 1 do
    local raw = redis.call('HGET', pages, loc .. ':' .. p)
    if raw then
      local ids = cjson.decode(raw)
      local c, i = 0, 1
      while i <= #ids do
        local chunk = {}
        for j = i, math.min(i + batch_size - 1, #ids) do chunk[#chunk + 1] = ids[j] end
        redis.call('RPUSH', pending, cjson.encode({l = loc, b = p * 1000 + c, s = 0, i = chunk}))
        c, chunks, i = c + 1, chunks + 1, i + batch_size
      end
      redis.call('HDEL', pages, loc .. ':' .. p)
    end
  end
  redis.call('HSET', locstate, loc .. ':remaining', chunks)
  return chunks
end
local concurrency = tonumber(redis.call('HGET', run, 'location_concurrency'))
local active = tonumber(redis.call('HGET', run, 'active_locations')) or 0
local next_location = tonumber(redis.call('HGET', run, 'next_location')) or 0
local count = location_count()
while active < concurrency and next_location < count do
  local loc = redis.call('LINDEX', locations, next_location)
  next_location = next_location + 1
  local chunks = 0
  if redis.call('HEXISTS', locstate, loc .. ':failed') == 0 then chunks = activate(loc) end
  if chunks > 0 then active = active + 1 else redis.call('HINCRBY', run, 'locations_done', 1) end
end
redis.call('HSET', run, 'active_locations', active, 'next_location', next_location)
local in_flight = tonumber(redis.call('HGET', run, 'in_flight')) or 0
local max = tonumber(redis.call('HGET', run, 'max_in_flight'))
local out = {}
while true do
  local raw = redis.call('LINDEX', pending, 0)
  if not raw then break end
  local entry = cjson.decode(raw)
  local n = #entry.i
  if in_flight > 0 and in_flight + n > max then break end
  redis.call('LPOP', pending)
  in_flight = in_flight + n
  redis.call('HSET', admitted, entry.l .. '|' .. entry.b .. '|' .. entry.s, raw)
  out[#out + 1] = raw
end
redis.call('HSET', run, 'in_flight', in_flight)
return out
",
    )
});

/// ARGV entry key, location, targets, failures, counters (JSON), next entry or ''.
/// Returns {new, state}.
static APPLY_RESULTS: LazyLock<Script> = LazyLock::new(|| {
    script(
        r"
if redis.call('SADD', applied, 'results:' .. ARGV[1]) == 0 then
  return {0, redis.call('HGET', run, 'state')}
end
redis.call('HDEL', admitted, ARGV[1])
local in_flight = (tonumber(redis.call('HGET', run, 'in_flight')) or 0) - tonumber(ARGV[3])
redis.call('HSET', run, 'in_flight', math.max(0, in_flight))
for status, n in pairs(cjson.decode(ARGV[5])) do redis.call('HINCRBY', counters, status, n) end
local failed = tonumber(ARGV[4])
if failed > 0 then
  local allowed = tonumber(redis.call('HGET', run, 'allowed_errors'))
  local failures = redis.call('HINCRBY', run, 'failures', failed)
  if failures - failed <= allowed and failures > allowed then
    halt('error budget exceeded: ' .. failures .. ' targets failed, ' .. allowed .. ' allowed')
  end
end
if ARGV[6] ~= '' then
  redis.call('LPUSH', pending, ARGV[6])
elseif redis.call('HINCRBY', locstate, ARGV[2] .. ':remaining', -1) <= 0 then
  redis.call('HINCRBY', run, 'active_locations', -1)
  redis.call('HINCRBY', run, 'locations_done', 1)
end
return {1, redis.call('HGET', run, 'state')}
",
    )
});

/// Moves a live run to Completed once every location is done. Returns the state.
static COMPLETE_IF_DONE: LazyLock<Script> = LazyLock::new(|| {
    script(
        r"
local state = redis.call('HGET', run, 'state')
local done = tonumber(redis.call('HGET', run, 'locations_done')) or 0
if state == 'Running' and done >= location_count() then
  redis.call('HSET', run, 'state', 'Completed', 'reason', 'every location is done')
  return 'Completed'
end
return state
",
    )
});

/// ARGV NotStarted counters (JSON). Counts a halted/cancelled run's never-started
/// targets once. Returns 1 the first time.
static MARK_DRAINED: LazyLock<Script> = LazyLock::new(|| {
    script(
        r"
if redis.call('HSETNX', run, 'drained', 1) == 0 then return 0 end
for status, n in pairs(cjson.decode(ARGV[1])) do redis.call('HINCRBY', counters, status, n) end
redis.call('DEL', pending, pages)
return 1
",
    )
});

/// ARGV from-states (comma separated), to-state, reason. Returns 1 if changed.
static TRANSITION: LazyLock<Script> = LazyLock::new(|| {
    script(
        r"
local state = redis.call('HGET', run, 'state')
for from in string.gmatch(ARGV[1], '[^,]+') do
  if state == from then
    redis.call('HSET', run, 'state', ARGV[2], 'reason', ARGV[3])
    return 1
  end
end
return 0
",
    )
});

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
    pub output_dir: &'a str,
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

/// The run hash's `state` field (both backends).
pub(crate) fn parse_run_state(state: Option<&str>) -> Result<RunState, SchedulerError> {
    state
        .ok_or_else(|| SchedulerError::Corrupt("run without a state".into()))?
        .parse()
        .map_err(SchedulerError::Corrupt)
}

/// The ledger of every run: in Redis, or in the in-process twin.
#[derive(Clone)]
pub struct Ledger {
    backend: Backend,
    names: Names,
}

/// Where the scheduler's state lives; the campaign store and schedules use it too.
#[derive(Clone)]
pub(crate) enum Backend {
    Redis(ConnectionManager),
    InProcess(Twin),
}

/// The run hash `create_run` writes (both backends).
pub(crate) fn run_hash_fields(
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
        ("output_dir", run.output_dir.to_string()),
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

/// Every location with its state, from the `location-state` hash (both backends).
pub(crate) fn location_statuses(
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
pub(crate) fn page_entry(
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
        batch_id: page * 1000,
        step_index: 0,
        instance_ids,
    })
}

impl Ledger {
    pub fn new(connection: ConnectionManager, names: Names) -> Self {
        Self {
            backend: Backend::Redis(connection),
            names,
        }
    }

    /// A ledger in the in-process twin.
    pub fn in_process(twin: Twin, names: Names) -> Self {
        Self {
            backend: Backend::InProcess(twin),
            names,
        }
    }

    pub fn names(&self) -> &Names {
        &self.names
    }

    pub(crate) fn backend(&self) -> &Backend {
        &self.backend
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
        let mut connection = match &self.backend {
            Backend::Redis(connection) => connection.clone(),
            Backend::InProcess(twin) => {
                twin.create_run(run_id, run, location_keys);
                return Ok(());
            }
        };
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
        match &self.backend {
            Backend::Redis(connection) => {
                let mut connection = connection.clone();
                let () = connection
                    .hset(self.names.run_key(run_id), "contract", json)
                    .await?;
            }
            Backend::InProcess(twin) => twin.record_contract(run_id, json),
        }
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
        let mut connection = match &self.backend {
            Backend::Redis(connection) => connection.clone(),
            Backend::InProcess(twin) => return Ok(twin.report_scope(run_id, &location, entry_key)),
        };
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
        let mut connection = match &self.backend {
            Backend::Redis(connection) => connection.clone(),
            Backend::InProcess(twin) => {
                return twin.record_page(
                    run_id,
                    &location_key(location),
                    page,
                    instance_ids,
                    last_page,
                );
            }
        };
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
        let mut connection = match &self.backend {
            Backend::Redis(connection) => connection.clone(),
            Backend::InProcess(twin) => {
                return twin.record_location_failed(run_id, &location_key(location), reason);
            }
        };
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
        let mut connection = match &self.backend {
            Backend::Redis(connection) => connection.clone(),
            Backend::InProcess(twin) => {
                return twin.start_execution(run_id, max_in_flight, batch_size, allowed_errors);
            }
        };
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
        let mut connection = match &self.backend {
            Backend::Redis(connection) => connection.clone(),
            Backend::InProcess(twin) => return twin.admit(run_id),
        };
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
        let mut connection = match &self.backend {
            Backend::Redis(connection) => connection.clone(),
            Backend::InProcess(twin) => {
                return twin.apply_results(
                    run_id,
                    entry_key,
                    &location_key(location),
                    targets,
                    failures,
                    counters,
                    next,
                );
            }
        };
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
        let mut connection = match &self.backend {
            Backend::Redis(connection) => connection.clone(),
            Backend::InProcess(twin) => return twin.complete_if_done(run_id),
        };
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
        let mut connection = match &self.backend {
            Backend::Redis(connection) => connection.clone(),
            Backend::InProcess(twin) => return twin.transition(run_id, from, to, reason),
        };
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
        let mut connection = match &self.backend {
            Backend::Redis(connection) => connection.clone(),
            Backend::InProcess(twin) => return Ok(twin.run_fields(run_id)),
        };
        let fields: HashMap<String, String> =
            connection.hgetall(self.names.run_key(run_id)).await?;
        Ok((!fields.is_empty()).then_some(RunFields(fields)))
    }

    pub async fn counters(&self, run_id: Uuid) -> Result<HashMap<String, u64>, SchedulerError> {
        let mut connection = match &self.backend {
            Backend::Redis(connection) => connection.clone(),
            Backend::InProcess(twin) => return Ok(twin.counters(run_id)),
        };
        Ok(connection
            .hgetall(self.names.run_counters_key(run_id))
            .await?)
    }

    /// The run's locations in admission order.
    pub async fn locations(&self, run_id: Uuid) -> Result<Vec<Location>, SchedulerError> {
        let keys: Vec<String> = match &self.backend {
            Backend::Redis(connection) => {
                let mut connection = connection.clone();
                connection
                    .lrange(self.names.run_locations_key(run_id), 0, -1)
                    .await?
            }
            Backend::InProcess(twin) => twin.location_keys(run_id),
        };
        keys.iter().map(|key| parse_location(key)).collect()
    }

    /// Every location with its state, in admission order.
    pub async fn location_statuses(
        &self,
        run_id: Uuid,
    ) -> Result<Vec<LocationStatus>, SchedulerError> {
        let mut connection = match &self.backend {
            Backend::Redis(connection) => connection.clone(),
            Backend::InProcess(twin) => return twin.location_statuses(run_id),
        };
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
        let mut connection = match &self.backend {
            Backend::Redis(connection) => connection.clone(),
            Backend::InProcess(twin) => return Ok(twin.admitted(run_id)),
        };
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
        let mut connection = match &self.backend {
            Backend::Redis(connection) => connection.clone(),
            Backend::InProcess(twin) => return twin.never_started(run_id),
        };
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
        let mut connection = match &self.backend {
            Backend::Redis(connection) => connection.clone(),
            Backend::InProcess(twin) => return twin.mark_drained(run_id, counters),
        };
        let first: u8 = self
            .invocation(&MARK_DRAINED, run_id)
            .arg(serde_json::to_string(counters)?)
            .invoke_async(&mut connection)
            .await?;
        Ok(first == 1)
    }

    /// Pending runs whose start time has come, and forgets them as pending.
    pub async fn take_due_runs(&self, now_ms: u64) -> Result<Vec<Uuid>, SchedulerError> {
        let mut connection = match &self.backend {
            Backend::Redis(connection) => connection.clone(),
            Backend::InProcess(twin) => return Ok(twin.take_due_runs(now_ms)),
        };
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
        let mut connection = match &self.backend {
            Backend::Redis(connection) => connection.clone(),
            Backend::InProcess(twin) => return Ok(twin.run_ids()),
        };
        let ids: Vec<String> = connection
            .zrevrange(self.names.runs_index_key(), 0, -1)
            .await?;
        Ok(ids.iter().filter_map(|id| id.parse().ok()).collect())
    }
}

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
//!
//! [`model`] holds the types and their Redis encodings; [`indexes`] the
//! deployment's indexes of runs (all, live, per campaign, due);
//! [`discovery`] a run's discovery; [`reading`] what the ledger answers
//! about one run; this module the other operations on one run.

mod discovery;
mod indexes;
mod model;
mod reading;

use std::collections::HashMap;

use protocol::job::Location;
use protocol::names::Names;
use protocol::run::RunState;
use protocol::run_fields::RunField;
use redis::{AsyncCommands, Script};
use store::Connection;
use uuid::Uuid;

pub use self::model::{
    BatchEntry, LocationStatus, NewRun, PageRecorded, ReportScope, ResultsApplication, RunFields,
    ScopeQuery, StoredPage, WindowGroup, location_key, parse_location,
};
use self::model::{page_entries, run_hash_fields};
use crate::SchedulerError;
use crate::scripts::{
    ADMIT, APPLY_RESULTS, END_DISCOVERY, MARK_DRAINED, START_EXECUTION, TRANSITION, WAVE_GATE,
};

/// What [`Ledger::admit`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admission {
    /// The run's state after it.
    pub state: RunState,
    /// While the run bakes between two waves: when the bake ends (Unix ms).
    pub bake_until_ms: Option<u64>,
    /// The batches admitted, to publish.
    pub batches: Vec<BatchEntry>,
}

/// Where a rollout's run goes from the end of a wave (`wave_gate.lua`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaveOutcome {
    /// The gates passed: the next wave starts.
    Next,
    /// The gates passed: an approver has to say go on.
    Approval,
    /// An approver said go on.
    Approved,
    /// An operator resumed a run a failed gate paused: the next wave starts.
    Resumed,
    /// A gate failed: the run pauses.
    Pause,
    /// A gate failed: the run halts.
    Halt,
}

impl WaveOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Next => "next",
            Self::Approval => "approval",
            Self::Approved => "approved",
            Self::Resumed => "resumed",
            Self::Pause => "pause",
            Self::Halt => "halt",
        }
    }
}

/// The ledger of every run, in Redis (real or in memory).
#[derive(Clone)]
pub struct Ledger {
    connection: Connection,
    names: Names,
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

    fn invocation<'a>(&self, script: &'a Script, run_id: Uuid) -> redis::ScriptInvocation<'a> {
        script.key(&self.names.run_script_keys(run_id)[..])
    }

    /// Returns once the run's writes so far are on the replicas the Redis
    /// URL asks for (`?wait_replicas=N`): before a report is acked, a job
    /// published or an answer given, so a failover cannot undo what the
    /// rest of the system already acted on.
    async fn replicated(&self, run_id: Uuid) -> Result<(), SchedulerError> {
        Ok(self
            .connection
            .replicated(&self.names.run_key(run_id))
            .await?)
    }

    pub async fn create_run(
        &self,
        run_id: Uuid,
        run: &NewRun<'_>,
        locations: &[Location],
    ) -> Result<(), SchedulerError> {
        let location_keys: Vec<String> = locations.iter().map(location_key).collect();
        let mut connection = self.connection.clone();
        let fields: Vec<(&str, String)> = run_hash_fields(run, locations.len())
            .into_iter()
            .map(|(field, value)| (field.as_str(), value))
            .collect();
        // The run's own keys in one transaction (one hash slot: `{run-id}`),
        // then the deployment's indexes, which live in other slots of a
        // cluster. A scheduler that dies in between leaves a record nobody
        // lists or starts — never an index entry without its record.
        let mut pipe = redis::pipe();
        pipe.atomic()
            .hset_multiple(self.names.run_key(run_id), &fields);
        if !location_keys.is_empty() {
            pipe.rpush(self.names.run_locations_key(run_id), &location_keys);
            // Bounded commands: one SADD of 200,000 members would stall Redis.
            for chunk in location_keys.chunks(10_000) {
                pipe.sadd(self.names.run_location_set_key(run_id), chunk);
            }
        }
        let () = pipe.query_async(&mut connection).await?;
        self.replicated(run_id).await?;
        let mut indexes = redis::pipe();
        if let Some(start_after_ms) = run.start_after_ms {
            indexes.zadd(
                self.names.pending_runs_key(),
                run_id.to_string(),
                start_after_ms,
            );
        }
        indexes.zadd(
            self.names.runs_index_key(),
            run_id.to_string(),
            run.created_ms,
        );
        indexes.zadd(
            self.names.live_runs_key(),
            run_id.to_string(),
            run.created_ms,
        );
        indexes.zadd(
            self.names.campaign_runs_key(run.campaign),
            run_id.to_string(),
            run.created_ms,
        );
        if run.send_until_ms.is_some() {
            // The ticker looks at it at once, then as its windows open and close.
            indexes.zadd(
                self.names.windowed_runs_key(),
                run_id.to_string(),
                run.created_ms,
            );
        }
        let () = indexes.query_async(&mut connection).await?;
        self.connection
            .replicated(&self.names.runs_index_key())
            .await?;
        if run.start_after_ms.is_some() {
            self.connection
                .replicated(&self.names.pending_runs_key())
                .await?;
        }
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
            .hset(
                self.names.run_key(run_id),
                RunField::Contract.as_str(),
                json,
            )
            .await?;
        self.replicated(run_id).await?;
        Ok(())
    }

    /// Reads what a report about `location` must match (`about` says what
    /// else its kind is checked against), in one round trip.
    pub async fn report_scope(
        &self,
        run_id: Uuid,
        location: &Location,
        about: ScopeQuery<'_>,
    ) -> Result<ReportScope, SchedulerError> {
        let location = location_key(location);
        let mut connection = self.connection.clone();
        let location_set = self.names.run_location_set_key(run_id);
        // Only what the report's kind is checked against is read: every
        // command counts, and a discovery report (one per location) needs
        // one.
        let mut scope = ReportScope {
            location_in_run: false,
            admitted: None,
            applied: false,
            executing: false,
        };
        match about {
            ScopeQuery::Location => {
                scope.location_in_run = connection.sismember(location_set, &location).await?;
            }
            ScopeQuery::Execution => {
                (scope.location_in_run, scope.executing) = redis::pipe()
                    .sismember(location_set, &location)
                    .hexists(
                        self.names.run_location_state_key(run_id),
                        format!("{location}:activated"),
                    )
                    .query_async(&mut connection)
                    .await?;
            }
            ScopeQuery::Batch(key) => {
                let admitted: Option<String>;
                (scope.location_in_run, admitted, scope.applied) = redis::pipe()
                    .sismember(location_set, &location)
                    .hget(self.names.run_admitted_key(run_id), key)
                    .sismember(self.names.run_applied_key(run_id), format!("results:{key}"))
                    .query_async(&mut connection)
                    .await?;
                scope.admitted = admitted.map(|raw| serde_json::from_str(&raw)).transpose()?;
            }
        }
        Ok(scope)
    }

    /// `waves`: a rollout's wave caps and canary location keys, once every
    /// location is discovered (written once; nothing of a rollout is
    /// admitted before).
    pub async fn start_execution(
        &self,
        run_id: Uuid,
        max_in_flight: u64,
        batch_size: u64,
        allowed_errors: u64,
        resolved_for: u64,
        waves: Option<(&[u64], &[String])>,
    ) -> Result<RunState, SchedulerError> {
        let mut connection = self.connection.clone();
        let (caps, canary) = match waves {
            Some((caps, canary)) => (serde_json::to_string(caps)?, serde_json::to_string(canary)?),
            None => (String::new(), String::new()),
        };
        let state: String = self
            .invocation(&START_EXECUTION, run_id)
            .arg(max_in_flight)
            .arg(batch_size)
            .arg(allowed_errors)
            .arg(resolved_for)
            .arg(caps)
            .arg(canary)
            .invoke_async(&mut connection)
            .await?;
        self.replicated(run_id).await?;
        state.parse().map_err(SchedulerError::Corrupt)
    }

    /// Admits what may start now and completes a live run whose every
    /// location is done, in one script: the run's state after, and the
    /// batches admitted.
    pub async fn admit(&self, run_id: Uuid, now_ms: u64) -> Result<Admission, SchedulerError> {
        self.admit_in_windows(run_id, now_ms, &[]).await
    }

    /// [`Self::admit`] of a run with per-target windows: `open` says, per
    /// window of the campaign in order, whether it is open now; batches of
    /// closed windows are parked until theirs opens.
    pub async fn admit_in_windows(
        &self,
        run_id: Uuid,
        now_ms: u64,
        open: &[bool],
    ) -> Result<Admission, SchedulerError> {
        let mut connection = self.connection.clone();
        let raw: Vec<String> = self
            .invocation(&ADMIT, run_id)
            .arg(now_ms)
            .arg(serde_json::to_string(open)?)
            .invoke_async(&mut connection)
            .await?;
        self.replicated(run_id).await?;
        let mut raw = raw.into_iter();
        let state = raw.next().unwrap_or_default();
        let state = state.parse().map_err(|_| {
            SchedulerError::Corrupt(format!("run {run_id} has the state {state:?}"))
        })?;
        let bake_until_ms = raw.next().and_then(|until| until.parse().ok());
        let batches = raw
            .map(|entry| serde_json::from_str(&entry).map_err(SchedulerError::from))
            .collect::<Result<_, _>>()?;
        Ok(Admission {
            state,
            bake_until_ms,
            batches,
        })
    }

    /// Moves a rollout's run on from the end of `wave` (0-based); false when
    /// the run is not where `outcome` starts from (another replica moved it).
    pub async fn wave_gate(
        &self,
        run_id: Uuid,
        wave: u64,
        outcome: WaveOutcome,
        reason: &str,
        gates_json: &str,
        now_ms: u64,
    ) -> Result<bool, SchedulerError> {
        let mut connection = self.connection.clone();
        let moved: u8 = self
            .invocation(&WAVE_GATE, run_id)
            .arg(wave)
            .arg(outcome.as_str())
            .arg(reason)
            .arg(gates_json)
            .arg(now_ms)
            .invoke_async(&mut connection)
            .await?;
        self.replicated(run_id).await?;
        Ok(moved == 1)
    }

    /// Targets discovered in each of `location_keys`; None for a location
    /// whose discovery failed (its targets are never admitted).
    pub async fn location_targets(
        &self,
        run_id: Uuid,
        location_keys: &[String],
    ) -> Result<Vec<Option<u64>>, SchedulerError> {
        if location_keys.is_empty() {
            return Ok(Vec::new());
        }
        let mut connection = self.connection.clone();
        let mut fields = Vec::with_capacity(location_keys.len() * 2);
        for key in location_keys {
            fields.push(format!("{key}:targets"));
            fields.push(format!("{key}:failed"));
        }
        let values: Vec<Option<String>> = redis::cmd("HMGET")
            .arg(self.names.run_location_state_key(run_id))
            .arg(&fields)
            .query_async(&mut connection)
            .await?;
        Ok(values
            .chunks(2)
            .map(|pair| match pair {
                [targets, None] => Some(
                    targets
                        .as_deref()
                        .and_then(|count| count.parse().ok())
                        .unwrap_or(0),
                ),
                _ => None,
            })
            .collect())
    }

    /// Sets when the run's workers stop sending (the open window's end; 0: closed).
    pub async fn set_send_until(&self, run_id: Uuid, until_ms: u64) -> Result<(), SchedulerError> {
        let mut connection = self.connection.clone();
        let () = connection
            .hset(
                self.names.run_key(run_id),
                RunField::SendUntilMs.as_str(),
                until_ms,
            )
            .await?;
        self.replicated(run_id).await
    }

    /// Applies one results report: [`Ledger::apply_results_bundle`] of one.
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
        let report = ResultsApplication {
            entry_key: entry_key.to_string(),
            location: location_key(location),
            targets,
            failures,
            counters: counters.clone(),
            next: next.cloned(),
        };
        let (new, state) = self
            .apply_results_bundle(run_id, std::slice::from_ref(&report))
            .await?;
        Ok((new.first().copied().unwrap_or(false), state))
    }

    /// Applies the results reports of one run in one script call (a
    /// bundle's): each report not applied before — also earlier in
    /// `reports` — counts once. Returns whether each was applied now, in
    /// `reports`' order, and the run's state after.
    pub async fn apply_results_bundle(
        &self,
        run_id: Uuid,
        reports: &[ResultsApplication],
    ) -> Result<(Vec<bool>, RunState), SchedulerError> {
        if reports.is_empty() {
            let state = self.known_run_fields_of(run_id, &[RunField::State]).await?;
            return Ok((Vec::new(), state.state()?));
        }
        let mut connection = self.connection.clone();
        let mut invocation = self.invocation(&APPLY_RESULTS, run_id);
        invocation.arg(crate::failures::MAX_FAILURE_KINDS + 64);
        for report in reports {
            let next = report
                .next
                .as_ref()
                .map(serde_json::to_string)
                .transpose()?
                .unwrap_or_default();
            invocation
                .arg(&report.entry_key)
                .arg(&report.location)
                .arg(report.targets)
                .arg(report.failures)
                .arg(serde_json::to_string(&report.counters)?)
                .arg(next);
        }
        let answer: Vec<String> = invocation.invoke_async(&mut connection).await?;
        self.replicated(run_id).await?;
        let Some((state, applied)) = answer.split_first() else {
            return Err(SchedulerError::Corrupt(
                "the apply-results script answered nothing".into(),
            ));
        };
        if applied.len() != reports.len() {
            return Err(SchedulerError::Corrupt(format!(
                "the apply-results script answered for {} of {} reports",
                applied.len(),
                reports.len()
            )));
        }
        Ok((
            applied.iter().map(|flag| flag == "1").collect(),
            state.parse().map_err(SchedulerError::Corrupt)?,
        ))
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
        self.replicated(run_id).await?;
        Ok(changed == 1)
    }

    /// Ends the discovery of a cancelled run (see `end_discovery` in the run
    /// prelude); true if the run is cancelled.
    pub async fn end_discovery(&self, run_id: Uuid) -> Result<bool, SchedulerError> {
        let mut connection = self.connection.clone();
        let cancelled: u8 = self
            .invocation(&END_DISCOVERY, run_id)
            .invoke_async(&mut connection)
            .await?;
        self.replicated(run_id).await?;
        Ok(cancelled == 1)
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

    /// Per-target windows: how many batches wait parked for each of the
    /// campaign's `windows` windows (in order).
    pub async fn parked_batches(
        &self,
        run_id: Uuid,
        windows: usize,
    ) -> Result<Vec<u64>, SchedulerError> {
        if windows == 0 {
            return Ok(Vec::new());
        }
        let key = self.names.run_parked_key(run_id);
        let mut pipe = redis::pipe();
        for window in 1..=windows {
            pipe.zcount(&key, window, window);
        }
        let mut connection = self.connection.clone();
        Ok(pipe.query_async(&mut connection).await?)
    }

    /// Everything a halted or cancelled run will never start: pending batches,
    /// batches parked for their windows and the pages of locations never
    /// admitted.
    pub async fn never_started(&self, run_id: Uuid) -> Result<Vec<BatchEntry>, SchedulerError> {
        let mut connection = self.connection.clone();
        let pending: Vec<String> = connection
            .lrange(self.names.run_pending_key(run_id), 0, -1)
            .await?;
        let parked: Vec<String> = connection
            .zrangebyscore(self.names.run_parked_key(run_id), "-inf", "+inf")
            .await?;
        let mut entries: Vec<BatchEntry> = pending
            .iter()
            .chain(&parked)
            .map(|entry| serde_json::from_str(entry))
            .collect::<Result<_, _>>()?;
        let pages: HashMap<String, String> =
            connection.hgetall(self.names.run_pages_key(run_id)).await?;
        for (field, page) in pages {
            entries.extend(page_entries(&field, serde_json::from_str(&page)?)?);
        }
        // An instance listed on two pages is one target (as admission
        // batches it once).
        let mut seen = std::collections::HashSet::new();
        for entry in &mut entries {
            let location = entry.location.clone();
            entry
                .instance_ids
                .retain(|id| entry.step_index > 0 || seen.insert((location.clone(), id.clone())));
        }
        entries.retain(|entry| !entry.instance_ids.is_empty());
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
        self.replicated(run_id).await?;
        Ok(first == 1)
    }
}

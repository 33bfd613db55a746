//! The in-process twin of everything the scheduler keeps in Redis — the run
//! ledger, the campaign store, the schedule lease and fire log — for
//! `flotilla demo` and tests. Each method is the Lua script of the same name in
//! [`crate::ledger`], [`crate::campaigns`] or [`crate::schedules`], step for
//! step, under one lock (Redis runs a script atomically; so does this).
//! `tests/ledger.rs` runs one suite on both.
//!
//! `memory://<name>` as the Redis URL selects the twin of that name; every
//! scheduler in the process naming it shares it, as replicas share a Redis.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, LazyLock, Mutex, MutexGuard};
use std::time::Duration;

use protocol::run::RunState;
use tokio::time::Instant;
use uuid::Uuid;

use store::MemoryStore;

use crate::SchedulerError;
use crate::ledger::{BatchEntry, LocationStatus, NewRun, RunFields, location_statuses};

static TWINS: LazyLock<Mutex<HashMap<String, Twin>>> = LazyLock::new(Default::default);

/// The twin named `name`, created on first use. Its run hashes are the run
/// records of the in-process store of the same name, which the workers' send
/// gate reads: one record per run, as on one Redis.
pub fn twin(name: &str) -> Twin {
    let mut twins = TWINS
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    twins
        .entry(name.to_string())
        .or_insert_with(|| Twin {
            state: Arc::default(),
            store: MemoryStore::named(name),
        })
        .clone()
}

/// Cheap to clone; clones share the state.
#[derive(Clone, Default)]
pub struct Twin {
    state: Arc<Mutex<State>>,
    /// Holds every run's hash (`run_key`); the rest of a run's keys are in `state`.
    store: MemoryStore,
}

impl std::fmt::Debug for Twin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Twin")
    }
}

#[derive(Default)]
struct State {
    runs: HashMap<Uuid, Run>,
    /// (created ms, run) — `runs_index_key`.
    runs_index: Vec<(u64, Uuid)>,
    /// (start after ms, run) — `pending_runs_key`.
    pending_runs: Vec<(u64, Uuid)>,
    campaigns: HashMap<String, StoredCampaign>,
    /// `holder:token` and when it expires.
    lease: Option<(String, Instant)>,
    lease_tokens: u64,
    fired: HashMap<String, String>,
    fires: VecDeque<String>,
    /// The audit stream: ((ms, sequence), record JSON), oldest first.
    audit: VecDeque<((u64, u64), String)>,
    /// API tokens: hex SHA-256 → record JSON (`tokens_key`).
    tokens: HashMap<String, String>,
}

/// One run's keys, as in Redis.
#[derive(Default)]
struct Run {
    /// The run hash, lent from the store's run record for the length of one
    /// update (see [`Twin::with_run`]); empty between updates.
    hash: HashMap<String, String>,
    locations: Vec<String>,
    location_state: HashMap<String, String>,
    /// `location:page` → discovered ids not yet admitted.
    pages: HashMap<String, Vec<String>>,
    pending: VecDeque<BatchEntry>,
    admitted: HashMap<String, BatchEntry>,
    applied: HashSet<String>,
    counters: HashMap<String, u64>,
}

struct StoredCampaign {
    latest: u32,
    versions: HashMap<u32, String>,
    updated_ms: u64,
    authors: HashMap<u32, String>,
    /// version → (approver, approved ms).
    approvals: HashMap<u32, (String, u64)>,
    /// Set by a delete: the name starts nothing, the versions stay.
    deleted_ms: Option<u64>,
}

fn number(map: &HashMap<String, String>, field: &str) -> Option<i64> {
    map.get(field).and_then(|value| value.parse().ok())
}

/// Redis' HINCRBY.
fn increment(map: &mut HashMap<String, String>, field: &str, by: i64) -> i64 {
    let value = number(map, field).unwrap_or(0) + by;
    map.insert(field.to_string(), value.to_string());
    value
}

fn set(map: &mut HashMap<String, String>, field: &str, value: impl ToString) {
    map.insert(field.to_string(), value.to_string());
}

impl Run {
    fn state(&self) -> Result<RunState, SchedulerError> {
        // Not through RunFields: that would copy the whole hash, spec included,
        // on every report.
        crate::ledger::parse_run_state(self.hash.get("state").map(String::as_str))
    }

    fn state_name(&self) -> &str {
        self.hash.get("state").map_or("", String::as_str)
    }

    fn halt(&mut self, reason: &str) {
        if !matches!(self.state_name(), "Completed" | "Cancelled" | "Halted") {
            set(&mut self.hash, "state", "Halted");
            set(&mut self.hash, "reason", reason);
            set(&mut self.hash, "halt_reason", reason);
        }
    }

    fn location_count(&self) -> i64 {
        number(&self.hash, "location_count").unwrap_or(0)
    }

    fn location_discovered(&mut self) -> bool {
        increment(&mut self.hash, "discovered_locations", 1) == self.location_count()
    }

    /// Splits an activated location's pages into pending batches; returns how many.
    fn activate(&mut self, location: &str, batch_size: usize) -> i64 {
        let page_count = number(&self.location_state, &format!("{location}:pages")).unwrap_or(0);
        let mut chunks = 0;
        for page in 0..page_count {
            let Some(ids) = self.pages.remove(&format!("{location}:{page}")) else {
                continue;
            };
            for (index, chunk) in ids.chunks(batch_size.max(1)).enumerate() {
                let index = u32::try_from(index).unwrap_or(u32::MAX);
                let page = u32::try_from(page).unwrap_or(u32::MAX);
                self.pending.push_back(BatchEntry {
                    location: location.to_string(),
                    batch_id: page.saturating_mul(1000).saturating_add(index),
                    step_index: 0,
                    instance_ids: chunk.to_vec(),
                });
                chunks += 1;
            }
        }
        set(
            &mut self.location_state,
            &format!("{location}:remaining"),
            chunks,
        );
        chunks
    }
}

/// A stream id `ms-seq`, or a bare `ms` (sequence 0).
fn parse_stream_id(id: &str) -> Option<(u64, u64)> {
    match id.split_once('-') {
        Some((ms, seq)) => Some((ms.parse().ok()?, seq.parse().ok()?)),
        None => Some((id.parse().ok()?, 0)),
    }
}

impl Twin {
    /// XADD with MINID trimming: the stream's id is Redis' clock, here ours.
    pub(crate) fn append_audit(&self, _time_ms: u64, json: String, oldest_kept_ms: u64) {
        let now = crate::now_ms();
        let mut state = self.lock();
        let id = match state.audit.back() {
            Some(((ms, seq), _)) if *ms >= now => (*ms, seq + 1),
            _ => (now, 0),
        };
        state.audit.push_back((id, json));
        while state
            .audit
            .front()
            .is_some_and(|((ms, _), _)| *ms < oldest_kept_ms)
        {
            state.audit.pop_front();
        }
    }

    /// XRANGE from `cursor` (`ms`, `ms-seq`, or `(ms-seq` exclusive) to the end.
    pub(crate) fn audit_from(&self, cursor: &str, count: usize) -> Vec<(String, String)> {
        let (exclusive, id) = match cursor.strip_prefix('(') {
            Some(id) => (true, id),
            None => (false, cursor),
        };
        let start = parse_stream_id(id).unwrap_or((0, 0));
        let state = self.lock();
        state
            .audit
            .iter()
            .filter(|(id, _)| if exclusive { *id > start } else { *id >= start })
            .take(count)
            .map(|((ms, seq), json)| (format!("{ms}-{seq}"), json.clone()))
            .collect()
    }

    pub(crate) fn token_records(&self) -> Vec<(String, String)> {
        let state = self.lock();
        state
            .tokens
            .iter()
            .map(|(hash, json)| (hash.clone(), json.clone()))
            .collect()
    }

    pub(crate) fn token_record(&self, sha256: &str) -> Option<String> {
        self.lock().tokens.get(sha256).cloned()
    }

    pub(crate) fn put_token(&self, sha256: &str, json: String) {
        self.lock().tokens.insert(sha256.to_string(), json);
    }

    pub(crate) fn remove_tokens(&self, hashes: &[String]) {
        let mut state = self.lock();
        for hash in hashes {
            state.tokens.remove(hash);
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Every update completes under the lock, so a poisoned lock is still sound.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn with_run<T>(
        &self,
        run_id: Uuid,
        update: impl FnOnce(&mut Run) -> Result<T, SchedulerError>,
    ) -> Result<T, SchedulerError> {
        let mut state = self.lock();
        let run = state
            .runs
            .get_mut(&run_id)
            .ok_or(SchedulerError::UnknownRun(run_id))?;
        // The run hash lives in the store, where the send gate reads it; it is
        // lent to `run` for this update with both locks held (twin, then store:
        // the store never takes the twin's lock), so no reader sees it half-done.
        self.store.with_run_record(run_id, |record| {
            std::mem::swap(&mut run.hash, record);
            let outcome = update(run);
            std::mem::swap(&mut run.hash, record);
            outcome
        })
    }

    pub(crate) fn record_contract(&self, run_id: Uuid, json: String) {
        let _state = self.lock();
        self.store.with_run_record(run_id, |record| {
            set(record, "contract", json);
        });
    }

    pub(crate) fn create_run(&self, run_id: Uuid, new: &NewRun<'_>, locations: Vec<String>) {
        self.store
            .set_run_locations(run_id, locations.iter().cloned());
        let run = Run {
            locations,
            ..Run::default()
        };
        let location_count = run.locations.len();
        let mut state = self.lock();
        self.store.with_run_record(run_id, |record| {
            record.clear();
            for (field, value) in crate::ledger::run_hash_fields(new, location_count) {
                set(record, field, value);
            }
        });
        state.runs.insert(run_id, run);
        if let Some(start_after_ms) = new.start_after_ms {
            state.pending_runs.retain(|(_, id)| *id != run_id);
            state.pending_runs.push((start_after_ms, run_id));
        }
        state.runs_index.retain(|(_, id)| *id != run_id);
        state.runs_index.push((new.created_ms, run_id));
    }

    pub(crate) fn record_page(
        &self,
        run_id: Uuid,
        location: &str,
        page: u32,
        instance_ids: &[String],
        last_page: bool,
    ) -> Result<(bool, bool), SchedulerError> {
        self.with_run(run_id, |run| {
            if !run.applied.insert(format!("page:{location}:{page}")) {
                return Ok((false, false));
            }
            if run
                .location_state
                .contains_key(&format!("{location}:failed"))
            {
                return Ok((true, false));
            }
            let n = i64::try_from(instance_ids.len()).unwrap_or(i64::MAX);
            if n > 0 {
                run.pages
                    .insert(format!("{location}:{page}"), instance_ids.to_vec());
            }
            increment(&mut run.location_state, &format!("{location}:targets"), n);
            increment(&mut run.hash, "total", n);
            let seen = increment(
                &mut run.location_state,
                &format!("{location}:pages_seen"),
                1,
            );
            if last_page {
                set(
                    &mut run.location_state,
                    &format!("{location}:pages"),
                    i64::from(page) + 1,
                );
            }
            let expected = number(&run.location_state, &format!("{location}:pages"));
            Ok((true, expected == Some(seen) && run.location_discovered()))
        })
    }

    pub(crate) fn record_location_failed(
        &self,
        run_id: Uuid,
        location: &str,
        reason: &str,
    ) -> Result<(bool, bool), SchedulerError> {
        self.with_run(run_id, |run| {
            if !run.applied.insert(format!("failed:{location}")) {
                return Ok((false, false));
            }
            let expected = number(&run.location_state, &format!("{location}:pages"));
            let seen =
                number(&run.location_state, &format!("{location}:pages_seen")).unwrap_or(0);
            let was_discovered = expected == Some(seen);
            set(
                &mut run.location_state,
                &format!("{location}:failed"),
                reason,
            );
            let failed = increment(&mut run.hash, "failed_locations", 1);
            let allowed = number(&run.hash, "allowed_location_errors").unwrap_or(0);
            if failed > allowed {
                run.halt(&format!(
                    "location_max_errors exceeded: {failed} locations failed, {allowed} allowed (latest {location}: {reason})"
                ));
            }
            Ok((true, !was_discovered && run.location_discovered()))
        })
    }

    pub(crate) fn start_execution(
        &self,
        run_id: Uuid,
        max_in_flight: u64,
        batch_size: u64,
        allowed_errors: u64,
    ) -> Result<RunState, SchedulerError> {
        self.with_run(run_id, |run| {
            set(&mut run.hash, "max_in_flight", max_in_flight);
            set(&mut run.hash, "batch_size", batch_size);
            set(&mut run.hash, "allowed_errors", allowed_errors);
            if run.state_name() == "Discovering" {
                set(&mut run.hash, "state", "Running");
                set(&mut run.hash, "reason", "discovery complete");
            }
            run.state()
        })
    }

    pub(crate) fn admit(&self, run_id: Uuid) -> Result<Vec<BatchEntry>, SchedulerError> {
        self.with_run(run_id, |run| {
            if run.state_name() != "Running" {
                return Ok(Vec::new());
            }
            let batch_size =
                usize::try_from(number(&run.hash, "batch_size").unwrap_or(1)).unwrap_or(1);
            let concurrency = number(&run.hash, "location_concurrency").unwrap_or(0);
            let mut active = number(&run.hash, "active_locations").unwrap_or(0);
            let mut next_location = number(&run.hash, "next_location").unwrap_or(0);
            let count = run.location_count();
            while active < concurrency && next_location < count {
                let index = usize::try_from(next_location).unwrap_or(usize::MAX);
                let Some(location) = run.locations.get(index).cloned() else {
                    break;
                };
                next_location += 1;
                let failed = run
                    .location_state
                    .contains_key(&format!("{location}:failed"));
                let chunks = if failed {
                    0
                } else {
                    run.activate(&location, batch_size)
                };
                if chunks > 0 {
                    active += 1;
                } else {
                    increment(&mut run.hash, "locations_done", 1);
                }
            }
            set(&mut run.hash, "active_locations", active);
            set(&mut run.hash, "next_location", next_location);
            let mut in_flight = number(&run.hash, "in_flight").unwrap_or(0);
            let max = number(&run.hash, "max_in_flight").unwrap_or(0);
            let mut out = Vec::new();
            while let Some(entry) = run.pending.front() {
                let n = i64::try_from(entry.instance_ids.len()).unwrap_or(i64::MAX);
                if in_flight > 0 && in_flight + n > max {
                    break;
                }
                let Some(entry) = run.pending.pop_front() else {
                    break;
                };
                in_flight += n;
                run.admitted.insert(entry.key(), entry.clone());
                out.push(entry);
            }
            set(&mut run.hash, "in_flight", in_flight);
            Ok(out)
        })
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) fn apply_results(
        &self,
        run_id: Uuid,
        entry_key: &str,
        location: &str,
        targets: usize,
        failures: u64,
        counters: &HashMap<String, u64>,
        next: Option<&BatchEntry>,
    ) -> Result<(bool, RunState), SchedulerError> {
        self.with_run(run_id, |run| {
            if !run.applied.insert(format!("results:{entry_key}")) {
                return Ok((false, run.state()?));
            }
            run.admitted.remove(entry_key);
            let targets = i64::try_from(targets).unwrap_or(i64::MAX);
            let in_flight = number(&run.hash, "in_flight").unwrap_or(0) - targets;
            set(&mut run.hash, "in_flight", in_flight.max(0));
            for (status, n) in counters {
                *run.counters.entry(status.clone()).or_insert(0) += n;
            }
            let failed = i64::try_from(failures).unwrap_or(i64::MAX);
            if failed > 0 {
                let allowed = number(&run.hash, "allowed_errors").unwrap_or(0);
                let total = increment(&mut run.hash, "failures", failed);
                if total - failed <= allowed && total > allowed {
                    run.halt(&format!(
                        "error budget exceeded: {total} targets failed, {allowed} allowed"
                    ));
                }
            }
            if let Some(next) = next {
                run.pending.push_front(next.clone());
            } else if increment(
                &mut run.location_state,
                &format!("{location}:remaining"),
                -1,
            ) <= 0
            {
                increment(&mut run.hash, "active_locations", -1);
                increment(&mut run.hash, "locations_done", 1);
            }
            Ok((true, run.state()?))
        })
    }

    pub(crate) fn complete_if_done(&self, run_id: Uuid) -> Result<RunState, SchedulerError> {
        self.with_run(run_id, |run| {
            let done = number(&run.hash, "locations_done").unwrap_or(0);
            if run.state_name() == "Running" && done >= run.location_count() {
                set(&mut run.hash, "state", "Completed");
                set(&mut run.hash, "reason", "every location is done");
            }
            run.state()
        })
    }

    pub(crate) fn transition(
        &self,
        run_id: Uuid,
        from: &[RunState],
        to: RunState,
        reason: &str,
    ) -> Result<bool, SchedulerError> {
        self.with_run(run_id, |run| {
            if !from.iter().any(|state| state.as_str() == run.state_name()) {
                return Ok(false);
            }
            set(&mut run.hash, "state", to.as_str());
            set(&mut run.hash, "reason", reason);
            Ok(true)
        })
    }

    pub(crate) fn mark_drained(
        &self,
        run_id: Uuid,
        counters: &HashMap<String, u64>,
    ) -> Result<bool, SchedulerError> {
        self.with_run(run_id, |run| {
            if run.hash.contains_key("drained") {
                return Ok(false);
            }
            set(&mut run.hash, "drained", 1);
            for (status, n) in counters {
                *run.counters.entry(status.clone()).or_insert(0) += n;
            }
            run.pending.clear();
            run.pages.clear();
            Ok(true)
        })
    }

    pub(crate) fn run_fields(&self, run_id: Uuid) -> Option<RunFields> {
        let state = self.lock();
        if !state.runs.contains_key(&run_id) {
            return None;
        }
        self.store.run_record(run_id).map(RunFields)
    }

    pub(crate) fn counters(&self, run_id: Uuid) -> HashMap<String, u64> {
        let state = self.lock();
        state
            .runs
            .get(&run_id)
            .map(|run| run.counters.clone())
            .unwrap_or_default()
    }

    pub(crate) fn location_keys(&self, run_id: Uuid) -> Vec<String> {
        let state = self.lock();
        state
            .runs
            .get(&run_id)
            .map(|run| run.locations.clone())
            .unwrap_or_default()
    }

    pub(crate) fn location_statuses(
        &self,
        run_id: Uuid,
    ) -> Result<Vec<LocationStatus>, SchedulerError> {
        let state = self.lock();
        let Some(run) = state.runs.get(&run_id) else {
            return Ok(Vec::new());
        };
        let next_location = self
            .store
            .run_field(run_id, "next_location")
            .and_then(|value| value.parse::<u64>().ok())
            .unwrap_or(0);
        location_statuses(&run.locations, &run.location_state, next_location)
    }

    pub(crate) fn report_scope(
        &self,
        run_id: Uuid,
        location: &str,
        entry_key: Option<&str>,
    ) -> crate::ledger::ReportScope {
        let location_in_run = self.store.has_run_location(run_id, location);
        let state = self.lock();
        let run = state.runs.get(&run_id);
        let (admitted, applied) = match (run, entry_key) {
            (Some(run), Some(key)) => (
                run.admitted.get(key).cloned(),
                run.applied.contains(&format!("results:{key}")),
            ),
            _ => (None, false),
        };
        crate::ledger::ReportScope {
            location_in_run,
            admitted,
            applied,
        }
    }

    pub(crate) fn admitted(&self, run_id: Uuid) -> Vec<BatchEntry> {
        let state = self.lock();
        state
            .runs
            .get(&run_id)
            .map(|run| run.admitted.values().cloned().collect())
            .unwrap_or_default()
    }

    pub(crate) fn never_started(&self, run_id: Uuid) -> Result<Vec<BatchEntry>, SchedulerError> {
        let state = self.lock();
        let Some(run) = state.runs.get(&run_id) else {
            return Ok(Vec::new());
        };
        let mut entries: Vec<BatchEntry> = run.pending.iter().cloned().collect();
        for (field, ids) in &run.pages {
            entries.push(crate::ledger::page_entry(field, ids.clone())?);
        }
        Ok(entries)
    }

    pub(crate) fn take_due_runs(&self, now_ms: u64) -> Vec<Uuid> {
        let mut state = self.lock();
        let mut due: Vec<(u64, Uuid)> = state
            .pending_runs
            .iter()
            .filter(|(at, _)| *at <= now_ms)
            .copied()
            .collect();
        state.pending_runs.retain(|(at, _)| *at > now_ms);
        due.sort();
        due.into_iter().map(|(_, run_id)| run_id).collect()
    }

    /// Newest first, as ZREVRANGE orders them.
    pub(crate) fn run_ids(&self) -> Vec<Uuid> {
        let mut index = self.lock().runs_index.clone();
        index.sort_by(|a, b| b.cmp(a));
        index.into_iter().map(|(_, run_id)| run_id).collect()
    }

    // The campaign store.

    pub(crate) fn apply_campaign(
        &self,
        name: &str,
        spec_json: &str,
        now_ms: u64,
        author: &str,
    ) -> (u32, bool) {
        let mut state = self.lock();
        let campaign = state
            .campaigns
            .entry(name.to_string())
            .or_insert_with(|| StoredCampaign {
                latest: 0,
                versions: HashMap::new(),
                updated_ms: now_ms,
                authors: HashMap::new(),
                approvals: HashMap::new(),
                deleted_ms: None,
            });
        if campaign.latest > 0
            && campaign.deleted_ms.is_none()
            && campaign.versions.get(&campaign.latest).map(String::as_str) == Some(spec_json)
        {
            return (campaign.latest, false);
        }
        campaign.latest += 1;
        campaign
            .versions
            .insert(campaign.latest, spec_json.to_string());
        campaign.authors.insert(campaign.latest, author.to_string());
        campaign.updated_ms = now_ms;
        campaign.deleted_ms = None;
        (campaign.latest, true)
    }

    /// HMGET of `v:N`, `author:N`, `approver:N`, `approved_ms:N`.
    pub(crate) fn campaign_approval(
        &self,
        name: &str,
        version: u32,
    ) -> (Option<String>, Option<String>, Option<String>, Option<u64>) {
        let state = self.lock();
        let Some(campaign) = state.campaigns.get(name) else {
            return (None, None, None, None);
        };
        let approval = campaign.approvals.get(&version);
        (
            campaign.versions.get(&version).cloned(),
            campaign.authors.get(&version).cloned(),
            approval.map(|(approver, _)| approver.clone()),
            approval.map(|(_, at)| *at),
        )
    }

    /// The `APPROVE` script.
    pub(crate) fn approve_campaign(
        &self,
        name: &str,
        version: u32,
        approver: &str,
        now_ms: u64,
    ) -> crate::approvals::ApproveOutcome {
        use crate::approvals::{Approval, ApproveOutcome};
        let mut state = self.lock();
        let Some(campaign) = state
            .campaigns
            .get_mut(name)
            .filter(|campaign| campaign.versions.contains_key(&version))
        else {
            return ApproveOutcome::UnknownVersion;
        };
        let author = campaign.authors.get(&version).cloned().unwrap_or_default();
        if let Some((approved_by, at)) = campaign.approvals.get(&version) {
            return ApproveOutcome::Approved(Approval {
                version,
                author,
                approver: Some(approved_by.clone()),
                approved_ms: Some(*at),
            });
        }
        if author == approver {
            return ApproveOutcome::AuthorCannotApprove { author };
        }
        campaign
            .approvals
            .insert(version, (approver.to_string(), now_ms));
        ApproveOutcome::Approved(Approval {
            version,
            author,
            approver: Some(approver.to_string()),
            approved_ms: Some(now_ms),
        })
    }

    /// (latest version, updated ms, spec JSON).
    pub(crate) fn latest_campaign(&self, name: &str) -> Option<(u32, u64, String)> {
        let state = self.lock();
        let campaign = state
            .campaigns
            .get(name)
            .filter(|campaign| campaign.deleted_ms.is_none())?;
        let spec = campaign.versions.get(&campaign.latest)?;
        Some((campaign.latest, campaign.updated_ms, spec.clone()))
    }

    pub(crate) fn campaign_version(&self, name: &str, version: u32) -> Option<String> {
        self.lock()
            .campaigns
            .get(name)
            .and_then(|campaign| campaign.versions.get(&version).cloned())
    }

    pub(crate) fn campaign_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .lock()
            .campaigns
            .iter()
            .filter(|(_, campaign)| campaign.deleted_ms.is_none())
            .map(|(name, _)| name.clone())
            .collect();
        names.sort();
        names
    }

    /// SREM from the index, then `deleted_ms` set: the versions stay.
    pub(crate) fn delete_campaign(&self, name: &str, now_ms: u64) -> bool {
        let mut state = self.lock();
        match state.campaigns.get_mut(name) {
            Some(campaign) if campaign.deleted_ms.is_none() => {
                campaign.deleted_ms = Some(now_ms);
                true
            }
            _ => false,
        }
    }

    // The schedule lease and fire log.

    fn live_lease(state: &mut State) -> Option<String> {
        match &state.lease {
            Some((value, expires)) if *expires > Instant::now() => Some(value.clone()),
            _ => {
                state.lease = None;
                None
            }
        }
    }

    /// The `ACQUIRE` script: the fencing token, 0 if another holder has it.
    pub(crate) fn acquire_lease(&self, holder: &str, ttl: Duration) -> u64 {
        let mut state = self.lock();
        let expires = Instant::now() + ttl;
        if let Some(current) = Self::live_lease(&mut state) {
            let Some((current_holder, token)) = current.rsplit_once(':') else {
                return 0;
            };
            if current_holder != holder {
                return 0;
            }
            let token = token.parse().unwrap_or(0);
            state.lease = Some((current, expires));
            return token;
        }
        state.lease_tokens += 1;
        let token = state.lease_tokens;
        state.lease = Some((format!("{holder}:{token}"), expires));
        token
    }

    pub(crate) fn lease_holder(&self) -> Option<String> {
        Self::live_lease(&mut self.lock())
    }

    pub(crate) fn schedule_fires(&self) -> Vec<String> {
        self.lock().fires.iter().cloned().collect()
    }

    pub(crate) fn last_fired(&self, campaign: &str) -> Option<String> {
        self.lock().fired.get(campaign).cloned()
    }

    pub(crate) fn set_fired_if_absent(&self, campaign: &str, value: &str) {
        self.lock()
            .fired
            .entry(campaign.to_string())
            .or_insert_with(|| value.to_string());
    }

    /// The `FIRE` script: 1 recorded, 0 already, -1 not the leader.
    pub(crate) fn fire(
        &self,
        lease_value: &str,
        campaign: &str,
        occurrence_ms: i64,
        start: bool,
    ) -> i64 {
        let mut state = self.lock();
        if Self::live_lease(&mut state).as_deref() != Some(lease_value) {
            return -1;
        }
        let last = state.fired.get(campaign).and_then(|last| {
            let digits: String = last.chars().take_while(char::is_ascii_digit).collect();
            digits.parse::<i64>().ok()
        });
        if last.is_some_and(|last| last >= occurrence_ms) {
            return 0;
        }
        state
            .fired
            .insert(campaign.to_string(), occurrence_ms.to_string());
        let verb = if start { "fired" } else { "skipped" };
        state
            .fires
            .push_back(format!("{campaign} {occurrence_ms} {verb} {lease_value}"));
        while state.fires.len() > 10_000 {
            state.fires.pop_front();
        }
        1
    }
}

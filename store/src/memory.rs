//! The in-process twin of the Redis store, for `flotilla demo` and unit tests.
//! It keeps time with tokio's clock, so tests can pause and advance it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::time::Instant;
use uuid::Uuid;

use protocol::run::RunState;

use crate::{
    BucketId, KILL_RELEASED, KillScope, SendClaim, SendGate, Store, StoreError, TokenGrant,
    TokenRequest, decode_claim, encode_claim_in_progress, encode_claim_sent, encode_kill_engaged,
    global_kill_reason, parse_state, refill_wait,
};

#[derive(Debug, Default, Clone)]
pub struct MemoryStore {
    inner: Arc<Mutex<Inner>>,
}

#[derive(Debug, Default)]
struct Inner {
    /// The global switch's record, encoded as on Redis; `None` is a missing record.
    global_kill: Option<String>,
    initialized: bool,
    /// Kill switches that also cancel commands in flight (`None`: global).
    cancelling: std::collections::HashSet<Option<String>>,
    campaign_kills: HashMap<String, String>,
    /// (tokens, when last refilled)
    buckets: HashMap<(String, String, String), (f64, Instant)>,
    /// Each run's record: the fields of the Redis backend's run hash. The
    /// scheduler's in-process ledger (`scheduler::twin`) keeps its run hashes
    /// here too, so the send gate reads what the scheduler wrote, as both read
    /// one hash on Redis.
    runs: HashMap<Uuid, RunRecord>,
    /// Each run's locations (`account/region`), as the Redis location set.
    run_locations: HashMap<Uuid, std::collections::HashSet<String>>,
    /// Send claims as the Redis backend encodes them.
    claims: HashMap<(Uuid, Uuid), String>,
    kill_watchers: Vec<tokio::sync::mpsc::Sender<()>>,
}

/// A run's hash: field → value, as `HGETALL` of the run key returns it.
pub type RunRecord = HashMap<String, String>;

/// Stores by name, for `memory://<name>` URLs.
static NAMED: std::sync::LazyLock<Mutex<HashMap<String, MemoryStore>>> =
    std::sync::LazyLock::new(Default::default);

impl MemoryStore {
    pub fn new() -> Self {
        Self::default()
    }

    /// The store named `name` in this process, created on first use: what
    /// every `memory://<name>` URL shares.
    pub fn named(name: &str) -> Self {
        let mut named = NAMED
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        named.entry(name.to_string()).or_default().clone()
    }

    /// Runs `update` on run `run_id`'s record (created empty if missing) under
    /// the store's lock, so nothing reads it half-updated — as a Lua script
    /// updates a run hash on Redis.
    pub fn with_run_record<T>(&self, run_id: Uuid, update: impl FnOnce(&mut RunRecord) -> T) -> T {
        update(self.lock().runs.entry(run_id).or_default())
    }

    /// A copy of run `run_id`'s record, `None` when there is none.
    pub fn run_record(&self, run_id: Uuid) -> Option<RunRecord> {
        self.lock().runs.get(&run_id).cloned()
    }

    /// Reads one field of run `run_id`'s record without copying the rest.
    pub fn run_field(&self, run_id: Uuid, field: &str) -> Option<String> {
        self.lock()
            .runs
            .get(&run_id)
            .and_then(|record| record.get(field).cloned())
    }

    /// Records run `run_id`'s locations (the scheduler's twin, at run start).
    pub fn set_run_locations(&self, run_id: Uuid, locations: impl IntoIterator<Item = String>) {
        self.lock()
            .run_locations
            .insert(run_id, locations.into_iter().collect());
    }

    /// Whether `location` is one of run `run_id`'s.
    pub fn has_run_location(&self, run_id: Uuid, location: &str) -> bool {
        self.lock().has_run_location(run_id, location)
    }

    /// Forgets run `run_id`'s record, as `DEL` of its hash would (tests of
    /// what a worker does when a record disappears).
    pub fn delete_run_record(&self, run_id: Uuid) {
        self.lock().runs.remove(&run_id);
    }

    /// Overwrites the global kill switch's raw record (`None`: deleted), as
    /// someone with write access to Redis could (tests of failing closed).
    pub fn set_raw_kill_record(&self, record: Option<&str>) {
        let mut inner = self.lock();
        inner.global_kill = record.map(str::to_string);
        inner.notify_kill_watchers();
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // No update leaves Inner half-written, so a poisoned lock is still sound.
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Inner {
    fn has_run_location(&self, run_id: Uuid, location: &str) -> bool {
        self.run_locations
            .get(&run_id)
            .is_some_and(|locations| locations.contains(location))
    }

    /// Like Redis pub/sub: every live watcher hears it, dropped ones are forgotten.
    fn notify_kill_watchers(&mut self) {
        self.kill_watchers.retain(|watcher| {
            !matches!(
                watcher.try_send(()),
                Err(tokio::sync::mpsc::error::TrySendError::Closed(()))
            )
        });
    }
}

fn cancel_scope(scope: &KillScope) -> Option<String> {
    match scope {
        KillScope::Global => None,
        KillScope::Campaign(campaign) => Some(campaign.clone()),
    }
}

impl Store for MemoryStore {
    async fn engage_kill_switch(&self, scope: &KillScope, reason: &str) -> Result<(), StoreError> {
        let mut inner = self.lock();
        match scope {
            KillScope::Global => inner.global_kill = Some(encode_kill_engaged(reason)),
            KillScope::Campaign(campaign) => {
                inner
                    .campaign_kills
                    .insert(campaign.clone(), reason.to_string());
            }
        }
        inner.notify_kill_watchers();
        Ok(())
    }

    async fn init_kill_switch(&self) -> Result<bool, StoreError> {
        let mut inner = self.lock();
        if inner.initialized {
            return Ok(false);
        }
        inner.initialized = true;
        if inner.global_kill.is_none() {
            inner.global_kill = Some(KILL_RELEASED.to_string());
        }
        Ok(true)
    }

    async fn request_cancel_in_flight(&self, scope: &KillScope) -> Result<(), StoreError> {
        self.lock().cancelling.insert(cancel_scope(scope));
        Ok(())
    }

    async fn release_kill_switch(&self, scope: &KillScope) -> Result<(), StoreError> {
        let mut inner = self.lock();
        inner.cancelling.remove(&cancel_scope(scope));
        match scope {
            KillScope::Global => inner.global_kill = Some(KILL_RELEASED.to_string()),
            KillScope::Campaign(campaign) => {
                inner.campaign_kills.remove(campaign);
            }
        }
        inner.notify_kill_watchers();
        Ok(())
    }

    async fn kill_reason(&self, campaign: &str) -> Result<Option<String>, StoreError> {
        let inner = self.lock();
        Ok(global_kill_reason(inner.global_kill.as_deref())
            .or_else(|| inner.campaign_kills.get(campaign).cloned()))
    }

    async fn take_tokens(
        &self,
        bucket: BucketId<'_>,
        request: TokenRequest,
    ) -> Result<TokenGrant, StoreError> {
        let now = Instant::now();
        let key = (
            bucket.account_id.to_string(),
            bucket.region.to_string(),
            bucket.api.to_string(),
        );
        let mut inner = self.lock();
        let (tokens, refreshed) = inner.buckets.entry(key).or_insert((request.burst, now));
        *tokens = (*tokens
            + now.duration_since(*refreshed).as_secs_f64() * request.rate_per_second)
            .min(request.burst);
        *refreshed = now;
        let wanted = f64::from(request.tokens);
        if *tokens >= wanted {
            *tokens -= wanted;
            Ok(TokenGrant::Granted)
        } else {
            Ok(TokenGrant::RetryAfter(refill_wait(
                wanted - *tokens,
                request.rate_per_second,
            )))
        }
    }

    async fn set_run_state(
        &self,
        run_id: Uuid,
        state: RunState,
        reason: &str,
    ) -> Result<(), StoreError> {
        self.with_run_record(run_id, |record| {
            record.insert("state".into(), state.as_str().to_string());
            record.insert("reason".into(), reason.to_string());
        });
        Ok(())
    }

    async fn send_gate(&self, campaign: &str, run_id: Uuid) -> Result<SendGate, StoreError> {
        let kill_reason = self.kill_reason(campaign).await?;
        let (state, reason) = {
            let inner = self.lock();
            let record = inner.runs.get(&run_id);
            let field = |name: &str| record.and_then(|record| record.get(name).cloned());
            (field("state"), field("reason"))
        };
        Ok(SendGate::decide(kill_reason, parse_state(state)?, reason))
    }

    async fn run_contract(
        &self,
        run_id: Uuid,
        campaign: &str,
        location: &str,
    ) -> Result<Option<crate::ContractReading>, StoreError> {
        let inner = self.lock();
        let Some(record) = inner.runs.get(&run_id) else {
            return Ok(None);
        };
        let cancelled = record
            .get("state")
            .is_some_and(|state| state == RunState::Cancelled.as_str());
        Ok(Some(crate::ContractReading {
            contract: record.get("contract").cloned(),
            location_in_run: inner.has_run_location(run_id, location),
            cancel_in_flight: cancelled
                || inner.cancelling.contains(&None)
                || inner.cancelling.contains(&Some(campaign.to_string())),
        }))
    }

    async fn claim_send(
        &self,
        run_id: Uuid,
        job_id: Uuid,
        now_ms: u64,
    ) -> Result<SendClaim, StoreError> {
        let mut inner = self.lock();
        match inner.claims.get(&(run_id, job_id)) {
            Some(value) => decode_claim(value),
            None => {
                inner
                    .claims
                    .insert((run_id, job_id), encode_claim_in_progress(now_ms));
                Ok(SendClaim::Claimed)
            }
        }
    }

    async fn reclaim_send(
        &self,
        run_id: Uuid,
        job_id: Uuid,
        since_ms: u64,
        now_ms: u64,
    ) -> Result<bool, StoreError> {
        let mut inner = self.lock();
        let Some(value) = inner.claims.get_mut(&(run_id, job_id)) else {
            return Ok(false);
        };
        if *value != encode_claim_in_progress(since_ms) {
            return Ok(false);
        }
        *value = encode_claim_in_progress(now_ms);
        Ok(true)
    }

    async fn release_send(
        &self,
        run_id: Uuid,
        job_id: Uuid,
        since_ms: u64,
    ) -> Result<bool, StoreError> {
        let mut inner = self.lock();
        if inner.claims.get(&(run_id, job_id)) != Some(&encode_claim_in_progress(since_ms)) {
            return Ok(false);
        }
        inner.claims.remove(&(run_id, job_id));
        Ok(true)
    }

    async fn watch_kill_changes(&self) -> Result<tokio::sync::mpsc::Receiver<()>, StoreError> {
        let (sender, receiver) = tokio::sync::mpsc::channel(16);
        self.lock().kill_watchers.push(sender);
        Ok(receiver)
    }

    async fn record_command(
        &self,
        run_id: Uuid,
        job_id: Uuid,
        command_id: &str,
    ) -> Result<(), StoreError> {
        self.lock()
            .claims
            .insert((run_id, job_id), encode_claim_sent(command_id));
        Ok(())
    }
}

//! The in-process twin of the Redis store, for `flotilla demo` and unit tests.
//! It keeps time with tokio's clock, so tests can pause and advance it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::time::Instant;
use uuid::Uuid;

use crate::{
    BucketId, BudgetUpdate, KillScope, Store, StoreError, TokenGrant, TokenRequest, refill_wait,
};

#[derive(Debug, Default, Clone)]
pub struct MemoryStore {
    inner: Arc<Mutex<Inner>>,
}

#[derive(Debug, Default)]
struct Inner {
    global_kill: Option<String>,
    campaign_kills: HashMap<String, String>,
    /// (tokens, when last refilled)
    buckets: HashMap<(String, String, String), (f64, Instant)>,
    /// (failures, halt reason)
    runs: HashMap<Uuid, (u64, Option<String>)>,
    commands: HashMap<(Uuid, Uuid), String>,
}

impl MemoryStore {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // No update leaves Inner half-written, so a poisoned lock is still sound.
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Store for MemoryStore {
    async fn engage_kill_switch(&self, scope: &KillScope, reason: &str) -> Result<(), StoreError> {
        let mut inner = self.lock();
        match scope {
            KillScope::Global => inner.global_kill = Some(reason.to_string()),
            KillScope::Campaign(campaign) => {
                inner
                    .campaign_kills
                    .insert(campaign.clone(), reason.to_string());
            }
        }
        Ok(())
    }

    async fn release_kill_switch(&self, scope: &KillScope) -> Result<(), StoreError> {
        let mut inner = self.lock();
        match scope {
            KillScope::Global => inner.global_kill = None,
            KillScope::Campaign(campaign) => {
                inner.campaign_kills.remove(campaign);
            }
        }
        Ok(())
    }

    async fn kill_reason(&self, campaign: &str) -> Result<Option<String>, StoreError> {
        let inner = self.lock();
        Ok(inner
            .global_kill
            .clone()
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

    async fn record_failures(
        &self,
        run_id: Uuid,
        failures: u64,
        allowed: u64,
        reason: &str,
    ) -> Result<BudgetUpdate, StoreError> {
        let mut inner = self.lock();
        let (count, halt) = inner.runs.entry(run_id).or_default();
        let before = *count;
        *count += failures;
        let crossed = before <= allowed && *count > allowed;
        if crossed {
            *halt = Some(reason.to_string());
        }
        Ok(BudgetUpdate {
            failures: *count,
            crossed,
        })
    }

    async fn halt_reason(&self, run_id: Uuid) -> Result<Option<String>, StoreError> {
        Ok(self
            .lock()
            .runs
            .get(&run_id)
            .and_then(|(_, reason)| reason.clone()))
    }

    async fn remember_command(
        &self,
        run_id: Uuid,
        job_id: Uuid,
        command_id: &str,
    ) -> Result<String, StoreError> {
        Ok(self
            .lock()
            .commands
            .entry((run_id, job_id))
            .or_insert_with(|| command_id.to_string())
            .clone())
    }
}

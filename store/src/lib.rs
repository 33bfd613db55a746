//! flotilla's shared, fast, small state: the kill switch, API token buckets, error
//! budgets and idempotency records — on Redis for real deployments and in process
//! for the demo and unit tests. One conformance suite (`tests/conformance.rs`)
//! runs unchanged against both, so the twin behaves like the real thing.
//!
//! - [`redis_store`]: the Redis backend; every multi-step update is one Lua script.
//! - [`memory`]: the in-process twin, on tokio's clock (pausable in tests).
//!
//! Not here yet: run records and counters, concurrency permits, the scheduler
//! lease and the kill-switch pub/sub push (the worker and scheduler issues).

pub mod memory;
pub mod redis_store;

use std::future::Future;
use std::time::Duration;

use uuid::Uuid;

pub use memory::MemoryStore;
pub use redis_store::RedisStore;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(
        "Redis at {url} is unreachable ({source}); start it with `redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save \"\" --appendonly no` or `docker compose up -d redis`"
    )]
    Unreachable {
        url: String,
        source: redis::RedisError,
    },
    #[error("Redis command failed: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("Redis answered something unexpected: {0}")]
    Unexpected(String),
}

impl StoreError {
    /// Connection trouble may pass; a script or type error will not.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Unreachable { .. } => true,
            Self::Redis(error) => {
                error.is_io_error() || error.is_connection_dropped() || error.is_timeout()
            }
            Self::Unexpected(_) => false,
        }
    }
}

/// What a kill switch stops.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KillScope {
    /// Every campaign.
    Global,
    Campaign(String),
}

/// One shared token bucket: an account-region-API (AssumeRole: region `global`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BucketId<'a> {
    pub account_id: &'a str,
    pub region: &'a str,
    pub api: &'a str,
}

/// Refill `rate_per_second`, hold at most `burst`, take `tokens` now.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TokenRequest {
    pub rate_per_second: f64,
    pub burst: f64,
    pub tokens: u32,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum TokenGrant {
    Granted,
    /// Nothing was taken; enough tokens will be there after this long.
    RetryAfter(Duration),
}

/// The run's failure count after an update, and whether this very update crossed
/// the budget (exactly one update per run ever does).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BudgetUpdate {
    pub failures: u64,
    pub crossed: bool,
}

/// The shared state every scheduler and worker sees. Implementations are cheap to
/// clone handles onto one backend.
pub trait Store: Clone + Send + Sync + 'static {
    fn engage_kill_switch(
        &self,
        scope: &KillScope,
        reason: &str,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    fn release_kill_switch(
        &self,
        scope: &KillScope,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Why `campaign` must not send anything now (the global switch first), if it
    /// must not.
    fn kill_reason(
        &self,
        campaign: &str,
    ) -> impl Future<Output = Result<Option<String>, StoreError>> + Send;

    /// Takes tokens from a bucket shared by every worker; all or nothing.
    fn take_tokens(
        &self,
        bucket: BucketId<'_>,
        request: TokenRequest,
    ) -> impl Future<Output = Result<TokenGrant, StoreError>> + Send;

    /// Adds failed targets to a run; the update that takes failures above
    /// `allowed` halts the run with `reason`, in the same atomic step.
    fn record_failures(
        &self,
        run_id: Uuid,
        failures: u64,
        allowed: u64,
        reason: &str,
    ) -> impl Future<Output = Result<BudgetUpdate, StoreError>> + Send;

    /// Why the run was halted by its error budget, if it was.
    fn halt_reason(
        &self,
        run_id: Uuid,
    ) -> impl Future<Output = Result<Option<String>, StoreError>> + Send;

    /// Records the command a job sent unless one is recorded already, and returns
    /// the recorded one: a redelivered job finds its command instead of sending again.
    fn remember_command(
        &self,
        run_id: Uuid,
        job_id: Uuid,
        command_id: &str,
    ) -> impl Future<Output = Result<String, StoreError>> + Send;
}

/// How long until `missing` tokens refill at `rate_per_second` (never zero).
pub(crate) fn refill_wait(missing: f64, rate_per_second: f64) -> Duration {
    Duration::from_secs_f64((missing / rate_per_second).max(0.001))
}

//! flotilla's shared, fast, small state: the kill switch, API token buckets, run
//! states as workers read them, and send claims — kept in Redis. The same code
//! runs on a real Redis and on the in-memory one of `memory://<name>` URLs (the
//! demo's and the unit tests' backend): the one seam is the Redis protocol
//! itself ([`connection::Connection`]). One conformance suite
//! (`tests/conformance.rs`) runs unchanged against both.
//!
//! - [`connection`]: the connection to a real or in-memory Redis, chosen by URL.
//! - [`redis_store`]: the store; every multi-step update is one Lua script.
//! - [`memory`]: the in-memory Redis (commands and Lua), on tokio's clock.
//! - [`acl`]: the Redis ACL users of each kind of service.
//! - [`clock`]: keeping a service on Redis's clock, the one every service
//!   shares.
//! - [`endpoint`]: Redis URLs (TLS, Sentinel, Cluster, `wait_replicas`) as
//!   settings.
//! - [`node`]: the connection to one Redis node (by URL, or the master
//!   Sentinel names), replaced when it stops answering.
//! - [`waits`]: workers' notes of why a run's jobs wait, and their bounded,
//!   pruning read for `run show`.
//! - here: the [`Store`] trait, and [`SendGate`]/[`GateCause`] — what a worker
//!   reads before every send (kill switches first, then the run's state).
//!
//! The scheduler's run bookkeeping (locations, admission, applied reports) lives
//! in the scheduler crate (`scheduler::ledger`) and uses the same connection.

pub mod acl;
pub mod clock;
pub mod connection;
pub mod endpoint;
pub mod memory;
pub mod node;
pub mod redis_store;
pub mod waits;

use std::future::Future;
use std::time::Duration;

use protocol::run::{RunState, SendDecision};
use uuid::Uuid;

pub use connection::{Connection, RedisTls, install_tls_provider};
pub use memory::MemoryRedis;
pub use redis_store::RedisStore;
pub use waits::WaitNote;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("Redis at {url} is unreachable ({source}); {hint}")]
    Unreachable {
        url: String,
        source: redis::RedisError,
        /// What to check, for this kind of endpoint ([`crate::endpoint::Endpoint::unreachable_hint`]).
        hint: &'static str,
    },
    #[error("Redis command failed: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("Redis answered something unexpected: {0}")]
    Unexpected(String),
    #[error(
        "a write reached {acked} of the {wanted} Redis replicas that must hold it (wait_replicas in --redis-url); is a replica down?"
    )]
    NotReplicated { wanted: u32, acked: u32 },
}

impl StoreError {
    /// Connection trouble may pass; a script or type error will not.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Unreachable { .. } => true,
            Self::Redis(error) => redis_error_is_retryable(error),
            Self::Unexpected(_) => false,
            // A replica may come back, or a new one be attached.
            Self::NotReplicated { .. } => true,
        }
    }
}

/// Connection trouble, a timeout, or a cluster or Sentinel failover in
/// progress (MOVED/ASK/TRYAGAIN/CLUSTERDOWN, a demoted master's READONLY,
/// MASTERDOWN): the same command may succeed in a moment.
pub fn redis_error_is_retryable(error: &redis::RedisError) -> bool {
    use redis::{ErrorKind, ServerErrorKind};
    error.is_io_error()
        || error.is_connection_dropped()
        || error.is_connection_refusal()
        || error.is_timeout()
        || error.is_cluster_error()
        || matches!(
            error.kind(),
            ErrorKind::Server(ServerErrorKind::ReadOnly | ServerErrorKind::MasterDown)
        )
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
    /// Reserve tokens that are at most this far away (zero: only tokens
    /// there now).
    pub max_wait: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum TokenGrant {
    Granted,
    /// The tokens are reserved for the caller from this long from now on: it
    /// sleeps that long, then calls (nobody else gets them).
    Reserved(Duration),
    /// Nothing was taken; enough tokens will be there after this long (more
    /// than the request's `max_wait`).
    RetryAfter(Duration),
}

/// What a worker finds when it is about to send a job's command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SendClaim {
    /// Nobody has sent it: this worker may, now.
    Claimed,
    /// A worker claimed it at `since_ms` (Unix ms) and recorded no command yet: it
    /// may still be sending, or it died before or after sending.
    InProgress { since_ms: u64 },
    /// The command was sent: poll it instead of sending again.
    Sent { command_id: String },
}

/// What [`Store::arm_new_deployment`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arming {
    /// A new deployment: its global kill switch is released.
    Armed,
    /// The deployment was armed before: nothing changed (a missing kill
    /// switch record stays engaged; release it as any engaged switch).
    AlreadyArmed,
    /// No marker, but runs exist: someone deleted the marker. Nothing
    /// changed; the switch stays as it is (engaged if its record is missing).
    HasRuns,
}

/// What a run's append-only send record says of a job ([`Store::mark_send`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SendRecord {
    /// No delivery was about to send it before: send.
    First,
    /// A delivery was about to send it at `since_ms` and recorded no command:
    /// it may have sent (ask SSM once that send would be visible) or died first.
    Attempted { since_ms: u64 },
    /// It was sent: poll the command, never send again.
    Sent { command_id: String },
}

/// Whether a campaign's run may send a command now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SendGate {
    Open,
    Shut(GateCause),
}

/// Why a run may not send now. Metric labels and log words come from here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GateCause {
    /// The global kill switch is engaged, or its record is missing or
    /// unreadable (fail closed); the operator's reason or what is wrong.
    KillSwitchGlobal(String),
    /// The campaign's kill switch is engaged, with the operator's reason.
    KillSwitchCampaign(String),
    /// Each with the reason the run's record gives.
    RunPaused(String),
    /// Between two waves of a rollout (baking, gates, approval).
    RunBetweenWaves(String),
    /// Outside the campaign's maintenance windows.
    RunOutsideWindow(String),
    RunHalted(String),
    RunCancelled(String),
    RunCompleted(String),
    /// The run has no record (deleted, or the job is forged): never send.
    RunUnknown,
    /// Redis did not answer: fail closed.
    StoreUnreachable(String),
}

impl SendGate {
    pub fn decision(&self) -> SendDecision {
        match self {
            Self::Open => SendDecision::Send,
            Self::Shut(cause) => cause.decision(),
        }
    }

    fn decide(
        global_kill: Option<String>,
        campaign_kill: Option<String>,
        state: Option<RunState>,
        run_reason: Option<String>,
    ) -> Self {
        if let Some(reason) = global_kill {
            return Self::Shut(GateCause::KillSwitchGlobal(reason));
        }
        if let Some(reason) = campaign_kill {
            return Self::Shut(GateCause::KillSwitchCampaign(reason));
        }
        // A run the store does not know never sends (fail closed): the
        // scheduler records every run before publishing its first job, so a
        // missing record was deleted, or the job is forged.
        let Some(state) = state else {
            return Self::Shut(GateCause::RunUnknown);
        };
        let reason = || {
            run_reason
                .clone()
                .unwrap_or_else(|| format!("run is {state}"))
        };
        match state {
            RunState::Pending | RunState::Discovering | RunState::Running => Self::Open,
            RunState::Paused => Self::Shut(GateCause::RunPaused(reason())),
            RunState::Baking | RunState::AwaitingApproval => {
                Self::Shut(GateCause::RunBetweenWaves(reason()))
            }
            RunState::OutsideWindow => Self::Shut(GateCause::RunOutsideWindow(reason())),
            RunState::Halted => Self::Shut(GateCause::RunHalted(reason())),
            RunState::Cancelled => Self::Shut(GateCause::RunCancelled(reason())),
            RunState::Completed => Self::Shut(GateCause::RunCompleted(reason())),
        }
    }
}

impl SendGate {
    /// An open gate shuts at `send_until_ms` (Unix ms), the end of the
    /// maintenance window the scheduler last saw open: a worker never sends
    /// after a window closes, however late the scheduler notices.
    pub fn within_window(self, send_until_ms: Option<u64>, now_ms: u64) -> Self {
        match (self, send_until_ms) {
            (Self::Open, Some(until)) if now_ms >= until => Self::Shut(
                GateCause::RunOutsideWindow("the campaign's maintenance window is closed".into()),
            ),
            (gate, _) => gate,
        }
    }
}

impl GateCause {
    /// Wait (and look again) or report the targets not started.
    pub fn decision(&self) -> SendDecision {
        match self {
            Self::RunHalted(_) | Self::RunCancelled(_) | Self::RunCompleted(_) => {
                SendDecision::NotStarted
            }
            Self::KillSwitchGlobal(_)
            | Self::KillSwitchCampaign(_)
            | Self::RunPaused(_)
            | Self::RunBetweenWaves(_)
            | Self::RunOutsideWindow(_)
            | Self::RunUnknown
            | Self::StoreUnreachable(_) => SendDecision::Wait,
        }
    }

    /// The `reason` label of `flotilla_worker_mutations_blocked_total`.
    pub fn label(&self) -> &'static str {
        match self {
            Self::KillSwitchGlobal(_) => "kill_switch_global",
            Self::KillSwitchCampaign(_) => "kill_switch_campaign",
            Self::RunPaused(_) => "run_paused",
            Self::RunBetweenWaves(_) => "run_between_waves",
            Self::RunOutsideWindow(_) => "run_outside_window",
            Self::RunHalted(_) => "run_halted",
            Self::RunCancelled(_) => "run_cancelled",
            Self::RunCompleted(_) => "run_completed",
            Self::RunUnknown => "run_unknown",
            Self::StoreUnreachable(_) => "store_unreachable",
        }
    }
}

impl std::fmt::Display for GateCause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::KillSwitchGlobal(reason) => write!(f, "global kill switch engaged: {reason}"),
            Self::KillSwitchCampaign(reason) => {
                write!(f, "campaign kill switch engaged: {reason}")
            }
            Self::RunPaused(reason)
            | Self::RunBetweenWaves(reason)
            | Self::RunOutsideWindow(reason)
            | Self::RunHalted(reason)
            | Self::RunCancelled(reason)
            | Self::RunCompleted(reason) => f.write_str(reason),
            Self::RunUnknown => {
                f.write_str("the run has no record (deleted?); nothing is sent for it")
            }
            Self::StoreUnreachable(error) => write!(f, "redis unreachable: {error}"),
        }
    }
}

/// What a worker checks a job against before acting on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContractReading {
    /// The run's `protocol::run::RunContract` as JSON (`None`: the run
    /// record has none, which a worker treats as unreadable).
    pub contract: Option<String>,
    /// Whether the job's location is one of the run's.
    pub location_in_run: bool,
    /// Whether the run's commands in flight must be cancelled: the run was
    /// cancelled, or a kill switch over it asks for it (read in the same
    /// round trip, for the Polls that act on it).
    pub cancel_in_flight: bool,
}

/// The shared state every scheduler and worker sees. Implementations are cheap to
/// clone handles onto one backend.
pub trait Store: Clone + Send + Sync + 'static {
    /// Redis's clock (`TIME`, Unix ms), the one every service shares
    /// ([`clock`]); `None` where the store runs on this host's clock (in
    /// memory).
    fn server_time_ms(&self) -> impl Future<Output = Result<Option<u64>, StoreError>> + Send;

    fn engage_kill_switch(
        &self,
        scope: &KillScope,
        reason: &str,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Makes an engaged kill switch also cancel the commands in flight under
    /// it (workers call CancelCommand when they next poll them); a release
    /// clears it.
    fn request_cancel_in_flight(
        &self,
        scope: &KillScope,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Arms a new deployment: writes its marker and releases the global
    /// switch — only if the deployment has neither a marker nor any run.
    /// Never inferred: an explicit, audited act (`flotilla admin arm`,
    /// `Scheduler::arm_new_deployment`). Everywhere else a missing record
    /// stays engaged, so deleting it (and the marker) never releases sends.
    fn arm_new_deployment(&self) -> impl Future<Output = Result<Arming, StoreError>> + Send;

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

    /// Takes tokens from a bucket shared by every worker, now or reserved for
    /// an instant at most `max_wait` away (GCRA); all or nothing.
    fn take_tokens(
        &self,
        bucket: BucketId<'_>,
        request: TokenRequest,
    ) -> impl Future<Output = Result<TokenGrant, StoreError>> + Send;

    /// Sets a run's state and the reason for it (shown to operators).
    fn set_run_state(
        &self,
        run_id: Uuid,
        state: RunState,
        reason: &str,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// May `campaign`'s run `run_id` send a command now? Kill switches (global,
    /// then the campaign's) and the run's state, read together.
    fn send_gate(
        &self,
        campaign: &str,
        run_id: Uuid,
    ) -> impl Future<Output = Result<SendGate, StoreError>> + Send;

    /// The run's job contract, whether `location` (`account/region`) is one
    /// of its locations and whether `campaign`'s run must cancel its commands
    /// in flight; `None` when the run has no record.
    fn run_contract(
        &self,
        run_id: Uuid,
        campaign: &str,
        location: &str,
    ) -> impl Future<Output = Result<Option<ContractReading>, StoreError>> + Send;

    /// Claims the right to send a job's command, or says who has it: a
    /// redelivered job finds its command instead of sending again.
    fn claim_send(
        &self,
        run_id: Uuid,
        job_id: Uuid,
        now_ms: u64,
    ) -> impl Future<Output = Result<SendClaim, StoreError>> + Send;

    /// Takes over a claim from `since_ms` whose holder recorded no command (it
    /// died); false when the claim changed meanwhile.
    fn reclaim_send(
        &self,
        run_id: Uuid,
        job_id: Uuid,
        since_ms: u64,
        now_ms: u64,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Wakes the receiver whenever a kill switch is engaged or released anywhere.
    /// The receiver closes if the subscription is lost; callers re-read the
    /// switches on a timer anyway and subscribe again.
    fn watch_kill_changes(
        &self,
    ) -> impl Future<Output = Result<tokio::sync::mpsc::Receiver<()>, StoreError>> + Send;

    /// Gives up a claim from `since_ms` whose holder knows it sent nothing
    /// (throttled, paused), so the job's next delivery can claim at once; false
    /// when the claim changed meanwhile.
    fn release_send(
        &self,
        run_id: Uuid,
        job_id: Uuid,
        since_ms: u64,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Records, right before SendCommand and in a record no worker can
    /// change (written only by `HSETNX`, which workers alone may use on it),
    /// that the job is about to send; says what an earlier delivery recorded
    /// there. The send claim above is the fast path; this is what still
    /// holds when a claim is erased by a stolen worker credential or lost.
    fn mark_send(
        &self,
        run_id: Uuid,
        job_id: Uuid,
        now_ms: u64,
    ) -> impl Future<Output = Result<SendRecord, StoreError>> + Send;

    /// Records the command a claimed job sent (in the claim, and once and
    /// for good in the run's send record).
    fn record_command(
        &self,
        run_id: Uuid,
        job_id: Uuid,
        command_id: &str,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Notes why jobs of a run wait (field → [`WaitNote::encode`]), kept
    /// `ttl` after the last note: explanations for `run show`, never read
    /// by a decision.
    fn note_waits(
        &self,
        run_id: Uuid,
        notes: &[(String, String)],
        ttl: Duration,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
}

/// The global kill switch's record when released. The switch is an explicit
/// record, never the absence of one: a deleted or corrupted record reads as
/// engaged (fail closed), exactly like an unreachable Redis.
pub(crate) const KILL_RELEASED: &str = "released";

pub(crate) fn encode_kill_engaged(reason: &str) -> String {
    format!("engaged:{reason}")
}

/// Why the global switch stops sends, from its record; `None` when released.
pub(crate) fn global_kill_reason(record: Option<&str>) -> Option<String> {
    match record {
        Some(KILL_RELEASED) => None,
        None => Some(
            "the global kill switch record is missing (deleted?); sends stay stopped until an operator releases the switch (`flotilla kill release`)"
                .into(),
        ),
        Some(value) => Some(value.strip_prefix("engaged:").map_or_else(
            || {
                "the global kill switch record is unreadable (corrupted?); sends stay stopped until an operator releases the switch (`flotilla kill release`)"
                    .to_string()
            },
            str::to_string,
        )),
    }
}

/// How a send claim is stored: `sending:<unix ms>` or `sent:<command id>`.
pub(crate) fn encode_claim_in_progress(since_ms: u64) -> String {
    format!("sending:{since_ms}")
}

pub(crate) fn encode_claim_sent(command_id: &str) -> String {
    format!("sent:{command_id}")
}

pub(crate) fn decode_claim(value: &str) -> Result<SendClaim, StoreError> {
    if let Some(command_id) = value.strip_prefix("sent:") {
        return Ok(SendClaim::Sent {
            command_id: command_id.to_string(),
        });
    }
    value
        .strip_prefix("sending:")
        .and_then(|since| since.parse().ok())
        .map(|since_ms| SendClaim::InProgress { since_ms })
        .ok_or_else(|| StoreError::Unexpected(format!("send claim holds {value:?}")))
}

/// A run record's `state` field, as both backends store it.
pub(crate) fn parse_state(state: Option<String>) -> Result<Option<RunState>, StoreError> {
    state
        .map(|state| state.parse::<RunState>())
        .transpose()
        .map_err(StoreError::Unexpected)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_live_runs_send_paused_runs_wait_and_final_runs_report_not_started() {
        let gate = |state| SendGate::decide(None, None, Some(state), None);
        for state in [RunState::Pending, RunState::Discovering, RunState::Running] {
            assert_eq!(gate(state), SendGate::Open);
        }
        for state in [
            RunState::Paused,
            RunState::Baking,
            RunState::AwaitingApproval,
            RunState::OutsideWindow,
        ] {
            assert_eq!(gate(state).decision(), SendDecision::Wait, "{state}");
        }
        for state in [RunState::Halted, RunState::Cancelled, RunState::Completed] {
            assert!(state.is_final());
            assert_eq!(gate(state).decision(), SendDecision::NotStarted);
        }
    }

    #[test]
    fn an_open_gate_shuts_when_the_window_ends() {
        assert_eq!(SendGate::Open.within_window(None, 5), SendGate::Open);
        assert_eq!(SendGate::Open.within_window(Some(6), 5), SendGate::Open);
        let shut = SendGate::Open.within_window(Some(5), 5);
        assert_eq!(shut.decision(), SendDecision::Wait);
        let SendGate::Shut(cause) = shut else {
            panic!("a closed window shuts the gate");
        };
        assert_eq!(cause.label(), "run_outside_window");
        let halted = SendGate::Shut(GateCause::RunHalted("budget".into()));
        assert_eq!(halted.clone().within_window(Some(0), 5), halted);
    }

    #[test]
    fn the_global_switch_comes_first_and_an_unknown_run_waits() {
        let gate = SendGate::decide(
            Some("incident 42".into()),
            Some("alert".into()),
            Some(RunState::Cancelled),
            None,
        );
        let SendGate::Shut(cause) = gate else {
            panic!("an engaged switch shuts the gate");
        };
        assert_eq!(cause.label(), "kill_switch_global");
        assert_eq!(cause.decision(), SendDecision::Wait);
        assert!(cause.to_string().contains("incident 42"));
        let unknown = SendGate::decide(None, None, None, None);
        assert_eq!(unknown, SendGate::Shut(GateCause::RunUnknown));
        assert_eq!(unknown.decision(), SendDecision::Wait);
    }
}

//! flotilla's worker: takes jobs from RabbitMQ, assumes a role in the job's
//! account, calls SSM, and reports what happened. Workers are stateless: any
//! number can come and go, and a job delivered twice is done once.
//!
//! - [`consumer`]: the consume loop — reconnects, urgent before bulk, bounded
//!   in-flight jobs, graceful shutdown — and `settle_delivery`, the one place a
//!   delivery is acked, delayed or dead-lettered.
//! - `admission`: whether a delivery may be worked on at all (signature,
//!   signer, run contract).
//! - [`discover`], [`execute`], [`poll`]: one file per job kind.
//! - [`safety`]: the kill-switch watcher: the global switch re-read every
//!   second and on every pushed change (fails closed when Redis cannot be read).
//! - `Context::gate` (here): **the kill switch is read before every send** —
//!   the watcher's reading, then the store's `send_gate` (global and campaign
//!   switch, run state) in one round trip; `execute` asks it before claiming a
//!   job and again right before SendCommand. Its `store::GateCause` names why
//!   a send was held back. The error budget is the scheduler's (it halts the
//!   run; the gate then reports the rest not started).
//! - [`reporter`]: one task per connection that gathers what jobs report
//!   into signed bundles.
//! - [`rate`]: shared per account-region-API token buckets.
//! - [`waits`]: notes of why jobs wait (held sends, retries) for `run show`,
//!   flushed to Redis every 2 s, only while jobs wait.
//! - [`aws`]: role sessions, SSM clients, retries and the one AWS error classifier.
//! - [`metrics`]: Prometheus metrics and their `/metrics` endpoint.

mod admission;
pub mod aws;
pub mod consumer;
pub mod discover;
pub mod execute;
pub mod metrics;
pub mod poll;
pub mod rate;
pub mod reporter;
pub mod safety;
pub mod waits;

use std::net::SocketAddr;
use std::num::NonZeroU16;
use std::time::Duration;

use broker::{Broker, BrokerError};
use protocol::names::Names;
use store::{Store, StoreError};

use crate::aws::{Aws, AwsError};
use crate::metrics::WorkerMetrics;
use crate::safety::SafetyState;

pub use crate::aws::AwsSettings;
pub use crate::consumer::run;
pub use aws_sdk_ssm::config::Credentials;

/// [`WorkerConfig::held_polls`] unless set: enough for a worker sending
/// ~100 commands a second (each held 2 s), at a few KiB each.
pub const DEFAULT_HELD_POLLS: u16 = 256;

/// A worker's settings, validated (see `flotilla worker --help` for the flags).
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    pub amqp_url: String,
    pub names: Names,
    /// Jobs handled at once (each queue's prefetch is this plus
    /// `held_polls`). Raising it
    /// lets one worker wait on more AWS calls at once; it costs memory, and more
    /// redeliveries when the worker dies.
    pub concurrency: NonZeroU16,
    /// Execute jobs that may wait in the worker for their command's first
    /// poll (2 s after the send), holding their delivery but no permit,
    /// instead of sending the poll through a delay queue: each saves the
    /// broker two publishes and deliveries. Added to each queue's prefetch;
    /// 0 sends every poll through a delay queue.
    pub held_polls: u16,
    /// Where `/metrics` is served; `None` serves nothing.
    pub metrics_addr: Option<SocketAddr>,
    /// How long in-flight jobs may take to finish on shutdown before the rest is
    /// returned to the queue.
    pub shutdown_timeout: Duration,
    pub aws: AwsSettings,
    /// A label for the RabbitMQ connection and logs.
    pub name: String,
    /// A CA for `amqps://` broker URLs.
    pub amqp_tls: broker::BrokerTls,
    /// The worker's signing key (reports, polls, next pages) and the keys it
    /// trusts (schedulers' for jobs, workers' for what workers derive). The
    /// default signs nothing and trusts nobody: `run` refuses it.
    pub keys: protocol::signing::Keyring,
}

impl WorkerConfig {
    pub fn new(amqp_url: impl Into<String>, names: Names) -> Self {
        Self {
            amqp_url: amqp_url.into(),
            names,
            concurrency: NonZeroU16::new(32).unwrap_or(NonZeroU16::MIN),
            held_polls: DEFAULT_HELD_POLLS,
            metrics_addr: None,
            shutdown_timeout: Duration::from_secs(30),
            aws: AwsSettings::default(),
            name: "flotilla-worker".into(),
            amqp_tls: broker::BrokerTls::default(),
            keys: protocol::signing::Keyring::default(),
        }
    }
}

/// What every job handler may use.
pub(crate) struct Context<S: Store> {
    pub broker: Broker,
    /// Reports go out through here, bundled (see [`reporter`]).
    pub reports: reporter::Reporter,
    pub store: S,
    pub aws: Aws,
    pub metrics: WorkerMetrics,
    pub safety: SafetyState,
    /// Why jobs wait here, for `run show` (see [`waits`]).
    pub waits: waits::WaitNotes,
}

/// What to do with a delivery once its job was handled.
#[derive(Debug)]
pub enum JobOutcome {
    /// Finished; everything it produced is published.
    Done,
    /// Waiting is the work (a command still runs): the next poll is published
    /// through a delay queue and this delivery is done — or, for an Execute
    /// job's first poll, done in place by the worker holding the delivery
    /// (`consumer::poll_in_place`).
    Continue {
        next: Box<protocol::Job>,
        delay: Duration,
    },
    /// Not allowed to proceed now (paused, kill switch, Redis unreadable, no
    /// rate tokens): the same job comes back after `delay`, without spending a retry.
    Wait {
        delay: Duration,
        reason: &'static str,
    },
}

/// Why a job could not be handled. Retryable errors bring the job back after a
/// backoff until its retries run out; the rest send it to the dead-letter queue.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error(transparent)]
    Aws(#[from] AwsError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Broker(#[from] BrokerError),
    #[error("{0}")]
    Invalid(String),
    /// Delivered this many times before without being settled: the workers
    /// that held it died or lost their connection (or it kills them).
    #[error(
        "the broker returned this job {0} times unsettled (workers died or lost their connection holding it)"
    )]
    Returned(u32),
}

impl JobError {
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Returned(_) => true,
            Self::Aws(error) => error.kind.is_retryable(),
            Self::Store(error) => error.is_retryable(),
            Self::Broker(error) => error.is_retryable(),
            Self::Invalid(_) => false,
        }
    }
}

/// Milliseconds since the Unix epoch, now.
pub(crate) fn now_ms() -> u64 {
    protocol::job::UnixMillis::now().0
}

impl<S: Store> Context<S> {
    /// May this run send now? Fails closed: an unreadable Redis means wait.
    pub(crate) async fn gate(&self, run: &protocol::job::RunContext) -> store::SendGate {
        if let Some(cause) = self.safety.blocked() {
            return store::SendGate::Shut(cause);
        }
        self.store
            .send_gate(&run.campaign, run.run_id)
            .await
            .unwrap_or_else(|error| {
                store::SendGate::Shut(store::GateCause::StoreUnreachable(error.to_string()))
            })
    }

    /// An SSM client for the job's location; `None` when no AssumeRole token
    /// came in time (the job waits and comes back).
    pub(crate) async fn ssm(
        &self,
        run: &protocol::job::RunContext,
        location: &protocol::job::Location,
    ) -> Result<Option<aws_sdk_ssm::Client>, JobError> {
        if let Some(client) = self.aws.cached_ssm(run, location) {
            return Ok(Some(client));
        }
        let granted = rate::take_token(
            &self.store,
            &location.account_id,
            rate::GLOBAL_REGION,
            "AssumeRole",
            run.api_rate_limits.assume_role,
        )
        .await?;
        if !granted {
            return Ok(None);
        }
        Ok(Some(self.aws.assume_role(run, location).await?))
    }

    pub(crate) async fn take_token(
        &self,
        location: &protocol::job::Location,
        api: &str,
        rate_per_second: f64,
    ) -> Result<bool, JobError> {
        rate::take_token(
            &self.store,
            &location.account_id,
            &location.region,
            api,
            rate_per_second,
        )
        .await
    }

    pub(crate) fn no_tokens(&self) -> JobOutcome {
        JobOutcome::Wait {
            delay: Duration::from_secs(1),
            reason: "rate_limited",
        }
    }
}

//! flotilla's scheduler, the run engine: turns a campaign into a run, the run
//! into jobs, and the workers' reports into results, counters and decisions
//! (admit more, halt, complete). **Every decision about a run is made here,
//! once, given the acting principal** — whether it may start
//! ([`start_gate`]), be steered or advance ([`steering`]) — whichever door
//! asked (the HTTP API, the console, a schedule, an event). All of a run's
//! state is in Redis, so a restarted scheduler — or another replica —
//! continues every run where it was.
//!
//! The run engine:
//! - [`start_gate`]: whether a run may start, for every door — `run_by`,
//!   approval, freezes, one live run per campaign, size — failing closed.
//! - [`steering`]: pause, resume, cancel, wave approval and the kill switch,
//!   by a principal allowed to (and the state changes themselves).
//! - [`runs`]: creating a run (accounts × regions → locations → Discover
//!   jobs) and publishing its jobs.
//! - [`plan`]: a run's plan — its campaign, targets, locations, job context.
//! - `progress`: [`RunProgress`] from the ledger's fields and counters.
//! - [`explain`]: what holds a run that is not moving (no worker, a kill
//!   switch, a freeze, a closed window), for every view of a run.
//! - [`reports`]: the reports consumer — applies each report once, writes
//!   results before acking, admits what may start next, finishes runs.
//! - [`ledger`]: the run's bookkeeping in Redis, one Lua script per update,
//!   and the index of live runs.
//! - [`scripts`]: those Lua scripts (`lua/*.lua`), written once: a real Redis
//!   and the in-memory one (`memory://<name>`) run the same files. **The error
//!   budget is checked there**: `apply_results.lua` halts a run whose failed
//!   targets pass `max_errors`, `location_failed.lua` one whose failed
//!   locations pass `location_max_errors`, in the same atomic update that
//!   counts them; a halted run admits nothing more.
//! - [`campaigns`]: the versioned campaign store.
//! - [`approvals`]: the two-person rule for campaigns that change hosts.
//! - [`calendar`]: change freezes, and the tick that pauses and resumes runs.
//! - [`windows`]: maintenance windows of a campaign's runs.
//! - [`rollout`]: waves, bakes and health gates between them.
//! - [`triggers`]: events and Alertmanager alerts that start or stop runs,
//!   and the once-a-second tick of independent duties.
//! - [`schedules`]: cron/rate schedules, fired exactly once per occurrence by
//!   the replica holding the leader lease.
//! - [`organizations`]: accounts of OUs through AWS Organizations.
//! - [`sink`]: durable, partitioned, compressed JSON-lines results.
//! - [`compliance`]: the fleet's patch compliance view from results.
//! - [`failures`]: failure causes, masked and grouped for the run page.
//! - [`egress`]: the hosts the scheduler may reach (gates, webhooks, OIDC).
//! - [`files`]: files holding secrets or results, the owner's only (0600/0700).
//! - [`notify`]: webhooks told about runs and the kill switch.
//! - [`audit`]: the append-only audit trail (Redis stream and durable files).
//! - [`metrics`]: the scheduler's Prometheus metrics.
//! - [`config`]: the settings of one scheduler process.
//!
//! - [`auth`]: identity — principals, roles, permissions, token records.
//! - [`tokens`]: API-made tokens in Redis (hashes only).
//! - [`sessions`]: console sessions as stored (by the cookie's hash).
//!
//! This crate knows no HTTP: the doors — access control, the JSON API and
//! the web console — are the `api` crate's, and call the functions above.
//!
//! The kill switch is not read here before sends: workers read it (and the
//! run's state) right before every SendCommand (`worker::Context::gate`). The
//! scheduler only writes it (`/kill`, alerts); jobs it admits meanwhile wait
//! at that gate.

pub mod approvals;
pub mod audit;
pub mod auth;
pub mod calendar;
pub mod campaigns;
pub mod compliance;
pub mod config;
pub mod egress;
pub mod explain;
pub mod failures;
pub mod files;
pub mod ledger;
pub mod metrics;
pub mod notify;
pub mod organizations;
pub mod plan;
mod progress;
pub mod reports;
pub mod rollout;
pub mod runs;
pub mod schedules;
pub mod scripts;
pub mod sessions;
pub mod sink;
pub mod start_gate;
pub mod steering;
pub mod tokens;
pub mod triggers;
pub mod windows;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use broker::{Broker, BrokerError};
use store::StoreError;
use uuid::Uuid;

pub use crate::config::SchedulerConfig;
use crate::ledger::Ledger;
use crate::plan::RunPlan;

pub use crate::runs::{RunProgress, StartOptions};

#[derive(Debug, thiserror::Error)]
pub enum SchedulerError {
    #[error(transparent)]
    Broker(#[from] BrokerError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("Redis command failed: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("writing or reading results failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("run {0} does not exist")]
    UnknownRun(Uuid),
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Results(#[from] crate::sink::SinkError),
    #[error("AWS Organizations: {message}")]
    Organizations { message: String, retryable: bool },
    #[error("lost the connection: {0}")]
    ConnectionLost(String),
    #[error("run state in Redis is not what flotilla wrote: {0}")]
    Corrupt(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NeedsApproval(String),
    /// A paused run whose campaign has an alert firing is not resumed
    /// without an override.
    #[error("{0}")]
    AlertFiring(String),
    /// A change freeze keeps a run that changes hosts from starting.
    #[error("{0}")]
    Frozen(String),
    #[error("campaign {name:?} has no version {version}")]
    UnknownCampaignVersion { name: String, version: u32 },
    #[error("campaign {0:?} is not stored; apply it with `flotilla campaign apply -f FILE`")]
    UnknownCampaign(String),
    /// The start gate's one-live-run rule: another run of the campaign is
    /// live and its targets may overlap.
    #[error("{0}")]
    AlreadyRunning(String),
    /// What would start reaches outside the campaign's selection (an
    /// event's account or region the campaign does not cover).
    #[error("{0}")]
    OutOfScope(String),
    /// A fault of the scheduler itself (randomness, metrics registration, a
    /// panicked task): the API answers 500 and logs the message, never
    /// showing it.
    #[error("internal error: {0}")]
    Internal(String),
    /// The run is not in a state that allows what was asked.
    #[error("{0}")]
    WrongState(String),
    /// Another start of the campaign held the start gate too long: nothing
    /// was decided; try again (a schedule tries on its next tick).
    #[error("{0}")]
    StartBusy(String),
    /// More in one request than one request may carry (events, alerts):
    /// nothing of it was acted on.
    #[error("{0}")]
    TooLarge(String),
}

impl SchedulerError {
    /// The service an outage is of, for logs and `flotilla_scheduler_connected`.
    pub fn service(&self) -> Option<&'static str> {
        match self {
            Self::Broker(_) | Self::ConnectionLost(_) => Some("rabbitmq"),
            Self::Store(_) | Self::Redis(_) => Some("redis"),
            _ => None,
        }
    }

    /// Outages pass; bad data does not.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Broker(error) => error.is_retryable(),
            Self::Store(error) => error.is_retryable(),
            Self::Redis(error) => store::redis_error_is_retryable(error),
            Self::Io(_) | Self::ConnectionLost(_) | Self::StartBusy(_) => true,
            Self::Results(error) => !error.permanent,
            Self::Organizations { retryable, .. } => *retryable,
            Self::Json(_)
            | Self::UnknownRun(_)
            | Self::Invalid(_)
            | Self::Corrupt(_)
            | Self::Forbidden(_)
            | Self::NeedsApproval(_)
            | Self::AlertFiring(_)
            | Self::Frozen(_)
            | Self::UnknownCampaignVersion { .. }
            | Self::UnknownCampaign(_)
            | Self::AlreadyRunning(_)
            | Self::OutOfScope(_)
            | Self::TooLarge(_)
            | Self::Internal(_)
            | Self::WrongState(_) => false,
        }
    }
}

/// A connected scheduler; cheap to clone.
#[derive(Clone)]
pub struct Scheduler {
    broker: Broker,
    ledger: Ledger,
    store: store::RedisStore,
    config: Arc<SchedulerConfig>,
    /// Campaigns of runs seen, rebuilt from the spec stored with the run.
    plans: Arc<Mutex<HashMap<Uuid, Arc<RunPlan>>>>,
    /// Created on first use: only campaigns naming OUs need it.
    organizations: Arc<tokio::sync::OnceCell<crate::organizations::Organizations>>,
    pub(crate) metrics: crate::metrics::SchedulerMetrics,
    /// Refused reports audited one by one (the rest counted).
    report_refusals: Arc<crate::audit::RefusalBudget>,
    /// Since when job queues have held jobs no worker consumes.
    unconsumed_since: crate::explain::UnconsumedSince,
    /// Wakes this replica's notification delivery loop when it queues one.
    notifications_queued: Arc<tokio::sync::Notify>,
}

impl Scheduler {
    pub async fn connect(config: SchedulerConfig) -> Result<Self, SchedulerError> {
        let metrics = crate::metrics::SchedulerMetrics::new()
            .map_err(|error| SchedulerError::Internal(format!("metrics: {error}")))?;
        Self::connect_with_metrics(config, metrics).await
    }

    /// Connects, reporting into `metrics` (which outlive the connection)
    /// whether Redis and RabbitMQ answered.
    pub async fn connect_with_metrics(
        config: SchedulerConfig,
        metrics: crate::metrics::SchedulerMetrics,
    ) -> Result<Self, SchedulerError> {
        config
            .keys
            .require_signer(protocol::signing::SignerKind::Scheduler)
            .map_err(|error| SchedulerError::Invalid(error.0))?;
        let store = store::RedisStore::connect_with(
            &config.redis_url,
            config.names.clone(),
            &config.redis_tls,
        )
        .await;
        metrics.connection("redis", store.is_ok());
        let store = store?;
        // On the clock every service shares before anything reads the time:
        // the API's start gate and tokens, windows, freezes, schedules.
        store::clock::sync_at_start(&store).await;
        let broker = Broker::connect_with(
            &config.amqp_url,
            config.names.clone(),
            &config.name,
            &config.amqp_tls,
        )
        .await;
        metrics.connection("rabbitmq", broker.is_ok());
        let broker = broker?.with_keyring(config.keys.clone());
        if let Ok(Some(reason)) = store::Store::kill_reason(&store, "").await {
            tracing::warn!(
                reason,
                "the global kill switch is engaged: nothing is sent until it is released (a new deployment is armed with `flotilla admin arm`)"
            );
        }
        let ledger = Ledger::new(store.connection(), config.names.clone());
        Ok(Self {
            broker,
            ledger,
            store,
            config: Arc::new(config),
            plans: Arc::new(Mutex::new(HashMap::new())),
            organizations: Arc::new(tokio::sync::OnceCell::new()),
            metrics,
            report_refusals: Arc::default(),
            unconsumed_since: Default::default(),
            notifications_queued: Arc::default(),
        })
    }

    /// The campaign's accounts: its ids plus the accounts of its OUs.
    pub async fn resolve_accounts(
        &self,
        campaign: &protocol::Campaign,
    ) -> Result<Vec<String>, SchedulerError> {
        let mut accounts = campaign.accounts.ids.clone();
        if campaign.accounts.organizational_units.is_empty() {
            return Ok(accounts);
        }
        let organizations = self
            .organizations
            .get_or_init(|| crate::organizations::Organizations::new(&self.config.organizations))
            .await;
        for ou in &campaign.accounts.organizational_units {
            accounts.extend(
                organizations
                    .accounts_under(ou, campaign.accounts.include_child_ous)
                    .await?,
            );
        }
        Ok(accounts)
    }

    pub async fn resolve_locations(
        &self,
        campaign: &protocol::Campaign,
    ) -> Result<Vec<protocol::job::Location>, SchedulerError> {
        let accounts = self.resolve_accounts(campaign).await?;
        Ok(crate::runs::locations(campaign, &accounts))
    }

    pub fn ledger(&self) -> &Ledger {
        &self.ledger
    }

    pub fn store(&self) -> &store::RedisStore {
        &self.store
    }

    pub fn broker(&self) -> &Broker {
        &self.broker
    }

    /// The settings this scheduler runs with.
    pub fn config(&self) -> &SchedulerConfig {
        &self.config
    }

    /// The audit trail of this deployment.
    pub fn audit(&self) -> Result<crate::audit::AuditLog, SchedulerError> {
        let files = self
            .config
            .audit_output
            .as_ref()
            .map(|output| self.results_store(output))
            .transpose()?;
        Ok(crate::audit::AuditLog::new(
            self.ledger.connection(),
            self.broker.names().audit_stream_key(),
            files,
        ))
    }

    /// Writes the audit records appended since the last export to files
    /// (with `--audit-output`); how many.
    pub async fn export_audit(&self) -> Result<usize, SchedulerError> {
        let names = self.broker.names();
        self.audit()?
            .export(
                &names.audit_export_mark_key(),
                &names.audit_export_lease_key(),
                &self.config.name,
            )
            .await
    }

    /// Appends a record of the scheduler's own act (a schedule firing, an
    /// event or alert acting); a failure to record is logged, not fatal.
    /// [`arm_new_deployment`] of this scheduler's deployment.
    pub async fn arm_new_deployment(&self, by: &str) -> Result<store::Arming, SchedulerError> {
        arm_new_deployment(&self.store, self.audit()?, by).await
    }

    pub async fn audit_internal(
        &self,
        principal: String,
        action: &str,
        object: String,
        reason: String,
    ) {
        let record = crate::audit::AuditRecord::internal(principal, action, object, reason);
        let appended = match self.audit() {
            Ok(log) => log.append(&record).await,
            Err(error) => Err(error),
        };
        if let Err(error) = appended {
            tracing::error!(error = %error, action, "could not write an audit record");
        }
    }
}

/// Arms a new deployment (its global kill switch released) if it has no
/// marker and no run — the explicit act `flotilla admin arm` is — and audits
/// the attempt as done by `by`, whatever its outcome.
pub async fn arm_new_deployment(
    store: &store::RedisStore,
    audit: crate::audit::AuditLog,
    by: &str,
) -> Result<store::Arming, SchedulerError> {
    let arming = store::Store::arm_new_deployment(store).await?;
    let outcome = match arming {
        store::Arming::Armed => "armed: the global kill switch is released",
        store::Arming::AlreadyArmed => {
            "already armed: nothing changed (release an engaged switch with `flotilla kill release`)"
        }
        store::Arming::HasRuns => {
            "refused: the deployment has runs but no marker (deleted?); nothing changed"
        }
    };
    tracing::info!(by, outcome, "arming the deployment");
    let record = crate::audit::AuditRecord::internal(
        by.to_string(),
        "kill:arm",
        format!("deployment {}", store.names().prefix()),
        outcome.to_string(),
    );
    audit.append(&record).await?;
    Ok(arming)
}

/// Runs a scheduler until `shutdown`: connects, serves reports, and
/// connects again (with backoff) whenever RabbitMQ or Redis goes away. Fails
/// only on errors that waiting cannot fix. No HTTP: `api::run` serves the
/// API beside it.
pub async fn run(
    config: SchedulerConfig,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> Result<(), SchedulerError> {
    let metrics = crate::metrics::SchedulerMetrics::new()
        .map_err(|error| SchedulerError::Internal(format!("metrics: {error}")))?;
    let (current, _) = tokio::sync::watch::channel(None::<Scheduler>);
    run_with(config, metrics, current, shutdown).await
}

/// [`run`], reporting into `metrics` and telling `current` the connected
/// scheduler (`None` while it reconnects) — how the HTTP doors reach it.
pub async fn run_with(
    config: SchedulerConfig,
    metrics: crate::metrics::SchedulerMetrics,
    current: tokio::sync::watch::Sender<Option<Scheduler>>,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> Result<(), SchedulerError> {
    let stop = tokio_util::sync::CancellationToken::new();
    let stopper = stop.clone();
    let watch = async move {
        shutdown.await;
        stopper.cancel();
    };
    let work = async {
        let mut reconnects = protocol::backoff::Reconnects::default();
        loop {
            let mut connected_at = None;
            let outcome = match Scheduler::connect_with_metrics(config.clone(), metrics.clone())
                .await
            {
                Ok(scheduler) => {
                    connected_at = Some(tokio::time::Instant::now());
                    current.send_replace(Some(scheduler.clone()));
                    // Boxed: the serving future is deep, and callers nest it further.
                    let served = Box::pin(scheduler.serve(stop.clone().cancelled_owned())).await;
                    current.send_replace(None);
                    served
                }
                Err(error) => Err(error),
            };
            match outcome {
                Ok(()) => return Ok(()),
                Err(error) if error.is_retryable() => {
                    // Start over only after a lasting connection (the worker's rule).
                    let delay = reconnects.next_delay(connected_at.map(|at| at.elapsed()));
                    let service = error.service();
                    if let Some(service) = service {
                        metrics.connection(service, false);
                    }
                    tracing::warn!(
                        service = service.unwrap_or("unknown"),
                        error = %error,
                        ?delay,
                        "scheduler cannot reach a service; reconnecting"
                    );
                    tokio::select! {
                        () = stop.cancelled() => return Ok(()),
                        () = tokio::time::sleep(delay) => {}
                    }
                }
                Err(error) => return Err(error),
            }
        }
    };
    // Notifications are delivered by the latest connected scheduler — and,
    // while it reconnects (RabbitMQ away, say), by the one before: delivery
    // needs Redis only, and a kill switch's notice matters most in an outage.
    let delivering = async {
        let mut connected = current.subscribe();
        let mut latest: Option<Scheduler> = None;
        while !stop.is_cancelled() {
            if let Some(scheduler) = connected.borrow_and_update().clone() {
                latest = Some(scheduler);
            }
            let changed = match &latest {
                Some(scheduler) => tokio::select! {
                    () = scheduler.deliver_notifications(&stop) => break,
                    changed = connected.changed() => changed,
                },
                None => connected.changed().await,
            };
            if changed.is_err() {
                break;
            }
        }
        stop.cancelled().await;
    };
    let result = tokio::select! {
        result = work => result,
        () = watch => Ok(()),
        () = delivering => Ok(()),
    };
    stop.cancel();
    result
}

/// TLS for every ureq client flotilla makes: rustls with the process's
/// provider, aws-lc-rs (ureq's own default, ring, is not built; see
/// [`store::install_tls_provider`]). Without it an `https://` request
/// would find no provider.
pub fn ureq_tls() -> ureq::tls::TlsConfigBuilder {
    store::install_tls_provider();
    ureq::tls::TlsConfig::builder().provider(ureq::tls::TlsProvider::Rustls)
}

/// The HTTP client of the requests the scheduler makes on a campaign's
/// behalf (rollout gates, notification webhooks): blocking (run it on
/// tokio's blocking threads), `timeout` for the whole exchange, non-2xx
/// answers read as answers (reported by status), redirects never followed.
pub(crate) fn outbound_http(timeout: std::time::Duration) -> ureq::Agent {
    ureq::Agent::config_builder()
        .tls_config(ureq_tls().build())
        .http_status_as_error(false)
        .timeout_global(Some(timeout))
        // A redirect could lead past the egress policy: it is an answer.
        .max_redirects(0)
        .build()
        .into()
}

/// For a loop over many runs or campaigns: an outage (Redis or RabbitMQ
/// away) stops the loop; any other error of one item is logged and the loop
/// goes on, so one bad record never stops the work of the others.
pub(crate) fn outage_or_log(error: SchedulerError, item: &str) -> Result<(), SchedulerError> {
    if error.service().is_some() && error.is_retryable() {
        return Err(error);
    }
    tracing::error!(item, error = %error, "skipped; the others go on");
    Ok(())
}

/// Milliseconds since the Unix epoch, now.
pub(crate) fn now_ms() -> u64 {
    protocol::job::UnixMillis::now().0
}

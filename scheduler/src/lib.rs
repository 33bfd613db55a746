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
//!   by a principal allowed to.
//! - [`runs`]: creating a run (accounts × regions → locations → Discover
//!   jobs), the run's plan, pausing, resuming, cancelling.
//! - `progress`: [`RunProgress`] from the ledger's fields and counters.
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
//! - [`notify`]: webhooks told about runs and the kill switch.
//! - [`audit`]: the append-only audit trail (Redis stream and durable files).
//! - [`metrics`]: the scheduler's Prometheus metrics.
//!
//! Identity and the doors (to move into the HTTP crate, see ARCHITECTURE.md):
//! - [`auth`]: principals, roles, the permission each route needs, tokens.
//! - [`tokens`]: API-made tokens in Redis (hashes only).
//! - [`oidc`]: JWT bearer tokens of an OIDC issuer (RS256/ES256, its JWKS).
//! - [`tls`]: HTTPS for the API, and client certificates as principals (mTLS).
//! - [`access`]: the API's one door: authenticate, authorize, audit.
//! - [`api`]: the HTTP API (axum, JSON) the CLI talks to; parses, asks the
//!   engine, answers.
//! - [`console`]: the web console (HTML by maud), a second door on the same
//!   engine functions.
//!
//! The kill switch is not read here before sends: workers read it (and the
//! run's state) right before every SendCommand (`worker::Context::gate`). The
//! scheduler only writes it (`/kill`, alerts); jobs it admits meanwhile wait
//! at that gate.

pub mod access;
pub mod api;
pub mod approvals;
pub mod audit;
pub mod auth;
pub mod calendar;
pub mod campaigns;
pub mod compliance;
pub mod console;
pub mod failures;
pub mod ledger;
pub mod metrics;
pub mod notify;
pub mod oidc;
pub mod organizations;
mod progress;
pub mod reports;
pub mod rollout;
pub mod runs;
pub mod schedules;
pub mod scripts;
pub mod sink;
pub mod start_gate;
pub mod steering;
pub mod tls;
pub mod tokens;
pub mod triggers;
pub mod windows;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use broker::{Broker, BrokerError};
use protocol::names::Names;
use store::StoreError;
use uuid::Uuid;

use crate::ledger::Ledger;
use crate::runs::RunPlan;

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
            Self::Io(_) | Self::ConnectionLost(_) => true,
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
            | Self::Internal(_)
            | Self::WrongState(_) => false,
        }
    }
}

/// Settings of one scheduler process. `Debug` redacts the passwords of the
/// URLs and the S3 secret.
#[derive(Clone)]
pub struct SchedulerConfig {
    pub amqp_url: String,
    pub redis_url: String,
    pub names: Names,
    /// Where S3 is, for campaigns whose `output` is `s3://…`.
    pub s3: crate::sink::S3Settings,
    /// Reports received ahead of handling; raising it smooths bursts and costs
    /// redelivery work when the scheduler dies.
    pub report_prefetch: u16,
    pub name: String,
    /// For campaigns that name organizational units.
    pub organizations: crate::organizations::OrganizationsSettings,
    /// How long the schedule leader lease lasts without renewal: how long a
    /// dead leader's schedules wait for another replica. Renewed every second.
    pub lease_ttl: std::time::Duration,
    pub clock: crate::schedules::SchedulerClock,
    /// How the API authenticates; open (everyone is `anonymous`) unless a
    /// tokens file is set.
    pub auth: crate::auth::AuthSettings,
    /// Where audit files go besides the Redis stream (a directory or
    /// `s3://bucket/prefix`); `None` keeps only the stream.
    pub audit_output: Option<protocol::campaign::OutputLocation>,
    /// Documents that only read (`AWS-RunPatchBaseline` with `Operation:
    /// Scan` by default); campaigns with any other step need a second
    /// principal's approval before they run.
    pub read_only_documents: Vec<crate::approvals::ReadOnlyDocument>,
    /// A CA for `rediss://` Redis URLs.
    pub redis_tls: store::RedisTls,
    /// A CA for `amqps://` broker URLs.
    pub amqp_tls: broker::BrokerTls,
    /// HTTPS for the API (and client certificates, with a client CA).
    pub api_tls: Option<crate::tls::ApiTls>,
    /// The scheduler's signing key (for jobs) and the keys it trusts
    /// (workers', for reports). The default signs nothing: connect refuses it.
    pub keys: protocol::signing::Keyring,
    /// The most account-region pairs one run may have.
    pub max_locations: u64,
    /// How many of a run's locations are being discovered at once
    /// (`runs::DISCOVERY_WINDOW` by default; at least 1).
    pub discovery_window: std::num::NonZeroUsize,
    /// The largest API request body read; larger ones are refused (413)
    /// before they are parsed.
    pub max_request_bytes: usize,
    /// Webhooks told about every campaign's runs and the kill switch.
    pub notify: crate::notify::NotifySettings,
}

impl std::fmt::Debug for SchedulerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SchedulerConfig")
            .field("amqp_url", &protocol::redact_password(&self.amqp_url))
            .field("redis_url", &protocol::redact_password(&self.redis_url))
            .field("names", &self.names)
            .field("s3", &self.s3)
            .field("report_prefetch", &self.report_prefetch)
            .field("name", &self.name)
            .field("organizations", &self.organizations)
            .field("lease_ttl", &self.lease_ttl)
            .field("auth", &self.auth)
            .field("audit_output", &self.audit_output)
            .field("read_only_documents", &self.read_only_documents)
            .field("redis_tls", &self.redis_tls)
            .field("amqp_tls", &self.amqp_tls)
            .field("api_tls", &self.api_tls.is_some())
            .field("keys", &self.keys.trusted_ids())
            .field("notify", &self.notify)
            .finish_non_exhaustive()
    }
}

impl SchedulerConfig {
    pub fn new(amqp_url: impl Into<String>, redis_url: impl Into<String>, names: Names) -> Self {
        Self {
            amqp_url: amqp_url.into(),
            redis_url: redis_url.into(),
            names,
            s3: Default::default(),
            report_prefetch: 64,
            name: "flotilla-scheduler".into(),
            organizations: Default::default(),
            lease_ttl: std::time::Duration::from_secs(10),
            clock: crate::schedules::SchedulerClock::system(),
            auth: crate::auth::AuthSettings::default(),
            audit_output: None,
            read_only_documents: crate::approvals::default_read_only_documents(),
            redis_tls: store::RedisTls::default(),
            amqp_tls: broker::BrokerTls::default(),
            api_tls: None,
            keys: protocol::signing::Keyring::default(),
            max_locations: protocol::campaign::DEFAULT_MAX_LOCATIONS,
            discovery_window: crate::runs::DISCOVERY_WINDOW,
            max_request_bytes: crate::access::MAX_REQUEST_BYTES,
            notify: crate::notify::NotifySettings::default(),
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
        let broker = Broker::connect_with(
            &config.amqp_url,
            config.names.clone(),
            &config.name,
            &config.amqp_tls,
        )
        .await;
        metrics.connection("rabbitmq", broker.is_ok());
        let broker = broker?.with_keyring(config.keys.clone());
        if store::Store::init_kill_switch(&store).await? {
            tracing::info!(
                "first start of this deployment: the global kill switch is armed (released)"
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

    /// Appends a record of the scheduler's own act (a schedule firing, an
    /// event or alert acting); a failure to record is logged, not fatal.
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

/// Runs a scheduler until `shutdown`: connects, serves reports (and the HTTP
/// API on `listener`, if given), and connects again (with backoff) whenever
/// RabbitMQ or Redis goes away; the API answers 503 meanwhile. Fails only on
/// errors that waiting cannot fix.
pub async fn run(
    config: SchedulerConfig,
    listener: Option<tokio::net::TcpListener>,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> Result<(), SchedulerError> {
    let stop = tokio_util::sync::CancellationToken::new();
    let stopper = stop.clone();
    let watch = async move {
        shutdown.await;
        stopper.cancel();
    };
    let (current, current_receiver) = tokio::sync::watch::channel(None::<Scheduler>);
    let metrics = crate::metrics::SchedulerMetrics::new()
        .map_err(|error| SchedulerError::Internal(format!("metrics: {error}")))?;
    metrics.set_insecure(config.auth.is_open());
    let api = listener.map(|listener| {
        let stop = stop.clone();
        let state = api::ApiState {
            current: current_receiver,
            metrics: metrics.clone(),
            auth: config.auth.clone(),
            tls: config.api_tls.clone(),
            refusals: std::sync::Arc::default(),
            max_request_bytes: config.max_request_bytes,
        };
        tokio::spawn(async move {
            if let Err(error) = api::serve(listener, state, stop.cancelled_owned()).await {
                tracing::error!(error = %error, "the HTTP API stopped");
            }
        })
    });
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
                    // The worker's rule: start over only after a lasting connection.
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
    let result = tokio::select! {
        result = work => result,
        () = watch => Ok(()),
    };
    stop.cancel();
    if let Some(api) = api {
        let _ = api.await;
    }
    result
}

/// The HTTP client of the requests the scheduler makes on a campaign's
/// behalf (rollout gates, notification webhooks): blocking (run it on
/// tokio's blocking threads), `timeout` for the whole exchange, and non-2xx
/// answers read as answers, so their body can be shown.
pub(crate) fn outbound_http(timeout: std::time::Duration) -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(timeout))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_config_shown_for_debugging_shows_no_secret() {
        let mut config = SchedulerConfig::new(
            "amqp://flotilla:amqp-secret@rabbitmq:5672/%2f",
            "redis://:redis-secret@redis:6379/",
            Names::default(),
        );
        config.s3.credentials = Some(("AKIAEXAMPLE".into(), "s3-secret".into()));
        let shown = format!("{config:?}");
        for secret in ["amqp-secret", "redis-secret", "s3-secret"] {
            assert!(!shown.contains(secret), "{secret} in {shown}");
        }
        assert!(shown.contains("AKIAEXAMPLE") && shown.contains("rabbitmq:5672"));
    }
}

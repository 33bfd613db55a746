//! Talking to AWS: one shared SDK configuration (one HTTP client and connection
//! pool), role credentials cached per (account, role) and refreshed before they
//! expire, an SSM client built from them for each job (cheap: the HTTP client
//! and its pool are shared), and every AWS error classified once, in
//! [`classify`].
//!
//! Credentials live only in this module's memory: they are never logged, put in
//! messages or used as metric labels.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use aws_config::BehaviorVersion;
use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_sdk_ssm::config::http::HttpResponse;
use aws_sdk_ssm::config::{Credentials, IdentityCache, Region};
use aws_sdk_ssm::error::{ProvideErrorMetadata, SdkError};
use aws_smithy_http_client::tls;
use aws_smithy_runtime_api::client::connector_metadata::ConnectorMetadata;
use aws_smithy_runtime_api::client::http::{
    HttpClient, HttpConnectorSettings, SharedHttpClient, SharedHttpConnector,
};
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use protocol::backoff::Backoff;
use protocol::job::{Location, RunContext};

use crate::metrics::WorkerMetrics;

/// Where AWS is and who the worker is there.
#[derive(Debug, Clone, Default)]
pub struct AwsSettings {
    /// Send every call here instead of AWS (the simulator); `None` for real AWS.
    pub endpoint_url: Option<String>,
    /// The region STS is called in.
    pub home_region: Option<String>,
    /// Fixed credentials of the worker's own identity; `None` uses the default
    /// chain (environment, profile, container or instance role).
    pub credentials: Option<Credentials>,
    /// How long one HTTP attempt may take; `None` is [`ATTEMPT_TIMEOUT`].
    pub attempt_timeout: Option<Duration>,
}

/// How long one HTTP attempt may take by default. A SendCommand attempt that
/// timed out may still have created the command, which is why a send claim is
/// taken over only well after (see [`Aws::stale_claim_after`]).
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(20);

/// Attempts per call for throttling and transient errors (then the job is delayed).
const MAX_ATTEMPTS: u32 = 4;

/// How long the start-up check waits for the credentials chain (instance
/// metadata answers within a second where it exists).
const CREDENTIALS_CHECK: Duration = Duration::from_secs(20);

/// Refresh role credentials when less than this is left.
const REFRESH_MARGIN: Duration = Duration::from_secs(300);

/// Role sessions (credentials only) a worker keeps. Past the bound the
/// sessions expiring soonest go first (an evicted location assumes its role
/// again).
///
/// Sessions once kept their SSM clients too, about 100 KiB each with them:
/// `flotilla bench` saw 2.5 GiB per worker when a 20,000-location scan kept
/// them all, and still 165 MiB at 2,048 sessions. A session is now its
/// credentials (well under 2 KiB) and a job builds the SSM client it needs.
///
/// A `moka` cache with the same bound was tried and measured (scan-1m,
/// `flotilla bench`, twice each): worker peak RSS 517/524 and 514/508 MiB
/// with this map, 650/685 and 678/672 MiB with moka. It did not keep the
/// memory, so this map stays.
const MAX_ROLE_SESSIONS: usize = 2_048;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AwsErrorKind {
    /// Rate exceeded: retry later; never the target's fault.
    Throttled,
    /// The role cannot be assumed or lacks a permission.
    AccessDenied,
    /// The role session's credentials expired or are no longer recognized
    /// (clock skew, revoked session): assume the role again and repeat.
    ExpiredCredentials,
    /// Network trouble, timeouts, 5xx: may work if repeated.
    Transient,
    /// AWS refused the request as such (bad id, bad parameter): repeating will not help.
    Rejected,
}

impl AwsErrorKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Throttled => "throttled",
            Self::AccessDenied => "access_denied",
            Self::ExpiredCredentials => "expired_credentials",
            Self::Transient => "transient",
            Self::Rejected => "rejected",
        }
    }

    pub fn is_retryable(self) -> bool {
        matches!(
            self,
            Self::Throttled | Self::Transient | Self::ExpiredCredentials
        )
    }
}

#[derive(Debug, Clone, thiserror::Error)]
#[error("{operation} failed ({}): {code}: {message}", kind.as_str())]
pub struct AwsError {
    pub operation: &'static str,
    pub kind: AwsErrorKind,
    pub code: String,
    pub message: String,
}

/// The one place AWS errors get their meaning.
pub fn classify<E: ProvideErrorMetadata + std::error::Error + 'static>(
    operation: &'static str,
    error: &SdkError<E, HttpResponse>,
) -> AwsError {
    let code = error.code().unwrap_or_default().to_string();
    let message = error
        .message()
        .map(str::to_string)
        .unwrap_or_else(|| aws_sdk_ssm::error::DisplayErrorContext(error).to_string());
    let status = error
        .raw_response()
        .map(|response| response.status().as_u16());
    let kind = match error {
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) => AwsErrorKind::Transient,
        SdkError::ConstructionFailure(_) => AwsErrorKind::Rejected,
        _ => match code.as_str() {
            "ThrottlingException"
            | "Throttling"
            | "TooManyRequestsException"
            | "RequestLimitExceeded"
            | "TooManyUpdates" => AwsErrorKind::Throttled,
            "AccessDenied" | "AccessDeniedException" | "UnauthorizedOperation" => {
                AwsErrorKind::AccessDenied
            }
            "ExpiredToken"
            | "ExpiredTokenException"
            | "RequestExpired"
            | "UnrecognizedClientException"
            | "InvalidClientTokenId" => AwsErrorKind::ExpiredCredentials,
            _ if status.is_some_and(|status| status >= 500) => AwsErrorKind::Transient,
            "" if status.is_none() => AwsErrorKind::Transient,
            _ => AwsErrorKind::Rejected,
        },
    };
    AwsError {
        operation,
        kind,
        code,
        message,
    }
}

/// Which errors a call may repeat by itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Repeat {
    /// Reads: repeat on throttling and transient errors.
    ThrottledOrTransient,
    /// SendCommand: a throttled request was refused, so repeating is safe; a
    /// timed-out one may have created the command, so it is not repeated.
    ThrottledOnly,
}

/// Runs one AWS call with retries ([`Backoff::AWS`]), metrics and
/// classification.
pub async fn call<T, E, F, Fut>(
    metrics: &WorkerMetrics,
    operation: &'static str,
    repeat: Repeat,
    mut attempt: F,
) -> Result<T, AwsError>
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, SdkError<E, HttpResponse>>>,
{
    let mut tries = 0;
    loop {
        tries += 1;
        let started = Instant::now();
        let error = match attempt().await {
            Ok(value) => {
                metrics.aws_call(operation, "ok", started.elapsed());
                return Ok(value);
            }
            Err(error) => classify(operation, &error),
        };
        metrics.aws_call(operation, error.kind.as_str(), started.elapsed());
        let may_repeat = matches!(
            (repeat, error.kind),
            (_, AwsErrorKind::Throttled) | (Repeat::ThrottledOrTransient, AwsErrorKind::Transient)
        );
        if !may_repeat || tries >= MAX_ATTEMPTS {
            return Err(error);
        }
        let delay = Backoff::AWS.delay(tries - 1);
        tracing::debug!(
            operation,
            attempt = tries,
            ?delay,
            kind = error.kind.as_str(),
            "aws call retried"
        );
        tokio::time::sleep(delay).await;
    }
}

/// The worker's one HTTPS client, as SDK clients see it: its connectors
/// (one per timeout setting, cached inside) serve every SDK client. The SDK
/// asks an HTTP client to validate itself whenever an SDK client is built,
/// and the hyper client does so by building a whole TLS connector — parsing
/// every root certificate — only to drop it: once per job, as a job builds
/// its SSM client. This wrapper answers that check as already done; the
/// connector is built, once, by the first request.
#[derive(Debug)]
struct BuiltOnce(SharedHttpClient);

impl HttpClient for BuiltOnce {
    fn http_connector(
        &self,
        settings: &HttpConnectorSettings,
        components: &RuntimeComponents,
    ) -> SharedHttpConnector {
        self.0.http_connector(settings, components)
    }

    fn connector_metadata(&self) -> Option<ConnectorMetadata> {
        self.0.connector_metadata()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct RoleKey {
    account_id: String,
    role: String,
    external_id: Option<String>,
}

struct RoleSession {
    credentials: Credentials,
    expires: SystemTime,
}

/// Shared by every job a worker handles; cheap to clone.
#[derive(Clone)]
pub struct Aws {
    base: aws_config::SdkConfig,
    sts: aws_sdk_sts::Client,
    sessions: Arc<Mutex<HashMap<RoleKey, RoleSession>>>,
    metrics: WorkerMetrics,
    attempt_timeout: Duration,
}

impl Aws {
    pub async fn new(settings: &AwsSettings, metrics: WorkerMetrics) -> Self {
        // The SDK's own retries are off: `call` retries, so throttles are counted
        // and a SendCommand is never repeated after a timeout.
        let attempt_timeout = settings.attempt_timeout.unwrap_or(ATTEMPT_TIMEOUT);
        // One HTTPS client for every SDK client of this worker. Without it the
        // SDK builds one per client — per role session and region — each with
        // the system's root certificates parsed anew into a TLS configuration
        // of its own and a connection pool of its own: most of a worker's
        // memory and much of its CPU on a scan of many accounts.
        let http = SharedHttpClient::new(BuiltOnce(
            aws_smithy_http_client::Builder::new()
                .tls_provider(tls::Provider::Rustls(
                    tls::rustls_provider::CryptoMode::AwsLc,
                ))
                .build_https(),
        ));
        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            .http_client(http)
            .retry_config(RetryConfig::disabled())
            .timeout_config(
                TimeoutConfig::builder()
                    .operation_attempt_timeout(attempt_timeout)
                    .connect_timeout(Duration::from_secs(5))
                    .build(),
            );
        if let Some(endpoint_url) = &settings.endpoint_url {
            loader = loader.endpoint_url(endpoint_url);
        }
        if let Some(region) = &settings.home_region {
            loader = loader.region(Region::new(region.clone()));
        } else {
            loader = loader.region(
                aws_config::meta::region::RegionProviderChain::default_provider()
                    .or_else(Region::from_static("us-east-1")),
            );
        }
        if let Some(credentials) = &settings.credentials {
            loader = loader.credentials_provider(credentials.clone());
        }
        let base = loader.load().await;
        let sts = aws_sdk_sts::Client::new(&base);
        Self {
            base,
            sts,
            sessions: Arc::new(Mutex::new(HashMap::new())),
            metrics,
            attempt_timeout,
        }
    }

    /// The worker's own AWS identity (from `--aws-*` settings, the
    /// environment, a profile, or instance metadata) resolves: checked once at
    /// start, so a worker without credentials exits saying so instead of
    /// retrying every job as if AWS were down. With an endpoint URL (the
    /// simulator) too: it needs the same credentials chain.
    pub async fn check_credentials(&self) -> Result<(), String> {
        use aws_sdk_sts::config::ProvideCredentials as _;
        let Some(provider) = self.base.credentials_provider() else {
            return Err("no AWS credentials provider is configured".into());
        };
        match tokio::time::timeout(CREDENTIALS_CHECK, provider.provide_credentials()).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(error)) => Err(format!(
                "no AWS credentials for the worker's own identity: {}",
                aws_sdk_sts::error::DisplayErrorContext(&error)
            )),
            Err(_) => Err(format!(
                "the worker's AWS credentials did not resolve within {} s",
                CREDENTIALS_CHECK.as_secs()
            )),
        }
    }

    /// A send claim older than this whose holder recorded no command belongs to
    /// a dead worker: well past the longest a SendCommand attempt can take.
    pub fn stale_claim_after(&self) -> Duration {
        self.attempt_timeout * 3
    }

    fn sessions(&self) -> std::sync::MutexGuard<'_, HashMap<RoleKey, RoleSession>> {
        // Each update is a single insert or lookup, so a poisoned map is still whole.
        self.sessions
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn role_key(run: &RunContext, location: &Location) -> RoleKey {
        RoleKey {
            account_id: location.account_id.clone(),
            role: run.role.name.clone(),
            external_id: run.role.external_id.clone(),
        }
    }

    /// An SSM client for the location if the role's credentials are cached and fresh.
    pub fn cached_ssm(&self, run: &RunContext, location: &Location) -> Option<aws_sdk_ssm::Client> {
        let credentials = {
            let sessions = self.sessions();
            let session = sessions.get(&Self::role_key(run, location))?;
            let fresh = session
                .expires
                .duration_since(SystemTime::now())
                .is_ok_and(|left| left > REFRESH_MARGIN);
            if !fresh {
                return None;
            }
            session.credentials.clone()
        };
        Some(self.ssm_client(credentials, &location.region))
    }

    /// A client of its own for one job: it shares the worker's HTTP client
    /// and connection pool through `base`, so building it costs no
    /// connection. No identity cache: the credentials are fixed, and the
    /// SDK's shared cache would keep a partition for every client's
    /// credentials for the life of the process.
    fn ssm_client(&self, credentials: Credentials, region: &str) -> aws_sdk_ssm::Client {
        let config = aws_sdk_ssm::config::Builder::from(&self.base)
            .identity_cache(IdentityCache::no_cache())
            .credentials_provider(credentials)
            .region(Region::new(region.to_string()))
            .build();
        aws_sdk_ssm::Client::from_conf(config)
    }

    /// Drops the cached session of the run's role in the location's account, so
    /// the next call assumes the role again.
    pub fn forget_session(&self, run: &RunContext, location: &Location) {
        self.sessions().remove(&Self::role_key(run, location));
    }

    /// Assumes the run's role in the location's account and caches the session.
    /// The caller takes the AssumeRole rate tokens first.
    pub async fn assume_role(
        &self,
        run: &RunContext,
        location: &Location,
    ) -> Result<aws_sdk_ssm::Client, AwsError> {
        let session_name = role_session_name(run);
        let duration = i32::try_from(run.role.session_duration.as_secs()).unwrap_or(3600);
        let output = call(
            &self.metrics,
            "AssumeRole",
            Repeat::ThrottledOrTransient,
            || {
                self.sts
                    .assume_role()
                    .role_arn(run.role.arn(&location.account_id))
                    .role_session_name(&session_name)
                    .set_external_id(run.role.external_id.clone())
                    .duration_seconds(duration)
                    .send()
            },
        )
        .await;
        let output = match output {
            Ok(output) => output,
            Err(error) => {
                self.metrics.role_assumed(error.kind.as_str());
                return Err(error);
            }
        };
        let Some(sts_credentials) = output.credentials() else {
            self.metrics.role_assumed("rejected");
            return Err(AwsError {
                operation: "AssumeRole",
                kind: AwsErrorKind::Transient,
                code: "NoCredentials".into(),
                message: "AssumeRole answered without credentials".into(),
            });
        };
        self.metrics.role_assumed("ok");
        let expires = SystemTime::try_from(*sts_credentials.expiration())
            .unwrap_or_else(|_| SystemTime::now() + REFRESH_MARGIN * 2);
        let credentials = Credentials::new(
            sts_credentials.access_key_id(),
            sts_credentials.secret_access_key(),
            Some(sts_credentials.session_token().to_string()),
            Some(expires),
            "flotilla-assume-role",
        );
        let client = self.ssm_client(credentials.clone(), &location.region);
        let session = RoleSession {
            credentials,
            expires,
        };
        let mut sessions = self.sessions();
        if sessions.len() >= MAX_ROLE_SESSIONS {
            evict_sessions(&mut sessions);
        }
        sessions.insert(Self::role_key(run, location), session);
        Ok(client)
    }
}

/// Makes room: drops expired sessions, then, if still a quarter short of the
/// bound, those expiring soonest.
fn evict_sessions(sessions: &mut HashMap<RoleKey, RoleSession>) {
    let now = SystemTime::now();
    sessions.retain(|_, session| session.expires > now);
    let target = MAX_ROLE_SESSIONS - MAX_ROLE_SESSIONS / 4;
    if sessions.len() <= target {
        return;
    }
    let mut expiries: Vec<SystemTime> = sessions.values().map(|session| session.expires).collect();
    expiries.sort_unstable();
    let cutoff = expiries[sessions.len() - target - 1];
    sessions.retain(|_, session| session.expires > cutoff);
}

/// `flotilla-<campaign>-<run id prefix>`: names the run in CloudTrail, within
/// STS's 64 characters of `[\w+=,.@-]`.
pub fn role_session_name(run: &RunContext) -> String {
    let campaign: String = run
        .campaign
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "+=,.@-_".contains(c) {
                c
            } else {
                '-'
            }
        })
        .take(36)
        .collect();
    let run_id = run.run_id.simple().to_string();
    format!("flotilla-{campaign}-{}", &run_id[..18])
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::campaign::{ApiRateLimits, ExecutionRole};
    use protocol::job::Priority;

    fn session(expires: SystemTime) -> RoleSession {
        RoleSession {
            credentials: Credentials::new("AKIA", "secret", None, None, "test"),
            expires,
        }
    }

    #[test]
    fn a_full_session_cache_drops_the_expired_then_the_soonest_expiring() {
        let now = SystemTime::now();
        let mut sessions = HashMap::new();
        for index in 0..MAX_ROLE_SESSIONS {
            let expires = if index < 10 {
                now - Duration::from_secs(1)
            } else {
                now + Duration::from_secs(index as u64)
            };
            let key = RoleKey {
                account_id: format!("{index:012}"),
                role: "FlotillaExecutionRole".into(),
                external_id: None,
            };
            sessions.insert(key, session(expires));
        }
        evict_sessions(&mut sessions);
        let target = MAX_ROLE_SESSIONS - MAX_ROLE_SESSIONS / 4;
        assert_eq!(sessions.len(), target, "room for a quarter of the bound");
        assert!(sessions.values().all(|session| session.expires > now));
        let latest = format!("{:012}", MAX_ROLE_SESSIONS - 1);
        assert!(
            sessions.keys().any(|key| key.account_id == latest),
            "the session expiring last stays"
        );
    }

    #[test]
    fn session_names_name_the_run_within_stss_rules() {
        let run = RunContext {
            run_id: uuid::Uuid::new_v4(),
            campaign: "patch install / tuesday with a very long name indeed, really".into(),
            campaign_version: 1,
            role: ExecutionRole {
                name: "R".into(),
                external_id: None,
                session_duration: Duration::from_secs(3600),
            },
            api_rate_limits: ApiRateLimits::default(),
            priority: Priority::Bulk,
            output_logging: None,
        };
        let name = role_session_name(&run);
        assert!(name.len() <= 64, "{name}");
        assert!(name.contains(&run.run_id.simple().to_string()[..18]));
        assert!(
            name.chars()
                .all(|c| c.is_ascii_alphanumeric() || "+=,.@-_".contains(c)),
            "{name}"
        );
    }
}

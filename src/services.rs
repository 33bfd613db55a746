//! The long-running subcommands, `flotilla worker` and `flotilla scheduler`,
//! which talk to RabbitMQ and Redis. Every setting is a
//! flag with an environment variable, so containers need no arguments.

use std::net::SocketAddr;
use std::num::NonZeroU16;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use protocol::names::Names;
use scheduler::SchedulerConfig;

/// Where the queues and the shared state are.
#[derive(Debug, Clone, Args)]
pub struct ConnectionArgs {
    /// RabbitMQ URL (credentials in it are never logged). Connections ask
    /// for a 10 s AMQP heartbeat unless it sets `?heartbeat=N`.
    #[arg(
        long,
        env = "FLOTILLA_AMQP_URL",
        hide_env_values = true,
        default_value = DEFAULT_AMQP_URL
    )]
    pub amqp_url: String,
    /// Redis URL (a password in it is never logged or shown by --help).
    #[arg(
        long,
        env = "FLOTILLA_REDIS_URL",
        hide_env_values = true,
        default_value = "redis://127.0.0.1:6379/"
    )]
    pub redis_url: String,
    /// The CA (PEM) that signed Redis' certificate, for a `rediss://` URL
    /// whose server the system's roots do not vouch for.
    #[arg(long, env = "FLOTILLA_REDIS_CA_FILE")]
    pub redis_ca_file: Option<PathBuf>,
    /// The CA (PEM) that signed RabbitMQ's certificate, for an `amqps://`
    /// URL whose server the system's roots do not vouch for.
    #[arg(long, env = "FLOTILLA_AMQP_CA_FILE")]
    pub amqp_ca_file: Option<PathBuf>,
    /// Prefix of every queue and key: deployments sharing a broker and Redis
    /// must use different ones.
    #[arg(long, env = "FLOTILLA_PREFIX", default_value = "flotilla")]
    pub prefix: String,
}

/// The RabbitMQ URL used when none is given (the local broker's guest).
pub(crate) const DEFAULT_AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

impl ConnectionArgs {
    /// [`warn_of_passwords_in_flags`] for these URLs.
    pub fn warn_of_passwords_in_flags(&self) {
        warn_of_passwords_in_flags(&self.amqp_url, &self.redis_url);
    }
}

/// Warns of a password given on the command line in `--amqp-url` or
/// `--redis-url`: every user of the host sees it in `ps` and `/proc`. The
/// environment (or a file the environment is read from) keeps it out of
/// sight.
pub fn warn_of_passwords_in_flags(amqp_url: &str, redis_url: &str) {
    for warning in [
        password_in_flag("--amqp-url", amqp_url, "FLOTILLA_AMQP_URL"),
        password_in_flag("--redis-url", redis_url, "FLOTILLA_REDIS_URL"),
    ]
    .into_iter()
    .flatten()
    {
        tracing::warn!("{warning}");
    }
}

/// The warning for `value` of `flag` when it carries a password and came
/// from the command line (not the environment variable `env`, not the
/// default).
pub fn password_in_flag(flag: &str, value: &str, env: &str) -> Option<String> {
    let from_environment = std::env::var(env).is_ok_and(|set| set == value);
    if value == DEFAULT_AMQP_URL || from_environment || protocol::redact_password(value) == value {
        return None;
    }
    Some(format!(
        "{flag} carries a password, which every user of this host can read in the process list; set {env} in the service's environment instead"
    ))
}

#[derive(Debug, Clone, Args)]
pub struct WorkerArgs {
    #[command(flatten)]
    pub connection: ConnectionArgs,
    #[command(flatten)]
    pub keys: crate::keys::KeyArgs,
    /// Jobs handled at once (each queue's prefetch is this plus --held-polls). More waits on more AWS
    /// calls at once; costs memory and redelivery work if the worker dies.
    #[arg(long, env = "FLOTILLA_WORKER_CONCURRENCY", default_value_t = NonZeroU16::new(32).unwrap_or(NonZeroU16::MIN))]
    pub concurrency: NonZeroU16,
    /// Execute jobs that wait in the worker for their command's first poll
    /// (2 s after the send) instead of sending it through a delay queue; they
    /// hold a delivery, not a slot of --concurrency (added to the prefetch).
    /// 0 sends every poll through a delay queue.
    #[arg(long, env = "FLOTILLA_WORKER_HELD_POLLS", default_value_t = worker::DEFAULT_HELD_POLLS, value_parser = clap::value_parser!(u16).range(0..=4096))]
    pub held_polls: u16,
    /// Serve Prometheus metrics at http://ADDR/metrics.
    #[arg(long, env = "FLOTILLA_METRICS_ADDR")]
    pub metrics_addr: Option<SocketAddr>,
    /// Send AWS calls here instead of AWS (e.g. the simulator, http://127.0.0.1:4566).
    #[arg(long, env = "FLOTILLA_AWS_ENDPOINT_URL")]
    pub aws_endpoint_url: Option<String>,
    /// The region STS is called in (default: the SDK's region chain, else us-east-1).
    #[arg(long, env = "FLOTILLA_AWS_REGION")]
    pub aws_region: Option<String>,
    /// On SIGTERM/SIGINT, how long in-flight jobs may take to finish.
    #[arg(long, env = "FLOTILLA_SHUTDOWN_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    pub shutdown_timeout: Duration,
    /// Names this worker's RabbitMQ connection and consumers.
    #[arg(long, env = "FLOTILLA_WORKER_NAME")]
    pub name: Option<String>,
}

#[derive(Debug, Clone, Args)]
pub struct SchedulerArgs {
    #[command(flatten)]
    pub connection: ConnectionArgs,
    #[command(flatten)]
    pub keys: crate::keys::KeyArgs,
    /// Where the HTTP API listens (the `flotilla` CLI, Alertmanager, EventBridge).
    #[arg(long, env = "FLOTILLA_API_ADDR", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Send S3 calls (results of `output: s3://…` campaigns) here instead of AWS.
    #[arg(long, env = "FLOTILLA_S3_ENDPOINT_URL")]
    pub s3_endpoint_url: Option<String>,
    /// Call AWS Organizations here instead of AWS (e.g. the simulator).
    #[arg(long, env = "FLOTILLA_AWS_ENDPOINT_URL")]
    pub aws_endpoint_url: Option<String>,
    /// The region Organizations is called in (default: the SDK's region chain, else us-east-1).
    #[arg(long, env = "FLOTILLA_AWS_REGION")]
    pub aws_region: Option<String>,
    /// API tokens (JSON lines of hashes, made by `flotilla token create
    /// --tokens-file`). Setting it turns authentication on; tokens made
    /// through the API (kept in Redis) are then accepted too. Re-read when it
    /// changes.
    #[arg(long, env = "FLOTILLA_TOKENS_FILE")]
    pub tokens_file: Option<PathBuf>,
    /// The most account-region pairs one run may have; larger campaigns are
    /// refused when applied or started, naming both numbers.
    #[arg(long, env = "FLOTILLA_MAX_LOCATIONS", default_value_t = protocol::campaign::DEFAULT_MAX_LOCATIONS)]
    pub max_locations: u64,
    /// How many of a run's locations are being discovered at once: their
    /// Discover jobs share the work queue with the Execute jobs of locations
    /// already discovered, so a larger window discovers faster and delays
    /// execution more.
    #[arg(long, env = "FLOTILLA_DISCOVERY_WINDOW", default_value_t = scheduler::runs::DISCOVERY_WINDOW)]
    pub discovery_window: std::num::NonZeroUsize,
    /// Reports a replica holds unacked and applies at once (RabbitMQ's
    /// prefetch on the reports queue). More keeps the CPUs busy while reports
    /// wait on Redis and RabbitMQ; each one held is applied again by another
    /// replica if this one dies.
    #[arg(long, env = "FLOTILLA_REPORT_PREFETCH", default_value_t = 64, value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub report_prefetch: u16,
    /// The largest API request body read (bytes); larger ones are refused
    /// with 413 before anything parses them.
    #[arg(long, env = "FLOTILLA_MAX_REQUEST_BYTES", default_value_t = api::access::credentials::MAX_REQUEST_BYTES)]
    pub max_request_bytes: usize,
    /// Open API connections at most; one more is closed as it is accepted.
    #[arg(long, env = "FLOTILLA_API_MAX_CONNECTIONS", default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub api_max_connections: u32,
    /// Seconds a client has to send a request's headers, after connecting
    /// or after the previous response (an idle kept-alive connection is
    /// closed then; HTTP/2 connections are pinged at this interval).
    #[arg(long, env = "FLOTILLA_API_HEADER_TIMEOUT", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub api_header_timeout: u64,
    /// Seconds within which a request must be answered (503 otherwise).
    #[arg(long, env = "FLOTILLA_API_REQUEST_TIMEOUT", default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub api_request_timeout: u64,
    /// Serve the API on a non-loopback address without authentication.
    /// Anyone who reaches it can run commands on every host: tests only.
    #[arg(long, env = "FLOTILLA_INSECURE_NO_AUTH")]
    pub insecure_no_auth: bool,
    /// Serve the API over HTTPS with this certificate (PEM chain).
    #[arg(long, env = "FLOTILLA_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The certificate's private key (PEM).
    #[arg(long, env = "FLOTILLA_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Accept client certificates this CA (PEM) signed as principals: the
    /// subject's CN is the name, its OU the role. Needs --tls-cert.
    #[arg(long, env = "FLOTILLA_TLS_CLIENT_CA", requires = "tls_cert")]
    pub tls_client_ca: Option<PathBuf>,
    /// `/metrics` needs a token too (a viewer's suffices); by default it is
    /// open, as it holds counts only, never ids or secrets.
    #[arg(long, env = "FLOTILLA_METRICS_NEED_TOKEN")]
    pub metrics_need_token: bool,
    /// Where audit files go besides the Redis stream: a directory or
    /// s3://bucket/prefix.
    #[arg(long, env = "FLOTILLA_AUDIT_OUTPUT", default_value = "flotilla-audit")]
    pub audit_output: String,
    /// A document that only reads, `DOCUMENT` or `DOCUMENT:PARAMETER=VALUE`;
    /// repeat for several. Campaigns with any other step run only after a
    /// second principal approves them. Replaces the default,
    /// AWS-RunPatchBaseline:Operation=Scan.
    #[arg(long = "read-only-document", value_name = "DOCUMENT[:PARAMETER=VALUE]")]
    pub read_only_documents: Vec<scheduler::approvals::ReadOnlyDocument>,
    /// A webhook told about every campaign's runs and the kill switch (the
    /// deployment's default); repeat for several. https://, or http:// to
    /// loopback only.
    #[arg(
        long = "notify-webhook",
        env = "FLOTILLA_NOTIFY_WEBHOOK",
        value_delimiter = ','
    )]
    pub notify_webhooks: Vec<String>,
    /// A directory campaigns' results may go under (a relative one: under
    /// the scheduler's working directory); repeat for several. Campaigns
    /// whose `output` is elsewhere are refused.
    #[arg(
        long = "output-root",
        env = "FLOTILLA_OUTPUT_ROOTS",
        value_delimiter = ',',
        default_value = "."
    )]
    pub output_roots: Vec<PathBuf>,
    /// An S3 bucket campaigns' results may go to; repeat for several. None
    /// by default.
    #[arg(
        long = "output-bucket",
        env = "FLOTILLA_OUTPUT_BUCKETS",
        value_delimiter = ','
    )]
    pub output_buckets: Vec<String>,
    /// A host the scheduler may reach on a campaign's or the deployment's
    /// behalf (rollout gates, webhooks, the OIDC key set) over https;
    /// `*.example.com` allows its subdomains. Repeat for several. Nothing is
    /// reached without one.
    #[arg(
        long = "egress-allow-host",
        env = "FLOTILLA_EGRESS_ALLOW_HOSTS",
        value_delimiter = ','
    )]
    pub egress_allow_hosts: Vec<String>,
    /// A host that may also be reached over plain http (exact name; for
    /// tests and a sidecar on loopback). Repeat for several.
    #[arg(
        long = "egress-allow-plain-http",
        env = "FLOTILLA_EGRESS_ALLOW_PLAIN_HTTP",
        value_delimiter = ','
    )]
    pub egress_allow_plain_http: Vec<String>,
    /// The events the default webhooks hear about.
    #[arg(
        long,
        env = "FLOTILLA_NOTIFY_ON",
        value_delimiter = ',',
        default_value = "halted,gate_failed,paused,kill_switch"
    )]
    pub notify_on: Vec<String>,
    /// `json` (signed with --notify-hmac-key-file) or `slack`.
    #[arg(long, env = "FLOTILLA_NOTIFY_FORMAT", default_value = "json")]
    pub notify_format: String,
    /// The key (a file of at least 32 bytes) JSON notifications are signed
    /// with: `X-Flotilla-Signature: t=…,v1=<HMAC-SHA256>`.
    #[arg(long, env = "FLOTILLA_NOTIFY_HMAC_KEY_FILE")]
    pub notify_hmac_key_file: Option<PathBuf>,
    /// The API's address as people reach it, for links in notifications.
    #[arg(long, env = "FLOTILLA_PUBLIC_URL")]
    pub public_url: Option<String>,
    /// Accept JWTs of this OIDC issuer (its `iss`); needs --oidc-audience and
    /// --oidc-jwks. Turns authentication on.
    #[arg(long, env = "FLOTILLA_OIDC_ISSUER", requires_all = ["oidc_audience", "oidc_jwks"])]
    pub oidc_issuer: Option<String>,
    /// The `aud` the tokens must carry.
    #[arg(long, env = "FLOTILLA_OIDC_AUDIENCE")]
    pub oidc_audience: Option<String>,
    /// The issuer's keys: a JWKS file, or an https URL (on the egress allow
    /// list; plain http only to a host allowed so) read at start and every
    /// --oidc-jwks-refresh seconds (https checked against the Mozilla roots).
    #[arg(long, env = "FLOTILLA_OIDC_JWKS")]
    pub oidc_jwks: Option<String>,
    /// Seconds between reads of the --oidc-jwks key set (a rotation needs no
    /// restart; a failed read keeps the keys it has).
    #[arg(long, env = "FLOTILLA_OIDC_JWKS_REFRESH", default_value_t = 3600, value_parser = clap::value_parser!(u64).range(60..=86_400))]
    pub oidc_jwks_refresh: u64,
    /// The claim holding the flotilla role (a string or a list).
    #[arg(
        long,
        env = "FLOTILLA_OIDC_ROLE_CLAIM",
        default_value = "flotilla_role"
    )]
    pub oidc_role_claim: String,
    /// The claim naming the principal.
    #[arg(long, env = "FLOTILLA_OIDC_NAME_CLAIM", default_value = "sub")]
    pub oidc_name_claim: String,
}

/// The largest JWKS read.
const MAX_JWKS_BYTES: u64 = 256 * 1024;

/// The JWKS text of a file or an http(s) URL the egress policy allows
/// (redirects not followed), bounded.
pub fn read_jwks(source: &str, egress: &scheduler::egress::EgressPolicy) -> anyhow::Result<String> {
    if source.contains("://") {
        egress
            .check("the OIDC key set", source)
            .map_err(anyhow::Error::msg)?;
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .tls_config(scheduler::ureq_tls().build())
            .max_redirects(0)
            .timeout_global(Some(std::time::Duration::from_secs(10)))
            .build()
            .into();
        let mut response = agent.get(source).call().with_context(|| {
            format!(
                "fetching the JWKS {}",
                scheduler::egress::redacted_url(source)
            )
        })?;
        return response
            .body_mut()
            .with_config()
            .limit(MAX_JWKS_BYTES)
            .read_to_string()
            .with_context(|| format!("reading the JWKS {source}"));
    }
    let bytes = api::auth::read_bounded(std::path::Path::new(source), MAX_JWKS_BYTES, "JWKS file")
        .map_err(anyhow::Error::msg)?;
    String::from_utf8(bytes).with_context(|| format!("JWKS file {source}"))
}

/// Completes on SIGINT (Ctrl-C) or SIGTERM.
async fn termination() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut terminate) => {
                tokio::select! {
                    _ = interrupt => {}
                    _ = terminate.recv() => {}
                }
            }
            Err(_) => {
                let _ = interrupt.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = interrupt.await;
    }
    tracing::info!("termination requested");
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Runtime::new().context("cannot start the async runtime")
}

pub fn worker(args: WorkerArgs) -> anyhow::Result<ExitCode> {
    args.connection.warn_of_passwords_in_flags();
    let names = Names::new(args.connection.prefix.clone());
    let mut config = worker::WorkerConfig::new(args.connection.amqp_url.clone(), names.clone());
    config.keys = args.keys.keyring(protocol::signing::SignerKind::Worker)?;
    config.concurrency = args.concurrency;
    config.held_polls = args.held_polls;
    config.metrics_addr = args.metrics_addr;
    config.shutdown_timeout = args.shutdown_timeout;
    config.amqp_tls = broker::BrokerTls {
        ca_file: args.connection.amqp_ca_file.clone(),
    };
    config.name = args
        .name
        .unwrap_or_else(|| format!("flotilla-worker-{}", std::process::id()));
    config.aws = worker::AwsSettings {
        endpoint_url: args.aws_endpoint_url,
        home_region: args.aws_region,
        credentials: None,
        attempt_timeout: None,
    };
    runtime()?.block_on(async {
        let tls = store::RedisTls {
            ca_file: args.connection.redis_ca_file.clone(),
        };
        let store =
            store::RedisStore::connect_with(&args.connection.redis_url, names, &tls).await?;
        worker::run(config, store, termination()).await?;
        Ok(ExitCode::SUCCESS)
    })
}

pub fn scheduler(args: SchedulerArgs) -> anyhow::Result<ExitCode> {
    args.connection.warn_of_passwords_in_flags();
    let names = Names::new(args.connection.prefix.clone());
    let mut config =
        SchedulerConfig::new(args.connection.amqp_url, args.connection.redis_url, names);
    config.output_roots = scheduler::sink::OutputRoots {
        local: args.output_roots.clone(),
        buckets: args.output_buckets.clone(),
    };
    config.egress = scheduler::egress::EgressPolicy {
        allowed_hosts: args.egress_allow_hosts.clone(),
        plain_http_hosts: args.egress_allow_plain_http.clone(),
    };
    config.redis_tls = store::RedisTls {
        ca_file: args.connection.redis_ca_file,
    };
    config.amqp_tls = broker::BrokerTls {
        ca_file: args.connection.amqp_ca_file,
    };
    // S3 credentials come from the AWS_* environment variables.
    config.s3 = scheduler::sink::S3Settings {
        endpoint_url: args.s3_endpoint_url,
        region: args.aws_region.clone(),
        credentials: None,
        retry_timeout: None,
    };
    config.organizations = scheduler::organizations::OrganizationsSettings {
        endpoint_url: args.aws_endpoint_url,
        region: args.aws_region,
        credentials: None,
    };
    let auth = api::auth::AuthSettings {
        tokens_file: args
            .tokens_file
            .map(api::auth::TokensFile::open)
            .transpose()
            .map_err(anyhow::Error::msg)?,
        metrics_open: !args.metrics_need_token,
        client_certificates: args.tls_client_ca.is_some(),
        oidc: match (&args.oidc_issuer, &args.oidc_audience, &args.oidc_jwks) {
            (Some(issuer), Some(audience), Some(jwks)) => Some(
                api::oidc::OidcVerifier::new(
                    issuer,
                    audience,
                    &read_jwks(jwks, &config.egress)?,
                    &args.oidc_role_claim,
                    &args.oidc_name_claim,
                )
                .map_err(|error| anyhow::anyhow!("--oidc-jwks: {error}"))?,
            ),
            _ => None,
        },
    };
    config.audit_output = Some(
        protocol::campaign::parse_output(Some(&args.audit_output))
            .map_err(|error| anyhow::anyhow!("--audit-output: {error}"))?,
    );
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(
            api::tls::ApiTls::from_files(cert, key, args.tls_client_ca.as_deref())
                .map_err(|error| anyhow::anyhow!("--tls-cert/--tls-key: {error}"))?,
        ),
        _ => None,
    };
    let api_config = api::ApiConfig {
        auth,
        tls,
        max_request_bytes: args.max_request_bytes,
        limits: api::listen::ConnectionLimits {
            max_connections: usize::try_from(args.api_max_connections).unwrap_or(usize::MAX),
            header_timeout: std::time::Duration::from_secs(args.api_header_timeout),
            request_timeout: std::time::Duration::from_secs(args.api_request_timeout),
        },
    };
    if !args.read_only_documents.is_empty() {
        config.read_only_documents = args.read_only_documents;
    }
    config.notify = notify_settings(
        &args.notify_webhooks,
        &args.notify_on,
        &args.notify_format,
        args.notify_hmac_key_file.as_deref(),
        args.public_url.clone(),
    )?;
    api::auth::check_listen(args.listen, &api_config.auth, args.insecure_no_auth)
        .map_err(anyhow::Error::msg)?;
    config.keys = args
        .keys
        .keyring(protocol::signing::SignerKind::Scheduler)?;
    config.max_locations = args.max_locations;
    config.discovery_window = args.discovery_window;
    config.report_prefetch = args.report_prefetch;
    runtime()?.block_on(async {
        let listener = tokio::net::TcpListener::bind(args.listen)
            .await
            .with_context(|| format!("cannot listen on {}", args.listen))?;
        tracing::info!(api = %args.listen, authentication = !api_config.auth.is_open(), "scheduler starting");
        if api_config.auth.is_open() {
            let public = !args.listen.ip().is_loopback();
            tokio::spawn(warn_without_auth(args.listen, public));
        }
        if let (Some(verifier), Some(source)) = (&api_config.auth.oidc, &args.oidc_jwks) {
            tokio::spawn(refresh_jwks(
                verifier.clone(),
                source.clone(),
                config.egress.clone(),
                std::time::Duration::from_secs(args.oidc_jwks_refresh),
            ));
        }
        api::run(config, api_config, Some(listener), termination()).await?;
        Ok(ExitCode::SUCCESS)
    })
}

/// Reads the OIDC key set again every `every`: the issuer's key rotation
/// takes effect without a restart; a failed read keeps the keys it has.
async fn refresh_jwks(
    verifier: api::oidc::OidcVerifier,
    source: String,
    egress: scheduler::egress::EgressPolicy,
    every: std::time::Duration,
) {
    loop {
        tokio::time::sleep(every).await;
        let (read_from, policy) = (source.clone(), egress.clone());
        let read = tokio::task::spawn_blocking(move || read_jwks(&read_from, &policy)).await;
        match read.map_err(anyhow::Error::from).and_then(|read| read) {
            Ok(jwks) => match verifier.replace_keys(&jwks) {
                Ok(keys) => tracing::info!(keys, "OIDC key set refreshed"),
                Err(error) => tracing::warn!(%error, "OIDC key set refresh: kept the keys we have"),
            },
            Err(error) => {
                tracing::warn!(error = %error, "OIDC key set refresh: kept the keys we have")
            }
        }
    }
}

/// Without authentication: says so at start, and every minute when the API
/// is reachable from other machines (`--insecure-no-auth`).
async fn warn_without_auth(listen: SocketAddr, public: bool) {
    let mut every_minute = tokio::time::interval(std::time::Duration::from_secs(60));
    loop {
        every_minute.tick().await;
        tracing::warn!(
            %listen,
            "the API has no authentication: anyone who reaches it acts as admin (set --tokens-file)"
        );
        if !public {
            return;
        }
    }
}

/// A flag's value read as one of an enum's snake_case names.
fn parse_named<T: serde::de::DeserializeOwned>(name: &str, text: &str) -> anyhow::Result<T> {
    serde_json::from_value(serde_json::Value::String(text.trim().to_string()))
        .map_err(|_| anyhow::anyhow!("{name}: unknown value {text:?}"))
}

/// The scheduler's `--notify-*` flags as settings; every bad value named.
fn notify_settings(
    webhooks: &[String],
    on: &[String],
    format: &str,
    hmac_key_file: Option<&std::path::Path>,
    public_url: Option<String>,
) -> anyhow::Result<scheduler::notify::NotifySettings> {
    let on: Vec<protocol::spec::NotifyEvent> = on
        .iter()
        .map(|event| parse_named("--notify-on (halted, completed, cancelled, paused, gate_failed, awaiting_approval, kill_switch)", event))
        .collect::<anyhow::Result<_>>()?;
    let format: protocol::spec::NotifyFormat =
        parse_named("--notify-format (json, slack)", format)?;
    let mut defaults = Vec::new();
    for webhook in webhooks {
        protocol::campaign::check_webhook(webhook)
            .map_err(|error| anyhow::anyhow!("--notify-webhook: {error}"))?;
        defaults.push(protocol::spec::NotifySpec {
            on: on.clone(),
            webhook: webhook.clone(),
            format,
        });
    }
    let hmac_key = match hmac_key_file {
        Some(path) => {
            let metadata = std::fs::metadata(path).map_err(|error| {
                anyhow::anyhow!("--notify-hmac-key-file {}: {error}", path.display())
            })?;
            if metadata.len() > 4096 {
                anyhow::bail!(
                    "--notify-hmac-key-file {}: larger than a key (4096 bytes)",
                    path.display()
                );
            }
            let key = std::fs::read(path).map_err(|error| {
                anyhow::anyhow!("--notify-hmac-key-file {}: {error}", path.display())
            })?;
            let key: Vec<u8> = key.trim_ascii().to_vec();
            if key.len() < 32 {
                anyhow::bail!(
                    "--notify-hmac-key-file {}: a key has at least 32 bytes (e.g. `openssl rand -hex 32`)",
                    path.display()
                );
            }
            Some(std::sync::Arc::new(key))
        }
        None => None,
    };
    Ok(scheduler::notify::NotifySettings {
        defaults,
        hmac_key,
        link_base: public_url,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_password_on_the_command_line_is_warned_of_never_shown() {
        // An environment variable no one sets: the value came from a flag.
        let unset = "FLOTILLA_TEST_NEVER_SET_URL";
        let warning = password_in_flag("--redis-url", "redis://:hunter2@redis:6379/", unset)
            .expect("a password in a flag is warned of");
        assert!(
            warning.contains("--redis-url") && warning.contains(unset),
            "{warning}"
        );
        assert!(!warning.contains("hunter2"), "{warning}");
        for quiet in ["redis://redis:6379/", DEFAULT_AMQP_URL] {
            assert_eq!(password_in_flag("--url", quiet, unset), None, "{quiet}");
        }
    }
}

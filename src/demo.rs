//! `flotilla demo`: the simulator, a scheduler and a few workers in this one
//! process, on the in-memory RabbitMQ and Redis (or on real ones with
//! `--amqp-url`/`--redis-url`). It applies the example patch scan to the
//! simulated fleet, shows live progress, prints the report and leaves the
//! results under `./flotilla-demo/`. Everything talks as in production: the
//! workers call the simulator through the AWS SDK over HTTP on 127.0.0.1, and
//! this command drives the scheduler through its HTTP API like the CLI does.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use protocol::SpecFormat;
use protocol::names::{Names, in_memory_name};
use protocol::spec::{CampaignSpec, Scalar};
use scheduler::SchedulerConfig;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::client::ApiClient;
use crate::commands::{ApiArgs, ReportArgs};
use crate::watch::watch;

/// The example campaign the demo runs (its accounts and regions become the
/// simulated fleet's).
const EXAMPLE_CAMPAIGN: &str = include_str!("../examples/sim/patch-scan.yaml");

#[derive(Debug, Clone, Args)]
pub struct DemoArgs {
    /// The simulated fleet: a preset (tiny, demo, large) or a fleet profile YAML file.
    #[arg(long, default_value = "demo")]
    pub profile: String,
    /// Workers to run, each with its own connections, as separate processes would.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub workers: u16,
    /// RabbitMQ to use instead of the in-memory backend (e.g.
    /// amqp://guest:guest@127.0.0.1:5672/%2f).
    #[arg(long, default_value = "memory://demo")]
    pub amqp_url: String,
    /// Redis to use instead of the in-memory backend (e.g. redis://127.0.0.1:6379/).
    #[arg(long, default_value = "memory://demo")]
    pub redis_url: String,
    /// Run this campaign file instead of the example patch scan (as written:
    /// its accounts must exist in the profile).
    #[arg(long)]
    pub campaign: Option<PathBuf>,
    /// Where the results are written.
    #[arg(long, default_value = "flotilla-demo")]
    pub output: String,
    /// After the run, keep the services up for the web console (`/ui`) until Ctrl-C.
    #[arg(long)]
    pub console: bool,
}

/// The campaign to run, as JSON for the API.
fn demo_campaign(args: &DemoArgs, profile: &sim::FleetProfile) -> anyhow::Result<String> {
    let mut spec: CampaignSpec = match &args.campaign {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            protocol::campaign::parse_spec(&text, SpecFormat::from_path(path))
                .map_err(|errors| anyhow::anyhow!("{} is invalid:\n{errors}", path.display()))?
        }
        None => {
            let mut spec = protocol::campaign::parse_spec(EXAMPLE_CAMPAIGN, SpecFormat::Yaml)
                .map_err(|errors| anyhow::anyhow!("the example campaign is invalid:\n{errors}"))?;
            spec.accounts.ids = (0..profile.accounts)
                .map(|account| Scalar::text(sim::fleet::account_id(account)))
                .collect();
            spec.regions = profile.regions.clone();
            // The whole fleet at once (the example works three locations at a
            // time): a demo should take seconds, not minutes.
            spec.rate_control.location_concurrency = Some(Scalar::text("100%"));
            spec
        }
    };
    spec.output = Some(args.output.clone());
    // Refuse now what the scheduler would refuse later, with the field's path.
    let json = serde_json::to_string(&spec)?;
    protocol::Campaign::parse(&json, SpecFormat::Json)
        .map_err(|errors| anyhow::anyhow!("the demo campaign is invalid:\n{errors}"))?;
    Ok(json)
}

/// The services of the demo (and of `flotilla bench`'s embedded scenario),
/// running on the runtime's threads.
pub(crate) struct Stack {
    sim: sim::SimServer,
    pub(crate) api_url: String,
    stop: CancellationToken,
    services: Vec<JoinHandle<anyhow::Result<()>>>,
    names: Names,
    amqp_url: String,
    redis_url: String,
}

impl Stack {
    /// `results_root`: a directory besides the working directory the
    /// scheduler may write results under (its `--output-root`).
    pub(crate) async fn start(
        amqp_url: &str,
        redis_url: &str,
        workers: u16,
        profile: sim::FleetProfile,
        results_root: Option<&Path>,
    ) -> anyhow::Result<Self> {
        let in_memory = in_memory_name(amqp_url).is_some() && in_memory_name(redis_url).is_some();
        // On shared RabbitMQ and Redis, names of our own (removed at the end).
        let names = if in_memory {
            Names::default()
        } else {
            Names::new(format!(
                "flotilla-demo-{}",
                &Uuid::new_v4().simple().to_string()[..8]
            ))
        };
        // Fail now, with how to start them, rather than retry forever. A new
        // deployment of its own: its queues are declared here, as `flotilla
        // admin arm` does (the services only check them).
        broker::Broker::declare_topology(amqp_url, &names, &Default::default()).await?;
        // Its kill switch armed explicitly, as `flotilla admin arm` does,
        // before any service looks at it (a service finding it engaged warns).
        let store = store::RedisStore::connect(redis_url, names.clone()).await?;
        let audit =
            scheduler::audit::AuditLog::new(store.connection(), names.audit_stream_key(), None);
        scheduler::arm_new_deployment(&store, audit, "demo").await?;

        let loopback: SocketAddr = ([127, 0, 0, 1], 0).into();
        let caller_key = profile.caller_access_key_id.clone();
        let sim = sim::SimServer::start(profile, loopback)
            .await
            .context("cannot start the simulator on 127.0.0.1")?;
        let credentials = || {
            worker::Credentials::new(
                caller_key.clone(),
                "flotilla-demo-secret",
                None,
                None,
                "flotilla-demo",
            )
        };
        let stop = CancellationToken::new();
        let mut services: Vec<JoinHandle<anyhow::Result<()>>> = Vec::new();
        // Keys of this demo's own, gone when it ends.
        let keys = protocol::signing::Keyring::ephemeral_deployment()?;

        let mut config = SchedulerConfig::new(amqp_url, redis_url, names.clone());
        config.name = "flotilla-demo-scheduler".into();
        config.keys = keys.scheduler.clone();
        config
            .output_roots
            .local
            .extend(results_root.map(Into::into));
        config.organizations = scheduler::organizations::OrganizationsSettings {
            endpoint_url: Some(sim.endpoint_url()),
            region: Some("us-east-1".into()),
            credentials: Some(credentials()),
        };
        let listener = tokio::net::TcpListener::bind(loopback)
            .await
            .context("cannot listen on 127.0.0.1 for the scheduler's API")?;
        let api_url = format!("http://{}", listener.local_addr()?);
        let stopped = stop.clone().cancelled_owned();
        services.push(tokio::spawn(async move {
            api::run(config, api::ApiConfig::default(), Some(listener), stopped).await?;
            Ok(())
        }));

        for index in 0..workers {
            let mut config = worker::WorkerConfig::new(amqp_url, names.clone());
            config.name = format!("flotilla-demo-worker-{index}");
            config.keys = keys.worker.clone();
            config.shutdown_timeout = Duration::from_secs(5);
            config.aws = worker::AwsSettings {
                endpoint_url: Some(sim.endpoint_url()),
                home_region: Some("us-east-1".into()),
                credentials: Some(credentials()),
                attempt_timeout: None,
            };
            let store = store::RedisStore::connect(redis_url, names.clone()).await?;
            let stopped = stop.clone().cancelled_owned();
            services.push(tokio::spawn(async move {
                worker::run(config, store, stopped).await?;
                Ok(())
            }));
        }
        Ok(Self {
            sim,
            api_url,
            stop,
            services,
            names,
            amqp_url: amqp_url.to_string(),
            redis_url: redis_url.to_string(),
        })
    }

    /// The demo's key and queue names (its own prefix on shared services).
    pub(crate) fn names(&self) -> &Names {
        &self.names
    }

    /// On Ctrl-C: stop the services, clean up, exit 130 (as a shell would).
    pub(crate) fn stop_on_interrupt(&self) {
        let (stop, names, amqp_url, redis_url) = (
            self.stop.clone(),
            self.names.clone(),
            self.amqp_url.clone(),
            self.redis_url.clone(),
        );
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_err() {
                return;
            }
            stop.cancel();
            tokio::time::sleep(Duration::from_millis(500)).await;
            if let Err(error) = remove_shared_state(&amqp_url, &redis_url, names).await {
                eprintln!("the demo's queues and keys may remain: {error:#}");
            }
            std::process::exit(130);
        });
    }

    /// Stops every service, then removes the demo's queues and keys from real
    /// RabbitMQ and Redis.
    pub(crate) async fn stop(self) -> anyhow::Result<()> {
        self.stop.cancel();
        for service in self.services {
            match tokio::time::timeout(Duration::from_secs(15), service).await {
                Ok(Ok(Ok(()))) => {}
                Ok(Ok(Err(error))) => {
                    tracing::warn!(error = %format!("{error:#}"), "a demo service failed")
                }
                Ok(Err(error)) => tracing::warn!(error = %error, "a demo service panicked"),
                Err(_) => tracing::warn!("a demo service did not stop within 15 s"),
            }
        }
        drop(self.sim);
        remove_shared_state(&self.amqp_url, &self.redis_url, self.names).await
    }
}

/// Deletes the demo's queues from a real RabbitMQ and its keys from a real Redis.
pub(crate) async fn remove_shared_state(
    amqp_url: &str,
    redis_url: &str,
    names: Names,
) -> anyhow::Result<()> {
    if in_memory_name(amqp_url).is_none() {
        broker::Broker::delete_deployment(amqp_url, &names).await?;
    }
    if in_memory_name(redis_url).is_none() {
        store::RedisStore::connect(redis_url, names)
            .await?
            .purge()
            .await?;
    }
    Ok(())
}

/// Waits for the scheduler's API to answer (it connects first).
pub(crate) fn wait_until_ready(client: &ApiClient) -> anyhow::Result<()> {
    let began = Instant::now();
    loop {
        match client.get::<serde_json::Value>("/campaigns") {
            Ok(_) => return Ok(()),
            Err(error) if began.elapsed() > Duration::from_secs(20) => {
                return Err(error.context("the demo scheduler did not become ready within 20 s"));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// Applies the campaign, starts a run, watches it and prints its report.
/// Runs the campaign through the API; its outcome and the run's id.
fn drive(
    api_url: &str,
    campaign_json: String,
    out: &mut impl Write,
) -> anyhow::Result<(ExitCode, Uuid)> {
    let client = ApiClient::new(api_url);
    wait_until_ready(&client)?;
    let applied: serde_json::Value =
        client.post("/campaigns", "application/json", campaign_json)?;
    let name = applied["name"]
        .as_str()
        .context("the API answered without a campaign name")?
        .to_string();
    let started: serde_json::Value =
        client.post_json(&format!("/campaigns/{name}/runs"), &serde_json::json!({}))?;
    let run_id: Uuid = serde_json::from_value(started["run_id"].clone())
        .context("the API answered without a run id")?;
    writeln!(
        out,
        "campaign {name}: run {run_id} started\n  (meanwhile: flotilla run show {run_id} --api {api_url})"
    )?;
    out.flush()?;
    let watched = watch(&client, run_id, out)?;
    writeln!(out)?;
    let api = ApiArgs {
        api: api_url.to_string(),
        ca_file: None,
    };
    let report = ReportArgs {
        run_id,
        format: crate::report::Format::Table,
        dir: None,
        s3_endpoint_url: None,
    };
    crate::commands::report(&api, report, out)?;
    Ok((watched, run_id))
}

pub fn demo(args: DemoArgs, out: &mut impl Write) -> anyhow::Result<ExitCode> {
    let profile = sim::FleetProfile::load(&args.profile).map_err(anyhow::Error::msg)?;
    profile.validate().map_err(anyhow::Error::msg)?;
    let campaign_json = demo_campaign(&args, &profile)?;
    let backends =
        if in_memory_name(&args.amqp_url).is_some() && in_memory_name(&args.redis_url).is_some() {
            "in-memory queues and state".to_string()
        } else {
            format!(
                "RabbitMQ {} and Redis {}",
                protocol::redact_password(&args.amqp_url),
                protocol::redact_password(&args.redis_url)
            )
        };
    writeln!(
        out,
        "flotilla demo: simulated fleet '{}' ({} accounts × {} regions), {} workers, {backends}",
        args.profile,
        profile.accounts,
        profile.regions.len(),
        args.workers
    )?;
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    let began = Instant::now();
    // Results go where --output says, also outside the working directory.
    let results_root = (!args.output.starts_with("s3://")).then(|| Path::new(&args.output));
    let stack = runtime.block_on(Stack::start(
        &args.amqp_url,
        &args.redis_url,
        args.workers,
        profile,
        results_root,
    ))?;
    runtime.block_on(async { stack.stop_on_interrupt() });
    let api_url = stack.api_url.clone();
    writeln!(
        out,
        "web console: {api_url}/ui (loopback only, no token: the demo's API has no authentication)"
    )?;
    // The services run on the runtime's threads; this thread drives them over HTTP.
    let outcome = drive(&api_url, campaign_json, out);
    if args.console {
        writeln!(
            out,
            "\nthe run is over; the console stays at {api_url}/ui until Ctrl-C"
        )?;
        // Ctrl-C stops the services, cleans up and exits (stop_on_interrupt).
        runtime.block_on(std::future::pending::<()>());
    }
    let stopped = runtime.block_on(stack.stop());
    let (code, run_id) = outcome?;
    stopped.context("stopping the demo")?;
    let results = args.output.trim_end_matches('/');
    writeln!(
        out,
        "\ndemo finished in {:.1} s; results are under {results}/\nits report again, no services needed: flotilla report {run_id} --dir {results}",
        began.elapsed().as_secs_f64(),
    )?;
    if code != ExitCode::SUCCESS {
        bail!("the demo run did not complete");
    }
    Ok(code)
}

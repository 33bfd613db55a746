//! A whole flotilla on loopback for end-to-end tests: the simulator in process,
//! real RabbitMQ and Redis under a per-test name prefix, a scheduler and workers.

#![allow(clippy::unwrap_used, dead_code)]

use std::collections::HashMap;
use std::num::NonZeroU16;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use protocol::names::Names;
use protocol::{Campaign, SpecFormat};
use scheduler::sink::{self, ResultRecord};
use scheduler::{RunProgress, Scheduler, SchedulerConfig};
use sim::SimServer;
use sim::profile::FleetProfile;
use store::RedisStore;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::task::JoinHandle;
use uuid::Uuid;
use worker::{AwsSettings, Credentials, WorkerConfig};

pub const AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
pub const REDIS_URL: &str = "redis://127.0.0.1:6379/";

/// One account, one region, `instances` instances, every command succeeding
/// (or, with `failing`, failing), none offline.
pub fn single_location(instances: u32, failing: bool) -> FleetProfile {
    let mut profile = FleetProfile::tiny();
    profile.accounts = 1;
    profile.regions = vec!["us-east-1".into()];
    profile.instances_per_location = sim::profile::CountRange {
        min: instances,
        max: instances,
    };
    profile.connection_lost_share = 0.0;
    profile.outcomes = sim::profile::OutcomeMix {
        success: u32::from(!failing),
        failed: u32::from(failing),
        timed_out: 0,
        undeliverable: 0,
    };
    profile
}

/// The simulator's management-account identity (any secret is accepted).
pub fn caller_credentials(sim: &SimServer) -> Credentials {
    Credentials::new(
        sim.state.fleet.profile.caller_access_key_id.clone(),
        "flotilla-test-secret",
        None,
        None,
        "flotilla-test",
    )
}

/// `single_location` whose commands take 0.5–3 s, so a run is still sending
/// (and polling) a while after it starts.
pub fn slow_single_location(instances: u32) -> FleetProfile {
    let mut profile = single_location(instances, false);
    profile.time_scale = 10.0;
    profile
}

/// Campaign YAML: one shell step, then `rate_control:` with the given lines.
pub fn one_step(rate_control: &str) -> String {
    format!(
        "
steps:
  - name: configure
    document: AWS-RunShellScript
    parameters:
      commands: [\"echo hi\"]
    timeout: 60s
rate_control:
{rate_control}"
    )
}

pub struct Stack {
    pub sim: SimServer,
    pub names: Names,
    pub store: RedisStore,
    /// Where this stack's queues live: RabbitMQ's URL or `memory://<prefix>`.
    pub amqp_url: String,
    pub scheduler: Scheduler,
    scheduler_config: SchedulerConfig,
    /// How the stack's API is served (authentication, TLS, limits).
    api_config: api::ApiConfig,
    /// The stack's signing keys (a scheduler's and a worker's, each trusted by both).
    pub keys: protocol::signing::DeploymentKeys,
    pub results: tempfile::TempDir,
    /// Workers' AWS attempt timeout (send claims go stale after three of them).
    pub attempt_timeout: Duration,
    scheduler_task: Option<JoinHandle<()>>,
    workers: Vec<JoinHandle<()>>,
    /// Tasks handed to the test (stoppable workers), aborted with the rest
    /// at teardown: one left running would reconnect and declare queues
    /// again after the cleanup (a lone `dead-letter` queue was left so).
    handed_out: Vec<tokio::task::AbortHandle>,
    /// Services in processes of their own (see [`Stack::spawn_skewed`]),
    /// killed with the tasks.
    processes: Vec<tokio::process::Child>,
    /// What each skewed process serves and logged.
    skews: Vec<Skewed>,
    /// Removes the stack's queues and keys when the stack is dropped, also
    /// when the test fails.
    cleanup: Option<Cleanup>,
}

/// A service [`Stack::spawn_skewed`] started.
struct Skewed {
    name: String,
    /// Where it serves `/metrics` (a worker's metrics address, a scheduler's API).
    metrics_port: u16,
    /// The offset from Redis's clock it logged measuring, once it has.
    offset: Arc<Mutex<Option<i64>>>,
}

/// Which backends a stack runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// RabbitMQ and Redis on loopback.
    Real,
    /// The in-memory backends (`memory://<prefix>`), as `flotilla demo` runs.
    Memory,
}

/// Deletes one test prefix's queues, exchanges and Redis keys when dropped,
/// so a failing (panicking) test leaves nothing behind either. `scripts/test`
/// sweeps what a killed test run left.
pub struct Cleanup {
    pub names: Names,
    pub amqp_url: String,
    pub redis_url: String,
    /// False once `run` has cleaned up, so dropping does nothing more.
    armed: bool,
}

impl Cleanup {
    pub fn new(names: &Names, amqp_url: &str, redis_url: &str) -> Self {
        Self {
            names: names.clone(),
            amqp_url: amqp_url.to_string(),
            redis_url: redis_url.to_string(),
            armed: true,
        }
    }

    /// Cleans up now, from async code.
    pub async fn run(mut self) {
        self.armed = false;
        purge_twice(&self.amqp_url, &self.redis_url, &self.names).await;
    }
}

/// Purges, then again 0.3 s and 1.5 s later: a scheduler or worker task just
/// aborted may still have a declare on the wire, which RabbitMQ carries out
/// after a purge — a quorum queue's declaration can take longer than 0.3 s
/// on a busy 2-core machine (a lone `dead-letter` queue was left that way).
/// The in-memory backend has nothing on the wire: one purge.
async fn purge_twice(amqp_url: &str, redis_url: &str, names: &Names) {
    let in_memory = protocol::names::in_memory_name(amqp_url).is_some();
    let pauses: &[u64] = if in_memory { &[0] } else { &[0, 300, 1_500] };
    for pause in pauses {
        tokio::time::sleep(Duration::from_millis(*pause)).await;
        let purge = flotilla::admin::purge(amqp_url, redis_url, names);
        match tokio::time::timeout(Duration::from_secs(20), purge).await {
            Ok(Ok(_)) => {}
            Ok(Err(error)) => eprintln!("test cleanup of {}: {error:#}", names.prefix()),
            Err(_) => eprintln!("test cleanup of {} timed out", names.prefix()),
        }
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let (names, amqp_url, redis_url) = (
            self.names.clone(),
            self.amqp_url.clone(),
            self.redis_url.clone(),
        );
        // Drop cannot await, and the test's runtime may be gone: a thread with
        // a runtime of its own does the work, bounded in time.
        let purge = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime for the test cleanup");
            runtime.block_on(purge_twice(&amqp_url, &redis_url, &names));
        });
        let _ = purge.join();
    }
}

impl Stack {
    pub async fn start(profile: FleetProfile) -> Self {
        Self::start_with(profile, REDIS_URL).await
    }

    /// A stack on RabbitMQ and Redis, or on the in-memory backends.
    pub async fn start_on(profile: FleetProfile, backend: Backend) -> Self {
        match backend {
            Backend::Real => Self::start_with(profile, REDIS_URL).await,
            Backend::Memory => {
                let prefix = format!("flotilla-test-{}", Uuid::new_v4());
                let url = format!("memory://{prefix}");
                Self::start_in(profile, &url, &url, Names::new(prefix)).await
            }
        }
    }

    /// A stack on the Redis at `redis_url`.
    pub async fn start_with(profile: FleetProfile, redis_url: &str) -> Self {
        let names = Names::new(format!("flotilla-test-{}", Uuid::new_v4()));
        Self::start_in(profile, AMQP_URL, redis_url, names).await
    }

    /// A stack on the brokers of `amqp_url` (several, comma-separated: a
    /// RabbitMQ cluster) and Redis on 127.0.0.1:6379.
    pub async fn start_on_brokers(profile: FleetProfile, amqp_url: &str) -> Self {
        let names = Names::new(format!("flotilla-test-{}", Uuid::new_v4()));
        Self::start_in(profile, amqp_url, REDIS_URL, names).await
    }

    /// A stack on the brokers of `amqp_url` (a RabbitMQ cluster) and the
    /// Redis of `redis_url` (a Redis Cluster, say).
    pub async fn start_on_clusters(profile: FleetProfile, amqp_url: &str, redis_url: &str) -> Self {
        let names = Names::new(format!("flotilla-test-{}", Uuid::new_v4()));
        Self::start_in(profile, amqp_url, redis_url, names).await
    }

    /// [`Stack::start_with`] under the prefix of `names` (a Redis ACL names it).
    pub async fn start_named(profile: FleetProfile, redis_url: &str, names: Names) -> Self {
        Self::start_in(profile, AMQP_URL, redis_url, names).await
    }

    async fn start_in(
        profile: FleetProfile,
        amqp_url: &str,
        redis_url: &str,
        names: Names,
    ) -> Self {
        let cleanup = Cleanup::new(&names, amqp_url, redis_url);
        let sim = SimServer::start(profile, "127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let store = match RedisStore::connect(redis_url, names.clone()).await {
            Ok(store) => store,
            Err(error) => panic!(
                "end-to-end tests need Redis on {redis_url}: {error}; start it with `redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save \"\" --appendonly no` or `docker compose up -d redis`"
            ),
        };
        let results = tempfile::tempdir().unwrap();
        let keys = protocol::signing::Keyring::ephemeral_deployment().unwrap();
        let mut config = SchedulerConfig::new(amqp_url, redis_url, names.clone());
        config.keys = keys.scheduler.clone();
        // A window smaller than most test fleets' locations: every run opens
        // discovery as locations finish, also through the failover tests.
        config.discovery_window = std::num::NonZeroUsize::new(3).unwrap();
        config.s3 = scheduler::sink::S3Settings {
            endpoint_url: Some(sim.endpoint_url()),
            region: Some("us-east-1".into()),
            credentials: Some((
                "AKIAFLOTILLASIMULATOR".into(),
                "flotilla-test-secret".into(),
            )),
            ..Default::default()
        };
        config.name = format!("scheduler-{}", names.prefix());
        // Gates and webhooks of the tests are loopback servers over http.
        config.egress = scheduler::egress::EgressPolicy::plain_http_to(&["127.0.0.1"]);
        // The tests' results directories are temporary ones; their buckets
        // are the simulator's.
        config.output_roots = scheduler::sink::OutputRoots {
            local: vec![std::env::temp_dir()],
            buckets: vec!["flotilla-results".into(), "locked-bucket".into()],
        };
        config.organizations = scheduler::organizations::OrganizationsSettings {
            endpoint_url: Some(sim.endpoint_url()),
            region: Some("us-east-1".into()),
            credentials: Some(caller_credentials(&sim)),
        };
        // The setup step (`flotilla admin arm`) declares the queues; the
        // services only check them.
        if let Err(error) =
            broker::Broker::declare_topology(amqp_url, &names, &Default::default()).await
        {
            panic!(
                "end-to-end tests need RabbitMQ on {amqp_url}: {error}; start it with `rabbitmq-server -detached` or `docker compose up -d rabbitmq`"
            );
        }
        let scheduler = match Scheduler::connect(config.clone()).await {
            Ok(scheduler) => scheduler,
            Err(error) => panic!(
                "end-to-end tests need RabbitMQ on {amqp_url} and Redis: {error}; start RabbitMQ with `rabbitmq-server -detached` or `docker compose up -d rabbitmq`"
            ),
        };
        // The explicit act that arms a new deployment (`flotilla admin arm`).
        assert_eq!(
            scheduler.arm_new_deployment("test-setup").await.unwrap(),
            store::Arming::Armed
        );
        let mut stack = Self {
            sim,
            names,
            store,
            amqp_url: amqp_url.to_string(),
            scheduler,
            scheduler_config: config,
            api_config: api::ApiConfig::default(),
            keys,
            results,
            attempt_timeout: Duration::from_secs(5),
            scheduler_task: None,
            workers: Vec::new(),
            handed_out: Vec::new(),
            processes: Vec::new(),
            skews: Vec::new(),
            cleanup: Some(cleanup),
        };
        stack.start_scheduler();
        stack
    }

    /// Runs the scheduler's report consumer (reconnecting) in this process.
    pub fn start_scheduler(&mut self) {
        self.start_scheduler_with_api(None);
    }

    /// Runs the scheduler, with its HTTP API on `listener` if given.
    pub fn start_scheduler_with_api(&mut self, listener: Option<tokio::net::TcpListener>) {
        let config = self.scheduler_config.clone();
        let api_config = self.api_config.clone();
        self.scheduler_task = Some(tokio::spawn(async move {
            api::run(config, api_config, listener, std::future::pending())
                .await
                .unwrap();
        }));
    }

    /// Restarts the stack's scheduler with its HTTP API on a free loopback
    /// port, waits until `/healthz` answers, and returns the port.
    pub async fn serve_api(&mut self) -> u16 {
        self.kill_scheduler();
        let port = free_port();
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .unwrap();
        self.start_scheduler_with_api(Some(listener));
        for _ in 0..50 {
            if http(port, "GET", "/healthz", "text/plain", "").await.0 == 200 {
                return port;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("the scheduler's API did not come up on port {port} within 5 s");
    }

    /// The settings the stack's scheduler (re)starts with.
    pub fn scheduler_config_mut(&mut self) -> &mut SchedulerConfig {
        &mut self.scheduler_config
    }

    /// How the stack's API is (re)started: authentication, TLS, limits.
    pub fn api_config_mut(&mut self) -> &mut api::ApiConfig {
        &mut self.api_config
    }

    /// The stack's scheduler settings, for starting more replicas.
    pub fn scheduler_config(&self) -> SchedulerConfig {
        self.scheduler_config.clone()
    }

    /// The RabbitMQ connection name of the stack's report-consuming scheduler.
    pub fn scheduler_connection_name(&self) -> String {
        self.scheduler_config.name.clone()
    }

    /// Aborts the scheduler's report consumer (as if the process died).
    pub fn kill_scheduler(&mut self) {
        if let Some(task) = self.scheduler_task.take() {
            task.abort();
        }
    }

    pub fn worker_config(&self, name: &str, concurrency: u16) -> WorkerConfig {
        let mut config = WorkerConfig::new(&self.amqp_url, self.names.clone());
        config.keys = self.keys.worker.clone();
        config.name = name.to_string();
        config.concurrency = NonZeroU16::new(concurrency).unwrap();
        config.shutdown_timeout = Duration::from_secs(5);
        config.aws = AwsSettings {
            endpoint_url: Some(self.sim.endpoint_url()),
            home_region: Some("us-east-1".into()),
            credentials: Some(caller_credentials(&self.sim)),
            attempt_timeout: Some(self.attempt_timeout),
        };
        config
    }

    /// Starts a worker in this process; abort its handle to kill it.
    pub fn spawn_worker(&mut self, name: &str, concurrency: u16) -> usize {
        let config = self.worker_config(name, concurrency);
        self.spawn_worker_with(config)
    }

    /// Starts a worker with `config` (see [`Stack::worker_config`]).
    pub fn spawn_worker_with(&mut self, config: WorkerConfig) -> usize {
        let store = self.store.clone();
        self.spawn_worker_on(config, store)
    }

    /// Starts a worker with `config` on `store` (another Redis user's connection).
    pub fn spawn_worker_on(&mut self, config: WorkerConfig, store: RedisStore) -> usize {
        self.workers.push(tokio::spawn(async move {
            worker::run(config, store, std::future::pending())
                .await
                .unwrap();
        }));
        self.workers.len() - 1
    }

    /// Starts a worker that stops gracefully when `shutdown` is sent; its handle
    /// returns what `worker::run` returned.
    pub fn spawn_stoppable_worker(
        &mut self,
        config: WorkerConfig,
    ) -> (
        tokio::sync::oneshot::Sender<()>,
        JoinHandle<anyhow::Result<()>>,
    ) {
        let (shutdown, stopped) = tokio::sync::oneshot::channel::<()>();
        let store = self.store.clone();
        let handle = tokio::spawn(async move {
            worker::run(config, store, async {
                let _ = stopped.await;
            })
            .await
        });
        self.handed_out.push(handle.abort_handle());
        (shutdown, handle)
    }

    /// Starts `flotilla worker` (`service` "worker") or `flotilla scheduler`
    /// (`service` "scheduler", serving its API on a free loopback port) on
    /// this stack, in a process of its own whose wall clock libfaketime
    /// shifts by `offset` ("+5m", "-5m"). Killed at teardown.
    pub fn spawn_skewed(&mut self, service: &str, name: &str, offset: &str) {
        self.spawn_process(service, name, Some(offset), &[]);
    }

    /// Starts `flotilla worker` or `flotilla scheduler` as
    /// [`Stack::spawn_skewed`] does, on the true time, with `env` set
    /// besides (e.g. `FLOTILLA_NOTIFY_WEBHOOK`). [`Stack::kill_process`]
    /// SIGKILLs it.
    pub fn spawn_service(&mut self, service: &str, name: &str, env: &[(&str, String)]) {
        self.spawn_process(service, name, None, env);
    }

    /// SIGKILLs the process `name` of [`Stack::spawn_service`] or
    /// [`Stack::spawn_skewed`] and waits for it to be gone.
    pub async fn kill_process(&mut self, name: &str) {
        let index = self
            .skews
            .iter()
            .position(|skewed| skewed.name == name)
            .unwrap_or_else(|| panic!("no process named {name}"));
        self.skews.remove(index);
        let mut child = self.processes.remove(index);
        child.start_kill().expect("SIGKILL");
        child.wait().await.expect("the killed process's status");
    }

    fn spawn_process(
        &mut self,
        service: &str,
        name: &str,
        offset: Option<&str>,
        env: &[(&str, String)],
    ) {
        let keys = &self.keys;
        let scheduler_key = keys.scheduler.signer().unwrap();
        let worker_key = keys.worker.signer().unwrap();
        let signer = if service == "scheduler" {
            scheduler_key
        } else {
            worker_key
        };
        let trusted = format!(
            "{};{}",
            scheduler_key.public_line(),
            worker_key.public_line()
        );
        // The library itself, not the `faketime` wrapper, which would run
        // the service as a child of its own that a kill leaves running.
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_flotilla"));
        command
            // The prefix on the command line: scripts/test's sweep kills a
            // process a killed test run left, by it.
            .args([service, "--prefix", self.names.prefix()])
            .env("FLOTILLA_AMQP_URL", &self.amqp_url)
            .env("FLOTILLA_REDIS_URL", &self.scheduler_config.redis_url)
            .env("FLOTILLA_SIGNING_KEY", signer.to_secret_text())
            .env("FLOTILLA_TRUSTED_KEYS", trusted)
            .env("FLOTILLA_AWS_ENDPOINT_URL", self.sim.endpoint_url())
            .env("FLOTILLA_AWS_REGION", "us-east-1")
            .env(
                "AWS_ACCESS_KEY_ID",
                &self.sim.state.fleet.profile.caller_access_key_id,
            )
            .env("AWS_SECRET_ACCESS_KEY", "flotilla-test-secret")
            .env("RUST_LOG", "info")
            .envs(env.iter().map(|(name, value)| (name, value)))
            .kill_on_drop(true);
        if let Some(offset) = offset {
            command
                .env("LD_PRELOAD", libfaketime())
                .env("FAKETIME", offset)
                // Wall clock only: the monotonic one (timers) is left alone.
                .env("FAKETIME_DONT_FAKE_MONOTONIC", "1");
        }
        let port = free_port();
        if service == "scheduler" {
            command
                .env("FLOTILLA_API_ADDR", format!("127.0.0.1:{port}"))
                .env("FLOTILLA_INSECURE_NO_AUTH", "true")
                .env("FLOTILLA_OUTPUT_ROOTS", std::env::temp_dir())
                .env("FLOTILLA_AUDIT_OUTPUT", self.results.path().join("audit"))
                .env("FLOTILLA_DISCOVERY_WINDOW", "3");
        } else {
            command
                .env("FLOTILLA_METRICS_ADDR", format!("127.0.0.1:{port}"))
                .env("FLOTILLA_WORKER_NAME", name)
                .env("FLOTILLA_WORKER_CONCURRENCY", "8")
                .env("FLOTILLA_SHUTDOWN_TIMEOUT", "1s");
        }
        command
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let mut child = command
            .spawn()
            .unwrap_or_else(|error| panic!("starting {service} {name}: {error}"));
        // Its logs go to the test's output, and the offset it measured from
        // Redis is kept: proof that its clock was skewed at all.
        let offset = Arc::new(Mutex::new(None));
        for output in [
            child
                .stdout
                .take()
                .map(|out| Box::new(out) as Box<dyn AsyncRead + Send + Unpin>),
            child
                .stderr
                .take()
                .map(|err| Box::new(err) as Box<dyn AsyncRead + Send + Unpin>),
        ]
        .into_iter()
        .flatten()
        {
            let (name, offset) = (name.to_string(), offset.clone());
            tokio::spawn(async move {
                let mut lines = BufReader::new(output).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    if let Some(measured) = line
                        .split("offset_ms=")
                        .nth(1)
                        .and_then(|rest| rest.split_whitespace().next())
                        .and_then(|value| value.parse::<i64>().ok())
                    {
                        *offset.lock().unwrap() = Some(measured);
                    }
                    eprintln!("[{name}] {line}");
                }
            });
        }
        self.processes.push(child);
        self.skews.push(Skewed {
            name: name.to_string(),
            metrics_port: port,
            offset,
        });
    }

    /// The offset from Redis's clock each skewed process measured (its
    /// `clock: on Redis's time` line), by name; `None` before it logged one.
    pub fn measured_skews(&self) -> Vec<(String, Option<i64>)> {
        self.skews
            .iter()
            .map(|skewed| (skewed.name.clone(), *skewed.offset.lock().unwrap()))
            .collect()
    }

    /// The loopback port a skewed process serves `/metrics` on (a worker's
    /// metrics address, a scheduler's API).
    pub fn skewed_metrics_port(&self, name: &str) -> u16 {
        self.skews
            .iter()
            .find(|skewed| skewed.name == name)
            .map(|skewed| skewed.metrics_port)
            .unwrap_or_else(|| panic!("no skewed process named {name}"))
    }

    /// The name and process id of each process of [`Stack::spawn_service`]
    /// and [`Stack::spawn_skewed`] still running.
    pub fn process_ids(&self) -> Vec<(String, u32)> {
        self.skews
            .iter()
            .zip(&self.processes)
            .filter_map(|(skewed, child)| Some((skewed.name.clone(), child.id()?)))
            .collect()
    }

    /// Panics if a process of [`Stack::spawn_skewed`] has exited.
    pub fn assert_processes_running(&mut self) {
        for process in &mut self.processes {
            if let Ok(Some(status)) = process.try_wait() {
                panic!("a service process exited ({status}): see its lines above");
            }
        }
    }

    pub fn kill_worker(&mut self, index: usize) {
        self.workers[index].abort();
    }

    pub fn inject(&self, fault: sim::state::Fault) {
        let mut inner = self.sim.state.lock();
        match fault {
            sim::state::Fault::DelayNext {
                operation,
                millis,
                count,
            } => inner.delay_next.push((operation, millis, count)),
            sim::state::Fault::FailNext {
                operation,
                code,
                count,
            } => inner.fail_next.push((operation, code, count)),
            other => panic!("inject {other:?} through the simulator's admin API"),
        }
    }

    pub fn calls(&self, operation: &str) -> u64 {
        self.sim
            .state
            .lock()
            .stats
            .calls
            .get(operation)
            .copied()
            .unwrap_or(0)
    }

    pub fn account_ids(&self) -> Vec<String> {
        (0..self.sim.state.fleet.profile.accounts)
            .map(|account| self.sim.state.fleet.account_id(account))
            .collect()
    }

    /// A campaign over every account and region of the fleet; `rest` is YAML
    /// for steps, rate control and anything else.
    pub fn campaign(&self, name: &str, rest: impl AsRef<str>) -> Campaign {
        self.campaign_in(name, &self.account_ids(), rest)
    }

    /// A campaign over `account_ids` in every region of the fleet.
    pub fn campaign_in(
        &self,
        name: &str,
        account_ids: &[String],
        rest: impl AsRef<str>,
    ) -> Campaign {
        self.campaign_selecting(name, account_ids, "all: true\n  online_only: false", rest)
    }

    /// A campaign over `account_ids` in every region of the fleet whose
    /// `targets:` block is `targets` (indented by two spaces after its first line).
    pub fn campaign_selecting(
        &self,
        name: &str,
        account_ids: &[String],
        targets: &str,
        rest: impl AsRef<str>,
    ) -> Campaign {
        let rest = rest.as_ref();
        // A test's own `output:` replaces the local results directory.
        let output = if rest.contains("\noutput:") || rest.starts_with("output:") {
            String::new()
        } else {
            format!("output: {}\n", self.results.path().display())
        };
        let profile = &self.sim.state.fleet.profile;
        let accounts: Vec<String> = account_ids.iter().map(|id| format!("\"{id}\"")).collect();
        let regions = profile.regions.join(", ");
        let yaml = format!(
            "name: {name}\nversion: 1\naccounts:\n  ids: [{}]\nregions: [{regions}]\nrole:\n  name: {}\ntargets:\n  {targets}\n{output}{rest}",
            accounts.join(", "),
            profile.role_name,
        );
        match Campaign::parse(&yaml, SpecFormat::Yaml) {
            Ok(campaign) => campaign,
            Err(errors) => panic!("test campaign is invalid: {errors}\n{yaml}"),
        }
    }

    /// Stores `campaign` as one principal and approves it as another (the
    /// two-person rule), so its schedules and triggers may fire.
    pub async fn apply_approved(&self, campaign: &Campaign) {
        let applied = self
            .scheduler
            .apply_campaign_by(campaign, "test-author")
            .await
            .unwrap();
        let approver = scheduler::auth::Principal {
            name: "test-approver".into(),
            role: scheduler::auth::Role::Approver,
            issued_by: None,
        };
        self.scheduler
            .approve_campaign(&campaign.name, applied.version, &approver)
            .await
            .unwrap();
    }

    /// Starts a run of `campaign` with default options.
    pub async fn start_run(&self, campaign: &Campaign) -> Uuid {
        self.scheduler
            .start_run_unchecked(campaign, scheduler::StartOptions::default())
            .await
            .unwrap()
    }

    /// Waits until the simulator has received `count` commands.
    pub async fn wait_for_commands(&self, count: usize) {
        self.wait_for(
            &format!("{count} commands"),
            Duration::from_secs(30),
            |stack| stack.commands().len() >= count,
        )
        .await;
    }

    /// Waits until the run is finished: final, with every result in.
    pub async fn wait_until_final(&self, run_id: Uuid, limit: Duration) -> RunProgress {
        let started = tokio::time::Instant::now();
        loop {
            let progress = match self.scheduler.progress(run_id).await {
                Ok(progress) => progress,
                // A Redis failover: the state is there again in a moment.
                Err(error) if error.is_retryable() && started.elapsed() < limit => {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
                Err(error) => panic!("the run's progress cannot be read: {error}"),
            };
            if progress.finished {
                return progress;
            }
            assert!(
                started.elapsed() < limit,
                "run did not finish within {limit:?}: {progress:#?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn wait_for(&self, what: &str, limit: Duration, mut done: impl FnMut(&Self) -> bool) {
        let started = tokio::time::Instant::now();
        while !done(self) {
            assert!(started.elapsed() < limit, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn results_dir(&self) -> PathBuf {
        self.results.path().to_path_buf()
    }

    pub fn records(&self, run_id: Uuid) -> Vec<ResultRecord> {
        sink::read_run(self.results.path(), run_id).unwrap()
    }

    /// Every result of a run written under the local directory `dir` (a
    /// campaign's own `output:`).
    pub fn records_in(&self, dir: &std::path::Path, run_id: Uuid) -> Vec<ResultRecord> {
        sink::read_run(dir, run_id).unwrap()
    }

    /// Every result of a run written to the simulator's S3 under `bucket/prefix`.
    pub async fn s3_records(&self, bucket: &str, prefix: &str, run_id: Uuid) -> Vec<ResultRecord> {
        let store = sink::ResultsStore::s3(
            bucket,
            prefix,
            &sink::S3Settings {
                endpoint_url: Some(self.sim.endpoint_url()),
                region: Some("us-east-1".into()),
                credentials: Some(("AKIAFLOTILLASIMULATOR".into(), "secret".into())),
                ..Default::default()
            },
        )
        .unwrap();
        store.read_run(run_id).await.unwrap()
    }

    /// SendCommands the simulator received, oldest first.
    pub fn commands(&self) -> Vec<SentCommand> {
        sim::admin::command_records(&self.sim.state)
    }

    /// How often each (instance, document) ran in the simulator.
    pub fn executions(&self) -> HashMap<(sim::fleet::InstanceKey, u32), u32> {
        self.sim.state.lock().executions.clone()
    }

    /// How many commands ran on the instance `instance_id` in the simulator.
    pub fn runs_on(&self, instance_id: &str) -> u32 {
        let key = self.sim.state.fleet.parse_instance_id(instance_id);
        self.executions()
            .iter()
            .filter(|((instance, _), _)| Some(*instance) == key)
            .map(|(_, count)| count)
            .sum()
    }

    /// The fleet's instances whose tag `tag` has the value `value`.
    pub fn instances_tagged(&self, tag: &str, value: &str) -> Vec<String> {
        let fleet = &self.sim.state.fleet;
        self.fleet_instance_ids()
            .into_iter()
            .filter(|id| {
                fleet.parse_instance_id(id).is_some_and(|key| {
                    fleet
                        .instance(key)
                        .tags
                        .iter()
                        .any(|(t, v)| t == tag && v == value)
                })
            })
            .collect()
    }

    /// Every instance id of the simulated fleet.
    pub fn fleet_instance_ids(&self) -> Vec<String> {
        let fleet = &self.sim.state.fleet;
        let regions = fleet.profile.regions.len() as u8;
        (0..fleet.profile.accounts)
            .flat_map(|account| (0..regions).map(move |region| (account, region)))
            .flat_map(|(account, region)| fleet.location_instances(account, region))
            .map(|key| fleet.instance_id(key))
            .collect()
    }

    /// Checks the run completed with exactly one result per target and that no
    /// target ran the step twice.
    pub fn assert_each_target_ran_once(&self, run_id: Uuid, progress: &RunProgress) {
        assert_eq!(
            progress.state,
            protocol::run::RunState::Completed,
            "{progress:#?}"
        );
        let instances = self.fleet_instance_ids();
        let records = self.records(run_id);
        let mut seen = std::collections::HashSet::new();
        for record in &records {
            assert!(
                seen.insert(record.instance_id.clone()),
                "two results for {}",
                record.instance_id
            );
        }
        assert_eq!(records.len(), instances.len(), "one result per target");
        let executions = self.executions();
        assert!(
            executions.values().all(|runs| *runs == 1),
            "a target ran the step twice: {:?}",
            executions.values().max()
        );
    }

    /// Stops the stack's scheduler and workers and removes its queues and keys.
    pub async fn teardown(mut self) {
        self.stop_tasks();
        if let Some(cleanup) = self.cleanup.take() {
            // Connections of its own: the test may have cut the stack's.
            cleanup.run().await;
        }
    }

    fn stop_tasks(&mut self) {
        for worker in &self.workers {
            worker.abort();
        }
        for task in &self.handed_out {
            task.abort();
        }
        for process in &mut self.processes {
            let _ = process.start_kill();
        }
        self.kill_scheduler();
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        // Stop the tasks before the cleanup deletes their queues, so that no
        // reconnecting scheduler declares them again.
        self.stop_tasks();
    }
}

pub use sim::admin::CommandRecord as SentCommand;

/// What a worker reports on discovering `count` instances (`i-…0`, `i-…1`,
/// …; online, platform unknown) in `location`: its pages of at most 50, as
/// DescribeInstanceInformation answers.
pub fn discovered(
    run_id: Uuid,
    location: &protocol::job::Location,
    count: u32,
) -> Vec<protocol::Report> {
    let ids: Vec<u32> = (0..count).collect();
    let pages = ids.chunks(protocol::job::MAX_BATCH_SIZE).count();
    (0u32..)
        .zip(ids.chunks(protocol::job::MAX_BATCH_SIZE))
        .map(|(page, chunk)| {
            protocol::Report::TargetsDiscovered(protocol::report::TargetsDiscovered {
                run_id,
                location: location.clone(),
                page,
                targets: chunk
                    .iter()
                    .map(|n| protocol::report::DiscoveredTarget {
                        instance_id: format!("i-{n:017x}"),
                        platform: None,
                        online: true,
                        window: None,
                    })
                    .collect(),
                last_page: page as usize + 1 == pages,
            })
        })
        .collect()
}

/// libfaketime's multi-threaded library (Debian's `libfaketime`, which the
/// `faketime` package brings); the test fails with how to install it.
fn libfaketime() -> PathBuf {
    let mut candidates = vec![PathBuf::from("/usr/lib/faketime/libfaketimeMT.so.1")];
    if let Ok(entries) = std::fs::read_dir("/usr/lib") {
        for entry in entries.flatten() {
            candidates.push(entry.path().join("faketime/libfaketimeMT.so.1"));
        }
    }
    candidates
        .into_iter()
        .find(|path| path.exists())
        .unwrap_or_else(|| {
            panic!(
                "this test needs libfaketime to skew a service's clock: `apt-get install faketime`, or run the tests with scripts/test, which installs it"
            )
        })
}

pub fn now_unix_ms() -> u64 {
    protocol::job::UnixMillis::now().0
}

// Not every test binary uses both.
#[allow(unused_imports)]
pub use test_support::ports::free_port;
#[allow(unused_imports)]
pub use test_support::redis::PrivateRedis;

/// One HTTP/1.0 request to 127.0.0.1:`port`; (status, body).
pub async fn http(
    port: u16,
    method: &str,
    path: &str,
    content_type: &str,
    body: &str,
) -> (u16, String) {
    http_as(port, None, method, path, content_type, body).await
}

/// An HTTP/1.0 request on loopback with `token` as the bearer token; (status,
/// body).
pub async fn http_as(
    port: u16,
    token: Option<&str>,
    method: &str,
    path: &str,
    content_type: &str,
    body: &str,
) -> (u16, String) {
    let authorization = token
        .map(|token| format!("Authorization: Bearer {token}\r\n"))
        .unwrap_or_default();
    let request = format!(
        "{method} {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n{authorization}Content-Type: {content_type}\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let (status, _, body) = http_exchange(port, &request).await;
    (status, body)
}

/// A JSON request to the API on 127.0.0.1:`port` as the holder of `token`;
/// (status, body).
pub async fn call(port: u16, token: &str, method: &str, path: &str, body: &str) -> (u16, String) {
    http_as(port, Some(token), method, path, "application/json", body).await
}

/// One raw HTTP/1.0 exchange on loopback (5 s to connect, 10 s to answer):
/// (status, head, body).
pub async fn http_exchange(port: u16, request: &str) -> (u16, String, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::time::timeout(
        Duration::from_secs(5),
        tokio::net::TcpStream::connect(("127.0.0.1", port)),
    )
    .await
    .unwrap()
    .unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut response))
        .await
        .unwrap()
        .unwrap();
    let response = String::from_utf8(response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, head.to_string(), body.to_string())
}

/// Appends a token for `name` with `role` to the tokens file at `path`;
/// returns the token.
pub fn add_token(
    path: &std::path::Path,
    name: &str,
    role: scheduler::auth::Role,
    expires_ms: Option<u64>,
) -> String {
    let token = scheduler::auth::new_token().unwrap();
    api::auth::append_tokens_file(
        path,
        &scheduler::auth::TokenRecord {
            name: name.into(),
            role,
            sha256: scheduler::auth::token_hash(&token),
            created_ms: now_unix_ms(),
            expires_ms,
            created_by: "test".into(),
        },
    )
    .unwrap();
    token
}

/// The value of one series in a Prometheus text exposition (`series` as it
/// appears there, labels and all); `None` when it is not exposed.
pub fn metric_value(exposition: &str, series: &str) -> Option<f64> {
    exposition.lines().find_map(|line| {
        line.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

/// Ready messages in `queues` of `broker`'s deployment, together.
pub async fn ready_in(broker: &broker::Broker, queues: &[String]) -> u32 {
    broker
        .queue_depths()
        .await
        .unwrap()
        .into_iter()
        .filter(|(queue, _)| queues.contains(queue))
        .map(|(_, ready)| ready)
        .sum()
}

/// GET `path` from 127.0.0.1:`port`; the body of a 200 answer.
pub async fn http_get(port: u16, path: &str) -> String {
    let (status, body) = http(port, "GET", path, "text/plain", "").await;
    assert_eq!(status, 200, "GET {path}: {body}");
    body
}

/// Closes every RabbitMQ connection named `name` from the broker's side, as a
/// broker restart or a network cut would (uses `rabbitmqctl`).
pub fn close_rabbitmq_connections(name: &str) -> usize {
    let listing = std::process::Command::new("rabbitmqctl")
        .args([
            "list_connections",
            "pid",
            "client_properties",
            "-q",
            "--no-table-headers",
        ])
        .output()
        .unwrap_or_else(|error| panic!("this test needs rabbitmqctl on the PATH: {error}"));
    assert!(
        listing.status.success(),
        "rabbitmqctl list_connections failed"
    );
    let listing = String::from_utf8(listing.stdout).unwrap();
    let marker = format!("{{\"connection_name\",\"{name}\"}}");
    let mut closed = 0;
    for line in listing.lines().filter(|line| line.contains(&marker)) {
        let pid = line.split('\t').next().unwrap();
        let output = std::process::Command::new("rabbitmqctl")
            .args(["close_connection", pid, "flotilla test: connection cut"])
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "rabbitmqctl close_connection {pid} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        closed += 1;
    }
    closed
}

/// The web console over plain HTTP: raw requests with a session cookie, and
/// signing in.
pub mod console {
    pub async fn exchange(port: u16, request: String) -> (u16, String, String) {
        super::http_exchange(port, &request).await
    }

    pub fn get(path: &str, cookie: Option<&str>) -> String {
        let cookie = cookie
            .map(|c| format!("Cookie: flotilla_session={c}\r\n"))
            .unwrap_or_default();
        format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n{cookie}\r\n")
    }

    pub fn post_form(path: &str, cookie: Option<&str>, form: &[(&str, &str)]) -> String {
        let cookie = cookie
            .map(|c| format!("Cookie: flotilla_session={c}\r\n"))
            .unwrap_or_default();
        let body = serde_urlencoded::to_string(form).unwrap();
        format!(
            "POST {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n{cookie}Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
    }

    /// The value a `Set-Cookie` header of `head` gives cookie `name`.
    pub fn set_cookie(head: &str, name: &str) -> Option<String> {
        head.lines()
            .filter(|line| line.to_ascii_lowercase().starts_with("set-cookie:"))
            .find_map(|line| {
                let value = line.split_once(&format!("{name}="))?.1;
                Some(value.split(';').next()?.to_string())
            })
    }

    /// A sign-in post as the sign-in page makes it: the page's cookie and
    /// the value its form repeats (fetched first), then `form`.
    pub async fn login_post(port: u16, form: &[(&str, &str)]) -> String {
        let (status, head, page) = exchange(port, get("/ui/login", None)).await;
        assert_eq!(status, 200, "{head}\n{page}");
        let nonce = set_cookie(&head, "flotilla_login")
            .unwrap_or_else(|| panic!("the sign-in page sets no form cookie: {head}"));
        assert!(
            page.contains(&format!("name=\"login_csrf\" value=\"{nonce}\"")),
            "the form repeats the cookie's value: {page}"
        );
        let mut form = form.to_vec();
        form.push(("login_csrf", &nonce));
        let body = serde_urlencoded::to_string(&form).unwrap();
        format!(
            "POST /ui/login HTTP/1.0\r\nHost: 127.0.0.1\r\nCookie: flotilla_login={nonce}\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
    }

    /// Signs in with `token`: the session cookie and the page's CSRF token.
    pub async fn sign_in(port: u16, token: &str) -> (String, String) {
        let login = login_post(port, &[("token", token), ("next", "/ui/runs")]).await;
        let (status, head, body) = exchange(port, login).await;
        assert_eq!(status, 303, "{head}\n{body}");
        let set_cookie = head
            .lines()
            .find(|line| {
                line.to_ascii_lowercase().starts_with("set-cookie:")
                    && line.contains("flotilla_session=")
            })
            .unwrap_or_else(|| panic!("no session cookie: {head}"));
        for attribute in ["HttpOnly", "SameSite=Strict", "Path=/ui"] {
            assert!(
                set_cookie.contains(attribute),
                "{set_cookie} lacks {attribute}"
            );
        }
        let cookie = set_cookie
            .split_once("flotilla_session=")
            .unwrap()
            .1
            .split(';')
            .next()
            .unwrap()
            .to_string();
        let (status, _, page) = exchange(port, get("/ui/runs", Some(&cookie))).await;
        assert_eq!(status, 200, "{page}");
        let csrf = page
            .split("name=\"csrf\" value=\"")
            .nth(1)
            .and_then(|rest| rest.split('"').next())
            .unwrap()
            .to_string();
        (cookie, csrf)
    }
}

//! `flotilla bench`: real campaigns against the simulator, on real RabbitMQ and
//! Redis, with every flotilla service in its own process (this binary), so each
//! one's CPU time and peak memory can be read from `/proc`. Prints a table and
//! writes a JSON report. Not a test: it asserts nothing, it measures.
//!
//! Scenarios (`--scenario`, all by default):
//! - `scan`: a patch Scan of the whole fleet (`large`: 1,000,000 instances in
//!   10,000 accounts × 2 regions; `--quick`: 20,000 in 200 × 2); its first
//!   seconds are also the **fanout** figures (all Discover jobs published, the
//!   first SendCommand);
//! - `rate-fidelity`: SendCommand limited to 5/s per location, far below the
//!   simulator's 20/s: the achieved rate as a fraction of the allowed one;
//! - `killswitch`: trials of engage → last SendCommand the simulator saw →
//!   release, in the middle of a scan that must still finish with one result
//!   per target;
//! - `scale-out`: 1, 2, 4, 8 worker processes on commands that take seconds;
//! - `embedded`: the `scan` fleet on the in-memory backends, in this process.

use std::collections::{BTreeMap, HashSet};
use std::io::Write;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Args, ValueEnum};
use protocol::signing::{SignerKind, SigningIdentity};
use scheduler::RunProgress;
use serde::Serialize;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::client::ApiClient;

const SIM_KEY: &str = "AKIAFLOTILLASIMULATOR";

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scenario {
    Scan,
    RateFidelity,
    Killswitch,
    ScaleOut,
    Embedded,
}

#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    /// Small fleets and few trials: under a minute, for regular use.
    #[arg(long)]
    pub quick: bool,
    /// Scenarios to run (repeatable); all when absent.
    #[arg(long, value_enum)]
    pub scenario: Vec<Scenario>,
    /// Worker processes of the scan, killswitch and rate-fidelity scenarios.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub workers: u16,
    /// Jobs each worker handles at once.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u16).range(1..))]
    pub worker_concurrency: u16,
    /// Kill-switch trials (default 20, 5 with --quick).
    #[arg(long)]
    pub trials: Option<u32>,
    #[arg(long, default_value = "amqp://guest:guest@127.0.0.1:5672/%2f")]
    pub amqp_url: String,
    #[arg(long, default_value = "redis://127.0.0.1:6379/")]
    pub redis_url: String,
    /// Where the JSON report goes.
    #[arg(long, default_value = "flotilla-bench.json")]
    pub json: PathBuf,
}

/// CPU seconds and peak memory of one process over a measurement.
#[derive(Debug, Clone, Serialize)]
struct ProcessCost {
    name: String,
    cpu_seconds: f64,
    peak_rss_mib: Option<f64>,
}

#[derive(Debug, Clone, Default, Serialize)]
struct RunFigures {
    targets: u64,
    wall_seconds: f64,
    targets_per_second: f64,
    state: String,
    /// Targets with exactly one result in the results files, and any with more.
    targets_with_one_result: u64,
    targets_with_several_results: u64,
    messages_published_per_target: f64,
    aws_calls_per_target: BTreeMap<String, f64>,
    throttles: BTreeMap<String, u64>,
    redis_commands_per_target: f64,
    cpu_seconds_per_10k_targets: BTreeMap<String, f64>,
    processes: Vec<ProcessCost>,
    fanout: Option<Fanout>,
}

#[derive(Debug, Clone, Serialize)]
struct Fanout {
    locations: u64,
    all_discover_published_seconds: Option<f64>,
    first_send_command_seconds: Option<f64>,
}

/// Ticks of `/proc/<pid>/stat` per second (Linux's USER_HZ, 100 everywhere it runs).
const CLOCK_TICKS: f64 = 100.0;

fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces; fields after it are fixed.
    let after_name = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / CLOCK_TICKS)
}

fn peak_rss_mib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|line| line.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// The oldest process whose command line matches, e.g. RabbitMQ's `beam.smp`.
fn pid_of(pattern: &str) -> Option<u32> {
    let output = Command::new("pgrep")
        .args(["-o", "-f", pattern])
        .output()
        .ok()?;
    String::from_utf8_lossy(&output.stdout).trim().parse().ok()
}

fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Sums a Prometheus text exposition's samples of `name` whose labels pass `keep`.
fn metric_sum(text: &str, name: &str, keep: impl Fn(&str) -> bool) -> f64 {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (metric, labels) = match series.split_once('{') {
                Some((metric, labels)) => (metric, labels),
                None => (series, ""),
            };
            (metric == name && keep(labels)).then(|| value.parse::<f64>().ok())?
        })
        .sum()
}

fn http_text(url: &str) -> anyhow::Result<String> {
    let mut response = ureq::get(url)
        .call()
        .with_context(|| format!("GET {url}"))?;
    Ok(response.body_mut().read_to_string()?)
}

fn http_json(url: &str) -> anyhow::Result<Value> {
    Ok(serde_json::from_str(&http_text(url)?)?)
}

fn wait_for(url: &str, what: &str, within: Duration) -> anyhow::Result<()> {
    let began = Instant::now();
    while http_text(url).is_err() {
        if began.elapsed() > within {
            bail!("{what} did not answer at {url} within {within:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// A fleet profile the simulator reads from a file.
fn profile_file(dir: &Path, name: &str, profile: &sim::FleetProfile) -> anyhow::Result<PathBuf> {
    let path = dir.join(format!("{name}.yaml"));
    std::fs::write(&path, serde_norway::to_string(profile)?)?;
    Ok(path)
}

fn account_ids(profile: &sim::FleetProfile) -> Vec<String> {
    (0..profile.accounts).map(sim::fleet::account_id).collect()
}

/// A scan of every instance of the fleet, everything at once, with `send_command`
/// calls per second per location.
fn scan_campaign(
    name: &str,
    profile: &sim::FleetProfile,
    send_command: f64,
    output: &Path,
) -> Value {
    json!({
        "name": name,
        "steps": [{"name": "scan", "document": "AWS-RunPatchBaseline",
                   "parameters": {"Operation": "Scan"}, "timeout": "30m"}],
        "accounts": {"ids": account_ids(profile)},
        "regions": profile.regions,
        "role": {"name": "FlotillaExecutionRole"},
        // Offline instances would hold their batch until the step's timeout.
        "targets": {"all": true, "online_only": true},
        "rate_control": {"location_concurrency": "100%", "location_max_errors": "10%",
                         "max_concurrency": "100%", "max_errors": "100%"},
        "api_rate_limits": {"send_command": send_command, "list_command_invocations": 15,
                            "describe_instance_information": 15, "assume_role": 15},
        "output": output.display().to_string(),
    })
}

/// The simulator, a scheduler and workers, each a process of this binary.
struct Cluster {
    dir: PathBuf,
    sim_url: String,
    api: ApiClient,
    api_url: String,
    worker_metrics: Vec<String>,
    processes: Vec<(String, Child)>,
    names: protocol::names::Names,
    amqp_url: String,
    redis_url: String,
}

impl Cluster {
    fn start(
        args: &BenchArgs,
        dir: &Path,
        profile: &Path,
        workers: u16,
        worker_concurrency: u16,
    ) -> anyhow::Result<Self> {
        let exe = std::env::current_exe().context("cannot find the flotilla binary")?;
        let prefix = format!(
            "flotilla-bench-{}",
            &Uuid::new_v4().simple().to_string()[..8]
        );
        let logs = dir.join("logs");
        std::fs::create_dir_all(&logs)?;
        // Keys of this bench's own, handed to each process in its environment.
        let scheduler_key = SigningIdentity::generate(SignerKind::Scheduler, "bench-scheduler")?;
        let worker_key = SigningIdentity::generate(SignerKind::Worker, "bench-worker")?;
        let keyring = format!(
            "{}\n{}\n",
            scheduler_key.public_line(),
            worker_key.public_line()
        );
        let spawn = |name: &str, arguments: Vec<String>| -> anyhow::Result<(String, Child)> {
            let log = std::fs::File::create(logs.join(format!("{name}.log")))?;
            let signing = if name == "scheduler" {
                &scheduler_key
            } else {
                &worker_key
            };
            let child = Command::new(&exe)
                .args(&arguments)
                .env("FLOTILLA_SIGNING_KEY", signing.to_secret_text())
                .env("FLOTILLA_TRUSTED_KEYS", &keyring)
                .env("RUST_LOG", "warn,lapin=error")
                .env("AWS_ACCESS_KEY_ID", SIM_KEY)
                .env("AWS_SECRET_ACCESS_KEY", "flotilla-bench")
                .env("AWS_REGION", "us-east-1")
                .env("FLOTILLA_AMQP_URL", &args.amqp_url)
                .env("FLOTILLA_REDIS_URL", &args.redis_url)
                .env("FLOTILLA_PREFIX", &prefix)
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .with_context(|| format!("cannot start {name}"))?;
            Ok((name.to_string(), child))
        };
        let mut processes = Vec::new();
        let sim_port = free_port()?;
        let sim_url = format!("http://127.0.0.1:{sim_port}");
        processes.push(spawn(
            "simulator",
            vec![
                "sim".into(),
                "--profile".into(),
                profile.display().to_string(),
                "--listen".into(),
                format!("127.0.0.1:{sim_port}"),
            ],
        )?);
        wait_for(
            &format!("{sim_url}/_sim/stats"),
            "the simulator",
            Duration::from_secs(60),
        )?;
        let api_port = free_port()?;
        let api_url = format!("http://127.0.0.1:{api_port}");
        processes.push(spawn(
            "scheduler",
            vec![
                "scheduler".into(),
                "--listen".into(),
                format!("127.0.0.1:{api_port}"),
                "--aws-endpoint-url".into(),
                sim_url.clone(),
            ],
        )?);
        wait_for(
            &format!("{api_url}/campaigns"),
            "the scheduler",
            Duration::from_secs(30),
        )?;
        let mut worker_metrics = Vec::new();
        for index in 0..workers {
            let port = free_port()?;
            let metrics: SocketAddr = ([127, 0, 0, 1], port).into();
            processes.push(spawn(
                &format!("worker-{index}"),
                vec![
                    "worker".into(),
                    "--aws-endpoint-url".into(),
                    sim_url.clone(),
                    "--metrics-addr".into(),
                    metrics.to_string(),
                    "--concurrency".into(),
                    worker_concurrency.to_string(),
                    "--name".into(),
                    format!("bench-worker-{index}"),
                ],
            )?);
            worker_metrics.push(format!("http://{metrics}/metrics"));
        }
        for url in &worker_metrics {
            wait_for(url, "a worker", Duration::from_secs(30))?;
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            sim_url,
            api: ApiClient::new(&api_url),
            api_url,
            worker_metrics,
            processes,
            names: protocol::names::Names::new(prefix),
            amqp_url: args.amqp_url.clone(),
            redis_url: args.redis_url.clone(),
        })
    }

    fn pids(&self) -> Vec<(String, u32)> {
        let mut pids: Vec<(String, u32)> = self
            .processes
            .iter()
            .map(|(name, child)| (name.clone(), child.id()))
            .collect();
        if let Some(pid) = pid_of("beam.smp") {
            pids.push(("rabbitmq".into(), pid));
        }
        if let Some(pid) = pid_of("redis-server") {
            pids.push(("redis".into(), pid));
        }
        pids
    }

    fn sim_stats(&self) -> anyhow::Result<Value> {
        http_json(&format!("{}/_sim/stats", self.sim_url))
    }

    fn scheduler_metrics(&self) -> anyhow::Result<String> {
        http_text(&format!("{}/metrics", self.api_url))
    }

    /// Jobs and reports published: the scheduler's jobs, the reports it received,
    /// and every job a worker put back (continued, waiting, retried).
    fn messages_published(&self) -> anyhow::Result<f64> {
        let scheduler = self.scheduler_metrics()?;
        let mut total = metric_sum(
            &scheduler,
            "flotilla_scheduler_jobs_published_total",
            |_| true,
        ) + metric_sum(&scheduler, "flotilla_scheduler_reports_total", |_| true);
        for url in &self.worker_metrics {
            let worker = http_text(url)?;
            total += metric_sum(&worker, "flotilla_worker_jobs_total", |labels| {
                ["continued", "waiting", "retried"]
                    .iter()
                    .any(|outcome| labels.contains(&format!("outcome=\"{outcome}\"")))
            });
        }
        Ok(total)
    }

    fn apply_campaign(&self, campaign: &Value) -> anyhow::Result<()> {
        let _: Value = self
            .api
            .post("/campaigns", "application/json", campaign.to_string())?;
        Ok(())
    }

    /// `run start` of an applied campaign.
    fn start_run(&self, campaign: &Value) -> anyhow::Result<Uuid> {
        let name = campaign["name"].as_str().unwrap_or_default();
        let started: Value = self
            .api
            .post_json(&format!("/campaigns/{name}/runs"), &json!({}))?;
        serde_json::from_value(started["run_id"].clone()).context("no run id in the answer")
    }

    fn progress(&self, campaign: &str) -> anyhow::Result<RunProgress> {
        let runs: Vec<RunProgress> = self.api.get(&format!("/runs?campaign={campaign}"))?;
        runs.into_iter().next().context("the run is not listed")
    }

    /// Stops every process (peak memory read first) and removes the queues and keys.
    fn stop(mut self, runtime: &tokio::runtime::Runtime) -> Vec<ProcessCost> {
        let mut costs = Vec::new();
        for (name, child) in &mut self.processes {
            costs.push(ProcessCost {
                name: name.clone(),
                cpu_seconds: cpu_seconds(child.id()).unwrap_or(0.0),
                peak_rss_mib: peak_rss_mib(child.id()),
            });
            let _ = child.kill();
            let _ = child.wait();
        }
        let cleaned = runtime.block_on(crate::demo::remove_shared_state(
            &self.amqp_url,
            &self.redis_url,
            self.names.clone(),
        ));
        if let Err(error) = cleaned {
            eprintln!("bench queues and keys may remain: {error:#}");
        }
        let _ = std::fs::remove_dir_all(self.dir.join("results"));
        costs
    }
}

fn redis_commands(redis_url: &str) -> anyhow::Result<u64> {
    let client = redis::Client::open(redis_url)?;
    let mut connection = client.get_connection()?;
    let info: String = redis::cmd("INFO").arg("stats").query(&mut connection)?;
    info.lines()
        .find_map(|line| line.strip_prefix("total_commands_processed:"))
        .and_then(|value| value.trim().parse().ok())
        .context("INFO stats without total_commands_processed")
}

/// What happens during a run besides waiting for it.
enum During {
    Nothing,
    /// Measure the fanout of this many locations.
    Fanout(u64),
    /// Kill-switch trials: delays (s) from engage to the last SendCommand seen.
    KillTrials(u32, Vec<f64>),
}

/// Runs `campaign` to its end on `cluster` and measures it.
fn measure_run(
    cluster: &Cluster,
    campaign: &Value,
    during: &mut During,
    runtime: &tokio::runtime::Runtime,
) -> anyhow::Result<RunFigures> {
    let name = campaign["name"].as_str().unwrap_or_default().to_string();
    let pids = cluster.pids();
    let cpu_before: Vec<f64> = pids
        .iter()
        .map(|(_, pid)| cpu_seconds(*pid).unwrap_or(0.0))
        .collect();
    let redis_before = redis_commands(&cluster.redis_url)?;
    let stats_before = cluster.sim_stats()?;
    let published_before = cluster.messages_published()?;
    cluster.apply_campaign(campaign)?;
    // Wall time and fanout count from `run start`, as operators see it.
    let began = Instant::now();
    let run_id = cluster.start_run(campaign)?;
    let mut fanout = None;
    match during {
        During::Nothing => {}
        During::Fanout(locations) => fanout = Some(measure_fanout(cluster, *locations, began)?),
        During::KillTrials(trials, delays) => kill_trials(cluster, *trials, delays)?,
    }
    let progress = loop {
        let progress = cluster.progress(&name)?;
        if progress.finished {
            break progress;
        }
        std::thread::sleep(Duration::from_millis(250));
    };
    let wall = began.elapsed().as_secs_f64();
    let stats = cluster.sim_stats()?;
    let redis_after = redis_commands(&cluster.redis_url)?;
    let published = cluster.messages_published()? - published_before;
    let targets = progress.total_targets.max(1);
    let per_target = |n: f64| n / targets as f64;
    let mut figures = RunFigures {
        targets: progress.total_targets,
        wall_seconds: wall,
        targets_per_second: progress.total_targets as f64 / wall,
        state: progress.state.to_string(),
        messages_published_per_target: per_target(published),
        redis_commands_per_target: per_target(redis_after.saturating_sub(redis_before) as f64),
        fanout,
        ..RunFigures::default()
    };
    let count = |stats: &Value, section: &str, operation: &str| {
        stats[section][operation].as_u64().unwrap_or(0)
    };
    if let Some(calls) = stats["calls"].as_object() {
        for operation in calls.keys() {
            let n = count(&stats, "calls", operation) - count(&stats_before, "calls", operation);
            figures
                .aws_calls_per_target
                .insert(operation.clone(), per_target(n as f64));
        }
    }
    if let Some(throttles) = stats["throttles"].as_object() {
        for operation in throttles.keys() {
            let n = count(&stats, "throttles", operation)
                - count(&stats_before, "throttles", operation);
            figures.throttles.insert(operation.clone(), n);
        }
    }
    let mut workers_cpu = 0.0;
    for ((name, pid), before) in pids.iter().zip(&cpu_before) {
        let used = cpu_seconds(*pid).unwrap_or(0.0) - before;
        let per_10k = used * 10_000.0 / targets as f64;
        if name.starts_with("worker-") {
            workers_cpu += per_10k;
        } else {
            figures
                .cpu_seconds_per_10k_targets
                .insert(name.clone(), per_10k);
        }
    }
    figures
        .cpu_seconds_per_10k_targets
        .insert("workers (all)".into(), workers_cpu);
    let (one, several) = count_results(&cluster.dir.join("results"), run_id, runtime)?;
    figures.targets_with_one_result = one;
    figures.targets_with_several_results = several;
    Ok(figures)
}

fn measure_fanout(cluster: &Cluster, locations: u64, began: Instant) -> anyhow::Result<Fanout> {
    let mut fanout = Fanout {
        locations,
        all_discover_published_seconds: None,
        first_send_command_seconds: None,
    };
    while began.elapsed() < Duration::from_secs(120)
        && (fanout.all_discover_published_seconds.is_none()
            || fanout.first_send_command_seconds.is_none())
    {
        if fanout.all_discover_published_seconds.is_none() {
            let metrics = cluster.scheduler_metrics()?;
            let discover = metric_sum(
                &metrics,
                "flotilla_scheduler_jobs_published_total",
                |labels| labels.contains("kind=\"discover\""),
            );
            if discover >= locations as f64 {
                fanout.all_discover_published_seconds = Some(began.elapsed().as_secs_f64());
            }
        }
        if fanout.first_send_command_seconds.is_none()
            && cluster.sim_stats()?["calls"]["SendCommand"]
                .as_u64()
                .unwrap_or(0)
                > 0
        {
            fanout.first_send_command_seconds = Some(began.elapsed().as_secs_f64());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(fanout)
}

fn unix_ms() -> u64 {
    protocol::job::UnixMillis::now().0
}

/// Engage, wait, read the simulator's last mutating call, release; `trials` times.
fn kill_trials(cluster: &Cluster, trials: u32, delays: &mut Vec<f64>) -> anyhow::Result<()> {
    let sends = || -> anyhow::Result<u64> {
        Ok(cluster.sim_stats()?["calls"]["SendCommand"]
            .as_u64()
            .unwrap_or(0))
    };
    for _ in 0..trials {
        // Wait until commands are being sent, so there is something to stop.
        let before = sends()?;
        let waiting = Instant::now();
        while sends()? < before + 5 {
            if waiting.elapsed() > Duration::from_secs(20) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let engaged_ms = unix_ms();
        let _: Value = cluster
            .api
            .post_json("/kill", &json!({"reason": "flotilla bench trial"}))?;
        std::thread::sleep(Duration::from_millis(2_000));
        let last = cluster.sim_stats()?["last_mutating_call_unix_ms"]
            .as_u64()
            .unwrap_or(0);
        delays.push(last.saturating_sub(engaged_ms) as f64 / 1000.0);
        let _: Value = cluster.api.delete("/kill")?;
    }
    Ok(())
}

/// (targets with exactly one result, targets with more than one).
fn count_results(
    dir: &Path,
    run_id: Uuid,
    runtime: &tokio::runtime::Runtime,
) -> anyhow::Result<(u64, u64)> {
    let store = scheduler::sink::ResultsStore::Local(dir.to_path_buf());
    let records = runtime.block_on(store.read_run(run_id))?;
    let mut seen = HashSet::with_capacity(records.len());
    let mut several = HashSet::new();
    for record in &records {
        let key = (
            record.account_id.as_str(),
            record.region.as_str(),
            record.instance_id.as_str(),
            record.step_index,
        );
        if !seen.insert(key) {
            several.insert(key);
        }
    }
    Ok(((seen.len() - several.len()) as u64, several.len() as u64))
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = (p * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

/// A profile of `accounts` × 2 regions × `per_location` instances whose commands
/// take `command_seconds` (real seconds).
fn fleet(accounts: u32, per_location: u32, command_seconds: (f64, f64)) -> sim::FleetProfile {
    let mut profile = sim::FleetProfile::large();
    profile.accounts = accounts;
    profile.instances_per_location = sim::profile::CountRange {
        min: per_location,
        max: per_location,
    };
    profile.command_seconds = sim::profile::SecondsRange {
        min: command_seconds.0,
        max: command_seconds.1,
    };
    profile.organizational_units = 1;
    profile.child_ous_per_ou = 0;
    without_timeouts(profile)
}

/// A command that times out holds its batch until the step's timeout (30 min):
/// that measures the timeout, not flotilla. Bench fleets succeed or fail fast.
fn without_timeouts(mut profile: sim::FleetProfile) -> sim::FleetProfile {
    profile.outcomes = sim::profile::OutcomeMix {
        success: 98,
        failed: 2,
        timed_out: 0,
        undeliverable: 0,
    };
    profile
}

pub fn bench(args: BenchArgs, out: &mut impl Write) -> anyhow::Result<ExitCode> {
    let scenarios: Vec<Scenario> = if args.scenario.is_empty() {
        Scenario::value_variants().to_vec()
    } else {
        args.scenario.clone()
    };
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    let scratch = tempfile::tempdir().context("cannot create a scratch directory")?;
    let dir = scratch.path();
    let scan_fleet = if args.quick {
        fleet(200, 50, (0.0, 0.5))
    } else {
        without_timeouts(sim::FleetProfile::large())
    };
    let scan_profile = profile_file(dir, "scan", &scan_fleet)?;
    let machine = machine();
    writeln!(
        out,
        "flotilla bench{} on {machine}",
        if args.quick { " --quick" } else { "" }
    )?;
    let mut report = serde_json::Map::new();
    report.insert("machine".into(), json!(machine));
    report.insert("quick".into(), json!(args.quick));
    let results = dir.join("results");

    for scenario in scenarios {
        let began = Instant::now();
        match scenario {
            Scenario::Scan => {
                let cluster = Cluster::start(
                    &args,
                    dir,
                    &scan_profile,
                    args.workers,
                    args.worker_concurrency,
                )?;
                let campaign = scan_campaign("bench-scan", &scan_fleet, 15.0, &results);
                let locations = u64::from(scan_fleet.accounts) * scan_fleet.regions.len() as u64;
                let figures = measure_run(
                    &cluster,
                    &campaign,
                    &mut During::Fanout(locations),
                    &runtime,
                );
                let costs = cluster.stop(&runtime);
                let mut figures = figures?;
                figures.processes = costs;
                print_run(out, &format!("scan ({} workers)", args.workers), &figures)?;
                report.insert("scan".into(), serde_json::to_value(&figures)?);
            }
            Scenario::RateFidelity => {
                let (per_location, rate) = (if args.quick { 1_000 } else { 5_000 }, 5.0);
                let profile = fleet(2, per_location, (0.0, 0.2));
                let path = profile_file(dir, "rate", &profile)?;
                let cluster =
                    Cluster::start(&args, dir, &path, args.workers, args.worker_concurrency)?;
                let campaign = scan_campaign("bench-rate", &profile, rate, &results);
                let figures = measure_run(&cluster, &campaign, &mut During::Nothing, &runtime);
                let fidelity = rate_fidelity(&cluster.sim_url, rate);
                let costs = cluster.stop(&runtime);
                let mut figures = figures?;
                figures.processes = costs;
                let fidelity = fidelity?;
                writeln!(
                    out,
                    "\nrate-fidelity: SendCommand limited to {rate}/s per location, {} locations ({}/s in all)\n  achieved {:.3} of the allowed rate (worst location {:.3}); throttles at the simulator: {}",
                    fidelity.locations,
                    rate * fidelity.locations as f64,
                    fidelity.overall,
                    fidelity.worst,
                    figures.throttles.values().sum::<u64>()
                )?;
                report.insert(
                    "rate_fidelity".into(),
                    json!({"allowed_per_location": rate, "fidelity": fidelity, "run": figures}),
                );
            }
            Scenario::Killswitch => {
                let trials = args.trials.unwrap_or(if args.quick { 5 } else { 20 });
                let cluster = Cluster::start(
                    &args,
                    dir,
                    &scan_profile,
                    args.workers,
                    args.worker_concurrency,
                )?;
                let campaign = scan_campaign("bench-kill", &scan_fleet, 15.0, &results);
                let mut during = During::KillTrials(trials, Vec::new());
                let figures = measure_run(&cluster, &campaign, &mut during, &runtime);
                let costs = cluster.stop(&runtime);
                let mut figures = figures?;
                figures.processes = costs;
                let During::KillTrials(_, mut delays) = during else {
                    bail!("kill trials lost");
                };
                delays.sort_by(f64::total_cmp);
                writeln!(
                    out,
                    "\nkillswitch: {} trials during a scan of {} targets\n  engage → last SendCommand: p50 {:.3} s, p99 {:.3} s, max {:.3} s\n  after release the run ended {} with {} of {} targets holding exactly one result ({} with several)",
                    delays.len(),
                    figures.targets,
                    percentile(&delays, 0.5),
                    percentile(&delays, 0.99),
                    delays.last().copied().unwrap_or(f64::NAN),
                    figures.state,
                    figures.targets_with_one_result,
                    figures.targets,
                    figures.targets_with_several_results
                )?;
                report.insert(
                    "killswitch".into(),
                    json!({"delays_seconds": delays, "p50": percentile(&delays, 0.5),
                           "p99": percentile(&delays, 0.99), "run": figures}),
                );
            }
            Scenario::ScaleOut => {
                let (accounts, counts): (u32, &[u16]) = if args.quick {
                    (10, &[1, 2])
                } else {
                    (100, &[1, 2, 4, 8])
                };
                let profile = fleet(accounts, 250, (2.0, 6.0));
                let path = profile_file(dir, "scale", &profile)?;
                writeln!(
                    out,
                    "\nscale-out: {} targets, commands take 2–6 s, 8 jobs per worker",
                    u64::from(accounts) * 2 * 250
                )?;
                let mut rows = Vec::new();
                for &workers in counts {
                    let cluster = Cluster::start(&args, dir, &path, workers, 8)?;
                    let campaign =
                        scan_campaign(&format!("bench-scale-{workers}"), &profile, 15.0, &results);
                    let figures = measure_run(&cluster, &campaign, &mut During::Nothing, &runtime);
                    cluster.stop(&runtime);
                    let figures = figures?;
                    writeln!(
                        out,
                        "  {workers} worker(s): {:>7.1} s, {:>7.0} targets/s, throttles {}",
                        figures.wall_seconds,
                        figures.targets_per_second,
                        figures.throttles.values().sum::<u64>()
                    )?;
                    rows.push(json!({"workers": workers, "run": figures}));
                }
                report.insert("scale_out".into(), json!(rows));
            }
            Scenario::Embedded => {
                let figures = embedded(&args, &scan_fleet, &results, &runtime)?;
                writeln!(
                    out,
                    "\nembedded (in-memory backends, {} workers, one process): {} targets in {:.1} s, {:.0} targets/s, {:.2} CPU-s per 10,000 targets, peak RSS {:.0} MiB",
                    args.workers,
                    figures.targets,
                    figures.wall_seconds,
                    figures.targets_per_second,
                    figures
                        .cpu_seconds_per_10k_targets
                        .get("flotilla")
                        .copied()
                        .unwrap_or(0.0),
                    figures
                        .processes
                        .first()
                        .and_then(|process| process.peak_rss_mib)
                        .unwrap_or(0.0)
                )?;
                report.insert("embedded".into(), serde_json::to_value(&figures)?);
            }
        }
        tracing::info!(
            ?scenario,
            seconds = began.elapsed().as_secs_f64(),
            "scenario done"
        );
    }
    std::fs::write(
        &args.json,
        serde_json::to_string_pretty(&Value::Object(report))?,
    )
    .with_context(|| format!("cannot write {}", args.json.display()))?;
    writeln!(out, "\nJSON report: {}", args.json.display())?;
    Ok(ExitCode::SUCCESS)
}

fn print_run(out: &mut impl Write, title: &str, figures: &RunFigures) -> anyhow::Result<()> {
    writeln!(out, "\n{title}")?;
    let row =
        |out: &mut dyn Write, name: &str, value: String| writeln!(out, "  {name:<40} {value}");
    row(out, "targets", figures.targets.to_string())?;
    row(out, "state", figures.state.clone())?;
    row(out, "wall time", format!("{:.1} s", figures.wall_seconds))?;
    row(
        out,
        "targets/s",
        format!("{:.0}", figures.targets_per_second),
    )?;
    row(
        out,
        "targets with exactly one result",
        format!(
            "{} ({} with several)",
            figures.targets_with_one_result, figures.targets_with_several_results
        ),
    )?;
    row(
        out,
        "messages published per target",
        format!("{:.3}", figures.messages_published_per_target),
    )?;
    let calls: Vec<String> = figures
        .aws_calls_per_target
        .iter()
        .filter(|(_, n)| **n > 0.0)
        .map(|(operation, n)| format!("{operation} {n:.4}"))
        .collect();
    row(out, "AWS calls per target", calls.join(", "))?;
    row(
        out,
        "throttles",
        figures.throttles.values().sum::<u64>().to_string(),
    )?;
    row(
        out,
        "Redis commands per target",
        format!("{:.2}", figures.redis_commands_per_target),
    )?;
    let cpu: Vec<String> = figures
        .cpu_seconds_per_10k_targets
        .iter()
        .map(|(name, seconds)| format!("{name} {seconds:.2}"))
        .collect();
    row(out, "CPU-s per 10,000 targets", cpu.join(", "))?;
    let rss: Vec<String> = figures
        .processes
        .iter()
        .filter_map(|process| {
            process
                .peak_rss_mib
                .map(|mib| format!("{} {mib:.0}", process.name))
        })
        .collect();
    row(out, "peak RSS (MiB)", rss.join(", "))?;
    if let Some(fanout) = &figures.fanout {
        let seconds =
            |value: Option<f64>| value.map_or("not seen".to_string(), |s| format!("{s:.2} s"));
        row(
            out,
            &format!("fanout: {} Discover jobs published", fanout.locations),
            seconds(fanout.all_discover_published_seconds),
        )?;
        row(
            out,
            "fanout: first SendCommand",
            seconds(fanout.first_send_command_seconds),
        )?;
    }
    Ok(())
}

#[derive(Debug, Serialize)]
struct Fidelity {
    locations: usize,
    /// SendCommands beyond each location's burst, per second of sending, over the allowed rate.
    overall: f64,
    worst: f64,
}

/// From the simulator's command log: per location, (commands − burst) / (last − first) / rate.
fn rate_fidelity(sim_url: &str, rate: f64) -> anyhow::Result<Fidelity> {
    let commands = http_json(&format!("{sim_url}/_sim/commands"))?;
    let mut by_location: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for command in commands["commands"].as_array().into_iter().flatten() {
        let location = format!("{}/{}", command["account_id"], command["region"]);
        by_location
            .entry(location)
            .or_default()
            .push(command["received_unix_ms"].as_u64().unwrap_or(0));
    }
    let burst = rate.max(1.0);
    let fractions: Vec<f64> = by_location
        .values()
        .filter_map(|times| {
            let first = *times.iter().min()?;
            let last = *times.iter().max()?;
            let span = (last - first) as f64 / 1000.0;
            (span > 0.0).then(|| ((times.len() as f64 - burst) / span) / rate)
        })
        .collect();
    if fractions.is_empty() {
        bail!("the simulator saw no SendCommand to measure");
    }
    Ok(Fidelity {
        locations: fractions.len(),
        overall: fractions.iter().sum::<f64>() / fractions.len() as f64,
        worst: fractions.iter().copied().fold(f64::INFINITY, f64::min),
    })
}

/// The scan on the in-memory backends, in this process.
fn embedded(
    args: &BenchArgs,
    fleet: &sim::FleetProfile,
    results: &Path,
    runtime: &tokio::runtime::Runtime,
) -> anyhow::Result<RunFigures> {
    let url = format!("memory://bench-{}", Uuid::new_v4());
    let own = std::process::id();
    let cpu_before = cpu_seconds(own).unwrap_or(0.0);
    let began = Instant::now();
    let stack = runtime.block_on(crate::demo::Stack::start(
        &url,
        &url,
        args.workers,
        fleet.clone(),
    ))?;
    let api = ApiClient::new(&stack.api_url);
    let campaign = scan_campaign("bench-embedded", fleet, 15.0, results);
    let _: Value = api.post("/campaigns", "application/json", campaign.to_string())?;
    let started: Value = api.post_json("/campaigns/bench-embedded/runs", &json!({}))?;
    let run_id: Uuid = serde_json::from_value(started["run_id"].clone())?;
    let progress = loop {
        let runs: Vec<RunProgress> = api.get("/runs?campaign=bench-embedded")?;
        if let Some(progress) = runs.into_iter().next().filter(|progress| progress.finished) {
            break progress;
        }
        std::thread::sleep(Duration::from_millis(250));
    };
    let wall = began.elapsed().as_secs_f64();
    let cpu = cpu_seconds(own).unwrap_or(0.0) - cpu_before;
    runtime.block_on(stack.stop())?;
    let (one, several) = count_results(results, run_id, runtime)?;
    let targets = progress.total_targets.max(1);
    Ok(RunFigures {
        targets: progress.total_targets,
        wall_seconds: wall,
        targets_per_second: progress.total_targets as f64 / wall,
        state: progress.state.to_string(),
        targets_with_one_result: one,
        targets_with_several_results: several,
        cpu_seconds_per_10k_targets: BTreeMap::from([(
            "flotilla".to_string(),
            cpu * 10_000.0 / targets as f64,
        )]),
        processes: vec![ProcessCost {
            name: "flotilla".into(),
            cpu_seconds: cpu,
            peak_rss_mib: peak_rss_mib(own),
        }],
        ..RunFigures::default()
    })
}

/// CPU model and core count, for the report.
fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|line| line.strip_prefix("model name"))
        .map(|rest| rest.trim_start_matches([' ', '\t', ':']).to_string())
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, usize::from);
    format!("{cores} cores, {model}")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    const EXPOSITION: &str = r#"# HELP flotilla_worker_jobs_total Jobs handled, by kind and outcome
# TYPE flotilla_worker_jobs_total counter
flotilla_worker_jobs_total{kind="discover",outcome="done"} 198
flotilla_worker_jobs_total{kind="execute",outcome="continued"} 200
flotilla_worker_jobs_total{kind="poll",outcome="continued"} 1028
flotilla_worker_jobs_total_other{kind="poll",outcome="continued"} 5
flotilla_worker_in_flight_jobs 3
"#;

    #[test]
    fn metric_sums_add_the_matching_series_only() {
        let continued = metric_sum(EXPOSITION, "flotilla_worker_jobs_total", |labels| {
            labels.contains("outcome=\"continued\"")
        });
        assert_eq!(continued, 1228.0);
        assert_eq!(
            metric_sum(EXPOSITION, "flotilla_worker_jobs_total", |_| true),
            1426.0
        );
        assert_eq!(
            metric_sum(EXPOSITION, "flotilla_worker_in_flight_jobs", |_| true),
            3.0
        );
        assert_eq!(metric_sum(EXPOSITION, "absent", |_| true), 0.0);
    }

    #[test]
    fn percentiles_pick_the_nearest_rank() {
        let delays: Vec<f64> = (1..=20).map(f64::from).collect();
        assert_eq!(percentile(&delays, 0.5), 11.0);
        assert_eq!(percentile(&delays, 0.99), 20.0);
        assert_eq!(percentile(&delays, 0.0), 1.0);
        assert!(percentile(&[], 0.5).is_nan());
    }

    #[test]
    fn this_process_has_cpu_time_and_a_peak_rss() {
        let own = std::process::id();
        assert!(cpu_seconds(own).is_some());
        assert!(peak_rss_mib(own).is_some_and(|mib| mib > 1.0));
        assert!(cpu_seconds(u32::MAX).is_none());
    }

    #[test]
    fn bench_fleets_have_no_commands_that_wait_for_the_timeout() {
        let profile = fleet(3, 10, (0.0, 0.5));
        assert_eq!(profile.outcomes.timed_out, 0);
        assert_eq!(profile.outcomes.undeliverable, 0);
        assert!(profile.validate().is_ok());
        assert_eq!(
            account_ids(&profile),
            ["100000000000", "100000000001", "100000000002"]
        );
    }
}

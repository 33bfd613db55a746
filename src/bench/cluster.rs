//! The services under test as processes of this binary, and the fleets and
//! campaigns they run.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::Context;
use protocol::signing::{SignerKind, SigningIdentity};
use scheduler::RunProgress;
use serde_json::{Value, json};
use uuid::Uuid;

use super::probe::{
    cpu_seconds, free_port, http_json, http_text, metric_sum, peak_rss_mib, pid_of, wait_for,
};
use super::{BenchArgs, ProcessCost};
use crate::client::ApiClient;

/// The access key the simulator accepts.
pub(super) const SIM_KEY: &str = "AKIAFLOTILLASIMULATOR";

/// A fleet profile the simulator reads from a file.
pub(super) fn profile_file(
    dir: &Path,
    name: &str,
    profile: &sim::FleetProfile,
) -> anyhow::Result<PathBuf> {
    let path = dir.join(format!("{name}.yaml"));
    std::fs::write(&path, serde_norway::to_string(profile)?)?;
    Ok(path)
}

pub(super) fn account_ids(profile: &sim::FleetProfile) -> Vec<String> {
    (0..profile.accounts).map(sim::fleet::account_id).collect()
}

/// A scan of every instance of the fleet, everything at once, with `send_command`
/// calls per second per location.
pub(super) fn scan_campaign(
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
pub(super) struct Cluster {
    pub(super) dir: PathBuf,
    pub(super) sim_url: String,
    pub(super) api: ApiClient,
    pub(super) api_url: String,
    pub(super) worker_metrics: Vec<String>,
    pub(super) processes: Vec<(String, Child)>,
    pub(super) names: protocol::names::Names,
    pub(super) amqp_url: String,
    pub(super) redis_url: String,
}

impl Cluster {
    pub(super) fn start(
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
        // A new deployment: its queues declared and its kill switch armed
        // explicitly (`flotilla admin arm`), before any service starts.
        let armed = Command::new(&exe)
            .args(["admin", "arm", "--by", "bench"])
            .env("FLOTILLA_AMQP_URL", &args.amqp_url)
            .env("FLOTILLA_REDIS_URL", &args.redis_url)
            .env("FLOTILLA_PREFIX", &prefix)
            .stdout(Stdio::null())
            .status()
            .context("cannot run flotilla admin arm")?;
        anyhow::ensure!(armed.success(), "flotilla admin arm failed: {armed}");
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
                // The bench's results go under its own directory.
                "--output-root".into(),
                dir.display().to_string(),
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

    pub(super) fn pids(&self) -> Vec<(String, u32)> {
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

    pub(super) fn sim_stats(&self) -> anyhow::Result<Value> {
        http_json(&format!("{}/_sim/stats", self.sim_url))
    }

    pub(super) fn scheduler_metrics(&self) -> anyhow::Result<String> {
        http_text(&format!("{}/metrics", self.api_url))
    }

    /// Jobs and reports published: the scheduler's jobs, the report messages
    /// it received (a worker's bundle of reports is one), and every job a
    /// worker put back (continued, waiting, retried).
    pub(super) fn messages_published(&self) -> anyhow::Result<f64> {
        let scheduler = self.scheduler_metrics()?;
        let mut total = metric_sum(
            &scheduler,
            "flotilla_scheduler_jobs_published_total",
            |_| true,
        ) + metric_sum(
            &scheduler,
            "flotilla_scheduler_report_messages_total",
            |_| true,
        );
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

    pub(super) fn apply_campaign(&self, campaign: &Value) -> anyhow::Result<()> {
        let _: Value = self
            .api
            .post("/campaigns", "application/json", campaign.to_string())?;
        Ok(())
    }

    /// `run start` of an applied campaign.
    pub(super) fn start_run(&self, campaign: &Value) -> anyhow::Result<Uuid> {
        let name = campaign["name"].as_str().unwrap_or_default();
        let started: Value = self
            .api
            .post_json(&format!("/campaigns/{name}/runs"), &json!({}))?;
        serde_json::from_value(started["run_id"].clone()).context("no run id in the answer")
    }

    pub(super) fn progress(&self, campaign: &str) -> anyhow::Result<RunProgress> {
        let runs: Vec<RunProgress> = self.api.get(&format!("/runs?campaign={campaign}"))?;
        runs.into_iter().next().context("the run is not listed")
    }

    /// Stops every process (peak memory read first) and removes the queues and keys.
    pub(super) fn stop(mut self, runtime: &tokio::runtime::Runtime) -> Vec<ProcessCost> {
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

/// A profile of `accounts` × 2 regions × `per_location` instances whose commands
/// take `command_seconds` (real seconds).
pub(super) fn fleet(
    accounts: u32,
    per_location: u32,
    command_seconds: (f64, f64),
) -> sim::FleetProfile {
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
pub(super) fn without_timeouts(mut profile: sim::FleetProfile) -> sim::FleetProfile {
    profile.outcomes = sim::profile::OutcomeMix {
        success: 98,
        failed: 2,
        timed_out: 0,
        undeliverable: 0,
    };
    profile
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

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

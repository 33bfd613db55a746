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
//! - `scan-10m`: the same scan at ten times the accounts (10,000,000
//!   instances in 100,000 accounts × 2 regions; `--quick`: 200,000), to see
//!   whether the per-target figures hold at scale; only when named;
//! - `rate-fidelity`: SendCommand limited to 5/s per location, far below the
//!   simulator's 20/s: the achieved rate as a fraction of the allowed one;
//! - `killswitch`: trials of engage → last SendCommand the simulator saw →
//!   release, in the middle of a scan that must still finish with one result
//!   per target;
//! - `scale-out`: 1, 2, 4, 8 worker processes on commands that take seconds;
//! - `embedded`: the `scan` fleet on the in-memory backends, in this process;
//! - `console`: the web console's run page at 1,000 locations and its
//!   compliance page over 100,000 instances, timed over loopback.
//!
//! - [`probe`]: what is read from the outside — `/proc` CPU time and peak
//!   RSS, Prometheus text, Redis' command count, the machine;
//! - [`cluster`]: the simulator, scheduler and workers as processes, and the
//!   fleets and campaigns they run;
//! - [`scenarios`]: each scenario, and measuring a run;
//! - [`print`]: the table.

mod cluster;
mod console;
mod print;
mod probe;
mod scenarios;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context;
use clap::{Args, ValueEnum};
use serde::Serialize;
use serde_json::{Value, json};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scenario {
    Scan,
    /// Ten times the `scan` fleet, by accounts: not among the defaults (it
    /// takes about half an hour here).
    #[value(name = "scan-10m")]
    #[serde(rename = "scan-10m")]
    Scan10m,
    RateFidelity,
    Killswitch,
    ScaleOut,
    Embedded,
    Console,
}

#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    /// Small fleets and few trials: under a minute, for regular use.
    #[arg(long)]
    pub quick: bool,
    /// Scenarios to run (repeatable); all but scan-10m when absent.
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
    /// RabbitMQ to measure on (each scenario under a prefix of its own).
    #[arg(long, default_value = crate::services::DEFAULT_AMQP_URL)]
    pub amqp_url: String,
    /// Redis to measure on (each scenario under a prefix of its own).
    #[arg(long, default_value = "redis://127.0.0.1:6379/")]
    pub redis_url: String,
    /// Where the JSON report goes.
    #[arg(long, default_value = "flotilla-bench.json")]
    pub json: PathBuf,
}

/// CPU seconds and peak memory of one process over a measurement.
#[derive(Debug, Clone, Serialize)]
pub(super) struct ProcessCost {
    pub(super) name: String,
    pub(super) cpu_seconds: f64,
    pub(super) peak_rss_mib: Option<f64>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub(super) struct RunFigures {
    pub(super) targets: u64,
    pub(super) wall_seconds: f64,
    pub(super) targets_per_second: f64,
    pub(super) state: String,
    /// Targets with exactly one result in the results files, and any with more.
    pub(super) targets_with_one_result: u64,
    pub(super) targets_with_several_results: u64,
    pub(super) messages_published_per_target: f64,
    pub(super) aws_calls_per_target: BTreeMap<String, f64>,
    pub(super) throttles: BTreeMap<String, u64>,
    pub(super) redis_commands_per_target: f64,
    /// The same by command (scripts' inner commands under their own names).
    pub(super) redis_commands_per_target_by_command: BTreeMap<String, f64>,
    pub(super) cpu_seconds_per_10k_targets: BTreeMap<String, f64>,
    pub(super) processes: Vec<ProcessCost>,
    pub(super) fanout: Option<Fanout>,
}

#[derive(Debug, Clone, Serialize)]
pub(super) struct Fanout {
    pub(super) locations: u64,
    pub(super) all_discover_published_seconds: Option<f64>,
    pub(super) first_send_command_seconds: Option<f64>,
}

pub fn bench(args: BenchArgs, out: &mut impl Write) -> anyhow::Result<ExitCode> {
    let scenarios: Vec<Scenario> = if args.scenario.is_empty() {
        Scenario::value_variants()
            .iter()
            .copied()
            .filter(|scenario| *scenario != Scenario::Scan10m)
            .collect()
    } else {
        args.scenario.clone()
    };
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    let scratch = tempfile::tempdir().context("cannot create a scratch directory")?;
    let dir = scratch.path();
    let scan_fleet = if args.quick {
        cluster::fleet(200, 50, (0.0, 0.5))
    } else {
        cluster::without_timeouts(sim::FleetProfile::large())
    };
    let scan_profile = cluster::profile_file(dir, "scan", &scan_fleet)?;
    let machine = probe::machine();
    writeln!(
        out,
        "flotilla bench{} on {machine}",
        if args.quick { " --quick" } else { "" }
    )?;
    let mut report = serde_json::Map::new();
    report.insert("machine".into(), json!(machine));
    report.insert("quick".into(), json!(args.quick));
    let bench = scenarios::Bench {
        args: &args,
        dir,
        runtime,
        scan_fleet,
        scan_profile,
        results: dir.join("results"),
    };
    for scenario in scenarios {
        let began = Instant::now();
        let (key, figures) = scenarios::run(&bench, scenario, out)?;
        report.insert(key.into(), figures);
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

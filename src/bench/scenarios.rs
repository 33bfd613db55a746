//! Each scenario, and measuring one run of a campaign on a cluster.

use std::collections::{BTreeMap, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::bail;
use scheduler::RunProgress;
use serde::Serialize;
use serde_json::{Value, json};
use uuid::Uuid;

use super::cluster::{Cluster, fleet, profile_file, scan_campaign};
use super::probe::{
    cpu_seconds, http_json, metric_sum, peak_rss_mib, percentile, redis_commands, unix_ms,
};
use super::{BenchArgs, Fanout, ProcessCost, RunFigures, Scenario, print};
use crate::client::ApiClient;

/// What every scenario shares.
pub(super) struct Bench<'a> {
    pub(super) args: &'a BenchArgs,
    pub(super) dir: &'a Path,
    pub(super) runtime: tokio::runtime::Runtime,
    /// The `scan` fleet, also the `killswitch` and `embedded` one.
    pub(super) scan_fleet: sim::FleetProfile,
    pub(super) scan_profile: PathBuf,
    pub(super) results: PathBuf,
}

/// Runs one scenario, printing as it goes; its entry in the JSON report.
pub(super) fn run(
    bench: &Bench,
    scenario: Scenario,
    out: &mut dyn Write,
) -> anyhow::Result<(&'static str, Value)> {
    match scenario {
        Scenario::Scan => scan(bench, out),
        Scenario::Scan10m => scan_at_ten_times(bench, out),
        Scenario::RateFidelity => rate_fidelity_scenario(bench, out),
        Scenario::Killswitch => killswitch(bench, out),
        Scenario::ScaleOut => scale_out(bench, out),
        Scenario::Embedded => embedded_scenario(bench, out),
        Scenario::Console => super::console::console(bench, out),
    }
}

/// Starts a cluster with `workers`, runs `campaign` on it, stops it.
fn measure_on(
    bench: &Bench,
    profile: &Path,
    workers: u16,
    worker_concurrency: u16,
    campaign: &Value,
    during: &mut During,
) -> anyhow::Result<RunFigures> {
    let (figures, ()) = measure_then(
        bench,
        profile,
        (workers, worker_concurrency),
        campaign,
        during,
        |_| Ok(()),
    )?;
    Ok(figures)
}

/// [`measure_on`], reading `after` from the cluster before it stops.
fn measure_then<T>(
    bench: &Bench,
    profile: &Path,
    (workers, worker_concurrency): (u16, u16),
    campaign: &Value,
    during: &mut During,
    after: impl FnOnce(&Cluster) -> anyhow::Result<T>,
) -> anyhow::Result<(RunFigures, T)> {
    let cluster = Cluster::start(bench.args, bench.dir, profile, workers, worker_concurrency)?;
    let figures = measure_run(&cluster, campaign, during, &bench.runtime);
    let read = figures.is_ok().then(|| after(&cluster));
    let costs = cluster.stop(&bench.runtime);
    let mut figures = figures?;
    figures.processes = costs;
    let read = read.unwrap_or_else(|| bail!("the run was not measured"))?;
    Ok((figures, read))
}

fn scan(bench: &Bench, out: &mut dyn Write) -> anyhow::Result<(&'static str, Value)> {
    let fleet = &bench.scan_fleet;
    let campaign = scan_campaign("bench-scan", fleet, 15.0, &bench.results);
    let figures = measure_scan(bench, fleet, &bench.scan_profile, &campaign)?;
    print::run(
        out,
        &format!("scan ({} workers)", bench.args.workers),
        &figures,
    )?;
    Ok(("scan", serde_json::to_value(&figures)?))
}

/// The `scan` fleet with ten times the accounts, the same instances per
/// location: the per-target figures should not change.
fn scan_at_ten_times(bench: &Bench, out: &mut dyn Write) -> anyhow::Result<(&'static str, Value)> {
    let mut fleet = bench.scan_fleet.clone();
    fleet.accounts = fleet.accounts.saturating_mul(10);
    let profile = profile_file(bench.dir, "scan-10m", &fleet)?;
    let mut campaign = scan_campaign("bench-scan-10m", &fleet, 15.0, &bench.results);
    // 100,000 account ids would not fit a campaign spec (512 KiB): the
    // organization's root and every OU under it, resolved through
    // Organizations when the run starts, as a real organization would be.
    let root = sim::fleet::Fleet::new(fleet.clone()).root_id();
    campaign["accounts"] = json!({"organizational_units": [root], "include_child_ous": true});
    let figures = measure_scan(bench, &fleet, &profile, &campaign)?;
    print::run(
        out,
        &format!("scan at 10x ({} workers)", bench.args.workers),
        &figures,
    )?;
    Ok(("scan_10m", serde_json::to_value(&figures)?))
}

/// A scan of every location of `fleet`, with the fanout figures.
fn measure_scan(
    bench: &Bench,
    fleet: &sim::FleetProfile,
    profile: &Path,
    campaign: &Value,
) -> anyhow::Result<RunFigures> {
    let locations = u64::from(fleet.accounts) * fleet.regions.len() as u64;
    measure_on(
        bench,
        profile,
        bench.args.workers,
        bench.args.worker_concurrency,
        campaign,
        &mut During::Fanout(locations),
    )
}

fn rate_fidelity_scenario(
    bench: &Bench,
    out: &mut dyn Write,
) -> anyhow::Result<(&'static str, Value)> {
    let args = bench.args;
    let (per_location, rate) = (if args.quick { 1_000 } else { 5_000 }, 5.0);
    let profile = fleet(2, per_location, (0.0, 0.2));
    let path = profile_file(bench.dir, "rate", &profile)?;
    let campaign = scan_campaign("bench-rate", &profile, rate, &bench.results);
    let (figures, fidelity) = measure_then(
        bench,
        &path,
        (args.workers, args.worker_concurrency),
        &campaign,
        &mut During::Nothing,
        |cluster| rate_fidelity(&cluster.sim_url, rate),
    )?;
    print::fidelity(out, rate, &fidelity, &figures)?;
    Ok((
        "rate_fidelity",
        json!({"allowed_per_location": rate, "fidelity": fidelity, "run": figures}),
    ))
}

fn killswitch(bench: &Bench, out: &mut dyn Write) -> anyhow::Result<(&'static str, Value)> {
    let args = bench.args;
    let trials = args.trials.unwrap_or(if args.quick { 5 } else { 20 });
    let campaign = scan_campaign("bench-kill", &bench.scan_fleet, 15.0, &bench.results);
    let mut during = During::KillTrials(trials, Vec::new());
    let figures = measure_on(
        bench,
        &bench.scan_profile,
        args.workers,
        args.worker_concurrency,
        &campaign,
        &mut during,
    )?;
    let During::KillTrials(_, mut delays) = during else {
        bail!("kill trials lost");
    };
    delays.sort_by(f64::total_cmp);
    print::killswitch(out, &delays, &figures)?;
    Ok((
        "killswitch",
        json!({"delays_seconds": delays, "p50": percentile(&delays, 0.5),
               "p99": percentile(&delays, 0.99), "run": figures}),
    ))
}

fn scale_out(bench: &Bench, out: &mut dyn Write) -> anyhow::Result<(&'static str, Value)> {
    let (accounts, counts): (u32, &[u16]) = if bench.args.quick {
        (10, &[1, 2])
    } else {
        (100, &[1, 2, 4, 8])
    };
    let profile = fleet(accounts, 250, (2.0, 6.0));
    let path = profile_file(bench.dir, "scale", &profile)?;
    writeln!(
        out,
        "\nscale-out: {} targets, commands take 2–6 s, 8 jobs per worker",
        u64::from(accounts) * 2 * 250
    )?;
    let mut rows = Vec::new();
    for &workers in counts {
        let campaign = scan_campaign(
            &format!("bench-scale-{workers}"),
            &profile,
            15.0,
            &bench.results,
        );
        let figures = measure_on(bench, &path, workers, 8, &campaign, &mut During::Nothing)?;
        print::scale_out_row(out, workers, &figures)?;
        rows.push(json!({"workers": workers, "run": figures}));
    }
    Ok(("scale_out", json!(rows)))
}

fn embedded_scenario(bench: &Bench, out: &mut dyn Write) -> anyhow::Result<(&'static str, Value)> {
    let figures = embedded(
        bench.args,
        &bench.scan_fleet,
        &bench.results,
        &bench.runtime,
    )?;
    print::embedded(out, bench.args.workers, &figures)?;
    Ok(("embedded", serde_json::to_value(&figures)?))
}

/// What happens during a run besides waiting for it.
pub(super) enum During {
    Nothing,
    /// Measure the fanout of this many locations.
    Fanout(u64),
    /// Kill-switch trials: delays (s) from engage to the last SendCommand seen.
    KillTrials(u32, Vec<f64>),
}

/// Runs `campaign` to its end on `cluster` and measures it.
pub(super) fn measure_run(
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
        redis_commands_per_target: per_target(
            redis_after.total.saturating_sub(redis_before.total) as f64
        ),
        redis_commands_per_target_by_command: redis_after
            .since(&redis_before)
            .into_iter()
            .map(|(name, calls)| (name, per_target(calls as f64)))
            .collect(),
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

pub(super) fn measure_fanout(
    cluster: &Cluster,
    locations: u64,
    began: Instant,
) -> anyhow::Result<Fanout> {
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

/// Engage, wait, read the simulator's last mutating call, release; `trials` times.
pub(super) fn kill_trials(
    cluster: &Cluster,
    trials: u32,
    delays: &mut Vec<f64>,
) -> anyhow::Result<()> {
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
pub(super) fn count_results(
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

#[derive(Debug, Serialize)]
pub(super) struct Fidelity {
    pub(super) locations: usize,
    /// SendCommands beyond each location's burst, per second of sending, over the allowed rate.
    pub(super) overall: f64,
    pub(super) worst: f64,
}

/// From the simulator's command log: per location, (commands − burst) / (last − first) / rate.
pub(super) fn rate_fidelity(sim_url: &str, rate: f64) -> anyhow::Result<Fidelity> {
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
pub(super) fn embedded(
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
        Some(results),
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

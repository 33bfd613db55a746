//! The soak: back-to-back scans of a simulated fleet for as long as asked,
//! on the 3-node RabbitMQ cluster and the Redis Cluster the test command
//! starts (`scripts/rabbitmq-cluster`, `scripts/redis-topologies`), by
//! `flotilla worker` and `flotilla scheduler` processes, with faults all
//! along:
//!
//! - a worker SIGKILLed every 10 s (and another started in its place);
//! - a scheduler replica SIGKILLed every 5 minutes (likewise);
//! - a RabbitMQ node SIGKILLed every 15 minutes, started again 10 s later;
//! - a Redis failover every 20 minutes: the master holding the scan's keys
//!   SIGKILLed, a replica takes over, the node starts again and rejoins.
//!
//! Runs shorter than an hour shrink the last three intervals in proportion,
//! so each fault happens several times in the suite's 5-minute variant
//! (scheduler every 25 s, RabbitMQ node every 75 s, Redis every 100 s).
//! `FLOTILLA_SOAK_MINUTES` sets the length (5 unless set; `scripts/soak`
//! runs 60) and `FLOTILLA_SOAK_ACCOUNTS` the fleet (accounts × 2 regions ×
//! 8–12 instances; 20 unless set).
//!
//! Checked per scan: every target exactly one result, none recorded as not
//! run, and every instance executed exactly once (the simulator's execution
//! counts, from where the last scan ended; after the last, every instance
//! ran as many times as there were scans). At the end: the
//! memory of the worker and the scheduler that were never killed is flat
//! (peak RSS of the last quarter within 10% of the second quarter's), their
//! open file descriptors do not grow (last quarter's most within 10 of the
//! second's), the broker holds the same queues as after the first scan and
//! they drain, and Redis holds no more keys outside the runs' own than after
//! the first scan and the last scan's run no more than the first's (give or
//! take 5: a job's command record kept for a redelivery, a wait note). The summary (scans,
//! kills, node losses, failovers, memory and descriptors per quarter,
//! queues, keys) is printed, and written to `FLOTILLA_SOAK_SUMMARY` when set.

#![allow(clippy::unwrap_used)]

mod support;

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use protocol::names::hash_slot;
use sim::profile::FleetProfile;
use support::Stack;
use test_support::topologies::{
    RestartDeadNodes, master_port_of, new_master_of, rabbitmq_cluster_dir, rabbitmq_cluster_url,
    signal, topologies_dir,
};
use uuid::Uuid;

/// One shell step over every location at once; failures never halt a scan.
const SCAN_RATE: &str = "  location_concurrency: 100%\n  max_concurrency: 60\n  max_errors: 100%\n";
/// Workers killed in turn (besides the steady one, never killed).
const VICTIM_WORKERS: usize = 2;
/// How long a scan may take before the soak counts it stuck.
const SCAN_LIMIT: Duration = Duration::from_secs(300);
/// How long a RabbitMQ node stays down.
const NODE_DOWN: Duration = Duration::from_secs(10);

/// How long the soak runs and how often each fault comes.
struct Plan {
    length: Duration,
    accounts: u32,
    worker_every: Duration,
    scheduler_every: Duration,
    broker_every: Duration,
    redis_every: Duration,
}

impl Plan {
    fn from_env() -> Self {
        let number = |name: &str, default: f64| {
            std::env::var(name)
                .ok()
                .map(|value| {
                    value
                        .parse::<f64>()
                        .unwrap_or_else(|_| panic!("{name}={value}: a number is wanted"))
                })
                .unwrap_or(default)
        };
        let minutes = number("FLOTILLA_SOAK_MINUTES", 5.0);
        assert!(
            minutes >= 1.0,
            "FLOTILLA_SOAK_MINUTES={minutes}: at least 1"
        );
        let scale = (minutes / 60.0).min(1.0);
        let every = |seconds: f64| Duration::from_secs_f64(seconds * scale);
        Self {
            length: Duration::from_secs_f64(minutes * 60.0),
            accounts: number("FLOTILLA_SOAK_ACCOUNTS", 20.0) as u32,
            worker_every: Duration::from_secs(10),
            scheduler_every: every(300.0),
            broker_every: every(900.0),
            redis_every: every(1200.0),
        }
    }
}

fn fleet(accounts: u32) -> FleetProfile {
    let mut profile = FleetProfile::tiny();
    profile.accounts = accounts;
    profile.connection_lost_share = 0.0;
    profile.time_scale = 20.0;
    profile
}

/// A process's resident memory (KiB) and open file descriptors, if it runs.
fn usage(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count() as u64;
    Some((rss, fds))
}

fn pid_in(file: &str) -> Option<u32> {
    std::fs::read_to_string(file).ok()?.trim().parse().ok()
}

/// Peaks per quarter of the soak, per service.
#[derive(Default)]
struct Quarters {
    rss_kib: BTreeMap<String, [u64; 4]>,
    fds: BTreeMap<String, [u64; 4]>,
}

impl Quarters {
    fn sample(&mut self, quarter: usize, service: String, pid: u32) {
        if let Some((rss, fds)) = usage(pid) {
            let peak = &mut self.rss_kib.entry(service.clone()).or_default()[quarter];
            *peak = (*peak).max(rss);
            let most = &mut self.fds.entry(service).or_default()[quarter];
            *most = (*most).max(fds);
        }
    }
}

/// What the broker and Redis hold for the deployment.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Holdings {
    queues: usize,
    messages: u64,
    /// Keys outside any run's own.
    other_keys: usize,
    /// Keys of the scan just finished.
    scan_keys: usize,
    /// Runs with keys.
    runs: usize,
    /// Keys of every run.
    run_keys: usize,
}

/// The deployment's queues (name → messages) as the RabbitMQ cluster counts them.
fn queues(prefix: &str) -> BTreeMap<String, u64> {
    let script = format!("{}/scripts/rabbitmq-cluster", env!("CARGO_MANIFEST_DIR"));
    let output = std::process::Command::new(&script)
        .args(["queues", prefix])
        .output()
        .unwrap_or_else(|error| panic!("{script}: {error}"));
    assert!(
        output.status.success(),
        "{script} queues: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|line| {
            let mut fields = line.split_whitespace();
            let name = fields.next().unwrap_or_default().to_string();
            let messages = fields
                .next()
                .and_then(|count| count.parse().ok())
                .unwrap_or_else(|| {
                    panic!("{script} queues: not `name messages consumers`: {line}")
                });
            (name, messages)
        })
        .collect()
}

/// What the deployment holds; `scan`: whose keys to count apart.
async fn holdings(stack: &Stack, scan: Option<Uuid>) -> Holdings {
    let prefix = stack.names.prefix().to_string();
    let queued = tokio::task::spawn_blocking({
        let prefix = prefix.clone();
        move || queues(&prefix)
    })
    .await
    .unwrap();
    let mut keys = None;
    for _ in 0..60 {
        match stack
            .store
            .connection()
            .scan_keys(&format!("{prefix}:*"))
            .await
        {
            Ok(found) => {
                keys = Some(found);
                break;
            }
            // A failover under way: the keys are there again in a moment.
            Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    }
    let keys = keys.expect("Redis answered SCAN within 30 s");
    let mut per_run: HashMap<&str, usize> = HashMap::new();
    let mut other_keys = 0;
    for key in &keys {
        match key.split_once(":run:{") {
            Some((_, rest)) => {
                *per_run
                    .entry(rest.split('}').next().unwrap_or(rest))
                    .or_default() += 1
            }
            None => other_keys += 1,
        }
    }
    Holdings {
        queues: queued.len(),
        messages: queued.values().sum(),
        other_keys,
        scan_keys: scan
            .and_then(|run_id| per_run.get(run_id.to_string().as_str()).copied())
            .unwrap_or(0),
        runs: per_run.len(),
        run_keys: per_run.values().sum(),
    }
}

/// The scan under way: its run, since when, and the simulator's execution
/// counts before it.
struct Scan {
    run_id: Uuid,
    started: Instant,
    before: HashMap<(sim::fleet::InstanceKey, u32), u32>,
}

/// A fault running on a thread of its own (a node down, then back).
struct Outage {
    what: String,
    done: std::thread::JoinHandle<Result<(), String>>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_soak_of_back_to_back_scans_under_faults_loses_nothing_and_repeats_nothing() {
    let plan = Plan::from_env();
    let _ = tracing_subscriber::fmt()
        .with_env_filter("warn,redis=error")
        .with_test_writer()
        .try_init();
    test_support::topologies::require_rabbitmq_cluster();
    let redis_url = test_support::topologies::cluster_url();
    let mut stack =
        Stack::start_on_clusters(fleet(plan.accounts), &rabbitmq_cluster_url(), &redis_url).await;
    // Whatever happens, every node runs again afterwards — before the
    // stack's cleanup (dropped after these) purges its queues and keys.
    let _broker_nodes = RestartDeadNodes("rabbitmq-cluster");
    let _redis_nodes = RestartDeadNodes("redis-topologies");
    let targets = stack.fleet_instance_ids().len();
    // Only processes serve: SIGKILL is what is tried.
    stack.kill_scheduler();
    stack.spawn_service("scheduler", "scheduler-steady", &[]);
    stack.spawn_service("worker", "worker-steady", &[]);
    let mut scheduler_victim = 0;
    stack.spawn_service("scheduler", &format!("scheduler-{scheduler_victim}"), &[]);
    let mut workers: std::collections::VecDeque<String> = std::collections::VecDeque::new();
    let mut worker_number = 0;
    for _ in 0..VICTIM_WORKERS {
        worker_number += 1;
        let name = format!("worker-{worker_number}");
        stack.spawn_service("worker", &name, &[]);
        workers.push_back(name);
    }
    let campaign = stack.campaign("soak", support::one_step(SCAN_RATE));
    let mut summary = String::new();
    writeln!(
        summary,
        "soak: {:.1} min, {targets} targets per scan ({} accounts × 2 regions), faults: a worker every {:?}, a scheduler every {:?}, a RabbitMQ node every {:?}, a Redis failover every {:?}",
        plan.length.as_secs_f64() / 60.0,
        plan.accounts,
        plan.worker_every,
        plan.scheduler_every,
        plan.broker_every,
        plan.redis_every
    )
    .unwrap();
    eprintln!("{summary}");

    let began = Instant::now();
    let quarter_of = |at: Instant| {
        ((at - began).as_secs_f64() / plan.length.as_secs_f64() * 4.0).min(3.0) as usize
    };
    let (mut next_worker, mut next_scheduler, mut next_broker, mut next_redis) = (
        began + plan.worker_every,
        began + plan.scheduler_every,
        began + plan.broker_every,
        began + plan.redis_every,
    );
    let mut next_sample = began;
    let (mut worker_kills, mut scheduler_kills, mut node_losses, mut failovers) = (0, 0, 0, 0);
    let mut broker_node = 0;
    let mut outages: Vec<Outage> = Vec::new();
    let mut quarters = Quarters::default();
    let mut first_holdings: Option<Holdings> = None;
    let mut scans = 0;
    let mut current: Option<Scan> = None;
    let mut last_scan = None;
    let mut ended_with = None;
    loop {
        let now = Instant::now();
        // Start the next scan, or end once the time is up and the last is done.
        if current.is_none() {
            if now - began >= plan.length {
                break;
            }
            // The counts the last scan ended with: a command sent between two
            // scans counts against the next.
            let before = ended_with.take().unwrap_or_else(|| stack.executions());
            // A scheduler connected now: one connected before may have lost
            // its RabbitMQ node (the serving processes reconnect by themselves).
            let run_id = loop {
                let started = match scheduler::Scheduler::connect(stack.scheduler_config()).await {
                    Ok(starter) => {
                        starter
                            .start_run_unchecked(&campaign, scheduler::StartOptions::default())
                            .await
                    }
                    Err(error) => Err(error),
                };
                match started {
                    Ok(run_id) => break run_id,
                    Err(error) => {
                        assert!(
                            Instant::now() - now < Duration::from_secs(120),
                            "scan {} could not start within 2 minutes: {error}",
                            scans + 1
                        );
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
            };
            current = Some(Scan {
                run_id,
                started: Instant::now(),
                before,
            });
        }
        // A scan done: check it.
        if let Some(Scan {
            run_id,
            started,
            before,
        }) = &current
        {
            if let Ok(progress) = stack.scheduler.progress(*run_id).await
                && progress.finished
            {
                {
                    scans += 1;
                    let took = started.elapsed();
                    assert_eq!(
                        progress.state,
                        protocol::run::RunState::Completed,
                        "scan {scans}: {progress:#?}"
                    );
                    let records = stack.records(*run_id);
                    let distinct: std::collections::HashSet<&str> = records
                        .iter()
                        .map(|record| record.instance_id.as_str())
                        .collect();
                    assert_eq!(
                        (records.len(), distinct.len()),
                        (targets, targets),
                        "scan {scans}: exactly one result per target"
                    );
                    let after = stack.executions();
                    let fleet = &stack.sim.state.fleet;
                    let mut executed: HashMap<String, u32> = HashMap::new();
                    for (key, count) in &after {
                        let delta = count - before.get(key).copied().unwrap_or(0);
                        if delta > 0 {
                            *executed.entry(fleet.instance_id(key.0)).or_default() += delta;
                        }
                    }
                    let not_once: Vec<String> = records
                        .iter()
                        .filter(|record| executed.get(&record.instance_id) != Some(&1))
                        .map(|record| {
                            format!(
                                "{} ({}/{}) executed {} times: {} {} {}",
                                record.instance_id,
                                record.account_id,
                                record.region,
                                executed.get(&record.instance_id).copied().unwrap_or(0),
                                record.status,
                                record.status_detail,
                                record.output
                            )
                        })
                        .collect();
                    assert!(
                        not_once.is_empty() && executed.len() == targets,
                        "scan {scans}: every instance executed once; {} executed, not once: {not_once:#?}",
                        executed.len()
                    );
                    // Executed once, so never recorded as not run.
                    let mut statuses: BTreeMap<&str, usize> = BTreeMap::new();
                    for record in &records {
                        *statuses.entry(record.status.as_str()).or_default() += 1;
                    }
                    assert!(
                        !statuses.contains_key("NotStarted") && !statuses.contains_key("Cancelled"),
                        "scan {scans}: targets executed but recorded as not run: {statuses:?}"
                    );
                    ended_with = Some(after);
                    let held = holdings(&stack, Some(*run_id)).await;
                    let line = format!(
                        "scan {scans}: {targets} targets in {:.0} s, one result each ({statuses:?}), executed once each; kills so far: {worker_kills} workers, {scheduler_kills} schedulers, {node_losses} RabbitMQ nodes, {failovers} Redis failovers; {held:?}",
                        took.as_secs_f64()
                    );
                    eprintln!("{line}");
                    writeln!(summary, "{line}").unwrap();
                    first_holdings.get_or_insert(held);
                    last_scan = Some(*run_id);
                    current = None;
                    continue;
                }
            }
            assert!(
                started.elapsed() < SCAN_LIMIT,
                "scan {} did not finish within {SCAN_LIMIT:?}",
                scans + 1
            );
        }
        // Faults, each when due.
        if now >= next_worker {
            next_worker += plan.worker_every;
            if let Some(victim) = workers.pop_front() {
                stack.kill_process(&victim).await;
                worker_kills += 1;
            }
            worker_number += 1;
            let name = format!("worker-{worker_number}");
            stack.spawn_service("worker", &name, &[]);
            workers.push_back(name);
        }
        if now >= next_scheduler {
            next_scheduler += plan.scheduler_every;
            stack
                .kill_process(&format!("scheduler-{scheduler_victim}"))
                .await;
            scheduler_kills += 1;
            scheduler_victim += 1;
            stack.spawn_service("scheduler", &format!("scheduler-{scheduler_victim}"), &[]);
        }
        let node_down = outages
            .iter()
            .any(|outage| outage.what.starts_with("RabbitMQ"));
        if now >= next_broker && !node_down {
            next_broker += plan.broker_every;
            broker_node = broker_node % 3 + 1;
            let pid_file = format!("{}/{broker_node}/pid", rabbitmq_cluster_dir());
            signal("-KILL", &pid_file);
            node_losses += 1;
            outages.push(Outage {
                what: format!("RabbitMQ node {broker_node}"),
                done: std::thread::spawn(|| {
                    std::thread::sleep(NODE_DOWN);
                    if RestartDeadNodes::now("rabbitmq-cluster") {
                        Ok(())
                    } else {
                        Err("the node did not start again".into())
                    }
                }),
            });
        }
        let failing_over = outages
            .iter()
            .any(|outage| outage.what.starts_with("Redis"));
        if now >= next_redis && !failing_over {
            next_redis += plan.redis_every;
            let key = match &current {
                Some(scan) => stack.names.run_key(scan.run_id),
                None => stack.names.campaigns_index_key(),
            };
            let slot = hash_slot(&key);
            let port = master_port_of(slot);
            signal("-KILL", &format!("{}/{port}.pid", topologies_dir()));
            failovers += 1;
            outages.push(Outage {
                what: format!("Redis master {port}"),
                done: std::thread::spawn(move || {
                    let taken_over = new_master_of(slot, port, Duration::from_secs(60));
                    let restarted = RestartDeadNodes::now("redis-topologies");
                    match (taken_over, restarted) {
                        (Some(_), true) => Ok(()),
                        (None, _) => Err(format!(
                            "no replica took slot {slot} over from {port} within 60 s"
                        )),
                        (_, false) => Err("the node did not start again".into()),
                    }
                }),
            });
        }
        let mut still = Vec::new();
        for outage in outages.drain(..) {
            if outage.done.is_finished() {
                if let Err(why) = outage.done.join().unwrap() {
                    panic!("{}: {why}", outage.what);
                }
                // A fault held back by this one comes after 20 s of calm,
                // not at once.
                let calm = Instant::now() + Duration::from_secs(20);
                if outage.what.starts_with("RabbitMQ") {
                    next_broker = next_broker.max(calm);
                } else {
                    next_redis = next_redis.max(calm);
                }
            } else {
                still.push(outage);
            }
        }
        outages = still;
        // Memory and descriptors of every service, every 5 s.
        if now >= next_sample {
            next_sample += Duration::from_secs(5);
            // A steady process that died (a leak ending in an OOM kill)
            // fails here, not by leaving its quarters unsampled.
            stack.assert_processes_running();
            let quarter = quarter_of(now);
            for (name, pid) in stack.process_ids() {
                let service = if name.ends_with("-steady") {
                    name
                } else {
                    format!(
                        "{} (killed in turn)",
                        name.split('-').next().unwrap_or(&name)
                    )
                };
                quarters.sample(quarter, service, pid);
            }
            // Not while a node is down: its pid file names a dead process.
            let broker_down = outages
                .iter()
                .any(|outage| outage.what.starts_with("RabbitMQ"));
            let redis_down = outages
                .iter()
                .any(|outage| outage.what.starts_with("Redis"));
            for node in (1..=3).filter(|_| !broker_down) {
                if let Some(pid) = pid_in(&format!("{}/{node}/pid", rabbitmq_cluster_dir())) {
                    quarters.sample(quarter, format!("rabbitmq node {node}"), pid);
                }
            }
            for port in (7101..=7106).filter(|_| !redis_down) {
                if let Some(pid) = pid_in(&format!("{}/{port}.pid", topologies_dir())) {
                    quarters.sample(quarter, format!("redis {port}"), pid);
                }
            }
            quarters.sample(
                quarter,
                "simulator (the test process)".into(),
                std::process::id(),
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    for outage in outages {
        if let Err(why) = outage.done.join().unwrap() {
            panic!("{}: {why}", outage.what);
        }
    }
    assert!(scans >= 2, "at least two scans in {:?}", plan.length);
    assert!(
        scheduler_kills >= 1 && node_losses >= 1 && failovers >= 1,
        "every kind of fault happened: {scheduler_kills} schedulers, {node_losses} RabbitMQ nodes, {failovers} Redis failovers"
    );

    // The queues drain once nothing runs (late duplicates are acked as such).
    let drained = Instant::now();
    let mut last = holdings(&stack, last_scan).await;
    while last.messages > 0 && drained.elapsed() < Duration::from_secs(120) {
        tokio::time::sleep(Duration::from_secs(2)).await;
        last = holdings(&stack, last_scan).await;
    }
    let first = first_holdings.expect("a first scan");
    // Nothing ran again after its scan, the drain included.
    let twice: Vec<_> = stack
        .executions()
        .into_iter()
        .filter(|(_, count)| *count as usize != scans)
        .map(|(key, count)| (stack.sim.state.fleet.instance_id(key.0), count))
        .collect();
    assert!(
        twice.is_empty(),
        "after {scans} scans, instances executed another number of times: {twice:?}"
    );
    writeln!(
        summary,
        "totals: {scans} scans of {targets} targets ({} results, each exactly once), {worker_kills} workers and {scheduler_kills} schedulers SIGKILLed, {node_losses} RabbitMQ nodes lost, {failovers} Redis failovers",
        scans * targets
    )
    .unwrap();
    writeln!(
        summary,
        "after the first scan: {first:?}\nat the end:           {last:?}"
    )
    .unwrap();
    writeln!(
        summary,
        "peak RSS (MiB) per quarter, and the most open descriptors (the -steady rows are checked; the others are peaks over the processes that served in turn):"
    )
    .unwrap();
    for (service, peaks) in &quarters.rss_kib {
        let fds = quarters.fds.get(service).copied().unwrap_or_default();
        writeln!(
            summary,
            "  {service:32} {:>7.1} {:>7.1} {:>7.1} {:>7.1}   fds {:>4} {:>4} {:>4} {:>4}",
            peaks[0] as f64 / 1024.0,
            peaks[1] as f64 / 1024.0,
            peaks[2] as f64 / 1024.0,
            peaks[3] as f64 / 1024.0,
            fds[0],
            fds[1],
            fds[2],
            fds[3]
        )
        .unwrap();
    }
    eprintln!("{summary}");
    if let Ok(path) = std::env::var("FLOTILLA_SOAK_SUMMARY") {
        std::fs::write(&path, &summary).unwrap_or_else(|error| panic!("{path}: {error}"));
    }

    for service in ["worker-steady", "scheduler-steady"] {
        let peaks = quarters.rss_kib[service];
        assert!(
            peaks[1] > 0 && peaks[3] > 0,
            "{service}: sampled in the second and last quarters\n{summary}"
        );
        assert!(
            peaks[3] as f64 <= peaks[1] as f64 * 1.10,
            "{service}: memory grew: peak RSS {} KiB in the last quarter, {} KiB in the second\n{summary}",
            peaks[3],
            peaks[1]
        );
        let fds = quarters.fds[service];
        assert!(
            fds[3] <= fds[1] + 10,
            "{service}: open descriptors grew: {} in the last quarter, {} in the second\n{summary}",
            fds[3],
            fds[1]
        );
    }
    assert_eq!(
        last.queues, first.queues,
        "the broker grew queues\n{summary}"
    );
    assert_eq!(
        last.messages, 0,
        "the queues did not drain within 2 minutes\n{summary}"
    );
    assert!(
        last.other_keys <= first.other_keys,
        "Redis grew keys outside the runs'\n{summary}"
    );
    assert!(
        last.runs <= scans && last.run_keys <= scans * (first.scan_keys + 5),
        "runs hold more keys than {scans} scans of {} keys each\n{summary}",
        first.scan_keys
    );
    // A run's keys vary by a few with what befell it (a job's command
    // record kept for a redelivery, a wait note); they must not grow with time.
    assert!(
        last.scan_keys <= first.scan_keys + 5,
        "the last scan holds {} keys, the first {}\n{summary}",
        last.scan_keys,
        first.scan_keys
    );
    stack.teardown().await;
}

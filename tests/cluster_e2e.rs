//! Beyond one machine: scheduler replicas that share the reports, a run on a
//! Redis Cluster that loses a master mid-run, and a run on a 3-node RabbitMQ
//! cluster that loses the node every service is connected to. Each run must
//! complete with one result per target and no target run twice.
//!
//! The cluster test runs on the 3-master, 3-replica Redis Cluster of
//! `scripts/redis-topologies` (the test command starts it) and SIGKILLs the
//! master that holds the run's keys; it starts that node again afterwards (it
//! rejoins as a replica), also when the test fails. The cluster tests of every
//! suite run one at a time (`.config/nextest.toml`): a failover must not hit
//! another test's keys. The RabbitMQ cluster is `scripts/rabbitmq-cluster`'s
//! (also started by the test command); its killed node is started again too.

#![allow(clippy::unwrap_used)]

mod support;

use std::process::Command;
use std::time::Duration;

use protocol::names::hash_slot;
use sim::profile::FleetProfile;
use support::Stack;
use test_support::topologies::{
    RestartDeadNodes, master_port_of, new_master_of, rabbitmq_cluster_url, signal, topologies_dir,
};

/// SIGKILLs the process whose pid `pid_file` holds.
fn sigkill(pid_file: &str) {
    signal("-KILL", pid_file);
}

/// The scan's rate control (one shell step, from `support::one_step`).
const SCAN_RATE: &str = "  location_concurrency: 100%\n  max_concurrency: 12\n  max_errors: 100%\n";

/// Twelve locations of 8–12 instances whose commands take 0.5–3 s: a run
/// that lasts long enough to lose something in the middle of it.
fn fleet() -> FleetProfile {
    let mut profile = FleetProfile::tiny();
    profile.accounts = 6;
    profile.connection_lost_share = 0.0;
    profile.time_scale = 10.0;
    profile
}

/// The services' warnings go to the test's output: what a failover did is
/// the first thing to read when one of these fails.
fn log_warnings() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter("warn")
        .with_test_writer()
        .try_init();
}

/// Consumers of a queue, as RabbitMQ counts them.
fn consumers(queue: &str) -> u32 {
    let output = Command::new("rabbitmqctl")
        .args([
            "-q",
            "list_queues",
            "name",
            "consumers",
            "--no-table-headers",
        ])
        .output()
        .expect("this test needs rabbitmqctl (Debian's rabbitmq-server)");
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .find_map(|line| {
            let mut fields = line.split_whitespace();
            (fields.next() == Some(queue)).then(|| fields.next()?.parse().ok())?
        })
        .unwrap_or(0)
}

/// Scans the fleet with two workers, calls `kill` once a third of the targets
/// have started, and checks the run then completes with one result and one
/// execution per target. Returns the run's progress.
async fn scan_losing_something(
    stack: &mut Stack,
    campaign: &str,
    kill: impl FnOnce(&mut Stack, uuid::Uuid),
) -> scheduler::RunProgress {
    stack.spawn_worker("worker-a", 8);
    stack.spawn_worker("worker-b", 8);
    let campaign = stack.campaign(campaign, support::one_step(SCAN_RATE));
    let run_id = stack.start_run(&campaign).await;
    let targets = stack.fleet_instance_ids().len();
    stack
        .wait_for("a third of the targets", Duration::from_secs(60), |stack| {
            stack.executions().len() >= targets / 3
        })
        .await;
    kill(stack, run_id);
    let started_at_kill = stack.executions().len();
    let progress = stack
        .wait_until_final(run_id, Duration::from_secs(180))
        .await;
    stack.assert_each_target_ran_once(run_id, &progress);
    assert!(
        started_at_kill < targets,
        "the loss came before the run had sent everything ({started_at_kill} of {targets})"
    );
    progress
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_scheduler_replicas_share_the_reports_and_losing_one_mid_run_loses_nothing() {
    let mut stack = Stack::start(fleet()).await;
    let mut replicas = Vec::new();
    for name in ["replica-b", "replica-c"] {
        let mut config = stack.scheduler_config();
        config.name = format!("{name}-{}", stack.names.prefix());
        replicas.push(tokio::spawn(async move {
            scheduler::run(config, std::future::pending())
                .await
                .unwrap();
        }));
    }
    let reports = stack.names.reports_queue();
    stack
        .wait_for("three report consumers", Duration::from_secs(30), |_| {
            consumers(&reports) == 3
        })
        .await;
    // As SIGKILL would: the replica stops between any two instructions, and
    // what it held unacked goes back to the others.
    let progress =
        scan_losing_something(&mut stack, "replicas", |stack, _| stack.kill_scheduler()).await;
    let targets = stack.fleet_instance_ids().len();
    let counted: u64 = progress
        .results
        .values()
        .flat_map(|by_status| by_status.values())
        .sum();
    assert_eq!(
        counted, targets as u64,
        "every report was counted once: {progress:#?}"
    );
    for replica in replicas {
        replica.abort();
    }
    stack.teardown().await;
}

/// The services wait for a replica's copy of every write that must survive
/// (`?wait_replicas=1` in the test URL): the master of the run's keys dies,
/// its replica takes over, and — as ElastiCache replaces a lost node — the
/// dead node is started again and rejoins as the new master's replica. Until
/// then writes to those keys are refused (fail closed) and retried.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_cluster_master_killed_mid_run_loses_nothing_and_repeats_nothing() {
    log_warnings();
    let url = test_support::topologies::cluster_url();
    let _restart = RestartDeadNodes("redis-topologies");
    let mut stack = Stack::start_with(fleet(), &url).await;
    let mut killed = None;
    let progress = scan_losing_something(&mut stack, "cluster-failover", |stack, run_id| {
        let slot = hash_slot(&stack.names.run_key(run_id));
        let port = master_port_of(slot);
        sigkill(&format!("{}/{port}.pid", topologies_dir()));
        // The replacement, once a replica has taken over.
        killed = Some((
            port,
            std::thread::spawn(move || {
                let new_master = new_master_of(slot, port, Duration::from_secs(30));
                drop(RestartDeadNodes("redis-topologies"));
                new_master
            }),
        ));
    })
    .await;
    let (killed_port, replacement) = killed.expect("the master was killed");
    let new_master = replacement.join().unwrap();
    assert!(
        new_master.is_some_and(|port| port != killed_port),
        "a replica took over the run's slot from {killed_port}: {new_master:?}"
    );
    assert_eq!(
        master_port_of(hash_slot(&stack.names.run_key(progress.run_id))),
        new_master.unwrap_or_default(),
        "the restarted node rejoined as a replica"
    );
    stack.teardown().await;
}

/// Sends SIGCONT to the process whose pid `pid_file` holds when dropped: a
/// stopped node goes on, also when the test fails.
struct Resume(String);

impl Drop for Resume {
    fn drop(&mut self) {
        signal("-CONT", &self.0);
    }
}

/// Through Sentinel with `?wait_replicas=1`: the master's one replica stops
/// answering for a while mid-run (SIGSTOP), so every write that must be
/// replicated is applied on the master but refused (`NotReplicated`) — reports
/// retried after their ledger update went through, send claims retried after
/// they were taken. When it goes on, the run completes with one result per
/// target and no target run twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_that_stops_acknowledging_mid_run_holds_writes_back_and_loses_nothing() {
    log_warnings();
    let url = test_support::topologies::sentinel_url();
    let mut stack = Stack::start_with(fleet(), &url).await;
    let replica = format!("{}/7202.pid", topologies_dir());
    let mut resume = None;
    scan_losing_something(&mut stack, "replica-pause", |_, _| {
        signal("-STOP", &replica);
        let guard = Resume(replica.clone());
        resume = Some(std::thread::spawn(move || {
            std::thread::sleep(Duration::from_secs(5));
            drop(guard);
        }));
    })
    .await;
    resume
        .expect("the replica was stopped")
        .join()
        .expect("the replica went on");
    stack.teardown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rabbitmq_node_killed_mid_run_loses_nothing_and_repeats_nothing() {
    log_warnings();
    let url = rabbitmq_cluster_url();
    test_support::topologies::require_rabbitmq_cluster();
    let restart = RestartDeadNodes("rabbitmq-cluster");
    let mut stack = Stack::start_on_brokers(fleet(), &url).await;
    // The node every service is connected to (the first URL) dies: they
    // reconnect to the next, and the quorum queues elect leaders there.
    let dir = test_support::topologies::rabbitmq_cluster_dir();
    scan_losing_something(&mut stack, "broker-node-loss", |_, _| {
        sigkill(&format!("{dir}/1/pid"));
    })
    .await;
    // The whole cluster again before the cleanup deletes the test's queues.
    drop(restart);
    stack.teardown().await;
}

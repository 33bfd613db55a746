//! A network that is slow or cut rather than dead, on the real RabbitMQ and
//! Redis: a worker or the scheduler talks to them through a fault proxy of
//! its own (`test_support::proxy`), which adds latency, partitions (nothing
//! passes, nothing closes) or strands (half-open for good) that one client's
//! connections while the rest of the stack goes on.
//!
//! The bounds these tests hold, and what sets each:
//! - a half-open Redis connection is replaced within [`REDIS_DETECTION`]:
//!   the store's 1 s response timeout, after which the store connects
//!   again (`store::node`), plus the worker's next command;
//! - a half-open RabbitMQ connection is detected within
//!   [`AMQP_DETECTION`]: the 10 s AMQP heartbeat a broker connection asks
//!   for (lapin gives up after two heartbeat intervals of silence, RabbitMQ
//!   likewise on its side and requeues the connection's unacked jobs);
//! - the kill switch: no SendCommand later than 1 s after the switch, plus
//!   three one-way trips of the worker's link to Redis (the gate's answer,
//!   then the send mark's round trip before the call).

#![allow(clippy::unwrap_used)]

mod support;

use std::time::Duration;

use protocol::run::RunState;
use store::{RedisStore, Store as _};
use support::Stack;
use test_support::proxy::{FaultProxy, Link};

const REDIS_DETECTION: Duration = Duration::from_secs(10);
const AMQP_DETECTION: Duration = Duration::from_secs(35);

/// The connections of one worker (or scheduler), each through a proxy.
struct Proxied {
    redis: FaultProxy,
    amqp: FaultProxy,
}

impl Proxied {
    async fn start() -> Self {
        Self {
            redis: FaultProxy::start("127.0.0.1:6379").await,
            amqp: FaultProxy::start("127.0.0.1:5672").await,
        }
    }

    fn redis_url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.redis.port())
    }

    fn amqp_url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.amqp.port())
    }
}

/// Starts a worker whose Redis and RabbitMQ connections go through proxies
/// of its own.
async fn spawn_proxied_worker(stack: &mut Stack, name: &str, concurrency: u16) -> Proxied {
    let proxied = Proxied::start().await;
    let mut config = stack.worker_config(name, concurrency);
    config.amqp_url = proxied.amqp_url();
    let store = RedisStore::connect(&proxied.redis_url(), stack.names.clone())
        .await
        .unwrap();
    stack.spawn_worker_on(config, store);
    proxied
}

/// Commands the simulator received after `since_ms`.
fn sent_after(stack: &Stack, since_ms: u64) -> Vec<u64> {
    stack
        .commands()
        .into_iter()
        .map(|command| command.received_unix_ms)
        .filter(|received| *received > since_ms)
        .collect()
}

/// Campaign YAML sending one command a second, every batch admitted at once.
fn one_send_a_second() -> String {
    format!(
        "{}api_rate_limits:\n  send_command: 1\n",
        support::one_step("  max_concurrency: 100%\n  max_errors: 0\n")
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_partitioned_from_redis_sends_nothing_and_the_run_completes_once_healed() {
    // 8 batches of 50, all admitted at once, one SendCommand a second.
    let mut stack = Stack::start(support::single_location(400, false)).await;
    let proxied = spawn_proxied_worker(&mut stack, "worker-cut", 8).await;
    let campaign = stack.campaign("partitioned", one_send_a_second());
    let run_id = stack.start_run(&campaign).await;
    stack.wait_for_commands(2).await;

    proxied.redis.partition();
    let partitioned_ms = support::now_unix_ms();
    tokio::time::sleep(Duration::from_secs(6)).await;
    // A send whose gate and mark were answered before the cut may still go
    // out (a SendCommand to the simulator on loopback: well within 1 s).
    let late = sent_after(&stack, partitioned_ms + 1_000);
    assert!(
        late.is_empty(),
        "sent while cut off from Redis: {} commands, the last {} ms after the cut",
        late.len(),
        late.iter().max().unwrap_or(&0) - partitioned_ms
    );
    assert!(
        stack.commands().len() < 8,
        "the scenario must leave admitted batches unsent at the cut"
    );

    proxied.redis.heal();
    let progress = stack
        .wait_until_final(run_id, Duration::from_secs(120))
        .await;
    stack.assert_each_target_ran_once(run_id, &progress);
    stack.teardown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_open_connections_are_replaced_within_their_bounds() {
    let mut stack = Stack::start(support::single_location(100, false)).await;
    let proxied = spawn_proxied_worker(&mut stack, "worker-stranded", 8).await;
    let first = stack.campaign(
        "before",
        support::one_step("  max_concurrency: 50\n  max_errors: 0\n"),
    );
    let run_id = stack.start_run(&first).await;
    let progress = stack
        .wait_until_final(run_id, Duration::from_secs(60))
        .await;
    assert_eq!(progress.state, RunState::Completed, "{progress:#?}");
    let (redis_before, amqp_before) = (proxied.redis.accepted(), proxied.amqp.accepted());

    // Every open connection of the worker goes silent for good: no FIN,
    // no RST, nothing answers.
    proxied.redis.strand();
    proxied.amqp.strand();
    let stranded = tokio::time::Instant::now();
    let mut redis_at = None;
    let mut amqp_at = None;
    while (redis_at.is_none() || amqp_at.is_none()) && stranded.elapsed() < AMQP_DETECTION * 2 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if redis_at.is_none() && proxied.redis.accepted() > redis_before {
            redis_at = Some(stranded.elapsed());
        }
        if amqp_at.is_none() && proxied.amqp.accepted() > amqp_before {
            amqp_at = Some(stranded.elapsed());
        }
    }
    assert!(
        redis_at.is_some_and(|after| after <= REDIS_DETECTION),
        "a half-open Redis connection must be replaced within {REDIS_DETECTION:?}; a new one came after {redis_at:?}"
    );
    assert!(
        amqp_at.is_some_and(|after| after <= AMQP_DETECTION),
        "a half-open RabbitMQ connection must be replaced within {AMQP_DETECTION:?}; a new one came after {amqp_at:?}"
    );

    // The worker works on its new connections.
    let second = stack.campaign(
        "after",
        support::one_step("  max_concurrency: 50\n  max_errors: 0\n"),
    );
    let run_id = stack.start_run(&second).await;
    let progress = stack
        .wait_until_final(run_id, Duration::from_secs(90))
        .await;
    assert_eq!(progress.state, RunState::Completed, "{progress:#?}");
    let records = stack.records(run_id);
    let instances: std::collections::HashSet<_> =
        records.iter().map(|record| &record.instance_id).collect();
    assert_eq!(
        (records.len(), instances.len()),
        (100, 100),
        "one result per target"
    );
    stack.teardown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_cut_from_rabbitmq_mid_command_loses_nothing_and_runs_nothing_twice() {
    // Commands take 0.5-3 s: the cut worker holds jobs it has sent for.
    let mut stack = Stack::start(support::slow_single_location(120)).await;
    let cut = spawn_proxied_worker(&mut stack, "worker-cut", 8).await;
    let campaign = stack.campaign(
        "cut-mid-command",
        support::one_step("  max_concurrency: 40\n  max_errors: 0\n"),
    );
    let run_id = stack.start_run(&campaign).await;
    stack.wait_for_commands(2).await;
    // Its link to RabbitMQ goes silent for good; it still reaches Redis and
    // SSM, so it may finish what it sent and find it cannot report.
    cut.amqp.strand();
    cut.amqp.partition();
    stack.spawn_worker("worker-whole", 8);
    let progress = stack
        .wait_until_final(run_id, Duration::from_secs(150))
        .await;
    stack.assert_each_target_ran_once(run_id, &progress);
    stack.teardown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_scheduler_partitioned_from_redis_stops_admitting_and_resumes() {
    // Two batches of 50 in flight at a time, each command 0.5-3 s.
    let mut stack = Stack::start(support::slow_single_location(400)).await;
    let proxied = Proxied::start().await;
    stack.scheduler_config_mut().redis_url = proxied.redis_url();
    stack.kill_scheduler();
    stack.start_scheduler();
    stack.spawn_worker("worker-a", 8);
    let campaign = stack.campaign(
        "scheduler-cut",
        support::one_step("  max_concurrency: 100\n  max_errors: 0\n"),
    );
    let run_id = stack.start_run(&campaign).await;
    stack.wait_for_commands(2).await;

    proxied.redis.partition();
    // What was admitted before the cut may still be sent.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let sent_at_cut = stack.commands().len();
    tokio::time::sleep(Duration::from_secs(8)).await;
    assert_eq!(
        stack.commands().len(),
        sent_at_cut,
        "batches were admitted while the scheduler was cut off from Redis"
    );
    let progress = stack.scheduler.progress(run_id).await.unwrap();
    assert!(!progress.finished, "{progress:#?}");

    proxied.redis.heal();
    let progress = stack
        .wait_until_final(run_id, Duration::from_secs(120))
        .await;
    stack.assert_each_target_ran_once(run_id, &progress);
    stack.teardown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_kill_switch_holds_its_bound_over_a_slow_link_to_redis() {
    let latency = Duration::from_millis(150);
    let jitter = Duration::from_millis(100);
    let mut stack = Stack::start(support::slow_single_location(120)).await;
    let slow = spawn_proxied_worker(&mut stack, "worker-slow", 8).await;
    slow.redis.set_link(Link {
        latency,
        jitter,
        bytes_per_second: None,
    });
    let campaign = stack.campaign(
        "killswitch-slow-link",
        support::one_step("  max_concurrency: 24\n  max_errors: 0\n"),
    );
    let run_id = stack.start_run(&campaign).await;
    stack.wait_for_commands(3).await;
    let engaged_ms = support::now_unix_ms();
    stack
        .store
        .engage_kill_switch(&store::KillScope::Global, "test: stop over a slow link")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(4)).await;
    let bound_ms = 1_000 + 3 * u64::try_from((latency + jitter).as_millis()).unwrap();
    let late = sent_after(&stack, engaged_ms + bound_ms);
    assert!(
        late.is_empty(),
        "sent {} commands more than {bound_ms} ms after the kill switch",
        late.len()
    );
    let progress = stack.scheduler.progress(run_id).await.unwrap();
    assert!(!progress.state.is_final(), "{progress:#?}");

    stack
        .store
        .release_kill_switch(&store::KillScope::Global)
        .await
        .unwrap();
    let progress = stack
        .wait_until_final(run_id, Duration::from_secs(90))
        .await;
    stack.assert_each_target_ran_once(run_id, &progress);
    stack.teardown().await;
}

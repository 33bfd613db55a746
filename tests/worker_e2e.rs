//! The worker issue's promises, end to end: the simulator over HTTP with the real
//! aws-sdk clients, real RabbitMQ and Redis (each test under its own prefix), a
//! scheduler and in-process workers.

#![allow(clippy::unwrap_used)]

mod support;

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use protocol::run::RunState;
use protocol::status::StatusDetail;
use scheduler::StartOptions;
use sim::fleet::Outcome;
use sim::profile::FleetProfile;
use store::Store;
use support::Stack;

const TWO_STEPS: &str = "
steps:
  - name: configure
    document: AWS-RunShellScript
    parameters:
      commands: [\"echo configure\"]
    timeout: 60s
  - name: install
    document: AWS-ConfigureAWSPackage
    parameters:
      action: Install
      name: AcmeAgent
    timeout: 60s
rate_control:
  location_concurrency: 100%
  max_concurrency: 100%
  max_errors: 100%
";

/// What the simulator will answer for `instance_id` running `document`.
fn expected_status(stack: &Stack, instance_id: &str, document: &str) -> StatusDetail {
    let fleet = &stack.sim.state.fleet;
    let key = fleet.parse_instance_id(instance_id).unwrap();
    if !fleet.is_online(key) {
        return StatusDetail::DeliveryTimedOut;
    }
    let (outcome, seconds) = fleet.invocation_plan(key, document, 0);
    match outcome {
        Outcome::Success if seconds <= 60.0 => StatusDetail::Success,
        Outcome::Success | Outcome::TimedOut => StatusDetail::ExecutionTimedOut,
        Outcome::Failed if seconds > 60.0 => StatusDetail::ExecutionTimedOut,
        Outcome::Failed => StatusDetail::Failed,
        Outcome::Undeliverable => StatusDetail::Undeliverable,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_two_step_campaign_yields_one_result_per_target_per_step_with_the_right_status() {
    let mut profile = FleetProfile::tiny();
    // Enough failures to matter on a few dozen targets.
    profile.outcomes.failed = 15;
    let mut stack = Stack::start(profile).await;
    let metrics_port = support::free_port();
    let mut config = stack.worker_config("worker-a", 8);
    config.metrics_addr = Some(format!("127.0.0.1:{metrics_port}").parse().unwrap());
    let (_keep_running, _worker_a) = stack.spawn_stoppable_worker(config);
    stack.spawn_worker("worker-b", 8);
    let campaign = stack.campaign("two-steps", TWO_STEPS);
    let run_id = stack.start_run(&campaign).await;
    let progress = stack
        .wait_until_final(run_id, Duration::from_secs(60))
        .await;
    assert_eq!(progress.state, RunState::Completed, "{progress:#?}");

    let instances = stack.fleet_instance_ids();
    let records = stack.records(run_id);
    let found: std::collections::HashSet<&str> =
        records.iter().map(|r| r.instance_id.as_str()).collect();
    let missing: Vec<&String> = instances
        .iter()
        .filter(|i| !found.contains(i.as_str()))
        .collect();
    assert_eq!(
        progress.total_targets,
        instances.len() as u64,
        "missing {missing:?}"
    );
    let records = stack.records(run_id);
    let mut by_step: BTreeMap<u16, HashMap<String, StatusDetail>> = BTreeMap::new();
    for record in &records {
        let previous = by_step
            .entry(record.step_index)
            .or_default()
            .insert(record.instance_id.clone(), record.status_detail().unwrap());
        assert!(
            previous.is_none(),
            "two results for {} in step {}",
            record.instance_id,
            record.step_index
        );
    }
    let step0 = &by_step[&0];
    assert_eq!(
        step0.len(),
        instances.len(),
        "every target has a step 0 result"
    );
    let mut succeeded = Vec::new();
    for instance_id in &instances {
        let expected = expected_status(&stack, instance_id, "AWS-RunShellScript");
        assert_eq!(step0[instance_id], expected, "{instance_id} step 0");
        if expected == StatusDetail::Success {
            succeeded.push(instance_id.clone());
        }
    }
    assert!(succeeded.len() < instances.len(), "the fleet has failures");
    let step1 = by_step.get(&1).cloned().unwrap_or_default();
    assert_eq!(
        step1.len(),
        succeeded.len(),
        "only step 0's successes run step 1"
    );
    for instance_id in &succeeded {
        let expected = expected_status(&stack, instance_id, "AWS-ConfigureAWSPackage");
        assert_eq!(step1[instance_id], expected, "{instance_id} step 1");
    }
    assert_eq!(progress.step_results(0), instances.len() as u64);
    assert_eq!(progress.step_results(1), succeeded.len() as u64);
    assert!(
        stack.executions().values().all(|runs| *runs == 1),
        "no target ran a document twice"
    );

    let metrics = support::http_get(metrics_port, "/metrics").await;
    for expected in [
        "flotilla_worker_jobs_total{kind=\"execute\",outcome=\"held\"}",
        "flotilla_worker_target_results_total{campaign=\"two-steps\",status=\"Success\"}",
        "flotilla_worker_aws_calls_total{operation=\"SendCommand\",outcome=\"ok\"}",
        "flotilla_worker_aws_call_seconds_bucket{operation=\"ListCommandInvocations\"",
        "flotilla_worker_role_assumptions_total{outcome=\"ok\"}",
        "flotilla_worker_kill_switch_engaged 0",
        "flotilla_worker_connected{service=\"rabbitmq\"} 1",
        "flotilla_worker_connected{service=\"redis\"} 1",
    ] {
        assert!(
            metrics.contains(expected),
            "metrics lack {expected}:\n{metrics}"
        );
    }
    for account_id in stack.account_ids() {
        assert!(
            !metrics.contains(&account_id),
            "an account id is a label:\n{metrics}"
        );
    }
    assert!(!metrics.contains("i-0"), "an instance id is a label");
    assert!(!metrics.contains("AKIA"), "credentials in metrics");
    stack.teardown().await;
}

const ONE_STEP: &str = "
steps:
  - name: configure
    document: AWS-RunShellScript
    parameters:
      commands: [\"echo configure\"]
    timeout: 60s
rate_control:
  location_concurrency: 100%
  max_concurrency: 100%
  max_errors: 100%
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_killed_in_the_middle_of_execute_and_poll_lose_nothing_and_repeat_nothing() {
    let mut profile = FleetProfile::tiny();
    // Commands take 0.5–3 s, so polls are in flight when workers die.
    profile.time_scale = 10.0;
    let mut stack = Stack::start(profile).await;
    stack.attempt_timeout = Duration::from_secs(1);
    // The first SendCommand is carried out but its answer is held back: the
    // worker that sent it is killed before it hears the command id.
    stack.inject(sim::state::Fault::DelayNext {
        operation: "SendCommand".into(),
        millis: 800,
        count: 1,
    });
    let first = stack.spawn_worker("worker-a", 4);
    let campaign = stack.campaign("kill-workers", ONE_STEP);
    let run_id = stack.start_run(&campaign).await;
    stack
        .wait_for("the first command", Duration::from_secs(20), |stack| {
            stack.sim.state.lock().stats.commands >= 1
        })
        .await;
    stack.kill_worker(first);

    // The next worker is killed while it waits for a poll's answer.
    stack.inject(sim::state::Fault::DelayNext {
        operation: "ListCommandInvocations".into(),
        millis: 2_000,
        count: 1,
    });
    let polls_before = stack.calls("ListCommandInvocations");
    let second = stack.spawn_worker("worker-b", 4);
    stack
        .wait_for("a poll", Duration::from_secs(30), |stack| {
            stack.calls("ListCommandInvocations") > polls_before
        })
        .await;
    stack.kill_worker(second);

    stack.spawn_worker("worker-c", 4);
    let progress = stack
        .wait_until_final(run_id, Duration::from_secs(90))
        .await;
    stack.assert_each_target_ran_once(run_id, &progress);
    assert!(
        stack.calls("ListCommands") >= 1,
        "the redelivered execute job looked for the command its dead worker sent"
    );
    stack.teardown().await;
}

/// A command that ends within two seconds costs no Poll message: the worker
/// that sent it keeps the Execute delivery and polls in place. With no hold
/// slot (`held_polls: 0`) every first poll travels as a Poll job through a
/// delay queue instead, and the results are the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_polls_are_made_in_place_unless_no_hold_slot_is_free() {
    // Four batches; every command ends within a second.
    let batches = 4;
    for held_polls in [worker::DEFAULT_HELD_POLLS, 0] {
        let mut stack = Stack::start(support::single_location(200, false)).await;
        let metrics_port = support::free_port();
        let mut config = stack.worker_config("worker-holding", 2);
        config.held_polls = held_polls;
        config.metrics_addr = Some(format!("127.0.0.1:{metrics_port}").parse().unwrap());
        let (_keep_running, _worker) = stack.spawn_stoppable_worker(config);
        let campaign = stack.campaign(
            "polls-in-place",
            support::one_step("  max_concurrency: 100%\n  max_errors: 0\n"),
        );
        let run_id = stack.start_run(&campaign).await;
        let progress = stack
            .wait_until_final(run_id, Duration::from_secs(60))
            .await;
        assert_eq!(progress.state, RunState::Completed, "{progress:#?}");
        stack.assert_each_target_ran_once(run_id, &progress);
        assert_eq!(stack.calls("SendCommand"), batches);

        let metrics = support::http_get(metrics_port, "/metrics").await;
        let jobs = |kind: &str, outcome: &str| {
            let series =
                format!("flotilla_worker_jobs_total{{kind=\"{kind}\",outcome=\"{outcome}\"}}");
            support::metric_value(&metrics, &series).unwrap_or(0.0)
        };
        if held_polls > 0 {
            assert_eq!(jobs("execute", "held"), batches as f64, "{metrics}");
            assert_eq!(jobs("poll", "done"), batches as f64, "{metrics}");
            assert!(
                !metrics.contains("outcome=\"continued\""),
                "no Poll job went through a delay queue:\n{metrics}"
            );
        } else {
            assert_eq!(jobs("execute", "held"), 0.0, "{metrics}");
            assert_eq!(jobs("execute", "continued"), batches as f64, "{metrics}");
            assert_eq!(jobs("poll", "done"), batches as f64, "{metrics}");
        }
        stack.teardown().await;
    }
}

/// A worker that dies while it holds Execute deliveries for their first
/// poll hands them back unacked; the next worker finds each job's command
/// in its send record and polls it — nothing is sent twice, nothing lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_while_holding_first_polls_loses_nothing_and_sends_nothing_twice() {
    let batches = 4;
    let mut stack = Stack::start(support::single_location(200, false)).await;
    let holding = stack.spawn_worker("worker-holding", 4);
    let campaign = stack.campaign(
        "killed-holding",
        support::one_step("  max_concurrency: 100%\n  max_errors: 0\n"),
    );
    let run_id = stack.start_run(&campaign).await;
    stack
        .wait_for("every batch sent", Duration::from_secs(20), |stack| {
            stack.calls("SendCommand") == batches
        })
        .await;
    stack.kill_worker(holding);
    assert_eq!(
        stack.calls("ListCommandInvocations"),
        0,
        "the worker died before any first poll (2 s after its send)"
    );

    stack.spawn_worker("worker-next", 4);
    let progress = stack
        .wait_until_final(run_id, Duration::from_secs(60))
        .await;
    assert_eq!(progress.state, RunState::Completed, "{progress:#?}");
    stack.assert_each_target_ran_once(run_id, &progress);
    assert_eq!(stack.calls("SendCommand"), batches, "nothing sent twice");
    stack.teardown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exhausted_error_budget_halts_the_run_and_nothing_is_sent_after() {
    // 40 targets that all fail, one at a time, two failures allowed.
    let mut stack = Stack::start(support::single_location(40, true)).await;
    stack.spawn_worker("worker-a", 8);
    stack.spawn_worker("worker-b", 8);
    let campaign = stack.campaign(
        "budget",
        "
steps:
  - name: configure
    document: AWS-RunShellScript
    parameters:
      commands: [\"false\"]
    timeout: 60s
rate_control:
  max_concurrency: 1
  max_errors: 2
",
    );
    let run_id = stack.start_run(&campaign).await;
    let progress = stack
        .wait_until_final(run_id, Duration::from_secs(60))
        .await;
    assert_eq!(progress.state, RunState::Halted, "{progress:#?}");
    assert!(
        progress.reason.contains("error budget"),
        "{}",
        progress.reason
    );
    // The target that crossed the budget was the only one in flight: the third
    // failure halts the run, and nothing else was ever sent.
    assert_eq!(progress.failures, 3, "{progress:#?}");
    let sent_at_halt = stack.commands().len();
    assert_eq!(sent_at_halt, 3, "three targets were sent the step");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        stack.commands().len(),
        sent_at_halt,
        "no SendCommand after the halt"
    );

    let records = stack.records(run_id);
    assert_eq!(records.len(), 40, "every target has a result");
    let not_started = records
        .iter()
        .filter(|record| record.status_detail() == Some(StatusDetail::NotStarted))
        .count();
    assert_eq!(not_started, 37, "the rest is reported as not started");
    assert_eq!(progress.results[&0]["Not Started"], 37);
    stack.teardown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_kill_switch_stops_sends_within_a_second_and_the_run_resumes_on_release() {
    // Commands take 0.5–3 s: the run is still sending when the switch is engaged.
    let mut stack = Stack::start(support::slow_single_location(120)).await;
    stack.spawn_worker("worker-a", 8);
    stack.spawn_worker("worker-b", 8);
    let campaign = stack.campaign(
        "killswitch",
        support::one_step("  max_concurrency: 24\n  max_errors: 0\n"),
    );
    let run_id = stack.start_run(&campaign).await;
    stack.wait_for_commands(3).await;
    let engaged_at = support::now_unix_ms();
    stack
        .store
        .engage_kill_switch(&store::KillScope::Global, "test: stop everything")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let commands = stack.commands();
    let last = commands
        .iter()
        .map(|command| command.received_unix_ms)
        .max()
        .unwrap();
    assert!(
        last <= engaged_at + 1_000,
        "a SendCommand arrived {} ms after the engage",
        last - engaged_at
    );
    let progress = stack.scheduler.progress(run_id).await.unwrap();
    assert!(
        !progress.state.is_final(),
        "the run waits, it does not end: {progress:#?}"
    );
    let sent_while_engaged = commands.len();

    stack
        .store
        .release_kill_switch(&store::KillScope::Global)
        .await
        .unwrap();
    let progress = stack
        .wait_until_final(run_id, Duration::from_secs(60))
        .await;
    assert!(
        stack.commands().len() > sent_while_engaged,
        "sending resumed"
    );
    stack.assert_each_target_ran_once(run_id, &progress);
    stack.teardown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_together_keep_to_the_campaigns_rate_limit_without_throttles() {
    let mut profile = support::single_location(1_000, false);
    // The simulator would throttle anything faster than 3 SendCommand/s.
    profile.api_limits.send_command = sim::profile::Bucket {
        rate: 3.0,
        burst: 3.0,
    };
    let mut stack = Stack::start(profile).await;
    for name in ["worker-a", "worker-b", "worker-c"] {
        stack.spawn_worker(name, 16);
    }
    let campaign = stack.campaign(
        "rate",
        format!(
            "{}api_rate_limits:\n  send_command: 2\n",
            support::one_step("  max_concurrency: 100%\n  max_errors: 0\n")
        ),
    );
    let run_id = stack.start_run(&campaign).await;
    let progress = stack
        .wait_until_final(run_id, Duration::from_secs(60))
        .await;
    stack.assert_each_target_ran_once(run_id, &progress);
    let throttles = stack.sim.state.lock().stats.throttles.clone();
    assert!(
        throttles.is_empty(),
        "the simulator throttled flotilla: {throttles:?}"
    );
    let commands = stack.commands();
    assert_eq!(commands.len(), 20, "1,000 targets in batches of 50");
    let first = commands.iter().map(|c| c.received_unix_ms).min().unwrap();
    let last = commands.iter().map(|c| c.received_unix_ms).max().unwrap();
    // The first two sends spend the one-second burst; the other 18 wait for tokens.
    let rate = 18.0 / ((last - first) as f64 / 1000.0);
    assert!(rate <= 2.0 * 1.05, "faster than the limit: {rate:.2}/s");
    assert!(
        rate >= 2.0 * 0.8,
        "slower than 80% of the limit: {rate:.2}/s"
    );
    stack.teardown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttling_is_retried_and_never_spends_the_error_budget() {
    let mut stack = Stack::start(support::single_location(100, false)).await;
    stack.inject(sim::state::Fault::FailNext {
        operation: "SendCommand".into(),
        code: "ThrottlingException".into(),
        count: 6,
    });
    stack.inject(sim::state::Fault::FailNext {
        operation: "ListCommandInvocations".into(),
        code: "ThrottlingException".into(),
        count: 3,
    });
    stack.spawn_worker("worker-a", 8);
    let campaign = stack.campaign(
        "throttled",
        ONE_STEP
            .replace("max_errors: 100%", "max_errors: 0")
            .as_str(),
    );
    let run_id = stack.start_run(&campaign).await;
    let progress = stack
        .wait_until_final(run_id, Duration::from_secs(60))
        .await;
    stack.assert_each_target_ran_once(run_id, &progress);
    assert_eq!(progress.failures, 0);
    assert_eq!(
        stack.sim.state.lock().stats.injected_failures,
        9,
        "every injected throttle was met"
    );
    assert_eq!(
        stack.calls("SendCommand"),
        2 + 6,
        "two batches, six throttled attempts"
    );
    stack.teardown().await;
}

/// A role session that expires between the send mark and SendCommand
/// (the simulator's accelerated clock expires sessions within a minute):
/// the same delivery assumes the role again and sends, instead of leaving
/// its mark to hold the batch back for a minute. Each batch sent once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_session_at_send_time_is_renewed_and_sent_at_once() {
    let mut stack = Stack::start(support::single_location(20, false)).await;
    stack.inject(sim::state::Fault::FailNext {
        operation: "SendCommand".into(),
        code: "ExpiredTokenException".into(),
        count: 1,
    });
    stack.spawn_worker("worker-a", 4);
    let campaign = stack.campaign("expiring", ONE_STEP);
    let run_id = stack.start_run(&campaign).await;
    // A minute's hold would miss this bound by far; the run itself takes
    // a few seconds.
    let progress = stack
        .wait_until_final(run_id, Duration::from_secs(40))
        .await;
    stack.assert_each_target_ran_once(run_id, &progress);
    assert_eq!(stack.sim.state.lock().stats.injected_failures, 1);
    let commands = stack.commands();
    let sent: usize = commands.iter().map(|command| command.targets).sum();
    assert_eq!(sent, 20, "every target sent once: {commands:?}");
    assert_eq!(
        stack.calls("SendCommand"),
        commands.len() as u64 + 1,
        "one attempt refused as expired, then each batch's one command"
    );
    stack.teardown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redis_unreachable_nothing_is_sent_and_nothing_is_lost() {
    let redis = support::PrivateRedis::start().await;
    let mut profile = support::single_location(120, false);
    profile.time_scale = 10.0;
    let mut stack = Stack::start_with(profile, &redis.url).await;
    stack.spawn_worker("worker-a", 8);
    stack.spawn_worker("worker-b", 8);
    let campaign = stack.campaign(
        "redis-outage",
        support::one_step("  max_concurrency: 24\n  max_errors: 0\n"),
    );
    let run_id = stack.start_run(&campaign).await;
    stack.wait_for_commands(2).await;
    redis.pause();
    let stopped_at = support::now_unix_ms();
    tokio::time::sleep(Duration::from_secs(4)).await;
    let during: Vec<u64> = stack
        .commands()
        .iter()
        .map(|command| command.received_unix_ms)
        .filter(|received| *received > stopped_at + 1_000)
        .collect();
    assert!(
        during.is_empty(),
        "SendCommand while Redis was unreachable: {during:?}"
    );
    let sent_before = stack.commands().len();
    redis.resume();

    let progress = stack
        .wait_until_final(run_id, Duration::from_secs(90))
        .await;
    assert!(
        stack.commands().len() > sent_before,
        "sending resumed with Redis"
    );
    stack.assert_each_target_ran_once(run_id, &progress);
    stack.teardown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_told_to_stop_finishes_its_jobs_and_exits_cleanly() {
    let mut stack = Stack::start(support::slow_single_location(100)).await;
    let config = stack.worker_config("worker-stopping", 8);
    let (shutdown, stopping) = stack.spawn_stoppable_worker(config);
    let campaign = stack.campaign(
        "graceful",
        support::one_step("  max_concurrency: 20\n  max_errors: 0\n"),
    );
    let run_id = stack.start_run(&campaign).await;
    stack.wait_for_commands(1).await;
    shutdown.send(()).unwrap();
    let stopped = tokio::time::timeout(Duration::from_secs(15), stopping)
        .await
        .expect("the worker stops within its shutdown timeout");
    stopped.unwrap().unwrap();

    // What it had not finished is someone else's now.
    stack.spawn_worker("worker-next", 8);
    let progress = stack
        .wait_until_final(run_id, Duration::from_secs(90))
        .await;
    stack.assert_each_target_ran_once(run_id, &progress);
    stack.teardown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_and_the_scheduler_reconnect_when_the_broker_drops_them() {
    let mut stack = Stack::start(support::slow_single_location(100)).await;
    let worker_name = format!("worker-{}", stack.names.prefix());
    stack.spawn_worker(&worker_name, 8);
    let campaign = stack.campaign(
        "reconnect",
        support::one_step("  max_concurrency: 20\n  max_errors: 0\n"),
    );
    let run_id = stack.start_run(&campaign).await;
    stack.wait_for_commands(1).await;
    assert_eq!(support::close_rabbitmq_connections(&worker_name), 1);
    // The report consumer's connection, and the test's own scheduler handle's.
    assert_eq!(
        support::close_rabbitmq_connections(&stack.scheduler_connection_name()),
        2
    );
    let progress = stack
        .wait_until_final(run_id, Duration::from_secs(90))
        .await;
    stack.assert_each_target_ran_once(run_id, &progress);
    stack.teardown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn urgent_work_overtakes_a_bulk_backlog() {
    let mut profile = support::single_location(500, false);
    profile.accounts = 2;
    let mut stack = Stack::start(profile).await;
    stack.spawn_worker("worker-a", 2);
    let accounts = stack.account_ids();
    let step = support::one_step("  max_concurrency: 100%\n  max_errors: 0\n");
    // Ten batches that may only be sent one every two seconds: a backlog.
    let bulk = stack.campaign_in(
        "bulk-scan",
        &accounts[..1],
        format!("{step}api_rate_limits:\n  send_command: 0.5\n"),
    );
    let bulk_run = stack.start_run(&bulk).await;
    stack
        .wait_for(
            "the bulk run's first command",
            Duration::from_secs(30),
            |stack| !stack.commands().is_empty(),
        )
        .await;
    let urgent = stack.campaign_in("agent-install", &accounts[1..], step);
    let urgent_run = stack
        .scheduler
        .start_run_unchecked(
            &urgent,
            StartOptions {
                priority: protocol::job::Priority::Urgent,
                ..StartOptions::default()
            },
        )
        .await
        .unwrap();
    let urgent_progress = stack
        .wait_until_final(urgent_run, Duration::from_secs(60))
        .await;
    assert_eq!(urgent_progress.state, RunState::Completed);
    let bulk_progress = stack.scheduler.progress(bulk_run).await.unwrap();
    assert!(
        bulk_progress.step_results(0) < bulk_progress.total_targets / 2,
        "the urgent run waited behind the bulk backlog: {bulk_progress:#?}"
    );
    stack.teardown().await;
}

/// A patch scan whose DescribeInstancePatchStates calls all fail with `code`.
async fn patch_scan_with_patch_states_failing(
    code: &str,
) -> (Stack, Vec<scheduler::sink::ResultRecord>) {
    let mut stack = Stack::start(support::single_location(40, false)).await;
    stack.spawn_worker("worker-a", 8);
    stack.inject(sim::state::Fault::FailNext {
        operation: "DescribeInstancePatchStates".into(),
        code: code.into(),
        count: 1_000,
    });
    let campaign = stack.campaign(
        "scan",
        "
steps:
  - name: scan
    document: AWS-RunPatchBaseline
    parameters:
      Operation: Scan
    timeout: 60s
rate_control:
  max_concurrency: 100%
  max_errors: 0
",
    );
    let run_id = stack.start_run(&campaign).await;
    // Commands take moments here: a minute covers "within a minute of its end".
    let progress = stack
        .wait_until_final(run_id, Duration::from_secs(60))
        .await;
    assert_eq!(progress.state, RunState::Completed, "{progress:#?}");
    let records = stack.records(run_id);
    assert_eq!(records.len(), 40, "every target's result arrived");
    for record in &records {
        assert_eq!(
            record.status_detail(),
            Some(StatusDetail::Success),
            "{record:?}"
        );
        assert!(record.compliance.is_none());
        let missing = record.compliance_missing.as_deref().unwrap_or_default();
        assert!(
            missing.contains("DescribeInstancePatchStates failed") && missing.contains(code),
            "the counts are marked missing with the reason: {record:?}"
        );
    }
    (stack, records)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_patch_state_read_never_withholds_or_changes_results() {
    let (stack, _) = patch_scan_with_patch_states_failing("InternalFailure").await;
    // Retried inside the poll (a few attempts, seconds apart), never as a job.
    let batches = stack.commands().len() as u64;
    assert!(stack.calls("DescribeInstancePatchStates") <= 4 * batches);
    stack.teardown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_denied_on_patch_states_is_not_retried() {
    let (stack, _) = patch_scan_with_patch_states_failing("AccessDeniedException").await;
    assert_eq!(
        stack.calls("DescribeInstancePatchStates"),
        stack.commands().len() as u64,
        "one call per batch: AccessDenied is never repeated"
    );
    stack.teardown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_instances_full_output_lands_in_s3_one_object_per_instance_and_step() {
    use futures_util::TryStreamExt as _;
    use object_store::{ObjectStore as _, ObjectStoreExt as _};
    let mut stack = Stack::start(support::single_location(6, false)).await;
    stack.spawn_worker("worker-a", 8);
    let campaign = stack.campaign(
        "logged",
        "
steps:
  - name: first
    document: AWS-RunShellScript
    parameters: { commands: [\"echo one\"] }
    timeout: 60s
  - name: second
    document: AWS-RunShellScript
    parameters: { commands: [\"echo two\"] }
    timeout: 60s
rate_control:
  max_errors: 0
output_logging:
  s3: s3://flotilla-output/runs/patch-tuesday/
  cloudwatch_log_group: /flotilla/patch-tuesday
",
    );
    let run_id = stack.start_run(&campaign).await;
    let progress = stack
        .wait_until_final(run_id, Duration::from_secs(60))
        .await;
    assert_eq!(progress.state, RunState::Completed, "{progress:#?}");
    // SendCommand carried the settings.
    let commands = stack.commands();
    assert_eq!(commands.len(), 2, "one command per step");
    for command in &commands {
        assert_eq!(
            command.output_s3,
            Some(("flotilla-output".into(), "runs/patch-tuesday".into()))
        );
        assert_eq!(
            command.cloudwatch_log_group.as_deref(),
            Some("/flotilla/patch-tuesday")
        );
    }
    // Read back through S3, as an operator would.
    let s3 = object_store::aws::AmazonS3Builder::new()
        .with_bucket_name("flotilla-output")
        .with_region("us-east-1")
        .with_endpoint(stack.sim.endpoint_url())
        .with_allow_http(true)
        .with_access_key_id("AKIAFLOTILLASIMULATOR")
        .with_secret_access_key("flotilla-test-secret")
        .build()
        .unwrap();
    let prefix = object_store::path::Path::from("runs/patch-tuesday");
    let listed: Vec<object_store::ObjectMeta> = s3.list(Some(&prefix)).try_collect().await.unwrap();
    assert_eq!(listed.len(), 12, "6 instances × 2 steps: {listed:#?}");
    let records = stack.records(run_id);
    assert_eq!(records.len(), 12);
    for record in &records {
        let location = record.output_location.as_deref().unwrap();
        let command_id = record.command_id.as_deref().unwrap();
        assert_eq!(
            location,
            format!(
                "s3://flotilla-output/runs/patch-tuesday/{command_id}/{}/",
                record.instance_id
            )
        );
        let key = object_store::path::Path::from(format!(
            "runs/patch-tuesday/{command_id}/{}/awsrunShellScript/stdout",
            record.instance_id
        ));
        let body = s3.get(&key).await.unwrap().bytes().await.unwrap();
        let text = String::from_utf8(body.to_vec()).unwrap();
        assert!(text.contains(&record.instance_id), "{text}");
    }
    stack.teardown().await;
}

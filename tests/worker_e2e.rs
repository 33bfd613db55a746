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

fn fleet_instance_ids(stack: &Stack) -> Vec<String> {
    let fleet = &stack.sim.state.fleet;
    let regions = fleet.profile.regions.len() as u8;
    (0..fleet.profile.accounts)
        .flat_map(|account| (0..regions).map(move |region| (account, region)))
        .flat_map(|(account, region)| fleet.location_instances(account, region))
        .map(|key| fleet.instance_id(key))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_two_step_campaign_yields_one_result_per_target_per_step_with_the_right_status() {
    let mut profile = FleetProfile::tiny();
    // Enough failures to matter on a few dozen targets.
    profile.outcomes.failed = 15;
    let mut stack = Stack::start(profile).await;
    stack.spawn_worker("worker-a", 8);
    stack.spawn_worker("worker-b", 8);
    let campaign = stack.campaign("two-steps", TWO_STEPS);
    let run_id = stack
        .scheduler
        .start_run(&campaign, StartOptions::default())
        .await
        .unwrap();
    let progress = stack.wait_until_final(run_id, Duration::from_secs(60)).await;
    assert_eq!(progress.state, RunState::Completed, "{progress:#?}");

    let instances = fleet_instance_ids(&stack);
    let records = stack.records(run_id);
    let found: std::collections::HashSet<&str> = records.iter().map(|r| r.instance_id.as_str()).collect();
    let missing: Vec<&String> = instances.iter().filter(|i| !found.contains(i.as_str())).collect();
    assert_eq!(progress.total_targets, instances.len() as u64, "missing {missing:?}");
    let records = stack.records(run_id);
    let mut by_step: BTreeMap<u16, HashMap<String, StatusDetail>> = BTreeMap::new();
    for record in &records {
        let previous = by_step
            .entry(record.step_index)
            .or_default()
            .insert(record.instance_id.clone(), record.status_detail().unwrap());
        assert!(previous.is_none(), "two results for {} in step {}", record.instance_id, record.step_index);
    }
    let step0 = &by_step[&0];
    assert_eq!(step0.len(), instances.len(), "every target has a step 0 result");
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
    assert_eq!(step1.len(), succeeded.len(), "only step 0's successes run step 1");
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

/// Checks the run completed with exactly one result per target and that no
/// target ran the step twice.
fn assert_each_target_ran_once(stack: &Stack, run_id: uuid::Uuid, progress: &scheduler::RunProgress) {
    assert_eq!(progress.state, RunState::Completed, "{progress:#?}");
    let instances = fleet_instance_ids(stack);
    let records = stack.records(run_id);
    let mut seen = std::collections::HashSet::new();
    for record in &records {
        assert!(seen.insert(record.instance_id.clone()), "two results for {}", record.instance_id);
    }
    assert_eq!(records.len(), instances.len(), "one result per target");
    let executions = stack.executions();
    assert!(
        executions.values().all(|runs| *runs == 1),
        "a target ran the step twice: {:?}",
        executions.values().max()
    );
}

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
    let run_id = stack
        .scheduler
        .start_run(&campaign, StartOptions::default())
        .await
        .unwrap();
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
    let progress = stack.wait_until_final(run_id, Duration::from_secs(90)).await;
    assert_each_target_ran_once(&stack, run_id, &progress);
    assert!(
        stack.calls("ListCommands") >= 1,
        "the redelivered execute job looked for the command its dead worker sent"
    );
    stack.teardown().await;
}

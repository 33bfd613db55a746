//! The scheduler issue's promises, end to end: the simulator, real RabbitMQ and
//! Redis (each test under its own prefix), the scheduler and in-process workers.

#![allow(clippy::unwrap_used)]

mod support;

use protocol::run_fields::RunField;
use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use protocol::run::RunState;
use protocol::status::StatusDetail;
use scheduler::triggers::{AlertmanagerPayload, Event};
use sim::profile::FleetProfile;
use support::{SentCommand, Stack};

/// The most of `weight(command)` outstanding at any simulated instant.
fn peak(commands: &[SentCommand], key: impl Fn(&SentCommand) -> (String, usize)) -> usize {
    // Intervals per key (merged), then a sweep over their edges.
    let mut spans: BTreeMap<String, (f64, f64, usize)> = BTreeMap::new();
    let mut edges: Vec<(f64, i64)> = Vec::new();
    for command in commands {
        let (group, weight) = key(command);
        if group.is_empty() {
            edges.push((command.requested_at, weight as i64));
            edges.push((command.finished_at, -(weight as i64)));
            continue;
        }
        let span =
            spans
                .entry(group)
                .or_insert((command.requested_at, command.finished_at, weight));
        span.0 = span.0.min(command.requested_at);
        span.1 = span.1.max(command.finished_at);
    }
    for (start, end, weight) in spans.into_values() {
        edges.push((start, weight as i64));
        edges.push((end, -(weight as i64)));
    }
    // Ends before starts at the same instant: a slot freed is a slot reusable.
    edges.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    let (mut current, mut most) = (0i64, 0i64);
    for (_, delta) in edges {
        current += delta;
        most = most.max(current);
    }
    most as usize
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_locations_at_a_time_and_correct_totals() {
    let mut stack = Stack::start(FleetProfile::tiny()).await;
    stack.spawn_worker("worker-a", 16);
    stack.spawn_worker("worker-b", 16);
    let campaign = stack.campaign(
        "three-at-a-time",
        support::one_step(
            "  location_concurrency: 3\n  max_concurrency: 100%\n  max_errors: 100%\n",
        ),
    );
    let run_id = stack.start_run(&campaign).await;
    let progress = stack
        .wait_until_final(run_id, Duration::from_secs(90))
        .await;
    assert_eq!(progress.state, RunState::Completed, "{progress:#?}");
    assert_eq!(progress.locations, 6);

    let commands = stack.commands();
    let locations: HashSet<String> = commands
        .iter()
        .map(|command| format!("{}/{}", command.account_id, command.region))
        .collect();
    assert_eq!(locations.len(), 6, "every location was worked on");
    let most = peak(&commands, |command| {
        (format!("{}/{}", command.account_id, command.region), 1)
    });
    assert!(most <= 3, "{most} locations were active at once");

    let records = stack.records(run_id);
    assert_eq!(
        records.len() as u64,
        progress.total_targets,
        "one result per target"
    );
    let report = flotilla::report::build(run_id, &records);
    let report_total: u64 = report
        .by_status
        .values()
        .flat_map(|statuses| statuses.values())
        .sum();
    assert_eq!(report_total, progress.total_targets);
    assert_eq!(
        report
            .by_status
            .values()
            .next()
            .unwrap()
            .get("Success")
            .copied(),
        progress.results[&0].get("Success").copied(),
        "the report and the live counters agree"
    );
    stack.teardown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_percent_concurrency_keeps_fifty_of_five_hundred_outstanding() {
    let mut profile = support::single_location(500, false);
    profile.time_scale = 20.0;
    let mut stack = Stack::start(profile).await;
    stack.spawn_worker("worker-a", 16);
    stack.spawn_worker("worker-b", 16);
    let campaign = stack.campaign(
        "ten-percent",
        format!(
            "{}api_rate_limits:\n  send_command: 50\n  list_command_invocations: 100\n",
            support::one_step("  max_concurrency: 10%\n  max_errors: 0\n")
        ),
    );
    let run_id = stack.start_run(&campaign).await;
    let progress = stack
        .wait_until_final(run_id, Duration::from_secs(120))
        .await;
    assert_eq!(progress.state, RunState::Completed, "{progress:#?}");
    let commands = stack.commands();
    let most = peak(&commands, |command| (String::new(), command.targets));
    assert!(
        most <= 50,
        "{most} targets' commands were outstanding at once"
    );
    assert!(most >= 25, "concurrency was used: only {most} at once");
    assert_eq!(stack.records(run_id).len(), 500);
    stack.teardown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_percentage_budget_halts_at_its_count_and_the_report_shows_what_never_started() {
    let mut stack = Stack::start(support::single_location(100, true)).await;
    stack.spawn_worker("worker-a", 8);
    let campaign = stack.campaign(
        "five-percent",
        support::one_step("  max_concurrency: 10%\n  max_errors: 5%\n"),
    );
    let run_id = stack.start_run(&campaign).await;
    let progress = stack
        .wait_until_final(run_id, Duration::from_secs(60))
        .await;
    assert_eq!(progress.state, RunState::Halted, "{progress:#?}");
    // 5% of 100 targets: 5 failures allowed, the 6th halts the run.
    assert_eq!(progress.allowed_errors, Some(5));
    assert!(progress.reason.contains("5 allowed"), "{}", progress.reason);
    assert!(progress.failures > 5, "{progress:#?}");
    let records = stack.records(run_id);
    assert_eq!(records.len(), 100, "every target has a result");
    let sent: usize = stack.commands().iter().map(|command| command.targets).sum();
    let report = flotilla::report::build(run_id, &records);
    let statuses = report.by_status.values().next().unwrap();
    assert_eq!(statuses["Not Started"] as usize, 100 - sent, "{statuses:?}");
    assert_eq!(statuses["Failed"] as usize, sent);
    stack.teardown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_running_event_runs_the_triggered_campaign_on_that_instance_first() {
    let mut profile = support::single_location(500, false);
    profile.accounts = 2;
    let mut stack = Stack::start(profile).await;
    stack.spawn_worker("worker-a", 4);
    let accounts = stack.account_ids();
    let bulk = stack.campaign_in(
        "bulk-scan",
        &accounts[..1],
        format!(
            "{}api_rate_limits:\n  send_command: 0.5\n",
            support::one_step("  max_concurrency: 100%\n  max_errors: 0\n")
        ),
    );
    let bulk_run = stack.start_run(&bulk).await;
    let triggered = stack.campaign_in(
        "agent-install",
        &accounts,
        format!(
            "{}triggers:\n  - event: ec2-instance-running\n",
            support::one_step("  max_concurrency: 100%\n  max_errors: 0\n")
        ),
    );
    stack.apply_approved(&triggered).await;
    stack
        .wait_for(
            "the bulk run's first command",
            Duration::from_secs(30),
            |stack| !stack.commands().is_empty(),
        )
        .await;

    let fleet = &stack.sim.state.fleet;
    let instance_id = fleet.instance_id(sim::fleet::InstanceKey {
        account: 1,
        region: 0,
        index: 7,
    });
    let event: Event = serde_json::from_value(serde_json::json!({
        "version": "0",
        "id": "7bf73129-1428-4cd3-a780-95db273d1602",
        "detail-type": "EC2 Instance State-change Notification",
        "source": "aws.ec2",
        "account": accounts[1],
        "time": "2026-11-23T02:00:00Z",
        "region": "us-east-1",
        "resources": [],
        "detail": { "instance-id": instance_id, "state": "running" }
    }))
    .unwrap();
    let started = stack.scheduler.handle_event(&event).await.unwrap();
    assert_eq!(started.len(), 1, "one campaign has the trigger");
    assert_eq!(started[0].campaign, "agent-install");
    let progress = stack
        .wait_until_final(started[0].run_id, Duration::from_secs(60))
        .await;
    assert_eq!(progress.state, RunState::Completed);
    let records = stack.records(started[0].run_id);
    assert_eq!(records.len(), 1, "only the new instance: {records:?}");
    assert_eq!(records[0].instance_id, instance_id);
    let bulk_progress = stack.scheduler.progress(bulk_run).await.unwrap();
    assert!(
        !bulk_progress.finished,
        "the triggered run finished before the bulk backlog drained"
    );

    // An event for an account or state no campaign covers starts nothing.
    let mut stopped = event.clone();
    stopped.detail = serde_json::json!({ "instance-id": instance_id, "state": "stopping" });
    assert!(
        stack
            .scheduler
            .handle_event(&stopped)
            .await
            .unwrap()
            .is_empty()
    );
    stack.teardown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scheduler_restarted_mid_run_loses_no_result() {
    let mut stack = Stack::start(support::slow_single_location(200)).await;
    stack.spawn_worker("worker-a", 8);
    let campaign = stack.campaign(
        "restart",
        support::one_step("  max_concurrency: 40\n  max_errors: 0\n"),
    );
    let run_id = stack.start_run(&campaign).await;
    stack
        .wait_for("some results", Duration::from_secs(60), |stack| {
            stack.commands().len() >= 3
        })
        .await;
    stack.kill_scheduler();
    tokio::time::sleep(Duration::from_secs(3)).await;
    stack.start_scheduler();
    let progress = stack
        .wait_until_final(run_id, Duration::from_secs(120))
        .await;
    assert_eq!(progress.state, RunState::Completed, "{progress:#?}");
    let records = stack.records(run_id);
    let unique: HashSet<&str> = records
        .iter()
        .map(|record| record.instance_id.as_str())
        .collect();
    assert_eq!(records.len(), 200);
    assert_eq!(unique.len(), 200);
    assert_eq!(
        progress.step_results(0),
        200,
        "the counters lost nothing either"
    );
    assert!(stack.executions().values().all(|runs| *runs == 1));
    stack.teardown().await;
}

/// Ready messages in the deployment's work queues (what workers would take).
async fn queued_jobs(broker: &broker::Broker) -> u32 {
    let names = broker.names();
    support::ready_in(broker, &[names.bulk_queue(), names.urgent_queue()]).await
}

/// Ready messages in the reports queue.
/// A target's result of a step that succeeded (command `c-1`).
fn succeeded(instance_id: &str) -> protocol::report::TargetResult {
    protocol::report::TargetResult {
        instance_id: instance_id.to_string(),
        status: StatusDetail::Success,
        command_id: Some("c-1".into()),
        requested_at: None,
        started_at: None,
        finished_at: None,
        response_code: Some(0),
        output_excerpt: "ok".into(),
        compliance: None,
        compliance_missing: None,
    }
}

async fn queued_reports(broker: &broker::Broker) -> u32 {
    support::ready_in(broker, &[broker.names().reports_queue()]).await
}

/// Chaos II: a scheduler that applied a bundle and died before acking it
/// leaves it to the next one, redelivered, every report a duplicate. The
/// next one does what the first may have left undone — re-publish what the
/// run admitted, advance it — once for the run, not once per report: 32
/// duplicates of one run re-published its admitted batches 32 times before.
/// The test plays the worker (reports signed with the worker key), so
/// nothing consumes the jobs and each publish is counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redelivered_bundle_of_duplicates_is_followed_up_once_per_run() {
    use protocol::envelope;
    use protocol::job::UnixMillis;
    use protocol::report::{Reports, StepResults};

    const DUPLICATES: usize = 32;
    let mut stack = Stack::start(support::single_location(100, false)).await;
    let campaign = stack.campaign(
        "redelivered",
        support::one_step("  max_concurrency: 20\n  max_errors: 0\n"),
    );
    let run_id = stack.start_run(&campaign).await;
    let location = stack.scheduler.plan(run_id).await.unwrap().locations[0].clone();
    let worker_key = stack.keys.worker.signer().unwrap().clone();
    let seal = |reports: Vec<protocol::Report>| {
        envelope::seal(&Reports(reports), &worker_key, UnixMillis::now()).unwrap()
    };
    let test_broker = broker::Broker::connect(&stack.amqp_url, stack.names.clone(), "test")
        .await
        .unwrap();
    let discovered = support::discovered(run_id, &location, 100);
    test_broker
        .publish_sealed_report(&seal(discovered))
        .await
        .unwrap();
    let ledger = stack.scheduler.ledger().clone();
    let mut admitted = Vec::new();
    for _ in 0..100 {
        admitted = ledger.admitted(run_id).await.unwrap();
        if !admitted.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let first = admitted
        .first()
        .cloned()
        .expect("batches admitted after discovery");
    let results = protocol::Report::StepResults(StepResults {
        run_id,
        location: location.clone(),
        batch_id: first.batch_id,
        step_index: first.step_index,
        results: first
            .instance_ids
            .iter()
            .map(|instance_id| succeeded(instance_id))
            .collect(),
    });
    test_broker
        .publish_sealed_report(&seal(vec![results.clone()]))
        .await
        .unwrap();
    stack
        .wait_for(
            "the first batch applied",
            Duration::from_secs(10),
            |stack| stack.records(run_id).len() == first.instance_ids.len(),
        )
        .await;
    for _ in 0..100 {
        if queued_reports(&test_broker).await == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Settled: the next batch is admitted in its place.
    tokio::time::sleep(Duration::from_secs(1)).await;
    stack.kill_scheduler();
    // Its connections closed from the broker's side too: an aborted task's
    // consumer may linger a moment and take the bundle first.
    support::close_rabbitmq_connections(&stack.scheduler_connection_name());
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        queued_reports(&test_broker).await,
        0,
        "the first scheduler held no report unacked"
    );

    // The bundle a dead holder applied: taken once, not acked, given back.
    test_broker
        .publish_sealed_report(&seal(vec![results; DUPLICATES]))
        .await
        .unwrap();
    let holder = broker::Broker::connect(&stack.amqp_url, stack.names.clone(), "holder")
        .await
        .unwrap();
    let mut consumer = holder
        .consume(&stack.names.reports_queue(), 1, "holder")
        .await
        .unwrap();
    let held = tokio::time::timeout(Duration::from_secs(10), consumer.next())
        .await
        .expect("the bundle is delivered")
        .expect("a delivery")
        .unwrap();
    assert!(!held.redelivered());
    holder.close().await;
    drop(held);

    let still_admitted = ledger.admitted(run_id).await.unwrap().len() as u32;
    assert!(
        still_admitted > 0,
        "batches stay admitted: nothing ran them"
    );
    let before = queued_jobs(&test_broker).await;
    stack.start_scheduler();
    // The next scheduler re-publishes what is admitted when it starts, and
    // once more for the redelivered bundle's run.
    let expected = before + 2 * still_admitted;
    // Up to 30 s for a loaded machine; then 2 s more for what a per-report
    // follow-up would still be publishing.
    for _ in 0..300 {
        if queued_reports(&test_broker).await == 0 && queued_jobs(&test_broker).await >= expected {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let published = queued_jobs(&test_broker).await - before;
    assert_eq!(
        published,
        2 * still_admitted,
        "{still_admitted} admitted batches: re-published once at start and once for the \
         redelivered bundle of {DUPLICATES} duplicates, not once per duplicate"
    );
    assert_eq!(
        stack.records(run_id).len(),
        first.instance_ids.len(),
        "a duplicate writes no second result"
    );
    test_broker.close().await;
    stack.teardown().await;
}

/// A bundle's discovery and results reports are applied together (one
/// ledger call per run, one admission): what a user sees is what reports
/// one by one gave — every page counted once, a repeat in the bundle
/// changing nothing, the limits resolved, each target one result, and the
/// next batches admitted in their place.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bundle_of_pages_and_results_counts_each_once_and_admits_after_it() {
    use protocol::envelope;
    use protocol::job::UnixMillis;
    use protocol::report::{Reports, StepResults};

    let stack = Stack::start(support::single_location(120, false)).await;
    let campaign = stack.campaign(
        "bundled-pages",
        support::one_step("  max_concurrency: 20\n  max_errors: 0\n"),
    );
    let run_id = stack.start_run(&campaign).await;
    let location = stack.scheduler.plan(run_id).await.unwrap().locations[0].clone();
    let worker_key = stack.keys.worker.signer().unwrap().clone();
    let seal = |reports: Vec<protocol::Report>| {
        envelope::seal(&Reports(reports), &worker_key, UnixMillis::now()).unwrap()
    };
    let test_broker = broker::Broker::connect(&stack.amqp_url, stack.names.clone(), "test")
        .await
        .unwrap();
    // Three pages (50, 50, 20) and the first again, in one bundle.
    let mut pages = support::discovered(run_id, &location, 120);
    pages.push(pages[0].clone());
    test_broker
        .publish_sealed_report(&seal(pages))
        .await
        .unwrap();
    let ledger = stack.scheduler.ledger().clone();
    let mut admitted = Vec::new();
    for _ in 0..100 {
        admitted = ledger.admitted(run_id).await.unwrap();
        if admitted.len() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let progress = stack.scheduler.progress(run_id).await.unwrap();
    assert_eq!(
        (
            progress.total_targets,
            progress.locations_discovered,
            progress.state
        ),
        (120, 1, RunState::Running),
        "every page once, the location discovered: {progress:#?}"
    );
    assert_eq!(
        admitted
            .iter()
            .map(|batch| batch.instance_ids.len())
            .collect::<Vec<_>>(),
        [10, 10],
        "batches of half of max_concurrency, two in flight"
    );
    let result = |batch: &scheduler::ledger::BatchEntry| {
        protocol::Report::StepResults(StepResults {
            run_id,
            location: location.clone(),
            batch_id: batch.batch_id,
            step_index: batch.step_index,
            results: batch
                .instance_ids
                .iter()
                .map(|instance_id| succeeded(instance_id))
                .collect(),
        })
    };
    // Both batches' results and the first's again, in one bundle.
    let bundle = vec![
        result(&admitted[0]),
        result(&admitted[1]),
        result(&admitted[0]),
    ];
    test_broker
        .publish_sealed_report(&seal(bundle))
        .await
        .unwrap();
    stack
        .wait_for("both batches applied", Duration::from_secs(10), |stack| {
            stack.records(run_id).len() >= 20
        })
        .await;
    for _ in 0..100 {
        if queued_reports(&test_broker).await == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut next = Vec::new();
    for _ in 0..100 {
        next = ledger.admitted(run_id).await.unwrap();
        if next.len() == 2 && next.iter().all(|batch| !admitted.contains(batch)) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let records = stack.records(run_id);
    let distinct: HashSet<&str> = records
        .iter()
        .map(|record| record.instance_id.as_str())
        .collect();
    assert_eq!(
        (records.len(), distinct.len()),
        (20, 20),
        "each target of the two batches one result, the repeat none"
    );
    let progress = stack.scheduler.progress(run_id).await.unwrap();
    assert_eq!(
        (progress.targets_in_flight, progress.results[&0]["Success"]),
        (20, 20),
        "the next two batches in flight, 20 counted: {progress:#?}"
    );
    assert!(
        next.len() == 2 && next.iter().all(|batch| !admitted.contains(batch)),
        "the next batches admitted after the bundle: {next:?}"
    );
    assert_eq!(
        support::ready_in(&test_broker, &[stack.names.dead_letter_queue()]).await,
        0,
        "nothing refused"
    );
    test_broker.close().await;
    stack.teardown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_firing_alert_pauses_the_named_campaign_and_resuming_continues_it() {
    let mut stack = Stack::start(support::slow_single_location(120)).await;
    let port = stack.serve_api().await;
    stack.spawn_worker("worker-a", 8);
    let campaign = stack.campaign(
        "alerting",
        support::one_step("  max_concurrency: 20\n  max_errors: 0\n"),
    );
    let run_id = stack.start_run(&campaign).await;
    stack.wait_for_commands(1).await;
    let payload: AlertmanagerPayload = serde_json::from_value(serde_json::json!({
        "version": "4",
        "status": "firing",
        "receiver": "flotilla",
        "groupKey": "{}:{alertname=\"FlotillaTargetErrorRateHigh\"}",
        "alerts": [{
            "status": "firing",
            "labels": { "alertname": "FlotillaTargetErrorRateHigh", "campaign": "alerting", "severity": "page" },
            "annotations": { "summary": "error rate above 5%" },
            "startsAt": "2026-11-23T02:00:00Z"
        }]
    }))
    .unwrap();
    let actions = stack.scheduler.handle_alerts(&payload).await.unwrap();
    assert_eq!(actions[0].action, "run_paused");
    let paused = stack.scheduler.progress(run_id).await.unwrap();
    assert_eq!(paused.state, RunState::Paused);
    assert!(
        paused.reason.contains("FlotillaTargetErrorRateHigh"),
        "{}",
        paused.reason
    );
    // In-flight commands finish; nothing new is sent while paused.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let sent = stack.commands().len();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(stack.commands().len(), sent, "sent while paused");
    assert!(!stack.scheduler.progress(run_id).await.unwrap().finished);

    // The alert still fires: a plain resume is refused, an override works.
    let refused = stack.scheduler.resume(run_id, "looks fine").await;
    assert!(
        matches!(&refused, Err(scheduler::SchedulerError::AlertFiring(message)) if message.contains("FlotillaTargetErrorRateHigh") && message.contains("--despite-alert")),
        "{refused:?}"
    );
    assert_eq!(
        stack.scheduler.progress(run_id).await.unwrap().state,
        RunState::Paused
    );
    // Through the API too: refused, then overridden with a reason that the
    // request's audit record keeps.
    let path = format!("/runs/{run_id}/resume");
    let (status, body) = support::http(port, "POST", &path, "application/json", "").await;
    assert!(
        status == 409 && body.contains("--despite-alert"),
        "{status} {body}"
    );
    let (status, body) = support::http(
        port,
        "POST",
        &path,
        "application/json",
        r#"{"reason": "resumed", "despite_alert": "a known flaky host"}"#,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let (_, trail) = support::http(port, "GET", "/audit?action=runs:resume", "", "").await;
    assert!(
        trail.contains("despite a firing alert: a known flaky host"),
        "{trail}"
    );
    let resumed = stack.scheduler.progress(run_id).await.unwrap();
    assert!(
        resumed
            .reason
            .contains("despite alert FlotillaTargetErrorRateHigh: a known flaky host"),
        "{}",
        resumed.reason
    );
    // Paused again; once the alert resolves, a plain resume works.
    assert!(stack.scheduler.pause(run_id, "operator").await.unwrap());
    let mut resolved = payload.clone();
    resolved.alerts[0].status = "resolved".into();
    stack.scheduler.handle_alerts(&resolved).await.unwrap();
    assert!(
        stack
            .scheduler
            .firing_alerts("alerting")
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        stack
            .scheduler
            .resume(run_id, "alert resolved")
            .await
            .unwrap()
    );
    let progress = stack
        .wait_until_final(run_id, Duration::from_secs(90))
        .await;
    assert_eq!(progress.state, RunState::Completed);
    assert_eq!(stack.records(run_id).len(), 120);
    stack.teardown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_http_api_stores_versions_starts_runs_and_refuses_bad_input() {
    let mut stack = Stack::start(support::single_location(20, false)).await;
    let port = stack.serve_api().await;
    stack.spawn_worker("worker-a", 8);

    let spec = serde_json::to_string(
        &stack
            .campaign("api-scan", support::one_step("  max_errors: 0\n"))
            .spec,
    )
    .unwrap();
    let (status, body) = support::http(port, "POST", "/campaigns", "application/json", &spec).await;
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains("\"version\":1") && body.contains("\"changed\":true"),
        "{body}"
    );
    let (_, body) = support::http(port, "POST", "/campaigns", "application/json", &spec).await;
    assert!(
        body.contains("\"version\":1") && body.contains("\"changed\":false"),
        "same spec, same version: {body}"
    );
    let changed = spec.replace("echo hi", "echo hello");
    let (_, body) = support::http(port, "POST", "/campaigns", "application/json", &changed).await;
    assert!(
        body.contains("\"version\":2"),
        "a changed spec is a new version: {body}"
    );

    let (status, body) = support::http(
        port,
        "POST",
        "/campaigns",
        "application/yaml",
        "name: x\nsteps: []\n",
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("problems"), "{body}");
    let (status, body) =
        support::http(port, "POST", "/campaigns/nope/runs", "application/json", "").await;
    assert_eq!(status, 404, "{body}");
    let (status, _) = support::http(port, "GET", "/runs/not-a-uuid", "text/plain", "").await;
    assert_eq!(status, 400);
    let (status, body) = support::http(port, "POST", "/kill", "application/json", "{}").await;
    assert_eq!(status, 400, "a kill switch needs a reason: {body}");

    let (status, body) = support::http(
        port,
        "POST",
        "/campaigns/api-scan/runs",
        "application/json",
        "{}",
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let started: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        started["campaign_version"], 2,
        "the run records the version it used"
    );
    let run_id: uuid::Uuid = serde_json::from_value(started["run_id"].clone()).unwrap();
    let progress = stack
        .wait_until_final(run_id, Duration::from_secs(60))
        .await;
    assert_eq!(progress.state, RunState::Completed);
    let records = stack.records(run_id);
    assert!(
        records
            .iter()
            .all(|record| record.status_detail() == Some(StatusDetail::Success))
    );
    let (status, body) =
        support::http(port, "GET", &format!("/runs/{run_id}"), "text/plain", "").await;
    assert_eq!(status, 200);
    assert!(body.contains("\"location_states\""), "{body}");
    let metrics = support::http_get(port, "/metrics").await;
    assert!(
        metrics.contains("flotilla_scheduler_runs{state=\"Completed\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("flotilla_queue_messages{queue=\"jobs.bulk\"}"),
        "{metrics}"
    );
    stack.teardown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_yaml_alias_bomb_is_refused_and_nothing_is_stored() {
    let mut stack = Stack::start(support::single_location(1, false)).await;
    let port = stack.serve_api().await;
    // A 100 KB anchored string aliased 2,000 times inside a valid field: 200 MB
    // once expanded, 108 KB on the wire.
    let bomb = format!(
        "name: bomb\naccounts: {{ids: [\"123456789012\"]}}\nregions: [us-east-1]\ntargets: {{all: true}}\nsteps:\n  - name: s\n    document: AWS-RunShellScript\n    parameters:\n      commands: [&big \"{}\", {}]\n",
        "x".repeat(100_000),
        vec!["*big"; 2_000].join(", ")
    );
    let (status, body) = support::http(port, "POST", "/campaigns", "application/yaml", &bomb).await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("aliases"), "{body}");
    let (status, body) = support::http(port, "GET", "/campaigns/bomb", "text/plain", "").await;
    assert_eq!(status, 404, "nothing was stored: {body}");
    let (_, body) = support::http(port, "GET", "/campaigns", "text/plain", "").await;
    assert!(!body.contains("bomb"), "{body}");
    stack.teardown().await;
}

/// Deeply nested YAML, and a spec whose accounts × regions are 360 million
/// locations: each refused in well under a second, and `/healthz` answers
/// while they are parsed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nested_and_hugely_expanding_specs_are_refused_fast_while_healthz_answers() {
    let mut stack = Stack::start(support::single_location(1, false)).await;
    let port = stack.serve_api().await;
    let nested = format!(
        "name: deep\nsteps: {}{}\n",
        "[".repeat(50_000),
        "]".repeat(50_000)
    );
    let accounts: Vec<String> = (0..20_000u64)
        .map(|n| format!("\"{:012}\"", 100_000_000_000 + n))
        .collect();
    let regions = vec!["us-east-1"; 18_000].join(",");
    let wide = format!(
        "name: wide\naccounts: {{ids: [{}]}}\nregions: [{regions}]\ntargets: {{all: true}}\nsteps:\n  - name: scan\n    document: AWS-RunPatchBaseline\n    parameters:\n      Operation: [Scan]\n",
        accounts.join(",")
    );
    assert!(
        wide.len() < protocol::campaign::MAX_SPEC_BYTES,
        "{}",
        wide.len()
    );
    let healthz = tokio::spawn(async move {
        let mut answered = 0;
        for _ in 0..20 {
            let (status, _) = support::http(port, "GET", "/healthz", "text/plain", "").await;
            answered += u32::from(status == 200);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        answered
    });
    // The nested one stops at the YAML parser's own recursion limit or at
    // flotilla's depth pre-scan, whichever meets it first.
    for (spec, expected) in [
        (&nested, "recursion limit|nested deeper"),
        (&wide, "360000000 locations"),
    ] {
        let started = std::time::Instant::now();
        let (status, body) =
            support::http(port, "POST", "/campaigns", "application/yaml", spec).await;
        let took = started.elapsed();
        assert_eq!(status, 400, "{body}");
        assert!(
            expected.split('|').any(|text| body.contains(text)),
            "{body}"
        );
        // Debug build on 2 cores; the old parser took 9 s on the nested one.
        assert!(took < Duration::from_secs(1), "took {took:?}");
    }
    assert_eq!(healthz.await.unwrap(), 20, "/healthz answered every time");
    stack.teardown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_triggers_delay_holds_the_run_pending_until_its_time() {
    let mut stack = Stack::start(support::single_location(20, false)).await;
    stack.spawn_worker("worker-a", 4);
    let accounts = stack.account_ids();
    let delayed = stack.campaign(
        "agent-install-later",
        format!(
            "{}triggers:\n  - event: ssm-instance-registered\n    delay: 2s\n",
            support::one_step("  max_errors: 0\n")
        ),
    );
    stack.apply_approved(&delayed).await;
    let instance_id = stack.sim.state.fleet.instance_id(sim::fleet::InstanceKey {
        account: 0,
        region: 0,
        index: 3,
    });
    let event: Event = serde_json::from_value(serde_json::json!({
        "detail-type": "SSM Managed Instance Registration",
        "source": "aws.ssm",
        "account": accounts[0],
        "region": "us-east-1",
        "detail": { "instance-id": instance_id }
    }))
    .unwrap();
    let started = stack.scheduler.handle_event(&event).await.unwrap();
    assert_eq!(started.len(), 1);
    let run_id = started[0].run_id;
    assert_eq!(
        stack.scheduler.progress(run_id).await.unwrap().state,
        RunState::Pending,
        "waiting for the trigger's delay"
    );
    let progress = stack
        .wait_until_final(run_id, Duration::from_secs(30))
        .await;
    assert_eq!(progress.state, RunState::Completed);
    assert_eq!(stack.records(run_id).len(), 1);
    stack.teardown().await;
}

/// A scheduler replica on `clock` with a 2 s lease; (its name, its task).
fn start_replica(
    stack: &Stack,
    name: &str,
    clock: &scheduler::schedules::SchedulerClock,
) -> (String, tokio::task::JoinHandle<()>) {
    let mut config = stack.scheduler_config();
    config.name = format!("{name}-{}", stack.names.prefix());
    config.lease_ttl = Duration::from_secs(2);
    config.clock = clock.clone();
    let full_name = config.name.clone();
    let task = tokio::spawn(async move {
        scheduler::run(config, std::future::pending())
            .await
            .unwrap();
    });
    (full_name, task)
}

/// The fire log as (campaign, occurrence ms, verb).
async fn fire_log(stack: &Stack) -> Vec<(String, i64, String)> {
    stack
        .scheduler
        .schedule_fires()
        .await
        .unwrap()
        .iter()
        .map(|line| {
            let parts: Vec<&str> = line.split(' ').collect();
            (
                parts[0].to_string(),
                parts[1].parse().unwrap(),
                parts[2].to_string(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn occurrences_missed_while_no_scheduler_ran_are_run_once_or_skipped() {
    let mut stack = Stack::start(support::single_location(5, false)).await;
    stack.kill_scheduler();
    stack.spawn_worker("worker-a", 8);
    let clock = scheduler::schedules::SchedulerClock::accelerated(
        chrono::DateTime::parse_from_rfc3339("2026-11-23T00:00:30Z")
            .unwrap()
            .into(),
        20,
    );
    let rest = support::one_step(
        "  max_errors: 100%
",
    );
    for (name, on_missed) in [("catch-up", "run-once"), ("no-catch-up", "skip")] {
        let campaign = stack.campaign(
            name,
            format!(
                "{rest}schedule:
  expression: rate(5 minutes)
  on_missed: {on_missed}
"
            ),
        );
        stack.apply_approved(&campaign).await;
    }
    let (_, first) = start_replica(&stack, "replica-a", &clock);
    let started = tokio::time::Instant::now();
    while fire_log(&stack).await.len() < 2 {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "no schedule fires"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Every scheduler down for about 6½ minutes of schedule time: the next
    // occurrence is missed and found over a minute late.
    first.abort();
    let before = fire_log(&stack).await;
    tokio::time::sleep(Duration::from_secs(20)).await;
    let (_, second) = start_replica(&stack, "replica-b", &clock);
    while fire_log(&stack).await.len() < before.len() + 4 {
        assert!(
            started.elapsed() < Duration::from_secs(90),
            "no fires after the restart"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    second.abort();
    let log = fire_log(&stack).await;
    for campaign in ["catch-up", "no-catch-up"] {
        let entries: Vec<&(String, i64, String)> =
            log.iter().filter(|entry| entry.0 == campaign).collect();
        let last_before = before
            .iter()
            .filter(|entry| entry.0 == campaign)
            .map(|entry| entry.1)
            .max()
            .unwrap();
        let recovery = entries.iter().find(|entry| entry.1 > last_before).unwrap();
        assert_eq!(
            recovery.1 - last_before,
            300_000,
            "{campaign}: the first occurrence after the restart is the missed one: {log:?}"
        );
        let expected = if campaign == "catch-up" {
            "fired"
        } else {
            "skipped"
        };
        assert_eq!(recovery.2, expected, "{campaign}: {log:?}");
        let occurrences: Vec<i64> = entries.iter().map(|entry| entry.1).collect();
        assert!(
            occurrences.windows(2).all(|pair| pair[1] > pair[0]),
            "each occurrence once: {log:?}"
        );
    }
    stack.teardown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_fire_each_occurrence_once_and_hand_over_when_the_leader_dies() {
    let mut stack = Stack::start(support::single_location(5, false)).await;
    // Replicas of their own, on one accelerated clock (a minute every 6 s).
    stack.kill_scheduler();
    stack.spawn_worker("worker-a", 8);
    let clock = scheduler::schedules::SchedulerClock::accelerated(
        chrono::DateTime::parse_from_rfc3339("2026-11-23T00:00:30Z")
            .unwrap()
            .into(),
        10,
    );
    let mut replicas = std::collections::HashMap::new();
    for name in ["replica-a", "replica-b"] {
        let mut config = stack.scheduler_config();
        config.name = format!("{name}-{}", stack.names.prefix());
        config.lease_ttl = Duration::from_secs(2);
        config.clock = clock.clone();
        let task = tokio::spawn(async move {
            scheduler::run(config, std::future::pending())
                .await
                .unwrap();
        });
        replicas.insert(format!("{name}-{}", stack.names.prefix()), task);
    }
    let campaign = stack.campaign(
        "every-minute",
        format!(
            "{}schedule:\n  expression: rate(1 minute)\n",
            support::one_step("  max_errors: 100%\n")
        ),
    );
    stack.apply_approved(&campaign).await;

    let fires = |stack: &Stack| {
        let scheduler = stack.scheduler.clone();
        async move { scheduler.schedule_fires().await.unwrap() }
    };
    let started = tokio::time::Instant::now();
    while fires(&stack).await.len() < 3 {
        assert!(
            started.elapsed() < Duration::from_secs(40),
            "no schedule fires"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let holder = stack.scheduler.lease_holder().await.unwrap().unwrap();
    let (leader, _) = holder.rsplit_once(':').unwrap();
    replicas.remove(leader).unwrap().abort();
    let fired_before = fires(&stack).await.len();
    while fires(&stack).await.len() < fired_before + 3 {
        assert!(
            started.elapsed() < Duration::from_secs(90),
            "the survivor does not fire"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let log = fires(&stack).await;
    let occurrences: Vec<i64> = log
        .iter()
        .map(|line| line.split(' ').nth(1).unwrap().parse().unwrap())
        .collect();
    for pair in occurrences.windows(2) {
        assert_eq!(
            pair[1] - pair[0],
            60_000,
            "each minute exactly once: {log:#?}"
        );
    }
    let holders: HashSet<&str> = log
        .iter()
        .map(|line| line.split(' ').nth(3).unwrap().rsplit_once(':').unwrap().0)
        .collect();
    assert_eq!(
        holders.len(),
        2,
        "the lease moved to the survivor: {log:#?}"
    );
    assert!(log.iter().all(|line| line.contains(" fired ")));
    for occurrence in occurrences {
        let run_id = scheduler::schedules::occurrence_run_id("every-minute", occurrence);
        assert!(
            stack
                .scheduler
                .ledger()
                .run_fields(run_id)
                .await
                .unwrap()
                .is_some(),
            "the occurrence at {occurrence} has its run"
        );
    }
    for task in replicas.values() {
        task.abort();
    }
    stack.teardown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn organizational_units_resolve_through_organizations_with_or_without_children() {
    let mut profile = FleetProfile::tiny();
    profile.accounts = 9;
    let stack = Stack::start(profile).await;
    let fleet = &stack.sim.state.fleet;
    let spec = |accounts: &str| {
        protocol::Campaign::parse(
            &format!(
                "name: ous\nsteps:\n  - name: s\n    document: AWS-RunShellScript\n    parameters:\n      commands: [\"true\"]\n    timeout: 60s\naccounts:\n{accounts}regions: [us-east-1]\ntargets:\n  all: true\n"
            ),
            protocol::SpecFormat::Yaml,
        )
        .unwrap()
    };
    // Ask the simulator's organization tree directly, for the expectation.
    let accounts_below = |ou: &str, deep: bool| {
        let mut found = Vec::new();
        let mut parents = vec![ou.to_string()];
        while let Some(parent) = parents.pop() {
            let (children, accounts) = fleet.children(&parent).unwrap();
            found.extend(
                accounts
                    .into_iter()
                    .map(|account| fleet.account_id(account)),
            );
            if deep {
                parents.extend(children);
            }
        }
        found.sort();
        found
    };
    let top = fleet.top_ou_id(0);
    let resolve = |campaign: protocol::Campaign| {
        let scheduler = stack.scheduler.clone();
        async move {
            let mut accounts: Vec<String> = scheduler
                .resolve_locations(&campaign)
                .await
                .unwrap()
                .into_iter()
                .map(|location| location.account_id)
                .collect();
            accounts.sort();
            accounts
        }
    };
    let shallow = resolve(spec(&format!("  organizational_units: [\"{top}\"]\n"))).await;
    assert_eq!(shallow, accounts_below(&top, false));
    let deep = resolve(spec(&format!(
        "  organizational_units: [\"{top}\"]\n  include_child_ous: true\n"
    )))
    .await;
    assert_eq!(deep, accounts_below(&top, true));
    assert!(
        deep.len() > shallow.len(),
        "child OUs add accounts: {deep:?}"
    );
    let everything = resolve(spec(&format!(
        "  organizational_units: [\"{}\"]\n  include_child_ous: true\n  exclude_accounts: [\"{}\"]\n",
        fleet.root_id(),
        fleet.account_id(4)
    )))
    .await;
    assert_eq!(
        everything.len(),
        8,
        "nine accounts but the excluded one: {everything:?}"
    );
    assert!(!everything.contains(&fleet.account_id(4)));
    stack.teardown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn locations_whose_role_cannot_be_assumed_count_against_location_max_errors() {
    let profile = FleetProfile::tiny();
    let mut stack = Stack::start(profile).await;
    stack.sim.state.lock().removed_roles.insert(2);
    stack.spawn_worker("worker-a", 8);
    let strict = stack.campaign(
        "strict",
        support::one_step("  location_max_errors: 1\n  max_errors: 100%\n"),
    );
    let run_id = stack.start_run(&strict).await;
    let progress = stack
        .wait_until_final(run_id, Duration::from_secs(60))
        .await;
    assert_eq!(progress.state, RunState::Halted, "{progress:#?}");
    assert_eq!(
        progress.locations_failed, 2,
        "both regions of the account without the role"
    );
    assert!(
        progress.reason.contains("location_max_errors"),
        "{}",
        progress.reason
    );
    // Locations discovered before the failing ones may have started (execution
    // does not wait for the whole discovery); after the halt nothing is sent.
    let sent_at_halt = stack.commands().len();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        stack.commands().len(),
        sent_at_halt,
        "a halted run sends nothing more"
    );
    let results = stack.records(run_id).len() as u64;
    assert_eq!(
        results, progress.total_targets,
        "every discovered target has one result: its step's, or not started"
    );

    let tolerant = stack.campaign(
        "tolerant",
        support::one_step("  location_max_errors: 2\n  max_errors: 100%\n"),
    );
    let run_id = stack.start_run(&tolerant).await;
    let progress = stack
        .wait_until_final(run_id, Duration::from_secs(60))
        .await;
    assert_eq!(progress.state, RunState::Completed, "{progress:#?}");
    let detail = stack
        .scheduler
        .ledger()
        .location_statuses(run_id)
        .await
        .unwrap();
    let failed: Vec<_> = detail
        .iter()
        .filter(|location| location.state == "failed")
        .collect();
    assert_eq!(failed.len(), 2);
    assert!(
        failed[0]
            .failure
            .as_deref()
            .unwrap()
            .contains("AccessDenied")
    );
    stack.teardown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn results_can_go_to_s3() {
    let mut stack = Stack::start(FleetProfile::tiny()).await;
    stack.spawn_worker("worker-a", 8);
    let campaign = stack.campaign(
        "to-s3",
        format!(
            "{}output: s3://flotilla-results/nightly\n",
            support::one_step("  max_errors: 100%\n")
        ),
    );
    let run_id = stack.start_run(&campaign).await;
    let progress = stack
        .wait_until_final(run_id, Duration::from_secs(60))
        .await;
    assert_eq!(progress.state, RunState::Completed);
    assert_eq!(progress.results_location, "s3://flotilla-results/nightly");

    let keys: Vec<String> = stack.sim.state.lock().objects.keys().cloned().collect();
    assert!(!keys.is_empty(), "results were put into the bucket");
    let partition = format!("flotilla-results/nightly/run={run_id}/account=");
    assert!(
        keys.iter().all(|key| key.starts_with(&partition)
            && key.contains("/region=")
            && key.ends_with(".jsonl.gz")),
        "{keys:?}"
    );
    let records = stack
        .s3_records("flotilla-results", "nightly", run_id)
        .await;
    assert_eq!(
        records.len() as u64,
        progress.total_targets,
        "every result is in S3, once"
    );
    assert!(
        stack.records(run_id).is_empty(),
        "nothing went to the local directory"
    );

    // With no API answering, `flotilla report RUN` finds the run in a
    // bucket the services write to (FLOTILLA_OUTPUT_BUCKETS), one prefix
    // down, with the endpoint and credentials from the environment.
    let elsewhere = tempfile::tempdir().unwrap();
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_flotilla"))
        .args(["report", &run_id.to_string(), "--format", "json"])
        .current_dir(elsewhere.path())
        .env_remove("FLOTILLA_RESULTS")
        .env("FLOTILLA_API_URL", "http://127.0.0.1:1")
        .env("FLOTILLA_OUTPUT_BUCKETS", "other-bucket,flotilla-results")
        .env("FLOTILLA_S3_ENDPOINT_URL", stack.sim.endpoint_url())
        .env("AWS_ACCESS_KEY_ID", "AKIAFLOTILLASIMULATOR")
        .env("AWS_SECRET_ACCESS_KEY", "secret")
        .env("AWS_REGION", "us-east-1")
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(60), output)
        .await
        .expect("the report within 60 s")
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(
        stderr.contains("reading the results in s3://flotilla-results/nightly"),
        "{stderr}"
    );
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(
        report["results"].as_u64(),
        Some(progress.total_targets),
        "{report}"
    );
    stack.teardown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bucket_that_refuses_writes_pauses_only_its_own_run() {
    let mut stack = Stack::start(FleetProfile::tiny()).await;
    stack.spawn_worker("worker-a", 8);
    stack.inject(sim::state::Fault::FailNext {
        operation: "PutObject".into(),
        code: "AccessDenied".into(),
        count: 1_000_000,
    });
    let refused = stack.campaign(
        "to-refusing-bucket",
        format!(
            "{}output: s3://locked-bucket/nightly\n",
            support::one_step("  max_errors: 100%\n")
        ),
    );
    let local = stack.campaign("to-local", support::one_step("  max_errors: 100%\n"));
    let refused_run = stack.start_run(&refused).await;
    let local_run = stack.start_run(&local).await;

    let progress = stack
        .wait_until_final(local_run, Duration::from_secs(60))
        .await;
    assert_eq!(progress.state, RunState::Completed, "{progress:#?}");
    assert_eq!(
        stack.records(local_run).len() as u64,
        progress.total_targets
    );

    let paused = stack.scheduler.progress(refused_run).await.unwrap();
    assert_eq!(paused.state, RunState::Paused, "{paused:#?}");
    assert!(
        paused
            .reason
            .contains("cannot be written to s3://locked-bucket/nightly")
            && paused.reason.contains("resume"),
        "the reason says what and what to do: {}",
        paused.reason
    );

    // The bucket accepts writes again; the operator resumes the run. Parked
    // reports come back within a minute and nothing was lost.
    stack.sim.state.lock().fail_next.clear();
    assert!(
        stack
            .scheduler
            .resume(refused_run, "bucket fixed")
            .await
            .unwrap()
    );
    let progress = stack
        .wait_until_final(refused_run, Duration::from_secs(150))
        .await;
    assert_eq!(progress.state, RunState::Completed, "{progress:#?}");
    let records = stack
        .s3_records("locked-bucket", "nightly", refused_run)
        .await;
    let unique: HashSet<&str> = records.iter().map(|r| r.instance_id.as_str()).collect();
    assert_eq!(
        records.len() as u64,
        progress.total_targets,
        "every result once"
    );
    assert_eq!(unique.len() as u64, progress.total_targets);
    stack.teardown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_that_never_completes_the_handshake_shows_in_metrics() {
    // Accepts TCP, then says nothing: a RabbitMQ out of file handles.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_port = silent.local_addr().unwrap().port();
    let held = tokio::spawn(async move {
        let mut connections = Vec::new();
        while let Ok((connection, _)) = silent.accept().await {
            connections.push(connection);
        }
    });
    let names = protocol::names::Names::new(format!("flotilla-test-{}", uuid::Uuid::new_v4()));
    let mut config = scheduler::SchedulerConfig::new(
        format!("amqp://guest:guest@127.0.0.1:{silent_port}/%2f"),
        support::REDIS_URL,
        names.clone(),
    );
    config.keys = protocol::signing::Keyring::ephemeral_deployment()
        .unwrap()
        .scheduler;
    let port = support::free_port();
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let scheduler = tokio::spawn(api::run(
        config,
        api::ApiConfig::default(),
        Some(listener),
        async {
            let _ = stopped.await;
        },
    ));
    // The handshake bound is 10 s; then the failure is counted and logged.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let metrics = loop {
        let metrics = support::http_get(port, "/metrics").await;
        if metrics.contains("flotilla_scheduler_connected{service=\"rabbitmq\"} 0") {
            break metrics;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no disconnected rabbitmq in the metrics: {metrics}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert!(
        metrics.contains("flotilla_scheduler_connected{service=\"redis\"} 1"),
        "{metrics}"
    );
    let (status, _) = support::http(port, "GET", "/healthz", "text/plain", "").await;
    assert_eq!(status, 503, "not healthy while it cannot reach RabbitMQ");
    let _ = stop.send(());
    scheduler.await.unwrap().unwrap();
    held.abort();
    let _cleanup = support::Cleanup::new(&names, support::AMQP_URL, support::REDIS_URL);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_list_and_run_show_print_json_for_scripts() {
    let mut stack = Stack::start(support::single_location(10, false)).await;
    let port = stack.serve_api().await;
    stack.spawn_worker("worker-a", 4);
    let campaign = stack.campaign("json-out", support::one_step("  max_errors: 0\n"));
    let run_id = stack.start_run(&campaign).await;
    stack
        .wait_until_final(run_id, Duration::from_secs(60))
        .await;
    let api = format!("http://127.0.0.1:{port}");
    let cli = |args: &[&str]| {
        let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_flotilla"))
            .args(args)
            .env("FLOTILLA_API_URL", &api)
            .output();
        async move {
            let output = output.await.unwrap();
            assert!(output.status.success(), "{output:?}");
            serde_json::from_slice::<serde_json::Value>(&output.stdout)
                .unwrap_or_else(|error| panic!("not JSON ({error}): {output:?}"))
        }
    };
    let runs = cli(&["run", "list", "--format", "json"]).await;
    let listed = runs.as_array().unwrap();
    assert!(
        listed.iter().any(|run| run["run_id"] == run_id.to_string()),
        "{runs}"
    );
    let shown = cli(&["run", "show", &run_id.to_string(), "--format", "json"]).await;
    assert_eq!(shown["progress"]["state"], "Completed", "{shown}");
    assert!(
        shown["location_states"]
            .as_array()
            .is_some_and(|l| l.len() == 1),
        "{shown}"
    );
    stack.teardown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn execution_starts_before_every_location_is_discovered_and_limits_grow_with_the_count() {
    let mut profile = FleetProfile::tiny();
    profile.connection_lost_share = 0.0;
    let mut stack = Stack::start(profile).await;
    // One location's discovery answers 10 s late (within the attempt timeout).
    stack.attempt_timeout = Duration::from_secs(30);
    stack.inject(sim::state::Fault::DelayNext {
        operation: "DescribeInstanceInformation".into(),
        millis: 10_000,
        count: 1,
    });
    stack.spawn_worker("worker-a", 8);
    let campaign = stack.campaign(
        "interleaved",
        support::one_step("  max_concurrency: 50%\n  max_errors: 100%\n"),
    );
    let max_concurrency = campaign.rate_control.max_concurrency;
    let run_id = stack.start_run(&campaign).await;
    stack.wait_for_commands(1).await;

    let ledger = stack.scheduler.ledger();
    let fields = ledger.run_fields(run_id).await.unwrap().unwrap();
    assert!(
        fields.number(RunField::DiscoveredLocations).unwrap()
            < fields.number(RunField::LocationCount).unwrap(),
        "a command was sent while a location was still being discovered: {fields:?}"
    );
    let so_far = fields.number(RunField::Total).unwrap();
    let limit_so_far = fields.number(RunField::MaxInFlight).unwrap();
    assert!(
        limit_so_far >= 1 && limit_so_far <= max_concurrency.concurrency(so_far),
        "50% of the {so_far} targets discovered so far, not {limit_so_far}"
    );

    let progress = stack
        .wait_until_final(run_id, Duration::from_secs(90))
        .await;
    stack.assert_each_target_ran_once(run_id, &progress);
    let fields = ledger.run_fields(run_id).await.unwrap().unwrap();
    let total = fields.number(RunField::Total).unwrap();
    assert_eq!(
        fields.number(RunField::MaxInFlight).unwrap(),
        max_concurrency.concurrency(total),
        "once every location is discovered, 50% of the total"
    );
    assert!(
        limit_so_far < max_concurrency.concurrency(total),
        "the limit grew with the count ({limit_so_far} → 50% of {total})"
    );
    stack.teardown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fleet_compliance_view_keeps_each_instances_latest_scan() {
    let mut stack = Stack::start(support::single_location(30, false)).await;
    let port = stack.serve_api().await;
    stack.spawn_worker("worker-a", 8);
    let campaign = stack.campaign(
        "nightly",
        "steps:\n  - name: scan\n    document: AWS-RunPatchBaseline\n    parameters: { Operation: Scan }\nrate_control:\n  max_errors: 100%\n",
    );
    for _ in 0..2 {
        let run_id = stack.start_run(&campaign).await;
        let progress = stack
            .wait_until_final(run_id, Duration::from_secs(60))
            .await;
        assert_eq!(progress.state, RunState::Completed);
    }
    let records = stack.records(stack.scheduler.ledger().run_ids().await.unwrap()[0]);
    let non_compliant: std::collections::BTreeSet<String> = records
        .iter()
        .filter(|record| record.compliance.is_some_and(|c| !c.is_compliant()))
        .map(|record| record.instance_id.clone())
        .collect();
    assert!(
        !non_compliant.is_empty(),
        "the simulated fleet misses patches somewhere"
    );
    let (status, body) = support::http(port, "GET", "/compliance", "", "").await;
    assert_eq!(status, 200, "{body}");
    let view: scheduler::compliance::FleetCompliance = serde_json::from_str(&body).unwrap();
    assert_eq!(view.instances, 30, "each instance once, however many scans");
    assert_eq!(view.non_compliant, non_compliant.len() as u64);
    assert_eq!(view.stale, 0);
    let listed: std::collections::BTreeSet<String> = view
        .attention
        .iter()
        .map(|state| state.instance_id.clone())
        .collect();
    assert_eq!(
        listed, non_compliant,
        "the latest scan's non-compliant instances"
    );
    let today = view.trend.last().unwrap();
    assert_eq!(today.reported, 60, "two scans of 30 today");
    assert_eq!(today.non_compliant, 2 * non_compliant.len() as u64);
    // Narrowed, as CSV, and refused when the filter is not one.
    let (_, csv) = support::http(
        port,
        "GET",
        "/compliance?format=csv&severity=critical",
        "",
        "",
    )
    .await;
    assert!(
        csv.starts_with("instance_id,account_id,region,severity"),
        "{csv}"
    );
    assert!(
        csv.lines().skip(1).all(|line| line.contains(",critical,")),
        "{csv}"
    );
    let (status, body) = support::http(port, "GET", "/compliance?severity=worst", "", "").await;
    assert!(
        status == 400 && body.contains("severity: one of critical"),
        "{body}"
    );
    let (status, body) = support::http(port, "GET", "/compliance?stale_days=-1", "", "").await;
    assert!(
        status == 400 && body.contains("stale_days: must be a whole number"),
        "{body}"
    );
    stack.teardown().await;
}

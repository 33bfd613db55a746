//! Skewed clocks, on the real RabbitMQ and Redis: workers and a scheduler
//! replica in processes of their own whose wall clocks `faketime` puts five
//! minutes ahead or behind. Every service keeps the clock they all share —
//! Redis's `TIME`, measured at start and every 30 s (`store::clock`) — so
//! what one process writes and another reads agrees: a send's poll deadline,
//! a send claim's age, a message's signature time, a window's edges, a
//! freeze. Token buckets read Redis's clock in their script anyway.
//!
//! Without it: a worker five minutes ahead took every command another
//! worker sent as past its deadline at its first poll (the step timed out
//! after a second), and a scheduler five minutes ahead opened a maintenance
//! window five minutes early.

#![allow(clippy::unwrap_used)]

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use protocol::run::RunState;
use support::Stack;

/// How many of the run's results have each status detail.
fn statuses(stack: &Stack, run_id: uuid::Uuid) -> BTreeMap<String, usize> {
    stack
        .records(run_id)
        .into_iter()
        .fold(BTreeMap::new(), |mut counts, record| {
            *counts.entry(record.status_detail).or_default() += 1;
            counts
        })
}

/// Polls the run until it is final, or panics after `limit` (or when a
/// service process dies).
async fn finished(
    stack: &mut Stack,
    run_id: uuid::Uuid,
    limit: Duration,
) -> scheduler::RunProgress {
    let started = tokio::time::Instant::now();
    loop {
        stack.assert_processes_running();
        let progress = stack.scheduler.progress(run_id).await.unwrap();
        if progress.finished {
            return progress;
        }
        assert!(
            started.elapsed() < limit,
            "the run did not finish within {limit:?} (results so far: {:?}): {progress:#?}",
            statuses(stack, run_id)
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Each skewed process measured the offset its skew calls for (within a
/// second) — libfaketime did skew its clock, and it corrected for it — and
/// exports it as `metric`, for the `FlotillaClockSkewed` alert.
async fn assert_skews_measured(stack: &Stack, metric: &str, expected: &[(&str, i64)]) {
    let measured = stack.measured_skews();
    for (name, offset) in expected {
        let found = measured
            .iter()
            .find(|(process, _)| process == name)
            .and_then(|(_, offset)| *offset);
        assert!(
            found.is_some_and(|found| found.abs_diff(*offset) < 1_000),
            "{name} should have measured Redis's clock {offset} ms off its own; it logged {found:?}"
        );
        let exposition = support::http_get(stack.skewed_metrics_port(name), "/metrics").await;
        let exported = support::metric_value(&exposition, metric);
        assert!(
            exported.is_some_and(|seconds| (seconds * 1_000.0 - *offset as f64).abs() < 1_000.0),
            "{name} should export {metric} near {offset} ms; it exports {exported:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_five_minutes_ahead_and_behind_run_every_target_once() {
    let mut stack = Stack::start(support::slow_single_location(120)).await;
    // Polls go through the queue, to whichever worker takes them: a command
    // one worker sent is polled by another, on another clock.
    let mut config = stack.worker_config("worker-on-time", 4);
    config.held_polls = 0;
    stack.spawn_worker_with(config);
    stack.spawn_skewed("worker", "worker-ahead", "+5m");
    stack.spawn_skewed("worker", "worker-behind", "-5m");
    let campaign = stack.campaign(
        "skewed-workers",
        support::one_step("  max_concurrency: 24\n  max_errors: 0\n"),
    );
    let run_id = stack.start_run(&campaign).await;
    let progress = finished(&mut stack, run_id, Duration::from_secs(180)).await;
    assert_eq!(
        statuses(&stack, run_id),
        [("Success".to_string(), 120)].into(),
        "every command ran to its end, polled on any worker's clock: {progress:#?}"
    );
    stack.assert_each_target_ran_once(run_id, &progress);
    assert_skews_measured(
        &stack,
        "flotilla_worker_clock_offset_seconds",
        &[("worker-ahead", -300_000), ("worker-behind", 300_000)],
    )
    .await;
    stack.teardown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scheduler_five_minutes_ahead_opens_a_window_on_time() {
    let mut stack = Stack::start(support::slow_single_location(24)).await;
    // The skewed replica is the only one: the in-process one stops.
    stack.kill_scheduler();
    stack.spawn_skewed("scheduler", "scheduler-ahead", "+5m");
    stack.spawn_worker("worker", 8);
    // A window that opens at the start of a minute 25 to 85 s from now and
    // lasts ten minutes: five minutes ahead, it looks open already.
    let now = support::now_unix_ms();
    let opens_ms = (now + 25_000).div_ceil(60_000) * 60_000;
    let opens = protocol::job::UnixMillis(opens_ms).to_datetime().unwrap();
    let campaign = stack.campaign(
        "skewed-window",
        format!(
            "{}windows:\n  - schedule: cron({} {} * * ? *)\n    duration: 10m\n",
            support::one_step("  max_concurrency: 8\n  max_errors: 0\n"),
            chrono::Timelike::minute(&opens),
            chrono::Timelike::hour(&opens),
        ),
    );
    let run_id = stack.start_run(&campaign).await;
    let progress = finished(&mut stack, run_id, Duration::from_secs(240)).await;
    assert_eq!(progress.state, RunState::Completed, "{progress:#?}");
    let early: Vec<u64> = stack
        .commands()
        .iter()
        .map(|command| command.received_unix_ms)
        .filter(|received| *received < opens_ms)
        .map(|received| opens_ms - received)
        .collect();
    assert!(
        early.is_empty(),
        "commands sent before the window opened (ms early): {early:?}"
    );
    stack.assert_each_target_ran_once(run_id, &progress);
    assert_skews_measured(
        &stack,
        "flotilla_scheduler_clock_offset_seconds",
        &[("scheduler-ahead", -300_000)],
    )
    .await;
    stack.teardown().await;
}

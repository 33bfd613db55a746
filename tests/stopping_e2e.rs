//! Pause, cancel and an exhausted error budget stop *sending*, on both backends:
//! real RabbitMQ + Redis, and the in-memory backends that `flotilla demo` runs on.
//!
//! Each scenario admits every batch at once (`max_concurrency: 100%`) and lets
//! the workers send only one command a second (`api_rate_limits`), so when the
//! run is stopped most batches are admitted and queued at workers but not yet
//! sent. The simulator's command log then proves that none of them went out
//! after the stop: admission alone would not stop them, only the workers'
//! send gate reading the run's state can.

#![allow(clippy::unwrap_used)]

mod support;

use std::collections::HashSet;
use std::time::Duration;

use protocol::run::RunState;
use protocol::status::StatusDetail;
use support::{Backend, Stack};

/// 8 batches of 50, all admitted at once, one SendCommand a second.
const TARGETS: u32 = 400;

fn rate_limited() -> String {
    format!(
        "{}api_rate_limits:\n  send_command: 1\n",
        support::one_step("  max_concurrency: 100%\n  max_errors: 0\n")
    )
}

/// The gate is read right before each SendCommand; one already past it when
/// the run stopped may still arrive this long after.
const IN_FLIGHT_GRACE_MS: u64 = 1_000;

async fn started(backend: Backend, failing: bool) -> (Stack, uuid::Uuid) {
    let mut stack = Stack::start_on(support::single_location(TARGETS, failing), backend).await;
    stack.spawn_worker("worker-a", 8);
    stack.spawn_worker("worker-b", 8);
    let campaign = stack.campaign("stoppable", rate_limited());
    let run_id = stack.start_run(&campaign).await;
    stack.wait_for_commands(1).await;
    (stack, run_id)
}

/// Commands the simulator received later than `stopped_ms` plus the grace.
fn sent_after(stack: &Stack, stopped_ms: u64) -> Vec<String> {
    stack
        .commands()
        .into_iter()
        .filter(|command| command.received_unix_ms > stopped_ms + IN_FLIGHT_GRACE_MS)
        .map(|command| format!("{} at {}", command.command_id, command.received_unix_ms))
        .collect()
}

fn sent_targets(stack: &Stack) -> usize {
    stack.commands().iter().map(|command| command.targets).sum()
}

async fn pause_stops_sending_and_resume_completes(backend: Backend) {
    let (stack, run_id) = started(backend, false).await;
    assert!(
        stack
            .scheduler
            .pause(run_id, "operator paused")
            .await
            .unwrap()
    );
    let paused_ms = support::now_unix_ms();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let progress = stack.scheduler.progress(run_id).await.unwrap();
    assert_eq!(progress.state, RunState::Paused, "{progress:#?}");
    let late = sent_after(&stack, paused_ms);
    assert!(late.is_empty(), "sent while paused ({backend:?}): {late:?}");
    assert!(
        sent_targets(&stack) < TARGETS as usize,
        "the scenario must leave admitted batches unsent at the pause"
    );

    assert!(
        stack
            .scheduler
            .resume(run_id, "operator resumed")
            .await
            .unwrap()
    );
    let progress = stack
        .wait_until_final(run_id, Duration::from_secs(90))
        .await;
    assert_eq!(progress.state, RunState::Completed, "{progress:#?}");
    let records = stack.records(run_id);
    let unique: HashSet<&str> = records.iter().map(|r| r.instance_id.as_str()).collect();
    assert_eq!(records.len(), TARGETS as usize);
    assert_eq!(unique.len(), TARGETS as usize);
    assert!(stack.executions().values().all(|runs| *runs == 1));
    stack.teardown().await;
}

async fn cancel_stops_sending_and_reports_the_rest_not_started(backend: Backend) {
    let (stack, run_id) = started(backend, false).await;
    assert!(
        stack
            .scheduler
            .cancel(run_id, "operator cancelled")
            .await
            .unwrap()
    );
    let cancelled_ms = support::now_unix_ms();
    let progress = stack
        .wait_until_final(run_id, Duration::from_secs(60))
        .await;
    assert_eq!(progress.state, RunState::Cancelled, "{progress:#?}");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let late = sent_after(&stack, cancelled_ms);
    assert!(
        late.is_empty(),
        "sent after the cancel ({backend:?}): {late:?}"
    );
    let sent = sent_targets(&stack);
    assert!(sent < TARGETS as usize, "admitted batches were left unsent");
    let records = stack.records(run_id);
    let not_started = records
        .iter()
        .filter(|record| record.status_detail() == Some(StatusDetail::NotStarted))
        .count();
    assert_eq!(not_started, TARGETS as usize - sent, "{progress:#?}");
    stack.teardown().await;
}

async fn an_exhausted_budget_stops_sending(backend: Backend) {
    let (stack, run_id) = started(backend, true).await;
    let halted_ms = loop {
        let progress = stack.scheduler.progress(run_id).await.unwrap();
        if progress.state == RunState::Halted {
            break support::now_unix_ms();
        }
        assert!(
            !progress.state.is_final(),
            "the run ended without halting: {progress:#?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let progress = stack
        .wait_until_final(run_id, Duration::from_secs(60))
        .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let late = sent_after(&stack, halted_ms);
    assert!(
        late.is_empty(),
        "sent after the halt ({backend:?}): {late:?}"
    );
    let sent = sent_targets(&stack);
    assert!(sent < TARGETS as usize, "admitted batches were left unsent");
    let records = stack.records(run_id);
    assert_eq!(records.len(), TARGETS as usize, "every target has a result");
    let failed = records
        .iter()
        .filter(|record| record.status_detail() == Some(StatusDetail::Failed))
        .count();
    assert_eq!(failed, sent, "only what was sent failed: {progress:#?}");
    stack.teardown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_stops_sending_on_rabbitmq_and_redis() {
    pause_stops_sending_and_resume_completes(Backend::Real).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_stops_sending_in_memory() {
    pause_stops_sending_and_resume_completes(Backend::Memory).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_stops_sending_on_rabbitmq_and_redis() {
    cancel_stops_sending_and_reports_the_rest_not_started(Backend::Real).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_stops_sending_in_memory() {
    cancel_stops_sending_and_reports_the_rest_not_started(Backend::Memory).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exhausted_budget_stops_sending_on_rabbitmq_and_redis() {
    an_exhausted_budget_stops_sending(Backend::Real).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exhausted_budget_stops_sending_in_memory() {
    an_exhausted_budget_stops_sending(Backend::Memory).await;
}

/// What someone with write access to Redis might do to a live run.
#[derive(Debug, Clone, Copy)]
enum Tampering {
    DeleteKillSwitch,
    CorruptKillSwitch,
    DeleteRunRecord,
}

/// Writes Redis as someone with write access could: the same commands on
/// both backends.
async fn tamper(stack: &Stack, run_id: uuid::Uuid, tampering: Tampering) {
    use redis::AsyncCommands;
    let mut connection = stack.store.connection();
    let names = stack.store.names();
    let () = match tampering {
        Tampering::DeleteKillSwitch => {
            let _: i64 = connection.del(names.kill_switch_key()).await.unwrap();
        }
        Tampering::CorruptKillSwitch => connection
            .set(names.kill_switch_key(), "whatever")
            .await
            .unwrap(),
        Tampering::DeleteRunRecord => {
            let _: i64 = connection.del(names.run_key(run_id)).await.unwrap();
        }
    };
}

/// A deleted or corrupted kill switch, or a live run's record deleted, stops
/// every send within the grace (fail closed), as an engaged switch would.
async fn tampered_state_stops_sending(backend: Backend, tampering: Tampering) {
    let (stack, run_id) = started(backend, false).await;
    tamper(&stack, run_id, tampering).await;
    let tampered_ms = support::now_unix_ms();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let late = sent_after(&stack, tampered_ms);
    assert!(
        late.is_empty(),
        "sent after {tampering:?} ({backend:?}): {late:?}"
    );
    assert!(
        sent_targets(&stack) < TARGETS as usize,
        "the scenario must leave admitted batches unsent at the tampering"
    );
    stack.teardown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_kill_switch_stops_sending_on_rabbitmq_and_redis() {
    tampered_state_stops_sending(Backend::Real, Tampering::DeleteKillSwitch).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_kill_switch_stops_sending_in_memory() {
    tampered_state_stops_sending(Backend::Memory, Tampering::DeleteKillSwitch).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupted_kill_switch_stops_sending_on_rabbitmq_and_redis() {
    tampered_state_stops_sending(Backend::Real, Tampering::CorruptKillSwitch).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupted_kill_switch_stops_sending_in_memory() {
    tampered_state_stops_sending(Backend::Memory, Tampering::CorruptKillSwitch).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_run_record_stops_sending_on_rabbitmq_and_redis() {
    tampered_state_stops_sending(Backend::Real, Tampering::DeleteRunRecord).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_run_record_stops_sending_in_memory() {
    tampered_state_stops_sending(Backend::Memory, Tampering::DeleteRunRecord).await;
}

/// Commands that take a minute or more: cancelling is the only way they end soon.
fn long_running(targets: u32) -> sim::FleetProfile {
    let mut profile = support::single_location(targets, false);
    profile.time_scale = 0.25;
    profile
}

/// Commands the simulator still runs now (not every invocation terminal).
fn still_running(stack: &Stack) -> Vec<String> {
    let now = stack.sim.state.clock.now();
    stack
        .commands()
        .into_iter()
        .filter(|command| command.finished_at > now)
        .map(|command| command.command_id)
        .collect()
}

async fn wait_until_nothing_runs(stack: &Stack, what: &str) {
    for _ in 0..300 {
        if still_running(stack).is_empty() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!(
        "{what}: commands still in progress 30 s later: {:?}",
        still_running(stack)
    );
}

async fn sent_long_commands(backend: Backend) -> (Stack, uuid::Uuid) {
    let mut stack = Stack::start_on(long_running(100), backend).await;
    stack.spawn_worker("worker", 8);
    let campaign = stack.campaign(
        "long",
        support::one_step("  max_concurrency: 100%\n  max_errors: 0\n"),
    );
    let run_id = stack.start_run(&campaign).await;
    stack.wait_for_commands(2).await;
    assert_eq!(
        still_running(&stack).len(),
        2,
        "the scenario needs both commands running"
    );
    (stack, run_id)
}

fn cancelled_results(stack: &Stack, run_id: uuid::Uuid) -> usize {
    stack
        .records(run_id)
        .iter()
        .filter(|record| record.status_detail() == Some(StatusDetail::Cancelled))
        .count()
}

async fn kill_with_cancel_in_flight_ends_every_running_command(backend: Backend) {
    let (stack, run_id) = sent_long_commands(backend).await;
    stack
        .scheduler
        .engage_kill_switch(&store::KillScope::Global, "incident 7", true)
        .await
        .unwrap();
    wait_until_nothing_runs(&stack, "kill --cancel-in-flight").await;
    let progress = stack
        .wait_until_final(run_id, Duration::from_secs(30))
        .await;
    assert_eq!(
        cancelled_results(&stack, run_id),
        100,
        "every cancelled target is reported Cancelled: {progress:#?}"
    );
    assert_eq!(stack.commands().len(), 2, "nothing new was sent");
    stack.teardown().await;
}

async fn run_cancel_cancels_its_commands_in_flight(backend: Backend) {
    let (stack, run_id) = sent_long_commands(backend).await;
    assert!(stack.scheduler.cancel(run_id, "wrong patch").await.unwrap());
    wait_until_nothing_runs(&stack, "run cancel").await;
    let progress = stack
        .wait_until_final(run_id, Duration::from_secs(30))
        .await;
    assert_eq!(progress.state, RunState::Cancelled);
    assert_eq!(cancelled_results(&stack, run_id), 100, "{progress:#?}");
    stack.teardown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_with_cancel_in_flight_ends_running_commands_on_rabbitmq_and_redis() {
    kill_with_cancel_in_flight_ends_every_running_command(Backend::Real).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_with_cancel_in_flight_ends_running_commands_in_memory() {
    kill_with_cancel_in_flight_ends_every_running_command(Backend::Memory).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_cancel_cancels_its_commands_in_flight_on_rabbitmq_and_redis() {
    run_cancel_cancels_its_commands_in_flight(Backend::Real).await;
}

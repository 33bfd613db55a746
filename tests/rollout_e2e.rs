//! Rollouts end to end on the simulator with real RabbitMQ and Redis: waves,
//! a bake time during which nothing is sent, a PromQL gate (a small fake
//! Prometheus HTTP endpoint on loopback) that stops the run, and a scheduler
//! killed mid-bake.

#![allow(clippy::unwrap_used)]

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use protocol::run::RunState;
use support::Stack;
use uuid::Uuid;

/// A Prometheus that answers every instant query with one series while
/// `firing`, else with an empty vector; counts the queries.
struct FakePrometheus {
    port: u16,
    firing: Arc<AtomicBool>,
    queries: Arc<AtomicU32>,
    server: tokio::task::JoinHandle<()>,
}

impl FakePrometheus {
    async fn start() -> Self {
        use axum::extract::{Query, State};
        let firing = Arc::new(AtomicBool::new(false));
        let queries = Arc::new(AtomicU32::new(0));
        let state = (firing.clone(), queries.clone());
        let app = axum::Router::new()
            .route(
                "/api/v1/query",
                axum::routing::get(
                    |State((firing, queries)): State<(Arc<AtomicBool>, Arc<AtomicU32>)>,
                     Query(query): Query<std::collections::HashMap<String, String>>| async move {
                        queries.fetch_add(1, Ordering::SeqCst);
                        assert_eq!(query.get("query").map(String::as_str), Some("flotilla:canary_errors > 0"));
                        let result = if firing.load(Ordering::SeqCst) {
                            serde_json::json!([{"metric": {"campaign": "rollout"}, "value": [0, "3"]}])
                        } else {
                            serde_json::json!([])
                        };
                        axum::Json(serde_json::json!({
                            "status": "success",
                            "data": {"resultType": "vector", "result": result}
                        }))
                    },
                ),
            )
            .with_state(state);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Self {
            port,
            firing,
            queries,
            server,
        }
    }
}

impl Drop for FakePrometheus {
    fn drop(&mut self) {
        self.server.abort();
    }
}

async fn wait_for_state(
    stack: &Stack,
    run_id: Uuid,
    state: RunState,
    wave: u64,
) -> scheduler::RunProgress {
    let started = tokio::time::Instant::now();
    loop {
        let progress = stack.scheduler.progress(run_id).await.unwrap();
        let current = progress
            .waves
            .iter()
            .position(|w| !matches!(w.state.as_str(), "passed"))
            .unwrap_or(progress.waves.len()) as u64;
        if progress.state == state && current == wave {
            return progress;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the run did not reach {state} in wave {}: {progress:#?}",
            wave + 1
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn instances_sent(stack: &Stack) -> usize {
    stack.commands().iter().map(|command| command.targets).sum()
}

/// The instants (Unix ms) a wave ended and the next one started.
async fn bake_interval(stack: &Stack, run_id: Uuid, wave: u64) -> (u64, u64) {
    let fields = stack
        .scheduler
        .ledger()
        .known_run_fields(run_id)
        .await
        .unwrap();
    (
        fields.number(&format!("wave:{wave}:done_ms")),
        fields.number(&format!("wave:{}:started_ms", wave + 1)),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_four_wave_rollout_bakes_stops_at_a_failing_gate_and_survives_a_killed_scheduler() {
    let prometheus = FakePrometheus::start().await;
    let mut stack = Stack::start(support::single_location(20, false)).await;
    stack.spawn_worker("worker-a", 8);
    let campaign = stack.campaign(
        "rollout",
        format!(
            "{}rollout:
  waves: [1, 5, \"50%\", \"100%\"]
  bake: 3s
  gates:
    - prometheus_url: http://127.0.0.1:{}
      query: 'flotilla:canary_errors > 0'
  on_gate_failure: pause
",
            support::one_step("  max_concurrency: 10\n  max_errors: 0\n"),
            prometheus.port
        ),
    );
    let run_id = stack.start_run(&campaign).await;

    // Wave 1: one target, then the bake.
    let baking = wait_for_state(&stack, run_id, RunState::Baking, 0).await;
    assert_eq!(instances_sent(&stack), 1, "wave 1 is one target");
    assert_eq!(
        baking
            .waves
            .iter()
            .map(|w| w.cumulative_targets)
            .collect::<Vec<_>>(),
        vec![1, 5, 10, 20]
    );
    // The scheduler dies mid-bake; its successor finds the bake in Redis.
    stack.kill_scheduler();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(instances_sent(&stack), 1, "nothing is sent while baking");
    stack.start_scheduler();

    // The gate passes: wave 2 (four more targets), then its bake.
    let baking = wait_for_state(&stack, run_id, RunState::Baking, 1).await;
    assert_eq!(instances_sent(&stack), 5);
    assert!(
        baking.waves[0].gates.iter().all(|gate| gate.passed),
        "{baking:#?}"
    );
    assert!(prometheus.queries.load(Ordering::SeqCst) >= 1);
    // Something goes wrong during the bake: the gate's query returns a series.
    prometheus.firing.store(true, Ordering::SeqCst);
    let paused = wait_for_state(&stack, run_id, RunState::Paused, 1).await;
    assert!(
        paused.reason.contains("gate prometheus failed") && paused.reason.contains("1 series"),
        "{}",
        paused.reason
    );
    let prometheus_gate = paused.waves[1]
        .gates
        .iter()
        .find(|gate| gate.gate == "prometheus")
        .unwrap();
    assert!(!prometheus_gate.passed);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        instances_sent(&stack),
        5,
        "a failed gate sends nothing more"
    );

    // Fixed; the operator resumes: the next waves go on.
    prometheus.firing.store(false, Ordering::SeqCst);
    assert!(
        stack
            .scheduler
            .resume(run_id, "looked at it, fine")
            .await
            .unwrap()
    );
    let progress = stack
        .wait_until_final(run_id, Duration::from_secs(120))
        .await;
    stack.assert_each_target_ran_once(run_id, &progress);
    assert!(
        progress.waves.iter().all(|wave| wave.state == "passed"),
        "{progress:#?}"
    );
    assert_eq!(
        progress.waves.iter().map(|w| w.targets).collect::<Vec<_>>(),
        vec![Some(1), Some(4), Some(5), None],
        "the last wave has no bake and no gate"
    );

    // Nothing was received between a wave's end and the next wave's start.
    for wave in 0..3 {
        let (done, started) = bake_interval(&stack, run_id, wave).await;
        assert!(
            started >= done + 3000,
            "wave {} baked {} ms",
            wave + 1,
            started - done
        );
        let during: Vec<_> = stack
            .commands()
            .into_iter()
            .filter(|command| command.received_unix_ms > done && command.received_unix_ms < started)
            .collect();
        assert!(
            during.is_empty(),
            "sent during the bake after wave {}: {during:?}",
            wave + 1
        );
    }
    stack.teardown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollout_waits_for_an_approval_between_waves() {
    let mut stack = Stack::start(support::single_location(4, false)).await;
    stack.spawn_worker("worker-a", 8);
    let campaign = stack.campaign(
        "approved-rollout",
        format!(
            "{}rollout:\n  waves: [1]\n  approve: true\n",
            support::one_step("  max_concurrency: 10\n  max_errors: 0\n")
        ),
    );
    let run_id = stack.start_run(&campaign).await;
    let waiting = wait_for_state(&stack, run_id, RunState::AwaitingApproval, 0).await;
    assert!(
        waiting.reason.contains("waiting for an approver"),
        "{}",
        waiting.reason
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        instances_sent(&stack),
        1,
        "nothing more before the approval"
    );
    assert!(
        stack
            .scheduler
            .approve_wave(run_id, "approved by test")
            .await
            .unwrap()
    );
    assert!(
        !stack.scheduler.approve_wave(run_id, "again").await.unwrap(),
        "an approval counts once"
    );
    let progress = stack
        .wait_until_final(run_id, Duration::from_secs(60))
        .await;
    stack.assert_each_target_ran_once(run_id, &progress);
    stack.teardown().await;
}

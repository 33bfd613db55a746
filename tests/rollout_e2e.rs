//! Rollouts end to end on the simulator with real RabbitMQ and Redis: waves,
//! a bake time during which nothing is sent, a PromQL gate (a small fake
//! Prometheus HTTP endpoint on loopback) that stops the run, and a scheduler
//! killed mid-bake.

#![allow(clippy::unwrap_used)]

mod support;

use protocol::run_fields::WaveField;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use api::auth::{AuthSettings, TokensFile};
use protocol::run::RunState;
use scheduler::auth::Role;
use support::{Stack, console};
use uuid::Uuid;

/// Serves `app` on a free loopback port; returns the port and the server task.
async fn serve(app: axum::Router) -> (u16, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    (port, server)
}

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
        let (port, server) = serve(app).await;
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
        fields
            .wave_number(wave, WaveField::DoneMs)
            .unwrap()
            .unwrap(),
        fields
            .wave_number(wave + 1, WaveField::StartedMs)
            .unwrap()
            .unwrap(),
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

    // Fixed. Going on past a failed gate is an override: an operator may
    // not, an admin (who may also approve changes) may, as with a change
    // freeze.
    prometheus.firing.store(false, Ordering::SeqCst);
    let as_role = |name: &str, role| scheduler::auth::Principal {
        name: name.into(),
        role,
        issued_by: None,
    };
    let resume = scheduler::steering::Steer::Resume {
        despite_alert: None,
    };
    let refused = stack
        .scheduler
        .steer(
            run_id,
            resume.clone(),
            Some("looks fine to me"),
            &as_role("otto", scheduler::auth::Role::Operator),
        )
        .await;
    assert!(
        matches!(&refused, Err(scheduler::SchedulerError::Forbidden(why)) if why.contains("failed health gate")),
        "{refused:?}"
    );
    let resumed = stack
        .scheduler
        .steer(
            run_id,
            resume,
            Some("looked at it, fine"),
            &as_role("ada", scheduler::auth::Role::Admin),
        )
        .await
        .unwrap();
    assert!(resumed.changed, "{resumed:?}");
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
    // Ada (admin) starts the run; Anna (approver) approves its next wave
    // from the console.
    let secrets = tempfile::tempdir().unwrap();
    let tokens = secrets.path().join("tokens");
    let ada = support::add_token(&tokens, "ada", Role::Admin, None);
    let anna = support::add_token(&tokens, "anna", Role::Approver, None);
    stack.api_config_mut().auth = AuthSettings {
        tokens_file: Some(TokensFile::open(tokens).unwrap()),
        ..AuthSettings::default()
    };
    let port = stack.serve_api().await;
    let options = scheduler::StartOptions {
        started_by: "ada".into(),
        ..scheduler::StartOptions::default()
    };
    let run_id = stack
        .scheduler
        .start_run_unchecked(&campaign, options)
        .await
        .unwrap();
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
    let approve = format!("/runs/{run_id}/approve");
    let (status, body) = support::http_as(port, Some(&ada), "POST", &approve, "", "").await;
    assert_eq!(status, 403, "{body}");
    assert!(
        body.contains("ada started this run and cannot approve its waves"),
        "{body}"
    );
    let (cookie, csrf) = console::sign_in(port, &anna).await;
    let form = [("csrf", csrf.as_str()), ("reason", "canary healthy")];
    let (status, head, body) = console::exchange(
        port,
        console::post_form(&format!("/ui{approve}"), Some(&cookie), &form),
    )
    .await;
    assert_eq!(status, 303, "{head}\n{body}");
    let (status, body) = support::http_as(
        port,
        Some(&ada),
        "GET",
        "/audit?action=runs:approve",
        "",
        "",
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let records: Vec<serde_json::Value> = serde_json::from_str(&body).unwrap();
    let seen: Vec<(&str, &str, &str)> = records
        .iter()
        .map(|record| {
            (
                record["principal"].as_str().unwrap_or_default(),
                record["reason"].as_str().unwrap_or_default(),
                record["outcome"].as_str().unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        [("ada", "", "error: 403"), ("anna", "canary healthy", "ok")]
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

/// One request a receiver got: its path, signature header and body.
type Received = (String, Option<String>, String);

/// One try a receiver answered: its delivery id header, whether it was
/// answered 200, and its body.
type Try = (Option<String>, bool, String);

/// A webhook receiver on loopback: every request's path, signature header
/// and body; it answers 503 while told to fail.
struct Receiver {
    port: u16,
    received: Arc<std::sync::Mutex<Vec<Received>>>,
    tries: Arc<std::sync::Mutex<Vec<Try>>>,
    failing: Arc<AtomicBool>,
    server: tokio::task::JoinHandle<()>,
}

impl Receiver {
    async fn start() -> Self {
        let received = Arc::new(std::sync::Mutex::new(Vec::new()));
        let tries = Arc::new(std::sync::Mutex::new(Vec::new()));
        let failing = Arc::new(AtomicBool::new(false));
        let (store, tried, fail) = (received.clone(), tries.clone(), failing.clone());
        let app = axum::Router::new().fallback(
            move |uri: axum::http::Uri, headers: axum::http::HeaderMap, body: String| {
                let (store, tried, fail) = (store.clone(), tried.clone(), fail.clone());
                async move {
                    let header = |name: &str| {
                        headers
                            .get(name)
                            .and_then(|value| value.to_str().ok())
                            .map(str::to_string)
                    };
                    let ok = !fail.load(Ordering::SeqCst);
                    tried
                        .lock()
                        .unwrap()
                        .push((header("x-flotilla-delivery"), ok, body.clone()));
                    if !ok {
                        return (axum::http::StatusCode::SERVICE_UNAVAILABLE, "down");
                    }
                    store.lock().unwrap().push((
                        uri.path().to_string(),
                        header("x-flotilla-signature"),
                        body,
                    ));
                    (axum::http::StatusCode::OK, "ok")
                }
            },
        );
        let (port, server) = serve(app).await;
        Self {
            port,
            received,
            tries,
            failing,
            server,
        }
    }

    fn at(&self, path: &str) -> Vec<(Option<String>, String)> {
        self.received
            .lock()
            .unwrap()
            .iter()
            .filter(|(at, _, _)| at == path)
            .map(|(_, signature, body)| (signature.clone(), body.clone()))
            .collect()
    }

    fn tries(&self) -> Vec<Try> {
        self.tries.lock().unwrap().clone()
    }
}

/// Checks `signature` (an `X-Flotilla-Signature` header) signs `body` under `key`.
fn assert_signed(signature: Option<&str>, key: &[u8], body: &str) {
    let signature = signature.expect("a signed JSON body");
    let seconds: u64 = signature
        .strip_prefix("t=")
        .and_then(|rest| rest.split(',').next())
        .and_then(|t| t.parse().ok())
        .unwrap();
    assert_eq!(
        signature,
        scheduler::notify::signature(key, seconds, body),
        "the body is signed with the deployment's key"
    );
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.server.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_halted_run_posts_one_signed_notification_and_the_kill_switch_tells_the_default() {
    use protocol::spec::{NotifyEvent, NotifyFormat, NotifySpec};
    let receiver = Receiver::start().await;
    let key = b"0123456789abcdef0123456789abcdef".to_vec();
    let mut stack = Stack::start(support::single_location(10, true)).await;
    stack.kill_scheduler();
    stack.scheduler_config_mut().notify = scheduler::notify::NotifySettings {
        defaults: vec![NotifySpec {
            on: vec![NotifyEvent::KillSwitch],
            webhook: format!("http://127.0.0.1:{}/default", receiver.port),
            format: NotifyFormat::Json,
        }],
        hmac_key: Some(Arc::new(key.clone())),
        link_base: Some("https://flotilla.example".into()),
    };
    stack.start_scheduler();
    stack.spawn_worker("worker-a", 8);
    let campaign = stack.campaign(
        "notified",
        format!(
            "{}notify:
  - on: [halted, completed]
    webhook: http://127.0.0.1:{port}/hook
  - on: [halted]
    webhook: http://127.0.0.1:{port}/slack
    format: slack
",
            support::one_step("  max_concurrency: 2\n  max_errors: 0\n"),
            port = receiver.port
        ),
    );
    let run_id = stack.start_run(&campaign).await;
    let progress = stack
        .wait_until_final(run_id, Duration::from_secs(60))
        .await;
    assert_eq!(progress.state, RunState::Halted);
    stack
        .wait_for("the notifications", Duration::from_secs(20), |_| {
            receiver.at("/hook").len() + receiver.at("/slack").len() >= 2
        })
        .await;
    // Reports still arriving must not announce the halt again.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let hook = receiver.at("/hook");
    assert_eq!(hook.len(), 1, "one notification for the halt: {hook:#?}");
    let (signature, body) = &hook[0];
    assert_signed(signature.as_deref(), &key, body);
    let json: serde_json::Value = serde_json::from_str(body).unwrap();
    assert_eq!(json["event"], "halted");
    assert_eq!(json["run_id"], run_id.to_string());
    assert_eq!(json["campaign"], "notified");
    assert_eq!(
        json["link"],
        format!("https://flotilla.example/runs/{run_id}")
    );
    assert!(
        json["reason"].as_str().unwrap().contains("error budget"),
        "{json}"
    );
    let slack = receiver.at("/slack");
    assert_eq!(slack.len(), 1);
    assert!(slack[0].0.is_none(), "Slack messages are not signed");
    let text: serde_json::Value = serde_json::from_str(&slack[0].1).unwrap();
    assert!(text["text"].as_str().unwrap().contains("halted"), "{text}");

    // The kill switch tells the deployment's default webhook.
    let replica = scheduler::Scheduler::connect(stack.scheduler_config())
        .await
        .unwrap();
    replica
        .engage_kill_switch(
            &store::KillScope::Campaign("notified".into()),
            "incident 7",
            false,
        )
        .await
        .unwrap();
    stack
        .wait_for(
            "the kill switch notification",
            Duration::from_secs(20),
            |_| !receiver.at("/default").is_empty(),
        )
        .await;
    let (_, body) = &receiver.at("/default")[0];
    let json: serde_json::Value = serde_json::from_str(body).unwrap();
    assert_eq!(json["event"], "kill_switch");
    assert!(
        json["reason"].as_str().unwrap().contains("incident 7"),
        "{json}"
    );
    stack.teardown().await;
}

/// A notification in retry outlives the scheduler that queued it: the
/// kill switch's notification, refused by its webhook, is delivered by a
/// scheduler process started after the first was SIGKILLed — with the
/// delivery id it had on every try, in the header and the signed body — and
/// the outbox in Redis never holds the webhook's URL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_notification_in_retry_is_delivered_after_its_scheduler_is_killed() {
    let receiver = Receiver::start().await;
    receiver.failing.store(true, Ordering::SeqCst);
    let key = b"0123456789abcdef0123456789abcdef".to_vec();
    let key_dir = tempfile::tempdir().unwrap();
    let key_file = key_dir.path().join("notify.key");
    std::fs::write(&key_file, &key).unwrap();
    let hook = format!("http://127.0.0.1:{}/secret-hook-path", receiver.port);
    let mut stack = Stack::start(support::single_location(1, true)).await;
    // Only the scheduler processes below deliver.
    stack.kill_scheduler();
    let env = [
        ("FLOTILLA_NOTIFY_WEBHOOK", hook.clone()),
        ("FLOTILLA_NOTIFY_ON", "kill_switch".to_string()),
        ("FLOTILLA_EGRESS_ALLOW_PLAIN_HTTP", "127.0.0.1".to_string()),
        (
            "FLOTILLA_NOTIFY_HMAC_KEY_FILE",
            key_file.display().to_string(),
        ),
    ];
    stack.spawn_service("scheduler", "scheduler-a", &env);
    let api = stack.skewed_metrics_port("scheduler-a");
    assert!(
        test_support::ports::wait_for_port(api, Duration::from_secs(60)).await,
        "scheduler-a's API never listened"
    );
    // 503 until the process has connected to RabbitMQ and Redis.
    let mut answer = (503, String::new());
    for _ in 0..120 {
        answer = support::http(
            api,
            "POST",
            "/kill?campaign=outboxed",
            "application/json",
            r#"{"reason": "incident 9"}"#,
        )
        .await;
        if answer.0 != 503 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(answer.0, 200, "{}", answer.1);
    stack
        .wait_for("two refused tries", Duration::from_secs(30), |_| {
            receiver.tries().len() >= 2
        })
        .await;
    stack.kill_process("scheduler-a").await;
    let refused = receiver.tries().len();
    receiver.failing.store(false, Ordering::SeqCst);
    // No one else delivers it while no scheduler runs.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(receiver.tries().len(), refused, "{:#?}", receiver.tries());

    stack.spawn_service("scheduler", "scheduler-b", &env);
    stack
        .wait_for(
            "the notification, from scheduler-b",
            Duration::from_secs(60),
            |_| receiver.tries().iter().any(|(_, ok, _)| *ok),
        )
        .await;
    // Delivered once: nothing more comes.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let tries = receiver.tries();
    assert_eq!(
        tries.iter().filter(|(_, ok, _)| *ok).count(),
        1,
        "delivered once: {tries:#?}"
    );
    let ids: std::collections::BTreeSet<_> = tries.iter().map(|(id, _, _)| id.clone()).collect();
    assert_eq!(ids.len(), 1, "one delivery id on every try: {tries:#?}");
    let id = ids
        .into_iter()
        .next()
        .unwrap()
        .expect("an X-Flotilla-Delivery header");
    let (signature, body) = receiver.at("/secret-hook-path").pop().unwrap();
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        json["delivery_id"], id,
        "the signed body names the delivery: {json}"
    );
    assert_eq!(json["event"], "kill_switch");
    assert!(
        json["reason"].as_str().unwrap().contains("incident 9"),
        "{json}"
    );
    assert_signed(signature.as_deref(), &key, &body);

    // The outbox kept the settled delivery (so its id is never queued
    // again), and no part of the webhook's URL.
    let mut redis = stack.store.connection();
    let delivery_key = stack
        .names
        .notify_delivery_key(Uuid::parse_str(&id).unwrap());
    let record: std::collections::HashMap<String, String> =
        redis::AsyncCommands::hgetall(&mut redis, &delivery_key)
            .await
            .unwrap();
    assert_eq!(
        record.get("state").map(String::as_str),
        Some("delivered"),
        "{record:#?}"
    );
    assert!(
        record
            .values()
            .all(|value| !value.contains("secret-hook-path")),
        "the outbox holds the webhook's URL: {record:#?}"
    );
    let due: u64 = redis::AsyncCommands::zcard(&mut redis, stack.names.notify_due_key())
        .await
        .unwrap();
    assert_eq!(due, 0, "nothing left due");
    stack.teardown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_instance_is_sent_only_while_the_window_its_tag_names_is_open() {
    // `short` opens every minute for 20 s: [hh:mm:00, hh:mm:20); `always`
    // is always open; `none` names no window.
    const SHORT_MS: u64 = 20_000;
    let mut profile = support::slow_single_location(30);
    profile.tags = [(
        "PatchWindow".to_string(),
        vec!["always".into(), "short".into(), "none".into()],
    )]
    .into();
    let mut stack = Stack::start(profile).await;
    let always = stack.instances_tagged("PatchWindow", "always");
    let short = stack.instances_tagged("PatchWindow", "short");
    let none = stack.instances_tagged("PatchWindow", "none");
    assert!(
        !always.is_empty() && !short.is_empty() && !none.is_empty(),
        "the fleet has instances in each: {} always, {} short, {} none",
        always.len(),
        short.len(),
        none.len()
    );
    stack.spawn_worker("worker-a", 8);
    let campaign = stack.campaign(
        "per-target-windows",
        format!(
            "{}window_tag: PatchWindow\nwindows:\n  - name: always\n    schedule: rate(1 minute)\n    duration: 2m\n  - name: short\n    schedule: rate(1 minute)\n    duration: 20s\n",
            support::one_step(
                "  max_concurrency: 4\n  max_errors: 0\n  location_concurrency: 100%\n"
            )
        ),
    );
    // Start 25-32 s into a minute: `short` is closed for the next 28 s.
    let into_minute = support::now_unix_ms() % 60_000;
    if !(25_000..32_000).contains(&into_minute) {
        tokio::time::sleep(Duration::from_millis(
            (60_000 + 25_000 - into_minute) % 60_000,
        ))
        .await;
    }
    let started_ms = support::now_unix_ms();
    let run_id = stack.start_run(&campaign).await;
    let started = tokio::time::Instant::now();

    // The scheduler parks `short`'s batches. One of them also reaches a
    // worker now, as a batch admitted just before its window closed would:
    // the worker holds it until the window opens (and the scheduler's own
    // copy later finds it sent: the same job, sent once).
    let parked = loop {
        let waiting = stack
            .scheduler
            .ledger()
            .never_started(run_id)
            .await
            .unwrap();
        if let Some(entry) = waiting.into_iter().find(|entry| entry.window == Some(2)) {
            break entry;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "no batch of the closed window was parked"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // `run show` says what the run waits for.
    let progress = stack.scheduler.progress(run_id).await.unwrap();
    let holds = stack.scheduler.holds(run_id, &progress).await;
    assert!(
        holds.iter().any(|hold| hold
            .detail
            .contains("maintenance window \"short\", which opens at")),
        "{holds:#?}"
    );
    let plan = stack.scheduler.plan(run_id).await.unwrap();
    let early = protocol::envelope::seal(
        &plan.execute_job(&parked).unwrap(),
        stack.keys.scheduler.signer().unwrap(),
        protocol::job::UnixMillis::now(),
    )
    .unwrap();
    let publisher = broker::Broker::connect(&stack.amqp_url, stack.names.clone(), "early")
        .await
        .unwrap();
    publisher
        .publish_sealed_job(protocol::job::Priority::Bulk, &early)
        .await
        .unwrap();
    publisher.close().await;

    let progress = loop {
        let progress = stack.scheduler.progress(run_id).await.unwrap();
        if progress.finished {
            break progress;
        }
        assert!(
            started.elapsed() < Duration::from_secs(150),
            "the run did not finish: {progress:#?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(progress.state, RunState::Completed, "{progress:#?}");

    // Every instance in a window ran once; none of the others ran.
    for id in always.iter().chain(&short) {
        assert_eq!(stack.runs_on(id), 1, "{id} ran once");
    }
    for id in &none {
        assert_eq!(stack.runs_on(id), 0, "{id} names no window and never ran");
    }
    let commands = stack.commands();
    let first_opening = started_ms - started_ms % 60_000 + 60_000;
    for command in &commands {
        let in_short = command
            .instance_ids
            .iter()
            .filter(|id| short.contains(id))
            .count();
        assert!(
            in_short == 0 || in_short == command.instance_ids.len(),
            "a batch is of one window: {:?}",
            command.instance_ids
        );
        if in_short > 0 {
            // A send decided just before the close may reach the simulator a
            // few milliseconds after it.
            assert!(
                command.received_unix_ms >= first_opening
                    && command.received_unix_ms % 60_000 < SHORT_MS + 500,
                "{:?} sent outside their window, {} ms into the minute (run started {} ms into it)",
                command.instance_ids,
                command.received_unix_ms % 60_000,
                started_ms % 60_000
            );
        }
    }
    assert!(
        commands
            .iter()
            .any(|command| command.received_unix_ms < first_opening),
        "the open window's instances did not wait for the closed one"
    );

    // One result per target; the instances without a window are told why.
    let records = stack.records(run_id);
    assert_eq!(records.len(), always.len() + short.len() + none.len());
    for record in records.iter().filter(|r| none.contains(&r.instance_id)) {
        assert_eq!(record.status, "Not Started", "{record:?}");
        assert!(
            record.output.contains("PatchWindow") && record.output.contains("always, short"),
            "the result names the tag and the windows: {record:?}"
        );
    }
    stack.teardown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_window_that_closes_mid_run_stops_sends_until_the_next_one_opens() {
    // Windows open every minute for 50 s: [hh:mm:00, hh:mm:50).
    const WINDOW_MS: u64 = 50_000;
    let mut stack = Stack::start(support::slow_single_location(24)).await;
    stack.spawn_worker("worker-a", 8);
    let campaign = stack.campaign(
        "windowed",
        format!(
            "{}windows:\n  - schedule: rate(1 minute)\n    duration: 50s\n",
            support::one_step("  max_concurrency: 4\n  max_errors: 0\n")
        ),
    );
    // Start 3-8 s before a window closes: the run (twelve batches of two,
    // two at a time, at least 2 s each) cannot end before it closes.
    let into_minute = support::now_unix_ms() % 60_000;
    let start_at = 42_000;
    let wait = (60_000 + start_at - into_minute) % 60_000;
    if !(0..5_000).contains(&(into_minute.wrapping_sub(start_at))) {
        tokio::time::sleep(Duration::from_millis(wait)).await;
    }
    let run_id = stack.start_run(&campaign).await;
    let mut states = Vec::new();
    let started = tokio::time::Instant::now();
    let progress = loop {
        let progress = stack.scheduler.progress(run_id).await.unwrap();
        if states.last() != Some(&progress.state) {
            states.push(progress.state);
        }
        if progress.finished {
            break progress;
        }
        assert!(
            started.elapsed() < Duration::from_secs(150),
            "the run did not finish: {progress:#?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    stack.assert_each_target_ran_once(run_id, &progress);
    assert!(
        states.contains(&RunState::OutsideWindow),
        "it waited outside the windows: {states:?}"
    );
    let commands = stack.commands();
    // A send decided just before the close may reach the simulator a few
    // milliseconds after it.
    let late: Vec<u64> = commands
        .iter()
        .map(|command| command.received_unix_ms % 60_000)
        .filter(|into| *into >= WINDOW_MS + 500)
        .collect();
    assert!(
        late.is_empty(),
        "sent outside the windows (ms into the minute): {late:?}"
    );
    let windows: std::collections::BTreeSet<u64> = commands
        .iter()
        .map(|command| command.received_unix_ms / 60_000)
        .collect();
    assert!(
        windows.len() >= 2,
        "the run went on in the next window: {windows:?}"
    );
    stack.teardown().await;
}

//! Trust III on real RabbitMQ and Redis, as an attacker or a careless
//! operator would try it: bad records degrade, never stop the scheduler.

#![allow(clippy::unwrap_used)]

mod support;

use std::time::Duration;

use api::auth::{AuthSettings, TokensFile};
use protocol::run::RunState;
use redis::AsyncCommands;
use scheduler::auth::Role;
use support::Stack;

/// Serves the API (metrics open) with a token for each of `principals`;
/// the port, their tokens, and the directory holding the tokens file.
async fn serve_with<const N: usize>(
    stack: &mut Stack,
    principals: [(&str, Role); N],
) -> (u16, [String; N], tempfile::TempDir) {
    let secrets = tempfile::tempdir().unwrap();
    let tokens_path = secrets.path().join("tokens");
    let tokens = principals.map(|(name, role)| support::add_token(&tokens_path, name, role, None));
    stack.api_config_mut().auth = AuthSettings {
        tokens_file: Some(TokensFile::open(tokens_path).unwrap()),
        metrics_open: true,
        ..AuthSettings::default()
    };
    let port = stack.serve_api().await;
    (port, tokens, secrets)
}

/// Serves the API with an admin (`ada`); its token, and the directory
/// holding the tokens file.
async fn serve_with_admin(stack: &mut Stack) -> (u16, String, tempfile::TempDir) {
    let (port, [admin], secrets) = serve_with(stack, [("ada", Role::Admin)]).await;
    (port, admin, secrets)
}

/// Trust III, finding 12: a live run whose state is garbled and a run whose
/// record was deleted neither keep the scheduler from starting (recovery)
/// nor hide the other runs from `GET /runs` and the console: they are listed
/// as unreadable, counted, and the other runs go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_bad_run_record_never_stops_the_scheduler_or_hides_other_runs() {
    let mut stack = Stack::start(support::single_location(5, false)).await;
    stack.spawn_worker("worker", 4);
    let done = stack.campaign("done", support::one_step("  max_errors: 0\n"));
    let deleted_run = stack.start_run(&done).await;
    stack
        .wait_until_final(deleted_run, Duration::from_secs(60))
        .await;
    // A live run (held by its campaign's kill switch), then garbled.
    let held = stack.campaign("held", support::one_step("  max_errors: 0\n"));
    stack
        .scheduler
        .engage_kill_switch(&store::KillScope::Campaign("held".into()), "held", false)
        .await
        .unwrap();
    let garbled_run = stack.start_run(&held).await;
    let mut redis = stack.store.connection();
    let () = redis
        .hset(stack.names.run_key(garbled_run), "state", "garbled")
        .await
        .unwrap();
    let _: i64 = redis.del(stack.names.run_key(deleted_run)).await.unwrap();

    // The scheduler restarts (recovery reads the live runs) and answers.
    let (port, admin, _secrets) = serve_with_admin(&mut stack).await;
    let good = stack.campaign("good", support::one_step("  max_errors: 0\n"));
    let good_run = stack.start_run(&good).await;
    let progress = stack
        .wait_until_final(good_run, Duration::from_secs(60))
        .await;
    assert_eq!(progress.state, RunState::Completed, "{progress:#?}");

    let (status, body) = support::call(port, &admin, "GET", "/runs", "").await;
    assert_eq!(status, 200, "{body}");
    let runs: Vec<scheduler::RunProgress> = serde_json::from_str(&body).unwrap();
    let listed = |run_id| runs.iter().find(|run| run.run_id == run_id).unwrap();
    assert_eq!(listed(good_run).unreadable, None);
    for bad in [garbled_run, deleted_run] {
        let run = listed(bad);
        assert!(run.unreadable.is_some(), "{run:#?}");
        assert!(run.reason.starts_with("run record unreadable"), "{run:#?}");
    }
    let (cookie, _) = support::console::sign_in(port, &admin).await;
    let (status, _, page) =
        support::console::exchange(port, support::console::get("/ui/runs", Some(&cookie))).await;
    assert_eq!(status, 200, "{page}");
    assert!(page.contains(&good_run.to_string()), "{page}");
    assert!(page.contains("run record unreadable"), "{page}");
    let metrics = support::http_get(port, "/metrics").await;
    let unreadable =
        support::metric_value(&metrics, "flotilla_scheduler_unreadable_runs_total").unwrap();
    assert!(unreadable >= 2.0, "{unreadable}");
    stack.teardown().await;
}

/// Reads from `stream` until the server closes it; how long that took, or
/// `None` if it stayed open for `limit`.
async fn closed_within(stream: &mut tokio::net::TcpStream, limit: Duration) -> Option<Duration> {
    use tokio::io::AsyncReadExt as _;
    let started = tokio::time::Instant::now();
    let mut buffer = [0u8; 4096];
    loop {
        match tokio::time::timeout_at(started + limit, stream.read(&mut buffer)).await {
            Err(_) => return None,
            Ok(Ok(0) | Err(_)) => return Some(started.elapsed()),
            Ok(Ok(_)) => continue,
        }
    }
}

/// Trust III, finding 13: idle, half-sent and kept-alive-but-silent
/// connections are closed after the header deadline, and connections past
/// the cap are closed as they are accepted; once the idle ones are gone, a
/// request is served again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_and_half_sent_connections_are_closed_and_capped() {
    use tokio::io::AsyncWriteExt as _;
    let mut stack = Stack::start(support::single_location(1, false)).await;
    stack.api_config_mut().limits = api::listen::ConnectionLimits {
        max_connections: 4,
        header_timeout: Duration::from_secs(1),
        request_timeout: Duration::from_secs(5),
    };
    let port = stack.serve_api().await;
    let connect = || tokio::net::TcpStream::connect(("127.0.0.1", port));

    // A kept-alive connection that goes quiet after one answer.
    let mut kept = connect().await.unwrap();
    kept.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    // Half-sent headers, and silence.
    let mut half = connect().await.unwrap();
    half.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let (mut idle, mut silent) = (connect().await.unwrap(), connect().await.unwrap());
    tokio::time::sleep(Duration::from_millis(200)).await;
    // The cap: a fifth connection is closed at once.
    let mut over = connect().await.unwrap();
    let closed = closed_within(&mut over, Duration::from_secs(1)).await;
    assert!(closed.is_some(), "a connection past the cap was kept open");

    for stream in [&mut kept, &mut half, &mut idle, &mut silent] {
        let closed = closed_within(stream, Duration::from_secs(5)).await;
        assert!(
            closed.is_some(),
            "a silent connection was still open after 5 s (header deadline 1 s)"
        );
    }
    let (status, body) = support::http(port, "GET", "/healthz", "text/plain", "").await;
    assert_eq!(
        status, 200,
        "served again once the silent ones are gone: {body}"
    );
    stack.teardown().await;
}

/// Trust III, finding 8: the global kill switch engaged, its record and the
/// deployment marker deleted, the scheduler restarted: the switch stays
/// engaged (nothing is sent), and arming is refused because the deployment
/// has runs — and that attempt is audited.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_kill_switch_record_never_releases_itself() {
    use store::Store as _;
    let mut stack = Stack::start(support::single_location(5, false)).await;
    stack.spawn_worker("worker", 4);
    let first = stack.campaign("first", support::one_step("  max_errors: 0\n"));
    let run_id = stack.start_run(&first).await;
    stack
        .wait_until_final(run_id, Duration::from_secs(60))
        .await;
    let sent_before = stack.commands().len();
    stack
        .scheduler
        .engage_kill_switch(&store::KillScope::Global, "incident", false)
        .await
        .unwrap();
    let mut redis = stack.store.connection();
    let _: i64 = redis
        .del(&[stack.names.kill_switch_key(), stack.names.deployment_key()])
        .await
        .unwrap();
    let (port, admin, _secrets) = serve_with_admin(&mut stack).await;

    let reason = stack.store.kill_reason("second").await.unwrap();
    assert!(reason.is_some(), "a missing record reads as engaged");
    let second = stack.campaign("second", support::one_step("  max_errors: 0\n"));
    stack.start_run(&second).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(stack.commands().len(), sent_before, "nothing was sent");

    let arming = stack.scheduler.arm_new_deployment("mallory").await.unwrap();
    assert_eq!(arming, store::Arming::HasRuns);
    assert!(stack.store.kill_reason("second").await.unwrap().is_some());
    let (status, trail) = support::call(port, &admin, "GET", "/audit?action=kill:arm", "").await;
    assert_eq!(status, 200, "{trail}");
    assert!(
        trail.contains("mallory") && trail.contains("refused"),
        "{trail}"
    );
    stack.teardown().await;
}

/// Trust III, findings 4 and 5: a campaign naming an internal service as
/// its gate or webhook, or results outside the deployment's roots, is
/// refused at apply with the reason; a read-only scan that names a webhook
/// needs a second person like a change.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbound_urls_and_outputs_outside_the_deployments_lists_are_refused_at_apply() {
    let mut stack = Stack::start(support::single_location(1, false)).await;
    stack.scheduler_config_mut().egress = scheduler::egress::EgressPolicy {
        allowed_hosts: vec!["hooks.example.com".into()],
        plain_http_hosts: Vec::new(),
    };
    let (port, admin, _secrets) = serve_with_admin(&mut stack).await;
    let results = stack.results.path().display().to_string();
    let scan = "steps:\n  - name: scan\n    document: AWS-RunPatchBaseline\n    parameters: { Operation: Scan }\n";
    let account = stack.account_ids()[0].clone();
    let yaml = |name: &str, rest: String| {
        format!(
            "name: {name}\naccounts: {{ids: [\"{account}\"]}}\nregions: [us-east-1]\nrole: {{name: FlotillaExecutionRole}}\ntargets: {{all: true}}\n{scan}{rest}"
        )
    };
    for (name, rest, why) in [
        (
            "gate-to-redis",
            format!(
                "output: {results}\nrollout:\n  waves: [1]\n  gates:\n    - {{prometheus_url: \"http://127.0.0.1:6379\", query: \"up\"}}\n"
            ),
            "plain http",
        ),
        (
            "hook-to-metadata",
            format!(
                "output: {results}\nnotify:\n  - on: [halted]\n    webhook: https://169.254.169.254/latest\n"
            ),
            "not on the deployment's outbound allow list",
        ),
        (
            "climbing-output",
            "output: ../../../tmp/x\n".to_string(),
            "may not climb out",
        ),
        (
            "foreign-bucket",
            "output: s3://someone-elses-bucket/x\n".to_string(),
            "--output-bucket",
        ),
    ] {
        let (status, body) = support::http_as(
            port,
            Some(&admin),
            "POST",
            "/campaigns",
            "application/yaml",
            &yaml(name, rest),
        )
        .await;
        assert_eq!(status, 400, "{name}: {body}");
        assert!(body.contains(why), "{name}: {body}");
    }
    let hooked = yaml(
        "hooked-scan",
        format!(
            "output: {results}\nnotify:\n  - on: [halted]\n    webhook: https://hooks.example.com/T0/B0/x\n"
        ),
    );
    let (status, body) = support::http_as(
        port,
        Some(&admin),
        "POST",
        "/campaigns",
        "application/yaml",
        &hooked,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"needs_approval\":true"), "{body}");
    let (status, body) =
        support::call(port, &admin, "POST", "/campaigns/hooked-scan/runs", "").await;
    assert!(
        status == 409 || status == 403,
        "a scan naming a webhook starts only once approved: {status} {body}"
    );
    assert!(body.contains("names outbound URLs"), "{body}");
    stack.teardown().await;
}

/// The sum of a counter's series in a Prometheus text exposition.
fn counter_sum(exposition: &str, name: &str) -> f64 {
    exposition
        .lines()
        .filter(|line| line.starts_with(name) && !line.starts_with('#'))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Trust III, finding 11: floods stay bounded. Too many events or alerts in
/// one request are refused whole (413, nothing acted on); alerts asking for
/// the global kill switch engage and record it once per request; garbage on
/// the reports queue (no key is needed to publish) is counted, but at most
/// a budget a second of it becomes audit records.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn floods_of_events_alerts_and_refused_reports_stay_bounded() {
    let mut stack = Stack::start(support::single_location(1, false)).await;
    let (port, [admin, eventbridge, alertmanager], _secrets) = serve_with(
        &mut stack,
        [
            ("ada", Role::Admin),
            ("eb", Role::Eventbridge),
            ("am", Role::Alertmanager),
        ],
    )
    .await;

    let event = serde_json::json!({
        "source": "aws.ec2",
        "detail-type": "EC2 Instance State-change Notification",
        "account": "123456789012",
        "region": "us-east-1",
        "detail": {"instance-id": "i-0123456789abcdef0", "state": "running"},
    });
    let events =
        serde_json::Value::Array(vec![event; scheduler::triggers::MAX_EVENTS_PER_REQUEST + 1]);
    let (status, body) =
        support::call(port, &eventbridge, "POST", "/events", &events.to_string()).await;
    assert_eq!(status, 413, "{body}");
    assert!(body.contains("at most 100"), "{body}");

    let alert = |name: &str, scope: &str| {
        serde_json::json!({
            "status": "firing",
            "labels": {"alertname": name, "scope": scope},
            "annotations": {"summary": "flood"},
        })
    };
    let too_many: Vec<_> = (0..=scheduler::triggers::MAX_ALERTS_PER_REQUEST)
        .map(|n| alert(&format!("A{n}"), "global"))
        .collect();
    let payload = serde_json::json!({ "alerts": too_many }).to_string();
    let (status, body) = support::call(port, &alertmanager, "POST", "/alerts", &payload).await;
    assert_eq!(status, 413, "{body}");
    assert!(body.contains("max_alerts"), "{body}");
    let (_, body) = support::call(port, &admin, "GET", "/kill", "").await;
    assert!(
        !body.contains("flood"),
        "a refused batch engages nothing: {body}"
    );

    let many: Vec<_> = (0..40).map(|n| alert(&format!("G{n}"), "global")).collect();
    let payload = serde_json::json!({ "alerts": many }).to_string();
    let (status, body) = support::call(port, &alertmanager, "POST", "/alerts", &payload).await;
    assert_eq!(status, 200, "{body}");
    let (_, body) = support::call(port, &admin, "GET", "/audit?action=kill:engage", "").await;
    let engaged: Vec<scheduler::audit::AuditRecord> = serde_json::from_str(&body).unwrap();
    assert_eq!(
        engaged
            .iter()
            .filter(|record| record.principal.starts_with("alert:"))
            .count(),
        1,
        "one engagement recorded for one request: {engaged:#?}"
    );

    // Garbage on the reports queue, as anyone on the broker can publish it.
    let flood = 600u32;
    let attacker = broker::Broker::connect(&stack.amqp_url, stack.names.clone(), "attacker")
        .await
        .unwrap();
    for n in 0..flood {
        let garbage = format!("not a report {n} {}", "x".repeat(500));
        attacker
            .publish_sealed_report(garbage.as_bytes())
            .await
            .unwrap();
    }
    let mut counted = 0.0;
    for _ in 0..300 {
        let (_, metrics) = support::call(port, &admin, "GET", "/metrics", "").await;
        counted = counter_sum(&metrics, "flotilla_scheduler_reports_rejected_total");
        if counted >= f64::from(flood) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(counted, f64::from(flood), "every refused report is counted");
    let (_, body) = support::call(
        port,
        &admin,
        "GET",
        "/audit?action=report.reject&limit=1000",
        "",
    )
    .await;
    let recorded: Vec<scheduler::audit::AuditRecord> = serde_json::from_str(&body).unwrap();
    let mut per_second = std::collections::BTreeMap::<u64, u32>::new();
    for record in &recorded {
        *per_second.entry(record.time_ms / 1000).or_default() += 1;
        assert!(record.reason.chars().count() < 500, "{record:?}");
    }
    // A record admitted at the end of one second may be stamped in the
    // next: a few over the budget in a second are that, not a leak.
    assert!(
        per_second
            .values()
            .all(|&count| count <= scheduler::audit::MAX_REFUSAL_RECORDS_PER_SECOND + 5),
        "{per_second:?}"
    );
    assert!(
        !recorded.is_empty(),
        "refusals within the budget are recorded"
    );
    attacker.close().await;
    stack.teardown().await;
}

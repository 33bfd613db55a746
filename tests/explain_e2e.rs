//! Issue 33 on real RabbitMQ and Redis: a run says why it is not moving (no
//! worker takes its jobs, a kill switch holds its sends), the CLI prints one
//! JSON document for scripts from every command used here, and an apply
//! says an approval is needed only where the two-person rule binds.

#![allow(clippy::unwrap_used)]

mod support;

use std::time::Duration;

use support::Stack;

/// Runs the `flotilla` CLI against the API on `port`; returns (success, stdout, stderr).
async fn flotilla(port: u16, args: &[&str]) -> (bool, String, String) {
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_flotilla"))
        .args(args)
        .env("FLOTILLA_API_URL", format!("http://127.0.0.1:{port}"))
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(60), output)
        .await
        .expect("the CLI answers within 60 s")
        .expect("the CLI runs");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// The CLI's stdout as JSON; the command must succeed.
async fn json(port: u16, args: &[&str]) -> serde_json::Value {
    let (ok, stdout, stderr) = flotilla(port, args).await;
    assert!(ok, "{args:?} failed: {stderr}");
    serde_json::from_str(&stdout)
        .unwrap_or_else(|error| panic!("{args:?} printed no JSON ({error}): {stdout}"))
}

/// Polls `run show --format json` until `done` holds for its answer.
async fn wait_for_detail(
    port: u16,
    run_id: &str,
    what: &str,
    done: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let detail = json(port, &["run", "show", run_id, "--format", "json"]).await;
        if done(&detail) {
            return detail;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "within 30 s: {what}; last: {detail}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn has_hold(detail: &serde_json::Value, kind: &str) -> bool {
    detail["holds"]
        .as_array()
        .is_some_and(|holds| holds.iter().any(|hold| hold["kind"] == kind))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_says_when_no_worker_takes_its_jobs_and_when_a_kill_switch_holds_it() {
    let mut stack = Stack::start(support::single_location(6, false)).await;
    let port = stack.serve_api().await;
    let campaign = stack.campaign("explained", support::one_step("  max_errors: 0\n"));
    let dir = tempfile::tempdir().unwrap();
    let spec = dir.path().join("explained.json");
    std::fs::write(&spec, serde_json::to_string(&campaign.spec).unwrap()).unwrap();

    // Without authentication the two-person rule cannot bind: no hint that
    // another approver must approve (the run starts at once).
    let (ok, applied, stderr) =
        flotilla(port, &["campaign", "apply", "-f", spec.to_str().unwrap()]).await;
    assert!(ok, "{stderr}");
    assert!(
        applied.starts_with("campaign explained version 1"),
        "{applied}"
    );
    assert!(!applied.contains("approve"), "{applied}");
    let listed = json(port, &["campaign", "list", "--format", "json"]).await;
    assert!(
        listed
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["name"] == "explained"),
        "{listed}"
    );

    // No worker runs: the run's jobs wait, and the API and CLI say so.
    let started = json(port, &["run", "start", "explained", "--format", "json"]).await;
    let run_id = started["run_id"].as_str().expect("run_id").to_string();
    let detail = wait_for_detail(port, &run_id, "a no_worker hold", |detail| {
        has_hold(detail, "no_worker")
    })
    .await;
    assert_eq!(detail["progress"]["state"], "Discovering", "{detail}");
    let (_, shown, _) = flotilla(port, &["run", "show", &run_id]).await;
    assert!(
        shown.contains("waiting: ") && shown.contains("no worker consumes it"),
        "{shown}"
    );

    // A kill switch holds every send: said by run show and run list.
    let engaged = json(
        port,
        &[
            "kill",
            "engage",
            "--reason",
            "explain test",
            "--format",
            "json",
        ],
    )
    .await;
    assert_eq!(engaged["engaged"], true, "{engaged}");
    let status = json(port, &["kill", "status", "--format", "json"]).await;
    assert_eq!(status["reason"], "explain test", "{status}");
    wait_for_detail(port, &run_id, "a kill_switch hold", |detail| {
        has_hold(detail, "kill_switch")
    })
    .await;
    let (_, runs, _) = flotilla(port, &["run", "list"]).await;
    assert!(
        runs.lines()
            .next()
            .is_some_and(|line| line.contains("kill switch is ENGAGED (explain test)")),
        "{runs}"
    );

    // A worker comes while the switch holds: its sends are held back, and
    // the targets in flight say so (held, not sending).
    stack.spawn_worker("worker-a", 4);
    let held_targets = |detail: &serde_json::Value| -> u64 {
        detail["holds"].as_array().map_or(0, |holds| {
            holds
                .iter()
                .filter(|hold| hold["kind"] == "held")
                .filter_map(|hold| hold["targets"].as_u64())
                .sum()
        })
    };
    let held = wait_for_detail(
        port,
        &run_id,
        "every target in flight held back",
        |detail| {
            let in_flight = detail["progress"]["targets_in_flight"]
                .as_u64()
                .unwrap_or(0);
            in_flight > 0 && held_targets(detail) == in_flight
        },
    )
    .await;
    let in_flight = held["progress"]["targets_in_flight"].as_u64().unwrap();
    let (_, shown, _) = flotilla(port, &["run", "show", &run_id]).await;
    assert!(
        shown.contains(&format!(
            "in flight: 0 sending or running, {in_flight} held back"
        )) && shown.contains("held back, not sent: global kill switch"),
        "{shown}"
    );

    // Released, SSM fails the send once: the location says it retries,
    // with SSM's cause and the next try.
    stack.inject(sim::state::Fault::FailNext {
        operation: "SendCommand".into(),
        code: "InternalServerError".into(),
        count: 1,
    });
    let released = json(port, &["kill", "release", "--format", "json"]).await;
    assert_eq!(released["engaged"], false, "{released}");
    let retrying = wait_for_detail(port, &run_id, "a location retrying", |detail| {
        has_hold(detail, "retrying")
    })
    .await;
    let hold = retrying["holds"]
        .as_array()
        .unwrap()
        .iter()
        .find(|hold| hold["kind"] == "retrying")
        .unwrap()
        .clone();
    let detail = hold["detail"].as_str().unwrap();
    assert!(
        detail.contains(&format!("{}/", stack.account_ids()[0]))
            && detail.contains("execute job")
            && detail.contains("InternalServerError")
            && detail.contains("next try"),
        "{hold}"
    );

    // The run completes and nothing holds it any more.
    let finished = wait_for_detail(port, &run_id, "the run completed", |detail| {
        detail["progress"]["finished"] == true
    })
    .await;
    assert_eq!(finished["progress"]["state"], "Completed", "{finished}");
    assert_eq!(finished["holds"], serde_json::json!([]), "{finished}");
    let ended = finished["progress"]["ended_ms"].as_u64().expect("ended_ms");
    let created = finished["progress"]["created_ms"].as_u64().unwrap();
    assert!(ended >= created, "{finished}");
    let (_, shown, _) = flotilla(port, &["run", "show", &run_id]).await;
    assert!(
        shown.contains(", ended ") && shown.contains("(took "),
        "{shown}"
    );

    // The audit trail for scripts: RFC 3339 times.
    let audit = json(
        port,
        &["audit", "--action", "kill:engage", "--format", "json"],
    )
    .await;
    let record = &audit.as_array().unwrap()[0];
    let time = record["time"].as_str().expect("a time");
    assert!(
        chrono::DateTime::parse_from_rfc3339(time).is_ok(),
        "{record}"
    );
    stack.teardown().await;
}

/// Issue 33: SSM refusing the step itself (a misspelled document, a bad
/// parameter) is one failure of the run with SSM's cause, not one failure
/// per target: the run halts at the first refusal, every target is reported
/// Not Started with the cause, and the target error budget is not charged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_ssm_refuses_halts_the_run_once_without_charging_the_target_budget() {
    let mut stack = Stack::start(support::single_location(12, false)).await;
    stack.spawn_worker("worker-a", 4);
    // An AWS-owned document is the same everywhere: its refusal halts the
    // run. One of the deployment's own may differ per account: its refusal
    // fails the location (and location_max_errors, 0 by default, halts).
    for (name, step, code, halt) in [
        (
            "misspelled",
            "  - name: configure\n    document: AWS-RunShellScirpt\n    parameters: { commands: [\"true\"] }\n",
            "InvalidDocument",
            "SSM refused the step",
        ),
        (
            "bad-parameter",
            "  - name: scan\n    document: AWS-RunPatchBaseline\n    parameters: { Operation: Scan, RebootOptoin: NoReboot }\n",
            "InvalidParameters",
            "SSM refused the step",
        ),
        (
            "own-document",
            "  - name: configure\n    document: Acme-Configure\n    parameters: { level: [\"high\"] }\n",
            "InvalidDocument",
            "location_max_errors exceeded: 1 locations failed, 0 allowed",
        ),
    ] {
        let campaign = stack.campaign(
            name,
            format!("steps:\n{step}rate_control:\n  max_concurrency: 4\n  max_errors: 0\n"),
        );
        let run_id = stack.start_run(&campaign).await;
        let progress = stack
            .wait_until_final(run_id, Duration::from_secs(60))
            .await;
        assert_eq!(
            progress.state,
            protocol::run::RunState::Halted,
            "{progress:#?}"
        );
        assert!(
            progress.reason.contains(halt) && progress.reason.contains(code),
            "the halt names SSM's cause: {}",
            progress.reason
        );
        assert_eq!(progress.failures, 0, "no target charged: {progress:#?}");
        let records = stack.records(run_id);
        assert_eq!(records.len(), 12, "every target reported once");
        for record in &records {
            assert_eq!(record.status, "Not Started", "{record:?}");
            assert!(record.output.contains(code), "{record:?}");
        }
    }
    assert!(stack.commands().is_empty(), "SSM ran nothing");
    stack.teardown().await;
}

/// Issue 33: overrides at start (Ansible's `--limit`, AWX's launch prompts)
/// narrow the run within the campaign's selection, set only the parameters
/// it declares overridable, are kept with the run and in the audit trail,
/// and a widening attempt is refused by name with nothing started.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overrides_at_start_narrow_the_run_set_declared_parameters_and_never_widen() {
    let mut profile = sim::FleetProfile::tiny();
    profile.connection_lost_share = 0.0;
    let mut stack = Stack::start(profile).await;
    let port = stack.serve_api().await;
    stack.spawn_worker("worker-a", 8);
    let campaign = stack.campaign(
        "limited-scan",
        "steps:\n  - name: scan\n    document: AWS-RunPatchBaseline\n    document_version: $LATEST\n    parameters: { Operation: Scan, RebootOption: RebootIfNeeded }\noverridable_parameters: [RebootOption]\nrate_control:\n  max_errors: 100%\n",
    );
    let dir = tempfile::tempdir().unwrap();
    let spec = dir.path().join("limited-scan.json");
    std::fs::write(&spec, serde_json::to_string(&campaign.spec).unwrap()).unwrap();
    let (ok, _, stderr) =
        flotilla(port, &["campaign", "apply", "-f", spec.to_str().unwrap()]).await;
    assert!(ok, "{stderr}");
    let accounts = stack.account_ids();

    // Widening attempts and undeclared parameters: refused by name.
    for (args, expected) in [
        (
            vec!["--limit-regions", "ap-south-1"],
            "region ap-south-1 is not one of campaign limited-scan's",
        ),
        (
            vec!["--limit-accounts", "999999999999"],
            "account 999999999999 is not one of campaign limited-scan's",
        ),
        (
            vec!["--param", "Operation=Install"],
            "parameter Operation of campaign limited-scan may not be overridden",
        ),
    ] {
        let mut command = vec!["run", "start", "limited-scan"];
        command.extend(args);
        let (ok, _, stderr) = flotilla(port, &command).await;
        assert!(!ok && stderr.contains(expected), "{command:?}: {stderr}");
    }
    assert!(
        stack.scheduler.ledger().run_ids().await.unwrap().is_empty(),
        "a refused start starts nothing"
    );

    // One account, one region, a new RebootOption.
    let narrowed = json(
        port,
        &[
            "run",
            "start",
            "limited-scan",
            "--limit-accounts",
            &accounts[0],
            "--limit-regions",
            "eu-west-1",
            "--param",
            "RebootOption=NoReboot",
            "--watch",
            "--format",
            "json",
        ],
    )
    .await;
    let overrides = narrowed["progress"]["overrides"]
        .as_str()
        .unwrap_or_default();
    assert_eq!(
        overrides,
        format!(
            "overridden by anonymous: accounts {}; regions eu-west-1; parameters RebootOption=\"NoReboot\"",
            accounts[0]
        ),
        "{narrowed}"
    );
    let run_id: uuid::Uuid = narrowed["progress"]["run_id"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let records = stack.records(run_id);
    assert!(!records.is_empty());
    assert!(
        records
            .iter()
            .all(|r| r.account_id == accounts[0] && r.region == "eu-west-1"),
        "only the limited location ran"
    );
    let commands = stack.commands();
    assert!(!commands.is_empty());
    for command in &commands {
        assert_eq!(
            (command.account_id.as_str(), command.region.as_str()),
            (accounts[0].as_str(), "eu-west-1")
        );
        assert_eq!(
            command.parameters["RebootOption"],
            serde_json::json!(["NoReboot"]),
            "the overridden value reached SendCommand"
        );
        assert_eq!(command.parameters["Operation"], serde_json::json!(["Scan"]));
        assert_eq!(
            command.document_version, "$LATEST",
            "the step's document_version reached SendCommand"
        );
    }

    // Two instances of the whole fleet.
    let two: Vec<String> = stack.fleet_instance_ids().into_iter().take(2).collect();
    let limited = json(
        port,
        &[
            "run",
            "start",
            "limited-scan",
            "--limit-instances",
            &two.join(","),
            "--watch",
            "--format",
            "json",
        ],
    )
    .await;
    let run_id: uuid::Uuid = limited["progress"]["run_id"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let mut ran: Vec<String> = stack
        .records(run_id)
        .into_iter()
        .map(|r| r.instance_id)
        .collect();
    ran.sort();
    let mut expected = two.clone();
    expected.sort();
    assert_eq!(ran, expected, "exactly the limited instances");

    // The audit trail says who overrode what.
    let audit = json(
        port,
        &["audit", "--action", "runs:start", "--format", "json"],
    )
    .await;
    assert!(
        audit.as_array().unwrap().iter().any(|record| record
            .to_string()
            .contains(&format!("instances {}", two.join(",")))),
        "{audit}"
    );
    stack.teardown().await;
}

/// Issue 33: a run cancelled before any worker discovered it ends its
/// discovery with the cancel: the Discover jobs a worker takes later ask AWS
/// nothing, and the run is over with no result to write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_cancelled_before_discovery_asks_aws_nothing_afterwards() {
    let mut stack = Stack::start(support::single_location(5, false)).await;
    let port = stack.serve_api().await;
    let campaign = stack.campaign("cancelled-early", support::one_step("  max_errors: 0\n"));
    let run_id = stack.start_run(&campaign).await;
    let (ok, out, stderr) = flotilla(
        port,
        &[
            "run",
            "cancel",
            &run_id.to_string(),
            "--reason",
            "wrong campaign",
        ],
    )
    .await;
    assert!(ok && out.contains("now Cancelled"), "{out}{stderr}");
    let progress = stack
        .wait_until_final(run_id, Duration::from_secs(30))
        .await;
    assert_eq!(progress.state, protocol::run::RunState::Cancelled);
    assert_eq!(
        progress.locations_discovered, progress.locations,
        "{progress:#?}"
    );

    // A worker comes and takes the Discover job the cancel left queued.
    stack.spawn_worker("worker-a", 4);
    let broker = broker::Broker::connect(&stack.amqp_url, stack.names.clone(), "explain-test")
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let depths = broker.job_queue_depths().await.unwrap();
        if depths.iter().all(|depth| depth.messages == 0) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{depths:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Taken and dropped: no call to AWS, no result.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(stack.calls("DescribeInstanceInformation"), 0);
    assert!(stack.records(run_id).is_empty());
    broker.close().await;
    stack.teardown().await;
}

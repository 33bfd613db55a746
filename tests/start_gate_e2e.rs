//! The start gate on real RabbitMQ and Redis: every door — the API, the
//! console's form, a schedule and an event — goes through the engine's one
//! start gate, which fails closed and lets one run of a campaign live at a
//! time unless asked otherwise.

#![allow(clippy::unwrap_used)]

mod support;

use std::time::Duration;

use api::auth::{AuthSettings, TokensFile};
use redis::AsyncCommands;
use scheduler::auth::Role;
use support::Stack;
use uuid::Uuid;

/// Serves the API with two principals: an admin (`ada`) and EventBridge
/// (`eb`); their tokens, and the directory holding the tokens file.
async fn serve_with_admin_and_eventbridge(
    stack: &mut Stack,
    configure: impl FnOnce(&mut scheduler::SchedulerConfig),
) -> (u16, String, String, tempfile::TempDir) {
    let secrets = tempfile::tempdir().unwrap();
    let tokens_path = secrets.path().join("tokens");
    let admin = support::add_token(&tokens_path, "ada", Role::Admin, None);
    let eventbridge = support::add_token(&tokens_path, "eb", Role::Eventbridge, None);
    stack.api_config_mut().auth = AuthSettings {
        tokens_file: Some(TokensFile::open(tokens_path).unwrap()),
        metrics_open: true,
        ..AuthSettings::default()
    };
    configure(stack.scheduler_config_mut());
    let port = stack.serve_api().await;
    (port, admin, eventbridge, secrets)
}

/// The CSRF token of the campaign's console page (its start form).
async fn start_form_csrf(port: u16, cookie: &str, campaign: &str) -> String {
    let (status, _, page) = support::console::exchange(
        port,
        support::console::get(&format!("/ui/campaigns/{campaign}"), Some(cookie)),
    )
    .await;
    assert_eq!(status, 200, "{page}");
    assert!(page.contains("id=\"start-run\""), "no start form: {page}");
    page.split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap()
        .to_string()
}

/// Posts the campaign page's start form as the session `cookie`: (status,
/// head, page).
async fn start_from_the_console(port: u16, cookie: &str, campaign: &str) -> (u16, String, String) {
    let csrf = start_form_csrf(port, cookie, campaign).await;
    support::console::exchange(
        port,
        support::console::post_form(
            &format!("/ui/campaigns/{campaign}/runs"),
            Some(cookie),
            &[("csrf", &csrf)],
        ),
    )
    .await
}

/// Every run of the stack's deployment.
async fn run_ids(stack: &Stack) -> Vec<Uuid> {
    stack.scheduler.ledger().run_ids().await.unwrap()
}

fn event_for(account: &str, instance_id: &str) -> String {
    serde_json::json!({
        "source": "aws.ec2",
        "detail-type": "EC2 Instance State-change Notification",
        "account": account,
        "region": "us-east-1",
        "detail": { "instance-id": instance_id, "state": "running" }
    })
    .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_door_starts_a_host_changing_run_during_a_freeze_when_the_calendar_cannot_be_read() {
    let mut stack = Stack::start(support::single_location(3, false)).await;
    // A minute of schedule time a second: `rate(1 minute)` fires every second.
    let (port, admin, eventbridge, _secrets) =
        serve_with_admin_and_eventbridge(&mut stack, |config| {
            config.clock =
                scheduler::schedules::SchedulerClock::accelerated(chrono::Utc::now(), 60);
        })
        .await;
    let install = stack.campaign(
        "frozen-install",
        format!(
            "{}schedule:\n  expression: rate(1 minute)\ntriggers:\n  - event: ec2-instance-running\n",
            support::one_step("  max_errors: 0\n")
        ),
    );
    // A read-only scan on a schedule: the ticker's other duties go on.
    let scan = stack.campaign(
        "scheduled-scan",
        "steps:\n  - name: scan\n    document: AWS-RunPatchBaseline\n    parameters: { Operation: Scan }\nrate_control:\n  max_errors: 100%\nschedule:\n  expression: rate(1 minute)\n",
    );
    stack.apply_approved(&install).await;
    stack.apply_approved(&scan).await;

    // A freeze covers now, and one calendar entry does not parse.
    let now = chrono::Utc::now();
    let freeze = serde_json::json!({
        "from": (now - chrono::Duration::minutes(1)).to_rfc3339(),
        "to": (now + chrono::Duration::hours(1)).to_rfc3339(),
        "reason": "quarter-end freeze",
    })
    .to_string();
    let (status, body) = support::call(port, &admin, "POST", "/calendar", &freeze).await;
    assert_eq!(status, 200, "{body}");
    let mut redis = stack.store.connection();
    let () = redis
        .hset(stack.names.calendar_key(), "garbled", "{not a freeze")
        .await
        .unwrap();

    // The API.
    let (status, body) =
        support::call(port, &admin, "POST", "/campaigns/frozen-install/runs", "").await;
    assert_eq!(status, 500, "the API must refuse: {body}");
    assert!(
        !body.contains("garbled") && !body.contains("not a freeze"),
        "an internal fault's detail is not shown: {body}"
    );
    // The console's form.
    let (cookie, _) = support::console::sign_in(port, &admin).await;
    let (status, _, page) = start_from_the_console(port, &cookie, "frozen-install").await;
    assert_eq!(status, 500, "the console must refuse: {page}");
    // An event for one of its instances.
    let account = stack.account_ids()[0].clone();
    let instance = stack.fleet_instance_ids()[0].clone();
    let event = event_for(&account, &instance);
    let (status, body) = support::call(port, &eventbridge, "POST", "/events", &event).await;
    assert_eq!(status, 500, "the event must not start a run: {body}");
    // Its schedule: occurrences fire, none of its runs starts — while the
    // scan's schedule (read-only: no calendar needed) starts its run.
    let mut install_fired = 0;
    let mut campaigns_run = Vec::new();
    for _ in 0..150 {
        let fires = stack.scheduler.schedule_fires().await.unwrap();
        install_fired = fires
            .iter()
            .filter(|entry| entry.starts_with("frozen-install ") && entry.contains(" fired "))
            .count();
        campaigns_run.clear();
        for run_id in run_ids(&stack).await {
            campaigns_run.push(stack.scheduler.progress(run_id).await.unwrap().campaign);
        }
        if install_fired >= 2 && !campaigns_run.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(install_fired >= 2, "the install's schedule did not fire");
    assert!(
        campaigns_run
            .iter()
            .any(|campaign| campaign == "scheduled-scan"),
        "the scan's schedule started nothing: one bad calendar entry stopped the ticker"
    );
    assert!(
        campaigns_run
            .iter()
            .all(|campaign| campaign == "scheduled-scan"),
        "a run of the frozen campaign started: {campaigns_run:?}"
    );

    // Once the calendar reads again, the freeze itself refuses, by name.
    let () = redis
        .hdel(stack.names.calendar_key(), "garbled")
        .await
        .unwrap();
    let (status, body) =
        support::call(port, &admin, "POST", "/campaigns/frozen-install/runs", "").await;
    assert!(
        status == 409 && body.contains("quarter-end freeze"),
        "{status} {body}"
    );
    stack.teardown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_live_run_of_a_campaign_at_a_time_unless_asked_and_event_runs_of_other_instances_do_not_overlap()
 {
    // No worker: every run stays live (discovering).
    let mut stack = Stack::start(support::single_location(3, false)).await;
    let (port, admin, eventbridge, _secrets) =
        serve_with_admin_and_eventbridge(&mut stack, |_| {}).await;
    let install = stack.campaign(
        "agent",
        format!(
            "{}triggers:\n  - event: ec2-instance-running\n",
            support::one_step("  max_errors: 0\n")
        ),
    );
    stack.apply_approved(&install).await;
    let account = stack.account_ids()[0].clone();
    let instances = stack.fleet_instance_ids();
    let started_of = |body: &str| -> Vec<String> {
        serde_json::from_str::<serde_json::Value>(body).unwrap()["started"]
            .as_array()
            .unwrap()
            .iter()
            .map(|run| run["run_id"].as_str().unwrap().to_string())
            .collect()
    };

    // Events of two instances: two runs, one instance each.
    for instance in &instances[..2] {
        let (status, body) = support::call(
            port,
            &eventbridge,
            "POST",
            "/events",
            &event_for(&account, instance),
        )
        .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(started_of(&body).len(), 1, "{body}");
    }
    // The same instance again while its run is live: skipped, and recorded.
    let (status, body) = support::call(
        port,
        &eventbridge,
        "POST",
        "/events",
        &event_for(&account, &instances[0]),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert!(started_of(&body).is_empty(), "{body}");
    let (_, trail) = support::call(port, &admin, "GET", "/audit?action=runs:start", "").await;
    assert!(
        trail.contains(&format!("event:{}", instances[0]))
            && trail.contains("already has a live run"),
        "{trail}"
    );
    // A full run while event runs are live: refused, naming the live run.
    let (status, body) = support::call(port, &admin, "POST", "/campaigns/agent/runs", "").await;
    assert!(
        status == 409
            && body.contains("already has a live run")
            && body.contains("--allow-concurrent"),
        "{status} {body}"
    );
    // A plan only discovers: it neither counts nor is counted.
    let (status, body) = support::call(
        port,
        &admin,
        "POST",
        "/campaigns/agent/runs",
        "{\"plan_only\": true}",
    )
    .await;
    assert_eq!(status, 200, "{body}");
    // Asked for by name, a second run starts, and the trail says so.
    let (status, body) = support::call(
        port,
        &admin,
        "POST",
        "/campaigns/agent/runs",
        "{\"allow_concurrent\": true}",
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let (_, trail) = support::call(port, &admin, "GET", "/audit?action=runs:start", "").await;
    assert!(trail.contains("concurrent runs allowed"), "{trail}");
    // The console's form goes through the same gate.
    let (cookie, _) = support::console::sign_in(port, &admin).await;
    let (status, _, page) = start_from_the_console(port, &cookie, "agent").await;
    assert!(
        status == 409 && page.contains("already has a live run"),
        "{status} {page}"
    );
    // Once every run is cancelled, a run starts again, from the console.
    for run_id in run_ids(&stack).await {
        let _ = stack.scheduler.cancel(run_id, "test over").await.unwrap();
    }
    let (status, head, page) = start_from_the_console(port, &cookie, "agent").await;
    assert!(
        status == 303 && head.to_ascii_lowercase().contains("location: /ui/runs/"),
        "{status} {head} {page}"
    );
    // Two event runs, the plan, the concurrent run, and this one.
    assert_eq!(run_ids(&stack).await.len(), 5);
    stack.teardown().await;
}

/// Trust III, finding 1: an event narrows a campaign to its instance only
/// within the campaign's targets. An event for a production host runs
/// neither a staging-tagged campaign nor an id-list campaign there (the
/// id list is refused at the gate and audited; the tag campaign's run
/// discovers with the tags and the instance id together and finds
/// nothing); an event for a staging host runs both, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_never_runs_a_campaign_on_a_host_outside_its_targets() {
    let mut stack = Stack::start(support::single_location(12, false)).await;
    stack.spawn_worker("worker", 4);
    let (port, admin, eventbridge, _secrets) =
        serve_with_admin_and_eventbridge(&mut stack, |_| {}).await;
    let account = stack.account_ids()[0].clone();
    let production = stack.instances_tagged("Environment", "prod");
    let staging = stack.instances_tagged("Environment", "staging");
    assert!(!production.is_empty() && !staging.is_empty());
    let rest = format!(
        "{}triggers:\n  - event: ec2-instance-running\n",
        support::one_step("  max_errors: 0\n")
    );
    let tagged = stack.campaign_selecting(
        "staging-agent",
        std::slice::from_ref(&account),
        "tags:\n    Environment: staging\n  online_only: false",
        &rest,
    );
    let listed = stack.campaign_selecting(
        "listed-agent",
        std::slice::from_ref(&account),
        &format!("instance_ids: [{}]\n  online_only: false", staging[0]),
        &rest,
    );
    stack.apply_approved(&tagged).await;
    stack.apply_approved(&listed).await;

    let (status, body) = support::call(
        port,
        &eventbridge,
        "POST",
        "/events",
        &event_for(&account, &production[0]),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let (_, trail) = support::call(port, &admin, "GET", "/audit?action=runs:start", "").await;
    assert!(
        trail.contains(&format!(
            "instance {} is not one of campaign listed-agent's targets",
            production[0]
        )),
        "the refusal is audited: {trail}"
    );
    for run_id in run_ids(&stack).await {
        let progress = stack
            .wait_until_final(run_id, Duration::from_secs(60))
            .await;
        assert_eq!(progress.campaign, "staging-agent", "{progress:#?}");
        assert_eq!(progress.total_targets, 0, "{progress:#?}");
    }

    let (status, body) = support::call(
        port,
        &eventbridge,
        "POST",
        "/events",
        &event_for(&account, &staging[0]),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let runs = run_ids(&stack).await;
    for run_id in &runs {
        stack
            .wait_until_final(*run_id, Duration::from_secs(60))
            .await;
    }
    assert_eq!(
        runs.len(),
        3,
        "one run of each campaign for the staging host"
    );
    assert_eq!(
        stack.runs_on(&production[0]),
        0,
        "nothing ran on the production host"
    );
    assert_eq!(
        stack.runs_on(&staging[0]),
        2,
        "each campaign ran once on the staging host"
    );
    stack.teardown().await;
}

/// Issue 33: under the two-person rule a narrowed run of an approved version
/// starts as it is, while new parameter values need a new approved version.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_narrowed_run_needs_no_new_approval_and_a_changed_parameter_does() {
    let mut stack = Stack::start(support::single_location(4, false)).await;
    let (port, admin, _eventbridge, _secrets) =
        serve_with_admin_and_eventbridge(&mut stack, |_| {}).await;
    let install = stack.campaign(
        "limited-install",
        "steps:\n  - name: patch\n    document: AWS-RunPatchBaseline\n    parameters: { Operation: Install, RebootOption: RebootIfNeeded }\noverridable_parameters: [RebootOption]\nrate_control:\n  max_errors: 100%\n",
    );
    stack.apply_approved(&install).await;
    let (status, body) = support::call(
        port,
        &admin,
        "POST",
        "/campaigns/limited-install/runs",
        r#"{"parameters": {"RebootOption": "NoReboot"}}"#,
    )
    .await;
    assert_eq!(status, 409, "{body}");
    assert!(
        body.contains("new parameter values change what its approved version runs"),
        "{body}"
    );
    assert!(run_ids(&stack).await.is_empty(), "nothing started");
    let (status, body) = support::call(
        port,
        &admin,
        "POST",
        "/campaigns/limited-install/runs",
        r#"{"limit": {"regions": ["us-east-1"]}, "plan_only": true}"#,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let run_id: Uuid = serde_json::from_str::<serde_json::Value>(&body).unwrap()["run_id"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let progress = stack.scheduler.progress(run_id).await.unwrap();
    assert_eq!(
        progress.overrides.as_deref(),
        Some("overridden by ada: regions us-east-1")
    );
    stack.teardown().await;
}

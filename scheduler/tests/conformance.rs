//! One suite, four backends: the scheduler's state — the run ledger, the
//! campaign store and the schedule lease — on real Redis (127.0.0.1:6379), a
//! 3-master Redis Cluster and a Sentinel-watched master (started on loopback by
//! `scripts/redis-topologies`), a key prefix per test, purged afterwards, and on
//! the in-memory Redis. The same Lua scripts run on all four. Reports
//! count once however often they are applied; the failure that exhausts the
//! error budget halts the run in the same atomic step, also when many reports
//! arrive at once; admission keeps to location concurrency and max in flight.

#![allow(clippy::unwrap_used)]

use protocol::run_fields::{RunField, WaveField};
use std::collections::HashMap;

use protocol::job::Location;
use protocol::names::Names;
use protocol::run::RunState;
use protocol::{Campaign, SpecFormat};
use scheduler::ledger::{
    BatchEntry, Ledger, NewRun, ResultsApplication, WindowGroup, location_key,
};
use scheduler::{Scheduler, SchedulerConfig};
use store::RedisStore;
use uuid::Uuid;

const REDIS_URL: &str = "redis://127.0.0.1:6379/";
const AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// One test's state: a ledger, and how to reach the same state again.
struct Backend {
    ledger: Ledger,
    names: Names,
    redis_url: String,
    amqp_url: String,
    redis: Option<RedisStore>,
}

impl Backend {
    async fn redis() -> Self {
        Self::real(REDIS_URL.into()).await
    }

    async fn cluster() -> Self {
        Self::real(test_support::topologies::cluster_url()).await
    }

    async fn sentinel() -> Self {
        Self::real(test_support::topologies::sentinel_url()).await
    }

    async fn real(url: String) -> Self {
        let names = Names::new(format!("flotilla-test-{}", Uuid::new_v4()));
        let store = match RedisStore::connect(&url, names.clone()).await {
            Ok(store) => store,
            Err(error) => panic!("{}", test_support::topologies::needs(&url, &error)),
        };
        Self {
            ledger: Ledger::new(store.connection(), names.clone()),
            names,
            redis_url: url,
            amqp_url: AMQP_URL.into(),
            redis: Some(store),
        }
    }

    async fn memory() -> Self {
        let names = Names::new(format!("flotilla-test-{}", Uuid::new_v4()));
        let url = format!("memory://ledger-test-{}", Uuid::new_v4());
        let store = RedisStore::connect(&url, names.clone()).await.unwrap();
        Self {
            ledger: Ledger::new(store.connection(), names.clone()),
            names,
            redis_url: url.clone(),
            amqp_url: url,
            redis: None,
        }
    }

    /// Writes one field of a run's record as something other than the
    /// scheduler would (a garbled or hand-set value).
    async fn set_run_field(&self, run_id: Uuid, field: &str, value: &str) {
        let store = RedisStore::connect(&self.redis_url, self.names.clone())
            .await
            .unwrap();
        let mut connection = store.connection();
        let () =
            ::redis::AsyncCommands::hset(&mut connection, self.names.run_key(run_id), field, value)
                .await
                .unwrap();
    }

    /// A scheduler replica named `name` on this state.
    async fn scheduler(&self, name: &str) -> Scheduler {
        self.scheduler_with(name, |_| {}).await
    }

    /// A scheduler replica named `name` on this state, configured by `configure`.
    async fn scheduler_with(
        &self,
        name: &str,
        configure: impl FnOnce(&mut SchedulerConfig),
    ) -> Scheduler {
        let metrics = scheduler::metrics::SchedulerMetrics::new().unwrap();
        self.scheduler_reporting(name, configure, metrics).await
    }

    /// [`Backend::scheduler_with`], reporting into `metrics`.
    async fn scheduler_reporting(
        &self,
        name: &str,
        configure: impl FnOnce(&mut SchedulerConfig),
        metrics: scheduler::metrics::SchedulerMetrics,
    ) -> Scheduler {
        let mut config = SchedulerConfig::new(&self.amqp_url, &self.redis_url, self.names.clone());
        configure(&mut config);
        config.name = name.into();
        config.keys = protocol::signing::Keyring::ephemeral_deployment()
            .unwrap()
            .scheduler;
        // The setup step declares the queues; the scheduler only checks them.
        let declared =
            broker::Broker::declare_topology(&self.amqp_url, &self.names, &Default::default())
                .await;
        if let Err(error) = declared {
            panic!("these tests need RabbitMQ: {error}");
        }
        match Scheduler::connect_with_metrics(config, metrics).await {
            Ok(scheduler) => scheduler,
            Err(error) => panic!("these tests need RabbitMQ and Redis: {error}"),
        }
    }

    async fn clean_up(self) {
        if let Some(store) = self.redis {
            store.purge().await.unwrap();
            let _ = broker::Broker::delete_deployment(AMQP_URL, &self.names).await;
        }
    }
}

/// Runs a check; if it fails, removes the backend's keys and queues first
/// (a failed test leaves nothing behind), then fails as the check did.
async fn checked(backend: &Backend, check: impl std::future::Future<Output = ()>) {
    use futures_util::FutureExt as _;
    let outcome = std::panic::AssertUnwindSafe(check).catch_unwind().await;
    if let Err(panic) = outcome {
        if let Some(store) = &backend.redis {
            let _ = store.purge().await;
            let _ = broker::Broker::delete_deployment(AMQP_URL, &backend.names).await;
        }
        std::panic::resume_unwind(panic);
    }
}

/// Runs `$check(&backend)` once on each backend, as four tests.
macro_rules! conformance {
    ($($name:ident),* $(,)?) => {
        mod memory {
            $(
                #[tokio::test]
                async fn $name() {
                    let backend = super::Backend::memory().await;
                    super::checked(&backend, super::$name(&backend)).await;
                    backend.clean_up().await;
                }
            )*
        }
        conformance!(@real redis, $($name),*);
        conformance!(@real cluster, $($name),*);
        conformance!(@real sentinel, $($name),*);
    };
    (@real $backend:ident, $($name:ident),*) => {
        mod $backend {
            $(
                #[tokio::test]
                async fn $name() {
                    let backend = super::Backend::$backend().await;
                    super::checked(&backend, super::$name(&backend)).await;
                    backend.clean_up().await;
                }
            )*
        }
    };
}

conformance!(
    a_rollout_admits_wave_by_wave_and_bakes_between_waves,
    a_rollout_admits_its_canary_locations_first,
    a_report_applied_twice_counts_once,
    a_bundle_of_reports_counts_each_once_and_halts_at_the_budget,
    failure_causes_are_counted_once_and_bounded_a_run,
    concurrent_failures_halt_the_run_once_at_the_budget,
    admission_keeps_to_location_concurrency_and_max_in_flight,
    execution_starts_with_the_first_location_discovered,
    limits_resolved_against_fewer_targets_do_not_replace_newer_ones,
    discovery_opens_at_most_a_window_of_locations_at_once,
    discovery_opens_in_chunks_except_for_the_last_locations,
    a_failed_location_counts_once_against_location_max_errors,
    a_stopped_run_counts_its_never_started_targets_once,
    delayed_runs_are_taken_once_when_due_and_listed_newest_first,
    live_runs_are_indexed_until_settled_and_an_unreadable_one_is_not_hidden,
    the_gauges_count_a_live_run_however_many_runs_finished_after_it,
    campaigns_are_versioned_by_content,
    a_campaign_accepted_under_a_raised_location_limit_reads_back,
    one_replica_holds_the_schedule_lease,
    the_admission_after_the_last_results_completes_the_run_also_outside_its_window,
    a_queued_notification_is_retried_by_any_replica_and_delivered_once,
    batches_of_a_closed_window_wait_parked_until_it_opens,
    an_instance_listed_on_two_pages_is_batched_once,
);

fn location(account: u32) -> Location {
    Location {
        account_id: format!("{account:012}"),
        region: "us-east-1".into(),
    }
}

fn new_run(location_concurrency: u64, allowed_location_errors: u64) -> NewRun<'static> {
    NewRun {
        campaign: "ledger-test",
        campaign_version: 1,
        spec_json: "{}",
        priority: "bulk",
        location_concurrency,
        allowed_location_errors,
        results_location: "unused",
        max_locations: 1,
        created_ms: 0,
        start_after_ms: None,
        plan_only: false,
        targets_json: None,
        started_by: "test",
        rollout_bake_ms: None,
        freeze_override: None,
        overrides: None,
        send_until_ms: None,
    }
}

fn ids(location: u32, count: u32) -> Vec<String> {
    (0..count)
        .map(|n| format!("i-{location:08x}{n:09x}"))
        .collect()
}

/// A running run of one location with `batches` admitted batches of one target.
async fn running_run(ledger: &Ledger, batches: u32, allowed_errors: u64) -> (Uuid, Location) {
    let run_id = Uuid::new_v4();
    let location = location(111_122_223);
    ledger
        .create_run(run_id, &new_run(1, 0), std::slice::from_ref(&location))
        .await
        .unwrap();
    let ids: Vec<String> = (0..batches).map(|n| format!("i-{n:017x}")).collect();
    let recorded = ledger
        .record_page(run_id, &location, 0, &ids, true)
        .await
        .unwrap();
    assert!(
        recorded.location_discovered && recorded.all_discovered,
        "one page of the only location completes discovery"
    );
    let state = ledger
        .start_execution(
            run_id,
            u64::from(batches),
            1,
            allowed_errors,
            u64::from(batches),
            None,
        )
        .await
        .unwrap();
    assert_eq!(state, RunState::Running);
    let admitted = ledger.admit(run_id, 0).await.unwrap().batches;
    assert_eq!(
        admitted.len(),
        batches as usize,
        "batches of one, all admitted"
    );
    (run_id, location)
}

/// Each location's state label (queued, discovering, waiting, active, …), in
/// the run's location order.
async fn location_states(ledger: &Ledger, run_id: Uuid) -> Vec<String> {
    ledger
        .location_statuses(run_id)
        .await
        .unwrap()
        .into_iter()
        .map(|status| status.state)
        .collect()
}

fn failed(location: &Location, batch: &BatchEntry) -> (String, HashMap<String, u64>) {
    assert_eq!(batch.location, location_key(location));
    (batch.key(), HashMap::from([("0:Failed".to_string(), 1)]))
}

/// Completing is part of admitting: the last results' admission completes
/// a live run, also outside its maintenance window (its last commands may
/// end after it closes), and never a paused one.
async fn the_admission_after_the_last_results_completes_the_run_also_outside_its_window(
    backend: &Backend,
) {
    let ledger = &backend.ledger;
    for (state, completes) in [(RunState::OutsideWindow, true), (RunState::Paused, false)] {
        let (run_id, location) = running_run(ledger, 2, 10).await;
        let batches = ledger.admitted(run_id).await.unwrap();
        for batch in &batches {
            let counters = HashMap::from([("0:Success".to_string(), 1)]);
            ledger
                .apply_results(run_id, &batch.key(), &location, 1, 0, &counters, None)
                .await
                .unwrap();
        }
        assert!(
            ledger
                .transition(run_id, &[RunState::Running], state, "test")
                .await
                .unwrap()
        );
        let admission = ledger.admit(run_id, 0).await.unwrap();
        assert!(admission.batches.is_empty());
        let expected = if completes {
            RunState::Completed
        } else {
            state
        };
        assert_eq!(admission.state, expected, "from {state:?}");
        let fields = ledger.run_fields(run_id).await.unwrap().unwrap();
        assert_eq!(fields.state().unwrap(), expected);
        assert_eq!(
            fields.get(RunField::EndedMs).is_some(),
            completes,
            "ended_ms set with the completion only"
        );
    }
}

/// Per-target windows: a page's instances are batched by window; a batch
/// of a closed window is parked, not admitted, until its window opens; a
/// later step stays in its batch's window; parked batches are among what a
/// stopped run never started.
async fn batches_of_a_closed_window_wait_parked_until_it_opens(backend: &Backend) {
    let ledger = &backend.ledger;
    let run_id = Uuid::new_v4();
    let location = location(111_122_223);
    ledger
        .create_run(run_id, &new_run(1, 0), std::slice::from_ref(&location))
        .await
        .unwrap();
    let page = ids(1, 7);
    let group = |window: u16, range: std::ops::Range<usize>| WindowGroup {
        window,
        instance_ids: page[range].to_vec(),
    };
    let recorded = ledger
        .record_windowed_page(
            run_id,
            &location,
            0,
            vec![group(0, 0..1), group(1, 1..3), group(2, 3..7)],
            true,
        )
        .await
        .unwrap();
    assert!(recorded.all_discovered);
    // Batches of up to two, room for every target.
    let state = ledger
        .start_execution(run_id, 100, 2, 10, 7, None)
        .await
        .unwrap();
    assert_eq!(state, RunState::Running);
    let windows = |batches: &[BatchEntry]| -> Vec<(Option<u16>, u16, usize)> {
        batches
            .iter()
            .map(|batch| (batch.window, batch.step_index, batch.instance_ids.len()))
            .collect()
    };

    // Window 1 open, window 2 closed: the untagged and window 1's go.
    let admission = ledger
        .admit_in_windows(run_id, 0, &[true, false])
        .await
        .unwrap();
    assert_eq!(admission.state, RunState::Running);
    assert_eq!(
        windows(&admission.batches),
        vec![(Some(0), 0, 1), (Some(1), 0, 2)],
        "the closed window's batches wait"
    );
    let again = ledger
        .admit_in_windows(run_id, 0, &[true, false])
        .await
        .unwrap();
    assert!(again.batches.is_empty(), "{:?}", again.batches);

    // Window 1's batch succeeds; its next step is queued, then window 1
    // closes: the next step is parked with it.
    let first = &admission.batches[1];
    let next = BatchEntry {
        step_index: 1,
        window: None,
        ..first.clone()
    };
    let counters = HashMap::from([("0:Success".to_string(), 2)]);
    ledger
        .apply_results(
            run_id,
            &first.key(),
            &location,
            2,
            0,
            &counters,
            Some(&next),
        )
        .await
        .unwrap();
    let closed = ledger
        .admit_in_windows(run_id, 0, &[false, false])
        .await
        .unwrap();
    assert!(closed.batches.is_empty(), "{:?}", closed.batches);
    assert_eq!(
        ledger.parked_batches(run_id, 2).await.unwrap(),
        vec![1, 2],
        "what `run show` says waits for each window"
    );
    let waiting = ledger.never_started(run_id).await.unwrap();
    assert_eq!(
        {
            let mut waiting = windows(&waiting);
            waiting.sort();
            waiting
        },
        vec![(Some(1), 1, 2), (Some(2), 0, 2), (Some(2), 0, 2)],
        "parked: window 1's next step and window 2's batches"
    );

    // Window 2 opens: its batches go; window 1's next step goes when it does.
    let opened = ledger
        .admit_in_windows(run_id, 0, &[false, true])
        .await
        .unwrap();
    assert_eq!(
        windows(&opened.batches),
        vec![(Some(2), 0, 2), (Some(2), 0, 2)]
    );
    let reopened = ledger
        .admit_in_windows(run_id, 0, &[true, true])
        .await
        .unwrap();
    assert_eq!(windows(&reopened.batches), vec![(Some(1), 1, 2)]);
    assert!(ledger.never_started(run_id).await.unwrap().is_empty());
}

/// A listing that moved while it was paged through (or a forged page) may
/// name an instance twice: it is one target, batched and sent once, and a
/// stopped run counts it once.
async fn an_instance_listed_on_two_pages_is_batched_once(backend: &Backend) {
    let ledger = &backend.ledger;
    let location = location(111_122_223);
    let first = ids(1, 3);
    let second = vec![first[2].clone(), ids(2, 1)[0].clone()];
    let mut runs = Vec::new();
    for admitted in [true, false] {
        let run_id = Uuid::new_v4();
        ledger
            .create_run(run_id, &new_run(1, 0), std::slice::from_ref(&location))
            .await
            .unwrap();
        ledger
            .record_page(run_id, &location, 0, &first, false)
            .await
            .unwrap();
        ledger
            .record_page(run_id, &location, 1, &second, true)
            .await
            .unwrap();
        if admitted {
            ledger
                .start_execution(run_id, 100, 50, 10, 5, None)
                .await
                .unwrap();
        }
        runs.push((run_id, admitted));
    }
    for (run_id, admitted) in runs {
        let batches = if admitted {
            ledger.admit(run_id, 0).await.unwrap().batches
        } else {
            ledger.never_started(run_id).await.unwrap()
        };
        let mut targets: Vec<String> = batches
            .into_iter()
            .flat_map(|batch| batch.instance_ids)
            .collect();
        targets.sort();
        let mut expected = vec![
            first[0].clone(),
            first[1].clone(),
            first[2].clone(),
            second[1].clone(),
        ];
        expected.sort();
        assert_eq!(targets, expected, "admitted: {admitted}");
        if admitted {
            let progress = ledger.run_fields(run_id).await.unwrap().unwrap();
            assert_eq!(
                progress.get(RunField::Total),
                Some("4"),
                "the total counts it once"
            );
        }
    }
}

async fn a_report_applied_twice_counts_once(backend: &Backend) {
    let ledger = &backend.ledger;
    let (run_id, location) = running_run(ledger, 3, 10).await;
    let batch = ledger.admitted(run_id).await.unwrap().remove(0);
    let (key, counters) = failed(&location, &batch);
    let first = ledger
        .apply_results(run_id, &key, &location, 1, 1, &counters, None)
        .await
        .unwrap();
    let again = ledger
        .apply_results(run_id, &key, &location, 1, 1, &counters, None)
        .await
        .unwrap();
    assert!(
        first.0 && !again.0,
        "the second application is recognised as a repeat"
    );
    let fields = ledger.run_fields(run_id).await.unwrap().unwrap();
    assert_eq!(fields.number(RunField::Failures).unwrap(), 1);
    assert_eq!(fields.number(RunField::InFlight).unwrap(), 2);
    assert_eq!(ledger.counters(run_id).await.unwrap()["0:Failed"], 1);
    // The console's grid: the location's results and failures, once too.
    let status = ledger.location_statuses(run_id).await.unwrap().remove(0);
    assert_eq!((status.results, status.target_failures), (1, 1));
}

/// A bundle's results reports are applied in one call: each counts once —
/// a report applied before, or twice in the bundle, is a repeat — and the
/// error budget halts the run at the report that crosses it.
async fn a_bundle_of_reports_counts_each_once_and_halts_at_the_budget(backend: &Backend) {
    let ledger = &backend.ledger;
    let (run_id, location) = running_run(ledger, 4, 1).await;
    let batches = ledger.admitted(run_id).await.unwrap();
    let application = |batch: &BatchEntry, status: &str, failures: u64| ResultsApplication {
        entry_key: batch.key(),
        location: location_key(&location),
        targets: 1,
        failures,
        counters: HashMap::from([(format!("0:{status}"), 1)]),
        next: None,
    };
    let (before, _) = ledger
        .apply_results_bundle(run_id, &[application(&batches[3], "Failed", 1)])
        .await
        .unwrap();
    assert_eq!(before, [true]);
    let bundle = [
        application(&batches[0], "Success", 0),
        application(&batches[1], "Failed", 1),
        application(&batches[1], "Failed", 1),
        application(&batches[2], "Failed", 1),
        application(&batches[3], "Failed", 1),
    ];
    let (applied, state) = ledger.apply_results_bundle(run_id, &bundle).await.unwrap();
    assert_eq!(
        applied,
        [true, true, false, true, false],
        "a report twice in the bundle, or applied before, is a repeat"
    );
    assert_eq!(
        state,
        RunState::Halted,
        "the second failure crossed a budget of 1"
    );
    let fields = ledger.run_fields(run_id).await.unwrap().unwrap();
    assert_eq!(fields.number(RunField::Failures).unwrap(), 3);
    assert_eq!(fields.number(RunField::InFlight).unwrap(), 0);
    assert_eq!(fields.number(RunField::LocationsDone).unwrap(), 1);
    assert!(
        fields
            .get(RunField::Reason)
            .is_some_and(|reason| reason.contains("2 targets failed, 1 allowed")),
        "halted by the report that crossed the budget: {:?}",
        fields.get(RunField::Reason)
    );
    let counters = ledger.counters(run_id).await.unwrap();
    assert_eq!((counters["0:Success"], counters["0:Failed"]), (1, 3));
    let status = ledger.location_statuses(run_id).await.unwrap().remove(0);
    assert_eq!((status.results, status.target_failures), (4, 3));
    let (again, _) = ledger.apply_results_bundle(run_id, &bundle).await.unwrap();
    assert_eq!(again, [false; 5], "the whole bundle again changes nothing");
    assert_eq!(ledger.counters(run_id).await.unwrap()["0:Failed"], 3);
}

async fn failure_causes_are_counted_once_and_bounded_a_run(backend: &Backend) {
    let ledger = &backend.ledger;
    let (run_id, location) = running_run(ledger, 3, 1_000).await;
    let batches = ledger.admitted(run_id).await.unwrap();
    // 400 distinct causes in one report (output is the hosts' to choose).
    let mut counters = HashMap::from([("0:Failed".to_string(), 400)]);
    for cause in 0..400 {
        counters.insert(format!("f:0:Failed:disk {cause} is full"), 1);
    }
    for _ in 0..2 {
        ledger
            .apply_results(
                run_id,
                &batches[0].key(),
                &location,
                400,
                400,
                &counters,
                None,
            )
            .await
            .unwrap();
    }
    let stored = ledger.counters(run_id).await.unwrap();
    let causes: Vec<(&String, &u64)> = stored
        .iter()
        .filter(|(field, _)| field.starts_with("f:"))
        .collect();
    assert!(
        causes.len() <= scheduler::failures::MAX_FAILURE_KINDS + 64,
        "{} causes kept",
        causes.len()
    );
    assert_eq!(
        causes.iter().map(|(_, count)| **count).sum::<u64>(),
        400,
        "every failed target counted once, in a cause or in `other`"
    );
    assert!(stored["f:0:Failed:other"] > 0);
    // A cause seen before still counts as itself past the cap.
    let seen = causes
        .iter()
        .find(|(field, _)| field.as_str() != "f:0:Failed:other")
        .map(|(field, _)| (*field).clone())
        .unwrap();
    let again = HashMap::from([(seen.clone(), 1)]);
    ledger
        .apply_results(run_id, &batches[1].key(), &location, 1, 1, &again, None)
        .await
        .unwrap();
    assert_eq!(ledger.counters(run_id).await.unwrap()[&seen], 2);
}

async fn concurrent_failures_halt_the_run_once_at_the_budget(backend: &Backend) {
    let ledger = &backend.ledger;
    let (run_id, location) = running_run(ledger, 20, 2).await;
    let batches = ledger.admitted(run_id).await.unwrap();
    let applications = batches.iter().map(|batch| {
        let ledger = ledger.clone();
        let location = location.clone();
        let (key, counters) = failed(&location, batch);
        async move {
            ledger
                .apply_results(run_id, &key, &location, 1, 1, &counters, None)
                .await
                .unwrap()
        }
    });
    let outcomes = futures_util::future::join_all(applications).await;
    assert!(outcomes.iter().all(|(new, _)| *new));
    let fields = ledger.run_fields(run_id).await.unwrap().unwrap();
    assert_eq!(fields.state().unwrap(), RunState::Halted);
    assert_eq!(
        fields.number(RunField::Failures).unwrap(),
        20,
        "every failure counted once"
    );
    assert_eq!(
        fields.get(RunField::HaltReason),
        Some("error budget exceeded: 3 targets failed, 2 allowed"),
        "the halting update is the one that crossed the budget"
    );
    assert!(
        ledger.admit(run_id, 0).await.unwrap().batches.is_empty(),
        "a halted run admits nothing"
    );
}

async fn admission_keeps_to_location_concurrency_and_max_in_flight(backend: &Backend) {
    let ledger = &backend.ledger;
    let run_id = Uuid::new_v4();
    let locations = [location(1), location(2), location(3)];
    ledger
        .create_run(run_id, &new_run(2, 0), &locations)
        .await
        .unwrap();
    for (index, location) in locations.iter().enumerate() {
        let index = u32::try_from(index).unwrap();
        let recorded = ledger
            .record_page(run_id, location, 0, &ids(index, 4), true)
            .await
            .unwrap();
        assert!(recorded.new && recorded.location_discovered);
        assert_eq!(
            recorded.all_discovered,
            index == 2,
            "discovery completes with the last location"
        );
    }
    assert_eq!(
        ledger
            .run_fields(run_id)
            .await
            .unwrap()
            .unwrap()
            .number(RunField::Total)
            .unwrap(),
        12
    );
    // Batches of 2, at most 4 targets in flight, 2 locations at a time.
    let state = ledger
        .start_execution(run_id, 4, 2, 100, 12, None)
        .await
        .unwrap();
    assert_eq!(state, RunState::Running);
    let first = ledger.admit(run_id, 0).await.unwrap().batches;
    assert_eq!(first.len(), 2, "4 targets in flight: two batches of two");
    assert!(
        first
            .iter()
            .all(|batch| batch.location == location_key(&locations[0]))
    );
    assert!(
        ledger.admit(run_id, 0).await.unwrap().batches.is_empty(),
        "no room left"
    );
    assert_eq!(
        location_states(ledger, run_id).await,
        ["active", "active", "waiting"]
    );

    let mut finished = 0;
    let mut admitted = first;
    while !admitted.is_empty() {
        for batch in &admitted {
            let location = batch.location().unwrap();
            let counters = HashMap::from([("0:Success".to_string(), 2)]);
            let (new, _) = ledger
                .apply_results(run_id, &batch.key(), &location, 2, 0, &counters, None)
                .await
                .unwrap();
            assert!(new);
            finished += 1;
        }
        let fields = ledger.run_fields(run_id).await.unwrap().unwrap();
        assert!(
            fields.number(RunField::ActiveLocations).unwrap() <= 2,
            "location concurrency holds"
        );
        admitted = ledger.admit(run_id, 0).await.unwrap().batches;
        assert!(
            admitted
                .iter()
                .map(|batch| batch.instance_ids.len())
                .sum::<usize>()
                <= 4,
            "max in flight holds"
        );
    }
    assert_eq!(finished, 6, "every batch admitted exactly once");
    assert_eq!(ledger.counters(run_id).await.unwrap()["0:Success"], 12);
    assert_eq!(
        ledger.admit(run_id, 0).await.unwrap().state,
        RunState::Completed,
        "the admission after the last results completes the run"
    );
    let statuses = ledger.location_statuses(run_id).await.unwrap();
    assert!(
        statuses
            .iter()
            .all(|status| status.state == "done" && status.targets == 4)
    );
    assert!(
        statuses
            .iter()
            .all(|status| status.results == 4 && status.target_failures == 0),
        "{statuses:?}"
    );
}

async fn discovery_opens_at_most_a_window_of_locations_at_once(backend: &Backend) {
    let ledger = &backend.ledger;
    let run_id = Uuid::new_v4();
    let locations = [location(1), location(2), location(3), location(4)];
    ledger
        .create_run(run_id, &new_run(4, 4), &locations)
        .await
        .unwrap();
    let open =
        |keys: Vec<String>| -> std::collections::BTreeSet<String> { keys.into_iter().collect() };
    let keys = |indexes: &[usize]| -> std::collections::BTreeSet<String> {
        indexes
            .iter()
            .map(|&i| location_key(&locations[i]))
            .collect()
    };
    assert_eq!(ledger.open_discovery(run_id, 2, 1).await.unwrap(), [0, 1]);
    assert_eq!(
        ledger.open_discovery(run_id, 2, 1).await.unwrap(),
        Vec::<usize>::new(),
        "the window is full"
    );
    assert_eq!(
        open(ledger.discovery_unpublished(run_id).await.unwrap()),
        keys(&[0, 1]),
        "opened, not yet published"
    );
    ledger
        .discovery_published(run_id, &[location_key(&locations[0])])
        .await
        .unwrap();
    assert_eq!(
        open(ledger.discovery_unpublished(run_id).await.unwrap()),
        keys(&[1]),
        "what a scheduler that died after opening must publish again"
    );
    ledger
        .discovery_published(run_id, &[location_key(&locations[1])])
        .await
        .unwrap();
    assert_eq!(
        location_states(ledger, run_id).await,
        ["discovering", "discovering", "queued", "queued"],
        "outside the window, a location is queued"
    );
    // A page that is not the last leaves the location open.
    ledger
        .record_page(run_id, &locations[0], 0, &ids(1, 2), false)
        .await
        .unwrap();
    assert_eq!(
        ledger.open_discovery(run_id, 2, 1).await.unwrap(),
        Vec::<usize>::new()
    );
    // Its last page closes it: the next location opens, in list order.
    ledger
        .record_page(run_id, &locations[0], 1, &ids(2, 2), true)
        .await
        .unwrap();
    assert_eq!(ledger.open_discovery(run_id, 2, 1).await.unwrap(), [2]);
    // A failed location closes too.
    ledger
        .record_location_failed(run_id, &locations[1], "AccessDenied", false)
        .await
        .unwrap();
    assert_eq!(
        open(ledger.discovery_unpublished(run_id).await.unwrap()),
        keys(&[2]),
        "closed locations are not published again"
    );
    assert_eq!(
        ledger.open_discovery(run_id, 2, 1).await.unwrap(),
        [3],
        "the last location, with room for more"
    );
    assert_eq!(
        ledger.open_discovery(run_id, 2, 1).await.unwrap(),
        Vec::<usize>::new()
    );
    assert_eq!(
        open(ledger.discovery_unpublished(run_id).await.unwrap()),
        keys(&[2, 3])
    );
}

async fn discovery_opens_in_chunks_except_for_the_last_locations(backend: &Backend) {
    let ledger = &backend.ledger;
    let run_id = Uuid::new_v4();
    let locations = [
        location(1),
        location(2),
        location(3),
        location(4),
        location(5),
    ];
    ledger
        .create_run(run_id, &new_run(5, 5), &locations)
        .await
        .unwrap();
    let none = Vec::<usize>::new();
    assert_eq!(
        ledger.open_discovery(run_id, 3, 2).await.unwrap(),
        [0, 1, 2]
    );
    for (index, opens) in [(0, none.clone()), (1, vec![3, 4])] {
        ledger
            .record_page(run_id, &locations[index], 0, &ids(index as u32, 1), true)
            .await
            .unwrap();
        assert_eq!(
            ledger.open_discovery(run_id, 3, 2).await.unwrap(),
            opens,
            "after location {index} is discovered"
        );
    }
    ledger
        .record_location_failed(run_id, &locations[2], "AccessDenied", false)
        .await
        .unwrap();
    assert_eq!(
        ledger.open_discovery(run_id, 3, 2).await.unwrap(),
        none,
        "nothing is left to open"
    );
}

async fn execution_starts_with_the_first_location_discovered(backend: &Backend) {
    let ledger = &backend.ledger;
    let run_id = Uuid::new_v4();
    let locations = [location(1), location(2), location(3)];
    ledger
        .create_run(run_id, &new_run(3, 1), &locations)
        .await
        .unwrap();
    assert_eq!(
        ledger.open_discovery(run_id, 3, 1).await.unwrap(),
        [0, 1, 2]
    );
    let keys: Vec<String> = locations.iter().map(location_key).collect();
    ledger.discovery_published(run_id, &keys).await.unwrap();
    let first_page = ledger
        .record_page(run_id, &locations[1], 0, &ids(1, 2), false)
        .await
        .unwrap();
    assert!(first_page.new && !first_page.location_discovered);
    let last_page = ledger
        .record_page(run_id, &locations[1], 1, &ids(9, 2), true)
        .await
        .unwrap();
    assert!(last_page.location_discovered && !last_page.all_discovered);
    // The scheduler resolves the limits against the 2 targets discovered so
    // far and execution starts while the other locations are discovering.
    let state = ledger
        .start_execution(run_id, 2, 1, 0, 4, None)
        .await
        .unwrap();
    assert_eq!(state, RunState::Running);
    let admitted = ledger.admit(run_id, 0).await.unwrap().batches;
    assert_eq!(
        admitted.len(),
        2,
        "the discovered location's two batches of one"
    );
    assert!(
        admitted
            .iter()
            .all(|batch| batch.location == location_key(&locations[1]))
    );
    assert_eq!(
        location_states(ledger, run_id).await,
        ["discovering", "active", "discovering"]
    );
    // One location fails before its discovery ends: done at once. The last
    // one discovered completes discovery, and the total is known.
    let failed = ledger
        .record_location_failed(run_id, &locations[0], "AccessDenied", false)
        .await
        .unwrap();
    assert_eq!(failed, (true, false));
    let last = ledger
        .record_page(run_id, &locations[2], 0, &ids(3, 4), true)
        .await
        .unwrap();
    assert!(last.location_discovered && last.all_discovered);
    let state = ledger
        .start_execution(run_id, 3, 1, 0, 8, None)
        .await
        .unwrap();
    assert_eq!(state, RunState::Running);
    assert_eq!(
        location_states(ledger, run_id).await,
        ["failed", "active", "waiting"],
        "discovered, not admitted yet"
    );
    let mut admitted = admitted;
    let mut batches = 0;
    while !admitted.is_empty() {
        for batch in &admitted {
            let counters = HashMap::from([("0:Success".to_string(), 1)]);
            ledger
                .apply_results(
                    run_id,
                    &batch.key(),
                    &batch.location().unwrap(),
                    1,
                    0,
                    &counters,
                    None,
                )
                .await
                .unwrap();
            batches += 1;
        }
        admitted = ledger.admit(run_id, 0).await.unwrap().batches;
    }
    assert_eq!(
        batches, 8,
        "every discovered target once, in batches of one"
    );
    assert_eq!(
        ledger.admit(run_id, 0).await.unwrap().state,
        RunState::Completed,
        "the failed location counts as done once"
    );
}

/// Two reports of one run applied at the same time (by one replica or two)
/// each resolve the limits against the targets discovered when they read the
/// run: the one that read fewer may write last. Its limits are stale and are
/// not written — above all not over the final ones, resolved against the total.
async fn limits_resolved_against_fewer_targets_do_not_replace_newer_ones(backend: &Backend) {
    let ledger = &backend.ledger;
    let (run_id, _location) = running_run(ledger, 6, 3).await;
    let limits = |fields: &scheduler::ledger::RunFields| {
        [
            RunField::MaxInFlight,
            RunField::BatchSize,
            RunField::AllowedErrors,
        ]
        .map(|field| fields.number(field).unwrap())
    };
    // running_run resolved them against its 6 targets; one resolved against
    // 4 (read before the last location came in) arrives after.
    let state = ledger
        .start_execution(run_id, 2, 1, 1, 4, None)
        .await
        .unwrap();
    assert_eq!(state, RunState::Running);
    let fields = ledger.run_fields(run_id).await.unwrap().unwrap();
    assert_eq!(
        limits(&fields),
        [6, 1, 3],
        "the stale limits are not written"
    );
    // Resolved against as many or more, they are.
    ledger
        .start_execution(run_id, 8, 4, 5, 6, None)
        .await
        .unwrap();
    let fields = ledger.run_fields(run_id).await.unwrap().unwrap();
    assert_eq!(
        limits(&fields),
        [8, 4, 5],
        "limits resolved against as many are"
    );
}

async fn a_failed_location_counts_once_against_location_max_errors(backend: &Backend) {
    let ledger = &backend.ledger;
    let run_id = Uuid::new_v4();
    let locations = [location(1), location(2), location(3)];
    ledger
        .create_run(run_id, &new_run(3, 1), &locations)
        .await
        .unwrap();
    ledger
        .record_page(run_id, &locations[0], 0, &ids(0, 2), true)
        .await
        .unwrap();
    let first = ledger
        .record_location_failed(run_id, &locations[1], "AccessDenied", false)
        .await
        .unwrap();
    let again = ledger
        .record_location_failed(run_id, &locations[1], "AccessDenied", false)
        .await
        .unwrap();
    assert_eq!(first, (true, false));
    assert_eq!(
        again,
        (false, false),
        "a repeated failure report counts once"
    );
    let fields = ledger.run_fields(run_id).await.unwrap().unwrap();
    assert_eq!(
        fields.state().unwrap(),
        RunState::Discovering,
        "one failure is allowed"
    );
    let (_, complete) = ledger
        .record_location_failed(run_id, &locations[2], "Rejected", false)
        .await
        .unwrap();
    assert!(complete, "a failed location counts as discovered");
    let fields = ledger.run_fields(run_id).await.unwrap().unwrap();
    assert_eq!(fields.state().unwrap(), RunState::Halted);
    assert_eq!(
        fields.get(RunField::HaltReason),
        Some(
            "location_max_errors exceeded: 2 locations failed, 1 allowed \
             (latest 000000000003/us-east-1: Rejected)"
        )
    );
    let statuses = ledger.location_statuses(run_id).await.unwrap();
    assert_eq!(statuses[1].state, "failed");
    assert_eq!(statuses[1].failure.as_deref(), Some("AccessDenied"));
}

async fn a_stopped_run_counts_its_never_started_targets_once(backend: &Backend) {
    let ledger = &backend.ledger;
    let run_id = Uuid::new_v4();
    let locations = [location(1), location(2)];
    ledger
        .create_run(run_id, &new_run(1, 0), &locations)
        .await
        .unwrap();
    for (index, location) in locations.iter().enumerate() {
        ledger
            .record_page(
                run_id,
                location,
                0,
                &ids(u32::try_from(index).unwrap(), 3),
                true,
            )
            .await
            .unwrap();
    }
    ledger
        .start_execution(run_id, 1, 1, 0, 1, None)
        .await
        .unwrap();
    let admitted = ledger.admit(run_id, 0).await.unwrap().batches;
    assert_eq!(admitted.len(), 1);
    assert!(
        ledger
            .transition(run_id, &[RunState::Running], RunState::Paused, "operator")
            .await
            .unwrap()
    );
    assert!(
        !ledger
            .transition(run_id, &[RunState::Running], RunState::Paused, "operator")
            .await
            .unwrap(),
        "a transition from a state the run is not in changes nothing"
    );
    assert!(
        ledger.admit(run_id, 0).await.unwrap().batches.is_empty(),
        "a paused run admits nothing"
    );
    assert!(
        ledger
            .transition(run_id, &[RunState::Paused], RunState::Cancelled, "operator")
            .await
            .unwrap()
    );
    let mut never: Vec<String> = ledger
        .never_started(run_id)
        .await
        .unwrap()
        .into_iter()
        .flat_map(|batch| batch.instance_ids)
        .collect();
    never.sort();
    let mut expected: Vec<String> = ids(0, 3)[1..].iter().chain(&ids(1, 3)).cloned().collect();
    expected.sort();
    assert_eq!(never, expected, "pending batches and never-admitted pages");
    assert_eq!(
        ledger.admitted(run_id).await.unwrap(),
        admitted,
        "still owed a report"
    );
    let counters = HashMap::from([("0:NotStarted".to_string(), 5)]);
    assert!(ledger.mark_drained(run_id, &counters).await.unwrap());
    assert!(
        !ledger.mark_drained(run_id, &counters).await.unwrap(),
        "once"
    );
    assert_eq!(ledger.counters(run_id).await.unwrap()["0:NotStarted"], 5);
    assert!(ledger.never_started(run_id).await.unwrap().is_empty());
}

async fn live_runs_are_indexed_until_settled_and_an_unreadable_one_is_not_hidden(
    backend: &Backend,
) {
    let ledger = &backend.ledger;
    let (finished, halted, live, garbled) = (
        Uuid::new_v4(),
        Uuid::new_v4(),
        Uuid::new_v4(),
        Uuid::new_v4(),
    );
    for (created_ms, run_id) in [(1, finished), (2, halted), (3, live), (4, garbled)] {
        let run = NewRun {
            created_ms,
            ..new_run(1, 0)
        };
        ledger
            .create_run(run_id, &run, &[location(1)])
            .await
            .unwrap();
    }
    assert!(
        ledger
            .transition(
                finished,
                &[RunState::Discovering],
                RunState::Completed,
                "done"
            )
            .await
            .unwrap()
    );
    // Halted with targets never started: over, but its results are owed.
    assert!(
        ledger
            .transition(halted, &[RunState::Discovering], RunState::Halted, "budget")
            .await
            .unwrap()
    );
    backend.set_run_field(garbled, "state", "Sideways").await;
    let listed = ledger.live_runs().await.unwrap();
    let ids: Vec<Uuid> = listed.iter().map(|(run_id, _)| *run_id).collect();
    assert_eq!(
        ids,
        vec![garbled, live, halted],
        "newest first, settled runs out"
    );
    assert!(
        listed[0].1.state().is_err(),
        "the garbled run is listed as it is, for its reader to decide"
    );
    assert!(listed[1].1.state().is_ok() && listed[2].1.state().is_ok());
    // Once drained, the halted run leaves the index too.
    let counters = HashMap::from([("0:NotStarted".to_string(), 0)]);
    assert!(ledger.mark_drained(halted, &counters).await.unwrap());
    let ids: Vec<Uuid> = ledger
        .live_runs()
        .await
        .unwrap()
        .into_iter()
        .map(|(run_id, _)| run_id)
        .collect();
    assert_eq!(ids, vec![garbled, live]);
}

async fn the_gauges_count_a_live_run_however_many_runs_finished_after_it(backend: &Backend) {
    let metrics = scheduler::metrics::SchedulerMetrics::new().unwrap();
    let scheduler = backend
        .scheduler_reporting("replica-gauges", |_| {}, metrics.clone())
        .await;
    let ledger = &backend.ledger;
    // The oldest run is live and has an error budget of 5 …
    let oldest = Uuid::new_v4();
    let run = NewRun {
        campaign: "old-and-live",
        created_ms: 1,
        ..new_run(1, 0)
    };
    ledger
        .create_run(oldest, &run, &[location(1)])
        .await
        .unwrap();
    backend
        .set_run_field(oldest, RunField::AllowedErrors.as_str(), "5")
        .await;
    // … and the 1,000 runs after it are over.
    for created_ms in 2..1_002 {
        let run_id = Uuid::new_v4();
        let run = NewRun {
            campaign: "finished",
            created_ms,
            ..new_run(1, 0)
        };
        ledger
            .create_run(run_id, &run, &[location(1)])
            .await
            .unwrap();
        assert!(
            ledger
                .transition(
                    run_id,
                    &[RunState::Discovering],
                    RunState::Completed,
                    "done"
                )
                .await
                .unwrap()
        );
    }
    scheduler.refresh_gauges().await.unwrap();
    let exposition = metrics.render();
    assert!(
        exposition.contains("flotilla_scheduler_error_budget_allowed{campaign=\"old-and-live\"} 5"),
        "the live run's budget is missing from the gauges"
    );
    assert!(exposition.contains("flotilla_scheduler_runs{state=\"Discovering\"} 1"));
    assert!(exposition.contains("flotilla_scheduler_runs{state=\"Completed\"} 1000"));
}

async fn delayed_runs_are_taken_once_when_due_and_listed_newest_first(backend: &Backend) {
    let ledger = &backend.ledger;
    let (early, delayed, late) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    for (run_id, created_ms, start_after_ms) in [
        (early, 10, None),
        (delayed, 20, Some(1_000)),
        (late, 30, None),
    ] {
        let run = NewRun {
            created_ms,
            start_after_ms,
            ..new_run(1, 0)
        };
        ledger
            .create_run(run_id, &run, &[location(1)])
            .await
            .unwrap();
    }
    let state = ledger
        .run_fields(delayed)
        .await
        .unwrap()
        .unwrap()
        .state()
        .unwrap();
    assert_eq!(state, RunState::Pending);
    assert!(ledger.take_due_runs(999).await.unwrap().is_empty());
    assert_eq!(ledger.take_due_runs(1_000).await.unwrap(), [delayed]);
    assert!(
        ledger.take_due_runs(5_000).await.unwrap().is_empty(),
        "taken once"
    );
    assert_eq!(ledger.run_ids().await.unwrap(), [late, delayed, early]);
    assert_eq!(ledger.locations(early).await.unwrap(), [location(1)]);
    assert!(ledger.run_fields(Uuid::new_v4()).await.unwrap().is_none());
}

fn campaign(text: &str) -> Campaign {
    Campaign::parse(text, SpecFormat::Yaml).unwrap()
}

const SCAN: &str = "
name: conformance-scan
steps:
  - name: scan
    document: AWS-RunPatchBaseline
    parameters: {Operation: Scan}
accounts: {ids: ['111122223333']}
regions: [us-east-1]
role: {name: FlotillaExecutionRole}
targets: {all: true}
";

async fn a_campaign_accepted_under_a_raised_location_limit_reads_back(backend: &Backend) {
    // 7,000 accounts × 30 regions: 210,000 locations, past the default 200,000.
    let limit = 250_000;
    let scheduler = backend
        .scheduler_with("replica-wide", |config| config.max_locations = limit)
        .await;
    let accounts: Vec<String> = (0..7_000u64)
        .map(|n| format!("\"{:012}\"", 100_000_000_000 + n))
        .collect();
    let regions: Vec<String> = (1..=30).map(|n| format!("xx-test-{n}")).collect();
    let yaml = format!(
        "name: conformance-wide\naccounts: {{ids: [{}]}}\nregions: [{}]\ntargets: {{all: true}}\nsteps:\n  - name: scan\n    document: AWS-RunPatchBaseline\n    parameters: {{Operation: Scan}}\n",
        accounts.join(", "),
        regions.join(", ")
    );
    assert!(
        Campaign::parse(&yaml, SpecFormat::Yaml).is_err(),
        "the default limit refuses it"
    );
    let wide = Campaign::parse_within(&yaml, SpecFormat::Yaml, limit).unwrap();
    scheduler.apply_campaign(&wide).await.unwrap();
    let (read, stored) = scheduler
        .stored_campaign("conformance-wide")
        .await
        .unwrap()
        .unwrap();
    assert_eq!((read.accounts.ids.len(), stored.version), (7_000, 1));
    // A replica at the default limit reads it too: it was accepted.
    let default_replica = backend.scheduler("replica-default").await;
    assert!(
        default_replica
            .stored_campaign("conformance-wide")
            .await
            .unwrap()
            .is_some()
    );
}

async fn campaigns_are_versioned_by_content(backend: &Backend) {
    let scheduler = backend.scheduler("replica-a").await;
    let first = scheduler.apply_campaign(&campaign(SCAN)).await.unwrap();
    let same = scheduler.apply_campaign(&campaign(SCAN)).await.unwrap();
    assert_eq!((first.version, first.changed), (1, true));
    assert_eq!(
        (same.version, same.changed),
        (1, false),
        "the same spec again changes nothing"
    );
    let changed = format!("{SCAN}description: now with a description\n");
    let second = scheduler.apply_campaign(&campaign(&changed)).await.unwrap();
    assert_eq!((second.version, second.changed), (2, true));
    let (_, stored) = scheduler
        .stored_campaign("conformance-scan")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.version, 2);
    assert_eq!(stored.spec.description, "now with a description");
    assert_eq!(
        scheduler.campaign_names().await.unwrap(),
        ["conformance-scan"]
    );
    assert!(scheduler.delete_campaign("conformance-scan").await.unwrap());
    assert!(!scheduler.delete_campaign("conformance-scan").await.unwrap());
    assert!(
        scheduler
            .stored_campaign("conformance-scan")
            .await
            .unwrap()
            .is_none()
    );
    assert!(scheduler.campaign_names().await.unwrap().is_empty());
    // The history stays: every version is readable by number, with its author.
    let (first_spec, first_record) = scheduler
        .campaign_version("conformance-scan", 1)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first_spec.description, "");
    assert_eq!(first_record.author, "system");
    let again = scheduler.apply_campaign(&campaign(SCAN)).await.unwrap();
    assert_eq!(
        (again.version, again.changed),
        (3, true),
        "versions go on after a delete"
    );

    // The two-person rule's record, the same on both backends.
    let author = scheduler::auth::Principal {
        name: "system".into(),
        role: scheduler::auth::Role::Admin,
        issued_by: None,
    };
    let anna = scheduler::auth::Principal {
        name: "anna".into(),
        role: scheduler::auth::Role::Approver,
        issued_by: None,
    };
    let own = scheduler
        .approve_campaign("conformance-scan", 3, &author)
        .await;
    assert!(
        matches!(own, Err(scheduler::SchedulerError::Forbidden(_))),
        "{own:?}"
    );
    let approval = scheduler
        .approve_campaign("conformance-scan", 3, &anna)
        .await
        .unwrap();
    assert_eq!(
        (approval.author.as_str(), approval.approver.as_deref()),
        ("system", Some("anna"))
    );
    let again = scheduler
        .approve_campaign("conformance-scan", 3, &author)
        .await
        .unwrap();
    assert_eq!(
        again.approver.as_deref(),
        Some("anna"),
        "a second approval changes nothing"
    );
    let unknown = scheduler
        .approve_campaign("conformance-scan", 9, &anna)
        .await;
    assert!(matches!(
        unknown,
        Err(scheduler::SchedulerError::UnknownCampaignVersion { .. })
    ));
}

async fn one_replica_holds_the_schedule_lease(backend: &Backend) {
    let first = backend.scheduler("replica-a").await;
    let second = backend.scheduler("replica-b").await;
    first.schedule_tick().await.unwrap();
    second.schedule_tick().await.unwrap();
    let holder = first.lease_holder().await.unwrap();
    assert_eq!(
        holder.as_deref(),
        Some("replica-a:1"),
        "the first replica leads"
    );
    first.schedule_tick().await.unwrap();
    assert_eq!(
        second.lease_holder().await.unwrap().as_deref(),
        Some("replica-a:1"),
        "renewing keeps the token"
    );
    assert!(first.schedule_fires().await.unwrap().is_empty());
}

/// Every instance of an admission's batches, in order.
fn admitted_ids(admission: &scheduler::ledger::Admission) -> Vec<String> {
    admission
        .batches
        .iter()
        .flat_map(|batch| batch.instance_ids.clone())
        .collect()
}

/// Reports every admitted batch through with `failures` failed targets in
/// the first one; returns the batches.
async fn report_all(
    ledger: &Ledger,
    run_id: Uuid,
    batches: &[BatchEntry],
    failures: u64,
) -> Vec<BatchEntry> {
    for (index, batch) in batches.iter().enumerate() {
        let failed = if index == 0 { failures } else { 0 };
        let counters = HashMap::from([("0:Success".to_string(), batch.instance_ids.len() as u64)]);
        let (new, _) = ledger
            .apply_results(
                run_id,
                &batch.key(),
                &batch.location().unwrap(),
                batch.instance_ids.len(),
                failed,
                &counters,
                None,
            )
            .await
            .unwrap();
        assert!(new);
    }
    batches.to_vec()
}

async fn a_rollout_admits_wave_by_wave_and_bakes_between_waves(backend: &Backend) {
    let ledger = &backend.ledger;
    let run_id = Uuid::new_v4();
    let location = location(333_344_445);
    let mut run = new_run(1, 0);
    run.rollout_bake_ms = Some(60_000);
    ledger
        .create_run(run_id, &run, std::slice::from_ref(&location))
        .await
        .unwrap();
    ledger
        .record_page(run_id, &location, 0, &ids(3, 10), true)
        .await
        .unwrap();
    // Limits resolved before the waves are known: a rollout admits nothing.
    ledger
        .start_execution(run_id, 10, 5, 100, 10, None)
        .await
        .unwrap();
    assert!(ledger.admit(run_id, 0).await.unwrap().batches.is_empty());
    let caps = [1, 4, 10];
    ledger
        .start_execution(run_id, 10, 5, 100, 10, Some((&caps, &[])))
        .await
        .unwrap();

    // Wave 1: one target, split off a batch of five.
    let wave1 = ledger.admit(run_id, 1_000).await.unwrap();
    assert_eq!(wave1.state, RunState::Running);
    assert_eq!(wave1.batches.len(), 1);
    assert_eq!(wave1.batches[0].instance_ids, ids(3, 10)[..1].to_vec());
    assert!(
        ledger
            .admit(run_id, 1_000)
            .await
            .unwrap()
            .batches
            .is_empty()
    );
    report_all(ledger, run_id, &wave1.batches, 0).await;
    let baking = ledger.admit(run_id, 2_000).await.unwrap();
    assert_eq!(baking.state, RunState::Baking, "the wave is through");
    assert_eq!(baking.bake_until_ms, Some(62_000));
    assert!(baking.batches.is_empty(), "nothing is sent while baking");
    let fields = ledger.run_fields(run_id).await.unwrap().unwrap();
    assert_eq!(
        fields.wave_number(0, WaveField::Targets).unwrap().unwrap(),
        1
    );
    assert_eq!(
        fields.wave_number(0, WaveField::Failures).unwrap().unwrap(),
        0
    );

    // The gates pass: once, whichever replica gets there first.
    let next = scheduler::ledger::WaveOutcome::Next;
    assert!(
        ledger
            .wave_gate(run_id, 0, next, "gates passed", "[]", 63_000)
            .await
            .unwrap()
    );
    assert!(
        !ledger
            .wave_gate(run_id, 0, next, "gates passed", "[]", 63_000)
            .await
            .unwrap()
    );

    // Wave 2: three more targets (the rest of the split batch, split again).
    let wave2 = ledger.admit(run_id, 64_000).await.unwrap();
    let admitted = admitted_ids(&wave2);
    assert_eq!(admitted, ids(3, 10)[1..4].to_vec());
    report_all(ledger, run_id, &wave2.batches, 2).await;
    assert_eq!(
        ledger.admit(run_id, 65_000).await.unwrap().state,
        RunState::Baking
    );
    let fields = ledger.run_fields(run_id).await.unwrap().unwrap();
    assert_eq!(
        fields.wave_number(1, WaveField::Targets).unwrap().unwrap(),
        3
    );
    assert_eq!(
        fields.wave_number(1, WaveField::Failures).unwrap().unwrap(),
        2,
        "the wave's own failures"
    );

    // A failed gate that pauses; resuming past it starts the last wave.
    let pause = scheduler::ledger::WaveOutcome::Pause;
    assert!(
        ledger
            .wave_gate(run_id, 1, pause, "gate failed", "[]", 126_000)
            .await
            .unwrap()
    );
    assert_eq!(
        ledger
            .run_fields(run_id)
            .await
            .unwrap()
            .unwrap()
            .state()
            .unwrap(),
        RunState::Paused
    );
    let resumed = scheduler::ledger::WaveOutcome::Resumed;
    assert!(
        ledger
            .wave_gate(run_id, 1, resumed, "looked", "", 127_000)
            .await
            .unwrap()
    );
    let wave3 = ledger.admit(run_id, 128_000).await.unwrap();
    let admitted = admitted_ids(&wave3);
    assert_eq!(
        admitted,
        ids(3, 10)[4..].to_vec(),
        "the last wave: every other target"
    );
    let mut keys: Vec<String> = wave1
        .batches
        .iter()
        .chain(&wave2.batches)
        .chain(&wave3.batches)
        .map(BatchEntry::key)
        .collect();
    keys.sort();
    keys.dedup();
    assert_eq!(
        keys.len(),
        wave1.batches.len() + wave2.batches.len() + wave3.batches.len(),
        "split batches get ids of their own"
    );
    report_all(ledger, run_id, &wave3.batches, 0).await;
    let last = ledger.admit(run_id, 129_000).await.unwrap();
    assert_eq!(
        last.state,
        RunState::Completed,
        "no bake after the last wave: the run completes"
    );
    assert!(last.batches.is_empty());
}

async fn a_rollout_admits_its_canary_locations_first(backend: &Backend) {
    let ledger = &backend.ledger;
    let run_id = Uuid::new_v4();
    let (other, canary) = (location(1), location(2));
    let mut run = new_run(1, 0);
    run.rollout_bake_ms = Some(0);
    ledger
        .create_run(run_id, &run, &[other.clone(), canary.clone()])
        .await
        .unwrap();
    for (index, place) in [&other, &canary].into_iter().enumerate() {
        ledger
            .record_page(run_id, place, 0, &ids(index as u32, 3), true)
            .await
            .unwrap();
    }
    let canary_key = location_key(&canary);
    assert_eq!(
        ledger
            .location_targets(
                run_id,
                &[canary_key.clone(), "999999999999/us-east-1".into()]
            )
            .await
            .unwrap(),
        vec![Some(3), Some(0)]
    );
    ledger
        .start_execution(
            run_id,
            10,
            5,
            100,
            6,
            Some((&[3, 6], std::slice::from_ref(&canary_key))),
        )
        .await
        .unwrap();
    let wave1 = ledger.admit(run_id, 0).await.unwrap();
    assert_eq!(wave1.batches.len(), 1);
    assert_eq!(
        wave1.batches[0].location, canary_key,
        "discovered last, admitted first"
    );
    report_all(ledger, run_id, &wave1.batches, 0).await;
    let baking = ledger.admit(run_id, 5).await.unwrap();
    assert_eq!(
        (baking.state, baking.bake_until_ms),
        (RunState::Baking, Some(5))
    );
}

/// Each try a webhook saw: its delivery id header and the status it answered.
type Tries = std::sync::Arc<std::sync::Mutex<Vec<(Option<String>, u16)>>>;

/// A webhook on loopback that answers `statuses` in turn (then 200), one
/// request per connection, for at most 10 s; each request's
/// `X-Flotilla-Delivery` header and the status it was answered.
fn webhook(statuses: &'static [u16]) -> (String, Tries) {
    use std::io::{Read as _, Write as _};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let record = seen.clone();
    std::thread::spawn(move || {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while std::time::Instant::now() < deadline {
            let Ok((mut stream, _)) = listener.accept() else {
                std::thread::sleep(std::time::Duration::from_millis(10));
                continue;
            };
            stream.set_nonblocking(false).unwrap();
            stream
                .set_read_timeout(Some(std::time::Duration::from_secs(1)))
                .unwrap();
            let mut request = vec![0u8; 16 * 1024];
            let read = stream.read(&mut request).unwrap_or(0);
            let head = String::from_utf8_lossy(&request[..read]).to_ascii_lowercase();
            let delivery = head
                .lines()
                .find_map(|line| line.strip_prefix("x-flotilla-delivery:"))
                .map(|value| value.trim().to_string());
            let mut seen = record.lock().unwrap();
            let status = statuses.get(seen.len()).copied().unwrap_or(200);
            seen.push((delivery, status));
            let _ = stream.write_all(
                format!("HTTP/1.1 {status} X\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                    .as_bytes(),
            );
        }
    });
    (url, seen)
}

/// The outbox's scripts on every backend: a notification queued by one
/// replica is tried, refused (503), not taken again before its backoff,
/// then delivered by another replica with the same delivery id — and then
/// is due nowhere.
async fn a_queued_notification_is_retried_by_any_replica_and_delivered_once(backend: &Backend) {
    use protocol::spec::{NotifyEvent, NotifyFormat, NotifySpec};
    let (url, seen) = webhook(&[503]);
    let configure = |config: &mut SchedulerConfig| {
        config.notify.defaults = vec![NotifySpec {
            on: vec![NotifyEvent::KillSwitch],
            webhook: url.clone(),
            format: NotifyFormat::Slack,
        }];
        config.egress = scheduler::egress::EgressPolicy::plain_http_to(&["127.0.0.1"]);
    };
    let first = backend.scheduler_with("replica-a", configure).await;
    first
        .engage_kill_switch(
            &store::KillScope::Campaign("outboxed".into()),
            "outbox test",
            false,
        )
        .await
        .unwrap();
    assert_eq!(first.deliver_due_notifications().await.unwrap(), 1);
    assert_eq!(seen.lock().unwrap().len(), 1, "tried once");
    assert_eq!(
        first.deliver_due_notifications().await.unwrap(),
        0,
        "not due again before its backoff"
    );
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let second = backend.scheduler_with("replica-b", configure).await;
    assert_eq!(second.deliver_due_notifications().await.unwrap(), 1);
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert_eq!(seen[1].1, 200, "{seen:?}");
    assert!(seen[0].0.is_some(), "a delivery id header: {seen:?}");
    assert_eq!(seen[0].0, seen[1].0, "the same delivery id on every try");
    assert_eq!(first.deliver_due_notifications().await.unwrap(), 0);
    assert_eq!(second.deliver_due_notifications().await.unwrap(), 0);
}

//! The run ledger's promises on real Redis (127.0.0.1:6379, a key prefix per
//! test): reports count once however often they are applied, and the failure
//! that exhausts the error budget halts the run in the same atomic step, also
//! when many reports arrive at once.

#![allow(clippy::unwrap_used)]

use std::collections::HashMap;

use protocol::job::Location;
use protocol::names::Names;
use protocol::run::RunState;
use scheduler::ledger::{BatchEntry, Ledger, NewRun, location_key};
use store::RedisStore;
use uuid::Uuid;

async fn ledger() -> (Ledger, RedisStore) {
    let names = Names::new(format!("flotilla-test-{}", Uuid::new_v4()));
    let store = match RedisStore::connect("redis://127.0.0.1:6379/", names.clone()).await {
        Ok(store) => store,
        Err(error) => panic!("these tests need Redis: {error}"),
    };
    (Ledger::new(store.connection(), names), store)
}

/// A running run of one location with `batches` admitted batches of one target.
async fn running_run(ledger: &Ledger, batches: u32, allowed_errors: u64) -> (Uuid, Location) {
    let run_id = Uuid::new_v4();
    let location = Location {
        account_id: "111122223333".into(),
        region: "us-east-1".into(),
    };
    let new_run = NewRun {
        campaign: "ledger-test",
        campaign_version: 1,
        spec_json: "{}",
        priority: "bulk",
        location_concurrency: 1,
        allowed_location_errors: 0,
        output_dir: "unused",
        created_ms: 0,
        start_after_ms: None,
        plan_only: false,
        targets_json: None,
        started_by: "test",
    };
    ledger
        .create_run(run_id, &new_run, std::slice::from_ref(&location))
        .await
        .unwrap();
    let ids: Vec<String> = (0..batches).map(|n| format!("i-{n:017x}")).collect();
    let (_, complete) = ledger
        .record_page(run_id, &location, 0, &ids, true)
        .await
        .unwrap();
    assert!(
        complete,
        "one page of the only location completes discovery"
    );
    let state = ledger
        .start_execution(run_id, u64::from(batches), 1, allowed_errors)
        .await
        .unwrap();
    assert_eq!(state, RunState::Running);
    let admitted = ledger.admit(run_id).await.unwrap();
    assert_eq!(
        admitted.len(),
        batches as usize,
        "batches of one, all admitted"
    );
    (run_id, location)
}

fn failed(location: &Location, batch: &BatchEntry) -> (String, HashMap<String, u64>) {
    assert_eq!(batch.location, location_key(location));
    (batch.key(), HashMap::from([("0:Failed".to_string(), 1)]))
}

#[tokio::test]
async fn a_report_applied_twice_counts_once() {
    let (ledger, store) = ledger().await;
    let (run_id, location) = running_run(&ledger, 3, 10).await;
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
    assert_eq!(fields.number("failures"), 1);
    assert_eq!(fields.number("in_flight"), 2);
    assert_eq!(ledger.counters(run_id).await.unwrap()["0:Failed"], 1);
    store.purge().await.unwrap();
}

#[tokio::test]
async fn concurrent_failures_halt_the_run_once_at_the_budget() {
    let (ledger, store) = ledger().await;
    let (run_id, location) = running_run(&ledger, 20, 2).await;
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
    assert_eq!(fields.number("failures"), 20, "every failure counted once");
    assert_eq!(
        fields.get("halt_reason"),
        Some("error budget exceeded: 3 targets failed, 2 allowed"),
        "the halting update is the one that crossed the budget"
    );
    assert!(
        ledger.admit(run_id).await.unwrap().is_empty(),
        "a halted run admits nothing"
    );
    store.purge().await.unwrap();
}

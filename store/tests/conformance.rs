//! One suite, four backends: every behaviour the scheduler and workers rely on
//! is checked against the in-memory Redis, real Redis on 127.0.0.1:6379, a
//! 3-master Redis Cluster and a Sentinel-watched master (both started on
//! loopback by `scripts/redis-topologies`, which the test command runs); each
//! real-Redis test under its own key prefix, purged afterwards.

// Test helpers may unwrap: a panic is the failure report.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use protocol::names::Names;
use protocol::run::{RunState, SendDecision};
use store::{
    Arming, BucketId, GateCause, KillScope, RedisStore, SendClaim, SendGate, SendRecord, Store,
    TokenGrant, TokenRequest,
};
use test_support::topologies as test_topologies;
use uuid::Uuid;

const REDIS_URL: &str = "redis://127.0.0.1:6379/";

/// A store on an in-memory Redis of its own.
async fn memory_store() -> RedisStore {
    let url = format!("memory://{}", Uuid::new_v4());
    RedisStore::connect(&url, Names::new("flotilla-test"))
        .await
        .unwrap()
}

async fn redis_store() -> RedisStore {
    store_at(REDIS_URL).await
}

async fn cluster_store() -> RedisStore {
    store_at(&test_topologies::cluster_url()).await
}

async fn sentinel_store() -> RedisStore {
    store_at(&test_topologies::sentinel_url()).await
}

async fn store_at(url: &str) -> RedisStore {
    let prefix = format!("flotilla-test-{}", Uuid::new_v4());
    match RedisStore::connect(url, Names::new(prefix)).await {
        Ok(store) => store,
        Err(error) => panic!("{}", test_topologies::needs(url, &error)),
    }
}

/// Runs `$check(store)` once on each backend, as four tests.
macro_rules! conformance {
    ($($name:ident),* $(,)?) => {
        mod memory {
            $(
                #[tokio::test]
                async fn $name() {
                    let store = super::memory_store().await;
                    super::armed(&store).await;
                    super::$name(store.clone()).await;
                    super::purged(&store).await;
                }
            )*
        }
        conformance!(@real redis, redis_store, $($name),*);
        conformance!(@real cluster, cluster_store, $($name),*);
        conformance!(@real sentinel, sentinel_store, $($name),*);
    };
    (@real $module:ident, $open:ident, $($name:ident),*) => {
        mod $module {
            $(
                #[tokio::test]
                async fn $name() {
                    use futures_util::FutureExt as _;
                    let store = super::$open().await;
                    super::armed(&store).await;
                    // A failed check removes its keys too, then fails.
                    let outcome = std::panic::AssertUnwindSafe(super::$name(store.clone()))
                        .catch_unwind()
                        .await;
                    super::purged(&store).await;
                    if let Err(panic) = outcome {
                        std::panic::resume_unwind(panic);
                    }
                }
            )*
        }
    };
}

/// `flotilla admin purge` removes every key of the deployment (there is
/// at least its arming marker), so a second purge finds none.
async fn purged(store: &RedisStore) {
    let deleted = store.purge().await.unwrap();
    assert!(deleted > 0, "the purge found none of the deployment's keys");
    assert_eq!(store.purge().await.unwrap(), 0, "a purge leaves no key");
}

/// A new deployment is armed (its global switch released) explicitly, once.
async fn armed(store: &impl Store) {
    assert_eq!(
        store.arm_new_deployment().await.unwrap(),
        Arming::Armed,
        "a new deployment is armed"
    );
}

/// Writes the global kill switch's record as someone with Redis access could.
trait Tamper {
    async fn tamper_kill_record(&self, raw: Option<&str>);
    /// Writes one field of a run's record, as the scheduler (or anyone with
    /// Redis access) could.
    async fn tamper_run_field(&self, run: Uuid, field: &str, raw: &str);
    /// Deletes a job's send claim, as a worker's Redis user may.
    async fn erase_claim(&self, run: Uuid, job: Uuid);
}

impl Tamper for RedisStore {
    async fn erase_claim(&self, run: Uuid, job: Uuid) {
        use ::redis::AsyncCommands;
        let mut connection = self.connection();
        let _: i64 = connection
            .del(self.names().job_command_key(run, job))
            .await
            .unwrap();
    }

    async fn tamper_run_field(&self, run: Uuid, field: &str, raw: &str) {
        use ::redis::AsyncCommands;
        let mut connection = self.connection();
        let () = connection
            .hset(self.names().run_key(run), field, raw)
            .await
            .unwrap();
    }

    async fn tamper_kill_record(&self, raw: Option<&str>) {
        use ::redis::AsyncCommands;
        let mut connection = self.connection();
        let key = self.names().kill_switch_key();
        let () = match raw {
            Some(raw) => connection.set(key, raw).await.unwrap(),
            None => {
                let _: i64 = connection.del(key).await.unwrap();
            }
        };
    }
}

conformance!(
    a_missing_or_corrupt_kill_record_stops_sends,
    an_unreadable_window_end_stops_sends,
    kill_switch_global_and_per_campaign,
    token_bucket_grants_its_burst_then_asks_to_wait,
    token_bucket_refills_at_its_rate,
    token_buckets_are_per_account_region_api,
    a_busy_token_bucket_still_expires_once_idle,
    token_reservations_pace_callers_at_the_rate,
    a_redelivered_job_finds_its_claim_or_command,
    a_stale_claim_is_taken_over_once,
    a_released_claim_can_be_claimed_again_but_a_sent_one_cannot,
    an_erased_claim_still_finds_the_command_on_record,
    the_send_gate_follows_kill_switches_and_run_state,
    kill_switch_changes_are_pushed,
    wait_notes_read_back_until_they_end,
);

/// Workers' notes of why jobs wait (`run show`'s held and retrying lines):
/// written in one round trip, read back while live, garbage and ended
/// notes skipped, the key expiring by itself.
async fn wait_notes_read_back_until_they_end(store: RedisStore) {
    use store::WaitNote;
    let run = Uuid::new_v4();
    let now = 10_000_000;
    let held = WaitNote::Held {
        until_ms: now + 1_000,
        targets: 50,
        cause: "global kill switch engaged: bad patch".into(),
    };
    let retrying = WaitNote::Retrying {
        until_ms: now + 20_000,
        job: "execute".into(),
        cause: "SendCommand failed (transient): InternalServerError: boom".into(),
    };
    let ended = WaitNote::Held {
        until_ms: now - WaitNote::GRACE_MS - 1,
        targets: 7,
        cause: "run paused".into(),
    };
    let notes = vec![
        ("held:a".to_string(), held.encode()),
        (
            "retry:111122223333/us-east-1".to_string(),
            retrying.encode(),
        ),
        ("held:b".to_string(), ended.encode()),
        ("held:c".to_string(), "held soon 3 not a number".to_string()),
    ];
    store
        .note_waits(run, &notes, Duration::from_secs(60))
        .await
        .unwrap();
    let (mut read, live) = store.wait_notes(run, now).await.unwrap();
    read.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        read,
        vec![
            ("held:a".to_string(), held),
            ("retry:111122223333/us-east-1".to_string(), retrying),
        ]
    );
    assert_eq!(live, 2);
    use ::redis::AsyncCommands;
    let key = store.names().run_waits_key(run);
    let ttl: i64 = store.connection().pttl(&key).await.unwrap();
    assert!((1..=60_000).contains(&ttl), "the notes expire: {ttl} ms");
    let left: usize = store.connection().hlen(&key).await.unwrap();
    assert_eq!(left, 2, "the ended and the unreadable note were deleted");

    // A note of any size reads back cut to MAX_NOTE_BYTES; more notes than
    // a read returns are counted.
    let huge = WaitNote::Retrying {
        until_ms: now + 20_000,
        job: "poll".into(),
        cause: "x".repeat(100_000),
    };
    let many: Vec<(String, String)> = (0..store::waits::MAX_NOTES_READ + 5)
        .map(|n| (format!("held:{n}"), held_note(now)))
        .chain(std::iter::once(("retry:huge".to_string(), huge.encode())))
        .collect();
    store
        .note_waits(run, &many, Duration::from_secs(60))
        .await
        .unwrap();
    let (read, live) = store.wait_notes(run, now).await.unwrap();
    assert_eq!(live, store::waits::MAX_NOTES_READ + 5 + 1 + 2);
    assert_eq!(read.len(), store::waits::MAX_NOTES_READ);
    let longest = read
        .iter()
        .map(|(_, note)| note.encode().len())
        .max()
        .unwrap();
    assert!(longest <= store::waits::MAX_NOTE_BYTES, "{longest}");
}

fn held_note(now: u64) -> String {
    store::WaitNote::Held {
        until_ms: now + 1_000,
        targets: 1,
        cause: "run paused".into(),
    }
    .encode()
}

async fn a_missing_or_corrupt_kill_record_stops_sends(store: impl Store + Tamper) {
    let run = Uuid::new_v4();
    store
        .set_run_state(run, RunState::Running, "started")
        .await
        .unwrap();
    assert_eq!(
        store.send_gate("scan", run).await.unwrap().decision(),
        SendDecision::Send
    );
    for (tampered, expected) in [(None, "missing"), (Some("sure, go ahead"), "unreadable")] {
        store.tamper_kill_record(tampered).await;
        let reason = store.kill_reason("scan").await.unwrap();
        assert!(
            reason
                .as_deref()
                .is_some_and(|reason| reason.contains(expected)),
            "{tampered:?}: {reason:?}"
        );
        let gate = store.send_gate("scan", run).await.unwrap();
        assert!(
            matches!(&gate, SendGate::Shut(GateCause::KillSwitchGlobal(reason)) if reason.contains(expected)),
            "{tampered:?} must stop sends: {gate:?}"
        );
        assert_eq!(gate.decision(), SendDecision::Wait);
        // Arming again does not release a deployment armed before.
        assert_eq!(
            store.arm_new_deployment().await.unwrap(),
            Arming::AlreadyArmed
        );
        assert_eq!(
            store.send_gate("scan", run).await.unwrap().decision(),
            SendDecision::Wait
        );
    }
    // Only an explicit release arms it again.
    store.release_kill_switch(&KillScope::Global).await.unwrap();
    assert_eq!(
        store.send_gate("scan", run).await.unwrap().decision(),
        SendDecision::Send
    );
}

async fn an_unreadable_window_end_stops_sends(store: impl Store + Tamper) {
    let run = Uuid::new_v4();
    store
        .set_run_state(run, RunState::Running, "started")
        .await
        .unwrap();
    let in_an_hour = protocol::job::UnixMillis::now().0 + 3_600_000;
    for (raw, expected) in [
        (in_an_hour.to_string(), SendDecision::Send),
        ("1".to_string(), SendDecision::Wait),
        ("not a time".to_string(), SendDecision::Wait),
        ("-5".to_string(), SendDecision::Wait),
    ] {
        store.tamper_run_field(run, "send_until_ms", &raw).await;
        let gate = store.send_gate("scan", run).await.unwrap();
        assert_eq!(gate.decision(), expected, "send_until_ms {raw:?}: {gate:?}");
        if expected == SendDecision::Wait {
            assert!(
                matches!(gate, SendGate::Shut(GateCause::RunOutsideWindow(_))),
                "{raw:?}: {gate:?}"
            );
        }
    }
}

async fn kill_switch_global_and_per_campaign(store: impl Store) {
    assert_eq!(store.kill_reason("scan").await.unwrap(), None);
    store
        .engage_kill_switch(&KillScope::Campaign("scan".into()), "alert: error rate")
        .await
        .unwrap();
    assert_eq!(
        store.kill_reason("scan").await.unwrap().as_deref(),
        Some("alert: error rate")
    );
    assert_eq!(
        store.kill_reason("install").await.unwrap(),
        None,
        "other campaigns go on"
    );
    store
        .engage_kill_switch(&KillScope::Global, "operator: incident 42")
        .await
        .unwrap();
    assert_eq!(
        store.kill_reason("install").await.unwrap().as_deref(),
        Some("operator: incident 42")
    );
    assert_eq!(
        store.kill_reason("scan").await.unwrap().as_deref(),
        Some("operator: incident 42"),
        "the global switch is named first"
    );
    store.release_kill_switch(&KillScope::Global).await.unwrap();
    assert_eq!(store.kill_reason("install").await.unwrap(), None);
    assert_eq!(
        store.kill_reason("scan").await.unwrap().as_deref(),
        Some("alert: error rate")
    );
    store
        .release_kill_switch(&KillScope::Campaign("scan".into()))
        .await
        .unwrap();
    assert_eq!(store.kill_reason("scan").await.unwrap(), None);
}

const SEND_COMMAND: BucketId<'static> = BucketId {
    account_id: "111122223333",
    region: "us-east-1",
    api: "SendCommand",
};

async fn token_bucket_grants_its_burst_then_asks_to_wait(store: impl Store) {
    let request = TokenRequest {
        rate_per_second: 2.0,
        burst: 3.0,
        tokens: 1,
        max_wait: Duration::ZERO,
    };
    for _ in 0..3 {
        assert_eq!(
            store.take_tokens(SEND_COMMAND, request).await.unwrap(),
            TokenGrant::Granted
        );
    }
    let TokenGrant::RetryAfter(wait) = store.take_tokens(SEND_COMMAND, request).await.unwrap()
    else {
        panic!("the fourth token within the burst must wait");
    };
    // One token at 2/s is at most half a second away.
    assert!(
        wait > Duration::ZERO && wait <= Duration::from_millis(500),
        "{wait:?}"
    );
    let three = TokenRequest {
        tokens: 3,
        ..request
    };
    assert!(
        matches!(
            store.take_tokens(SEND_COMMAND, three).await.unwrap(),
            TokenGrant::RetryAfter(_)
        ),
        "all or nothing"
    );
}

/// A bucket's expiry is pushed out lazily (not on every token), yet it
/// always outlives its reservations by at least 30 s and goes once idle.
async fn a_busy_token_bucket_still_expires_once_idle(store: RedisStore) {
    use ::redis::AsyncCommands;
    let request = TokenRequest {
        rate_per_second: 1_000.0,
        burst: 1_000.0,
        tokens: 1,
        max_wait: Duration::ZERO,
    };
    let key = store.names().token_bucket_key(
        SEND_COMMAND.account_id,
        SEND_COMMAND.region,
        SEND_COMMAND.api,
    );
    for _ in 0..200 {
        assert_eq!(
            store.take_tokens(SEND_COMMAND, request).await.unwrap(),
            TokenGrant::Granted
        );
        let ttl: i64 = store.connection().pttl(&key).await.unwrap();
        assert!(
            (30_000..=91_000).contains(&ttl),
            "the bucket outlives its reservations by 30 to 90 s: {ttl} ms"
        );
    }
}

async fn token_bucket_refills_at_its_rate(store: impl Store) {
    let request = TokenRequest {
        rate_per_second: 20.0,
        burst: 1.0,
        tokens: 1,
        max_wait: Duration::ZERO,
    };
    assert_eq!(
        store.take_tokens(SEND_COMMAND, request).await.unwrap(),
        TokenGrant::Granted
    );
    assert!(matches!(
        store.take_tokens(SEND_COMMAND, request).await.unwrap(),
        TokenGrant::RetryAfter(_)
    ));
    // 20/s refills one token in 50 ms.
    tokio::time::sleep(Duration::from_millis(120)).await;
    assert_eq!(
        store.take_tokens(SEND_COMMAND, request).await.unwrap(),
        TokenGrant::Granted
    );
    assert!(
        matches!(
            store.take_tokens(SEND_COMMAND, request).await.unwrap(),
            TokenGrant::RetryAfter(_)
        ),
        "a refill never exceeds the burst"
    );
}

async fn token_reservations_pace_callers_at_the_rate(store: impl Store) {
    let request = TokenRequest {
        rate_per_second: 10.0,
        burst: 1.0,
        tokens: 1,
        max_wait: Duration::from_secs(1),
    };
    assert_eq!(
        store.take_tokens(SEND_COMMAND, request).await.unwrap(),
        TokenGrant::Granted
    );
    // Each next caller gets the next slot, 100 ms after the one before: the
    // calls leave at the rate, and nobody polls.
    let mut waits = Vec::new();
    for _ in 0..5 {
        match store.take_tokens(SEND_COMMAND, request).await.unwrap() {
            TokenGrant::Reserved(wait) => waits.push(wait),
            other => panic!("a slot within a second is reserved, not {other:?}"),
        }
    }
    for (index, wait) in waits.iter().enumerate() {
        let slot = Duration::from_millis(100 * (index as u64 + 1));
        assert!(
            *wait <= slot && *wait + Duration::from_millis(50) > slot,
            "caller {index} waits {wait:?} for its slot {slot:?}"
        );
    }
    // The next slot is 600 ms away: past a 500 ms limit nothing is reserved,
    // so the slot after the five stays free.
    let patient = TokenRequest {
        max_wait: Duration::from_millis(500),
        ..request
    };
    assert!(matches!(
        store.take_tokens(SEND_COMMAND, patient).await.unwrap(),
        TokenGrant::RetryAfter(wait) if wait > Duration::from_millis(500)
    ));
    match store.take_tokens(SEND_COMMAND, request).await.unwrap() {
        TokenGrant::Reserved(wait) => assert!(wait > Duration::from_millis(500), "{wait:?}"),
        other => panic!("{other:?}"),
    }
}

async fn token_buckets_are_per_account_region_api(store: impl Store) {
    let request = TokenRequest {
        rate_per_second: 0.01,
        burst: 1.0,
        tokens: 1,
        max_wait: Duration::ZERO,
    };
    assert_eq!(
        store.take_tokens(SEND_COMMAND, request).await.unwrap(),
        TokenGrant::Granted
    );
    for other in [
        BucketId {
            account_id: "444455556666",
            ..SEND_COMMAND
        },
        BucketId {
            region: "eu-west-1",
            ..SEND_COMMAND
        },
        BucketId {
            api: "ListCommandInvocations",
            ..SEND_COMMAND
        },
    ] {
        assert_eq!(
            store.take_tokens(other, request).await.unwrap(),
            TokenGrant::Granted,
            "{other:?}"
        );
    }
    assert!(matches!(
        store.take_tokens(SEND_COMMAND, request).await.unwrap(),
        TokenGrant::RetryAfter(_)
    ));
}

async fn a_redelivered_job_finds_its_claim_or_command(store: impl Store) {
    let (run, job) = (Uuid::new_v4(), Uuid::new_v4());
    assert_eq!(
        store.claim_send(run, job, 1_000).await.unwrap(),
        SendClaim::Claimed
    );
    assert_eq!(
        store.claim_send(run, job, 2_000).await.unwrap(),
        SendClaim::InProgress { since_ms: 1_000 },
        "a second delivery sees the first one's claim, not a free job"
    );
    store.record_command(run, job, "cmd-first").await.unwrap();
    assert_eq!(
        store.claim_send(run, job, 3_000).await.unwrap(),
        SendClaim::Sent {
            command_id: "cmd-first".into()
        },
        "after the send, a redelivery resumes the first command"
    );
    assert_eq!(
        store.claim_send(run, Uuid::new_v4(), 3_000).await.unwrap(),
        SendClaim::Claimed,
        "other jobs are independent"
    );
}

async fn a_stale_claim_is_taken_over_once(store: impl Store) {
    let (run, job) = (Uuid::new_v4(), Uuid::new_v4());
    store.claim_send(run, job, 1_000).await.unwrap();
    assert!(!store.reclaim_send(run, job, 999, 5_000).await.unwrap());
    assert!(store.reclaim_send(run, job, 1_000, 5_000).await.unwrap());
    assert!(
        !store.reclaim_send(run, job, 1_000, 6_000).await.unwrap(),
        "two workers racing for a stale claim: only one wins"
    );
    assert_eq!(
        store.claim_send(run, job, 7_000).await.unwrap(),
        SendClaim::InProgress { since_ms: 5_000 }
    );
    store.record_command(run, job, "cmd").await.unwrap();
    assert!(!store.reclaim_send(run, job, 5_000, 8_000).await.unwrap());
}

async fn a_released_claim_can_be_claimed_again_but_a_sent_one_cannot(store: impl Store) {
    let (run, job) = (Uuid::new_v4(), Uuid::new_v4());
    store.claim_send(run, job, 1_000).await.unwrap();
    assert!(
        !store.release_send(run, job, 999).await.unwrap(),
        "only the holder's claim"
    );
    assert!(store.release_send(run, job, 1_000).await.unwrap());
    assert_eq!(
        store.claim_send(run, job, 2_000).await.unwrap(),
        SendClaim::Claimed
    );
    store.record_command(run, job, "cmd").await.unwrap();
    assert!(
        !store.release_send(run, job, 2_000).await.unwrap(),
        "a sent command stays recorded"
    );
    assert_eq!(
        store.claim_send(run, job, 3_000).await.unwrap(),
        SendClaim::Sent {
            command_id: "cmd".into()
        }
    );
}

async fn an_erased_claim_still_finds_the_command_on_record(store: impl Store + Tamper) {
    let (run, job) = (Uuid::new_v4(), Uuid::new_v4());
    store.claim_send(run, job, 1_000).await.unwrap();
    assert_eq!(
        store.mark_send(run, job, 1_000).await.unwrap(),
        SendRecord::First
    );
    assert_eq!(
        store.mark_send(run, job, 2_000).await.unwrap(),
        SendRecord::Attempted { since_ms: 1_000 },
        "a second mark finds the first"
    );
    store.record_command(run, job, "cmd-first").await.unwrap();
    store.erase_claim(run, job).await;
    assert_eq!(
        store.claim_send(run, job, 3_000).await.unwrap(),
        SendClaim::Claimed,
        "the claim is gone"
    );
    assert_eq!(
        store.mark_send(run, job, 3_000).await.unwrap(),
        SendRecord::Sent {
            command_id: "cmd-first".into()
        },
        "the send record still names the command"
    );
    store.record_command(run, job, "cmd-second").await.unwrap();
    assert_eq!(
        store.mark_send(run, job, 4_000).await.unwrap(),
        SendRecord::Sent {
            command_id: "cmd-first".into()
        },
        "a recorded command is never overwritten"
    );
    assert_eq!(
        store.mark_send(run, Uuid::new_v4(), 4_000).await.unwrap(),
        SendRecord::First,
        "other jobs are independent"
    );
}

async fn the_send_gate_follows_kill_switches_and_run_state(store: impl Store) {
    let run = Uuid::new_v4();
    let campaign = format!("campaign-{run}");
    let gate = store.send_gate(&campaign, run).await.unwrap();
    assert_eq!(
        gate,
        SendGate::Shut(GateCause::RunUnknown),
        "a run without a record never sends"
    );
    store
        .set_run_state(run, RunState::Running, "started")
        .await
        .unwrap();
    let gate = store.send_gate(&campaign, run).await.unwrap();
    assert_eq!(gate, SendGate::Open);

    store
        .set_run_state(run, RunState::Paused, "operator paused")
        .await
        .unwrap();
    let gate = store.send_gate(&campaign, run).await.unwrap();
    assert_eq!(gate.decision(), SendDecision::Wait);
    assert_eq!(
        gate,
        SendGate::Shut(GateCause::RunPaused("operator paused".into()))
    );

    store
        .set_run_state(run, RunState::Running, "resumed")
        .await
        .unwrap();
    store
        .engage_kill_switch(&KillScope::Campaign(campaign.clone()), "alert fired")
        .await
        .unwrap();
    let gate = store.send_gate(&campaign, run).await.unwrap();
    assert_eq!(gate.decision(), SendDecision::Wait);
    assert_eq!(
        gate,
        SendGate::Shut(GateCause::KillSwitchCampaign("alert fired".into()))
    );
    store
        .release_kill_switch(&KillScope::Campaign(campaign.clone()))
        .await
        .unwrap();

    store
        .set_run_state(run, RunState::Halted, "3 failed, 2 allowed")
        .await
        .unwrap();
    let gate = store.send_gate(&campaign, run).await.unwrap();
    assert_eq!(
        gate.decision(),
        SendDecision::NotStarted,
        "a halted run never sends"
    );
    assert_eq!(
        gate,
        SendGate::Shut(GateCause::RunHalted("3 failed, 2 allowed".into()))
    );
}

async fn kill_switch_changes_are_pushed(store: impl Store) {
    let mut changes = store.watch_kill_changes().await.unwrap();
    let campaign = format!("campaign-{}", Uuid::new_v4());
    store
        .engage_kill_switch(&KillScope::Campaign(campaign.clone()), "stop")
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(2), changes.recv())
        .await
        .expect("an engage is pushed within two seconds")
        .expect("the subscription is open");
    store
        .release_kill_switch(&KillScope::Campaign(campaign))
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(2), changes.recv())
        .await
        .expect("a release is pushed too")
        .expect("the subscription is open");
}

#[tokio::test]
async fn deployments_with_different_prefixes_do_not_share_state() {
    let one = redis_store().await;
    let two = redis_store().await;
    armed(&one).await;
    armed(&two).await;
    one.engage_kill_switch(&KillScope::Global, "only one")
        .await
        .unwrap();
    assert_eq!(two.kill_reason("any").await.unwrap(), None);
    one.purge().await.unwrap();
    two.purge().await.unwrap();
}

#[tokio::test]
async fn an_unreachable_redis_says_how_to_start_it() {
    // Port 1 on loopback: nothing listens there.
    let error = RedisStore::connect("redis://:hunter2@127.0.0.1:1/", Names::default())
        .await
        .unwrap_err();
    let message = error.to_string();
    assert!(
        message.contains("redis-server --daemonize yes"),
        "{message}"
    );
    assert!(
        !message.contains("hunter2"),
        "a password in an error: {message}"
    );
    assert!(error.is_retryable());
}

#[tokio::test(start_paused = true)]
async fn the_in_memory_redis_keeps_tokios_clock() {
    let store = memory_store().await;
    let request = TokenRequest {
        rate_per_second: 1.0,
        burst: 1.0,
        tokens: 1,
        max_wait: Duration::ZERO,
    };
    assert_eq!(
        store.take_tokens(SEND_COMMAND, request).await.unwrap(),
        TokenGrant::Granted
    );
    assert_eq!(
        store.take_tokens(SEND_COMMAND, request).await.unwrap(),
        TokenGrant::RetryAfter(Duration::from_secs(1))
    );
    tokio::time::advance(Duration::from_secs(1)).await;
    assert_eq!(
        store.take_tokens(SEND_COMMAND, request).await.unwrap(),
        TokenGrant::Granted
    );
}

/// A deployment that asks for a replica's copy of every claim gets an error,
/// not a silent promise, from a Redis without replicas: a claim only the
/// master holds could be lost in a failover and the job sent twice.
#[tokio::test]
async fn a_claim_no_replica_holds_is_a_retryable_error_when_replicas_are_asked_for() {
    let store = store_at(&format!("{REDIS_URL}?wait_replicas=1")).await;
    let error = store
        .claim_send(Uuid::new_v4(), Uuid::new_v4(), 1)
        .await
        .expect_err("127.0.0.1:6379 has no replica to acknowledge the claim");
    assert!(
        matches!(
            error,
            store::StoreError::NotReplicated {
                wanted: 1,
                acked: 0
            }
        ),
        "{error}"
    );
    assert!(error.is_retryable(), "a replica may come back: {error}");
    assert!(error.to_string().contains("wait_replicas"), "{error}");
    store.purge().await.unwrap();
}

#[tokio::test]
async fn over_tls_redis_keeps_the_kill_switch_tokens_claims_and_gate() {
    let redis = test_support::redis::PrivateRedis::start_tls().await;
    let names = Names::new(format!("flotilla-test-{}", Uuid::new_v4()));
    let tls = store::RedisTls {
        ca_file: redis.ca_file.clone(),
    };
    let connected = RedisStore::connect_with(&redis.url, names.clone(), &tls).await;
    let store = connected.unwrap_or_else(|error| panic!("TLS connection: {error}"));
    armed(&store).await;
    kill_switch_global_and_per_campaign(store.clone()).await;
    token_bucket_grants_its_burst_then_asks_to_wait(store.clone()).await;
    a_redelivered_job_finds_its_claim_or_command(store.clone()).await;
    the_send_gate_follows_kill_switches_and_run_state(store.clone()).await;
    kill_switch_changes_are_pushed(store).await;

    // A server whose certificate no trusted CA signed is refused, and so is
    // plain text on the TLS port.
    let untrusted = RedisStore::connect(&redis.url, names.clone()).await;
    assert!(
        untrusted.is_err(),
        "a certificate of an unknown CA was accepted"
    );
    let plain = redis.url.replace("rediss://", "redis://");
    assert!(RedisStore::connect(&plain, names).await.is_err());
}

//! One suite, two backends: the topology's promises, checked against the
//! in-memory backend and against real RabbitMQ at 127.0.0.1:5672 (each test under
//! its own name prefix, deleted afterwards).

#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use broker::Broker;
use broker::consumer::Consumer;
use broker::topology::DELIVERY_LIMIT;
use protocol::campaign::{ApiRateLimits, ExecutionRole, TargetSelection, TargetSelector};
use protocol::job::{DiscoverJob, Location, Priority, RunContext};
use protocol::names::Names;
use protocol::report::{LocationFailed, LocationFailure, Reports};
use protocol::{Job, Report};
use uuid::Uuid;

const AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// Where a test's broker lives: an AMQP URL or a `memory://` one.
async fn connect(url: &str, names: &Names) -> Broker {
    // The setup step declares; a service only checks.
    let declared = Broker::declare_topology(url, names, &Default::default()).await;
    match declared.and(Broker::connect(url, names.clone(), "broker-test").await) {
        Ok(broker) => broker.with_keyring(keys()),
        Err(error) => panic!("these tests need RabbitMQ: {error}"),
    }
}

/// Signs as a scheduler; trusts that key and a worker's.
fn keys() -> protocol::signing::Keyring {
    static KEYS: std::sync::LazyLock<protocol::signing::Keyring> = std::sync::LazyLock::new(|| {
        protocol::signing::Keyring::ephemeral_deployment()
            .unwrap()
            .scheduler
    });
    KEYS.clone()
}

fn fresh_names() -> Names {
    Names::new(format!("flotilla-test-{}", Uuid::new_v4()))
}

fn memory_url() -> String {
    format!("memory://broker-test-{}", Uuid::new_v4())
}

/// Delay pumps on a connection of their own, as a worker runs them; they stop
/// (leaving what they hold to be redelivered) when the returned broker closes.
async fn start_pumps(url: &str, names: &Names) -> (Broker, tokio_util::sync::CancellationToken) {
    let pumps = connect(url, names).await;
    let stop = tokio_util::sync::CancellationToken::new();
    for delay in broker::delay::job_delay_queues(names) {
        let tag = format!("pump-{}", delay.queue);
        tokio::spawn(broker::delay::pump(pumps.clone(), delay, tag, stop.clone()));
    }
    (pumps, stop)
}

/// Deletes a test's queues and exchanges when dropped, so a failing test
/// leaves nothing on the broker either (`scripts/test` sweeps what a killed
/// run left).
struct DeleteOnDrop {
    url: String,
    names: Names,
}

impl Drop for DeleteOnDrop {
    fn drop(&mut self) {
        let (url, names) = (self.url.clone(), self.names.clone());
        // Drop cannot await: a thread with a runtime of its own does it.
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            let delete = Broker::delete_deployment(&url, &names);
            // The timeout is made inside the runtime (a timer outside one panics).
            if let Ok(Err(error)) = runtime
                .block_on(async { tokio::time::timeout(Duration::from_secs(20), delete).await })
            {
                eprintln!("cleanup of {}: {error}", names.prefix());
            }
        })
        .join();
    }
}

/// Runs `$check(url, names)` once on each backend, as two tests.
macro_rules! conformance {
    ($($name:ident),* $(,)?) => {
        mod memory {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name(&super::memory_url(), super::fresh_names()).await;
                }
            )*
        }
        mod rabbitmq {
            $(
                #[tokio::test]
                async fn $name() {
                    let names = super::fresh_names();
                    let _cleanup = super::DeleteOnDrop {
                        url: super::AMQP_URL.into(),
                        names: names.clone(),
                    };
                    super::$name(super::AMQP_URL, names).await;
                }
            )*
        }
    };
}

conformance!(
    jobs_reach_the_queue_of_their_priority_and_are_acked,
    a_delayed_job_comes_back_to_its_work_queue_after_the_delay,
    a_burst_of_delayed_jobs_all_come_back,
    delayed_jobs_held_by_a_dead_pump_come_back_through_another,
    jobs_published_together_all_arrive_once,
    rejected_and_endlessly_redelivered_jobs_end_in_the_dead_letter_queue,
    what_a_closed_connection_held_unacked_is_redelivered,
    prefetch_bounds_unsettled_deliveries,
    reports_reach_the_reports_queue_and_depths_count_ready_messages,
    a_bundle_of_reports_is_one_message_and_opens_as_its_reports,
    a_service_finds_no_queues_until_the_setup_step_declares_them,
    job_queue_depths_count_waiting_jobs_and_consumers,
);

/// Issue 33: `run show` says when jobs wait and no worker consumes them;
/// both backends count a queue's ready jobs and live consumers alike.
async fn job_queue_depths_count_waiting_jobs_and_consumers(url: &str, names: Names) {
    let broker = connect(url, &names).await;
    let depth = |depths: Vec<broker::QueueDepth>, queue: String| {
        depths
            .into_iter()
            .find(|depth| depth.queue == queue)
            .map(|depth| (depth.messages, depth.consumers))
            .expect("the queue's depth is listed")
    };
    broker.publish_job(&job(Priority::Bulk)).await.unwrap();
    broker.publish_job(&job(Priority::Bulk)).await.unwrap();
    let depths = broker.job_queue_depths().await.unwrap();
    assert_eq!(depth(depths.clone(), names.bulk_queue()), (2, 0));
    assert_eq!(depth(depths, names.urgent_queue()), (0, 0));

    let mut consumer = broker.consume(&names.bulk_queue(), 1, "d").await.unwrap();
    let delivery = next(&mut consumer).await;
    // One delivered (unacked, not ready), one ready; one consumer.
    assert_eq!(
        depth(broker.job_queue_depths().await.unwrap(), names.bulk_queue()),
        (1, 1)
    );
    delivery.ack().await.unwrap();
    consumer.cancel().await.unwrap();
    // RabbitMQ counts a quorum queue's consumers a moment after cancel-ok.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let consumers = depth(broker.job_queue_depths().await.unwrap(), names.bulk_queue()).1;
        if consumers == 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "a cancelled consumer is still counted after 10 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    broker.delete_topology().await.unwrap();
}

/// Trust III, finding 9: services declare nothing (their broker users may
/// not configure); until the setup step (`flotilla admin arm`) has declared
/// the deployment's queues, a service's connection says so and how to fix it.
async fn a_service_finds_no_queues_until_the_setup_step_declares_them(url: &str, names: Names) {
    let error = Broker::connect(url, names.clone(), "service")
        .await
        .expect_err("a service connected to a deployment with no queues");
    let message = error.to_string();
    assert!(
        matches!(error, broker::BrokerError::NoTopology { .. })
            && message.contains("flotilla admin arm")
            && message.contains(names.prefix()),
        "{message}"
    );
    assert!(error.is_retryable(), "services wait for the setup step");
    let broker = connect(url, &names).await;
    broker.publish_job(&job(Priority::Bulk)).await.unwrap();
    broker.delete_topology().await.unwrap();
}

fn job(priority: Priority) -> Job {
    Job::Discover(DiscoverJob {
        job_id: Uuid::new_v4(),
        run: RunContext {
            run_id: Uuid::new_v4(),
            campaign: "scan".into(),
            campaign_version: 1,
            role: ExecutionRole {
                name: "FlotillaExecutionRole".into(),
                external_id: None,
                session_duration: Duration::from_secs(3600),
            },
            api_rate_limits: ApiRateLimits::default(),
            priority,
            output_logging: None,
        },
        location: Location {
            account_id: "100000000000".into(),
            region: "us-east-1".into(),
        },
        targets: TargetSelection {
            selector: TargetSelector::All,
            platform: None,
            online_only: false,
        },
        page: 0,
        next_token: None,
        window_tag: None,
    })
}

async fn next(consumer: &mut Consumer) -> broker::Delivery {
    tokio::time::timeout(Duration::from_secs(10), consumer.next())
        .await
        .expect("a delivery within 10 s")
        .expect("the consumer is open")
        .unwrap()
}

async fn jobs_reach_the_queue_of_their_priority_and_are_acked(url: &str, names: Names) {
    let broker = connect(url, &names).await;
    let bulk_job = job(Priority::Bulk);
    let urgent_job = job(Priority::Urgent);
    broker.publish_job(&bulk_job).await.unwrap();
    broker.publish_job(&urgent_job).await.unwrap();

    let mut urgent = broker
        .consume(&names.urgent_queue(), 10, "u")
        .await
        .unwrap();
    let delivery = next(&mut urgent).await;
    assert_eq!(delivery.open::<Job>(&keys()).unwrap().message, urgent_job);
    delivery.ack().await.unwrap();
    let mut bulk = broker.consume(&names.bulk_queue(), 10, "b").await.unwrap();
    let delivery = next(&mut bulk).await;
    assert_eq!(delivery.open::<Job>(&keys()).unwrap().message, bulk_job);
    assert_eq!(delivery.retries(), 0);
    delivery.ack().await.unwrap();
    broker.delete_topology().await.unwrap();
}

async fn a_delayed_job_comes_back_to_its_work_queue_after_the_delay(url: &str, names: Names) {
    let broker = connect(url, &names).await;
    let (_pumps, _stop) = start_pumps(url, &names).await;
    let delayed = job(Priority::Urgent);
    broker.publish_job(&delayed).await.unwrap();
    let mut urgent = broker
        .consume(&names.urgent_queue(), 10, "u")
        .await
        .unwrap();
    let first = next(&mut urgent).await;
    let signed_at = first.open::<Job>(&keys()).unwrap().signed_at;
    // A worker defers the job it holds: the same bytes, signature and all.
    let published = Instant::now();
    broker
        .defer_job(&first, delayed.run().priority, Duration::from_secs(1), 3)
        .await
        .unwrap();
    first.ack().await.unwrap();
    let delivery = next(&mut urgent).await;
    assert_eq!(
        delivery.open::<Job>(&keys()).unwrap().signed_at,
        signed_at,
        "a deferred job keeps its original signature"
    );
    assert!(
        published.elapsed() >= Duration::from_millis(900),
        "came back after {:?}",
        published.elapsed()
    );
    assert_eq!(delivery.open::<Job>(&keys()).unwrap().message, delayed);
    assert_eq!(
        delivery.retries(),
        3,
        "the retry count travels with the job"
    );
    delivery.ack().await.unwrap();
    broker.delete_topology().await.unwrap();
}

async fn rejected_and_endlessly_redelivered_jobs_end_in_the_dead_letter_queue(
    url: &str,
    names: Names,
) {
    let broker = connect(url, &names).await;
    let poison = job(Priority::Bulk);
    let endless = job(Priority::Bulk);
    broker.publish_job(&poison).await.unwrap();
    broker.publish_job(&endless).await.unwrap();

    let mut bulk = broker.consume(&names.bulk_queue(), 1, "b").await.unwrap();
    let first = next(&mut bulk).await;
    assert_eq!(first.open::<Job>(&keys()).unwrap().message, poison);
    first.dead_letter().await.unwrap();
    // The second job is requeued (as when its worker dies) until the limit.
    let mut deliveries = 0;
    loop {
        let delivery = tokio::time::timeout(Duration::from_secs(3), bulk.next()).await;
        let Ok(Some(delivery)) = delivery else { break };
        let delivery = delivery.unwrap();
        assert_eq!(delivery.open::<Job>(&keys()).unwrap().message, endless);
        deliveries += 1;
        assert!(
            deliveries <= DELIVERY_LIMIT + 1,
            "the limit must stop redelivery"
        );
        delivery.requeue().await.unwrap();
    }
    assert_eq!(
        deliveries,
        DELIVERY_LIMIT + 1,
        "first delivery plus the limit's redeliveries"
    );

    let mut dead = broker
        .consume(&names.dead_letter_queue(), 10, "d")
        .await
        .unwrap();
    let mut dead_jobs = vec![
        next(&mut dead).await.open::<Job>(&keys()).unwrap().message,
        next(&mut dead).await.open::<Job>(&keys()).unwrap().message,
    ];
    dead_jobs.sort_by_key(Job::job_id);
    let mut expected = vec![poison, endless];
    expected.sort_by_key(Job::job_id);
    assert_eq!(dead_jobs, expected);
    broker.delete_topology().await.unwrap();
}

#[tokio::test]
async fn an_absent_broker_says_how_to_start_it() {
    let error = Broker::connect("amqp://guest:secret@127.0.0.1:1/%2f", Names::default(), "t")
        .await
        .unwrap_err();
    let message = error.to_string();
    assert!(message.contains("rabbitmq-server -detached"), "{message}");
    assert!(!message.contains("secret"), "{message}");
}

#[tokio::test]
async fn the_first_broker_of_a_list_that_answers_is_used() {
    let names = fresh_names();
    // 127.0.0.1:1 refuses; the next URL is the machine's RabbitMQ.
    let urls = format!("amqp://guest:secret@127.0.0.1:1/%2f,{AMQP_URL}");
    let broker = connect(&urls, &names).await;
    broker.publish_job(&job(Priority::Bulk)).await.unwrap();
    broker.delete_topology().await.unwrap();

    let error = Broker::connect(
        "amqp://guest:pw-first@127.0.0.1:1/%2f,amqp://guest:pw-second@127.0.0.1:2/%2f",
        fresh_names(),
        "t",
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(
        error.contains("127.0.0.1:2"),
        "the last failure is told: {error}"
    );
    assert!(!error.contains("pw-"), "{error}");

    let many = vec![AMQP_URL; broker::MAX_BROKER_URLS + 1].join(",");
    let error = Broker::connect(&many, fresh_names(), "t")
        .await
        .unwrap_err();
    assert!(error.to_string().contains("at most 16"), "{error}");
}

async fn what_a_closed_connection_held_unacked_is_redelivered(url: &str, names: Names) {
    let first = connect(url, &names).await;
    let held = job(Priority::Bulk);
    first.publish_job(&held).await.unwrap();
    let mut consumer = first.consume(&names.bulk_queue(), 10, "w1").await.unwrap();
    let delivery = next(&mut consumer).await;
    assert!(!delivery.redelivered());
    // The worker dies holding it.
    first.close().await;
    drop(delivery);

    let second = connect(url, &names).await;
    let mut consumer = second.consume(&names.bulk_queue(), 10, "w2").await.unwrap();
    let delivery = next(&mut consumer).await;
    assert_eq!(delivery.open::<Job>(&keys()).unwrap().message, held);
    assert!(delivery.redelivered(), "marked as redelivered");
    assert_eq!(delivery.earlier_deliveries(), 1);
    delivery.ack().await.unwrap();
    assert!(
        tokio::time::timeout(Duration::from_millis(500), consumer.next())
            .await
            .is_err(),
        "an acked job is not delivered again"
    );
    second.delete_topology().await.unwrap();
}

async fn prefetch_bounds_unsettled_deliveries(url: &str, names: Names) {
    let broker = connect(url, &names).await;
    let jobs = [
        job(Priority::Bulk),
        job(Priority::Bulk),
        job(Priority::Bulk),
    ];
    for job in &jobs {
        broker.publish_job(job).await.unwrap();
    }
    let mut consumer = broker.consume(&names.bulk_queue(), 2, "w").await.unwrap();
    let first = next(&mut consumer).await;
    let second = next(&mut consumer).await;
    assert!(
        tokio::time::timeout(Duration::from_millis(500), consumer.next())
            .await
            .is_err(),
        "a third delivery must wait for room under prefetch 2"
    );
    first.ack().await.unwrap();
    let third = next(&mut consumer).await;
    let mut seen = vec![
        second.open::<Job>(&keys()).unwrap().message,
        third.open::<Job>(&keys()).unwrap().message,
    ];
    second.ack().await.unwrap();
    third.ack().await.unwrap();
    seen.sort_by_key(Job::job_id);
    let mut expected = jobs[1..].to_vec();
    expected.sort_by_key(Job::job_id);
    assert_eq!(seen, expected, "in publishing order, each once");
    broker.delete_topology().await.unwrap();
}

async fn reports_reach_the_reports_queue_and_depths_count_ready_messages(url: &str, names: Names) {
    let broker = connect(url, &names).await;
    let report = Report::LocationFailed(LocationFailed {
        run_id: Uuid::new_v4(),
        location: Location {
            account_id: "100000000000".into(),
            region: "us-east-1".into(),
        },
        reason: LocationFailure::AccessDenied,
        detail: "not authorized to perform sts:AssumeRole".into(),
    });
    broker.publish_report(&report).await.unwrap();
    broker.publish_job(&job(Priority::Urgent)).await.unwrap();
    broker.publish_job(&job(Priority::Urgent)).await.unwrap();
    // RabbitMQ's counts lag publishing a little.
    let mut depths = Vec::new();
    for _ in 0..50 {
        depths = broker.queue_depths().await.unwrap();
        if depths.iter().map(|(_, depth)| depth).sum::<u32>() == 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let depth = |queue: String| {
        depths
            .iter()
            .find(|(name, _)| *name == queue)
            .map(|(_, depth)| *depth)
    };
    assert_eq!(depth(names.urgent_queue()), Some(2), "{depths:?}");
    assert_eq!(depth(names.reports_queue()), Some(1), "{depths:?}");
    assert_eq!(depth(names.bulk_queue()), Some(0), "{depths:?}");
    let mut reports = broker
        .consume(&names.reports_queue(), 10, "s")
        .await
        .unwrap();
    let delivery = next(&mut reports).await;
    assert_eq!(delivery.open::<Report>(&keys()).unwrap().message, report);
    delivery.ack().await.unwrap();
    broker.delete_topology().await.unwrap();
}

/// The reports queue carries single reports and bundles; a consumer opens
/// either as the reports it holds, in order.
async fn a_bundle_of_reports_is_one_message_and_opens_as_its_reports(url: &str, names: Names) {
    let broker = connect(url, &names).await;
    let report = |detail: &str| {
        Report::LocationFailed(LocationFailed {
            run_id: Uuid::new_v4(),
            location: Location {
                account_id: "100000000000".into(),
                region: "us-east-1".into(),
            },
            reason: LocationFailure::Rejected,
            detail: detail.into(),
        })
    };
    let bundle = vec![report("first"), report("second"), report("third")];
    broker
        .publish_reports(&Reports(bundle.clone()))
        .await
        .unwrap();
    let alone = report("alone");
    broker.publish_report(&alone).await.unwrap();
    let mut reports = broker
        .consume(&names.reports_queue(), 10, "s")
        .await
        .unwrap();
    let first = next(&mut reports).await;
    assert_eq!(first.open_reports(&keys()).unwrap().message, bundle);
    let second = next(&mut reports).await;
    assert_eq!(second.open_reports(&keys()).unwrap().message, vec![alone]);
    first.ack().await.unwrap();
    second.ack().await.unwrap();
    broker.delete_topology().await.unwrap();
}

/// Hundreds of polls wait in the same delay queue at once during a big run, with
/// no consumer on it; every one must come back (quorum queues with a message TTL
/// have had bugs here: rabbitmq-server#10718).
async fn a_burst_of_delayed_jobs_all_come_back(url: &str, names: Names) {
    let broker = connect(url, &names).await;
    let (_pumps, _stop) = start_pumps(url, &names).await;
    let jobs: Vec<Job> = (0..300).map(|_| job(Priority::Bulk)).collect();
    for job in &jobs {
        broker
            .publish_job_after(job, Duration::from_secs(5))
            .await
            .unwrap();
    }
    let mut bulk = broker.consume(&names.bulk_queue(), 50, "b").await.unwrap();
    let mut back = std::collections::HashSet::new();
    while back.len() < jobs.len() {
        let delivery = tokio::time::timeout(Duration::from_secs(15), bulk.next())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "only {} of {} delayed jobs came back",
                    back.len(),
                    jobs.len()
                )
            })
            .expect("the consumer is open")
            .unwrap();
        back.insert(delivery.open::<Job>(&keys()).unwrap().message.job_id());
        delivery.ack().await.unwrap();
    }
    broker.delete_topology().await.unwrap();
}

/// A pump that dies (its connection closed, as in a broker restart or a
/// killed worker) while holding delayed jobs strands none of them: another
/// pump moves them when they are due, and none comes back before it is due.
async fn delayed_jobs_held_by_a_dead_pump_come_back_through_another(url: &str, names: Names) {
    let broker = connect(url, &names).await;
    let jobs: Vec<Job> = (0..50).map(|_| job(Priority::Bulk)).collect();
    let published = Instant::now();
    for job in &jobs {
        broker
            .publish_job_after(job, Duration::from_secs(5))
            .await
            .unwrap();
    }
    let (first, first_stop) = start_pumps(url, &names).await;
    // Let the first pump take the delayed jobs, then kill it before they are due.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    first.close().await;
    first_stop.cancel();
    let mut bulk = broker.consume(&names.bulk_queue(), 50, "b").await.unwrap();
    assert!(
        tokio::time::timeout(Duration::from_millis(500), bulk.next())
            .await
            .is_err(),
        "nothing comes back while no pump runs"
    );
    let (_second, _second_stop) = start_pumps(url, &names).await;
    let mut back = std::collections::HashSet::new();
    while back.len() < jobs.len() {
        let delivery = tokio::time::timeout(Duration::from_secs(15), bulk.next())
            .await
            .unwrap_or_else(|_| panic!("only {} of {} came back", back.len(), jobs.len()))
            .expect("the consumer is open")
            .unwrap();
        assert!(
            published.elapsed() >= Duration::from_millis(4900),
            "due after 5 s, back after {:?}",
            published.elapsed()
        );
        back.insert(delivery.open::<Job>(&keys()).unwrap().message.job_id());
        delivery.ack().await.unwrap();
    }
    broker.delete_topology().await.unwrap();
}

/// The scheduler publishes a run's Discover jobs (20,000 for a big run) as one
/// pipelined batch: more than one pipeline's worth must all arrive, each once.
async fn jobs_published_together_all_arrive_once(url: &str, names: Names) {
    let broker = connect(url, &names).await;
    let jobs: Vec<Job> = (0..broker::publisher::PUBLISH_PIPELINE * 2 + 7)
        .map(|_| job(Priority::Bulk))
        .collect();
    assert_eq!(broker.publish_jobs(&jobs).await.unwrap(), jobs.len());
    let mut bulk = broker.consume(&names.bulk_queue(), 200, "b").await.unwrap();
    let mut seen = std::collections::HashSet::new();
    for _ in 0..jobs.len() {
        let delivery = next(&mut bulk).await;
        assert!(
            seen.insert(delivery.open::<Job>(&keys()).unwrap().message.job_id()),
            "a job came twice"
        );
        delivery.ack().await.unwrap();
    }
    let expected: std::collections::HashSet<_> = jobs.iter().map(Job::job_id).collect();
    assert_eq!(seen, expected);
    broker.delete_topology().await.unwrap();
}

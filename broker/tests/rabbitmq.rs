//! The topology's promises, on real RabbitMQ at 127.0.0.1:5672 (each test under
//! its own name prefix, deleted afterwards).

#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use broker::Broker;
use broker::consumer::Consumer;
use broker::topology::DELIVERY_LIMIT;
use protocol::Job;
use protocol::campaign::{ApiRateLimits, ExecutionRole, TargetSelection, TargetSelector};
use protocol::job::{DiscoverJob, Location, Priority, RunContext};
use protocol::names::Names;
use uuid::Uuid;

const AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

async fn broker() -> Broker {
    let names = Names::new(format!("flotilla-test-{}", Uuid::new_v4()));
    match Broker::connect(AMQP_URL, names, "broker-test").await {
        Ok(broker) => broker,
        Err(error) => panic!("these tests need RabbitMQ: {error}"),
    }
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
    })
}

async fn next(consumer: &mut Consumer) -> broker::Delivery {
    tokio::time::timeout(Duration::from_secs(10), consumer.next())
        .await
        .expect("a delivery within 10 s")
        .expect("the consumer is open")
        .unwrap()
}

#[tokio::test]
async fn jobs_reach_the_queue_of_their_priority_and_are_acked() {
    let broker = broker().await;
    let names = broker.names().clone();
    let bulk_job = job(Priority::Bulk);
    let urgent_job = job(Priority::Urgent);
    broker.publish_job(&bulk_job).await.unwrap();
    broker.publish_job(&urgent_job).await.unwrap();

    let mut urgent = broker
        .consume(&names.urgent_queue(), 10, "u")
        .await
        .unwrap();
    let delivery = next(&mut urgent).await;
    assert_eq!(delivery.decode::<Job>().unwrap(), urgent_job);
    delivery.ack().await.unwrap();
    let mut bulk = broker.consume(&names.bulk_queue(), 10, "b").await.unwrap();
    let delivery = next(&mut bulk).await;
    assert_eq!(delivery.decode::<Job>().unwrap(), bulk_job);
    assert_eq!(delivery.retries(), 0);
    delivery.ack().await.unwrap();
    broker.delete_topology().await.unwrap();
}

#[tokio::test]
async fn a_delayed_job_comes_back_to_its_work_queue_after_the_delay() {
    let broker = broker().await;
    let names = broker.names().clone();
    let delayed = job(Priority::Urgent);
    let published = Instant::now();
    broker
        .publish_job_after(&delayed, Duration::from_secs(1), 3)
        .await
        .unwrap();
    let mut urgent = broker
        .consume(&names.urgent_queue(), 10, "u")
        .await
        .unwrap();
    let delivery = next(&mut urgent).await;
    assert!(
        published.elapsed() >= Duration::from_millis(900),
        "came back after {:?}",
        published.elapsed()
    );
    assert_eq!(delivery.decode::<Job>().unwrap(), delayed);
    assert_eq!(
        delivery.retries(),
        3,
        "the retry count travels with the job"
    );
    delivery.ack().await.unwrap();
    broker.delete_topology().await.unwrap();
}

#[tokio::test]
async fn rejected_and_endlessly_redelivered_jobs_end_in_the_dead_letter_queue() {
    let broker = broker().await;
    let names = broker.names().clone();
    let poison = job(Priority::Bulk);
    let endless = job(Priority::Bulk);
    broker.publish_job(&poison).await.unwrap();
    broker.publish_job(&endless).await.unwrap();

    let mut bulk = broker.consume(&names.bulk_queue(), 1, "b").await.unwrap();
    let first = next(&mut bulk).await;
    assert_eq!(first.decode::<Job>().unwrap(), poison);
    first.dead_letter().await.unwrap();
    // The second job is requeued (as when its worker dies) until the limit.
    let mut deliveries = 0;
    loop {
        let delivery = tokio::time::timeout(Duration::from_secs(3), bulk.next()).await;
        let Ok(Some(delivery)) = delivery else { break };
        let delivery = delivery.unwrap();
        assert_eq!(delivery.decode::<Job>().unwrap(), endless);
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
        next(&mut dead).await.decode::<Job>().unwrap(),
        next(&mut dead).await.decode::<Job>().unwrap(),
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

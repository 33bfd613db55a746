//! Exchanges and queues. Every queue is a durable quorum queue: replicated, and
//! with a delivery limit RabbitMQ enforces itself.
//!
//! - `jobs` (direct) → `jobs.bulk` and `jobs.urgent` by routing key `bulk`/`urgent`;
//! - `reports`, filled through the default exchange;
//! - `delay.<n>s.<priority>`: no consumer; a message TTL of n seconds, then
//!   dead-lettered back to `jobs` with the priority's routing key;
//! - `delay.60s.reports`: no consumer; reports whose results could not be
//!   written wait here a minute, then go back to `reports`;
//! - `dead-letter` (fanout exchange and queue): poison messages, messages past
//!   their delivery limit and jobs whose retries ran out, for an operator to read.

use lapin::options::{
    ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{Channel, ExchangeKind};
use protocol::job::Priority;
use protocol::names::{DELAY_STEPS_SECONDS, Names, REPORT_RETRY_SECONDS};

/// How often RabbitMQ delivers a message before dead-lettering it. Deliveries
/// come back when a worker dies holding them; a message that kills every worker
/// that takes it must stop after a few.
pub const DELIVERY_LIMIT: i32 = 5;

const PRIORITIES: [Priority; 2] = [Priority::Bulk, Priority::Urgent];

fn long_string(value: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(value))
}

/// Arguments every flotilla queue shares: quorum, and dead-lettering that does
/// not lose messages (at-least-once needs `reject-publish` overflow).
fn quorum_arguments(dead_letter_exchange: &str) -> FieldTable {
    let mut arguments = FieldTable::default();
    arguments.insert("x-queue-type".into(), long_string("quorum"));
    arguments.insert(
        "x-dead-letter-exchange".into(),
        long_string(dead_letter_exchange),
    );
    arguments.insert(
        "x-dead-letter-strategy".into(),
        long_string("at-least-once"),
    );
    arguments.insert("x-overflow".into(), long_string("reject-publish"));
    arguments
}

fn durable() -> QueueDeclareOptions {
    QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    }
}

/// Declares everything; safe to repeat with the same arguments.
pub async fn declare(channel: &Channel, names: &Names) -> Result<(), lapin::Error> {
    let exchange_options = ExchangeDeclareOptions {
        durable: true,
        ..ExchangeDeclareOptions::default()
    };
    channel
        .exchange_declare(
            names.dead_letter_exchange().into(),
            ExchangeKind::Fanout,
            exchange_options,
            FieldTable::default(),
        )
        .await?;
    let mut dead_letter_arguments = FieldTable::default();
    dead_letter_arguments.insert("x-queue-type".into(), long_string("quorum"));
    channel
        .queue_declare(
            names.dead_letter_queue().into(),
            durable(),
            dead_letter_arguments,
        )
        .await?;
    channel
        .queue_bind(
            names.dead_letter_queue().into(),
            names.dead_letter_exchange().into(),
            "".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;

    channel
        .exchange_declare(
            names.jobs_exchange().into(),
            ExchangeKind::Direct,
            exchange_options,
            FieldTable::default(),
        )
        .await?;
    let mut work_arguments = quorum_arguments(&names.dead_letter_exchange());
    work_arguments.insert(
        "x-delivery-limit".into(),
        AMQPValue::LongInt(DELIVERY_LIMIT),
    );
    for priority in PRIORITIES {
        channel
            .queue_declare(
                names.work_queue(priority).into(),
                durable(),
                work_arguments.clone(),
            )
            .await?;
        channel
            .queue_bind(
                names.work_queue(priority).into(),
                names.jobs_exchange().into(),
                priority.as_str().into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
        for step in DELAY_STEPS_SECONDS {
            let mut delay_arguments = quorum_arguments(&names.jobs_exchange());
            delay_arguments.insert(
                "x-dead-letter-routing-key".into(),
                long_string(priority.as_str()),
            );
            delay_arguments.insert(
                "x-message-ttl".into(),
                AMQPValue::LongInt(i32::try_from(step * 1000).unwrap_or(i32::MAX)),
            );
            channel
                .queue_declare(
                    names.delay_queue_of_step(step, priority).into(),
                    durable(),
                    delay_arguments,
                )
                .await?;
        }
    }
    channel
        .queue_declare(names.reports_queue().into(), durable(), work_arguments)
        .await?;
    // Through the default exchange, straight back to the reports queue.
    let mut report_delay_arguments = quorum_arguments("");
    report_delay_arguments.insert(
        "x-dead-letter-routing-key".into(),
        long_string(&names.reports_queue()),
    );
    report_delay_arguments.insert(
        "x-message-ttl".into(),
        AMQPValue::LongInt(i32::try_from(REPORT_RETRY_SECONDS * 1000).unwrap_or(i32::MAX)),
    );
    channel
        .queue_declare(
            names.reports_delay_queue().into(),
            durable(),
            report_delay_arguments,
        )
        .await?;
    Ok(())
}

/// Every queue name of a deployment (for tests' cleanup and for monitoring).
pub fn queue_names(names: &Names) -> Vec<String> {
    let mut queues = vec![
        names.bulk_queue(),
        names.urgent_queue(),
        names.reports_queue(),
        names.reports_delay_queue(),
        names.dead_letter_queue(),
    ];
    for priority in PRIORITIES {
        for step in DELAY_STEPS_SECONDS {
            queues.push(names.delay_queue_of_step(step, priority));
        }
    }
    queues
}

/// Deletes a deployment's queues and exchanges (test teardown).
pub async fn delete(channel: &Channel, names: &Names) -> Result<(), lapin::Error> {
    for queue in queue_names(names) {
        channel
            .queue_delete(queue.into(), QueueDeleteOptions::default())
            .await?;
    }
    for exchange in [names.jobs_exchange(), names.dead_letter_exchange()] {
        channel
            .exchange_delete(exchange.into(), Default::default())
            .await?;
    }
    Ok(())
}

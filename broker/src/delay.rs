//! Delays without TTLs: a delayed message waits in a plain quorum queue of its
//! step (`delayed.5s.bulk`, …) with the time it is due in a header, and a
//! *delay pump* — a consumer run by every worker (for jobs) and every
//! scheduler (for reports) — publishes it to its destination when it is due,
//! then acks it.
//!
//! Why not RabbitMQ's own delays (a message TTL that dead-letters back to
//! `jobs`), which flotilla used before: with quorum queues, at-least-once
//! dead-lettering is done by a per-queue worker process inside RabbitMQ, and
//! when that process fails to start or register after a restart (RabbitMQ
//! 3.10/3.11; rabbitmq-server#7677, #12625), expired messages stay in the
//! delay queue for good — counted in `messages` but neither ready nor
//! unacked, out of any client's reach. A job stranded there is a batch whose
//! run never ends. A pump holds its deliveries unacked instead: if it, its
//! connection or the broker goes away, they are delivered again to another
//! pump, with their due time, and nothing is stranded. A message can be
//! published twice (forwarded, then the ack lost): jobs and reports are safe
//! to deliver twice.
//!
//! Every message of one queue has the same delay, so the queue is in due
//! order and a pump only ever waits for the message at its head.

use std::time::Duration;

use futures_util::FutureExt;
use protocol::job::Priority;
use protocol::names::{DELAY_STEPS_SECONDS, Names};
use tokio_util::sync::CancellationToken;

use crate::consumer::Delivery;
use crate::publisher::Headers;
use crate::{Broker, BrokerError};

/// Deliveries one pump holds at most per queue. They wait in order, so the
/// cost of a larger number is memory (a job is a few KB) and the work of
/// redelivering them if the pump dies; a smaller one throttles how many
/// messages per second one pump can move when many fall due together.
pub const PUMP_PREFETCH: u16 = 256;

/// One delay queue and where its messages go when due.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DelayQueue {
    pub queue: String,
    pub exchange: String,
    pub routing_key: String,
}

/// The job delay queues (every step of both priorities), back to `jobs`.
pub fn job_delay_queues(names: &Names) -> Vec<DelayQueue> {
    let mut queues = Vec::new();
    for priority in [Priority::Bulk, Priority::Urgent] {
        for step in DELAY_STEPS_SECONDS {
            queues.push(DelayQueue {
                queue: names.delay_queue_of_step(step, priority),
                exchange: names.jobs_exchange(),
                routing_key: priority.as_str().to_string(),
            });
        }
    }
    queues
}

/// The reports delay queue, back to `reports`.
pub fn report_delay_queue(names: &Names) -> DelayQueue {
    DelayQueue {
        queue: names.reports_delay_queue(),
        exchange: String::new(),
        routing_key: names.reports_queue(),
    }
}

fn now_ms() -> u64 {
    protocol::job::UnixMillis::now().0
}

/// Moves `delay`'s messages to their destination as they fall due, until
/// `stop` (held deliveries then return to the queue when the connection
/// closes) or until the connection fails (the error; the caller reconnects).
pub async fn pump(
    broker: Broker,
    delay: DelayQueue,
    tag: String,
    stop: CancellationToken,
) -> Result<(), BrokerError> {
    let mut consumer = broker.consume(&delay.queue, PUMP_PREFETCH, &tag).await?;
    loop {
        let delivery = tokio::select! {
            () = stop.cancelled() => return Ok(()),
            delivery = consumer.next() => delivery,
        };
        let delivery = match delivery {
            Some(Ok(delivery)) => delivery,
            Some(Err(error)) => return Err(error),
            None => return Err(BrokerError::Closed),
        };
        let wait = delivery
            .due_ms()
            .map_or(0, |due| due.saturating_sub(now_ms()));
        if wait > 0 {
            tokio::select! {
                () = stop.cancelled() => return Ok(()),
                () = tokio::time::sleep(Duration::from_millis(wait)) => {}
            }
        }
        // Whatever else this pump already holds and is due goes in the same
        // batch: one round of confirms for many messages when many fall due.
        let mut due = vec![delivery];
        while due.len() < usize::from(PUMP_PREFETCH) {
            let Some(Some(Ok(next))) = consumer.next().now_or_never() else {
                break;
            };
            let is_due = next.due_ms().is_none_or(|due_ms| due_ms <= now_ms());
            due.push(next);
            if !is_due {
                break;
            }
        }
        // The last one taken may not be due yet: it waits for the next round.
        let held = due
            .last()
            .filter(|last| last.due_ms().is_some_and(|due_ms| due_ms > now_ms()))
            .is_some();
        let later = if held { due.pop() } else { None };
        forward(&broker, &delay, due).await?;
        if let Some(later) = later {
            let wait = later
                .due_ms()
                .map_or(0, |due_ms| due_ms.saturating_sub(now_ms()));
            tokio::select! {
                () = stop.cancelled() => return Ok(()),
                () = tokio::time::sleep(Duration::from_millis(wait)) => {}
            }
            forward(&broker, &delay, vec![later]).await?;
        }
    }
}

/// Publishes due deliveries to their destination, confirms pipelined, then
/// acks them.
async fn forward(
    broker: &Broker,
    delay: &DelayQueue,
    deliveries: Vec<Delivery>,
) -> Result<(), BrokerError> {
    let messages: Vec<(&[u8], Headers)> = deliveries
        .iter()
        .map(|delivery| {
            let headers = Headers {
                retries: delivery.retries(),
                due_ms: None,
            };
            (delivery.payload(), headers)
        })
        .collect();
    broker
        .publish_raw_batch(&delay.exchange, &delay.routing_key, messages)
        .await?;
    for delivery in deliveries {
        delivery.ack().await?;
    }
    Ok(())
}

//! Publishing: every message persistent, mandatory (an unroutable message is an
//! error, not a silent drop) and confirmed by the broker before the caller moves
//! on — a job is acked only after what it produced is safely queued.

use std::time::Duration;

use lapin::options::BasicPublishOptions;
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Confirmation};
use protocol::envelope::{self, Message};
use protocol::{Job, Report};

use crate::{Backend, Broker, BrokerError};

/// How many times a job was retried after transient errors (not redeliveries,
/// which RabbitMQ counts itself in `x-delivery-count`).
pub const RETRIES_HEADER: &str = "x-flotilla-retries";

const PERSISTENT: u8 = 2;

impl Broker {
    /// Publishes a job to the work queue of its run's priority.
    pub async fn publish_job(&self, job: &Job) -> Result<(), BrokerError> {
        let routing_key = job.run().priority.as_str();
        self.publish(&self.names().jobs_exchange(), routing_key, job, 0)
            .await
    }

    /// Publishes a job that comes back to its work queue after `delay` (rounded
    /// up to a delay queue), carrying how many retries it has had.
    pub async fn publish_job_after(
        &self,
        job: &Job,
        delay: Duration,
        retries: u32,
    ) -> Result<(), BrokerError> {
        let seconds = u32::try_from(delay.as_secs()).unwrap_or(u32::MAX);
        let queue = self.names().delay_queue(seconds, job.run().priority);
        self.publish("", &queue, job, retries).await
    }

    pub async fn publish_report(&self, report: &Report) -> Result<(), BrokerError> {
        let queue = self.names().reports_queue();
        self.publish("", &queue, report, 0).await
    }

    async fn publish<M: Message>(
        &self,
        exchange: &str,
        routing_key: &str,
        message: &M,
        retries: u32,
    ) -> Result<(), BrokerError> {
        let payload = envelope::encode(message)?;
        let publish_channel = match &self.backend {
            Backend::RabbitMq {
                publish_channel, ..
            } => publish_channel,
            Backend::InProcess(connection) => {
                return connection.publish(exchange, routing_key, payload, retries);
            }
        };
        let mut headers = FieldTable::default();
        headers.insert(RETRIES_HEADER.into(), AMQPValue::LongUInt(retries));
        let properties = BasicProperties::default()
            .with_delivery_mode(PERSISTENT)
            .with_content_type("application/x-flotilla".into())
            .with_headers(headers);
        let options = BasicPublishOptions {
            mandatory: true,
            ..BasicPublishOptions::default()
        };
        let confirmation = publish_channel
            .basic_publish(
                exchange.into(),
                routing_key.into(),
                options,
                &payload,
                properties,
            )
            .await?
            .await?;
        match confirmation {
            Confirmation::Ack(None) => Ok(()),
            Confirmation::Ack(Some(_returned)) => Err(BrokerError::Unroutable(format!(
                "exchange {exchange:?}, routing key {routing_key:?}"
            ))),
            Confirmation::Nack(_) => Err(BrokerError::Nacked),
            // confirm_select is enabled on connect, so this means the channel was replaced.
            Confirmation::NotRequested => Err(BrokerError::Nacked),
        }
    }
}

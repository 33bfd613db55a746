//! Publishing: every message persistent, mandatory (an unroutable message is an
//! error, not a silent drop) and confirmed by the broker before the caller moves
//! on — a job is acked only after what it produced is safely queued.

use std::time::Duration;

use lapin::options::BasicPublishOptions;
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Confirmation, PublisherConfirm};
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

    /// Publishes many jobs with their confirms pipelined: up to
    /// [`PUBLISH_PIPELINE`] are in flight before the first confirm is awaited,
    /// so 20,000 Discover jobs cost a few round trips, not 20,000. Returns how
    /// many were confirmed; on an error, those before it may have been published.
    pub async fn publish_jobs<'a>(
        &self,
        jobs: impl IntoIterator<Item = &'a Job>,
    ) -> Result<usize, BrokerError> {
        let exchange = self.names().jobs_exchange();
        let mut confirmed = 0;
        let mut pending = Vec::with_capacity(PUBLISH_PIPELINE);
        for job in jobs {
            let routing_key = job.run().priority.as_str();
            if matches!(self.backend, Backend::InProcess(_)) {
                // The twin confirms as it takes the message.
                self.publish(&exchange, routing_key, job, 0).await?;
                confirmed += 1;
                continue;
            }
            pending.push((
                self.send(&exchange, routing_key, job, 0).await?,
                routing_key,
            ));
            if pending.len() >= PUBLISH_PIPELINE {
                confirmed += await_confirms(&exchange, &mut pending).await?;
            }
        }
        confirmed += await_confirms(&exchange, &mut pending).await?;
        Ok(confirmed)
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

    /// Publishes a report to come back to the reports queue in
    /// [`protocol::names::REPORT_RETRY_SECONDS`] (its results could not be
    /// written now); `parks` counts how often it did.
    pub async fn publish_report_later(
        &self,
        report: &Report,
        parks: u32,
    ) -> Result<(), BrokerError> {
        let queue = self.names().reports_delay_queue();
        self.publish("", &queue, report, parks).await
    }

    async fn publish<M: Message>(
        &self,
        exchange: &str,
        routing_key: &str,
        message: &M,
        retries: u32,
    ) -> Result<(), BrokerError> {
        if let Backend::InProcess(connection) = &self.backend {
            let payload = envelope::encode(message)?;
            return connection.publish(exchange, routing_key, payload, retries);
        }
        let confirm = self.send(exchange, routing_key, message, retries).await?;
        check_confirmation(exchange, routing_key, confirm.await?)
    }

    /// Sends a message on the confirmed channel; the confirm comes later.
    async fn send<M: Message>(
        &self,
        exchange: &str,
        routing_key: &str,
        message: &M,
        retries: u32,
    ) -> Result<PublisherConfirm, BrokerError> {
        let payload = envelope::encode(message)?;
        let Backend::RabbitMq {
            publish_channel, ..
        } = &self.backend
        else {
            return Err(BrokerError::Closed);
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
        Ok(publish_channel
            .basic_publish(
                exchange.into(),
                routing_key.into(),
                options,
                &payload,
                properties,
            )
            .await?)
    }
}

/// Confirms awaited at most this many publishes after they were sent: enough
/// to hide the round trip, few enough that a failure repeats little work.
pub const PUBLISH_PIPELINE: usize = 512;

async fn await_confirms(
    exchange: &str,
    pending: &mut Vec<(PublisherConfirm, &str)>,
) -> Result<usize, BrokerError> {
    let count = pending.len();
    for (confirm, routing_key) in pending.drain(..) {
        check_confirmation(exchange, routing_key, confirm.await?)?;
    }
    Ok(count)
}

fn check_confirmation(
    exchange: &str,
    routing_key: &str,
    confirmation: Confirmation,
) -> Result<(), BrokerError> {
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

//! Publishing: every message persistent, mandatory (an unroutable message is an
//! error, not a silent drop) and confirmed by the broker before the caller moves
//! on — a job is acked only after what it produced is safely queued.

use std::time::Duration;

use lapin::options::BasicPublishOptions;
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Confirmation, PublisherConfirm};
use protocol::envelope::{self, Message};
use protocol::{Job, Report};

use crate::{Backend, Broker, BrokerError, Delivery};

/// How many times a job was retried after transient errors (not redeliveries,
/// which RabbitMQ counts itself in `x-delivery-count`).
pub const RETRIES_HEADER: &str = "x-flotilla-retries";

/// When a delayed message is due (Unix ms), for the delay pumps
/// (`crate::delay`). Absent on messages that are due at once.
pub const DUE_HEADER: &str = "x-flotilla-due-ms";

const PERSISTENT: u8 = 2;

/// The flotilla headers of one message.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Headers {
    pub(crate) retries: u32,
    pub(crate) due_ms: Option<u64>,
}

fn now_ms() -> u64 {
    protocol::job::UnixMillis::now().0
}

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
            if matches!(self.backend, Backend::Memory(_)) {
                // The in-memory broker confirms as it takes the message.
                self.publish(&exchange, routing_key, job, 0).await?;
                confirmed += 1;
                continue;
            }
            let payload = self.seal(job)?;
            pending.push((
                self.send_raw(&exchange, routing_key, &payload, Headers::default())
                    .await?,
                routing_key,
            ));
            if pending.len() >= PUBLISH_PIPELINE {
                confirmed += await_confirms(&exchange, &mut pending).await?;
            }
        }
        confirmed += await_confirms(&exchange, &mut pending).await?;
        Ok(confirmed)
    }

    /// Publishes a job's envelope exactly as given, to the work queue of
    /// `priority`: a replay. Workers verify it like any other job (the
    /// forgery tests use it; an operator could re-drive a dead-lettered job).
    pub async fn publish_sealed_job(
        &self,
        priority: protocol::job::Priority,
        payload: &[u8],
    ) -> Result<(), BrokerError> {
        let exchange = self.names().jobs_exchange();
        self.publish_raw(&exchange, priority.as_str(), payload, Headers::default())
            .await
    }

    /// Publishes a report's envelope exactly as given (see [`Broker::publish_sealed_job`]).
    pub async fn publish_sealed_report(&self, payload: &[u8]) -> Result<(), BrokerError> {
        let queue = self.names().reports_queue();
        self.publish_raw("", &queue, payload, Headers::default())
            .await
    }

    /// Publishes a new job (signed by this service) that comes to its work
    /// queue after `delay` (rounded up to a delay queue's step).
    pub async fn publish_job_after(&self, job: &Job, delay: Duration) -> Result<(), BrokerError> {
        self.defer_new_job(job, delay, 0).await
    }

    /// [`Self::publish_job_after`] for a job that has had `retries` retries
    /// (a job a worker took on from its delivery, such as a poll in place).
    pub async fn defer_new_job(
        &self,
        job: &Job,
        delay: Duration,
        retries: u32,
    ) -> Result<(), BrokerError> {
        self.delay_job_bytes(&self.seal(job)?, job.run().priority, delay, retries)
            .await
    }

    /// Sends a delivered job back to the work queue of `priority` after
    /// `delay`, carrying how many retries it has had. The bytes go back as
    /// they came, signature and all: a worker cannot re-sign a scheduler's
    /// job, and need not.
    pub async fn defer_job(
        &self,
        delivery: &Delivery,
        priority: protocol::job::Priority,
        delay: Duration,
        retries: u32,
    ) -> Result<(), BrokerError> {
        self.delay_job_bytes(delivery.payload(), priority, delay, retries)
            .await
    }

    async fn delay_job_bytes(
        &self,
        payload: &[u8],
        priority: protocol::job::Priority,
        delay: Duration,
        retries: u32,
    ) -> Result<(), BrokerError> {
        let seconds = u32::try_from(delay.as_secs()).unwrap_or(u32::MAX);
        let step = protocol::names::delay_step(seconds);
        let queue = self.names().delay_queue_of_step(step, priority);
        let headers = Headers {
            retries,
            due_ms: Some(now_ms() + u64::from(step) * 1000),
        };
        self.publish_raw("", &queue, payload, headers).await
    }

    fn seal<M: Message>(&self, message: &M) -> Result<Vec<u8>, BrokerError> {
        Ok(envelope::seal_with(
            message,
            self.keyring(),
            protocol::job::UnixMillis::now(),
        )?)
    }

    pub async fn publish_report(&self, report: &Report) -> Result<(), BrokerError> {
        let queue = self.names().reports_queue();
        self.publish("", &queue, report, 0).await
    }

    /// Several reports in one message (see [`protocol::report::Reports`]).
    pub async fn publish_reports(
        &self,
        reports: &protocol::report::Reports,
    ) -> Result<(), BrokerError> {
        let queue = self.names().reports_queue();
        self.publish("", &queue, reports, 0).await
    }

    /// Sends a delivered report back to the reports queue in
    /// [`protocol::names::REPORT_RETRY_SECONDS`] (its results could not be
    /// written now), as it came (the worker's signature stays); `parks`
    /// counts how often it did.
    pub async fn defer_report(&self, delivery: &Delivery, parks: u32) -> Result<(), BrokerError> {
        let queue = self.names().reports_delay_queue();
        let headers = Headers {
            retries: parks,
            due_ms: Some(now_ms() + u64::from(protocol::names::REPORT_RETRY_SECONDS) * 1000),
        };
        self.publish_raw("", &queue, delivery.payload(), headers)
            .await
    }

    async fn publish<M: Message>(
        &self,
        exchange: &str,
        routing_key: &str,
        message: &M,
        retries: u32,
    ) -> Result<(), BrokerError> {
        let headers = Headers {
            retries,
            due_ms: None,
        };
        self.publish_raw(exchange, routing_key, &self.seal(message)?, headers)
            .await
    }

    /// Publishes an encoded message and waits for its confirm.
    pub(crate) async fn publish_raw(
        &self,
        exchange: &str,
        routing_key: &str,
        payload: &[u8],
        headers: Headers,
    ) -> Result<(), BrokerError> {
        if let Backend::Memory(connection) = &self.backend {
            return connection.publish(exchange, routing_key, payload.to_vec(), headers);
        }
        let confirm = self
            .send_raw(exchange, routing_key, payload, headers)
            .await?;
        check_confirmation(exchange, routing_key, confirm.await?)
    }

    /// Publishes encoded messages to one destination with their confirms
    /// pipelined, as [`Broker::publish_jobs`] does.
    pub(crate) async fn publish_raw_batch<'a>(
        &self,
        exchange: &str,
        routing_key: &str,
        messages: impl IntoIterator<Item = (&'a [u8], Headers)>,
    ) -> Result<usize, BrokerError> {
        let mut confirmed = 0;
        let mut pending = Vec::with_capacity(PUBLISH_PIPELINE);
        for (payload, headers) in messages {
            if matches!(self.backend, Backend::Memory(_)) {
                self.publish_raw(exchange, routing_key, payload, headers)
                    .await?;
                confirmed += 1;
                continue;
            }
            pending.push((
                self.send_raw(exchange, routing_key, payload, headers)
                    .await?,
                routing_key,
            ));
            if pending.len() >= PUBLISH_PIPELINE {
                confirmed += await_confirms(exchange, &mut pending).await?;
            }
        }
        confirmed += await_confirms(exchange, &mut pending).await?;
        Ok(confirmed)
    }

    /// Sends an encoded message on the confirmed channel; the confirm comes
    /// later (RabbitMQ only).
    pub(crate) async fn send_raw(
        &self,
        exchange: &str,
        routing_key: &str,
        payload: &[u8],
        headers: Headers,
    ) -> Result<PublisherConfirm, BrokerError> {
        let Backend::RabbitMq {
            publish_channel, ..
        } = &self.backend
        else {
            return Err(BrokerError::Closed);
        };
        let mut table = FieldTable::default();
        table.insert(RETRIES_HEADER.into(), AMQPValue::LongUInt(headers.retries));
        if let Some(due_ms) = headers.due_ms {
            table.insert(
                DUE_HEADER.into(),
                AMQPValue::LongLongInt(i64::try_from(due_ms).unwrap_or(i64::MAX)),
            );
        }
        let properties = BasicProperties::default()
            .with_delivery_mode(PERSISTENT)
            .with_content_type("application/x-flotilla".into())
            .with_headers(table);
        let options = BasicPublishOptions {
            mandatory: true,
            ..BasicPublishOptions::default()
        };
        Ok(publish_channel
            .basic_publish(
                exchange.into(),
                routing_key.into(),
                options,
                payload,
                properties,
            )
            .await?)
    }
}

/// Confirms awaited at most this many publishes after they were sent: enough
/// to hide the round trip, few enough that a failure repeats little work.
pub const PUBLISH_PIPELINE: usize = 512;

pub(crate) async fn await_confirms(
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

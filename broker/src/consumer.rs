//! Consuming with manual acks. Prefetch bounds what one consumer holds unacked:
//! it is the in-flight limit of whoever consumes, and raising it costs memory and
//! redelivery work when that consumer dies.

use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions,
    BasicRejectOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use protocol::envelope::{self, EnvelopeError, Message};

use crate::publisher::RETRIES_HEADER;
use crate::{Broker, BrokerError};

/// One received message; settle it exactly once with `ack`, `requeue` or
/// `dead_letter` (dropping it unsettled leaves it to the broker, which
/// redelivers it when the channel closes).
#[derive(Debug)]
pub struct Delivery {
    inner: lapin::message::Delivery,
}

impl Delivery {
    pub fn decode<M: Message>(&self) -> Result<M, EnvelopeError> {
        envelope::decode(&self.inner.data)
    }

    /// Retries after transient errors so far (set by the publisher).
    pub fn retries(&self) -> u32 {
        self.header_u32(RETRIES_HEADER)
    }

    /// Earlier deliveries of this message that were not acked (RabbitMQ's count).
    pub fn earlier_deliveries(&self) -> u32 {
        self.header_u32("x-delivery-count")
    }

    pub fn redelivered(&self) -> bool {
        self.inner.redelivered
    }

    fn header_u32(&self, name: &str) -> u32 {
        let Some(headers) = self.inner.properties.headers() else {
            return 0;
        };
        match headers.inner().get(name) {
            Some(AMQPValue::LongUInt(value)) => *value,
            Some(AMQPValue::LongInt(value)) => u32::try_from(*value).unwrap_or(0),
            Some(AMQPValue::LongLongInt(value)) => u32::try_from(*value).unwrap_or(0),
            Some(AMQPValue::ShortUInt(value)) => u32::from(*value),
            Some(AMQPValue::ShortInt(value)) => u32::try_from(*value).unwrap_or(0),
            Some(AMQPValue::ShortShortUInt(value)) => u32::from(*value),
            _ => 0,
        }
    }

    /// Done: the broker forgets the message.
    pub async fn ack(self) -> Result<(), BrokerError> {
        self.inner.ack(BasicAckOptions::default()).await?;
        Ok(())
    }

    /// Put it back for another consumer (counts toward the delivery limit).
    pub async fn requeue(self) -> Result<(), BrokerError> {
        let options = BasicNackOptions {
            requeue: true,
            ..BasicNackOptions::default()
        };
        self.inner.nack(options).await?;
        Ok(())
    }

    /// Never process it again: off to the dead-letter queue.
    pub async fn dead_letter(self) -> Result<(), BrokerError> {
        self.inner
            .reject(BasicRejectOptions { requeue: false })
            .await?;
        Ok(())
    }
}

/// Deliveries of one queue on their own channel.
pub struct Consumer {
    channel: lapin::Channel,
    tag: String,
    inner: lapin::Consumer,
}

impl Consumer {
    /// The next delivery; `None` when the consumer was cancelled or its
    /// connection closed.
    pub async fn next(&mut self) -> Option<Result<Delivery, BrokerError>> {
        let delivery = self.inner.next().await?;
        Some(
            delivery
                .map(|inner| Delivery { inner })
                .map_err(BrokerError::from),
        )
    }

    /// Stops new deliveries; those already received can still be settled.
    pub async fn cancel(&self) -> Result<(), BrokerError> {
        self.channel
            .basic_cancel(self.tag.as_str().into(), BasicCancelOptions::default())
            .await?;
        Ok(())
    }
}

impl Broker {
    /// Consumes `queue` on a new channel holding at most `prefetch` unacked deliveries.
    pub async fn consume(
        &self,
        queue: &str,
        prefetch: u16,
        tag: &str,
    ) -> Result<Consumer, BrokerError> {
        let channel = self.new_channel().await?;
        channel
            .basic_qos(prefetch, BasicQosOptions::default())
            .await?;
        let inner = channel
            .basic_consume(
                queue.into(),
                tag.into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        Ok(Consumer {
            channel,
            tag: tag.to_string(),
            inner,
        })
    }

    /// Messages ready in each work, report and dead-letter queue (for metrics).
    pub async fn queue_depths(&self) -> Result<Vec<(String, u32)>, BrokerError> {
        let channel = self.new_channel().await?;
        let names = self.names();
        let mut depths = Vec::new();
        for queue in [
            names.bulk_queue(),
            names.urgent_queue(),
            names.reports_queue(),
            names.dead_letter_queue(),
        ] {
            let declared = channel
                .queue_declare(
                    queue.as_str().into(),
                    lapin::options::QueueDeclareOptions {
                        passive: true,
                        ..Default::default()
                    },
                    FieldTable::default(),
                )
                .await?;
            depths.push((queue, declared.message_count()));
        }
        let _ = channel.close(200, "done".into()).await;
        Ok(depths)
    }

    /// Deletes this deployment's queues and exchanges (test teardown).
    pub async fn delete_topology(&self) -> Result<(), BrokerError> {
        let channel = self.new_channel().await?;
        crate::topology::delete(&channel, self.names()).await?;
        Ok(())
    }
}

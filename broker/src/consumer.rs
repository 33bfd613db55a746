//! Consuming with manual acks. Prefetch bounds what one consumer holds unacked:
//! it is the in-flight limit of whoever consumes, and raising it costs memory and
//! redelivery work when that consumer dies.

use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions,
    BasicRejectOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use protocol::envelope::{self, EnvelopeError, Message, Opened};
use protocol::job::UnixMillis;
use protocol::signing::Keyring;

use crate::publisher::{DUE_HEADER, RETRIES_HEADER};
use crate::{Backend, Broker, BrokerError, memory};

/// One received message; settle it exactly once with `ack`, `requeue` or
/// `dead_letter` (dropping it unsettled leaves it to the broker, which
/// redelivers it when the channel closes).
#[derive(Debug)]
pub struct Delivery {
    inner: DeliveryInner,
}

// The RabbitMQ variant is the production one: boxing it would cost an
// allocation per delivery to save bytes for the demo's.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
enum DeliveryInner {
    RabbitMq(lapin::message::Delivery),
    Memory(memory::Delivery),
}

impl Delivery {
    /// Verifies the message's signature and age against `keyring`, then
    /// decodes it (see `protocol::envelope::open`).
    pub fn open<M: Message>(&self, keyring: &Keyring) -> Result<Opened<M>, EnvelopeError> {
        envelope::open(self.payload(), keyring, UnixMillis::now())
    }

    /// [`Self::open`] for the reports queue, which carries single reports
    /// and bundles ([`protocol::report::Reports`]): either way, the reports.
    pub fn open_reports(
        &self,
        keyring: &Keyring,
    ) -> Result<Opened<Vec<protocol::Report>>, EnvelopeError> {
        use protocol::report::Reports;
        let opened = match self.open::<Reports>(keyring) {
            Err(EnvelopeError::WrongKind { found, .. })
                if found == envelope::MessageKind::Report as u8 =>
            {
                let one = self.open::<protocol::Report>(keyring)?;
                Opened {
                    message: Reports(vec![one.message]),
                    signer: one.signer,
                    key_id: one.key_id,
                    signed_at: one.signed_at,
                }
            }
            opened => opened?,
        };
        Ok(Opened {
            message: opened.message.0,
            signer: opened.signer,
            key_id: opened.key_id,
            signed_at: opened.signed_at,
        })
    }

    /// A short fingerprint of the message's bytes, for logs and the audit
    /// trail of a message that could not be opened (its ids cannot be trusted).
    pub fn fingerprint(&self) -> String {
        use sha2::Digest as _;
        hex::encode(&sha2::Sha256::digest(self.payload())[..8])
    }

    /// Retries after transient errors so far (set by the publisher).
    pub fn retries(&self) -> u32 {
        match &self.inner {
            DeliveryInner::RabbitMq(inner) => header_u32(inner, RETRIES_HEADER),
            DeliveryInner::Memory(inner) => inner.retries,
        }
    }

    /// When a delayed message is due (Unix ms); `None` for messages due at once.
    pub fn due_ms(&self) -> Option<u64> {
        match &self.inner {
            DeliveryInner::RabbitMq(inner) => {
                let headers = inner.properties.headers().as_ref()?;
                match headers.inner().get(DUE_HEADER)? {
                    AMQPValue::LongLongInt(value) => u64::try_from(*value).ok(),
                    AMQPValue::LongUInt(value) => Some(u64::from(*value)),
                    AMQPValue::LongInt(value) => u64::try_from(*value).ok(),
                    _ => None,
                }
            }
            DeliveryInner::Memory(inner) => inner.due_ms,
        }
    }

    /// The encoded message, as published.
    pub(crate) fn payload(&self) -> &[u8] {
        match &self.inner {
            DeliveryInner::RabbitMq(inner) => &inner.data,
            DeliveryInner::Memory(inner) => &inner.payload,
        }
    }

    /// Earlier deliveries of this message that were not acked (RabbitMQ's count).
    pub fn earlier_deliveries(&self) -> u32 {
        match &self.inner {
            DeliveryInner::RabbitMq(inner) => header_u32(inner, "x-delivery-count"),
            DeliveryInner::Memory(inner) => inner.returned,
        }
    }

    pub fn redelivered(&self) -> bool {
        match &self.inner {
            DeliveryInner::RabbitMq(inner) => inner.redelivered,
            DeliveryInner::Memory(inner) => inner.returned > 0,
        }
    }

    /// Done: the broker forgets the message.
    pub async fn ack(self) -> Result<(), BrokerError> {
        match self.inner {
            DeliveryInner::RabbitMq(inner) => {
                inner.ack(BasicAckOptions::default()).await?;
            }
            DeliveryInner::Memory(inner) => inner.ack()?,
        }
        Ok(())
    }

    /// Put it back for another consumer (counts toward the delivery limit).
    pub async fn requeue(self) -> Result<(), BrokerError> {
        match self.inner {
            DeliveryInner::RabbitMq(inner) => {
                let options = BasicNackOptions {
                    requeue: true,
                    ..BasicNackOptions::default()
                };
                inner.nack(options).await?;
            }
            DeliveryInner::Memory(inner) => inner.requeue()?,
        }
        Ok(())
    }

    /// Never process it again: off to the dead-letter queue.
    pub async fn dead_letter(self) -> Result<(), BrokerError> {
        match self.inner {
            DeliveryInner::RabbitMq(inner) => {
                inner.reject(BasicRejectOptions { requeue: false }).await?;
            }
            DeliveryInner::Memory(inner) => inner.dead_letter()?,
        }
        Ok(())
    }
}

fn header_u32(delivery: &lapin::message::Delivery, name: &str) -> u32 {
    let Some(headers) = delivery.properties.headers() else {
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

/// Deliveries of one queue on their own channel.
pub struct Consumer {
    inner: ConsumerInner,
}

// The RabbitMQ variant is the production one: boxing it would cost an
// allocation per delivery to save bytes for the demo's.
#[allow(clippy::large_enum_variant)]
enum ConsumerInner {
    RabbitMq {
        channel: lapin::Channel,
        tag: String,
        inner: lapin::Consumer,
    },
    Memory(memory::Consumer),
}

impl Consumer {
    /// The next delivery; `None` when the consumer was cancelled or its
    /// connection closed.
    pub async fn next(&mut self) -> Option<Result<Delivery, BrokerError>> {
        match &mut self.inner {
            ConsumerInner::RabbitMq { inner, .. } => {
                let delivery = inner.next().await?;
                Some(
                    delivery
                        .map(|inner| Delivery {
                            inner: DeliveryInner::RabbitMq(inner),
                        })
                        .map_err(BrokerError::from),
                )
            }
            ConsumerInner::Memory(inner) => inner.next().await.map(|inner| {
                Ok(Delivery {
                    inner: DeliveryInner::Memory(inner),
                })
            }),
        }
    }

    /// Stops new deliveries; those already received can still be settled.
    pub async fn cancel(&self) -> Result<(), BrokerError> {
        match &self.inner {
            ConsumerInner::RabbitMq { channel, tag, .. } => {
                channel
                    .basic_cancel(tag.as_str().into(), BasicCancelOptions::default())
                    .await?;
            }
            ConsumerInner::Memory(inner) => inner.cancel(),
        }
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
        let connection = match &self.backend {
            Backend::RabbitMq { connection, .. } => connection,
            Backend::Memory(connection) => {
                return Ok(Consumer {
                    inner: ConsumerInner::Memory(connection.consume(queue, prefetch)?),
                });
            }
        };
        let channel = connection.create_channel().await?;
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
            inner: ConsumerInner::RabbitMq {
                channel,
                tag: tag.to_string(),
                inner,
            },
        })
    }

    /// Messages ready in each work, report and dead-letter queue (for metrics).
    pub async fn queue_depths(&self) -> Result<Vec<(String, u32)>, BrokerError> {
        let names = self.names();
        let queues = [
            names.bulk_queue(),
            names.urgent_queue(),
            names.reports_queue(),
            names.dead_letter_queue(),
        ];
        let connection = match &self.backend {
            Backend::RabbitMq { connection, .. } => connection,
            Backend::Memory(connection) => {
                return queues
                    .into_iter()
                    .map(|queue| {
                        let ready = connection.ready_count(&queue)?;
                        Ok((queue, ready))
                    })
                    .collect();
            }
        };
        let channel = connection.create_channel().await?;
        let mut depths = Vec::new();
        for queue in queues {
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
        match &self.backend {
            Backend::RabbitMq { connection, .. } => {
                let channel = connection.create_channel().await?;
                crate::topology::delete(&channel, self.names()).await?;
            }
            Backend::Memory(connection) => connection.delete_topology(self.names()),
        }
        Ok(())
    }
}

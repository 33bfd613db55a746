//! flotilla's RabbitMQ adapter, shared by scheduler and worker so neither depends
//! on the other.
//!
//! - [`topology`]: the exchanges and quorum queues (work, reports, delay, dead
//!   letter) and why each argument is set.
//! - [`publisher`]: confirmed, persistent publishing of jobs and reports, now or
//!   after a delay.
//! - [`consumer`]: consuming with a bounded prefetch and manual acks; a
//!   [`consumer::Delivery`] is settled exactly once.
//!
//! Connections are not repaired in place: when the broker goes away, callers
//! drop the [`Broker`] and connect again with backoff (unacked deliveries of the
//! old connection are redelivered by RabbitMQ to whoever consumes next).

pub mod consumer;
pub mod publisher;
pub mod topology;

use lapin::options::ConfirmSelectOptions;
use lapin::{Channel, Connection, ConnectionProperties};
use protocol::envelope::EnvelopeError;
use protocol::names::Names;

pub use consumer::Delivery;

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error(
        "RabbitMQ at {url} is unreachable ({source}); start it with `rabbitmq-server -detached` or `docker compose up -d rabbitmq`"
    )]
    Unreachable { url: String, source: lapin::Error },
    #[error("RabbitMQ error: {0}")]
    Amqp(#[from] lapin::Error),
    #[error("RabbitMQ refused to take the message (publisher confirm was a nack)")]
    Nacked,
    #[error("the message could not be routed to any queue: {0}")]
    Unroutable(String),
    #[error("message is not a flotilla message: {0}")]
    Envelope(#[from] EnvelopeError),
}

impl BrokerError {
    /// A broker that went away or refused a message may accept it later; a
    /// message that cannot be decoded never will.
    pub fn is_retryable(&self) -> bool {
        !matches!(self, Self::Envelope(_))
    }
}

/// One connection: a confirmed publishing channel, and channels for consumers.
#[derive(Clone)]
pub struct Broker {
    connection: std::sync::Arc<Connection>,
    publish_channel: Channel,
    names: Names,
}

impl std::fmt::Debug for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Broker")
            .field("prefix", &self.names.prefix())
            .finish()
    }
}

impl Broker {
    /// Connects, declares the topology (idempotent) and enables publisher confirms.
    pub async fn connect(
        url: &str,
        names: Names,
        connection_name: &str,
    ) -> Result<Self, BrokerError> {
        let properties =
            ConnectionProperties::default().with_connection_name(connection_name.into());
        let connection = Connection::connect(url, properties)
            .await
            .map_err(|source| BrokerError::Unreachable {
                url: protocol::redact_password(url),
                source,
            })?;
        let publish_channel = connection.create_channel().await?;
        topology::declare(&publish_channel, &names).await?;
        publish_channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        Ok(Self {
            connection: std::sync::Arc::new(connection),
            publish_channel,
            names,
        })
    }

    pub fn names(&self) -> &Names {
        &self.names
    }

    /// False once the connection failed or closed: drop this broker and reconnect.
    pub fn is_connected(&self) -> bool {
        self.connection.status().connected() && self.publish_channel.status().connected()
    }

    pub(crate) async fn new_channel(&self) -> Result<Channel, BrokerError> {
        Ok(self.connection.create_channel().await?)
    }

    /// Closes the connection; unacked deliveries go back to their queues.
    pub async fn close(&self) {
        // Closing a connection that already failed has nothing left to do.
        let _ = self
            .connection
            .close(200, "flotilla shutting down".into())
            .await;
    }
}

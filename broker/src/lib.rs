//! flotilla's RabbitMQ adapter, shared by scheduler and worker so neither depends
//! on the other.
//!
//! - [`topology`]: the exchanges and quorum queues (work, reports, delay, dead
//!   letter) and why each argument is set.
//! - [`publisher`]: confirmed, persistent publishing of jobs and reports, now or
//!   after a delay.
//! - [`consumer`]: consuming with a bounded prefetch and manual acks; a
//!   [`consumer::Delivery`] is settled exactly once.
//! - [`memory`]: the in-process twin (`memory://<name>` URLs) with the same
//!   topology and settlement semantics, for the demo and tests.
//!
//! Connections are not repaired in place: when the broker goes away, callers
//! drop the [`Broker`] and connect again with backoff (unacked deliveries of the
//! old connection are redelivered by RabbitMQ to whoever consumes next).

pub mod consumer;
pub mod memory;
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
    #[error("the connection to the broker is closed; connect again")]
    Closed,
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
    backend: Backend,
    names: Names,
}

#[derive(Clone)]
enum Backend {
    RabbitMq {
        connection: std::sync::Arc<Connection>,
        publish_channel: Channel,
    },
    InProcess(memory::Connection),
}

impl std::fmt::Debug for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Broker")
            .field("prefix", &self.names.prefix())
            .finish()
    }
}

impl Broker {
    /// Connects, declares the topology (idempotent) and enables publisher
    /// confirms. A `memory://<name>` URL connects to the in-process hub of that name.
    pub async fn connect(
        url: &str,
        names: Names,
        connection_name: &str,
    ) -> Result<Self, BrokerError> {
        if let Some(hub) = protocol::names::in_process_name(url) {
            return Ok(Self::in_process(memory::hub(hub), names));
        }
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
            backend: Backend::RabbitMq {
                connection: std::sync::Arc::new(connection),
                publish_channel,
            },
            names,
        })
    }

    /// A connection to an in-process hub (declares the topology there).
    pub fn in_process(hub: memory::Hub, names: Names) -> Self {
        Self {
            backend: Backend::InProcess(memory::Connection::open(hub, &names)),
            names,
        }
    }

    pub fn names(&self) -> &Names {
        &self.names
    }

    /// False once the connection failed or closed: drop this broker and reconnect.
    pub fn is_connected(&self) -> bool {
        match &self.backend {
            Backend::RabbitMq {
                connection,
                publish_channel,
            } => connection.status().connected() && publish_channel.status().connected(),
            Backend::InProcess(connection) => connection.is_open(),
        }
    }

    /// Closes the connection; unacked deliveries go back to their queues.
    pub async fn close(&self) {
        match &self.backend {
            Backend::RabbitMq { connection, .. } => {
                // Closing a connection that already failed has nothing left to do.
                let _ = connection.close(200, "flotilla shutting down".into()).await;
            }
            Backend::InProcess(connection) => connection.close(),
        }
    }
}

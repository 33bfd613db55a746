//! flotilla's RabbitMQ adapter, shared by scheduler and worker so neither depends
//! on the other.
//!
//! - [`topology`]: the exchanges and quorum queues (work, reports, delay, dead
//!   letter) and why each argument is set.
//! - [`publisher`]: confirmed, persistent publishing of jobs and reports, now or
//!   after a delay.
//! - [`consumer`]: consuming with a bounded prefetch and manual acks; a
//!   [`consumer::Delivery`] is settled exactly once.
//! - [`delay`]: the delay pumps that move delayed jobs and reports back when
//!   they are due (no TTLs, no dead-lettering), and why.
//! - [`memory`]: the in-memory backend (`memory://<name>` URLs) with the same
//!   topology and settlement semantics, for the demo and tests.
//!
//! Connections are not repaired in place: when the broker goes away, callers
//! drop the [`Broker`] and connect again with backoff (unacked deliveries of the
//! old connection are redelivered by RabbitMQ to whoever consumes next).

pub mod consumer;
pub mod delay;
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
    #[error(
        "RabbitMQ at {url} accepted the connection but did not complete the AMQP handshake within {seconds} s (is it out of file handles or memory? see its log)"
    )]
    HandshakeTimeout { url: String, seconds: u64 },
    #[error("RabbitMQ error: {0}")]
    Amqp(#[from] lapin::Error),
    #[error("RabbitMQ CA file {path}: {why}")]
    CaFile { path: String, why: String },
    #[error("RabbitMQ refused to take the message (publisher confirm was a nack)")]
    Nacked,
    #[error("the message could not be routed to any queue: {0}")]
    Unroutable(String),
    #[error("the connection to the broker is closed; connect again")]
    Closed,
    #[error("message is not a flotilla message: {0}")]
    Envelope(#[from] EnvelopeError),
    #[error("{0}")]
    Invalid(String),
    /// The deployment's queues and exchanges are not there: services only
    /// check them; the setup step declares them.
    #[error(
        "RabbitMQ has no flotilla queues for prefix {prefix} ({why}): declare them once with `flotilla admin arm --prefix {prefix}` as a broker user that may configure `^{prefix}\\.` (deploy/rabbitmq/users.sh: flotilla-setup)"
    )]
    NoTopology { prefix: String, why: String },
    /// A message carrying several (a bundle of reports) failed as a whole;
    /// each sender hears why. Retryable unless the failure was this
    /// sender's own message (a bundle of one that can never be published).
    #[error("the message carrying this one was not published: {why}")]
    NotPublished { why: String, retryable: bool },
}

impl BrokerError {
    /// A broker that went away or refused a message may accept it later; a
    /// message that cannot be decoded never will.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Envelope(_) | Self::CaFile { .. } | Self::Invalid(_) => false,
            Self::NotPublished { retryable, .. } => *retryable,
            _ => true,
        }
    }
}

/// How long a connection may take from TCP connect to the end of the AMQP
/// handshake. A broker out of file handles accepts TCP and then never answers;
/// without a bound, a service would wait there forever and log nothing.
pub const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// The AMQP heartbeat a connection asks for unless its URL sets one
/// (`?heartbeat=N`; RabbitMQ's own default is 60 s). A connection that went
/// half-open — its peer gone without a FIN or a reset, as behind a dead NAT
/// or a cut link — is given up after two intervals of silence, by lapin on
/// this side and by RabbitMQ on its side, which then hands the connection's
/// unacked jobs to other workers: within about 20 s instead of two minutes.
pub const HEARTBEAT_SECONDS: u16 = 10;

/// TLS to RabbitMQ: an `amqps://` URL, checked against the system's roots or
/// against the CA of `ca_file` (PEM).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BrokerTls {
    pub ca_file: Option<std::path::PathBuf>,
}

/// The largest CA file read.
const MAX_CA_FILE_BYTES: u64 = 1024 * 1024;

impl BrokerTls {
    fn config(&self) -> Result<lapin::tcp::OwnedTLSConfig, BrokerError> {
        let Some(path) = &self.ca_file else {
            return Ok(lapin::tcp::OwnedTLSConfig::default());
        };
        let unreadable = |why: String| BrokerError::CaFile {
            path: path.display().to_string(),
            why,
        };
        let size = std::fs::metadata(path)
            .map_err(|error| unreadable(error.to_string()))?
            .len();
        if size > MAX_CA_FILE_BYTES {
            return Err(unreadable(format!(
                "{size} bytes; at most {MAX_CA_FILE_BYTES} are read"
            )));
        }
        let pem = std::fs::read_to_string(path).map_err(|error| unreadable(error.to_string()))?;
        Ok(lapin::tcp::OwnedTLSConfig {
            identity: None,
            cert_chain: Some(pem),
        })
    }
}

/// At most this many broker URLs in one `--amqp-url`.
pub const MAX_BROKER_URLS: usize = 16;

/// Opens an AMQP connection within [`CONNECT_TIMEOUT`] to the first of the
/// comma-separated URLs that answers — the nodes of a RabbitMQ cluster, tried
/// in order on every connect and reconnect. The last failure is returned.
async fn open_connection(
    urls: &str,
    connection_name: &str,
    tls: &BrokerTls,
) -> Result<Connection, BrokerError> {
    let urls: Vec<&str> = urls.split(',').map(str::trim).collect();
    if urls.len() > MAX_BROKER_URLS {
        return Err(BrokerError::Invalid(format!(
            "--amqp-url lists {} brokers; at most {MAX_BROKER_URLS} are allowed",
            urls.len()
        )));
    }
    let mut last = None;
    for url in urls {
        match open_one(url, connection_name, tls).await {
            Ok(connection) => return Ok(connection),
            Err(error) => {
                tracing::warn!(url = %protocol::redact_password(url), %error, "broker unreachable; trying the next");
                last = Some(error);
            }
        }
    }
    Err(last.unwrap_or_else(|| BrokerError::Invalid("--amqp-url is empty".into())))
}

async fn open_one(
    url: &str,
    connection_name: &str,
    tls: &BrokerTls,
) -> Result<Connection, BrokerError> {
    let properties = ConnectionProperties::default().with_connection_name(connection_name.into());
    let builder = lapin::ConnectionBuilder::new()?;
    let builder = match url.parse::<lapin::uri::AMQPUri>() {
        Ok(mut uri) => {
            uri.query.heartbeat.get_or_insert(HEARTBEAT_SECONDS);
            builder.with_uri(uri)
        }
        // Refused again by lapin, with its reason.
        Err(_) => builder.with_uri_str(url.to_string()),
    };
    let builder = builder
        .with_properties(properties)
        .with_tls_config(tls.config()?);
    match tokio::time::timeout(CONNECT_TIMEOUT, builder.connect()).await {
        Ok(connected) => connected.map_err(|source| BrokerError::Unreachable {
            url: protocol::redact_password(url),
            source,
        }),
        Err(_) => Err(BrokerError::HandshakeTimeout {
            url: protocol::redact_password(url),
            seconds: CONNECT_TIMEOUT.as_secs(),
        }),
    }
}

/// One connection: a confirmed publishing channel, and channels for consumers.
#[derive(Clone)]
pub struct Broker {
    backend: Backend,
    names: Names,
    /// Signs everything this connection publishes.
    keyring: protocol::signing::Keyring,
}

#[derive(Clone)]
enum Backend {
    RabbitMq {
        connection: std::sync::Arc<Connection>,
        publish_channel: Channel,
    },
    Memory(memory::Connection),
}

/// One queue's ready messages and consumers, as the broker counts them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueDepth {
    pub queue: String,
    pub messages: u32,
    pub consumers: u32,
}

impl std::fmt::Debug for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Broker")
            .field("prefix", &self.names.prefix())
            .finish()
    }
}

impl Broker {
    /// Connects, checks the deployment's topology is there (declaring
    /// nothing: [`Broker::declare_topology`] does, once) and enables
    /// publisher confirms. A `memory://<name>` URL connects to the in-memory
    /// hub of that name.
    pub async fn connect(
        url: &str,
        names: Names,
        connection_name: &str,
    ) -> Result<Self, BrokerError> {
        Self::connect_with(url, names, connection_name, &BrokerTls::default()).await
    }

    /// [`Broker::connect`], with a CA for `amqps://` URLs.
    pub async fn connect_with(
        url: &str,
        names: Names,
        connection_name: &str,
        tls: &BrokerTls,
    ) -> Result<Self, BrokerError> {
        let missing = |why: String| BrokerError::NoTopology {
            prefix: names.prefix().to_string(),
            why,
        };
        if let Some(hub) = protocol::names::in_memory_name(url) {
            let hub = memory::hub(hub);
            if !hub.has_topology(&names) {
                return Err(missing("the in-memory broker has none".into()));
            }
            return Ok(Self::in_memory(hub, names));
        }
        let connection = open_connection(url, connection_name, tls).await?;
        let publish_channel = connection.create_channel().await?;
        if let Err(error) = topology::verify(&publish_channel, &names).await {
            let _ = connection.close(200, "no topology".into()).await;
            return Err(match error.kind() {
                lapin::ErrorKind::ProtocolError(amqp)
                    if matches!(
                        amqp.kind(),
                        lapin::protocol::AMQPErrorKind::Soft(
                            lapin::protocol::AMQPSoftError::NOTFOUND
                        )
                    ) =>
                {
                    missing(amqp.get_message().to_string())
                }
                _ => error.into(),
            });
        }
        publish_channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        Ok(Self {
            backend: Backend::RabbitMq {
                connection: std::sync::Arc::new(connection),
                publish_channel,
            },
            names,
            keyring: protocol::signing::Keyring::default(),
        })
    }

    /// Declares a deployment's exchanges and queues (idempotent): the setup
    /// step of a new deployment (`flotilla admin arm`), with a broker user
    /// that may configure the prefix's resources. Services only check them.
    pub async fn declare_topology(
        url: &str,
        names: &Names,
        tls: &BrokerTls,
    ) -> Result<(), BrokerError> {
        if let Some(hub) = protocol::names::in_memory_name(url) {
            memory::hub(hub).declare(names);
            return Ok(());
        }
        let connection = open_connection(url, "flotilla-admin-setup", tls).await?;
        let channel = connection.create_channel().await?;
        let declared = topology::declare(&channel, names).await;
        let _ = connection.close(200, "declared".into()).await;
        Ok(declared?)
    }

    /// Signs what it publishes with `keyring`'s signing key. Without one (the
    /// default), every publish fails: nothing unsigned leaves a service.
    pub fn with_keyring(mut self, keyring: protocol::signing::Keyring) -> Self {
        self.keyring = keyring;
        self
    }

    pub fn keyring(&self) -> &protocol::signing::Keyring {
        &self.keyring
    }

    /// Deletes a deployment's queues and exchanges, whatever they hold, without
    /// declaring anything (`flotilla admin purge`, test cleanup). Services of
    /// that deployment still running wait for `flotilla admin arm` to
    /// declare them again.
    pub async fn delete_deployment(url: &str, names: &Names) -> Result<(), BrokerError> {
        if let Some(hub) = protocol::names::in_memory_name(url) {
            memory::hub(hub).delete(names);
            return Ok(());
        }
        let connection =
            open_connection(url, "flotilla-admin-purge", &BrokerTls::default()).await?;
        let channel = connection.create_channel().await?;
        let deleted = topology::delete(&channel, names).await;
        let _ = connection.close(200, "purged".into()).await;
        Ok(deleted?)
    }

    /// A connection to an in-memory hub (whose topology was declared).
    fn in_memory(hub: memory::Hub, names: Names) -> Self {
        Self {
            backend: Backend::Memory(memory::Connection::open(hub)),
            names,
            keyring: protocol::signing::Keyring::default(),
        }
    }

    pub fn names(&self) -> &Names {
        &self.names
    }

    /// The work queues (bulk and urgent jobs): messages ready and consumers
    /// now. A queue with messages and no consumer is work no worker takes:
    /// `run show` says so.
    pub async fn job_queue_depths(&self) -> Result<Vec<QueueDepth>, BrokerError> {
        let queues = [self.names.bulk_queue(), self.names.urgent_queue()];
        let mut depths = Vec::with_capacity(queues.len());
        match &self.backend {
            Backend::RabbitMq { connection, .. } => {
                // A channel of its own: a passive declare of a missing queue
                // closes the channel it is made on.
                let channel = connection.create_channel().await?;
                let options = lapin::options::QueueDeclareOptions {
                    passive: true,
                    ..lapin::options::QueueDeclareOptions::default()
                };
                for queue in queues {
                    let declared = channel
                        .queue_declare(
                            queue.as_str().into(),
                            options,
                            lapin::types::FieldTable::default(),
                        )
                        .await;
                    match declared {
                        Ok(declared) => depths.push(QueueDepth {
                            messages: declared.message_count(),
                            consumers: declared.consumer_count(),
                            queue,
                        }),
                        Err(error) => return Err(error.into()),
                    }
                }
                let _ = channel.close(200, "depths read".into()).await;
            }
            Backend::Memory(connection) => {
                for queue in queues {
                    let (messages, consumers) = connection.depth(&queue)?;
                    depths.push(QueueDepth {
                        queue,
                        messages,
                        consumers,
                    });
                }
            }
        }
        Ok(depths)
    }

    /// False once the connection failed or closed: drop this broker and reconnect.
    pub fn is_connected(&self) -> bool {
        match &self.backend {
            Backend::RabbitMq {
                connection,
                publish_channel,
            } => connection.status().connected() && publish_channel.status().connected(),
            Backend::Memory(connection) => connection.is_open(),
        }
    }

    /// Closes the connection; unacked deliveries go back to their queues.
    pub async fn close(&self) {
        match &self.backend {
            Backend::RabbitMq { connection, .. } => {
                // Closing a connection that already failed has nothing left to do.
                let _ = connection.close(200, "flotilla shutting down".into()).await;
            }
            Backend::Memory(connection) => connection.close(),
        }
    }
}

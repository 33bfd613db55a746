//! The one seam between flotilla and its state: a connection that speaks the
//! Redis protocol, to a real Redis (`redis://`, `rediss://`) or to the
//! in-memory one (`memory://<name>`, [`crate::memory`]). Everything above it —
//! the store's kill switch, buckets and claims, the scheduler's run ledger,
//! campaigns, schedules, audit and tokens — is written once, as Redis commands
//! and Lua scripts, and runs unchanged on either.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use redis::AsyncCommands;
use redis::aio::ConnectionManagerConfig;
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
use redis::{Cmd, ErrorKind, Pipeline, RedisFuture, ServerErrorKind, Value};

use crate::StoreError;
use crate::endpoint::Endpoint;
use crate::memory::MemoryRedis;
use crate::node::NodeConnection;

/// TLS to Redis: a `rediss://` URL, checked against the system's roots or
/// against the CA of `ca_file` (PEM) — a private CA, as ElastiCache's in-transit
/// encryption or a self-run Redis with `tls-port` uses.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RedisTls {
    pub ca_file: Option<std::path::PathBuf>,
}

/// The largest CA file read.
const MAX_CA_FILE_BYTES: u64 = 1024 * 1024;

impl RedisTls {
    fn root_cert(&self) -> Result<Option<Vec<u8>>, StoreError> {
        let Some(path) = &self.ca_file else {
            return Ok(None);
        };
        let unreadable = |error: std::io::Error| {
            StoreError::Unexpected(format!("Redis CA file {}: {error}", path.display()))
        };
        let size = std::fs::metadata(path).map_err(unreadable)?.len();
        if size > MAX_CA_FILE_BYTES {
            return Err(StoreError::Unexpected(format!(
                "Redis CA file {} is {size} bytes; at most {MAX_CA_FILE_BYTES} are read",
                path.display()
            )));
        }
        std::fs::read(path).map(Some).map_err(unreadable)
    }
}

/// A cheap-to-clone connection onto one Redis, real or in memory, and how
/// many replicas must hold a write before [`Connection::replicated`] says so.
#[derive(Clone)]
pub struct Connection {
    link: Link,
    wait_replicas: u32,
}

/// Where the commands go.
#[derive(Clone)]
enum Link {
    /// One node, by its URL or the master Sentinel names; replaced when it
    /// stops answering.
    Node(NodeConnection),
    /// A Redis Cluster: commands go to the master of their key's slot and
    /// follow MOVED/ASK and failovers by themselves.
    Cluster {
        /// One client per seed node, for pub/sub (see [`Connection::subscribe`]).
        seeds: Arc<[redis::Client]>,
        connection: ClusterConnection,
    },
    Memory(MemoryRedis),
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self.link {
            Link::Node(_) => "Redis",
            Link::Cluster { .. } => "Cluster",
            Link::Memory(_) => "Memory",
        };
        f.debug_struct("Connection")
            .field("kind", &kind)
            .field("wait_replicas", &self.wait_replicas)
            .finish()
    }
}

/// Answers must come within a second: the kill switch is re-read every
/// second, and a Redis that does not answer must stop workers (fail closed)
/// rather than stall them. Reconnects back off up to a second.
pub(crate) const RESPONSE_TIMEOUT: Duration = Duration::from_secs(1);

/// How long [`Connection::replicated`] waits for the replicas: well inside
/// [`RESPONSE_TIMEOUT`], and far more than a replica on the same network
/// takes to acknowledge.
pub const REPLICA_WAIT: Duration = Duration::from_millis(500);

pub(crate) fn manager_config() -> ConnectionManagerConfig {
    ConnectionManagerConfig::new()
        .set_connection_timeout(Some(RESPONSE_TIMEOUT))
        .set_response_timeout(Some(RESPONSE_TIMEOUT))
        .set_number_of_retries(2)
        .set_max_delay(RESPONSE_TIMEOUT)
}

/// Makes aws-lc-rs the process's rustls crypto provider: the one the AWS
/// SDK, lapin and the API build, for Redis's TLS here and every ureq
/// client (`scheduler::ureq_tls`); ring is not built at all. Installing it
/// again is harmless.
pub fn install_tls_provider() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

impl Connection {
    /// Connects (and reconnects by itself later); fails at once if Redis does
    /// not answer. The URL forms are [`Endpoint`]'s.
    pub async fn open(url: &str, tls: &RedisTls) -> Result<Self, StoreError> {
        let (endpoint, options) = Endpoint::parse_with_options(url)?;
        let hint = endpoint.unreachable_hint();
        let unreachable = |source| StoreError::Unreachable {
            url: protocol::redact_password(url),
            source,
            hint,
        };
        crate::install_tls_provider();
        let root_cert = tls.root_cert()?;
        let certificates = || redis::TlsCertificates {
            client_tls: None,
            root_cert: root_cert.clone(),
        };
        let link = match endpoint {
            Endpoint::Memory(name) => MemoryRedis::named(&name)
                .map(Link::Memory)
                .map_err(StoreError::Unexpected),
            Endpoint::Node(url) => {
                let client = match &root_cert {
                    Some(_) if url.starts_with("rediss://") => {
                        redis::Client::build_with_tls(url.as_str(), certificates())
                    }
                    Some(_) => return Err(not_tls(&url)),
                    None => redis::Client::open(url.as_str()),
                }
                .map_err(unreachable)?;
                NodeConnection::open(client)
                    .await
                    .map(Link::Node)
                    .map_err(unreachable)
            }
            Endpoint::Cluster { seeds } => {
                if root_cert.is_some() && !seeds.iter().all(|seed| seed.starts_with("rediss://")) {
                    return Err(not_tls(url));
                }
                let mut builder = ClusterClientBuilder::new(seeds.clone())
                    .connection_timeout(RESPONSE_TIMEOUT)
                    .response_timeout(RESPONSE_TIMEOUT);
                let mut clients = Vec::with_capacity(seeds.len());
                for seed in &seeds {
                    clients.push(
                        match &root_cert {
                            Some(_) => redis::Client::build_with_tls(seed.as_str(), certificates()),
                            None => redis::Client::open(seed.as_str()),
                        }
                        .map_err(unreachable)?,
                    );
                }
                if root_cert.is_some() {
                    builder = builder.certs(certificates());
                }
                let client = builder.build().map_err(unreachable)?;
                let connection = client.get_async_connection().await.map_err(unreachable)?;
                Ok(Link::Cluster {
                    seeds: clients.into(),
                    connection,
                })
            }
            Endpoint::Sentinel { .. } if root_cert.is_some() => Err(StoreError::Unexpected(
                "a Redis CA file is not supported through Sentinel; use the system's roots".into(),
            )),
            Endpoint::Sentinel {
                sentinels,
                master,
                username,
                password,
                tls,
            } => NodeConnection::open_sentinel(sentinels, &master, username, password, tls)
                .await
                .map(Link::Node)
                .map_err(unreachable),
        }?;
        Ok(Self {
            link,
            wait_replicas: options.wait_replicas,
        })
    }

    /// Returns once `wait_replicas` replicas (the URL's `?wait_replicas=N`;
    /// none by default) hold every write this connection has made to the
    /// node of `key`, or fails (retryably) after [`REPLICA_WAIT`]. A write
    /// acknowledged by Redis but not yet replicated is lost when its master
    /// dies and a replica takes over; a caller that must not lose a write —
    /// the run ledger before it acks a report or publishes a job, a worker's
    /// claim before it sends — calls this after it.
    ///
    /// `WAIT` counts the writes of the connection it is sent on, so it goes
    /// to the very node (the master of `key`'s slot) on the multiplexed
    /// connection the write went through. It is not consensus: two writes
    /// racing a failover can still both be lost with a replica that did not
    /// get them promoted. It is what Redis offers.
    pub async fn replicated(&self, key: &str) -> Result<(), StoreError> {
        if self.wait_replicas == 0 {
            return Ok(());
        }
        let mut wait = redis::cmd("WAIT");
        wait.arg(self.wait_replicas)
            .arg(REPLICA_WAIT.as_millis() as u64);
        let acked: u32 = match &self.link {
            Link::Cluster { connection, .. } => {
                let route = Route::new(protocol::names::hash_slot(key), SlotAddr::Master);
                let routing = RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(route));
                replicas_acked(
                    connection.clone().route_command(wait, routing).await?,
                    self.wait_replicas,
                )?
            }
            _ => wait.query_async(&mut self.clone()).await?,
        };
        if acked < self.wait_replicas {
            return Err(StoreError::NotReplicated {
                wanted: self.wait_replicas,
                acked,
            });
        }
        Ok(())
    }

    /// Wakes the receiver on every message published to `channel`. The
    /// receiver closes if the subscription is lost.
    ///
    /// In a cluster this is classic (not sharded) pub/sub on the first seed
    /// node that answers: Redis Cluster forwards every PUBLISH to every node,
    /// so any one node hears the kill switch, and the subscriber does not have
    /// to follow a slot's master through failovers as SSUBSCRIBE would. The
    /// switch changes seldom, so the cluster-wide broadcast costs nothing.
    pub async fn subscribe(
        &self,
        channel: &str,
    ) -> Result<tokio::sync::mpsc::Receiver<()>, StoreError> {
        let (sender, receiver) = tokio::sync::mpsc::channel(16);
        let client = match &self.link {
            Link::Node(node) => node.client(),
            Link::Cluster { seeds, .. } => {
                let mut pubsub = None;
                let mut last_error = None;
                for seed in seeds.iter() {
                    match seed.get_async_pubsub().await {
                        Ok(opened) => {
                            pubsub = Some(opened);
                            break;
                        }
                        Err(error) => last_error = Some(error),
                    }
                }
                let Some(mut pubsub) = pubsub else {
                    return Err(match last_error {
                        Some(error) => error.into(),
                        None => StoreError::Unexpected("a cluster URL without nodes".into()),
                    });
                };
                pubsub.subscribe(channel).await?;
                forward(pubsub, sender);
                return Ok(receiver);
            }
            Link::Memory(memory) => {
                let mut messages = memory.subscribe(channel);
                tokio::spawn(async move {
                    while messages.recv().await.is_some() {
                        if !wake(&sender) {
                            return;
                        }
                    }
                });
                return Ok(receiver);
            }
        };
        let mut pubsub = client.get_async_pubsub().await?;
        pubsub.subscribe(channel).await?;
        forward(pubsub, sender);
        Ok(receiver)
    }

    /// Redis's clock (`TIME`, Unix ms): the clock every service shares
    /// (`protocol::clock`); `None` in memory, which runs on this host's.
    pub async fn server_time_ms(&self) -> Result<Option<u64>, StoreError> {
        if matches!(self.link, Link::Memory(_)) {
            return Ok(None);
        }
        let (seconds, micros): (u64, u64) =
            redis::cmd("TIME").query_async(&mut self.clone()).await?;
        Ok(Some(
            seconds.saturating_mul(1_000).saturating_add(micros / 1_000),
        ))
    }

    /// Every key matching `pattern`, from every master of a cluster.
    pub async fn scan_keys(&self, pattern: &str) -> Result<Vec<String>, StoreError> {
        let mut keys = Vec::new();
        match &self.link {
            Link::Cluster { connection, .. } => {
                let mut connection = connection.clone();
                for (host, port) in cluster_masters(&mut connection).await? {
                    let mut cursor = 0u64;
                    loop {
                        let mut scan = redis::cmd("SCAN");
                        scan.arg(cursor)
                            .arg("MATCH")
                            .arg(pattern)
                            .arg("COUNT")
                            .arg(1000);
                        let routing = RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress {
                            host: host.clone(),
                            port,
                        });
                        let reply = connection.route_command(scan, routing).await?;
                        let (next, batch): (u64, Vec<String>) = parsed(reply)?;
                        keys.extend(batch);
                        if next == 0 {
                            break;
                        }
                        cursor = next;
                    }
                }
            }
            _ => {
                let mut connection = self.clone();
                let mut iter: redis::AsyncIter<String> = connection.scan_match(pattern).await?;
                while let Some(key) = iter.next_item().await {
                    keys.push(key?);
                }
            }
        }
        Ok(keys)
    }
}

fn not_tls(url: &str) -> StoreError {
    StoreError::Unexpected(format!(
        "a Redis CA file is set but {} is not a TLS URL (rediss://, rediss+cluster://)",
        protocol::redact_password(url)
    ))
}

/// The masters of a cluster, as `CLUSTER SLOTS` lists them (host, port).
async fn cluster_masters(
    connection: &mut ClusterConnection,
) -> Result<Vec<(String, u16)>, StoreError> {
    let reply = connection
        .route_command(
            redis::cmd("CLUSTER").arg("SLOTS").clone(),
            RoutingInfo::SingleNode(SingleNodeRoutingInfo::Random),
        )
        .await?;
    let ranges: Vec<Vec<Value>> = parsed(reply)?;
    let mut masters = Vec::new();
    for range in ranges {
        let Some(master) = range.into_iter().nth(2) else {
            continue;
        };
        let node: Vec<Value> = parsed(master)?;
        let mut fields = node.into_iter();
        let (Some(host), Some(port)) = (fields.next(), fields.next()) else {
            return Err(StoreError::Unexpected(
                "CLUSTER SLOTS listed a node without host and port".into(),
            ));
        };
        let node = (parsed::<String>(host)?, parsed::<u16>(port)?);
        if !masters.contains(&node) {
            masters.push(node);
        }
    }
    Ok(masters)
}

/// WAIT's answer from the node that held `key`'s slot: how many replicas
/// acknowledged. An error from a node that is no master any more (WAIT
/// cannot be used with replica instances: a failover moved the slot since
/// the write) says the write is not known to be replicated — retried like
/// too few replicas, never the end of a job.
fn replicas_acked(answer: Value, wanted: u32) -> Result<u32, StoreError> {
    match answer {
        Value::ServerError(_) => Err(StoreError::NotReplicated { wanted, acked: 0 }),
        answer => parsed(answer),
    }
}

fn parsed<T: redis::FromRedisValue>(value: Value) -> Result<T, StoreError> {
    redis::from_redis_value(value)
        .map_err(|error| StoreError::Unexpected(format!("a cluster node answered: {error}")))
}

fn forward(pubsub: redis::aio::PubSub, sender: tokio::sync::mpsc::Sender<()>) {
    tokio::spawn(async move {
        let mut messages = pubsub.into_on_message();
        while messages.next().await.is_some() {
            if !wake(&sender) {
                return;
            }
        }
    });
}

/// False once nobody listens. A full channel already holds a wake-up.
fn wake(sender: &tokio::sync::mpsc::Sender<()>) -> bool {
    !matches!(
        sender.try_send(()),
        Err(tokio::sync::mpsc::error::TrySendError::Closed(()))
    )
}

impl redis::aio::ConnectionLike for Connection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match &mut self.link {
            Link::Node(node) => node.req_packed_command(cmd),
            Link::Cluster { connection, .. } => connection.req_packed_command(cmd),
            Link::Memory(memory) => memory.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match &mut self.link {
            Link::Node(node) => node.req_packed_commands(pipeline, offset, count),
            Link::Cluster { connection, .. } => Box::pin(async move {
                match connection
                    .req_packed_commands(pipeline, offset, count)
                    .await
                {
                    // redis-rs sends a pipeline to one slot's master; a plain
                    // (not MULTI) pipeline over keys of several slots goes
                    // command by command, in order — the same effect, with
                    // more round trips. A transaction over several slots
                    // cannot exist in a cluster and fails.
                    Err(error)
                        if error.kind() == ErrorKind::Server(ServerErrorKind::CrossSlot)
                            && !pipeline.is_transaction() =>
                    {
                        let mut replies = Vec::with_capacity(count);
                        for cmd in pipeline.cmd_iter().skip(offset).take(count) {
                            replies.push(connection.req_packed_command(cmd).await?);
                        }
                        Ok(replies)
                    }
                    other => other,
                }
            }),
            Link::Memory(memory) => memory.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match &self.link {
            Link::Node(node) => node.get_db(),
            Link::Cluster { connection, .. } => connection.get_db(),
            Link::Memory(memory) => memory.get_db(),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// Seen in the soak: a Redis Cluster failover demoted the node a worker's
    /// WAIT went to between its write and the WAIT; the error reply was
    /// taken for garbage and the job dead-lettered.
    #[test]
    fn a_wait_answered_by_a_demoted_master_is_retried() {
        let demoted = redis::parse_redis_value(
            b"-ERR WAIT cannot be used with replica instances. Please also note that since Redis 4.0 if a replica is configured to be writable (which is not the default) writes to replicas are just local and are not propagated.\r\n",
        )
        .unwrap();
        let error = replicas_acked(demoted, 1).unwrap_err();
        assert!(error.is_retryable(), "{error}");
        assert_eq!(replicas_acked(Value::Int(1), 1).unwrap(), 1);
        assert!(!replicas_acked(Value::Nil, 1).unwrap_err().is_retryable());
    }
}

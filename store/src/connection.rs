//! The one seam between flotilla and its state: a connection that speaks the
//! Redis protocol, to a real Redis (`redis://`, `rediss://`) or to the
//! in-memory one (`memory://<name>`, [`crate::memory`]). Everything above it —
//! the store's kill switch, buckets and claims, the scheduler's run ledger,
//! campaigns, schedules, audit and tokens — is written once, as Redis commands
//! and Lua scripts, and runs unchanged on either.

use std::time::Duration;

use futures_util::StreamExt;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Cmd, Pipeline, RedisFuture, Value};

use crate::StoreError;
use crate::memory::MemoryRedis;

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

/// A cheap-to-clone connection onto one Redis, real or in memory.
#[derive(Clone)]
pub enum Connection {
    Redis {
        /// For pub/sub, which needs a connection of its own (boxed: it is
        /// large and seldom used).
        client: Box<redis::Client>,
        manager: ConnectionManager,
    },
    Memory(MemoryRedis),
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Redis { .. } => f.write_str("Connection::Redis"),
            Self::Memory(_) => f.write_str("Connection::Memory"),
        }
    }
}

impl Connection {
    /// Connects (and reconnects by itself later); fails at once if Redis does
    /// not answer. `memory://<name>` opens the in-memory Redis of that name.
    pub async fn open(url: &str, tls: &RedisTls) -> Result<Self, StoreError> {
        if let Some(name) = protocol::names::in_memory_name(url) {
            return MemoryRedis::named(name)
                .map(Self::Memory)
                .map_err(StoreError::Unexpected);
        }
        let unreachable = |source| StoreError::Unreachable {
            url: protocol::redact_password(url),
            source,
        };
        // rustls needs one crypto provider for the process; the SDKs bring
        // two. Installing it again is harmless.
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let client = match tls.root_cert()? {
            Some(root_cert) if url.starts_with("rediss://") => redis::Client::build_with_tls(
                url,
                redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(root_cert),
                },
            ),
            Some(_) => {
                return Err(StoreError::Unexpected(format!(
                    "a Redis CA file is set but {} is not a rediss:// URL",
                    protocol::redact_password(url)
                )));
            }
            None => redis::Client::open(url),
        }
        .map_err(unreachable)?;
        // Answers must come within a second: the kill switch is re-read every
        // second, and a Redis that does not answer must stop workers (fail closed)
        // rather than stall them. Reconnects back off up to a second.
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(1)))
            .set_response_timeout(Some(Duration::from_secs(1)))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_secs(1));
        let manager = ConnectionManager::new_with_config(client.clone(), config)
            .await
            .map_err(unreachable)?;
        Ok(Self::Redis {
            client: Box::new(client),
            manager,
        })
    }

    /// Wakes the receiver on every message published to `channel`. The
    /// receiver closes if the subscription is lost.
    pub async fn subscribe(
        &self,
        channel: &str,
    ) -> Result<tokio::sync::mpsc::Receiver<()>, StoreError> {
        let (sender, receiver) = tokio::sync::mpsc::channel(16);
        match self {
            Self::Redis { client, .. } => {
                let mut pubsub = client.get_async_pubsub().await?;
                pubsub.subscribe(channel).await?;
                tokio::spawn(async move {
                    let mut messages = pubsub.into_on_message();
                    while messages.next().await.is_some() {
                        if !wake(&sender) {
                            return;
                        }
                    }
                });
            }
            Self::Memory(memory) => {
                let mut messages = memory.subscribe(channel);
                tokio::spawn(async move {
                    while messages.recv().await.is_some() {
                        if !wake(&sender) {
                            return;
                        }
                    }
                });
            }
        }
        Ok(receiver)
    }
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
        match self {
            Self::Redis { manager, .. } => manager.req_packed_command(cmd),
            Self::Memory(memory) => memory.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Redis { manager, .. } => manager.req_packed_commands(pipeline, offset, count),
            Self::Memory(memory) => memory.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Redis { manager, .. } => manager.get_db(),
            Self::Memory(memory) => memory.get_db(),
        }
    }
}

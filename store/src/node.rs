//! A connection to one Redis node — named by its URL, or the master Redis
//! Sentinel names — that is replaced when the node stops answering: after a
//! response timeout (a half-open connection, whose peer vanished without a
//! FIN or a reset, would otherwise time out command after command until TCP
//! gives up, minutes later: redis-rs reconnects only on errors of the
//! connection itself), and, through Sentinel, also when the master is gone
//! or turns out to be a replica (after a failover the old master comes back
//! read-only) — asking the sentinels again. The command that met the
//! failure fails — callers retry what [`StoreError::is_retryable`] allows —
//! and the next one goes out on the new connection.
//!
//! [`StoreError::is_retryable`]: crate::StoreError::is_retryable

use std::sync::{Arc, Mutex, PoisonError};

use redis::aio::{ConnectionLike, ConnectionManager};
use redis::sentinel::{SentinelClient, SentinelNodeConnectionInfo, SentinelServerType};
use redis::{Cmd, ErrorKind, Pipeline, RedisError, RedisFuture, RedisResult, Value};

use crate::connection::manager_config;

#[derive(Clone)]
pub struct NodeConnection {
    inner: Arc<Inner>,
}

/// Where a new connection goes.
enum Source {
    Url(redis::Client),
    Sentinel(SentinelClient),
}

struct Inner {
    source: tokio::sync::Mutex<Source>,
    /// Found through Sentinel: a lost master is asked for again.
    sentinel: bool,
    /// The node's connection, how many times it was replaced, and its client
    /// (for pub/sub).
    current: Mutex<(u64, ConnectionManager, redis::Client)>,
}

impl NodeConnection {
    /// The node of `client`'s URL.
    pub(crate) async fn open(client: redis::Client) -> RedisResult<Self> {
        Self::from_source(Source::Url(client)).await
    }

    /// The master the sentinels name.
    pub(crate) async fn open_sentinel(
        sentinels: Vec<String>,
        master: &str,
        username: Option<String>,
        password: Option<String>,
        tls: bool,
    ) -> RedisResult<Self> {
        let mut redis_info = redis::RedisConnectionInfo::default();
        if let Some(username) = username {
            redis_info = redis_info.set_username(username);
        }
        if let Some(password) = password {
            redis_info = redis_info.set_password(password);
        }
        let mut node_info =
            SentinelNodeConnectionInfo::default().set_redis_connection_info(redis_info);
        if tls {
            node_info = node_info.set_tls_mode(redis::TlsMode::Secure);
        }
        let sentinel = SentinelClient::build(
            sentinels,
            master,
            Some(node_info),
            SentinelServerType::Master,
        )?;
        Self::from_source(Source::Sentinel(sentinel)).await
    }

    async fn from_source(mut source: Source) -> RedisResult<Self> {
        let (manager, client) = source.connect().await?;
        Ok(Self {
            inner: Arc::new(Inner {
                sentinel: matches!(source, Source::Sentinel(_)),
                source: tokio::sync::Mutex::new(source),
                current: Mutex::new((0, manager, client)),
            }),
        })
    }

    fn current(&self) -> (u64, ConnectionManager) {
        let current = self
            .inner
            .current
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        (current.0, current.1.clone())
    }

    /// A client of the current node, for pub/sub.
    pub(crate) fn client(&self) -> redis::Client {
        let current = self
            .inner
            .current
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        current.2.clone()
    }

    /// Connects again, once for every connection that failed (concurrent
    /// failures of one connection replace it once).
    async fn replace(&self, failed: u64) {
        let mut source = self.inner.source.lock().await;
        if self.current().0 != failed {
            return;
        }
        match source.connect().await {
            Ok((manager, client)) => {
                let mut current = self
                    .inner
                    .current
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner);
                *current = (failed + 1, manager, client);
                tracing::info!(node = source.describe(), "redis: connected again");
            }
            Err(error) => {
                tracing::warn!(node = source.describe(), %error, "redis: cannot connect again yet")
            }
        }
    }

    pub(crate) fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        Box::pin(async move {
            let (generation, mut manager) = self.current();
            let result = manager.req_packed_command(cmd).await;
            if let Err(error) = &result
                && self.lost(error)
            {
                self.replace(generation).await;
            }
            result
        })
    }

    pub(crate) fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        Box::pin(async move {
            let (generation, mut manager) = self.current();
            let result = manager.req_packed_commands(pipeline, offset, count).await;
            if let Err(error) = &result
                && self.lost(error)
            {
                self.replace(generation).await;
            }
            result
        })
    }

    pub(crate) fn get_db(&self) -> i64 {
        self.current().1.get_db()
    }

    /// The connection is to be replaced: it timed out (or, through
    /// Sentinel, the master is gone or is one no longer). Errors of the
    /// connection itself, through a URL, redis-rs mends by itself.
    fn lost(&self, error: &RedisError) -> bool {
        if error.is_timeout() {
            return true;
        }
        self.inner.sentinel
            && (error.is_io_error()
                || error.is_connection_dropped()
                || error.is_connection_refusal()
                || error.kind() == ErrorKind::Server(redis::ServerErrorKind::ReadOnly))
    }
}

impl Source {
    async fn connect(&mut self) -> RedisResult<(ConnectionManager, redis::Client)> {
        let client = match self {
            Source::Url(client) => client.clone(),
            Source::Sentinel(sentinel) => sentinel.async_get_client().await?,
        };
        let manager = ConnectionManager::new_with_config(client.clone(), manager_config()).await?;
        Ok((manager, client))
    }

    fn describe(&self) -> &'static str {
        match self {
            Source::Url(_) => "by URL",
            Source::Sentinel(_) => "the master Sentinel names",
        }
    }
}

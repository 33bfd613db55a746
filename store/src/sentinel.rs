//! A connection to the master Redis Sentinel names, that asks the sentinels
//! again when the master stops answering or turns out to be a replica (after
//! a failover the old master comes back read-only). The command that met the
//! failure fails — callers retry what [`StoreError::is_retryable`] allows —
//! and the next one goes to the new master.

use std::sync::{Arc, Mutex, PoisonError};

use redis::aio::{ConnectionLike, ConnectionManager};
use redis::sentinel::{SentinelClient, SentinelNodeConnectionInfo, SentinelServerType};
use redis::{Cmd, ErrorKind, Pipeline, RedisError, RedisFuture, RedisResult, Value};

use crate::connection::manager_config;

#[derive(Clone)]
pub struct SentinelConnection {
    inner: Arc<Inner>,
}

struct Inner {
    sentinel: tokio::sync::Mutex<SentinelClient>,
    /// The master's connection and how many times it was replaced.
    current: Mutex<(u64, ConnectionManager, redis::Client)>,
}

impl SentinelConnection {
    pub(crate) async fn open(
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
        let mut sentinel = SentinelClient::build(
            sentinels,
            master,
            Some(node_info),
            SentinelServerType::Master,
        )?;
        let (manager, client) = connect_master(&mut sentinel).await?;
        Ok(Self {
            inner: Arc::new(Inner {
                sentinel: tokio::sync::Mutex::new(sentinel),
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

    /// A client of the current master, for pub/sub.
    pub(crate) fn master_client(&self) -> redis::Client {
        let current = self
            .inner
            .current
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        current.2.clone()
    }

    /// Asks the sentinels for the master again, once for every connection
    /// that failed (concurrent failures of one connection ask once).
    async fn rediscover(&self, failed: u64) {
        let mut sentinel = self.inner.sentinel.lock().await;
        if self.current().0 != failed {
            return;
        }
        match connect_master(&mut sentinel).await {
            Ok((manager, client)) => {
                let mut current = self
                    .inner
                    .current
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner);
                *current = (failed + 1, manager, client);
                tracing::info!("redis sentinel: connected to the master again");
            }
            Err(error) => tracing::warn!(%error, "redis sentinel: no master found yet"),
        }
    }

    pub(crate) fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        Box::pin(async move {
            let (generation, mut manager) = self.current();
            let result = manager.req_packed_command(cmd).await;
            if let Err(error) = &result
                && master_lost(error)
            {
                self.rediscover(generation).await;
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
                && master_lost(error)
            {
                self.rediscover(generation).await;
            }
            result
        })
    }

    pub(crate) fn get_db(&self) -> i64 {
        self.current().1.get_db()
    }
}

async fn connect_master(
    sentinel: &mut SentinelClient,
) -> RedisResult<(ConnectionManager, redis::Client)> {
    let client = sentinel.async_get_client().await?;
    let manager = ConnectionManager::new_with_config(client.clone(), manager_config()).await?;
    Ok((manager, client))
}

/// The master is gone or is one no longer (READONLY: a demoted master).
fn master_lost(error: &RedisError) -> bool {
    error.is_io_error()
        || error.is_connection_dropped()
        || error.is_connection_refusal()
        || error.is_timeout()
        || error.kind() == ErrorKind::Server(redis::ServerErrorKind::ReadOnly)
}

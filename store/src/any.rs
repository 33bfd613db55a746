//! Either backend behind one type, chosen by URL: `redis://…` for Redis,
//! `memory://<name>` for the in-process twin of that name. What services hold,
//! so the same scheduler and worker code runs in the demo and in production.

use uuid::Uuid;

use protocol::names::{Names, in_process_name};
use protocol::run::RunState;

use crate::redis_store::RedisTls;
use crate::{
    BucketId, KillScope, MemoryStore, RedisStore, SendClaim, SendGate, Store, StoreError,
    TokenGrant, TokenRequest,
};

// The Redis variant is the production one (TLS made its client larger):
// boxing it would cost an indirection on every call to save bytes for the demo's.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
pub enum AnyStore {
    Redis(RedisStore),
    InProcess(MemoryStore),
}

impl AnyStore {
    pub async fn connect(url: &str, names: Names) -> Result<Self, StoreError> {
        Self::connect_with(url, names, &RedisTls::default()).await
    }

    /// [`AnyStore::connect`], with a CA for `rediss://` URLs.
    pub async fn connect_with(url: &str, names: Names, tls: &RedisTls) -> Result<Self, StoreError> {
        match in_process_name(url) {
            Some(name) => Ok(Self::InProcess(MemoryStore::named(name))),
            None => Ok(Self::Redis(
                RedisStore::connect_with(url, names, tls).await?,
            )),
        }
    }

    /// The Redis backend, for code that keeps more than the store in Redis.
    pub fn redis(&self) -> Option<&RedisStore> {
        match self {
            Self::Redis(store) => Some(store),
            Self::InProcess(_) => None,
        }
    }
}

/// Calls the same method on whichever backend this is.
macro_rules! on_backend {
    ($self:ident, $store:ident => $call:expr) => {
        match $self {
            AnyStore::Redis($store) => $call.await,
            AnyStore::InProcess($store) => $call.await,
        }
    };
}

impl Store for AnyStore {
    async fn engage_kill_switch(&self, scope: &KillScope, reason: &str) -> Result<(), StoreError> {
        on_backend!(self, store => store.engage_kill_switch(scope, reason))
    }

    async fn request_cancel_in_flight(&self, scope: &KillScope) -> Result<(), StoreError> {
        on_backend!(self, store => store.request_cancel_in_flight(scope))
    }

    async fn init_kill_switch(&self) -> Result<bool, StoreError> {
        on_backend!(self, store => store.init_kill_switch())
    }

    async fn run_contract(
        &self,
        run_id: Uuid,
        campaign: &str,
        location: &str,
    ) -> Result<Option<crate::ContractReading>, StoreError> {
        on_backend!(self, store => store.run_contract(run_id, campaign, location))
    }

    async fn release_kill_switch(&self, scope: &KillScope) -> Result<(), StoreError> {
        on_backend!(self, store => store.release_kill_switch(scope))
    }

    async fn kill_reason(&self, campaign: &str) -> Result<Option<String>, StoreError> {
        on_backend!(self, store => store.kill_reason(campaign))
    }

    async fn take_tokens(
        &self,
        bucket: BucketId<'_>,
        request: TokenRequest,
    ) -> Result<TokenGrant, StoreError> {
        on_backend!(self, store => store.take_tokens(bucket, request))
    }

    async fn set_run_state(
        &self,
        run_id: Uuid,
        state: RunState,
        reason: &str,
    ) -> Result<(), StoreError> {
        on_backend!(self, store => store.set_run_state(run_id, state, reason))
    }

    async fn send_gate(&self, campaign: &str, run_id: Uuid) -> Result<SendGate, StoreError> {
        on_backend!(self, store => store.send_gate(campaign, run_id))
    }

    async fn claim_send(
        &self,
        run_id: Uuid,
        job_id: Uuid,
        now_ms: u64,
    ) -> Result<SendClaim, StoreError> {
        on_backend!(self, store => store.claim_send(run_id, job_id, now_ms))
    }

    async fn reclaim_send(
        &self,
        run_id: Uuid,
        job_id: Uuid,
        since_ms: u64,
        now_ms: u64,
    ) -> Result<bool, StoreError> {
        on_backend!(self, store => store.reclaim_send(run_id, job_id, since_ms, now_ms))
    }

    async fn watch_kill_changes(&self) -> Result<tokio::sync::mpsc::Receiver<()>, StoreError> {
        on_backend!(self, store => store.watch_kill_changes())
    }

    async fn release_send(
        &self,
        run_id: Uuid,
        job_id: Uuid,
        since_ms: u64,
    ) -> Result<bool, StoreError> {
        on_backend!(self, store => store.release_send(run_id, job_id, since_ms))
    }

    async fn record_command(
        &self,
        run_id: Uuid,
        job_id: Uuid,
        command_id: &str,
    ) -> Result<(), StoreError> {
        on_backend!(self, store => store.record_command(run_id, job_id, command_id))
    }
}

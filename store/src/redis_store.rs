//! The store, as Redis commands over a [`Connection`] to a real Redis or the
//! in-memory one. Keys come from `protocol::names::Names`, so one prefix
//! isolates a deployment (or a test). Updates that read and write are Lua scripts,
//! atomic across every worker; token buckets keep time with Redis's own clock
//! (`TIME`), so workers with skewed clocks still share one rate.

use protocol::run_fields::RunField;
use std::time::Duration;

use protocol::names::Names;
use protocol::run::RunState;
use redis::AsyncCommands;
use uuid::Uuid;

use crate::connection::{Connection, RedisTls};
use crate::{
    Arming, BucketId, KILL_RELEASED, KillScope, SendClaim, SendGate, SendRecord, Store, StoreError,
    TokenGrant, TokenRequest, decode_claim, encode_claim_in_progress, encode_claim_sent,
    encode_kill_engaged, global_kill_reason, parse_state,
};

/// The Redis Functions workers call (`FCALL`); they may not `EVAL`.
pub const WORKER_FUNCTIONS: &str = include_str!("lua/worker_functions.lua");
const TAKE_TOKENS: &str = "flotilla_take_tokens_v1";
const RECLAIM_SEND: &str = "flotilla_reclaim_send_v1";
const RELEASE_SEND: &str = "flotilla_release_send_v1";

/// How long an idempotency record outlives its job: longer than any step's timeout.
const COMMAND_RECORD_TTL: Duration = Duration::from_secs(31 * 86_400);

#[derive(Clone)]
pub struct RedisStore {
    connection: Connection,
    names: Names,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("connection", &self.connection)
            .field("prefix", &self.names.prefix())
            .finish()
    }
}

impl RedisStore {
    /// Connects to Redis (`redis://`, `rediss://`) or to the in-memory Redis
    /// of `memory://<name>`; fails at once if Redis does not answer.
    pub async fn connect(url: &str, names: Names) -> Result<Self, StoreError> {
        Self::connect_with(url, names, &RedisTls::default()).await
    }

    /// [`RedisStore::connect`], with a CA for `rediss://` URLs.
    /// Loads flotilla's Redis Functions where the connection's user may (a
    /// worker's may not: it calls what a scheduler loaded).
    pub async fn connect_with(url: &str, names: Names, tls: &RedisTls) -> Result<Self, StoreError> {
        let store = Self::on(Connection::open(url, tls).await?, names);
        if let Err(error) = store.load_functions().await {
            tracing::debug!(%error, "flotilla's Redis functions not loaded by this connection");
        }
        Ok(store)
    }

    /// `FUNCTION LOAD REPLACE` of the worker functions (on every master of a
    /// cluster): the scheduler's and admin's Redis users may, a worker's not.
    pub async fn load_functions(&self) -> Result<(), StoreError> {
        let mut connection = self.connection.clone();
        let _: redis::Value = redis::cmd("FUNCTION")
            .arg("LOAD")
            .arg("REPLACE")
            .arg(WORKER_FUNCTIONS)
            .query_async(&mut connection)
            .await?;
        Ok(())
    }

    /// `FCALL function 1 key args…`; a function missing (a Redis restarted
    /// without persistence, a new cluster node) is loaded once if this
    /// connection may, else the error says who loads it.
    async fn fcall<T: redis::FromRedisValue>(
        &self,
        function: &str,
        key: &str,
        args: &[String],
    ) -> Result<T, StoreError> {
        let mut command = redis::cmd("FCALL");
        command.arg(function).arg(1).arg(key).arg(args);
        let mut connection = self.connection.clone();
        match command.query_async(&mut connection).await {
            Err(error) if error.to_string().contains("Function not found") => {
                if let Err(load) = self.load_functions().await {
                    return Err(StoreError::Unexpected(format!(
                        "the Redis function {function} is not loaded and this Redis user may not load it ({load}); a scheduler loads flotilla's functions as it connects: start one"
                    )));
                }
                Ok(command.query_async(&mut connection).await?)
            }
            other => Ok(other?),
        }
    }

    /// The store over an open connection.
    pub fn on(connection: Connection, names: Names) -> Self {
        Self { connection, names }
    }

    pub fn names(&self) -> &Names {
        &self.names
    }

    /// Deletes every key of this deployment (`<prefix>:*`): `flotilla admin
    /// purge` and test cleanup. Returns how many were deleted.
    pub async fn purge(&self) -> Result<u64, StoreError> {
        let mut connection = self.connection.clone();
        let pattern = format!("{}:*", glob_escape(self.names.prefix()));
        let keys = self.connection.scan_keys(&pattern).await?;
        let mut deleted = 0;
        // Bounded pipelines of one-key UNLINKs: one huge DEL would block Redis
        // for everyone, and a cluster holds the keys in many slots.
        for chunk in keys.chunks(1000) {
            let mut pipe = redis::pipe();
            for key in chunk {
                pipe.unlink(key);
            }
            let counts: Vec<u64> = pipe.query_async(&mut connection).await?;
            deleted += counts.iter().sum::<u64>();
        }
        Ok(deleted)
    }

    /// A connection onto the same Redis, for the scheduler's run bookkeeping.
    pub fn connection(&self) -> Connection {
        self.connection.clone()
    }

    fn cancel_key(&self, scope: &KillScope) -> String {
        match scope {
            KillScope::Global => self.names.kill_cancel_key(),
            KillScope::Campaign(campaign) => self.names.campaign_kill_cancel_key(campaign),
        }
    }

    fn kill_key(&self, scope: &KillScope) -> String {
        match scope {
            KillScope::Global => self.names.kill_switch_key(),
            KillScope::Campaign(campaign) => self.names.campaign_kill_key(campaign),
        }
    }
}

/// `text` as a literal inside a Redis glob pattern.
fn glob_escape(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for character in text.chars() {
        if matches!(character, '*' | '?' | '[' | ']' | '\\') {
            escaped.push('\\');
        }
        escaped.push(character);
    }
    escaped
}

impl Store for RedisStore {
    async fn server_time_ms(&self) -> Result<Option<u64>, StoreError> {
        self.connection.server_time_ms().await
    }

    async fn engage_kill_switch(&self, scope: &KillScope, reason: &str) -> Result<(), StoreError> {
        let mut connection = self.connection.clone();
        let value = match scope {
            KillScope::Global => encode_kill_engaged(reason),
            KillScope::Campaign(_) => reason.to_string(),
        };
        let key = self.kill_key(scope);
        let () = connection.set(&key, value).await?;
        let _: i64 = connection
            .publish(self.names.kill_channel(), "engaged")
            .await?;
        // Engaged at once on the master; an error here says a failover
        // could still forget it (engaging again is harmless).
        self.connection.replicated(&key).await
    }

    async fn arm_new_deployment(&self) -> Result<Arming, StoreError> {
        let mut connection = self.connection.clone();
        let (runs, live): (bool, bool) = redis::pipe()
            .exists(self.names.runs_index_key())
            .exists(self.names.live_runs_key())
            .query_async(&mut connection)
            .await?;
        let marked: bool = connection.exists(self.names.deployment_key()).await?;
        if marked {
            return Ok(Arming::AlreadyArmed);
        }
        if runs || live {
            return Ok(Arming::HasRuns);
        }
        let first: bool = connection
            .set_nx(
                self.names.deployment_key(),
                protocol::job::UnixMillis::now().0,
            )
            .await?;
        if !first {
            return Ok(Arming::AlreadyArmed);
        }
        let () = connection
            .set(self.names.kill_switch_key(), KILL_RELEASED)
            .await?;
        let _: i64 = connection
            .publish(self.names.kill_channel(), "released")
            .await?;
        self.connection
            .replicated(&self.names.kill_switch_key())
            .await?;
        Ok(Arming::Armed)
    }

    async fn request_cancel_in_flight(&self, scope: &KillScope) -> Result<(), StoreError> {
        let mut connection = self.connection.clone();
        let key = self.cancel_key(scope);
        let () = connection.set(&key, 1).await?;
        self.connection.replicated(&key).await
    }

    async fn release_kill_switch(&self, scope: &KillScope) -> Result<(), StoreError> {
        let mut connection = self.connection.clone();
        let _: i64 = connection.del(self.cancel_key(scope)).await?;
        match scope {
            KillScope::Global => {
                let () = connection.set(self.kill_key(scope), KILL_RELEASED).await?;
            }
            KillScope::Campaign(_) => {
                let _: i64 = connection.del(self.kill_key(scope)).await?;
            }
        }
        let _: i64 = connection
            .publish(self.names.kill_channel(), "released")
            .await?;
        self.connection.replicated(&self.kill_key(scope)).await
    }

    async fn kill_reason(&self, campaign: &str) -> Result<Option<String>, StoreError> {
        // Two GETs, not one MGET: the keys are in different slots, and
        // redis-rs' cluster client answered a split MGET during a failover
        // with "Mismatch in the number of multi-slot results".
        let (mut first, mut second) = (self.connection.clone(), self.connection.clone());
        let global_key = self.names.kill_switch_key();
        let campaign_key = self.names.campaign_kill_key(campaign);
        let (global, campaign): (Option<String>, Option<String>) =
            tokio::try_join!(first.get(&global_key), second.get(&campaign_key))?;
        Ok(global_kill_reason(global.as_deref()).or(campaign))
    }

    async fn take_tokens(
        &self,
        bucket: BucketId<'_>,
        request: TokenRequest,
    ) -> Result<TokenGrant, StoreError> {
        let valid = |value: f64| value.is_finite() && value > 0.0;
        if !valid(request.rate_per_second) || !valid(request.burst) {
            return Err(StoreError::Unexpected(format!(
                "a token bucket needs a positive rate and burst, not {} and {}",
                request.rate_per_second, request.burst
            )));
        }
        let key = self
            .names
            .token_bucket_key(bucket.account_id, bucket.region, bucket.api);
        let (reserved, wait): (u8, String) = self
            .fcall(
                TAKE_TOKENS,
                &key,
                &[
                    request.rate_per_second.to_string(),
                    request.burst.to_string(),
                    request.tokens.to_string(),
                    request.max_wait.as_secs_f64().to_string(),
                ],
            )
            .await?;
        let wait = wait
            .parse::<f64>()
            .ok()
            .filter(|wait| wait.is_finite() && *wait >= 0.0)
            .map(Duration::from_secs_f64)
            .ok_or_else(|| {
                StoreError::Unexpected(format!("the token bucket script returned wait {wait:?}"))
            })?;
        Ok(match (reserved, wait.is_zero()) {
            (1, true) => TokenGrant::Granted,
            (1, false) => TokenGrant::Reserved(wait),
            // A wait rounds up to a millisecond, so a retry finds the tokens.
            _ => TokenGrant::RetryAfter(wait.max(Duration::from_millis(1))),
        })
    }

    async fn set_run_state(
        &self,
        run_id: Uuid,
        state: RunState,
        reason: &str,
    ) -> Result<(), StoreError> {
        let mut connection = self.connection.clone();
        let () = connection
            .hset_multiple(
                self.names.run_key(run_id),
                &[
                    (RunField::State.as_str(), state.as_str()),
                    (RunField::Reason.as_str(), reason),
                ],
            )
            .await?;
        Ok(())
    }

    async fn send_gate(&self, campaign: &str, run_id: Uuid) -> Result<SendGate, StoreError> {
        let mut connection = self.connection.clone();
        type Reading = (
            Option<String>,
            Option<String>,
            (Option<String>, Option<String>, Option<String>),
        );
        let (kill, campaign_kill, (state, reason, send_until)): Reading = redis::pipe()
            .get(self.names.kill_switch_key())
            .get(self.names.campaign_kill_key(campaign))
            .cmd("HMGET")
            .arg(self.names.run_key(run_id))
            .arg(RunField::State.as_str())
            .arg(RunField::Reason.as_str())
            .arg(RunField::SendUntilMs.as_str())
            .query_async(&mut connection)
            .await?;
        // A value that does not parse closes the window (fail closed).
        let send_until = send_until.map(|until| until.parse::<u64>().unwrap_or(0));
        Ok(SendGate::decide(
            global_kill_reason(kill.as_deref()),
            campaign_kill,
            parse_state(state)?,
            reason,
        )
        .within_window(send_until, protocol::job::UnixMillis::now().0))
    }

    async fn run_contract(
        &self,
        run_id: Uuid,
        campaign: &str,
        location: &str,
    ) -> Result<Option<crate::ContractReading>, StoreError> {
        let mut connection = self.connection.clone();
        let run_key = self.names.run_key(run_id);
        // Every run record has a state: none means no record (one command
        // less per job than asking EXISTS too).
        type Reading = ((Option<String>, Option<String>), bool, bool, bool);
        let ((contract, state), member, cancel_all, cancel_campaign): Reading = redis::pipe()
            .cmd("HMGET")
            .arg(&run_key)
            .arg(RunField::Contract.as_str())
            .arg(RunField::State.as_str())
            .sismember(self.names.run_location_set_key(run_id), location)
            .exists(self.names.kill_cancel_key())
            .exists(self.names.campaign_kill_cancel_key(campaign))
            .query_async(&mut connection)
            .await?;
        let cancelled = state.as_deref() == Some(RunState::Cancelled.as_str());
        Ok(state.is_some().then_some(crate::ContractReading {
            contract,
            location_in_run: member,
            cancel_in_flight: cancelled || cancel_all || cancel_campaign,
        }))
    }

    async fn claim_send(
        &self,
        run_id: Uuid,
        job_id: Uuid,
        now_ms: u64,
    ) -> Result<SendClaim, StoreError> {
        let mut connection = self.connection.clone();
        let options = redis::SetOptions::default()
            .conditional_set(redis::ExistenceCheck::NX)
            .get(true)
            .with_expiration(redis::SetExpiry::EX(COMMAND_RECORD_TTL.as_secs()));
        let key = self.names.job_command_key(run_id, job_id);
        let previous: Option<String> = connection
            .set_options(&key, encode_claim_in_progress(now_ms), options)
            .await?;
        // A claim a failover could undo would let a redelivered job send
        // again: it must be on the replicas before anything is sent.
        self.connection.replicated(&key).await?;
        match previous {
            None => Ok(SendClaim::Claimed),
            Some(value) => decode_claim(&value),
        }
    }

    async fn reclaim_send(
        &self,
        run_id: Uuid,
        job_id: Uuid,
        since_ms: u64,
        now_ms: u64,
    ) -> Result<bool, StoreError> {
        let key = self.names.job_command_key(run_id, job_id);
        let swapped: u8 = self
            .fcall(
                RECLAIM_SEND,
                &key,
                &[
                    encode_claim_in_progress(since_ms),
                    encode_claim_in_progress(now_ms),
                ],
            )
            .await?;
        self.connection.replicated(&key).await?;
        Ok(swapped == 1)
    }

    async fn mark_send(
        &self,
        run_id: Uuid,
        job_id: Uuid,
        now_ms: u64,
    ) -> Result<SendRecord, StoreError> {
        let mut connection = self.connection.clone();
        let key = self.names.run_sends_key(run_id);
        let (attempt_field, command_field) = (job_id.to_string(), format!("{job_id}:command"));
        let (first, (attempt, command)): (bool, (Option<String>, Option<String>)) = redis::pipe()
            .hset_nx(&key, &attempt_field, now_ms)
            .cmd("HMGET")
            .arg(&key)
            .arg(&attempt_field)
            .arg(&command_field)
            .query_async(&mut connection)
            .await?;
        // As for the claim: on the replicas before anything is sent.
        self.connection.replicated(&key).await?;
        Ok(match (command, first) {
            (Some(command_id), _) => SendRecord::Sent { command_id },
            (None, true) => SendRecord::First,
            (None, false) => SendRecord::Attempted {
                // Unreadable reads as "just now": wait, then ask SSM.
                since_ms: attempt
                    .and_then(|since| since.parse().ok())
                    .unwrap_or(now_ms),
            },
        })
    }

    async fn record_command(
        &self,
        run_id: Uuid,
        job_id: Uuid,
        command_id: &str,
    ) -> Result<(), StoreError> {
        let mut connection = self.connection.clone();
        let key = self.names.job_command_key(run_id, job_id);
        let sends = self.names.run_sends_key(run_id);
        let ((), _): ((), bool) = redis::pipe()
            .set_ex(
                &key,
                encode_claim_sent(command_id),
                COMMAND_RECORD_TTL.as_secs(),
            )
            .hset_nx(&sends, format!("{job_id}:command"), command_id)
            .query_async(&mut connection)
            .await?;
        self.connection.replicated(&key).await?;
        Ok(())
    }

    async fn note_waits(
        &self,
        run_id: Uuid,
        notes: &[(String, String)],
        ttl: Duration,
    ) -> Result<(), StoreError> {
        if notes.is_empty() {
            return Ok(());
        }
        let mut connection = self.connection.clone();
        let key = self.names.run_waits_key(run_id);
        let ttl_ms = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX);
        // HSET with many pairs, not HMSET: the worker's ACL allows HSET alone.
        let () = redis::pipe()
            .cmd("HSET")
            .arg(&key)
            .arg(notes)
            .ignore()
            .pexpire(&key, ttl_ms)
            .ignore()
            .query_async(&mut connection)
            .await?;
        Ok(())
    }

    async fn release_send(
        &self,
        run_id: Uuid,
        job_id: Uuid,
        since_ms: u64,
    ) -> Result<bool, StoreError> {
        let key = self.names.job_command_key(run_id, job_id);
        let released: u8 = self
            .fcall(RELEASE_SEND, &key, &[encode_claim_in_progress(since_ms)])
            .await?;
        self.connection.replicated(&key).await?;
        Ok(released == 1)
    }

    async fn watch_kill_changes(&self) -> Result<tokio::sync::mpsc::Receiver<()>, StoreError> {
        self.connection.subscribe(&self.names.kill_channel()).await
    }
}

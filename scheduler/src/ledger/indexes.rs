//! The deployment's indexes of runs: every run by creation time, the live
//! runs (not over, or over with results owed), each campaign's runs, and the
//! sorted sets the ticker reads (pending, baking, windowed runs). Readers of
//! "live" questions read the live index, so their cost follows live runs, not
//! history.

use protocol::run::RunState;
use protocol::run_fields::RunField;
use redis::AsyncCommands;
use uuid::Uuid;

use super::{Ledger, RunFields, model};
use crate::SchedulerError;

impl Ledger {
    /// Indexes a run in `key`, a sorted set of runs every replica's ticker
    /// looks at when their time comes (`at_ms`): baking runs by when the bake
    /// ends, windowed runs by when a window opens or closes.
    pub async fn index_run(
        &self,
        key: &str,
        run_id: Uuid,
        at_ms: u64,
    ) -> Result<(), SchedulerError> {
        let mut connection = self.connection.clone();
        let () = connection.zadd(key, run_id.to_string(), at_ms).await?;
        Ok(self.connection.replicated(key).await?)
    }

    /// The runs of `key` whose time has come by `now_ms` (at most `limit`);
    /// an entry that is not a run id is dropped, so it cannot take a place
    /// in every tick.
    pub async fn due_runs(
        &self,
        key: &str,
        now_ms: u64,
        limit: isize,
    ) -> Result<Vec<Uuid>, SchedulerError> {
        let mut connection = self.connection.clone();
        let ids: Vec<String> = connection
            .zrangebyscore_limit(key, 0, now_ms, 0, limit)
            .await?;
        let mut due = Vec::with_capacity(ids.len());
        for id in ids {
            match id.parse() {
                Ok(run_id) => due.push(run_id),
                Err(_) => {
                    let () = connection.zrem(key, &id).await?;
                }
            }
        }
        Ok(due)
    }

    pub async fn unindex_run(&self, key: &str, run_id: Uuid) -> Result<(), SchedulerError> {
        let mut connection = self.connection.clone();
        let () = connection.zrem(key, run_id.to_string()).await?;
        Ok(self.connection.replicated(key).await?)
    }

    /// Pending runs whose start time has come, and forgets them as pending.
    pub async fn take_due_runs(&self, now_ms: u64) -> Result<Vec<Uuid>, SchedulerError> {
        let mut connection = self.connection.clone();
        let key = self.names.pending_runs_key();
        let due: Vec<String> = connection.zrangebyscore(&key, 0, now_ms).await?;
        let mut taken = Vec::new();
        for id in due {
            // ZREM decides which replica starts it.
            let removed: u32 = connection.zrem(&key, &id).await?;
            self.connection.replicated(&key).await?;
            if removed == 1
                && let Ok(run_id) = id.parse()
            {
                taken.push(run_id);
            }
        }
        Ok(taken)
    }

    /// The newest `limit` runs, newest first.
    pub async fn newest_run_ids(&self, limit: usize) -> Result<Vec<Uuid>, SchedulerError> {
        let mut connection = self.connection.clone();
        let stop = isize::try_from(limit)
            .unwrap_or(isize::MAX)
            .saturating_sub(1);
        let ids: Vec<String> = connection
            .zrevrange(self.names.runs_index_key(), 0, stop)
            .await?;
        Ok(ids.iter().filter_map(|id| id.parse().ok()).collect())
    }

    /// One page of runs, newest first, and how many runs there are.
    pub async fn run_ids_page(
        &self,
        offset: usize,
        count: usize,
    ) -> Result<(Vec<Uuid>, u64), SchedulerError> {
        let mut connection = self.connection.clone();
        let start = isize::try_from(offset).unwrap_or(isize::MAX);
        let stop = start.saturating_add(isize::try_from(count.max(1)).unwrap_or(1) - 1);
        let ids: Vec<String> = connection
            .zrevrange(self.names.runs_index_key(), start, stop)
            .await?;
        let total: u64 = connection.zcard(self.names.runs_index_key()).await?;
        Ok((ids.iter().filter_map(|id| id.parse().ok()).collect(), total))
    }

    /// The runs that are not over — or over with work left (results of
    /// targets never started to write) — newest first, with their records:
    /// read from the live index, so the cost follows live runs, not
    /// history. A settled run (or one without a record) leaves the index
    /// here; one
    /// whose record does not parse stays and is returned as an error for
    /// its caller to count and skip.
    pub async fn live_runs(&self) -> Result<Vec<(Uuid, RunFields)>, SchedulerError> {
        let mut connection = self.connection.clone();
        let key = self.names.live_runs_key();
        let ids: Vec<String> = connection.zrevrange(&key, 0, -1).await?;
        let mut live = Vec::with_capacity(ids.len());
        for id in ids {
            let Ok(run_id) = id.parse::<Uuid>() else {
                let () = connection.zrem(&key, &id).await?;
                continue;
            };
            let fields = match self.run_fields(run_id).await? {
                Some(fields) => fields,
                None => {
                    let () = connection.zrem(&key, &id).await?;
                    continue;
                }
            };
            match fields.state() {
                Ok(state) if state.is_final() && fields.is_settled(state) => {
                    let () = connection.zrem(&key, &id).await?;
                }
                // A state that does not parse stays listed: its callers
                // decide (recovery skips it, the start gate refuses).
                _ => live.push((run_id, fields)),
            }
        }
        Ok(live)
    }

    /// The final states among the newest `limit` runs (one pipelined read
    /// of each run's `state`; unreadable states are left out).
    pub async fn recent_final_states(&self, limit: usize) -> Result<Vec<RunState>, SchedulerError> {
        let ids = self.newest_run_ids(limit).await?;
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for run_id in &ids {
            pipe.hget(self.names.run_key(*run_id), RunField::State.as_str());
        }
        let mut connection = self.connection.clone();
        let states: Vec<Option<String>> = pipe.query_async(&mut connection).await?;
        Ok(states
            .into_iter()
            .filter_map(|state| model::parse_run_state(state.as_deref()).ok())
            .filter(|state| state.is_final())
            .collect())
    }

    /// Fills the live index and the per-campaign indexes from the whole
    /// history once per deployment (runs created before the indexes
    /// existed); later calls do nothing.
    pub async fn backfill_live_index(&self) -> Result<(), SchedulerError> {
        let mut connection = self.connection.clone();
        let marker = format!("{}:backfilled", self.names.live_runs_key());
        let done: bool = connection.exists(&marker).await?;
        if done {
            return Ok(());
        }
        for run_id in self.run_ids().await? {
            let Some(fields) = self.run_fields(run_id).await? else {
                continue;
            };
            if let Some(campaign) = fields.get(RunField::Campaign) {
                let () = connection
                    .zadd(
                        self.names.campaign_runs_key(campaign),
                        run_id.to_string(),
                        fields.number(RunField::CreatedMs).unwrap_or_default(),
                    )
                    .await?;
            }
            let settled = fields
                .state()
                .is_ok_and(|state| state.is_final() && fields.is_settled(state));
            if !settled {
                let () = connection
                    .zadd(
                        self.names.live_runs_key(),
                        run_id.to_string(),
                        fields.number(RunField::CreatedMs).unwrap_or_default(),
                    )
                    .await?;
            }
        }
        let () = connection.set(&marker, "1").await?;
        Ok(self.connection.replicated(&marker).await?)
    }

    /// The newest `limit` runs of `campaign`, newest first.
    pub async fn campaign_run_ids(
        &self,
        campaign: &str,
        limit: usize,
    ) -> Result<Vec<Uuid>, SchedulerError> {
        let mut connection = self.connection.clone();
        let stop = isize::try_from(limit)
            .unwrap_or(isize::MAX)
            .saturating_sub(1);
        let ids: Vec<String> = connection
            .zrevrange(self.names.campaign_runs_key(campaign), 0, stop)
            .await?;
        Ok(ids.iter().filter_map(|id| id.parse().ok()).collect())
    }

    /// Runs newest first.
    pub async fn run_ids(&self) -> Result<Vec<Uuid>, SchedulerError> {
        let mut connection = self.connection.clone();
        let ids: Vec<String> = connection
            .zrevrange(self.names.runs_index_key(), 0, -1)
            .await?;
        Ok(ids.iter().filter_map(|id| id.parse().ok()).collect())
    }
}

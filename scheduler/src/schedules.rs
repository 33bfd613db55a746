//! Scheduled campaigns fire on time, exactly once per occurrence, however many
//! scheduler replicas run.
//!
//! - **Lease**: one replica holds `<prefix>:scheduler:lease` (`holder:token`,
//!   renewed every tick, expiring after `lease_ttl`). Each acquisition takes a
//!   new fencing token.
//! - **Fire**: one Lua script checks that the lease still holds this replica's
//!   token *and* that the occurrence is later than the campaign's last fired one,
//!   then records it. A replica that lost the lease cannot fire, even with a
//!   stale view; an occurrence is recorded once.
//! - **Never zero**: the run of an occurrence has a derived id (campaign +
//!   occurrence). A leader that finds a recorded occurrence without its run
//!   (its predecessor died between the two) starts it.
//! - **Missed occurrences** (the schedulers were down): only the latest is run
//!   (`on_missed: run-once`), or none (`skip`) if it is more than
//!   [`ON_TIME`] late.

use std::sync::{Arc, LazyLock};
use std::time::Duration;

use chrono::{DateTime, Utc};
use protocol::Campaign;
use protocol::spec::MissedOccurrence;
use redis::{AsyncCommands, Script};

use crate::{Scheduler, SchedulerError};

/// An occurrence fired at most this late still counts as on time.
pub const ON_TIME: Duration = Duration::from_secs(60);

/// What time it is for schedules. Tests accelerate it; everyone else uses
/// the clock every service shares (`protocol::clock`: Redis's).
#[derive(Clone)]
pub struct SchedulerClock(Arc<dyn Fn() -> DateTime<Utc> + Send + Sync>);

impl SchedulerClock {
    pub fn system() -> Self {
        Self(Arc::new(protocol::clock::now_utc))
    }

    /// Starts at `start` and runs `speed` times faster than real time.
    pub fn accelerated(start: DateTime<Utc>, speed: u32) -> Self {
        let began = std::time::Instant::now();
        Self(Arc::new(move || {
            let elapsed = began.elapsed() * speed;
            start + chrono::Duration::from_std(elapsed).unwrap_or_default()
        }))
    }

    pub fn now(&self) -> DateTime<Utc> {
        (self.0)()
    }
}

impl std::fmt::Debug for SchedulerClock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SchedulerClock")
    }
}

static ACQUIRE: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("lua/schedule_acquire.lua")));

static FIRE: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("lua/schedule_fire.lua")));

/// The run of one occurrence: the same id whoever starts it.
pub use crate::start_gate::occurrence_run_id;

impl Scheduler {
    /// Takes or renews the leader lease; the fencing token, or `None` if another replica leads.
    async fn lease(&self) -> Result<Option<u64>, SchedulerError> {
        let names = self.broker.names();
        let mut connection = self.ledger.connection();
        let token: u64 = ACQUIRE
            .key(&names.schedule_acquire_keys()[..])
            .arg(&self.config.name)
            .arg(u64::try_from(self.config.lease_ttl.as_millis()).unwrap_or(u64::MAX))
            .invoke_async(&mut connection)
            .await?;
        Ok((token > 0).then_some(token))
    }

    /// Who leads now (`holder:token`), for operators and tests.
    pub async fn lease_holder(&self) -> Result<Option<String>, SchedulerError> {
        let mut connection = self.ledger.connection();
        Ok(connection
            .get(self.broker.names().scheduler_lease_key())
            .await?)
    }

    /// The fire log, oldest first: `campaign occurrence-ms fired|skipped holder:token`.
    pub async fn schedule_fires(&self) -> Result<Vec<String>, SchedulerError> {
        let mut connection = self.ledger.connection();
        Ok(connection
            .lrange(self.broker.names().schedule_fires_key(), 0, -1)
            .await?)
    }

    /// One round of the schedule loop (every tick, on every replica; only the
    /// leader does anything).
    pub async fn schedule_tick(&self) -> Result<(), SchedulerError> {
        let Some(token) = self.lease().await? else {
            self.metrics.set_leader(false);
            return Ok(());
        };
        self.metrics.set_leader(true);
        let lease_value = format!("{}:{token}", self.config.name);
        let now = self.config.clock.now();
        for name in self.campaign_names().await? {
            let campaign = match self.stored_campaign(&name).await {
                Ok(Some((campaign, _))) => campaign,
                Ok(None) => continue,
                Err(error) => {
                    crate::outage_or_log(error, &format!("schedule of campaign {name}"))?;
                    continue;
                }
            };
            let Some(schedule) = &campaign.schedule else {
                continue;
            };
            let Some(last) = self.last_fired(&name).await? else {
                // First sight: occurrences from now on, none from before the campaign existed.
                let baseline = format!("{}:baseline", now.timestamp_millis());
                self.set_fired_if_absent(&name, &baseline).await?;
                continue;
            };
            let (last_ms, baseline) = match last.split_once(':') {
                Some((ms, _)) => (ms, true),
                None => (last.as_str(), false),
            };
            let Ok(last_ms) = last_ms.parse::<i64>() else {
                crate::outage_or_log(
                    SchedulerError::Corrupt(format!("schedule fired value {last:?}")),
                    &format!("schedule of campaign {name}"),
                )?;
                continue;
            };
            if !baseline && let Err(error) = self.ensure_occurrence_run(&campaign, last_ms).await {
                crate::outage_or_log(error, &format!("schedule of campaign {name}"))?;
            }
            let Some(after) = DateTime::<Utc>::from_timestamp_millis(last_ms) else {
                continue;
            };
            let due: Vec<DateTime<Utc>> = schedule
                .schedule
                .next_fire_times(after, 10_000)
                .into_iter()
                .take_while(|time| *time <= now)
                .collect();
            let Some(latest) = due.last() else {
                continue;
            };
            let late = (now - *latest).to_std().unwrap_or_default();
            let start = late <= ON_TIME || schedule.on_missed == MissedOccurrence::RunOnce;
            let recorded = self
                .fire(&lease_value, &name, latest.timestamp_millis(), start)
                .await?;
            match recorded {
                -1 => {
                    // The lease moved on: stop at once.
                    self.metrics.set_leader(false);
                    return Ok(());
                }
                1 if start => {
                    if due.len() > 1 {
                        tracing::warn!(
                            campaign = name.as_str(),
                            missed = due.len() - 1,
                            "missed occurrences; running the latest once"
                        );
                    }
                    self.metrics.schedule_fired(&name);
                    if let Err(error) = self
                        .ensure_occurrence_run(&campaign, latest.timestamp_millis())
                        .await
                    {
                        crate::outage_or_log(error, &format!("schedule of campaign {name}"))?;
                    }
                }
                1 => tracing::warn!(
                    campaign = name.as_str(),
                    ?late,
                    "missed occurrence skipped (on_missed: skip)"
                ),
                _ => {}
            }
        }
        Ok(())
    }

    /// The campaign's last fired occurrence (`ms`, or `ms:baseline` before its first).
    async fn last_fired(&self, campaign: &str) -> Result<Option<String>, SchedulerError> {
        let mut connection = self.ledger.connection();
        Ok(connection
            .hget(self.broker.names().schedule_fired_key(), campaign)
            .await?)
    }

    async fn set_fired_if_absent(&self, campaign: &str, value: &str) -> Result<(), SchedulerError> {
        let mut connection = self.ledger.connection();
        let _: bool = connection
            .hset_nx(self.broker.names().schedule_fired_key(), campaign, value)
            .await?;
        Ok(())
    }

    /// The `FIRE` script: 1 recorded, 0 recorded before, -1 not the leader.
    async fn fire(
        &self,
        lease_value: &str,
        campaign: &str,
        occurrence_ms: i64,
        start: bool,
    ) -> Result<i64, SchedulerError> {
        let mut connection = self.ledger.connection();
        let names = self.broker.names();
        let keys = names.schedule_fire_keys();
        let fired = FIRE
            .key(&keys[..])
            .arg(lease_value)
            .arg(campaign)
            .arg(occurrence_ms)
            .arg(u8::from(start))
            .invoke_async(&mut connection)
            .await?;
        // An occurrence a failover forgot would fire twice.
        connection.replicated(&keys[0]).await?;
        Ok(fired)
    }

    /// Starts the run of a recorded occurrence through the start gate,
    /// unless it exists or the gate refused it before. A refusal (no
    /// approval, a freeze, a live run of the campaign) skips the occurrence
    /// and is recorded once; an outage leaves it to the next tick.
    async fn ensure_occurrence_run(
        &self,
        campaign: &Campaign,
        occurrence_ms: i64,
    ) -> Result<(), SchedulerError> {
        let run_id = occurrence_run_id(&campaign.name, occurrence_ms);
        if self.ledger.run_fields(run_id).await?.is_some() {
            return Ok(());
        }
        let skipped_key = self.broker.names().schedule_skipped_key();
        let skipped: Option<i64> = {
            let mut connection = self.ledger.connection();
            connection.hget(&skipped_key, &campaign.name).await?
        };
        if skipped == Some(occurrence_ms) {
            return Ok(());
        }
        let starter = crate::start_gate::Starter::Schedule { occurrence_ms };
        let request = crate::start_gate::StartRequest::default();
        match self.start_run_as(&starter, &campaign.name, &request).await {
            Ok(start) => {
                tracing::info!(campaign = campaign.name.as_str(), run_id = %start.run_id, occurrence_ms, "schedule fired");
                Ok(())
            }
            // Refused (recorded by the gate): skipped.
            Err(error) if crate::start_gate::refusal_reason(&error).is_some() => {
                tracing::warn!(
                    campaign = campaign.name.as_str(),
                    occurrence_ms,
                    "schedule skipped: {error}"
                );
                let mut connection = self.ledger.connection();
                let () = connection
                    .hset(&skipped_key, &campaign.name, occurrence_ms)
                    .await?;
                Ok(connection.replicated(&skipped_key).await?)
            }
            // Anything that kept the gate from deciding: try next tick.
            Err(error) => Err(error),
        }
    }
}

//! Change freezes: a deployment-wide calendar of windows (the whole
//! deployment, or one campaign) during which runs of campaigns that change
//! hosts neither start nor send — SSM Change Calendar's CLOSED. Read-only
//! campaigns (a patch scan) run on. Stored in Redis (one hash), changed only
//! through the API by principals allowed to, every change audited.
//!
//! A freeze that begins while such a run is live pauses it (within the
//! scheduler's one-second tick; commands in flight finish), and the run
//! resumes by itself when no freeze covers it any more. A run may be started
//! during a freeze with an override that gives a reason, by a principal who
//! may approve changes; it is then not paused by the freeze.

use protocol::run_fields::RunField;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::approvals::changes_hosts;
use crate::{Scheduler, SchedulerError, now_ms};
use protocol::Campaign;
use protocol::run::RunState;

/// At most this many freezes are kept (past ones are dropped first).
const MAX_FREEZES: usize = 1000;
/// The longest freeze: a year.
const MAX_FREEZE_MS: u64 = 366 * 86_400 * 1000;
const MAX_REASON_CHARS: usize = 1024;
/// A run's reason while a freeze holds it paused starts with this.
const FROZEN_REASON: &str = "change freeze";

/// One freeze of the calendar.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Freeze {
    pub id: String,
    pub from_ms: u64,
    pub to_ms: u64,
    pub reason: String,
    /// Only this campaign's runs; every campaign's when absent.
    pub campaign: Option<String>,
    pub created_by: String,
    pub created_ms: u64,
}

impl Freeze {
    fn covers(&self, campaign: &str, now_ms: u64) -> bool {
        self.from_ms <= now_ms
            && now_ms < self.to_ms
            && self.campaign.as_deref().is_none_or(|name| name == campaign)
    }

    fn describe(&self) -> String {
        let until =
            chrono::DateTime::from_timestamp_millis(i64::try_from(self.to_ms).unwrap_or(i64::MAX))
                .map_or_else(|| self.to_ms.to_string(), |at| at.to_rfc3339());
        format!("{FROZEN_REASON} {} until {until}: {}", self.id, self.reason)
    }
}

/// The calendar's answer for a campaign now, as SSM's GetCalendarState.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CalendarState {
    /// `OPEN` or `CLOSED`.
    pub state: String,
    /// When it next changes (Unix ms), if a freeze is ahead or on.
    pub next_transition_ms: Option<u64>,
    /// The freezes covering it now.
    pub freezes: Vec<Freeze>,
}

/// What a new freeze is, as asked for.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewFreeze {
    /// RFC 3339.
    pub from: String,
    pub to: String,
    pub reason: String,
    #[serde(default)]
    pub campaign: Option<String>,
}

fn parse_time(field: &str, text: &str) -> Result<u64, SchedulerError> {
    let at = chrono::DateTime::parse_from_rfc3339(text).map_err(|error| {
        SchedulerError::Invalid(format!(
            "{field}: {text:?} is not an RFC 3339 time like 2026-12-24T00:00:00Z ({error})"
        ))
    })?;
    u64::try_from(at.timestamp_millis())
        .map_err(|_| SchedulerError::Invalid(format!("{field}: {text:?} is before 1970")))
}

impl Scheduler {
    /// Every freeze, soonest first.
    pub async fn freezes(&self) -> Result<Vec<Freeze>, SchedulerError> {
        use redis::AsyncCommands as _;
        let mut connection = self.ledger().connection();
        let raw: Vec<String> = connection
            .hvals(self.ledger().names().calendar_key())
            .await?;
        let mut freezes = raw
            .iter()
            .map(|raw| {
                serde_json::from_str::<Freeze>(raw).map_err(|error| {
                    SchedulerError::Corrupt(format!("a calendar entry does not parse: {error}"))
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        freezes.sort_by_key(|freeze| (freeze.from_ms, freeze.to_ms));
        Ok(freezes)
    }

    /// Adds a freeze; the error names the field that is wrong.
    pub async fn add_freeze(
        &self,
        request: &NewFreeze,
        created_by: &str,
    ) -> Result<Freeze, SchedulerError> {
        use redis::AsyncCommands as _;
        let from_ms = parse_time("from", &request.from)?;
        let to_ms = parse_time("to", &request.to)?;
        let now = now_ms();
        if to_ms <= from_ms {
            return Err(SchedulerError::Invalid("to: must be after from".into()));
        }
        if to_ms <= now {
            return Err(SchedulerError::Invalid(
                "to: the freeze would be over already".into(),
            ));
        }
        if to_ms - from_ms > MAX_FREEZE_MS {
            return Err(SchedulerError::Invalid(
                "to: a freeze lasts at most 366 days".into(),
            ));
        }
        let reason = request.reason.trim();
        if reason.is_empty() || reason.chars().count() > MAX_REASON_CHARS {
            return Err(SchedulerError::Invalid(format!(
                "reason: is required, at most {MAX_REASON_CHARS} characters"
            )));
        }
        if let Some(campaign) = &request.campaign {
            protocol::campaign::check_campaign_name(campaign)
                .map_err(|error| SchedulerError::Invalid(format!("campaign: {error}")))?;
        }
        let mut freezes = self.freezes().await?;
        let mut connection = self.ledger().connection();
        // Past freezes make room first.
        freezes.retain(|freeze| freeze.to_ms > now);
        if freezes.len() >= MAX_FREEZES {
            return Err(SchedulerError::Invalid(format!(
                "the calendar holds at most {MAX_FREEZES} freezes; remove some first"
            )));
        }
        let all: Vec<String> = connection
            .hkeys(self.ledger().names().calendar_key())
            .await?;
        let current: Vec<&str> = freezes.iter().map(|freeze| freeze.id.as_str()).collect();
        let past: Vec<&String> = all
            .iter()
            .filter(|id| !current.contains(&id.as_str()))
            .collect();
        if !past.is_empty() {
            let _: u64 = connection
                .hdel(self.ledger().names().calendar_key(), past)
                .await?;
        }
        let freeze = Freeze {
            id: format!("freeze-{}", &Uuid::new_v4().simple().to_string()[..12]),
            from_ms,
            to_ms,
            reason: reason.to_string(),
            campaign: request.campaign.clone(),
            created_by: created_by.to_string(),
            created_ms: now,
        };
        let _: u8 = connection
            .hset(
                self.ledger().names().calendar_key(),
                &freeze.id,
                serde_json::to_string(&freeze)?,
            )
            .await?;
        self.ledger()
            .connection()
            .replicated(&self.ledger().names().calendar_key())
            .await?;
        Ok(freeze)
    }

    pub async fn remove_freeze(&self, id: &str) -> Result<bool, SchedulerError> {
        use redis::AsyncCommands as _;
        let mut connection = self.ledger().connection();
        let removed: u8 = connection
            .hdel(self.ledger().names().calendar_key(), id)
            .await?;
        self.ledger()
            .connection()
            .replicated(&self.ledger().names().calendar_key())
            .await?;
        Ok(removed == 1)
    }

    /// OPEN or CLOSED for `campaign` (every campaign when None) now.
    pub async fn calendar_state(
        &self,
        campaign: Option<&str>,
    ) -> Result<CalendarState, SchedulerError> {
        let now = now_ms();
        let freezes = self.freezes().await?;
        let applies = |freeze: &&Freeze| {
            campaign.is_none_or(|name| freeze.campaign.as_deref().is_none_or(|own| own == name))
        };
        let covering: Vec<Freeze> = freezes
            .iter()
            .filter(applies)
            .filter(|freeze| freeze.from_ms <= now && now < freeze.to_ms)
            .cloned()
            .collect();
        let next_transition_ms = if covering.is_empty() {
            freezes
                .iter()
                .filter(applies)
                .map(|freeze| freeze.from_ms)
                .filter(|from| *from > now)
                .min()
        } else {
            covering.iter().map(|freeze| freeze.to_ms).max()
        };
        Ok(CalendarState {
            state: if covering.is_empty() {
                "OPEN"
            } else {
                "CLOSED"
            }
            .into(),
            next_transition_ms,
            freezes: covering,
        })
    }

    /// The freeze that keeps `campaign` from starting now: None for a
    /// read-only campaign or an open calendar.
    pub async fn freeze_of(&self, campaign: &Campaign) -> Result<Option<Freeze>, SchedulerError> {
        if !changes_hosts(campaign, &self.config().read_only_documents) {
            return Ok(None);
        }
        let now = now_ms();
        Ok(self
            .freezes()
            .await?
            .into_iter()
            .filter(|freeze| freeze.covers(&campaign.name, now))
            .max_by_key(|freeze| freeze.to_ms))
    }

    /// Refuses to start a run of `campaign` during a freeze; a schedule or
    /// event skips it, the API answers 409 naming the freeze.
    pub async fn check_not_frozen(&self, campaign: &Campaign) -> Result<(), SchedulerError> {
        match self.freeze_of(campaign).await? {
            Some(freeze) => Err(SchedulerError::Frozen(format!(
                "campaign {} changes hosts and the calendar is CLOSED: {}; start it with an override (--override-freeze REASON, by an approver or admin) or after",
                campaign.name,
                freeze.describe()
            ))),
            None => Ok(()),
        }
    }

    /// Once a second: pauses live runs that change hosts while a freeze
    /// covers them, and resumes those a freeze paused once none does.
    pub(crate) async fn freeze_tick(&self) -> Result<(), SchedulerError> {
        let freezes = self.freezes().await?;
        let now = now_ms();
        let active: Vec<&Freeze> = freezes
            .iter()
            .filter(|freeze| freeze.from_ms <= now && now < freeze.to_ms)
            .collect();
        let frozen_key = self.ledger().names().frozen_runs_key();
        let mut connection = self.ledger().connection();
        let frozen: Vec<String> =
            redis::AsyncCommands::smembers(&mut connection, &frozen_key).await?;
        if active.is_empty() && frozen.is_empty() {
            return Ok(());
        }
        if !active.is_empty() {
            // Every live run, however old (the live index).
            for (run_id, fields) in self.ledger().live_runs().await? {
                let Ok(state) = fields.state() else {
                    continue;
                };
                let live = matches!(
                    state,
                    RunState::Discovering
                        | RunState::Running
                        | RunState::Baking
                        | RunState::AwaitingApproval
                        | RunState::OutsideWindow
                );
                if !live || fields.get(RunField::FreezeOverride).is_some() {
                    continue;
                }
                let campaign = fields.get(RunField::Campaign).unwrap_or_default();
                let Some(freeze) = active.iter().find(|freeze| freeze.covers(campaign, now)) else {
                    continue;
                };
                let plan = match self.plan(run_id).await {
                    Ok(plan) => plan,
                    Err(error) => {
                        crate::outage_or_log(error, &format!("freeze of run {run_id}"))?;
                        continue;
                    }
                };
                if !changes_hosts(&plan.campaign, &self.config().read_only_documents) {
                    continue;
                }
                let _: u8 =
                    redis::AsyncCommands::sadd(&mut connection, &frozen_key, run_id.to_string())
                        .await?;
                if self.pause(run_id, &freeze.describe()).await? {
                    tracing::warn!(%run_id, freeze = freeze.id.as_str(), "change freeze paused a run");
                    self.audit_internal(
                        format!("calendar:{}", freeze.id),
                        "runs:pause",
                        format!("run {run_id}"),
                        freeze.describe(),
                    )
                    .await;
                }
            }
        }
        for id in frozen {
            let Ok(run_id) = id.parse::<Uuid>() else {
                let _: u8 = redis::AsyncCommands::srem(&mut connection, &frozen_key, &id).await?;
                continue;
            };
            let fields = self.ledger().run_fields(run_id).await?;
            let held = fields.as_ref().is_some_and(|fields| {
                fields.state().ok() == Some(RunState::Paused)
                    && fields
                        .get(RunField::Reason)
                        .is_some_and(|reason| reason.starts_with(FROZEN_REASON))
            });
            let campaign = fields
                .as_ref()
                .and_then(|fields| fields.get(RunField::Campaign))
                .unwrap_or_default();
            if held && active.iter().any(|freeze| freeze.covers(campaign, now)) {
                continue;
            }
            if held {
                match self.resume(run_id, "the change freeze is over").await {
                    Ok(_) => {
                        tracing::info!(%run_id, "change freeze over; run resumed");
                        self.audit_internal(
                            "calendar".into(),
                            "runs:resume",
                            format!("run {run_id}"),
                            "the change freeze is over".into(),
                        )
                        .await;
                    }
                    // An alert fires for it: it stays paused for an operator.
                    Err(SchedulerError::AlertFiring(why)) => {
                        tracing::warn!(%run_id, "change freeze over, run stays paused: {why}");
                    }
                    Err(error) => return Err(error),
                }
            }
            let _: u8 = redis::AsyncCommands::srem(&mut connection, &frozen_key, &id).await?;
        }
        Ok(())
    }
}

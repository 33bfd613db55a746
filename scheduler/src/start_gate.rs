//! The start gate: whether a run may start, decided once, here, for every
//! door — the API, the console, a schedule's occurrence and an event. The
//! doors parse what they were given and ask [`Scheduler::start_run_as`];
//! none of them decides anything about a start.
//!
//! The checks, in the order they are made (the first that refuses answers):
//! 1. **The campaign** is stored and reads back valid.
//! 2. **Who starts may**: a principal needs `runs:start` and a place in the
//!    campaign's `run_by`; a schedule needs the campaign's schedule; an event
//!    needs a trigger of its kind and an account and region the campaign
//!    covers (it narrows the run to its instance, never widens it).
//! 3. **Approval** (the two-person rule) of a version that changes hosts —
//!    not for a plan, which only discovers.
//! 4. **Change freezes**: none may cover a campaign that changes hosts,
//!    unless a principal who may approve changes overrides it with a reason.
//!    A calendar that cannot be read refuses, whatever the error.
//! 5. **One live run**: no other live run of the campaign whose targets may
//!    overlap (event runs of different instances do not), unless a principal
//!    asks for `allow_concurrent`. Plans neither count nor are counted. Two
//!    starts of one campaign pass this check one at a time (a short lock).
//! 6. **Size**: the run's locations within `--max-locations` (checked as the
//!    run is created, by [`Scheduler::start_run_unchecked`]).
//!
//! Every store error refuses: the gate never starts a run it could not
//! check. Refusals are counted (`flotilla_scheduler_starts_refused_total`);
//! a schedule's or an event's outcome is written to the audit trail here
//! (a principal's request is recorded by the HTTP door that carried it).

use std::time::Duration;

use protocol::Campaign;
use protocol::campaign::{TargetSelection, TargetSelector};
use protocol::job::{Location, Priority};
use protocol::spec::TriggerEvent;
use uuid::Uuid;

use crate::auth::{Permission, Principal};
use crate::runs::StartOptions;
use crate::{Scheduler, SchedulerError};

/// How long one start holds its campaign's start lock at most.
const START_LOCK: Duration = Duration::from_secs(30);
/// How long a start waits for another start of the same campaign to pass
/// the gate (an event burst starts one campaign many times at once).
const START_LOCK_WAIT: Duration = Duration::from_secs(5);

/// The door a principal came through, for metrics and messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Door {
    Api,
    Console,
}

/// Who asks for a run.
#[derive(Debug, Clone)]
pub enum Starter {
    /// An authenticated principal, through the API or the console.
    Principal { principal: Principal, door: Door },
    /// The schedule of the campaign, for one occurrence (the run's id is
    /// derived from it, so it is never started twice).
    Schedule { occurrence_ms: i64 },
    /// An event about one instance in one location.
    Event {
        kind: TriggerEvent,
        location: Location,
        instance_id: String,
    },
}

impl Starter {
    /// The name runs and audit records give it.
    pub fn name(&self, campaign: &str) -> String {
        match self {
            Self::Principal { principal, .. } => principal.name.clone(),
            Self::Schedule { .. } => format!("schedule:{campaign}"),
            Self::Event { instance_id, .. } => format!("event:{instance_id}"),
        }
    }

    fn door(&self) -> &'static str {
        match self {
            Self::Principal {
                door: Door::Api, ..
            } => "api",
            Self::Principal {
                door: Door::Console,
                ..
            } => "console",
            Self::Schedule { .. } => "schedule",
            Self::Event { .. } => "event",
        }
    }
}

/// What a start asks for besides the campaign.
#[derive(Debug, Clone, Default)]
pub struct StartRequest {
    /// Stop after discovery: report what would be targeted, send nothing.
    pub plan_only: bool,
    /// Start although a change freeze covers the campaign, and why (a
    /// principal who may approve changes only).
    pub override_freeze: Option<String>,
    /// Start although another run of the campaign is live (a principal only).
    pub allow_concurrent: bool,
}

/// A run the gate let start.
#[derive(Debug, Clone)]
pub struct RunStart {
    pub run_id: Uuid,
    pub campaign: String,
    pub campaign_version: u32,
    /// For the audit record: the version, its author and approver, an
    /// override.
    pub note: String,
}

/// The metric label of a refusal.
fn refusal_reason(error: &SchedulerError) -> Option<&'static str> {
    Some(match error {
        SchedulerError::Forbidden(_) => "forbidden",
        SchedulerError::NeedsApproval(_) => "needs_approval",
        SchedulerError::Frozen(_) => "frozen",
        SchedulerError::AlreadyRunning(_) => "already_running",
        SchedulerError::OutOfScope(_) => "out_of_scope",
        SchedulerError::Invalid(_) => "invalid",
        SchedulerError::UnknownCampaign(_) => "unknown_campaign",
        _ => return None,
    })
}

impl Scheduler {
    /// Starts a run of the stored campaign `name` for `starter`, if every
    /// check of the gate (see the module) passes; the first refusal is the
    /// error. The only way a door starts a run.
    pub async fn start_run_as(
        &self,
        starter: &Starter,
        name: &str,
        request: &StartRequest,
    ) -> Result<RunStart, SchedulerError> {
        let decided = self.start_through_gate(starter, name, request).await;
        if let Err(error) = &decided
            && let Some(reason) = refusal_reason(error)
        {
            self.metrics.start_refused(starter.door(), reason);
        }
        self.record_internal_start(starter, name, &decided).await;
        decided
    }

    async fn start_through_gate(
        &self,
        starter: &Starter,
        name: &str,
        request: &StartRequest,
    ) -> Result<RunStart, SchedulerError> {
        // 1. The campaign.
        let Some((campaign, stored)) = self.stored_campaign(name).await? else {
            return Err(SchedulerError::UnknownCampaign(name.to_string()));
        };
        let version = stored.version;
        // 2. Who starts, and what the run covers.
        let narrowed = self.check_starter(starter, &campaign, request).await?;
        // The rest, one start of the campaign at a time.
        let lock = self.take_start_lock(name).await?;
        let decided = self
            .start_locked(starter, &campaign, version, narrowed, request)
            .await;
        self.release_start_lock(name, &lock).await;
        decided
    }

    /// Steps 3 to 6, holding the campaign's start lock.
    async fn start_locked(
        &self,
        starter: &Starter,
        campaign: &Campaign,
        version: u32,
        narrowed: Option<Narrowed>,
        request: &StartRequest,
    ) -> Result<RunStart, SchedulerError> {
        let name = campaign.name.as_str();
        // 3. Approval.
        let approval = if request.plan_only {
            None
        } else {
            Some(self.check_approved(campaign, version).await?)
        };
        // 4. Freezes: any error but "frozen" refuses as it is.
        let freeze_override = if request.plan_only {
            None
        } else {
            self.check_freeze(starter, campaign, request).await?
        };
        // 5. One live run.
        let overlap_allowed =
            request.plan_only || (request.allow_concurrent && starter_may_overlap(starter));
        if !overlap_allowed {
            self.check_no_overlap(campaign, narrowed.as_ref().map(|n| &n.instance_id))
                .await?;
        }
        // 6. Start (the size is checked as the run is created).
        let started_by = starter.name(name);
        let mut options = StartOptions {
            plan_only: request.plan_only,
            campaign_version: Some(version),
            started_by: started_by.clone(),
            freeze_override: freeze_override.clone(),
            ..StartOptions::default()
        };
        match starter {
            Starter::Schedule { occurrence_ms } => {
                options.run_id = Some(crate::schedules::occurrence_run_id(
                    &campaign.name,
                    *occurrence_ms,
                ));
            }
            Starter::Event { .. } => {
                if let Some(narrowed) = &narrowed {
                    options.priority = Priority::Urgent;
                    options.locations = Some(vec![narrowed.location.clone()]);
                    options.instance_ids = Some(vec![narrowed.instance_id.clone()]);
                    options.start_after = Some(narrowed.delay);
                }
            }
            Starter::Principal { .. } => {}
        }
        let run_id = self.start_run_unchecked(campaign, options).await?;
        let mut note = match &approval {
            Some(approval) => format!(
                "run {run_id} of {name} v{version} written by {}, approved by {}",
                approval.author,
                approval.approver.as_deref().unwrap_or("nobody (read-only)")
            ),
            None => format!("plan {run_id} of {name} v{version}"),
        };
        if let Some(freeze) = freeze_override {
            note.push_str("; ");
            note.push_str(&freeze);
        }
        if request.allow_concurrent {
            note.push_str("; concurrent runs allowed");
        }
        if let Some(narrowed) = &narrowed {
            note.push_str(&format!(
                "; {:?} for {} in {}/{}",
                narrowed.kind,
                narrowed.instance_id,
                narrowed.location.account_id,
                narrowed.location.region
            ));
        }
        Ok(RunStart {
            run_id,
            campaign: campaign.name.clone(),
            campaign_version: version,
            note,
        })
    }

    /// Step 2: may this starter start this campaign, and, for an event, the
    /// one instance and location the run narrows to.
    async fn check_starter(
        &self,
        starter: &Starter,
        campaign: &Campaign,
        request: &StartRequest,
    ) -> Result<Option<Narrowed>, SchedulerError> {
        match starter {
            Starter::Principal { principal, .. } => {
                if !principal.role.allows(Permission::StartRun) {
                    return Err(SchedulerError::Forbidden(format!(
                        "{} (role {}) may not start runs",
                        principal.name, principal.role
                    )));
                }
                if !crate::auth::may_run(principal, &campaign.spec.run_by) {
                    return Err(SchedulerError::Forbidden(format!(
                        "{} (role {}) may not run {}: its run_by lists {}",
                        principal.name,
                        principal.role,
                        campaign.name,
                        campaign.spec.run_by.join(", ")
                    )));
                }
                Ok(None)
            }
            Starter::Schedule { .. } => {
                if campaign.schedule.is_none() {
                    return Err(SchedulerError::Forbidden(format!(
                        "campaign {} has no schedule any more",
                        campaign.name
                    )));
                }
                if request.allow_concurrent || request.override_freeze.is_some() {
                    return Err(SchedulerError::Forbidden(
                        "a schedule cannot override the start gate".into(),
                    ));
                }
                Ok(None)
            }
            Starter::Event {
                kind,
                location,
                instance_id,
            } => {
                if request.allow_concurrent || request.override_freeze.is_some() {
                    return Err(SchedulerError::Forbidden(
                        "an event cannot override the start gate".into(),
                    ));
                }
                let Some(trigger) = campaign
                    .triggers
                    .iter()
                    .find(|trigger| trigger.event == *kind)
                else {
                    return Err(SchedulerError::OutOfScope(format!(
                        "campaign {} has no {kind:?} trigger",
                        campaign.name
                    )));
                };
                if !campaign.regions.contains(&location.region) {
                    return Err(SchedulerError::OutOfScope(format!(
                        "campaign {} does not cover region {}",
                        campaign.name, location.region
                    )));
                }
                let accounts = self.resolve_accounts(campaign).await?;
                let covered = accounts.contains(&location.account_id)
                    && !campaign
                        .accounts
                        .exclude_accounts
                        .contains(&location.account_id);
                if !covered {
                    return Err(SchedulerError::OutOfScope(format!(
                        "campaign {} does not cover account {}",
                        campaign.name, location.account_id
                    )));
                }
                Ok(Some(Narrowed {
                    kind: *kind,
                    location: location.clone(),
                    instance_id: instance_id.clone(),
                    delay: trigger.delay,
                }))
            }
        }
    }

    /// Step 4: `Some(note)` when a principal overrides a freeze; a freeze
    /// otherwise refuses, and so does a calendar that cannot be read.
    async fn check_freeze(
        &self,
        starter: &Starter,
        campaign: &Campaign,
        request: &StartRequest,
    ) -> Result<Option<String>, SchedulerError> {
        let why = match self.check_not_frozen(campaign).await {
            Ok(()) => return Ok(None),
            Err(SchedulerError::Frozen(why)) => why,
            // Redis away, a calendar entry that does not parse: no start.
            Err(error) => return Err(error),
        };
        let Starter::Principal { principal, .. } = starter else {
            return Err(SchedulerError::Frozen(why));
        };
        match request.override_freeze.as_deref().map(str::trim) {
            None | Some("") => Err(SchedulerError::Frozen(why)),
            Some(_) if !principal.role.allows(Permission::ApproveCampaign) => {
                Err(SchedulerError::Forbidden(format!(
                    "{} (role {}) may not override a change freeze: it takes a principal who may approve changes (approver or admin)",
                    principal.name, principal.role
                )))
            }
            Some(override_reason) => Ok(Some(format!(
                "change freeze overridden by {}: {override_reason} ({why})",
                principal.name
            ))),
        }
    }

    /// Step 5: refuses when a live run of the campaign may touch the same
    /// targets as the new one (`instance`: the one instance the new run is
    /// narrowed to, if it is).
    async fn check_no_overlap(
        &self,
        campaign: &Campaign,
        instance: Option<&String>,
    ) -> Result<(), SchedulerError> {
        for (run_id, fields) in self.live_run_records_of(&campaign.name).await? {
            if fields.get("plan_only") == Some("1") {
                continue;
            }
            let live_instances = match fields.get("targets") {
                Some(targets) => match serde_json::from_str::<TargetSelection>(targets) {
                    Ok(TargetSelection {
                        selector: TargetSelector::InstanceIds(ids),
                        ..
                    }) => Some(ids),
                    // Unreadable or wider: it may overlap.
                    _ => None,
                },
                None => None,
            };
            if let (Some(instance), Some(live)) = (instance, &live_instances)
                && !live.contains(instance)
            {
                continue;
            }
            return Err(SchedulerError::AlreadyRunning(format!(
                "campaign {} already has a live run {run_id} ({}, started by {}); a second run could act on the same hosts. Wait for it to finish, cancel it, or start with --allow-concurrent",
                campaign.name,
                fields.get("state").unwrap_or("unknown"),
                fields.get("started_by").unwrap_or("unknown"),
            )));
        }
        Ok(())
    }

    /// Takes the campaign's start lock, waiting a few seconds for another
    /// start of it; the lock's value, to release it.
    async fn take_start_lock(&self, campaign: &str) -> Result<String, SchedulerError> {
        let key = self.ledger().names().campaign_start_lock_key(campaign);
        let value = Uuid::new_v4().to_string();
        let deadline = tokio::time::Instant::now() + START_LOCK_WAIT;
        loop {
            let mut connection = self.ledger().connection();
            let taken: Option<String> = redis::cmd("SET")
                .arg(&key)
                .arg(&value)
                .arg("NX")
                .arg("PX")
                .arg(u64::try_from(START_LOCK.as_millis()).unwrap_or(u64::MAX))
                .query_async(&mut connection)
                .await?;
            if taken.is_some() {
                return Ok(value);
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(SchedulerError::AlreadyRunning(format!(
                    "another start of campaign {campaign} is passing the start gate; try again in a moment"
                )));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Releases the lock if it is still ours (it expires by itself anyway).
    async fn release_start_lock(&self, campaign: &str, value: &str) {
        let key = self.ledger().names().campaign_start_lock_key(campaign);
        let mut connection = self.ledger().connection();
        let held: Result<Option<String>, _> = redis::cmd("GET")
            .arg(&key)
            .query_async(&mut connection)
            .await;
        if let Ok(Some(held)) = held
            && held == value
        {
            let released: Result<(), _> = redis::cmd("DEL")
                .arg(&key)
                .query_async(&mut connection)
                .await;
            if let Err(error) = released {
                tracing::warn!(campaign, error = %error, "start lock not released; it expires by itself");
            }
        }
    }

    /// The audit record of a schedule's or an event's start or refusal (a
    /// principal's request is recorded by its door).
    async fn record_internal_start(
        &self,
        starter: &Starter,
        campaign: &str,
        decided: &Result<RunStart, SchedulerError>,
    ) {
        let (started_action, refused_action) = match starter {
            Starter::Principal { .. } => return,
            Starter::Schedule { .. } => ("schedule:fired", "schedule:skipped"),
            Starter::Event { .. } => ("runs:start", "runs:start"),
        };
        let who = starter.name(campaign);
        match decided {
            Ok(start) => {
                tracing::info!(campaign, run_id = %start.run_id, started_by = who.as_str(), "start gate: run started");
                self.audit_internal(
                    who,
                    started_action,
                    format!("campaign {campaign}"),
                    start.note.clone(),
                )
                .await;
            }
            // Not this campaign's event: nothing to record.
            Err(SchedulerError::OutOfScope(why)) => {
                tracing::debug!(campaign, "start gate: {why}");
            }
            // An outage: the schedule tries again next tick, the event's
            // sender gets the error.
            Err(error) if refusal_reason(error).is_none() => {
                tracing::warn!(campaign, started_by = who.as_str(), error = %error, "start gate could not decide; nothing started");
            }
            Err(error) => {
                tracing::warn!(campaign, started_by = who.as_str(), error = %error, "start gate refused a run");
                self.audit_internal(
                    who,
                    refused_action,
                    format!("campaign {campaign}"),
                    format!("refused: {error}"),
                )
                .await;
            }
        }
    }
}

/// What an event narrows a run to.
#[derive(Debug, Clone)]
struct Narrowed {
    kind: TriggerEvent,
    location: Location,
    instance_id: String,
    delay: Duration,
}

/// Only a principal may ask for a concurrent run.
fn starter_may_overlap(starter: &Starter) -> bool {
    matches!(starter, Starter::Principal { .. })
}

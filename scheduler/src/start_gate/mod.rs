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
//!    covers (it narrows the run to its instance, never widens it). A
//!    principal's overrides (`overrides`) narrow accounts, regions and
//!    instances within the campaign's and set parameters it declares
//!    overridable; a changed parameter under the two-person rule refuses.
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
//!
//! - `checks`: steps 2, 4 and 5; `overrides`: step 2b, a principal's
//!   narrowing and parameters; `lock`: one start of a campaign at a time.

mod checks;
mod lock;
mod overrides;

pub use self::overrides::RunOverrides;

use std::time::Duration;

use protocol::Campaign;
use protocol::job::{Location, Priority};
use protocol::spec::TriggerEvent;
use uuid::Uuid;

use crate::auth::Principal;
use crate::runs::StartOptions;
use crate::{Scheduler, SchedulerError};

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
    /// Narrower accounts, regions or instances and new parameter values for
    /// this run (a principal only; see [`RunOverrides`]).
    pub overrides: RunOverrides,
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

/// The metric label of a refusal: the gate decided "no" (and, for a
/// schedule or an event, recorded it). `None` for what kept it from
/// deciding (an outage, a busy gate, a record it cannot read). Schedules and
/// events tell a refusal from a failure by this one function.
pub(crate) fn refusal_reason(error: &SchedulerError) -> Option<&'static str> {
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
        let overridden = if request.overrides.is_empty() {
            None
        } else {
            Some(
                self.apply_overrides(starter, &campaign, &request.overrides)
                    .await?,
            )
        };
        // The rest, one start of the campaign at a time.
        let lock = self.take_start_lock(name).await?;
        let decided = self
            .start_locked(starter, &campaign, version, narrowed, overridden, request)
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
        overridden: Option<overrides::Overridden>,
        request: &StartRequest,
    ) -> Result<RunStart, SchedulerError> {
        // The run is of the overridden campaign, when there are overrides.
        let campaign = overridden
            .as_ref()
            .map_or(campaign, |overridden| &overridden.campaign);
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
                options.run_id = Some(occurrence_run_id(&campaign.name, *occurrence_ms));
            }
            Starter::Event { .. } => {
                if let Some(narrowed) = &narrowed {
                    options.priority = Priority::Urgent;
                    options.locations = Some(vec![narrowed.location.clone()]);
                    options.targets = Some(narrowed.targets.clone());
                    options.start_after = Some(narrowed.delay);
                }
            }
            Starter::Principal { .. } => {
                if let Some(overridden) = &overridden {
                    options.locations = overridden.locations.clone();
                    options.targets = overridden.targets.clone();
                    options.overrides = Some(overridden.note.clone());
                }
            }
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
        if let Some(overridden) = &overridden {
            note.push_str("; ");
            note.push_str(&overridden.note);
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
    /// The campaign's selection narrowed to the instance.
    targets: protocol::campaign::TargetSelection,
    kind: TriggerEvent,
    location: Location,
    instance_id: String,
    delay: Duration,
}

/// The run of one schedule occurrence: the same id whoever starts it, so
/// an occurrence never makes two runs.
pub fn occurrence_run_id(campaign: &str, occurrence_ms: i64) -> Uuid {
    Uuid::new_v5(
        &Uuid::NAMESPACE_OID,
        format!("flotilla/schedule/{campaign}/{occurrence_ms}").as_bytes(),
    )
}

/// Only a principal may ask for a concurrent run.
fn starter_may_overlap(starter: &Starter) -> bool {
    matches!(starter, Starter::Principal { .. })
}

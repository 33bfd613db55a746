//! The start gate's checks of who starts (step 2), freezes (step 4) and live
//! runs (step 5); the order and the rest are in the module above.

use protocol::Campaign;
use protocol::campaign::TargetSelection;
use protocol::run_fields::RunField;

use super::{Narrowed, StartRequest, Starter};
use crate::auth::Permission;
use crate::{Scheduler, SchedulerError};

impl Scheduler {
    /// Step 2: may this starter start this campaign, and, for an event, the
    /// one instance and location the run narrows to.
    pub(super) async fn check_starter(
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
                // Narrowed, never widened: an instance outside an id list is
                // refused here; tags, platform and online are SSM's to
                // check as the run discovers (with the instance's id as one
                // more filter), and the sending worker checks them again.
                let Some(targets) = campaign.targets.narrowed_to(instance_id) else {
                    // Refused and audited: an event tried to widen the run.
                    return Err(SchedulerError::Forbidden(format!(
                        "instance {instance_id} is not one of campaign {}'s targets",
                        campaign.name
                    )));
                };
                Ok(Some(Narrowed {
                    targets,
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
    pub(super) async fn check_freeze(
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
    pub(super) async fn check_no_overlap(
        &self,
        campaign: &Campaign,
        instance: Option<&String>,
    ) -> Result<(), SchedulerError> {
        for (run_id, fields) in self.live_run_records_of(&campaign.name).await? {
            if fields.get(RunField::PlanOnly) == Some("1") {
                continue;
            }
            // Unreadable or not limited to instances: it may overlap.
            let live_instances = fields
                .get(RunField::Targets)
                .and_then(|targets| serde_json::from_str::<TargetSelection>(targets).ok())
                .and_then(|targets| targets.instance_ids().map(<[String]>::to_vec));
            if let (Some(instance), Some(live)) = (instance, &live_instances)
                && !live.contains(instance)
            {
                continue;
            }
            return Err(SchedulerError::AlreadyRunning(format!(
                "campaign {} already has a live run {run_id} ({}, started by {}); a second run could act on the same hosts. Wait for it to finish, cancel it, or start with --allow-concurrent",
                campaign.name,
                fields.get(RunField::State).unwrap_or("unknown"),
                fields.get(RunField::StartedBy).unwrap_or("unknown"),
            )));
        }
        Ok(())
    }
}

//! Steering a live run and moving the kill switch, decided once, here, for
//! every door (the API, the console, alerts): the doors parse what they
//! were given and call one function each.
//!
//! - [`Scheduler::steer`]: pause, resume (refused while an alert fires for
//!   the campaign unless overridden with a reason) or cancel, by a principal
//!   who may steer runs; resuming a run a failed health gate paused takes
//!   one who may approve changes, as overriding a change freeze does.
//! - [`Scheduler::approve_wave_by`]: lets a rollout waiting between two
//!   waves go on, by a principal who may approve changes and who did not
//!   start the run (two people see each wave through), unless the API runs
//!   without authentication.
//! - [`Scheduler::engage_kill_by`], [`Scheduler::release_kill_by`]: the kill
//!   switch, by principals allowed to move it, with a reason to engage.

use protocol::run::RunState;
use protocol::run_fields::RunField;
use serde::{Deserialize, Serialize};
use store::KillScope;
use uuid::Uuid;

use crate::auth::{Permission, Principal};
use crate::{Scheduler, SchedulerError, now_ms};

/// What to do to a run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Steer {
    Pause,
    /// `despite_alert`: resume although an alert fires for the campaign, and why.
    Resume {
        despite_alert: Option<String>,
    },
    Cancel,
}

impl Steer {
    /// The steering named by a route's last segment.
    pub fn parse(action: &str, despite_alert: Option<String>) -> Result<Self, String> {
        match action {
            "pause" => Ok(Self::Pause),
            "resume" => Ok(Self::Resume { despite_alert }),
            "cancel" => Ok(Self::Cancel),
            other => Err(format!(
                "unknown action {other:?}; use pause, resume, cancel or approve"
            )),
        }
    }

    fn default_reason(&self) -> &'static str {
        match self {
            Self::Pause => "paused by an operator",
            Self::Resume { .. } => "resumed by an operator",
            Self::Cancel => "cancelled by an operator",
        }
    }
}

/// What steering did: whether the state changed, and the run's state and
/// reason after it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Steered {
    pub changed: bool,
    pub state: RunState,
    pub reason: String,
    /// For the audit record: an override given (a firing alert).
    #[serde(skip)]
    pub note: Option<String>,
}

fn require(
    principal: &Principal,
    permission: Permission,
    what: &str,
) -> Result<(), SchedulerError> {
    if principal.role.allows(permission) {
        return Ok(());
    }
    Err(SchedulerError::Forbidden(format!(
        "{} (role {}) may not {what}",
        principal.name, principal.role
    )))
}

/// A reason as given, or the default when it is empty.
fn reason_or(reason: Option<&str>, default: &str) -> String {
    match reason.map(str::trim) {
        Some(reason) if !reason.is_empty() => reason.to_string(),
        _ => default.to_string(),
    }
}

impl Scheduler {
    /// Pauses, resumes or cancels a run for `by`.
    pub async fn steer(
        &self,
        run_id: Uuid,
        steer: Steer,
        reason: Option<&str>,
        by: &Principal,
    ) -> Result<Steered, SchedulerError> {
        require(by, Permission::SteerRun, "pause, resume or cancel runs")?;
        let reason = reason_or(reason, steer.default_reason());
        let mut note = None;
        let changed = match steer {
            Steer::Pause => self.pause(run_id, &reason).await?,
            Steer::Resume { despite_alert } => {
                note = despite_alert
                    .as_ref()
                    .map(|why| format!("despite a firing alert: {why}"));
                self.resume_with(run_id, &reason, despite_alert.as_deref(), Some(by))
                    .await?
            }
            Steer::Cancel => self.cancel(run_id, &reason).await?,
        };
        self.steered(run_id, changed, note).await
    }

    /// Approves the next wave of a rollout waiting for it, for `by`.
    pub async fn approve_wave_by(
        &self,
        run_id: Uuid,
        by: &Principal,
        reason: Option<&str>,
    ) -> Result<Steered, SchedulerError> {
        require(by, Permission::ApproveCampaign, "approve a rollout's waves")?;
        let progress = self.progress(run_id).await?;
        if progress.state != RunState::AwaitingApproval {
            return Err(SchedulerError::WrongState(format!(
                "run {run_id} is {}, not AwaitingApproval: nothing to approve",
                progress.state
            )));
        }
        // Without authentication every caller is `anonymous`: there are no
        // two people to tell apart (docs/src/security/access.md says so).
        if self.config().authenticated && progress.started_by == by.name {
            return Err(SchedulerError::Forbidden(format!(
                "{} started this run and cannot approve its waves; another approver must",
                by.name
            )));
        }
        let reason = reason_or(reason, "approved");
        let changed = self
            .approve_wave(
                run_id,
                &format!("next wave approved by {}: {reason}", by.name),
            )
            .await?;
        self.steered(run_id, changed, None).await
    }

    async fn steered(
        &self,
        run_id: Uuid,
        changed: bool,
        note: Option<String>,
    ) -> Result<Steered, SchedulerError> {
        let progress = self.progress(run_id).await?;
        Ok(Steered {
            changed,
            state: progress.state,
            reason: progress.reason,
            note,
        })
    }

    /// Engages a kill switch for `by`; the reason is required (it is shown
    /// to every operator).
    pub async fn engage_kill_by(
        &self,
        scope: &KillScope,
        reason: &str,
        cancel_in_flight: bool,
        by: &Principal,
    ) -> Result<(), SchedulerError> {
        require(by, Permission::EngageKill, "engage the kill switch")?;
        if reason.trim().is_empty() {
            return Err(SchedulerError::Invalid(
                "reason: required; say why everything stops (it is shown to every operator)".into(),
            ));
        }
        self.engage_kill_switch(scope, reason, cancel_in_flight)
            .await
    }

    /// Releases a kill switch for `by`.
    pub async fn release_kill_by(
        &self,
        scope: &KillScope,
        by: &Principal,
    ) -> Result<(), SchedulerError> {
        use store::Store as _;
        require(by, Permission::ReleaseKill, "release the kill switch")?;
        self.store().release_kill_switch(scope).await?;
        tracing::warn!(?scope, by = by.name.as_str(), "kill switch released");
        Ok(())
    }
}

/// The run-state changes steering makes, shared by every caller that steers
/// (the doors through [`Scheduler::steer`], alerts, freezes, a results
/// destination that stopped accepting).
impl Scheduler {
    /// Stops admitting and sending; in-flight commands finish.
    pub async fn pause(&self, run_id: Uuid, reason: &str) -> Result<bool, SchedulerError> {
        let paused = self
            .ledger
            .transition(run_id, &RunState::PAUSABLE, RunState::Paused, reason)
            .await?;
        if paused {
            self.announce(
                run_id,
                protocol::spec::NotifyEvent::Paused,
                &now_ms().to_string(),
            )
            .await;
        }
        Ok(paused)
    }

    /// Resumes a paused run — refused while an alert fires for its campaign
    /// (Alertmanager repeats a firing alert only hourly: a resumed run would
    /// run on unpaused meanwhile); see [`Scheduler::resume_despite_alert`].
    pub async fn resume(&self, run_id: Uuid, reason: &str) -> Result<bool, SchedulerError> {
        self.resume_with(run_id, reason, None, None).await
    }

    /// Resumes a paused run even while alerts fire for its campaign; the
    /// override and its reason are in the run's reason and the audit trail.
    pub async fn resume_despite_alert(
        &self,
        run_id: Uuid,
        reason: &str,
        override_reason: &str,
    ) -> Result<bool, SchedulerError> {
        self.resume_with(run_id, reason, Some(override_reason), None)
            .await
    }

    /// Resumes for `by` (`None`: the scheduler's own act, such as a freeze
    /// ending). Going on past a failed health gate is an override: it takes
    /// a principal who may also approve changes, decided on the same read
    /// of the run that the resume acts on.
    async fn resume_with(
        &self,
        run_id: Uuid,
        reason: &str,
        despite_alert: Option<&str>,
        by: Option<&Principal>,
    ) -> Result<bool, SchedulerError> {
        if despite_alert.is_some_and(|why| why.trim().is_empty()) {
            return Err(SchedulerError::Invalid(
                "despite_alert: give the reason for resuming while an alert fires".into(),
            ));
        }
        let fields = self.ledger.known_run_fields(run_id).await?;
        if let Some(by) = by
            && fields.get(RunField::GateFailedWave).is_some()
        {
            require(
                by,
                Permission::ApproveCampaign,
                "resume a run past a failed health gate: that takes a principal who may also approve changes (an admin), as overriding a change freeze does",
            )?;
        }
        let campaign = fields
            .get(RunField::Campaign)
            .unwrap_or_default()
            .to_string();
        let firing = self.firing_alerts(&campaign).await?;
        let names: Vec<String> = firing.iter().map(|alert| alert.alert.clone()).collect();
        let reason = match (names.is_empty(), despite_alert) {
            (true, _) => reason.to_string(),
            (false, None) if fields.state()? == RunState::Paused => {
                return Err(SchedulerError::AlertFiring(format!(
                    "run {run_id} stays paused: alert {} firing for campaign {campaign}; resume once it resolves, or with --despite-alert REASON",
                    names.join(", ")
                )));
            }
            (false, None) => reason.to_string(),
            (false, Some(why)) => {
                let reason = format!("{reason} (despite alert {}: {why})", names.join(", "));
                self.audit_internal(
                    "scheduler".into(),
                    "runs:resume-despite-alert",
                    format!("run {run_id}"),
                    reason.clone(),
                )
                .await;
                reason
            }
        };
        let reason = reason.as_str();
        // A run a failed gate paused goes on with its next wave.
        if self.resume_past_gate(run_id, &fields, reason).await? {
            self.advance(run_id).await?;
            return Ok(true);
        }
        // A run paused during discovery goes back to discovering; one whose
        // maintenance windows are closed waits outside them.
        let to = if fields.get(RunField::MaxInFlight).is_none() {
            RunState::Discovering
        } else if fields.get(RunField::SendUntilMs) == Some("0") {
            RunState::OutsideWindow
        } else {
            RunState::Running
        };
        let resumed = self
            .ledger
            .transition(run_id, &[RunState::Paused], to, reason)
            .await?;
        if resumed {
            self.advance(run_id).await?;
        }
        Ok(resumed)
    }

    /// Engages a kill switch; with `cancel_in_flight`, workers also call
    /// CancelCommand for every command still running under it as they next
    /// poll it (per location, under its rate limit), and its targets are
    /// reported `Cancelled`.
    pub async fn engage_kill_switch(
        &self,
        scope: &store::KillScope,
        reason: &str,
        cancel_in_flight: bool,
    ) -> Result<(), SchedulerError> {
        use store::Store as _;
        if cancel_in_flight {
            // First, so no worker sees the switch without the request.
            self.store().request_cancel_in_flight(scope).await?;
        }
        self.store().engage_kill_switch(scope, reason).await?;
        tracing::warn!(?scope, reason, cancel_in_flight, "kill switch engaged");
        let scope_text = match scope {
            store::KillScope::Global => "the global kill switch".to_string(),
            store::KillScope::Campaign(campaign) => format!("the kill switch of {campaign}"),
        };
        self.notify_deployment(
            protocol::spec::NotifyEvent::KillSwitch,
            &format!("{scope_text} is engaged: {reason}"),
        )
        .await;
        Ok(())
    }

    /// Cancels a run: nothing more is sent, and workers cancel its commands
    /// in flight (CancelCommand) as they next poll them.
    pub async fn cancel(&self, run_id: Uuid, reason: &str) -> Result<bool, SchedulerError> {
        let cancelled = self
            .ledger
            .transition(
                run_id,
                &[
                    RunState::Pending,
                    RunState::Discovering,
                    RunState::Running,
                    RunState::Baking,
                    RunState::AwaitingApproval,
                    RunState::OutsideWindow,
                    RunState::Paused,
                ],
                RunState::Cancelled,
                reason,
            )
            .await?;
        if cancelled {
            self.advance(run_id).await?;
        }
        Ok(cancelled)
    }
}

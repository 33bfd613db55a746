//! Runs: starting one, steering it (pause, resume, cancel) and reading where it is.

use std::collections::BTreeSet;
use std::sync::Arc;

use protocol::campaign::{Campaign, OutputLocation, TargetSelection, TargetSelector};
use protocol::job::{Batch, DiscoverJob, ExecuteJob, Location, Priority, RunContext};
use protocol::run::RunState;
use protocol::spec::CampaignSpec;
use protocol::{Job, SpecFormat};
use uuid::Uuid;

use crate::ledger::{BatchEntry, NewRun};
use crate::progress::progress_from;
pub use crate::progress::{FailureKind, RunProgress};
use crate::{Scheduler, SchedulerError, now_ms};

/// How many locations of a run are being discovered at once. Discover jobs
/// share the work queue with Execute jobs: published all at once (200,000
/// for a large run) they would stand in front of every Execute job of the
/// locations already discovered. A window of 1,024 keeps every worker busy
/// discovering while costing an Execute job at most 1,024 Discover jobs of
/// waiting (about half a second on the 2-core bench machine). Discovery opens
/// in chunks of a sixteenth of the window.
pub const DISCOVERY_WINDOW: std::num::NonZeroUsize = std::num::NonZeroUsize::new(1024).unwrap();

/// How a run is started.
#[derive(Debug, Clone)]
pub struct StartOptions {
    pub priority: Priority,
    /// Stop after discovery: report what would be targeted, send nothing.
    pub plan_only: bool,
    /// Only these locations (an event's) instead of accounts × regions.
    pub locations: Option<Vec<Location>>,
    /// Only these instances (an event's) instead of the campaign's targets.
    pub instance_ids: Option<Vec<String>>,
    /// Start this much later (an event trigger's delay).
    pub start_after: Option<std::time::Duration>,
    /// The stored campaign version, when started from the store.
    pub campaign_version: Option<u32>,
    pub started_by: String,
    /// A given run id (a schedule occurrence's); a run with it is not created twice.
    pub run_id: Option<Uuid>,
    /// Started during a change freeze, and why: the freeze does not pause it.
    pub freeze_override: Option<String>,
}

impl Default for StartOptions {
    fn default() -> Self {
        Self {
            priority: Priority::Bulk,
            plan_only: false,
            locations: None,
            instance_ids: None,
            start_after: None,
            campaign_version: None,
            started_by: "operator".into(),
            run_id: None,
            freeze_override: None,
        }
    }
}

/// A run's campaign and what every job of it carries.
#[derive(Debug)]
pub struct RunPlan {
    pub campaign: Campaign,
    /// The campaign's targets, or the run's override (an event's instance).
    pub targets: TargetSelection,
    /// The run's locations in admission order.
    pub locations: Vec<Location>,
    pub context: RunContext,
    /// Where the run's results go.
    pub results: crate::sink::ResultsStore,
}

impl RunPlan {
    pub fn discover_job(&self, location: &Location) -> Job {
        Job::Discover(DiscoverJob {
            job_id: DiscoverJob::derive_id(self.context.run_id, location, 0),
            run: self.context.clone(),
            location: location.clone(),
            targets: self.targets.clone(),
            page: 0,
            next_token: None,
        })
    }

    /// What every job of this run is, for workers to check jobs against.
    pub fn contract(&self) -> protocol::run::RunContract {
        protocol::run::RunContract::new(&self.context, &self.targets, &self.campaign.steps)
    }

    pub fn execute_job(&self, entry: &BatchEntry) -> Result<Job, SchedulerError> {
        let location = entry.location()?;
        let step = self
            .campaign
            .steps
            .get(usize::from(entry.step_index))
            .ok_or_else(|| {
                SchedulerError::Corrupt(format!(
                    "batch {} names step {} of a {}-step campaign",
                    entry.key(),
                    entry.step_index,
                    self.campaign.steps.len()
                ))
            })?;
        Ok(Job::Execute(ExecuteJob {
            job_id: ExecuteJob::derive_id(
                self.context.run_id,
                &location,
                entry.batch_id,
                entry.step_index,
            ),
            run: self.context.clone(),
            location,
            batch: Batch {
                batch_id: entry.batch_id,
                instance_ids: entry.instance_ids.clone(),
            },
            step_index: entry.step_index,
            step: step.clone(),
            collect_patch_compliance: step.is_patch_baseline(),
        }))
    }
}

/// The locations of a campaign whose accounts are `account_ids` (its listed ids
/// plus those of its OUs): minus exclusions, × its regions, in a stable order
/// (the FIFO of admission).
pub fn locations(campaign: &Campaign, account_ids: &[String]) -> Vec<Location> {
    let excluded: BTreeSet<&str> = campaign
        .accounts
        .exclude_accounts
        .iter()
        .map(String::as_str)
        .collect();
    let mut seen = BTreeSet::new();
    account_ids
        .iter()
        .filter(|id| !excluded.contains(id.as_str()) && seen.insert(id.as_str()))
        .flat_map(|account_id| {
            campaign.regions.iter().map(move |region| Location {
                account_id: account_id.clone(),
                region: region.clone(),
            })
        })
        .collect()
}

impl Scheduler {
    /// Records a new run of `campaign` and publishes one Discover job per location
    /// (or, with `start_after`, leaves it Pending for the ticker to start).
    ///
    /// Checks nothing but the run's size: who may start it, approval,
    /// freezes and live runs are the start gate's
    /// ([`Scheduler::start_run_as`]), which every door goes through. This is
    /// for the gate and for trusted library callers (tests, benches).
    pub async fn start_run_unchecked(
        &self,
        campaign: &Campaign,
        options: StartOptions,
    ) -> Result<Uuid, SchedulerError> {
        let run_id = options.run_id.unwrap_or_else(Uuid::new_v4);
        if options.run_id.is_some() && self.ledger.run_fields(run_id).await?.is_some() {
            return Ok(run_id);
        }
        let locations = match &options.locations {
            Some(locations) => locations.clone(),
            None => self.resolve_locations(campaign).await?,
        };
        let location_count = u64::try_from(locations.len()).unwrap_or(u64::MAX);
        let max_locations = self.config().max_locations;
        if location_count > max_locations {
            return Err(SchedulerError::Invalid(format!(
                "campaign {} resolves to {location_count} locations (accounts × regions); a run may have at most {max_locations} (the scheduler's --max-locations)",
                campaign.name
            )));
        }
        let output = self.results_store(&campaign.output)?.describe();
        let spec_json = serde_json::to_string(&campaign.spec)?;
        let targets_json = options
            .instance_ids
            .as_ref()
            .map(|ids| {
                serde_json::to_string(&TargetSelection {
                    selector: TargetSelector::InstanceIds(ids.clone()),
                    platform: None,
                    online_only: false,
                })
            })
            .transpose()?;
        let start_after_ms = options
            .start_after
            .filter(|delay| !delay.is_zero())
            .map(|delay| now_ms() + u64::try_from(delay.as_millis()).unwrap_or(u64::MAX));
        let new_run = NewRun {
            campaign: &campaign.name,
            campaign_version: options.campaign_version.unwrap_or(campaign.version),
            spec_json: &spec_json,
            priority: options.priority.as_str(),
            location_concurrency: campaign
                .rate_control
                .location_concurrency
                .concurrency(location_count),
            allowed_location_errors: campaign
                .rate_control
                .location_max_errors
                .allowed_errors(location_count),
            results_location: &output,
            // The limit to read the spec back under: at least what the
            // spec itself lists (it was valid when the run began).
            max_locations: self.accepted_max_locations().max(
                u64::try_from(campaign.accounts.ids.len())
                    .unwrap_or(u64::MAX)
                    .saturating_mul(u64::try_from(campaign.regions.len()).unwrap_or(u64::MAX)),
            ),
            created_ms: now_ms(),
            start_after_ms,
            plan_only: options.plan_only,
            targets_json: targets_json.as_deref(),
            started_by: &options.started_by,
            freeze_override: options.freeze_override.as_deref(),
            send_until_ms: crate::windows::send_until(campaign, now_ms()),
            rollout_bake_ms: campaign
                .rollout
                .as_ref()
                .map(|rollout| u64::try_from(rollout.bake.as_millis()).unwrap_or(u64::MAX)),
        };
        self.ledger.create_run(run_id, &new_run, &locations).await?;
        self.metrics
            .run_started(&campaign.name, &options.started_by);
        tracing::info!(
            %run_id,
            campaign = campaign.name.as_str(),
            locations = locations.len(),
            started_by = options.started_by.as_str(),
            "run created"
        );
        if start_after_ms.is_none() {
            self.begin_discovery(run_id).await?;
        }
        Ok(run_id)
    }

    /// Records the run's contract and opens its first locations' discovery
    /// (a run with no location is discovered at once).
    pub(crate) async fn begin_discovery(&self, run_id: Uuid) -> Result<(), SchedulerError> {
        let plan = self.plan(run_id).await?;
        self.ledger
            .record_contract(plan.context.run_id, &plan.contract())
            .await?;
        self.discover_more(run_id).await?;
        if plan.locations.is_empty() {
            self.discovery_complete(run_id).await?;
        }
        Ok(())
    }

    /// Opens the discovery of the next locations — at most the configured
    /// window ([`DISCOVERY_WINDOW`] by default) are being discovered at once —
    /// and publishes their Discover jobs (first page; workers follow the
    /// pages themselves). Called when a run begins and whenever a location's
    /// discovery ends.
    pub(crate) async fn discover_more(&self, run_id: Uuid) -> Result<(), SchedulerError> {
        let window = self.config().discovery_window.get();
        // Published in chunks of a sixteenth of the window: one confirm
        // round per chunk rather than per location.
        let chunk = (window / 16).max(1);
        let opened = self.ledger.open_discovery(run_id, window, chunk).await?;
        if opened.is_empty() {
            return Ok(());
        }
        let plan = self.plan(run_id).await?;
        let locations: Vec<&Location> = opened
            .iter()
            .filter_map(|&index| plan.locations.get(index))
            .collect();
        self.publish_discovery(&plan, &locations).await
    }

    /// Publishes the Discover jobs of locations whose discovery was opened
    /// but not recorded as published (whoever opened it died or failed
    /// before that), then opens more. Repeating it is harmless: a page seen
    /// twice is recorded once.
    pub(crate) async fn rediscover(&self, run_id: Uuid) -> Result<(), SchedulerError> {
        let unpublished: std::collections::HashSet<String> = self
            .ledger
            .discovery_unpublished(run_id)
            .await?
            .into_iter()
            .collect();
        if !unpublished.is_empty() {
            let plan = self.plan(run_id).await?;
            let locations: Vec<&Location> = plan
                .locations
                .iter()
                .filter(|location| unpublished.contains(&crate::ledger::location_key(location)))
                .collect();
            self.publish_discovery(&plan, &locations).await?;
        }
        self.discover_more(run_id).await
    }

    async fn publish_discovery(
        &self,
        plan: &RunPlan,
        locations: &[&Location],
    ) -> Result<(), SchedulerError> {
        let jobs: Vec<Job> = locations
            .iter()
            .map(|location| plan.discover_job(location))
            .collect();
        let published = self.broker.publish_jobs(&jobs).await?;
        self.metrics.jobs_published("discover", published);
        let keys: Vec<String> = locations
            .iter()
            .map(|location| crate::ledger::location_key(location))
            .collect();
        self.ledger
            .discovery_published(plan.context.run_id, &keys)
            .await
    }

    /// Publishes the Execute jobs of admitted batches.
    pub(crate) async fn publish_batches(
        &self,
        plan: &RunPlan,
        batches: &[crate::ledger::BatchEntry],
    ) -> Result<(), SchedulerError> {
        let jobs = batches
            .iter()
            .map(|entry| plan.execute_job(entry))
            .collect::<Result<Vec<_>, _>>()?;
        let published = self.broker.publish_jobs(&jobs).await?;
        self.metrics.jobs_published("execute", published);
        Ok(())
    }

    /// Starts Pending runs whose time has come (called every second).
    pub async fn start_due_runs(&self) -> Result<usize, SchedulerError> {
        let due = self.ledger.take_due_runs(now_ms()).await?;
        let mut started = 0;
        for run_id in due {
            if self
                .ledger
                .transition(
                    run_id,
                    &[RunState::Pending],
                    RunState::Discovering,
                    "start time reached",
                )
                .await?
            {
                self.begin_discovery(run_id).await?;
                started += 1;
            }
        }
        Ok(started)
    }

    /// The run's plan, from memory or rebuilt from the spec stored with the run.
    pub async fn plan(&self, run_id: Uuid) -> Result<Arc<RunPlan>, SchedulerError> {
        if let Some(plan) = self.cached_plan(run_id) {
            return Ok(plan);
        }
        let fields = self.ledger.known_run_fields(run_id).await?;
        let spec: CampaignSpec = serde_json::from_str(fields.get("spec").unwrap_or_default())?;
        let spec_json = serde_json::to_string(&spec)?;
        // Under the limit the run was started with (its locations are
        // fixed already): a changed --max-locations never breaks a live run.
        let max_locations = fields
            .get("max_locations")
            .and_then(|limit| limit.parse().ok())
            .unwrap_or_else(|| self.accepted_max_locations());
        let campaign = Campaign::parse_within(&spec_json, SpecFormat::Json, max_locations)
            .map_err(|errors| {
                SchedulerError::Corrupt(format!("stored campaign no longer valid: {errors}"))
            })?;
        let priority = match fields.get("priority") {
            Some("urgent") => Priority::Urgent,
            _ => Priority::Bulk,
        };
        let targets = match fields.get("targets") {
            Some(targets) => serde_json::from_str(targets)?,
            None => campaign.targets.clone(),
        };
        let locations = self.ledger.locations(run_id).await?;
        let plan = Arc::new(RunPlan {
            targets,
            locations,
            context: RunContext {
                run_id,
                campaign: campaign.name.clone(),
                campaign_version: campaign.version,
                role: campaign.role.clone(),
                api_rate_limits: campaign.api_rate_limits,
                priority,
                output_logging: campaign.output_logging.clone(),
            },
            results: self.results_store(&campaign.output)?,
            campaign,
        });
        self.plans
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .insert(run_id, plan.clone());
        Ok(plan)
    }

    /// The results store of a campaign's `output`.
    pub fn results_store(
        &self,
        output: &OutputLocation,
    ) -> Result<crate::sink::ResultsStore, SchedulerError> {
        match output {
            OutputLocation::Local(path) => Ok(crate::sink::ResultsStore::Local(path.clone())),
            OutputLocation::S3 { bucket, prefix } => {
                crate::sink::ResultsStore::s3(bucket, prefix, &self.config.s3).map_err(|error| {
                    SchedulerError::Invalid(format!("output s3://{bucket}/{prefix}: {error}"))
                })
            }
        }
    }

    fn cached_plan(&self, run_id: Uuid) -> Option<Arc<RunPlan>> {
        self.plans
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .get(&run_id)
            .cloned()
    }

    pub async fn progress(&self, run_id: Uuid) -> Result<RunProgress, SchedulerError> {
        let fields = self.ledger.known_run_fields(run_id).await?;
        let counters = self.ledger.counters(run_id).await?;
        progress_from(run_id, &fields, counters)
    }

    /// Stops admitting and sending; in-flight commands finish.
    pub async fn pause(&self, run_id: Uuid, reason: &str) -> Result<bool, SchedulerError> {
        let paused = self
            .ledger
            .transition(
                run_id,
                &[
                    RunState::Running,
                    RunState::Discovering,
                    RunState::Baking,
                    RunState::AwaitingApproval,
                    RunState::OutsideWindow,
                ],
                RunState::Paused,
                reason,
            )
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
        self.resume_with(run_id, reason, None).await
    }

    /// Resumes a paused run even while alerts fire for its campaign; the
    /// override and its reason are in the run's reason and the audit trail.
    pub async fn resume_despite_alert(
        &self,
        run_id: Uuid,
        reason: &str,
        override_reason: &str,
    ) -> Result<bool, SchedulerError> {
        if override_reason.trim().is_empty() {
            return Err(SchedulerError::Invalid(
                "despite_alert: give the reason for resuming while an alert fires".into(),
            ));
        }
        self.resume_with(run_id, reason, Some(override_reason))
            .await
    }

    async fn resume_with(
        &self,
        run_id: Uuid,
        reason: &str,
        despite_alert: Option<&str>,
    ) -> Result<bool, SchedulerError> {
        let fields = self.ledger.known_run_fields(run_id).await?;
        let campaign = fields.get("campaign").unwrap_or_default().to_string();
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
        let to = if fields.get("max_in_flight").is_none() {
            RunState::Discovering
        } else if fields.get("send_until_ms") == Some("0") {
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
        );
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

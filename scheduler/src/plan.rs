//! A run's plan: its campaign (rebuilt from the spec stored with the run,
//! under the location limit it began with), the targets, locations and
//! context every job of it carries, and where its results go. Cached per
//! scheduler; rebuilt from Redis after a restart.

use std::sync::Arc;

use protocol::campaign::{Campaign, OutputLocation, TargetSelection};
use protocol::job::{Batch, DiscoverJob, ExecuteJob, Location, Priority, RunContext};
use protocol::run_fields::RunField;
use protocol::spec::CampaignSpec;
use protocol::{Job, SpecFormat};
use uuid::Uuid;

use crate::ledger::BatchEntry;
use crate::{Scheduler, SchedulerError};

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
    /// Per step: whether it changes hosts (is not on the deployment's
    /// read-only list), so its batches are re-checked before sending.
    pub recheck_steps: Vec<bool>,
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
            window_tag: self.campaign.window_tag(),
        })
    }

    /// What every job of this run is, for workers to check jobs against.
    pub fn contract(&self) -> protocol::run::RunContract {
        protocol::run::RunContract::new(
            &self.context,
            &self.targets,
            &self.campaign.steps,
            &self.campaign.target_windows(),
        )
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
            recheck: self
                .recheck_steps
                .get(usize::from(entry.step_index))
                .copied()
                .unwrap_or(true)
                .then(|| self.targets.clone()),
            window: self
                .campaign
                .target_window(entry.window.and_then(|w| usize::from(w).checked_sub(1))),
        }))
    }
}

impl Scheduler {
    /// The run's plan, from memory or rebuilt from the spec stored with the run.
    pub async fn plan(&self, run_id: Uuid) -> Result<Arc<RunPlan>, SchedulerError> {
        if let Some(plan) = self.cached_plan(run_id) {
            return Ok(plan);
        }
        let fields = self.ledger.known_run_fields(run_id).await?;
        let spec: CampaignSpec =
            serde_json::from_str(fields.get(RunField::Spec).unwrap_or_default())?;
        let spec_json = serde_json::to_string(&spec)?;
        // Under the limit the run was started with (its locations are
        // fixed already): a changed --max-locations never breaks a live run.
        let max_locations = fields
            .get(RunField::MaxLocations)
            .and_then(|limit| limit.parse().ok())
            .unwrap_or_else(|| self.accepted_max_locations());
        let campaign = Campaign::parse_within(&spec_json, SpecFormat::Json, max_locations)
            .map_err(|errors| {
                SchedulerError::Corrupt(format!("stored campaign no longer valid: {errors}"))
            })?;
        let priority = match fields.get(RunField::Priority) {
            Some("urgent") => Priority::Urgent,
            _ => Priority::Bulk,
        };
        let targets = match fields.get(RunField::Targets) {
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
            recheck_steps: campaign
                .steps
                .iter()
                .map(|step| {
                    crate::approvals::step_changes_hosts(step, &self.config().read_only_documents)
                })
                .collect(),
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
}

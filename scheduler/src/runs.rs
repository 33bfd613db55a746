//! Runs: creating one (accounts × regions → locations), opening its
//! discovery, publishing its jobs, and reading where it is.

use std::collections::BTreeSet;

use protocol::Job;
use protocol::campaign::{Campaign, TargetSelection};
use protocol::job::{Location, Priority};
use protocol::run::RunState;
use uuid::Uuid;

use crate::ledger::NewRun;
use crate::plan::RunPlan;
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
    /// The campaign's targets narrowed (by an event, to its instance; see
    /// [`TargetSelection::narrowed_to`]) instead of the campaign's targets.
    pub targets: Option<TargetSelection>,
    /// Start this much later (an event trigger's delay).
    pub start_after: Option<std::time::Duration>,
    /// The stored campaign version, when started from the store.
    pub campaign_version: Option<u32>,
    pub started_by: String,
    /// A given run id (a schedule occurrence's); a run with it is not created twice.
    pub run_id: Option<Uuid>,
    /// Started during a change freeze, and why: the freeze does not pause it.
    pub freeze_override: Option<String>,
    /// What the starter overrode (accounts, regions, instances, parameters)
    /// and who: kept with the run.
    pub overrides: Option<String>,
}

impl Default for StartOptions {
    fn default() -> Self {
        Self {
            priority: Priority::Bulk,
            plan_only: false,
            locations: None,
            targets: None,
            start_after: None,
            campaign_version: None,
            started_by: "operator".into(),
            run_id: None,
            freeze_override: None,
            overrides: None,
        }
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
        self.config()
            .output_roots
            .check(&campaign.output)
            .map_err(SchedulerError::Invalid)?;
        let output = self.results_store(&campaign.output)?.describe();
        let spec_json = serde_json::to_string(&campaign.spec)?;
        let targets_json = options
            .targets
            .as_ref()
            .map(serde_json::to_string)
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
            overrides: options.overrides.as_deref(),
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

    pub async fn progress(&self, run_id: Uuid) -> Result<RunProgress, SchedulerError> {
        let fields = self.ledger.known_run_fields(run_id).await?;
        let counters = self.ledger.counters(run_id).await?;
        progress_from(run_id, &fields, counters)
    }

    /// A run's progress for a list of runs: a record that cannot be read
    /// (garbled, its hash deleted) is listed as unreadable and counted
    /// (`flotilla_scheduler_unreadable_runs_total`) — one bad record never
    /// hides the others. An outage is still an error.
    pub async fn progress_listed(&self, run_id: Uuid) -> Result<RunProgress, SchedulerError> {
        match self.progress(run_id).await {
            Err(error) if !error.is_retryable() => {
                tracing::error!(%run_id, %error, "run record unreadable; listed as such");
                self.metrics.unreadable_run();
                Ok(RunProgress::unreadable(run_id, error.to_string()))
            }
            read => read,
        }
    }
}

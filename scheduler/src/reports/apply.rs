//! What a report changes: the ledger's counts, the results files, and what
//! follows — admitting more, completing, halting, draining what never started.

use protocol::run_fields::RunField;
use std::collections::HashMap;

use protocol::Report;
use protocol::report::{StepResults, TargetResult, TargetsDiscovered};
use protocol::run::RunState;
use protocol::status::StatusDetail;
use uuid::Uuid;

use super::report_kind;
use crate::ledger::{BatchEntry, PageRecorded, ResultsApplication, location_key};
use crate::sink::{ResultLine, ResultPath, ResultRecord};
use crate::{Scheduler, SchedulerError};

/// The largest batch the scheduler admits (SendCommand's limit on InstanceIds).
const MAX_BATCH: u64 = protocol::job::MAX_BATCH_SIZE as u64;

impl Scheduler {
    pub async fn handle_report(&self, report: &Report) -> Result<(), SchedulerError> {
        let run_id = report.run_id();
        let kind = report_kind(report);
        let applied = self.apply_report(report).await;
        // Results reports are counted as the ledger applies them (a sink
        // write that fails is counted by its retry, not here).
        if !matches!(report, Report::StepResults(_)) {
            self.metrics
                .report(kind, if applied.is_ok() { "applied" } else { "failed" });
        }
        applied?;
        self.advance(run_id).await
    }

    async fn apply_report(&self, report: &Report) -> Result<(), SchedulerError> {
        let run_id = report.run_id();
        match report {
            Report::TargetsDiscovered(discovered) => self.apply_discovered(discovered).await?,
            Report::LocationFailed(failed) => {
                let run_wide = failed.reason.is_run_wide();
                let reason = if run_wide {
                    format!(
                        "SSM refused the step, as it would in every location: {}; fix the campaign and start a new run (no target was charged to the error budget)",
                        failed.detail
                    )
                } else {
                    format!("{:?}: {}", failed.reason, failed.detail)
                };
                let (new, complete) = self
                    .ledger
                    .record_location_failed(run_id, &failed.location, &reason, run_wide)
                    .await?;
                if !new {
                    self.resolve_after_a_repeat(run_id).await?;
                } else if complete {
                    self.discovery_complete(run_id).await?;
                } else {
                    self.discover_more(run_id).await?;
                }
            }
            Report::StepResults(results) => {
                self.write_results(results).await?;
                self.apply_results(run_id, &[results]).await?;
            }
        }
        Ok(())
    }

    async fn apply_discovered(&self, report: &TargetsDiscovered) -> Result<(), SchedulerError> {
        let recorded = self.record_discovered(report).await?;
        self.after_pages(report.run_id, &[recorded]).await
    }

    /// Records a discovery report's page (once, however often it comes).
    pub(super) async fn record_discovered(
        &self,
        report: &TargetsDiscovered,
    ) -> Result<PageRecorded, SchedulerError> {
        let plan = self.plan(report.run_id).await?;
        if plan.campaign.window_tag.is_some() {
            return self
                .ledger
                .record_windowed_page(
                    report.run_id,
                    &report.location,
                    report.page,
                    window_groups(&plan.campaign, report),
                    report.last_page,
                )
                .await;
        }
        let ids: Vec<String> = report
            .targets
            .iter()
            .map(|target| target.instance_id.clone())
            .collect();
        self.ledger
            .record_page(
                report.run_id,
                &report.location,
                report.page,
                &ids,
                report.last_page,
            )
            .await
    }

    /// What the pages of a run just recorded call for, once for all of them
    /// (a bundle's): the limits resolved again and more discovery opened
    /// when a location is discovered, for good when every one is; and, when
    /// a page was seen before, what its first holder may have left undone.
    pub(super) async fn after_pages(
        &self,
        run_id: Uuid,
        recorded: &[PageRecorded],
    ) -> Result<(), SchedulerError> {
        if recorded.iter().any(|page| !page.new) {
            self.resolve_after_a_repeat(run_id).await?;
        }
        if recorded.iter().any(|page| page.all_discovered) {
            self.discovery_complete(run_id).await?;
        } else if recorded.iter().any(|page| page.location_discovered) {
            self.resolve_limits(run_id, false).await?;
            self.discover_more(run_id).await?;
        }
        Ok(())
    }

    /// A discovery report seen before: the attempt that recorded it may have
    /// stopped before resolving the limits it called for or before opening
    /// (and publishing) more discovery (it died, or its write was not
    /// replicated in time and it failed after it), so the limits are resolved
    /// again from the ledger's counts and open discovery is published again.
    /// Repeating this is harmless.
    async fn resolve_after_a_repeat(&self, run_id: Uuid) -> Result<(), SchedulerError> {
        self.rediscover(run_id).await?;
        let fields = self
            .ledger
            .known_run_fields_of(
                run_id,
                &[RunField::DiscoveredLocations, RunField::LocationCount],
            )
            .await?;
        let discovered = fields.number(RunField::DiscoveredLocations)?;
        if discovered >= fields.number(RunField::LocationCount)? {
            self.discovery_complete(run_id).await
        } else if discovered > 0 {
            self.resolve_limits(run_id, false).await
        } else {
            Ok(())
        }
    }

    /// Every location is discovered: the total is known, so percentages resolve
    /// for good.
    pub(crate) async fn discovery_complete(&self, run_id: Uuid) -> Result<(), SchedulerError> {
        self.resolve_limits(run_id, true).await
    }

    /// Resolves the run's `max_concurrency` and `max_errors` against the targets
    /// discovered so far (`all_discovered`: against the total) and lets
    /// execution start — or go on — with them. Execution starts with the first
    /// location discovered; as more are, the limits grow, and they never exceed
    /// what the total gives, because the count discovered so far never exceeds
    /// the total. A location's own limits (`location_concurrency`,
    /// `location_max_errors`) resolve against the run's locations, known from
    /// the start.
    async fn resolve_limits(
        &self,
        run_id: Uuid,
        all_discovered: bool,
    ) -> Result<(), SchedulerError> {
        let plan = self.plan(run_id).await?;
        let fields = self
            .ledger
            .known_run_fields_of(
                run_id,
                &[RunField::Total, RunField::PlanOnly, RunField::LocationCount],
            )
            .await?;
        let total = fields.number(RunField::Total)?;
        let rate = &plan.campaign.rate_control;
        let max_in_flight = rate.max_concurrency.concurrency(total).max(1);
        // At least two batches fit under the limit, so one finishing lets the
        // next start while the other still runs.
        let batch_size = (max_in_flight / 2).clamp(1, MAX_BATCH);
        let allowed_errors = rate.max_errors.allowed_errors(total);
        if fields.get(RunField::PlanOnly) == Some("1") {
            if !all_discovered {
                return Ok(());
            }
            let reason = format!(
                "plan only: {total} targets in {} locations",
                fields.number(RunField::LocationCount)?
            );
            self.ledger
                .transition(
                    run_id,
                    &[RunState::Discovering],
                    RunState::Completed,
                    &reason,
                )
                .await?;
            tracing::info!(%run_id, total, "plan complete");
            return Ok(());
        }
        let waves = match (&plan.campaign.rollout, all_discovered) {
            (Some(rollout), true) => Some(
                self.resolve_waves(run_id, rollout, &plan.campaign.regions, total)
                    .await?,
            ),
            _ => None,
        };
        let state = self
            .ledger
            .start_execution(
                run_id,
                max_in_flight,
                batch_size,
                allowed_errors,
                total,
                waves
                    .as_ref()
                    .map(|(caps, canary)| (caps.as_slice(), canary.as_slice())),
            )
            .await?;
        if all_discovered {
            tracing::info!(%run_id, total, max_in_flight, allowed_errors, state = state.as_str(), "discovery complete");
        } else {
            tracing::debug!(%run_id, discovered = total, max_in_flight, allowed_errors, "a location is discovered; limits resolved so far");
        }
        Ok(())
    }

    /// Writes a results report's lines to the run's results destination:
    /// durable before the ledger counts them.
    pub(super) async fn write_results(&self, report: &StepResults) -> Result<(), SchedulerError> {
        let plan = self.plan(report.run_id).await?;
        let step_name = step_name(&plan.campaign, report.step_index)?;
        let lines: Vec<ResultLine<'_>> = report
            .results
            .iter()
            .map(|result| {
                let mut line = ResultLine::new(
                    report.run_id,
                    &plan.campaign.name,
                    &report.location,
                    (report.batch_id, report.step_index, step_name),
                    result,
                );
                line.output_location = plan
                    .campaign
                    .output_logging
                    .as_ref()
                    .zip(line.command_id)
                    .and_then(|(logging, command_id)| {
                        logging.s3_location(command_id, line.instance_id)
                    });
                line
            })
            .collect();
        let path = ResultPath::new(
            report.run_id,
            &report.location,
            report.batch_id,
            report.step_index,
        )
        .map_err(SchedulerError::Invalid)?;
        plan.results.write_batch(&path, &lines).await?;
        Ok(())
    }

    /// Counts results reports of one run whose lines are written
    /// ([`Self::write_results`]): one ledger script call for all of them
    /// (a bundle's), then the metrics and the fleet's compliance view of
    /// those applied now (not of repeats). Each report counts once however
    /// often it comes.
    pub(super) async fn apply_results(
        &self,
        run_id: Uuid,
        reports: &[&StepResults],
    ) -> Result<(), SchedulerError> {
        let plan = self.plan(run_id).await?;
        let applications = reports
            .iter()
            .map(|report| results_application(&plan.campaign, report))
            .collect::<Result<Vec<_>, _>>()?;
        let applied = self
            .ledger
            .apply_results_bundle(run_id, &applications)
            .await;
        let (new, state) = match applied {
            Ok(applied) => applied,
            Err(error) => {
                for _ in reports {
                    self.metrics.report("step_results", "failed");
                }
                return Err(error);
            }
        };
        for new in &new {
            // A repeat another replica (or this bundle) applied first.
            self.metrics
                .report("step_results", if *new { "applied" } else { "duplicate" });
        }
        let mut compliance = Vec::new();
        let mut failures = 0;
        for (report, _) in reports.iter().zip(&new).filter(|(_, new)| **new) {
            for result in &report.results {
                self.metrics
                    .result(&plan.campaign.name, result.status.as_ssm_str());
                failures += u64::from(result.status.counts_against_error_budget());
                // The fleet view keeps each instance's latest compliance.
                if let Some(counts) = result.compliance {
                    compliance.push((result.instance_id.as_str(), &report.location, counts));
                }
            }
        }
        // Secondary to the run: a failure is logged, the next scan mends it.
        if let Err(error) = self
            .record_compliance(run_id, &plan.campaign.name, &compliance)
            .await
        {
            tracing::warn!(%run_id, error = %error, "could not update the fleet compliance view");
        }
        if state == RunState::Halted && failures > 0 {
            tracing::warn!(%run_id, "run halted by its error budget");
        }
        Ok(())
    }

    /// Admits what may start, completes a finished run, drains a stopped one.
    pub async fn advance(&self, run_id: Uuid) -> Result<(), SchedulerError> {
        let plan = self.plan(run_id).await?;
        let now = crate::now_ms();
        let open = crate::windows::open_target_windows(&plan.campaign, now);
        let admission = self.ledger.admit_in_windows(run_id, now, &open).await?;
        if !admission.batches.is_empty() {
            self.publish_batches(&plan, &admission.batches).await?;
        }
        if let (RunState::Baking, Some(until)) = (admission.state, admission.bake_until_ms) {
            // Idempotent: every advance of a baking run indexes it again, so a
            // replica that died between the script and this line loses nothing.
            self.ledger
                .index_run(&self.ledger.names().baking_runs_key(), run_id, until)
                .await?;
        }
        // The admission completed the run if every location is done.
        let state = admission.state;
        if state == RunState::Completed {
            tracing::info!(%run_id, "run completed");
        }
        let event = match state {
            RunState::Completed => Some(protocol::spec::NotifyEvent::Completed),
            RunState::Halted => Some(protocol::spec::NotifyEvent::Halted),
            RunState::Cancelled => Some(protocol::spec::NotifyEvent::Cancelled),
            _ => None,
        };
        if let Some(event) = event {
            self.announce(run_id, event, "run").await;
        }
        if matches!(state, RunState::Halted | RunState::Cancelled) {
            self.drain(run_id).await?;
        }
        Ok(())
    }

    /// A halted or cancelled run with nothing in flight: every target it never
    /// started gets a NotStarted result.
    async fn drain(&self, run_id: Uuid) -> Result<(), SchedulerError> {
        let fields = self
            .ledger
            .known_run_fields_of(
                run_id,
                &[
                    RunField::DiscoveredLocations,
                    RunField::LocationCount,
                    RunField::Drained,
                    RunField::InFlight,
                    RunField::Reason,
                ],
            )
            .await?;
        let discovery_done = fields.number(RunField::DiscoveredLocations)?
            >= fields.number(RunField::LocationCount)?;
        if fields.get(RunField::Drained).is_some()
            || fields.number(RunField::InFlight)? > 0
            || !discovery_done
        {
            return Ok(());
        }
        let plan = self.plan(run_id).await?;
        let reason = fields
            .get(RunField::Reason)
            .unwrap_or("run stopped")
            .to_string();
        let mut counters: HashMap<String, u64> = HashMap::new();
        for entry in self.ledger.never_started(run_id).await? {
            let location = entry.location()?;
            let step_name = plan
                .campaign
                .steps
                .get(usize::from(entry.step_index))
                .map(|step| step.name.clone())
                .unwrap_or_default();
            let records: Vec<ResultRecord> = entry
                .instance_ids
                .iter()
                .map(|instance_id| {
                    ResultRecord::new(
                        run_id,
                        &plan.campaign.name,
                        &location,
                        entry.batch_id,
                        entry.step_index,
                        &step_name,
                        TargetResult::not_started(instance_id, &reason),
                    )
                })
                .collect();
            *counters
                .entry(format!(
                    "{}:{}",
                    entry.step_index,
                    StatusDetail::NotStarted.as_ssm_str()
                ))
                .or_default() += records.len() as u64;
            let path = ResultPath::new(run_id, &location, entry.batch_id, entry.step_index)
                .map_err(SchedulerError::Corrupt)?;
            plan.results.write_batch(&path, &records).await?;
        }
        if self.ledger.mark_drained(run_id, &counters).await? {
            let not_started: u64 = counters.values().sum();
            tracing::info!(%run_id, not_started, "stopped run drained");
        }
        Ok(())
    }

    /// Publishes every batch of the run that is admitted and not yet reported.
    /// Copies of a job already queued are harmless: the first to claim the send
    /// sends, the others resume its command or find it done.
    pub async fn republish_admitted(&self, run_id: Uuid) -> Result<usize, SchedulerError> {
        let plan = self.plan(run_id).await?;
        let admitted = self.ledger.admitted(run_id).await?;
        self.publish_batches(&plan, &admitted).await?;
        Ok(admitted.len())
    }

    /// What a replica that applied a report and died before acking it may
    /// have left undone: publishing the batches it admitted, admitting more,
    /// completing or draining the run. Repeating any of it is harmless.
    pub(crate) async fn finish_for_a_lost_holder(
        &self,
        run_id: Uuid,
    ) -> Result<(), SchedulerError> {
        self.republish_admitted(run_id).await?;
        self.advance(run_id).await
    }

    /// Re-publishes what live runs admitted (a previous scheduler may have died
    /// between admitting and publishing), re-starts discovery of locations not
    /// yet discovered, and advances every live run.
    /// Reads the live index only (backfilled once from the history), so a
    /// reconnect costs what is live, not every run ever made; a run whose
    /// record does not parse is logged and skipped — it never keeps the
    /// others from recovering.
    pub async fn recover(&self) -> Result<(), SchedulerError> {
        self.ledger.backfill_live_index().await?;
        for (run_id, fields) in self.ledger.live_runs().await? {
            let state = match fields.state() {
                Ok(state) => state,
                Err(error) => {
                    tracing::error!(%run_id, error = %error, "run record unreadable; not recovered");
                    self.metrics.unreadable_run();
                    continue;
                }
            };
            if fields.is_settled(state) {
                continue;
            }
            if let Err(error) = self.recover_run(run_id, &fields, state).await {
                crate::outage_or_log(error, &format!("recovery of run {run_id}"))?;
            }
        }
        Ok(())
    }

    /// [`Scheduler::recover`] for one run.
    async fn recover_run(
        &self,
        run_id: Uuid,
        fields: &crate::ledger::RunFields,
        state: RunState,
    ) -> Result<(), SchedulerError> {
        let republished = self.republish_admitted(run_id).await?;
        if state != RunState::Pending
            && fields.number(RunField::DiscoveredLocations)?
                < fields.number(RunField::LocationCount)?
        {
            if state == RunState::Cancelled {
                // A cancel ends discovery; one that did not (an older
                // scheduler's) does it now: workers take no Discover job of
                // a cancelled run.
                self.ledger.end_discovery(run_id).await?;
            } else if fields.get(RunField::DiscoverNext).is_some() {
                self.rediscover(run_id).await?;
            } else {
                // Created before the discovery window (or its contract
                // was never recorded): begin as a new run does.
                self.begin_discovery(run_id).await?;
            }
        }
        tracing::info!(%run_id, state = state.as_str(), republished, "recovered run");
        self.advance(run_id).await
    }
}

/// The name of step `index` of `campaign`.
fn step_name(campaign: &protocol::Campaign, index: u16) -> Result<&str, SchedulerError> {
    campaign
        .steps
        .get(usize::from(index))
        .map(|step| step.name.as_str())
        .ok_or_else(|| SchedulerError::Invalid(format!("results for unknown step {index}")))
}

/// What a results report changes in the ledger: its counters, failures and
/// the batch's next step (the targets that succeeded, when a step follows).
fn results_application(
    campaign: &protocol::Campaign,
    report: &StepResults,
) -> Result<ResultsApplication, SchedulerError> {
    step_name(campaign, report.step_index)?;
    let location = location_key(&report.location);
    let succeeded: Vec<String> = report
        .results
        .iter()
        .filter(|result| result.status == StatusDetail::Success)
        .map(|result| result.instance_id.clone())
        .collect();
    let next_step = report.step_index + 1;
    let next =
        (usize::from(next_step) < campaign.steps.len() && !succeeded.is_empty()).then(|| {
            BatchEntry {
                location: location.clone(),
                batch_id: report.batch_id,
                step_index: next_step,
                instance_ids: succeeded,
                window: None, // the admitted entry's, added by the script
            }
        });
    let entry_key = BatchEntry {
        location: location.clone(),
        batch_id: report.batch_id,
        step_index: report.step_index,
        instance_ids: Vec::new(),
        window: None,
    }
    .key();
    Ok(ResultsApplication {
        entry_key,
        location,
        targets: report.results.len(),
        failures: report
            .results
            .iter()
            .filter(|result| result.status.counts_against_error_budget())
            .count() as u64,
        counters: count_by_status(report.step_index, &report.results),
        next,
    })
}

/// A report's counters: targets per `step:status`, and failed targets per
/// `f:step:status:cause` (the cause as [`crate::failures::failure_kind`]
/// groups it; the ledger keeps at most [`crate::failures::MAX_FAILURE_KINDS`]
/// causes a run, the rest as `other`).
fn count_by_status(step_index: u16, results: &[TargetResult]) -> HashMap<String, u64> {
    let mut counters = HashMap::new();
    for result in results {
        let status = result.status.as_ssm_str();
        *counters
            .entry(format!("{step_index}:{status}"))
            .or_default() += 1;
        if !matches!(
            result.status,
            StatusDetail::Success | StatusDetail::NotStarted
        ) {
            let cause = crate::failures::failure_kind(&result.output_excerpt);
            *counters
                .entry(format!("f:{step_index}:{status}:{cause}"))
                .or_default() += 1;
        }
    }
    counters
}

/// Per-target windows: a page's instances by the window their tag names (its
/// index from 1; 0 for an instance whose tag names none of the campaign's
/// windows — never sent), in the page's order within each window.
fn window_groups(
    campaign: &protocol::Campaign,
    report: &TargetsDiscovered,
) -> Vec<crate::ledger::WindowGroup> {
    let index_of = |name: &str| {
        campaign
            .windows
            .iter()
            .position(|window| window.name.as_deref() == Some(name))
            .and_then(|index| u16::try_from(index + 1).ok())
    };
    let mut groups: std::collections::BTreeMap<u16, Vec<String>> = Default::default();
    for target in &report.targets {
        let window = target.window.as_deref().and_then(index_of).unwrap_or(0);
        groups
            .entry(window)
            .or_default()
            .push(target.instance_id.clone());
    }
    groups
        .into_iter()
        .map(|(window, instance_ids)| crate::ledger::WindowGroup {
            window,
            instance_ids,
        })
        .collect()
}

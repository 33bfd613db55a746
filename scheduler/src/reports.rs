//! The reports consumer. Each report is applied once (the ledger ignores
//! repeats), its results are written to the sink before anything is counted,
//! and the delivery is acked only after both: a scheduler that dies mid-report
//! gets it again and loses nothing.
//!
//! After every report the run advances: locations and batches are admitted up to
//! the run's limits, a run whose locations are all done completes, and a halted
//! or cancelled run with nothing in flight reports what it never started.

use std::collections::HashMap;
use std::future::Future;
use std::time::Duration;

use broker::Delivery;
use protocol::Report;
use protocol::report::{StepResults, TargetResult, TargetsDiscovered};
use protocol::run::RunState;
use protocol::status::StatusDetail;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::ledger::{BatchEntry, location_key};
use crate::sink::{ResultPath, ResultRecord, SinkError};
use crate::{Scheduler, SchedulerError};

/// The largest batch the scheduler admits (SendCommand's limit on InstanceIds).
/// Tries of a batch's results write (about 3 s in all) before an outage is
/// treated like a refusal: the run pauses and the report waits.
const MAX_RESULTS_WRITE_ATTEMPTS: u32 = 5;

/// How often a parked report comes back (once a minute) before it is given
/// up to the dead-letter queue: a week.
const MAX_REPORT_PARKS: u32 = 7 * 24 * 60;

const MAX_BATCH: u64 = protocol::job::MAX_BATCH_SIZE as u64;

/// What [`Scheduler::check_report`] decided.
enum Verdict {
    Accept,
    /// Its results were applied already: ack it, write nothing.
    Duplicate,
    Reject {
        reason: &'static str,
        detail: String,
    },
}

fn report_kind(report: &Report) -> &'static str {
    match report {
        Report::TargetsDiscovered(_) => "targets_discovered",
        Report::LocationFailed(_) => "location_failed",
        Report::StepResults(_) => "step_results",
    }
}

impl Scheduler {
    /// Consumes reports until `shutdown`, re-publishing the work of live runs
    /// first (what a previous scheduler admitted but may not have published).
    pub async fn serve(
        &self,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), SchedulerError> {
        let stop = CancellationToken::new();
        let stopper = stop.clone();
        let watch = async move {
            shutdown.await;
            stopper.cancel();
        };
        let ticker = async {
            let mut interval = tokio::time::interval(Duration::from_secs(1));
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                interval.tick().await;
                if let Err(error) = Box::pin(self.tick()).await {
                    tracing::warn!(error = %error, "scheduler tick failed");
                }
            }
        };
        let work = async {
            self.recover().await?;
            let mut consumer = self
                .broker
                .consume(
                    &self.broker.names().reports_queue(),
                    self.config.report_prefetch,
                    &format!("{}-reports", self.config.name),
                )
                .await?;
            loop {
                let delivery = tokio::select! {
                    () = stop.cancelled() => break,
                    delivery = consumer.next() => delivery,
                };
                match delivery {
                    Some(Ok(delivery)) => self.handle_delivery(delivery, &stop).await,
                    Some(Err(error)) => return Err(error.into()),
                    None => {
                        return Err(SchedulerError::ConnectionLost(
                            "the broker closed the reports consumer".into(),
                        ));
                    }
                }
            }
            let _ = consumer.cancel().await;
            Ok(())
        };
        // Reports that waited a minute (unwritable results) go back to the
        // reports queue through a delay pump, as delayed jobs do in workers.
        let pump = broker::delay::pump(
            self.broker.clone(),
            broker::delay::report_delay_queue(self.broker.names()),
            format!("{}-report-delay-pump", self.config.name),
            stop.clone(),
        );
        let result = tokio::select! {
            result = work => result,
            () = watch => Ok(()),
            () = ticker => Ok(()),
            pumped = pump => match pumped {
                Ok(()) => Ok(()),
                Err(error) => Err(error.into()),
            },
        };
        stop.cancel();
        result
    }

    /// Handles one delivery, retrying outages in place until they pass (or the
    /// scheduler stops, leaving the report unacked for the next one).
    async fn handle_delivery(&self, delivery: Delivery, stop: &CancellationToken) {
        let opened = match delivery.open::<Report>(self.broker.keyring()) {
            Ok(opened) => opened,
            Err(error) => {
                self.reject_report(delivery, error.reason(), error.to_string())
                    .await;
                return;
            }
        };
        if opened.signer != protocol::signing::SignerKind::Worker {
            let detail = format!(
                "a report signed by {} key {:?}: only worker keys sign reports",
                opened.signer.as_str(),
                opened.key_id
            );
            self.reject_report(delivery, "signer_not_allowed", detail)
                .await;
            return;
        }
        let report = opened.message;
        let mut attempt: u32 = 0;
        loop {
            let handled = match self.check_report(&report).await {
                Ok(Verdict::Accept) => self.handle_report(&report).await,
                Ok(Verdict::Duplicate) => {
                    self.metrics.report(report_kind(&report), "duplicate");
                    Ok(())
                }
                Ok(Verdict::Reject { reason, detail }) => {
                    self.reject_report(delivery, reason, detail).await;
                    return;
                }
                Err(error) => Err(error),
            };
            match handled {
                Ok(()) => {
                    if attempt > 0 {
                        // An update whose answer was lost may have happened
                        // anyway: batches it admitted were never published.
                        if let Err(error) = self.republish_admitted(report.run_id()).await {
                            tracing::warn!(error = %error, "could not re-publish admitted batches");
                        }
                    }
                    if let Err(error) = delivery.ack().await {
                        tracing::warn!(error = %error, "could not ack a report; it will be applied again (harmlessly)");
                    }
                    return;
                }
                // One run's unwritable results must not hold up every other
                // run's reports: past a few tries, its run pauses and the report
                // waits in a delay queue, to be tried again later.
                Err(SchedulerError::Results(error))
                    if error.permanent || attempt >= MAX_RESULTS_WRITE_ATTEMPTS =>
                {
                    self.park_report(delivery, &report, &error).await;
                    return;
                }
                Err(error) if error.is_retryable() => {
                    let delay = protocol::backoff::Backoff::RECONNECT.delay(attempt);
                    attempt += 1;
                    tracing::warn!(error = %error, attempt, "report not applied yet; retrying");
                    tokio::select! {
                        () = stop.cancelled() => return,
                        () = tokio::time::sleep(delay) => {}
                    }
                }
                Err(error) => {
                    tracing::error!(run_id = %report.run_id(), error = %error, "report cannot be applied; dead-lettering it");
                    let _ = delivery.dead_letter().await;
                    return;
                }
            }
        }
    }

    /// Dead-letters a report without acting on it: counted, logged with the
    /// message's fingerprint (its ids are not to be trusted), and audited.
    async fn reject_report(&self, delivery: Delivery, reason: &'static str, detail: String) {
        let fingerprint = delivery.fingerprint();
        tracing::error!(message = %fingerprint, reason, detail, "report refused and dead-lettered without being acted on");
        self.metrics.report_rejected(reason);
        self.audit_internal(
            "broker".into(),
            "report.reject",
            format!("message:{fingerprint}"),
            format!("{reason}: {detail}"),
        )
        .await;
        if let Err(error) = delivery.dead_letter().await {
            tracing::warn!(error = %error, "could not dead-letter a report");
        }
    }

    /// Checks a report against the ledger before anything is written or
    /// counted: its run exists, its location is one of the run's (and a valid
    /// account and region), and results are for a batch-step the run admitted
    /// and for that batch's targets only.
    async fn check_report(&self, report: &Report) -> Result<Verdict, SchedulerError> {
        let run_id = report.run_id();
        let reject = |reason: &'static str, detail: String| Ok(Verdict::Reject { reason, detail });
        let plan = match self.plan(run_id).await {
            Ok(plan) => plan,
            Err(SchedulerError::UnknownRun(_)) => {
                return reject("unknown_run", format!("run {run_id} has no record"));
            }
            Err(error) => return Err(error),
        };
        let (location, entry_key) = match report {
            Report::TargetsDiscovered(discovered) => {
                if let Some(bad) = discovered
                    .targets
                    .iter()
                    .find(|target| !protocol::campaign::is_instance_id(&target.instance_id))
                {
                    return reject(
                        "bad_target",
                        format!("{:?} is not an instance id", bad.instance_id),
                    );
                }
                (&discovered.location, None)
            }
            Report::LocationFailed(failed) => (&failed.location, None),
            Report::StepResults(results) => {
                if usize::from(results.step_index) >= plan.campaign.steps.len() {
                    return reject(
                        "unknown_batch",
                        format!("step {} does not exist in run {run_id}", results.step_index),
                    );
                }
                let key = BatchEntry {
                    location: location_key(&results.location),
                    batch_id: results.batch_id,
                    step_index: results.step_index,
                    instance_ids: Vec::new(),
                }
                .key();
                (&results.location, Some(key))
            }
        };
        if let Err(why) = location.validate() {
            return reject("bad_location", why);
        }
        let scope = self
            .ledger
            .report_scope(run_id, location, entry_key.as_deref())
            .await?;
        if !scope.location_in_run {
            return reject(
                "foreign_location",
                format!(
                    "{} is not one of run {run_id}'s locations",
                    location_key(location)
                ),
            );
        }
        let Report::StepResults(results) = report else {
            return Ok(Verdict::Accept);
        };
        let Some(entry) = scope.admitted else {
            if scope.applied {
                return Ok(Verdict::Duplicate);
            }
            return reject(
                "unknown_batch",
                format!(
                    "batch {} step {} of {} was never admitted in run {run_id}",
                    results.batch_id,
                    results.step_index,
                    location_key(location)
                ),
            );
        };
        let batch: std::collections::HashSet<&str> =
            entry.instance_ids.iter().map(String::as_str).collect();
        if let Some(foreign) = results
            .results
            .iter()
            .find(|result| !batch.contains(result.instance_id.as_str()))
        {
            return reject(
                "foreign_targets",
                format!(
                    "{:?} is not a target of batch {} step {}",
                    foreign.instance_id, results.batch_id, results.step_index
                ),
            );
        }
        Ok(Verdict::Accept)
    }

    /// A report whose results cannot be written: its run pauses with the
    /// reason (operators see it in `run show`, alerts fire on the metric), and
    /// the report goes to the reports delay queue, to be tried again in a
    /// minute, and every minute after, until the write succeeds. Nothing is
    /// lost and no other run waits. If it cannot even be parked, it goes back
    /// to the reports queue.
    async fn park_report(&self, delivery: Delivery, report: &Report, error: &SinkError) {
        let run_id = report.run_id();
        self.metrics.results_unwritable(error.permanent);
        tracing::error!(
            %run_id,
            destination = error.destination,
            permanent = error.permanent,
            error = %error.reason,
            "results cannot be written; pausing the run and retrying the report every minute"
        );
        let reason = format!("paused: {error}; fix the destination, then resume the run");
        if let Err(paused) = self.pause(run_id, &reason).await {
            tracing::warn!(%run_id, error = %paused, "could not pause the run");
        }
        let parks = delivery.retries().saturating_add(1);
        if parks > MAX_REPORT_PARKS {
            tracing::error!(%run_id, parks, "results unwritable for a week; dead-lettering the report");
            let _ = delivery.dead_letter().await;
            return;
        }
        let settled = match self.broker.defer_report(&delivery, parks).await {
            Ok(()) => delivery.ack().await,
            Err(parked) => {
                tracing::warn!(%run_id, error = %parked, "could not park the report; requeueing it");
                delivery.requeue().await
            }
        };
        if let Err(settled) = settled {
            tracing::warn!(%run_id, error = %settled, "could not settle a report; it will be delivered again");
        }
    }

    pub async fn handle_report(&self, report: &Report) -> Result<(), SchedulerError> {
        let run_id = report.run_id();
        let kind = report_kind(report);
        let applied = self.apply_report(report).await;
        self.metrics
            .report(kind, if applied.is_ok() { "applied" } else { "failed" });
        applied?;
        self.advance(run_id).await
    }

    async fn apply_report(&self, report: &Report) -> Result<(), SchedulerError> {
        let run_id = report.run_id();
        match report {
            Report::TargetsDiscovered(discovered) => self.apply_discovered(discovered).await?,
            Report::LocationFailed(failed) => {
                let reason = format!("{:?}: {}", failed.reason, failed.detail);
                let (_, complete) = self
                    .ledger
                    .record_location_failed(run_id, &failed.location, &reason)
                    .await?;
                if complete {
                    self.discovery_complete(run_id).await?;
                }
            }
            Report::StepResults(results) => self.apply_results(results).await?,
        }
        Ok(())
    }

    async fn apply_discovered(&self, report: &TargetsDiscovered) -> Result<(), SchedulerError> {
        let ids: Vec<String> = report
            .targets
            .iter()
            .map(|target| target.instance_id.clone())
            .collect();
        let (_, complete) = self
            .ledger
            .record_page(
                report.run_id,
                &report.location,
                report.page,
                &ids,
                report.last_page,
            )
            .await?;
        if complete {
            self.discovery_complete(report.run_id).await?;
        }
        Ok(())
    }

    /// Every location is discovered: the total is known, so percentages resolve.
    pub(crate) async fn discovery_complete(&self, run_id: Uuid) -> Result<(), SchedulerError> {
        let plan = self.plan(run_id).await?;
        let fields = self
            .ledger
            .run_fields(run_id)
            .await?
            .ok_or(SchedulerError::UnknownRun(run_id))?;
        let total = fields.number("total");
        let rate = &plan.campaign.rate_control;
        let max_in_flight = rate.max_concurrency.concurrency(total).max(1);
        // At least two batches fit under the limit, so one finishing lets the
        // next start while the other still runs.
        let batch_size = (max_in_flight / 2).clamp(1, MAX_BATCH);
        let allowed_errors = rate.max_errors.allowed_errors(total);
        if fields.get("plan_only") == Some("1") {
            let reason = format!(
                "plan only: {total} targets in {} locations",
                fields.number("location_count")
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
        let state = self
            .ledger
            .start_execution(run_id, max_in_flight, batch_size, allowed_errors)
            .await?;
        tracing::info!(%run_id, total, max_in_flight, allowed_errors, state = state.as_str(), "discovery complete");
        Ok(())
    }

    async fn apply_results(&self, report: &StepResults) -> Result<(), SchedulerError> {
        let plan = self.plan(report.run_id).await?;
        let step_name = plan
            .campaign
            .steps
            .get(usize::from(report.step_index))
            .map(|step| step.name.clone())
            .ok_or_else(|| {
                SchedulerError::Invalid(format!("results for unknown step {}", report.step_index))
            })?;
        let records: Vec<ResultRecord> = report
            .results
            .iter()
            .cloned()
            .map(|result| {
                ResultRecord::new(
                    report.run_id,
                    &plan.campaign.name,
                    &report.location,
                    report.batch_id,
                    report.step_index,
                    &step_name,
                    result,
                )
            })
            .collect();
        // Durable first: the ledger counts only what is written.
        let path = ResultPath::new(
            report.run_id,
            &report.location,
            report.batch_id,
            report.step_index,
        )
        .map_err(SchedulerError::Invalid)?;
        plan.results.write_batch(&path, records).await?;

        let counters = count_by_status(report.step_index, &report.results);
        let failures = report
            .results
            .iter()
            .filter(|result| result.status.counts_against_error_budget())
            .count() as u64;
        let succeeded: Vec<String> = report
            .results
            .iter()
            .filter(|result| result.status == StatusDetail::Success)
            .map(|result| result.instance_id.clone())
            .collect();
        let next_step = report.step_index + 1;
        let next = (usize::from(next_step) < plan.campaign.steps.len() && !succeeded.is_empty())
            .then(|| BatchEntry {
                location: location_key(&report.location),
                batch_id: report.batch_id,
                step_index: next_step,
                instance_ids: succeeded,
            });
        let entry_key = BatchEntry {
            location: location_key(&report.location),
            batch_id: report.batch_id,
            step_index: report.step_index,
            instance_ids: Vec::new(),
        }
        .key();
        let (new, state) = self
            .ledger
            .apply_results(
                report.run_id,
                &entry_key,
                &report.location,
                report.results.len(),
                failures,
                &counters,
                next.as_ref(),
            )
            .await?;
        if new {
            for result in &report.results {
                self.metrics
                    .result(&plan.campaign.name, result.status.as_ssm_str());
            }
        }
        if new && state == RunState::Halted && failures > 0 {
            tracing::warn!(run_id = %report.run_id, "run halted by its error budget");
        }
        Ok(())
    }

    /// Admits what may start, completes a finished run, drains a stopped one.
    pub async fn advance(&self, run_id: Uuid) -> Result<(), SchedulerError> {
        let admitted = self.ledger.admit(run_id).await?;
        if !admitted.is_empty() {
            let plan = self.plan(run_id).await?;
            self.publish_batches(&plan, &admitted).await?;
        }
        let state = self.ledger.complete_if_done(run_id).await?;
        if state == RunState::Completed {
            tracing::info!(%run_id, "run completed");
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
            .run_fields(run_id)
            .await?
            .ok_or(SchedulerError::UnknownRun(run_id))?;
        let discovery_done =
            fields.number("discovered_locations") >= fields.number("location_count");
        if fields.get("drained").is_some() || fields.number("in_flight") > 0 || !discovery_done {
            return Ok(());
        }
        let plan = self.plan(run_id).await?;
        let reason = fields.get("reason").unwrap_or("run stopped").to_string();
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
                        not_started(instance_id, &reason),
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
            plan.results.write_batch(&path, records).await?;
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

    /// Re-publishes what live runs admitted (a previous scheduler may have died
    /// between admitting and publishing), re-starts discovery of locations not
    /// yet discovered, and advances every live run.
    pub async fn recover(&self) -> Result<(), SchedulerError> {
        for run_id in self.ledger.run_ids().await? {
            let Some(fields) = self.ledger.run_fields(run_id).await? else {
                continue;
            };
            let state = fields.state()?;
            if state.is_final() && (state == RunState::Completed || fields.get("drained").is_some())
            {
                continue;
            }
            let plan = self.plan(run_id).await?;
            let republished = self.republish_admitted(run_id).await?;
            if state != RunState::Pending
                && fields.number("discovered_locations") < fields.number("location_count")
            {
                self.publish_discovery(&plan).await?;
            }
            tracing::info!(%run_id, state = state.as_str(), republished, "recovered run");
            self.advance(run_id).await?;
        }
        Ok(())
    }
}

fn not_started(instance_id: &str, reason: &str) -> TargetResult {
    TargetResult {
        instance_id: instance_id.to_string(),
        status: StatusDetail::NotStarted,
        command_id: None,
        requested_at: None,
        started_at: None,
        finished_at: None,
        response_code: None,
        output_excerpt: reason.to_string(),
        compliance: None,
        compliance_missing: None,
    }
}

/// Counter fields `<step>:<status detail>` for one report.
fn count_by_status(step_index: u16, results: &[TargetResult]) -> HashMap<String, u64> {
    let mut counters = HashMap::new();
    for result in results {
        *counters
            .entry(format!("{step_index}:{}", result.status.as_ssm_str()))
            .or_default() += 1;
    }
    counters
}

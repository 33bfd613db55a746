//! The reports consumer. Each report is applied once (the ledger ignores
//! repeats), its results are written to the sink before anything is counted,
//! and the delivery is acked only after both: a scheduler that dies mid-report
//! gets it again and loses nothing.
//!
//! After every report the run advances: locations and batches are admitted up to
//! the run's limits, a run whose locations are all done completes, and a halted
//! or cancelled run with nothing in flight reports what it never started.
//!
//! Here the consumer: checking, parking, rejecting and acking deliveries;
//! [`apply`] what a report changes in the ledger and what follows from it.

mod apply;

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::future::Future;
use std::time::Duration;

use broker::Delivery;
use futures_util::StreamExt;
use futures_util::future::join_all;
use futures_util::stream::FuturesUnordered;
use protocol::Report;
use protocol::report::{LocationFailure, MAX_BUNDLED_REPORTS};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::ledger::{BatchEntry, ScopeQuery, location_key};
use crate::sink::SinkError;
use crate::{Scheduler, SchedulerError};

/// Tries of a batch's results write (up to about 3 s in all) before an outage is
/// treated like a refusal: the run pauses and the report waits.
const MAX_RESULTS_WRITE_ATTEMPTS: u32 = 5;

/// Results files of one bundle written at once: enough to overlap their
/// fsyncs, few enough that a backlog of bundles (a prefetch of them, each
/// of up to 64 reports) does not hold every encoded file in memory.
const CONCURRENT_RESULTS_WRITES: usize = 8;

/// How often a parked report comes back (once a minute) before it is given
/// up to the dead-letter queue: a week.
const MAX_REPORT_PARKS: u32 = 7 * 24 * 60;

/// How one report of a delivery ended.
enum Handled {
    /// Applied, or a duplicate (whose follow-up, when it needs one, is
    /// done once per run after the delivery's last report).
    Done,
    /// The scheduler is stopping: the delivery stays unacked.
    Stopped,
    /// Refused without being acted on (forged, foreign, malformed): recorded,
    /// and the delivery dead-lettered once the others are handled.
    Refused {
        reason: &'static str,
        detail: String,
    },
    /// Its results cannot be written: its run pauses, the delivery is parked.
    Unwritable(SinkError),
    /// Cannot be applied, ever: dead-lettered.
    Failed,
}

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

/// Waits out an outage before the next try (backing off with `attempt`);
/// false when the scheduler stops first.
async fn wait_to_retry(attempt: &mut u32, stop: &CancellationToken) -> bool {
    let delay = protocol::backoff::Backoff::RECONNECT.delay(*attempt);
    *attempt += 1;
    tokio::select! {
        () = stop.cancelled() => false,
        () = tokio::time::sleep(delay) => true,
    }
}

/// How a report ends on `error` after `attempt` earlier tries, as
/// [`Scheduler::handle_one`] decides it: `None` when it is to be tried
/// again. Unwritable results end it past a few tries (its run pauses and
/// the delivery is parked); an outage is tried again; anything else can
/// never be applied.
fn ended_by(error: SchedulerError, attempt: u32, run_id: Uuid) -> Option<Handled> {
    match error {
        SchedulerError::Results(error)
            if error.permanent || attempt >= MAX_RESULTS_WRITE_ATTEMPTS =>
        {
            Some(Handled::Unwritable(error))
        }
        error if error.is_retryable() => {
            tracing::warn!(%run_id, error = %error, attempt, "report not applied yet; retrying");
            None
        }
        error => {
            tracing::error!(%run_id, error = %error, "report cannot be applied; dead-lettering it");
            Some(Handled::Failed)
        }
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
            // Up to a prefetch of reports are applied at once: a report is a
            // chain of round trips (check, apply, resolve, admit, publish),
            // and applied one by one they left the CPUs idle. Reports of one
            // run may be applied in any order and at the same time, as by
            // several replicas: each step is one atomic script.
            let mut applying = FuturesUnordered::new();
            let ended = loop {
                tokio::select! {
                    () = stop.cancelled() => break Ok(()),
                    Some(()) = applying.next(), if !applying.is_empty() => {}
                    delivery = consumer.next(), if applying.len() < usize::from(self.config.report_prefetch.max(1)) => {
                        match delivery {
                            Some(Ok(delivery)) => applying.push(self.handle_delivery(delivery, &stop)),
                            Some(Err(error)) => break Err(error.into()),
                            None => {
                                break Err(SchedulerError::ConnectionLost(
                                    "the broker closed the reports consumer".into(),
                                ));
                            }
                        }
                    }
                }
            };
            if ended.is_ok() {
                // Stopping: what is being applied finishes (or gives up its
                // retries) before the consumer goes. On a lost connection it
                // is dropped instead, as by a crash: unacked, those reports
                // come again, to this replica or another.
                while applying.next().await.is_some() {}
            }
            drop(applying);
            let _ = consumer.cancel().await;
            ended
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
            () = store::clock::keep_in_step(self.store.clone()) => Ok(()),
            pumped = pump => match pumped {
                Ok(()) => Ok(()),
                Err(error) => Err(error.into()),
            },
        };
        stop.cancel();
        result
    }

    /// Handles one delivery — one report or a bundle of them, each handled
    /// as if it came alone — and settles it: acked once every report is
    /// applied; parked when a report's results cannot be written (the
    /// reports applied already are duplicates when it comes back);
    /// dead-lettered, after the others are applied, when one is refused.
    /// Outages are retried in place until they pass, or the scheduler
    /// stops and leaves the delivery unacked for the next one.
    ///
    /// Duplicates whose first holder may have stopped half-way are followed
    /// up once per run, after the last report: a redelivered bundle of 64
    /// reports of one run re-publishes what the run admitted once, not 64
    /// times — and after every report of the bundle was seen, so also
    /// what a holder still applying when the bundle came back admitted.
    async fn handle_delivery(&self, delivery: Delivery, stop: &CancellationToken) {
        self.metrics.report_message();
        let opened = match delivery.open_reports(self.broker.keyring()) {
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
        let reports = opened.message;
        if reports.is_empty() || reports.len() > MAX_BUNDLED_REPORTS {
            let detail = format!(
                "a bundle of {} reports: 1 to {MAX_BUNDLED_REPORTS} are accepted",
                reports.len()
            );
            self.reject_report(delivery, "malformed", detail).await;
            return;
        }
        let fingerprint = delivery.fingerprint();
        let (mut park, mut refused) = (false, false);
        let mut follow_up = BTreeSet::new();
        // Results and discovery reports are applied together (one ledger
        // call per run for the results, the limits, more discovery and one
        // admission per run after), in the bundle's order: a failed
        // location's report is applied alone, after the reports before it
        // and before those after it.
        let mut outcomes = Vec::with_capacity(reports.len());
        let mut together: Vec<&Report> = Vec::new();
        for report in reports.iter().map(Some).chain(std::iter::once(None)) {
            if let Some(report) = report
                && !matches!(report, Report::LocationFailed(_))
            {
                together.push(report);
                continue;
            }
            if !together.is_empty() {
                let handled = self
                    .handle_together(&together, delivery.redelivered(), &mut follow_up, stop)
                    .await;
                if handled
                    .iter()
                    .any(|handled| matches!(handled, Handled::Stopped))
                {
                    return;
                }
                outcomes.extend(together.drain(..).map(Report::run_id).zip(handled));
            }
            if let Some(report) = report {
                let handled = self
                    .handle_one(report, delivery.redelivered(), &mut follow_up, stop)
                    .await;
                if matches!(handled, Handled::Stopped) {
                    return;
                }
                outcomes.push((report.run_id(), handled));
            }
        }
        for (run_id, handled) in outcomes {
            match handled {
                Handled::Done => {}
                Handled::Stopped => return,
                Handled::Refused { reason, detail } => {
                    self.record_refusal(&fingerprint, reason, detail).await;
                    refused = true;
                }
                Handled::Unwritable(error) => {
                    self.pause_unwritable(run_id, &error).await;
                    park = true;
                }
                Handled::Failed => refused = true,
            }
        }
        for run_id in follow_up {
            match self.follow_up(run_id, stop).await {
                Handled::Done => {}
                Handled::Stopped => return,
                // Draining a stopped run writes its never-started results.
                Handled::Unwritable(error) => {
                    self.pause_unwritable(run_id, &error).await;
                    park = true;
                }
                Handled::Refused { .. } | Handled::Failed => refused = true,
            }
        }
        let settled = if park {
            self.park_report(delivery).await;
            return;
        } else if refused {
            delivery.dead_letter().await
        } else {
            delivery.ack().await
        };
        if let Err(error) = settled {
            tracing::warn!(error = %error, "could not settle a report; it will be applied again (harmlessly)");
        }
    }

    /// Checks and applies one report, retrying outages in place. A
    /// duplicate that needs a follow-up adds its run to `follow_up`.
    async fn handle_one(
        &self,
        report: &Report,
        redelivered: bool,
        follow_up: &mut BTreeSet<Uuid>,
        stop: &CancellationToken,
    ) -> Handled {
        let mut attempt: u32 = 0;
        loop {
            // A duplicate's follow-up re-publishes what is admitted itself.
            let mut duplicate = false;
            let handled = match self.check_report(report).await {
                Ok(Verdict::Accept) => self.handle_report(report).await,
                Ok(Verdict::Duplicate) => {
                    duplicate = true;
                    self.metrics.report(report_kind(report), "duplicate");
                    if redelivered || attempt > 0 {
                        // Its first holder (another replica, this one before
                        // a restart, or this one's attempt whose ledger write
                        // went through but failed after: a replica's WAIT)
                        // applied it and may have stopped before admitting,
                        // publishing what it admitted or completing the run:
                        // all are done again, once the delivery's reports
                        // are through.
                        follow_up.insert(report.run_id());
                    }
                    Ok(())
                }
                Ok(Verdict::Reject { reason, detail }) => {
                    return Handled::Refused { reason, detail };
                }
                Err(error) => Err(error),
            };
            match handled {
                Ok(()) => {
                    if attempt > 0 && !duplicate {
                        // An update whose answer was lost may have happened
                        // anyway: batches it admitted were never published.
                        if let Err(error) = self.republish_admitted(report.run_id()).await {
                            tracing::warn!(error = %error, "could not re-publish admitted batches");
                        }
                    }
                    return Handled::Done;
                }
                // One run's unwritable results must not hold up every other
                // run's reports: past a few tries, its run pauses and the report
                // waits in a delay queue, to be tried again later.
                Err(SchedulerError::Results(error))
                    if error.permanent || attempt >= MAX_RESULTS_WRITE_ATTEMPTS =>
                {
                    return Handled::Unwritable(error);
                }
                Err(error) if error.is_retryable() => {
                    tracing::warn!(error = %error, attempt, "report not applied yet; retrying");
                    if !wait_to_retry(&mut attempt, stop).await {
                        return Handled::Stopped;
                    }
                }
                Err(error) => {
                    tracing::error!(run_id = %report.run_id(), error = %error, "report cannot be applied; dead-lettering it");
                    return Handled::Failed;
                }
            }
        }
    }

    /// Checks and applies a bundle's results and discovery reports
    /// together, retrying outages in place; returns how each ended, in
    /// `reports`' order. Each pass checks the reports not yet decided,
    /// writes the accepted results (at once), then per run records the
    /// pages, counts the results with one ledger call, resolves the limits
    /// and opens more discovery once, and admits once. What fails is
    /// decided per report (a check, a results write) or per run (the ledger,
    /// the admission) as [`Self::handle_one`] decides it for one report —
    /// one run's outage or refusal never fails another run's reports; what
    /// may pass is tried again in the next pass, each report with its own
    /// count of tries.
    async fn handle_together(
        &self,
        reports: &[&Report],
        redelivered: bool,
        follow_up: &mut BTreeSet<Uuid>,
        stop: &CancellationToken,
    ) -> Vec<Handled> {
        let mut outcomes: Vec<Option<Handled>> = reports.iter().map(|_| None).collect();
        let mut attempts = vec![0u32; reports.len()];
        let mut pass: u32 = 0;
        loop {
            let applied = self
                .together_pass(
                    reports,
                    &mut outcomes,
                    &attempts,
                    redelivered || pass > 0,
                    follow_up,
                )
                .await;
            if pass > 0 {
                // An update whose answer was lost may have happened
                // anyway: batches it admitted were never published.
                for run_id in applied {
                    if let Err(error) = self.republish_admitted(run_id).await {
                        tracing::warn!(error = %error, "could not re-publish admitted batches");
                    }
                }
            }
            if outcomes.iter().all(Option::is_some) {
                break;
            }
            for (attempt, outcome) in attempts.iter_mut().zip(&outcomes) {
                if outcome.is_none() {
                    *attempt += 1;
                }
            }
            if !wait_to_retry(&mut pass, stop).await {
                return reports.iter().map(|_| Handled::Stopped).collect();
            }
        }
        outcomes
            .into_iter()
            .map(|outcome| outcome.unwrap_or(Handled::Failed))
            .collect()
    }

    /// One pass of [`Self::handle_together`] over the reports not yet
    /// decided in `outcomes` (`attempts`: each one's tries so far); returns
    /// the runs whose reports it applied.
    async fn together_pass(
        &self,
        reports: &[&Report],
        outcomes: &mut [Option<Handled>],
        attempts: &[u32],
        repeated: bool,
        follow_up: &mut BTreeSet<Uuid>,
    ) -> BTreeSet<Uuid> {
        let open: Vec<usize> = (0..reports.len())
            .filter(|index| outcomes[*index].is_none())
            .collect();
        let verdicts = join_all(open.iter().map(|index| self.check_report(reports[*index]))).await;
        let mut accepted = Vec::new();
        // A batch-step twice in the bundle is written and counted once.
        let mut batch_steps = HashSet::new();
        for (index, verdict) in open.into_iter().zip(verdicts) {
            let report = reports[index];
            match verdict {
                Ok(Verdict::Accept) => match report {
                    Report::StepResults(results)
                        if !batch_steps.insert((
                            results.run_id,
                            location_key(&results.location),
                            results.batch_id,
                            results.step_index,
                        )) =>
                    {
                        self.metrics.report(report_kind(report), "duplicate");
                        outcomes[index] = Some(Handled::Done);
                    }
                    _ => accepted.push(index),
                },
                Ok(Verdict::Duplicate) => {
                    self.metrics.report(report_kind(report), "duplicate");
                    if repeated {
                        // Its first holder may have stopped before admitting
                        // (see `handle_one`): followed up once per run.
                        follow_up.insert(report.run_id());
                    }
                    outcomes[index] = Some(Handled::Done);
                }
                Ok(Verdict::Reject { reason, detail }) => {
                    outcomes[index] = Some(Handled::Refused { reason, detail });
                }
                Err(error) => outcomes[index] = ended_by(error, attempts[index], report.run_id()),
            }
        }
        // Durable first: the ledger counts only what is written.
        // A few at a time, in order: each holds its encoded file until it
        // is written, and up to a prefetch of bundles are applied at once.
        let mut written = Vec::with_capacity(accepted.len());
        for chunk in accepted.chunks(CONCURRENT_RESULTS_WRITES) {
            let chunk_written = join_all(chunk.iter().map(|index| async move {
                match reports[*index] {
                    Report::StepResults(results) => self.write_results(results).await,
                    _ => Ok(()),
                }
            }))
            .await;
            written.extend(chunk_written);
        }
        let mut by_run: BTreeMap<Uuid, Vec<usize>> = BTreeMap::new();
        for (index, write) in accepted.into_iter().zip(written) {
            match write {
                Ok(()) => by_run
                    .entry(reports[index].run_id())
                    .or_default()
                    .push(index),
                Err(error) => {
                    outcomes[index] = ended_by(error, attempts[index], reports[index].run_id());
                }
            }
        }
        let mut applied = BTreeSet::new();
        for (run_id, indexes) in by_run {
            match self.apply_together(run_id, &indexes, reports).await {
                Ok(()) => {
                    applied.insert(run_id);
                    for index in indexes {
                        outcomes[index] = Some(Handled::Done);
                    }
                }
                // Decided only once admitted: after an outage, the next pass
                // finds them applied and follows the run up.
                Err(error) => {
                    let attempt = indexes
                        .iter()
                        .map(|index| attempts[*index])
                        .max()
                        .unwrap_or(0);
                    if let Some(ended) = ended_by(error, attempt, run_id) {
                        for index in indexes {
                            outcomes[index] = Some(match &ended {
                                Handled::Unwritable(error) => Handled::Unwritable(error.clone()),
                                _ => Handled::Failed,
                            });
                        }
                    }
                }
            }
        }
        applied
    }

    /// Applies the accepted reports of one run: pages recorded, results
    /// counted in one ledger call, the limits and discovery after the pages,
    /// then one admission.
    async fn apply_together(
        &self,
        run_id: Uuid,
        indexes: &[usize],
        reports: &[&Report],
    ) -> Result<(), SchedulerError> {
        let mut pages = Vec::new();
        let mut results = Vec::new();
        for index in indexes {
            match reports[*index] {
                Report::TargetsDiscovered(discovered) => {
                    let recorded = self.record_discovered(discovered).await;
                    let outcome = if recorded.is_ok() {
                        "applied"
                    } else {
                        "failed"
                    };
                    self.metrics.report("targets_discovered", outcome);
                    pages.push(recorded?);
                }
                Report::StepResults(report) => results.push(report),
                Report::LocationFailed(_) => {}
            }
        }
        if !results.is_empty() {
            self.apply_results(run_id, &results).await?;
        }
        if !pages.is_empty() {
            self.after_pages(run_id, &pages).await?;
        }
        self.advance(run_id).await
    }

    /// Does what a lost holder of the run's duplicate reports may have left
    /// undone ([`Scheduler::finish_for_a_lost_holder`]), retrying outages in
    /// place; results it cannot write (draining a stopped run) are handled
    /// as a report's: the run pauses and the delivery is parked.
    async fn follow_up(&self, run_id: Uuid, stop: &CancellationToken) -> Handled {
        let mut attempt: u32 = 0;
        loop {
            match self.finish_for_a_lost_holder(run_id).await {
                Ok(()) => return Handled::Done,
                Err(SchedulerError::Results(error))
                    if error.permanent || attempt >= MAX_RESULTS_WRITE_ATTEMPTS =>
                {
                    return Handled::Unwritable(error);
                }
                Err(error) if error.is_retryable() => {
                    tracing::warn!(%run_id, error = %error, attempt, "duplicate reports not followed up yet; retrying");
                    if !wait_to_retry(&mut attempt, stop).await {
                        return Handled::Stopped;
                    }
                }
                Err(error) => {
                    tracing::error!(%run_id, error = %error, "duplicate reports cannot be followed up; dead-lettering them");
                    return Handled::Failed;
                }
            }
        }
    }

    /// Dead-letters a report without acting on it: counted, logged with the
    /// message's fingerprint (its ids are not to be trusted), and audited.
    async fn reject_report(&self, delivery: Delivery, reason: &'static str, detail: String) {
        self.record_refusal(&delivery.fingerprint(), reason, detail)
            .await;
        if let Err(error) = delivery.dead_letter().await {
            tracing::warn!(error = %error, "could not dead-letter a report");
        }
    }

    /// Counts, logs and audits a refused report (of the message `fingerprint`).
    async fn record_refusal(&self, fingerprint: &str, reason: &'static str, detail: String) {
        tracing::error!(message = %fingerprint, reason, detail, "report refused and dead-lettered without being acted on");
        self.metrics.report_rejected(reason);
        // Anyone who may publish to the queue can send these: past the
        // budget they are only counted (and logged).
        let Some(unrecorded) = self.report_refusals.admit() else {
            return;
        };
        self.audit_internal(
            "broker".into(),
            "report.reject",
            format!("message:{fingerprint}"),
            crate::audit::RefusalBudget::reason(&format!("{reason}: {detail}"), unrecorded),
        )
        .await;
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
                // A page is one DescribeInstanceInformation page: at most a
                // batch (and batch ids leave room for no more).
                if discovered.targets.len() > protocol::job::MAX_BATCH_SIZE {
                    return reject(
                        "page_too_large",
                        format!(
                            "a page of {} targets; a discovery page has at most {}",
                            discovered.targets.len(),
                            protocol::job::MAX_BATCH_SIZE
                        ),
                    );
                }
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
                // What the scheduler can check without SSM (an id list,
                // platform, online); tags are checked again by the worker
                // that sends, right before it does.
                if let Some(why) = discovered.targets.iter().find_map(|target| {
                    plan.targets
                        .admits(&target.instance_id, target.platform, target.online)
                        .err()
                }) {
                    return reject("foreign_target", why);
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
                    window: None,
                }
                .key();
                (&results.location, Some(key))
            }
        };
        if let Err(why) = location.validate() {
            return reject("bad_location", why);
        }
        let about = match (&entry_key, report) {
            (Some(key), _) => ScopeQuery::Batch(key),
            (None, Report::LocationFailed(_)) => ScopeQuery::Execution,
            (None, _) => ScopeQuery::Location,
        };
        let scope = self.ledger.report_scope(run_id, location, about).await?;
        if !scope.location_in_run {
            return reject(
                "foreign_location",
                format!(
                    "{} is not one of run {run_id}'s locations",
                    location_key(location)
                ),
            );
        }
        // A refused send is reported by the worker that sent: there must
        // have been a send. Otherwise one forged report would halt any run.
        if let Report::LocationFailed(failed) = report
            && matches!(
                failed.reason,
                LocationFailure::SendRefused | LocationFailure::StepRefused
            )
            && !scope.executing
        {
            return reject(
                "not_executing",
                format!(
                    "{} has no execution under way in run {run_id}: no send can have been refused there",
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
    /// reason (operators see it in `run show`, alerts fire on the metric),
    /// and the delivery is parked ([`Self::park_report`]).
    async fn pause_unwritable(&self, run_id: uuid::Uuid, error: &SinkError) {
        self.metrics.results_unwritable(error.permanent);
        tracing::error!(
            %run_id,
            destination = error.destination,
            permanent = error.permanent,
            error = %error.reason,
            "results cannot be written; pausing the run and retrying the report every minute"
        );
        let reason = format!("paused: {error}; fix the destination, then resume the run");
        match self.pause(run_id, &reason).await {
            Ok(true) => {
                self.audit_internal(
                    "scheduler".into(),
                    "runs:pause",
                    format!("run {run_id}"),
                    reason,
                )
                .await;
            }
            // Paused already (this report's first park, or another's).
            Ok(false) => {}
            Err(paused) => tracing::warn!(%run_id, error = %paused, "could not pause the run"),
        }
    }

    /// The report goes to the reports delay queue, to be tried again in a
    /// minute, and every minute after, until the write succeeds. Nothing is
    /// lost and no other run waits. If it cannot even be parked, it goes back
    /// to the reports queue.
    async fn park_report(&self, delivery: Delivery) {
        let parks = delivery.retries().saturating_add(1);
        if parks > MAX_REPORT_PARKS {
            tracing::error!(
                parks,
                "results unwritable for a week; dead-lettering the report"
            );
            let _ = delivery.dead_letter().await;
            return;
        }
        let settled = match self.broker.defer_report(&delivery, parks).await {
            Ok(()) => delivery.ack().await,
            Err(parked) => {
                tracing::warn!(error = %parked, "could not park the report; requeueing it");
                delivery.requeue().await
            }
        };
        if let Err(settled) = settled {
            tracing::warn!(error = %settled, "could not settle a report; it will be delivered again");
        }
    }
}

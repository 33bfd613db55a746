//! Execute: send one step to one batch, at most once per job however often the
//! job is delivered.
//!
//! 1. The gate (kill switches, run state) is read before anything else; a
//!    paused or killed run waits without spending rate tokens.
//! 2. The job's send claim in the store says whether an earlier delivery
//!    already sent (resume polling that command), is sending (wait, or take over
//!    a claim whose holder died), or nobody did (this delivery sends).
//! 3. Rate tokens, then the gate once more right before SendCommand: the kill
//!    switch stops sends within one round trip to Redis.
//! 4. SendCommand (`Comment` = the job id), record the command id, and the
//!    first Poll two seconds later: done in place while the worker holds
//!    this delivery, or through a delay queue when it cannot.

use std::time::Duration;

use protocol::Job;
use protocol::job::{ExecuteJob, PollJob, UnixMillis};
use protocol::report::{LocationFailed, LocationFailure, Report, StepResults, TargetResult};
use protocol::run::SendDecision;
use protocol::status::StatusDetail;
use store::{GateCause, SendClaim, SendGate, SendRecord, Store};

use crate::aws::{AwsErrorKind, Repeat, call};
use crate::{Context, JobError, JobOutcome, now_ms};

/// How soon a paused or killed job looks again.
pub(crate) const GATE_RECHECK: Duration = Duration::from_secs(1);

/// Extra time after a step's timeout before targets that never answered are
/// reported as timed out (SSM's own timeout normally reports them first).
const DEADLINE_GRACE: Duration = Duration::from_secs(60);

/// The first poll comes quickly, as short commands are common — but not
/// within the first second or two, which SSM spends delivering the command
/// to its instances (the simulator spends one): a poll at 1 s found nearly
/// every batch of the bench's sub-second scans unfinished and polled again.
/// A delay queue's own step ([`protocol::names::DELAY_STEPS_SECONDS`]).
pub(crate) const FIRST_POLL: Duration = Duration::from_secs(2);

pub(crate) async fn handle<S: Store>(
    ctx: &Context<S>,
    job: ExecuteJob,
) -> Result<JobOutcome, JobError> {
    let over = match ctx.gate(&job.run).await {
        SendGate::Open => None,
        SendGate::Shut(cause) if cause.decision() == SendDecision::Wait => {
            return Ok(held_back(ctx, &job, &cause));
        }
        SendGate::Shut(cause) => Some(cause.to_string()),
    };
    let over = match (over, target_window(&job)) {
        (Some(cause), _) => Some(cause),
        (None, TargetWindowNow::Open) => None,
        (None, TargetWindowNow::Closed { recheck, cause }) => {
            return Ok(window_closed(ctx, &job, recheck, &cause));
        }
        (None, TargetWindowNow::Never(cause)) => Some(cause),
    };
    let claimed_at = now_ms();
    match ctx
        .store
        .claim_send(job.run.run_id, job.job_id, claimed_at)
        .await?
    {
        SendClaim::Sent { command_id } => {
            ctx.metrics.duplicate_send_avoided();
            tracing::info!(job_id = %job.job_id, "redelivered execute job resumes its command");
            Ok(first_poll(job, command_id, now_ms()))
        }
        SendClaim::InProgress { since_ms } => recover(ctx, job, since_ms).await,
        SendClaim::Claimed => match over {
            Some(cause) => {
                // The run is over (or the batch's instances have no window)
                // and this batch was never sent: say so, once.
                report_all(ctx, &job, StatusDetail::NotStarted, &cause).await?;
                Ok(JobOutcome::Done)
            }
            None => send_claimed(ctx, job, claimed_at).await,
        },
    }
}

/// The gate right before SendCommand: `None` when open; else what becomes of
/// the job (held for later, the claim released; or reported not started).
async fn gate_before_send<S: Store>(
    ctx: &Context<S>,
    job: &ExecuteJob,
    claimed_at: u64,
    dropped: &[String],
) -> Result<Option<JobOutcome>, JobError> {
    match ctx.gate(&job.run).await {
        SendGate::Open => match target_window(job) {
            TargetWindowNow::Open => Ok(None),
            TargetWindowNow::Closed { recheck, cause } => {
                ctx.store
                    .release_send(job.run.run_id, job.job_id, claimed_at)
                    .await?;
                Ok(Some(window_closed(ctx, job, recheck, &cause)))
            }
            TargetWindowNow::Never(cause) => {
                report_split(ctx, job, StatusDetail::NotStarted, &cause, dropped).await?;
                Ok(Some(JobOutcome::Done))
            }
        },
        SendGate::Shut(cause) if cause.decision() == SendDecision::Wait => {
            ctx.store
                .release_send(job.run.run_id, job.job_id, claimed_at)
                .await?;
            Ok(Some(held_back(ctx, job, &cause)))
        }
        SendGate::Shut(cause) => {
            report_split(
                ctx,
                job,
                StatusDetail::NotStarted,
                &cause.to_string(),
                dropped,
            )
            .await?;
            Ok(Some(JobOutcome::Done))
        }
    }
}

/// Per-target windows: where the batch's own window stands now, by this
/// worker's clock (the one every send gate reads).
enum TargetWindowNow {
    /// Open, or the batch has no window of its own.
    Open,
    /// Closed: look again after `recheck`.
    Closed { recheck: Duration, cause: String },
    /// Never sent: its instances have no window, or it never opens again.
    Never(String),
}

fn target_window(job: &ExecuteJob) -> TargetWindowNow {
    use protocol::campaign::WindowState;
    use protocol::job::TargetWindow;
    let Some(window) = &job.window else {
        return TargetWindowNow::Open;
    };
    let name = match window {
        TargetWindow::Named { name, .. } => name.as_str(),
        TargetWindow::Untagged { .. } => "",
    };
    let now = protocol::clock::now_utc();
    match window.state_at(now) {
        Ok(WindowState::Open { .. }) => TargetWindowNow::Open,
        Ok(WindowState::Closed { opens: Some(opens) }) => TargetWindowNow::Closed {
            recheck: recheck_before((opens - now).to_std().unwrap_or_default()),
            cause: format!(
                "the instances' maintenance window {name:?} is closed until {}",
                opens.to_rfc3339()
            ),
        },
        Ok(WindowState::Closed { opens: None }) => TargetWindowNow::Never(format!(
            "not sent: the instances' maintenance window {name:?} never opens again"
        )),
        // Fail closed: a window this worker cannot read sends nothing.
        Err(cause) => TargetWindowNow::Never(cause),
    }
}

/// The longest delay-queue step that does not pass `wait` (at least 1 s):
/// a batch waiting for its window looks again no later than it opens.
fn recheck_before(wait: Duration) -> Duration {
    let seconds = protocol::names::DELAY_STEPS_SECONDS
        .into_iter()
        .filter(|step| u64::from(*step) <= wait.as_secs())
        .max()
        .unwrap_or(1);
    Duration::from_secs(u64::from(seconds))
}

/// The batch's own window is closed: count it and look again later. The
/// scheduler parks batches of closed windows; this is a batch admitted just
/// before its window closed.
fn window_closed<S: Store>(
    ctx: &Context<S>,
    job: &ExecuteJob,
    recheck: Duration,
    cause: &str,
) -> JobOutcome {
    ctx.metrics.mutation_blocked("target_window_closed");
    tracing::debug!(job_id = %job.job_id, cause, "send held back");
    ctx.waits.held(
        job,
        now_ms().saturating_add(u64::try_from(recheck.as_millis()).unwrap_or(u64::MAX)),
        cause,
    );
    JobOutcome::Wait {
        delay: recheck,
        reason: "target_window_closed",
    }
}

/// The gate is shut for now: count it and look again later.
fn held_back<S: Store>(ctx: &Context<S>, job: &ExecuteJob, cause: &GateCause) -> JobOutcome {
    ctx.metrics.mutation_blocked(cause.label());
    tracing::debug!(job_id = %job.job_id, %cause, "send held back");
    ctx.waits.held(
        job,
        now_ms().saturating_add(u64::try_from(GATE_RECHECK.as_millis()).unwrap_or(u64::MAX)),
        &cause.to_string(),
    );
    JobOutcome::Wait {
        delay: GATE_RECHECK,
        reason: cause.label(),
    }
}

/// This delivery holds the claim taken at `claimed_at`.
async fn send_claimed<S: Store>(
    ctx: &Context<S>,
    job: ExecuteJob,
    claimed_at: u64,
) -> Result<JobOutcome, JobError> {
    let (run_id, job_id) = (job.run.run_id, job.job_id);
    let release = || async { ctx.store.release_send(run_id, job_id, claimed_at).await };
    let client = match ctx.ssm(&job.run, &job.location).await {
        Ok(Some(client)) => client,
        Ok(None) => {
            release().await?;
            return Ok(ctx.no_tokens());
        }
        Err(JobError::Aws(error)) if error.kind == AwsErrorKind::AccessDenied => {
            // Nothing was sent; the targets could not be reached.
            report_all(ctx, &job, StatusDetail::AccessDenied, &error.to_string()).await?;
            return Ok(JobOutcome::Done);
        }
        Err(error) => {
            release().await?;
            return Err(error);
        }
    };
    let limits = &job.run.api_rate_limits;
    if !ctx
        .take_token(&job.location, "SendCommand", limits.send_command)
        .await?
    {
        release().await?;
        return Ok(ctx.no_tokens());
    }
    // The targets are the campaign's, always: a batch of a step that changes
    // hosts is sent only to the instances that match the selection now, and
    // a batch of per-target windows (any step) only to the instances whose
    // tag still names its window. The rest are left out of the command and
    // reported with the batch (one report per batch: its poll's, or the one
    // a refusal makes).
    let mut job = job;
    let mut dropped: Vec<String> = Vec::new();
    let own_window = matches!(job.window, Some(protocol::job::TargetWindow::Named { .. }));
    if job.recheck.is_some() || own_window {
        let selection = job.recheck.clone();
        let Some(kept) =
            crate::discover::still_selected(ctx, &client, &job, selection.as_ref()).await?
        else {
            release().await?;
            return Ok(ctx.no_tokens());
        };
        if kept.len() < job.batch.instance_ids.len() {
            let left_out = job.batch.instance_ids.len() - kept.len();
            ctx.metrics.targets_dropped(&job.run.campaign, left_out);
            tracing::warn!(
                job_id = %job.job_id,
                dropped = left_out,
                "instances no longer match the campaign's targets; not sent"
            );
            if kept.is_empty() {
                report_all(ctx, &job, StatusDetail::NotStarted, NO_LONGER_SELECTED).await?;
                return Ok(JobOutcome::Done);
            }
            dropped = job
                .batch
                .instance_ids
                .iter()
                .filter(|id| !kept.contains(id))
                .cloned()
                .collect();
            job.batch.instance_ids = kept;
        }
    }
    // The last word before the mutating call.
    if let Some(stopped) = gate_before_send(ctx, &job, claimed_at, &dropped).await? {
        return Ok(stopped);
    }
    // The append-only record: what no worker credential can erase. An
    // earlier delivery that was about to send may have sent.
    match ctx
        .store
        .mark_send(job.run.run_id, job.job_id, now_ms())
        .await?
    {
        SendRecord::First => {}
        SendRecord::Sent { command_id } => {
            return resume_recorded(ctx, job, command_id).await;
        }
        SendRecord::Attempted { since_ms } => {
            let age = Duration::from_millis(now_ms().saturating_sub(since_ms));
            let stale_after = ctx.aws.stale_claim_after();
            if age < stale_after {
                release().await?;
                return Ok(JobOutcome::Wait {
                    delay: (stale_after - age).max(GATE_RECHECK),
                    reason: "an earlier delivery may be sending",
                });
            }
            if let Some(command_id) = find_sent_command(ctx, &client, &job).await? {
                return resume_recorded(ctx, job, command_id).await;
            }
            tracing::warn!(job_id = %job.job_id, "an earlier delivery was about to send and SSM has no command of it: sending");
        }
    }
    let timeout_seconds = i32::try_from(job.step.timeout.as_secs()).unwrap_or(i32::MAX);
    let parameters: std::collections::HashMap<String, Vec<String>> =
        job.step.parameters.clone().into_iter().collect();
    let targets = job.batch.instance_ids.len().to_string();
    let logging = job.run.output_logging.clone().unwrap_or_default();
    let cloudwatch = logging.cloudwatch_log_group.as_ref().map(|group| {
        aws_sdk_ssm::types::CloudWatchOutputConfig::builder()
            .cloud_watch_log_group_name(group)
            .cloud_watch_output_enabled(true)
            .build()
    });
    let mut client = client;
    let mut renewed = false;
    let sent = loop {
        let sent = call(&ctx.metrics, "SendCommand", Repeat::ThrottledOnly, || {
            client
                .send_command()
                // Every instance's full output, kept by SSM (the results keep an excerpt).
                .set_output_s3_bucket_name(logging.s3_bucket.clone())
                .set_output_s3_key_prefix(logging.s3_key_prefix.clone().filter(|p| !p.is_empty()))
                .set_cloud_watch_output_config(cloudwatch.clone())
                .set_instance_ids(Some(job.batch.instance_ids.clone()))
                .document_name(&job.step.document)
                .set_document_version(job.step.document_version.clone())
                .set_parameters(Some(parameters.clone()))
                .timeout_seconds(timeout_seconds)
                .comment(job.job_id.to_string())
                // flotilla enforces concurrency and errors across the whole run;
                // within one batch SSM must neither hold targets back nor stop early.
                .max_concurrency(&targets)
                .max_errors(&targets)
                .send()
        })
        .await;
        let expired = matches!(&sent, Err(error) if error.kind == AwsErrorKind::ExpiredCredentials);
        if !expired || renewed {
            break sent;
        }
        // The role session expired: SSM refused the request before anything
        // ran. This delivery holds the claim and wrote the send mark, so it
        // sends again itself — a fresh session, the gate once more, once —
        // rather than leave the mark to hold the next delivery back for
        // `stale_claim_after` (a minute). One SendCommand more than the
        // token taken, once per expired session.
        renewed = true;
        ctx.aws.forget_session(&job.run, &job.location);
        match ctx.ssm(&job.run, &job.location).await {
            Ok(Some(fresh)) => client = fresh,
            Ok(None) | Err(_) => break sent,
        }
        if let Some(stopped) = gate_before_send(ctx, &job, claimed_at, &dropped).await? {
            return Ok(stopped);
        }
    };
    let sent_at = now_ms();
    match sent {
        Ok(output) => {
            let Some(command_id) = output.command().and_then(|command| command.command_id()) else {
                return Err(JobError::Invalid(
                    "SendCommand answered without a command id".into(),
                ));
            };
            ctx.store
                .record_command(job.run.run_id, job.job_id, command_id)
                .await?;
            // The poll reports the whole batch: the targets left out are
            // those the command does not list.
            let mut polled = job;
            polled.batch.instance_ids.extend(dropped);
            Ok(first_poll(polled, command_id.to_string(), sent_at))
        }
        Err(error) => match error.kind {
            AwsErrorKind::Throttled => {
                release().await?;
                Ok(JobOutcome::Wait {
                    delay: GATE_RECHECK,
                    reason: "throttled",
                })
            }
            // Refused before anything ran: assume the role again, then send.
            AwsErrorKind::ExpiredCredentials => {
                release().await?;
                Err(error.into())
            }
            // The request may have reached SSM: the claim stays, and the next
            // delivery looks for the command before sending again.
            AwsErrorKind::Transient => Err(error.into()),
            // IAM may deny per instance (resource tags, instance ARNs): the
            // batch's targets, not the location (Access Denied charges no budget).
            AwsErrorKind::AccessDenied => {
                let detail = error.to_string();
                report_split(ctx, &job, StatusDetail::AccessDenied, &detail, &dropped).await?;
                Ok(JobOutcome::Done)
            }
            AwsErrorKind::Rejected if refuses_the_step(&error.code) => {
                // Not the targets' fault: one failure with its cause, not one
                // per target. An AWS-owned document is the same in every
                // account, so its refusal halts the run; a document of the
                // deployment's own may be missing or different in one
                // account, so its refusal fails only the location.
                let scope = if job.step.document.starts_with("AWS-") {
                    LocationFailure::StepRefused
                } else {
                    LocationFailure::SendRefused
                };
                let detail = refused(ctx, &job, scope, &error).await?;
                let detail = format!("not sent: {detail}");
                report_split(ctx, &job, StatusDetail::NotStarted, &detail, &dropped).await?;
                Ok(JobOutcome::Done)
            }
            AwsErrorKind::Rejected => {
                // A bad document, parameter or instance id fails the targets: it
                // counts against the error budget, so a broken campaign halts.
                let detail = error.to_string();
                report_split(ctx, &job, StatusDetail::Failed, &detail, &dropped).await?;
                Ok(JobOutcome::Done)
            }
        },
    }
}

/// SendCommand's refusals of the step itself — its document, version,
/// parameters, output or notification settings — not of its targets
/// (per-instance refusals such as InvalidInstanceId stay the targets' own).
const STEP_REFUSALS: [&str; 6] = [
    "InvalidDocument",
    "InvalidDocumentVersion",
    "InvalidParameters",
    "InvalidOutputFolder",
    "InvalidNotificationConfig",
    "InvalidRole",
];

fn refuses_the_step(code: &str) -> bool {
    STEP_REFUSALS.contains(&code)
}

/// Reports the location failed (the run, for a refused step) with SSM's
/// refusal as the cause; returns that cause as reported.
async fn refused<S: Store>(
    ctx: &Context<S>,
    job: &ExecuteJob,
    reason: LocationFailure,
    error: &crate::aws::AwsError,
) -> Result<String, JobError> {
    let detail = format!(
        "step {} ({}) in {}/{}: {error}",
        job.step_index, job.step.document, job.location.account_id, job.location.region
    );
    tracing::warn!(
        campaign = job.run.campaign.as_str(),
        region = job.location.region.as_str(),
        code = error.code.as_str(),
        ?reason,
        "SendCommand refused the step; no target is charged"
    );
    ctx.reports
        .publish(Report::LocationFailed(LocationFailed {
            run_id: job.run.run_id,
            location: job.location.clone(),
            reason,
            detail: detail.clone(),
        }))
        .await?;
    Ok(detail)
}

/// Why a target of a batch was not sent a step that changes hosts.
pub(crate) const NO_LONGER_SELECTED: &str = "not sent: at send time the instance no longer matched the campaign's targets (tags, platform, online or instance ids, or its window tag, as DescribeInstanceInformation answered)";

/// An earlier delivery claimed the send at `since_ms` and recorded no command.
async fn recover<S: Store>(
    ctx: &Context<S>,
    job: ExecuteJob,
    since_ms: u64,
) -> Result<JobOutcome, JobError> {
    let now = now_ms();
    let stale_after = ctx.aws.stale_claim_after();
    let age = Duration::from_millis(now.saturating_sub(since_ms));
    if age < stale_after {
        return Ok(JobOutcome::Wait {
            delay: (stale_after - age).max(GATE_RECHECK),
            reason: "another delivery is sending",
        });
    }
    // Its holder died. Did its SendCommand get through? The comment names the job.
    let Some(client) = ctx.ssm(&job.run, &job.location).await? else {
        return Ok(ctx.no_tokens());
    };
    if let Some(command_id) = find_sent_command(ctx, &client, &job).await? {
        ctx.store
            .record_command(job.run.run_id, job.job_id, command_id.as_str())
            .await?;
        ctx.metrics.duplicate_send_avoided();
        return Ok(first_poll(job, command_id, since_ms));
    }
    if ctx
        .store
        .reclaim_send(job.run.run_id, job.job_id, since_ms, now)
        .await?
    {
        tracing::warn!(job_id = %job.job_id, "took over the send claim of a dead worker");
        return send_claimed(ctx, job, now).await;
    }
    Ok(JobOutcome::Wait {
        delay: GATE_RECHECK,
        reason: "another delivery took over",
    })
}

/// The command an earlier delivery of `job` sent, if SSM has one (the
/// comment names the job). Looked for by each instance of the batch in turn:
/// the earlier delivery may have left the first ones out of its command (at
/// send time they no longer matched), and a command is listed only under
/// the instances it names.
async fn find_sent_command<S: Store>(
    ctx: &Context<S>,
    client: &aws_sdk_ssm::Client,
    job: &ExecuteJob,
) -> Result<Option<String>, JobError> {
    let comment = job.job_id.to_string();
    // A batch nothing is left out of (no re-check at send time) is named
    // whole by its command: its first instance finds it.
    let may_leave_out = job.recheck.is_some() || job.window.is_some();
    let searched = if may_leave_out {
        job.batch.instance_ids.len()
    } else {
        1
    };
    for instance in job.batch.instance_ids.iter().take(searched) {
        let mut next_token = None;
        loop {
            let page = call(
                &ctx.metrics,
                "ListCommands",
                Repeat::ThrottledOrTransient,
                || {
                    client
                        .list_commands()
                        .instance_id(instance)
                        .set_next_token(next_token.clone())
                        .send()
                },
            )
            .await?;
            if let Some(command_id) = page
                .commands()
                .iter()
                .find(|command| command.comment() == Some(comment.as_str()))
                .and_then(|command| command.command_id())
            {
                return Ok(Some(command_id.to_string()));
            }
            next_token = page.next_token().map(str::to_string);
            if next_token.is_none() {
                break;
            }
        }
    }
    Ok(None)
}

/// The job's command is on record (an earlier delivery sent it): poll it,
/// never send again.
async fn resume_recorded<S: Store>(
    ctx: &Context<S>,
    job: ExecuteJob,
    command_id: String,
) -> Result<JobOutcome, JobError> {
    ctx.store
        .record_command(job.run.run_id, job.job_id, &command_id)
        .await?;
    ctx.metrics.duplicate_send_avoided();
    tracing::warn!(job_id = %job.job_id, "the job's command is on record: polling it, not sending again");
    Ok(first_poll(job, command_id, now_ms()))
}

fn first_poll(job: ExecuteJob, command_id: String, sent_at: u64) -> JobOutcome {
    let deadline = sent_at
        + u64::try_from((job.step.timeout + DEADLINE_GRACE).as_millis()).unwrap_or(u64::MAX);
    let poll = PollJob {
        job_id: job.job_id,
        execute: job,
        command_id,
        sent_at: UnixMillis(sent_at),
        deadline: UnixMillis(deadline),
        attempt: 0,
        cancel_sent: false,
    };
    JobOutcome::Continue {
        next: Box::new(Job::Poll(poll)),
        delay: FIRST_POLL,
    }
}

/// Reports every target of the batch with one status (nothing was run).
pub(crate) async fn report_all<S: Store>(
    ctx: &Context<S>,
    job: &ExecuteJob,
    status: StatusDetail,
    detail: &str,
) -> Result<(), JobError> {
    report_split(ctx, job, status, detail, &[]).await
}

/// Reports the batch's targets with one status (nothing was run) and, in
/// the same report, the targets left out of it at send time (`dropped`) as
/// not sent: a batch has one report, whatever became of its targets.
async fn report_split<S: Store>(
    ctx: &Context<S>,
    job: &ExecuteJob,
    status: StatusDetail,
    detail: &str,
    dropped: &[String],
) -> Result<(), JobError> {
    let mut results: Vec<TargetResult> = job
        .batch
        .instance_ids
        .iter()
        .map(|instance_id| TargetResult {
            status,
            ..TargetResult::not_started(instance_id, detail)
        })
        .collect();
    results.extend(
        dropped
            .iter()
            .map(|instance_id| TargetResult::not_started(instance_id, NO_LONGER_SELECTED)),
    );
    ctx.publish_results(job, results).await
}

impl<S: Store> Context<S> {
    pub(crate) async fn publish_results(
        &self,
        job: &ExecuteJob,
        results: Vec<TargetResult>,
    ) -> Result<(), JobError> {
        for result in &results {
            self.metrics.target_result(&job.run.campaign, result.status);
        }
        let report = Report::StepResults(StepResults {
            run_id: job.run.run_id,
            location: job.location.clone(),
            batch_id: job.batch.batch_id,
            step_index: job.step_index,
            results,
        });
        self.reports.publish(report).await?;
        Ok(())
    }
}

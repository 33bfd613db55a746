//! Poll: look at a sent command's invocations. While targets still run, the
//! next poll goes through a delay queue (never a long sleep holding the
//! delivery: RabbitMQ closes consumers that hold one past its consumer
//! timeout; only the first poll, 2 s after the send, may be done in place by
//! the worker that sent the command). When every
//! target is terminal — or the deadline passed, and the rest are reported as
//! timed out — the batch's results go to the scheduler in one report, with patch
//! compliance counts for patch documents. The scheduler sends the targets that
//! succeeded on to the campaign's next step.

use std::collections::HashMap;
use std::time::Duration;

use aws_sdk_ssm::types::{CommandInvocation, InstancePatchState, PatchOperationType};
use protocol::Job;
use protocol::job::{PollJob, UnixMillis};
use protocol::report::{PatchCompliance, PatchOperation, TargetResult};
use protocol::status::{InvocationStatus, StatusDetail};
use store::Store;

use crate::aws::{Repeat, call};
use crate::{Context, JobError, JobOutcome, now_ms};

/// SSM returns at most this much output inline; results keep the start of it.
const OUTPUT_EXCERPT_CHARS: usize = 2_500;

/// Delay before poll `attempt`: every second for the first seconds (short
/// commands are common), then less often, at most once a minute.
pub fn poll_delay(attempt: u32) -> Duration {
    match attempt {
        0..=4 => Duration::from_secs(1),
        5..=10 => Duration::from_secs(5),
        11..=20 => Duration::from_secs(15),
        _ => Duration::from_secs(60),
    }
}

/// `cancel_in_flight`: the run was cancelled, or a kill switch over it was
/// engaged with cancel-in-flight (read with the job's run record on
/// admission). The command is then cancelled once, under the location's
/// SendCommand rate; a failed cancel is tried again at the next poll, and
/// the command's outcome is read either way.
pub(crate) async fn handle<S: Store>(
    ctx: &Context<S>,
    mut job: PollJob,
    cancel_in_flight: bool,
) -> Result<JobOutcome, JobError> {
    let Some(client) = ctx.ssm(&job.execute.run, &job.execute.location).await? else {
        return Ok(ctx.no_tokens());
    };
    if cancel_in_flight && !job.cancel_sent {
        if !ctx
            .take_token(
                &job.execute.location,
                "SendCommand",
                job.execute.run.api_rate_limits.send_command,
            )
            .await?
        {
            return Ok(ctx.no_tokens());
        }
        let cancelled = call(
            &ctx.metrics,
            "CancelCommand",
            Repeat::ThrottledOrTransient,
            || client.cancel_command().command_id(&job.command_id).send(),
        )
        .await;
        match cancelled {
            Ok(_) => {
                tracing::warn!(command_id = job.command_id.as_str(), run_id = %job.execute.run.run_id, "command in flight cancelled");
                job.cancel_sent = true;
                // Poll again soon: the invocations turn Cancelled within seconds.
                job.attempt = 0;
            }
            Err(error) => {
                tracing::warn!(command_id = job.command_id.as_str(), error = %error, "could not cancel a command in flight; trying again at the next poll");
            }
        }
    }
    let execute = &job.execute;
    let limits = &execute.run.api_rate_limits;
    let mut invocations: HashMap<String, CommandInvocation> = HashMap::new();
    let mut next_token = None;
    loop {
        if !ctx
            .take_token(
                &execute.location,
                "ListCommandInvocations",
                limits.list_command_invocations,
            )
            .await?
        {
            return Ok(ctx.no_tokens());
        }
        let page = call(
            &ctx.metrics,
            "ListCommandInvocations",
            Repeat::ThrottledOrTransient,
            || {
                client
                    .list_command_invocations()
                    .command_id(&job.command_id)
                    .details(true)
                    .set_next_token(next_token.clone())
                    .send()
            },
        )
        .await?;
        for invocation in page.command_invocations() {
            if let Some(instance_id) = invocation.instance_id() {
                invocations.insert(instance_id.to_string(), invocation.clone());
            }
        }
        next_token = page.next_token().map(str::to_string);
        if next_token.is_none() {
            break;
        }
    }

    // SSM lists an invocation for every instance a command names from the
    // moment it is sent: once it lists any, a target of the batch it does
    // not list was not sent the command — the sending worker left it out
    // (at send time it no longer matched the campaign's targets). Its
    // result goes in this one report of the batch (`None` here).
    let listed = !invocations.is_empty();
    let statuses: Vec<Option<StatusDetail>> = execute
        .batch
        .instance_ids
        .iter()
        .map(|instance_id| match invocations.get(instance_id) {
            Some(invocation) => Some(status_detail(invocation)),
            None if listed => None,
            None => Some(StatusDetail::Pending),
        })
        .collect();
    let all_terminal = statuses
        .iter()
        .all(|status| status.is_none_or(|status| status.is_terminal()));
    let past_deadline = now_ms() >= job.deadline.0;
    if !all_terminal && !past_deadline {
        let attempt = job.attempt + 1;
        let next = PollJob { attempt, ..job };
        return Ok(JobOutcome::Continue {
            next: Box::new(Job::Poll(next)),
            delay: poll_delay(attempt),
        });
    }

    let mut results: Vec<TargetResult> = execute
        .batch
        .instance_ids
        .iter()
        .zip(statuses)
        .map(|(instance_id, status)| {
            let Some(status) = status else {
                return TargetResult::not_started(instance_id, crate::execute::NO_LONGER_SELECTED);
            };
            let status = if status.is_terminal() {
                status
            } else if status == StatusDetail::InProgress {
                StatusDetail::ExecutionTimedOut
            } else {
                StatusDetail::DeliveryTimedOut
            };
            result(instance_id, status, &job, invocations.get(instance_id))
        })
        .collect();
    if execute.collect_patch_compliance {
        // Results are worth more than counts: a failure to read patch states
        // never withholds or changes a result; the counts are marked missing.
        if let Err(error) = attach_compliance(ctx, &client, &job, &mut results).await {
            tracing::warn!(
                account = execute.location.account_id,
                region = execute.location.region,
                error = %error,
                "patch compliance counts unreadable; results go without them"
            );
            mark_compliance_missing(
                &mut results,
                &format!("DescribeInstancePatchStates failed: {error}"),
            );
        }
    }
    ctx.publish_results(execute, results).await?;
    Ok(JobOutcome::Done)
}

fn status_detail(invocation: &CommandInvocation) -> StatusDetail {
    invocation
        .status_details()
        .and_then(|details| details.parse().ok())
        .unwrap_or(StatusDetail::Pending)
}

fn millis(time: Option<&aws_sdk_ssm::primitives::DateTime>) -> Option<UnixMillis> {
    time.and_then(|time| time.to_millis().ok())
        .and_then(|millis| u64::try_from(millis).ok())
        .map(UnixMillis)
}

fn result(
    instance_id: &str,
    status: StatusDetail,
    job: &PollJob,
    invocation: Option<&CommandInvocation>,
) -> TargetResult {
    let plugin = invocation.and_then(|invocation| invocation.command_plugins().first());
    TargetResult {
        instance_id: instance_id.to_string(),
        status,
        command_id: Some(job.command_id.clone()),
        requested_at: invocation
            .and_then(|invocation| millis(invocation.requested_date_time()))
            .or(Some(job.sent_at)),
        started_at: plugin.and_then(|plugin| millis(plugin.response_start_date_time())),
        finished_at: plugin.and_then(|plugin| millis(plugin.response_finish_date_time())),
        response_code: plugin
            .map(|plugin| plugin.response_code())
            .filter(|code| *code >= 0 && status.status() != InvocationStatus::Pending),
        output_excerpt: plugin
            .and_then(|plugin| plugin.output())
            .unwrap_or_default()
            .chars()
            .take(OUTPUT_EXCERPT_CHARS)
            .collect(),
        compliance: None,
        compliance_missing: None,
    }
}

/// DescribeInstancePatchStates for the targets the patch step succeeded on.
async fn attach_compliance<S: Store>(
    ctx: &Context<S>,
    client: &aws_sdk_ssm::Client,
    job: &PollJob,
    results: &mut [TargetResult],
) -> Result<(), JobError> {
    let execute = &job.execute;
    let succeeded: Vec<String> = results
        .iter()
        .filter(|result| result.status == StatusDetail::Success)
        .map(|result| result.instance_id.clone())
        .collect();
    if succeeded.is_empty() {
        return Ok(());
    }
    let mut states: HashMap<String, PatchCompliance> = HashMap::new();
    let mut next_token = None;
    loop {
        if !ctx
            .take_token(
                &execute.location,
                "DescribeInstancePatchStates",
                execute.run.api_rate_limits.describe_instance_patch_states,
            )
            .await?
        {
            // Results are worth more than counts: report without them.
            tracing::warn!(
                "no rate tokens for DescribeInstancePatchStates; results go without compliance counts"
            );
            mark_compliance_missing(
                results,
                "no DescribeInstancePatchStates rate tokens within the wait",
            );
            return Ok(());
        }
        let page = call(
            &ctx.metrics,
            "DescribeInstancePatchStates",
            Repeat::ThrottledOrTransient,
            || {
                client
                    .describe_instance_patch_states()
                    .set_instance_ids(Some(succeeded.clone()))
                    .set_next_token(next_token.clone())
                    .send()
            },
        )
        .await?;
        for state in page.instance_patch_states() {
            states.insert(state.instance_id().to_string(), compliance(state));
        }
        next_token = page.next_token().map(str::to_string);
        if next_token.is_none() {
            break;
        }
    }
    for result in results.iter_mut() {
        result.compliance = states.get(&result.instance_id).copied();
    }
    Ok(())
}

/// Says why the succeeded targets have no compliance counts.
fn mark_compliance_missing(results: &mut [TargetResult], reason: &str) {
    for result in results
        .iter_mut()
        .filter(|result| result.status == StatusDetail::Success && result.compliance.is_none())
    {
        result.compliance_missing = Some(reason.to_string());
    }
}

fn count(value: i32) -> u32 {
    u32::try_from(value).unwrap_or(0)
}

fn compliance(state: &InstancePatchState) -> PatchCompliance {
    PatchCompliance {
        operation: match state.operation() {
            PatchOperationType::Install => PatchOperation::Install,
            _ => PatchOperation::Scan,
        },
        installed: count(state.installed_count()),
        installed_other: count(state.installed_other_count()),
        installed_pending_reboot: count(state.installed_pending_reboot_count().unwrap_or(0)),
        installed_rejected: count(state.installed_rejected_count().unwrap_or(0)),
        missing: count(state.missing_count()),
        failed: count(state.failed_count()),
        not_applicable: count(state.not_applicable_count()),
        critical_non_compliant: count(state.critical_non_compliant_count().unwrap_or(0)),
        security_non_compliant: count(state.security_non_compliant_count().unwrap_or(0)),
        other_non_compliant: count(state.other_non_compliant_count().unwrap_or(0)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn polls_back_off_to_once_a_minute() {
        assert_eq!(poll_delay(0), Duration::from_secs(1));
        assert!(poll_delay(6) > poll_delay(1));
        assert_eq!(poll_delay(1_000), Duration::from_secs(60));
    }
}

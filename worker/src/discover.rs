//! Discover: one page (≤ 50) of a location's managed instances matching the
//! campaign's targets. The page is reported to the scheduler (which makes it a
//! batch) and the next page, if any, is published as its own job, so a
//! redelivery repeats one page, never the whole location.

use aws_sdk_ssm::types::{InstanceInformationStringFilter, PingStatus, PlatformType};
use protocol::Job;
use protocol::campaign::{Platform, TargetSelection, TargetSelector};
use protocol::job::{DiscoverJob, ExecuteJob, MAX_BATCH_SIZE, WindowTag};
use protocol::report::{
    DiscoveredTarget, LocationFailed, LocationFailure, Report, TargetsDiscovered,
};
use store::Store;

use crate::aws::{AwsErrorKind, Repeat, call};
use crate::{Context, JobError, JobOutcome};

pub(crate) async fn handle<S: Store>(
    ctx: &Context<S>,
    job: DiscoverJob,
) -> Result<JobOutcome, JobError> {
    // A cancelled (or unknown) run discovers no more: its discovery ended
    // with the cancel, so nothing is asked of AWS for it.
    if let store::SendGate::Shut(store::GateCause::RunCancelled(_) | store::GateCause::RunUnknown) =
        ctx.gate(&job.run).await
    {
        return Ok(JobOutcome::Done);
    }
    let client = match ctx.ssm(&job.run, &job.location).await {
        Ok(Some(client)) => client,
        Ok(None) => return Ok(ctx.no_tokens()),
        Err(JobError::Aws(error)) if error.kind == AwsErrorKind::AccessDenied => {
            return fail_location(ctx, &job, LocationFailure::AccessDenied, error.to_string())
                .await;
        }
        Err(error) => return Err(error),
    };
    let limits = &job.run.api_rate_limits;
    if !ctx
        .take_token(
            &job.location,
            "DescribeInstanceInformation",
            limits.describe_instance_information,
        )
        .await?
    {
        return Ok(ctx.no_tokens());
    }
    let filters = instance_filters(&job.targets)?;
    let output = call(
        &ctx.metrics,
        "DescribeInstanceInformation",
        Repeat::ThrottledOrTransient,
        || {
            client
                .describe_instance_information()
                .set_filters(Some(filters.clone()))
                .max_results(MAX_BATCH_SIZE as i32)
                .set_next_token(job.next_token.clone())
                .send()
        },
    )
    .await;
    let output = match output {
        Ok(output) => output,
        Err(error) if error.kind == AwsErrorKind::AccessDenied => {
            return fail_location(ctx, &job, LocationFailure::AccessDenied, error.to_string())
                .await;
        }
        Err(error) => return Err(error.into()),
    };
    let mut targets: Vec<DiscoveredTarget> = output
        .instance_information_list()
        .iter()
        .filter_map(|instance| {
            Some(DiscoveredTarget {
                instance_id: instance.instance_id()?.to_string(),
                platform: instance.platform_type().and_then(platform),
                online: instance.ping_status() == Some(&PingStatus::Online),
                window: None,
            })
        })
        .collect();
    if let Some(windows) = &job.window_tag {
        match assign_windows(ctx, &client, &job, windows, &mut targets).await {
            Ok(true) => {}
            Ok(false) => return Ok(ctx.no_tokens()),
            Err(JobError::Aws(error)) if error.kind == AwsErrorKind::AccessDenied => {
                return fail_location(ctx, &job, LocationFailure::AccessDenied, error.to_string())
                    .await;
            }
            Err(error) => return Err(error),
        }
    }
    let next_token = output.next_token().filter(|token| !token.is_empty());
    if let Some(next_token) = next_token {
        let page = job.page + 1;
        let next = DiscoverJob {
            job_id: DiscoverJob::derive_id(job.run.run_id, &job.location, page),
            page,
            next_token: Some(next_token.to_string()),
            ..job.clone()
        };
        ctx.broker.publish_job(&Job::Discover(next)).await?;
    }
    let report = Report::TargetsDiscovered(TargetsDiscovered {
        run_id: job.run.run_id,
        location: job.location.clone(),
        page: job.page,
        targets,
        last_page: next_token.is_none(),
    });
    ctx.reports.publish(report).await?;
    Ok(JobOutcome::Done)
}

/// Per-target windows: says which window each of the page's `targets` is
/// in — one DescribeInstanceInformation per window (the page's ids and
/// `tag:<window_tag>` = the window's name) until every target has one. A
/// target whose tag names no window keeps `None` (it is never sent). False
/// when no rate token came in time (the page is discovered again).
async fn assign_windows<S: Store>(
    ctx: &Context<S>,
    client: &aws_sdk_ssm::Client,
    job: &DiscoverJob,
    windows: &WindowTag,
    targets: &mut [DiscoveredTarget],
) -> Result<bool, JobError> {
    for name in &windows.names {
        let unassigned: Vec<String> = targets
            .iter()
            .filter(|target| target.window.is_none())
            .map(|target| target.instance_id.clone())
            .collect();
        if unassigned.is_empty() {
            break;
        }
        let filters = vec![
            filter("InstanceIds", unassigned)?,
            filter(&format!("tag:{}", windows.tag), vec![name.clone()])?,
        ];
        let Some(in_window) = matching_ids(ctx, client, &job.location, &job.run, filters).await?
        else {
            return Ok(false);
        };
        for target in targets.iter_mut() {
            if target.window.is_none() && in_window.contains(&target.instance_id) {
                target.window = Some(name.clone());
            }
        }
    }
    Ok(true)
}

/// The location cannot be worked on at all; the scheduler counts it against
/// `location_max_errors`.
pub(crate) async fn fail_location<S: Store>(
    ctx: &Context<S>,
    job: &DiscoverJob,
    reason: LocationFailure,
    detail: String,
) -> Result<JobOutcome, JobError> {
    tracing::warn!(
        campaign = job.run.campaign.as_str(),
        region = job.location.region.as_str(),
        ?reason,
        "location failed"
    );
    let report = Report::LocationFailed(LocationFailed {
        run_id: job.run.run_id,
        location: job.location.clone(),
        reason,
        detail,
    });
    ctx.reports.publish(report).await?;
    Ok(JobOutcome::Done)
}

fn filter(key: &str, values: Vec<String>) -> Result<InstanceInformationStringFilter, JobError> {
    InstanceInformationStringFilter::builder()
        .key(key)
        .set_values(Some(values))
        .build()
        .map_err(|error| JobError::Invalid(format!("filter {key}: {error}")))
}

/// Of a batch about to be sent, the instances that still match the run's
/// selection (`selection`: a step that changes hosts) and, with per-target
/// windows, whose tag still names the batch's window — one
/// DescribeInstanceInformation with the batch's ids and those filters, as
/// SSM's own tag targeting would choose them at send time: a host whose tag
/// was removed or changed after discovery, or that a forged report added,
/// is not among them. `None` when no rate token came in time.
pub(crate) async fn still_selected<S: Store>(
    ctx: &Context<S>,
    client: &aws_sdk_ssm::Client,
    job: &ExecuteJob,
    selection: Option<&TargetSelection>,
) -> Result<Option<Vec<String>>, JobError> {
    let batch = &job.batch.instance_ids;
    let wanted: Vec<String> = match selection.and_then(TargetSelection::instance_ids) {
        Some(ids) => batch
            .iter()
            .filter(|id| ids.contains(id))
            .cloned()
            .collect(),
        None => batch.clone(),
    };
    if wanted.is_empty() {
        return Ok(Some(Vec::new()));
    }
    let mut filters = match selection {
        Some(selection) => selection_filters(selection, Some(wanted))?,
        None => vec![filter("InstanceIds", wanted)?],
    };
    // Per-target windows: only the instances whose tag still names the
    // batch's window (a tag changed since discovery is not followed).
    if let Some(protocol::job::TargetWindow::Named { tag, name, .. }) = &job.window {
        filters.push(filter(&format!("tag:{tag}"), vec![name.clone()])?);
    }
    let Some(matching) = matching_ids(ctx, client, &job.location, &job.run, filters).await? else {
        return Ok(None);
    };
    Ok(Some(
        batch
            .iter()
            .filter(|id| matching.contains(id.as_str()))
            .cloned()
            .collect(),
    ))
}

/// The ids of the instances DescribeInstanceInformation lists for
/// `filters`, every page of them (a filtered listing may answer a page
/// short, with a next token); `None` when no rate token came in time.
async fn matching_ids<S: Store>(
    ctx: &Context<S>,
    client: &aws_sdk_ssm::Client,
    location: &protocol::job::Location,
    run: &protocol::job::RunContext,
    filters: Vec<InstanceInformationStringFilter>,
) -> Result<Option<std::collections::HashSet<String>>, JobError> {
    let mut matching = std::collections::HashSet::new();
    let mut next_token: Option<String> = None;
    loop {
        if !ctx
            .take_token(
                location,
                "DescribeInstanceInformation",
                run.api_rate_limits.describe_instance_information,
            )
            .await?
        {
            return Ok(None);
        }
        let output = call(
            &ctx.metrics,
            "DescribeInstanceInformation",
            Repeat::ThrottledOrTransient,
            || {
                client
                    .describe_instance_information()
                    .set_filters(Some(filters.clone()))
                    .max_results(MAX_BATCH_SIZE as i32)
                    .set_next_token(next_token.clone())
                    .send()
            },
        )
        .await?;
        matching.extend(
            output
                .instance_information_list()
                .iter()
                .filter_map(|instance| instance.instance_id())
                .map(str::to_string),
        );
        next_token = output
            .next_token()
            .filter(|token| !token.is_empty())
            .map(str::to_string);
        if next_token.is_none() {
            return Ok(Some(matching));
        }
    }
}

/// The campaign's target selection as DescribeInstanceInformation filters.
fn instance_filters(
    targets: &TargetSelection,
) -> Result<Vec<InstanceInformationStringFilter>, JobError> {
    selection_filters(targets, None)
}

/// The selection's filters; `ids` (a batch's) replaces its id list.
fn selection_filters(
    targets: &TargetSelection,
    ids: Option<Vec<String>>,
) -> Result<Vec<InstanceInformationStringFilter>, JobError> {
    let mut filters = Vec::new();
    let (listed, tags) = match &targets.selector {
        TargetSelector::All => (None, None),
        TargetSelector::InstanceIds(listed) => (Some(listed), None),
        TargetSelector::Tags(tags) => (None, Some(tags)),
        TargetSelector::TaggedInstances { tags, instance_ids } => (Some(instance_ids), Some(tags)),
    };
    if let Some(ids) = ids.or_else(|| listed.cloned()) {
        filters.push(filter("InstanceIds", ids)?);
    }
    for (key, values) in tags.into_iter().flatten() {
        filters.push(filter(&format!("tag:{key}"), values.clone())?);
    }
    if let Some(platform) = targets.platform {
        filters.push(filter(
            "PlatformTypes",
            vec![platform.as_str().to_string()],
        )?);
    }
    if targets.online_only {
        filters.push(filter("PingStatus", vec!["Online".to_string()])?);
    }
    Ok(filters)
}

fn platform(platform: &PlatformType) -> Option<Platform> {
    match platform {
        PlatformType::Linux => Some(Platform::Linux),
        PlatformType::Windows => Some(Platform::Windows),
        PlatformType::Macos => Some(Platform::MacOS),
        _ => None,
    }
}

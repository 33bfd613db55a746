//! `/campaigns`: apply, list, show, approve, delete, and start runs.

use axum::Extension;
use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use protocol::{Campaign, SpecFormat};
use serde::{Deserialize, Serialize};
use serde_json::json;
use uuid::Uuid;

use super::{ApiError, ApiResult, CurrentScheduler, parse_version, scheduler, with_note};
use crate::SchedulerError;
use crate::auth::Principal;
use crate::runs::StartOptions;

#[derive(Debug, Serialize)]
pub(super) struct AppliedCampaign {
    name: String,
    version: u32,
    changed: bool,
    /// The version changes hosts: it runs only once another principal approves it.
    needs_approval: bool,
}

pub(super) async fn apply_campaign(
    State(current): State<CurrentScheduler>,
    Extension(principal): Extension<Principal>,
    headers: HeaderMap,
    body: String,
) -> Result<Response, ApiError> {
    let scheduler = scheduler(&current)?;
    let json = headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.starts_with("application/json"));
    let format = if json {
        SpecFormat::Json
    } else {
        SpecFormat::Yaml
    };
    // Parsing is CPU work proportional to the (bounded) body: off the async
    // threads, so /healthz and other requests keep answering meanwhile.
    let max_locations = scheduler.config().max_locations;
    let parsed =
        tokio::task::spawn_blocking(move || Campaign::parse_within(&body, format, max_locations))
            .await
            .map_err(|error| {
                SchedulerError::Invalid(format!("parsing the campaign failed: {error}"))
            })?;
    let campaign = parsed.map_err(|errors| ApiError {
        status: StatusCode::BAD_REQUEST,
        body: json!({
            "error": "the campaign spec is invalid",
            "problems": errors.iter().map(ToString::to_string).collect::<Vec<_>>(),
        }),
    })?;
    let applied = scheduler
        .apply_campaign_by(&campaign, &principal.name)
        .await?;
    let changes_hosts =
        crate::approvals::changes_hosts(&campaign, &scheduler.config().read_only_documents);
    let note = format!(
        "{} v{}{}{}",
        campaign.name,
        applied.version,
        if applied.changed {
            " (new version)"
        } else {
            " (unchanged)"
        },
        if changes_hosts {
            ", changes hosts: needs approval"
        } else {
            ""
        }
    );
    let answer = Json(AppliedCampaign {
        name: campaign.name,
        version: applied.version,
        changed: applied.changed,
        needs_approval: changes_hosts,
    });
    Ok(with_note(answer, note))
}

/// One version by number, also of a deleted campaign: what ran, who wrote
/// it, who approved it.
pub(super) async fn show_campaign_version(
    State(current): State<CurrentScheduler>,
    Path((name, version)): Path<(String, String)>,
) -> ApiResult<serde_json::Value> {
    let scheduler = scheduler(&current)?;
    let version = parse_version(&version)?;
    let Some((spec, approval)) = scheduler.campaign_version(&name, version).await? else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("campaign {name:?} has no version {version}"),
        ));
    };
    Ok(Json(json!({
        "name": name,
        "version": version,
        "spec": spec,
        "author": approval.author,
        "approver": approval.approver,
        "approved_ms": approval.approved_ms,
    })))
}

pub(super) async fn approve_campaign(
    State(current): State<CurrentScheduler>,
    Extension(principal): Extension<Principal>,
    Path((name, version)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let scheduler = scheduler(&current)?;
    let version = parse_version(&version)?;
    let approval = scheduler
        .approve_campaign(&name, version, &principal)
        .await?;
    let note = format!(
        "{name} v{version} written by {}, approved by {}",
        approval.author,
        approval.approver.as_deref().unwrap_or_default()
    );
    Ok(with_note(Json(approval), note))
}

pub(super) async fn list_campaigns(
    State(current): State<CurrentScheduler>,
) -> ApiResult<Vec<serde_json::Value>> {
    let scheduler = scheduler(&current)?;
    let mut listed = Vec::new();
    for name in scheduler.campaign_names().await? {
        if let Some((campaign, stored)) = scheduler.stored_campaign(&name).await? {
            listed.push(json!({
                "name": name,
                "version": stored.version,
                "description": campaign.description,
                "schedule": campaign.spec.schedule.as_ref().map(|schedule| schedule.expression.clone()),
                "triggers": campaign.triggers.iter().map(|trigger| trigger.event).collect::<Vec<_>>(),
            }));
        }
    }
    Ok(Json(listed))
}

pub(super) async fn show_campaign(
    State(current): State<CurrentScheduler>,
    Path(name): Path<String>,
) -> ApiResult<crate::campaigns::CampaignVersion> {
    let scheduler = scheduler(&current)?;
    match scheduler.stored_campaign(&name).await? {
        Some((_, stored)) => Ok(Json(stored)),
        None => Err(unknown_campaign(&name)),
    }
}

pub(super) fn unknown_campaign(name: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        format!("campaign {name:?} is not stored; apply it with `flotilla campaign apply -f FILE`"),
    )
}

pub(super) async fn delete_campaign(
    State(current): State<CurrentScheduler>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    let scheduler = scheduler(&current)?;
    if scheduler.delete_campaign(&name).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(unknown_campaign(&name))
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct StartRequest {
    #[serde(default)]
    plan_only: bool,
    /// Start although a change freeze covers the campaign, and why (a
    /// principal who may approve changes only).
    #[serde(default)]
    override_freeze: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct StartedRun {
    pub run_id: Uuid,
    pub campaign: String,
    pub campaign_version: u32,
}

pub(super) async fn start_run(
    State(current): State<CurrentScheduler>,
    Extension(principal): Extension<Principal>,
    Path(name): Path<String>,
    body: String,
) -> Result<Response, ApiError> {
    let scheduler = scheduler(&current)?;
    let request: StartRequest = if body.trim().is_empty() {
        StartRequest::default()
    } else {
        serde_json::from_str(&body).map_err(|error| {
            ApiError::new(StatusCode::BAD_REQUEST, format!("request body: {error}"))
        })?
    };
    let Some((campaign, stored)) = scheduler.stored_campaign(&name).await? else {
        return Err(unknown_campaign(&name));
    };
    // The campaign may name who runs it.
    if !crate::auth::may_run(&principal, &campaign.spec.run_by) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            format!(
                "{} (role {}) may not run {name}: its run_by lists {}",
                principal.name,
                principal.role,
                campaign.spec.run_by.join(", ")
            ),
        ));
    }
    // A plan only discovers: nothing runs on a host, so it needs no approval.
    let approval = if request.plan_only {
        None
    } else {
        Some(scheduler.check_approved(&campaign, stored.version).await?)
    };
    // A change freeze: no run that changes hosts starts, unless someone who
    // may approve changes overrides it with a reason.
    let mut freeze_note = None;
    if !request.plan_only
        && let Err(SchedulerError::Frozen(why)) = scheduler.check_not_frozen(&campaign).await
    {
        match request.override_freeze.as_deref().map(str::trim) {
            None | Some("") => return Err(SchedulerError::Frozen(why).into()),
            Some(_)
                if !principal
                    .role
                    .allows(crate::auth::Permission::ApproveCampaign) =>
            {
                return Err(ApiError::new(
                    StatusCode::FORBIDDEN,
                    format!(
                        "{} (role {}) may not override a change freeze: it takes a principal who may approve changes (approver or admin)",
                        principal.name, principal.role
                    ),
                ));
            }
            Some(override_reason) => {
                freeze_note = Some(format!(
                    "change freeze overridden by {}: {override_reason} ({why})",
                    principal.name
                ));
            }
        }
    }
    let options = StartOptions {
        plan_only: request.plan_only,
        campaign_version: Some(stored.version),
        started_by: principal.name,
        freeze_override: freeze_note.clone(),
        ..StartOptions::default()
    };
    let run_id = scheduler.start_run(&campaign, options).await?;
    let note = match &approval {
        Some(approval) => format!(
            "run {run_id} of {name} v{} written by {}, approved by {}",
            stored.version,
            approval.author,
            approval.approver.as_deref().unwrap_or("nobody (read-only)")
        ),
        None => format!("plan {run_id} of {name} v{}", stored.version),
    };
    let note = match freeze_note {
        Some(freeze) => format!("{note}; {freeze}"),
        None => note,
    };
    let answer = Json(StartedRun {
        run_id,
        campaign: name,
        campaign_version: stored.version,
    });
    Ok(with_note(answer, note))
}

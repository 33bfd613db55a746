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

use scheduler::SchedulerError;
use scheduler::auth::Principal;
use scheduler::start_gate::{Door, Starter};

use super::{ApiResult, with_note};
use crate::error::ApiError;
use crate::parse::parse_version;
use crate::state::{CurrentScheduler, connected};

#[derive(Debug, Serialize)]
pub(super) struct AppliedCampaign {
    name: String,
    version: u32,
    changed: bool,
    /// The version changes hosts, names URLs or an output: with
    /// authentication on, it runs only once another principal approves it.
    needs_approval: bool,
    /// The two-person rule binds here (authentication is on): the version
    /// waits for an approval before it runs. False when it runs at once.
    approval_required: bool,
}

pub(super) async fn apply_campaign(
    State(current): State<CurrentScheduler>,
    Extension(principal): Extension<Principal>,
    headers: HeaderMap,
    body: String,
) -> Result<Response, ApiError> {
    let scheduler = connected(&current)?;
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
                SchedulerError::Internal(format!("parsing the campaign failed: {error}"))
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
    let approval_needed =
        scheduler::approvals::approval_needed(&campaign, &scheduler.config().read_only_documents);
    let approval_binds = scheduler.approval_binds(&campaign);
    let note = format!(
        "{} v{}{}{}",
        campaign.name,
        applied.version,
        if applied.changed {
            " (new version)"
        } else {
            " (unchanged)"
        },
        approval_binds
            .map(|why| format!(", {why}: needs approval"))
            .unwrap_or_default()
    );
    let answer = Json(AppliedCampaign {
        name: campaign.name,
        version: applied.version,
        changed: applied.changed,
        needs_approval: approval_needed.is_some(),
        approval_required: approval_binds.is_some(),
    });
    Ok(with_note(answer, note))
}

/// One version by number, also of a deleted campaign: what ran, who wrote
/// it, who approved it.
pub(super) async fn show_campaign_version(
    State(current): State<CurrentScheduler>,
    Path((name, version)): Path<(String, String)>,
) -> ApiResult<serde_json::Value> {
    let scheduler = connected(&current)?;
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
    let scheduler = connected(&current)?;
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
    let scheduler = connected(&current)?;
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
) -> ApiResult<scheduler::campaigns::CampaignVersion> {
    let scheduler = connected(&current)?;
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
    let scheduler = connected(&current)?;
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
    /// Start although another run of the campaign is live.
    #[serde(default)]
    allow_concurrent: bool,
    /// Narrow the run and set overridable parameters (see
    /// `scheduler::start_gate::RunOverrides`).
    #[serde(default)]
    limit: Limits,
    #[serde(default)]
    parameters: std::collections::BTreeMap<String, String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Limits {
    #[serde(default)]
    accounts: Vec<String>,
    #[serde(default)]
    regions: Vec<String>,
    #[serde(default)]
    instance_ids: Vec<String>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct StartedRun {
    pub run_id: Uuid,
    pub campaign: String,
    pub campaign_version: u32,
}

/// Parses the request and asks the engine's start gate; the gate decides.
pub(super) async fn start_run(
    State(current): State<CurrentScheduler>,
    Extension(principal): Extension<Principal>,
    Path(name): Path<String>,
    body: String,
) -> Result<Response, ApiError> {
    let scheduler = connected(&current)?;
    let request: StartRequest = if body.trim().is_empty() {
        StartRequest::default()
    } else {
        serde_json::from_str(&body).map_err(|error| {
            ApiError::new(StatusCode::BAD_REQUEST, format!("request body: {error}"))
        })?
    };
    let starter = Starter::Principal {
        principal,
        door: Door::Api,
    };
    let request = scheduler::start_gate::StartRequest {
        plan_only: request.plan_only,
        override_freeze: request.override_freeze,
        allow_concurrent: request.allow_concurrent,
        overrides: scheduler::start_gate::RunOverrides {
            accounts: request.limit.accounts,
            regions: request.limit.regions,
            instance_ids: request.limit.instance_ids,
            parameters: request.parameters,
        },
    };
    let start = scheduler.start_run_as(&starter, &name, &request).await?;
    let answer = Json(StartedRun {
        run_id: start.run_id,
        campaign: start.campaign,
        campaign_version: start.campaign_version,
    });
    Ok(with_note(answer, start.note))
}

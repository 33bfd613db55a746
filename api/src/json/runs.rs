//! `/runs` and `/kill`: progress, pause/resume/cancel, the kill switch.

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::json;
use store::{KillScope, Store};

use scheduler::RunProgress;
use scheduler::steering::Steer;

use super::ApiResult;
use crate::error::ApiError;
use crate::parse::parse_run_id;
use crate::state::{CurrentScheduler, connected};

#[derive(Debug, Deserialize)]
pub(crate) struct RunsQuery {
    campaign: Option<String>,
    limit: Option<usize>,
}

pub(crate) async fn list_runs(
    State(current): State<CurrentScheduler>,
    Query(query): Query<RunsQuery>,
) -> ApiResult<Vec<RunProgress>> {
    let scheduler = connected(&current)?;
    let limit = query.limit.unwrap_or(50).min(1_000);
    // From the indexes: the newest `limit` runs, of one campaign or all.
    let run_ids = match &query.campaign {
        Some(campaign) => scheduler.ledger().campaign_run_ids(campaign, limit).await?,
        None => scheduler.ledger().newest_run_ids(limit).await?,
    };
    let mut runs = Vec::with_capacity(run_ids.len());
    for run_id in run_ids {
        runs.push(scheduler.progress_listed(run_id).await?);
    }
    Ok(Json(runs))
}

#[derive(Debug, Serialize, Deserialize)]
pub struct RunDetail {
    pub progress: RunProgress,
    /// What keeps the run from moving now (a kill switch, a freeze, a closed
    /// window, jobs no worker takes); empty when nothing does.
    #[serde(default)]
    pub holds: Vec<scheduler::explain::Hold>,
    /// The run's steps: name and document (empty when its plan cannot be read).
    #[serde(default)]
    pub steps: Vec<StepInfo>,
    pub location_states: Vec<scheduler::ledger::LocationStatus>,
}

/// One step of a run, as `run show` and reports name it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct StepInfo {
    pub name: String,
    pub document: String,
    /// The DocumentVersion SendCommand is given; absent: SSM's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub document_version: Option<String>,
}

pub(crate) async fn show_run(
    State(current): State<CurrentScheduler>,
    Path(id): Path<String>,
) -> ApiResult<RunDetail> {
    let scheduler = connected(&current)?;
    let run_id = parse_run_id(&id)?;
    let progress = scheduler.progress(run_id).await?;
    let location_states = scheduler.ledger().location_statuses(run_id).await?;
    let holds = scheduler.holds(run_id, &progress).await;
    let steps = match scheduler.plan(run_id).await {
        Ok(plan) => plan
            .campaign
            .steps
            .iter()
            .map(|step| StepInfo {
                name: step.name.clone(),
                document: step.document.clone(),
                document_version: step.document_version.clone(),
            })
            .collect(),
        Err(error) => {
            tracing::debug!(%run_id, %error, "the run's steps cannot be read");
            Vec::new()
        }
    };
    Ok(Json(RunDetail {
        progress,
        holds,
        steps,
        location_states,
    }))
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct ReasonBody {
    reason: Option<String>,
    /// Resume although an alert fires for the run's campaign, and why.
    despite_alert: Option<String>,
}

/// A steering request's body; an empty body is an empty one.
fn reason_body(body: &str) -> Result<ReasonBody, ApiError> {
    if body.trim().is_empty() {
        return Ok(ReasonBody::default());
    }
    serde_json::from_str(body)
        .map_err(|error| ApiError::new(StatusCode::BAD_REQUEST, format!("request body: {error}")))
}

/// Pause, resume or cancel: parsed here, decided by [`scheduler::Scheduler::steer`].
pub(crate) async fn steer_run(
    State(current): State<CurrentScheduler>,
    axum::Extension(principal): axum::Extension<scheduler::auth::Principal>,
    Path((id, action)): Path<(String, String)>,
    body: String,
) -> Result<axum::response::Response, ApiError> {
    let scheduler = connected(&current)?;
    let run_id = parse_run_id(&id)?;
    let parsed = reason_body(&body)?;
    let steer = Steer::parse(&action, parsed.despite_alert)
        .map_err(|error| ApiError::new(StatusCode::NOT_FOUND, error))?;
    let steered = scheduler
        .steer(run_id, steer, parsed.reason.as_deref(), &principal)
        .await?;
    let note = steered.note.clone();
    let answer = Json(
        json!({ "changed": steered.changed, "state": steered.state, "reason": steered.reason }),
    );
    Ok(match note {
        Some(note) => super::with_note(answer, note),
        None => axum::response::IntoResponse::into_response(answer),
    })
}

/// Approves a rollout's next wave: decided by
/// [`scheduler::Scheduler::approve_wave_by`].
pub(crate) async fn approve_run(
    State(current): State<CurrentScheduler>,
    axum::Extension(principal): axum::Extension<scheduler::auth::Principal>,
    Path(id): Path<String>,
    body: String,
) -> ApiResult<serde_json::Value> {
    let scheduler = connected(&current)?;
    let run_id = parse_run_id(&id)?;
    let parsed = reason_body(&body)?;
    let steered = scheduler
        .approve_wave_by(run_id, &principal, parsed.reason.as_deref())
        .await?;
    Ok(Json(
        json!({ "changed": steered.changed, "state": steered.state, "reason": steered.reason }),
    ))
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct KillQuery {
    pub(crate) campaign: Option<String>,
    /// Also cancel the commands in flight (engage only).
    #[serde(default)]
    pub(crate) cancel_in_flight: bool,
}

pub(crate) fn kill_scope(query: &KillQuery) -> KillScope {
    match &query.campaign {
        Some(campaign) => KillScope::Campaign(campaign.clone()),
        None => KillScope::Global,
    }
}

pub(crate) async fn kill_state(
    State(current): State<CurrentScheduler>,
    Query(query): Query<KillQuery>,
) -> ApiResult<serde_json::Value> {
    let scheduler = connected(&current)?;
    // Campaign names are never empty, so "" reads the global switch only.
    let campaign = query.campaign.clone().unwrap_or_default();
    let reason = scheduler.store().kill_reason(&campaign).await?;
    Ok(Json(
        json!({ "engaged": reason.is_some(), "reason": reason }),
    ))
}

pub(crate) async fn engage_kill(
    State(current): State<CurrentScheduler>,
    axum::Extension(principal): axum::Extension<scheduler::auth::Principal>,
    Query(query): Query<KillQuery>,
    body: String,
) -> ApiResult<serde_json::Value> {
    let scheduler = connected(&current)?;
    let reason = reason_body(&body)?.reason.unwrap_or_default();
    scheduler
        .engage_kill_by(
            &kill_scope(&query),
            &reason,
            query.cancel_in_flight,
            &principal,
        )
        .await?;
    Ok(Json(
        json!({ "engaged": true, "reason": reason, "cancel_in_flight": query.cancel_in_flight }),
    ))
}

pub(crate) async fn release_kill(
    State(current): State<CurrentScheduler>,
    axum::Extension(principal): axum::Extension<scheduler::auth::Principal>,
    Query(query): Query<KillQuery>,
) -> ApiResult<serde_json::Value> {
    let scheduler = connected(&current)?;
    scheduler
        .release_kill_by(&kill_scope(&query), &principal)
        .await?;
    Ok(Json(json!({ "engaged": false })))
}

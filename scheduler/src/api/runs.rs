//! `/runs` and `/kill`: progress, pause/resume/cancel, the kill switch.

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::json;
use store::{KillScope, Store};
use uuid::Uuid;

use super::{ApiError, ApiResult, CurrentScheduler, scheduler};
use crate::runs::RunProgress;

#[derive(Debug, Deserialize)]
pub(crate) struct RunsQuery {
    campaign: Option<String>,
    limit: Option<usize>,
}

pub(crate) async fn list_runs(
    State(current): State<CurrentScheduler>,
    Query(query): Query<RunsQuery>,
) -> ApiResult<Vec<RunProgress>> {
    let scheduler = scheduler(&current)?;
    let limit = query.limit.unwrap_or(50).min(1_000);
    let mut runs = Vec::new();
    for run_id in scheduler.ledger().run_ids().await? {
        if runs.len() >= limit {
            break;
        }
        let progress = scheduler.progress(run_id).await?;
        if query
            .campaign
            .as_ref()
            .is_none_or(|campaign| *campaign == progress.campaign)
        {
            runs.push(progress);
        }
    }
    Ok(Json(runs))
}

pub(crate) fn parse_run_id(id: &str) -> Result<Uuid, ApiError> {
    id.parse().map_err(|_| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("{id:?} is not a run id (a UUID)"),
        )
    })
}

#[derive(Debug, Serialize, Deserialize)]
pub struct RunDetail {
    pub progress: RunProgress,
    pub location_states: Vec<crate::ledger::LocationStatus>,
}

pub(crate) async fn show_run(
    State(current): State<CurrentScheduler>,
    Path(id): Path<String>,
) -> ApiResult<RunDetail> {
    let scheduler = scheduler(&current)?;
    let run_id = parse_run_id(&id)?;
    let progress = scheduler.progress(run_id).await?;
    let location_states = scheduler.ledger().location_statuses(run_id).await?;
    Ok(Json(RunDetail {
        progress,
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

pub(crate) fn reason_of(body: &str, default: &str) -> Result<String, ApiError> {
    Ok(reason_body(body)?
        .reason
        .unwrap_or_else(|| default.to_string()))
}

pub(crate) async fn steer_run(
    State(current): State<CurrentScheduler>,
    Path((id, action)): Path<(String, String)>,
    body: String,
) -> Result<axum::response::Response, ApiError> {
    let scheduler = scheduler(&current)?;
    let run_id = parse_run_id(&id)?;
    // The override of a firing alert goes into the request's audit record.
    let mut note = None;
    let changed = match action.as_str() {
        "pause" => {
            scheduler
                .pause(run_id, &reason_of(&body, "paused by an operator")?)
                .await?
        }
        "resume" => {
            let parsed = reason_body(&body)?;
            let reason = parsed
                .reason
                .unwrap_or_else(|| "resumed by an operator".to_string());
            match parsed.despite_alert {
                Some(why) => {
                    note = Some(format!("despite a firing alert: {why}"));
                    scheduler
                        .resume_despite_alert(run_id, &reason, &why)
                        .await?
                }
                None => scheduler.resume(run_id, &reason).await?,
            }
        }
        "cancel" => {
            scheduler
                .cancel(run_id, &reason_of(&body, "cancelled by an operator")?)
                .await?
        }
        other => {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                format!("unknown action {other:?}; use pause, resume, cancel or approve"),
            ));
        }
    };
    let progress = scheduler.progress(run_id).await?;
    let answer =
        Json(json!({ "changed": changed, "state": progress.state, "reason": progress.reason }));
    Ok(match note {
        Some(note) => super::with_note(answer, note),
        None => axum::response::IntoResponse::into_response(answer),
    })
}

/// An approver lets a rollout waiting between two waves go on. Not the
/// principal that started the run (two people see each wave through), unless
/// the API runs without authentication.
pub(crate) async fn approve_run(
    State(current): State<CurrentScheduler>,
    axum::Extension(principal): axum::Extension<crate::auth::Principal>,
    Path(id): Path<String>,
    body: String,
) -> ApiResult<serde_json::Value> {
    let scheduler = scheduler(&current)?;
    let run_id = parse_run_id(&id)?;
    let progress = scheduler.progress(run_id).await?;
    if progress.state != protocol::run::RunState::AwaitingApproval {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!(
                "run {run_id} is {}, not AwaitingApproval: nothing to approve",
                progress.state
            ),
        ));
    }
    if principal.name != crate::auth::Principal::anonymous().name
        && progress.started_by == principal.name
    {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            format!(
                "{} started this run and cannot approve its waves; another approver must",
                principal.name
            ),
        ));
    }
    let reason = reason_of(&body, "approved")?;
    let changed = scheduler
        .approve_wave(
            run_id,
            &format!("next wave approved by {}: {reason}", principal.name),
        )
        .await?;
    let progress = scheduler.progress(run_id).await?;
    Ok(Json(
        json!({ "changed": changed, "state": progress.state, "reason": progress.reason }),
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
    let scheduler = scheduler(&current)?;
    // Campaign names are never empty, so "" reads the global switch only.
    let campaign = query.campaign.clone().unwrap_or_default();
    let reason = scheduler.store().kill_reason(&campaign).await?;
    Ok(Json(
        json!({ "engaged": reason.is_some(), "reason": reason }),
    ))
}

pub(crate) async fn engage_kill(
    State(current): State<CurrentScheduler>,
    Query(query): Query<KillQuery>,
    body: String,
) -> ApiResult<serde_json::Value> {
    let scheduler = scheduler(&current)?;
    let reason = reason_of(&body, "")?;
    if reason.trim().is_empty() {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "reason: required; say why everything stops (it is shown to every operator)",
        ));
    }
    scheduler
        .engage_kill_switch(&kill_scope(&query), &reason, query.cancel_in_flight)
        .await?;
    Ok(Json(
        json!({ "engaged": true, "reason": reason, "cancel_in_flight": query.cancel_in_flight }),
    ))
}

pub(crate) async fn release_kill(
    State(current): State<CurrentScheduler>,
    Query(query): Query<KillQuery>,
) -> ApiResult<serde_json::Value> {
    let scheduler = scheduler(&current)?;
    scheduler
        .store()
        .release_kill_switch(&kill_scope(&query))
        .await?;
    tracing::warn!(campaign = ?query.campaign, "kill switch released");
    Ok(Json(json!({ "engaged": false })))
}

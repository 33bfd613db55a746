//! The console's forms: each parses its fields, calls one engine function
//! (the start gate, steering, wave approval, the kill switch) and sends the
//! browser back; a refusal is the page shown. Nothing is decided here.

use axum::Extension;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};

use super::safe_next;
use crate::error::ApiError;
use crate::form::Form;
use crate::parse::parse_run_id;
use crate::state::{ApiState, connected};
use scheduler::auth::Principal;
use scheduler::start_gate::{Door, StartRequest, Starter};
use scheduler::steering::Steer;

/// A form's reason: `None` when empty (the engine uses its default).
pub(super) fn reason_of(form: &Form) -> Option<&str> {
    Some(form.get("reason").trim()).filter(|reason| !reason.is_empty())
}

/// Back to the page the button was on.
pub(super) fn back_to_run(run_id: &str) -> Response {
    Redirect::to(&format!("/ui/runs/{run_id}")).into_response()
}

/// Keeps an engine's note (an alert overridden, a freeze overridden) for
/// the request's audit record.
pub(super) fn with_note(mut response: Response, note: Option<String>) -> Response {
    if let Some(note) = note {
        response
            .extensions_mut()
            .insert(crate::access::AuditNote(note));
    }
    response
}

/// Pause, resume, cancel: the form parsed, the engine decides.
pub(super) async fn steer(
    State(state): State<ApiState>,
    Extension(principal): Extension<Principal>,
    Path((id, action)): Path<(String, String)>,
    body: axum::body::Bytes,
) -> Result<Response, Response> {
    let current = connected(&state.current)?;
    let run_id = parse_run_id(&id)?;
    let form = Form::parse(&body);
    let despite_alert =
        Some(form.get("despite_alert").trim().to_string()).filter(|why| !why.is_empty());
    let steer = Steer::parse(&action, despite_alert)
        .map_err(|error| ApiError::new(StatusCode::NOT_FOUND, error))?;
    let steered = current
        .steer(run_id, steer, reason_of(&form), &principal)
        .await
        .map_err(ApiError::from)?;
    Ok(with_note(back_to_run(&run_id.to_string()), steered.note))
}

pub(super) async fn approve(
    State(state): State<ApiState>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Result<Response, Response> {
    let current = connected(&state.current)?;
    let run_id = parse_run_id(&id)?;
    let form = Form::parse(&body);
    current
        .approve_wave_by(run_id, &principal, reason_of(&form))
        .await
        .map_err(ApiError::from)?;
    Ok(back_to_run(&run_id.to_string()))
}

/// Starts a run from the campaign page: the engine's start gate decides,
/// and its refusal is the page shown.
pub(super) async fn start_run(
    State(state): State<ApiState>,
    Extension(principal): Extension<Principal>,
    Path(name): Path<String>,
    body: axum::body::Bytes,
) -> Result<Response, Response> {
    let current = connected(&state.current)?;
    let form = Form::parse(&body);
    let request = StartRequest {
        plan_only: form.get("plan_only") == "yes",
        override_freeze: Some(form.get("override_freeze").trim().to_string())
            .filter(|why| !why.is_empty()),
        allow_concurrent: form.get("allow_concurrent") == "yes",
        overrides: Default::default(),
    };
    let starter = Starter::Principal {
        principal,
        door: Door::Console,
    };
    let start = current
        .start_run_as(&starter, &name, &request)
        .await
        .map_err(ApiError::from)?;
    Ok(with_note(
        back_to_run(&start.run_id.to_string()),
        Some(start.note),
    ))
}

/// The console asks for a ticked confirmation before the kill switch moves.
pub(super) fn confirmed(form: &Form) -> Result<(), ApiError> {
    if form.get("confirm") == "yes" {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "confirm: tick the confirmation to move the kill switch",
        ))
    }
}

/// Back where the form was sent from, when that is a console page.
pub(super) fn back(headers: &axum::http::HeaderMap) -> Response {
    let target = headers
        .get(header::REFERER)
        .and_then(|value| value.to_str().ok())
        .and_then(|referer| referer.find("/ui/").map(|at| referer[at..].to_string()))
        .unwrap_or_else(|| "/ui/runs".into());
    Redirect::to(safe_next(&target)).into_response()
}

pub(super) async fn engage_kill(
    State(state): State<ApiState>,
    Extension(principal): Extension<Principal>,
    headers: axum::http::HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, Response> {
    let current = connected(&state.current)?;
    let form = Form::parse(&body);
    confirmed(&form)?;
    current
        .engage_kill_by(
            &store::KillScope::Global,
            form.get("reason").trim(),
            false,
            &principal,
        )
        .await
        .map_err(ApiError::from)?;
    Ok(back(&headers))
}

pub(super) async fn release_kill(
    State(state): State<ApiState>,
    Extension(principal): Extension<Principal>,
    headers: axum::http::HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, Response> {
    let current = connected(&state.current)?;
    let form = Form::parse(&body);
    confirmed(&form)?;
    current
        .release_kill_by(&store::KillScope::Global, &principal)
        .await
        .map_err(ApiError::from)?;
    Ok(back(&headers))
}

//! The HTTP API, JSON in and out. `flotilla` subcommands are its client.
//!
//! | method and path | does |
//! |---|---|
//! | `POST /campaigns` | apply a spec (YAML, or JSON with `Content-Type: application/json`) |
//! | `GET /campaigns`, `GET /campaigns/{name}`, `DELETE /campaigns/{name}` | list, show, forget |
//! | `POST /campaigns/{name}/runs` | start a run through the engine's start gate; body `{"plan_only": true, "override_freeze": "…", "allow_concurrent": true}`, each optional |
//! | `GET /campaigns/{name}/versions/{version}`, `POST /campaigns/{name}/versions/{version}/approve` | one version (also of a deleted campaign); approve it |
//! | `GET /runs`, `GET /runs/{id}` | runs with live counters; one run with its locations |
//! | `POST /runs/{id}/pause`, `/resume`, `/cancel` | body `{"reason": "…"}` |
//! | `POST /runs/{id}/approve` | a rollout's next wave |
//! | `GET /kill`, `POST /kill`, `DELETE /kill` | kill switch; `?campaign=NAME` for one campaign; POST body `{"reason": "…"}` |
//! | `POST /events` | an EventBridge event (or a list of them) |
//! | `POST /alerts` | an Alertmanager webhook payload |
//! | `GET /calendar`, `POST /calendar`, `DELETE /calendar/{id}` | change freezes; `?campaign=` for one campaign's state |
//! | `GET /compliance` | the fleet's patch compliance (filters as query) |
//! | `GET /healthz`, `GET /metrics` | liveness; Prometheus metrics |
//! | `GET /audit?since=&principal=&action=&limit=` | the audit trail, oldest first |
//! | `GET /tokens`, `POST /tokens`, `DELETE /tokens/{name}` | API tokens (admin) |
//! | `/ui/…` | the web console, HTML, by session cookie ([`crate::console`]) |
//!
//! Every route but `/healthz` (and `/metrics` unless configured) needs a bearer
//! token whose role allows it; see [`crate::access`] and [`crate::auth`]. A
//! handler parses, calls one engine function, and answers: it decides
//! nothing.
//!
//! Errors are `{"error": "…"}` (and `"problems": […]` for an invalid spec) with
//! 400 for bad input, 404 for unknown names, 503 while RabbitMQ or Redis is away.
//!
//! Here the routes, `/healthz` and `/metrics`; the handlers are in
//! [`campaigns`], [`runs`] (with the kill switch) and [`admin`] (events,
//! alerts, audit, tokens, calendar, compliance).

mod admin;
mod campaigns;
mod runs;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};

use crate::error::ApiError;
use crate::state::{ApiState, CurrentScheduler, connected};

pub use self::admin::ListedToken;
use self::admin::{
    add_freeze, alerts, audit_query, calendar, compliance, create_token, events, list_tokens,
    remove_freeze, revoke_tokens,
};
pub use self::campaigns::StartedRun;
use self::campaigns::{
    apply_campaign, approve_campaign, delete_campaign, list_campaigns, show_campaign,
    show_campaign_version, start_run,
};
pub use self::runs::RunDetail;
use self::runs::{
    approve_run, engage_kill, kill_state, list_runs, release_kill, show_run, steer_run,
};

type ApiResult<T> = Result<Json<T>, ApiError>;

/// The JSON API's routes (the door and the body limit are added by
/// [`crate::router`]).
pub fn routes() -> Router<ApiState> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/campaigns", post(apply_campaign).get(list_campaigns))
        .route(
            "/campaigns/{name}",
            get(show_campaign).delete(delete_campaign),
        )
        .route("/campaigns/{name}/runs", post(start_run))
        .route(
            "/campaigns/{name}/versions/{version}",
            get(show_campaign_version),
        )
        .route(
            "/campaigns/{name}/versions/{version}/approve",
            post(approve_campaign),
        )
        .route("/runs", get(list_runs))
        .route("/runs/{id}", get(show_run))
        .route("/runs/{id}/approve", post(approve_run))
        .route("/runs/{id}/{action}", post(steer_run))
        .route(
            "/kill",
            get(kill_state).post(engage_kill).delete(release_kill),
        )
        .route("/events", post(events))
        .route("/alerts", post(alerts))
        .route("/calendar", get(calendar).post(add_freeze))
        .route("/compliance", get(compliance))
        .route("/calendar/{id}", axum::routing::delete(remove_freeze))
        .route("/audit", get(audit_query))
        .route("/tokens", get(list_tokens).post(create_token))
        .route("/tokens/{name}", axum::routing::delete(revoke_tokens))
}

async fn healthz(State(current): State<CurrentScheduler>) -> Result<&'static str, ApiError> {
    connected(&current)?;
    Ok("ok")
}

async fn metrics(State(state): State<ApiState>) -> String {
    let current = state.current.borrow().clone();
    if let Some(scheduler) = current
        && let Err(error) = scheduler.refresh_gauges().await
    {
        tracing::warn!(error = %error, "metrics gauges not refreshed");
    }
    state.metrics.render()
}

/// A handler's answer with what its audit record should add.
pub(super) fn with_note(answer: impl IntoResponse, note: String) -> Response {
    let mut response = answer.into_response();
    response
        .extensions_mut()
        .insert(crate::access::AuditNote(note));
    response
}

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
//! token whose role allows it; see [`crate::access`] and [`crate::auth`].
//!
//! Errors are `{"error": "…"}` (and `"problems": […]` for an invalid spec) with
//! 400 for bad input, 404 for unknown names, 503 while RabbitMQ or Redis is away.
//!
//! Here the router, the shared state and errors; the handlers are in
//! [`campaigns`], [`runs`] (with the kill switch) and [`admin`] (events,
//! alerts, audit, tokens).

pub(crate) mod admin;
mod campaigns;
pub(crate) mod runs;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;
use tokio::sync::watch;

use crate::{Scheduler, SchedulerError};

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

/// The scheduler the API uses: `None` while it reconnects.
pub type CurrentScheduler = watch::Receiver<Option<Scheduler>>;

/// What the handlers share: the connected scheduler, and the metrics, which
/// outlive any one connection (`flotilla_scheduler_connected` says 0 while
/// the scheduler reconnects, and `/metrics` still answers then).
#[derive(Clone)]
pub struct ApiState {
    pub current: CurrentScheduler,
    pub metrics: crate::metrics::SchedulerMetrics,
    pub auth: crate::auth::AuthSettings,
    /// HTTPS (and mTLS) when set.
    pub tls: Option<crate::tls::ApiTls>,
    /// Bounds the audit records of refused credentials.
    pub refusals: std::sync::Arc<crate::access::RefusalBudget>,
    /// The largest request body read.
    pub max_request_bytes: usize,
}

impl axum::extract::FromRef<ApiState> for CurrentScheduler {
    fn from_ref(state: &ApiState) -> Self {
        state.current.clone()
    }
}

pub fn router(state: ApiState) -> Router {
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
        .merge(crate::console::routes())
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            crate::access::guard,
        ))
        .layer(axum::extract::DefaultBodyLimit::max(
            state.max_request_bytes,
        ))
        .with_state(state)
}

pub struct ApiError {
    status: StatusCode,
    body: serde_json::Value,
}

impl ApiError {
    pub(crate) fn status(&self) -> StatusCode {
        self.status
    }

    /// The error and, for an invalid spec, its problems, as one line.
    pub(crate) fn message(&self) -> String {
        let mut message = self.body["error"].as_str().unwrap_or_default().to_string();
        if let Some(problems) = self.body["problems"].as_array() {
            for problem in problems.iter().filter_map(|problem| problem.as_str()) {
                message.push_str("; ");
                message.push_str(problem);
            }
        }
        message
    }

    pub(crate) fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            body: json!({ "error": message.into() }),
        }
    }
}

impl From<SchedulerError> for ApiError {
    /// Bad input is 400, refusals 403/404/409, outages 503 — each with its
    /// message. Internal faults (and records flotilla cannot read back) are
    /// 500 with a message that names no detail; the detail goes to the log.
    fn from(error: SchedulerError) -> Self {
        let status = match &error {
            SchedulerError::UnknownRun(_)
            | SchedulerError::UnknownCampaignVersion { .. }
            | SchedulerError::UnknownCampaign(_) => StatusCode::NOT_FOUND,
            SchedulerError::Forbidden(_) | SchedulerError::OutOfScope(_) => StatusCode::FORBIDDEN,
            SchedulerError::NeedsApproval(_)
            | SchedulerError::AlertFiring(_)
            | SchedulerError::Frozen(_)
            | SchedulerError::AlreadyRunning(_)
            | SchedulerError::WrongState(_) => StatusCode::CONFLICT,
            SchedulerError::Invalid(_) => StatusCode::BAD_REQUEST,
            error if error.is_retryable() => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        if status == StatusCode::INTERNAL_SERVER_ERROR {
            let reference = uuid::Uuid::new_v4();
            tracing::error!(error = %error, %reference, "request failed inside the scheduler");
            return Self::new(
                status,
                format!(
                    "internal error (reference {reference}); the scheduler's log has the cause"
                ),
            );
        }
        Self::new(status, error.to_string())
    }
}

impl From<store::StoreError> for ApiError {
    fn from(error: store::StoreError) -> Self {
        SchedulerError::from(error).into()
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(self.body)).into_response()
    }
}

type ApiResult<T> = Result<Json<T>, ApiError>;

pub(crate) fn scheduler(current: &CurrentScheduler) -> Result<Scheduler, ApiError> {
    current.borrow().clone().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "the scheduler is reconnecting to RabbitMQ/Redis; try again shortly",
        )
    })
}

async fn healthz(State(current): State<CurrentScheduler>) -> Result<&'static str, ApiError> {
    scheduler(&current)?;
    Ok("ok")
}

async fn metrics(State(state): State<ApiState>) -> String {
    let connected = state.current.borrow().clone();
    if let Some(scheduler) = connected
        && let Err(error) = scheduler.refresh_gauges().await
    {
        tracing::warn!(error = %error, "metrics gauges not refreshed");
    }
    state.metrics.render()
}

pub(super) fn parse_version(text: &str) -> Result<u32, ApiError> {
    text.parse().map_err(|_| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("{text:?} is not a version number"),
        )
    })
}

/// A handler's answer with what its audit record should add.
pub(super) fn with_note(answer: impl IntoResponse, note: String) -> Response {
    let mut response = answer.into_response();
    response
        .extensions_mut()
        .insert(crate::access::AuditNote(note));
    response
}

/// Serves the API until `shutdown`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: ApiState,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    if let Some(tls) = state.tls.clone() {
        return crate::tls::serve(listener, router(state), tls, shutdown).await;
    }
    axum::serve(
        listener,
        router(state).into_make_service_with_connect_info::<std::net::SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown)
    .await
}

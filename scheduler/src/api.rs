//! The HTTP API, JSON in and out. `flotilla` subcommands are its client.
//!
//! | method and path | does |
//! |---|---|
//! | `POST /campaigns` | apply a spec (YAML, or JSON with `Content-Type: application/json`) |
//! | `GET /campaigns`, `GET /campaigns/{name}`, `DELETE /campaigns/{name}` | list, show, forget |
//! | `POST /campaigns/{name}/runs` | start a run; body `{"plan_only": true}` to only discover |
//! | `GET /campaigns/{name}/versions/{v}`, `POST …/{v}/approve` | one version (also of a deleted campaign); approve it |
//! | `GET /runs`, `GET /runs/{id}` | runs with live counters; one run with its locations |
//! | `POST /runs/{id}/pause`, `/resume`, `/cancel` | body `{"reason": "…"}` |
//! | `GET /kill`, `POST /kill`, `DELETE /kill` | kill switch; `?campaign=NAME` for one campaign; POST body `{"reason": "…"}` |
//! | `POST /events` | an EventBridge event (or a list of them) |
//! | `POST /alerts` | an Alertmanager webhook payload |
//! | `GET /healthz`, `GET /metrics` | liveness; Prometheus metrics |
//! | `GET /audit?since=&principal=&action=&limit=` | the audit trail, oldest first |
//! | `GET /tokens`, `POST /tokens`, `DELETE /tokens/{name}` | API tokens (admin) |
//!
//! Every route but `/healthz` (and `/metrics` unless configured) needs a bearer
//! token whose role allows it; see [`crate::access`] and [`crate::auth`].
//!
//! Errors are `{"error": "…"}` (and `"problems": […]` for an invalid spec) with
//! 400 for bad input, 404 for unknown names, 503 while RabbitMQ or Redis is away.

use axum::Extension;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use protocol::{Campaign, SpecFormat};
use serde::{Deserialize, Serialize};
use serde_json::json;
use store::{KillScope, Store};
use tokio::sync::watch;
use uuid::Uuid;

use crate::audit::{AuditQuery, AuditRecord};
use crate::auth::{Principal, Role, TokenRecord};
use crate::runs::{RunProgress, StartOptions};
use crate::{Scheduler, SchedulerError};

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
        .route("/runs/{id}/{action}", post(steer_run))
        .route(
            "/kill",
            get(kill_state).post(engage_kill).delete(release_kill),
        )
        .route("/events", post(events))
        .route("/alerts", post(alerts))
        .route("/audit", get(audit_query))
        .route("/tokens", get(list_tokens).post(create_token))
        .route("/tokens/{name}", axum::routing::delete(revoke_tokens))
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
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            body: json!({ "error": message.into() }),
        }
    }
}

impl From<SchedulerError> for ApiError {
    fn from(error: SchedulerError) -> Self {
        let status = match &error {
            SchedulerError::UnknownRun(_) | SchedulerError::UnknownCampaignVersion { .. } => {
                StatusCode::NOT_FOUND
            }
            SchedulerError::Forbidden(_) => StatusCode::FORBIDDEN,
            SchedulerError::NeedsApproval(_) => StatusCode::CONFLICT,
            SchedulerError::Invalid(_) | SchedulerError::Json(_) => StatusCode::BAD_REQUEST,
            error if error.is_retryable() => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
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

fn scheduler(current: &CurrentScheduler) -> Result<Scheduler, ApiError> {
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

#[derive(Debug, Serialize)]
struct AppliedCampaign {
    name: String,
    version: u32,
    changed: bool,
    /// The version changes hosts: it runs only once another principal approves it.
    needs_approval: bool,
}

async fn apply_campaign(
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
async fn show_campaign_version(
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

async fn approve_campaign(
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

async fn list_campaigns(
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

async fn show_campaign(
    State(current): State<CurrentScheduler>,
    Path(name): Path<String>,
) -> ApiResult<crate::campaigns::CampaignVersion> {
    let scheduler = scheduler(&current)?;
    match scheduler.stored_campaign(&name).await? {
        Some((_, stored)) => Ok(Json(stored)),
        None => Err(unknown_campaign(&name)),
    }
}

fn unknown_campaign(name: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        format!("campaign {name:?} is not stored; apply it with `flotilla campaign apply -f FILE`"),
    )
}

async fn delete_campaign(
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
struct StartRequest {
    #[serde(default)]
    plan_only: bool,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct StartedRun {
    pub run_id: Uuid,
    pub campaign: String,
    pub campaign_version: u32,
}

async fn start_run(
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
    let options = StartOptions {
        plan_only: request.plan_only,
        campaign_version: Some(stored.version),
        started_by: principal.name,
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
    let answer = Json(StartedRun {
        run_id,
        campaign: name,
        campaign_version: stored.version,
    });
    Ok(with_note(answer, note))
}

#[derive(Debug, Deserialize)]
struct RunsQuery {
    campaign: Option<String>,
    limit: Option<usize>,
}

async fn list_runs(
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

fn parse_version(text: &str) -> Result<u32, ApiError> {
    text.parse().map_err(|_| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("{text:?} is not a version number"),
        )
    })
}

/// A handler's answer with what its audit record should add.
fn with_note(answer: impl IntoResponse, note: String) -> Response {
    let mut response = answer.into_response();
    response
        .extensions_mut()
        .insert(crate::access::AuditNote(note));
    response
}

fn parse_run_id(id: &str) -> Result<Uuid, ApiError> {
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

async fn show_run(
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
struct ReasonBody {
    reason: Option<String>,
}

fn reason_of(body: &str, default: &str) -> Result<String, ApiError> {
    if body.trim().is_empty() {
        return Ok(default.to_string());
    }
    let parsed: ReasonBody = serde_json::from_str(body).map_err(|error| {
        ApiError::new(StatusCode::BAD_REQUEST, format!("request body: {error}"))
    })?;
    Ok(parsed.reason.unwrap_or_else(|| default.to_string()))
}

async fn steer_run(
    State(current): State<CurrentScheduler>,
    Path((id, action)): Path<(String, String)>,
    body: String,
) -> ApiResult<serde_json::Value> {
    let scheduler = scheduler(&current)?;
    let run_id = parse_run_id(&id)?;
    let changed = match action.as_str() {
        "pause" => {
            scheduler
                .pause(run_id, &reason_of(&body, "paused by an operator")?)
                .await?
        }
        "resume" => {
            scheduler
                .resume(run_id, &reason_of(&body, "resumed by an operator")?)
                .await?
        }
        "cancel" => {
            scheduler
                .cancel(run_id, &reason_of(&body, "cancelled by an operator")?)
                .await?
        }
        other => {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                format!("unknown action {other:?}; use pause, resume or cancel"),
            ));
        }
    };
    let progress = scheduler.progress(run_id).await?;
    Ok(Json(
        json!({ "changed": changed, "state": progress.state, "reason": progress.reason }),
    ))
}

#[derive(Debug, Deserialize)]
struct KillQuery {
    campaign: Option<String>,
    /// Also cancel the commands in flight (engage only).
    #[serde(default)]
    cancel_in_flight: bool,
}

fn kill_scope(query: &KillQuery) -> KillScope {
    match &query.campaign {
        Some(campaign) => KillScope::Campaign(campaign.clone()),
        None => KillScope::Global,
    }
}

async fn kill_state(
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

async fn engage_kill(
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

async fn release_kill(
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

async fn events(
    State(current): State<CurrentScheduler>,
    body: String,
) -> ApiResult<serde_json::Value> {
    let scheduler = scheduler(&current)?;
    let events = crate::triggers::parse_events(&body)
        .map_err(|error| ApiError::new(StatusCode::BAD_REQUEST, error))?;
    let mut started = Vec::new();
    for event in &events {
        started.extend(scheduler.handle_event(event).await?);
    }
    Ok(Json(json!({ "started": started })))
}

async fn alerts(
    State(current): State<CurrentScheduler>,
    body: String,
) -> ApiResult<serde_json::Value> {
    let scheduler = scheduler(&current)?;
    let payload = crate::triggers::parse_alerts(&body)
        .map_err(|error| ApiError::new(StatusCode::BAD_REQUEST, error))?;
    let actions = scheduler.handle_alerts(&payload).await?;
    Ok(Json(json!({ "actions": actions })))
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

async fn audit_query(
    State(current): State<CurrentScheduler>,
    Query(query): Query<AuditQuery>,
) -> ApiResult<Vec<AuditRecord>> {
    let scheduler = scheduler(&current)?;
    Ok(Json(scheduler.audit()?.query(&query).await?))
}

/// A stored token as listed: never the token, only the start of its hash.
#[derive(Debug, Serialize, Deserialize)]
pub struct ListedToken {
    pub name: String,
    pub role: Role,
    pub sha256_prefix: String,
    pub created_ms: u64,
    pub expires_ms: Option<u64>,
    pub created_by: String,
}

impl From<TokenRecord> for ListedToken {
    fn from(record: TokenRecord) -> Self {
        Self {
            name: record.name,
            role: record.role,
            sha256_prefix: record.sha256.chars().take(8).collect(),
            created_ms: record.created_ms,
            expires_ms: record.expires_ms,
            created_by: record.created_by,
        }
    }
}

async fn list_tokens(State(current): State<CurrentScheduler>) -> ApiResult<Vec<ListedToken>> {
    let scheduler = scheduler(&current)?;
    let tokens = scheduler.stored_tokens().await?;
    Ok(Json(tokens.into_iter().map(ListedToken::from).collect()))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateToken {
    name: String,
    role: String,
    /// `90d`, `12h`, …; none for a token that does not expire.
    expires_in: Option<String>,
}

async fn create_token(
    State(current): State<CurrentScheduler>,
    Extension(principal): Extension<Principal>,
    body: String,
) -> ApiResult<serde_json::Value> {
    let scheduler = scheduler(&current)?;
    let request: CreateToken = serde_json::from_str(&body).map_err(|error| {
        ApiError::new(StatusCode::BAD_REQUEST, format!("request body: {error}"))
    })?;
    let role: Role = request.role.parse().map_err(|error: String| {
        ApiError::new(StatusCode::BAD_REQUEST, format!("role: {error}"))
    })?;
    let expires_ms = request
        .expires_in
        .as_deref()
        .map(|text| {
            humantime::parse_duration(text)
                .map(|duration| crate::now_ms().saturating_add(duration.as_millis() as u64))
                .map_err(|error| {
                    ApiError::new(
                        StatusCode::BAD_REQUEST,
                        format!("expires_in: {error}; use e.g. 90d or 12h"),
                    )
                })
        })
        .transpose()?;
    let (token, record) = scheduler
        .create_token(&request.name, role, expires_ms, &principal)
        .await?;
    Ok(Json(json!({
        "token": token,
        "name": record.name,
        "role": record.role,
        "expires_ms": record.expires_ms,
    })))
}

async fn revoke_tokens(
    State(current): State<CurrentScheduler>,
    Path(name): Path<String>,
) -> ApiResult<serde_json::Value> {
    let scheduler = scheduler(&current)?;
    let revoked = scheduler.revoke_tokens(&name).await?;
    if revoked == 0 {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!(
                "no stored token names {name:?} (tokens of the tokens file are revoked in the file)"
            ),
        ));
    }
    Ok(Json(json!({ "revoked": revoked })))
}

//! `/events`, `/alerts`, `/audit`, `/tokens` and `/calendar`.

use std::collections::BTreeMap;

use axum::Extension;
use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::ApiResult;
use crate::error::ApiError;
use crate::state::{CurrentScheduler, connected};
use scheduler::audit::{AuditQuery, AuditRecord};
use scheduler::auth::{Principal, Role, TokenRecord};

pub(super) async fn events(
    State(current): State<CurrentScheduler>,
    body: String,
) -> ApiResult<serde_json::Value> {
    let scheduler = connected(&current)?;
    let events = scheduler::triggers::parse_events(&body)
        .map_err(|error| ApiError::new(StatusCode::BAD_REQUEST, error))?;
    let started = scheduler.handle_events(&events).await?;
    Ok(Json(json!({ "started": started })))
}

pub(super) async fn alerts(
    State(current): State<CurrentScheduler>,
    body: String,
) -> ApiResult<serde_json::Value> {
    let scheduler = connected(&current)?;
    let payload = scheduler::triggers::parse_alerts(&body)
        .map_err(|error| ApiError::new(StatusCode::BAD_REQUEST, error))?;
    let actions = scheduler.handle_alerts(&payload).await?;
    Ok(Json(json!({ "actions": actions })))
}

pub(super) async fn audit_query(
    State(current): State<CurrentScheduler>,
    Query(query): Query<AuditQuery>,
) -> ApiResult<Vec<AuditRecord>> {
    let scheduler = connected(&current)?;
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

pub(super) async fn list_tokens(
    State(current): State<CurrentScheduler>,
) -> ApiResult<Vec<ListedToken>> {
    let scheduler = connected(&current)?;
    let tokens = scheduler.stored_tokens().await?;
    Ok(Json(tokens.into_iter().map(ListedToken::from).collect()))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct CreateToken {
    name: String,
    role: String,
    /// `90d`, `12h`, …; none for a token that does not expire.
    expires_in: Option<String>,
}

pub(super) async fn create_token(
    State(current): State<CurrentScheduler>,
    Extension(principal): Extension<Principal>,
    body: String,
) -> Result<axum::response::Response, ApiError> {
    let scheduler = connected(&current)?;
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
    // The trail names whom the token is for and what it may do.
    let note = format!(
        "token for {} (role {}) made by {}",
        record.name,
        record.role.as_str(),
        principal.name
    );
    let answer = Json(json!({
        "token": token,
        "name": record.name,
        "role": record.role,
        "expires_ms": record.expires_ms,
    }));
    Ok(super::with_note(answer, note))
}

pub(super) async fn revoke_tokens(
    State(current): State<CurrentScheduler>,
    Path(name): Path<String>,
) -> ApiResult<serde_json::Value> {
    let scheduler = connected(&current)?;
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

#[derive(Debug, Deserialize)]
pub(super) struct CalendarQuery {
    campaign: Option<String>,
}

/// The calendar's freezes and its state now (for one campaign, or every one).
pub(super) async fn calendar(
    State(current): State<CurrentScheduler>,
    Query(query): Query<CalendarQuery>,
) -> ApiResult<serde_json::Value> {
    let scheduler = connected(&current)?;
    let state = scheduler.calendar_state(query.campaign.as_deref()).await?;
    let freezes = scheduler.freezes().await?;
    Ok(Json(json!({ "state": state, "freezes": freezes })))
}

pub(super) async fn add_freeze(
    State(current): State<CurrentScheduler>,
    Extension(principal): Extension<Principal>,
    body: String,
) -> Result<axum::response::Response, ApiError> {
    let scheduler = connected(&current)?;
    let request: scheduler::calendar::NewFreeze = serde_json::from_str(&body).map_err(|error| {
        ApiError::new(StatusCode::BAD_REQUEST, format!("request body: {error}"))
    })?;
    let freeze = scheduler.add_freeze(&request, &principal.name).await?;
    let note = format!(
        "{} from {} to {}{}",
        freeze.id,
        request.from,
        request.to,
        freeze
            .campaign
            .as_deref()
            .map(|campaign| format!(" for {campaign}"))
            .unwrap_or_default()
    );
    Ok(super::with_note(Json(freeze), note))
}

pub(super) async fn remove_freeze(
    State(current): State<CurrentScheduler>,
    Path(id): Path<String>,
) -> ApiResult<serde_json::Value> {
    let scheduler = connected(&current)?;
    if !scheduler.remove_freeze(&id).await? {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no freeze {id:?} in the calendar"),
        ));
    }
    Ok(Json(json!({ "removed": id })))
}

/// The fleet's compliance across runs (`?format=csv` for the instances that
/// need attention as CSV).
pub(super) async fn compliance(
    State(current): State<CurrentScheduler>,
    Query(query): Query<BTreeMap<String, String>>,
) -> Result<axum::response::Response, ApiError> {
    use axum::response::IntoResponse as _;
    let scheduler = connected(&current)?;
    let filter = crate::parse::compliance_filter(&query)?;
    let view = scheduler.fleet_compliance(&filter).await?;
    match query.get("format").map(String::as_str) {
        None | Some("json") => Ok(Json(view).into_response()),
        Some("csv") => Ok((
            [(axum::http::header::CONTENT_TYPE, "text/csv")],
            scheduler::compliance::attention_csv(&view),
        )
            .into_response()),
        Some(other) => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("format: json or csv, got {other:?}"),
        )),
    }
}

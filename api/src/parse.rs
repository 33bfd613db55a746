//! Reading what a request names — a run id, a version number, compliance
//! filters — each with an error that names the field and what is allowed.
//! Shared by the JSON API and the console.

use std::collections::BTreeMap;

use axum::http::StatusCode;
use uuid::Uuid;

use crate::error::ApiError;

pub fn parse_run_id(id: &str) -> Result<Uuid, ApiError> {
    id.parse().map_err(|_| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("{id:?} is not a run id (a UUID)"),
        )
    })
}

pub fn parse_version(text: &str) -> Result<u32, ApiError> {
    text.parse().map_err(|_| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("{text:?} is not a version number"),
        )
    })
}

/// The compliance view's filters from a query (`account`, `region`,
/// `severity`, `stale_days`, `limit`), each checked; the console reads its
/// forms with it too.
pub fn compliance_filter(
    query: &BTreeMap<String, String>,
) -> Result<scheduler::compliance::ComplianceQuery, ApiError> {
    let number = |name: &str| -> Result<Option<u64>, ApiError> {
        query
            .get(name)
            .map(|text| {
                text.parse().map_err(|_| {
                    ApiError::new(
                        StatusCode::BAD_REQUEST,
                        format!("{name}: must be a whole number, got {text:?}"),
                    )
                })
            })
            .transpose()
    };
    if let Some(severity) = query.get("severity")
        && !["critical", "security", "other", "compliant"].contains(&severity.as_str())
    {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("severity: one of critical, security, other, compliant, got {severity:?}"),
        ));
    }
    Ok(scheduler::compliance::ComplianceQuery {
        account: query.get("account").cloned(),
        region: query.get("region").cloned(),
        severity: query.get("severity").cloned(),
        stale_days: number("stale_days")?,
        limit: number("limit")?.map(|limit| usize::try_from(limit).unwrap_or(usize::MAX)),
    })
}

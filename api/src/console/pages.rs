//! The console's pages: each reads what it shows from the engine and
//! renders it with [`super::view`].

use std::collections::BTreeMap;

use axum::Extension;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use maud::Markup;

use super::{ATTENTION_SHOWN, CSV_ROWS, RUNS_PER_PAGE, error_page, html, view};
use crate::error::ApiError;
use crate::parse::parse_run_id;
use crate::state::{ApiState, connected};
use scheduler::Scheduler;
use scheduler::auth::{Permission, Principal};
use scheduler::sessions::Session;

use crate::now_ms;

/// A whole page: the frame (who, the CSRF token, the kill switch) around
/// `content`.
pub(super) async fn whole_page(
    current: &Scheduler,
    principal: &Principal,
    session: &Session,
    title: &str,
    content: Markup,
) -> Result<Response, Response> {
    let kill = frame_parts(current).await?;
    let frame = frame(principal, session, kill.as_deref());
    Ok(html(StatusCode::OK, view::page(&frame, title, content)))
}

/// The global kill switch's reason, when engaged.
pub(super) async fn frame_parts(current: &Scheduler) -> Result<Option<String>, ApiError> {
    use store::Store as _;
    Ok(current.store().kill_reason("").await?)
}

pub(super) fn frame<'a>(
    principal: &'a Principal,
    session: &'a Session,
    kill: Option<&'a str>,
) -> view::Frame<'a> {
    view::Frame {
        principal,
        csrf: &session.csrf,
        kill,
    }
}

#[derive(serde::Deserialize, Default)]
pub(super) struct PageQuery {
    page: Option<usize>,
    fragment: Option<u8>,
    location: Option<String>,
}

pub(super) async fn runs_page(
    State(state): State<ApiState>,
    Extension(principal): Extension<Principal>,
    Extension(session): Extension<Session>,
    Query(query): Query<PageQuery>,
) -> Result<Response, Response> {
    let current = connected(&state.current)?;
    let page = query.page.unwrap_or(1).clamp(1, 100_000);
    let (ids, total) = current
        .ledger()
        .run_ids_page((page - 1) * RUNS_PER_PAGE, RUNS_PER_PAGE)
        .await
        .map_err(ApiError::from)?;
    let mut runs = Vec::with_capacity(ids.len());
    for run_id in ids {
        runs.push(
            current
                .progress_listed(run_id)
                .await
                .map_err(ApiError::from)?,
        );
    }
    let table = view::runs_table(&runs, now_ms());
    if query.fragment.is_some() {
        return Ok(html(StatusCode::OK, table));
    }
    let pages = usize::try_from(total)
        .unwrap_or(usize::MAX)
        .div_ceil(RUNS_PER_PAGE);
    whole_page(
        &current,
        &principal,
        &session,
        "Runs",
        view::runs_page(table, page, pages, total),
    )
    .await
}

/// The run page's live part, rendered.
pub(super) async fn run_live(
    current: &Scheduler,
    frame: &view::Frame<'_>,
    run_id: uuid::Uuid,
    location: Option<&str>,
) -> Result<(scheduler::RunProgress, Markup), ApiError> {
    let progress = current.progress(run_id).await?;
    let locations = current.ledger().location_statuses(run_id).await?;
    let holds = current.holds(run_id, &progress).await;
    let steps = step_names(current, run_id).await;
    let live = maud::html! {
        (view::run_actions(frame, &progress))
        (view::run_live(&progress, &steps, &holds, &locations, location, now_ms()))
    };
    Ok((progress, live))
}

/// The run's step names, in order; none when its plan cannot be read (the
/// steps are then shown by number).
async fn step_names(current: &Scheduler, run_id: uuid::Uuid) -> Vec<String> {
    match current.plan(run_id).await {
        Ok(plan) => plan
            .campaign
            .steps
            .iter()
            .map(|step| step.name.clone())
            .collect(),
        Err(_) => Vec::new(),
    }
}

/// The instances of a run's location (`account/region`) as its results
/// say, failures first, at most [`view::LOCATION_INSTANCES`], and its own
/// top failures; or why they cannot be read.
async fn location_instances(
    current: &Scheduler,
    run_id: uuid::Uuid,
    selected: &str,
) -> Result<view::LocationInstances, String> {
    let plan = current
        .plan(run_id)
        .await
        .map_err(|error| error.to_string())?;
    let Some((account_id, region)) = selected.split_once('/') else {
        return Err(format!("{selected:?} is not account/region"));
    };
    let location = protocol::job::Location {
        account_id: account_id.to_string(),
        region: region.to_string(),
    };
    let store = current
        .results_store(&plan.campaign.output)
        .map_err(|error| error.to_string())?;
    let mut records = store
        .read_location(run_id, &location)
        .await
        .map_err(|error| format!("the results cannot be read: {error}"))?;
    let total = records.len();
    let mut failures: Vec<((u16, String, String), u64)> =
        scheduler::failures::failed_groups(&records)
            .into_iter()
            .collect();
    failures.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    failures.truncate(10);
    records.sort_by(|a, b| {
        (a.status == "Success", a.step_index, &a.instance_id).cmp(&(
            b.status == "Success",
            b.step_index,
            &b.instance_id,
        ))
    });
    records.truncate(view::LOCATION_INSTANCES);
    Ok(view::LocationInstances {
        total,
        records,
        failures,
    })
}

pub(super) async fn run_page(
    State(state): State<ApiState>,
    Extension(principal): Extension<Principal>,
    Extension(session): Extension<Session>,
    Path(id): Path<String>,
    Query(query): Query<PageQuery>,
) -> Result<Response, Response> {
    let current = connected(&state.current)?;
    let run_id = parse_run_id(&id)?;
    let location = query
        .location
        .as_deref()
        .filter(|location| location.len() <= 128);
    let kill = frame_parts(&current).await?;
    let frame = frame(&principal, &session, kill.as_deref());
    let (progress, live) = run_live(&current, &frame, run_id, location).await?;
    if query.fragment.is_some() {
        return Ok(html(StatusCode::OK, live));
    }
    let mut live_url = format!("/ui/runs/{run_id}?fragment=1");
    if let Some(location) = location
        && let Ok(query) = serde_urlencoded::to_string([("location", location)])
    {
        live_url.push('&');
        live_url.push_str(&query);
    }
    // A location's instances are read once per page view, not on every
    // refresh of the live part: a large location's results are many files.
    let instances = match location {
        Some(selected) => Some(view::location_instances(
            &location_instances(&current, run_id, selected).await,
            &step_names(&current, run_id).await,
            frame.may(Permission::SteerRun),
        )),
        None => None,
    };
    let content = view::run_page(&progress, live, &live_url, instances);
    Ok(html(
        StatusCode::OK,
        view::page(&frame, &format!("Run of {}", progress.campaign), content),
    ))
}

/// A campaign's row: its schedule's next three fire times, its triggers.
pub(super) fn campaign_row(campaign: &protocol::Campaign, version: u32) -> view::CampaignRow {
    let schedule = campaign.spec.schedule.as_ref();
    let next_fires = schedule
        .and_then(|schedule| {
            protocol::schedule::Schedule::parse(&schedule.expression, schedule.timezone.as_deref())
                .ok()
        })
        .map(|parsed| {
            parsed
                .next_fire_times(protocol::clock::now_utc(), 3)
                .iter()
                .map(|at| at.format("%Y-%m-%d %H:%M").to_string())
                .collect()
        })
        .unwrap_or_default();
    view::CampaignRow {
        name: campaign.name.clone(),
        version,
        description: campaign.description.clone(),
        schedule: schedule.map(|schedule| schedule.expression.clone()),
        next_fires,
        triggers: campaign
            .spec
            .triggers
            .iter()
            .map(|trigger| {
                serde_json::to_value(trigger.event)
                    .ok()
                    .and_then(|value| value.as_str().map(String::from))
                    .unwrap_or_default()
            })
            .collect(),
    }
}

pub(super) async fn campaigns_page(
    State(state): State<ApiState>,
    Extension(principal): Extension<Principal>,
    Extension(session): Extension<Session>,
) -> Result<Response, Response> {
    let current = connected(&state.current)?;
    let mut rows = Vec::new();
    for name in current.campaign_names().await.map_err(ApiError::from)? {
        if let Some((campaign, stored)) = current
            .stored_campaign(&name)
            .await
            .map_err(ApiError::from)?
        {
            rows.push(campaign_row(&campaign, stored.version));
        }
    }
    whole_page(
        &current,
        &principal,
        &session,
        "Campaigns",
        view::campaigns_page(&rows),
    )
    .await
}

#[derive(serde::Deserialize, Default)]
pub(super) struct VersionQuery {
    version: Option<String>,
    against: Option<String>,
}

pub(super) fn version_in(text: Option<&str>, latest: u32) -> Result<Option<u32>, ApiError> {
    match text.map(str::trim).filter(|text| !text.is_empty()) {
        None => Ok(None),
        Some(text) => match text.parse::<u32>() {
            Ok(version) if (1..=latest).contains(&version) => Ok(Some(version)),
            _ => Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                format!("version: a number from 1 to {latest}, got {text:?}"),
            )),
        },
    }
}

pub(super) async fn campaign_page(
    State(state): State<ApiState>,
    Extension(principal): Extension<Principal>,
    Extension(session): Extension<Session>,
    Path(name): Path<String>,
    Query(query): Query<VersionQuery>,
) -> Result<Response, Response> {
    let current = connected(&state.current)?;
    let Some((campaign, stored)) = current
        .stored_campaign(&name)
        .await
        .map_err(ApiError::from)?
    else {
        return Err(error_page(
            StatusCode::NOT_FOUND,
            &format!("no campaign {name:?}"),
        ));
    };
    let row = campaign_row(&campaign, stored.version);
    let shown = version_in(query.version.as_deref(), stored.version)?.unwrap_or(stored.version);
    let against = version_in(query.against.as_deref(), stored.version)?;
    let yaml_of = |spec: &protocol::spec::CampaignSpec| {
        serde_norway::to_string(spec).map_err(|error| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("campaign {name} as YAML: {error}"),
            )
        })
    };
    let Some((spec, approval)) = current
        .campaign_version(&name, shown)
        .await
        .map_err(ApiError::from)?
    else {
        return Err(error_page(
            StatusCode::NOT_FOUND,
            &format!("campaign {name:?} has no version {shown}"),
        ));
    };
    let yaml = yaml_of(&spec)?;
    let diff = match against {
        Some(against) => {
            let old = match current
                .campaign_version(&name, against)
                .await
                .map_err(ApiError::from)?
            {
                Some((old, _)) => yaml_of(&old)?,
                None => String::new(),
            };
            Some((against, line_diff(&old, &yaml)))
        }
        None => None,
    };
    let mut runs = Vec::new();
    for run_id in current
        .ledger()
        .campaign_run_ids(&name, 10)
        .await
        .map_err(ApiError::from)?
    {
        runs.push(
            current
                .progress_listed(run_id)
                .await
                .map_err(ApiError::from)?,
        );
    }
    let detail = view::CampaignDetail {
        row: &row,
        shown,
        yaml,
        author: approval.author,
        approver: approval.approver,
        diff,
        runs,
        now_ms: now_ms(),
        start_csrf: principal
            .role
            .allows(Permission::StartRun)
            .then_some(session.csrf.as_str()),
    };
    whole_page(
        &current,
        &principal,
        &session,
        &format!("Campaign {name}"),
        view::campaign_page(&detail),
    )
    .await
}

/// A line diff: (`+`, `-` or ` `, line).
pub(super) fn line_diff(old: &str, new: &str) -> Vec<(char, String)> {
    similar::TextDiff::from_lines(old, new)
        .iter_all_changes()
        .map(|change| {
            let sign = match change.tag() {
                similar::ChangeTag::Delete => '-',
                similar::ChangeTag::Insert => '+',
                similar::ChangeTag::Equal => ' ',
            };
            (sign, change.value().trim_end_matches('\n').to_string())
        })
        .collect()
}

/// The compliance filters of a console form: empty fields are no filter,
/// values trimmed, the rest checked as the API checks them; at most `limit`
/// instances listed.
pub(super) fn compliance_filter(
    query: &BTreeMap<String, String>,
    limit: usize,
) -> Result<scheduler::compliance::ComplianceQuery, ApiError> {
    let filled: BTreeMap<String, String> = query
        .iter()
        .filter(|(name, _)| name.as_str() != "limit")
        .map(|(name, value)| (name.clone(), value.trim().to_string()))
        .filter(|(_, value)| !value.is_empty())
        .collect();
    let mut filter = crate::parse::compliance_filter(&filled)?;
    filter.limit = Some(limit);
    Ok(filter)
}

pub(super) async fn compliance_page(
    State(state): State<ApiState>,
    Extension(principal): Extension<Principal>,
    Extension(session): Extension<Session>,
    uri: Uri,
    Query(query): Query<BTreeMap<String, String>>,
) -> Result<Response, Response> {
    let current = connected(&state.current)?;
    let filter = compliance_filter(&query, ATTENTION_SHOWN)?;
    let view = current
        .fleet_compliance(&filter)
        .await
        .map_err(ApiError::from)?;
    let query_text = uri
        .query()
        .map(|query| format!("?{query}"))
        .unwrap_or_default();
    whole_page(
        &current,
        &principal,
        &session,
        "Fleet compliance",
        view::compliance_page(&view, &query_text),
    )
    .await
}

pub(super) async fn compliance_csv(
    State(state): State<ApiState>,
    Query(query): Query<BTreeMap<String, String>>,
) -> Result<Response, Response> {
    let current = connected(&state.current)?;
    let filter = compliance_filter(&query, CSV_ROWS)?;
    let view = current
        .fleet_compliance(&filter)
        .await
        .map_err(ApiError::from)?;
    Ok((
        [
            (header::CONTENT_TYPE, "text/csv; charset=utf-8"),
            (
                header::CONTENT_DISPOSITION,
                "attachment; filename=\"flotilla-compliance.csv\"",
            ),
        ],
        scheduler::compliance::attention_csv(&view),
    )
        .into_response())
}

//! The web console at `/ui`: server-rendered HTML (maud), one small script
//! of our own for live parts (`assets/console.js`: it re-fetches the regions
//! marked `data-live` every 2 s), no build step and nothing fetched from
//! anywhere but the scheduler.
//!
//! Trust: a browser signs in with a token once and holds a session cookie
//! ([`session`]); the API's door ([`crate::access::guard`]) authenticates
//! `/ui` by that cookie only, checks the role's permission as for the API,
//! checks every form's CSRF token, and writes the same audit records (the
//! buttons *are* the API's actions: a pause from the console is a
//! `runs:pause` with its reason). Responses carry a strict CSP (scripts and
//! styles from `/ui/static` only), `frame-ancestors 'none'` and `no-store`.
//!
//! | page | shows |
//! |---|---|
//! | `/ui/runs` | runs, newest first, 25 a page, live |
//! | `/ui/runs/{id}` | bars per step, error budget, waves and gates, the location grid, top failures; pause/resume/cancel/approve |
//! | `/ui/campaigns`, `/ui/campaigns/{name}` | versions as YAML with a diff, next fire times, triggers, last runs |
//! | `/ui/compliance` | the fleet view, trend, stale instances; `/ui/compliance.csv` |

pub mod session;
pub mod view;

use std::collections::BTreeMap;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Extension, Router};
use maud::Markup;
use serde_json::json;

use self::session::Session;
use crate::api::runs::{KillQuery, parse_run_id};
use crate::api::{ApiError, ApiState, scheduler};
use crate::audit::AuditRecord;
use crate::auth::Principal;
use crate::tls::ClientCertificate;
use crate::{Scheduler, now_ms};

/// Runs on one page of the runs list.
pub const RUNS_PER_PAGE: usize = 25;
/// Instances listed on the compliance page (the CSV has them all).
const ATTENTION_SHOWN: usize = 200;
/// Rows in the CSV export at most.
const CSV_ROWS: usize = 1_000_000;

/// Is this route one of the console's?
pub fn is_console(route: &str) -> bool {
    route == "/ui" || route.starts_with("/ui/")
}

pub fn routes() -> Router<ApiState> {
    Router::new()
        .route("/ui", get(|| async { Redirect::to("/ui/runs") }))
        .route("/ui/static/{file}", get(asset))
        .route("/ui/login", get(login_page).post(login))
        .route("/ui/logout", post(logout))
        .route("/ui/runs", get(runs_page))
        .route("/ui/runs/{id}", get(run_page))
        .route("/ui/runs/{id}/approve", post(approve))
        .route("/ui/runs/{id}/{action}", post(steer))
        .route("/ui/kill", post(engage_kill))
        .route("/ui/kill/release", post(release_kill))
        .route("/ui/campaigns", get(campaigns_page))
        .route("/ui/campaigns/{name}", get(campaign_page))
        .route("/ui/compliance", get(compliance_page))
        .route("/ui/compliance.csv", get(compliance_csv))
        .layer(axum::middleware::map_response(security_headers))
}

async fn security_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    for (name, value) in [
        (
            "content-security-policy",
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
             connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
        ("x-frame-options", "DENY"),
        ("x-content-type-options", "nosniff"),
        ("referrer-policy", "no-referrer"),
        ("cache-control", "no-store"),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    response
}

/// A form body (`application/x-www-form-urlencoded`), field by name.
pub struct Form(BTreeMap<String, String>);

impl Form {
    pub fn parse(body: &[u8]) -> Self {
        Self(serde_urlencoded::from_bytes(body).unwrap_or_default())
    }

    /// A field's value; empty when absent.
    pub fn get(&self, name: &str) -> &str {
        self.0.get(name).map_or("", String::as_str)
    }
}

fn html(status: StatusCode, markup: Markup) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        markup.into_string(),
    )
        .into_response()
}

/// An error as a page, the message escaped.
pub fn error_page(status: StatusCode, message: &str) -> Response {
    security_headers_now(html(status, view::error(status.as_u16(), message)))
}

/// The guard answers before the console's layer runs: the same headers.
fn security_headers_now(response: Response) -> Response {
    futures_util::FutureExt::now_or_never(security_headers(response))
        .unwrap_or_else(|| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

impl From<ApiError> for Response {
    fn from(error: ApiError) -> Self {
        error_page(error.status(), &error.message())
    }
}

/// No session: to the sign-in page, coming back here after.
pub fn to_login(uri: &Uri) -> Response {
    let next = uri
        .path_and_query()
        .map_or("/ui/runs", |path| path.as_str());
    let target = format!(
        "/ui/login?{}",
        serde_urlencoded::to_string([("next", next)]).unwrap_or_default()
    );
    security_headers_now(Redirect::to(&target).into_response())
}

/// Where to go after signing in: a console page, never another site.
fn safe_next(next: &str) -> &str {
    let console = next.starts_with("/ui/") && !next.starts_with("//") && !next.contains('\\');
    if console && next.len() <= 2048 {
        next
    } else {
        "/ui/runs"
    }
}

async fn asset(Path(file): Path<String>) -> Response {
    let (body, kind) = match file.as_str() {
        "console.css" => (include_str!("assets/console.css"), "text/css"),
        "console.js" => (include_str!("assets/console.js"), "text/javascript"),
        _ => return error_page(StatusCode::NOT_FOUND, "no such file"),
    };
    ([(header::CONTENT_TYPE, kind)], body).into_response()
}

#[derive(serde::Deserialize, Default)]
struct LoginQuery {
    next: Option<String>,
}

/// Who signs in without a token: `anonymous` where no authentication is
/// configured, or the principal of a verified client certificate.
fn tokenless(state: &ApiState, certificate: Option<&ClientCertificate>) -> Option<Principal> {
    match certificate {
        Some(ClientCertificate(principal)) => Some(principal.clone()),
        None if state.auth.is_open() => Some(Principal::anonymous()),
        None => None,
    }
}

type Certificate = Option<Extension<ClientCertificate>>;

async fn login_page(
    State(state): State<ApiState>,
    certificate: Certificate,
    Query(query): Query<LoginQuery>,
) -> Response {
    let next = safe_next(query.next.as_deref().unwrap_or_default());
    let preset = tokenless(&state, certificate.as_deref());
    html(
        StatusCode::OK,
        view::login(None, next, preset.as_ref().map(|p| p.name.as_str())),
    )
}

/// Signs in: the token is checked as the API checks it, a session is made,
/// the cookie set; both outcomes are audited (`console:login`,
/// `auth:refused`).
async fn login(
    State(state): State<ApiState>,
    axum::extract::ConnectInfo(peer): axum::extract::ConnectInfo<std::net::SocketAddr>,
    certificate: Certificate,
    body: axum::body::Bytes,
) -> Response {
    let form = Form::parse(&body);
    let next = safe_next(form.get("next")).to_string();
    let preset = tokenless(&state, certificate.as_deref());
    let current = match scheduler(&state.current) {
        Ok(current) => current,
        Err(error) => return error.into(),
    };
    let record =
        |principal: &str, role: &str, action: &str, reason: &str, outcome: &str| AuditRecord {
            time_ms: now_ms(),
            principal: principal.into(),
            role: role.into(),
            source: peer.ip().to_string(),
            action: action.into(),
            object: "/ui/login".into(),
            reason: reason.into(),
            request_id: uuid::Uuid::new_v4().to_string(),
            outcome: outcome.into(),
        };
    let signed_in = match &preset {
        Some(principal) => Ok((principal.clone(), None, now_ms() + session::MAX_SESSION_MS)),
        None => sign_in(&state, form.get("token")).await,
    };
    let (principal, token_sha256, expires_ms) = match signed_in {
        Ok(found) => found,
        Err(refusal) => {
            if refusal.status == StatusCode::UNAUTHORIZED {
                state.metrics.auth_refused();
                if state.refusals.admit() {
                    let entry = record(
                        "unknown",
                        "none",
                        "auth:refused",
                        &refusal.message,
                        "unauthenticated",
                    );
                    crate::access::audit(&state, entry).await;
                }
            }
            return html(
                refusal.status,
                view::login(Some(&refusal.message), &next, None),
            );
        }
    };
    let created = current
        .create_session(&principal, token_sha256, expires_ms)
        .await;
    let (cookie, _) = match created {
        Ok(created) => created,
        Err(error) => return ApiError::from(error).into(),
    };
    let entry = record(
        &principal.name,
        principal.role.as_str(),
        "console:login",
        "",
        "ok",
    );
    crate::access::audit(&state, entry).await;
    let max_age = expires_ms.saturating_sub(now_ms()) / 1000;
    let secure = if state.tls.is_some() { "; Secure" } else { "" };
    let cookie = format!(
        "{}={cookie}; Path=/ui; HttpOnly; SameSite=Strict; Max-Age={max_age}{secure}",
        session::COOKIE
    );
    let mut response = Redirect::to(&next).into_response();
    if let Ok(value) = HeaderValue::from_str(&cookie) {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    response
}

/// The principal a sign-in token names (flotilla's or an SSO JWT), the
/// token's hash (re-checked on every request of the session) and when the
/// session ends.
async fn sign_in(
    state: &ApiState,
    token: &str,
) -> Result<(Principal, Option<String>, u64), crate::access::Refusal> {
    use crate::access::Refusal;
    let now = now_ms();
    let token = token.trim();
    if token.is_empty() || token.len() > 4096 {
        return Err(Refusal::unauthenticated("enter a token", false));
    }
    if let Some(oidc) = &state.auth.oidc
        && crate::oidc::OidcVerifier::looks_like_jwt(token)
    {
        let principal = oidc
            .verify(token)
            .map_err(|why| Refusal::unauthenticated(why, true))?;
        return Ok((principal, None, now + session::SSO_SESSION_MS));
    }
    let record = crate::access::token_record(state, token).await?;
    let expires = record
        .expires_ms
        .map_or(now + session::MAX_SESSION_MS, |expires| {
            expires.min(now + session::MAX_SESSION_MS)
        });
    Ok((
        Principal {
            name: record.name,
            role: record.role,
        },
        Some(record.sha256),
        expires,
    ))
}

async fn logout(State(state): State<ApiState>, headers: axum::http::HeaderMap) -> Response {
    if let (Some(cookie), Ok(current)) = (session::cookie_of(&headers), scheduler(&state.current))
        && let Err(error) = current.end_session(&cookie).await
    {
        return ApiError::from(error).into();
    }
    let mut response = Redirect::to("/ui/login").into_response();
    response.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static(
            "flotilla_session=; Path=/ui; HttpOnly; SameSite=Strict; Max-Age=0",
        ),
    );
    response
}

/// A whole page: the frame (who, the CSRF token, the kill switch) around
/// `content`.
async fn whole_page(
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
async fn frame_parts(current: &Scheduler) -> Result<Option<String>, ApiError> {
    use store::Store as _;
    Ok(current.store().kill_reason("").await?)
}

fn frame<'a>(
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
struct PageQuery {
    page: Option<usize>,
    fragment: Option<u8>,
    location: Option<String>,
}

async fn runs_page(
    State(state): State<ApiState>,
    Extension(principal): Extension<Principal>,
    Extension(session): Extension<Session>,
    Query(query): Query<PageQuery>,
) -> Result<Response, Response> {
    let current = scheduler(&state.current)?;
    let page = query.page.unwrap_or(1).clamp(1, 100_000);
    let (ids, total) = current
        .ledger()
        .run_ids_page((page - 1) * RUNS_PER_PAGE, RUNS_PER_PAGE)
        .await
        .map_err(ApiError::from)?;
    let mut runs = Vec::with_capacity(ids.len());
    for run_id in ids {
        runs.push(current.progress(run_id).await.map_err(ApiError::from)?);
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
async fn run_live(
    current: &Scheduler,
    run_id: uuid::Uuid,
    location: Option<&str>,
) -> Result<(crate::progress::RunProgress, Markup), ApiError> {
    let progress = current.progress(run_id).await?;
    let locations = current.ledger().location_statuses(run_id).await?;
    let live = view::run_live(&progress, &locations, location);
    Ok((progress, live))
}

async fn run_page(
    State(state): State<ApiState>,
    Extension(principal): Extension<Principal>,
    Extension(session): Extension<Session>,
    Path(id): Path<String>,
    Query(query): Query<PageQuery>,
) -> Result<Response, Response> {
    let current = scheduler(&state.current)?;
    let run_id = parse_run_id(&id)?;
    let location = query
        .location
        .as_deref()
        .filter(|location| location.len() <= 128);
    let (progress, live) = run_live(&current, run_id, location).await?;
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
    let kill = frame_parts(&current).await?;
    let frame = frame(&principal, &session, kill.as_deref());
    let content = view::run_page(&frame, &progress, live, &live_url);
    Ok(html(
        StatusCode::OK,
        view::page(&frame, &format!("Run of {}", progress.campaign), content),
    ))
}

/// A form's reason as the API's JSON body.
fn reason_json(form: &Form) -> String {
    let reason = form.get("reason").trim();
    if reason.is_empty() {
        String::new()
    } else {
        json!({ "reason": reason }).to_string()
    }
}

/// Back to the page the button was on.
fn back_to_run(run_id: &str) -> Response {
    Redirect::to(&format!("/ui/runs/{run_id}")).into_response()
}

async fn steer(
    State(state): State<ApiState>,
    Path((id, action)): Path<(String, String)>,
    body: axum::body::Bytes,
) -> Result<Response, Response> {
    let run_id = parse_run_id(&id)?;
    let form = Form::parse(&body);
    let answer = crate::api::runs::steer_run(
        State(state.current.clone()),
        Path((id, action)),
        reason_json(&form),
    )
    .await?;
    // Keep the API's note (an alert overridden, say) for the audit record.
    let note = answer
        .extensions()
        .get::<crate::access::AuditNote>()
        .cloned();
    let mut response = back_to_run(&run_id.to_string());
    if let Some(note) = note {
        response.extensions_mut().insert(note);
    }
    Ok(response)
}

async fn approve(
    State(state): State<ApiState>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Result<Response, Response> {
    let run_id = parse_run_id(&id)?;
    let form = Form::parse(&body);
    let _approved = crate::api::runs::approve_run(
        State(state.current.clone()),
        Extension(principal),
        Path(id),
        reason_json(&form),
    )
    .await?;
    Ok(back_to_run(&run_id.to_string()))
}

/// The console asks for a ticked confirmation before the kill switch moves.
fn confirmed(form: &Form) -> Result<(), ApiError> {
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
fn back(headers: &axum::http::HeaderMap) -> Response {
    let target = headers
        .get(header::REFERER)
        .and_then(|value| value.to_str().ok())
        .and_then(|referer| referer.find("/ui/").map(|at| referer[at..].to_string()))
        .unwrap_or_else(|| "/ui/runs".into());
    Redirect::to(safe_next(&target)).into_response()
}

async fn engage_kill(
    State(state): State<ApiState>,
    headers: axum::http::HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, Response> {
    let form = Form::parse(&body);
    confirmed(&form)?;
    let _engaged = crate::api::runs::engage_kill(
        State(state.current.clone()),
        Query(KillQuery::default()),
        reason_json(&form),
    )
    .await?;
    Ok(back(&headers))
}

async fn release_kill(
    State(state): State<ApiState>,
    headers: axum::http::HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, Response> {
    let form = Form::parse(&body);
    confirmed(&form)?;
    let _released =
        crate::api::runs::release_kill(State(state.current.clone()), Query(KillQuery::default()))
            .await?;
    Ok(back(&headers))
}

/// A campaign's row: its schedule's next three fire times, its triggers.
fn campaign_row(campaign: &protocol::Campaign, version: u32) -> view::CampaignRow {
    let schedule = campaign.spec.schedule.as_ref();
    let next_fires = schedule
        .and_then(|schedule| {
            protocol::schedule::Schedule::parse(&schedule.expression, schedule.timezone.as_deref())
                .ok()
        })
        .map(|parsed| {
            parsed
                .next_fire_times(chrono::Utc::now(), 3)
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

async fn campaigns_page(
    State(state): State<ApiState>,
    Extension(principal): Extension<Principal>,
    Extension(session): Extension<Session>,
) -> Result<Response, Response> {
    let current = scheduler(&state.current)?;
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
struct VersionQuery {
    version: Option<String>,
    against: Option<String>,
}

fn version_in(text: Option<&str>, latest: u32) -> Result<Option<u32>, ApiError> {
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

/// How many runs the campaign page looks through for its last runs.
const RUNS_SCANNED_FOR_CAMPAIGN: usize = 200;

async fn campaign_page(
    State(state): State<ApiState>,
    Extension(principal): Extension<Principal>,
    Extension(session): Extension<Session>,
    Path(name): Path<String>,
    Query(query): Query<VersionQuery>,
) -> Result<Response, Response> {
    let current = scheduler(&state.current)?;
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
        .newest_run_ids(RUNS_SCANNED_FOR_CAMPAIGN)
        .await
        .map_err(ApiError::from)?
    {
        let progress = current.progress(run_id).await.map_err(ApiError::from)?;
        if progress.campaign == name {
            runs.push(progress);
            if runs.len() == 10 {
                break;
            }
        }
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
pub fn line_diff(old: &str, new: &str) -> Vec<(char, String)> {
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
fn compliance_filter(
    query: &BTreeMap<String, String>,
    limit: usize,
) -> Result<crate::compliance::ComplianceQuery, ApiError> {
    let filled: BTreeMap<String, String> = query
        .iter()
        .filter(|(name, _)| name.as_str() != "limit")
        .map(|(name, value)| (name.clone(), value.trim().to_string()))
        .filter(|(_, value)| !value.is_empty())
        .collect();
    let mut filter = crate::api::admin::compliance_filter(&filled)?;
    filter.limit = Some(limit);
    Ok(filter)
}

async fn compliance_page(
    State(state): State<ApiState>,
    Extension(principal): Extension<Principal>,
    Extension(session): Extension<Session>,
    uri: Uri,
    Query(query): Query<BTreeMap<String, String>>,
) -> Result<Response, Response> {
    let current = scheduler(&state.current)?;
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

async fn compliance_csv(
    State(state): State<ApiState>,
    Query(query): Query<BTreeMap<String, String>>,
) -> Result<Response, Response> {
    let current = scheduler(&state.current)?;
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
        crate::compliance::attention_csv(&view),
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_in_returns_only_to_console_pages() {
        assert_eq!(safe_next("/ui/runs/abc?x=1"), "/ui/runs/abc?x=1");
        for hostile in [
            "//evil.example/ui/",
            "https://evil.example/ui/runs",
            "/ui\\..\\x",
            "/metrics",
            "",
        ] {
            assert_eq!(safe_next(hostile), "/ui/runs", "{hostile}");
        }
        assert_eq!(safe_next(&format!("/ui/{}", "a".repeat(3000))), "/ui/runs");
    }

    #[test]
    fn a_form_is_read_by_field_and_garbage_is_an_empty_form() {
        let form = Form::parse(b"csrf=abc&reason=bad+patch%21&confirm=yes");
        assert_eq!(form.get("reason"), "bad patch!");
        assert_eq!(form.get("missing"), "");
        assert_eq!(Form::parse(&[0xff, 0xfe, b'=', b'%']).get("csrf"), "");
    }

    #[test]
    fn a_version_diff_marks_removed_and_added_lines() {
        let diff = line_diff("a: 1\nb: 2\n", "a: 1\nb: 3\n");
        assert_eq!(
            diff,
            vec![
                (' ', "a: 1".to_string()),
                ('-', "b: 2".to_string()),
                ('+', "b: 3".to_string()),
            ]
        );
    }

    #[test]
    fn a_version_outside_the_campaigns_is_a_clear_400() {
        assert_eq!(version_in(Some("2"), 3).ok().flatten(), Some(2));
        assert_eq!(version_in(Some(" "), 3).ok().flatten(), None);
        for bad in ["0", "4", "-1", "v2"] {
            let error = version_in(Some(bad), 3).err().map(|error| error.message());
            assert_eq!(
                error.as_deref(),
                Some(format!("version: a number from 1 to 3, got {bad:?}").as_str())
            );
        }
    }
}

//! The web console at `/ui`: server-rendered HTML (maud), one small script
//! of our own for live parts (`assets/console.js`: it re-fetches the regions
//! marked `data-live` every 2 s), no build step and nothing fetched from
//! anywhere but the scheduler.
//!
//! Trust: a browser signs in with a token once and holds a session cookie
//! (`crate::access::session`); the API's door (`crate::access::guard`) authenticates
//! `/ui` by that cookie only, checks the role's permission as for the API,
//! checks every form's CSRF token, and writes the same audit records (the
//! buttons *are* the API's actions: a pause from the console is a
//! `runs:pause` with its reason). Responses carry a strict CSP (scripts and
//! styles from `/ui/static` only), `frame-ancestors 'none'` and `no-store`.
//!
//! | page | shows |
//! |---|---|
//! | `/ui` | a redirect to `/ui/runs` |
//! | `/ui/login`, `/ui/logout` | signing in (a token, or none where authentication is off or a client certificate names the principal) and out |
//! | `/ui/static/{file}` | the stylesheet and the script |
//! | `/ui/runs` | runs, newest first, 25 a page, live |
//! | `/ui/runs/{id}` | bars per step, error budget, waves and gates, the location grid, top failures; pause/resume/cancel/approve |
//! | `/ui/campaigns`, `/ui/campaigns/{name}` | versions as YAML with a diff, next fire times, triggers, last runs; a start form |
//! | `/ui/compliance` | the fleet view, trend, stale instances; `/ui/compliance.csv` |
//!
//! | form (POST) | does, through the engine |
//! |---|---|
//! | `/ui/campaigns/{name}/runs` | starts a run ([`scheduler::Scheduler::start_run_as`]) |
//! | `/ui/runs/{id}/pause`, `/resume`, `/cancel` | steers a run ([`scheduler::Scheduler::steer`]) |
//! | `/ui/runs/{id}/approve` | a rollout's next wave ([`scheduler::Scheduler::approve_wave_by`]) |
//! | `/ui/kill`, `/ui/kill/release` | the global kill switch, with a ticked confirmation |

mod forms;
mod pages;
pub mod view;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Extension, Router};
use maud::Markup;

use scheduler::audit::AuditRecord;
use scheduler::auth::Principal;
use scheduler::sessions::SessionOrigin;

use crate::access::session;
use crate::error::ApiError;
use crate::form::Form;
use crate::now_ms;
use crate::state::{ApiState, connected};
use crate::tls::ClientCertificate;

/// Runs on one page of the runs list.
pub const RUNS_PER_PAGE: usize = 25;
/// Instances listed on the compliance page (the CSV has them all).
const ATTENTION_SHOWN: usize = 200;
/// Rows in the CSV export at most.
const CSV_ROWS: usize = 1_000_000;

pub fn routes() -> Router<ApiState> {
    use self::forms::{approve, engage_kill, release_kill, start_run, steer};
    use self::pages::{
        campaign_page, campaigns_page, compliance_csv, compliance_page, run_page, runs_page,
    };
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
        .route("/ui/campaigns/{name}/runs", post(start_run))
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

/// The sign-in form's own cookie: a random value the form repeats, so only
/// a page this API served (to this browser) can sign it in — a post from
/// another site carries neither (login CSRF).
const LOGIN_COOKIE: &str = "flotilla_login";

/// The sign-in page with a fresh form value and its cookie.
fn login_form(
    state: &ApiState,
    status: StatusCode,
    message: Option<&str>,
    next: &str,
    preset: Option<&Principal>,
) -> Response {
    let Ok(nonce) = scheduler::auth::random_secret("") else {
        return error_page(
            StatusCode::INTERNAL_SERVER_ERROR,
            "no randomness for the sign-in form; see the scheduler's log",
        );
    };
    let mut response = html(
        status,
        view::login(message, next, preset.map(|p| p.name.as_str()), &nonce),
    );
    let secure = if state.tls.is_some() { "; Secure" } else { "" };
    let cookie = format!(
        "{LOGIN_COOKIE}={nonce}; Path=/ui/login; HttpOnly; SameSite=Strict; Max-Age=900{secure}"
    );
    if let Ok(value) = HeaderValue::from_str(&cookie) {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    response
}

/// True when the posted form repeats the value of the sign-in cookie this
/// browser was given (compared by digest), and the browser does not say the
/// post came from another site (`Sec-Fetch-Site`, `Origin`): a cookie
/// planted from a sibling host is not enough.
fn login_form_is_ours(headers: &axum::http::HeaderMap, form: &Form) -> bool {
    use sha2::{Digest, Sha256};
    let header = |name: &str| headers.get(name).and_then(|value| value.to_str().ok());
    if header("sec-fetch-site").is_some_and(|site| site != "same-origin" && site != "none") {
        return false;
    }
    // `null` is what a browser sends under the console's `no-referrer`
    // policy; it says nothing, and `Sec-Fetch-Site` above has spoken.
    if let Some(origin) = header("origin").filter(|origin| *origin != "null") {
        let origin_host = origin.split_once("://").map_or(origin, |(_, host)| host);
        if header("host") != Some(origin_host) {
            return false;
        }
    }
    let posted = form.get("login_csrf");
    session::cookie_named(headers, LOGIN_COOKIE)
        .is_some_and(|cookie| Sha256::digest(cookie) == Sha256::digest(posted))
}

/// The sign-in page; where no authentication is configured (loopback
/// only) there is no one to tell apart, so the console enters at once as
/// `anonymous` instead of asking for a click.
async fn login_page(
    State(state): State<ApiState>,
    axum::extract::ConnectInfo(peer): axum::extract::ConnectInfo<std::net::SocketAddr>,
    certificate: Certificate,
    Query(query): Query<LoginQuery>,
) -> Response {
    let next = safe_next(query.next.as_deref().unwrap_or_default());
    let preset = tokenless(&state, certificate.as_deref());
    if certificate.is_none()
        && state.auth.is_open()
        && let Some(anonymous) = &preset
    {
        let current = match connected(&state.current) {
            Ok(current) => current,
            Err(error) => return error.into(),
        };
        let cookie = match start_session(
            &state,
            &current,
            peer,
            anonymous,
            SessionOrigin::Anonymous,
            now_ms() + session::MAX_SESSION_MS,
        )
        .await
        {
            Ok(cookie) => cookie,
            Err(refused) => return refused,
        };
        // A page that moves on by itself, not a redirect: a browser that
        // came here from another site's link sends no SameSite=Strict
        // cookie on the redirects of that navigation, and would loop; this
        // page's own navigation is same-site.
        let mut response = html(StatusCode::OK, view::entering(next));
        response.headers_mut().insert(header::SET_COOKIE, cookie);
        return response;
    }
    login_form(&state, StatusCode::OK, None, next, preset.as_ref())
}

/// The audit record of a sign-in or a refused one.
fn login_record(
    peer: std::net::SocketAddr,
    principal: &str,
    role: &str,
    action: &str,
    reason: &str,
    outcome: &str,
) -> AuditRecord {
    AuditRecord {
        time_ms: now_ms(),
        principal: principal.into(),
        role: role.into(),
        source: peer.ip().to_string(),
        action: action.into(),
        object: "/ui/login".into(),
        reason: reason.into(),
        request_id: uuid::Uuid::new_v4().to_string(),
        outcome: outcome.into(),
    }
}

/// Makes the session and audits the sign-in (`console:login`); the
/// session's cookie, or the error page.
async fn start_session(
    state: &ApiState,
    current: &scheduler::Scheduler,
    peer: std::net::SocketAddr,
    principal: &Principal,
    origin: SessionOrigin,
    expires_ms: u64,
) -> Result<HeaderValue, Response> {
    let cookie = match current.create_session(principal, origin, expires_ms).await {
        Ok((cookie, _)) => cookie,
        Err(error) => return Err(ApiError::from(error).into()),
    };
    let entry = login_record(
        peer,
        &principal.name,
        principal.role.as_str(),
        "console:login",
        "",
        "ok",
    );
    crate::access::audit(state, entry).await;
    let max_age = expires_ms.saturating_sub(now_ms()) / 1000;
    let secure = if state.tls.is_some() { "; Secure" } else { "" };
    let cookie = format!(
        "{}={cookie}; Path=/ui; HttpOnly; SameSite=Strict; Max-Age={max_age}{secure}",
        session::COOKIE
    );
    HeaderValue::from_str(&cookie).map_err(|_| {
        error_page(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the session cookie could not be written; see the scheduler's log",
        )
    })
}

/// Signs in: the token is checked as the API checks it, a session is made,
/// the cookie set; both outcomes are audited (`console:login`,
/// `auth:refused`).
async fn login(
    State(state): State<ApiState>,
    axum::extract::ConnectInfo(peer): axum::extract::ConnectInfo<std::net::SocketAddr>,
    certificate: Certificate,
    headers: axum::http::HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let form = Form::parse(&body);
    let next = safe_next(form.get("next")).to_string();
    let preset = tokenless(&state, certificate.as_deref());
    if !login_form_is_ours(&headers, &form) {
        return login_form(
            &state,
            StatusCode::FORBIDDEN,
            Some(
                "This sign-in did not come from this console's own page (or the page is older than 15 minutes): sign in here.",
            ),
            &next,
            preset.as_ref(),
        );
    }
    let current = match connected(&state.current) {
        Ok(current) => current,
        Err(error) => return error.into(),
    };
    let signed_in = match (&preset, certificate.as_deref()) {
        (Some(principal), Some(_)) => Ok((
            principal.clone(),
            SessionOrigin::Certificate,
            now_ms() + session::MAX_SESSION_MS,
        )),
        (Some(principal), None) => Ok((
            principal.clone(),
            SessionOrigin::Anonymous,
            now_ms() + session::MAX_SESSION_MS,
        )),
        (None, _) => sign_in(&state, form.get("token")).await,
    };
    let (principal, origin, expires_ms) = match signed_in {
        Ok(found) => found,
        Err(refusal) => {
            if refusal.status == StatusCode::UNAUTHORIZED {
                state.metrics.auth_refused();
                if let Some(unrecorded) = state.refusals.admit() {
                    let entry = login_record(
                        peer,
                        "unknown",
                        "none",
                        "auth:refused",
                        &crate::state::RefusalBudget::reason(&refusal.message, unrecorded),
                        "unauthenticated",
                    );
                    crate::access::audit(&state, entry).await;
                }
            }
            return login_form(&state, refusal.status, Some(&refusal.message), &next, None);
        }
    };
    match start_session(&state, &current, peer, &principal, origin, expires_ms).await {
        Ok(cookie) => {
            let mut response = Redirect::to(&next).into_response();
            response.headers_mut().insert(header::SET_COOKIE, cookie);
            response
        }
        Err(refused) => refused,
    }
}

/// The principal a sign-in token names (flotilla's or an SSO JWT), how the
/// session is made (re-checked on every request of it) and when it ends.
async fn sign_in(
    state: &ApiState,
    token: &str,
) -> Result<(Principal, SessionOrigin, u64), crate::access::credentials::Refusal> {
    use crate::access::credentials::Refusal;
    let now = now_ms();
    let token = token.trim();
    if token.is_empty() || token.len() > crate::access::credentials::MAX_TOKEN_CHARS {
        return Err(Refusal::unauthenticated("enter a token", false));
    }
    if let Some(oidc) = &state.auth.oidc
        && crate::oidc::OidcVerifier::looks_like_jwt(token)
    {
        let signed = oidc
            .verify_signed(token)
            .map_err(|why| Refusal::unauthenticated(why, true))?;
        let origin = SessionOrigin::Sso {
            issuer: oidc.issuer().to_string(),
            key_id: signed.key_id,
        };
        let ends = signed.expires_ms.min(now + session::SSO_SESSION_MS);
        return Ok((signed.principal, origin, ends));
    }
    let record = crate::access::credentials::token_record(state, token).await?;
    let expires = record
        .expires_ms
        .map_or(now + session::MAX_SESSION_MS, |expires| {
            expires.min(now + session::MAX_SESSION_MS)
        });
    let origin = SessionOrigin::Token {
        sha256: record.sha256.clone(),
    };
    Ok((record.principal(), origin, expires))
}

async fn logout(State(state): State<ApiState>, headers: axum::http::HeaderMap) -> Response {
    if let (Some(cookie), Ok(current)) = (session::cookie_of(&headers), connected(&state.current))
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

#[cfg(test)]
mod tests {
    use super::pages::{line_diff, version_in};
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

//! The API's door, one middleware around every route: who is calling
//! (authenticate), may they (authorize), and the record of it (audit).
//!
//! 1. The route's permission ([`crate::auth::route_permission`]); public
//!    routes pass.
//! 2. The bearer token's principal: the tokens file first, then the tokens
//!    made through the API (Redis). Missing, unknown or expired: 401 with
//!    `WWW-Authenticate`. An unreadable tokens file or Redis: 503 (fail
//!    closed). Without authentication configured, everyone is `anonymous`.
//! 3. A principal whose role lacks the permission: 403 naming it.
//! 4. The body is read (bounded) for the audit's `reason`, the handler runs
//!    with the [`Principal`] in its extensions, and every mutating request —
//!    allowed or refused — and every refused credential is one audit record.

//!
//! - [`credentials`]: who a request's credentials name (bearer tokens, the
//!   tokens file, SSO, client certificates).
//! - [`session`]: the console's session cookie.
//!
//! Access control renders nothing: a refused console request carries a
//! [`ConsoleRefusal`] that the console turns into its page.

pub mod credentials;
pub mod session;

use std::net::SocketAddr;

use axum::body::Body;
use axum::extract::{ConnectInfo, MatchedPath, Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use scheduler::audit::{AuditRecord, RefusalBudget};
use scheduler::auth::Permission;
use serde_json::json;

use crate::auth::route_permission;
use crate::now_ms;
use crate::state::ApiState;

/// What a handler adds to its request's audit record (`reason`): the
/// campaign version, author and approver a run was started from, say.
#[derive(Debug, Clone)]
pub struct AuditNote(pub String);

/// A console request refused at the door, for the console to render (as
/// its error page, or a redirect to sign in); its body is empty.
#[derive(Debug, Clone)]
pub struct ConsoleRefusal {
    pub status: StatusCode,
    pub message: String,
    /// No session: the browser is sent to sign in.
    pub sign_in: bool,
}

impl ConsoleRefusal {
    fn page(status: StatusCode, message: String) -> Response {
        let mut response = status.into_response();
        response.extensions_mut().insert(Self {
            status,
            message,
            sign_in: false,
        });
        response
    }

    fn sign_in() -> Response {
        let mut response = StatusCode::UNAUTHORIZED.into_response();
        response.extensions_mut().insert(Self {
            status: StatusCode::UNAUTHORIZED,
            message: String::new(),
            sign_in: true,
        });
        response
    }
}

/// The request's `reason`, when its body is a JSON object with one.
fn reason_in(body: &[u8]) -> String {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|value| {
            value
                .get("reason")
                .and_then(|reason| reason.as_str().map(String::from))
        })
        .map(|reason| reason.chars().take(1024).collect())
        .unwrap_or_default()
}

fn outcome_of(status: StatusCode) -> String {
    // A console form is answered by a redirect to the page it came from.
    if status.is_success() || status.is_redirection() {
        "ok".into()
    } else {
        format!("error: {}", status.as_u16())
    }
}

/// Appends an audit record through the connected scheduler; while it
/// reconnects, the record goes to the log only.
pub async fn audit(state: &ApiState, record: AuditRecord) {
    let connected = state.current.borrow().clone();
    let appended = match connected {
        Some(scheduler) => match scheduler.audit() {
            Ok(log) => log.append(&record).await,
            Err(error) => Err(error),
        },
        None => {
            tracing::warn!(
                principal = record.principal.as_str(),
                action = record.action.as_str(),
                object = record.object.as_str(),
                outcome = record.outcome.as_str(),
                "audit record not stored: the scheduler is reconnecting"
            );
            return;
        }
    };
    if let Err(error) = appended {
        tracing::error!(error = %error, action = record.action.as_str(), "could not write an audit record");
    }
}

/// Records a refused request and answers it.
async fn refuse(
    state: &ApiState,
    entry: AuditRecord,
    status: StatusCode,
    message: String,
    console: bool,
) -> Response {
    audit(state, entry).await;
    if console {
        return ConsoleRefusal::page(status, message);
    }
    (status, axum::Json(json!({ "error": message }))).into_response()
}

/// The request's path as the audit trail records it: query values
/// redacted (`?campaign=…&token=…`), since a query may carry a secret the
/// caller should not have sent there — viewers read the trail.
pub fn redacted_target(uri: &axum::http::Uri) -> String {
    match uri.query() {
        None => uri.path().to_string(),
        Some(query) => {
            let keys: Vec<&str> = query
                .split('&')
                .filter(|pair| !pair.is_empty())
                .map(|pair| pair.split_once('=').map_or(pair, |(key, _)| key))
                .collect();
            let redacted: Vec<String> = keys.iter().map(|key| format!("{key}=…")).collect();
            format!("{}?{}", uri.path(), redacted.join("&"))
        }
    }
}

pub async fn guard(
    State(state): State<ApiState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: Request,
    next: Next,
) -> Response {
    let method = request.method().as_str().to_string();
    let route = request.extensions().get::<MatchedPath>().map_or_else(
        || request.uri().path().to_string(),
        |path| path.as_str().to_string(),
    );
    let Some(permission) = route_permission(&method, &route, state.auth.metrics_open) else {
        return next.run(request).await;
    };
    let mutating = method != "GET" && method != "HEAD";
    let action = match permission {
        Permission::SteerRun | Permission::ApproveCampaign => {
            route_action(request.uri().path()).unwrap_or(permission.as_str())
        }
        _ => permission.as_str(),
    };
    let object = redacted_target(request.uri());
    let record =
        |(name, role): (&str, &str), action: &str, reason: String, outcome: String| AuditRecord {
            time_ms: now_ms(),
            principal: name.into(),
            role: role.into(),
            source: peer.ip().to_string(),
            action: action.into(),
            object: object.clone(),
            reason,
            request_id: uuid::Uuid::new_v4().to_string(),
            outcome,
        };
    let client = request
        .extensions()
        .get::<crate::tls::ClientCertificate>()
        .cloned();
    // The console's pages authenticate by their session cookie only (and
    // nothing else does), so a cookie can never drive the JSON API.
    let console = session::is_console(&route);
    let mut session = None;
    let authenticated = if console {
        session::authenticate(&state, request.headers(), client.as_ref())
            .await
            .map(|(principal, found)| {
                session = Some(found);
                principal
            })
    } else {
        credentials::authenticate(&state, request.headers(), client.as_ref()).await
    };
    let principal = match authenticated {
        Ok(principal) => principal,
        Err(refusal) if console && refusal.status == StatusCode::UNAUTHORIZED => {
            return ConsoleRefusal::sign_in();
        }
        Err(refusal) => {
            // Past the budget a refusal is only counted: a flood of bad
            // tokens must not become a flood of records (or of log lines).
            if refusal.status == StatusCode::UNAUTHORIZED {
                state.metrics.auth_refused();
                if let Some(unrecorded) = state.refusals.admit() {
                    let entry = record(
                        ("unknown", "none"),
                        "auth:refused",
                        RefusalBudget::reason(&refusal.message, unrecorded),
                        "unauthenticated".into(),
                    );
                    audit(&state, entry).await;
                }
            }
            if console {
                return ConsoleRefusal::page(refusal.status, refusal.message);
            }
            return refusal.into_response();
        }
    };
    if !principal.role.allows(permission) {
        let message = format!(
            "{} (role {}) lacks the permission {} for {method} {route}",
            principal.name,
            principal.role,
            permission.as_str()
        );
        let entry = record(
            (&principal.name, principal.role.as_str()),
            action,
            message.clone(),
            "denied".into(),
        );
        return refuse(&state, entry, StatusCode::FORBIDDEN, message, console).await;
    }
    if !mutating {
        let mut request = request;
        request.extensions_mut().insert(principal);
        if let Some(session) = session {
            request.extensions_mut().insert(session);
        }
        return next.run(request).await;
    }
    let (parts, body) = request.into_parts();
    let limit = state.max_request_bytes;
    let Ok(bytes) = axum::body::to_bytes(body, limit).await else {
        let message = format!("the request body is larger than {limit} bytes");
        let entry = record(
            (&principal.name, principal.role.as_str()),
            action,
            message.clone(),
            "error: 413".into(),
        );
        return refuse(
            &state,
            entry,
            StatusCode::PAYLOAD_TOO_LARGE,
            message,
            console,
        )
        .await;
    };
    let reason = match &session {
        Some(session) => {
            // A console form: its CSRF token must be the session's (a page
            // of another site cannot read it), and its reason is a field.
            let form = crate::form::Form::parse(&bytes);
            if !session.csrf_matches(form.get("csrf")) {
                let message = "the form's CSRF token is missing or not this session's; reload the page and try again".to_string();
                let entry = record(
                    (&principal.name, principal.role.as_str()),
                    action,
                    message.clone(),
                    "denied".into(),
                );
                return refuse(&state, entry, StatusCode::FORBIDDEN, message, console).await;
            }
            form.get("reason").chars().take(1024).collect()
        }
        None => reason_in(&bytes),
    };
    let mut request = Request::from_parts(parts, Body::from(bytes));
    request.extensions_mut().insert(principal.clone());
    if let Some(session) = session {
        request.extensions_mut().insert(session);
    }
    let response = next.run(request).await;
    let reason = match response.extensions().get::<AuditNote>() {
        Some(AuditNote(note)) if reason.is_empty() => note.clone(),
        Some(AuditNote(note)) => format!("{reason}; {note}"),
        None => reason,
    };
    audit(
        &state,
        record(
            (&principal.name, principal.role.as_str()),
            action,
            reason,
            outcome_of(response.status()),
        ),
    )
    .await;
    response
}

/// `runs:pause`, `runs:resume`, `runs:cancel` or `runs:approve` for a
/// steering path.
fn route_action(path: &str) -> Option<&'static str> {
    let path = path.split('?').next()?;
    // The console's buttons are the same actions.
    let path = path.strip_prefix("/ui").unwrap_or(path);
    if !path.starts_with("/runs/") {
        return None;
    }
    match path.rsplit('/').next()? {
        "pause" => Some("runs:pause"),
        "resume" => Some("runs:resume"),
        "cancel" => Some("runs:cancel"),
        "approve" => Some("runs:approve"),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_steering_path_names_its_action() {
        assert_eq!(route_action("/runs/abc/pause"), Some("runs:pause"));
        assert_eq!(route_action("/runs/abc/cancel?x=1"), Some("runs:cancel"));
        assert_eq!(route_action("/runs/abc/explode"), None);
        assert_eq!(route_action("/runs/abc/approve"), Some("runs:approve"));
        assert_eq!(route_action("/campaigns/c/versions/1/approve"), None);
        assert_eq!(route_action("/ui/runs/abc/pause"), Some("runs:pause"));
    }
}

//! The API's door, one middleware around every route: who is calling
//! (authenticate), may they (authorize), and the record of it (audit).
//!
//! 1. The route's permission ([`route_permission`]); public routes pass.
//! 2. The bearer token's principal: the tokens file first, then the tokens
//!    made through the API (Redis). Missing, unknown or expired: 401 with
//!    `WWW-Authenticate`. An unreadable tokens file or Redis: 503 (fail
//!    closed). Without authentication configured, everyone is `anonymous`.
//! 3. A principal whose role lacks the permission: 403 naming it.
//! 4. The body is read (bounded) for the audit's `reason`, the handler runs
//!    with the [`Principal`] in its extensions, and every mutating request —
//!    allowed or refused — and every refused credential is one audit record.

use std::net::SocketAddr;

use axum::body::Body;
use axum::extract::{ConnectInfo, MatchedPath, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::api::ApiState;
use crate::audit::AuditRecord;
use crate::auth::{Permission, Principal, route_permission, token_hash};
use crate::now_ms;

/// What a handler adds to its request's audit record (`reason`): the
/// campaign version, author and approver a run was started from, say.
#[derive(Debug, Clone)]
pub struct AuditNote(pub String);

/// At most this many refused credentials a second become audit records (per
/// scheduler); the rest are counted in `flotilla_scheduler_auth_refused_total`
/// and logged — a flood of bad tokens must not fill Redis and the disk.
pub const MAX_REFUSAL_RECORDS_PER_SECOND: u32 = 100;

/// The refusals recorded in the current second.
#[derive(Debug, Default)]
pub struct RefusalBudget {
    /// (Unix second, records in it).
    window: std::sync::Mutex<(u64, u32)>,
}

impl RefusalBudget {
    /// True while this second's records stay within the budget.
    pub(crate) fn admit(&self) -> bool {
        let second = now_ms() / 1000;
        let mut window = self
            .window
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if window.0 != second {
            *window = (second, 0);
        }
        window.1 = window.1.saturating_add(1);
        window.1 <= MAX_REFUSAL_RECORDS_PER_SECOND
    }
}

/// The largest request body read by default (1 MiB): a campaign spec at its
/// limit, JSON-escaped. `--max-request-bytes` changes it.
pub const MAX_REQUEST_BYTES: usize = 2 * protocol::campaign::MAX_SPEC_BYTES;

/// The longest bearer token looked at: a flotilla token is 68 characters,
/// an SSO JWT signed with RSA-2,048 about 540 and one with RSA-4,096 about
/// 900 (plus its claims); the console's sign-in form allows the same.
pub(crate) const MAX_TOKEN_CHARS: usize = 4096;

/// Why a request got no principal.
pub(crate) struct Refusal {
    pub(crate) status: StatusCode,
    pub(crate) message: String,
    /// A token was presented (and is wrong), as opposed to none at all.
    presented: bool,
}

impl Refusal {
    pub(crate) fn unauthenticated(message: impl Into<String>, presented: bool) -> Self {
        Self {
            status: StatusCode::UNAUTHORIZED,
            message: message.into(),
            presented,
        }
    }

    pub(crate) fn unavailable(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::SERVICE_UNAVAILABLE,
            message: message.into(),
            presented: true,
        }
    }

    fn into_response(self) -> Response {
        let mut response =
            (self.status, axum::Json(json!({ "error": self.message }))).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            let challenge = if self.presented {
                r#"Bearer realm="flotilla", error="invalid_token""#
            } else {
                r#"Bearer realm="flotilla""#
            };
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static(challenge),
            );
        }
        response
    }
}

async fn authenticate(
    state: &ApiState,
    headers: &HeaderMap,
    client: Option<&crate::tls::ClientCertificate>,
) -> Result<Principal, Refusal> {
    // A certificate the client CA signed (rustls verified it in the handshake).
    if let Some(crate::tls::ClientCertificate(principal)) = client {
        return Ok(principal.clone());
    }
    if state.auth.is_open() {
        return Ok(Principal::anonymous());
    }
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Err(Refusal::unauthenticated(
            "authentication required: send `Authorization: Bearer <token>` (the CLI reads FLOTILLA_TOKEN or FLOTILLA_TOKEN_FILE)",
            false,
        ));
    };
    let token = value
        .to_str()
        .ok()
        .and_then(|value| value.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|token| !token.is_empty() && token.len() <= MAX_TOKEN_CHARS)
        .ok_or_else(|| {
            Refusal::unauthenticated("the Authorization header is not `Bearer <token>`", true)
        })?;
    if let Some(oidc) = &state.auth.oidc
        && crate::oidc::OidcVerifier::looks_like_jwt(token)
    {
        return oidc
            .verify(token)
            .map_err(|why| Refusal::unauthenticated(why, true));
    }
    let record = token_record(state, token).await?;
    Ok(Principal {
        name: record.name,
        role: record.role,
    })
}

/// The live record of a flotilla token (`flt_…`): the tokens file first,
/// then the tokens made through the API. Unknown, revoked or expired: 401;
/// unreadable: 503 (fail closed).
pub(crate) async fn token_record(
    state: &ApiState,
    token: &str,
) -> Result<crate::auth::TokenRecord, Refusal> {
    let sha256 = token_hash(token);
    let record = stored_record(state, &sha256).await?;
    let Some(record) = record else {
        return Err(Refusal::unauthenticated("unknown or revoked token", true));
    };
    if record.is_expired(now_ms()) {
        return Err(Refusal::unauthenticated(
            format!(
                "the token of {} has expired; ask an admin for a new one",
                record.name
            ),
            true,
        ));
    }
    Ok(record)
}

/// A token's record by its hash, wherever it is kept.
pub(crate) async fn stored_record(
    state: &ApiState,
    sha256: &str,
) -> Result<Option<crate::auth::TokenRecord>, Refusal> {
    let from_file = match &state.auth.tokens_file {
        Some(tokens_file) => tokens_file.lookup(sha256).map_err(|error| {
            tracing::error!(
                error = error.as_str(),
                "tokens file unreadable: refusing every token"
            );
            Refusal::unavailable("the scheduler cannot read its tokens file; see its log")
        })?,
        None => None,
    };
    if from_file.is_some() {
        return Ok(from_file);
    }
    let connected = state.current.borrow().clone();
    let Some(scheduler) = connected else {
        return Err(Refusal::unavailable(
            "the scheduler is reconnecting to RabbitMQ/Redis; try again shortly",
        ));
    };
    scheduler.stored_token(sha256).await.map_err(|error| {
        tracing::error!(error = %error, "stored tokens unreadable: refusing the token");
        Refusal::unavailable("the scheduler cannot read its stored tokens; see its log")
    })
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
pub(crate) async fn audit(state: &ApiState, record: AuditRecord) {
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
        return crate::console::error_page(status, &message);
    }
    (status, axum::Json(json!({ "error": message }))).into_response()
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
    let object = request.uri().path_and_query().map_or_else(
        || request.uri().path().to_string(),
        |path| path.as_str().to_string(),
    );
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
    let console = crate::console::is_console(&route);
    let mut session = None;
    let authenticated = if console {
        crate::console::session::authenticate(&state, request.headers())
            .await
            .map(|(principal, found)| {
                session = Some(found);
                principal
            })
    } else {
        authenticate(&state, request.headers(), client.as_ref()).await
    };
    let principal = match authenticated {
        Ok(principal) => principal,
        Err(refusal) if console && refusal.status == StatusCode::UNAUTHORIZED => {
            return crate::console::to_login(request.uri());
        }
        Err(refusal) => {
            // Past the budget a refusal is only counted: a flood of bad
            // tokens must not become a flood of records (or of log lines).
            if refusal.status == StatusCode::UNAUTHORIZED {
                state.metrics.auth_refused();
                if state.refusals.admit() {
                    let entry = record(
                        ("unknown", "none"),
                        "auth:refused",
                        refusal.message.clone(),
                        "unauthenticated".into(),
                    );
                    audit(&state, entry).await;
                }
            }
            if console {
                return crate::console::error_page(refusal.status, &refusal.message);
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
            let form = crate::console::Form::parse(&bytes);
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
    fn refused_credentials_are_audited_up_to_a_budget_a_second() {
        // Retried if a second boundary falls inside the loop.
        for _ in 0..3 {
            let budget = RefusalBudget::default();
            let second = now_ms() / 1000;
            let admitted = (0..MAX_REFUSAL_RECORDS_PER_SECOND + 50)
                .filter(|_| budget.admit())
                .count();
            if now_ms() / 1000 == second {
                assert_eq!(admitted, MAX_REFUSAL_RECORDS_PER_SECOND as usize);
                return;
            }
        }
        panic!("three second boundaries in a row");
    }

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

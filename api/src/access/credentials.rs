//! Who is calling, from a request's credentials: a client certificate the
//! client CA signed, a bearer token — a flotilla token (the tokens file,
//! then the tokens made through the API) or an SSO JWT — or, without
//! authentication configured, `anonymous`. Unknown, revoked or expired: 401;
//! a tokens file or Redis that cannot be read: 503 (fail closed).

use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use scheduler::auth::{Principal, token_hash};
use serde_json::json;

use crate::now_ms;
use crate::state::ApiState;

/// The largest request body read by default (1 MiB): a campaign spec at its
/// limit, JSON-escaped. `--max-request-bytes` changes it.
pub const MAX_REQUEST_BYTES: usize = 2 * protocol::campaign::MAX_SPEC_BYTES;

/// The longest bearer token looked at: a flotilla token is 68 characters,
/// an SSO JWT signed with RSA-2,048 about 540 and one with RSA-4,096 about
/// 900 (plus its claims); the console's sign-in form allows the same.
pub const MAX_TOKEN_CHARS: usize = 4096;

/// Why a request got no principal.
pub struct Refusal {
    pub status: StatusCode,
    pub message: String,
    /// A token was presented (and is wrong), as opposed to none at all.
    presented: bool,
}

impl Refusal {
    pub fn unauthenticated(message: impl Into<String>, presented: bool) -> Self {
        Self {
            status: StatusCode::UNAUTHORIZED,
            message: message.into(),
            presented,
        }
    }

    pub fn unavailable(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::SERVICE_UNAVAILABLE,
            message: message.into(),
            presented: true,
        }
    }

    pub fn into_response(self) -> Response {
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

pub async fn authenticate(
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
    Ok(token_record(state, token).await?.principal())
}

/// The live record of a flotilla token (`flt_…`): the tokens file first,
/// then the tokens made through the API. Unknown, revoked or expired: 401;
/// unreadable: 503 (fail closed).
pub async fn token_record(
    state: &ApiState,
    token: &str,
) -> Result<scheduler::auth::TokenRecord, Refusal> {
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
pub async fn stored_record(
    state: &ApiState,
    sha256: &str,
) -> Result<Option<scheduler::auth::TokenRecord>, Refusal> {
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

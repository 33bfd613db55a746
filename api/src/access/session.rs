//! The console's session cookie on a request: reading it (bounded) and
//! authenticating the request by it. Sessions themselves are stored by the
//! engine (`scheduler::sessions`). Every request re-checks how its session
//! was made against the rules now: a session from a flotilla token ends
//! when the token is revoked or expires; one from an SSO token at the
//! token's expiry (an hour at most) or once the issuer or its signing key is
//! no longer trusted; one from a client certificate needs that certificate
//! on every connection; one made without authentication ends once the API
//! runs with any.

use axum::http::{HeaderMap, header};
use scheduler::auth::Principal;
use scheduler::sessions::{Session, SessionOrigin};

use super::credentials::{Refusal, stored_record};
use crate::now_ms;
use crate::state::ApiState;

/// The session cookie's name.
pub const COOKIE: &str = "flotilla_session";
/// The longest a session lasts (a working day).
pub const MAX_SESSION_MS: u64 = 8 * 3_600_000;
/// A session from an SSO token (whose expiry is the IdP's business).
pub const SSO_SESSION_MS: u64 = 3_600_000;
/// The longest cookie value looked at (`fls_` and 64 hex digits).
const MAX_COOKIE_CHARS: usize = 128;

/// Is this route one of the console's (authenticated by its cookie only)?
pub fn is_console(route: &str) -> bool {
    route == "/ui" || route.starts_with("/ui/")
}

/// The session cookie of a request, bounded.
pub fn cookie_of(headers: &HeaderMap) -> Option<String> {
    cookie_named(headers, COOKIE)
}

/// The value of the cookie `name` of a request, if any and at most
/// [`MAX_COOKIE_CHARS`] long.
pub fn cookie_named(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(found, _)| *found == name)
        .map(|(_, value)| value.trim().to_string())
        .filter(|value| !value.is_empty() && value.len() <= MAX_COOKIE_CHARS)
}

/// The principal of a console request: its session, and the token the
/// session came from still valid. No session: 401 (the guard sends the
/// browser to the sign-in page); Redis away: 503 (fail closed).
pub async fn authenticate(
    state: &ApiState,
    headers: &HeaderMap,
    certificate: Option<&crate::tls::ClientCertificate>,
) -> Result<(Principal, Session), Refusal> {
    let Some(cookie) = cookie_of(headers) else {
        return Err(Refusal::unauthenticated("sign in to the console", false));
    };
    let connected = state.current.borrow().clone();
    let Some(scheduler) = connected else {
        return Err(Refusal::unavailable(
            "the scheduler is reconnecting to RabbitMQ/Redis; try again shortly",
        ));
    };
    let session = scheduler.session(&cookie).await.map_err(|error| {
        tracing::error!(error = %error, "console sessions unreadable: refusing the session");
        Refusal::unavailable("the scheduler cannot read its console sessions; see its log")
    })?;
    let Some(session) = session else {
        return Err(Refusal::unauthenticated(
            "the console session ended; sign in again",
            true,
        ));
    };
    still_accepted(state, &session, certificate).await?;
    Ok((session.principal(), session))
}

/// Refuses a session whose credential would not be accepted now.
async fn still_accepted(
    state: &ApiState,
    session: &Session,
    certificate: Option<&crate::tls::ClientCertificate>,
) -> Result<(), Refusal> {
    let ended = |why: &str| {
        Err(Refusal::unauthenticated(
            format!("{why}; sign in again"),
            true,
        ))
    };
    match &session.origin {
        SessionOrigin::Anonymous if state.auth.is_open() => Ok(()),
        SessionOrigin::Anonymous => {
            ended("this session was made while the API ran without authentication")
        }
        SessionOrigin::Token { sha256 } => {
            let record = stored_record(state, sha256).await?;
            let Some(record) = record.filter(|record| !record.is_expired(now_ms())) else {
                return ended("the token this session was made from is revoked or expired");
            };
            // A token given another name or role since: the session made
            // under the old one is over.
            if record.name != session.name || record.role != session.role {
                return ended(
                    "the token this session was made from now names another principal or role",
                );
            }
            Ok(())
        }
        SessionOrigin::Sso { issuer, key_id } => match &state.auth.oidc {
            Some(oidc) if oidc.issuer() == issuer && oidc.has_key(key_id) => Ok(()),
            _ => ended(
                "the SSO issuer or the key that signed this session's token is no longer trusted",
            ),
        },
        SessionOrigin::Certificate => match certificate {
            Some(crate::tls::ClientCertificate(presented))
                if state.auth.client_certificates
                    && presented.name == session.name
                    && presented.role == session.role =>
            {
                Ok(())
            }
            _ => ended(
                "this session was made with a client certificate this connection does not present",
            ),
        },
    }
}

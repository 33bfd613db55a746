//! Console sessions: a browser signs in once with its token and holds a
//! random session cookie (`HttpOnly`, `SameSite=Strict`, path `/ui`) instead.
//!
//! Redis keeps `<prefix>:session:<sha256 of the cookie>` → the session, with
//! the session's TTL: the cookie itself is never stored, and every replica of
//! the scheduler knows every session. A session made from a flotilla token
//! re-checks that token on every request, so revoking the token (or its
//! expiry) ends the session at once; one from an SSO token lasts an hour.

use axum::http::{HeaderMap, header};
use redis::AsyncCommands;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::access::Refusal;
use crate::api::ApiState;
use crate::auth::{Principal, Role};
use crate::{Scheduler, SchedulerError, now_ms};

/// The session cookie's name.
pub const COOKIE: &str = "flotilla_session";
/// The longest a session lasts (a working day).
pub const MAX_SESSION_MS: u64 = 8 * 3_600_000;
/// A session from an SSO token (whose expiry is the IdP's business).
pub const SSO_SESSION_MS: u64 = 3_600_000;
/// The longest cookie value looked at (`fls_` and 64 hex digits).
const MAX_COOKIE_CHARS: usize = 128;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Session {
    pub name: String,
    pub role: Role,
    /// The value every form of this session carries.
    pub csrf: String,
    /// The flotilla token it was made from, by hash; `None` for SSO and
    /// for a deployment without authentication.
    pub token_sha256: Option<String>,
    pub expires_ms: u64,
}

impl Session {
    pub fn principal(&self) -> Principal {
        Principal {
            name: self.name.clone(),
            role: self.role,
        }
    }

    /// Compares the digests, so the time taken says nothing about the value.
    pub fn csrf_matches(&self, presented: &str) -> bool {
        !presented.is_empty() && Sha256::digest(presented) == Sha256::digest(&self.csrf)
    }
}

fn random_secret(prefix: &str) -> Result<String, SchedulerError> {
    crate::auth::random_secret(prefix).map_err(SchedulerError::Internal)
}

impl Scheduler {
    /// Starts a session for `principal` until `expires_ms`; returns the cookie.
    pub async fn create_session(
        &self,
        principal: &Principal,
        token_sha256: Option<String>,
        expires_ms: u64,
    ) -> Result<(String, Session), SchedulerError> {
        let cookie = random_secret("fls_")?;
        let session = Session {
            name: principal.name.clone(),
            role: principal.role,
            csrf: random_secret("")?,
            token_sha256,
            expires_ms,
        };
        let ttl_ms = expires_ms.saturating_sub(now_ms()).max(1);
        let mut connection = self.ledger.connection();
        let () = redis::cmd("SET")
            .arg(
                self.broker
                    .names()
                    .session_key(&crate::auth::token_hash(&cookie)),
            )
            .arg(serde_json::to_string(&session)?)
            .arg("PX")
            .arg(ttl_ms)
            .query_async(&mut connection)
            .await?;
        Ok((cookie, session))
    }

    /// The live session a cookie names, if any.
    pub async fn session(&self, cookie: &str) -> Result<Option<Session>, SchedulerError> {
        let json: Option<String> = {
            let mut connection = self.ledger.connection();
            connection
                .get(
                    self.broker
                        .names()
                        .session_key(&crate::auth::token_hash(cookie)),
                )
                .await?
        };
        let Some(json) = json else {
            return Ok(None);
        };
        let session: Session = serde_json::from_str(&json)
            .map_err(|error| SchedulerError::Corrupt(format!("console session: {error}")))?;
        Ok((session.expires_ms > now_ms()).then_some(session))
    }

    pub async fn end_session(&self, cookie: &str) -> Result<(), SchedulerError> {
        let mut connection = self.ledger.connection();
        let _: u32 = connection
            .del(
                self.broker
                    .names()
                    .session_key(&crate::auth::token_hash(cookie)),
            )
            .await?;
        Ok(())
    }
}

/// The session cookie of a request, bounded.
pub fn cookie_of(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value.trim().to_string())
        .filter(|value| !value.is_empty() && value.len() <= MAX_COOKIE_CHARS)
}

/// The principal of a console request: its session, and the token the
/// session came from still valid. No session: 401 (the guard sends the
/// browser to the sign-in page); Redis away: 503 (fail closed).
pub(crate) async fn authenticate(
    state: &ApiState,
    headers: &HeaderMap,
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
    if let Some(sha256) = &session.token_sha256 {
        let record = crate::access::stored_record(state, sha256).await?;
        if record.is_none_or(|record| record.is_expired(now_ms())) {
            return Err(Refusal::unauthenticated(
                "the token this session was made from is revoked or expired",
                true,
            ));
        }
    }
    Ok((session.principal(), session))
}

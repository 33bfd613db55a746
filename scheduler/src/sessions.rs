//! Console sessions as stored: a browser signs in once (the HTTP crate's
//! console checks how) and holds a random session cookie instead.
//!
//! Redis keeps `<prefix>:session:<sha256 of the cookie>` → the session, with
//! the session's TTL: the cookie itself is never stored, and every replica of
//! the scheduler knows every session.

use redis::AsyncCommands;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::auth::{Principal, Role};
use crate::{Scheduler, SchedulerError, now_ms};

/// How a session was made. The API checks it again on every request of the
/// session, so a session outlives neither its credential nor the rules it
/// was made under.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum SessionOrigin {
    /// Made while the API ran without authentication: it ends once the API
    /// runs with any.
    Anonymous,
    /// From a flotilla token (by hash): it ends when the token is revoked or
    /// expires.
    Token { sha256: String },
    /// From an SSO token: it ends at the token's expiry (or after an hour),
    /// and when the deployment no longer trusts the issuer or the key that
    /// signed it (a rotation).
    Sso { issuer: String, key_id: String },
    /// From a client certificate: each request must come over a connection
    /// whose certificate names the same principal and role.
    Certificate,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Session {
    pub name: String,
    pub role: Role,
    /// The value every form of this session carries.
    pub csrf: String,
    /// How it was made.
    pub origin: SessionOrigin,
    /// Who made the token it was made from (see `Principal::issued_by`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issued_by: Option<String>,
    pub expires_ms: u64,
}

impl Session {
    pub fn principal(&self) -> Principal {
        Principal {
            name: self.name.clone(),
            role: self.role,
            issued_by: self.issued_by.clone(),
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
        origin: SessionOrigin,
        expires_ms: u64,
    ) -> Result<(String, Session), SchedulerError> {
        let cookie = random_secret("fls_")?;
        let session = Session {
            name: principal.name.clone(),
            role: principal.role,
            csrf: random_secret("")?,
            origin,
            issued_by: principal.issued_by.clone(),
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
        // A session of an older form (or garbled) has ended: its holder
        // signs in again.
        let session: Session = match serde_json::from_str(&json) {
            Ok(session) => session,
            Err(error) => {
                tracing::warn!(error = %error, "a console session does not read back; it has ended");
                return Ok(None);
            }
        };
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

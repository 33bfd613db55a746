//! Identity, as the engine sees it: principals, the role each has, the
//! permissions roles allow, and token records. The engine's decisions take
//! the acting [`Principal`]; how a principal is read from a request (bearer
//! tokens, the tokens file, SSO, client certificates, console sessions) is
//! the HTTP crate's (`api::access`).
//!
//! Tokens are opaque: `flt_` and 64 hex digits (256 random bits from the OS).
//! Only their SHA-256 is kept — a token of that much entropy needs no slow
//! hash — in a tokens file (`--tokens-file`, JSON lines, how the first admin
//! token is made) and in Redis (`<prefix>:tokens`, tokens made through the
//! API). A lookup is by hash, so no comparison of secrets ever happens.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// What a principal is allowed; humans' roles nest (viewer ⊂ operator ⊂
/// admin, viewer ⊂ approver), machines' roles allow one route each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Viewer,
    Operator,
    Approver,
    Admin,
    /// Alertmanager's webhook: `POST /alerts` only.
    Alertmanager,
    /// EventBridge (or whatever relays instance events): `POST /events` only.
    Eventbridge,
}

impl Role {
    pub const ALL: [Self; 6] = [
        Self::Viewer,
        Self::Operator,
        Self::Approver,
        Self::Admin,
        Self::Alertmanager,
        Self::Eventbridge,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Viewer => "viewer",
            Self::Operator => "operator",
            Self::Approver => "approver",
            Self::Admin => "admin",
            Self::Alertmanager => "alertmanager",
            Self::Eventbridge => "eventbridge",
        }
    }

    /// The role table of the book (docs/src/security/access.md), as code.
    pub fn allows(self, permission: Permission) -> bool {
        use Permission::*;
        match self {
            Self::Viewer => matches!(permission, Read | ReadAudit),
            Self::Approver => {
                matches!(
                    permission,
                    Read | ReadAudit | ApproveCampaign | ManageCalendar
                )
            }
            Self::Operator => matches!(
                permission,
                Read | ReadAudit | ApplyCampaign | StartRun | SteerRun | EngageKill
            ),
            Self::Admin => !matches!(permission, PostAlerts | PostEvents),
            Self::Alertmanager => permission == PostAlerts,
            Self::Eventbridge => permission == PostEvents,
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Role {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|role| role.as_str() == text)
            .ok_or_else(|| {
                let known: Vec<&str> = Self::ALL.iter().map(|role| role.as_str()).collect();
                format!("unknown role {text:?}; use one of {}", known.join(", "))
            })
    }
}

/// What an act is, in the words a 403 and the audit trail use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Permission {
    /// Campaigns, runs, the kill switch's state.
    Read,
    ReadAudit,
    ApplyCampaign,
    DeleteCampaign,
    StartRun,
    /// Pause, resume, cancel.
    SteerRun,
    EngageKill,
    ReleaseKill,
    ManageTokens,
    /// Approve a campaign version that changes hosts (not one's own).
    ApproveCampaign,
    /// Add and remove change freezes.
    ManageCalendar,
    PostAlerts,
    PostEvents,
    /// A mutating route the table does not name: admins only (fail closed).
    Administer,
}

impl Permission {
    pub const ALL: [Self; 14] = [
        Self::Read,
        Self::ReadAudit,
        Self::ApplyCampaign,
        Self::DeleteCampaign,
        Self::StartRun,
        Self::SteerRun,
        Self::EngageKill,
        Self::ReleaseKill,
        Self::ManageTokens,
        Self::ApproveCampaign,
        Self::ManageCalendar,
        Self::PostAlerts,
        Self::PostEvents,
        Self::Administer,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Read => "read",
            Self::ReadAudit => "audit:read",
            Self::ApplyCampaign => "campaigns:apply",
            Self::DeleteCampaign => "campaigns:delete",
            Self::StartRun => "runs:start",
            Self::SteerRun => "runs:steer",
            Self::EngageKill => "kill:engage",
            Self::ReleaseKill => "kill:release",
            Self::ManageTokens => "tokens:manage",
            Self::ApproveCampaign => "campaigns:approve",
            Self::ManageCalendar => "calendar:manage",
            Self::PostAlerts => "alerts:post",
            Self::PostEvents => "events:post",
            Self::Administer => "admin",
        }
    }
}

/// Who made a request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Principal {
    pub name: String,
    pub role: Role,
    /// Who made the credential presented, when flotilla did: the principal
    /// that created its token through the API. Separation of duties: a
    /// change's author may not approve it through a token they created.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub issued_by: Option<String>,
}

impl Principal {
    /// Everyone, where no authentication is configured (loopback only, or
    /// `--insecure-no-auth`): recorded as such in the audit trail.
    pub fn anonymous() -> Self {
        Self {
            name: "anonymous".into(),
            role: Role::Admin,
            issued_by: None,
        }
    }
}

/// One token as stored: never the token, only its hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenRecord {
    /// The principal the token names.
    pub name: String,
    pub role: Role,
    /// Hex SHA-256 of the token.
    pub sha256: String,
    pub created_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_ms: Option<u64>,
    #[serde(default)]
    pub created_by: String,
}

impl TokenRecord {
    /// The principal presenting this token.
    pub fn principal(&self) -> Principal {
        Principal {
            name: self.name.clone(),
            role: self.role,
            issued_by: Some(self.created_by.clone()).filter(|by| !by.is_empty()),
        }
    }

    pub fn is_expired(&self, now_ms: u64) -> bool {
        self.expires_ms.is_some_and(|expires| expires <= now_ms)
    }
}

/// A new token: `flt_` and 64 hex digits from the operating system's RNG.
pub fn new_token() -> Result<String, String> {
    random_secret("flt_")
}

/// `prefix` and 256 random bits from the operating system's RNG as 64 hex
/// digits: tokens, console session cookies, CSRF tokens.
pub fn random_secret(prefix: &str) -> Result<String, String> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|error| format!("no randomness for a secret: {error}"))?;
    Ok(format!("{prefix}{}", hex::encode(bytes)))
}

/// What is stored and looked up: the hex SHA-256 of the token (and of a
/// console session's cookie).
pub fn token_hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// May `principal` start runs of a campaign whose `run_by` is this? Anyone
/// (with the permission) when it is empty; else a listed name or role.
pub fn may_run(principal: &Principal, run_by: &[String]) -> bool {
    run_by.is_empty()
        || run_by
            .iter()
            .any(|entry| match entry.strip_prefix("role:") {
                Some(role) => role == principal.role.as_str(),
                None => *entry == principal.name,
            })
}

/// Names: what a token's principal may be called.
pub fn check_principal_name(name: &str) -> Result<(), String> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-' | '@');
    if name.is_empty() || name.len() > 128 || !name.chars().all(allowed) {
        return Err(format!(
            "principal name must be 1-128 of letters, digits, '_', '.', '-', '@', got {name:?}"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_nest_and_machines_get_one_permission() {
        use Permission::*;
        let all = Permission::ALL;
        for permission in all {
            if Role::Viewer.allows(permission) {
                assert!(Role::Operator.allows(permission) && Role::Approver.allows(permission));
            }
            if Role::Operator.allows(permission) {
                assert!(Role::Admin.allows(permission), "{permission:?}");
            }
        }
        assert!(!Role::Viewer.allows(StartRun));
        assert!(!Role::Operator.allows(Administer) && Role::Admin.allows(Administer));
        assert!(Role::Approver.allows(ApproveCampaign) && !Role::Operator.allows(ApproveCampaign));
        assert!(!Role::Operator.allows(ReleaseKill) && Role::Admin.allows(ReleaseKill));
        assert!(!Role::Operator.allows(DeleteCampaign) && !Role::Operator.allows(ManageTokens));
        let machine = |role: Role| {
            all.into_iter()
                .filter(|p| role.allows(*p))
                .collect::<Vec<_>>()
        };
        assert_eq!(machine(Role::Alertmanager), [PostAlerts]);
        assert_eq!(machine(Role::Eventbridge), [PostEvents]);
    }

    #[test]
    fn a_campaign_may_name_who_runs_it() {
        let otto = Principal {
            name: "otto".into(),
            role: Role::Operator,
            issued_by: None,
        };
        assert!(may_run(&otto, &[]));
        assert!(may_run(&otto, &["role:operator".into()]));
        assert!(may_run(&otto, &["anna".into(), "otto".into()]));
        assert!(!may_run(&otto, &["role:admin".into(), "anna".into()]));
    }

    #[test]
    fn tokens_are_random_and_only_their_hash_is_kept() {
        let (a, b) = (new_token().unwrap(), new_token().unwrap());
        assert_ne!(a, b);
        assert!(a.starts_with("flt_") && a.len() == 68);
        assert_eq!(token_hash(&a).len(), 64);
        assert_ne!(token_hash(&a), token_hash(&b));
        assert!(!token_hash(&a).contains(&a[4..]));
    }
}

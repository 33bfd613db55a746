//! Who may do what through the API: principals named by bearer tokens, the
//! role each has, and the one permission each route needs.
//!
//! Tokens are opaque: `flt_` and 64 hex digits (256 random bits from the OS).
//! Only their SHA-256 is kept — a token of that much entropy needs no slow
//! hash — in a tokens file (`--tokens-file`, JSON lines, how the first admin
//! token is made) and in Redis (`<prefix>:tokens`, tokens made through the
//! API). A lookup is by hash, so no comparison of secrets ever happens.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

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

    /// The role table of the README, as code.
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

/// What a route does, in the words a 403 and the audit trail use.
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

/// The permission a route needs, by method and route pattern; `None` for the
/// routes anyone may call (`/healthz`, and `/metrics` unless configured).
pub fn route_permission(method: &str, route: &str, metrics_open: bool) -> Option<Permission> {
    use Permission::*;
    let permission = match (method, route) {
        (_, "/healthz") => return None,
        // The console's door and its stylesheet and script.
        (_, "/ui" | "/ui/login" | "/ui/static/{file}") => return None,
        ("POST", "/ui/logout") => Read,
        ("POST", "/ui/campaigns/{name}/runs") => StartRun,
        ("POST", "/ui/runs/{id}/approve") => ApproveCampaign,
        ("POST", "/ui/runs/{id}/{action}") => SteerRun,
        ("POST", "/ui/kill") => EngageKill,
        ("POST", "/ui/kill/release") => ReleaseKill,
        (_, "/metrics") if metrics_open => return None,
        (_, "/metrics") => Read,
        ("GET", "/audit") => ReadAudit,
        ("POST", "/campaigns") => ApplyCampaign,
        ("DELETE", "/campaigns/{name}") => DeleteCampaign,
        ("POST", "/campaigns/{name}/runs") => StartRun,
        ("POST", "/campaigns/{name}/versions/{version}/approve") => ApproveCampaign,
        ("POST", "/runs/{id}/approve") => ApproveCampaign,
        ("POST", "/runs/{id}/{action}") => SteerRun,
        ("POST", "/kill") => EngageKill,
        ("DELETE", "/kill") => ReleaseKill,
        (_, "/tokens") | (_, "/tokens/{name}") => ManageTokens,
        ("POST", "/alerts") => PostAlerts,
        ("POST", "/calendar") | ("DELETE", "/calendar/{id}") => ManageCalendar,
        ("POST", "/events") => PostEvents,
        ("GET" | "HEAD", _) => Read,
        // A mutating route missing from this table is an admin's until it
        // is named here: a new route fails closed, not open.
        _ => Administer,
    };
    Some(permission)
}

/// Who made a request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Principal {
    pub name: String,
    pub role: Role,
}

impl Principal {
    /// Everyone, where no authentication is configured (loopback only, or
    /// `--insecure-no-auth`): recorded as such in the audit trail.
    pub fn anonymous() -> Self {
        Self {
            name: "anonymous".into(),
            role: Role::Admin,
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

/// The largest tokens file read, and the most entries in it.
const MAX_TOKENS_FILE_BYTES: u64 = 1024 * 1024;
const MAX_TOKENS: usize = 10_000;

/// Reads a file of at most `max_bytes` (checked before reading): tokens,
/// certificates, keys, a JWKS. `what` names it in the error.
pub fn read_bounded(path: &Path, max_bytes: u64, what: &str) -> Result<Vec<u8>, String> {
    let size = std::fs::metadata(path)
        .map_err(|error| format!("{what} {}: {error}", path.display()))?
        .len();
    if size > max_bytes {
        return Err(format!(
            "{what} {} is {size} bytes; at most {max_bytes} are read",
            path.display()
        ));
    }
    std::fs::read(path).map_err(|error| format!("{what} {}: {error}", path.display()))
}

/// Reads a tokens file (JSON lines), bounded before it is parsed; an error
/// names the line.
pub fn read_tokens_file(path: &Path) -> Result<Vec<TokenRecord>, String> {
    let bytes = read_bounded(path, MAX_TOKENS_FILE_BYTES, "tokens file")?;
    let text = String::from_utf8(bytes)
        .map_err(|error| format!("tokens file {}: {error}", path.display()))?;
    let mut records = Vec::new();
    for (index, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        if records.len() >= MAX_TOKENS {
            return Err(format!(
                "tokens file {} has more than {MAX_TOKENS} tokens",
                path.display()
            ));
        }
        let record: TokenRecord = serde_json::from_str(line).map_err(|error| {
            format!("tokens file {} line {}: {error}", path.display(), index + 1)
        })?;
        if record.sha256.len() != 64 || !record.sha256.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(format!(
                "tokens file {} line {}: sha256 must be 64 hex digits",
                path.display(),
                index + 1
            ));
        }
        records.push(record);
    }
    Ok(records)
}

/// Appends a record to a tokens file, created readable by its owner only.
pub fn append_tokens_file(path: &Path, record: &TokenRecord) -> Result<(), String> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.create(true).append(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options
        .open(path)
        .map_err(|error| format!("tokens file {}: {error}", path.display()))?;
    let line = serde_json::to_string(record).map_err(|error| error.to_string())?;
    writeln!(file, "{line}")
        .and_then(|()| file.sync_all())
        .map_err(|error| format!("tokens file {}: {error}", path.display()))
}

/// Rewrites a tokens file without the tokens of `name`; how many went.
pub fn revoke_in_tokens_file(path: &Path, name: &str) -> Result<usize, String> {
    let records = read_tokens_file(path)?;
    let kept: Vec<&TokenRecord> = records
        .iter()
        .filter(|record| record.name != name)
        .collect();
    let removed = records.len() - kept.len();
    let mut text = String::new();
    for record in kept {
        text.push_str(&serde_json::to_string(record).map_err(|error| error.to_string())?);
        text.push('\n');
    }
    let temporary = path.with_extension("tmp");
    std::fs::write(&temporary, text)
        .and_then(|()| std::fs::rename(&temporary, path))
        .map_err(|error| format!("tokens file {}: {error}", path.display()))?;
    Ok(removed)
}

/// The tokens file as last read, re-read when it changes (so a revoked or
/// added line takes effect without a restart).
#[derive(Debug, Clone)]
pub struct TokensFile {
    path: PathBuf,
    cache: Arc<Mutex<TokensCache>>,
}

/// The file's records by hash, as of its modification time.
#[derive(Debug, Default)]
struct TokensCache {
    modified: Option<SystemTime>,
    by_hash: HashMap<String, TokenRecord>,
}

impl TokensFile {
    /// Reads it once now, so that a bad file stops the scheduler at start.
    pub fn open(path: PathBuf) -> Result<Self, String> {
        let file = Self {
            path,
            cache: Arc::default(),
        };
        file.lookup("")?;
        Ok(file)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The record of the token whose hash is `sha256`, re-reading the file
    /// if it changed since.
    pub fn lookup(&self, sha256: &str) -> Result<Option<TokenRecord>, String> {
        let modified = std::fs::metadata(&self.path)
            .and_then(|meta| meta.modified())
            .map_err(|error| format!("tokens file {}: {error}", self.path.display()))?;
        let mut cache = self
            .cache
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if cache.modified != Some(modified) {
            let records = read_tokens_file(&self.path)?;
            cache.by_hash = records
                .into_iter()
                .map(|record| (record.sha256.to_ascii_lowercase(), record))
                .collect();
            cache.modified = Some(modified);
        }
        Ok(cache.by_hash.get(sha256).cloned())
    }
}

/// How the API authenticates.
#[derive(Debug, Clone, Default)]
pub struct AuthSettings {
    /// Tokens made offline (`flotilla token create --tokens-file`); setting
    /// it turns authentication on, and tokens made through the API (kept in
    /// Redis) are accepted too.
    pub tokens_file: Option<TokensFile>,
    /// JWTs of a company's SSO; setting it turns authentication on too.
    pub oidc: Option<crate::oidc::OidcVerifier>,
    /// Client certificates of a client CA are principals (mTLS); turns
    /// authentication on too.
    pub client_certificates: bool,
    /// `/metrics` without a token (it holds counts, never ids or secrets).
    pub metrics_open: bool,
}

impl AuthSettings {
    /// No authentication configured: every caller is [`Principal::anonymous`].
    pub fn is_open(&self) -> bool {
        self.tokens_file.is_none() && self.oidc.is_none() && !self.client_certificates
    }
}

/// Why a scheduler must not start: it would serve everyone on the network.
pub fn check_listen(
    listen: std::net::SocketAddr,
    auth: &AuthSettings,
    insecure_no_auth: bool,
) -> Result<(), String> {
    if !auth.is_open() || listen.ip().is_loopback() || insecure_no_auth {
        return Ok(());
    }
    Err(format!(
        "refusing to serve the API on {listen} without authentication: anyone who reaches it could run commands as root on every host. \
         Create an admin token with `flotilla token create --name NAME --role admin --tokens-file FILE` and start the scheduler with \
         `--tokens-file FILE`, or listen on 127.0.0.1, or (for a test only) pass --insecure-no-auth"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_nest_and_machines_get_one_route() {
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
        assert_eq!(
            route_permission("POST", "/some/new/route", true),
            Some(Administer)
        );
        assert!(!Role::Operator.allows(Administer) && Role::Admin.allows(Administer));
        assert_eq!(route_permission("GET", "/runs/{id}", true), Some(Read));
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

    #[test]
    fn a_tokens_file_is_read_bounded_and_revoked_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens");
        let record = |name: &str| TokenRecord {
            name: name.into(),
            role: Role::Admin,
            sha256: token_hash(name),
            created_ms: 1,
            expires_ms: None,
            created_by: "test".into(),
        };
        append_tokens_file(&path, &record("alice")).unwrap();
        append_tokens_file(&path, &record("bob")).unwrap();
        let file = TokensFile::open(path.clone()).unwrap();
        assert_eq!(
            file.lookup(&token_hash("alice")).unwrap().unwrap().name,
            "alice"
        );
        assert_eq!(revoke_in_tokens_file(&path, "alice").unwrap(), 1);
        assert_eq!(read_tokens_file(&path).unwrap().len(), 1);
        std::fs::write(&path, "{\"name\":\"x\"}\n").unwrap();
        assert!(read_tokens_file(&path).unwrap_err().contains("line 1"));
    }

    #[test]
    fn a_public_listen_without_auth_is_refused_with_how_to_fix_it() {
        let open = AuthSettings::default();
        let public: std::net::SocketAddr = "0.0.0.0:8080".parse().unwrap();
        let error = check_listen(public, &open, false).unwrap_err();
        assert!(error.contains("--tokens-file") && error.contains("--insecure-no-auth"));
        assert!(check_listen(public, &open, true).is_ok());
        assert!(check_listen("127.0.0.1:8080".parse().unwrap(), &open, false).is_ok());
    }
}

//! How the HTTP doors authenticate, beside the engine's identity types
//! (`scheduler::auth`): the permission each route needs, the tokens file
//! (read bounded, re-read when it changes, written owner-only), the
//! deployment's authentication settings, and the rule that refuses to serve
//! an unauthenticated API beyond loopback.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use scheduler::auth::{Permission, TokenRecord};

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
    // A new private file renamed over the old one: 0600 after every rewrite.
    scheduler::files::replace_private(path, text.as_bytes())
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
    use scheduler::auth::{Role, token_hash};

    #[test]
    fn every_route_needs_a_permission_and_an_unnamed_one_is_an_admins() {
        use Permission::*;
        assert_eq!(
            route_permission("POST", "/some/new/route", true),
            Some(Administer)
        );
        assert_eq!(route_permission("GET", "/runs/{id}", true), Some(Read));
        assert_eq!(route_permission("GET", "/healthz", false), None);
        assert_eq!(route_permission("GET", "/metrics", true), None);
        assert_eq!(route_permission("GET", "/metrics", false), Some(Read));
        assert_eq!(
            route_permission("POST", "/ui/campaigns/{name}/runs", true),
            Some(StartRun)
        );
        assert!(!Role::Operator.allows(Administer));
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

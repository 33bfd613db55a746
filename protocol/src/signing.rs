//! Message signing keys: who may sign what, and the keyring that verifies.
//!
//! Every job and report is signed with Ed25519 (see [`crate::envelope`]). Two
//! kinds of signer exist, and a verifier holds only their *public* keys:
//!
//! - **scheduler** keys sign the jobs a run starts with (Discover, Execute);
//! - **worker** keys sign reports and the jobs a worker derives from a job it
//!   holds (the next Discover page, Poll).
//!
//! Ed25519 rather than HMAC because a verifier cannot forge with what it holds:
//! a stolen worker (or its key) cannot mint an Execute job, since workers accept
//! Execute only under a scheduler key, and the scheduler never needs a worker's
//! private key. Keys come from files or the environment, never from Redis or the
//! broker, and a keyring may hold several keys per kind, so a new key is trusted
//! everywhere before anyone signs with it (rotation without downtime).
//!
//! Text formats, one key per line (`#` starts a comment):
//!
//! ```text
//! signing key:  flotilla-signing-key v1 <scheduler|worker> <key id> <base64 32-byte seed>
//! keyring line: <scheduler|worker> <key id> <base64 32-byte public key>
//! ```

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use ed25519_dalek::{Signer as _, SigningKey, VerifyingKey};

/// The longest key id; ids travel in every message.
pub const MAX_KEY_ID_LEN: usize = 64;
/// The signature's length at the end of every envelope.
pub const SIGNATURE_LEN: usize = ed25519_dalek::SIGNATURE_LENGTH;
/// How old a message may be by default before it is refused as a replay. Long,
/// because a job waiting on a paused run keeps its scheduler signature (workers
/// cannot re-sign Execute jobs): a run paused longer than this has its waiting
/// jobs refused.
pub const DEFAULT_MAX_MESSAGE_AGE: Duration = Duration::from_secs(7 * 86_400);
/// How far in the future a signature's time may be (clock skew between hosts).
pub const MAX_CLOCK_SKEW: Duration = Duration::from_secs(300);
/// The largest key file or keyring read.
pub const MAX_KEY_TEXT_BYTES: usize = 64 * 1024;

const SIGNING_KEY_TAG: &str = "flotilla-signing-key";

/// Who signed a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SignerKind {
    Scheduler,
    Worker,
}

impl SignerKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Scheduler => "scheduler",
            Self::Worker => "worker",
        }
    }
}

impl std::str::FromStr for SignerKind {
    type Err = KeyError;

    fn from_str(text: &str) -> Result<Self, KeyError> {
        match text {
            "scheduler" => Ok(Self::Scheduler),
            "worker" => Ok(Self::Worker),
            other => Err(KeyError(format!(
                "key kind {other:?} is not one of: scheduler, worker"
            ))),
        }
    }
}

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[error("{0}")]
pub struct KeyError(pub String);

/// A key id: 1 to [`MAX_KEY_ID_LEN`] of `A-Z a-z 0-9 . _ -`.
pub fn check_key_id(id: &str) -> Result<(), KeyError> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
    if id.is_empty() || id.len() > MAX_KEY_ID_LEN || !id.chars().all(allowed) {
        return Err(KeyError(format!(
            "key id {id:?} must be 1 to {MAX_KEY_ID_LEN} characters of A-Z a-z 0-9 . _ -"
        )));
    }
    Ok(())
}

/// The private half: what a service signs with. Its Debug shows no secret.
#[derive(Clone)]
pub struct SigningIdentity {
    pub kind: SignerKind,
    pub id: String,
    key: SigningKey,
}

impl std::fmt::Debug for SigningIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningIdentity")
            .field("kind", &self.kind)
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl SigningIdentity {
    /// A new random key (from the operating system's generator).
    pub fn generate(kind: SignerKind, id: &str) -> Result<Self, KeyError> {
        check_key_id(id)?;
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed)
            .map_err(|error| KeyError(format!("no randomness for a new key: {error}")))?;
        Ok(Self {
            kind,
            id: id.to_string(),
            key: SigningKey::from_bytes(&seed),
        })
    }

    /// Reads `flotilla-signing-key v1 <kind> <id> <seed>`.
    pub fn parse(text: &str) -> Result<Self, KeyError> {
        let line = meaningful_lines(text)?
            .next()
            .ok_or_else(|| KeyError("the signing key is empty".into()))?;
        let fields: Vec<&str> = line.split_whitespace().collect();
        let [tag, version, kind, id, seed] = fields.as_slice() else {
            return Err(KeyError(format!(
                "a signing key is one line: {SIGNING_KEY_TAG} v1 <scheduler|worker> <key id> <base64 seed> ({} fields found)",
                fields.len()
            )));
        };
        if *tag != SIGNING_KEY_TAG || *version != "v1" {
            return Err(KeyError(format!(
                "a signing key starts with `{SIGNING_KEY_TAG} v1`, not `{tag} {version}`"
            )));
        }
        check_key_id(id)?;
        let seed: [u8; 32] = decode_32(seed, "seed")?;
        Ok(Self {
            kind: kind.parse()?,
            id: (*id).to_string(),
            key: SigningKey::from_bytes(&seed),
        })
    }

    /// The key file's text (secret: write it with mode 0600).
    pub fn to_secret_text(&self) -> String {
        format!(
            "{SIGNING_KEY_TAG} v1 {} {} {}\n",
            self.kind.as_str(),
            self.id,
            BASE64.encode(self.key.to_bytes())
        )
    }

    /// The keyring line that verifies this key.
    pub fn public_line(&self) -> String {
        format!(
            "{} {} {}",
            self.kind.as_str(),
            self.id,
            BASE64.encode(self.key.verifying_key().to_bytes())
        )
    }

    pub fn sign(&self, bytes: &[u8]) -> [u8; SIGNATURE_LEN] {
        self.key.sign(bytes).to_bytes()
    }

    fn trusted(&self) -> TrustedKey {
        TrustedKey {
            kind: self.kind,
            key: self.key.verifying_key(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TrustedKey {
    pub(crate) kind: SignerKind,
    pub(crate) key: VerifyingKey,
}

/// The keyrings of one deployment's two kinds of service.
#[derive(Debug, Clone)]
pub struct DeploymentKeys {
    pub scheduler: Keyring,
    pub worker: Keyring,
}

/// What a service signs with and whom it believes. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Keyring {
    signer: Option<Arc<SigningIdentity>>,
    trusted: Arc<HashMap<String, TrustedKey>>,
    /// Older messages are refused as replays.
    pub max_age: Duration,
}

impl Default for Keyring {
    /// Signs nothing and trusts nobody: every message is refused (fail closed).
    fn default() -> Self {
        Self {
            signer: None,
            trusted: Arc::new(HashMap::new()),
            max_age: DEFAULT_MAX_MESSAGE_AGE,
        }
    }
}

impl Keyring {
    /// Trusts the keys of a keyring text (`<kind> <id> <base64 public key>` lines).
    pub fn parse_trusted(text: &str) -> Result<Self, KeyError> {
        let mut trusted = HashMap::new();
        for (index, line) in meaningful_lines(text)?.enumerate() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let [kind, id, key] = fields.as_slice() else {
                return Err(KeyError(format!(
                    "keyring entry {} must be `<scheduler|worker> <key id> <base64 public key>`",
                    index + 1
                )));
            };
            let kind = kind.parse()?;
            check_key_id(id)?;
            let bytes = decode_32(key, "public key")?;
            let key = VerifyingKey::from_bytes(&bytes)
                .map_err(|_| KeyError(format!("key {id:?} is not an Ed25519 public key")))?;
            let entry = TrustedKey { kind, key };
            if trusted.insert((*id).to_string(), entry).is_some() {
                return Err(KeyError(format!(
                    "key id {id:?} appears twice in the keyring"
                )));
            }
        }
        Ok(Self {
            trusted: Arc::new(trusted),
            ..Self::default()
        })
    }

    /// Fresh keys for a deployment that lives in one process (the demo,
    /// tests): a scheduler key and a worker key, each keyring trusting both.
    pub fn ephemeral_deployment() -> Result<DeploymentKeys, KeyError> {
        let scheduler = SigningIdentity::generate(SignerKind::Scheduler, "ephemeral-scheduler")?;
        let worker = SigningIdentity::generate(SignerKind::Worker, "ephemeral-worker")?;
        // Trusts both; signs as the last one given.
        let worker_ring = Self::default()
            .signing_as(scheduler.clone())
            .signing_as(worker);
        Ok(DeploymentKeys {
            scheduler: worker_ring.clone().signing_as(scheduler),
            worker: worker_ring,
        })
    }

    /// The same trust, signing as `identity` (which it also trusts).
    pub fn signing_as(mut self, identity: SigningIdentity) -> Self {
        let mut trusted = (*self.trusted).clone();
        trusted.insert(identity.id.clone(), identity.trusted());
        self.trusted = Arc::new(trusted);
        self.signer = Some(Arc::new(identity));
        self
    }

    pub fn with_max_age(mut self, max_age: Duration) -> Self {
        self.max_age = max_age;
        self
    }

    pub fn signer(&self) -> Option<&SigningIdentity> {
        self.signer.as_deref()
    }

    /// The signing key, if it is one of `kind`: what a service of that kind
    /// checks before it starts.
    pub fn require_signer(&self, kind: SignerKind) -> Result<&SigningIdentity, KeyError> {
        match self.signer() {
            Some(signer) if signer.kind == kind => Ok(signer),
            Some(signer) => Err(KeyError(format!(
                "the signing key {:?} is a {} key; a {} signs with a {} key",
                signer.id,
                signer.kind.as_str(),
                kind.as_str(),
                kind.as_str()
            ))),
            None => Err(KeyError(format!(
                "no signing key: a {} signs everything it publishes; pass --signing-key-file (FLOTILLA_SIGNING_KEY_FILE) or set FLOTILLA_SIGNING_KEY (`flotilla keys generate --kind {}`)",
                kind.as_str(),
                kind.as_str()
            ))),
        }
    }

    /// The ids trusted, per kind (for startup logs).
    pub fn trusted_ids(&self) -> Vec<(SignerKind, String)> {
        let mut ids: Vec<_> = self
            .trusted
            .iter()
            .map(|(id, key)| (key.kind, id.clone()))
            .collect();
        ids.sort_by(|a, b| a.1.cmp(&b.1));
        ids
    }

    pub(crate) fn lookup(&self, id: &str) -> Option<TrustedKey> {
        self.trusted.get(id).copied()
    }
}

fn meaningful_lines(text: &str) -> Result<impl Iterator<Item = &str>, KeyError> {
    if text.len() > MAX_KEY_TEXT_BYTES {
        return Err(KeyError(format!(
            "key text is {} bytes; at most {MAX_KEY_TEXT_BYTES} are read",
            text.len()
        )));
    }
    Ok(text
        .split(['\n', ';'])
        .map(|line| line.split('#').next().unwrap_or("").trim())
        .filter(|line| !line.is_empty()))
}

fn decode_32(text: &str, what: &str) -> Result<[u8; 32], KeyError> {
    BASE64
        .decode(text)
        .ok()
        .and_then(|bytes| <[u8; 32]>::try_from(bytes).ok())
        .ok_or_else(|| KeyError(format!("the {what} must be 32 bytes in base64")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_survive_their_text_forms_and_hide_their_secret() {
        let identity = SigningIdentity::generate(SignerKind::Scheduler, "sched-2026-12").unwrap();
        let again = SigningIdentity::parse(&identity.to_secret_text()).unwrap();
        assert_eq!(again.public_line(), identity.public_line());
        assert_eq!(again.kind, SignerKind::Scheduler);
        let secret = identity.to_secret_text();
        let seed = secret.split_whitespace().last().unwrap();
        assert!(!format!("{identity:?}").contains(seed));
        let ring =
            Keyring::parse_trusted(&format!("# ring\n{}\n", identity.public_line())).unwrap();
        assert_eq!(
            ring.trusted_ids(),
            vec![(SignerKind::Scheduler, "sched-2026-12".to_string())]
        );
        assert!(ring.signer().is_none());
    }

    #[test]
    fn a_deployments_services_sign_as_their_kind_and_trust_each_other() {
        let keys = Keyring::ephemeral_deployment().unwrap();
        assert_eq!(keys.scheduler.signer().unwrap().kind, SignerKind::Scheduler);
        assert_eq!(keys.worker.signer().unwrap().kind, SignerKind::Worker);
        for ring in [&keys.scheduler, &keys.worker] {
            assert_eq!(ring.trusted_ids().len(), 2);
        }
    }

    #[test]
    fn bad_key_text_names_what_is_wrong() {
        let error = Keyring::parse_trusted("admin k1 AAAA").unwrap_err();
        assert!(error.0.contains("\"admin\""), "{error}");
        let error = Keyring::parse_trusted("worker k/1 AAAA").unwrap_err();
        assert!(error.0.contains("key id"), "{error}");
        let error = Keyring::parse_trusted("worker k1 AAAA").unwrap_err();
        assert!(error.0.contains("32 bytes"), "{error}");
        let error = SigningIdentity::parse("worker k1 AAAA").unwrap_err();
        assert!(error.0.contains("flotilla-signing-key v1"), "{error}");
        let one = SigningIdentity::generate(SignerKind::Worker, "w1").unwrap();
        let twice = format!("{}\n{}", one.public_line(), one.public_line());
        assert!(
            Keyring::parse_trusted(&twice)
                .unwrap_err()
                .0
                .contains("twice")
        );
    }
}

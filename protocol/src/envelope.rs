//! The wire envelope: a header, bincode, and an Ed25519 signature over both.
//!
//! ```text
//! b"FLT" | format version (1 byte) | kind (1 byte) | signed at (u64 BE, Unix ms)
//!        | key id length (1 byte) | key id | bincode (standard config) | signature (64 bytes)
//! ```
//! The signature covers every byte before it, the header included, so neither
//! the kind, the time nor the key id can be changed. [`open`] checks, in order:
//! the header's shape, that the key id is trusted, the signature, the age, and
//! only then decodes the body: unauthenticated bytes never reach the decoder.
//! A consumer that meets a version it does not know rejects the message to the
//! dead-letter queue instead of guessing, so a rolling upgrade never misreads work.
//! Decoding never panics: garbage, truncated bytes, a wrong kind, an unknown
//! version or trailing bytes all come back as an [`EnvelopeError`], and declared
//! lengths are capped by [`MAX_MESSAGE_BYTES`] before anything is allocated.

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::job::{Job, UnixMillis};
use crate::report::{Report, Reports};
use crate::signing::{Keyring, SIGNATURE_LEN, SignerKind, SigningIdentity};

const MAGIC: &[u8; 3] = b"FLT";
/// Bump when a message type changes shape; old consumers then dead-letter new messages.
/// Version 2: signed (version 1 messages were not, and are refused).
/// Version 3: a job's run context carries the run's output logging.
/// Version 4: an Execute job carries the selection its batch is re-checked
/// against; a selection may be tagged instances narrowed by an event.
/// Version 5: a step carries the document version SendCommand runs.
/// Version 6: per-target windows — a Discover job carries the window tag, a
/// discovered target its window, an Execute job its batch's window.
pub const FORMAT_VERSION: u8 = 6;
/// Magic, version, kind, signed-at, key id length: what precedes the key id.
const HEADER_LEN: usize = MAGIC.len() + 2 + 8 + 1;
/// No job or report comes close; a larger declared size is garbage.
pub const MAX_MESSAGE_BYTES: usize = 4 * 1024 * 1024;

/// Which message type follows the header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageKind {
    Job = 1,
    Report = 2,
    /// Several reports ([`Reports`]); the reports queue carries both kinds.
    Reports = 3,
}

/// A type that travels in an envelope.
pub trait Message: Serialize + DeserializeOwned {
    const KIND: MessageKind;
}

impl Message for Job {
    const KIND: MessageKind = MessageKind::Job;
}

impl Message for Report {
    const KIND: MessageKind = MessageKind::Report;
}

impl Message for Reports {
    const KIND: MessageKind = MessageKind::Reports;
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EnvelopeError {
    #[error("message is {0} bytes, shorter than the {HEADER_LEN}-byte envelope header")]
    TooShort(usize),
    #[error("message does not start with the flotilla envelope magic")]
    BadMagic,
    #[error(
        "message has envelope format version {found}; this build reads version {FORMAT_VERSION}"
    )]
    UnsupportedVersion { found: u8 },
    #[error("message is of kind {found}, expected {expected:?}")]
    WrongKind { expected: MessageKind, found: u8 },
    #[error("message body is malformed: {0}")]
    Malformed(String),
    #[error("message has {0} bytes after its body")]
    TrailingBytes(usize),
    #[error("message is larger than {MAX_MESSAGE_BYTES} bytes")]
    TooLarge,
    #[error("message is signed with key {0:?}, which this service does not trust")]
    UnknownKey(String),
    #[error("message signature does not verify (signed with key {0:?})")]
    BadSignature(String),
    #[error("message was signed {age_ms} ms ago; at most {max_ms} ms old messages are accepted")]
    Expired { age_ms: u64, max_ms: u64 },
    #[error("message claims to be signed {ahead_ms} ms in the future")]
    FromTheFuture { ahead_ms: u64 },
    #[error("this service has no signing key; it cannot publish")]
    NoSigningKey,
}

impl EnvelopeError {
    /// Never: the same bytes will fail the same way. Dead-letter them.
    pub fn is_retryable(&self) -> bool {
        false
    }

    /// The `reason` label of the rejected-message metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::UnknownKey(_) => "unknown_key",
            Self::BadSignature(_) => "bad_signature",
            Self::Expired { .. } => "expired",
            Self::FromTheFuture { .. } => "from_the_future",
            Self::UnsupportedVersion { .. } => "unsupported_version",
            Self::NoSigningKey => "no_signing_key",
            Self::TooShort(_)
            | Self::BadMagic
            | Self::WrongKind { .. }
            | Self::Malformed(_)
            | Self::TrailingBytes(_)
            | Self::TooLarge => "malformed",
        }
    }
}

/// A message whose signature verified, and who signed it.
#[derive(Debug, Clone, PartialEq)]
pub struct Opened<M> {
    pub message: M,
    pub signer: SignerKind,
    pub key_id: String,
    pub signed_at: UnixMillis,
}

fn config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<MAX_MESSAGE_BYTES>()
}

/// Encodes `message` and signs it as `identity`, at `now`.
pub fn seal<M: Message>(
    message: &M,
    identity: &SigningIdentity,
    now: UnixMillis,
) -> Result<Vec<u8>, EnvelopeError> {
    let mut bytes = Vec::with_capacity(256);
    bytes.extend_from_slice(MAGIC);
    bytes.push(FORMAT_VERSION);
    bytes.push(M::KIND as u8);
    bytes.extend_from_slice(&now.0.to_be_bytes());
    let id_len = u8::try_from(identity.id.len()).map_err(|_| EnvelopeError::TooLarge)?;
    bytes.push(id_len);
    bytes.extend_from_slice(identity.id.as_bytes());
    let body = bincode::serde::encode_to_vec(message, config())
        .map_err(|error| EnvelopeError::Malformed(error.to_string()))?;
    if body.len() > MAX_MESSAGE_BYTES {
        return Err(EnvelopeError::TooLarge);
    }
    bytes.extend_from_slice(&body);
    let signature = identity.sign(&bytes);
    bytes.extend_from_slice(&signature);
    Ok(bytes)
}

/// [`seal`] with the keyring's signing key.
pub fn seal_with<M: Message>(
    message: &M,
    keyring: &Keyring,
    now: UnixMillis,
) -> Result<Vec<u8>, EnvelopeError> {
    let identity = keyring.signer().ok_or(EnvelopeError::NoSigningKey)?;
    seal(message, identity, now)
}

/// Verifies and decodes a message: see the module's order of checks.
pub fn open<M: Message>(
    bytes: &[u8],
    keyring: &Keyring,
    now: UnixMillis,
) -> Result<Opened<M>, EnvelopeError> {
    if bytes.len() > MAX_MESSAGE_BYTES + 512 {
        return Err(EnvelopeError::TooLarge);
    }
    if bytes.len() >= MAGIC.len() && &bytes[..MAGIC.len()] != MAGIC {
        return Err(EnvelopeError::BadMagic);
    }
    if bytes.len() > MAGIC.len() && bytes[MAGIC.len()] != FORMAT_VERSION {
        return Err(EnvelopeError::UnsupportedVersion {
            found: bytes[MAGIC.len()],
        });
    }
    if bytes.len() < HEADER_LEN + SIGNATURE_LEN {
        return Err(EnvelopeError::TooShort(bytes.len()));
    }
    let kind = bytes[MAGIC.len() + 1];
    if kind != M::KIND as u8 {
        return Err(EnvelopeError::WrongKind {
            expected: M::KIND,
            found: kind,
        });
    }
    let mut signed_at = [0u8; 8];
    signed_at.copy_from_slice(&bytes[MAGIC.len() + 2..MAGIC.len() + 10]);
    let signed_at = u64::from_be_bytes(signed_at);
    let id_len = usize::from(bytes[HEADER_LEN - 1]);
    let (signed, signature) = bytes.split_at(bytes.len() - SIGNATURE_LEN);
    if signed.len() < HEADER_LEN + id_len {
        return Err(EnvelopeError::TooShort(bytes.len()));
    }
    let key_id = String::from_utf8_lossy(&signed[HEADER_LEN..HEADER_LEN + id_len]).into_owned();
    let trusted = keyring
        .lookup(&key_id)
        .ok_or_else(|| EnvelopeError::UnknownKey(key_id.clone()))?;
    let signature = ed25519_dalek::Signature::from_slice(signature)
        .map_err(|_| EnvelopeError::BadSignature(key_id.clone()))?;
    trusted
        .key
        .verify_strict(signed, &signature)
        .map_err(|_| EnvelopeError::BadSignature(key_id.clone()))?;
    let max_ms = u64::try_from(keyring.max_age.as_millis()).unwrap_or(u64::MAX);
    let age_ms = now.0.saturating_sub(signed_at);
    if age_ms > max_ms {
        return Err(EnvelopeError::Expired { age_ms, max_ms });
    }
    let skew_ms = u64::try_from(crate::signing::MAX_CLOCK_SKEW.as_millis()).unwrap_or(0);
    let ahead_ms = signed_at.saturating_sub(now.0);
    if ahead_ms > skew_ms {
        return Err(EnvelopeError::FromTheFuture { ahead_ms });
    }
    let body = &signed[HEADER_LEN + id_len..];
    if body.len() > MAX_MESSAGE_BYTES {
        return Err(EnvelopeError::TooLarge);
    }
    let (message, read) = bincode::serde::decode_from_slice::<M, _>(body, config())
        .map_err(|error| EnvelopeError::Malformed(error.to_string()))?;
    if read != body.len() {
        return Err(EnvelopeError::TrailingBytes(body.len() - read));
    }
    Ok(Opened {
        message,
        signer: trusted.kind,
        key_id,
        signed_at: UnixMillis(signed_at),
    })
}

//! The wire envelope: a magic, a format version and a kind byte in front of bincode.
//!
//! ```text
//! b"FLT" | format version (1 byte) | kind (1 byte) | bincode (standard config)
//! ```
//! A consumer that meets a version it does not know rejects the message to the
//! dead-letter queue instead of guessing, so a rolling upgrade never misreads work.
//! Decoding never panics: garbage, truncated bytes, a wrong kind, an unknown
//! version or trailing bytes all come back as an [`EnvelopeError`], and declared
//! lengths are capped by [`MAX_MESSAGE_BYTES`] before anything is allocated.

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::job::Job;
use crate::report::Report;

const MAGIC: &[u8; 3] = b"FLT";
/// Bump when a message type changes shape; old consumers then dead-letter new messages.
pub const FORMAT_VERSION: u8 = 1;
const HEADER_LEN: usize = MAGIC.len() + 2;
/// No job or report comes close; a larger declared size is garbage.
pub const MAX_MESSAGE_BYTES: usize = 4 * 1024 * 1024;

/// Which message type follows the header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageKind {
    Job = 1,
    Report = 2,
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
}

impl EnvelopeError {
    /// Never: the same bytes will fail the same way. Dead-letter them.
    pub fn is_retryable(&self) -> bool {
        false
    }
}

fn config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<MAX_MESSAGE_BYTES>()
}

pub fn encode<M: Message>(message: &M) -> Result<Vec<u8>, EnvelopeError> {
    let mut bytes = Vec::with_capacity(256);
    bytes.extend_from_slice(MAGIC);
    bytes.push(FORMAT_VERSION);
    bytes.push(M::KIND as u8);
    let body = bincode::serde::encode_to_vec(message, config())
        .map_err(|error| EnvelopeError::Malformed(error.to_string()))?;
    if body.len() > MAX_MESSAGE_BYTES {
        return Err(EnvelopeError::TooLarge);
    }
    bytes.extend_from_slice(&body);
    Ok(bytes)
}

pub fn decode<M: Message>(bytes: &[u8]) -> Result<M, EnvelopeError> {
    if bytes.len() < HEADER_LEN {
        return Err(EnvelopeError::TooShort(bytes.len()));
    }
    let (header, body) = bytes.split_at(HEADER_LEN);
    if &header[..MAGIC.len()] != MAGIC {
        return Err(EnvelopeError::BadMagic);
    }
    let version = header[MAGIC.len()];
    if version != FORMAT_VERSION {
        return Err(EnvelopeError::UnsupportedVersion { found: version });
    }
    let kind = header[MAGIC.len() + 1];
    if kind != M::KIND as u8 {
        return Err(EnvelopeError::WrongKind {
            expected: M::KIND,
            found: kind,
        });
    }
    if body.len() > MAX_MESSAGE_BYTES {
        return Err(EnvelopeError::TooLarge);
    }
    let (message, read) = bincode::serde::decode_from_slice::<M, _>(body, config())
        .map_err(|error| EnvelopeError::Malformed(error.to_string()))?;
    if read != body.len() {
        return Err(EnvelopeError::TrailingBytes(body.len() - read));
    }
    Ok(message)
}

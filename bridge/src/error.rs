//! The one error type of the bridge. Variants carry context (ids, sizes,
//! addresses) but never key material or plaintext.

use thiserror::Error;

/// Everything that can go wrong in sessions, stores and the pipeline.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum Error {
    #[error("invalid {what}: {reason}")]
    InvalidKey {
        what: &'static str,
        reason: &'static str,
    },
    #[error("bad signature on {0}")]
    BadSignature(&'static str),
    #[error("message too short: {len} bytes")]
    MessageTooShort { len: usize },
    /// The version byte (kept whole) announces a message version other
    /// than 3 in its high nibble: a legacy (< 3) or PQXDH (4) message.
    #[error("unsupported message version {version} (version byte {byte:#04x}); only version 3 is spoken", version = .0 >> 4, byte = .0)]
    UnsupportedVersion(u8),
    #[error("malformed {what}: {reason}")]
    Malformed { what: &'static str, reason: String },
    #[error("message authentication failed")]
    BadMac,
    #[error("ciphertext does not decrypt (bad padding or length)")]
    BadCiphertext,
    #[error("duplicate message: chain counter {counter} already used")]
    DuplicateMessage { counter: u32 },
    #[error("message counter {counter} jumps {jump} past the chain (limit {limit})")]
    TooFarInFuture { counter: u32, jump: u32, limit: u32 },
    #[error("no session with {0}")]
    NoSession(String),
    #[error("no session state decrypts the message from {address} ({tried} tried)")]
    NoMatchingSession { address: String, tried: usize },
    #[error("untrusted identity for {0}")]
    UntrustedIdentity(String),
    #[error("unknown prekey id {0}")]
    UnknownPreKey(u32),
    #[error("unknown signed prekey id {0}")]
    UnknownSignedPreKey(u32),
    #[error("store: {0}")]
    Store(String),
    #[error("store file {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("store file {path} cannot be opened: wrong key or corrupted")]
    StoreDecrypt { path: String },
    #[error("store file {path}: unsupported snapshot version {version}")]
    SnapshotVersion { path: String, version: u8 },
    #[error("assistant: {0}")]
    Assistant(#[from] AssistantError),
}

/// What an [`crate::Assistant`] reports when it cannot produce a reply.
#[derive(Debug, Error)]
#[error("{0}")]
pub struct AssistantError(pub String);

pub type Result<T, E = Error> = std::result::Result<T, E>;

pub(crate) fn malformed(what: &'static str, reason: impl Into<String>) -> Error {
    Error::Malformed {
        what,
        reason: reason.into(),
    }
}

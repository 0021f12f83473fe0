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
    /// A bound of [`crate::Limits`] would be exceeded; nothing changed.
    #[error("limit reached: {what} (at most {limit})")]
    LimitExceeded { what: &'static str, limit: usize },
    /// A record the store's log names has no file.
    #[error("store record {path} is missing")]
    StoreRecordMissing { path: String },
    /// A record file holds another record (swapped or moved).
    #[error("store record {path} holds another record")]
    StoreRecordMismatch { path: String },
    /// A record file (or the log) is older than the rest of the store.
    #[error("store file {path} was rolled back: generation {found}, expected {expected}")]
    StoreRollback {
        path: String,
        found: u64,
        expected: u64,
    },
    /// Another process has the state directory open.
    #[error("store directory {path} is in use by another process")]
    StoreLocked { path: String },
    /// No unanswered message with this number in the conversation.
    #[error("no unanswered turn {turn} from {peer}")]
    UnknownTurn { peer: String, turn: u64 },
    /// Replies go out in order: turn `oldest` of the same peer comes first.
    #[error("turn {turn} from {peer} answered before turn {oldest}")]
    TurnOutOfOrder {
        peer: String,
        turn: u64,
        oldest: u64,
    },
}

/// What an [`crate::Assistant`] reports when it cannot produce a reply.
/// Like [`Error`], it never carries message text.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum AssistantError {
    /// The newest message alone does not fit the model's context: it gets
    /// a short refusal instead of an answer.
    #[error("the message is {tokens} tokens; the context leaves room for {available}")]
    MessageTooLong { tokens: usize, available: usize },
    /// The engine failed.
    #[error("engine: {0}")]
    Engine(#[source] Box<dyn std::error::Error + Send + Sync>),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

pub(crate) fn malformed(what: &'static str, reason: impl Into<String>) -> Error {
    Error::Malformed {
        what,
        reason: reason.into(),
    }
}

//! The one error type of the bridge. Variants carry context (ids, sizes,
//! addresses) but never key material or plaintext.

use thiserror::Error;

/// Everything that can go wrong in sessions, stores and the pipeline.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum Error {
    /// Bytes meant as a key are not one: wrong length, a public key whose
    /// type byte is not libsignal's 0x05, or a non-canonical encoding.
    #[error("invalid {what}: {reason}")]
    InvalidKey {
        /// Which key was being read (e.g. "public key").
        what: &'static str,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// An XEdDSA signature does not verify under the identity key; the
    /// field names what was signed (a signed prekey in a bundle).
    #[error("bad signature on {0}")]
    BadSignature(&'static str),
    /// A serialized message is too short to hold its version byte (and, for
    /// a whisper message, its 8-byte MAC).
    #[error("message too short: {len} bytes")]
    MessageTooShort {
        /// The length received, in bytes.
        len: usize,
    },
    /// The version byte (kept whole) announces a message version other
    /// than 3 in its high nibble: a legacy (< 3) or PQXDH (4) message.
    #[error("unsupported message version {version} (version byte {byte:#04x}); only version 3 is spoken", version = .0 >> 4, byte = .0)]
    UnsupportedVersion(u8),
    /// Bytes that do not decode as what they claim to be: a protobuf
    /// message, envelope, bundle or stored record with a missing field, a
    /// wrong length or trailing garbage.
    #[error("malformed {what}: {reason}")]
    Malformed {
        /// The kind of thing being decoded.
        what: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// The message's MAC does not verify under the session's keys: forged,
    /// altered, or meant for another session. Nothing was changed.
    #[error("message authentication failed")]
    BadMac,
    /// The MAC verified but the AES-CBC body does not decrypt to validly
    /// padded plaintext.
    #[error("ciphertext does not decrypt (bad padding or length)")]
    BadCiphertext,
    /// The message key for this counter was already used (a replay, or a
    /// message delivered twice). The session is unchanged.
    #[error("duplicate message: chain counter {counter} already used")]
    DuplicateMessage {
        /// The message's counter in its sending chain.
        counter: u32,
    },
    /// Decrypting would skip more message keys than allowed
    /// ([`crate::MAX_FORWARD_JUMPS`], or what is left of
    /// [`crate::MAX_CHAIN_STEPS_PER_MESSAGE`]); refused before any work.
    #[error("message counter {counter} jumps {jump} past the chain (limit {limit})")]
    TooFarInFuture {
        /// The message's counter in its sending chain.
        counter: u32,
        /// How many keys past the chain's current index it lies.
        jump: u32,
        /// The most keys that could have been skipped.
        limit: u32,
    },
    /// There is no session with this address (the field): nothing to
    /// encrypt to, decrypt a ratchet message with, or take a safety number
    /// of.
    #[error("no session with {0}")]
    NoSession(String),
    /// Neither the current session state nor any archived one decrypts the
    /// message (each failed with its own error).
    #[error("no session state decrypts the message from {address} ({tried} tried)")]
    NoMatchingSession {
        /// The sender's address.
        address: String,
        /// How many session states were tried.
        tried: usize,
    },
    /// The peer's identity key differs from the one trusted for this
    /// address (the field); accept it explicitly to continue.
    #[error("untrusted identity for {0}")]
    UntrustedIdentity(String),
    /// A prekey message names a one-time prekey id the store does not hold
    /// (already used, or never published).
    #[error("unknown prekey id {0}")]
    UnknownPreKey(u32),
    /// A prekey message names a signed prekey id the store does not hold.
    #[error("unknown signed prekey id {0}")]
    UnknownSignedPreKey(u32),
    /// A store invariant failed (e.g. a nested transaction, a corrupt log
    /// entry); the message says which.
    #[error("store: {0}")]
    Store(String),
    /// Reading or writing a file of the state directory failed.
    #[error("store file {path}: {source}")]
    Io {
        /// The file concerned.
        path: String,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// A sealed file does not open: the [`crate::StorageKey`] is wrong or
    /// a byte of the file changed.
    #[error("store file {path} cannot be opened: wrong key or corrupted")]
    StoreDecrypt {
        /// The file concerned.
        path: String,
    },
    /// A stored file was written by a format version this build does not
    /// read.
    #[error("store file {path}: unsupported snapshot version {version}")]
    SnapshotVersion {
        /// The file concerned.
        path: String,
        /// The version byte found.
        version: u8,
    },
    /// The [`crate::Assistant`] could not produce a reply.
    #[error("assistant: {0}")]
    Assistant(#[from] AssistantError),
    /// A bound of [`crate::Limits`] would be exceeded; nothing changed.
    #[error("limit reached: {what} (at most {limit})")]
    LimitExceeded {
        /// Which bound.
        what: &'static str,
        /// Its value.
        limit: usize,
    },
    /// A record the store's log names has no file.
    #[error("store record {path} is missing")]
    StoreRecordMissing {
        /// The record file expected.
        path: String,
    },
    /// A record file holds another record (swapped or moved).
    #[error("store record {path} holds another record")]
    StoreRecordMismatch {
        /// The record file concerned.
        path: String,
    },
    /// A record file (or the log) is older than the rest of the store.
    #[error("store file {path} was rolled back: generation {found}, expected {expected}")]
    StoreRollback {
        /// The file concerned.
        path: String,
        /// The generation the file holds.
        found: u64,
        /// The generation the log requires.
        expected: u64,
    },
    /// Another process has the state directory open.
    #[error("store directory {path} is in use by another process")]
    StoreLocked {
        /// The state directory.
        path: String,
    },
    /// No unanswered message with this number in the conversation.
    #[error("no unanswered turn {turn} from {peer}")]
    UnknownTurn {
        /// The peer's address.
        peer: String,
        /// The turn number asked for.
        turn: u64,
    },
    /// Replies go out in order: turn `oldest` of the same peer comes first.
    #[error("turn {turn} from {peer} answered before turn {oldest}")]
    TurnOutOfOrder {
        /// The peer's address.
        peer: String,
        /// The turn that was answered.
        turn: u64,
        /// The oldest unanswered turn, which must go first.
        oldest: u64,
    },
}

/// What an [`crate::Assistant`] reports when it cannot produce a reply.
/// Like [`enum@Error`], it never carries message text.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum AssistantError {
    /// The newest message alone does not fit the model's context: it gets
    /// a short refusal instead of an answer.
    #[error("the message is {tokens} tokens; the context leaves room for {available}")]
    MessageTooLong {
        /// The message's length in tokens.
        tokens: usize,
        /// The tokens the context has left for it.
        available: usize,
    },
    /// The engine failed.
    #[error("engine: {0}")]
    Engine(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// The bridge's result type; the error defaults to [`enum@Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

pub(crate) fn malformed(what: &'static str, reason: impl Into<String>) -> Error {
    Error::Malformed {
        what,
        reason: reason.into(),
    }
}

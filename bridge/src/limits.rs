//! Every bound on what a device keeps or accepts, in one place (the README
//! lists them too). Past a bound the operation is refused with
//! [`crate::Error::LimitExceeded`] and nothing changes; the server keeps
//! running. Where the protocol itself bounds growth, the constants are
//! libsignal's ([`crate::MAX_SKIPPED_KEYS_PER_CHAIN`],
//! [`crate::MAX_RECEIVER_CHAINS`], [`crate::ARCHIVED_STATES_MAX`],
//! [`crate::MAX_FORWARD_JUMPS`]).

use std::time::Duration;

/// Bounds of one [`crate::AssistantDevice`] and its transports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Peers with a session or a trusted identity (one conversation each).
    /// A message from a new peer beyond this is refused before it is
    /// decrypted; [`crate::AssistantDevice::forget_peer`] makes room.
    pub max_peers: usize,
    /// Answered turns kept per conversation; older ones are dropped from
    /// the store (the model never sees that far back anyway).
    pub max_turns_per_conversation: usize,
    /// Messages received but not yet answered, per conversation and in
    /// all. A message past either is refused before it is decrypted (the
    /// sender's transport retries it later).
    pub max_unanswered_per_conversation: usize,
    /// The same bound over all conversations together.
    pub max_unanswered: usize,
    /// Replies not yet acknowledged by the transport. When full, new
    /// messages are refused until replies are acknowledged.
    pub max_outbox: usize,
    /// A decrypted message longer than this is not stored: it is answered
    /// with an encrypted refusal.
    pub max_message_bytes: usize,
    /// A session record (current and archived states with their skipped
    /// message keys) that would grow past this is refused: the message
    /// that would grow it does not decrypt and the session stays as it was.
    pub max_session_record_bytes: usize,
    /// One-time prekeys stored (handed out or not). Minting past this
    /// drops the oldest handed out and never used.
    pub max_one_time_prekeys: usize,
    /// One-time prekeys minted at once when none is left to hand out.
    pub one_time_prekey_batch: usize,
    /// Signed prekeys kept: the current one and the previous ones still in
    /// their grace period.
    pub max_signed_prekeys: usize,
    /// Age at which a signed prekey is replaced when a bundle is published.
    pub signed_prekey_rotation: Duration,
    /// How long a replaced signed prekey still accepts new sessions.
    pub signed_prekey_grace: Duration,
    /// Identities offered by peers whose identity changed, remembered (in
    /// memory only) so the application can show and accept them.
    pub max_offered_identities: usize,
    /// `sotto bridge serve`: the longest request line; a longer one is
    /// skipped without being buffered and answered with an error.
    pub max_line_bytes: usize,
    /// `sotto bridge serve --socket`: clients connected at once.
    pub max_connections: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_peers: 1024,
            max_turns_per_conversation: 512,
            max_unanswered_per_conversation: 32,
            max_unanswered: 256,
            max_outbox: 1024,
            max_message_bytes: 32 << 10,
            max_session_record_bytes: 1 << 20,
            max_one_time_prekeys: 200,
            one_time_prekey_batch: 20,
            max_signed_prekeys: 4,
            signed_prekey_rotation: Duration::from_secs(7 * 24 * 3600),
            signed_prekey_grace: Duration::from_secs(30 * 24 * 3600),
            max_offered_identities: 64,
            max_line_bytes: 256 << 10,
            max_connections: 16,
        }
    }
}

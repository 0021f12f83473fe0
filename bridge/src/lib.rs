//! sotto-bridge: Signal-protocol (v3, libsignal wire-compatible) sessions,
//! stores, conversations and the decrypt -> infer -> encrypt pipeline.
//!
//! - Protocol: XEdDSA over X25519 identity keys, X3DH
//!   ([`process_prekey_bundle`]), the Double Ratchet ([`message_encrypt`],
//!   [`message_decrypt`]) with libsignal's constants, limits and wire format;
//!   checked live against Signal's libsignal 0.72.1 and python-axolotl 0.2.3
//!   (tests/tests/bridge_libsignal.rs, tests/tests/bridge_axolotl.rs).
//! - The work one unauthenticated message can cause is bounded (see
//!   [`MAX_CHAIN_STEPS_PER_MESSAGE`] and the bound stated in session.rs).
//! - Decryption runs on a copy of the session record: a rejected message
//!   leaves the stores untouched.
//! - Stores: one trait per record kind, in memory ([`InMemProtocolStore`]) or
//!   sealed at rest ([`FileProtocolStore`], [`FileConversationStore`]:
//!   XChaCha20-Poly1305 under a [`StorageKey`], atomic replace).
//! - Pipeline: [`Bridge::handle`] decrypts, appends the user turn to that
//!   sender's conversation, asks the [`Assistant`], encrypts the reply.
#![forbid(unsafe_code)]

mod conversation;
mod error;
mod file_store;
mod fingerprint;
#[doc(hidden)]
pub mod fuzzing;
mod kdf;
mod keys;
#[doc(hidden)]
pub mod known_answer;
mod message;
mod pipeline;
mod prekeys;
mod proto;
mod ratchet;
mod sealed;
mod session;
mod state;
mod store;
mod work;

pub use conversation::{
    ConversationId, ConversationStore, FileConversationStore, InMemConversationStore, Role, Turn,
};
pub use error::{AssistantError, Error, Result};
pub use file_store::FileProtocolStore;
pub use fingerprint::safety_number;
pub use keys::{IdentityKey, IdentityKeyPair, KeyPair, PrivateKey, PublicKey, SIGNATURE_LEN};
pub use message::{
    CiphertextMessage, MessageKind, PreKeySignalMessage, SignalMessage, VERSION_BYTE,
};
pub use pipeline::{Assistant, Bridge, Envelope};
pub use prekeys::{PreKeyBundle, PreKeyRecord, SignedPreKeyRecord};
pub use sealed::StorageKey;
pub use session::{
    message_decrypt, message_decrypt_prekey, message_decrypt_signal, message_encrypt,
    process_prekey_bundle,
};
pub use state::{
    SessionRecord, SessionState, ARCHIVED_STATES_MAX, MAX_CHAIN_STEPS_PER_MESSAGE,
    MAX_FORWARD_JUMPS, MAX_RECEIVER_CHAINS, MAX_SKIPPED_KEYS_PER_CHAIN,
};
pub use store::{
    IdentityKeyStore, InMemIdentityKeyStore, InMemPreKeyStore, InMemProtocolStore,
    InMemSessionStore, InMemSignedPreKeyStore, PreKeyStore, ProtocolAddress, ProtocolStore,
    SessionStore, SignedPreKeyStore,
};

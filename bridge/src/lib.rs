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
//! - Stores: one trait per record kind, in memory ([`InMemProtocolStore`]).
//! - Device: [`AssistantDevice`] is what apps and `sotto bridge serve` run:
//!   a state directory sealed under a [`StorageKey`] (one
//!   XChaCha20-Poly1305 record per peer identity, session, prekey, turn;
//!   commits cost O(records changed), are atomic, and detect rollback and
//!   swapped or missing records: see `record_dir`), prekey publication and
//!   rotation, explicit acceptance of a changed peer identity, and a
//!   journal so a decrypted message is answered exactly once across
//!   crashes. Every bound it keeps is in [`Limits`].
//! - Pipeline: [`Bridge::handle`] is the minimal in-memory pipeline:
//!   decrypt, append the user turn, ask the [`Assistant`], encrypt.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod conversation;
mod device;
mod device_store;
mod error;
mod fingerprint;
#[doc(hidden)]
pub mod fuzzing;
mod journal;
mod kdf;
mod keys;
#[doc(hidden)]
pub mod known_answer;
mod limits;
mod message;
mod pipeline;
mod prekeys;
mod proto;
mod ratchet;
mod record_dir;
mod records;
mod sealed;
mod session;
mod state;
mod store;
mod work;

pub use conversation::{ConversationId, ConversationStore, InMemConversationStore, Role, Turn};
pub use device::{AssistantDevice, DeviceOptions, OutgoingReply, Prompt, Received};
pub use device_store::DeviceStore;
pub use error::{AssistantError, Error, Result};
pub use fingerprint::safety_number;
pub use journal::{Refusal, TurnRef};
pub use keys::{IdentityKey, IdentityKeyPair, KeyPair, PrivateKey, PublicKey, SIGNATURE_LEN};
pub use limits::Limits;
pub use message::{
    CiphertextMessage, MessageKind, PreKeySignalMessage, SignalMessage, VERSION_BYTE,
};
pub use pipeline::{Assistant, Bridge, Envelope};
pub use prekeys::{PreKeyBundle, PreKeyRecord, SignedPreKeyRecord};
pub use records::StepHook;
pub use sealed::{write_file_atomically, Sealer, StorageKey, KEY_CHECK_LEN, SEAL_OVERHEAD};
pub use session::{message_decrypt, message_encrypt, process_prekey_bundle};
pub use state::{
    SessionRecord, SessionState, ARCHIVED_STATES_MAX, MAX_CHAIN_STEPS_PER_MESSAGE,
    MAX_FORWARD_JUMPS, MAX_RECEIVER_CHAINS, MAX_SKIPPED_KEYS_PER_CHAIN,
};
pub use store::{
    IdentityKeyStore, InMemProtocolStore, PreKeyStore, ProtocolAddress, ProtocolStore,
    SessionStore, SignedPreKeyStore,
};

//! Entry points to the key schedule and wire encoder for known-answer
//! tests against other implementations (tests/tests/bridge_kat.rs). Not
//! part of the supported API.

use crate::kdf::{self, ChainKey, RootKey};
use crate::keys::{IdentityKey, KeyPair, PrivateKey, PublicKey};
use crate::message::{PreKeySignalMessage, SignalMessage};

/// `(cipher_key, mac_key, iv, next_chain_key)` for a chain key at index 0.
pub fn chain_step(chain_key: [u8; 32]) -> ([u8; 32], [u8; 32], [u8; 16], [u8; 32]) {
    let ck = ChainKey {
        key: chain_key,
        index: 0,
    };
    let mk = ck.message_keys();
    (mk.cipher_key, mk.mac_key, mk.iv, ck.next().key)
}

/// HKDF(`WhisperText`) over a master secret: `root || chain`.
pub fn whisper_text(master_secret: &[u8]) -> [u8; 64] {
    let (root, chain) = kdf::derive_initial_keys(master_secret);
    let mut out = [0u8; 64];
    out[..32].copy_from_slice(&root.0);
    out[32..].copy_from_slice(&chain.key);
    out
}

/// One `WhisperRatchet` root step: `(new_root, chain_key)`.
pub fn root_step(
    root: [u8; 32],
    their_ratchet: &PublicKey,
    our_ratchet_private: &[u8; 32],
) -> ([u8; 32], [u8; 32]) {
    let ours = KeyPair::from_private(PrivateKey::from_bytes(*our_ratchet_private));
    let (r, c) = RootKey(root).create_chain(their_ratchet, &ours);
    (r.0, c.key)
}

#[allow(clippy::too_many_arguments)]
pub fn signal_message(
    mac_key: &[u8; 32],
    ratchet: PublicKey,
    counter: u32,
    previous_counter: u32,
    ciphertext: Vec<u8>,
    sender: &IdentityKey,
    receiver: &IdentityKey,
) -> SignalMessage {
    SignalMessage::new(
        mac_key,
        ratchet,
        counter,
        previous_counter,
        ciphertext,
        sender,
        receiver,
    )
}

pub fn prekey_message(
    registration_id: u32,
    pre_key_id: u32,
    signed_pre_key_id: u32,
    base_key: PublicKey,
    identity: IdentityKey,
    message: SignalMessage,
) -> PreKeySignalMessage {
    PreKeySignalMessage::new(
        registration_id,
        Some(pre_key_id),
        signed_pre_key_id,
        base_key,
        identity,
        message,
    )
}

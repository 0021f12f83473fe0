//! X3DH session setup and the Double Ratchet over one [`SessionState`].

use std::collections::VecDeque;

use aes::cipher::{block_padding::Pkcs7, BlockDecryptMut, BlockEncryptMut, KeyIvInit};
use rand_core::{CryptoRng, RngCore};
use zeroize::Zeroizing;

use crate::error::{Error, Result};
use crate::kdf::{derive_initial_keys, ChainKey, MessageKeys, RootKey};
use crate::keys::{IdentityKey, IdentityKeyPair, KeyPair, PublicKey};
use crate::message::SignalMessage;
use crate::state::{
    reserve_wiping, SenderChain, SessionState, MAX_FORWARD_JUMPS, MAX_SKIPPED_KEYS_PER_CHAIN,
};

type Aes256CbcEnc = cbc::Encryptor<aes::Aes256>;
type Aes256CbcDec = cbc::Decryptor<aes::Aes256>;

/// The initiator's (Alice's) view of X3DH.
pub(crate) struct AliceParameters<'a> {
    pub our_identity: &'a IdentityKeyPair,
    pub our_base_key: &'a KeyPair,
    pub their_identity: &'a IdentityKey,
    pub their_signed_pre_key: &'a PublicKey,
    pub their_one_time_pre_key: Option<&'a PublicKey>,
}

/// The responder's (Bob's) view of X3DH.
pub(crate) struct BobParameters<'a> {
    pub our_identity: &'a IdentityKeyPair,
    pub our_signed_pre_key: &'a KeyPair,
    pub our_one_time_pre_key: Option<&'a KeyPair>,
    pub their_identity: &'a IdentityKey,
    pub their_base_key: &'a PublicKey,
}

/// libsignal v3 prefixes 32 0xFF bytes (the "discontinuity bytes") to the
/// concatenated DH outputs before HKDF.
fn discontinuity_prefix() -> Zeroizing<Vec<u8>> {
    let mut v = Zeroizing::new(Vec::with_capacity(32 * 5));
    v.extend_from_slice(&[0xFFu8; 32]);
    v
}

pub(crate) fn initialize_alice<R: RngCore + CryptoRng>(
    p: &AliceParameters<'_>,
    rng: &mut R,
) -> SessionState {
    let mut secrets = discontinuity_prefix();
    secrets.extend_from_slice(
        p.our_identity
            .private_key()
            .agree(p.their_signed_pre_key)
            .as_bytes(),
    );
    secrets.extend_from_slice(
        p.our_base_key
            .private_key
            .agree(p.their_identity.public_key())
            .as_bytes(),
    );
    secrets.extend_from_slice(
        p.our_base_key
            .private_key
            .agree(p.their_signed_pre_key)
            .as_bytes(),
    );
    if let Some(otpk) = p.their_one_time_pre_key {
        secrets.extend_from_slice(p.our_base_key.private_key.agree(otpk).as_bytes());
    }
    let (root_key, chain_key) = derive_initial_keys(&secrets);
    let sending_ratchet = KeyPair::generate(rng);
    let (root_key, sending_chain) = root_key.create_chain(p.their_signed_pre_key, &sending_ratchet);
    let mut state = SessionState {
        local_identity: *p.our_identity.identity_key(),
        remote_identity: *p.their_identity,
        root_key,
        previous_counter: 0,
        sender: SenderChain {
            ratchet: sending_ratchet,
            chain_key: sending_chain,
        },
        receivers: VecDeque::new(),
        pending_pre_key: None,
        local_registration_id: 0,
        remote_registration_id: 0,
        alice_base_key: p.our_base_key.public_key,
    };
    state.add_receiver_chain(*p.their_signed_pre_key, chain_key);
    state
}

pub(crate) fn initialize_bob(p: &BobParameters<'_>) -> SessionState {
    let mut secrets = discontinuity_prefix();
    secrets.extend_from_slice(
        p.our_signed_pre_key
            .private_key
            .agree(p.their_identity.public_key())
            .as_bytes(),
    );
    secrets.extend_from_slice(
        p.our_identity
            .private_key()
            .agree(p.their_base_key)
            .as_bytes(),
    );
    secrets.extend_from_slice(
        p.our_signed_pre_key
            .private_key
            .agree(p.their_base_key)
            .as_bytes(),
    );
    if let Some(otpk) = p.our_one_time_pre_key {
        secrets.extend_from_slice(otpk.private_key.agree(p.their_base_key).as_bytes());
    }
    let (root_key, chain_key) = derive_initial_keys(&secrets);
    SessionState {
        local_identity: *p.our_identity.identity_key(),
        remote_identity: *p.their_identity,
        root_key,
        previous_counter: 0,
        sender: SenderChain {
            ratchet: p.our_signed_pre_key.clone(),
            chain_key,
        },
        receivers: VecDeque::new(),
        pending_pre_key: None,
        local_registration_id: 0,
        remote_registration_id: 0,
        alice_base_key: *p.their_base_key,
    }
}

/// Encrypts with the sending chain and advances it.
pub(crate) fn encrypt_signal(state: &mut SessionState, plaintext: &[u8]) -> SignalMessage {
    let keys = state.sender.chain_key.message_keys();
    let ciphertext = Aes256CbcEnc::new((&keys.cipher_key).into(), (&keys.iv).into())
        .encrypt_padded_vec_mut::<Pkcs7>(plaintext);
    let message = SignalMessage::new(
        &keys.mac_key,
        state.sender.ratchet.public_key,
        keys.counter,
        state.previous_counter,
        ciphertext,
        &state.local_identity,
        &state.remote_identity,
    );
    state.sender.chain_key = state.sender.chain_key.next();
    message
}

/// What decrypting one message on one state would change, found without
/// changing it: [`try_decrypt`] verifies the message, [`commit`] applies.
/// A forged message therefore never costs a copy of the state.
pub(crate) struct Verified {
    plaintext: Zeroizing<Vec<u8>>,
    /// The peer's new ratchet key started a receiving chain: the root key
    /// after the receiving half of the DH step, and that chain at index 0.
    ratchet_step: Option<(RootKey, ChainKey)>,
    keys: KeySource,
}

enum KeySource {
    /// A key kept for a skipped message: receiver chain, position in it.
    Skipped { chain: usize, position: usize },
    /// Keys ahead on the chain: message keys for the skipped counters are
    /// kept from `keep_from`; `at_counter` is the chain key at the
    /// message's own counter.
    Ahead {
        keep_from: ChainKey,
        at_counter: ChainKey,
    },
}

/// Checks `message` against `state` without changing it. `chain_steps_left`
/// is what the whole search for this message may still spend on chain
/// steps; a counter further ahead than that is refused before any work.
pub(crate) fn try_decrypt(
    state: &SessionState,
    message: &SignalMessage,
    chain_steps_left: &mut u32,
) -> Result<Verified> {
    let their_ratchet = message.sender_ratchet_key();
    let counter = message.counter();
    let known = state.receiver_chain_index(their_ratchet);
    let index = match known {
        Some(i) => state.receivers[i].chain_key.index(),
        // A new chain starts at index 0.
        None => 0,
    };
    if index > counter {
        // An old counter: only a key kept for a skipped message opens it.
        let chain = known.ok_or(Error::DuplicateMessage { counter })?;
        let position = state.receivers[chain]
            .skipped
            .iter()
            .position(|k| k.counter == counter)
            .ok_or(Error::DuplicateMessage { counter })?;
        let keys = &state.receivers[chain].skipped[position];
        let plaintext = open(state, message, keys)?;
        return Ok(Verified {
            plaintext,
            ratchet_step: None,
            keys: KeySource::Skipped { chain, position },
        });
    }
    let jump = counter - index;
    let limit = MAX_FORWARD_JUMPS.min(*chain_steps_left);
    if jump > limit {
        return Err(Error::TooFarInFuture {
            counter,
            jump,
            limit,
        });
    }
    *chain_steps_left -= jump;
    let (ratchet_step, start) = match known {
        Some(i) => (None, state.receivers[i].chain_key.clone()),
        None => {
            let (root_key, chain_key) = state
                .root_key
                .create_chain(their_ratchet, &state.sender.ratchet);
            (Some((root_key, chain_key.clone())), chain_key)
        }
    };
    // Only the newest MAX_SKIPPED_KEYS_PER_CHAIN skipped keys would be
    // kept, so walking to the first of them needs chain keys only.
    let keep_from_index = counter
        .saturating_sub(MAX_SKIPPED_KEYS_PER_CHAIN as u32)
        .max(index);
    let mut chain_key = start;
    let mut keep_from = None;
    while chain_key.index() < counter {
        if chain_key.index() == keep_from_index {
            keep_from = Some(chain_key.clone());
        }
        chain_key = chain_key.next();
    }
    let keys = chain_key.message_keys();
    let plaintext = open(state, message, &keys)?;
    Ok(Verified {
        plaintext,
        ratchet_step,
        keys: KeySource::Ahead {
            keep_from: keep_from.unwrap_or_else(|| chain_key.clone()),
            at_counter: chain_key,
        },
    })
}

/// The MAC over the exact bytes received, then AES-256-CBC.
fn open(
    state: &SessionState,
    message: &SignalMessage,
    keys: &MessageKeys,
) -> Result<Zeroizing<Vec<u8>>> {
    if !message.verify_mac(&state.remote_identity, &state.local_identity, &keys.mac_key) {
        return Err(Error::BadMac);
    }
    Aes256CbcDec::new((&keys.cipher_key).into(), (&keys.iv).into())
        .decrypt_padded_vec_mut::<Pkcs7>(message.ciphertext())
        .map(Zeroizing::new)
        .map_err(|_| Error::BadCiphertext)
}

/// Applies what [`try_decrypt`] verified on this same `state`: the DH
/// ratchet step (our new sending chain), skipped keys kept or used, the
/// receiving chain advanced. Cannot fail, so a state is never left half
/// updated.
pub(crate) fn commit<R: RngCore + CryptoRng>(
    state: &mut SessionState,
    message: &SignalMessage,
    verified: Verified,
    rng: &mut R,
) -> Zeroizing<Vec<u8>> {
    let their_ratchet = *message.sender_ratchet_key();
    let Verified {
        plaintext,
        ratchet_step,
        keys,
    } = verified;
    if let Some((root_key, receiver_chain)) = ratchet_step {
        let our_new_ratchet = KeyPair::generate(rng);
        let (root_key, sender_chain) = root_key.create_chain(&their_ratchet, &our_new_ratchet);
        state.root_key = root_key;
        state.add_receiver_chain(their_ratchet, receiver_chain);
        state.previous_counter = state.sender.chain_key.index().saturating_sub(1);
        state.sender = SenderChain {
            ratchet: our_new_ratchet,
            chain_key: sender_chain,
        };
    }
    match keys {
        KeySource::Skipped { chain, position } => {
            if let Some(c) = state.receivers.get_mut(chain) {
                c.skipped.remove(position);
            }
        }
        KeySource::Ahead {
            keep_from,
            at_counter,
        } => {
            if let Some(chain) = state.receiver_chain_mut(&their_ratchet) {
                // At most MAX_SKIPPED_KEYS_PER_CHAIN are kept (see
                // try_decrypt): drop the oldest to make room first, so the
                // chain never holds more than the limit.
                let kept = at_counter.index().saturating_sub(keep_from.index()) as usize;
                let excess =
                    (chain.skipped.len() + kept).saturating_sub(MAX_SKIPPED_KEYS_PER_CHAIN);
                chain.skipped.drain(..excess.min(chain.skipped.len()));
                reserve_wiping(&mut chain.skipped, kept, MAX_SKIPPED_KEYS_PER_CHAIN);
                let mut chain_key = keep_from;
                while chain_key.index() < at_counter.index() {
                    chain.skipped.push_back(chain_key.message_keys());
                    chain_key = chain_key.next();
                }
                chain.chain_key = at_counter.next();
            }
        }
    }
    state.pending_pre_key = None;
    plaintext
}

//! X3DH session setup and the Double Ratchet over one [`SessionState`].

use aes::cipher::{block_padding::Pkcs7, BlockDecryptMut, BlockEncryptMut, KeyIvInit};
use rand_core::{CryptoRng, RngCore};
use zeroize::{Zeroize, Zeroizing};

use crate::error::{Error, Result};
use crate::kdf::{derive_initial_keys, ChainKey, MessageKeys};
use crate::keys::{IdentityKey, IdentityKeyPair, KeyPair, PublicKey};
use crate::message::SignalMessage;
use crate::state::{SenderChain, SessionState, MAX_FORWARD_JUMPS, MAX_SKIPPED_KEYS_PER_CHAIN};

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
        receivers: Vec::new(),
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
        receivers: Vec::new(),
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

/// Decrypts `message`, mutating `state`. Callers pass a copy and keep it
/// only on success, so any error leaves their state untouched.
pub(crate) fn decrypt_signal<R: RngCore + CryptoRng>(
    state: &mut SessionState,
    message: &SignalMessage,
    rng: &mut R,
) -> Result<Zeroizing<Vec<u8>>> {
    let their_ratchet = *message.sender_ratchet_key();
    ensure_receiver_chain(state, &their_ratchet, rng);
    let keys = message_keys_for(state, &their_ratchet, message.counter())?;
    if !message.verify_mac(&state.remote_identity, &state.local_identity, &keys.mac_key) {
        return Err(Error::BadMac);
    }
    let plaintext = Aes256CbcDec::new((&keys.cipher_key).into(), (&keys.iv).into())
        .decrypt_padded_vec_mut::<Pkcs7>(message.ciphertext())
        .map_err(|_| Error::BadCiphertext)?;
    state.pending_pre_key = None;
    Ok(Zeroizing::new(plaintext))
}

/// A new ratchet key from the peer means a DH ratchet step: derive the
/// receiving chain for it and a fresh sending chain of ours.
fn ensure_receiver_chain<R: RngCore + CryptoRng>(
    state: &mut SessionState,
    their_ratchet: &PublicKey,
    rng: &mut R,
) {
    if state.receiver_chain_mut(their_ratchet).is_some() {
        return;
    }
    let (root_key, receiver_chain) = state
        .root_key
        .create_chain(their_ratchet, &state.sender.ratchet);
    let our_new_ratchet = KeyPair::generate(rng);
    let (root_key, sender_chain) = root_key.create_chain(their_ratchet, &our_new_ratchet);
    state.root_key = root_key;
    state.add_receiver_chain(*their_ratchet, receiver_chain);
    state.previous_counter = state.sender.chain_key.index().saturating_sub(1);
    state.sender = SenderChain {
        ratchet: our_new_ratchet,
        chain_key: sender_chain,
    };
}

fn message_keys_for(
    state: &mut SessionState,
    their_ratchet: &PublicKey,
    counter: u32,
) -> Result<MessageKeys> {
    let chain = state
        .receiver_chain_mut(their_ratchet)
        .ok_or_else(|| Error::Store("receiver chain vanished".into()))?;
    let index = chain.chain_key.index();
    if index > counter {
        // An old counter: only a stored skipped key can open it.
        return match chain.skipped.iter().position(|k| k.counter == counter) {
            Some(pos) => chain
                .skipped
                .remove(pos)
                .ok_or(Error::DuplicateMessage { counter }),
            None => Err(Error::DuplicateMessage { counter }),
        };
    }
    let jump = counter - index;
    if jump > MAX_FORWARD_JUMPS {
        return Err(Error::TooFarInFuture {
            counter,
            jump,
            limit: MAX_FORWARD_JUMPS,
        });
    }
    let mut chain_key: ChainKey = chain.chain_key.clone();
    while chain_key.index() < counter {
        chain.skipped.push_back(chain_key.message_keys());
        if chain.skipped.len() > MAX_SKIPPED_KEYS_PER_CHAIN {
            chain.skipped.pop_front();
        }
        chain_key = chain_key.next();
    }
    let keys = chain_key.message_keys();
    chain.chain_key = chain_key.next();
    chain_key.zeroize();
    Ok(keys)
}

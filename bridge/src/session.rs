//! Session operations over the stores, like libsignal's `session.rs` and
//! `session_cipher.rs`: start a session from a bundle, encrypt, decrypt.
//! Every decryption runs on a copy of the record and is committed to the
//! stores only when it succeeded.

use rand_core::{CryptoRng, RngCore};
use zeroize::Zeroizing;

use crate::error::{Error, Result};
use crate::keys::KeyPair;
use crate::message::{CiphertextMessage, PreKeySignalMessage, SignalMessage};
use crate::prekeys::PreKeyBundle;
use crate::ratchet::{self, AliceParameters, BobParameters};
use crate::state::{PendingPreKey, SessionRecord};
use crate::store::{ProtocolAddress, ProtocolStore};

/// Starts (or restarts) a session to `address` from its prekey bundle.
pub fn process_prekey_bundle<S: ProtocolStore, R: RngCore + CryptoRng>(
    address: &ProtocolAddress,
    bundle: &PreKeyBundle,
    store: &mut S,
    rng: &mut R,
) -> Result<()> {
    if !store.is_trusted_identity(address, &bundle.identity_key)? {
        return Err(Error::UntrustedIdentity(address.to_string()));
    }
    bundle.verify_signature()?;
    let our_identity = store.identity_key_pair()?;
    let our_base_key = KeyPair::generate(rng);
    let mut state = ratchet::initialize_alice(
        &AliceParameters {
            our_identity: &our_identity,
            our_base_key: &our_base_key,
            their_identity: &bundle.identity_key,
            their_signed_pre_key: &bundle.signed_pre_key,
            their_one_time_pre_key: bundle.pre_key.as_ref().map(|(_, k)| k),
        },
        rng,
    );
    state.pending_pre_key = Some(PendingPreKey {
        pre_key_id: bundle.pre_key.as_ref().map(|(id, _)| *id),
        signed_pre_key_id: bundle.signed_pre_key_id,
        base_key: our_base_key.public_key,
    });
    state.local_registration_id = store.local_registration_id()?;
    state.remote_registration_id = bundle.registration_id;
    let mut record = store.load_session(address)?.unwrap_or_default();
    record.promote_state(state);
    store.store_session(address, &record)?;
    store.save_identity(address, &bundle.identity_key)?;
    Ok(())
}

/// Encrypts for the current session with `address`: a PreKeySignalMessage
/// until the peer has answered, a SignalMessage after.
pub fn message_encrypt<S: ProtocolStore>(
    plaintext: &[u8],
    address: &ProtocolAddress,
    store: &mut S,
) -> Result<CiphertextMessage> {
    let mut record = store
        .load_session(address)?
        .ok_or_else(|| Error::NoSession(address.to_string()))?;
    let state = record
        .current
        .as_mut()
        .ok_or_else(|| Error::NoSession(address.to_string()))?;
    if !store.is_trusted_identity(address, &state.remote_identity)? {
        return Err(Error::UntrustedIdentity(address.to_string()));
    }
    let message = ratchet::encrypt_signal(state, plaintext);
    let out = match &state.pending_pre_key {
        Some(pending) => CiphertextMessage::PreKey(PreKeySignalMessage::new(
            state.local_registration_id,
            pending.pre_key_id,
            pending.signed_pre_key_id,
            pending.base_key,
            state.local_identity,
            message,
        )),
        None => CiphertextMessage::Signal(message),
    };
    store.store_session(address, &record)?;
    Ok(out)
}

/// Decrypts either kind of message.
pub fn message_decrypt<S: ProtocolStore, R: RngCore + CryptoRng>(
    message: &CiphertextMessage,
    address: &ProtocolAddress,
    store: &mut S,
    rng: &mut R,
) -> Result<Zeroizing<Vec<u8>>> {
    match message {
        CiphertextMessage::PreKey(m) => message_decrypt_prekey(m, address, store, rng),
        CiphertextMessage::Signal(m) => message_decrypt_signal(m, address, store, rng),
    }
}

pub fn message_decrypt_signal<S: ProtocolStore, R: RngCore + CryptoRng>(
    message: &SignalMessage,
    address: &ProtocolAddress,
    store: &mut S,
    rng: &mut R,
) -> Result<Zeroizing<Vec<u8>>> {
    let mut record = store
        .load_session(address)?
        .ok_or_else(|| Error::NoSession(address.to_string()))?;
    let plaintext = decrypt_with_record(&mut record, message, address, rng)?;
    let remote = record.current.as_ref().map(|s| s.remote_identity);
    if let Some(remote) = remote {
        if !store.is_trusted_identity(address, &remote)? {
            return Err(Error::UntrustedIdentity(address.to_string()));
        }
        store.save_identity(address, &remote)?;
    }
    store.store_session(address, &record)?;
    Ok(plaintext)
}

pub fn message_decrypt_prekey<S: ProtocolStore, R: RngCore + CryptoRng>(
    message: &PreKeySignalMessage,
    address: &ProtocolAddress,
    store: &mut S,
    rng: &mut R,
) -> Result<Zeroizing<Vec<u8>>> {
    if !store.is_trusted_identity(address, message.identity_key())? {
        return Err(Error::UntrustedIdentity(address.to_string()));
    }
    let mut record = store.load_session(address)?.unwrap_or_default();
    let mut used_pre_key = None;
    // A resent PreKeySignalMessage for a session we already built just
    // decrypts with it; otherwise run X3DH as Bob.
    if !record.has_base_key(message.base_key()) {
        let our_identity = store.identity_key_pair()?;
        let signed = store.get_signed_pre_key(message.signed_pre_key_id())?;
        let one_time = match message.pre_key_id() {
            Some(id) => Some(store.get_pre_key(id)?),
            None => None,
        };
        let mut state = ratchet::initialize_bob(&BobParameters {
            our_identity: &our_identity,
            our_signed_pre_key: &signed.key_pair,
            our_one_time_pre_key: one_time.as_ref().map(|r| &r.key_pair),
            their_identity: message.identity_key(),
            their_base_key: message.base_key(),
        });
        state.local_registration_id = store.local_registration_id()?;
        state.remote_registration_id = message.registration_id();
        record.promote_state(state);
        used_pre_key = message.pre_key_id();
    }
    let plaintext = decrypt_with_record(&mut record, message.message(), address, rng)?;
    store.save_identity(address, message.identity_key())?;
    store.store_session(address, &record)?;
    if let Some(id) = used_pre_key {
        store.remove_pre_key(id)?;
    }
    Ok(plaintext)
}

/// Tries the current state, then each archived one (newest first), each on
/// a copy; the first that decrypts becomes current. On failure `record` is
/// unchanged and the current state's error is returned.
fn decrypt_with_record<R: RngCore + CryptoRng>(
    record: &mut SessionRecord,
    message: &SignalMessage,
    address: &ProtocolAddress,
    rng: &mut R,
) -> Result<Zeroizing<Vec<u8>>> {
    let mut first_error = None;
    if let Some(current) = &record.current {
        let mut copy = current.clone();
        match ratchet::decrypt_signal(&mut copy, message, rng) {
            Ok(plaintext) => {
                record.current = Some(copy);
                return Ok(plaintext);
            }
            Err(e) => first_error = Some(e),
        }
    }
    for index in 0..record.previous.len() {
        let mut copy = record.previous[index].clone();
        if let Ok(plaintext) = ratchet::decrypt_signal(&mut copy, message, rng) {
            record.promote_archived(index, copy);
            return Ok(plaintext);
        }
    }
    Err(match first_error {
        Some(e) if record.previous.is_empty() => e,
        Some(e @ (Error::DuplicateMessage { .. } | Error::TooFarInFuture { .. })) => e,
        Some(_) | None if record.current.is_none() => Error::NoSession(address.to_string()),
        _ => Error::NoMatchingSession {
            address: address.to_string(),
            tried: 1 + record.previous.len(),
        },
    })
}

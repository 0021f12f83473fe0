//! Session operations over the stores, like libsignal's `session.rs` and
//! `session_cipher.rs`: start a session from a bundle, encrypt, decrypt.
//! Every decryption runs on a copy of the record loaded from the store and
//! is committed to the stores only when it succeeded.
//!
//! # What one unauthenticated message can cost
//!
//! Until its MAC checks out a message is anyone's, so the work it can cause
//! is bounded. With the limits in `state.rs` (at most `S = 1 +
//! ARCHIVED_STATES_MAX = 41` states per peer, `MAX_CHAIN_STEPS_PER_MESSAGE
//! = 25,000`), receiving one message, forged or not, costs at most:
//!
//! - one load of the peer's session record from the store;
//! - a PreKeySignalMessage: X3DH as Bob (4 X25519 at most: 3 without a
//!   one-time prekey) unless it names a state it built before, then a trial
//!   on that one state only (libsignal: "no need to check older sessions");
//! - a SignalMessage: trials on the states that already receive on its
//!   ratchet key, or on all `S` states if none does (a new ratchet key, as
//!   libsignal tries them); a duplicate ends the search at once;
//! - each trial: one X25519 and one HKDF (only for a new ratchet key), one
//!   message-key derivation and one HMAC for the MAC; AES only after the
//!   MAC matched;
//! - chain steps (one HMAC-SHA256 each): at most `MAX_CHAIN_STEPS_PER_MESSAGE`
//!   for the whole search, shared by its trials; a counter further ahead
//!   than what is left is refused before any step;
//! - no copy of any state: trials only read, and the state that verifies
//!   is then changed in place (`ratchet::try_decrypt`, `ratchet::commit`).
//!
//! In all: at most `S` X25519 and HKDF root steps (4 + 1 for a
//! PreKeySignalMessage), 25,000 chain steps, `S` message-key derivations
//! and MAC checks, and no state copied (`tests` below count them;
//! `benches/bridge_forged.rs` times them). A message that does verify adds
//! a DH ratchet step (2 X25519) and at most `MAX_SKIPPED_KEYS_PER_CHAIN`
//! message-key derivations for the skipped keys it keeps.
//!
//! Sharing the chain-step budget departs from libsignal, which lets each
//! of the 41 states walk 25,000 steps (1,025,000 in all). A genuine message
//! that starts a new receiving chain on the `k`-th archived state is
//! therefore refused when `(k + 1) * counter > 25,000`; late messages on a
//! chain the state already knows are not affected (the ratchet key names
//! their state).

use rand_core::{CryptoRng, RngCore};
use zeroize::Zeroizing;

use crate::error::{Error, Result};
use crate::keys::KeyPair;
use crate::message::{CiphertextMessage, PreKeySignalMessage, SignalMessage};
use crate::prekeys::PreKeyBundle;
use crate::ratchet::{self, AliceParameters, BobParameters};
use crate::state::{
    PendingPreKey, SessionRecord, SessionState, StateRef, MAX_CHAIN_STEPS_PER_MESSAGE,
};
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

/// Decrypts a ratchet message on the stored session with `address`.
pub(crate) fn message_decrypt_signal<S: ProtocolStore, R: RngCore + CryptoRng>(
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

/// Decrypts a session-starting message, running X3DH as Bob when it
/// names a state the record does not hold yet.
pub(crate) fn message_decrypt_prekey<S: ProtocolStore, R: RngCore + CryptoRng>(
    message: &PreKeySignalMessage,
    address: &ProtocolAddress,
    store: &mut S,
    rng: &mut R,
) -> Result<Zeroizing<Vec<u8>>> {
    if !store.is_trusted_identity(address, message.identity_key())? {
        return Err(Error::UntrustedIdentity(address.to_string()));
    }
    let mut record = store.load_session(address)?.unwrap_or_default();
    let mut chain_steps_left = MAX_CHAIN_STEPS_PER_MESSAGE;
    // The message names its state by Alice's base key: a resent
    // PreKeySignalMessage goes to the state it built, a new one to the
    // state X3DH builds now. No other state is tried (libsignal: "no need
    // to check older sessions").
    let (plaintext, used_pre_key) = match record.state_with_base_key(message.base_key()) {
        Some(which) => {
            let state = record
                .state_mut(which)
                .ok_or_else(|| Error::NoSession(address.to_string()))?;
            let plaintext = decrypt_state(state, message.message(), &mut chain_steps_left, rng)?;
            record.promote(which);
            (plaintext, None)
        }
        None => {
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
            let plaintext =
                decrypt_state(&mut state, message.message(), &mut chain_steps_left, rng)?;
            record.promote_state(state);
            (plaintext, message.pre_key_id())
        }
    };
    store.save_identity(address, message.identity_key())?;
    store.store_session(address, &record)?;
    if let Some(id) = used_pre_key {
        store.remove_pre_key(id)?;
    }
    Ok(plaintext)
}

/// Verifies `message` on `state` and, only if it decrypts, applies it.
fn decrypt_state<R: RngCore + CryptoRng>(
    state: &mut SessionState,
    message: &SignalMessage,
    chain_steps_left: &mut u32,
    rng: &mut R,
) -> Result<Zeroizing<Vec<u8>>> {
    let verified = ratchet::try_decrypt(state, message, chain_steps_left)?;
    Ok(ratchet::commit(state, message, verified, rng))
}

/// Decrypts a SignalMessage with the state it belongs to. The states that
/// already receive on the message's ratchet key are the only candidates
/// (the key names them); if none does, the message starts a new receiving
/// chain and every state is a candidate, current first, then archived
/// newest first, as in libsignal. The first that decrypts becomes current;
/// a duplicate ends the search at once. On failure `record` is unchanged
/// and the error is the first candidate's when it says more than "no
/// state matched" (a duplicate, a counter too far ahead, or the only
/// candidate's own error).
fn decrypt_with_record<R: RngCore + CryptoRng>(
    record: &mut SessionRecord,
    message: &SignalMessage,
    address: &ProtocolAddress,
    rng: &mut R,
) -> Result<Zeroizing<Vec<u8>>> {
    let their_ratchet = message.sender_ratchet_key();
    let named: Vec<StateRef> = record
        .states()
        .filter(|(_, s)| s.receiver_chain_index(their_ratchet).is_some())
        .map(|(which, _)| which)
        .collect();
    let candidates = if named.is_empty() {
        record.states().map(|(which, _)| which).collect()
    } else {
        named
    };
    let mut chain_steps_left = MAX_CHAIN_STEPS_PER_MESSAGE;
    let mut first_error = None;
    for &which in &candidates {
        let Some(state) = record.state_mut(which) else {
            continue;
        };
        match decrypt_state(state, message, &mut chain_steps_left, rng) {
            Ok(plaintext) => {
                record.promote(which);
                return Ok(plaintext);
            }
            Err(e @ Error::DuplicateMessage { .. }) => return Err(e),
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    Err(match first_error {
        None => Error::NoSession(address.to_string()),
        Some(e) if candidates.len() == 1 => e,
        Some(e @ Error::TooFarInFuture { .. })
            if candidates.first() == Some(&StateRef::Current) =>
        {
            e
        }
        Some(_) => Error::NoMatchingSession {
            address: address.to_string(),
            tried: candidates.len(),
        },
    })
}

#[cfg(test)]
#[allow(clippy::panic)]
mod tests {
    use super::*;
    use crate::fuzzing::forged_signal_message;
    use crate::keys::IdentityKeyPair;
    use crate::prekeys::{PreKeyRecord, SignedPreKeyRecord};
    use crate::state::SessionRecord;
    use crate::state::{
        ARCHIVED_STATES_MAX, MAX_CHAIN_STEPS_PER_MESSAGE, MAX_FORWARD_JUMPS,
        MAX_SKIPPED_KEYS_PER_CHAIN,
    };
    use crate::store::{
        IdentityKeyStore, InMemProtocolStore, PreKeyStore, SessionStore, SignedPreKeyStore,
    };
    use crate::work::Counts;
    use rand::SeedableRng;
    use rand_chacha::ChaCha20Rng;

    /// Alice and Bob with `1 + archived` sessions on Bob's side (Alice
    /// restarted the session `archived` times), and for each of Alice's
    /// sessions but the last one message she sent on a chain Bob knows,
    /// that Bob never got.
    struct Restarted {
        alice: InMemProtocolStore,
        bob: InMemProtocolStore,
        a: ProtocolAddress,
        b: ProtocolAddress,
        rng: ChaCha20Rng,
        /// Oldest session first.
        late: Vec<CiphertextMessage>,
    }

    fn ok<T>(r: Result<T>) -> T {
        r.unwrap_or_else(|e| panic!("{e}"))
    }

    impl Restarted {
        fn new(archived: usize) -> Self {
            let mut rng = ChaCha20Rng::seed_from_u64(0xC057);
            let a_id = IdentityKeyPair::generate(&mut rng);
            let b_id = IdentityKeyPair::generate(&mut rng);
            let mut alice = InMemProtocolStore::new(a_id, 1);
            let mut bob = InMemProtocolStore::new(b_id.clone(), 2);
            let (a, b) = (ProtocolAddress::new("a", 1), ProtocolAddress::new("b", 1));
            let mut late = Vec::new();
            for session in 0..=archived {
                let id = session as u32 + 1;
                let signed = SignedPreKeyRecord::generate(id, 0, &b_id, &mut rng);
                let pre = PreKeyRecord::generate(id, &mut rng);
                let bundle =
                    PreKeyBundle::from_records(2, 1, *b_id.identity_key(), &signed, Some(&pre));
                ok(bob.save_signed_pre_key(signed));
                ok(bob.save_pre_key(pre));
                ok(process_prekey_bundle(&b, &bundle, &mut alice, &mut rng));
                let first = ok(message_encrypt(b"open", &b, &mut alice));
                ok(message_decrypt(&first, &a, &mut bob, &mut rng));
                let reply = ok(message_encrypt(b"ack", &a, &mut bob));
                ok(message_decrypt(&reply, &b, &mut alice, &mut rng));
                if session < archived {
                    // Bob learns Alice's new ratchet key, then one message
                    // on it stays in flight.
                    let seen = ok(message_encrypt(b"seen", &b, &mut alice));
                    ok(message_decrypt(&seen, &a, &mut bob, &mut rng));
                    late.push(ok(message_encrypt(b"late", &b, &mut alice)));
                }
            }
            let record = ok(bob.load_session(&a)).unwrap_or_default();
            assert_eq!(record.archived_count(), archived);
            Self {
                alice,
                bob,
                a,
                b,
                rng,
                late,
            }
        }

        fn bob_record(&self) -> Vec<u8> {
            ok(self.bob.load_session(&self.a))
                .map(|r| r.serialize().to_vec())
                .unwrap_or_default()
        }

        /// Decrypts at Bob, returning the result and what it cost.
        fn bob_receives(&mut self, m: &CiphertextMessage) -> (Result<Zeroizing<Vec<u8>>>, Counts) {
            Counts::take();
            let result = message_decrypt(m, &self.a, &mut self.bob, &mut self.rng);
            (result, Counts::take())
        }
    }

    /// The worst case of a forged SignalMessage against a record with every
    /// archived state kept: a new ratchet key (a DH step on each state) and
    /// a counter as far as one state allows, or as far as every state can
    /// share. Either way the work stays within the stated bound, no state is
    /// copied, and the record is unchanged.
    #[test]
    fn a_forged_signal_message_costs_at_most_the_stated_bound() {
        let mut r = Restarted::new(ARCHIVED_STATES_MAX);
        let states = 1 + ARCHIVED_STATES_MAX as u64;
        let before = r.bob_record();
        let mut forge_rng = ChaCha20Rng::seed_from_u64(9);
        for counter in [
            MAX_FORWARD_JUMPS,
            MAX_CHAIN_STEPS_PER_MESSAGE / states as u32,
            0,
        ] {
            let forged = CiphertextMessage::Signal(forged_signal_message(counter, &mut forge_rng));
            let (result, n) = r.bob_receives(&forged);
            eprintln!("forged SignalMessage, counter {counter}: {n:?}");
            assert!(
                matches!(result, Err(Error::NoMatchingSession { .. })),
                "counter {counter}: {result:?}"
            );
            assert!(n.x25519 <= states, "counter {counter}: {n:?}");
            assert!(
                n.chain_steps <= u64::from(MAX_CHAIN_STEPS_PER_MESSAGE),
                "counter {counter}: {n:?}"
            );
            assert!(n.message_keys <= states, "counter {counter}: {n:?}");
            assert_eq!(n.state_clones, 0, "counter {counter}: {n:?}");
            assert_eq!(r.bob_record(), before);
        }
    }

    /// A PreKeySignalMessage is tried only against the state it creates (a
    /// new base key) or names (a known one), never the archived ones.
    #[test]
    fn a_forged_prekey_message_is_tried_against_its_own_state_only() {
        let mut r = Restarted::new(ARCHIVED_STATES_MAX);
        let before = r.bob_record();
        let mut forge_rng = ChaCha20Rng::seed_from_u64(10);
        let our = ok(r.alice.identity_key_pair());
        let known_base = *ok(r.bob.load_session(&r.a))
            .and_then(|rec| rec.previous.get(3).map(|s| s.alice_base_key))
            .as_ref()
            .unwrap_or_else(|| panic!("no archived state"));
        let fresh_base = KeyPair::generate(&mut forge_rng).public_key;
        for (base, what) in [(fresh_base, "new base key"), (known_base, "known base key")] {
            let forged = CiphertextMessage::PreKey(PreKeySignalMessage::new(
                1,
                None,
                1,
                base,
                *our.identity_key(),
                forged_signal_message(MAX_FORWARD_JUMPS, &mut forge_rng),
            ));
            let (result, n) = r.bob_receives(&forged);
            eprintln!("forged PreKeySignalMessage, {what}: {n:?}");
            assert!(
                matches!(result, Err(Error::BadMac | Error::TooFarInFuture { .. })),
                "{what}: {result:?}"
            );
            // X3DH as Bob (3 agreements without a one-time prekey), then
            // one DH step on the one state.
            assert!(n.x25519 <= 4, "{what}: {n:?}");
            assert!(
                n.chain_steps <= u64::from(MAX_FORWARD_JUMPS),
                "{what}: {n:?}"
            );
            assert!(n.message_keys <= 1, "{what}: {n:?}");
            assert_eq!(n.state_clones, 0, "{what}: {n:?}");
            assert_eq!(r.bob_record(), before, "{what}");
        }
    }

    /// A replay is a duplicate on the state that holds its chain, and the
    /// search stops there: no other state is tried.
    #[test]
    fn a_duplicate_stops_the_search_at_once() {
        let mut r = Restarted::new(ARCHIVED_STATES_MAX);
        let m = ok(message_encrypt(b"once", &r.b, &mut r.alice));
        let (first, _) = r.bob_receives(&m);
        assert_eq!(first.ok().map(|p| p.to_vec()), Some(b"once".to_vec()));
        let before = r.bob_record();
        let (again, n) = r.bob_receives(&m);
        assert!(
            matches!(again, Err(Error::DuplicateMessage { .. })),
            "{again:?}"
        );
        assert_eq!(n, Counts::default(), "a duplicate cost more than a lookup");
        assert_eq!(r.bob_record(), before);
    }

    /// A late message for an archived state names it by its ratchet key:
    /// it decrypts there without a DH step on any other state.
    #[test]
    fn a_late_message_goes_straight_to_the_state_it_names() {
        let mut r = Restarted::new(ARCHIVED_STATES_MAX);
        let late = r.late.clone();
        for (i, m) in late.iter().enumerate().rev() {
            let (result, n) = r.bob_receives(m);
            assert_eq!(
                result.ok().map(|p| p.to_vec()),
                Some(b"late".to_vec()),
                "session {i}"
            );
            assert_eq!(n.x25519, 0, "session {i}: {n:?}");
            assert_eq!(n.state_clones, 0, "session {i}: {n:?}");
            assert!(n.message_keys <= 2, "session {i}: {n:?}");
        }
    }

    /// Keys of messages skipped by a jump longer than the skipped-key limit
    /// would be evicted at once; only the kept ones are derived.
    #[test]
    fn a_long_genuine_jump_derives_only_the_keys_it_keeps() {
        let mut r = Restarted::new(0);
        let mut last = None;
        for _ in 0..=3 * MAX_SKIPPED_KEYS_PER_CHAIN {
            last = Some(ok(message_encrypt(b"jump", &r.b, &mut r.alice)));
        }
        let last = last.unwrap_or_else(|| panic!("nothing sent"));
        let (result, n) = r.bob_receives(&last);
        assert_eq!(result.ok().map(|p| p.to_vec()), Some(b"jump".to_vec()));
        assert!(
            n.message_keys <= 1 + MAX_SKIPPED_KEYS_PER_CHAIN as u64,
            "{n:?}"
        );
        let record = ok(r.bob.load_session(&r.a)).unwrap_or_default();
        let chain = record
            .current
            .as_ref()
            .and_then(|s| s.receivers.back())
            .unwrap_or_else(|| panic!("no receiver chain"));
        assert_eq!(chain.skipped.len(), MAX_SKIPPED_KEYS_PER_CHAIN);
        assert_eq!(
            chain.skipped.front().map(|k| k.counter),
            Some((2 * MAX_SKIPPED_KEYS_PER_CHAIN) as u32)
        );
    }

    /// Every secret byte string the stores hold: identity and prekey
    /// private keys, and per session state the root key, the sending
    /// ratchet's private key, every chain key and every kept message key.
    fn secrets(store: &InMemProtocolStore) -> Vec<Vec<u8>> {
        let mut out = vec![store.identities.key_pair.private_key().serialize().to_vec()];
        out.extend(
            store
                .pre_keys
                .keys
                .values()
                .map(|r| r.key_pair.private_key.serialize().to_vec()),
        );
        out.extend(
            store
                .signed_pre_keys
                .keys
                .values()
                .map(|r| r.key_pair.private_key.serialize().to_vec()),
        );
        for bytes in store.sessions.sessions.values() {
            let record = ok(SessionRecord::deserialize(bytes));
            for (_, state) in record.states() {
                out.push(state.root_key.0.to_vec());
                out.push(state.sender.ratchet.private_key.serialize().to_vec());
                out.push(state.sender.chain_key.key.to_vec());
                for chain in &state.receivers {
                    out.push(chain.chain_key.key.to_vec());
                    for k in &chain.skipped {
                        out.extend([k.cipher_key.to_vec(), k.mac_key.to_vec(), k.iv.to_vec()]);
                    }
                }
            }
        }
        out
    }

    /// How a secret could show in Debug output: as hex (either case), as
    /// the decimal list `{:?}` prints for byte arrays and Vecs, or as the
    /// 6-byte hex prefix PublicKey's Debug uses.
    fn leaks(text: &str, secret: &[u8]) -> bool {
        let hex: String = secret.iter().map(|b| format!("{b:02x}")).collect();
        let decimal = secret[..4]
            .iter()
            .map(u8::to_string)
            .collect::<Vec<_>>()
            .join(", ");
        let lower = text.to_lowercase();
        lower.contains(&hex) || lower.contains(&hex[..12]) || text.contains(&decimal)
    }

    /// Every store, record, state and key type formatted with `{:?}` and
    /// `{:#?}`: no key material appears.
    #[test]
    fn debug_output_holds_no_key_material() {
        let mut r = Restarted::new(3);
        // Skipped keys in Bob's current state too.
        let mut last = None;
        for _ in 0..4 {
            last = Some(ok(message_encrypt(b"skip", &r.b, &mut r.alice)));
        }
        if let Some(m) = last {
            ok(message_decrypt(&m, &r.a, &mut r.bob, &mut r.rng));
        }
        let record = ok(r.bob.load_session(&r.a)).unwrap_or_default();
        let state = record
            .session_state()
            .unwrap_or_else(|| panic!("no current state"))
            .clone();
        let identity = ok(r.bob.identity_key_pair());
        let pre_key = PreKeyRecord::generate(99, &mut r.rng);
        ok(r.bob.save_pre_key(pre_key.clone()));
        let signed = ok(r.bob.get_signed_pre_key(1));
        let key_pair = KeyPair::generate(&mut r.rng);
        let shared = key_pair.private_key.agree(&identity.identity_key().0);
        let outputs = [
            format!("{:?}", r.bob),
            format!("{:#?}", r.bob),
            format!("{:?} {:#?}", r.bob.sessions, r.bob.identities),
            format!("{:?} {:#?}", record, record),
            format!("{:?} {:#?}", state, state),
            format!("{:?} {:#?}", identity, identity),
            format!("{:?} {:#?}", pre_key, signed),
            format!("{:?} {:?}", key_pair, shared),
            format!("{:?}", state.root_key),
            format!("{:?}", state.sender.chain_key),
            format!("{:?}", state.receivers.back().map(|c| c.skipped.clone())),
            format!("{:?}", crate::proto::SessionRecordProto::default()),
        ];
        let mut secrets = secrets(&r.bob);
        secrets.push(key_pair.private_key.serialize().to_vec());
        secrets.push(shared.as_bytes().to_vec());
        // 4 states (root, sending ratchet, chain keys), 3 skipped keys, the
        // identity and prekeys.
        assert!(
            secrets.len() >= 30,
            "only {} secrets: not a real check",
            secrets.len()
        );
        for (i, text) in outputs.iter().enumerate() {
            for secret in &secrets {
                assert!(!leaks(text, secret), "output {i} shows key bytes: {text}");
            }
        }
        // The serialized record itself is wiped on drop.
        let bytes: Zeroizing<Vec<u8>> = record.serialize();
        assert!(!bytes.is_empty());
    }
}

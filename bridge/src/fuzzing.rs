//! Bodies of the cargo-fuzz targets in bridge/fuzz, as plain functions so
//! a stable proptest can run them too (tests/tests/bridge_fuzz_stable.rs).
//! Not part of the supported API.

use rand_core::SeedableRng as _;

use crate::keys::{IdentityKey, KeyPair};
use crate::message::{CiphertextMessage, PreKeySignalMessage, SignalMessage};
use crate::prekeys::{PreKeyBundle, PreKeyRecord, SignedPreKeyRecord};
use crate::session::{message_decrypt, message_encrypt, process_prekey_bundle};
use crate::store::{
    InMemProtocolStore, PreKeyStore, ProtocolAddress, SessionStore, SignedPreKeyStore,
};
use crate::IdentityKeyPair;

/// Decoding arbitrary bytes never panics, and what decodes re-encodes to
/// the same bytes it came from.
pub fn decode_message(data: &[u8]) {
    if let Ok(m) = SignalMessage::decode(data) {
        assert_eq!(m.serialized(), data);
    }
    if let Ok(m) = PreKeySignalMessage::decode(data) {
        assert_eq!(m.serialized(), data);
        let _ = m.message().counter();
    }
}

/// A SignalMessage made up by someone without any key: a fresh ratchet
/// key (so the receiver tries a DH step), the given counter (so it walks
/// that far), an arbitrary body and a MAC under made-up identities. What
/// the cost bound of an unauthenticated message is measured with.
pub fn forged_signal_message<R: rand_core::RngCore + rand_core::CryptoRng>(
    counter: u32,
    rng: &mut R,
) -> SignalMessage {
    let mut key = || KeyPair::generate(rng).public_key;
    let (ratchet, sender, receiver) = (key(), IdentityKey(key()), IdentityKey(key()));
    SignalMessage::new(
        &[0x42; 32],
        ratchet,
        counter,
        0,
        vec![0x17; 48],
        &sender,
        &receiver,
    )
}

/// Fixed two-party state: Bob's store after one message each way.
pub struct DecryptFixture {
    bob: InMemProtocolStore,
    alice_addr: ProtocolAddress,
    /// Genuine messages to mutate.
    pub seeds: Vec<Vec<u8>>,
}

impl DecryptFixture {
    pub fn new() -> Self {
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(0x5077);
        let a_id = IdentityKeyPair::generate(&mut rng);
        let b_id = IdentityKeyPair::generate(&mut rng);
        let mut alice = InMemProtocolStore::new(a_id, 1);
        let mut bob = InMemProtocolStore::new(b_id.clone(), 2);
        let pre = PreKeyRecord::generate(1, &mut rng);
        let signed = SignedPreKeyRecord::generate(1, 0, &b_id, &mut rng);
        let bundle = PreKeyBundle {
            registration_id: 2,
            device_id: 1,
            pre_key: Some((1, pre.key_pair.public_key)),
            signed_pre_key_id: 1,
            signed_pre_key: signed.key_pair.public_key,
            signed_pre_key_signature: signed.signature.to_vec(),
            identity_key: *b_id.identity_key(),
        };
        let _ = bob.save_pre_key(pre);
        let _ = bob.save_signed_pre_key(signed);
        let (a_addr, b_addr) = (ProtocolAddress::new("a", 1), ProtocolAddress::new("b", 1));
        let _ = process_prekey_bundle(&b_addr, &bundle, &mut alice, &mut rng);
        let mut seeds = Vec::new();
        if let Ok(m) = message_encrypt(b"first", &b_addr, &mut alice) {
            seeds.push(m.serialized().to_vec());
        }
        if let Some(first) = seeds
            .first()
            .and_then(|s| PreKeySignalMessage::decode(s).ok())
        {
            let _ = message_decrypt(
                &CiphertextMessage::PreKey(first),
                &a_addr,
                &mut bob,
                &mut rng,
            );
        }
        if let Ok(r) = message_encrypt(b"reply", &a_addr, &mut bob) {
            let _ = message_decrypt(&r, &b_addr, &mut alice, &mut rng);
        }
        for text in [&b"second"[..], b"third, a bit longer than one block"] {
            if let Ok(m) = message_encrypt(text, &b_addr, &mut alice) {
                seeds.push(m.serialized().to_vec());
            }
        }
        Self {
            bob,
            alice_addr: a_addr,
            seeds,
        }
    }

    /// Tries `data` as either message kind against a copy of the fixture.
    /// A rejected message must leave the session record byte-identical.
    pub fn decrypt(&self, data: &[u8]) {
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(1);
        let candidates = [
            SignalMessage::decode(data)
                .ok()
                .map(CiphertextMessage::Signal),
            PreKeySignalMessage::decode(data)
                .ok()
                .map(CiphertextMessage::PreKey),
        ];
        for message in candidates.into_iter().flatten() {
            let mut bob = self.bob.clone();
            let before = bob
                .load_session(&self.alice_addr)
                .ok()
                .flatten()
                .map(|r| r.serialize());
            if message_decrypt(&message, &self.alice_addr, &mut bob, &mut rng).is_err() {
                let after = bob
                    .load_session(&self.alice_addr)
                    .ok()
                    .flatten()
                    .map(|r| r.serialize());
                // Not assert_eq: its message would print the records' keys.
                assert!(before == after, "a rejected message changed the session");
            }
        }
    }
}

impl Default for DecryptFixture {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for DecryptFixture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DecryptFixture")
            .field("seeds", &self.seeds.len())
            .finish_non_exhaustive()
    }
}

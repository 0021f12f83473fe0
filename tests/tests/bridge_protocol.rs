//! Sotto <-> Sotto sessions: rejected messages (typed errors, state
//! untouched, next genuine message fine), a property test of random
//! interleavings, and the decrypt -> infer -> encrypt pipeline.
// A test fails by panicking, with what went wrong.
#![allow(clippy::panic)]

use proptest::prelude::*;
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;
use sotto_bridge::{
    message_decrypt, message_encrypt, process_prekey_bundle, Assistant, AssistantError, Bridge,
    CiphertextMessage, ConversationId, ConversationStore, Envelope, Error, IdentityKeyPair,
    IdentityKeyStore, InMemConversationStore, InMemProtocolStore, PreKeyBundle, PreKeyRecord,
    PreKeySignalMessage, PreKeyStore, ProtocolAddress, SessionStore, SignalMessage,
    SignedPreKeyRecord, SignedPreKeyStore, Turn,
};

fn party(rng: &mut ChaCha20Rng, reg: u32) -> (InMemProtocolStore, PreKeyBundle) {
    let identity = IdentityKeyPair::generate(rng);
    let mut store = InMemProtocolStore::new(identity.clone(), reg);
    let pre_key = PreKeyRecord::generate(1, rng);
    let signed = SignedPreKeyRecord::generate(2, 0, &identity, rng);
    let bundle = PreKeyBundle {
        registration_id: reg,
        device_id: 1,
        pre_key: Some((1, pre_key.key_pair.public_key)),
        signed_pre_key_id: 2,
        signed_pre_key: signed.key_pair.public_key,
        signed_pre_key_signature: signed.signature.to_vec(),
        identity_key: *identity.identity_key(),
    };
    store
        .save_pre_key(pre_key)
        .unwrap_or_else(|e| panic!("{e}"));
    store
        .save_signed_pre_key(signed)
        .unwrap_or_else(|e| panic!("{e}"));
    (store, bundle)
}

struct Pair {
    alice: InMemProtocolStore,
    bob: InMemProtocolStore,
    a_addr: ProtocolAddress,
    b_addr: ProtocolAddress,
    rng: ChaCha20Rng,
}

impl Pair {
    fn new(seed: u64) -> Self {
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        let (mut alice, _) = party(&mut rng, 11);
        let (bob, bob_bundle) = party(&mut rng, 22);
        let (a_addr, b_addr) = (
            ProtocolAddress::new("alice", 1),
            ProtocolAddress::new("bob", 1),
        );
        process_prekey_bundle(&b_addr, &bob_bundle, &mut alice, &mut rng)
            .unwrap_or_else(|e| panic!("{e}"));
        Pair {
            alice,
            bob,
            a_addr,
            b_addr,
            rng,
        }
    }
    fn a_send(&mut self, text: &str) -> CiphertextMessage {
        message_encrypt(text.as_bytes(), &self.b_addr, &mut self.alice)
            .unwrap_or_else(|e| panic!("{e}"))
    }
    fn b_send(&mut self, text: &str) -> CiphertextMessage {
        message_encrypt(text.as_bytes(), &self.a_addr, &mut self.bob)
            .unwrap_or_else(|e| panic!("{e}"))
    }
    fn b_recv(&mut self, m: &CiphertextMessage) -> Result<Vec<u8>, Error> {
        message_decrypt(m, &self.a_addr, &mut self.bob, &mut self.rng).map(|p| p.to_vec())
    }
    fn a_recv(&mut self, m: &CiphertextMessage) -> Result<Vec<u8>, Error> {
        message_decrypt(m, &self.b_addr, &mut self.alice, &mut self.rng).map(|p| p.to_vec())
    }
    fn bob_state(&self) -> (Option<Vec<u8>>, bool) {
        let s = self
            .bob
            .load_session(&self.a_addr)
            .unwrap_or_else(|e| panic!("{e}"))
            .map(|r| r.serialize().to_vec());
        (s, self.bob.get_pre_key(1).is_ok())
    }
    /// An established session with one round trip done.
    fn established(seed: u64) -> Self {
        let mut p = Pair::new(seed);
        let m = p.a_send("hello");
        assert_eq!(p.b_recv(&m).ok(), Some(b"hello".to_vec()));
        let r = p.b_send("hi");
        assert_eq!(p.a_recv(&r).ok(), Some(b"hi".to_vec()));
        p
    }
}

/// Re-parses mutated bytes as the same kind; a parse error is the typed
/// rejection itself.
fn reparse(kind: &CiphertextMessage, bytes: &[u8]) -> Result<CiphertextMessage, Error> {
    Ok(match kind {
        CiphertextMessage::PreKey(_) => {
            CiphertextMessage::PreKey(PreKeySignalMessage::decode(bytes)?)
        }
        CiphertextMessage::Signal(_) => CiphertextMessage::Signal(SignalMessage::decode(bytes)?),
    })
}

/// `unauthenticated`: bytes the protocol itself does not authenticate
/// (the PreKeySignalMessage's registration id field and the low nibble of
/// its version byte, as in libsignal): a flip there may be accepted, but
/// must still yield the genuine plaintext.
fn assert_every_bit_flip_rejected(
    p: &mut Pair,
    genuine: &CiphertextMessage,
    unauthenticated: &[std::ops::Range<usize>],
    plaintext: &[u8],
) {
    let before = p.bob_state();
    let bytes = genuine.serialized().to_vec();
    for i in 0..bytes.len() {
        for bit in [0u8, 3, 7] {
            let mut bad = bytes.clone();
            bad[i] ^= 1 << bit;
            let saved = p.bob.clone();
            let result = reparse(genuine, &bad).and_then(|m| p.b_recv(&m));
            let err = match result {
                Err(e) => e,
                Ok(pt) if unauthenticated.iter().any(|r| r.contains(&i)) => {
                    assert_eq!(pt, plaintext, "byte {i} bit {bit}");
                    p.bob = saved;
                    continue;
                }
                Ok(pt) => panic!(
                    "byte {i} bit {bit} flipped still decrypted to {} bytes",
                    pt.len()
                ),
            };
            assert!(
                matches!(
                    err,
                    Error::BadMac
                        | Error::Malformed { .. }
                        | Error::UnsupportedVersion(_)
                        | Error::InvalidKey { .. }
                        | Error::UnknownPreKey(_)
                        | Error::UnknownSignedPreKey(_)
                        | Error::TooFarInFuture { .. }
                        | Error::DuplicateMessage { .. }
                        | Error::MessageTooShort { .. }
                        | Error::UntrustedIdentity(_)
                ),
                "byte {i} bit {bit}: unexpected {err:?}"
            );
            assert_eq!(
                p.bob_state(),
                before,
                "byte {i} bit {bit}: state changed by a rejected message"
            );
        }
    }
}

#[test]
fn flipped_bits_in_prekey_message_are_rejected_without_state_change() {
    let mut p = Pair::new(1);
    let genuine = p.a_send("the first message");
    assert!(matches!(genuine, CiphertextMessage::PreKey(_)));
    // Field 5 (registration id = 11): tag 0x28, varint 0x0b.
    let bytes = genuine.serialized();
    let reg = bytes
        .windows(2)
        .rposition(|w| w == [0x28, 0x0b])
        .unwrap_or_else(|| panic!("no registration id field"));
    // Byte 0: the version byte, whose low nibble no reader checks.
    assert_every_bit_flip_rejected(
        &mut p,
        &genuine,
        &[0..1, reg..reg + 2],
        b"the first message",
    );
    assert_eq!(p.b_recv(&genuine).ok(), Some(b"the first message".to_vec()));
}

#[test]
fn flipped_bits_in_signal_message_are_rejected_without_state_change() {
    let mut p = Pair::established(2);
    let genuine = p.a_send("a ratchet message");
    assert!(matches!(genuine, CiphertextMessage::Signal(_)));
    assert_every_bit_flip_rejected(&mut p, &genuine, &[], b"a ratchet message");
    assert_eq!(p.b_recv(&genuine).ok(), Some(b"a ratchet message".to_vec()));
}

#[test]
fn truncations_are_rejected_without_state_change() {
    let mut p = Pair::established(3);
    let genuine = p.a_send("truncate me");
    let before = p.bob_state();
    let bytes = genuine.serialized().to_vec();
    for len in 0..bytes.len() {
        let result = reparse(&genuine, &bytes[..len]).and_then(|m| p.b_recv(&m));
        assert!(result.is_err(), "prefix of {len} bytes decrypted");
        assert_eq!(p.bob_state(), before);
    }
    assert_eq!(p.b_recv(&genuine).ok(), Some(b"truncate me".to_vec()));
}

#[test]
fn replay_is_a_duplicate_and_changes_nothing() {
    let mut p = Pair::established(4);
    let m = p.a_send("once");
    assert!(p.b_recv(&m).is_ok());
    let before = p.bob_state();
    assert!(matches!(p.b_recv(&m), Err(Error::DuplicateMessage { .. })));
    assert_eq!(p.bob_state(), before);
    let next = p.a_send("twice");
    assert_eq!(p.b_recv(&next).ok(), Some(b"twice".to_vec()));
}

#[test]
fn forward_jump_past_limit_is_rejected() {
    let mut p = Pair::established(5);
    let first = p.a_send("counter 0");
    let mut last = first.clone();
    for _ in 0..sotto_bridge::MAX_FORWARD_JUMPS + 1 {
        last = p.a_send("filler");
    }
    let before = p.bob_state();
    let err = p.b_recv(&last).err();
    assert!(
        matches!(err, Some(Error::TooFarInFuture { jump: 25_001, .. })),
        "{err:?}"
    );
    assert_eq!(p.bob_state(), before);
    assert_eq!(p.b_recv(&first).ok(), Some(b"counter 0".to_vec()));
}

#[test]
fn wrong_identity_is_rejected() {
    let mut p = Pair::established(6);
    let before = p.bob_state();
    // Mallory claims to be alice.1 with her own identity, from bob's bundle.
    let mut rng = ChaCha20Rng::seed_from_u64(66);
    let (mut mallory, _) = party(&mut rng, 33);
    let bob_identity = p.bob.identity_key_pair().unwrap_or_else(|e| panic!("{e}"));
    let signed = SignedPreKeyRecord::generate(9, 0, &bob_identity, &mut rng);
    p.bob
        .save_signed_pre_key(signed.clone())
        .unwrap_or_else(|e| panic!("{e}"));
    let bundle = PreKeyBundle {
        registration_id: 22,
        device_id: 1,
        pre_key: None,
        signed_pre_key_id: 9,
        signed_pre_key: signed.key_pair.public_key,
        signed_pre_key_signature: signed.signature.to_vec(),
        identity_key: *bob_identity.identity_key(),
    };
    process_prekey_bundle(&p.b_addr, &bundle, &mut mallory, &mut rng)
        .unwrap_or_else(|e| panic!("{e}"));
    let forged =
        message_encrypt(b"I am alice", &p.b_addr, &mut mallory).unwrap_or_else(|e| panic!("{e}"));
    assert!(matches!(
        p.b_recv(&forged),
        Err(Error::UntrustedIdentity(_))
    ));
    assert_eq!(p.bob_state().0, before.0);
    let genuine = p.a_send("still me");
    assert_eq!(p.b_recv(&genuine).ok(), Some(b"still me".to_vec()));
    // And a bundle whose signed prekey signature is broken is refused.
    let mut bad = bundle.clone();
    bad.signed_pre_key_signature[10] ^= 1;
    let (mut eve, _) = party(&mut rng, 44);
    assert!(matches!(
        process_prekey_bundle(&p.b_addr, &bad, &mut eve, &mut rng),
        Err(Error::BadSignature(_))
    ));
}

#[test]
fn session_restart_keeps_archived_state_for_late_messages() {
    let mut p = Pair::established(7);
    let late = p.a_send("late from the old session");
    // Alice restarts from a fresh bundle; bob archives the old state.
    let bob_identity = p.bob.identity_key_pair().unwrap_or_else(|e| panic!("{e}"));
    let signed = SignedPreKeyRecord::generate(5, 0, &bob_identity, &mut p.rng);
    p.bob
        .save_signed_pre_key(signed.clone())
        .unwrap_or_else(|e| panic!("{e}"));
    let bundle = PreKeyBundle {
        registration_id: 22,
        device_id: 1,
        pre_key: None,
        signed_pre_key_id: 5,
        signed_pre_key: signed.key_pair.public_key,
        signed_pre_key_signature: signed.signature.to_vec(),
        identity_key: *bob_identity.identity_key(),
    };
    process_prekey_bundle(&p.b_addr, &bundle, &mut p.alice, &mut p.rng)
        .unwrap_or_else(|e| panic!("{e}"));
    let fresh = p.a_send("new session");
    assert_eq!(p.b_recv(&fresh).ok(), Some(b"new session".to_vec()));
    assert_eq!(
        p.b_recv(&late).ok(),
        Some(b"late from the old session".to_vec())
    );
}

#[derive(Debug, Clone)]
enum Op {
    Send { from_alice: bool },
    Deliver { to_alice: bool, pick: usize },
    Drop { to_alice: bool, pick: usize },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => any::<bool>().prop_map(|from_alice| Op::Send { from_alice }),
        3 => (any::<bool>(), any::<usize>()).prop_map(|(to_alice, pick)| Op::Deliver { to_alice, pick }),
        1 => (any::<bool>(), any::<usize>()).prop_map(|(to_alice, pick)| Op::Drop { to_alice, pick }),
    ]
}

struct InFlight {
    message: CiphertextMessage,
    text: String,
}

fn ratchet_key(m: &CiphertextMessage) -> [u8; 33] {
    match m {
        CiphertextMessage::PreKey(p) => p.message().sender_ratchet_key().serialize(),
        CiphertextMessage::Signal(s) => s.sender_ratchet_key().serialize(),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, .. ProptestConfig::default() })]

    /// Every message that is not dropped decrypts exactly once, in any
    /// order, as long as its chain is one of the receiver's last 5
    /// (libsignal's limit); replays always fail.
    #[test]
    fn random_interleavings_converge(seed in any::<u64>(), ops in proptest::collection::vec(op(), 1..60)) {
        let mut p = Pair::established(seed);
        let mut flight: [Vec<InFlight>; 2] = [Vec::new(), Vec::new()]; // [to bob, to alice]
        let mut delivered: Vec<(bool, CiphertextMessage)> = Vec::new();
        // Ratchet keys each side has received, in first-seen order.
        let mut seen: [Vec<[u8; 33]>; 2] = [Vec::new(), Vec::new()];
        let mut n = 0;
        let deliver = |p: &mut Pair, seen: &mut [Vec<[u8; 33]>; 2], to_alice: bool, m: InFlight, delivered: &mut Vec<(bool, CiphertextMessage)>| {
            let side = usize::from(to_alice);
            let key = ratchet_key(&m.message);
            let pos = seen[side].iter().position(|k| *k == key);
            let evicted = pos.is_some_and(|i| i + sotto_bridge::MAX_RECEIVER_CHAINS < seen[side].len());
            let got = if to_alice { p.a_recv(&m.message) } else { p.b_recv(&m.message) };
            if evicted {
                prop_assert!(got.is_err());
            } else {
                prop_assert_eq!(got.ok(), Some(m.text.into_bytes()));
                if pos.is_none() {
                    seen[side].push(key);
                }
                delivered.push((to_alice, m.message));
            }
            Ok(())
        };
        for op in ops {
            match op {
                Op::Send { from_alice } => {
                    n += 1;
                    let text = format!("m{n}");
                    let message = if from_alice { p.a_send(&text) } else { p.b_send(&text) };
                    flight[usize::from(!from_alice)].push(InFlight { message, text });
                }
                Op::Deliver { to_alice, pick } | Op::Drop { to_alice, pick } if flight[usize::from(to_alice)].is_empty() => {
                    let _ = pick;
                }
                Op::Deliver { to_alice, pick } => {
                    let q = &mut flight[usize::from(to_alice)];
                    let m = q.remove(pick % q.len());
                    deliver(&mut p, &mut seen, to_alice, m, &mut delivered)?;
                }
                Op::Drop { to_alice, pick } => {
                    let q = &mut flight[usize::from(to_alice)];
                    q.remove(pick % q.len());
                }
            }
        }
        for to_alice in [false, true] {
            let rest: Vec<_> = flight[usize::from(to_alice)].drain(..).rev().collect();
            for m in rest {
                deliver(&mut p, &mut seen, to_alice, m, &mut delivered)?;
            }
        }
        for (to_alice, m) in &delivered {
            let again = if *to_alice { p.a_recv(m) } else { p.b_recv(m) };
            prop_assert!(again.is_err(), "a replay decrypted");
        }
    }
}

/// Echoes the history it is shown, so the test sees exactly what the
/// engine would.
struct EchoHistory;

impl Assistant for EchoHistory {
    fn reply(
        &mut self,
        conversation: &ConversationId,
        history: &[Turn],
    ) -> Result<String, AssistantError> {
        let lines: Vec<String> = history
            .iter()
            .map(|t| format!("{:?}:{}", t.role, t.text))
            .collect();
        Ok(format!("[{}] {}", conversation.0, lines.join("|")))
    }
}

#[test]
fn pipeline_keeps_conversations_apart() {
    let mut rng = ChaCha20Rng::seed_from_u64(8);
    let identity = IdentityKeyPair::generate(&mut rng);
    let mut bridge = Bridge::new(
        InMemProtocolStore::new(identity, 99),
        InMemConversationStore::default(),
        Box::new(EchoHistory),
    );
    let me = ProtocolAddress::new("sotto", 1);
    let mut users: Vec<(ProtocolAddress, InMemProtocolStore)> = Vec::new();
    for (i, name) in ["ana", "ben", "cai"].iter().enumerate() {
        let bundle = bridge
            .prekey_bundle(100 + i as u32, 1, &mut rng)
            .unwrap_or_else(|e| panic!("{e}"));
        let (mut store, _) = party(&mut rng, 200 + i as u32);
        process_prekey_bundle(&me, &bundle, &mut store, &mut rng).unwrap_or_else(|e| panic!("{e}"));
        users.push((ProtocolAddress::new(*name, 1), store));
    }
    for round in 0..3 {
        for (addr, store) in users.iter_mut() {
            let text = format!("{} says {round}", addr.name);
            let msg =
                message_encrypt(text.as_bytes(), &me, store).unwrap_or_else(|e| panic!("{e}"));
            let reply = bridge
                .handle(addr, &Envelope::from(&msg), &mut rng)
                .unwrap_or_else(|e| panic!("{e}"));
            let reply = reply.decode().unwrap_or_else(|e| panic!("{e}"));
            let plain =
                message_decrypt(&reply, &me, store, &mut rng).unwrap_or_else(|e| panic!("{e}"));
            let plain = String::from_utf8(plain.to_vec()).unwrap_or_else(|e| panic!("{e}"));
            assert!(plain.starts_with(&format!("[{}.1]", addr.name)), "{plain}");
            // Only this user's turns appear.
            for other in ["ana", "ben", "cai"].iter().filter(|o| **o != addr.name) {
                assert!(
                    !plain.contains(&format!("{other} says")),
                    "{plain} mixes in {other}"
                );
            }
            assert!(plain.contains(&format!("User:{} says {round}", addr.name)));
            let id = ConversationId(format!("{}.1", addr.name));
            assert_eq!(
                bridge.conversations().history(&id).map(|h| h.len()).ok(),
                Some(2 * (round + 1))
            );
        }
    }
    let ana = bridge
        .conversations()
        .history(&ConversationId("ana.1".into()))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(ana.len(), 6);

    // A forged envelope is refused and leaves the conversation alone.
    let (addr, store) = &mut users[0];
    let msg = message_encrypt(b"genuine", &me, store).unwrap_or_else(|e| panic!("{e}"));
    let mut forged = Envelope::from(&msg);
    let last = forged.body.len() - 1;
    forged.body[last] ^= 0x40;
    assert!(bridge.handle(addr, &forged, &mut rng).is_err());
    assert_eq!(
        bridge
            .conversations()
            .history(&ConversationId("ana.1".into()))
            .map(|h| h.len())
            .ok(),
        Some(6)
    );
    assert!(bridge.handle(addr, &Envelope::from(&msg), &mut rng).is_ok());
}

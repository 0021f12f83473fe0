//! What a forged message costs the receiver at worst: Bob holds a session
//! record at its limits (the current state and ARCHIVED_STATES_MAX archived
//! ones, each with MAX_RECEIVER_CHAINS receiving chains holding
//! MAX_SKIPPED_KEYS_PER_CHAIN skipped keys), and an attacker without any
//! key sends messages built to cause the most work: a new ratchet key (a DH
//! step on every state tried) with a counter as far as one state allows, or
//! as far as the whole search may go when shared by every state; and a
//! PreKeySignalMessage with a fresh base key. The stated bound is in
//! bridge/src/session.rs. `cargo bench -p sotto-bridge --bench bridge_forged`.
// Setting up the record must not fail; if it does, the bench stops there.
#![allow(clippy::panic)]

use criterion::{criterion_group, criterion_main, Criterion};
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;
use sotto_bridge::fuzzing::forged_signal_message;
use sotto_bridge::{
    known_answer, message_decrypt, message_encrypt, process_prekey_bundle, CiphertextMessage,
    IdentityKey, IdentityKeyPair, InMemProtocolStore, KeyPair, PreKeyBundle, PreKeyRecord,
    PreKeyStore, ProtocolAddress, SessionRecord, SessionStore, SignedPreKeyRecord,
    SignedPreKeyStore, ARCHIVED_STATES_MAX, MAX_CHAIN_STEPS_PER_MESSAGE, MAX_FORWARD_JUMPS,
    MAX_RECEIVER_CHAINS, MAX_SKIPPED_KEYS_PER_CHAIN,
};

const UNUSED_PRE_KEY: u32 = 1000;

struct Worst {
    bob: InMemProtocolStore,
    alice_identity: IdentityKey,
    alice: ProtocolAddress,
    rng: ChaCha20Rng,
}

/// Bob's record with every archived state kept, built through the public
/// API: each of Alice's sessions starts from a new bundle. `full`: each
/// state also fills Bob's receiving chains, Alice sending
/// `MAX_SKIPPED_KEYS_PER_CHAIN + 1` messages of which only the last
/// arrives, and ratcheting after each (the largest record, whose load is
/// the floor of any message); otherwise one chain, no skipped keys (the
/// protocol work alone).
fn worst_case_record(full: bool) -> Worst {
    let mut rng = ChaCha20Rng::seed_from_u64(0xF0);
    let alice_id = IdentityKeyPair::generate(&mut rng);
    let bob_id = IdentityKeyPair::generate(&mut rng);
    let mut bob = InMemProtocolStore::new(bob_id.clone(), 2);
    let (a, b) = (ProtocolAddress::new("a", 1), ProtocolAddress::new("b", 1));
    for session in 0..=ARCHIVED_STATES_MAX as u32 {
        // A fresh store for Alice's side of each session keeps her
        // encryptions cheap; her identity stays the same.
        let mut alice = InMemProtocolStore::new(alice_id.clone(), 1);
        let signed = SignedPreKeyRecord::generate(session + 1, 0, &bob_id, &mut rng);
        let pre = PreKeyRecord::generate(session + 1, &mut rng);
        let bundle = PreKeyBundle::from_records(2, 1, *bob_id.identity_key(), &signed, Some(&pre));
        ok(bob.save_signed_pre_key(signed));
        ok(bob.save_pre_key(pre));
        ok(process_prekey_bundle(&b, &bundle, &mut alice, &mut rng));
        let first = ok(message_encrypt(b"open", &b, &mut alice));
        ok(message_decrypt(&first, &a, &mut bob, &mut rng));
        for _ in 0..if full { MAX_RECEIVER_CHAINS } else { 0 } {
            let reply = ok(message_encrypt(b"ack", &a, &mut bob));
            ok(message_decrypt(&reply, &b, &mut alice, &mut rng));
            let mut last = None;
            for _ in 0..=MAX_SKIPPED_KEYS_PER_CHAIN {
                last = Some(ok(message_encrypt(b"m", &b, &mut alice)));
            }
            if let Some(last) = last {
                ok(message_decrypt(&last, &a, &mut bob, &mut rng));
            }
        }
    }
    let record = ok(bob.load_session(&a)).unwrap_or_default();
    assert_eq!(record.archived_count(), ARCHIVED_STATES_MAX);
    // An unused one-time prekey, so a forged PreKeySignalMessage can make
    // Bob run the whole X3DH.
    ok(bob.save_pre_key(PreKeyRecord::generate(UNUSED_PRE_KEY, &mut rng)));
    Worst {
        bob,
        alice_identity: *alice_id.identity_key(),
        alice: a,
        rng,
    }
}

fn ok<T>(r: sotto_bridge::Result<T>) -> T {
    r.unwrap_or_else(|e| panic!("{e}"))
}

fn forged(c: &mut Criterion) {
    for (full, record_name) in [(false, "41_states_sparse"), (true, "41_states_full")] {
        forged_against(c, worst_case_record(full), record_name);
    }
}

fn forged_against(c: &mut Criterion, mut w: Worst, record_name: &str) {
    let record = ok(w.bob.load_session(&w.alice))
        .map(|r| r.serialize())
        .unwrap_or_default();
    eprintln!(
        "{record_name}: {} states, {:.2} MiB serialized",
        1 + ARCHIVED_STATES_MAX,
        record.len() as f64 / (1 << 20) as f64
    );
    let states = 1 + ARCHIVED_STATES_MAX as u32;
    let mut group = c.benchmark_group("forged_message");
    group.sample_size(10);
    group.bench_function(format!("record_load_only/{record_name}"), |b| {
        b.iter(|| SessionRecord::deserialize(&record).map(|r| r.archived_count()))
    });
    let mut forge_rng = ChaCha20Rng::seed_from_u64(7);
    for (name, counter) in [
        ("signal_new_ratchet_counter_max_jump", MAX_FORWARD_JUMPS),
        (
            "signal_new_ratchet_counter_shared_budget",
            MAX_CHAIN_STEPS_PER_MESSAGE / states,
        ),
        ("signal_new_ratchet_counter_0", 0),
    ] {
        let m = CiphertextMessage::Signal(forged_signal_message(counter, &mut forge_rng));
        group.bench_function(format!("{name}/{record_name}"), |b| {
            b.iter(|| {
                let r = message_decrypt(&m, &w.alice, &mut w.bob, &mut w.rng);
                assert!(r.is_err(), "a forged message decrypted");
            })
        });
    }
    let prekey = CiphertextMessage::PreKey(known_answer::prekey_message(
        1,
        UNUSED_PRE_KEY,
        1,
        KeyPair::generate(&mut forge_rng).public_key,
        w.alice_identity,
        forged_signal_message(MAX_FORWARD_JUMPS, &mut forge_rng),
    ));
    group.bench_function(
        format!("prekey_new_base_key_counter_max_jump/{record_name}"),
        |b| {
            b.iter(|| {
                let r = message_decrypt(&prekey, &w.alice, &mut w.bob, &mut w.rng);
                assert!(r.is_err(), "a forged message decrypted");
            })
        },
    );
    group.finish();
    // A refused message consumes nothing.
    assert!(w.bob.get_pre_key(UNUSED_PRE_KEY).is_ok());
}

criterion_group!(benches, forged);
criterion_main!(benches);

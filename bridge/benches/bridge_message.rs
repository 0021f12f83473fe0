//! The bridge's own cost per message: decrypt the user's message and
//! encrypt the reply (session record load/store included), with no
//! inference. `cargo bench -p sotto-bridge`.

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;
use sotto_bridge::{
    message_decrypt, message_encrypt, process_prekey_bundle, IdentityKeyPair, InMemProtocolStore,
    PreKeyBundle, PreKeyRecord, PreKeyStore, ProtocolAddress, SignedPreKeyRecord,
    SignedPreKeyStore,
};

fn setup() -> (InMemProtocolStore, InMemProtocolStore, ChaCha20Rng) {
    let mut rng = ChaCha20Rng::seed_from_u64(1);
    let user_id = IdentityKeyPair::generate(&mut rng);
    let bot_id = IdentityKeyPair::generate(&mut rng);
    let mut user = InMemProtocolStore::new(user_id, 1);
    let mut bot = InMemProtocolStore::new(bot_id.clone(), 2);
    let pre_key = PreKeyRecord::generate(1, &mut rng);
    let signed = SignedPreKeyRecord::generate(1, 0, &bot_id, &mut rng);
    let bundle = PreKeyBundle {
        registration_id: 2,
        device_id: 1,
        pre_key: Some((1, pre_key.key_pair.public_key)),
        signed_pre_key_id: 1,
        signed_pre_key: signed.key_pair.public_key,
        signed_pre_key_signature: signed.signature.to_vec(),
        identity_key: *bot_id.identity_key(),
    };
    bot.save_pre_key(pre_key).ok();
    bot.save_signed_pre_key(signed).ok();
    let bot_addr = ProtocolAddress::new("bot", 1);
    let user_addr = ProtocolAddress::new("user", 1);
    process_prekey_bundle(&bot_addr, &bundle, &mut user, &mut rng).ok();
    let first = message_encrypt(b"hello", &bot_addr, &mut user).ok();
    if let Some(m) = first {
        message_decrypt(&m, &user_addr, &mut bot, &mut rng).ok();
    }
    if let Ok(r) = message_encrypt(b"hi", &user_addr, &mut bot) {
        message_decrypt(&r, &bot_addr, &mut user, &mut rng).ok();
    }
    (user, bot, rng)
}

fn per_message(c: &mut Criterion) {
    let (mut user, mut bot, mut rng) = setup();
    let (bot_addr, user_addr) = (
        ProtocolAddress::new("bot", 1),
        ProtocolAddress::new("user", 1),
    );
    let question = vec![b'q'; 200];
    let answer = vec![b'a'; 600];
    c.bench_function("bridge decrypt 200 B + encrypt 600 B reply", |b| {
        b.iter_batched(
            || message_encrypt(&question, &bot_addr, &mut user).ok(),
            |msg| {
                if let Some(msg) = msg {
                    let plain = message_decrypt(&msg, &user_addr, &mut bot, &mut rng).ok();
                    let reply = message_encrypt(&answer, &user_addr, &mut bot).ok();
                    (plain.map(|p| p.len()), reply.map(|r| r.serialized().len()))
                } else {
                    (None, None)
                }
            },
            BatchSize::SmallInput,
        )
    });
}

criterion_group!(benches, per_message);
criterion_main!(benches);

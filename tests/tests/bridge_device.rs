//! The assistant device (bridge/src/device.rs): the journal answers every
//! decrypted message exactly once across restarts and in per-conversation
//! order; prekeys are handed out once, replenished and rotated with a
//! grace period; a changed peer identity is refused until accepted; every
//! limit of `Limits` is a typed error that changes nothing (or, for a
//! message too long, an encrypted refusal).
#![allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;
use sotto_bridge::{
    Assistant, AssistantDevice, AssistantError, ConversationId, DeviceOptions, Error, Limits,
    PreKeyStore, ProtocolAddress, Refusal, Turn,
};
use sotto_tests::bridge_user::{BridgeUser, EchoAssistant};

const DAY: Duration = Duration::from_secs(24 * 3600);

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("sotto-device-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn key() -> sotto_bridge::StorageKey {
    sotto_bridge::StorageKey::from_bytes([5; 32])
}

fn device_with(limits: Limits) -> AssistantDevice {
    let options = DeviceOptions {
        limits,
        ..DeviceOptions::default()
    };
    AssistantDevice::in_memory(options, &mut ChaCha20Rng::seed_from_u64(1)).unwrap()
}

fn join(device: &mut AssistantDevice, name: &str, seed: u64, rng: &mut ChaCha20Rng) -> BridgeUser {
    let bundle = device.prekey_bundle(SystemTime::now(), rng).unwrap();
    BridgeUser::join(name, seed, &bundle)
}

#[test]
fn a_journaled_message_is_answered_exactly_once_across_restarts() {
    let dir = temp_dir("journal");
    let mut rng = ChaCha20Rng::seed_from_u64(2);
    let open = |rng: &mut ChaCha20Rng| {
        AssistantDevice::open(&dir, &key(), DeviceOptions::default(), rng).unwrap()
    };
    let mut device = open(&mut rng);
    let mut alice = join(&mut device, "alice", 3, &mut rng);
    let first = alice.encrypt("first");
    let received = device
        .receive(&alice.address.clone(), &first, &mut rng)
        .unwrap();
    assert!(!received.resent);
    // "Crash" before answering: the device is dropped with the turn unanswered.
    drop(device);

    let mut device = open(&mut rng);
    assert_eq!(
        device.unanswered().cloned().collect::<Vec<_>>(),
        vec![received.turn.clone()]
    );
    // The transport, unsure, resends the envelope: recognized, not decrypted again.
    let again = device
        .receive(&alice.address.clone(), &first, &mut rng)
        .unwrap();
    assert_eq!(
        (again.turn.clone(), again.resent),
        (received.turn.clone(), true)
    );
    let mut bot = EchoAssistant::default();
    let reply = device.answer_next(&mut bot).unwrap().unwrap();
    assert!(
        device.answer_next(&mut bot).unwrap().is_none(),
        "answered once"
    );
    assert_eq!(bot.calls, 1);
    // "Crash" before the transport acknowledged: the same reply, byte for byte.
    drop(device);
    let mut device = open(&mut rng);
    assert_eq!(device.outbox().unwrap(), vec![reply.clone()]);
    let resent = device
        .handle(&alice.address.clone(), &first, &mut bot, &mut rng)
        .unwrap();
    assert_eq!(resent, vec![reply.clone()]);
    assert_eq!(bot.calls, 1, "never generated twice");
    assert_eq!(alice.open(&reply), "1 turns in alice.1; you said: first");
    assert!(
        alice.decrypt(&reply.envelope).is_err(),
        "the peer refuses the copy"
    );
    assert!(device.ack(&reply.turn).unwrap());
    drop(device);
    let mut device = open(&mut rng);
    assert!(device.outbox().unwrap().is_empty());
    // Acknowledged: a resend is now an ordinary replay.
    assert!(matches!(
        device.receive(&alice.address.clone(), &first, &mut rng),
        Err(Error::DuplicateMessage { .. })
    ));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn replies_go_out_in_conversation_order() {
    let mut rng = ChaCha20Rng::seed_from_u64(4);
    let mut device = device_with(Limits::default());
    let mut users = [
        join(&mut device, "alice", 5, &mut rng),
        join(&mut device, "bob", 6, &mut rng),
    ];
    let mut turns = Vec::new();
    for (who, text) in [(0, "a1"), (1, "b1"), (0, "a2"), (0, "a3"), (1, "b2")] {
        let env = users[who].encrypt(text);
        let sender = users[who].address.clone();
        turns.push(device.receive(&sender, &env, &mut rng).unwrap().turn);
    }
    assert_eq!(
        device.unanswered().cloned().collect::<Vec<_>>(),
        turns,
        "arrival order"
    );
    // Alice's second message cannot be answered before her first.
    assert!(matches!(
        device.complete(&turns[2], Ok("too early".into())),
        Err(Error::TurnOutOfOrder { oldest: 1, .. })
    ));
    let mut bot = EchoAssistant::default();
    let mut seen = Vec::new();
    while let Some(reply) = device.answer_next(&mut bot).unwrap() {
        let who = usize::from(reply.turn.peer.name == "bob");
        seen.push(users[who].open(&reply));
    }
    assert_eq!(
        seen,
        vec![
            "1 turns in alice.1; you said: a1",
            "1 turns in bob.1; you said: b1",
            "3 turns in alice.1; you said: a2",
            "5 turns in alice.1; you said: a3",
            "3 turns in bob.1; you said: b2",
        ]
    );
}

#[test]
fn one_time_prekeys_are_handed_out_once_and_replenished_within_bounds() {
    let limits = Limits {
        max_one_time_prekeys: 10,
        one_time_prekey_batch: 4,
        ..Limits::default()
    };
    let mut device = device_with(limits);
    let mut rng = ChaCha20Rng::seed_from_u64(7);
    let now = SystemTime::now();
    let bundles: Vec<_> = (0..30)
        .map(|_| device.prekey_bundle(now, &mut rng).unwrap())
        .collect();
    let ids: BTreeSet<u32> = bundles.iter().map(|b| b.pre_key.unwrap().0).collect();
    assert_eq!(ids.len(), 30, "each bundle has its own one-time prekey");
    let stored = ids
        .iter()
        .filter(|id| device.store().get_pre_key(**id).is_ok())
        .count();
    assert!(stored <= 10, "{stored} one-time prekeys stored");
    // The newest bundle works; the oldest one's prekey was dropped.
    let mut newest = BridgeUser::join("new", 8, &bundles[29]);
    let env = newest.encrypt("hi");
    device
        .receive(&newest.address.clone(), &env, &mut rng)
        .unwrap();
    assert!(
        device
            .store()
            .get_pre_key(bundles[29].pre_key.unwrap().0)
            .is_err(),
        "used, removed"
    );
    let mut oldest = BridgeUser::join("old", 9, &bundles[0]);
    let env = oldest.encrypt("hi");
    assert!(matches!(
        device.receive(&oldest.address.clone(), &env, &mut rng),
        Err(Error::UnknownPreKey(_))
    ));
}

#[test]
fn signed_prekeys_rotate_and_the_previous_one_keeps_a_grace_period() {
    let limits = Limits {
        signed_prekey_rotation: 7 * DAY,
        signed_prekey_grace: 30 * DAY,
        max_signed_prekeys: 3,
        ..Limits::default()
    };
    let mut device = device_with(limits);
    let mut rng = ChaCha20Rng::seed_from_u64(10);
    let t0 = SystemTime::now();
    let first = device.prekey_bundle(t0, &mut rng).unwrap();
    assert_eq!(
        device
            .prekey_bundle(t0 + DAY, &mut rng)
            .unwrap()
            .signed_pre_key_id,
        first.signed_pre_key_id
    );
    let rotated = device.prekey_bundle(t0 + 8 * DAY, &mut rng).unwrap();
    assert_ne!(
        rotated.signed_pre_key_id, first.signed_pre_key_id,
        "rotated after 7 days"
    );
    // A peer holding the first bundle can still start a session in the grace period.
    let mut late = BridgeUser::join("late", 11, &first);
    let env = late.encrypt("hello");
    device
        .receive(&late.address.clone(), &env, &mut rng)
        .unwrap();
    // Past the grace period the old signed prekey is gone.
    let stale = device.prekey_bundle(t0 + 8 * DAY, &mut rng).unwrap();
    let stale = sotto_bridge::PreKeyBundle {
        signed_pre_key_id: first.signed_pre_key_id,
        signed_pre_key: first.signed_pre_key,
        signed_pre_key_signature: first.signed_pre_key_signature.clone(),
        ..stale
    };
    device.prekey_bundle(t0 + 40 * DAY, &mut rng).unwrap();
    let mut too_late = BridgeUser::join("too-late", 12, &stale);
    let env = too_late.encrypt("hello");
    assert!(matches!(
        device.receive(&too_late.address.clone(), &env, &mut rng),
        Err(Error::UnknownSignedPreKey(id)) if id == first.signed_pre_key_id
    ));
    // An explicit rotation, and the count bound.
    let mut ids = BTreeSet::new();
    for i in 0..6 {
        ids.insert(
            device
                .rotate_signed_prekey(t0 + (41 + i) * DAY, &mut rng)
                .unwrap(),
        );
    }
    let kept = ids
        .iter()
        .filter(|id| {
            sotto_bridge::SignedPreKeyStore::get_signed_pre_key(device.store(), **id).is_ok()
        })
        .count();
    assert_eq!((ids.len(), kept), (6, 3));
}

#[test]
fn a_changed_identity_is_refused_until_accepted() {
    let mut device = device_with(Limits::default());
    let mut rng = ChaCha20Rng::seed_from_u64(13);
    let mut alice = join(&mut device, "alice", 14, &mut rng);
    let mut bot = EchoAssistant::default();
    let env = alice.encrypt("before");
    let first = device
        .handle(&alice.address.clone(), &env, &mut bot, &mut rng)
        .unwrap();
    alice.open(&first[0]);
    let old_number = device.safety_number(&alice.address, "sotto").unwrap();

    // Alice reinstalls: a new identity at the same address.
    let mut reinstalled = join(&mut device, "alice", 15, &mut rng);
    let env = reinstalled.encrypt("after reinstall");
    assert!(matches!(
        device.receive(&reinstalled.address.clone(), &env, &mut rng),
        Err(Error::UntrustedIdentity(_))
    ));
    let offered = device.offered_identity(&reinstalled.address).unwrap();
    assert_eq!(
        offered,
        *sotto_bridge::IdentityKeyStore::identity_key_pair(&reinstalled.store)
            .unwrap()
            .identity_key()
    );
    device
        .accept_identity(&reinstalled.address, &offered)
        .unwrap();
    assert_ne!(
        device.safety_number(&alice.address, "sotto").unwrap(),
        old_number
    );
    // The same envelope now goes through; the conversation continues.
    let replies = device
        .handle(&reinstalled.address.clone(), &env, &mut bot, &mut rng)
        .unwrap();
    assert_eq!(
        reinstalled.open(&replies[0]),
        "3 turns in alice.1; you said: after reinstall"
    );
    // The old installation's session is gone.
    let env = alice.encrypt("old phone");
    assert!(device
        .receive(&alice.address.clone(), &env, &mut rng)
        .is_err());
}

#[test]
fn limits_are_typed_errors_that_change_nothing() {
    let limits = Limits {
        max_peers: 2,
        max_unanswered_per_conversation: 2,
        max_outbox: 3,
        ..Limits::default()
    };
    let mut device = device_with(limits);
    let mut rng = ChaCha20Rng::seed_from_u64(16);
    let mut users: Vec<BridgeUser> = (0..3)
        .map(|i| join(&mut device, &format!("u{i}"), 20 + i, &mut rng))
        .collect();
    for user in users.iter_mut().take(2) {
        let env = user.encrypt("hi");
        device
            .receive(&user.address.clone(), &env, &mut rng)
            .unwrap();
    }
    let env = users[2].encrypt("hi");
    assert!(matches!(
        device.receive(&users[2].address.clone(), &env, &mut rng),
        Err(Error::LimitExceeded {
            what: "peers",
            limit: 2
        })
    ));
    // Two unanswered from u0; the third waits (not consumed: it goes through later).
    let second = users[0].encrypt("second");
    device
        .receive(&users[0].address.clone(), &second, &mut rng)
        .unwrap();
    let third = users[0].encrypt("third");
    assert!(matches!(
        device.receive(&users[0].address.clone(), &third, &mut rng),
        Err(Error::LimitExceeded { limit: 2, .. })
    ));
    let mut bot = EchoAssistant::default();
    let mut replies = Vec::new();
    while let Some(r) = device.answer_next(&mut bot).unwrap() {
        replies.push(r);
    }
    // Three replies wait for acknowledgement: the outbox is full.
    assert!(matches!(
        device.receive(&users[0].address.clone(), &third, &mut rng),
        Err(Error::LimitExceeded {
            what: "unacknowledged replies",
            limit: 3
        })
    ));
    device.ack(&replies[0].turn).unwrap();
    device
        .receive(&users[0].address.clone(), &third, &mut rng)
        .unwrap();
    // Forgetting a peer makes room for a new one.
    device.forget_peer(&users[1].address).unwrap();
    device
        .receive(&users[2].address.clone(), &env, &mut rng)
        .unwrap();
    assert_eq!(device.peer_count(), 2);
}

#[test]
fn a_session_record_may_not_grow_past_its_bound() {
    let limits = Limits {
        max_session_record_bytes: 4000,
        ..Limits::default()
    };
    let mut device = device_with(limits);
    let mut rng = ChaCha20Rng::seed_from_u64(17);
    let mut user = join(&mut device, "skipper", 18, &mut rng);
    let env = user.encrypt("hello");
    let mut bot = EchoAssistant::default();
    for r in device
        .handle(&user.address.clone(), &env, &mut bot, &mut rng)
        .unwrap()
    {
        user.open(&r);
        device.ack(&r.turn).unwrap();
    }
    // 100 messages, the last delivered first: 99 skipped message keys to keep.
    let batch: Vec<_> = (0..100).map(|i| user.encrypt(&format!("m{i}"))).collect();
    let session = |device: &AssistantDevice| {
        sotto_bridge::SessionStore::load_session(
            device.store(),
            &ProtocolAddress::new("skipper", 1),
        )
        .unwrap()
        .unwrap()
        .serialize()
    };
    let before = session(&device);
    assert!(matches!(
        device.receive(&user.address.clone(), &batch[99], &mut rng),
        Err(Error::LimitExceeded {
            what: "session record bytes",
            ..
        })
    ));
    assert_eq!(session(&device), before, "the session is as it was");
    // In order, nothing is skipped: they all go through.
    for env in &batch[..5] {
        device
            .receive(&user.address.clone(), env, &mut rng)
            .unwrap();
    }
}

/// Refuses messages containing "LONG" the way the engine refuses a message
/// longer than its context.
struct ContextBound(EchoAssistant);

impl Assistant for ContextBound {
    fn reply(&mut self, c: &ConversationId, history: &[Turn]) -> Result<String, AssistantError> {
        if history.last().is_some_and(|t| t.text.contains("LONG")) {
            return Err(AssistantError::MessageTooLong {
                tokens: 900,
                available: 300,
            });
        }
        self.0.reply(c, history)
    }
}

#[test]
fn messages_too_long_get_an_encrypted_refusal_and_leave_the_history() {
    let limits = Limits {
        max_message_bytes: 100,
        max_turns_per_conversation: 4,
        ..Limits::default()
    };
    let mut device = device_with(limits);
    let mut rng = ChaCha20Rng::seed_from_u64(19);
    let mut user = join(&mut device, "verbose", 20, &mut rng);
    let mut bot = ContextBound(EchoAssistant::default());
    let mut say = |device: &mut AssistantDevice, text: &str| {
        let env = user.encrypt(text);
        let replies = device
            .handle(&user.address.clone(), &env, &mut bot, &mut rng)
            .unwrap();
        assert_eq!(replies.len(), 1);
        device.ack(&replies[0].turn).unwrap();
        (user.open(&replies[0]), replies[0].refusal)
    };
    let (text, refusal) = say(&mut device, &"x".repeat(500));
    assert_eq!(
        refusal,
        Some(Refusal::TooManyBytes {
            bytes: 500,
            limit: 100
        })
    );
    assert!(text.contains("500 bytes"), "{text}");
    let (text, refusal) = say(&mut device, "a LONG one");
    assert_eq!(
        refusal,
        Some(Refusal::TooManyTokens {
            tokens: 900,
            available: 300
        })
    );
    assert!(text.contains("900 tokens"), "{text}");
    // Refused messages are not part of what the assistant sees next.
    let (text, refusal) = say(&mut device, "short");
    assert_eq!(
        (text.as_str(), refusal),
        ("1 turns in verbose.1; you said: short", None)
    );
    for i in 0..6 {
        say(&mut device, &format!("more {i}"));
    }
    let kept = device.history(&ProtocolAddress::new("verbose", 1)).unwrap();
    assert_eq!(kept.len(), 8, "4 turns kept, each with its reply");
}

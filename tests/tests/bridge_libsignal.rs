//! Live interop with Signal's own libsignal (npm
//! `@signalapp/libsignal-client` 0.72.1, the last release that accepts
//! version-3 sessions), run by node as a separate process
//! (tests/peer/libsignal_peer.mjs): the scenarios shared with python-axolotl
//! (sotto_tests::bridge_peer::scenarios), the version byte libsignal
//! writes, XEdDSA signatures both ways and the safety number. Install the
//! peer with scripts/bridge-peer-deps.sh; without it these tests fail on
//! purpose.
// A test fails by panicking, with what went wrong.
#![allow(clippy::panic)]

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;
use serde_json::json;
use sotto_bridge::{CiphertextMessage, IdentityKeyPair, IdentityKeyStore, PublicKey};
use sotto_tests::bridge_peer::{scenarios, Peer, PeerKind, SottoParty, LIBSIGNAL_VERSION, SOTTO};

const PEER: PeerKind = PeerKind::Libsignal;

#[test]
fn libsignal_starts_session_from_sotto_bundle() {
    scenarios::peer_starts_session_from_sotto_bundle(PEER);
}

#[test]
fn sotto_starts_session_from_libsignal_bundle() {
    scenarios::sotto_starts_session_from_peer_bundle(PEER);
}

#[test]
fn out_of_order_both_ways() {
    scenarios::out_of_order_both_ways(PEER);
}

#[test]
fn forged_envelopes_are_refused_and_the_session_survives() {
    scenarios::forged_envelopes_are_refused_and_the_session_survives(PEER);
}

#[test]
fn replays_are_refused() {
    scenarios::replays_are_refused(PEER);
}

#[test]
fn pipeline_reply_decrypts_on_libsignal() {
    scenarios::pipeline_replies_decrypt_on_peer(PEER);
}

#[test]
fn model_replies_decrypt_on_libsignal() {
    scenarios::model_replies_decrypt_on_peer(PEER);
}

/// libsignal writes `(3 << 4) | 4` on a v3 session, for both message
/// kinds; Sotto reads both, and libsignal reads Sotto's 0x33.
#[test]
fn libsignal_writes_version_byte_0x34_and_both_sides_read_each_other() {
    let mut peer = Peer::spawn(PEER);
    assert_eq!(
        peer.ok(json!({"op": "version"}))["libsignal"],
        LIBSIGNAL_VERSION
    );
    let mut sotto = SottoParty::new(200);
    peer.process_bundle(SOTTO, &sotto.bundle);
    let (kind, first) = peer.encrypt_raw(SOTTO, "v3 from libsignal");
    assert_eq!((kind.as_str(), first[0]), ("prekey", 0x34));
    let first = sotto_tests::bridge_peer::parse_envelope("prekey", &first)
        .unwrap_or_else(|e| panic!("{e}"));
    let CiphertextMessage::PreKey(inner) = &first else {
        panic!("not a prekey message")
    };
    assert_eq!(inner.message().serialized()[0], 0x34);
    assert_eq!(sotto.decrypt(&first), "v3 from libsignal");
    let ours = sotto.encrypt("v3 from sotto");
    assert_eq!(ours.serialized()[0], sotto_bridge::VERSION_BYTE);
    assert_eq!(peer.decrypt(SOTTO, &ours), Ok("v3 from sotto".into()));
    let (kind, next) = peer.encrypt_raw(SOTTO, "a ratchet message");
    assert_eq!((kind.as_str(), next[0]), ("message", 0x34));
}

/// XEdDSA both ways: libsignal's signatures verify here, ours verify in
/// libsignal, and a flipped bit fails on both sides.
#[test]
fn xeddsa_signatures_verify_across_implementations() {
    let mut peer = Peer::spawn(PEER);
    let mut rng = ChaCha20Rng::seed_from_u64(201);
    for len in [0usize, 1, 33, 64, 200] {
        let message: Vec<u8> = (0..len).map(|i| (i * 7 + len) as u8).collect();
        // libsignal signs, Sotto verifies.
        let r = peer.ok(json!({"op": "sign", "message": B64.encode(&message)}));
        let key = PublicKey::deserialize(
            &B64.decode(r["public_key"].as_str().unwrap_or(""))
                .unwrap_or_default(),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let signature = B64
            .decode(r["signature"].as_str().unwrap_or(""))
            .unwrap_or_default();
        assert!(key.verify_signature(&message, &signature), "len {len}");
        let mut bad = signature.clone();
        bad[len % 64] ^= 0x01;
        assert!(!key.verify_signature(&message, &bad), "len {len}: tampered");

        // Sotto signs, libsignal verifies.
        let ours = IdentityKeyPair::generate(&mut rng);
        let sig = ours.private_key().calculate_signature(&message, &mut rng);
        let verify = |peer: &mut Peer, sig: &[u8], msg: &[u8]| {
            peer.ok(json!({"op": "verify",
                "public_key": B64.encode(ours.public_key().serialize()),
                "message": B64.encode(msg), "signature": B64.encode(sig)}))["valid"]
                .as_bool()
        };
        assert_eq!(verify(&mut peer, &sig, &message), Some(true), "len {len}");
        let mut bad = sig;
        bad[(len + 40) % 64] ^= 0x80;
        assert_eq!(
            verify(&mut peer, &bad, &message),
            Some(false),
            "len {len}: tampered"
        );
        let mut other = message.clone();
        other.push(1);
        assert_eq!(
            verify(&mut peer, &sig, &other),
            Some(false),
            "len {len}: other message"
        );
    }
}

/// The safety number is libsignal's displayable fingerprint.
#[test]
fn safety_number_is_libsignals_displayable_fingerprint() {
    let mut peer = Peer::spawn(PEER);
    let mut rng = ChaCha20Rng::seed_from_u64(202);
    for (local_id, remote_id) in [("+14152222222", "+14153333333"), ("sotto", "peer")] {
        let (a, b) = (
            IdentityKeyPair::generate(&mut rng),
            IdentityKeyPair::generate(&mut rng),
        );
        let theirs = peer.ok(json!({"op": "fingerprint",
            "local_id": local_id, "local_key": B64.encode(a.public_key().serialize()),
            "remote_id": remote_id, "remote_key": B64.encode(b.public_key().serialize())}));
        let ours = sotto_bridge::safety_number(
            local_id.as_bytes(),
            a.identity_key(),
            remote_id.as_bytes(),
            b.identity_key(),
        );
        assert_eq!(theirs["displayable"].as_str(), Some(ours.as_str()));
    }
    // And on a live session's identities.
    let sotto = SottoParty::established_with(203, &mut peer);
    let peer_key = sotto
        .store
        .get_identity(&sotto.peer)
        .unwrap_or_else(|e| panic!("{e}"))
        .unwrap_or_else(|| panic!("no identity saved for the peer"));
    assert_eq!(peer.bundle().identity_key, peer_key);
}

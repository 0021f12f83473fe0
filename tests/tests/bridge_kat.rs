//! Known answers captured from python-axolotl 0.2.3
//! (tests/peer/capture_kat.py -> tests/data/bridge/axolotl_kat.json): the
//! chain KDF, the root step, the X3DH HKDF, the MAC and the wire encoding.
#![allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)]

use serde_json::Value;
use sotto_bridge::known_answer as kat;
use sotto_bridge::{IdentityKey, PreKeySignalMessage, PublicKey, SignalMessage};

fn data() -> Value {
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("data/bridge/axolotl_kat.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}"))
}

fn hex_of(v: &Value, section: &str, key: &str) -> Vec<u8> {
    let s = v[section][key]
        .as_str()
        .unwrap_or_else(|| panic!("{section}.{key} missing"));
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap_or_else(|e| panic!("{key}: {e}")))
        .collect()
}

fn arr<const N: usize>(v: Vec<u8>) -> [u8; N] {
    v.try_into()
        .unwrap_or_else(|v: Vec<u8>| panic!("expected {N} bytes, got {}", v.len()))
}

#[test]
fn chain_kdf_matches_axolotl() {
    let d = data();
    let (cipher, mac, iv, next) = kat::chain_step(arr(hex_of(&d, "inputs", "chain_key")));
    assert_eq!(cipher.to_vec(), hex_of(&d, "answers", "message_cipher_key"));
    assert_eq!(mac.to_vec(), hex_of(&d, "answers", "message_mac_key"));
    assert_eq!(iv.to_vec(), hex_of(&d, "answers", "message_iv"));
    assert_eq!(next.to_vec(), hex_of(&d, "answers", "next_chain_key"));
    let (_, _, _, next_next) = kat::chain_step(next);
    assert_eq!(
        next_next.to_vec(),
        hex_of(&d, "answers", "next_next_chain_key")
    );
}

#[test]
fn x3dh_and_root_kdf_match_axolotl() {
    let d = data();
    let derived = kat::whisper_text(&hex_of(&d, "inputs", "master_secret"));
    assert_eq!(derived.to_vec(), hex_of(&d, "answers", "whisper_text_64"));
    let their = PublicKey::deserialize(&hex_of(&d, "inputs", "their_ratchet_public"))
        .unwrap_or_else(|e| panic!("{e}"));
    let ours: [u8; 32] = arr(hex_of(&d, "inputs", "our_ratchet_private"));
    let (root, chain) = kat::root_step(arr(hex_of(&d, "inputs", "root_key")), &their, &ours);
    assert_eq!(root.to_vec(), hex_of(&d, "answers", "ratchet_root_key"));
    assert_eq!(chain.to_vec(), hex_of(&d, "answers", "ratchet_chain_key"));
    let our_public = sotto_bridge::PrivateKey::from_bytes(ours).public_key();
    assert_eq!(
        our_public.serialize().to_vec(),
        hex_of(&d, "answers", "our_ratchet_public")
    );
}

#[test]
fn wire_encoding_and_mac_match_axolotl() {
    let d = data();
    let id = |k: &str| {
        IdentityKey::deserialize(&hex_of(&d, "inputs", k)).unwrap_or_else(|e| panic!("{e}"))
    };
    let (sender, receiver) = (id("sender_identity"), id("receiver_identity"));
    let ratchet = PublicKey::deserialize(&hex_of(&d, "inputs", "their_ratchet_public"))
        .unwrap_or_else(|e| panic!("{e}"));
    let mac_key: [u8; 32] = arr(hex_of(&d, "inputs", "mac_key"));
    let n = |k: &str| d["inputs"][k].as_u64().unwrap_or_else(|| panic!("{k}")) as u32;
    let msg = kat::signal_message(
        &mac_key,
        ratchet,
        n("counter"),
        n("previous_counter"),
        hex_of(&d, "inputs", "ciphertext"),
        &sender,
        &receiver,
    );
    let expected = hex_of(&d, "answers", "signal_message");
    assert_eq!(
        msg.serialized(),
        &expected[..],
        "SignalMessage bytes (incl. the 8-byte MAC)"
    );
    // Decoding the peer's bytes gives the fields back and the MAC verifies
    // for (sender, receiver) only.
    let decoded = SignalMessage::decode(&expected).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        (decoded.counter(), decoded.previous_counter()),
        (n("counter"), n("previous_counter"))
    );
    assert!(decoded.verify_mac(&sender, &receiver, &mac_key));
    assert!(!decoded.verify_mac(&receiver, &sender, &mac_key));

    let pk = kat::prekey_message(
        n("registration_id"),
        n("pre_key_id"),
        n("signed_pre_key_id"),
        ratchet,
        sender,
        msg,
    );
    let expected = hex_of(&d, "answers", "prekey_signal_message");
    assert_eq!(pk.serialized(), &expected[..]);
    let decoded = PreKeySignalMessage::decode(&expected).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(decoded.pre_key_id(), Some(n("pre_key_id")));
    assert_eq!(decoded.registration_id(), n("registration_id"));
    assert_eq!(decoded.signed_pre_key_id(), n("signed_pre_key_id"));
    assert_eq!(decoded.identity_key(), &sender);
}

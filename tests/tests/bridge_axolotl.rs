//! Live interop with python-axolotl 0.2.3, an independent Signal v3
//! implementation, driven as a separate process (tests/peer/axolotl_peer.py).
//! The scenarios are shared with the libsignal peer
//! (sotto_tests::bridge_peer::scenarios). Install the peer with
//! scripts/bridge-peer-deps.sh; without it these tests fail on purpose.

use sotto_tests::bridge_peer::{scenarios, PeerKind};

const PEER: PeerKind = PeerKind::Axolotl;

#[test]
fn axolotl_starts_session_from_sotto_bundle() {
    scenarios::peer_starts_session_from_sotto_bundle(PEER);
}

#[test]
fn sotto_starts_session_from_axolotl_bundle() {
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
fn pipeline_reply_decrypts_on_axolotl() {
    scenarios::pipeline_replies_decrypt_on_peer(PEER);
}

#[test]
fn model_replies_decrypt_on_axolotl() {
    scenarios::model_replies_decrypt_on_peer(PEER);
}

/// Hands out fixed bytes: the signer's 64 random bytes, chosen by the test.
struct FixedBytes(Vec<u8>);

impl rand::RngCore for FixedBytes {
    fn next_u32(&mut self) -> u32 {
        unreachable!("the signer only fills bytes")
    }
    fn next_u64(&mut self) -> u64 {
        unreachable!("the signer only fills bytes")
    }
    fn fill_bytes(&mut self, dest: &mut [u8]) {
        assert_eq!(
            dest.len(),
            self.0.len(),
            "the signer draws 64 bytes at once"
        );
        dest.copy_from_slice(&self.0);
    }
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand::Error> {
        self.fill_bytes(dest);
        Ok(())
    }
}

impl rand::CryptoRng for FixedBytes {}

/// XEdDSA with the nonce derivation of the specification and libsignal,
/// `r = SHA-512(0xFE || 0xFF * 31 || k || M || Z)`: given the same key,
/// message and random Z, python-axolotl-curve25519's independent C signer
/// writes byte-identical signatures.
#[test]
fn xeddsa_signatures_equal_axolotl_curve25519_for_the_same_random() {
    use base64::engine::general_purpose::STANDARD as B64;
    use base64::Engine as _;
    use rand::{RngCore, SeedableRng};
    use serde_json::json;

    let mut peer = sotto_tests::bridge_peer::Peer::spawn(PEER);
    let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(300);
    for len in [0usize, 1, 32, 33, 100, 1000] {
        let key = sotto_bridge::PrivateKey::generate(&mut rng);
        let mut message = vec![0u8; len];
        rng.fill_bytes(&mut message);
        let mut random = vec![0u8; 64];
        rng.fill_bytes(&mut random);
        let ours = key.calculate_signature(&message, &mut FixedBytes(random.clone()));
        let theirs = peer.ok(json!({"op": "xeddsa_sign",
            "private_key": B64.encode(key.serialize()),
            "message": B64.encode(&message), "random": B64.encode(&random)}));
        assert_eq!(
            B64.encode(ours),
            theirs["signature"].as_str().unwrap_or_default(),
            "message of {len} bytes"
        );
    }
}

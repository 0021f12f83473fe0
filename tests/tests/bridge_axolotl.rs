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


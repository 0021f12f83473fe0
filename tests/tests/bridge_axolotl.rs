//! Live interop with python-axolotl 0.2.3, an independent Signal v3
//! implementation, driven as a separate process (tests/peer/axolotl_peer.py).
//! Install the peer with scripts/bridge-peer-deps.sh; without it these
//! tests fail on purpose.

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;
use serde_json::{json, Value};
use sotto_bridge::{
    message_decrypt, message_encrypt, process_prekey_bundle, CiphertextMessage, IdentityKey,
    IdentityKeyPair, InMemProtocolStore, PreKeyBundle, PreKeyRecord, PreKeySignalMessage,
    PreKeyStore, ProtocolAddress, PublicKey, SignalMessage, SignedPreKeyRecord, SignedPreKeyStore,
};

struct Peer {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Peer {
    fn spawn() -> Peer {
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("peer/axolotl_peer.py");
        let python = std::env::var("SOTTO_PYTHON").unwrap_or_else(|_| "python3".into());
        let check = Command::new(&python)
            .args(["-c", "import axolotl, google.protobuf"])
            .output();
        match check {
            Ok(o) if o.status.success() => {}
            _ => panic!("python-axolotl 0.2.3 is not importable by {python}: run scripts/bridge-peer-deps.sh"),
        }
        let mut child = Command::new(&python)
            .arg(&script)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", script.display()));
        let stdin = child.stdin.take().unwrap_or_else(|| panic!("no stdin"));
        let stdout = BufReader::new(child.stdout.take().unwrap_or_else(|| panic!("no stdout")));
        Peer {
            child,
            stdin,
            stdout,
        }
    }

    fn call(&mut self, req: Value) -> Value {
        writeln!(self.stdin, "{req}").unwrap_or_else(|e| panic!("write to peer: {e}"));
        self.stdin.flush().unwrap_or_else(|e| panic!("flush: {e}"));
        let mut line = String::new();
        self.stdout
            .read_line(&mut line)
            .unwrap_or_else(|e| panic!("read from peer: {e}"));
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("peer said {line:?}: {e}"))
    }

    fn ok(&mut self, req: Value) -> Value {
        let reply = self.call(req.clone());
        assert!(
            reply.get("error").is_none(),
            "peer error for {req}: {reply}"
        );
        reply
    }

    fn encrypt(&mut self, to: &str, text: &str) -> CiphertextMessage {
        let r = self.ok(json!({"op":"encrypt","peer":to,"device":1,"plaintext":B64.encode(text)}));
        parse_envelope(
            r["type"].as_str().unwrap_or(""),
            r["body"].as_str().unwrap_or(""),
        )
    }

    fn decrypt(&mut self, from: &str, msg: &CiphertextMessage) -> Result<String, String> {
        let kind = match msg {
            CiphertextMessage::PreKey(_) => "prekey",
            CiphertextMessage::Signal(_) => "message",
        };
        let r =
            self.call(json!({"op":"decrypt","peer":from,"device":1,"type":kind,"body":B64.encode(msg.serialized())}));
        match r.get("plaintext").and_then(Value::as_str) {
            Some(p) => Ok(String::from_utf8(B64.decode(p).map_err(|e| e.to_string())?)
                .map_err(|e| e.to_string())?),
            None => Err(r.to_string()),
        }
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn parse_envelope(kind: &str, body: &str) -> CiphertextMessage {
    let bytes = B64.decode(body).unwrap_or_else(|e| panic!("base64: {e}"));
    match kind {
        "prekey" => CiphertextMessage::PreKey(
            PreKeySignalMessage::decode(&bytes).unwrap_or_else(|e| panic!("{e}")),
        ),
        "message" => CiphertextMessage::Signal(
            SignalMessage::decode(&bytes).unwrap_or_else(|e| panic!("{e}")),
        ),
        other => panic!("unknown envelope type {other}"),
    }
}

fn b64_field(v: &Value, key: &str) -> Vec<u8> {
    B64.decode(v[key].as_str().unwrap_or_else(|| panic!("missing {key}")))
        .unwrap_or_else(|e| panic!("{key}: {e}"))
}

fn bundle_from_json(v: &Value) -> PreKeyBundle {
    let pk =
        |k: &str| PublicKey::deserialize(&b64_field(v, k)).unwrap_or_else(|e| panic!("{k}: {e}"));
    PreKeyBundle {
        registration_id: v["registration_id"].as_u64().unwrap_or(0) as u32,
        device_id: v["device_id"].as_u64().unwrap_or(1) as u32,
        pre_key: v["pre_key_id"]
            .as_u64()
            .map(|id| (id as u32, pk("pre_key"))),
        signed_pre_key_id: v["signed_pre_key_id"].as_u64().unwrap_or(0) as u32,
        signed_pre_key: pk("signed_pre_key"),
        signed_pre_key_signature: b64_field(v, "signed_pre_key_signature"),
        identity_key: IdentityKey::deserialize(&b64_field(v, "identity_key"))
            .unwrap_or_else(|e| panic!("{e}")),
    }
}

fn bundle_to_json(b: &PreKeyBundle, peer: &str) -> Value {
    let mut v = json!({
        "op": "process_bundle", "peer": peer, "device": 1,
        "registration_id": b.registration_id, "device_id": b.device_id,
        "signed_pre_key_id": b.signed_pre_key_id,
        "signed_pre_key": B64.encode(b.signed_pre_key.serialize()),
        "signed_pre_key_signature": B64.encode(&b.signed_pre_key_signature),
        "identity_key": B64.encode(b.identity_key.serialize()),
    });
    if let Some((id, key)) = &b.pre_key {
        v["pre_key_id"] = json!(id);
        v["pre_key"] = json!(B64.encode(key.serialize()));
    }
    v
}

/// A Sotto party with one prekey and one signed prekey.
fn sotto_party(rng: &mut ChaCha20Rng) -> (InMemProtocolStore, PreKeyBundle) {
    let identity = IdentityKeyPair::generate(rng);
    let mut store = InMemProtocolStore::new(identity.clone(), 4242);
    let pre_key = PreKeyRecord::generate(7, rng);
    let signed = SignedPreKeyRecord::generate(3, 1_700_000_000_000, &identity, rng);
    let bundle = PreKeyBundle {
        registration_id: 4242,
        device_id: 1,
        pre_key: Some((7, pre_key.key_pair.public_key)),
        signed_pre_key_id: 3,
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

fn sotto_decrypt(
    store: &mut InMemProtocolStore,
    from: &ProtocolAddress,
    msg: &CiphertextMessage,
    rng: &mut ChaCha20Rng,
) -> String {
    let pt =
        message_decrypt(msg, from, store, rng).unwrap_or_else(|e| panic!("sotto decrypt: {e}"));
    String::from_utf8(pt.to_vec()).unwrap_or_else(|e| panic!("{e}"))
}

fn sotto_encrypt(
    store: &mut InMemProtocolStore,
    to: &ProtocolAddress,
    text: &str,
) -> CiphertextMessage {
    message_encrypt(text.as_bytes(), to, store).unwrap_or_else(|e| panic!("sotto encrypt: {e}"))
}

#[test]
fn axolotl_starts_session_from_sotto_bundle() {
    let mut rng = ChaCha20Rng::seed_from_u64(100);
    let (mut sotto, bundle) = sotto_party(&mut rng);
    let mut peer = Peer::spawn();
    let py = ProtocolAddress::new("py", 1);
    peer.ok(bundle_to_json(&bundle, "sotto"));

    // Two prekey messages before any answer, then a conversation.
    let m1 = peer.encrypt("sotto", "hello from axolotl");
    let m2 = peer.encrypt("sotto", "second, still prekey");
    assert!(
        matches!(m1, CiphertextMessage::PreKey(_)) && matches!(m2, CiphertextMessage::PreKey(_))
    );
    assert_eq!(
        sotto_decrypt(&mut sotto, &py, &m1, &mut rng),
        "hello from axolotl"
    );
    assert_eq!(
        sotto_decrypt(&mut sotto, &py, &m2, &mut rng),
        "second, still prekey"
    );
    // The one-time prekey is consumed.
    assert!(sotto.get_pre_key(7).is_err());

    for round in 0..4 {
        let reply = sotto_encrypt(&mut sotto, &py, &format!("sotto reply {round}"));
        assert!(matches!(reply, CiphertextMessage::Signal(_)));
        assert_eq!(
            peer.decrypt("sotto", &reply),
            Ok(format!("sotto reply {round}"))
        );
        let back = peer.encrypt("sotto", &format!("axolotl round {round} ✓"));
        assert!(
            matches!(back, CiphertextMessage::Signal(_)),
            "peer saw our reply, so no more prekey messages"
        );
        assert_eq!(
            sotto_decrypt(&mut sotto, &py, &back, &mut rng),
            format!("axolotl round {round} ✓")
        );
    }
}

#[test]
fn sotto_starts_session_from_axolotl_bundle() {
    let mut rng = ChaCha20Rng::seed_from_u64(101);
    let (mut sotto, _) = sotto_party(&mut rng);
    let mut peer = Peer::spawn();
    let py = ProtocolAddress::new("py", 1);
    let bundle = bundle_from_json(&peer.ok(json!({"op":"bundle"})));
    process_prekey_bundle(&py, &bundle, &mut sotto, &mut rng).unwrap_or_else(|e| panic!("{e}"));

    let first = sotto_encrypt(&mut sotto, &py, "hi from sotto");
    assert!(matches!(first, CiphertextMessage::PreKey(_)));
    assert_eq!(peer.decrypt("sotto", &first), Ok("hi from sotto".into()));
    for round in 0..4 {
        let back = peer.encrypt("sotto", &format!("py {round}"));
        assert_eq!(
            sotto_decrypt(&mut sotto, &py, &back, &mut rng),
            format!("py {round}")
        );
        let two = [
            sotto_encrypt(&mut sotto, &py, &format!("a{round}")),
            sotto_encrypt(&mut sotto, &py, &format!("b{round}")),
        ];
        assert!(two
            .iter()
            .all(|m| matches!(m, CiphertextMessage::Signal(_))));
        assert_eq!(peer.decrypt("sotto", &two[0]), Ok(format!("a{round}")));
        assert_eq!(peer.decrypt("sotto", &two[1]), Ok(format!("b{round}")));
    }
}

#[test]
fn out_of_order_both_ways() {
    let mut rng = ChaCha20Rng::seed_from_u64(102);
    let (mut sotto, bundle) = sotto_party(&mut rng);
    let mut peer = Peer::spawn();
    let py = ProtocolAddress::new("py", 1);
    peer.ok(bundle_to_json(&bundle, "sotto"));
    let first = peer.encrypt("sotto", "open");
    assert_eq!(sotto_decrypt(&mut sotto, &py, &first, &mut rng), "open");
    let ack = sotto_encrypt(&mut sotto, &py, "ack");
    assert_eq!(peer.decrypt("sotto", &ack), Ok("ack".into()));

    // python -> sotto, delivered shuffled, across a ratchet step.
    let batch: Vec<_> = (0..6)
        .map(|i| peer.encrypt("sotto", &format!("p{i}")))
        .collect();
    for i in [4usize, 0, 5, 2, 1, 3] {
        assert_eq!(
            sotto_decrypt(&mut sotto, &py, &batch[i], &mut rng),
            format!("p{i}")
        );
    }
    // A replay of a delivered message is refused by Sotto.
    assert!(message_decrypt(&batch[2], &py, &mut sotto, &mut rng).is_err());

    // sotto -> python, delivered reversed.
    let batch: Vec<_> = (0..6)
        .map(|i| sotto_encrypt(&mut sotto, &py, &format!("s{i}")))
        .collect();
    for i in (0..6).rev() {
        assert_eq!(peer.decrypt("sotto", &batch[i]), Ok(format!("s{i}")));
    }
    // And python refuses our replay too.
    assert!(peer.decrypt("sotto", &batch[0]).is_err());

    // Messages from an older chain arriving after a newer one.
    let old_chain = peer.encrypt("sotto", "old chain");
    let reply = sotto_encrypt(&mut sotto, &py, "ratchet");
    assert_eq!(peer.decrypt("sotto", &reply), Ok("ratchet".into()));
    let new_chain = peer.encrypt("sotto", "new chain");
    assert_eq!(
        sotto_decrypt(&mut sotto, &py, &new_chain, &mut rng),
        "new chain"
    );
    assert_eq!(
        sotto_decrypt(&mut sotto, &py, &old_chain, &mut rng),
        "old chain"
    );
}

/// Answers with the number of turns it saw and the last user text.
struct CountingAssistant;

impl sotto_bridge::Assistant for CountingAssistant {
    fn reply(
        &mut self,
        conversation: &sotto_bridge::ConversationId,
        history: &[sotto_bridge::Turn],
    ) -> Result<String, sotto_bridge::AssistantError> {
        let last = history.last().map(|t| t.text.clone()).unwrap_or_default();
        Ok(format!(
            "{} turns in {}; you said: {last}",
            history.len(),
            conversation.0
        ))
    }
}

#[test]
fn pipeline_reply_decrypts_on_axolotl() {
    let mut rng = ChaCha20Rng::seed_from_u64(103);
    let identity = IdentityKeyPair::generate(&mut rng);
    let mut bridge = sotto_bridge::Bridge::new(
        InMemProtocolStore::new(identity, 777),
        sotto_bridge::InMemConversationStore::default(),
        Box::new(CountingAssistant),
    );
    let bundle = bridge
        .prekey_bundle(5, 1, &mut rng)
        .unwrap_or_else(|e| panic!("{e}"));
    let mut peer = Peer::spawn();
    peer.ok(bundle_to_json(&bundle, "sotto"));
    let py = ProtocolAddress::new("py", 1);
    for (i, text) in ["what is 2+2?", "and 3+3?", "thanks"].iter().enumerate() {
        let msg = peer.encrypt("sotto", text);
        let reply = bridge
            .handle(&py, &sotto_bridge::Envelope::from(&msg), &mut rng)
            .unwrap_or_else(|e| panic!("{e}"));
        let reply = reply.decode().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            peer.decrypt("sotto", &reply),
            Ok(format!("{} turns in py.1; you said: {text}", 2 * i + 1))
        );
    }
}

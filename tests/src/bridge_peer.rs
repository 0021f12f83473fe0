//! Live Signal-protocol peers for the bridge tests, and the interop
//! scenarios every peer must pass.
//!
//! A peer is an independent implementation run as a separate process that
//! speaks JSON lines (same ops for all): python-axolotl 0.2.3
//! (tests/peer/axolotl_peer.py) and Signal's own libsignal, npm
//! `@signalapp/libsignal-client` 0.72.1 (tests/peer/libsignal_peer.mjs).
//! Both are installed by scripts/bridge-peer-deps.sh; without them the
//! tests fail with that instruction, they never skip.
//!
//! tests/tests/bridge_axolotl.rs and tests/tests/bridge_libsignal.rs run
//! the same [`scenarios`] against their peer.

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;
use serde_json::{json, Value};
use sotto_bridge::{
    message_decrypt, message_encrypt, CiphertextMessage, IdentityKey, IdentityKeyPair,
    InMemProtocolStore, PreKeyBundle, PreKeyRecord, PreKeySignalMessage, PreKeyStore,
    ProtocolAddress, PublicKey, SessionStore, SignalMessage, SignedPreKeyRecord, SignedPreKeyStore,
};

/// The libsignal release the peer is pinned to: the last that accepts
/// version-3 (pre-Kyber) sessions.
pub const LIBSIGNAL_VERSION: &str = "0.72.1";

/// Which independent implementation a [`Peer`] runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PeerKind {
    /// python-axolotl 0.2.3.
    Axolotl,
    /// Signal's libsignal through its Node binding.
    Libsignal,
}

impl PeerKind {
    fn script(self) -> PathBuf {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("peer");
        match self {
            PeerKind::Axolotl => dir.join("axolotl_peer.py"),
            PeerKind::Libsignal => dir.join("libsignal_peer.mjs"),
        }
    }

    /// The command that runs the peer, after checking it is installed.
    fn command(self) -> Command {
        match self {
            PeerKind::Axolotl => {
                let python = std::env::var("SOTTO_PYTHON").unwrap_or_else(|_| "python3".into());
                let check = Command::new(&python)
                    .args(["-c", "import axolotl, google.protobuf"])
                    .output();
                assert!(
                    check.is_ok_and(|o| o.status.success()),
                    "python-axolotl 0.2.3 is not importable by {python}: run scripts/bridge-peer-deps.sh"
                );
                let mut cmd = Command::new(python);
                cmd.arg(self.script());
                cmd
            }
            PeerKind::Libsignal => {
                let dir = libsignal_dir();
                let package = dir.join("node_modules/@signalapp/libsignal-client/package.json");
                let installed = std::fs::read_to_string(&package)
                    .ok()
                    .and_then(|t| serde_json::from_str::<Value>(&t).ok())
                    .and_then(|v| v["version"].as_str().map(str::to_owned));
                assert_eq!(
                    installed.as_deref(),
                    Some(LIBSIGNAL_VERSION),
                    "@signalapp/libsignal-client {LIBSIGNAL_VERSION} is not installed in {}: run scripts/bridge-peer-deps.sh",
                    dir.display()
                );
                let mut cmd =
                    Command::new(std::env::var("SOTTO_NODE").unwrap_or_else(|_| "node".into()));
                cmd.arg(self.script()).env("SOTTO_LIBSIGNAL_DIR", dir);
                cmd
            }
        }
    }
}

/// Where scripts/bridge-peer-deps.sh installs libsignal: `$SOTTO_LIBSIGNAL_DIR`,
/// else `npm/` in the user cache (`sotto_engine::user_cache_dir`).
pub fn libsignal_dir() -> PathBuf {
    match std::env::var_os("SOTTO_LIBSIGNAL_DIR") {
        Some(d) if !d.is_empty() => PathBuf::from(d),
        _ => sotto_engine::user_cache_dir()
            .unwrap_or_default()
            .join("npm"),
    }
}

/// One peer process. Its session partner is named by the `peer` field of
/// each request (always device 1 here).
#[derive(Debug)]
pub struct Peer {
    kind: PeerKind,
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Peer {
    pub fn spawn(kind: PeerKind) -> Peer {
        let mut cmd = kind.command();
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start the {kind:?} peer ({cmd:?}): {e}"));
        let stdin = child.stdin.take().unwrap_or_else(|| panic!("no stdin"));
        let stdout = BufReader::new(child.stdout.take().unwrap_or_else(|| panic!("no stdout")));
        Peer {
            kind,
            child,
            stdin,
            stdout,
        }
    }

    pub fn kind(&self) -> PeerKind {
        self.kind
    }

    /// One request, its reply (which may be `{"error": ..}`).
    pub fn call(&mut self, req: Value) -> Value {
        writeln!(self.stdin, "{req}")
            .unwrap_or_else(|e| panic!("write to {:?} peer: {e}", self.kind));
        self.stdin.flush().unwrap_or_else(|e| panic!("flush: {e}"));
        let mut line = String::new();
        self.stdout
            .read_line(&mut line)
            .unwrap_or_else(|e| panic!("read from {:?} peer: {e}", self.kind));
        serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("{:?} peer said {line:?}: {e}", self.kind))
    }

    /// A request that must succeed.
    pub fn ok(&mut self, req: Value) -> Value {
        let reply = self.call(req.clone());
        assert!(
            reply.get("error").is_none(),
            "{:?} peer error for {req}: {reply}",
            self.kind
        );
        reply
    }

    /// The peer's prekey bundle.
    pub fn bundle(&mut self) -> PreKeyBundle {
        bundle_from_json(&self.ok(json!({"op": "bundle"})))
    }

    /// The peer starts a session with `partner` from `bundle`.
    pub fn process_bundle(&mut self, partner: &str, bundle: &PreKeyBundle) {
        self.ok(bundle_to_json(bundle, partner));
    }

    /// The peer encrypts for `to`; the wire bytes as Sotto parses them.
    pub fn encrypt(&mut self, to: &str, text: &str) -> CiphertextMessage {
        let (kind, body) = self.encrypt_raw(to, text);
        parse_envelope(&kind, &body)
            .unwrap_or_else(|e| panic!("Sotto cannot parse a {:?} message: {e}", self.kind))
    }

    /// The peer encrypts for `to`: `("prekey" | "message", bytes)`.
    pub fn encrypt_raw(&mut self, to: &str, text: &str) -> (String, Vec<u8>) {
        let r = self
            .ok(json!({"op": "encrypt", "peer": to, "device": 1, "plaintext": B64.encode(text)}));
        let kind = r["type"].as_str().unwrap_or_default().to_owned();
        let body = B64
            .decode(r["body"].as_str().unwrap_or_default())
            .unwrap_or_else(|e| panic!("base64: {e}"));
        (kind, body)
    }

    /// The peer decrypts a message from `from`; `Err` carries its error.
    pub fn decrypt(&mut self, from: &str, msg: &CiphertextMessage) -> Result<String, String> {
        self.decrypt_raw(from, kind_name(msg), msg.serialized())
    }

    pub fn decrypt_raw(&mut self, from: &str, kind: &str, body: &[u8]) -> Result<String, String> {
        let r = self.call(
            json!({"op": "decrypt", "peer": from, "device": 1, "type": kind, "body": B64.encode(body)}),
        );
        match r.get("plaintext").and_then(Value::as_str) {
            Some(p) => String::from_utf8(B64.decode(p).map_err(|e| e.to_string())?)
                .map_err(|e| e.to_string()),
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

pub fn kind_name(msg: &CiphertextMessage) -> &'static str {
    match msg {
        CiphertextMessage::PreKey(_) => "prekey",
        CiphertextMessage::Signal(_) => "message",
    }
}

/// Parses wire bytes the way the bridge does.
pub fn parse_envelope(kind: &str, bytes: &[u8]) -> sotto_bridge::Result<CiphertextMessage> {
    Ok(match kind {
        "prekey" => CiphertextMessage::PreKey(PreKeySignalMessage::decode(bytes)?),
        "message" => CiphertextMessage::Signal(SignalMessage::decode(bytes)?),
        other => panic!("unknown envelope type {other}"),
    })
}

fn b64_field(v: &Value, key: &str) -> Vec<u8> {
    B64.decode(
        v[key]
            .as_str()
            .unwrap_or_else(|| panic!("missing {key} in {v}")),
    )
    .unwrap_or_else(|e| panic!("{key}: {e}"))
}

fn u32_field(v: &Value, key: &str) -> u32 {
    v[key]
        .as_u64()
        .and_then(|n| u32::try_from(n).ok())
        .unwrap_or_else(|| panic!("missing or out-of-range {key} in {v}"))
}

pub fn bundle_from_json(v: &Value) -> PreKeyBundle {
    let pk =
        |k: &str| PublicKey::deserialize(&b64_field(v, k)).unwrap_or_else(|e| panic!("{k}: {e}"));
    PreKeyBundle {
        registration_id: u32_field(v, "registration_id"),
        device_id: u32_field(v, "device_id"),
        pre_key: v["pre_key_id"]
            .as_u64()
            .map(|_| (u32_field(v, "pre_key_id"), pk("pre_key"))),
        signed_pre_key_id: u32_field(v, "signed_pre_key_id"),
        signed_pre_key: pk("signed_pre_key"),
        signed_pre_key_signature: b64_field(v, "signed_pre_key_signature"),
        identity_key: IdentityKey::deserialize(&b64_field(v, "identity_key"))
            .unwrap_or_else(|e| panic!("{e}")),
    }
}

/// The `process_bundle` request that starts a session with `partner`.
pub fn bundle_to_json(b: &PreKeyBundle, partner: &str) -> Value {
    let mut v = json!({
        "op": "process_bundle", "peer": partner, "device": 1,
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

/// Sotto's side of a conversation with one peer, on the library API.
#[derive(Debug)]
pub struct SottoParty {
    pub store: InMemProtocolStore,
    pub bundle: PreKeyBundle,
    pub rng: ChaCha20Rng,
    /// The peer's address as Sotto sees it.
    pub peer: ProtocolAddress,
}

/// What the peer calls Sotto.
pub const SOTTO: &str = "sotto";
/// One-time prekey id of [`SottoParty`]'s bundle.
pub const SOTTO_PRE_KEY_ID: u32 = 7;

impl SottoParty {
    /// A Sotto party with one prekey and one signed prekey.
    pub fn new(seed: u64) -> Self {
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        let identity = IdentityKeyPair::generate(&mut rng);
        let mut store = InMemProtocolStore::new(identity.clone(), 4242);
        let pre_key = PreKeyRecord::generate(SOTTO_PRE_KEY_ID, &mut rng);
        let signed = SignedPreKeyRecord::generate(3, 1_700_000_000_000, &identity, &mut rng);
        let bundle =
            PreKeyBundle::from_records(4242, 1, *identity.identity_key(), &signed, Some(&pre_key));
        store
            .save_pre_key(pre_key)
            .unwrap_or_else(|e| panic!("{e}"));
        store
            .save_signed_pre_key(signed)
            .unwrap_or_else(|e| panic!("{e}"));
        Self {
            store,
            bundle,
            rng,
            peer: ProtocolAddress::new("peer", 1),
        }
    }

    pub fn try_decrypt(&mut self, msg: &CiphertextMessage) -> sotto_bridge::Result<String> {
        let pt = message_decrypt(msg, &self.peer, &mut self.store, &mut self.rng)?;
        Ok(String::from_utf8(pt.to_vec()).unwrap_or_else(|e| panic!("{e}")))
    }

    pub fn decrypt(&mut self, msg: &CiphertextMessage) -> String {
        self.try_decrypt(msg)
            .unwrap_or_else(|e| panic!("Sotto decrypt: {e}"))
    }

    pub fn encrypt(&mut self, text: &str) -> CiphertextMessage {
        message_encrypt(text.as_bytes(), &self.peer, &mut self.store)
            .unwrap_or_else(|e| panic!("Sotto encrypt: {e}"))
    }

    /// The session record with the peer, serialized: equal before and after
    /// means a refused message changed nothing.
    pub fn session_bytes(&self) -> Option<Vec<u8>> {
        self.store
            .load_session(&self.peer)
            .unwrap_or_else(|e| panic!("{e}"))
            .map(|r| r.serialize().to_vec())
    }

    /// The peer sends first (from Sotto's bundle), Sotto answers: an
    /// established session in both directions.
    pub fn established_with(seed: u64, peer: &mut Peer) -> Self {
        let mut sotto = SottoParty::new(seed);
        peer.process_bundle(SOTTO, &sotto.bundle);
        let first = peer.encrypt(SOTTO, "open");
        assert_eq!(sotto.decrypt(&first), "open");
        let ack = sotto.encrypt("ack");
        assert_eq!(peer.decrypt(SOTTO, &ack), Ok("ack".into()));
        sotto
    }
}

/// The scenarios each peer runs (one `#[test]` per scenario per peer).
pub mod scenarios {
    use super::*;
    use sotto_bridge::{
        Assistant, AssistantError, Bridge, ConversationId, ConversationStore, Envelope, Error,
        InMemConversationStore, Turn,
    };

    /// The peer starts from Sotto's bundle: two PreKeySignalMessages before
    /// any answer, then several messages each way.
    pub fn peer_starts_session_from_sotto_bundle(kind: PeerKind) {
        let mut peer = Peer::spawn(kind);
        let mut sotto = SottoParty::new(100);
        peer.process_bundle(SOTTO, &sotto.bundle);
        let m1 = peer.encrypt(SOTTO, "hello from the peer");
        let m2 = peer.encrypt(SOTTO, "second, still prekey");
        assert!(
            matches!(m1, CiphertextMessage::PreKey(_))
                && matches!(m2, CiphertextMessage::PreKey(_))
        );
        assert_eq!(sotto.decrypt(&m1), "hello from the peer");
        assert_eq!(sotto.decrypt(&m2), "second, still prekey");
        assert!(
            sotto.store.get_pre_key(SOTTO_PRE_KEY_ID).is_err(),
            "the one-time prekey is consumed"
        );
        for round in 0..4 {
            let reply = sotto.encrypt(&format!("sotto reply {round}"));
            assert!(matches!(reply, CiphertextMessage::Signal(_)));
            assert_eq!(
                peer.decrypt(SOTTO, &reply),
                Ok(format!("sotto reply {round}"))
            );
            for part in 0..2 {
                let back = peer.encrypt(SOTTO, &format!("peer round {round}.{part} ✓"));
                assert!(
                    matches!(back, CiphertextMessage::Signal(_)),
                    "the peer saw our reply, so no more prekey messages"
                );
                assert_eq!(sotto.decrypt(&back), format!("peer round {round}.{part} ✓"));
            }
        }
    }

    /// Sotto starts from the peer's bundle.
    pub fn sotto_starts_session_from_peer_bundle(kind: PeerKind) {
        let mut peer = Peer::spawn(kind);
        let mut sotto = SottoParty::new(101);
        let bundle = peer.bundle();
        sotto_bridge::process_prekey_bundle(&sotto.peer, &bundle, &mut sotto.store, &mut sotto.rng)
            .unwrap_or_else(|e| panic!("{e}"));
        let first = sotto.encrypt("hi from sotto");
        let second = sotto.encrypt("still unanswered");
        assert!(matches!(first, CiphertextMessage::PreKey(_)));
        assert!(matches!(second, CiphertextMessage::PreKey(_)));
        assert_eq!(peer.decrypt(SOTTO, &first), Ok("hi from sotto".into()));
        assert_eq!(peer.decrypt(SOTTO, &second), Ok("still unanswered".into()));
        for round in 0..4 {
            for part in 0..2 {
                let back = peer.encrypt(SOTTO, &format!("peer {round}.{part}"));
                assert!(matches!(back, CiphertextMessage::Signal(_)));
                assert_eq!(sotto.decrypt(&back), format!("peer {round}.{part}"));
            }
            let two = [
                sotto.encrypt(&format!("a{round}")),
                sotto.encrypt(&format!("b{round}")),
            ];
            assert!(two
                .iter()
                .all(|m| matches!(m, CiphertextMessage::Signal(_))));
            assert_eq!(peer.decrypt(SOTTO, &two[0]), Ok(format!("a{round}")));
            assert_eq!(peer.decrypt(SOTTO, &two[1]), Ok(format!("b{round}")));
        }
    }

    /// Shuffled and reversed delivery in both directions, across ratchet
    /// steps, and a message from an older chain after a newer one.
    pub fn out_of_order_both_ways(kind: PeerKind) {
        let mut peer = Peer::spawn(kind);
        let mut sotto = SottoParty::established_with(102, &mut peer);

        // peer -> sotto, shuffled.
        let batch: Vec<_> = (0..6)
            .map(|i| peer.encrypt(SOTTO, &format!("p{i}")))
            .collect();
        for i in [4usize, 0, 5, 2, 1, 3] {
            assert_eq!(sotto.decrypt(&batch[i]), format!("p{i}"));
        }
        // sotto -> peer, reversed.
        let batch: Vec<_> = (0..6).map(|i| sotto.encrypt(&format!("s{i}"))).collect();
        for i in (0..6).rev() {
            assert_eq!(peer.decrypt(SOTTO, &batch[i]), Ok(format!("s{i}")));
        }
        // An older chain's message arriving after the newer chain's.
        let old_chain = peer.encrypt(SOTTO, "old chain");
        let reply = sotto.encrypt("ratchet");
        assert_eq!(peer.decrypt(SOTTO, &reply), Ok("ratchet".into()));
        let new_chain = peer.encrypt(SOTTO, "new chain");
        assert_eq!(sotto.decrypt(&new_chain), "new chain");
        assert_eq!(sotto.decrypt(&old_chain), "old chain");
        // And the same the other way.
        let ours_old = sotto.encrypt("our old chain");
        let theirs = peer.encrypt(SOTTO, "step");
        assert_eq!(sotto.decrypt(&theirs), "step");
        let ours_new = sotto.encrypt("our new chain");
        assert_eq!(peer.decrypt(SOTTO, &ours_new), Ok("our new chain".into()));
        assert_eq!(peer.decrypt(SOTTO, &ours_old), Ok("our old chain".into()));
    }

    /// Errors a forged message may get: each says what was wrong.
    fn is_refusal(e: &Error) -> bool {
        matches!(
            e,
            Error::BadMac
                | Error::BadCiphertext
                | Error::Malformed { .. }
                | Error::InvalidKey { .. }
                | Error::MessageTooShort { .. }
                | Error::UnsupportedVersion(_)
                | Error::NoMatchingSession { .. }
                | Error::TooFarInFuture { .. }
                | Error::DuplicateMessage { .. }
        )
    }

    /// Forged envelopes in both directions are refused, change nothing,
    /// and the genuine messages still go through.
    pub fn forged_envelopes_are_refused_and_the_session_survives(kind: PeerKind) {
        let mut peer = Peer::spawn(kind);
        let mut sotto = SottoParty::new(103);
        peer.process_bundle(SOTTO, &sotto.bundle);

        // A forged first message must not start a session nor consume the
        // one-time prekey: flipped bits in the base key, the inner
        // message's ciphertext and its MAC.
        let (k, first) = peer.encrypt_raw(SOTTO, "genuine first");
        assert_eq!(k, "prekey");
        let parsed = PreKeySignalMessage::decode(&first).unwrap_or_else(|e| panic!("{e}"));
        let offset_of = |part: &[u8]| {
            first
                .windows(part.len())
                .position(|w| w == part)
                .unwrap_or_else(|| panic!("part not found in the message"))
        };
        let base = offset_of(&parsed.base_key().serialize()) + 5;
        let inner = parsed.message().serialized();
        let inner_at = offset_of(inner);
        for at in [
            base,
            inner_at + inner.len() - 12,
            inner_at + inner.len() - 1,
        ] {
            let mut bad = first.clone();
            bad[at] ^= 0x04;
            let refused = parse_envelope("prekey", &bad).and_then(|m| sotto.try_decrypt(&m));
            match refused {
                Err(e) => assert!(is_refusal(&e), "byte {at}: {e:?}"),
                Ok(text) => panic!("byte {at} forged, still decrypted to {text:?}"),
            }
            assert_eq!(sotto.session_bytes(), None, "byte {at}");
            assert!(sotto.store.get_pre_key(SOTTO_PRE_KEY_ID).is_ok());
        }
        let first = parse_envelope("prekey", &first).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(sotto.decrypt(&first), "genuine first");
        let ack = sotto.encrypt("ack");
        assert_eq!(peer.decrypt(SOTTO, &ack), Ok("ack".into()));

        // Forged ratchet messages: a flipped bit anywhere (version byte,
        // ratchet key, counter, ciphertext, MAC).
        let (k, genuine) = peer.encrypt_raw(SOTTO, "genuine ratchet message");
        assert_eq!(k, "message");
        let before = sotto.session_bytes();
        for at in 0..genuine.len() {
            let mut bad = genuine.clone();
            bad[at] ^= 0x01 << (at % 8);
            match parse_envelope("message", &bad).and_then(|m| sotto.try_decrypt(&m)) {
                Err(e) => assert!(is_refusal(&e), "byte {at}: {e:?}"),
                Ok(text) => panic!("byte {at} forged, still decrypted to {text:?}"),
            }
            assert_eq!(sotto.session_bytes(), before, "byte {at}: state changed");
        }
        // A message made up by someone without the keys: a fresh ratchet
        // key, a plausible counter, arbitrary ciphertext and MAC.
        let made_up =
            sotto_bridge::fuzzing::forged_signal_message(3, &mut ChaCha20Rng::seed_from_u64(1030));
        let err = sotto.try_decrypt(&CiphertextMessage::Signal(made_up)).err();
        assert!(err.as_ref().is_some_and(is_refusal), "{err:?}");
        assert_eq!(sotto.session_bytes(), before);
        let genuine = parse_envelope("message", &genuine).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(sotto.decrypt(&genuine), "genuine ratchet message");

        // Sotto -> peer: the peer refuses forged copies, then takes the
        // genuine one.
        let ours = sotto.encrypt("from sotto, genuine");
        let bytes = ours.serialized().to_vec();
        for at in [1, bytes.len() / 2, bytes.len() - 9, bytes.len() - 1] {
            let mut bad = bytes.clone();
            bad[at] ^= 0x02;
            assert!(
                peer.decrypt_raw(SOTTO, "message", &bad).is_err(),
                "the {kind:?} peer accepted a forged byte {at}"
            );
        }
        assert_eq!(peer.decrypt(SOTTO, &ours), Ok("from sotto, genuine".into()));
        let next = peer.encrypt(SOTTO, "still talking");
        assert_eq!(sotto.decrypt(&next), "still talking");
    }

    /// Replays of prekey and ratchet messages are refused both ways and
    /// leave the session usable.
    pub fn replays_are_refused(kind: PeerKind) {
        let mut peer = Peer::spawn(kind);
        let mut sotto = SottoParty::new(104);
        peer.process_bundle(SOTTO, &sotto.bundle);
        let first = peer.encrypt(SOTTO, "prekey once");
        assert_eq!(sotto.decrypt(&first), "prekey once");
        let before = sotto.session_bytes();
        assert!(
            matches!(
                sotto.try_decrypt(&first),
                Err(Error::DuplicateMessage { .. })
            ),
            "a replayed PreKeySignalMessage"
        );
        assert_eq!(sotto.session_bytes(), before);
        let ack = sotto.encrypt("ack");
        assert_eq!(peer.decrypt(SOTTO, &ack), Ok("ack".into()));
        assert!(peer.decrypt(SOTTO, &ack).is_err(), "the peer took a replay");

        let m = peer.encrypt(SOTTO, "ratchet once");
        assert_eq!(sotto.decrypt(&m), "ratchet once");
        let before = sotto.session_bytes();
        assert!(matches!(
            sotto.try_decrypt(&m),
            Err(Error::DuplicateMessage { .. })
        ));
        assert!(matches!(
            sotto.try_decrypt(&first),
            Err(Error::DuplicateMessage { .. })
        ));
        assert_eq!(sotto.session_bytes(), before);
        let ours = sotto.encrypt("ours once");
        assert_eq!(peer.decrypt(SOTTO, &ours), Ok("ours once".into()));
        assert!(
            peer.decrypt(SOTTO, &ours).is_err(),
            "the peer took a replay"
        );
        let next = peer.encrypt(SOTTO, "after the replays");
        assert_eq!(sotto.decrypt(&next), "after the replays");
        let back = sotto.encrypt("and back");
        assert_eq!(peer.decrypt(SOTTO, &back), Ok("and back".into()));
    }

    /// Answers with the number of turns it saw and the last user text.
    struct CountingAssistant;

    impl Assistant for CountingAssistant {
        fn reply(
            &mut self,
            conversation: &ConversationId,
            history: &[Turn],
        ) -> Result<String, AssistantError> {
            let last = history.last().map(|t| t.text.clone()).unwrap_or_default();
            Ok(format!(
                "{} turns in {}; you said: {last}",
                history.len(),
                conversation.0
            ))
        }
    }

    /// The decrypt -> assistant -> encrypt pipeline's replies decrypt on
    /// the peer.
    pub fn pipeline_replies_decrypt_on_peer(kind: PeerKind) {
        let mut rng = ChaCha20Rng::seed_from_u64(105);
        let identity = IdentityKeyPair::generate(&mut rng);
        let mut bridge = Bridge::new(
            InMemProtocolStore::new(identity, 777),
            InMemConversationStore::default(),
            Box::new(CountingAssistant),
        );
        let bundle = bridge
            .prekey_bundle(5, 1, &mut rng)
            .unwrap_or_else(|e| panic!("{e}"));
        let mut peer = Peer::spawn(kind);
        peer.process_bundle(SOTTO, &bundle);
        let from = ProtocolAddress::new("peer", 1);
        for (i, text) in ["what is 2+2?", "and 3+3?", "thanks"].iter().enumerate() {
            let msg = peer.encrypt(SOTTO, text);
            let reply = bridge
                .handle(&from, &Envelope::from(&msg), &mut rng)
                .unwrap_or_else(|e| panic!("{e}"));
            let reply = reply.decode().unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(
                peer.decrypt(SOTTO, &reply),
                Ok(format!("{} turns in peer.1; you said: {text}", 2 * i + 1))
            );
        }
    }

    /// The real default model answers through the bridge; every reply
    /// decrypts on the peer and is exactly the text the model produced.
    pub fn model_replies_decrypt_on_peer(kind: PeerKind) {
        let model = std::sync::Arc::new(
            sotto_models::Model::load(crate::default_model_path())
                .unwrap_or_else(|e| panic!("loading the default model: {e}")),
        );
        let mut rng = ChaCha20Rng::seed_from_u64(106);
        let identity = IdentityKeyPair::generate(&mut rng);
        let mut bridge = Bridge::new(
            InMemProtocolStore::new(identity, 778),
            InMemConversationStore::default(),
            Box::new(ModelAssistant::new(model, 48)),
        );
        let bundle = bridge
            .prekey_bundle(6, 1, &mut rng)
            .unwrap_or_else(|e| panic!("{e}"));
        let mut peer = Peer::spawn(kind);
        peer.process_bundle(SOTTO, &bundle);
        let from = ProtocolAddress::new("peer", 1);
        let conversation = ConversationId::from(&from);
        let questions = [
            "What is the capital of France?",
            "And what is the capital of Italy?",
            "Write a haiku about the sea.",
        ];
        for (i, text) in questions.iter().enumerate() {
            let msg = peer.encrypt(SOTTO, text);
            let reply = bridge
                .handle(&from, &Envelope::from(&msg), &mut rng)
                .unwrap_or_else(|e| panic!("{e}"));
            let reply = reply.decode().unwrap_or_else(|e| panic!("{e}"));
            let opened = peer
                .decrypt(SOTTO, &reply)
                .unwrap_or_else(|e| panic!("the {kind:?} peer cannot open the reply: {e}"));
            let history = bridge
                .conversations()
                .history(&conversation)
                .unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(history.len(), 2 * (i + 1));
            assert_eq!(opened, history[2 * i + 1].text, "turn {}", i + 1);
            assert!(!opened.trim().is_empty(), "turn {}: empty reply", i + 1);
            if i == 0 {
                // The model's greedy answer (also pinned by tools/tests/bridge_e2e.rs).
                assert_eq!(opened, "The capital of France is Paris.");
            }
        }
    }
}

/// The real engine behind the bridge's `Assistant`, as plainly as it goes:
/// each reply is a fresh greedy chat over the whole history, after the
/// system prompt `sotto bridge serve` uses by default.
pub struct ModelAssistant {
    model: std::sync::Arc<sotto_models::Model>,
    max_tokens: usize,
}

impl ModelAssistant {
    pub const SYSTEM: &'static str = "You are a helpful assistant.";

    pub fn new(model: std::sync::Arc<sotto_models::Model>, max_tokens: usize) -> Self {
        Self { model, max_tokens }
    }
}

impl std::fmt::Debug for ModelAssistant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModelAssistant")
            .field("max_tokens", &self.max_tokens)
            .finish_non_exhaustive()
    }
}

impl sotto_bridge::Assistant for ModelAssistant {
    fn reply(
        &mut self,
        _conversation: &sotto_bridge::ConversationId,
        history: &[sotto_bridge::Turn],
    ) -> Result<String, sotto_bridge::AssistantError> {
        use sotto_models::chat::ChatMessage;
        let failed = |e: sotto_engine::Error| sotto_bridge::AssistantError::Engine(Box::new(e));
        let backend = sotto_engine::CpuBackend::new(self.model.clone(), 0).map_err(failed)?;
        let session = sotto_engine::Session::new(
            Box::new(backend),
            std::sync::Arc::new(self.model.tokenizer.clone()),
            2048,
        )
        .map_err(failed)?;
        let mut chat = sotto_engine::Chat::new(
            session,
            std::sync::Arc::new(self.model.template.clone()),
            None,
        );
        let mut messages = vec![ChatMessage {
            role: "system".into(),
            content: Self::SYSTEM.into(),
        }];
        messages.extend(history.iter().map(|t| {
            ChatMessage {
                role: match t.role {
                    sotto_bridge::Role::User => "user",
                    sotto_bridge::Role::Assistant => "assistant",
                }
                .into(),
                content: t.text.clone(),
            }
        }));
        chat.answer(&messages, &crate::greedy(self.max_tokens), &mut |_| {})
            .map(|a| a.text)
            .map_err(failed)
    }
}

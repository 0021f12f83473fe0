//! Soak: 64 conversations on `sotto bridge serve --stdio --state-dir`
//! with the real default model, half of them from python-axolotl and half
//! from Signal's libsignal (8 peer processes, 8 sessions each), interleaved
//! in a shuffled order round after round, with forged envelopes, resent
//! envelopes and replays of answered ones mixed in. Every reply must
//! decrypt on its own peer and be exactly what the engine answers to that
//! conversation alone; the report gives messages handled, errors by kind,
//! and the server's resident memory (peak and growth).
//!
//! In the test command: one round (64 messages, each conversation's first,
//! so every forged envelope is a PreKeySignalMessage with its inner
//! SignalMessage altered), then a pass of replays of answered envelopes;
//! every reply is checked. `SOTTO_SOAK_SECONDS` (set by
//! `scripts/bridge-soak.sh [SECONDS]`, default ten minutes) keeps rounds
//! starting for that long, at least two, with replays mixed into them.
//!
//! "That conversation alone" is what a separate in-process engine answers
//! to the conversation's history. No two conversations ask the same (a
//! topic and a quality per conversation), so a reply that went to the
//! wrong conversation, or was generated from another's state, shows.
#![allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use sotto_bridge::{Assistant, ConversationId, Turn, MAX_RECEIVER_CHAINS};
use sotto_engine::{AssistantConfig, BackendChoice, EngineAssistant, LoadedModel, SamplerConfig};
use sotto_tests::bridge_peer::{bundle_from_json, Peer, PeerKind};
use sotto_tests::default_model_path;

const CONVERSATIONS: usize = 64;
const PEERS: usize = 8;
const MAX_TOKENS: usize = 8;
const CONTEXT: usize = 512;
const SYSTEM: &str = "You are a helpful assistant.";
const KEY: &str = "5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e";
const QUALITIES: [&str; 8] = [
    "old", "small", "red", "quiet", "fast", "cold", "bright", "strange",
];
const TOPICS: [&str; 8] = [
    "the sea",
    "mountains",
    "bread",
    "the moon",
    "cats",
    "rain",
    "music",
    "trains",
];

struct Server {
    child: Child,
    stdin: ChildStdin,
    lines: mpsc::Receiver<Value>,
}

impl Server {
    fn start(dir: &std::path::Path) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_sotto"))
            .args(["bridge", "serve", "--stdio", "--system", SYSTEM])
            .args([
                "--max-tokens",
                &MAX_TOKENS.to_string(),
                "--context",
                &CONTEXT.to_string(),
            ])
            .arg("--state-dir")
            .arg(dir)
            .arg("--model")
            .arg(default_model_path())
            .env("SOTTO_BRIDGE_KEY", KEY)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take().unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in stdout.lines() {
                let Ok(line) = line else { break };
                let v = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{line:?}: {e}"));
                if tx.send(v).is_err() {
                    break;
                }
            }
        });
        Self {
            child,
            stdin,
            lines,
        }
    }

    fn send(&mut self, v: &Value) {
        writeln!(self.stdin, "{v}").unwrap();
        self.stdin.flush().unwrap();
    }

    fn next(&self) -> Value {
        self.lines
            .recv_timeout(Duration::from_secs(600))
            .unwrap_or_else(|e| panic!("the server went quiet: {e}"))
    }

    /// (VmRSS, VmHWM) in KiB.
    fn memory(&self) -> (u64, u64) {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
                .unwrap_or(0)
        };
        (field("VmRSS:"), field("VmHWM:"))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One conversation: a session of peer process `peer` (its partner label
/// `label`) that the server knows as `sender`.
struct Conversation {
    peer: usize,
    label: String,
    sender: String,
    /// (user text, reply) per answered turn, in turn order.
    exchanges: Vec<(String, String)>,
    /// Envelopes answered and acknowledged (for replays), with the round
    /// each was sent in.
    answered: Vec<(usize, Value)>,
    in_flight: Option<(String, Value)>,
    /// The last reply event (turn, body): a resend that raced its answer
    /// may bring it once more, byte for byte.
    last_reply: Option<(usize, Vec<u8>)>,
    /// A resend was accepted after its reply went out: the reply may come
    /// once more. Any other second delivery is a bug.
    redelivery_expected: bool,
}

fn submit(envelope: &Value, sender: &str, id: &str) -> Value {
    json!({"op": "submit", "id": id, "sender": sender, "device": 1,
           "type": envelope["type"], "body": envelope["body"]})
}

fn encrypt(peer: &mut Peer, label: &str, text: &str) -> Value {
    let (kind, body) = peer.encrypt_raw(label, text);
    json!({"type": kind, "body": B64.encode(body)})
}

/// The byte range of the inner SignalMessage of a serialized
/// PreKeySignalMessage (a version byte, then protobuf: field 4 holds it).
fn inner_message(body: &[u8]) -> std::ops::Range<usize> {
    fn varint(b: &[u8], at: &mut usize) -> u64 {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = b[*at];
            *at += 1;
            v |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                break;
            }
        }
        v
    }
    let mut at = 1;
    while at < body.len() {
        let key = varint(body, &mut at);
        match key & 7 {
            0 => {
                varint(body, &mut at);
            }
            2 => {
                let len = varint(body, &mut at) as usize;
                if key >> 3 == 4 {
                    return at..at + len;
                }
                at += len;
            }
            other => panic!("wire type {other} in a PreKeySignalMessage"),
        }
    }
    panic!("no SignalMessage in the PreKeySignalMessage")
}

/// `envelope` with one bit flipped in its ciphertext or MAC: the back half
/// of a SignalMessage, alone or inside a PreKeySignalMessage (whose own
/// trailing fields no MAC covers, as in libsignal).
fn forge(envelope: &Value, rng: &mut StdRng) -> Value {
    let mut body = B64.decode(envelope["body"].as_str().unwrap()).unwrap();
    let message = match envelope["type"].as_str().unwrap() {
        "prekey" => inner_message(&body),
        "message" => 0..body.len(),
        other => panic!("envelope type {other}"),
    };
    let at = rng.gen_range(message.start + message.len() / 2..message.end);
    body[at] ^= 1 << rng.gen_range(0..8);
    json!({"type": envelope["type"], "body": B64.encode(&body)})
}

#[test]
fn sixty_four_interleaved_conversations_with_both_peers() {
    // The test command runs one round; the script, rounds for as long as
    // it says (at least two).
    let (budget, min_rounds) = match std::env::var("SOTTO_SOAK_SECONDS") {
        Ok(s) => (
            Duration::from_secs(s.parse().expect("SOTTO_SOAK_SECONDS: whole seconds")),
            2,
        ),
        Err(_) => (Duration::ZERO, 1),
    };
    let setup_started = Instant::now();
    let dir: PathBuf = std::env::temp_dir().join(format!("sotto-soak-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut server = Server::start(&dir);
    let mut rng = StdRng::seed_from_u64(64);
    let mut peers: Vec<Peer> = (0..PEERS)
        .map(|i| {
            Peer::spawn(if i % 2 == 0 {
                PeerKind::Axolotl
            } else {
                PeerKind::Libsignal
            })
        })
        .collect();
    let mut conversations: Vec<Conversation> = (0..CONVERSATIONS)
        .map(|c| Conversation {
            peer: c % PEERS,
            label: format!("sotto-{}", c / PEERS),
            sender: format!("user{c}"),
            exchanges: Vec::new(),
            answered: Vec::new(),
            in_flight: None,
            last_reply: None,
            redelivery_expected: false,
        })
        .collect();
    server.send(&json!({"op": "subscribe", "id": "subscribe"}));
    assert_eq!(server.next()["subscribed"], true);
    for c in &conversations {
        server.send(&json!({"op": "bundle", "id": "bundle"}));
        let bundle = server.next();
        peers[c.peer].process_bundle(&c.label, &bundle_from_json(&bundle));
    }

    let mut errors: BTreeMap<String, usize> = BTreeMap::new();
    let (mut handled, mut forged, mut resent, mut replayed, mut redelivered) =
        (0usize, 0usize, 0usize, 0usize, 0usize);
    // Replays by id, and whether the message's receiving chain may be gone:
    // the bridge keeps the newest MAX_RECEIVER_CHAINS receiving chains of a
    // session, as libsignal does, and each round adds one (the peer ratchets
    // after every reply). A replay from a dropped chain cannot be told from
    // a forgery: it is refused as `invalid_message`, never answered. (At
    // the boundary round the answer depends on whether the new message of
    // the round was decrypted first, so both are accepted there.)
    let mut replays: BTreeMap<String, bool> = BTreeMap::new();
    let may_be_dropped = |sent: usize, now: usize| now - sent + 1 >= MAX_RECEIVER_CHAINS;
    let mut stale_refused = 0usize;
    let mut memory_after_first_round = None;
    let setup_time = setup_started.elapsed();
    let (rss_before, _) = server.memory();
    let started = Instant::now();
    let mut round = 0;
    while round < min_rounds || started.elapsed() < budget {
        let mut order: Vec<usize> = (0..CONVERSATIONS).collect();
        order.shuffle(&mut rng);
        let mut waiting = 0usize;
        for &c in &order {
            let conv = &mut conversations[c];
            let topic = TOPICS[(c + round) % TOPICS.len()];
            let quality = QUALITIES[c / TOPICS.len() % QUALITIES.len()];
            let text = format!("Say one short sentence about {quality} {topic}.");
            let envelope = encrypt(&mut peers[conv.peer], &conv.label, &text);
            let id = format!("{c}/{round}");
            if rng.gen_ratio(1, 6) {
                // A forged copy first.
                let fake = forge(&envelope, &mut rng);
                server.send(&submit(&fake, &conv.sender, &format!("forged {id}")));
                forged += 1;
            }
            server.send(&submit(&envelope, &conv.sender, &id));
            if rng.gen_ratio(1, 8) {
                // The transport, unsure, sends it again at once.
                server.send(&submit(&envelope, &conv.sender, &format!("resent {id}")));
                resent += 1;
            }
            if !conv.answered.is_empty() && rng.gen_ratio(1, 8) {
                // A replay of a message answered in an earlier round.
                let (sent, old) = conv.answered[rng.gen_range(0..conv.answered.len())].clone();
                let replay_id = format!("replayed {id}");
                replays.insert(replay_id.clone(), may_be_dropped(sent, round));
                server.send(&submit(&old, &conv.sender, &replay_id));
                replayed += 1;
            }
            conv.in_flight = Some((text, envelope));
            conv.redelivery_expected = false;
            waiting += 1;
        }
        // Collect this round's replies (and the other responses).
        while waiting > 0 {
            let v = server.next();
            let id = v["id"].as_str().unwrap_or("").to_string();
            if let Some(kind) = v["error"]["kind"].as_str() {
                *errors.entry(kind.to_string()).or_default() += 1;
                let stale = replays.get(&id).copied();
                let expected = (id.starts_with("forged ") && kind == "invalid_message")
                    || (stale.is_some() && kind == "duplicate")
                    || (stale == Some(true) && kind == "invalid_message");
                assert!(expected, "unexpected error for {id}: {v}");
                if stale.is_some() && kind == "invalid_message" {
                    stale_refused += 1;
                }
            } else if v.get("accepted").is_some() {
                let is_resend = id.starts_with("resent ");
                assert_eq!(v["accepted"]["resent"], is_resend, "{id}: {v}");
                if is_resend {
                    let c: usize = id["resent ".len()..]
                        .split('/')
                        .next()
                        .unwrap()
                        .parse()
                        .unwrap();
                    let conv = &mut conversations[c];
                    conv.redelivery_expected = conv.in_flight.is_none();
                } else {
                    handled += 1;
                }
            } else if v["event"] == "reply" {
                let sender = v["peer"].as_str().unwrap();
                let c: usize = sender.trim_start_matches("user").parse().unwrap();
                let conv = &mut conversations[c];
                let turn = v["turn"].as_u64().unwrap() as usize;
                let body = B64.decode(v["body"].as_str().unwrap()).unwrap();
                if conv.last_reply.as_ref() == Some(&(turn, body.clone())) {
                    assert!(
                        conv.redelivery_expected,
                        "{sender} turn {turn}: the reply came twice"
                    );
                    conv.redelivery_expected = false;
                    redelivered += 1;
                    continue;
                }
                let (text, envelope) = conv.in_flight.take().expect("a reply nobody waits for");
                assert_eq!(
                    turn,
                    conv.exchanges.len() + 1,
                    "{sender}: turns out of order"
                );
                let reply = peers[conv.peer]
                    .decrypt_raw(&conv.label, v["type"].as_str().unwrap(), &body)
                    .unwrap_or_else(|e| {
                        panic!("{sender} turn {turn}: the reply does not decrypt: {e}")
                    });
                assert!(
                    v.get("refused").is_none(),
                    "{sender} turn {turn} refused: {v}"
                );
                conv.exchanges.push((text, reply));
                conv.last_reply = Some((turn, body));
                conv.answered.push((round, envelope));
                server.send(
                    &json!({"op": "ack", "id": "ack", "peer": sender, "device": 1, "turn": turn}),
                );
                waiting -= 1;
            }
        }
        round += 1;
        if memory_after_first_round.is_none() {
            memory_after_first_round = Some(server.memory());
        }
    }
    // Replays of answered envelopes after the last round (in a single
    // round there is no earlier one to replay from): each a `duplicate`,
    // nothing answered twice.
    let mut last_replays = 0usize;
    for (c, conv) in conversations.iter().enumerate() {
        if rng.gen_ratio(1, 4) {
            let (sent, old) = &conv.answered[rng.gen_range(0..conv.answered.len())];
            let replay_id = format!("replayed {c}/last");
            // (no message since the last round's: it is the newest chain)
            replays.insert(replay_id.clone(), may_be_dropped(*sent, round - 1));
            server.send(&submit(old, &conv.sender, &replay_id));
            last_replays += 1;
        }
    }
    replayed += last_replays;
    server.send(&json!({"op": "status", "id": "status"}));
    let status = loop {
        let v = server.next();
        if v["id"] == "status" {
            break v;
        }
        if v["id"] == "ack" {
            assert_eq!(v["acked"], true, "{v}");
            continue;
        }
        if v["event"] == "reply" {
            // Only a resend's second delivery can still come.
            let c: usize = v["peer"]
                .as_str()
                .unwrap()
                .trim_start_matches("user")
                .parse()
                .unwrap();
            let conv = &mut conversations[c];
            let body = B64.decode(v["body"].as_str().unwrap()).unwrap();
            let turn = v["turn"].as_u64().unwrap() as usize;
            assert!(
                conv.redelivery_expected && conv.last_reply.as_ref() == Some(&(turn, body)),
                "after the last round: {v}"
            );
            conv.redelivery_expected = false;
            redelivered += 1;
            continue;
        }
        let kind = v["error"]["kind"].as_str().unwrap_or("");
        let stale = v["id"].as_str().and_then(|id| replays.get(id).copied());
        assert!(
            (stale.is_some() && kind == "duplicate")
                || (stale == Some(true) && kind == "invalid_message"),
            "after the last round: {v}"
        );
        if kind == "invalid_message" {
            stale_refused += 1;
        }
        *errors.entry(kind.to_string()).or_default() += 1;
    };
    let soak_time = started.elapsed();
    let (rss_end, peak) = server.memory();
    let (rss_first, _) = memory_after_first_round.unwrap();
    drop(server);

    assert_eq!(status["conversations"], CONVERSATIONS, "{status}");
    assert_eq!(status["unanswered"], 0, "{status}");
    // Every reply acknowledged (the acks precede the status request).
    assert_eq!(status["outbox"], 0, "{status}");
    // Every reply is what the engine answers to that conversation alone.
    let model =
        Arc::new(LoadedModel::open(default_model_path(), BackendChoice::default()).unwrap());
    let config = AssistantConfig {
        system: Some(SYSTEM.into()),
        sampler: SamplerConfig::greedy(),
        max_tokens: MAX_TOKENS,
        context: CONTEXT,
        warm_conversations: 1,
    };
    let reference_started = Instant::now();
    let mut reference = EngineAssistant::new(model, config);
    let mut checked = 0usize;
    for conv in &conversations {
        let id = ConversationId(format!("{}.1", conv.sender));
        let mut history = Vec::new();
        for (turn, (text, reply)) in conv.exchanges.iter().enumerate() {
            history.push(Turn::user(text.clone()));
            let alone = reference.reply(&id, &history).unwrap();
            assert_eq!(&alone, reply, "{} turn {}", conv.sender, turn + 1);
            history.push(Turn::assistant(reply.clone()));
            checked += 1;
        }
    }
    let reference_time = reference_started.elapsed();
    let total_errors: usize = errors.values().sum();
    let summary = format!(
        "soak: {CONVERSATIONS} conversations ({} python-axolotl, {} libsignal), {round} rounds in {:.0} s \
         (setup {:.0} s, {} replies checked against their conversations alone in {:.0} s): \
         {handled} messages answered, {forged} forged, {resent} resent ({redelivered} replies delivered twice), \
         {replayed} replayed ({last_replays} after the last round; {stale_refused} from a dropped chain); \
         errors by kind {errors:?} ({total_errors} in all); \
         server RSS {:.0} MiB before round 1, {:.0} MiB after it, {:.0} MiB at the end (growth {:+.1} MiB), peak {:.0} MiB",
        CONVERSATIONS / 2,
        CONVERSATIONS / 2,
        soak_time.as_secs_f64(),
        setup_time.as_secs_f64(),
        checked,
        reference_time.as_secs_f64(),
        rss_before as f64 / 1024.0,
        rss_first as f64 / 1024.0,
        rss_end as f64 / 1024.0,
        (rss_end as f64 - rss_first as f64) / 1024.0,
        peak as f64 / 1024.0,
    );
    // The figures also go to a file the test command prints (libtest keeps
    // a passing test's output to itself).
    let report = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("bridge-soak-report.txt");
    std::fs::write(&report, format!("{summary}\n")).unwrap();
    println!("{summary}");
    assert_eq!(handled, round * CONVERSATIONS);
    assert_eq!(checked, handled);
    assert_eq!(
        errors.get("invalid_message").copied().unwrap_or(0),
        forged + stale_refused
    );
    assert_eq!(
        errors.get("duplicate").copied().unwrap_or(0),
        replayed - stale_refused
    );
    let _ = std::fs::remove_dir_all(&dir);
}

//! kill -9 at every step of the pipeline: `sotto bridge serve --stdio
//! --state-dir` with the real default model is stopped at one named step
//! (`SOTTO_BRIDGE_CRASH_AT=STEP#N`: it freezes there and the test sends
//! SIGKILL), restarted, and the client carries on as a real transport
//! would: it resubmits what it sent and acknowledges what it received.
//! Every message must be answered exactly once (one journaled turn each,
//! one reply each, byte-identical when delivered twice), with the text an
//! uninterrupted run gives. The steps come from a traced run, so a new
//! step is covered without editing this file.
#![allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::{Arc, Mutex};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use serde_json::{json, Value};
use sotto_bridge::{Envelope, MessageKind, PreKeyBundle, PublicKey};
use sotto_tests::bridge_user::BridgeUser;
use sotto_tests::default_model_path;

const KEY: &str = "4f4f4f4f4f4f4f4f4f4f4f4f4f4f4f4f4f4f4f4f4f4f4f4f4f4f4f4f4f4f4f4f";
const MESSAGES: [&str; 2] = ["What is the capital of France?", "And of Italy?"];

struct Server {
    child: Arc<Mutex<Child>>,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    steps: Arc<Mutex<Vec<String>>>,
    crashed_at: Arc<Mutex<Option<String>>>,
    stderr: Option<std::thread::JoinHandle<()>>,
}

impl Server {
    fn start(dir: &Path, crash: Option<&str>) -> Self {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_sotto"));
        cmd.args([
            "bridge",
            "serve",
            "--stdio",
            "--max-tokens",
            "12",
            "--context",
            "256",
        ])
        .arg("--state-dir")
        .arg(dir)
        .arg("--model")
        .arg(default_model_path())
        .env("SOTTO_BRIDGE_KEY", KEY)
        .env("SOTTO_BRIDGE_TRACE_STEPS", "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        if let Some(step) = crash {
            cmd.env("SOTTO_BRIDGE_CRASH_AT", step);
        }
        let mut child = cmd.spawn().unwrap();
        let stdin = child.stdin.take().unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        let stderr = BufReader::new(child.stderr.take().unwrap());
        let child = Arc::new(Mutex::new(child));
        let steps = Arc::new(Mutex::new(Vec::new()));
        let crashed_at = Arc::new(Mutex::new(None));
        let stderr = {
            let (child, steps, crashed_at) = (child.clone(), steps.clone(), crashed_at.clone());
            std::thread::spawn(move || {
                for line in stderr.lines() {
                    let Ok(line) = line else { break };
                    if let Some(step) = line.strip_prefix("sotto: step ") {
                        steps.lock().unwrap().push(step.to_string());
                    } else if let Some(point) = line.strip_prefix("sotto: crash point ") {
                        *crashed_at.lock().unwrap() = Some(point.replace(" reached", ""));
                        // The server froze at the step: kill -9.
                        child.lock().unwrap().kill().unwrap();
                    } else {
                        eprintln!("[serve] {line}");
                    }
                }
            })
        };
        Self {
            child,
            stdin,
            stdout,
            steps,
            crashed_at,
            stderr: Some(stderr),
        }
    }

    /// `false` once the server is gone.
    fn send(&mut self, v: &Value) -> bool {
        writeln!(self.stdin, "{v}")
            .and_then(|()| self.stdin.flush())
            .is_ok()
    }

    /// The next line, `None` once the server is gone.
    fn next(&mut self) -> Option<Value> {
        let mut line = String::new();
        match self.stdout.read_line(&mut line) {
            Ok(0) | Err(_) => None,
            Ok(_) => Some(serde_json::from_str(&line).unwrap_or_else(|e| panic!("{line:?}: {e}"))),
        }
    }

    /// Closes stdin and waits for the server (and its stderr) to finish.
    fn finish(mut self) -> (Vec<String>, Option<String>) {
        drop(self.stdin);
        let _ = self.child.lock().unwrap().wait();
        if let Some(h) = self.stderr.take() {
            let _ = h.join();
        }
        let steps = self.steps.lock().unwrap().clone();
        let crashed = self.crashed_at.lock().unwrap().clone();
        (steps, crashed)
    }
}

fn bundle_from_json(v: &Value) -> PreKeyBundle {
    let bytes = |k: &str| B64.decode(v[k].as_str().unwrap()).unwrap();
    let num = |k: &str| v[k].as_u64().unwrap() as u32;
    PreKeyBundle {
        registration_id: num("registration_id"),
        device_id: num("device_id"),
        pre_key: Some((
            num("pre_key_id"),
            PublicKey::deserialize(&bytes("pre_key")).unwrap(),
        )),
        signed_pre_key_id: num("signed_pre_key_id"),
        signed_pre_key: PublicKey::deserialize(&bytes("signed_pre_key")).unwrap(),
        signed_pre_key_signature: bytes("signed_pre_key_signature"),
        identity_key: sotto_bridge::IdentityKey::deserialize(&bytes("identity_key")).unwrap(),
    }
}

fn envelope_fields(e: &Envelope) -> Value {
    let kind = match e.kind {
        MessageKind::PreKey => "prekey",
        MessageKind::Message => "message",
    };
    json!({"sender": "user", "device": 1, "type": kind, "body": B64.encode(&e.body)})
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Mode {
    /// `submit` + reply events + `ack`.
    Async,
    /// `envelope` answered by the reply itself.
    Sync,
}

/// The user's side, kept across server restarts like a real transport's
/// queue: what was sent, what came back.
struct Client {
    user: Option<BridgeUser>,
    envelopes: Vec<Envelope>,
    /// The turn each message was journaled as.
    turn_of: Vec<Option<u64>>,
    done: Vec<bool>,
    /// Distinct reply bodies per turn, and what they decrypted to.
    bodies: BTreeMap<u64, Vec<Vec<u8>>>,
    texts: BTreeMap<u64, String>,
}

impl Client {
    fn new() -> Self {
        Self {
            user: None,
            envelopes: Vec::new(),
            turn_of: vec![None; MESSAGES.len()],
            done: vec![false; MESSAGES.len()],
            bodies: BTreeMap::new(),
            texts: BTreeMap::new(),
        }
    }

    fn record_reply(&mut self, v: &Value) {
        let turn = v["turn"].as_u64().unwrap();
        let body = B64.decode(v["body"].as_str().unwrap()).unwrap();
        let seen = self.bodies.entry(turn).or_default();
        if seen.contains(&body) {
            return; // delivered again, identical: nothing new
        }
        seen.push(body.clone());
        let kind = if v["type"] == "prekey" {
            MessageKind::PreKey
        } else {
            MessageKind::Message
        };
        let text = self
            .user
            .as_mut()
            .unwrap()
            .decrypt(&Envelope { kind, body })
            .unwrap_or_else(|e| panic!("reply to turn {turn} does not decrypt: {e}"));
        self.texts.insert(turn, text);
    }

    /// Talks to one server run; `false` if it died on the way.
    fn drive(&mut self, server: &mut Server, mode: Mode) -> bool {
        if self.user.is_none() {
            if !server.send(&json!({"op": "bundle"})) {
                return false;
            }
            let Some(bundle) = server.next() else {
                return false;
            };
            let mut user = BridgeUser::join("user", 77, &bundle_from_json(&bundle));
            self.envelopes = MESSAGES.iter().map(|m| user.encrypt(m)).collect();
            self.user = Some(user);
        }
        // Replies a crash left unacknowledged come as events (in both
        // modes: a reply written just before the crash is the client's,
        // but only its ack tells the server so).
        if !server.send(&json!({"op": "subscribe", "id": "subscribe"})) {
            return false;
        }
        for i in 0..MESSAGES.len() {
            if self.done[i] {
                continue;
            }
            let mut request = envelope_fields(&self.envelopes[i]);
            request["op"] = json!(if mode == Mode::Async {
                "submit"
            } else {
                "envelope"
            });
            request["id"] = json!(i);
            if !server.send(&request) {
                return false;
            }
            while !self.done[i] {
                let Some(v) = server.next() else { return false };
                let for_this = v["id"] == json!(i);
                if v["event"] == "reply" || (for_this && v.get("body").is_some()) {
                    self.record_reply(&v);
                    let turn = v["turn"].as_u64().unwrap();
                    if for_this {
                        // Sync: the server acknowledged it when it wrote it.
                        self.turn_of[i] = Some(turn);
                        self.done[i] = true;
                    } else {
                        server.send(&json!({"op": "ack", "peer": "user", "device": 1, "turn": turn, "id": format!("ack-{turn}")}));
                    }
                } else if for_this && v.get("accepted").is_some() {
                    self.turn_of[i] = v["accepted"]["turn"].as_u64();
                } else if for_this && v["error"]["kind"] == "duplicate" {
                    // Answered and acknowledged before the crash.
                    assert!(
                        self.texts.len() > i,
                        "message {i} refused as a duplicate but never answered: {v}"
                    );
                    self.done[i] = true;
                } else if let (Some(ack), Some(turn)) = (v["id"].as_str(), self.turn_of[i]) {
                    if ack == format!("ack-{turn}") {
                        self.done[i] = true;
                    }
                } else if v.get("error").is_some() {
                    panic!("message {i}: {v}");
                }
            }
        }
        true
    }
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("sotto-crash-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// One run: crash at `crash` (if any), restart, finish; returns the
/// replies' texts by turn and the steps the first run went through.
fn scenario(name: &str, crash: Option<&str>, mode: Mode) -> (BTreeMap<u64, String>, Vec<String>) {
    let dir = temp_dir(name);
    let mut client = Client::new();
    let mut server = Server::start(&dir, crash);
    let finished = client.drive(&mut server, mode);
    let (steps, crashed) = server.finish();
    match crash {
        None => assert!(finished, "the uninterrupted run did not finish"),
        Some(point) => {
            assert_eq!(
                crashed.as_deref(),
                Some(point),
                "{name}: never reached {point}"
            );
            assert!(!finished, "{name}: the run went on after the crash point");
            let mut server = Server::start(&dir, None);
            assert!(
                client.drive(&mut server, mode),
                "{name}: the restarted server died"
            );
            // A reply written as an `envelope` response is acknowledged
            // just after the write: give that commit a moment.
            let mut status = Value::Null;
            for _ in 0..100 {
                server.send(&json!({"op": "status", "id": "status"}));
                status = loop {
                    let v = server.next().unwrap();
                    if v["id"] == "status" {
                        break v;
                    }
                };
                if status["outbox"] == 0 {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            assert_eq!(
                (status["unanswered"].as_u64(), status["outbox"].as_u64()),
                (Some(0), Some(0)),
                "{name}: {status}"
            );
            server.finish();
        }
    }
    // Exactly once: turns 1..=n, one per message, one distinct reply each.
    let turns: Vec<u64> = client.turn_of.iter().map(|t| t.unwrap_or(0)).collect();
    let expected: Vec<u64> = (1..=MESSAGES.len() as u64).collect();
    assert_eq!(
        turns, expected,
        "{name}: messages journaled as turns {turns:?}"
    );
    for (turn, bodies) in &client.bodies {
        assert_eq!(
            bodies.len(),
            1,
            "{name}: turn {turn} answered {} times",
            bodies.len()
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
    (client.texts, steps)
}

#[test]
fn kill_9_at_every_step_loses_and_duplicates_nothing() {
    let (reference, steps) = scenario("reference", None, Mode::Async);
    assert_eq!(reference.len(), MESSAGES.len());
    assert!(reference.values().all(|t| !t.trim().is_empty()));
    // Every step up to the first message's acknowledgement: the bundle's
    // commit, then decrypt, journal, generate, reply, deliver, ack.
    let last = steps
        .iter()
        .position(|s| s == "pipeline:acked#1")
        .unwrap_or_else(|| panic!("no ack step in {steps:?}"));
    let points: Vec<&String> = steps[..=last].iter().collect();
    for name in [
        "pipeline:received#1",
        "pipeline:decrypted#1",
        "pipeline:journaled#1",
        "serve:accepted-sent#1",
        "pipeline:generated#1",
        "pipeline:reply-committed#1",
        "serve:reply-sent#1",
        "store:records-written#1",
        "store:committed#1",
    ] {
        assert!(
            steps.iter().any(|s| s == name),
            "step {name} not traced: {steps:?}"
        );
    }
    let mut covered = Vec::new();
    for point in &points {
        let (texts, _) = scenario(&point.replace([':', '#'], "-"), Some(point), Mode::Async);
        assert_eq!(texts, reference, "after kill -9 at {point}");
        covered.push(point.as_str());
    }
    for point in [
        "pipeline:journaled#1",
        "pipeline:generated#1",
        "pipeline:reply-committed#1",
        "serve:reply-sent#1",
    ] {
        let (texts, _) = scenario(
            &format!("sync-{}", point.replace([':', '#'], "-")),
            Some(point),
            Mode::Sync,
        );
        assert_eq!(
            texts, reference,
            "after kill -9 at {point} (envelope requests)"
        );
        covered.push(point);
    }
    println!(
        "kill -9 at {} points ({}): 0 messages lost, 0 duplicated",
        covered.len(),
        covered.join(", ")
    );
}

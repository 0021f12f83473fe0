//! The whole bridge end to end, across processes: `sotto bridge serve --stdio`
//! with the real default model answers python-axolotl 0.2.3 peers (an
//! independent Signal v3 implementation, tests/peer/axolotl_peer.py, installed
//! by scripts/bridge-peer-deps.sh). Each peer's replies must decrypt on the
//! peer and equal what the engine answers for that conversation alone, so
//! two interleaved conversations never mix; a forged envelope is refused with
//! a typed error and loses nothing.
#![allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)]

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use serde_json::{json, Value};
use sotto_engine::{Chat, CpuBackend, GenerateOptions, SamplerConfig, Session};
use sotto_models::chat::ChatMessage;
use sotto_models::Model;
use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::Arc;

const SYSTEM: &str = "You are a helpful assistant.";
const MAX_TOKENS: usize = 48;

fn model_path() -> PathBuf {
    let p = match std::env::var_os("SOTTO_MODEL") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => PathBuf::from(std::env::var_os("HOME").unwrap_or_default())
            .join(".cache/sotto/models/SmolLM2-135M-Instruct.Q4_1.gguf"),
    };
    assert!(
        p.is_file(),
        "default model missing at {}: run `sotto fetch`",
        p.display()
    );
    p
}

/// A process speaking JSON lines.
struct LineProcess {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl LineProcess {
    fn spawn(mut cmd: Command) -> Self {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
        let stdin = child.stdin.take().unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        Self {
            child,
            stdin,
            stdout,
        }
    }

    fn call(&mut self, req: Value) -> Value {
        writeln!(self.stdin, "{req}").unwrap();
        self.stdin.flush().unwrap();
        let mut line = String::new();
        self.stdout.read_line(&mut line).unwrap();
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("reply {line:?} to {req}: {e}"))
    }

    /// Sends one raw line (not necessarily JSON) and parses the reply.
    fn raw(&mut self, line: &str) -> Value {
        writeln!(self.stdin, "{line}").unwrap();
        self.stdin.flush().unwrap();
        let mut reply = String::new();
        self.stdout.read_line(&mut reply).unwrap();
        serde_json::from_str(&reply).unwrap_or_else(|e| panic!("reply {reply:?} to {line:?}: {e}"))
    }

    fn ok(&mut self, req: Value) -> Value {
        let reply = self.call(req.clone());
        assert!(reply.get("error").is_none(), "error for {req}: {reply}");
        reply
    }
}

impl Drop for LineProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn axolotl_peer() -> LineProcess {
    let python = std::env::var("SOTTO_PYTHON").unwrap_or_else(|_| "python3".into());
    let ok = Command::new(&python)
        .args(["-c", "import axolotl, google.protobuf"])
        .output();
    assert!(
        ok.is_ok_and(|o| o.status.success()),
        "python-axolotl 0.2.3 is not importable by {python}: run scripts/bridge-peer-deps.sh"
    );
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/peer/axolotl_peer.py");
    let mut cmd = Command::new(python);
    cmd.arg(script);
    LineProcess::spawn(cmd)
}

fn sotto_serve() -> LineProcess {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sotto"));
    cmd.args([
        "bridge",
        "serve",
        "--stdio",
        "--max-tokens",
        &MAX_TOKENS.to_string(),
        "--system",
        SYSTEM,
    ])
    .arg("--model")
    .arg(model_path());
    LineProcess::spawn(cmd)
}

/// Gives `to` the prekey bundle `from` publishes, so `to` can start a session
/// with the party called `from_name`.
fn hand_bundle(from: &mut LineProcess, to: &mut LineProcess, from_name: &str) {
    let mut bundle = from.ok(json!({"op": "bundle"}));
    bundle["op"] = json!("process_bundle");
    bundle["peer"] = json!(from_name);
    bundle["device"] = json!(1);
    to.ok(bundle);
}

/// A user on python-axolotl talking to the assistant.
struct User {
    name: &'static str,
    peer: LineProcess,
    history: Vec<ChatMessage>,
}

impl User {
    fn join(name: &'static str, sotto: &mut LineProcess) -> Self {
        let mut peer = axolotl_peer();
        hand_bundle(sotto, &mut peer, "sotto");
        Self {
            name,
            peer,
            history: Vec::new(),
        }
    }

    fn encrypt(&mut self, text: &str) -> Value {
        self.peer.ok(
            json!({"op": "encrypt", "peer": "sotto", "device": 1, "plaintext": B64.encode(text)}),
        )
    }

    /// Sends `text` through the bridge and returns the decrypted reply.
    fn ask(&mut self, sotto: &mut LineProcess, text: &str) -> String {
        let env = self.encrypt(text);
        let reply = sotto.ok(json!({"op": "envelope", "sender": self.name, "device": 1, "type": env["type"], "body": env["body"]}));
        let answer = self.open(&reply);
        self.history.push(ChatMessage {
            role: "user".into(),
            content: text.into(),
        });
        self.history.push(ChatMessage {
            role: "assistant".into(),
            content: answer.clone(),
        });
        answer
    }

    fn open(&mut self, envelope: &Value) -> String {
        let plain = self.peer.ok(json!({"op": "decrypt", "peer": "sotto", "device": 1, "type": envelope["type"], "body": envelope["body"]}));
        String::from_utf8(B64.decode(plain["plaintext"].as_str().unwrap()).unwrap()).unwrap()
    }
}

/// What the engine answers for one conversation on its own, in-process.
fn engine_answer(model: &Arc<Model>, history: &[ChatMessage]) -> String {
    let backend = CpuBackend::new(model.clone(), 0).unwrap();
    let session = Session::new(Box::new(backend), Arc::new(model.tokenizer.clone()), 2048).unwrap();
    let mut chat = Chat::new(session, Arc::new(model.template.clone()), None);
    let mut messages = vec![ChatMessage {
        role: "system".into(),
        content: SYSTEM.into(),
    }];
    messages.extend_from_slice(history);
    let opts = GenerateOptions {
        sampler: SamplerConfig {
            temperature: 0.0,
            ..SamplerConfig::default()
        },
        max_tokens: MAX_TOKENS,
        ..GenerateOptions::default()
    };
    chat.answer(&messages, &opts, &mut |_| {}).unwrap().text
}

#[test]
fn encrypted_conversations_with_python_axolotl_are_answered_by_the_real_model() {
    let model = Arc::new(Model::load(model_path()).unwrap());
    let mut sotto = sotto_serve();
    let mut alice = User::join("alice", &mut sotto);
    let mut bob = User::join("bob", &mut sotto);

    // Interleaved turns of two conversations.
    let a1 = alice.ask(&mut sotto, "What is the capital of France?");
    assert_eq!(a1, "The capital of France is Paris.");
    let b1 = bob.ask(&mut sotto, "Write a haiku about the sea.");
    let a2 = alice.ask(&mut sotto, "And what is the capital of Italy?");
    let b2 = bob.ask(&mut sotto, "Now one about mountains.");

    // Each answer is exactly the engine's answer to that conversation alone.
    for (user, turns) in [(&alice, [&a1, &a2]), (&bob, [&b1, &b2])] {
        for (i, answer) in turns.into_iter().enumerate() {
            let upto = &user.history[..2 * i + 1];
            assert_eq!(
                *answer,
                engine_answer(&model, upto),
                "{} turn {}",
                user.name,
                i + 1
            );
        }
    }
    assert_ne!(b1, a1);

    // A forged envelope (one flipped bit in the ciphertext) is refused with a
    // typed error; the genuine message then still goes through.
    let env = alice.encrypt("Thank you!");
    let mut body = B64.decode(env["body"].as_str().unwrap()).unwrap();
    let mid = body.len() / 2;
    body[mid] ^= 0x10;
    let refused = sotto.call(json!({"op": "envelope", "sender": "alice", "device": 1, "type": env["type"], "body": B64.encode(&body)}));
    assert_eq!(refused["error"]["kind"], "invalid_message", "{refused}");
    // A replay of an already answered message is refused as a duplicate.
    let genuine = sotto.ok(json!({"op": "envelope", "sender": "alice", "device": 1, "type": env["type"], "body": env["body"]}));
    let thanks = alice.open(&genuine);
    assert!(!thanks.is_empty());
    let replay = sotto.call(json!({"op": "envelope", "sender": "alice", "device": 1, "type": env["type"], "body": env["body"]}));
    assert_eq!(replay["error"]["kind"], "duplicate", "{replay}");

    // The assistant can also start a session from a peer's bundle.
    let mut carol = axolotl_peer();
    hand_bundle(&mut carol, &mut sotto, "carol");
    let sent = sotto.ok(
        json!({"op": "send", "peer": "carol", "device": 1, "text": "Hello from your assistant."}),
    );
    let plain = carol.ok(json!({"op": "decrypt", "peer": "sotto", "device": 1, "type": sent["type"], "body": sent["body"]}));
    assert_eq!(
        B64.decode(plain["plaintext"].as_str().unwrap()).unwrap(),
        b"Hello from your assistant."
    );

    // Malformed requests are typed `bad_request` errors and the server keeps
    // serving: not JSON, an unknown op, missing or non-base64 fields, an
    // envelope without a sender or with an unknown type.
    for line in [
        "this is not json".to_string(),
        json!({"op": "no_such_op"}).to_string(),
        json!({"op": "envelope", "device": 1, "type": "message", "body": "AAAA"}).to_string(),
        json!({"op": "envelope", "sender": "alice", "device": 1, "type": "message", "body": "%%%"})
            .to_string(),
        json!({"op": "envelope", "sender": "alice", "device": 1, "type": "bogus", "body": "AAAA"})
            .to_string(),
        json!({"op": "send", "peer": "carol", "device": 1}).to_string(),
        json!({"op": "process_bundle", "peer": "dave", "device": 1}).to_string(),
    ] {
        let r = sotto.raw(&line);
        assert_eq!(r["error"]["kind"], "bad_request", "{line} -> {r}");
    }
    let last = alice.ask(&mut sotto, "What is the capital of France?");
    assert!(
        !last.is_empty(),
        "the server still answers after bad requests"
    );
}

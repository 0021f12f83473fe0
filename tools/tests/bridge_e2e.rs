//! The whole bridge end to end, across processes: `sotto bridge serve --stdio`
//! with the real default model answers python-axolotl 0.2.3 peers (an
//! independent Signal v3 implementation, tests/peer/axolotl_peer.py, installed
//! by scripts/bridge-peer-deps.sh). Each peer's replies must decrypt on the
//! peer and equal what the engine answers for that conversation alone, so
//! two interleaved conversations never mix; a forged envelope is refused with
//! a typed error and loses nothing. The Unix-socket transport serves
//! clients concurrently (a reply being generated does not hold up other
//! messages) and in per-conversation order; a sealed state directory
//! survives a restart; a changed identity is refused until accepted; a
//! resent `submit` gets its reply event once.
#![allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)]

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use serde_json::{json, Value};
use sotto_engine::{Chat, CpuBackend, GenerateOptions, SamplerConfig, Session};
use sotto_models::chat::ChatMessage;
use sotto_models::Model;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use sotto_tests::bridge_peer::{bundle_from_json, Peer, PeerKind};

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
    /// `None` once closed ([`LineProcess::close_and_wait`]).
    stdin: Option<ChildStdin>,
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
            stdin: Some(stdin),
            stdout,
        }
    }

    fn stdin(&mut self) -> &mut ChildStdin {
        self.stdin.as_mut().expect("stdin is open")
    }

    /// Closes stdin (a graceful stop for `serve --stdio`) and waits.
    fn close_and_wait(&mut self) -> std::process::ExitStatus {
        drop(self.stdin.take());
        self.child.wait().unwrap()
    }

    fn call(&mut self, req: Value) -> Value {
        writeln!(self.stdin(), "{req}").unwrap();
        self.stdin().flush().unwrap();
        let mut line = String::new();
        self.stdout.read_line(&mut line).unwrap();
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("reply {line:?} to {req}: {e}"))
    }

    /// Sends one raw line (not necessarily JSON) and parses the reply.
    fn raw(&mut self, line: &str) -> Value {
        writeln!(self.stdin(), "{line}").unwrap();
        self.stdin().flush().unwrap();
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

fn serve_command(transport: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sotto"));
    cmd.args(["bridge", "serve"])
        .args(transport)
        .args(["--max-tokens", &MAX_TOKENS.to_string(), "--system", SYSTEM])
        .arg("--model")
        .arg(model_path());
    cmd
}

fn sotto_serve() -> LineProcess {
    LineProcess::spawn(serve_command(&["--stdio"]))
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

const KEY: &str = "2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b";

fn temp_path(name: &str) -> PathBuf {
    let p = std::env::temp_dir().join(format!("sotto-e2e-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&p);
    let _ = std::fs::remove_file(&p);
    p
}

impl LineProcess {
    fn send_line(&mut self, req: &Value) {
        writeln!(self.stdin(), "{req}").unwrap();
        self.stdin().flush().unwrap();
    }

    fn next_line(&mut self) -> Value {
        let mut line = String::new();
        self.stdout.read_line(&mut line).unwrap();
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("line {line:?}: {e}"))
    }
}

/// A transport unsure whether its `submit` arrived sends it again at once:
/// the second gets the same turn (`resent`) and the reply event comes once,
/// unless the reply went out before the resend was read (then the resend
/// brings it again, byte for byte).
#[test]
fn a_resent_submit_gets_its_reply_event_once() {
    let mut sotto = sotto_serve();
    let mut alice = User::join("alice", &mut sotto);
    let env = alice.encrypt("What is the capital of France?");
    for id in ["first", "again"] {
        sotto.send_line(&json!({"op": "submit", "id": id, "sender": "alice", "device": 1, "type": env["type"], "body": env["body"]}));
    }
    let mut resend_accepted_before_reply = None;
    let mut events = Vec::new();
    let mut accepted = 0;
    while accepted < 2 || events.is_empty() {
        let v = sotto.next_line();
        if v["event"] == "reply" {
            events.push(v);
        } else if let Some(a) = v.get("accepted") {
            assert_eq!(a["turn"], 1, "{v}");
            assert_eq!(a["resent"], v["id"] == "again", "{v}");
            if v["id"] == "again" {
                resend_accepted_before_reply = Some(events.is_empty());
            }
            accepted += 1;
        } else {
            panic!("unexpected {v}");
        }
    }
    sotto.send_line(&json!({"op": "ack", "id": "ack", "peer": "alice", "device": 1, "turn": 1}));
    sotto.send_line(&json!({"op": "status", "id": "status"}));
    loop {
        let v = sotto.next_line();
        if v["event"] == "reply" {
            events.push(v);
        } else if v["id"] == "status" {
            assert_eq!(v["outbox"], 0, "{v}");
            break;
        }
    }
    let expected = if resend_accepted_before_reply == Some(true) {
        1
    } else {
        2
    };
    assert_eq!(events.len(), expected, "reply events: {events:?}");
    assert!(
        events.iter().all(|e| e["body"] == events[0]["body"]),
        "{events:?}"
    );
    assert_eq!(alice.open(&events[0]), "The capital of France is Paris.");
}

#[test]
fn a_sealed_state_survives_restart_and_a_changed_identity_is_accepted_explicitly() {
    let model = Arc::new(Model::load(model_path()).unwrap());
    let dir = temp_path("state");
    let serve = || {
        let mut cmd = serve_command(&["--stdio"]);
        cmd.arg("--state-dir")
            .arg(&dir)
            .env("SOTTO_BRIDGE_KEY", KEY);
        LineProcess::spawn(cmd)
    };
    let mut sotto = serve();
    let mut alice = User::join("alice", &mut sotto);
    assert_eq!(
        alice.ask(&mut sotto, "What is the capital of France?"),
        "The capital of France is Paris."
    );
    // Stopped only once the reply is acknowledged: killed between writing
    // it and committing the acknowledgement, the server would rightly keep
    // it in its outbox for redelivery after the restart.
    assert_eq!(settled_status(&mut sotto)["outbox"], 0);
    // A graceful stop saves the warm conversation's KV cache, sealed under
    // a keyed name beside the records.
    assert!(sotto.close_and_wait().success());
    let sessions: Vec<_> = std::fs::read_dir(dir.join("sessions"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(sessions.len(), 1, "{sessions:?}");
    assert!(sessions[0].ends_with(".session") && !sessions[0].contains("alice"));
    drop(sotto);

    // Restarted: same identity, same session, the conversation goes on
    // from the saved cache with the answer a fresh prefill gives.
    let mut sotto = serve();
    let italy = alice.ask(&mut sotto, "And what is the capital of Italy?");
    assert_eq!(italy, engine_answer(&model, &alice.history[..3]));
    // Restored, not refused (a refused file is removed).
    assert!(dir.join("sessions").join(&sessions[0]).exists());

    // Alice reinstalls: a new identity at the same address is refused,
    // with what the user needs to decide (the new safety number)...
    let mut reinstalled = User::join("alice", &mut sotto);
    reinstalled.history = alice.history.clone();
    let env = reinstalled.encrypt("Are you still there?");
    let request = json!({"op": "envelope", "sender": "alice", "device": 1, "type": env["type"], "body": env["body"]});
    let refused = sotto.call(request.clone());
    assert_eq!(refused["error"]["kind"], "untrusted_identity", "{refused}");
    let offered = refused["error"]["offered_identity_key"].clone();
    let number = refused["error"]["safety_number"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(number.len(), 60);
    // ...and accepted explicitly: the same envelope then goes through.
    sotto.ok(
        json!({"op": "accept_identity", "peer": "alice", "device": 1, "identity_key": offered}),
    );
    let safety = sotto.ok(json!({"op": "safety_number", "peer": "alice", "device": 1}));
    assert_eq!(safety["safety_number"], number.as_str());
    let reply = sotto.ok(request);
    let answer = reinstalled.open(&reply);
    reinstalled.history.push(ChatMessage {
        role: "user".into(),
        content: "Are you still there?".into(),
    });
    assert_eq!(answer, engine_answer(&model, &reinstalled.history));

    // Signed prekeys rotate on request; new bundles carry the new one.
    let rotated = sotto.ok(json!({"op": "rotate"}));
    let bundle = sotto.ok(json!({"op": "bundle"}));
    assert_eq!(bundle["signed_pre_key_id"], rotated["signed_pre_key_id"]);
    let status = settled_status(&mut sotto);
    assert_eq!(
        (
            status["peers"].as_u64(),
            status["unanswered"].as_u64(),
            status["outbox"].as_u64()
        ),
        (Some(1), Some(0), Some(0)),
        "{status}"
    );
    drop(sotto);
    let _ = std::fs::remove_dir_all(&dir);
}

/// The server's status once the replies it has written are acknowledged:
/// it drops a reply from its outbox after writing it to the client, so a
/// status that overtakes that step still counts it. Asked again for a
/// bounded time.
fn settled_status(sotto: &mut LineProcess) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let status = sotto.ok(json!({"op": "status"}));
        if status["outbox"] == 0 || Instant::now() > deadline {
            return status;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A client of the Unix socket; a thread timestamps every line it gets.
struct SocketClient {
    stream: UnixStream,
    lines: mpsc::Receiver<(Instant, Value)>,
}

impl SocketClient {
    fn connect(path: &Path) -> Self {
        let stream =
            UnixStream::connect(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let reader = BufReader::new(stream.try_clone().unwrap());
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in reader.lines() {
                let Ok(line) = line else { break };
                let v: Value =
                    serde_json::from_str(&line).unwrap_or_else(|e| panic!("{line:?}: {e}"));
                if tx.send((Instant::now(), v)).is_err() {
                    break;
                }
            }
        });
        Self { stream, lines }
    }

    fn send(&mut self, v: &Value) {
        writeln!(self.stream, "{v}").unwrap();
        self.stream.flush().unwrap();
    }

    fn raw(&mut self, line: &[u8]) {
        self.stream.write_all(line).unwrap();
        self.stream.write_all(b"\n").unwrap();
    }

    fn next(&self) -> (Instant, Value) {
        self.next_within(Duration::from_secs(300))
    }

    fn next_within(&self, timeout: Duration) -> (Instant, Value) {
        self.lines
            .recv_timeout(timeout)
            .unwrap_or_else(|e| panic!("no line from the server in {timeout:?}: {e}"))
    }

    /// Sends `req` and waits for the response with its id.
    fn call(&mut self, mut req: Value, id: &str) -> Value {
        req["id"] = json!(id);
        self.send(&req);
        loop {
            let (_, v) = self.next();
            if v["id"] == id {
                return v;
            }
        }
    }

    /// Sends `req` while the worker is held and waits for its response.
    fn call_while_held(&mut self, mut req: Value, id: &str) -> Value {
        req["id"] = json!(id);
        self.send(&req);
        while_held(self, id)
    }
}

/// The server on a socket only, killed on drop.
struct SocketServer {
    child: Child,
    path: PathBuf,
}

impl Drop for SocketServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.path);
    }
}

/// The socket server with a hold point on its first generation
/// (`SOTTO_BRIDGE_HOLD_AT`, test-only: the worker stops there, the device
/// lock released, until `release` opens the named pipe) and a sealed state
/// directory. `held` gets the line the server prints when the worker
/// reaches it.
struct HeldServer {
    server: SocketServer,
    dir: PathBuf,
    fifo: PathBuf,
    held: mpsc::Receiver<String>,
}

impl HeldServer {
    fn start(name: &str) -> Self {
        let dir = temp_path(&format!("{name}-state"));
        let fifo = temp_path(&format!("{name}-hold"));
        let made = Command::new("mkfifo").arg(&fifo).status().unwrap();
        assert!(made.success(), "mkfifo {}", fifo.display());
        let path = temp_path(name);
        let mut child = serve_command(&["--socket", path.to_str().unwrap()])
            .arg("--state-dir")
            .arg(&dir)
            .env("SOTTO_BRIDGE_KEY", KEY)
            .env("SOTTO_BRIDGE_HOLD_AT", "serve:generating#1")
            .env("SOTTO_BRIDGE_HOLD_FIFO", &fifo)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = BufReader::new(child.stderr.take().unwrap());
        let (tx, held) = mpsc::channel();
        std::thread::spawn(move || {
            for line in stderr.lines() {
                let Ok(line) = line else { break };
                eprintln!("{line}");
                if line.contains("hold point") && tx.send(line).is_err() {
                    break;
                }
            }
        });
        let server = SocketServer { child, path };
        let started = Instant::now();
        while UnixStream::connect(&server.path).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(300),
                "the socket never came up"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Self {
            server,
            dir,
            fifo,
            held,
        }
    }

    /// Waits until the worker is held, that is, has taken a turn to answer.
    fn wait_held(&self) {
        let line = self
            .held
            .recv_timeout(Duration::from_secs(300))
            .unwrap_or_else(|e| panic!("the worker never reached its hold point: {e}"));
        assert!(line.contains("serve:generating#1 reached"), "{line}");
    }

    /// Lets the held worker go on (opening the pipe for writing is what
    /// it waits for; closing it ends its read).
    fn release(&self) {
        drop(
            std::fs::OpenOptions::new()
                .write(true)
                .open(&self.fifo)
                .unwrap(),
        );
    }

    /// Sealed record files written by commits after `sequence`
    /// (`records/<tag>.<generation>`, bridge/src/record_dir.rs).
    fn records_written_after(&self, sequence: u64) -> usize {
        std::fs::read_dir(self.dir.join("records"))
            .unwrap()
            .filter_map(|e| {
                let name = e.unwrap().file_name().into_string().unwrap();
                name.rsplit_once('.')?.1.parse::<u64>().ok()
            })
            .filter(|generation| *generation > sequence)
            .count()
    }
}

impl Drop for HeldServer {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.fifo);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Receives lines from `client` until the response with id `id`; any reply
/// event on the way is a failure (nothing may be answered while the
/// worker is held). A minute is ample for a decryption and a commit: a
/// server that held its device while generating would never answer.
fn while_held(client: &SocketClient, id: &str) -> Value {
    loop {
        let (_, v) = client.next_within(Duration::from_secs(60));
        assert_ne!(v["event"], "reply", "a reply while the worker is held: {v}");
        if v["id"] == id {
            return v;
        }
    }
}

/// While the worker is held inside the generation of Alice's first reply
/// (the hold point comes after it took her turn and released the device),
/// the server decrypts, acknowledges (`accepted`) and journals (sealed
/// records on disk, `status`) her next two messages and the first ones of
/// Bob (python-axolotl, another client) and Carol (libsignal, a third
/// client). Released, it answers every conversation in its own order, each
/// reply the engine's answer to that conversation alone. No timing is
/// involved: if the server held its device while generating, the
/// `accepted` responses would never come.
#[test]
fn the_socket_serves_clients_concurrently_and_each_conversation_in_order() {
    let model = Arc::new(Model::load(model_path()).unwrap());
    let held = HeldServer::start("sock");
    let path = held.server.path.clone();
    let (mut c1, mut c2, mut c3) = (
        SocketClient::connect(&path),
        SocketClient::connect(&path),
        SocketClient::connect(&path),
    );
    let mut alice = axolotl_peer();
    let mut bob = axolotl_peer();
    let mut carol = Peer::spawn(PeerKind::Libsignal);
    for (peer, client) in [(&mut alice, &mut c1), (&mut bob, &mut c2)] {
        let mut bundle = client.call(json!({"op": "bundle"}), "bundle");
        bundle.as_object_mut().unwrap().remove("id");
        bundle["op"] = json!("process_bundle");
        bundle["peer"] = json!("sotto");
        bundle["device"] = json!(1);
        peer.ok(bundle);
    }
    let bundle = c3.call(json!({"op": "bundle"}), "bundle");
    carol.process_bundle("sotto", &bundle_from_json(&bundle));
    let submit = |peer: &mut LineProcess, name: &str, text: &str, id: &str| {
        let env = peer.ok(
            json!({"op": "encrypt", "peer": "sotto", "device": 1, "plaintext": B64.encode(text)}),
        );
        json!({"op": "submit", "id": id, "sender": name, "device": 1, "type": env["type"], "body": env["body"]})
    };
    let alice_texts = [
        "Write a short poem about the moon.",
        "What is the capital of France?",
        "And of Spain?",
    ];
    let bob_text = "What is the capital of France?";
    let carol_text = "Name a colour.";

    // Alice's first message: the worker takes it and stops inside its
    // generation.
    c1.send(&submit(&mut alice, "alice", alice_texts[0], "a0"));
    assert_eq!(while_held(&c1, "a0")["accepted"]["turn"], 1);
    held.wait_held();
    let before = c2.call_while_held(json!({"op": "status"}), "status-before");
    assert_eq!(before["unanswered"], 1, "{before}");

    // Meanwhile: Alice's next two, Bob's and Carol's first.
    for (i, text) in alice_texts.iter().enumerate().skip(1) {
        c1.send(&submit(&mut alice, "alice", text, &format!("a{i}")));
    }
    c2.send(&submit(&mut bob, "bob", bob_text, "b0"));
    let (kind, body) = carol.encrypt_raw("sotto", carol_text);
    c3.send(&json!({"op": "submit", "id": "c0", "sender": "carol", "device": 1, "type": kind, "body": B64.encode(body)}));
    for (i, turn) in [(1, 2), (2, 3)] {
        let v = while_held(&c1, &format!("a{i}"));
        assert_eq!(v["accepted"]["turn"], turn, "{v}");
    }
    for (client, id) in [(&c2, "b0"), (&c3, "c0")] {
        let v = while_held(client, id);
        assert_eq!(
            (
                v["accepted"]["turn"].as_u64(),
                v["accepted"]["resent"].as_bool()
            ),
            (Some(1), Some(false)),
            "{v}"
        );
    }
    // Journaled, still while Alice's first reply is being generated.
    let during = c3.call_while_held(json!({"op": "status"}), "status-during");
    assert_eq!(
        (
            during["peers"].as_u64(),
            during["conversations"].as_u64(),
            during["unanswered"].as_u64(),
            during["outbox"].as_u64()
        ),
        (Some(3), Some(3), Some(5), Some(0)),
        "{during}"
    );
    assert!(
        during["sequence"].as_u64() >= before["sequence"].as_u64().map(|s| s + 4),
        "four more commits: {before} then {during}"
    );
    // At least the four turns, each in a record file of its commit.
    let written = held.records_written_after(before["sequence"].as_u64().unwrap());
    assert!(
        written >= 4,
        "{written} sealed records written in {} while held",
        held.dir.display()
    );
    assert!(
        c1.lines.try_recv().is_err() && c2.lines.try_recv().is_err(),
        "nothing else may arrive while held"
    );

    held.release();
    let mut bob_reply = None;
    while bob_reply.is_none() {
        let (_, v) = c2.next();
        if v["event"] == "reply" {
            bob_reply = Some(v);
        }
    }
    let (_, carol_reply) = c3.next();
    assert_eq!(carol_reply["event"], "reply", "{carol_reply}");
    let mut alice_replies = Vec::new();
    while alice_replies.len() < 3 {
        let (_, v) = c1.next();
        assert_eq!(v["event"], "reply", "{v}");
        alice_replies.push(v);
    }
    // Alice's replies in turn order, each the engine's answer to her
    // conversation alone (so each saw the previous answers).
    let mut history = Vec::new();
    for (i, reply) in alice_replies.iter().enumerate() {
        assert_eq!(reply["turn"], i as u64 + 1, "{reply}");
        let plain = alice.ok(json!({"op": "decrypt", "peer": "sotto", "device": 1, "type": reply["type"], "body": reply["body"]}));
        let answer =
            String::from_utf8(B64.decode(plain["plaintext"].as_str().unwrap()).unwrap()).unwrap();
        history.push(ChatMessage {
            role: "user".into(),
            content: alice_texts[i].into(),
        });
        assert_eq!(
            answer,
            engine_answer(&model, &history),
            "alice turn {}",
            i + 1
        );
        history.push(ChatMessage {
            role: "assistant".into(),
            content: answer,
        });
        let acked = c1.call(
            json!({"op": "ack", "peer": "alice", "device": 1, "turn": i + 1}),
            &format!("ack{i}"),
        );
        assert_eq!(acked["acked"], true);
    }
    let bob_reply = bob_reply.unwrap();
    let plain = bob.ok(json!({"op": "decrypt", "peer": "sotto", "device": 1, "type": bob_reply["type"], "body": bob_reply["body"]}));
    assert_eq!(
        String::from_utf8(B64.decode(plain["plaintext"].as_str().unwrap()).unwrap()).unwrap(),
        "The capital of France is Paris."
    );
    let carol_answer = carol
        .decrypt_raw(
            "sotto",
            carol_reply["type"].as_str().unwrap(),
            &B64.decode(carol_reply["body"].as_str().unwrap()).unwrap(),
        )
        .unwrap();
    let carol_history = [ChatMessage {
        role: "user".into(),
        content: carol_text.into(),
    }];
    assert_eq!(carol_answer, engine_answer(&model, &carol_history), "carol");
    for (client, peer) in [(&mut c2, "bob"), (&mut c3, "carol")] {
        let acked = client.call(
            json!({"op": "ack", "peer": peer, "device": 1, "turn": 1}),
            &format!("ack-{peer}"),
        );
        assert_eq!(acked["acked"], true, "{acked}");
    }

    // A request line past the limit is skipped, not buffered; the
    // connection keeps working.
    c2.raw(&vec![b'x'; 300 << 10]);
    let (_, too_long) = c2.next();
    assert_eq!(too_long["error"]["kind"], "line_too_long", "{too_long}");
    let status = c2.call(json!({"op": "status"}), "status");
    assert_eq!(
        (
            status["peers"].as_u64(),
            status["unanswered"].as_u64(),
            status["outbox"].as_u64()
        ),
        (Some(3), Some(0), Some(0)),
        "{status}"
    );
}

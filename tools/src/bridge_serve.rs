//! `sotto bridge serve`: an [`AssistantDevice`] behind JSON lines, on
//! stdin/stdout and/or a Unix-domain socket (one connection per client,
//! the same protocol).
//!
//! Threads: one reader per connection decrypts, journals and answers the
//! quick requests itself; one worker owns the assistant and answers
//! journaled messages in arrival order (so per conversation in order),
//! holding the device lock only to read a prompt and to commit a reply.
//! While it generates, readers keep decrypting, acknowledging and
//! journaling. Every response echoes the request's `"id"`; a reply to an
//! `envelope` request comes when it is generated, so a client that
//! pipelines requests matches responses by id. A reply goes to whoever
//! asked for it (the `envelope` response, or an event to the client that
//! `submit`ted it); one nobody waits for any more (its client left, or
//! the server restarted) goes as an event to the `subscribe`d clients. Requests are listed in
//! README.md ("The bridge server").

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};
use std::time::{Duration, SystemTime};

use rand::rngs::OsRng;
use serde_json::{json, Value};
use sotto_bridge::{
    Assistant, AssistantDevice, Error, Limits, OutgoingReply, Prompt, ProtocolAddress, Refusal,
    StepHook, TurnRef,
};

use crate::cmd_bridge::{
    address, bundle_from_json, bundle_json, envelope_from_json, envelope_json, identity_field,
    reply_json, RequestError,
};

/// `envelope` requests waiting for the same reply (the same envelope sent
/// again and again) beyond this are refused.
const MAX_WAITERS_PER_TURN: usize = 8;

/// Where requests come from.
#[derive(Debug)]
pub struct Transports {
    pub stdio: bool,
    pub socket: Option<PathBuf>,
}

/// One client: its writer (whole lines, one writer at a time) and whether
/// it wants reply events.
struct Connection {
    out: Mutex<Box<dyn Write + Send>>,
    subscribed: AtomicBool,
    open: AtomicBool,
}

fn write_line(out: &mut dyn Write, v: &Value) -> bool {
    writeln!(out, "{v}").and_then(|()| out.flush()).is_ok()
}

impl Connection {
    fn new(out: Box<dyn Write + Send>) -> Arc<Self> {
        Arc::new(Self {
            out: Mutex::new(out),
            subscribed: AtomicBool::new(false),
            open: AtomicBool::new(true),
        })
    }

    fn writer(&self) -> MutexGuard<'_, Box<dyn Write + Send>> {
        self.out.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn send(&self, v: &Value) -> bool {
        self.open.load(Ordering::SeqCst) && write_line(&mut **self.writer(), v)
    }
}

/// A client waiting for a reply: as the response to its `envelope`
/// request, or as an event after its `submit`.
struct Waiter {
    conn: Arc<Connection>,
    id: Option<Value>,
    as_response: bool,
}

fn with_id(mut v: Value, id: &Option<Value>) -> Value {
    if let (Some(id), Some(obj)) = (id, v.as_object_mut()) {
        obj.insert("id".into(), id.clone());
    }
    v
}

fn event_json(r: &OutgoingReply) -> Value {
    let mut v = reply_json(r);
    v["event"] = json!("reply");
    v
}

struct Server {
    device: Mutex<AssistantDevice>,
    /// Signalled (with the device lock) when a turn is journaled or the
    /// server shuts down.
    work: Condvar,
    shutdown: AtomicBool,
    /// Who asked for each reply not yet delivered.
    waiters: Mutex<HashMap<TurnRef, Vec<Waiter>>>,
    connections: Mutex<Vec<Weak<Connection>>>,
    socket_clients: AtomicUsize,
    limits: Limits,
    hook: Option<StepHook>,
}

impl Server {
    fn device(&self) -> MutexGuard<'_, AssistantDevice> {
        // A panic while holding the lock left the device as its last
        // transaction did (commits are atomic); keep serving.
        self.device.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn step(&self, name: &str) {
        if let Some(hook) = &self.hook {
            hook(name);
        }
    }

    fn register(&self, conn: &Arc<Connection>) {
        let mut all = self.connections.lock().unwrap_or_else(|p| p.into_inner());
        all.retain(|c| c.strong_count() > 0);
        all.push(Arc::downgrade(conn));
    }

    fn subscribers(&self) -> Vec<Arc<Connection>> {
        let all = self.connections.lock().unwrap_or_else(|p| p.into_inner());
        all.iter()
            .filter_map(Weak::upgrade)
            .filter(|c| c.subscribed.load(Ordering::SeqCst) && c.open.load(Ordering::SeqCst))
            .collect()
    }

    fn stop(&self) {
        self.shutdown.store(true, Ordering::SeqCst);
        let _guard = self.device();
        self.work.notify_all();
    }

    /// Writes `reply` as the response to a waiting `envelope` request and,
    /// once a client has it, drops it from the outbox.
    fn respond_with_reply(
        &self,
        conn: &Connection,
        id: &Option<Value>,
        reply: &OutgoingReply,
    ) -> bool {
        let sent = conn.send(&with_id(reply_json(reply), id));
        if sent {
            self.acknowledge(reply);
        }
        sent
    }

    fn acknowledge(&self, reply: &OutgoingReply) {
        self.step("serve:reply-sent");
        if let Err(e) = self.device().ack(&reply.turn) {
            eprintln!(
                "sotto: acknowledging turn {} of {}: {e}",
                reply.turn.turn, reply.turn.peer
            );
        }
    }

    /// A reply is ready: to the clients that asked for it (an `envelope`
    /// response is acknowledged once written; a `submit`ter acknowledges
    /// the event itself), else as an event to every `subscribe`d client.
    fn deliver(&self, reply: &OutgoingReply) {
        // The waiters stay registered until they have been written to: a
        // resend that finds its client still waiting leaves the event to
        // this delivery, one that finds none (delivered already) sends the
        // reply again. None are added once the turn is complete (only an
        // unanswered turn gets waiters), so removing after is safe.
        let waiters: Vec<(Arc<Connection>, Option<Value>, bool)> = self
            .waiters
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&reply.turn)
            .map(|ws| {
                ws.iter()
                    .map(|w| (w.conn.clone(), w.id.clone(), w.as_response))
                    .collect()
            })
            .unwrap_or_default();
        let (mut responded, mut evented) = (false, false);
        for (conn, id, as_response) in &waiters {
            if *as_response {
                responded |= conn.send(&with_id(reply_json(reply), id));
            } else {
                evented |= conn.send(&event_json(reply));
            }
        }
        self.waiters
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&reply.turn);
        if responded {
            self.acknowledge(reply);
            return;
        }
        if !evented {
            let event = event_json(reply);
            for conn in self.subscribers() {
                evented |= conn.send(&event);
            }
        }
        if evented {
            self.step("serve:reply-sent");
        }
    }

    /// Registers who waits for `turn`'s reply (bounded: resending an
    /// envelope again and again adds a waiter each time).
    fn wait_for(&self, turn: TurnRef, waiter: Waiter) -> Result<(), Value> {
        let mut waiters = self.waiters.lock().unwrap_or_else(|p| p.into_inner());
        let waiting = waiters.entry(turn).or_default();
        if waiting.len() >= MAX_WAITERS_PER_TURN {
            return Err(RequestError::Bridge(Error::LimitExceeded {
                what: "requests waiting for one reply",
                limit: MAX_WAITERS_PER_TURN,
            })
            .to_json());
        }
        waiting.push(waiter);
        Ok(())
    }

    fn waits_for_event(&self, turn: &TurnRef, conn: &Arc<Connection>) -> bool {
        self.waiters
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(turn)
            .is_some_and(|ws| {
                ws.iter()
                    .any(|w| !w.as_response && Arc::ptr_eq(&w.conn, conn))
            })
    }

    fn fail_waiters(&self, turn: &TurnRef, err: Value) {
        let waiters = self
            .waiters
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(turn)
            .unwrap_or_default();
        for w in waiters {
            w.conn.send(&with_id(err.clone(), &w.id));
        }
    }
}

/// Answers journaled turns until shutdown with nothing left to answer.
fn run_worker(server: Arc<Server>, mut assistant: Box<dyn Assistant>) {
    loop {
        let (turn, prompt) = {
            let mut device = server.device();
            loop {
                if let Some(t) = device.next_unanswered() {
                    let prompt = device.prompt(&t);
                    break (t, prompt);
                }
                if server.shutdown.load(Ordering::SeqCst) {
                    drop(device);
                    if let Err(e) = assistant.persist() {
                        eprintln!("sotto: saving the warm conversations: {e}");
                    }
                    return;
                }
                device = server.work.wait(device).unwrap_or_else(|p| p.into_inner());
            }
        };
        let answer = match prompt {
            Ok(Prompt::Refuse(r)) => Err(r),
            Ok(Prompt::Ask(history)) => {
                // The turn is taken and the device lock released: what
                // readers do from here on overlaps the generation.
                server.step("serve:generating");
                assistant
                    .reply(&turn.conversation(), &history)
                    .map_err(|e| {
                        eprintln!("sotto: turn {} of {}: {e}", turn.turn, turn.peer);
                        Refusal::from(&e)
                    })
            }
            Err(e) => {
                eprintln!("sotto: turn {} of {}: {e}", turn.turn, turn.peer);
                Err(Refusal::AssistantFailed)
            }
        };
        let completed = server.device().complete(&turn, answer);
        match completed {
            Ok(reply) => server.deliver(&reply),
            Err(e) => {
                eprintln!(
                    "sotto: replying to turn {} of {}: {e}",
                    turn.turn, turn.peer
                );
                let still_waiting = server.device().unanswered().any(|t| *t == turn);
                if still_waiting {
                    // The store refused the commit (disk full, I/O): the
                    // turn stays journaled; try again shortly.
                    std::thread::sleep(Duration::from_millis(500));
                } else {
                    server.fail_waiters(&turn, RequestError::Bridge(e).to_json());
                }
            }
        }
    }
}

/// How a bounded line read ended.
enum LineRead {
    Line,
    /// Longer than the limit: skipped (this many bytes), not buffered.
    TooLong(usize),
    Eof,
}

/// Reads one line into `line` (without the newline), buffering at most
/// `max` bytes: a longer line is consumed and reported, never kept.
fn read_bounded_line(
    reader: &mut impl BufRead,
    max: usize,
    line: &mut Vec<u8>,
) -> std::io::Result<LineRead> {
    line.clear();
    let mut skipped: Option<usize> = None;
    loop {
        let buf = match reader.fill_buf() {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if buf.is_empty() {
            return Ok(match skipped {
                Some(n) => LineRead::TooLong(n),
                None if line.is_empty() => LineRead::Eof,
                None => LineRead::Line,
            });
        }
        let newline = buf.iter().position(|&b| b == b'\n');
        let chunk = &buf[..newline.unwrap_or(buf.len())];
        match &mut skipped {
            Some(n) => *n += chunk.len(),
            None if line.len() + chunk.len() > max => {
                skipped = Some(line.len() + chunk.len());
                line.clear();
            }
            None => line.extend_from_slice(chunk),
        }
        let consumed = newline.map_or(buf.len(), |i| i + 1);
        reader.consume(consumed);
        if newline.is_some() {
            return Ok(match skipped {
                Some(n) => LineRead::TooLong(n),
                None => LineRead::Line,
            });
        }
    }
}

fn read_requests(server: &Server, conn: &Arc<Connection>, mut reader: impl BufRead) {
    let mut line = Vec::new();
    loop {
        match read_bounded_line(&mut reader, server.limits.max_line_bytes, &mut line) {
            Ok(LineRead::Eof) => break,
            Ok(LineRead::TooLong(n)) => {
                conn.send(&json!({"error": {"kind": "line_too_long", "message": format!(
                    "request line of {n} bytes skipped (at most {})", server.limits.max_line_bytes
                )}}));
            }
            Ok(LineRead::Line) => {
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                handle_line(server, conn, &line);
            }
            Err(e) => {
                eprintln!("sotto: reading requests: {e}");
                break;
            }
        }
    }
    conn.open.store(false, Ordering::SeqCst);
}

fn handle_line(server: &Server, conn: &Arc<Connection>, line: &[u8]) {
    let req: Value = match serde_json::from_slice(line) {
        Ok(v) => v,
        Err(e) => {
            conn.send(&RequestError::BadRequest(e.to_string()).to_json());
            return;
        }
    };
    let id = req.get("id").cloned();
    match handle_request(server, conn, &req, &id) {
        Ok(Some(response)) => {
            conn.send(&with_id(response, &id));
        }
        Ok(None) => {}
        Err(e) => {
            conn.send(&with_id(e, &id));
        }
    }
}

fn turn_json(turn: &TurnRef, resent: bool) -> Value {
    json!({
        "peer": turn.peer.name,
        "device": turn.peer.device_id,
        "conversation": turn.conversation().0,
        "turn": turn.turn,
        "resent": resent,
    })
}

/// An error for the client; a refused changed identity says which identity
/// was offered and its safety number, for the user to compare before
/// `accept_identity`.
fn refusal_json(
    device: &AssistantDevice,
    sender: &ProtocolAddress,
    local: &str,
    e: Error,
) -> Value {
    let mut v = RequestError::Bridge(e).to_json();
    if v["error"]["kind"] == "untrusted_identity" {
        if let Some(offered) = device.offered_identity(sender) {
            use base64::Engine as _;
            v["error"]["offered_identity_key"] =
                json!(base64::engine::general_purpose::STANDARD.encode(offered.serialize()));
            v["error"]["safety_number"] = json!(sotto_bridge::safety_number(
                local.as_bytes(),
                &device.identity_key(),
                sender.name.as_bytes(),
                &offered
            ));
        }
    }
    v
}

fn local_name(req: &Value) -> &str {
    req["local_id"].as_str().unwrap_or("sotto")
}

/// Answers one request. `Ok(None)`: the response was written already or
/// comes later (a reply still being generated).
fn handle_request(
    server: &Server,
    conn: &Arc<Connection>,
    req: &Value,
    id: &Option<Value>,
) -> Result<Option<Value>, Value> {
    let bad = |e: RequestError| e.to_json();
    let bridge = |e: Error| RequestError::Bridge(e).to_json();
    let rng = &mut OsRng;
    match req["op"].as_str().unwrap_or("") {
        "bundle" => {
            let bundle = server
                .device()
                .prekey_bundle(SystemTime::now(), rng)
                .map_err(bridge)?;
            Ok(Some(bundle_json(&bundle)))
        }
        op @ ("envelope" | "submit") => {
            let sender = address(req, "sender").map_err(bad)?;
            let envelope = envelope_from_json(req).map_err(bad)?;
            let mut device = server.device();
            let received = device
                .receive(&sender, &envelope, rng)
                .map_err(|e| refusal_json(&device, &sender, local_name(req), e))?;
            let ready = match received.resent {
                true => device.reply(&received.turn).map_err(bridge)?,
                false => None,
            };
            if op == "envelope" {
                match ready {
                    Some(reply) => {
                        drop(device);
                        server.respond_with_reply(conn, id, &reply);
                    }
                    None => {
                        // Registered under the device lock: the worker
                        // cannot finish this turn before it is known who
                        // waits for it.
                        server.wait_for(
                            received.turn,
                            Waiter {
                                conn: conn.clone(),
                                id: id.clone(),
                                as_response: true,
                            },
                        )?;
                        drop(device);
                        server.work.notify_all();
                    }
                }
                return Ok(None);
            }
            // A resend by a client already waiting for the event changes
            // nothing: the event comes once.
            let waiting = server.waits_for_event(&received.turn, conn);
            let ready = ready.filter(|_| !waiting);
            if ready.is_none() && !waiting {
                server.wait_for(
                    received.turn.clone(),
                    Waiter {
                        conn: conn.clone(),
                        id: None,
                        as_response: false,
                    },
                )?;
            }
            // Hold this client's writer before letting the worker run, so
            // "accepted" precedes the reply event.
            let mut out = conn.writer();
            server.work.notify_all();
            drop(device);
            let accepted = with_id(
                json!({"accepted": turn_json(&received.turn, received.resent)}),
                id,
            );
            if write_line(&mut **out, &accepted) {
                server.step("serve:accepted-sent");
            }
            if let Some(reply) = ready {
                write_line(&mut **out, &event_json(&reply));
            }
            Ok(None)
        }
        "subscribe" => {
            conn.subscribed.store(true, Ordering::SeqCst);
            let device = server.device();
            let outbox = device.outbox().map_err(bridge)?;
            let mut out = conn.writer();
            drop(device);
            write_line(
                &mut **out,
                &with_id(json!({"subscribed": true, "outbox": outbox.len()}), id),
            );
            for reply in &outbox {
                write_line(&mut **out, &event_json(reply));
            }
            Ok(None)
        }
        "ack" => {
            let peer = address(req, "peer").map_err(bad)?;
            let turn = req["turn"]
                .as_u64()
                .ok_or_else(|| bad(RequestError::BadRequest("missing field turn".into())))?;
            let acked = server
                .device()
                .ack(&TurnRef { peer, turn })
                .map_err(bridge)?;
            Ok(Some(json!({"acked": acked})))
        }
        "process_bundle" => {
            let peer = address(req, "peer").map_err(bad)?;
            let bundle = bundle_from_json(req).map_err(bad)?;
            server
                .device()
                .start_session(&peer, &bundle, rng)
                .map_err(bridge)?;
            Ok(Some(json!({"ok": true})))
        }
        "send" => {
            let peer = address(req, "peer").map_err(bad)?;
            let text = req["text"]
                .as_str()
                .ok_or_else(|| bad(RequestError::BadRequest("missing field text".into())))?;
            let envelope = server.device().send(&peer, text).map_err(bridge)?;
            Ok(Some(envelope_json(&envelope)))
        }
        "safety_number" => {
            let peer = address(req, "peer").map_err(bad)?;
            let number = server
                .device()
                .safety_number(&peer, local_name(req))
                .map_err(bridge)?;
            Ok(Some(json!({"safety_number": number})))
        }
        "accept_identity" => {
            let peer = address(req, "peer").map_err(bad)?;
            let identity = identity_field(req, "identity_key").map_err(bad)?;
            server
                .device()
                .accept_identity(&peer, &identity)
                .map_err(bridge)?;
            Ok(Some(json!({"ok": true})))
        }
        "rotate" => {
            let id = server
                .device()
                .rotate_signed_prekey(SystemTime::now(), rng)
                .map_err(bridge)?;
            Ok(Some(json!({"signed_pre_key_id": id})))
        }
        "forget" => {
            let peer = address(req, "peer").map_err(bad)?;
            server.device().forget_peer(&peer).map_err(bridge)?;
            Ok(Some(json!({"ok": true})))
        }
        "status" => {
            let device = server.device();
            Ok(Some(json!({
                "peers": device.peer_count(),
                "conversations": device.conversation_count(),
                "unanswered": device.unanswered().count(),
                "outbox": device.outbox_len(),
                "sequence": device.sequence(),
            })))
        }
        other => Err(bad(RequestError::BadRequest(format!(
            "unknown op {other:?}"
        )))),
    }
}

/// Binds `path` (0600), replacing a stale socket no server answers on.
fn bind(path: &Path) -> Result<UnixListener, String> {
    if path.exists() {
        if UnixStream::connect(path).is_ok() {
            return Err(format!("{}: another server is listening", path.display()));
        }
        std::fs::remove_file(path).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    let listener = UnixListener::bind(path).map_err(|e| format!("{}: {e}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(listener)
}

fn accept_clients(server: Arc<Server>, listener: UnixListener) {
    for stream in listener.incoming() {
        let stream = match stream {
            Ok(s) => s,
            Err(e) => {
                eprintln!("sotto: accepting a client: {e}");
                continue;
            }
        };
        let writer = match stream.try_clone() {
            Ok(w) => w,
            Err(e) => {
                eprintln!("sotto: client socket: {e}");
                continue;
            }
        };
        let conn = Connection::new(Box::new(writer));
        let limit = server.limits.max_connections;
        if server.socket_clients.fetch_add(1, Ordering::SeqCst) >= limit {
            server.socket_clients.fetch_sub(1, Ordering::SeqCst);
            conn.send(&json!({"error": {"kind": "limit", "message": format!(
                "limit reached: connections (at most {limit})"
            )}}));
            continue;
        }
        server.register(&conn);
        let server = server.clone();
        std::thread::spawn(move || {
            read_requests(&server, &conn, BufReader::new(stream));
            server.socket_clients.fetch_sub(1, Ordering::SeqCst);
        });
    }
}

/// Runs until stdin closes (with `--stdio`; every accepted message is
/// answered first) or forever (`--socket` alone).
pub fn serve(
    device: AssistantDevice,
    assistant: Box<dyn Assistant>,
    transports: Transports,
    hook: Option<StepHook>,
) -> Result<(), String> {
    let limits = device.limits().clone();
    let server = Arc::new(Server {
        device: Mutex::new(device),
        work: Condvar::new(),
        shutdown: AtomicBool::new(false),
        waiters: Mutex::new(HashMap::new()),
        connections: Mutex::new(Vec::new()),
        socket_clients: AtomicUsize::new(0),
        limits,
        hook,
    });
    let worker = {
        let server = server.clone();
        std::thread::spawn(move || run_worker(server, assistant))
    };
    if let Some(path) = &transports.socket {
        let listener = bind(path)?;
        let server = server.clone();
        std::thread::spawn(move || accept_clients(server, listener));
    }
    if transports.stdio {
        let conn = Connection::new(Box::new(std::io::stdout()));
        server.register(&conn);
        read_requests(&server, &conn, std::io::stdin().lock());
        server.stop();
    }
    let joined = worker.join();
    if let Some(path) = &transports.socket {
        let _ = std::fs::remove_file(path);
    }
    joined.map_err(|_| "the reply worker panicked".to_string())
}

#[cfg(test)]
#[allow(clippy::panic)]
mod tests {
    use super::*;

    fn lines(input: &[u8], max: usize) -> Vec<String> {
        let mut reader = std::io::BufReader::with_capacity(4, input);
        let mut line = Vec::new();
        let mut out = Vec::new();
        loop {
            match read_bounded_line(&mut reader, max, &mut line) {
                Ok(LineRead::Line) => out.push(String::from_utf8_lossy(&line).into_owned()),
                Ok(LineRead::TooLong(n)) => out.push(format!("<{n} skipped>")),
                Ok(LineRead::Eof) => return out,
                Err(e) => panic!("{e}"),
            }
        }
    }

    #[test]
    fn long_lines_are_skipped_not_buffered() {
        assert_eq!(
            lines(b"short\nthis line is too long\n\nok\nlast", 8),
            vec!["short", "<21 skipped>", "", "ok", "last"]
        );
        assert_eq!(
            lines(b"exactly8\n123456789", 8),
            vec!["exactly8", "<9 skipped>"]
        );
        assert!(lines(b"", 8).is_empty());
    }
}

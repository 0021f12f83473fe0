//! `sotto bridge`: the Signal-protocol side from the command line.
//! `demo` runs a simulated user device against the assistant with real
//! encrypted messages; `serve` runs an [`AssistantDevice`] behind JSON
//! lines on stdin/stdout (`--stdio`) and/or a Unix-domain socket
//! (`--socket`), see [`crate::bridge_serve`].
//!
//! Test-only: `SOTTO_BRIDGE_CRASH_AT=STEP[#N]` stops the server (it prints
//! `sotto: crash point STEP#N reached` on stderr and freezes) the Nth time
//! it reaches a pipeline or commit step, so a test can SIGKILL it exactly
//! there; `SOTTO_BRIDGE_TRACE_STEPS=1` prints every step reached.
//! `SOTTO_BRIDGE_HOLD_AT=STEP[#N]` with `SOTTO_BRIDGE_HOLD_FIFO=PATH` (a
//! named pipe) holds the thread that reaches STEP the Nth time (it prints
//! `sotto: hold point STEP#N reached`) until a writer opens PATH and closes
//! it, so a test can look at the server while, say, a reply is being
//! generated (`serve:generating`), with no sleeps and no timing.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use rand::rngs::OsRng;
use serde_json::{json, Value};
use sotto_bridge::{
    message_decrypt, message_encrypt, process_prekey_bundle, safety_number, Assistant,
    AssistantDevice, AssistantError, ConversationId, DeviceOptions, Envelope, Error, IdentityKey,
    IdentityKeyPair, InMemProtocolStore, MessageKind, OutgoingReply, PreKeyBundle, ProtocolAddress,
    PublicKey, StepHook, StorageKey, Turn,
};

use crate::bridge_serve;

#[derive(clap::Subcommand, Debug)]
pub enum BridgeCommand {
    /// A simulated user device and the assistant exchange real encrypted
    /// messages; prints ciphertext sizes and timings.
    Demo {
        /// Messages the user sends (default: three short questions).
        #[arg(long = "say")]
        messages: Vec<String>,
    },
    /// Serve the assistant's side of the protocol: JSON lines (see
    /// README.md) on stdin/stdout and/or a Unix-domain socket.
    Serve {
        /// Serve stdin/stdout; the server exits once stdin closes and every
        /// accepted message is answered.
        #[arg(long)]
        stdio: bool,
        /// Listen on this Unix-domain socket (mode 0600); with --socket
        /// alone the server runs until killed.
        #[arg(long)]
        socket: Option<PathBuf>,
        /// Keep identity, sessions and conversations here, sealed under the
        /// 64-hex-digit key in SOTTO_BRIDGE_KEY. In memory if absent.
        #[arg(long)]
        state_dir: Option<PathBuf>,
    },
}

/// Where the assistant saves its conversations' sessions, and the key.
pub type SavedSessions = Option<(PathBuf, StorageKey)>;

/// Builds the engine-backed assistant (`main` passes it in).
pub type MakeAssistant<'a> = &'a mut dyn FnMut(SavedSessions) -> Result<Box<dyn Assistant>, String>;

pub fn run(cmd: BridgeCommand, make_assistant: MakeAssistant<'_>) -> Result<(), String> {
    match cmd {
        BridgeCommand::Demo { messages } => demo(messages, make_assistant),
        BridgeCommand::Serve {
            stdio,
            socket,
            state_dir,
        } => {
            if !stdio && socket.is_none() {
                return Err("serve needs --stdio and/or --socket PATH".into());
            }
            let options = DeviceOptions {
                step_hook: step_hook_from_env()?,
                ..DeviceOptions::default()
            };
            let key = state_dir.as_ref().map(|_| storage_key()).transpose()?;
            let device = match (&state_dir, &key) {
                (Some(dir), Some(key)) => {
                    AssistantDevice::open(dir, key, options.clone(), &mut OsRng)
                }
                _ => AssistantDevice::in_memory(options.clone(), &mut OsRng),
            }
            .map_err(|e| format!("bridge state: {e}"))?;
            if let Some(dir) = &state_dir {
                eprintln!(
                    "sotto: bridge state {} (commit {}), {} peers, {} unanswered, {} replies unacknowledged",
                    dir.display(),
                    device.sequence().unwrap_or(0),
                    device.peer_count(),
                    device.unanswered().count(),
                    device.outbox_len()
                );
            }
            // Conversations' KV caches, sealed beside the device's records.
            let saved = state_dir
                .as_ref()
                .zip(key)
                .map(|(d, k)| (d.join("sessions"), k));
            let assistant = make_assistant(saved)?;
            bridge_serve::serve(
                device,
                assistant,
                bridge_serve::Transports { stdio, socket },
                options.step_hook,
            )
        }
    }
}

fn storage_key() -> Result<StorageKey, String> {
    let hex = std::env::var("SOTTO_BRIDGE_KEY")
        .map_err(|_| "--state-dir needs SOTTO_BRIDGE_KEY (64 hex digits)".to_string())?;
    let bytes: Vec<u8> = (0..hex.len())
        .step_by(2)
        .map(|i| {
            hex.get(i..i + 2)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        })
        .collect::<Option<_>>()
        .ok_or("SOTTO_BRIDGE_KEY is not hex")?;
    let key: [u8; 32] = bytes
        .try_into()
        .map_err(|_| "SOTTO_BRIDGE_KEY must be 32 bytes (64 hex digits)")?;
    Ok(StorageKey::from_bytes(key))
}

/// `STEP[#N]` (N from 1, default 1) from the environment variable `var`.
fn step_spec(var: &str) -> Result<Option<(String, usize)>, String> {
    let Ok(spec) = std::env::var(var) else {
        return Ok(None);
    };
    Ok(Some(match spec.split_once('#') {
        Some((s, n)) => (
            s.to_string(),
            n.parse::<usize>()
                .map_err(|_| format!("{var}={spec}: bad #N"))?,
        ),
        None => (spec, 1),
    }))
}

/// Blocks until a writer opens the named pipe `fifo` and closes it.
fn hold_until_released(fifo: &std::path::Path) {
    use std::io::Read as _;
    // Opening a FIFO for reading waits for its writer; reading to the end
    // waits for the writer to close it.
    match std::fs::File::open(fifo) {
        Ok(mut f) => {
            let _ = f.read_to_end(&mut Vec::new());
        }
        Err(e) => eprintln!("sotto: hold point: {}: {e}", fifo.display()),
    }
}

/// The test-only crash point, hold point and step trace (module doc).
fn step_hook_from_env() -> Result<Option<StepHook>, String> {
    let crash = step_spec("SOTTO_BRIDGE_CRASH_AT")?;
    let hold = match step_spec("SOTTO_BRIDGE_HOLD_AT")? {
        Some(at) => {
            let fifo = std::env::var_os("SOTTO_BRIDGE_HOLD_FIFO")
                .ok_or("SOTTO_BRIDGE_HOLD_AT needs SOTTO_BRIDGE_HOLD_FIFO (a named pipe)")?;
            Some((at, PathBuf::from(fifo)))
        }
        None => None,
    };
    let trace = std::env::var_os("SOTTO_BRIDGE_TRACE_STEPS").is_some();
    if crash.is_none() && hold.is_none() && !trace {
        return Ok(None);
    }
    let seen = Mutex::new(HashMap::<String, usize>::new());
    Ok(Some(Arc::new(move |step: &str| {
        let n = match seen.lock() {
            Ok(mut seen) => {
                let n = seen.entry(step.to_string()).or_insert(0);
                *n += 1;
                *n
            }
            Err(_) => return,
        };
        if trace {
            eprintln!("sotto: step {step}#{n}");
        }
        if crash.as_ref().is_some_and(|(s, k)| s == step && *k == n) {
            eprintln!("sotto: crash point {step}#{n} reached");
            loop {
                std::thread::park();
            }
        }
        if let Some(((_, _), fifo)) = hold.as_ref().filter(|((s, k), _)| s == step && *k == n) {
            eprintln!("sotto: hold point {step}#{n} reached");
            hold_until_released(fifo);
            eprintln!("sotto: hold point {step}#{n} released");
        }
    })))
}

/// Times the assistant so the demo can split inference from the bridge's
/// own cost.
struct Timed {
    inner: Box<dyn Assistant>,
    spent: Arc<Mutex<Duration>>,
}

impl Assistant for Timed {
    fn reply(
        &mut self,
        conversation: &ConversationId,
        history: &[Turn],
    ) -> Result<String, AssistantError> {
        let t = Instant::now();
        let out = self.inner.reply(conversation, history);
        if let Ok(mut spent) = self.spent.lock() {
            *spent = t.elapsed();
        }
        out
    }
}

fn demo(messages: Vec<String>, make_assistant: MakeAssistant<'_>) -> Result<(), String> {
    let messages = if messages.is_empty() {
        vec![
            "Hi! Who are you?".to_string(),
            "What is the capital of France?".into(),
            "Thanks, bye.".into(),
        ]
    } else {
        messages
    };
    let rng = &mut OsRng;
    let spent = Arc::new(Mutex::new(Duration::ZERO));
    let mut assistant = Timed {
        inner: make_assistant(None)?,
        spent: spent.clone(),
    };
    let mut device =
        AssistantDevice::in_memory(DeviceOptions::default(), rng).map_err(|e| e.to_string())?;
    let bot_key = device.identity_key();
    let user_identity = IdentityKeyPair::generate(rng);
    let user_key = *user_identity.identity_key();
    let mut user = InMemProtocolStore::new(user_identity, 2);
    let (bot_addr, user_addr) = (
        ProtocolAddress::new("sotto", 1),
        ProtocolAddress::new("user", 1),
    );

    let bundle = device
        .prekey_bundle(SystemTime::now(), rng)
        .map_err(|e| e.to_string())?;
    process_prekey_bundle(&bot_addr, &bundle, &mut user, rng).map_err(|e| e.to_string())?;
    let number = safety_number(b"user", &user_key, b"sotto", &bot_key);
    println!("safety number (compare on both devices):");
    for chunk in number.as_bytes().chunks(5) {
        print!("{} ", String::from_utf8_lossy(chunk));
    }
    println!();
    for text in messages {
        let t = Instant::now();
        let outgoing =
            message_encrypt(text.as_bytes(), &bot_addr, &mut user).map_err(|e| e.to_string())?;
        let user_encrypt = t.elapsed();
        let envelope = Envelope::from(&outgoing);
        let t = Instant::now();
        let replies = device
            .handle(&user_addr, &envelope, &mut assistant, rng)
            .map_err(|e| e.to_string())?;
        let total = t.elapsed();
        let inference = spent.lock().map(|d| *d).unwrap_or_default();
        println!("user   > {text}");
        println!(
            "         {:?} {} B ciphertext, encrypted in {} µs",
            envelope.kind,
            envelope.body.len(),
            user_encrypt.as_micros()
        );
        for reply in replies {
            device.ack(&reply.turn).map_err(|e| e.to_string())?;
            let t = Instant::now();
            let decoded = reply.envelope.decode().map_err(|e| e.to_string())?;
            let plain =
                message_decrypt(&decoded, &bot_addr, &mut user, rng).map_err(|e| e.to_string())?;
            let user_decrypt = t.elapsed();
            println!("sotto  > {}", String::from_utf8_lossy(&plain));
            println!(
                "         {:?} {} B ciphertext; bridge decrypt+encrypt {} µs, inference {} ms; user decrypt {} µs",
                reply.envelope.kind,
                reply.envelope.body.len(),
                total.saturating_sub(inference).as_micros(),
                inference.as_millis(),
                user_decrypt.as_micros()
            );
        }
    }
    Ok(())
}

/// Why a request got no answer: the request itself was malformed (the
/// client's bug), or the bridge refused it (a protocol or limit error).
#[derive(Debug)]
pub(crate) enum RequestError {
    BadRequest(String),
    Bridge(Error),
}

impl From<Error> for RequestError {
    fn from(e: Error) -> Self {
        Self::Bridge(e)
    }
}

impl RequestError {
    pub(crate) fn to_json(&self) -> Value {
        let (kind, message) = match self {
            Self::BadRequest(m) => ("bad_request", m.clone()),
            Self::Bridge(e) => (error_kind(e), e.to_string()),
        };
        json!({"error": {"kind": kind, "message": message}})
    }
}

pub(crate) fn b64_field(req: &Value, key: &str) -> Result<Vec<u8>, RequestError> {
    let s = req[key]
        .as_str()
        .ok_or_else(|| RequestError::BadRequest(format!("missing field {key}")))?;
    B64.decode(s)
        .map_err(|_| RequestError::BadRequest(format!("field {key} is not base64")))
}

/// The address named by `req[key]`: `name` with `req["device"]`, or
/// `name.device`; a missing or empty name is a bad request.
pub(crate) fn address(req: &Value, key: &str) -> Result<ProtocolAddress, RequestError> {
    let s = req[key]
        .as_str()
        .filter(|s| !s.is_empty())
        .ok_or_else(|| RequestError::BadRequest(format!("missing field {key}")))?;
    let device = match req["device"].as_u64() {
        Some(d) => Some(
            u32::try_from(d).map_err(|_| RequestError::BadRequest("device out of range".into()))?,
        ),
        None => None,
    };
    Ok(match (device, s.rsplit_once('.')) {
        (Some(d), _) => ProtocolAddress::new(s, d),
        (None, Some((name, d))) if d.parse::<u32>().is_ok() => {
            ProtocolAddress::new(name, d.parse().unwrap_or(1))
        }
        _ => ProtocolAddress::new(s, 1),
    })
}

pub(crate) fn bundle_json(b: &PreKeyBundle) -> Value {
    let mut v = json!({
        "registration_id": b.registration_id,
        "device_id": b.device_id,
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

pub(crate) fn bundle_from_json(req: &Value) -> Result<PreKeyBundle, RequestError> {
    let num = |k: &str| {
        req[k]
            .as_u64()
            .and_then(|v| u32::try_from(v).ok())
            .ok_or_else(|| RequestError::BadRequest(format!("missing or out-of-range field {k}")))
    };
    let pre_key = match req["pre_key_id"].as_u64() {
        Some(_) => Some((
            num("pre_key_id")?,
            PublicKey::deserialize(&b64_field(req, "pre_key")?)?,
        )),
        None => None,
    };
    Ok(PreKeyBundle {
        registration_id: num("registration_id")?,
        device_id: num("device_id").unwrap_or(1),
        pre_key,
        signed_pre_key_id: num("signed_pre_key_id")?,
        signed_pre_key: PublicKey::deserialize(&b64_field(req, "signed_pre_key")?)?,
        signed_pre_key_signature: b64_field(req, "signed_pre_key_signature")?,
        identity_key: identity_field(req, "identity_key")?,
    })
}

pub(crate) fn identity_field(req: &Value, key: &str) -> Result<IdentityKey, RequestError> {
    Ok(IdentityKey::deserialize(&b64_field(req, key)?)?)
}

pub(crate) fn envelope_json(e: &Envelope) -> Value {
    let kind = match e.kind {
        MessageKind::PreKey => "prekey",
        MessageKind::Message => "message",
    };
    json!({"type": kind, "body": B64.encode(&e.body)})
}

pub(crate) fn envelope_from_json(req: &Value) -> Result<Envelope, RequestError> {
    let kind = match req["type"].as_str() {
        Some("prekey") => MessageKind::PreKey,
        Some("message") => MessageKind::Message,
        _ => {
            return Err(RequestError::BadRequest(
                "type must be \"prekey\" or \"message\"".into(),
            ))
        }
    };
    Ok(Envelope {
        kind,
        body: b64_field(req, "body")?,
    })
}

/// A reply as JSON: the envelope, whose message it answers, and the
/// refusal kind when it is one.
pub(crate) fn reply_json(r: &OutgoingReply) -> Value {
    let mut v = envelope_json(&r.envelope);
    v["peer"] = json!(r.turn.peer.name);
    v["device"] = json!(r.turn.peer.device_id);
    v["conversation"] = json!(r.turn.conversation().0);
    v["turn"] = json!(r.turn.turn);
    if let Some(refusal) = &r.refusal {
        v["refused"] = json!(refusal.kind());
    }
    v
}

pub(crate) fn error_kind(e: &Error) -> &'static str {
    match e {
        Error::BadMac
        | Error::BadCiphertext
        | Error::Malformed { .. }
        | Error::MessageTooShort { .. } => "invalid_message",
        Error::DuplicateMessage { .. } => "duplicate",
        // A peer speaking another protocol version (legacy < 3, or v4 with
        // Kyber): not a forgery, and not fixable by retrying.
        Error::UnsupportedVersion(_) => "unsupported_version",
        Error::UntrustedIdentity(_) => "untrusted_identity",
        Error::NoSession(_) | Error::NoMatchingSession { .. } => "no_session",
        Error::Assistant(_) => "assistant",
        Error::LimitExceeded { .. } => "limit",
        Error::UnknownTurn { .. } | Error::TurnOutOfOrder { .. } => "unknown_turn",
        Error::Io { .. }
        | Error::Store(_)
        | Error::StoreDecrypt { .. }
        | Error::SnapshotVersion { .. }
        | Error::StoreRecordMissing { .. }
        | Error::StoreRecordMismatch { .. }
        | Error::StoreRollback { .. }
        | Error::StoreLocked { .. } => "store",
        _ => "error",
    }
}
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_version_has_its_own_error_kind() {
        assert_eq!(
            error_kind(&Error::UnsupportedVersion(0x44)),
            "unsupported_version"
        );
        assert_eq!(error_kind(&Error::BadMac), "invalid_message");
    }
}

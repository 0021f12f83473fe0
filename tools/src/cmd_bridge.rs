//! `sotto bridge`: the Signal-protocol side from the command line.
//! `demo` runs a simulated user device against the assistant with real
//! encrypted messages; `serve --stdio` speaks JSON lines for a transport.

use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use rand::rngs::OsRng;
use serde_json::{json, Value};
use sotto_bridge::{
    message_decrypt, message_encrypt, process_prekey_bundle, safety_number, Assistant,
    AssistantError, Bridge, ConversationId, ConversationStore, Envelope, Error,
    FileConversationStore, FileProtocolStore, IdentityKey, IdentityKeyPair, InMemConversationStore,
    InMemProtocolStore, MessageKind, PreKeyBundle, ProtocolAddress, ProtocolStore, PublicKey,
    StorageKey, Turn,
};

#[derive(clap::Subcommand, Debug)]
pub enum BridgeCommand {
    /// A simulated user device and the assistant exchange real encrypted
    /// messages; prints ciphertext sizes and timings.
    Demo {
        /// Messages the user sends (default: three short questions).
        #[arg(long = "say")]
        messages: Vec<String>,
    },
    /// Serve the assistant's side of the protocol.
    Serve {
        /// JSON lines on stdin/stdout: {"op":"bundle"}, {"op":"envelope",..},
        /// {"op":"process_bundle",..}, {"op":"send",..}, {"op":"safety_number",..}.
        #[arg(long)]
        stdio: bool,
        /// Keep identity, sessions and conversations here, sealed under the
        /// 64-hex-digit key in SOTTO_BRIDGE_KEY. In memory if absent.
        #[arg(long)]
        state_dir: Option<PathBuf>,
    },
}

/// Builds the engine-backed assistant (the lead's `main` passes it in).
pub type MakeAssistant<'a> = &'a mut dyn FnMut() -> Result<Box<dyn Assistant>, String>;

pub fn run(cmd: BridgeCommand, make_assistant: MakeAssistant<'_>) -> Result<(), String> {
    match cmd {
        BridgeCommand::Demo { messages } => demo(messages, make_assistant),
        BridgeCommand::Serve { stdio: false, .. } => {
            Err("only `serve --stdio` is implemented".into())
        }
        BridgeCommand::Serve {
            stdio: true,
            state_dir,
        } => {
            let assistant = make_assistant()?;
            match state_dir {
                None => {
                    let identity = IdentityKeyPair::generate(&mut OsRng);
                    let store = InMemProtocolStore::new(identity, registration_id());
                    serve(Bridge::new(
                        store,
                        InMemConversationStore::default(),
                        assistant,
                    ))
                }
                Some(dir) => {
                    let key = storage_key()?;
                    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
                    let store = FileProtocolStore::open_or_create(
                        dir.join("protocol.sealed"),
                        key.clone(),
                        || (IdentityKeyPair::generate(&mut OsRng), registration_id()),
                    )
                    .map_err(|e| e.to_string())?;
                    let conversations =
                        FileConversationStore::open(dir.join("conversations.sealed"), key)
                            .map_err(|e| e.to_string())?;
                    serve(Bridge::new(store, conversations, assistant))
                }
            }
        }
    }
}

fn registration_id() -> u32 {
    use rand::Rng as _;
    OsRng.gen_range(1..16380)
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
    let assistant = Box::new(Timed {
        inner: make_assistant()?,
        spent: spent.clone(),
    });
    let bot_identity = IdentityKeyPair::generate(rng);
    let bot_key = *bot_identity.identity_key();
    let mut bridge = Bridge::new(
        InMemProtocolStore::new(bot_identity, 1),
        InMemConversationStore::default(),
        assistant,
    );
    let user_identity = IdentityKeyPair::generate(rng);
    let user_key = *user_identity.identity_key();
    let mut user = InMemProtocolStore::new(user_identity, 2);
    let (bot_addr, user_addr) = (
        ProtocolAddress::new("sotto", 1),
        ProtocolAddress::new("user", 1),
    );

    let bundle = bridge.prekey_bundle(1, 1, rng).map_err(|e| e.to_string())?;
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
        let reply = bridge
            .handle(&user_addr, &envelope, rng)
            .map_err(|e| e.to_string())?;
        let total = t.elapsed();
        let inference = spent.lock().map(|d| *d).unwrap_or_default();
        let t = Instant::now();
        let decoded = reply.decode().map_err(|e| e.to_string())?;
        let plain =
            message_decrypt(&decoded, &bot_addr, &mut user, rng).map_err(|e| e.to_string())?;
        let user_decrypt = t.elapsed();
        println!("user   > {text}");
        println!(
            "         {:?} {} B ciphertext, encrypted in {} µs",
            envelope.kind,
            envelope.body.len(),
            user_encrypt.as_micros()
        );
        println!("sotto  > {}", String::from_utf8_lossy(&plain));
        println!(
            "         {:?} {} B ciphertext; bridge decrypt+encrypt {} µs, inference {} ms; user decrypt {} µs",
            reply.kind,
            reply.body.len(),
            total.saturating_sub(inference).as_micros(),
            inference.as_millis(),
            user_decrypt.as_micros()
        );
    }
    Ok(())
}

/// Why a `serve --stdio` request got no answer: the request itself was
/// malformed (the client's bug), or the bridge refused it (a protocol error).
enum RequestError {
    BadRequest(String),
    Bridge(Error),
}

impl From<Error> for RequestError {
    fn from(e: Error) -> Self {
        Self::Bridge(e)
    }
}

impl RequestError {
    fn to_json(&self) -> Value {
        let (kind, message) = match self {
            Self::BadRequest(m) => ("bad_request", m.clone()),
            Self::Bridge(e) => (error_kind(e), e.to_string()),
        };
        json!({"error": {"kind": kind, "message": message}})
    }
}

fn b64_field(req: &Value, key: &str) -> Result<Vec<u8>, RequestError> {
    let s = req[key]
        .as_str()
        .ok_or_else(|| RequestError::BadRequest(format!("missing field {key}")))?;
    B64.decode(s)
        .map_err(|_| RequestError::BadRequest(format!("field {key} is not base64")))
}

/// The address named by `req[key]`: `name` with `req["device"]`, or
/// `name.device`; a missing or empty name is a bad request.
fn address(req: &Value, key: &str) -> Result<ProtocolAddress, RequestError> {
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

fn bundle_json(b: &PreKeyBundle) -> Value {
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

fn bundle_from_json(req: &Value) -> Result<PreKeyBundle, RequestError> {
    let num = |k: &str| {
        req[k]
            .as_u64()
            .and_then(|v| u32::try_from(v).ok())
            .ok_or_else(|| RequestError::BadRequest(format!("missing or out-of-range field {k}")))
    };
    let pre_key = match req["pre_key_id"].as_u64() {
        Some(id) => Some((
            id as u32,
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
        identity_key: IdentityKey::deserialize(&b64_field(req, "identity_key")?)?,
    })
}

fn envelope_json(e: &Envelope) -> Value {
    let kind = match e.kind {
        MessageKind::PreKey => "prekey",
        MessageKind::Message => "message",
    };
    json!({"type": kind, "body": B64.encode(&e.body)})
}

fn serve<S: ProtocolStore, C: ConversationStore>(mut bridge: Bridge<S, C>) -> Result<(), String> {
    let stdin = std::io::stdin();
    let mut stdout = std::io::stdout().lock();
    let mut next_pre_key_id: u32 = {
        use rand::Rng as _;
        OsRng.gen_range(1..0x00ff_ffff)
    };
    for line in stdin.lock().lines() {
        let line = line.map_err(|e| e.to_string())?;
        if line.trim().is_empty() {
            continue;
        }
        let reply = match serde_json::from_str::<Value>(&line) {
            Err(e) => RequestError::BadRequest(e.to_string()).to_json(),
            Ok(req) => handle_request(&mut bridge, &req, &mut next_pre_key_id)
                .unwrap_or_else(|e| e.to_json()),
        };
        writeln!(stdout, "{reply}").map_err(|e| e.to_string())?;
        stdout.flush().map_err(|e| e.to_string())?;
    }
    Ok(())
}

fn error_kind(e: &Error) -> &'static str {
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
        _ => "error",
    }
}

fn handle_request<S: ProtocolStore, C: ConversationStore>(
    bridge: &mut Bridge<S, C>,
    req: &Value,
    next_pre_key_id: &mut u32,
) -> Result<Value, RequestError> {
    let rng = &mut OsRng;
    match req["op"].as_str().unwrap_or("") {
        "bundle" => {
            *next_pre_key_id = next_pre_key_id.wrapping_add(1).max(1);
            let bundle = bridge.prekey_bundle(*next_pre_key_id, 1, rng)?;
            Ok(bundle_json(&bundle))
        }
        "envelope" => {
            let sender = address(req, "sender")?;
            let kind = match req["type"].as_str() {
                Some("prekey") => MessageKind::PreKey,
                Some("message") => MessageKind::Message,
                _ => {
                    return Err(RequestError::BadRequest(
                        "type must be \"prekey\" or \"message\"".into(),
                    ))
                }
            };
            let envelope = Envelope {
                kind,
                body: b64_field(req, "body")?,
            };
            Ok(envelope_json(&bridge.handle(&sender, &envelope, rng)?))
        }
        "process_bundle" => {
            let peer = address(req, "peer")?;
            let bundle = bundle_from_json(req)?;
            process_prekey_bundle(&peer, &bundle, bridge.store_mut(), rng)?;
            Ok(json!({"ok": true}))
        }
        "send" => {
            let peer = address(req, "peer")?;
            let text = req["text"]
                .as_str()
                .ok_or_else(|| RequestError::BadRequest("missing field text".into()))?;
            let message = message_encrypt(text.as_bytes(), &peer, bridge.store_mut())?;
            Ok(envelope_json(&Envelope::from(&message)))
        }
        "safety_number" => {
            let peer = address(req, "peer")?;
            let theirs = bridge
                .store()
                .get_identity(&peer)?
                .ok_or_else(|| Error::NoSession(peer.to_string()))?;
            let ours = *bridge.store().identity_key_pair()?.identity_key();
            let local_id = req["local_id"].as_str().unwrap_or("sotto");
            Ok(
                json!({"safety_number": safety_number(local_id.as_bytes(), &ours, peer.name.as_bytes(), &theirs)}),
            )
        }
        other => Err(RequestError::BadRequest(format!("unknown op {other:?}"))),
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

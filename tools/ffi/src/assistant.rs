//! The bridge half both bindings (C and JNI) call: an assistant device
//! (`sotto_bridge::AssistantDevice`: identity, prekeys, sessions and
//! conversations, sealed in a state directory under a 32-byte key) answered
//! by the engine (`sotto_engine::EngineAssistant` on a loaded model).
//! Envelopes go in; reply envelopes come out through a delivery callback,
//! and a reply the callback does not accept stays in the device's outbox
//! (handed out again by [`AssistantHandle::outbox`], even after a restart)
//! until one does.

use crate::chat::{parse, ChatOptions, ModelHandle};
use crate::status::{FfiError, FfiResult, SottoStatus};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use rand::rngs::OsRng;
use serde::Deserialize;
use serde_json::{json, Value};
use sotto_bridge::{
    AssistantDevice, DeviceOptions, Envelope, MessageKind, OutgoingReply, PreKeyBundle,
    ProtocolAddress, StorageKey,
};
use sotto_engine::{AssistantConfig, EngineAssistant};
use std::sync::{Arc, Mutex, TryLockError};
use std::time::SystemTime;

/// Assistant options, as JSON (every field optional):
/// `{"name":"sotto","warm_conversations":4,"chat":{…chat options…}}`.
#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct AssistantOptions {
    /// This device's account name, as the safety numbers show it.
    name: String,
    /// Conversations whose KV caches stay in memory.
    warm_conversations: usize,
    /// How answers are generated: the chat options of `sotto_chat_open`
    /// (`stop` excepted).
    chat: Option<Value>,
}

impl Default for AssistantOptions {
    fn default() -> Self {
        Self {
            name: "sotto".into(),
            warm_conversations: AssistantConfig::default().warm_conversations,
            chat: None,
        }
    }
}

impl AssistantOptions {
    fn config(&self) -> FfiResult<AssistantConfig> {
        let chat: ChatOptions = match &self.chat {
            None => ChatOptions::default(),
            Some(v) => serde_json::from_value(v.clone())
                .map_err(|e| FfiError::invalid(format!("options: chat: {e}")))?,
        };
        if !chat.stop.is_empty() {
            return Err(FfiError::invalid(
                "options: chat: the assistant takes no stop strings",
            ));
        }
        if self.name.is_empty() {
            return Err(FfiError::invalid("options: name is empty"));
        }
        let defaults = AssistantConfig::default();
        Ok(AssistantConfig {
            // Absent: the assistant's usual system message.
            system: chat.system.clone().or(defaults.system),
            sampler: chat.sampler()?,
            max_tokens: chat.max_tokens,
            context: chat.context()?,
            warm_conversations: self.warm_conversations.max(1),
        })
    }
}

/// Which of the two Signal message kinds an envelope carries (the values of
/// `SOTTO_ENVELOPE_PREKEY` and `SOTTO_ENVELOPE_MESSAGE`).
pub fn envelope_kind(kind: u32) -> FfiResult<MessageKind> {
    match kind {
        crate::c_api::SOTTO_ENVELOPE_PREKEY => Ok(MessageKind::PreKey),
        crate::c_api::SOTTO_ENVELOPE_MESSAGE => Ok(MessageKind::Message),
        other => Err(FfiError::invalid(format!(
            "envelope kind {other} (SOTTO_ENVELOPE_PREKEY or SOTTO_ENVELOPE_MESSAGE)"
        ))),
    }
}

/// The ABI value of `kind`.
pub fn kind_code(kind: MessageKind) -> u32 {
    match kind {
        MessageKind::PreKey => crate::c_api::SOTTO_ENVELOPE_PREKEY,
        MessageKind::Message => crate::c_api::SOTTO_ENVELOPE_MESSAGE,
    }
}

/// `bundle` as the JSON apps publish (the fields of `sotto bridge serve`'s
/// `bundle` response: ids as numbers, keys and signature in base64).
fn bundle_json(bundle: &PreKeyBundle) -> String {
    let mut v = json!({
        "registration_id": bundle.registration_id,
        "device_id": bundle.device_id,
        "signed_pre_key_id": bundle.signed_pre_key_id,
        "signed_pre_key": B64.encode(bundle.signed_pre_key.serialize()),
        "signed_pre_key_signature": B64.encode(&bundle.signed_pre_key_signature),
        "identity_key": B64.encode(bundle.identity_key.serialize()),
    });
    if let Some((id, key)) = &bundle.pre_key {
        v["pre_key_id"] = json!(id);
        v["pre_key"] = json!(B64.encode(key.serialize()));
    }
    v.to_string()
}

/// An assistant device and the engine that answers for it. One call at a
/// time (a concurrent one is `Busy`): the device is one transaction log.
#[derive(Debug)]
pub struct AssistantHandle {
    state: Mutex<AssistantState>,
    name: String,
}

#[derive(Debug)]
struct AssistantState {
    device: AssistantDevice,
    engine: EngineAssistant,
}

/// What a delivery callback decides about a reply.
pub type Deliver<'a> = dyn FnMut(&OutgoingReply) -> bool + 'a;

fn bridge_error(e: sotto_bridge::Error) -> FfiError {
    use sotto_bridge::Error as B;
    let status = match &e {
        B::InvalidKey { .. }
        | B::BadSignature(_)
        | B::MessageTooShort { .. }
        | B::UnsupportedVersion(_)
        | B::Malformed { .. }
        | B::BadMac
        | B::BadCiphertext
        | B::DuplicateMessage { .. }
        | B::TooFarInFuture { .. }
        | B::NoSession(_)
        | B::NoMatchingSession { .. }
        | B::UnknownPreKey(_)
        | B::UnknownSignedPreKey(_) => SottoStatus::BadMessage,
        B::UntrustedIdentity(_) => SottoStatus::UntrustedIdentity,
        B::LimitExceeded { .. } => SottoStatus::Limit,
        B::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
            SottoStatus::NotFound
        }
        B::Io { .. } => SottoStatus::Io,
        B::Assistant(_) => SottoStatus::Backend,
        _ => SottoStatus::State,
    };
    FfiError::new(status, crate::status::error_chain(&e))
}

impl AssistantHandle {
    /// Opens the device kept in `state_dir` under `key` (created with a
    /// new identity when the directory holds none), or one in memory when
    /// `state_dir` is `None`, answered by `model` with `options` (JSON,
    /// see `AssistantOptions` in this module).
    pub fn open(
        model: &Arc<ModelHandle>,
        state_dir: Option<&str>,
        key: Option<[u8; 32]>,
        options: Option<&str>,
    ) -> FfiResult<AssistantHandle> {
        let options: AssistantOptions = parse(options)?;
        let config = options.config()?;
        let device = match (state_dir, key) {
            (Some(dir), Some(key)) => AssistantDevice::open(
                dir,
                &StorageKey::from_bytes(key),
                DeviceOptions::default(),
                &mut OsRng,
            ),
            (Some(_), None) => {
                return Err(FfiError::invalid("a state directory needs its 32-byte key"))
            }
            (None, _) => AssistantDevice::in_memory(DeviceOptions::default(), &mut OsRng),
        }
        .map_err(bridge_error)?;
        let engine = EngineAssistant::new(model.shared(), config);
        Ok(AssistantHandle {
            state: Mutex::new(AssistantState { device, engine }),
            name: options.name,
        })
    }

    fn lock(&self) -> FfiResult<std::sync::MutexGuard<'_, AssistantState>> {
        self.state.try_lock().map_err(|e| match e {
            TryLockError::WouldBlock => FfiError::new(
                SottoStatus::Busy,
                "another thread is using this assistant (one call at a time)",
            ),
            TryLockError::Poisoned(_) => FfiError::new(
                SottoStatus::Poisoned,
                "this assistant was poisoned by an earlier panic: free it and open it again (its state directory is as its last commit left it)",
            ),
        })
    }

    /// A prekey bundle for one new peer, as JSON (see `bundle_json` in this module).
    pub fn prekey_bundle(&self) -> FfiResult<String> {
        let mut state = self.lock()?;
        let bundle = state
            .device
            .prekey_bundle(SystemTime::now(), &mut OsRng)
            .map_err(bridge_error)?;
        Ok(bundle_json(&bundle))
    }

    /// Decrypts `envelope` from `sender`, answers it with the engine and
    /// hands each reply (this one's and any left unanswered by a crash in
    /// the same conversation) to `deliver`; a reply it accepts leaves the
    /// outbox. A message that does not decrypt changes nothing.
    pub fn handle(
        &self,
        sender: &str,
        device_id: u32,
        envelope: Envelope,
        deliver: &mut Deliver<'_>,
    ) -> FfiResult<()> {
        let sender = address(sender, device_id)?;
        let mut state = self.lock()?;
        let AssistantState { device, engine } = &mut *state;
        let replies = device
            .handle(&sender, &envelope, engine, &mut OsRng)
            .map_err(bridge_error)?;
        deliver_all(device, &replies, deliver)
    }

    /// Hands every reply still in the outbox to `deliver` (per
    /// conversation in turn order); returns how many it accepted.
    pub fn outbox(&self, deliver: &mut Deliver<'_>) -> FfiResult<usize> {
        let mut state = self.lock()?;
        let replies = state.device.outbox().map_err(bridge_error)?;
        let before = replies.len();
        deliver_all(&mut state.device, &replies, deliver)?;
        Ok(before - state.device.outbox_len().min(before))
    }

    /// The safety number of the session with `peer` (60 digits).
    pub fn safety_number(&self, peer: &str, device_id: u32) -> FfiResult<String> {
        let peer = address(peer, device_id)?;
        let state = self.lock()?;
        state
            .device
            .safety_number(&peer, &self.name)
            .map_err(bridge_error)
    }

    /// Trusts the new identity `peer` presented in a message refused as
    /// `UntrustedIdentity` (after the user compared safety numbers).
    pub fn accept_identity(&self, peer: &str, device_id: u32) -> FfiResult<()> {
        let peer = address(peer, device_id)?;
        let mut state = self.lock()?;
        let offered = state.device.offered_identity(&peer).ok_or_else(|| {
            FfiError::new(
                SottoStatus::NotFound,
                format!("{peer} presented no new identity"),
            )
        })?;
        state
            .device
            .accept_identity(&peer, &offered)
            .map_err(bridge_error)
    }

    /// Replaces the signed prekey now; returns its id.
    pub fn rotate_signed_prekey(&self) -> FfiResult<u32> {
        let mut state = self.lock()?;
        state
            .device
            .rotate_signed_prekey(SystemTime::now(), &mut OsRng)
            .map_err(bridge_error)
    }
}

fn address(name: &str, device_id: u32) -> FfiResult<ProtocolAddress> {
    if name.is_empty() {
        return Err(FfiError::invalid("the peer's name is empty"));
    }
    Ok(ProtocolAddress::new(name, device_id))
}

fn deliver_all(
    device: &mut AssistantDevice,
    replies: &[OutgoingReply],
    deliver: &mut Deliver<'_>,
) -> FfiResult<()> {
    for reply in replies {
        if deliver(reply) {
            device.ack(&reply.turn).map_err(bridge_error)?;
        }
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn options_parse_and_refuse_what_the_assistant_cannot_do() {
        let o: AssistantOptions = parse(None).unwrap();
        let c = o.config().unwrap();
        assert_eq!(o.name, "sotto");
        assert_eq!(c.system, AssistantConfig::default().system);
        let o: AssistantOptions = parse(Some(
            r#"{"name":"bot","chat":{"temperature":0,"max_tokens":32,"system":"Be brief."}}"#,
        ))
        .unwrap();
        let c = o.config().unwrap();
        assert_eq!(c.max_tokens, 32);
        assert_eq!(c.sampler.temperature, 0.0);
        assert_eq!(c.system.as_deref(), Some("Be brief."));
        for bad in [
            r#"{"chat":{"stop":["x"]}}"#,
            r#"{"chat":{"temprature":0}}"#,
            r#"{"nmae":"x"}"#,
            r#"{"name":""}"#,
            r#"{"chat":{"context":0}}"#,
        ] {
            let e = parse::<AssistantOptions>(Some(bad))
                .and_then(|o| o.config())
                .unwrap_err();
            assert_eq!(
                e.status,
                SottoStatus::InvalidArgument,
                "{bad}: {}",
                e.message
            );
        }
    }

    #[test]
    fn envelope_kinds_round_trip_and_unknown_ones_are_refused() {
        for k in [MessageKind::PreKey, MessageKind::Message] {
            assert_eq!(envelope_kind(kind_code(k)).unwrap(), k);
        }
        assert_eq!(
            envelope_kind(0).unwrap_err().status,
            SottoStatus::InvalidArgument
        );
    }

    #[test]
    fn forged_and_store_errors_map_to_their_codes() {
        assert_eq!(
            bridge_error(sotto_bridge::Error::BadMac).status,
            SottoStatus::BadMessage
        );
        assert_eq!(
            bridge_error(sotto_bridge::Error::StoreDecrypt { path: "p".into() }).status,
            SottoStatus::State
        );
        assert_eq!(
            bridge_error(sotto_bridge::Error::UntrustedIdentity("u.1".into())).status,
            SottoStatus::UntrustedIdentity
        );
    }
}

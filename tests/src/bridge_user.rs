//! An in-process user device (sotto-bridge's own protocol code over
//! in-memory stores) talking to an `AssistantDevice`, and a deterministic
//! assistant, for tests of the device's store, journal and limits (the
//! protocol itself is checked against python-axolotl and libsignal
//! elsewhere).

use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha20Rng;
use sotto_bridge::{
    message_decrypt, message_encrypt, process_prekey_bundle, Assistant, AssistantError,
    ConversationId, Envelope, IdentityKeyPair, InMemProtocolStore, OutgoingReply, PreKeyBundle,
    ProtocolAddress, Turn,
};

/// The assistant's address as users know it.
pub fn assistant_address() -> ProtocolAddress {
    ProtocolAddress::new("sotto", 1)
}

/// A user with their own identity and a session to the assistant.
#[derive(Debug)]
pub struct BridgeUser {
    pub address: ProtocolAddress,
    pub store: InMemProtocolStore,
    pub rng: ChaCha20Rng,
}

impl BridgeUser {
    /// A new identity for `name` (seeded), starting a session from `bundle`.
    pub fn join(name: &str, seed: u64, bundle: &PreKeyBundle) -> Self {
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        let identity = IdentityKeyPair::generate(&mut rng);
        let mut store = InMemProtocolStore::new(identity, 1 + (seed as u32 % 16000));
        process_prekey_bundle(&assistant_address(), bundle, &mut store, &mut rng)
            .unwrap_or_else(|e| panic!("{name} cannot start a session: {e}"));
        Self {
            address: ProtocolAddress::new(name, 1),
            store,
            rng,
        }
    }

    pub fn encrypt(&mut self, text: &str) -> Envelope {
        let m = message_encrypt(text.as_bytes(), &assistant_address(), &mut self.store)
            .unwrap_or_else(|e| panic!("{} cannot encrypt: {e}", self.address));
        Envelope::from(&m)
    }

    /// Decrypts a reply; `Err` with the bridge error's text when it does
    /// not decrypt (a replay, a forgery).
    pub fn decrypt(&mut self, envelope: &Envelope) -> Result<String, String> {
        let m = envelope.decode().map_err(|e| e.to_string())?;
        let plain = message_decrypt(&m, &assistant_address(), &mut self.store, &mut self.rng)
            .map_err(|e| e.to_string())?;
        String::from_utf8(plain.to_vec()).map_err(|e| e.to_string())
    }

    pub fn open(&mut self, reply: &OutgoingReply) -> String {
        self.decrypt(&reply.envelope)
            .unwrap_or_else(|e| panic!("{}: reply does not decrypt: {e}", self.address))
    }
}

/// Answers with what it was shown: the conversation, the number of turns
/// and the last user text, so tests see exactly the history an engine
/// would get.
#[derive(Debug, Default)]
pub struct EchoAssistant {
    pub calls: usize,
}

impl Assistant for EchoAssistant {
    fn reply(
        &mut self,
        conversation: &ConversationId,
        history: &[Turn],
    ) -> Result<String, AssistantError> {
        self.calls += 1;
        let last = history.last().map(|t| t.text.as_str()).unwrap_or("");
        Ok(format!(
            "{} turns in {}; you said: {last}",
            history.len(),
            conversation.0
        ))
    }
}

//! decrypt -> remember -> infer -> encrypt over any stores, in one call:
//! [`Bridge`], the minimal pipeline (in memory, no journal). The durable
//! one, with crash recovery and concurrency, is
//! [`crate::AssistantDevice`].

use rand_core::{CryptoRng, RngCore};
use zeroize::Zeroizing;

use crate::conversation::{ConversationId, ConversationStore, Turn};
use crate::error::{AssistantError, Error, Result};
use crate::journal::Refusal;
use crate::message::{CiphertextMessage, MessageKind, PreKeySignalMessage, SignalMessage};
use crate::prekeys::{PreKeyBundle, PreKeyRecord, SignedPreKeyRecord};
use crate::session::{message_decrypt, message_encrypt};
use crate::store::{ProtocolAddress, ProtocolStore};

/// The engine as the bridge sees it. Implementations keep one chat state
/// per conversation; `history` ends with the newest user turn. A history
/// longer than the model's context is shortened by the implementation
/// (the oldest turns first); a newest message that does not fit on its own
/// is [`AssistantError::MessageTooLong`], which the bridge answers with a
/// short encrypted refusal.
pub trait Assistant: Send {
    /// The reply text to the last turn of `history` (the whole conversation
    /// `conversation` so far, oldest first). Blocks while the model runs.
    fn reply(
        &mut self,
        conversation: &ConversationId,
        history: &[Turn],
    ) -> Result<String, AssistantError>;

    /// Saves what the assistant keeps in memory (warm conversations'
    /// caches) so a restart resumes it; called before shutting down.
    /// Nothing to do by default.
    fn persist(&mut self) -> Result<(), AssistantError> {
        Ok(())
    }
}

/// An encrypted message as the transport carries it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Envelope {
    /// Which message type `body` holds.
    pub kind: MessageKind,
    /// The serialized message, exactly as sent.
    pub body: Vec<u8>,
}

impl Envelope {
    /// Parses `body` as the message type `kind` names. Errors as for
    /// [`SignalMessage::decode`]; nothing is decrypted or verified.
    pub fn decode(&self) -> Result<CiphertextMessage> {
        Ok(match self.kind {
            MessageKind::PreKey => {
                CiphertextMessage::PreKey(PreKeySignalMessage::decode(&self.body)?)
            }
            MessageKind::Message => CiphertextMessage::Signal(SignalMessage::decode(&self.body)?),
        })
    }
}

impl From<&CiphertextMessage> for Envelope {
    fn from(m: &CiphertextMessage) -> Self {
        Self {
            kind: m.kind(),
            body: m.serialized().to_vec(),
        }
    }
}

/// The assistant's side of every conversation.
pub struct Bridge<S, C> {
    store: S,
    conversations: C,
    assistant: Box<dyn Assistant>,
}

impl<S, C> std::fmt::Debug for Bridge<S, C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bridge").finish_non_exhaustive()
    }
}

impl<S: ProtocolStore, C: ConversationStore> Bridge<S, C> {
    /// A bridge answering with `assistant`, keeping sessions in `store`
    /// and histories in `conversations`.
    pub fn new(store: S, conversations: C, assistant: Box<dyn Assistant>) -> Self {
        Self {
            store,
            conversations,
            assistant,
        }
    }

    /// The protocol stores.
    pub fn store(&self) -> &S {
        &self.store
    }
    /// The protocol stores, to change (e.g. to trust a new identity).
    pub fn store_mut(&mut self) -> &mut S {
        &mut self.store
    }
    /// The conversation histories.
    pub fn conversations(&self) -> &C {
        &self.conversations
    }

    /// Publishes a fresh one-time prekey (and a signed prekey, if `signed_id`
    /// is not stored yet) and returns the bundle a peer needs.
    pub fn prekey_bundle<R: RngCore + CryptoRng>(
        &mut self,
        pre_key_id: u32,
        signed_id: u32,
        rng: &mut R,
    ) -> Result<PreKeyBundle> {
        let identity = self.store.identity_key_pair()?;
        let signed = match self.store.get_signed_pre_key(signed_id) {
            Ok(s) => s,
            Err(_) => {
                let s = SignedPreKeyRecord::generate(signed_id, 0, &identity, rng);
                self.store.save_signed_pre_key(s.clone())?;
                s
            }
        };
        let pre_key = PreKeyRecord::generate(pre_key_id, rng);
        let pre_key_public = pre_key.key_pair.public_key;
        self.store.save_pre_key(pre_key)?;
        Ok(PreKeyBundle {
            registration_id: self.store.local_registration_id()?,
            device_id: 1,
            pre_key: Some((pre_key_id, pre_key_public)),
            signed_pre_key_id: signed.id,
            signed_pre_key: signed.key_pair.public_key,
            signed_pre_key_signature: signed.signature.to_vec(),
            identity_key: *identity.identity_key(),
        })
    }

    /// Decrypts `envelope` from `sender`, appends it to that sender's
    /// conversation, asks the assistant, and returns the reply encrypted
    /// for the same session. A message that does not decrypt changes
    /// nothing.
    pub fn handle<R: RngCore + CryptoRng>(
        &mut self,
        sender: &ProtocolAddress,
        envelope: &Envelope,
        rng: &mut R,
    ) -> Result<Envelope> {
        let message = envelope.decode()?;
        let plaintext: Zeroizing<Vec<u8>> =
            message_decrypt(&message, sender, &mut self.store, rng)?;
        let text = String::from_utf8_lossy(&plaintext).into_owned();
        let conversation = ConversationId::from(sender);
        self.conversations.append(&conversation, Turn::user(text))?;
        let history = self.conversations.history(&conversation)?;
        let reply = Zeroizing::new(match self.assistant.reply(&conversation, &history) {
            Ok(text) => text,
            Err(e @ AssistantError::MessageTooLong { .. }) => Refusal::from(&e).text(),
            Err(e) => return Err(Error::Assistant(e)),
        });
        drop(history);
        self.conversations
            .append(&conversation, Turn::assistant(reply.as_str()))?;
        let out = message_encrypt(reply.as_bytes(), sender, &mut self.store)?;
        Ok(Envelope::from(&out))
    }
}

//! Conversation histories, one per peer, kept apart by id. This is the
//! simple in-memory store of [`crate::Bridge`]; an
//! [`crate::AssistantDevice`] keeps its conversations in its sealed
//! journal ([`crate::journal`]).

use std::collections::BTreeMap;

use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::error::Result;
use crate::store::ProtocolAddress;

/// Which conversation a turn belongs to: the peer device's address.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConversationId(pub String);

impl From<&ProtocolAddress> for ConversationId {
    fn from(a: &ProtocolAddress) -> Self {
        Self(a.to_string())
    }
}

/// Who wrote a turn.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// The peer: a decrypted incoming message.
    User,
    /// The assistant: a reply it produced.
    Assistant,
}

/// One message of a conversation. The text is zeroized on drop and not
/// shown by `Debug`.
#[derive(Clone, PartialEq, Eq, Zeroize, ZeroizeOnDrop)]
pub struct Turn {
    /// Who wrote it.
    #[zeroize(skip)]
    pub role: Role,
    /// The plaintext (UTF-8).
    pub text: String,
}

impl Turn {
    /// A turn from the peer.
    pub fn user(text: impl Into<String>) -> Self {
        Self {
            role: Role::User,
            text: text.into(),
        }
    }
    /// A turn from the assistant.
    pub fn assistant(text: impl Into<String>) -> Self {
        Self {
            role: Role::Assistant,
            text: text.into(),
        }
    }
}

impl std::fmt::Debug for Turn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Turn({:?}, {} bytes)", self.role, self.text.len())
    }
}

/// Where [`crate::Bridge`] keeps each conversation's turns.
pub trait ConversationStore {
    /// The turns of conversation `id`, oldest first (empty if unknown).
    fn history(&self, id: &ConversationId) -> Result<Vec<Turn>>;
    /// Adds `turn` at the end of conversation `id`, creating it if needed.
    fn append(&mut self, id: &ConversationId, turn: Turn) -> Result<()>;
}

/// Conversations in memory, lost when dropped; never fails.
#[derive(Debug, Default, Clone)]
pub struct InMemConversationStore {
    conversations: BTreeMap<ConversationId, Vec<Turn>>,
}

impl ConversationStore for InMemConversationStore {
    fn history(&self, id: &ConversationId) -> Result<Vec<Turn>> {
        Ok(self.conversations.get(id).cloned().unwrap_or_default())
    }
    fn append(&mut self, id: &ConversationId, turn: Turn) -> Result<()> {
        self.conversations.entry(id.clone()).or_default().push(turn);
        Ok(())
    }
}

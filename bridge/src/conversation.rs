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

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    User,
    Assistant,
}

/// One message of a conversation. The text is zeroized on drop and not
/// shown by `Debug`.
#[derive(Clone, PartialEq, Eq, Zeroize, ZeroizeOnDrop)]
pub struct Turn {
    #[zeroize(skip)]
    pub role: Role,
    pub text: String,
}

impl Turn {
    pub fn user(text: impl Into<String>) -> Self {
        Self {
            role: Role::User,
            text: text.into(),
        }
    }
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

pub trait ConversationStore {
    fn history(&self, id: &ConversationId) -> Result<Vec<Turn>>;
    fn append(&mut self, id: &ConversationId, turn: Turn) -> Result<()>;
}

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

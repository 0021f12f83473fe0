//! Conversation histories, one per peer, kept apart by id; in memory or
//! sealed at rest.

use std::collections::BTreeMap;
use std::path::PathBuf;

use prost::Message as _;
use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::error::{malformed, Result};
use crate::sealed::{SealedFile, StorageKey};
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

#[derive(Clone, PartialEq, prost::Message)]
struct TurnProto {
    #[prost(bool, tag = "1")]
    assistant: bool,
    #[prost(string, tag = "2")]
    text: String,
}

#[derive(Clone, PartialEq, prost::Message)]
struct ConversationProto {
    #[prost(string, tag = "1")]
    id: String,
    #[prost(message, repeated, tag = "2")]
    turns: Vec<TurnProto>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct ConversationsProto {
    #[prost(message, repeated, tag = "1")]
    conversations: Vec<ConversationProto>,
}

const CONVERSATIONS_KIND: u8 = b'C';
const CONVERSATIONS_VERSION: u8 = 1;

/// Conversations sealed in one file, rewritten atomically on each append.
#[derive(Debug)]
pub struct FileConversationStore {
    file: SealedFile,
    inner: InMemConversationStore,
}

impl FileConversationStore {
    pub fn open(path: impl Into<PathBuf>, key: StorageKey) -> Result<Self> {
        let file = SealedFile::new(path.into(), key, CONVERSATIONS_KIND, CONVERSATIONS_VERSION);
        let mut inner = InMemConversationStore::default();
        if let Some(bytes) = file.load()? {
            let proto = ConversationsProto::decode(bytes.as_slice())
                .map_err(|e| malformed("conversation snapshot", e.to_string()))?;
            for c in proto.conversations {
                let turns = c
                    .turns
                    .into_iter()
                    .map(|t| Turn {
                        role: if t.assistant {
                            Role::Assistant
                        } else {
                            Role::User
                        },
                        text: t.text,
                    })
                    .collect();
                inner.conversations.insert(ConversationId(c.id), turns);
            }
        }
        Ok(Self { file, inner })
    }

    fn persist(&self) -> Result<()> {
        let proto = ConversationsProto {
            conversations: self
                .inner
                .conversations
                .iter()
                .map(|(id, turns)| ConversationProto {
                    id: id.0.clone(),
                    turns: turns
                        .iter()
                        .map(|t| TurnProto {
                            assistant: t.role == Role::Assistant,
                            text: t.text.clone(),
                        })
                        .collect(),
                })
                .collect(),
        };
        let mut bytes = proto.encode_to_vec();
        let result = self.file.store(&bytes);
        bytes.zeroize();
        result
    }
}

impl ConversationStore for FileConversationStore {
    fn history(&self, id: &ConversationId) -> Result<Vec<Turn>> {
        self.inner.history(id)
    }
    fn append(&mut self, id: &ConversationId, turn: Turn) -> Result<()> {
        self.inner.append(id, turn)?;
        self.persist()
    }
}

//! The conversation journal of a device, as records of its store: per
//! conversation a small record of its turn range, per message one turn
//! record (the user's text, then its reply), per reply not yet
//! acknowledged by the transport one outbox record (the reply envelope).
//!
//! A turn is journaled in the transaction that advances the ratchet to
//! decrypt it, so a message that was decrypted is never lost: after a
//! crash it is still there, unanswered. Its reply, the sender-chain
//! advance that encrypts it and the outbox record commit together too, so
//! an answered message is never answered again: the same envelope is
//! handed out until the transport acknowledges it.

use prost::Message as _;
use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::conversation::{ConversationId, Turn};
use crate::device_store::{peer_name, split_peer_name, DeviceStore};
use crate::error::{malformed, AssistantError, Result};
use crate::message::MessageKind;
use crate::pipeline::Envelope;
use crate::proto::redacted_debug;
use crate::records::{RecordKey, RecordKind};
use crate::store::ProtocolAddress;

/// One message of a conversation on a device: the peer and the turn
/// number (1, 2, ... per conversation).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TurnRef {
    /// The peer device the message came from.
    pub peer: ProtocolAddress,
    /// Its number in that conversation, from 1.
    pub turn: u64,
}

impl TurnRef {
    /// The conversation the turn belongs to.
    pub fn conversation(&self) -> ConversationId {
        ConversationId::from(&self.peer)
    }
}

/// Why a message got a short refusal instead of an answer. The refusal is
/// sent back encrypted like any reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Refusal {
    /// The message alone does not fit the model's context.
    TooManyTokens {
        /// The message's length in tokens.
        tokens: usize,
        /// The tokens the context has left for it.
        available: usize,
    },
    /// The message is longer than the device stores
    /// ([`crate::Limits::max_message_bytes`]).
    TooManyBytes {
        /// The plaintext's length in bytes.
        bytes: usize,
        /// The most bytes a message may have.
        limit: usize,
    },
    /// The assistant failed (the error is reported to the device's
    /// operator, not to the peer).
    AssistantFailed,
}

impl Refusal {
    /// The text sent to the peer.
    pub fn text(&self) -> String {
        match self {
            Self::TooManyTokens { tokens, available } => format!(
                "Your message is too long for me to read ({tokens} tokens; I can read {available}). Please send a shorter one."
            ),
            Self::TooManyBytes { bytes, limit } => format!(
                "Your message is too long for me to read ({bytes} bytes; I can read {limit}). Please send a shorter one."
            ),
            Self::AssistantFailed => "Sorry, I could not answer this message.".into(),
        }
    }

    /// A stable name for transports (`message_too_long`, `assistant_failed`).
    pub fn kind(&self) -> &'static str {
        match self {
            Self::TooManyTokens { .. } | Self::TooManyBytes { .. } => "message_too_long",
            Self::AssistantFailed => "assistant_failed",
        }
    }
}

impl From<&AssistantError> for Refusal {
    fn from(e: &AssistantError) -> Self {
        match e {
            AssistantError::MessageTooLong { tokens, available } => Self::TooManyTokens {
                tokens: *tokens,
                available: *available,
            },
            _ => Self::AssistantFailed,
        }
    }
}

/// What became of a turn.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum TurnState {
    Unanswered = 0,
    Answered = 1,
    Refused = 2,
    /// Answered, but the reply could not be encrypted (the session was
    /// gone): not part of what the peer saw.
    Undeliverable = 3,
}

#[derive(Clone, PartialEq, prost::Message)]
struct ConversationProto {
    #[prost(uint64, tag = "1")]
    first_turn: u64,
    #[prost(uint64, tag = "2")]
    next_turn: u64,
}

// Holds message text: wiped on drop, never shown by Debug.
#[derive(Clone, PartialEq, prost::Message, Zeroize, ZeroizeOnDrop)]
#[prost(skip_debug)]
pub(crate) struct TurnProto {
    /// Device-wide arrival order (the order unanswered turns are answered in).
    #[prost(uint64, tag = "1")]
    pub arrival: u64,
    #[prost(string, tag = "2")]
    pub user_text: String,
    /// SHA-256 of the envelope, to recognize the transport resending it.
    #[prost(bytes = "vec", tag = "3")]
    pub digest: Vec<u8>,
    /// Length of a message too long to store (its text is not kept).
    #[prost(uint64, tag = "4")]
    pub too_many_bytes: u64,
    #[prost(uint32, tag = "5")]
    pub state: u32,
    #[prost(string, tag = "6")]
    pub reply_text: String,
    #[prost(uint32, tag = "7")]
    pub refusal: u32,
    #[prost(uint64, tag = "8")]
    pub refusal_length: u64,
    #[prost(uint64, tag = "9")]
    pub refusal_limit: u64,
}

redacted_debug!(TurnProto);

impl TurnProto {
    pub(crate) fn state(&self) -> TurnState {
        match self.state {
            1 => TurnState::Answered,
            2 => TurnState::Refused,
            3 => TurnState::Undeliverable,
            _ => TurnState::Unanswered,
        }
    }

    pub(crate) fn refusal(&self) -> Option<Refusal> {
        let (length, limit) = (self.refusal_length as usize, self.refusal_limit as usize);
        match self.refusal {
            1 => Some(Refusal::TooManyTokens {
                tokens: length,
                available: limit,
            }),
            2 => Some(Refusal::TooManyBytes {
                bytes: length,
                limit,
            }),
            3 => Some(Refusal::AssistantFailed),
            _ => None,
        }
    }

    pub(crate) fn set_refusal(&mut self, refusal: Option<Refusal>) {
        let (code, length, limit) = match refusal {
            None => (0, 0, 0),
            Some(Refusal::TooManyTokens { tokens, available }) => (1, tokens, available),
            Some(Refusal::TooManyBytes { bytes, limit }) => (2, bytes, limit),
            Some(Refusal::AssistantFailed) => (3, 0, 0),
        };
        self.refusal = code;
        self.refusal_length = length as u64;
        self.refusal_limit = limit as u64;
    }

    /// The refusal a message too long to store gets without asking the
    /// assistant.
    pub(crate) fn stored_refusal(&self) -> Option<Refusal> {
        (self.too_many_bytes > 0).then_some(Refusal::TooManyBytes {
            bytes: self.too_many_bytes as usize,
            limit: self.refusal_limit as usize,
        })
    }
}

#[derive(Clone, PartialEq, prost::Message)]
struct OutboxProto {
    #[prost(bool, tag = "1")]
    prekey: bool,
    #[prost(bytes = "vec", tag = "2")]
    body: Vec<u8>,
}

fn turn_name(peer: &ProtocolAddress, turn: u64) -> Vec<u8> {
    let mut name = peer_name(peer);
    name.extend_from_slice(&turn.to_be_bytes());
    name
}

fn split_turn_name(name: &[u8]) -> Result<TurnRef> {
    let (peer, rest) = split_peer_name(name)?;
    let turn: [u8; 8] = rest
        .try_into()
        .map_err(|_| malformed("record name", "not a turn"))?;
    Ok(TurnRef {
        peer,
        turn: u64::from_be_bytes(turn),
    })
}

fn conversation_key(peer: &ProtocolAddress) -> RecordKey {
    RecordKey::new(RecordKind::Conversation, peer_name(peer))
}

fn turn_key(t: &TurnRef) -> RecordKey {
    RecordKey::new(RecordKind::Turn, turn_name(&t.peer, t.turn))
}

fn outbox_key(t: &TurnRef) -> RecordKey {
    RecordKey::new(RecordKind::Outbox, turn_name(&t.peer, t.turn))
}

/// A user message to journal.
pub(crate) struct IncomingTurn {
    pub arrival: u64,
    /// `None` when it is longer than the limit (`bytes` says how long).
    pub text: Option<String>,
    pub bytes: usize,
    pub digest: [u8; 32],
}

impl DeviceStore {
    fn conversation(&self, peer: &ProtocolAddress) -> Result<ConversationProto> {
        match self.records.get(&conversation_key(peer)) {
            Some(b) => ConversationProto::decode(b)
                .map_err(|e| malformed("conversation record", e.to_string())),
            None => Ok(ConversationProto {
                first_turn: 1,
                next_turn: 1,
            }),
        }
    }

    pub(crate) fn conversation_count(&self) -> usize {
        self.records.count(RecordKind::Conversation)
    }

    pub(crate) fn turn(&self, t: &TurnRef) -> Result<Option<TurnProto>> {
        self.records
            .get(&turn_key(t))
            .map(|b| TurnProto::decode(b).map_err(|e| malformed("turn record", e.to_string())))
            .transpose()
    }

    pub(crate) fn put_turn(&mut self, t: &TurnRef, record: &TurnProto) -> Result<()> {
        self.records.put(turn_key(t), record.encode_to_vec())
    }

    /// Journals a user message as the conversation's next turn, dropping
    /// the oldest settled turns beyond the limit.
    pub(crate) fn append_user_turn(
        &mut self,
        peer: &ProtocolAddress,
        incoming: IncomingTurn,
    ) -> Result<TurnRef> {
        let mut conversation = self.conversation(peer)?;
        let t = TurnRef {
            peer: peer.clone(),
            turn: conversation.next_turn,
        };
        let mut record = TurnProto::default();
        record.arrival = incoming.arrival;
        record.digest = incoming.digest.to_vec();
        match incoming.text {
            Some(text) => record.user_text = text,
            None => {
                record.too_many_bytes = incoming.bytes as u64;
                record.refusal_limit = self.limits.max_message_bytes as u64;
            }
        }
        self.put_turn(&t, &record)?;
        conversation.next_turn += 1;
        let max = self.limits.max_turns_per_conversation.max(1) as u64;
        while conversation.next_turn - conversation.first_turn > max {
            let oldest = TurnRef {
                peer: peer.clone(),
                turn: conversation.first_turn,
            };
            let settled = match self.turn(&oldest)? {
                Some(r) => {
                    r.state() != TurnState::Unanswered
                        && self.records.get(&outbox_key(&oldest)).is_none()
                }
                None => true,
            };
            if !settled {
                break;
            }
            self.records.delete(turn_key(&oldest))?;
            conversation.first_turn += 1;
        }
        self.records
            .put(conversation_key(peer), conversation.encode_to_vec())?;
        Ok(t)
    }

    /// The history the assistant sees for turn `t`: the answered turns
    /// before it (refused and undelivered ones left out), then its text.
    pub(crate) fn prompt_history(&self, t: &TurnRef) -> Result<Vec<Turn>> {
        let conversation = self.conversation(&t.peer)?;
        let mut history = Vec::new();
        for n in conversation.first_turn..=t.turn {
            let r = TurnRef {
                peer: t.peer.clone(),
                turn: n,
            };
            let Some(mut record) = self.turn(&r)? else {
                continue;
            };
            if n == t.turn {
                history.push(Turn::user(std::mem::take(&mut record.user_text)));
            } else if record.state() == TurnState::Answered {
                history.push(Turn::user(std::mem::take(&mut record.user_text)));
                history.push(Turn::assistant(std::mem::take(&mut record.reply_text)));
            }
        }
        Ok(history)
    }

    /// The turns kept of `peer`'s conversation, oldest first.
    pub(crate) fn turns_of(
        &self,
        peer: &ProtocolAddress,
    ) -> impl Iterator<Item = Result<(TurnRef, TurnProto)>> + '_ {
        self.records
            .scan(RecordKind::Turn, peer_name(peer))
            .map(decode_turn)
    }

    /// Every turn of every conversation, in store order.
    pub(crate) fn all_turns(&self) -> impl Iterator<Item = Result<(TurnRef, TurnProto)>> + '_ {
        self.records
            .scan(RecordKind::Turn, Vec::new())
            .map(|(name, bytes)| {
                Ok((
                    split_turn_name(name)?,
                    TurnProto::decode(bytes)
                        .map_err(|e| malformed("turn record", e.to_string()))?,
                ))
            })
    }

    pub(crate) fn put_outbox(&mut self, t: &TurnRef, envelope: &Envelope) -> Result<()> {
        let proto = OutboxProto {
            prekey: envelope.kind == MessageKind::PreKey,
            body: envelope.body.clone(),
        };
        self.records.put(outbox_key(t), proto.encode_to_vec())
    }

    pub(crate) fn outbox_envelope(&self, t: &TurnRef) -> Result<Option<Envelope>> {
        self.records
            .get(&outbox_key(t))
            .map(decode_outbox)
            .transpose()
    }

    pub(crate) fn delete_outbox(&mut self, t: &TurnRef) -> Result<bool> {
        let key = outbox_key(t);
        let present = self.records.get(&key).is_some();
        self.records.delete(key)?;
        Ok(present)
    }

    pub(crate) fn outbox_len(&self) -> usize {
        self.records.count(RecordKind::Outbox)
    }

    pub(crate) fn outbox(&self) -> Result<Vec<(TurnRef, Envelope)>> {
        self.records
            .scan(RecordKind::Outbox, Vec::new())
            .map(|(name, bytes)| Ok((split_turn_name(name)?, decode_outbox(bytes)?)))
            .collect()
    }

    /// Deletes a peer's conversation: its turns, outbox and range.
    pub(crate) fn delete_conversation(&mut self, peer: &ProtocolAddress) -> Result<()> {
        let prefix = peer_name(peer);
        for kind in [RecordKind::Turn, RecordKind::Outbox] {
            let names: Vec<Vec<u8>> = self
                .records
                .scan(kind, prefix.clone())
                .map(|(n, _)| n.to_vec())
                .filter(|n| n.len() == prefix.len() + 8)
                .collect();
            for name in names {
                self.records.delete(RecordKey::new(kind, name))?;
            }
        }
        self.records.delete(conversation_key(peer))
    }
}

fn decode_turn((name, bytes): (&[u8], &[u8])) -> Result<(TurnRef, TurnProto)> {
    Ok((
        split_turn_name(name)?,
        TurnProto::decode(bytes).map_err(|e| malformed("turn record", e.to_string()))?,
    ))
}

fn decode_outbox(bytes: &[u8]) -> Result<Envelope> {
    let p = OutboxProto::decode(bytes).map_err(|e| malformed("outbox record", e.to_string()))?;
    Ok(Envelope {
        kind: if p.prekey {
            MessageKind::PreKey
        } else {
            MessageKind::Message
        },
        body: p.body,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusal_codes_round_trip() {
        for refusal in [
            None,
            Some(Refusal::TooManyTokens {
                tokens: 900,
                available: 400,
            }),
            Some(Refusal::TooManyBytes {
                bytes: 70_000,
                limit: 32_768,
            }),
            Some(Refusal::AssistantFailed),
        ] {
            let mut p = TurnProto::default();
            p.set_refusal(refusal);
            let back = TurnProto::decode(p.encode_to_vec().as_slice())
                .map(|p| p.refusal())
                .ok();
            assert_eq!(back, Some(refusal));
        }
        assert!(Refusal::TooManyTokens {
            tokens: 900,
            available: 400
        }
        .text()
        .contains("900 tokens"));
    }

    #[test]
    fn turn_names_round_trip() {
        let t = TurnRef {
            peer: ProtocolAddress::new("ana", 3),
            turn: 42,
        };
        assert_eq!(split_turn_name(&turn_name(&t.peer, t.turn)).ok(), Some(t));
    }
}

//! The assistant device: what `sotto bridge serve`, the C ABI and the JNI
//! binding all run. A state directory and a storage key give a device its
//! identity, prekeys, sessions and conversations, sealed at rest
//! ([`crate::record_dir`]); envelopes go in, reply envelopes come out.
//!
//! A message goes through three steps, each its own transaction, so a
//! transport can decrypt and journal new messages while a reply is being
//! generated elsewhere:
//! 1. [`AssistantDevice::receive`] decrypts it and journals the user turn
//!    together with the ratchet advance (and the identity and prekey
//!    changes): once it returns, the message survives a crash;
//! 2. [`AssistantDevice::prompt`] gives the history for the assistant
//!    (no lock needs to be held while it generates) and
//!    [`AssistantDevice::complete`] encrypts the reply and journals it with
//!    an outbox record, in one transaction;
//! 3. [`AssistantDevice::ack`] drops the outbox record once the transport
//!    has the reply.
//!
//! Unanswered turns are answered in arrival order (so per conversation in
//! order) and, after a restart, from where they were: a message is
//! answered exactly once, and its reply envelope is the same however
//! often the transport asks for it. [`AssistantDevice::handle`] runs the
//! three steps for callers that need no concurrency.

use std::collections::{HashMap, VecDeque};
use std::path::Path;
use std::time::SystemTime;

use rand_core::{CryptoRng, RngCore};
use sha2::{Digest, Sha256};

use crate::conversation::Turn;
use crate::device_store::DeviceStore;
use crate::error::{Error, Result};
use crate::fingerprint::safety_number;
use crate::journal::{IncomingTurn, Refusal, TurnProto, TurnRef, TurnState};
use crate::keys::{IdentityKey, IdentityKeyPair};
use crate::limits::Limits;
use crate::message::CiphertextMessage;
use crate::pipeline::{Assistant, Envelope};
use crate::prekeys::PreKeyBundle;
use crate::records::{RecordStore, StepHook};
use crate::sealed::StorageKey;
use crate::session::{message_decrypt, message_encrypt, process_prekey_bundle};
use crate::store::{IdentityKeyStore, ProtocolAddress};

/// How a device is opened.
#[derive(Clone, Default)]
pub struct DeviceOptions {
    /// Every bound the device enforces (sizes, counts, rotation periods).
    pub limits: Limits,
    /// Called at each named step of the pipeline and of every commit
    /// (`pipeline:received`, `pipeline:decrypted`, `store:records-written`,
    /// `store:committed`, `pipeline:journaled`, `pipeline:generated`,
    /// `pipeline:reply-committed`, `pipeline:acked`); the crash tests stop
    /// the process there.
    pub step_hook: Option<StepHook>,
}

impl std::fmt::Debug for DeviceOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceOptions")
            .field("limits", &self.limits)
            .field("step_hook", &self.step_hook.is_some())
            .finish()
    }
}

/// A message accepted by [`AssistantDevice::receive`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Received {
    /// The turn the message was journaled as; [`AssistantDevice::prompt`]
    /// and [`AssistantDevice::complete`] take it.
    pub turn: TurnRef,
    /// The transport sent an envelope that is already journaled (and not
    /// yet acknowledged): nothing was decrypted again.
    pub resent: bool,
}

/// What the assistant is asked for a turn.
#[derive(Debug)]
pub enum Prompt {
    /// The history to answer, ending with the turn's user message.
    Ask(Vec<Turn>),
    /// The message gets this refusal without asking the assistant.
    Refuse(Refusal),
}

/// A reply envelope for the transport. It stays in the outbox (and is
/// handed out again, identical, after a restart) until acknowledged.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutgoingReply {
    /// The turn this replies to; acknowledge it once the transport has
    /// delivered the envelope.
    pub turn: TurnRef,
    /// The encrypted reply, addressed to the peer.
    pub envelope: Envelope,
    /// Set when the reply is a refusal rather than an answer.
    pub refusal: Option<Refusal>,
}

/// The assistant's side of every conversation, durable.
pub struct AssistantDevice {
    store: DeviceStore,
    /// Journaled and not answered yet, in arrival order.
    unanswered: VecDeque<TurnRef>,
    /// Envelopes whose turn is unanswered or whose reply is not
    /// acknowledged, by digest: a resent envelope is recognized without
    /// decrypting (its message keys are used up).
    digests: HashMap<[u8; 32], TurnRef>,
    /// Identities offered by peers whose identity changed (newest last).
    offered: VecDeque<(ProtocolAddress, IdentityKey)>,
    next_arrival: u64,
    hook: Option<StepHook>,
}

impl std::fmt::Debug for AssistantDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AssistantDevice")
            .field("store", &self.store)
            .field("unanswered", &self.unanswered.len())
            .field("outbox", &self.store.outbox_len())
            .finish_non_exhaustive()
    }
}

fn envelope_digest(envelope: &Envelope) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update([envelope.kind as u8]);
    h.update(&envelope.body);
    h.finalize().into()
}

impl AssistantDevice {
    /// Opens the device kept in `dir` under `key`, or creates one (a new
    /// identity) when `dir` holds no store. A damaged, rolled back or
    /// locked store is an error, never a new identity.
    pub fn open<R: RngCore + CryptoRng>(
        dir: impl AsRef<Path>,
        key: &StorageKey,
        options: DeviceOptions,
        rng: &mut R,
    ) -> Result<Self> {
        let (records, created) = RecordStore::open(dir.as_ref(), key, options.step_hook.clone())?;
        Self::from_records(records, created, options, rng)
    }

    /// A device kept in memory only (nothing survives the process).
    pub fn in_memory<R: RngCore + CryptoRng>(options: DeviceOptions, rng: &mut R) -> Result<Self> {
        Self::from_records(RecordStore::in_memory(), true, options, rng)
    }

    fn from_records<R: RngCore + CryptoRng>(
        records: RecordStore,
        created: bool,
        options: DeviceOptions,
        rng: &mut R,
    ) -> Result<Self> {
        let store = DeviceStore::new(records, created, options.limits, || {
            let identity = IdentityKeyPair::generate(rng);
            (identity, 1 + rng.next_u32() % 16380)
        })?;
        let mut device = Self {
            store,
            unanswered: VecDeque::new(),
            digests: HashMap::new(),
            offered: VecDeque::new(),
            next_arrival: 1,
            hook: options.step_hook,
        };
        let mut unanswered = Vec::new();
        let mut digests = HashMap::new();
        let mut next_arrival = 1;
        for entry in device.store.all_turns() {
            let (t, record) = entry?;
            next_arrival = next_arrival.max(record.arrival + 1);
            let awaiting = record.state() == TurnState::Unanswered;
            if awaiting {
                unanswered.push((record.arrival, t.clone()));
            }
            if awaiting || device.store.outbox_envelope(&t)?.is_some() {
                if let Ok(d) = <[u8; 32]>::try_from(record.digest.as_slice()) {
                    digests.insert(d, t);
                }
            }
        }
        unanswered.sort();
        device.unanswered = unanswered.into_iter().map(|(_, t)| t).collect();
        device.digests = digests;
        device.next_arrival = next_arrival;
        Ok(device)
    }

    fn step(&self, name: &str) {
        if let Some(hook) = &self.hook {
            hook(name);
        }
    }

    /// The bounds this device was opened with.
    pub fn limits(&self) -> &Limits {
        &self.store.limits
    }

    /// The device's public identity key (what peers verify with
    /// [`crate::safety_number`]).
    pub fn identity_key(&self) -> IdentityKey {
        *self.store.identity().identity_key()
    }

    /// The device's registration id, published in its prekey bundles.
    pub fn registration_id(&self) -> u32 {
        self.store.local_registration_id().unwrap_or_default()
    }

    /// The sequence number of the last commit of a sealed device (it only
    /// grows); `None` in memory. See `record_dir.rs` on rollback.
    pub fn sequence(&self) -> Option<u64> {
        self.store.sequence()
    }

    /// Peers with a session or a trusted identity.
    pub fn peer_count(&self) -> usize {
        self.store.peer_count()
    }

    /// Conversations kept (one per peer that wrote).
    pub fn conversation_count(&self) -> usize {
        self.store.conversation_count()
    }

    /// Replies not yet acknowledged.
    pub fn outbox_len(&self) -> usize {
        self.store.outbox_len()
    }

    /// The protocol stores, for inspection.
    pub fn store(&self) -> &DeviceStore {
        &self.store
    }

    /// A prekey bundle for one new peer: a one-time prekey no one was given
    /// before (replenished in batches) and the current signed prekey
    /// (rotated when older than [`Limits::signed_prekey_rotation`]).
    pub fn prekey_bundle<R: RngCore + CryptoRng>(
        &mut self,
        now: SystemTime,
        rng: &mut R,
    ) -> Result<PreKeyBundle> {
        self.store.transaction(|s| s.publish_bundle(now, rng))
    }

    /// Replaces the signed prekey now; the previous one keeps accepting
    /// new sessions for [`Limits::signed_prekey_grace`]. Returns its id.
    pub fn rotate_signed_prekey<R: RngCore + CryptoRng>(
        &mut self,
        now: SystemTime,
        rng: &mut R,
    ) -> Result<u32> {
        self.store
            .transaction(|s| s.rotate_signed_pre_key(now, rng))
    }

    fn check_room(&self, sender: &ProtocolAddress) -> Result<()> {
        let limits = &self.store.limits;
        if self.unanswered.len() >= limits.max_unanswered {
            return Err(Error::LimitExceeded {
                what: "unanswered messages",
                limit: limits.max_unanswered,
            });
        }
        let from_sender = self.unanswered.iter().filter(|t| t.peer == *sender).count();
        if from_sender >= limits.max_unanswered_per_conversation {
            return Err(Error::LimitExceeded {
                what: "unanswered messages in one conversation",
                limit: limits.max_unanswered_per_conversation,
            });
        }
        if self.store.outbox_len() >= limits.max_outbox {
            return Err(Error::LimitExceeded {
                what: "unacknowledged replies",
                limit: limits.max_outbox,
            });
        }
        self.check_new_peer(sender)
    }

    fn check_new_peer(&self, peer: &ProtocolAddress) -> Result<()> {
        let limit = self.store.limits.max_peers;
        if !self.store.knows_peer(peer) && self.store.peer_count() >= limit {
            return Err(Error::LimitExceeded {
                what: "peers",
                limit,
            });
        }
        Ok(())
    }

    /// Decrypts `envelope` from `sender` and journals it as the next turn
    /// of their conversation, in one transaction with the ratchet advance.
    /// A message that does not decrypt changes nothing. An envelope resent
    /// while its turn is unanswered or its reply unacknowledged is
    /// recognized and not decrypted again.
    pub fn receive<R: RngCore + CryptoRng>(
        &mut self,
        sender: &ProtocolAddress,
        envelope: &Envelope,
        rng: &mut R,
    ) -> Result<Received> {
        let digest = envelope_digest(envelope);
        if let Some(t) = self.digests.get(&digest).filter(|t| t.peer == *sender) {
            return Ok(Received {
                turn: t.clone(),
                resent: true,
            });
        }
        self.check_room(sender)?;
        let message = envelope.decode()?;
        self.step("pipeline:received");
        self.store.begin()?;
        let journaled = self.decrypt_and_journal(sender, &message, digest, rng);
        let turn = match journaled {
            Ok(t) => t,
            Err(e) => {
                self.store.rollback();
                if let (Error::UntrustedIdentity(_), CiphertextMessage::PreKey(m)) = (&e, &message)
                {
                    self.remember_offer(sender, *m.identity_key());
                }
                return Err(e);
            }
        };
        self.store.commit()?;
        self.step("pipeline:journaled");
        self.next_arrival += 1;
        self.unanswered.push_back(turn.clone());
        self.digests.insert(digest, turn.clone());
        Ok(Received {
            turn,
            resent: false,
        })
    }

    fn decrypt_and_journal<R: RngCore + CryptoRng>(
        &mut self,
        sender: &ProtocolAddress,
        message: &CiphertextMessage,
        digest: [u8; 32],
        rng: &mut R,
    ) -> Result<TurnRef> {
        let plaintext = message_decrypt(message, sender, &mut self.store, rng)?;
        self.step("pipeline:decrypted");
        let bytes = plaintext.len();
        let text = (bytes <= self.store.limits.max_message_bytes)
            .then(|| String::from_utf8_lossy(&plaintext).into_owned());
        drop(plaintext);
        self.store.append_user_turn(
            sender,
            IncomingTurn {
                arrival: self.next_arrival,
                text,
                bytes,
                digest,
            },
        )
    }

    fn remember_offer(&mut self, peer: &ProtocolAddress, identity: IdentityKey) {
        self.offered.retain(|(p, _)| p != peer);
        self.offered.push_back((peer.clone(), identity));
        while self.offered.len() > self.store.limits.max_offered_identities {
            self.offered.pop_front();
        }
    }

    /// The oldest unanswered turn (all conversations, arrival order).
    pub fn next_unanswered(&self) -> Option<TurnRef> {
        self.unanswered.front().cloned()
    }

    /// Unanswered turns, in the order they will be answered.
    pub fn unanswered(&self) -> impl Iterator<Item = &TurnRef> {
        self.unanswered.iter()
    }

    fn unanswered_record(&self, t: &TurnRef) -> Result<TurnProto> {
        let unknown = || Error::UnknownTurn {
            peer: t.peer.to_string(),
            turn: t.turn,
        };
        if !self.unanswered.contains(t) {
            return Err(unknown());
        }
        self.store
            .turn(t)?
            .filter(|r| r.state() == TurnState::Unanswered)
            .ok_or_else(unknown)
    }

    /// What the assistant is asked to answer turn `t` with.
    pub fn prompt(&self, t: &TurnRef) -> Result<Prompt> {
        let record = self.unanswered_record(t)?;
        if let Some(refusal) = record.stored_refusal() {
            return Ok(Prompt::Refuse(refusal));
        }
        Ok(Prompt::Ask(self.store.prompt_history(t)?))
    }

    /// Encrypts the answer (or refusal) to turn `t` and journals it with
    /// its outbox record in one transaction. `t` must be the oldest
    /// unanswered turn of its conversation. When the reply cannot be
    /// encrypted any more (the session was forgotten or its identity
    /// replaced), the turn is settled as undeliverable and the error says
    /// why.
    pub fn complete(
        &mut self,
        t: &TurnRef,
        answer: std::result::Result<String, Refusal>,
    ) -> Result<OutgoingReply> {
        let mut record = self.unanswered_record(t)?;
        if let Some(oldest) = self.unanswered.iter().find(|u| u.peer == t.peer) {
            if oldest != t {
                return Err(Error::TurnOutOfOrder {
                    peer: t.peer.to_string(),
                    turn: t.turn,
                    oldest: oldest.turn,
                });
            }
        }
        let (text, refusal) = match answer {
            Ok(text) => (text, None),
            Err(r) => (r.text(), Some(r)),
        };
        self.step("pipeline:generated");
        self.store.begin()?;
        let sent = self.encrypt_and_journal(t, &mut record, text, refusal);
        let envelope = match sent {
            Ok(envelope) => envelope,
            Err(e) => {
                self.store.rollback();
                if matches!(e, Error::NoSession(_) | Error::UntrustedIdentity(_)) {
                    record.state = TurnState::Undeliverable as u32;
                    self.store.transaction(|s| s.put_turn(t, &record))?;
                    self.settle(t);
                }
                return Err(e);
            }
        };
        self.store.commit()?;
        self.step("pipeline:reply-committed");
        self.settle(t);
        Ok(OutgoingReply {
            turn: t.clone(),
            envelope,
            refusal,
        })
    }

    fn encrypt_and_journal(
        &mut self,
        t: &TurnRef,
        record: &mut TurnProto,
        text: String,
        refusal: Option<Refusal>,
    ) -> Result<Envelope> {
        let message = message_encrypt(text.as_bytes(), &t.peer, &mut self.store)?;
        let envelope = Envelope::from(&message);
        record.state = if refusal.is_some() {
            TurnState::Refused
        } else {
            TurnState::Answered
        } as u32;
        record.reply_text = text;
        record.set_refusal(refusal);
        self.store.put_turn(t, record)?;
        self.store.put_outbox(t, &envelope)?;
        Ok(envelope)
    }

    fn settle(&mut self, t: &TurnRef) {
        self.unanswered.retain(|u| u != t);
    }

    /// Answers the oldest unanswered turn with `assistant`; `None` when
    /// every turn is answered.
    pub fn answer_next(&mut self, assistant: &mut dyn Assistant) -> Result<Option<OutgoingReply>> {
        match self.next_unanswered() {
            Some(t) => self.answer(&t, assistant).map(Some),
            None => Ok(None),
        }
    }

    fn answer(&mut self, t: &TurnRef, assistant: &mut dyn Assistant) -> Result<OutgoingReply> {
        let answer = match self.prompt(t)? {
            Prompt::Refuse(r) => Err(r),
            Prompt::Ask(history) => assistant
                .reply(&t.conversation(), &history)
                .map_err(|e| Refusal::from(&e)),
        };
        self.complete(t, answer)
    }

    /// Receives `envelope` and answers it (and any older unanswered turn
    /// of the same conversation, left by a crash). A resent envelope whose
    /// reply is waiting for acknowledgement gets that reply again. The
    /// replies stay in the outbox until [`Self::ack`].
    pub fn handle<R: RngCore + CryptoRng>(
        &mut self,
        sender: &ProtocolAddress,
        envelope: &Envelope,
        assistant: &mut dyn Assistant,
        rng: &mut R,
    ) -> Result<Vec<OutgoingReply>> {
        let received = self.receive(sender, envelope, rng)?;
        let mut replies = Vec::new();
        while let Some(t) = self
            .unanswered
            .iter()
            .find(|u| u.peer == *sender && u.turn <= received.turn.turn)
            .cloned()
        {
            replies.push(self.answer(&t, assistant)?);
        }
        if replies.is_empty() {
            replies.extend(self.reply(&received.turn)?);
        }
        Ok(replies)
    }

    /// The reply to `t` while it is in the outbox.
    pub fn reply(&self, t: &TurnRef) -> Result<Option<OutgoingReply>> {
        let Some(envelope) = self.store.outbox_envelope(t)? else {
            return Ok(None);
        };
        let refusal = self.store.turn(t)?.and_then(|r| r.refusal());
        Ok(Some(OutgoingReply {
            turn: t.clone(),
            envelope,
            refusal,
        }))
    }

    /// Every reply not yet acknowledged, per conversation in turn order.
    pub fn outbox(&self) -> Result<Vec<OutgoingReply>> {
        self.store
            .outbox()?
            .into_iter()
            .map(|(turn, envelope)| {
                let refusal = self.store.turn(&turn)?.and_then(|r| r.refusal());
                Ok(OutgoingReply {
                    turn,
                    envelope,
                    refusal,
                })
            })
            .collect()
    }

    /// The transport has the reply to `t`: drop it from the outbox.
    /// Returns whether it was there.
    pub fn ack(&mut self, t: &TurnRef) -> Result<bool> {
        let present = self.store.transaction(|s| s.delete_outbox(t))?;
        if present {
            self.step("pipeline:acked");
        }
        self.digests.retain(|_, u| u != t);
        Ok(present)
    }

    /// The conversation with `peer` as stored: each message and the reply
    /// it got (a refusal included), oldest first.
    pub fn history(&self, peer: &ProtocolAddress) -> Result<Vec<Turn>> {
        let mut out = Vec::new();
        for entry in self.store.turns_of(peer) {
            let (_, mut record) = entry?;
            out.push(Turn::user(std::mem::take(&mut record.user_text)));
            if matches!(record.state(), TurnState::Answered | TurnState::Refused) {
                out.push(Turn::assistant(std::mem::take(&mut record.reply_text)));
            }
        }
        Ok(out)
    }

    /// The safety number of the session with `peer`, as both devices
    /// display it (`local_name` is this device's account name).
    pub fn safety_number(&self, peer: &ProtocolAddress, local_name: &str) -> Result<String> {
        let theirs = self
            .store
            .get_identity(peer)?
            .ok_or_else(|| Error::NoSession(peer.to_string()))?;
        Ok(safety_number(
            local_name.as_bytes(),
            &self.identity_key(),
            peer.name.as_bytes(),
            &theirs,
        ))
    }

    /// The identity `peer` last presented in a message refused because it
    /// differs from the trusted one (kept in memory only).
    pub fn offered_identity(&self, peer: &ProtocolAddress) -> Option<IdentityKey> {
        self.offered
            .iter()
            .rev()
            .find(|(p, _)| p == peer)
            .map(|(_, k)| *k)
    }

    /// Trusts `identity` for `peer` from now on (after the user compared
    /// safety numbers). Sessions built with the previous identity are
    /// dropped; the conversation is kept.
    pub fn accept_identity(
        &mut self,
        peer: &ProtocolAddress,
        identity: &IdentityKey,
    ) -> Result<()> {
        if self.store.get_identity(peer)?.as_ref() == Some(identity) {
            return Ok(());
        }
        self.check_new_peer(peer)?;
        self.store.transaction(|s| {
            s.replace_identity(peer, identity)?;
            s.delete_session(peer)
        })?;
        self.offered.retain(|(p, _)| p != peer);
        Ok(())
    }

    /// Starts a session with `peer` from its prekey bundle (the assistant
    /// writes first).
    pub fn start_session<R: RngCore + CryptoRng>(
        &mut self,
        peer: &ProtocolAddress,
        bundle: &PreKeyBundle,
        rng: &mut R,
    ) -> Result<()> {
        self.check_new_peer(peer)?;
        self.store
            .transaction(|s| process_prekey_bundle(peer, bundle, s, rng))
    }

    /// Encrypts `text` for `peer` outside any conversation turn.
    pub fn send(&mut self, peer: &ProtocolAddress, text: &str) -> Result<Envelope> {
        self.store
            .transaction(|s| message_encrypt(text.as_bytes(), peer, s).map(|m| Envelope::from(&m)))
    }

    /// Deletes everything about `peer`: trusted identity, sessions,
    /// conversation, unanswered turns and unacknowledged replies.
    pub fn forget_peer(&mut self, peer: &ProtocolAddress) -> Result<()> {
        self.store.transaction(|s| {
            s.delete_identity(peer)?;
            s.delete_session(peer)?;
            s.delete_conversation(peer)
        })?;
        self.unanswered.retain(|t| t.peer != *peer);
        self.digests.retain(|_, t| t.peer != *peer);
        self.offered.retain(|(p, _)| p != peer);
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::panic)]
mod tests {
    use super::*;
    use crate::session::message_encrypt;
    use crate::store::InMemProtocolStore;
    use rand::SeedableRng;
    use rand_chacha::ChaCha20Rng;

    #[test]
    fn debug_output_holds_no_key_material_and_no_text() {
        let mut rng = ChaCha20Rng::seed_from_u64(1);
        let mut device = AssistantDevice::in_memory(DeviceOptions::default(), &mut rng)
            .unwrap_or_else(|e| panic!("{e}"));
        let bundle = device
            .prekey_bundle(SystemTime::now(), &mut rng)
            .unwrap_or_else(|e| panic!("{e}"));
        let mut user = InMemProtocolStore::new(IdentityKeyPair::generate(&mut rng), 9);
        let me = ProtocolAddress::new("sotto", 1);
        process_prekey_bundle(&me, &bundle, &mut user, &mut rng).unwrap_or_else(|e| panic!("{e}"));
        let sender = ProtocolAddress::new("user", 1);
        let m =
            message_encrypt(b"my secret text", &me, &mut user).unwrap_or_else(|e| panic!("{e}"));
        let received = device
            .receive(&sender, &Envelope::from(&m), &mut rng)
            .unwrap_or_else(|e| panic!("{e}"));
        let turn = device
            .store
            .turn(&received.turn)
            .unwrap_or_else(|e| panic!("{e}"))
            .unwrap_or_else(|| panic!("journaled"));
        let private = device.store.identity().private_key().serialize().to_vec();
        let prekey = crate::store::PreKeyStore::get_pre_key(
            &device.store,
            bundle.pre_key.map_or(0, |p| p.0),
        );
        let shown = format!(
            "{device:?} {:?} {turn:?} {:?} {:?}",
            device.store,
            device.prompt(&received.turn),
            DeviceOptions::default()
        );
        assert!(!shown.contains("secret"), "{shown}");
        for window in private.windows(4) {
            assert!(!shown.contains(&format!("{window:?}")[1..12]), "{shown}");
        }
        assert!(prekey.is_err(), "the used one-time prekey is gone");
    }
}

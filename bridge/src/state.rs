//! Session state (one Double Ratchet) and session records (the current
//! state plus archived ones), with their versioned snapshot encoding.

use std::collections::VecDeque;

use prost::Message as _;
use zeroize::Zeroizing;

use crate::error::{malformed, Error, Result};
use crate::kdf::{ChainKey, MessageKeys, RootKey};
use crate::keys::{IdentityKey, KeyPair, PrivateKey, PublicKey};
use crate::proto::{
    ChainProto, PendingPreKeyProto, SessionRecordProto, SessionStateProto, SKIPPED_KEY_LEN,
};
use crate::work::{self, Op};

/// Keys of skipped (not yet arrived) messages kept per receiving chain,
/// newest kept (libsignal's limit); a message older than those no longer
/// decrypts.
pub const MAX_SKIPPED_KEYS_PER_CHAIN: usize = 2000;
/// The farthest ahead of a chain a message counter may be: decrypting it
/// would derive this many keys at most (libsignal's limit); beyond is
/// [`Error::TooFarInFuture`].
pub const MAX_FORWARD_JUMPS: u32 = 25_000;
/// Receiving chains kept per session state, the newest (libsignal's
/// limit); a message on an older chain is refused.
pub const MAX_RECEIVER_CHAINS: usize = 5;
/// Older session states kept per peer beside the current one, so delayed
/// messages from a replaced session still decrypt (libsignal's limit).
pub const ARCHIVED_STATES_MAX: usize = 40;
/// Chain steps one incoming message may cause in all, over every state it
/// is tried against: the cost bound of an unauthenticated message (see
/// `session.rs`).
pub const MAX_CHAIN_STEPS_PER_MESSAGE: u32 = MAX_FORWARD_JUMPS;

const RECORD_SNAPSHOT_VERSION: u8 = 1;

#[derive(Clone)]
pub(crate) struct SenderChain {
    pub ratchet: KeyPair,
    pub chain_key: ChainKey,
}

#[derive(Clone)]
pub(crate) struct ReceiverChain {
    pub ratchet_key: PublicKey,
    pub chain_key: ChainKey,
    /// Keys of messages skipped over, oldest first.
    pub skipped: VecDeque<MessageKeys>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct PendingPreKey {
    pub pre_key_id: Option<u32>,
    pub signed_pre_key_id: u32,
    pub base_key: PublicKey,
}

/// One Double Ratchet session with a peer device: its identities, root
/// and chain keys. Reached through [`SessionRecord::session_state`];
/// `Debug` shows no key material.
pub struct SessionState {
    pub(crate) local_identity: IdentityKey,
    pub(crate) remote_identity: IdentityKey,
    pub(crate) root_key: RootKey,
    pub(crate) previous_counter: u32,
    pub(crate) sender: SenderChain,
    /// Newest last; at most [`MAX_RECEIVER_CHAINS`].
    pub(crate) receivers: VecDeque<ReceiverChain>,
    pub(crate) pending_pre_key: Option<PendingPreKey>,
    pub(crate) local_registration_id: u32,
    pub(crate) remote_registration_id: u32,
    pub(crate) alice_base_key: PublicKey,
}

// Written out so tests can count copies of whole states (crate::work).
impl Clone for SessionState {
    fn clone(&self) -> Self {
        work::count(Op::StateClone);
        Self {
            local_identity: self.local_identity,
            remote_identity: self.remote_identity,
            root_key: self.root_key.clone(),
            previous_counter: self.previous_counter,
            sender: self.sender.clone(),
            receivers: self.receivers.clone(),
            pending_pre_key: self.pending_pre_key.clone(),
            local_registration_id: self.local_registration_id,
            remote_registration_id: self.remote_registration_id,
            alice_base_key: self.alice_base_key,
        }
    }
}

impl std::fmt::Debug for SessionState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionState")
            .field("remote_identity", &self.remote_identity)
            .field("sender_index", &self.sender.chain_key.index())
            .field("receiver_chains", &self.receivers.len())
            .field("pending_pre_key", &self.pending_pre_key.is_some())
            .finish_non_exhaustive()
    }
}

impl SessionState {
    /// The peer's identity key.
    pub fn remote_identity(&self) -> &IdentityKey {
        &self.remote_identity
    }
    /// Our identity key.
    pub fn local_identity(&self) -> &IdentityKey {
        &self.local_identity
    }
    /// The peer's registration id.
    pub fn remote_registration_id(&self) -> u32 {
        self.remote_registration_id
    }
    /// Whether we started this session and have not heard back yet: our
    /// messages still go out as [`crate::PreKeySignalMessage`]s.
    pub fn has_pending_pre_key(&self) -> bool {
        self.pending_pre_key.is_some()
    }
    /// The X3DH base key of the session's initiator; identifies the
    /// session a prekey message belongs to.
    pub fn alice_base_key(&self) -> &PublicKey {
        &self.alice_base_key
    }

    pub(crate) fn receiver_chain_index(&self, ratchet_key: &PublicKey) -> Option<usize> {
        self.receivers
            .iter()
            .position(|c| &c.ratchet_key == ratchet_key)
    }

    pub(crate) fn receiver_chain_mut(
        &mut self,
        ratchet_key: &PublicKey,
    ) -> Option<&mut ReceiverChain> {
        self.receivers
            .iter_mut()
            .find(|c| &c.ratchet_key == ratchet_key)
    }

    pub(crate) fn add_receiver_chain(&mut self, ratchet_key: PublicKey, chain_key: ChainKey) {
        reserve_wiping(&mut self.receivers, 1, MAX_RECEIVER_CHAINS + 1);
        self.receivers.push_back(ReceiverChain {
            ratchet_key,
            chain_key,
            skipped: VecDeque::new(),
        });
        if self.receivers.len() > MAX_RECEIVER_CHAINS {
            self.receivers.pop_front();
        }
    }

    fn to_proto(&self) -> SessionStateProto {
        let chain = |ratchet: &PublicKey,
                     private: Option<&PrivateKey>,
                     ck: &ChainKey,
                     skipped: &VecDeque<MessageKeys>| {
            ChainProto {
                ratchet_public: ratchet.serialize().to_vec(),
                ratchet_private: private.map(|p| p.serialize().to_vec()).unwrap_or_default(),
                chain_key: ck.key.to_vec(),
                index: ck.index,
                skipped: Vec::new(),
                skipped_packed: pack_skipped(skipped),
            }
        };
        SessionStateProto {
            version: 3,
            local_identity: self.local_identity.serialize().to_vec(),
            remote_identity: self.remote_identity.serialize().to_vec(),
            root_key: self.root_key.0.to_vec(),
            previous_counter: self.previous_counter,
            sender_chain: Some(chain(
                &self.sender.ratchet.public_key,
                Some(&self.sender.ratchet.private_key),
                &self.sender.chain_key,
                &VecDeque::new(),
            )),
            receiver_chains: self
                .receivers
                .iter()
                .map(|c| chain(&c.ratchet_key, None, &c.chain_key, &c.skipped))
                .collect(),
            pending_pre_key: self.pending_pre_key.as_ref().map(|p| PendingPreKeyProto {
                pre_key_id: p.pre_key_id,
                signed_pre_key_id: p.signed_pre_key_id,
                base_key: p.base_key.serialize().to_vec(),
            }),
            remote_registration_id: self.remote_registration_id,
            local_registration_id: self.local_registration_id,
            alice_base_key: self.alice_base_key.serialize().to_vec(),
        }
    }

    fn from_proto(p: &SessionStateProto) -> Result<Self> {
        if p.version != 3 {
            return Err(malformed("session state", format!("version {}", p.version)));
        }
        let key32 = |v: &[u8], what: &'static str| -> Result<[u8; 32]> {
            v.try_into().map_err(|_| malformed("session state", what))
        };
        let chain_key = |c: &ChainProto| -> Result<ChainKey> {
            Ok(ChainKey {
                key: key32(&c.chain_key, "chain key")?,
                index: c.index,
            })
        };
        let sender = p
            .sender_chain
            .as_ref()
            .ok_or_else(|| malformed("session state", "no sender chain"))?;
        // The stored public half saves a scalar multiplication per load.
        let sender = SenderChain {
            ratchet: KeyPair {
                public_key: PublicKey::deserialize(&sender.ratchet_public)?,
                private_key: PrivateKey::deserialize(&sender.ratchet_private)?,
            },
            chain_key: chain_key(sender)?,
        };
        let mut receivers = VecDeque::with_capacity(p.receiver_chains.len());
        for c in &p.receiver_chains {
            if c.skipped_packed.len() % SKIPPED_KEY_LEN != 0 {
                return Err(malformed("session state", "packed skipped keys"));
            }
            let mut skipped =
                VecDeque::with_capacity(c.skipped.len() + c.skipped_packed.len() / SKIPPED_KEY_LEN);
            for k in &c.skipped {
                skipped.push_back(MessageKeys {
                    cipher_key: key32(&k.cipher_key, "cipher key")?,
                    mac_key: key32(&k.mac_key, "mac key")?,
                    iv: k
                        .iv
                        .as_slice()
                        .try_into()
                        .map_err(|_| malformed("session state", "iv"))?,
                    counter: k.counter,
                });
            }
            skipped.extend(
                c.skipped_packed
                    .chunks_exact(SKIPPED_KEY_LEN)
                    .map(unpack_skipped),
            );
            receivers.push_back(ReceiverChain {
                ratchet_key: PublicKey::deserialize(&c.ratchet_public)?,
                chain_key: chain_key(c)?,
                skipped,
            });
        }
        let pending_pre_key = match &p.pending_pre_key {
            Some(pp) => Some(PendingPreKey {
                pre_key_id: pp.pre_key_id,
                signed_pre_key_id: pp.signed_pre_key_id,
                base_key: PublicKey::deserialize(&pp.base_key)?,
            }),
            None => None,
        };
        Ok(Self {
            local_identity: IdentityKey::deserialize(&p.local_identity)?,
            remote_identity: IdentityKey::deserialize(&p.remote_identity)?,
            root_key: RootKey(key32(&p.root_key, "root key")?),
            previous_counter: p.previous_counter,
            sender,
            receivers,
            pending_pre_key,
            local_registration_id: p.local_registration_id,
            remote_registration_id: p.remote_registration_id,
            alice_base_key: PublicKey::deserialize(&p.alice_base_key)?,
        })
    }
}

/// Skipped keys in the packed layout of `ChainProto::skipped_packed`, in a
/// buffer sized up front (growing would leave key bytes in freed memory).
fn pack_skipped(skipped: &VecDeque<MessageKeys>) -> Vec<u8> {
    let mut out = Vec::with_capacity(skipped.len() * SKIPPED_KEY_LEN);
    for k in skipped {
        out.extend_from_slice(&k.counter.to_le_bytes());
        out.extend_from_slice(&k.cipher_key);
        out.extend_from_slice(&k.mac_key);
        out.extend_from_slice(&k.iv);
    }
    out
}

/// One key of the packed layout; `bytes` is [`SKIPPED_KEY_LEN`] long.
fn unpack_skipped(bytes: &[u8]) -> MessageKeys {
    let mut keys = MessageKeys {
        cipher_key: [0; 32],
        mac_key: [0; 32],
        iv: [0; 16],
        counter: 0,
    };
    let (counter, rest) = bytes.split_at(4);
    let (cipher_key, rest) = rest.split_at(32);
    let (mac_key, iv) = rest.split_at(32);
    let mut le = [0u8; 4];
    le.copy_from_slice(counter);
    keys.counter = u32::from_le_bytes(le);
    keys.cipher_key.copy_from_slice(cipher_key);
    keys.mac_key.copy_from_slice(mac_key);
    keys.iv.copy_from_slice(iv);
    keys
}

/// Makes room for `additional` more items without leaving copies of them
/// in freed memory: when a VecDeque grows, std moves its items to the new
/// buffer and frees the old one unwiped. Here they are cloned into a new
/// buffer and the old ones dropped, which wipes them (the keys they hold
/// zeroize on drop). Items moved around within a buffer (a removal) can
/// still leave stale bytes in its spare capacity. Capacity doubles, but
/// never past `most` (the collection's limit) unless `additional` needs it.
pub(crate) fn reserve_wiping<T: Clone>(items: &mut VecDeque<T>, additional: usize, most: usize) {
    let needed = items.len().saturating_add(additional);
    if items.capacity() >= needed {
        return;
    }
    let capacity = needed.max(items.capacity().saturating_mul(2).min(most));
    let mut grown = VecDeque::with_capacity(capacity);
    grown.extend(items.iter().cloned());
    *items = grown;
}

/// One state of a [`SessionRecord`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum StateRef {
    Current,
    /// Index into the archived states, newest first.
    Archived(usize),
}

/// The sessions with one peer device: the current one and up to
/// [`ARCHIVED_STATES_MAX`] older ones (newest first) that may still
/// receive delayed messages.
#[derive(Clone, Default)]
pub struct SessionRecord {
    pub(crate) current: Option<SessionState>,
    pub(crate) previous: VecDeque<SessionState>,
}

impl std::fmt::Debug for SessionRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionRecord")
            .field("current", &self.current)
            .field("archived", &self.previous.len())
            .finish()
    }
}

impl SessionRecord {
    /// A record with no session yet.
    pub fn new_fresh() -> Self {
        Self::default()
    }

    /// The current session state, if any.
    pub fn session_state(&self) -> Option<&SessionState> {
        self.current.as_ref()
    }

    /// How many older states are kept (at most [`ARCHIVED_STATES_MAX`]).
    pub fn archived_count(&self) -> usize {
        self.previous.len()
    }

    /// Makes `state` current, archiving the old current one.
    pub(crate) fn promote_state(&mut self, state: SessionState) {
        if let Some(old) = self.current.replace(state) {
            self.previous.push_front(old);
            self.previous.truncate(ARCHIVED_STATES_MAX);
        }
    }

    /// Makes archived state `index` current (the old current one is
    /// archived in its place, newest first).
    pub(crate) fn promote_archived(&mut self, index: usize) {
        if let Some(state) = self.previous.remove(index) {
            self.promote_state(state);
        }
    }

    /// The state `which` names, if the record has it.
    pub(crate) fn state_mut(&mut self, which: StateRef) -> Option<&mut SessionState> {
        match which {
            StateRef::Current => self.current.as_mut(),
            StateRef::Archived(i) => self.previous.get_mut(i),
        }
    }

    /// Makes `which` the current state.
    pub(crate) fn promote(&mut self, which: StateRef) {
        if let StateRef::Archived(i) = which {
            self.promote_archived(i);
        }
    }

    /// Every state, current first, then archived newest first.
    pub(crate) fn states(&self) -> impl Iterator<Item = (StateRef, &SessionState)> {
        let current = self.current.iter().map(|s| (StateRef::Current, s));
        let archived = self
            .previous
            .iter()
            .enumerate()
            .map(|(i, s)| (StateRef::Archived(i), s));
        current.chain(archived)
    }

    /// The state set up by the X3DH run with Alice's `base_key`.
    pub(crate) fn state_with_base_key(&self, base_key: &PublicKey) -> Option<StateRef> {
        self.states()
            .find(|(_, s)| &s.alice_base_key == base_key)
            .map(|(which, _)| which)
    }

    /// `version(1) || protobuf`, wiped when dropped (it holds every key of
    /// the session).
    pub fn serialize(&self) -> Zeroizing<Vec<u8>> {
        let proto = SessionRecordProto {
            current: self.current.as_ref().map(SessionState::to_proto),
            previous: self.previous.iter().map(SessionState::to_proto).collect(),
        };
        // Sized up front: a Vec that grew would leave key bytes behind in
        // the buffers it freed.
        let mut out = Zeroizing::new(Vec::with_capacity(1 + proto.encoded_len()));
        out.push(RECORD_SNAPSHOT_VERSION);
        proto
            .encode(&mut *out)
            .unwrap_or_else(|_| unreachable!("sized to fit"));
        out
    }

    /// Reads what [`SessionRecord::serialize`] wrote:
    /// [`Error::SnapshotVersion`] for another format version,
    /// [`Error::Malformed`] for anything that does not decode.
    pub fn deserialize(bytes: &[u8]) -> Result<Self> {
        let Some((&version, body)) = bytes.split_first() else {
            return Err(malformed("session record", "empty"));
        };
        if version != RECORD_SNAPSHOT_VERSION {
            return Err(Error::SnapshotVersion {
                path: "<session record>".into(),
                version,
            });
        }
        let proto = SessionRecordProto::decode(body)
            .map_err(|e| malformed("session record", e.to_string()))?;
        Ok(Self {
            current: proto
                .current
                .as_ref()
                .map(SessionState::from_proto)
                .transpose()?,
            previous: proto
                .previous
                .iter()
                .map(SessionState::from_proto)
                .collect::<Result<_>>()?,
        })
    }
}

#[cfg(test)]
#[allow(clippy::panic)]
mod tests {
    use super::*;
    use crate::proto::SkippedKeyProto;
    use crate::session::{message_decrypt, message_encrypt, process_prekey_bundle};
    use crate::store::{InMemProtocolStore, SessionStore, SignedPreKeyStore};
    use crate::{IdentityKeyPair, PreKeyBundle, ProtocolAddress, SignedPreKeyRecord};
    use rand::SeedableRng;
    use rand_chacha::ChaCha20Rng;

    /// Bob's record after Alice's fifth message arrived alone: four
    /// skipped keys.
    fn record_with_skipped_keys() -> SessionRecord {
        let ok = |r: Result<()>| r.unwrap_or_else(|e| panic!("{e}"));
        let mut rng = ChaCha20Rng::seed_from_u64(12);
        let (a_id, b_id) = (
            IdentityKeyPair::generate(&mut rng),
            IdentityKeyPair::generate(&mut rng),
        );
        let mut alice = InMemProtocolStore::new(a_id, 1);
        let mut bob = InMemProtocolStore::new(b_id.clone(), 2);
        let signed = SignedPreKeyRecord::generate(1, 0, &b_id, &mut rng);
        let bundle = PreKeyBundle::from_records(2, 1, *b_id.identity_key(), &signed, None);
        ok(bob.save_signed_pre_key(signed));
        let (a, b) = (ProtocolAddress::new("a", 1), ProtocolAddress::new("b", 1));
        ok(process_prekey_bundle(&b, &bundle, &mut alice, &mut rng));
        let mut last = None;
        for _ in 0..5 {
            last = message_encrypt(b"m", &b, &mut alice).ok();
        }
        let last = last.unwrap_or_else(|| panic!("nothing sent"));
        message_decrypt(&last, &a, &mut bob, &mut rng).unwrap_or_else(|e| panic!("{e}"));
        bob.load_session(&a)
            .unwrap_or_else(|e| panic!("{e}"))
            .unwrap_or_else(|| panic!("no record"))
    }

    /// Records written with one protobuf message per skipped key (before
    /// the packed layout) still load, to the same keys.
    #[test]
    fn skipped_keys_load_from_both_layouts() {
        let record = record_with_skipped_keys();
        let packed = record.serialize();
        let mut proto = SessionRecordProto::decode(&packed[1..]).unwrap_or_else(|e| panic!("{e}"));
        let mut moved = 0;
        for state in proto.current.iter_mut().chain(proto.previous.iter_mut()) {
            for chain in &mut state.receiver_chains {
                chain.skipped = chain
                    .skipped_packed
                    .chunks_exact(SKIPPED_KEY_LEN)
                    .map(unpack_skipped)
                    .map(|k| SkippedKeyProto {
                        counter: k.counter,
                        cipher_key: k.cipher_key.to_vec(),
                        mac_key: k.mac_key.to_vec(),
                        iv: k.iv.to_vec(),
                    })
                    .collect();
                moved += chain.skipped.len();
                chain.skipped_packed.clear();
            }
        }
        assert_eq!(moved, 4);
        let mut legacy = vec![RECORD_SNAPSHOT_VERSION];
        legacy.extend(proto.encode_to_vec());
        assert_ne!(&legacy[..], &packed[..]);
        let reloaded = SessionRecord::deserialize(&legacy).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(reloaded.serialize(), packed);
        // A packed buffer cut mid-key is malformed, not a panic.
        let mut proto = SessionRecordProto::decode(&packed[1..]).unwrap_or_else(|e| panic!("{e}"));
        if let Some(chain) = proto
            .current
            .as_mut()
            .and_then(|s| s.receiver_chains.first_mut())
        {
            chain.skipped_packed.pop();
        }
        let mut cut = vec![RECORD_SNAPSHOT_VERSION];
        cut.extend(proto.encode_to_vec());
        assert!(matches!(
            SessionRecord::deserialize(&cut),
            Err(Error::Malformed { .. })
        ));
    }
}

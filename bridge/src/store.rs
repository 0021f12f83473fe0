//! One store trait per record kind (as libsignal's `storage/traits.rs`)
//! and in-memory implementations.

use std::collections::HashMap;

use zeroize::Zeroizing;

use crate::error::{Error, Result};
use crate::keys::{IdentityKey, IdentityKeyPair};
use crate::prekeys::{PreKeyRecord, SignedPreKeyRecord};
use crate::state::SessionRecord;

/// A peer device: an account name and a device number.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ProtocolAddress {
    /// The account name (any string the transport uses, e.g. a phone
    /// number or UUID).
    pub name: String,
    /// The device number within the account.
    pub device_id: u32,
}

impl ProtocolAddress {
    /// The address of device `device_id` of account `name`.
    pub fn new(name: impl Into<String>, device_id: u32) -> Self {
        Self {
            name: name.into(),
            device_id,
        }
    }
}

impl std::fmt::Display for ProtocolAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.name, self.device_id)
    }
}

/// Our identity and the identity keys we have seen for each peer. Every
/// method may fail with the store's own error (I/O, a sealed record that
/// does not open).
pub trait IdentityKeyStore {
    /// Our long-term identity key pair.
    fn identity_key_pair(&self) -> Result<IdentityKeyPair>;
    /// Our registration id, sent in prekey messages.
    fn local_registration_id(&self) -> Result<u32>;
    /// Records `identity` as the peer's key. Returns true if a different
    /// identity was replaced.
    fn save_identity(&mut self, address: &ProtocolAddress, identity: &IdentityKey) -> Result<bool>;
    /// The identity key recorded for `address`, if any.
    fn get_identity(&self, address: &ProtocolAddress) -> Result<Option<IdentityKey>>;
    /// Trust on first use: unknown peers are trusted, known ones only with
    /// the identity first seen.
    fn is_trusted_identity(
        &self,
        address: &ProtocolAddress,
        identity: &IdentityKey,
    ) -> Result<bool> {
        Ok(self
            .get_identity(address)?
            .is_none_or(|known| &known == identity))
    }
}

/// Our one-time prekeys, by id.
pub trait PreKeyStore {
    /// The prekey `id`; [`Error::UnknownPreKey`] if it is not held.
    fn get_pre_key(&self, id: u32) -> Result<PreKeyRecord>;
    /// Stores `record` under its id, replacing any with the same id.
    fn save_pre_key(&mut self, record: PreKeyRecord) -> Result<()>;
    /// Deletes prekey `id` (after a session consumed it); removing an
    /// unknown id is not an error.
    fn remove_pre_key(&mut self, id: u32) -> Result<()>;
}

/// Our signed prekeys, by id.
pub trait SignedPreKeyStore {
    /// The signed prekey `id`; [`Error::UnknownSignedPreKey`] if it is not
    /// held.
    fn get_signed_pre_key(&self, id: u32) -> Result<SignedPreKeyRecord>;
    /// Stores `record` under its id, replacing any with the same id.
    fn save_signed_pre_key(&mut self, record: SignedPreKeyRecord) -> Result<()>;
    /// Removes a signed prekey (rotated out); removing an unknown id is not
    /// an error.
    fn remove_signed_pre_key(&mut self, id: u32) -> Result<()>;
}

/// The session record of each peer device.
pub trait SessionStore {
    /// A copy of the session with `address`, if there is one; changing it
    /// changes nothing stored until [`SessionStore::store_session`].
    fn load_session(&self, address: &ProtocolAddress) -> Result<Option<SessionRecord>>;
    /// Stores `record` as the session with `address`, replacing the old one.
    fn store_session(&mut self, address: &ProtocolAddress, record: &SessionRecord) -> Result<()>;
}

/// All four stores; what session operations need.
pub trait ProtocolStore: IdentityKeyStore + PreKeyStore + SignedPreKeyStore + SessionStore {}
impl<T: IdentityKeyStore + PreKeyStore + SignedPreKeyStore + SessionStore> ProtocolStore for T {}

/// Our identity and the peers' identity keys, in memory.
#[derive(Clone, Debug)]
pub(crate) struct InMemIdentityKeyStore {
    pub(crate) key_pair: IdentityKeyPair,
    pub(crate) registration_id: u32,
    pub(crate) known: HashMap<ProtocolAddress, IdentityKey>,
}

impl InMemIdentityKeyStore {
    pub(crate) fn new(key_pair: IdentityKeyPair, registration_id: u32) -> Self {
        Self {
            key_pair,
            registration_id,
            known: HashMap::new(),
        }
    }
}

impl IdentityKeyStore for InMemIdentityKeyStore {
    fn identity_key_pair(&self) -> Result<IdentityKeyPair> {
        Ok(self.key_pair.clone())
    }
    fn local_registration_id(&self) -> Result<u32> {
        Ok(self.registration_id)
    }
    fn save_identity(&mut self, address: &ProtocolAddress, identity: &IdentityKey) -> Result<bool> {
        Ok(self
            .known
            .insert(address.clone(), *identity)
            .is_some_and(|old| &old != identity))
    }
    fn get_identity(&self, address: &ProtocolAddress) -> Result<Option<IdentityKey>> {
        Ok(self.known.get(address).copied())
    }
}

/// One-time prekeys, in memory.
#[derive(Clone, Debug, Default)]
pub(crate) struct InMemPreKeyStore {
    pub(crate) keys: HashMap<u32, PreKeyRecord>,
}

impl PreKeyStore for InMemPreKeyStore {
    fn get_pre_key(&self, id: u32) -> Result<PreKeyRecord> {
        self.keys.get(&id).cloned().ok_or(Error::UnknownPreKey(id))
    }
    fn save_pre_key(&mut self, record: PreKeyRecord) -> Result<()> {
        self.keys.insert(record.id, record);
        Ok(())
    }
    fn remove_pre_key(&mut self, id: u32) -> Result<()> {
        self.keys.remove(&id);
        Ok(())
    }
}

/// Signed prekeys, in memory.
#[derive(Clone, Debug, Default)]
pub(crate) struct InMemSignedPreKeyStore {
    pub(crate) keys: HashMap<u32, SignedPreKeyRecord>,
}

impl SignedPreKeyStore for InMemSignedPreKeyStore {
    fn get_signed_pre_key(&self, id: u32) -> Result<SignedPreKeyRecord> {
        self.keys
            .get(&id)
            .cloned()
            .ok_or(Error::UnknownSignedPreKey(id))
    }
    fn save_signed_pre_key(&mut self, record: SignedPreKeyRecord) -> Result<()> {
        self.keys.insert(record.id, record);
        Ok(())
    }
    fn remove_signed_pre_key(&mut self, id: u32) -> Result<()> {
        self.keys.remove(&id);
        Ok(())
    }
}

/// Session records kept serialized (each load is a fresh copy, so a failed
/// decryption cannot touch the stored one) and wiped when replaced or
/// dropped.
#[derive(Clone, Default)]
pub(crate) struct InMemSessionStore {
    pub(crate) sessions: HashMap<ProtocolAddress, Zeroizing<Vec<u8>>>,
}

/// The records hold every session key: Debug shows who, never what.
impl std::fmt::Debug for InMemSessionStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut peers: Vec<_> = self.sessions.keys().map(ToString::to_string).collect();
        peers.sort();
        f.debug_struct("InMemSessionStore")
            .field("peers", &peers)
            .finish_non_exhaustive()
    }
}

impl SessionStore for InMemSessionStore {
    fn load_session(&self, address: &ProtocolAddress) -> Result<Option<SessionRecord>> {
        self.sessions
            .get(address)
            .map(|b| SessionRecord::deserialize(b))
            .transpose()
    }
    fn store_session(&mut self, address: &ProtocolAddress, record: &SessionRecord) -> Result<()> {
        self.sessions.insert(address.clone(), record.serialize());
        Ok(())
    }
}

/// The four stores in memory, for tests, tools and peers that keep no
/// state between runs ([`crate::AssistantDevice`] persists its own).
/// Changes take `&mut self`: share it across threads behind a lock.
#[derive(Clone, Debug)]
pub struct InMemProtocolStore {
    pub(crate) identities: InMemIdentityKeyStore,
    pub(crate) pre_keys: InMemPreKeyStore,
    pub(crate) signed_pre_keys: InMemSignedPreKeyStore,
    pub(crate) sessions: InMemSessionStore,
}

impl InMemProtocolStore {
    /// Empty stores for the identity `key_pair` with `registration_id`.
    pub fn new(key_pair: IdentityKeyPair, registration_id: u32) -> Self {
        Self {
            identities: InMemIdentityKeyStore::new(key_pair, registration_id),
            pre_keys: InMemPreKeyStore::default(),
            signed_pre_keys: InMemSignedPreKeyStore::default(),
            sessions: InMemSessionStore::default(),
        }
    }
}

impl IdentityKeyStore for InMemProtocolStore {
    fn identity_key_pair(&self) -> Result<IdentityKeyPair> {
        self.identities.identity_key_pair()
    }
    fn local_registration_id(&self) -> Result<u32> {
        self.identities.local_registration_id()
    }
    fn save_identity(&mut self, a: &ProtocolAddress, k: &IdentityKey) -> Result<bool> {
        self.identities.save_identity(a, k)
    }
    fn get_identity(&self, a: &ProtocolAddress) -> Result<Option<IdentityKey>> {
        self.identities.get_identity(a)
    }
}
impl PreKeyStore for InMemProtocolStore {
    fn get_pre_key(&self, id: u32) -> Result<PreKeyRecord> {
        self.pre_keys.get_pre_key(id)
    }
    fn save_pre_key(&mut self, r: PreKeyRecord) -> Result<()> {
        self.pre_keys.save_pre_key(r)
    }
    fn remove_pre_key(&mut self, id: u32) -> Result<()> {
        self.pre_keys.remove_pre_key(id)
    }
}
impl SignedPreKeyStore for InMemProtocolStore {
    fn get_signed_pre_key(&self, id: u32) -> Result<SignedPreKeyRecord> {
        self.signed_pre_keys.get_signed_pre_key(id)
    }
    fn save_signed_pre_key(&mut self, r: SignedPreKeyRecord) -> Result<()> {
        self.signed_pre_keys.save_signed_pre_key(r)
    }
    fn remove_signed_pre_key(&mut self, id: u32) -> Result<()> {
        self.signed_pre_keys.remove_signed_pre_key(id)
    }
}
impl SessionStore for InMemProtocolStore {
    fn load_session(&self, a: &ProtocolAddress) -> Result<Option<SessionRecord>> {
        self.sessions.load_session(a)
    }
    fn store_session(&mut self, a: &ProtocolAddress, r: &SessionRecord) -> Result<()> {
        self.sessions.store_session(a, r)
    }
}

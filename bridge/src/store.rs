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
    pub name: String,
    pub device_id: u32,
}

impl ProtocolAddress {
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

pub trait IdentityKeyStore {
    fn identity_key_pair(&self) -> Result<IdentityKeyPair>;
    fn local_registration_id(&self) -> Result<u32>;
    /// Returns true if a different identity was replaced.
    fn save_identity(&mut self, address: &ProtocolAddress, identity: &IdentityKey) -> Result<bool>;
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

pub trait PreKeyStore {
    fn get_pre_key(&self, id: u32) -> Result<PreKeyRecord>;
    fn save_pre_key(&mut self, record: PreKeyRecord) -> Result<()>;
    fn remove_pre_key(&mut self, id: u32) -> Result<()>;
}

pub trait SignedPreKeyStore {
    fn get_signed_pre_key(&self, id: u32) -> Result<SignedPreKeyRecord>;
    fn save_signed_pre_key(&mut self, record: SignedPreKeyRecord) -> Result<()>;
    /// Removes a signed prekey (rotated out); removing an unknown id is not
    /// an error.
    fn remove_signed_pre_key(&mut self, id: u32) -> Result<()>;
}

pub trait SessionStore {
    fn load_session(&self, address: &ProtocolAddress) -> Result<Option<SessionRecord>>;
    fn store_session(&mut self, address: &ProtocolAddress, record: &SessionRecord) -> Result<()>;
}

/// All four stores; what session operations need.
pub trait ProtocolStore: IdentityKeyStore + PreKeyStore + SignedPreKeyStore + SessionStore {}
impl<T: IdentityKeyStore + PreKeyStore + SignedPreKeyStore + SessionStore> ProtocolStore for T {}

#[derive(Clone, Debug)]
pub struct InMemIdentityKeyStore {
    pub(crate) key_pair: IdentityKeyPair,
    pub(crate) registration_id: u32,
    pub(crate) known: HashMap<ProtocolAddress, IdentityKey>,
}

impl InMemIdentityKeyStore {
    pub fn new(key_pair: IdentityKeyPair, registration_id: u32) -> Self {
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

#[derive(Clone, Debug, Default)]
pub struct InMemPreKeyStore {
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

#[derive(Clone, Debug, Default)]
pub struct InMemSignedPreKeyStore {
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
pub struct InMemSessionStore {
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

/// The four in-memory stores together.
#[derive(Clone, Debug)]
pub struct InMemProtocolStore {
    pub identities: InMemIdentityKeyStore,
    pub pre_keys: InMemPreKeyStore,
    pub signed_pre_keys: InMemSignedPreKeyStore,
    pub sessions: InMemSessionStore,
}

impl InMemProtocolStore {
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

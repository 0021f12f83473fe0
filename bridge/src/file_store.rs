//! The four protocol stores in one sealed snapshot file
//! ([`crate::sealed`]): every mutation rewrites it atomically, so what
//! was acknowledged survives a crash.

use std::path::PathBuf;

use prost::Message as _;
use zeroize::Zeroize;

use crate::error::{malformed, Result};
use crate::keys::{IdentityKey, IdentityKeyPair, KeyPair, PrivateKey};
use crate::prekeys::{PreKeyRecord, SignedPreKeyRecord};
use crate::sealed::{SealedFile, StorageKey};
use crate::state::SessionRecord;
use crate::store::{
    IdentityKeyStore, InMemProtocolStore, PreKeyStore, ProtocolAddress, SessionStore,
    SignedPreKeyStore,
};

const PROTOCOL_KIND: u8 = b'P';
const PROTOCOL_VERSION: u8 = 1;

#[derive(Clone, PartialEq, prost::Message)]
struct KnownIdentityProto {
    #[prost(string, tag = "1")]
    name: String,
    #[prost(uint32, tag = "2")]
    device_id: u32,
    #[prost(bytes = "vec", tag = "3")]
    identity: Vec<u8>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct PreKeyProto {
    #[prost(uint32, tag = "1")]
    id: u32,
    #[prost(bytes = "vec", tag = "2")]
    private_key: Vec<u8>,
    #[prost(uint64, tag = "3")]
    timestamp: u64,
    #[prost(bytes = "vec", tag = "4")]
    signature: Vec<u8>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct SessionEntryProto {
    #[prost(string, tag = "1")]
    name: String,
    #[prost(uint32, tag = "2")]
    device_id: u32,
    #[prost(bytes = "vec", tag = "3")]
    record: Vec<u8>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct ProtocolSnapshotProto {
    #[prost(bytes = "vec", tag = "1")]
    identity_private: Vec<u8>,
    #[prost(uint32, tag = "2")]
    registration_id: u32,
    #[prost(message, repeated, tag = "3")]
    known: Vec<KnownIdentityProto>,
    #[prost(message, repeated, tag = "4")]
    pre_keys: Vec<PreKeyProto>,
    #[prost(message, repeated, tag = "5")]
    signed_pre_keys: Vec<PreKeyProto>,
    #[prost(message, repeated, tag = "6")]
    sessions: Vec<SessionEntryProto>,
}

/// Protocol stores sealed under a [`StorageKey`].
#[derive(Debug)]
pub struct FileProtocolStore {
    file: SealedFile,
    inner: InMemProtocolStore,
}

impl FileProtocolStore {
    /// Opens the snapshot at `path`, or creates one with the identity
    /// `create` returns if there is none yet.
    pub fn open_or_create(
        path: impl Into<PathBuf>,
        key: StorageKey,
        create: impl FnOnce() -> (IdentityKeyPair, u32),
    ) -> Result<Self> {
        let file = SealedFile::new(path.into(), key, PROTOCOL_KIND, PROTOCOL_VERSION);
        match file.load()? {
            Some(bytes) => {
                let inner = decode_snapshot(&bytes)?;
                Ok(Self { file, inner })
            }
            None => {
                let (identity, registration_id) = create();
                let store = Self {
                    file,
                    inner: InMemProtocolStore::new(identity, registration_id),
                };
                store.persist()?;
                Ok(store)
            }
        }
    }

    pub fn path(&self) -> &std::path::Path {
        self.file.path()
    }

    fn persist(&self) -> Result<()> {
        let mut bytes = encode_snapshot(&self.inner).encode_to_vec();
        let result = self.file.store(&bytes);
        bytes.zeroize();
        result
    }
}

fn encode_snapshot(s: &InMemProtocolStore) -> ProtocolSnapshotProto {
    ProtocolSnapshotProto {
        identity_private: s.identities.key_pair.private_key().serialize().to_vec(),
        registration_id: s.identities.registration_id,
        known: s
            .identities
            .known
            .iter()
            .map(|(a, k)| KnownIdentityProto {
                name: a.name.clone(),
                device_id: a.device_id,
                identity: k.serialize().to_vec(),
            })
            .collect(),
        pre_keys: s
            .pre_keys
            .keys
            .values()
            .map(|r| PreKeyProto {
                id: r.id,
                private_key: r.key_pair.private_key.serialize().to_vec(),
                timestamp: 0,
                signature: Vec::new(),
            })
            .collect(),
        signed_pre_keys: s
            .signed_pre_keys
            .keys
            .values()
            .map(|r| PreKeyProto {
                id: r.id,
                private_key: r.key_pair.private_key.serialize().to_vec(),
                timestamp: r.timestamp,
                signature: r.signature.to_vec(),
            })
            .collect(),
        sessions: s
            .sessions
            .sessions
            .iter()
            .map(|(a, r)| SessionEntryProto {
                name: a.name.clone(),
                device_id: a.device_id,
                record: r.to_vec(),
            })
            .collect(),
    }
}

fn decode_snapshot(bytes: &[u8]) -> Result<InMemProtocolStore> {
    let p = ProtocolSnapshotProto::decode(bytes)
        .map_err(|e| malformed("protocol snapshot", e.to_string()))?;
    let identity = IdentityKeyPair::from_private(PrivateKey::deserialize(&p.identity_private)?);
    let mut store = InMemProtocolStore::new(identity, p.registration_id);
    for k in &p.known {
        store.identities.known.insert(
            ProtocolAddress::new(k.name.clone(), k.device_id),
            IdentityKey::deserialize(&k.identity)?,
        );
    }
    for r in &p.pre_keys {
        let key_pair = KeyPair::from_private(PrivateKey::deserialize(&r.private_key)?);
        store
            .pre_keys
            .keys
            .insert(r.id, PreKeyRecord { id: r.id, key_pair });
    }
    for r in &p.signed_pre_keys {
        let key_pair = KeyPair::from_private(PrivateKey::deserialize(&r.private_key)?);
        let signature = r
            .signature
            .as_slice()
            .try_into()
            .map_err(|_| malformed("protocol snapshot", "signature length"))?;
        store.signed_pre_keys.keys.insert(
            r.id,
            SignedPreKeyRecord {
                id: r.id,
                timestamp: r.timestamp,
                key_pair,
                signature,
            },
        );
    }
    for e in &p.sessions {
        // Validate now so a bad record fails at open, not mid-conversation.
        SessionRecord::deserialize(&e.record)?;
        store.sessions.sessions.insert(
            ProtocolAddress::new(e.name.clone(), e.device_id),
            zeroize::Zeroizing::new(e.record.clone()),
        );
    }
    Ok(store)
}

impl IdentityKeyStore for FileProtocolStore {
    fn identity_key_pair(&self) -> Result<IdentityKeyPair> {
        self.inner.identity_key_pair()
    }
    fn local_registration_id(&self) -> Result<u32> {
        self.inner.local_registration_id()
    }
    fn save_identity(&mut self, a: &ProtocolAddress, k: &IdentityKey) -> Result<bool> {
        if self.inner.get_identity(a)?.as_ref() == Some(k) {
            return Ok(false);
        }
        let replaced = self.inner.save_identity(a, k)?;
        self.persist()?;
        Ok(replaced)
    }
    fn get_identity(&self, a: &ProtocolAddress) -> Result<Option<IdentityKey>> {
        self.inner.get_identity(a)
    }
}

impl PreKeyStore for FileProtocolStore {
    fn get_pre_key(&self, id: u32) -> Result<PreKeyRecord> {
        self.inner.get_pre_key(id)
    }
    fn save_pre_key(&mut self, r: PreKeyRecord) -> Result<()> {
        self.inner.save_pre_key(r)?;
        self.persist()
    }
    fn remove_pre_key(&mut self, id: u32) -> Result<()> {
        self.inner.remove_pre_key(id)?;
        self.persist()
    }
}

impl SignedPreKeyStore for FileProtocolStore {
    fn get_signed_pre_key(&self, id: u32) -> Result<SignedPreKeyRecord> {
        self.inner.get_signed_pre_key(id)
    }
    fn save_signed_pre_key(&mut self, r: SignedPreKeyRecord) -> Result<()> {
        self.inner.save_signed_pre_key(r)?;
        self.persist()
    }
}

impl SessionStore for FileProtocolStore {
    fn load_session(&self, a: &ProtocolAddress) -> Result<Option<SessionRecord>> {
        self.inner.load_session(a)
    }
    fn store_session(&mut self, a: &ProtocolAddress, r: &SessionRecord) -> Result<()> {
        self.inner.store_session(a, r)?;
        self.persist()
    }
}

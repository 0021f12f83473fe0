//! The protocol stores of an [`crate::AssistantDevice`] over its record
//! store: one record per peer identity, per session, per prekey. Inside a
//! transaction (the device opens one per message) the identity, session
//! and prekey changes a decryption makes commit together.

use prost::Message as _;
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use crate::error::{malformed, Error, Result};
use crate::keys::{IdentityKey, IdentityKeyPair, KeyPair, PrivateKey};
use crate::limits::Limits;
use crate::prekeys::{PreKeyRecord, SignedPreKeyRecord};
use crate::proto::redacted_debug;
use crate::records::{RecordKey, RecordKind, RecordStore};
use crate::state::SessionRecord;
use crate::store::{
    IdentityKeyStore, PreKeyStore, ProtocolAddress, SessionStore, SignedPreKeyStore,
};

// Records holding private keys: wiped on drop, never shown by Debug.
#[derive(Clone, PartialEq, prost::Message, Zeroize, ZeroizeOnDrop)]
#[prost(skip_debug)]
struct IdentityProto {
    #[prost(bytes = "vec", tag = "1")]
    private_key: Vec<u8>,
    #[prost(uint32, tag = "2")]
    registration_id: u32,
}

#[derive(Clone, PartialEq, prost::Message, Zeroize, ZeroizeOnDrop)]
#[prost(skip_debug)]
pub(crate) struct PreKeyProto {
    #[prost(bytes = "vec", tag = "1")]
    pub private_key: Vec<u8>,
    /// Handed out in a bundle (so it may be in use by a peer).
    #[prost(bool, tag = "2")]
    pub handed_out: bool,
}

#[derive(Clone, PartialEq, prost::Message, Zeroize, ZeroizeOnDrop)]
#[prost(skip_debug)]
pub(crate) struct SignedPreKeyProto {
    #[prost(bytes = "vec", tag = "1")]
    pub private_key: Vec<u8>,
    /// Creation time, ms since the Unix epoch.
    #[prost(uint64, tag = "2")]
    pub timestamp: u64,
    #[prost(bytes = "vec", tag = "3")]
    pub signature: Vec<u8>,
    /// When a newer one replaced it (ms), 0 while current.
    #[prost(uint64, tag = "4")]
    pub superseded_at: u64,
}

redacted_debug!(IdentityProto, PreKeyProto, SignedPreKeyProto);

/// A record name for a peer: `device u32 BE || name length u32 BE ||
/// name`, so one peer's name is never a prefix of another's.
pub(crate) fn peer_name(address: &ProtocolAddress) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + address.name.len());
    out.extend_from_slice(&address.device_id.to_be_bytes());
    out.extend_from_slice(&(address.name.len() as u32).to_be_bytes());
    out.extend_from_slice(address.name.as_bytes());
    out
}

/// The inverse of [`peer_name`]; also returns what follows the address.
pub(crate) fn split_peer_name(bytes: &[u8]) -> Result<(ProtocolAddress, &[u8])> {
    let bad = || malformed("record name", "not a peer address");
    let device = bytes.get(..4).ok_or_else(bad)?;
    let len = bytes.get(4..8).ok_or_else(bad)?;
    let len = u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize;
    let name = bytes.get(8..8 + len).ok_or_else(bad)?;
    let name = std::str::from_utf8(name).map_err(|_| bad())?;
    Ok((
        ProtocolAddress::new(
            name,
            u32::from_be_bytes([device[0], device[1], device[2], device[3]]),
        ),
        &bytes[8 + len..],
    ))
}

pub(crate) fn id_name(id: u32) -> Vec<u8> {
    id.to_be_bytes().to_vec()
}

fn encode(message: &impl prost::Message) -> Zeroizing<Vec<u8>> {
    Zeroizing::new(message.encode_to_vec())
}

/// The identity, peer identity, prekey and session records of a device.
pub struct DeviceStore {
    pub(crate) records: RecordStore,
    identity: IdentityKeyPair,
    registration_id: u32,
    pub(crate) limits: Limits,
}

impl std::fmt::Debug for DeviceStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceStore")
            .field("identity", self.identity.identity_key())
            .field("registration_id", &self.registration_id)
            .field("records", &self.records)
            .finish()
    }
}

impl DeviceStore {
    /// Reads the identity from `records`, or makes one with `create` when
    /// the store is new (`created`).
    pub(crate) fn new(
        mut records: RecordStore,
        created: bool,
        limits: Limits,
        create: impl FnOnce() -> (IdentityKeyPair, u32),
    ) -> Result<Self> {
        let key = RecordKey::new(RecordKind::Identity, Vec::new());
        let (identity, registration_id) = match records.get(&key) {
            Some(bytes) => {
                let p = IdentityProto::decode(bytes)
                    .map_err(|e| malformed("identity record", e.to_string()))?;
                let identity =
                    IdentityKeyPair::from_private(PrivateKey::deserialize(&p.private_key)?);
                (identity, p.registration_id)
            }
            // Created, or a crash came between creating the store and
            // committing its identity: nothing else can exist yet.
            None if created || records.is_empty() => {
                let (identity, registration_id) = create();
                let bytes = encode(&IdentityProto {
                    private_key: identity.private_key().serialize().to_vec(),
                    registration_id,
                });
                records.put(key, bytes)?;
                (identity, registration_id)
            }
            None => {
                return Err(Error::StoreRecordMissing {
                    path: records
                        .dir()
                        .map(|d| d.root().display().to_string())
                        .unwrap_or_default()
                        + " (identity)",
                })
            }
        };
        Ok(Self {
            records,
            identity,
            registration_id,
            limits,
        })
    }

    pub(crate) fn identity(&self) -> &IdentityKeyPair {
        &self.identity
    }

    pub(crate) fn begin(&mut self) -> Result<()> {
        self.records.begin()
    }

    pub(crate) fn commit(&mut self) -> Result<()> {
        self.records.commit()
    }

    pub(crate) fn rollback(&mut self) {
        self.records.rollback()
    }

    /// Runs `f` in one transaction: committed if it succeeds, undone if not.
    pub(crate) fn transaction<T>(&mut self, f: impl FnOnce(&mut Self) -> Result<T>) -> Result<T> {
        self.begin()?;
        match f(self) {
            Ok(v) => {
                self.commit()?;
                Ok(v)
            }
            Err(e) => {
                self.rollback();
                Err(e)
            }
        }
    }

    /// Peers with a session or a trusted identity.
    pub(crate) fn peer_count(&self) -> usize {
        self.records.count(RecordKind::PeerIdentity)
    }

    pub(crate) fn knows_peer(&self, address: &ProtocolAddress) -> bool {
        let name = peer_name(address);
        self.records
            .get(&RecordKey::new(RecordKind::PeerIdentity, name.clone()))
            .is_some()
            || self
                .records
                .get(&RecordKey::new(RecordKind::Session, name))
                .is_some()
    }

    pub(crate) fn delete_session(&mut self, address: &ProtocolAddress) -> Result<()> {
        self.records
            .delete(RecordKey::new(RecordKind::Session, peer_name(address)))
    }

    pub(crate) fn delete_identity(&mut self, address: &ProtocolAddress) -> Result<()> {
        self.records
            .delete(RecordKey::new(RecordKind::PeerIdentity, peer_name(address)))
    }

    /// Replaces the trusted identity of `address` (an explicit acceptance).
    pub(crate) fn replace_identity(
        &mut self,
        address: &ProtocolAddress,
        identity: &IdentityKey,
    ) -> Result<()> {
        self.records.put(
            RecordKey::new(RecordKind::PeerIdentity, peer_name(address)),
            identity.serialize().to_vec(),
        )
    }

    pub(crate) fn sequence(&self) -> Option<u64> {
        self.records.dir().map(|d| d.sequence())
    }
}

pub(crate) fn decode_pre_key(id: u32, bytes: &[u8]) -> Result<(PreKeyRecord, bool)> {
    let mut p =
        PreKeyProto::decode(bytes).map_err(|e| malformed("prekey record", e.to_string()))?;
    let key_pair = KeyPair::from_private(PrivateKey::deserialize(&p.private_key)?);
    p.private_key.zeroize();
    Ok((PreKeyRecord { id, key_pair }, p.handed_out))
}

pub(crate) fn encode_pre_key(record: &PreKeyRecord, handed_out: bool) -> Zeroizing<Vec<u8>> {
    encode(&PreKeyProto {
        private_key: record.key_pair.private_key.serialize().to_vec(),
        handed_out,
    })
}

pub(crate) fn decode_signed_pre_key(id: u32, bytes: &[u8]) -> Result<(SignedPreKeyRecord, u64)> {
    let p = SignedPreKeyProto::decode(bytes)
        .map_err(|e| malformed("signed prekey record", e.to_string()))?;
    let key_pair = KeyPair::from_private(PrivateKey::deserialize(&p.private_key)?);
    let signature = p
        .signature
        .as_slice()
        .try_into()
        .map_err(|_| malformed("signed prekey record", "signature length"))?;
    Ok((
        SignedPreKeyRecord {
            id,
            timestamp: p.timestamp,
            key_pair,
            signature,
        },
        p.superseded_at,
    ))
}

pub(crate) fn encode_signed_pre_key(
    record: &SignedPreKeyRecord,
    superseded_at: u64,
) -> Zeroizing<Vec<u8>> {
    encode(&SignedPreKeyProto {
        private_key: record.key_pair.private_key.serialize().to_vec(),
        timestamp: record.timestamp,
        signature: record.signature.to_vec(),
        superseded_at,
    })
}

impl IdentityKeyStore for DeviceStore {
    fn identity_key_pair(&self) -> Result<IdentityKeyPair> {
        Ok(self.identity.clone())
    }
    fn local_registration_id(&self) -> Result<u32> {
        Ok(self.registration_id)
    }
    fn save_identity(&mut self, a: &ProtocolAddress, k: &IdentityKey) -> Result<bool> {
        let known = self.get_identity(a)?;
        if known.as_ref() == Some(k) {
            return Ok(false);
        }
        self.replace_identity(a, k)?;
        Ok(known.is_some())
    }
    fn get_identity(&self, a: &ProtocolAddress) -> Result<Option<IdentityKey>> {
        self.records
            .get(&RecordKey::new(RecordKind::PeerIdentity, peer_name(a)))
            .map(IdentityKey::deserialize)
            .transpose()
    }
}

impl PreKeyStore for DeviceStore {
    fn get_pre_key(&self, id: u32) -> Result<PreKeyRecord> {
        let bytes = self
            .records
            .get(&RecordKey::new(RecordKind::PreKey, id_name(id)))
            .ok_or(Error::UnknownPreKey(id))?;
        decode_pre_key(id, bytes).map(|(r, _)| r)
    }
    fn save_pre_key(&mut self, r: PreKeyRecord) -> Result<()> {
        let bytes = encode_pre_key(&r, false);
        self.records
            .put(RecordKey::new(RecordKind::PreKey, id_name(r.id)), bytes)
    }
    fn remove_pre_key(&mut self, id: u32) -> Result<()> {
        self.records
            .delete(RecordKey::new(RecordKind::PreKey, id_name(id)))
    }
}

impl SignedPreKeyStore for DeviceStore {
    fn get_signed_pre_key(&self, id: u32) -> Result<SignedPreKeyRecord> {
        let bytes = self
            .records
            .get(&RecordKey::new(RecordKind::SignedPreKey, id_name(id)))
            .ok_or(Error::UnknownSignedPreKey(id))?;
        decode_signed_pre_key(id, bytes).map(|(r, _)| r)
    }
    fn save_signed_pre_key(&mut self, r: SignedPreKeyRecord) -> Result<()> {
        let bytes = encode_signed_pre_key(&r, 0);
        self.records.put(
            RecordKey::new(RecordKind::SignedPreKey, id_name(r.id)),
            bytes,
        )
    }
    fn remove_signed_pre_key(&mut self, id: u32) -> Result<()> {
        self.records
            .delete(RecordKey::new(RecordKind::SignedPreKey, id_name(id)))
    }
}

impl SessionStore for DeviceStore {
    fn load_session(&self, a: &ProtocolAddress) -> Result<Option<SessionRecord>> {
        self.records
            .get(&RecordKey::new(RecordKind::Session, peer_name(a)))
            .map(SessionRecord::deserialize)
            .transpose()
    }
    fn store_session(&mut self, a: &ProtocolAddress, r: &SessionRecord) -> Result<()> {
        let bytes = r.serialize();
        if bytes.len() > self.limits.max_session_record_bytes {
            return Err(Error::LimitExceeded {
                what: "session record bytes",
                limit: self.limits.max_session_record_bytes,
            });
        }
        self.records
            .put(RecordKey::new(RecordKind::Session, peer_name(a)), bytes)
    }
}

#[cfg(test)]
#[allow(clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn peer_names_are_prefix_free_and_round_trip() {
        let a = peer_name(&ProtocolAddress::new("alice", 1));
        let b = peer_name(&ProtocolAddress::new("alice2", 1));
        assert!(!b.starts_with(&a));
        let mut with_suffix = a.clone();
        with_suffix.extend_from_slice(&[9, 9]);
        let (addr, rest) = split_peer_name(&with_suffix).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(addr, ProtocolAddress::new("alice", 1));
        assert_eq!(rest, &[9, 9]);
        assert!(split_peer_name(&a[..6]).is_err());
    }
}

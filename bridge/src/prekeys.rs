//! Prekeys and the bundle a peer fetches to start a session with us; on a
//! device, their publication: one-time prekeys handed out once each and
//! replenished in batches, signed prekeys rotated with a grace period.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prost::Message as _;
use rand_core::{CryptoRng, RngCore};

use crate::device_store::{
    decode_pre_key, decode_signed_pre_key, encode_pre_key, encode_signed_pre_key, id_name,
    DeviceStore,
};
use crate::error::{Error, Result};
use crate::keys::{IdentityKey, IdentityKeyPair, KeyPair, PublicKey, SIGNATURE_LEN};
use crate::records::{RecordKey, RecordKind};
use crate::store::{IdentityKeyStore, PreKeyStore, SignedPreKeyStore};

/// A one-time prekey.
#[derive(Clone, Debug)]
pub struct PreKeyRecord {
    /// Its id in the bundle (libsignal's are 24-bit).
    pub id: u32,
    /// The key pair; the private half is used once, then deleted.
    pub key_pair: KeyPair,
}

impl PreKeyRecord {
    /// A fresh random one-time prekey with this id.
    pub fn generate<R: RngCore + CryptoRng>(id: u32, rng: &mut R) -> Self {
        Self {
            id,
            key_pair: KeyPair::generate(rng),
        }
    }
}

/// A medium-term prekey, signed (XEdDSA) by the identity key over its
/// 33-byte serialized public key.
#[derive(Clone, Debug)]
pub struct SignedPreKeyRecord {
    /// Its id in the bundle.
    pub id: u32,
    /// When it was made, in milliseconds since the Unix epoch (drives
    /// rotation).
    pub timestamp: u64,
    /// The key pair.
    pub key_pair: KeyPair,
    /// The identity key's XEdDSA signature over the serialized public key.
    pub signature: [u8; SIGNATURE_LEN],
}

impl SignedPreKeyRecord {
    /// A fresh random signed prekey, signed by `identity` (the signature
    /// draws its nonce randomness from `rng` too).
    pub fn generate<R: RngCore + CryptoRng>(
        id: u32,
        timestamp: u64,
        identity: &IdentityKeyPair,
        rng: &mut R,
    ) -> Self {
        let key_pair = KeyPair::generate(rng);
        let signature = identity
            .private_key()
            .calculate_signature(&key_pair.public_key.serialize(), rng);
        Self {
            id,
            timestamp,
            key_pair,
            signature,
        }
    }
}

/// What a peer publishes so others can start sessions without it online.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PreKeyBundle {
    /// The publisher's registration id.
    pub registration_id: u32,
    /// The publisher's device id.
    pub device_id: u32,
    /// A one-time prekey (id, public key), if any was left to hand out.
    pub pre_key: Option<(u32, PublicKey)>,
    /// Id of the signed prekey.
    pub signed_pre_key_id: u32,
    /// The signed prekey's public key.
    pub signed_pre_key: PublicKey,
    /// The identity key's signature over `signed_pre_key` (64 bytes when
    /// valid; checked by [`PreKeyBundle::verify_signature`]).
    pub signed_pre_key_signature: Vec<u8>,
    /// The publisher's long-term identity key.
    pub identity_key: IdentityKey,
}

impl PreKeyBundle {
    /// The bundle publishing `signed` and, if given, the one-time `pre_key`.
    pub fn from_records(
        registration_id: u32,
        device_id: u32,
        identity_key: IdentityKey,
        signed: &SignedPreKeyRecord,
        pre_key: Option<&PreKeyRecord>,
    ) -> Self {
        Self {
            registration_id,
            device_id,
            pre_key: pre_key.map(|p| (p.id, p.key_pair.public_key)),
            signed_pre_key_id: signed.id,
            signed_pre_key: signed.key_pair.public_key,
            signed_pre_key_signature: signed.signature.to_vec(),
            identity_key,
        }
    }

    /// Checks the signed prekey's signature against the bundle's identity
    /// key: [`Error::BadSignature`] if it does not verify.
    /// [`crate::process_prekey_bundle`] calls it before using a bundle.
    pub fn verify_signature(&self) -> Result<()> {
        if self.identity_key.public_key().verify_signature(
            &self.signed_pre_key.serialize(),
            &self.signed_pre_key_signature,
        ) {
            Ok(())
        } else {
            Err(Error::BadSignature("signed prekey"))
        }
    }
}

/// libsignal's prekey ids are 24-bit ("medium") numbers.
const MAX_PRE_KEY_ID: u32 = 0x00ff_ffff;

fn next_pre_key_id(id: u32) -> u32 {
    if id >= MAX_PRE_KEY_ID {
        1
    } else {
        id + 1
    }
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[derive(Clone, PartialEq, prost::Message)]
struct PreKeyStateProto {
    #[prost(uint32, tag = "1")]
    next_one_time_id: u32,
    #[prost(uint32, tag = "2")]
    next_signed_id: u32,
    /// 0 before the first signed prekey.
    #[prost(uint32, tag = "3")]
    current_signed_id: u32,
}

fn state_key() -> RecordKey {
    RecordKey::new(RecordKind::PreKeyState, Vec::new())
}

fn id_of(name: &[u8]) -> Option<u32> {
    Some(u32::from_be_bytes(name.try_into().ok()?))
}

/// Prekey publication on a device: one-time prekeys handed out one per
/// bundle and replenished in batches, signed prekeys rotated with a grace
/// period. Call inside a transaction.
impl DeviceStore {
    fn prekey_state(&self) -> Result<PreKeyStateProto> {
        match self.records.get(&state_key()) {
            Some(b) => PreKeyStateProto::decode(b)
                .map_err(|e| crate::error::malformed("prekey state", e.to_string())),
            None => Ok(PreKeyStateProto {
                next_one_time_id: 1,
                next_signed_id: 1,
                current_signed_id: 0,
            }),
        }
    }

    fn save_prekey_state(&mut self, s: &PreKeyStateProto) -> Result<()> {
        self.records.put(state_key(), s.encode_to_vec())
    }

    /// A bundle for one new peer: the current signed prekey (rotated first
    /// when older than the rotation period) and a one-time prekey no one
    /// was given before.
    pub(crate) fn publish_bundle<R: RngCore + CryptoRng>(
        &mut self,
        now: SystemTime,
        rng: &mut R,
    ) -> Result<PreKeyBundle> {
        let signed = self.current_signed_pre_key(now, rng)?;
        let (pre_key_id, pre_key) = self.hand_out_one_time_pre_key(rng)?;
        let identity = self.identity_key_pair()?;
        Ok(PreKeyBundle {
            registration_id: self.local_registration_id()?,
            device_id: 1,
            pre_key: Some((pre_key_id, pre_key)),
            signed_pre_key_id: signed.id,
            signed_pre_key: signed.key_pair.public_key,
            signed_pre_key_signature: signed.signature.to_vec(),
            identity_key: *identity.identity_key(),
        })
    }

    fn current_signed_pre_key<R: RngCore + CryptoRng>(
        &mut self,
        now: SystemTime,
        rng: &mut R,
    ) -> Result<SignedPreKeyRecord> {
        let state = self.prekey_state()?;
        let now_ms = ms(now.duration_since(UNIX_EPOCH).unwrap_or_default());
        let rotation = ms(self.limits.signed_prekey_rotation);
        let current = match state.current_signed_id {
            0 => None,
            id => Some(self.get_signed_pre_key(id)?),
        };
        let record = match current {
            Some(c) if now_ms < c.timestamp.saturating_add(rotation) => c,
            _ => {
                let id = self.rotate_signed_pre_key(now, rng)?;
                self.get_signed_pre_key(id)?
            }
        };
        self.expire_signed_pre_keys(now_ms)?;
        Ok(record)
    }

    /// Makes a new signed prekey current; the previous one keeps accepting
    /// new sessions for the grace period. Returns the new id.
    pub(crate) fn rotate_signed_pre_key<R: RngCore + CryptoRng>(
        &mut self,
        now: SystemTime,
        rng: &mut R,
    ) -> Result<u32> {
        let mut state = self.prekey_state()?;
        let now_ms = ms(now.duration_since(UNIX_EPOCH).unwrap_or_default());
        let mut id = state.next_signed_id.max(1);
        while self.get_signed_pre_key(id).is_ok() {
            id = next_pre_key_id(id);
        }
        let identity = self.identity_key_pair()?;
        let record = SignedPreKeyRecord::generate(id, now_ms, &identity, rng);
        self.records.put(
            RecordKey::new(RecordKind::SignedPreKey, id_name(id)),
            encode_signed_pre_key(&record, 0),
        )?;
        if state.current_signed_id != 0 {
            if let Ok(old) = self.get_signed_pre_key(state.current_signed_id) {
                self.records.put(
                    RecordKey::new(RecordKind::SignedPreKey, id_name(old.id)),
                    encode_signed_pre_key(&old, now_ms.max(1)),
                )?;
            }
        }
        state.current_signed_id = id;
        state.next_signed_id = next_pre_key_id(id);
        self.save_prekey_state(&state)?;
        self.expire_signed_pre_keys(now_ms)?;
        Ok(id)
    }

    /// Drops replaced signed prekeys past their grace period, and the
    /// oldest replaced ones beyond the count limit.
    fn expire_signed_pre_keys(&mut self, now_ms: u64) -> Result<()> {
        let grace = ms(self.limits.signed_prekey_grace);
        let mut superseded = Vec::new();
        for (name, bytes) in self.records.scan(RecordKind::SignedPreKey, Vec::new()) {
            let Some(id) = id_of(name) else { continue };
            let (_, superseded_at) = decode_signed_pre_key(id, bytes)?;
            if superseded_at != 0 {
                superseded.push((superseded_at, id));
            }
        }
        superseded.sort_unstable();
        let keep = self.limits.max_signed_prekeys.saturating_sub(1);
        let excess = superseded.len().saturating_sub(keep);
        for (i, (at, id)) in superseded.into_iter().enumerate() {
            if i < excess || now_ms >= at.saturating_add(grace) {
                self.remove_signed_pre_key(id)?;
            }
        }
        Ok(())
    }

    /// The lowest-numbered one-time prekey not handed out yet, minting a
    /// batch when there is none; marked handed out.
    fn hand_out_one_time_pre_key<R: RngCore + CryptoRng>(
        &mut self,
        rng: &mut R,
    ) -> Result<(u32, PublicKey)> {
        let mut fresh = None;
        for (name, bytes) in self.records.scan(RecordKind::PreKey, Vec::new()) {
            let Some(id) = id_of(name) else { continue };
            let (record, handed_out) = decode_pre_key(id, bytes)?;
            if !handed_out {
                fresh = Some(record);
                break;
            }
        }
        let record = match fresh {
            Some(r) => r,
            None => self.mint_one_time_pre_keys(rng)?,
        };
        self.records.put(
            RecordKey::new(RecordKind::PreKey, id_name(record.id)),
            encode_pre_key(&record, true),
        )?;
        Ok((record.id, record.key_pair.public_key))
    }

    /// Mints a batch of one-time prekeys, first dropping the oldest handed
    /// out (and never used) ones to stay within the limit. Returns the
    /// first of the batch.
    fn mint_one_time_pre_keys<R: RngCore + CryptoRng>(
        &mut self,
        rng: &mut R,
    ) -> Result<PreKeyRecord> {
        let batch = self
            .limits
            .one_time_prekey_batch
            .clamp(1, self.limits.max_one_time_prekeys.max(1));
        let mut state = self.prekey_state()?;
        // Ids are handed out in increasing order (mod 2^24): the oldest
        // is the first after the next id to mint.
        let mut handed: Vec<u32> = self
            .records
            .scan(RecordKind::PreKey, Vec::new())
            .filter_map(|(name, _)| id_of(name))
            .collect();
        let next = state.next_one_time_id;
        handed.sort_by_key(|id| id.wrapping_sub(next) & MAX_PRE_KEY_ID);
        let excess = (handed.len() + batch).saturating_sub(self.limits.max_one_time_prekeys);
        for id in handed.into_iter().take(excess) {
            self.remove_pre_key(id)?;
        }
        let mut first = None;
        let mut id = state.next_one_time_id.max(1);
        for _ in 0..batch {
            while self.get_pre_key(id).is_ok() {
                id = next_pre_key_id(id);
            }
            let record = PreKeyRecord::generate(id, rng);
            self.save_pre_key(record.clone())?;
            first.get_or_insert(record);
            id = next_pre_key_id(id);
        }
        state.next_one_time_id = id;
        self.save_prekey_state(&state)?;
        first.ok_or_else(|| Error::Store("no prekey minted".into()))
    }
}

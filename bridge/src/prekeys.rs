//! Prekeys and the bundle a peer fetches to start a session with us.

use rand_core::{CryptoRng, RngCore};

use crate::error::{Error, Result};
use crate::keys::{IdentityKey, IdentityKeyPair, KeyPair, PublicKey, SIGNATURE_LEN};

/// A one-time prekey.
#[derive(Clone, Debug)]
pub struct PreKeyRecord {
    pub id: u32,
    pub key_pair: KeyPair,
}

impl PreKeyRecord {
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
    pub id: u32,
    pub timestamp: u64,
    pub key_pair: KeyPair,
    pub signature: [u8; SIGNATURE_LEN],
}

impl SignedPreKeyRecord {
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
    pub registration_id: u32,
    pub device_id: u32,
    pub pre_key: Option<(u32, PublicKey)>,
    pub signed_pre_key_id: u32,
    pub signed_pre_key: PublicKey,
    pub signed_pre_key_signature: Vec<u8>,
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

//! The key schedule of libsignal v3: X3DH's `WhisperText`, the root step
//! `WhisperRatchet`, the symmetric chain (HMAC 0x01 / 0x02) and
//! `WhisperMessageKeys`.

use hkdf::Hkdf;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::keys::{KeyPair, PublicKey};
use crate::work::{self, Op};

type HmacSha256 = Hmac<Sha256>;

const MESSAGE_KEY_SEED: u8 = 0x01;
const CHAIN_KEY_SEED: u8 = 0x02;

pub(crate) fn hmac_sha256(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    // HMAC accepts keys of any length, so this cannot fail.
    let mut mac = <HmacSha256 as Mac>::new_from_slice(key).unwrap_or_else(|_| unreachable!());
    for p in parts {
        mac.update(p);
    }
    mac.finalize().into_bytes().into()
}

fn hkdf_sha256<const N: usize>(salt: Option<&[u8]>, ikm: &[u8], info: &[u8]) -> [u8; N] {
    let mut out = [0u8; N];
    // N <= 255 * 32 for every caller, so expansion cannot fail.
    Hkdf::<Sha256>::new(salt, ikm)
        .expand(info, &mut out)
        .unwrap_or_else(|_| unreachable!());
    out
}

/// Output of X3DH: the first root key and chain key.
pub(crate) fn derive_initial_keys(shared_secrets: &[u8]) -> (RootKey, ChainKey) {
    let mut derived: [u8; 64] = hkdf_sha256(None, shared_secrets, b"WhisperText");
    let keys = split_root_chain(&derived);
    derived.zeroize();
    keys
}

fn split_root_chain(derived: &[u8; 64]) -> (RootKey, ChainKey) {
    let mut root = [0u8; 32];
    let mut chain = [0u8; 32];
    root.copy_from_slice(&derived[..32]);
    chain.copy_from_slice(&derived[32..]);
    (
        RootKey(root),
        ChainKey {
            key: chain,
            index: 0,
        },
    )
}

#[derive(Clone, Zeroize, ZeroizeOnDrop, PartialEq, Eq)]
pub struct RootKey(pub(crate) [u8; 32]);

impl RootKey {
    /// One DH ratchet step: `HKDF(salt = root, ikm = DH, "WhisperRatchet")`.
    pub(crate) fn create_chain(
        &self,
        their_ratchet_key: &PublicKey,
        our_ratchet_key: &KeyPair,
    ) -> (RootKey, ChainKey) {
        let shared = our_ratchet_key.private_key.agree(their_ratchet_key);
        let mut derived: [u8; 64] =
            hkdf_sha256(Some(&self.0), shared.as_bytes(), b"WhisperRatchet");
        let keys = split_root_chain(&derived);
        derived.zeroize();
        keys
    }
}

impl std::fmt::Debug for RootKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RootKey(<redacted>)")
    }
}

#[derive(Clone, Zeroize, ZeroizeOnDrop, PartialEq, Eq)]
pub struct ChainKey {
    pub(crate) key: [u8; 32],
    pub(crate) index: u32,
}

impl ChainKey {
    pub(crate) fn next(&self) -> ChainKey {
        work::count(Op::ChainStep);
        ChainKey {
            key: hmac_sha256(&self.key, &[&[CHAIN_KEY_SEED]]),
            index: self.index.wrapping_add(1),
        }
    }

    pub(crate) fn message_keys(&self) -> MessageKeys {
        work::count(Op::MessageKeys);
        let mut seed = hmac_sha256(&self.key, &[&[MESSAGE_KEY_SEED]]);
        let keys = MessageKeys::derive(&seed, self.index);
        seed.zeroize();
        keys
    }

    pub fn index(&self) -> u32 {
        self.index
    }
}

impl std::fmt::Debug for ChainKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChainKey")
            .field("index", &self.index)
            .finish_non_exhaustive()
    }
}

/// Per-message keys: AES-256 key, HMAC key and CBC IV (80 bytes of HKDF).
#[derive(Clone, Zeroize, ZeroizeOnDrop, PartialEq, Eq)]
pub struct MessageKeys {
    pub(crate) cipher_key: [u8; 32],
    pub(crate) mac_key: [u8; 32],
    pub(crate) iv: [u8; 16],
    pub(crate) counter: u32,
}

impl MessageKeys {
    fn derive(seed: &[u8; 32], counter: u32) -> Self {
        let mut okm: [u8; 80] = hkdf_sha256(None, seed, b"WhisperMessageKeys");
        let mut keys = MessageKeys {
            cipher_key: [0; 32],
            mac_key: [0; 32],
            iv: [0; 16],
            counter,
        };
        keys.cipher_key.copy_from_slice(&okm[..32]);
        keys.mac_key.copy_from_slice(&okm[32..64]);
        keys.iv.copy_from_slice(&okm[64..]);
        okm.zeroize();
        keys
    }
}

impl std::fmt::Debug for MessageKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MessageKeys")
            .field("counter", &self.counter)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// libsignal's own chain-key vector (ChainKeyTest.java / chain_key tests).
    #[test]
    fn chain_key_matches_libsignal_vector() {
        let seed: [u8; 32] =
            hex::decode("8ab72d6f4cc5ac0d387eaf463378ddb28edd07385b1cb01250c715982e7ad48f")
                .unwrap_or_default()
                .try_into()
                .unwrap_or([0; 32]);
        let ck = ChainKey {
            key: seed,
            index: 0,
        };
        let mk = ck.message_keys();
        assert_eq!(
            hex::encode(mk.cipher_key),
            "bf51e9d75e0e31031051f82a2491ffc084fa298b7793bd9db620056febf45217"
        );
        assert_eq!(
            hex::encode(mk.mac_key),
            "c6c77d6a73a354337a56435e34607dfe48e3ace14e77314dc6abc172e7a7030b"
        );
        assert_eq!(
            hex::encode(ck.next().key),
            "28e8f8fee54b801eef7c5cfb2f17f32c7b334485bbb70fac6ec10342a246d15d"
        );
        assert_eq!(ck.next().index, 1);
        assert_eq!(ck.next().message_keys().counter, 1);
    }
}

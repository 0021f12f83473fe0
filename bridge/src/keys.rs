//! Curve25519 keys as libsignal lays them out (public keys carry the 0x05
//! type byte) and XEdDSA signatures over them.

use curve25519_dalek::edwards::EdwardsPoint;
use curve25519_dalek::montgomery::MontgomeryPoint;
use curve25519_dalek::scalar::Scalar;
use rand_core::{CryptoRng, RngCore};
use sha2::{Digest, Sha512};
use subtle::ConstantTimeEq;
use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::error::{Error, Result};
use crate::work::{self, Op};

/// The type byte libsignal prefixes to serialized Curve25519 public keys.
pub const DJB_TYPE: u8 = 0x05;
/// Length in bytes of an XEdDSA signature (`R || s`, the Edwards sign bit
/// in the top bit of the last byte).
pub const SIGNATURE_LEN: usize = 64;

/// XEdDSA's nonce hash is the specification's `hash_1(X)`: SHA-512 of
/// `2^256 - 1 - 1` (32 bytes little-endian: 0xFE, then 31 bytes 0xFF)
/// followed by X, domain-separated from any other SHA-512 over the key.
/// libsignal and python-axolotl-curve25519 use the same prefix.
const XEDDSA_NONCE_PREFIX: [u8; 32] = {
    let mut prefix = [0xFFu8; 32];
    prefix[0] = 0xFE;
    prefix
};

/// A Curve25519 (Montgomery u) public key.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PublicKey([u8; 32]);

impl PublicKey {
    /// Parses `0x05 || u` (33 bytes). libsignal also ignores trailing bytes
    /// after the 33; we refuse them so one key has one encoding.
    pub fn deserialize(bytes: &[u8]) -> Result<Self> {
        match bytes {
            // X25519 ignores bit 255, so a set bit would give one key two
            // encodings; canonical encodings (u < p) never set it.
            [DJB_TYPE, rest @ ..] if rest.len() == 32 && rest[31] & 0x80 != 0 => {
                Err(Error::InvalidKey {
                    what: "public key",
                    reason: "non-canonical (bit 255 set)",
                })
            }
            [DJB_TYPE, rest @ ..] if rest.len() == 32 => {
                let mut k = [0u8; 32];
                k.copy_from_slice(rest);
                Ok(Self(k))
            }
            [] => Err(Error::InvalidKey {
                what: "public key",
                reason: "empty",
            }),
            [DJB_TYPE, ..] => Err(Error::InvalidKey {
                what: "public key",
                reason: "not 33 bytes",
            }),
            _ => Err(Error::InvalidKey {
                what: "public key",
                reason: "unknown key type byte",
            }),
        }
    }

    /// The 33-byte wire form, `0x05 || u`, as libsignal serializes it.
    pub fn serialize(&self) -> [u8; 33] {
        let mut out = [0u8; 33];
        out[0] = DJB_TYPE;
        out[1..].copy_from_slice(&self.0);
        out
    }

    /// The raw 32-byte Montgomery u-coordinate, without the type byte.
    pub fn public_key_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// A key from a raw 32-byte u-coordinate (no type byte). Unlike
    /// [`PublicKey::deserialize`] it does not check canonicity.
    pub fn from_public_key_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// Whether `signature` is a valid XEdDSA signature of `message` by this
    /// key; a signature of the wrong length or unreduced scalar is `false`.
    ///
    /// XEdDSA verification: the Edwards form of this key, with the sign bit
    /// the signer stored in the top bit of the signature's last byte.
    pub fn verify_signature(&self, message: &[u8], signature: &[u8]) -> bool {
        let Ok(signature) = <&[u8; SIGNATURE_LEN]>::try_from(signature) else {
            return false;
        };
        let sign_bit = (signature[63] & 0x80) >> 7;
        let Some(ed_public) = MontgomeryPoint(self.0).to_edwards(sign_bit) else {
            return false;
        };
        let ed_public_bytes = ed_public.compress();
        let mut cap_r = [0u8; 32];
        cap_r.copy_from_slice(&signature[..32]);
        let mut s = [0u8; 32];
        s.copy_from_slice(&signature[32..]);
        s[31] &= 0x7f;
        // s must be reduced (< 2^253 here, as in the reference verifier).
        if s[31] & 0xe0 != 0 {
            return false;
        }
        let mut hash = Sha512::new();
        hash.update(cap_r);
        hash.update(ed_public_bytes.as_bytes());
        hash.update(message);
        let h = Scalar::from_hash(hash);
        let check = EdwardsPoint::vartime_double_scalar_mul_basepoint(
            &h,
            &(-ed_public),
            &Scalar::from_bytes_mod_order(s),
        )
        .compress();
        bool::from(check.as_bytes().ct_eq(&cap_r))
    }
}

impl std::fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PublicKey(")?;
        for b in &self.0[..6] {
            write!(f, "{b:02x}")?;
        }
        write!(f, "..)")
    }
}

/// A clamped Curve25519 private scalar. Zeroized on drop, never printed.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct PrivateKey([u8; 32]);

impl PrivateKey {
    /// A fresh random key from `rng` (clamped).
    pub fn generate<R: RngCore + CryptoRng>(rng: &mut R) -> Self {
        let mut bytes = [0u8; 32];
        rng.fill_bytes(&mut bytes);
        let key = Self::from_bytes(bytes);
        bytes.zeroize();
        key
    }

    /// Clamps like libsignal does on deserialization, so a key has one
    /// scalar whichever way it was created.
    pub fn from_bytes(mut bytes: [u8; 32]) -> Self {
        bytes[0] &= 248;
        bytes[31] &= 127;
        bytes[31] |= 64;
        Self(bytes)
    }

    /// Reads a 32-byte scalar (clamped as by [`PrivateKey::from_bytes`]);
    /// any other length is [`Error::InvalidKey`].
    pub fn deserialize(bytes: &[u8]) -> Result<Self> {
        let arr: [u8; 32] = bytes.try_into().map_err(|_| Error::InvalidKey {
            what: "private key",
            reason: "not 32 bytes",
        })?;
        Ok(Self::from_bytes(arr))
    }

    /// The clamped 32-byte scalar. Secret: callers must not log it and
    /// should zeroize any copy.
    pub fn serialize(&self) -> &[u8; 32] {
        &self.0
    }

    /// The matching public key (one X25519 base-point multiplication).
    pub fn public_key(&self) -> PublicKey {
        work::count(Op::X25519);
        PublicKey(x25519_dalek::x25519(
            self.0,
            x25519_dalek::X25519_BASEPOINT_BYTES,
        ))
    }

    /// X25519 agreement with `their` key.
    pub(crate) fn agree(&self, their: &PublicKey) -> SharedSecret {
        work::count(Op::X25519);
        SharedSecret(x25519_dalek::x25519(self.0, their.0))
    }

    /// XEdDSA signing (Perrin 2016) in libsignal's variant: the Edwards
    /// public key's sign bit travels in the signature's top bit.
    pub fn calculate_signature<R: RngCore + CryptoRng>(
        &self,
        message: &[u8],
        rng: &mut R,
    ) -> [u8; SIGNATURE_LEN] {
        let mut random = [0u8; 64];
        rng.fill_bytes(&mut random);
        let a = Scalar::from_bytes_mod_order(self.0);
        let ed_public = EdwardsPoint::mul_base(&a).compress();
        let sign_bit = ed_public.as_bytes()[31] & 0x80;
        let mut hash1 = Sha512::new();
        hash1.update(XEDDSA_NONCE_PREFIX);
        hash1.update(self.0);
        hash1.update(message);
        hash1.update(random);
        random.zeroize();
        let mut r = Scalar::from_hash(hash1);
        let cap_r = EdwardsPoint::mul_base(&r).compress();
        let mut hash = Sha512::new();
        hash.update(cap_r.as_bytes());
        hash.update(ed_public.as_bytes());
        hash.update(message);
        let h = Scalar::from_hash(hash);
        let s = h * a + r;
        r.zeroize();
        let mut out = [0u8; SIGNATURE_LEN];
        out[..32].copy_from_slice(cap_r.as_bytes());
        out[32..].copy_from_slice(s.as_bytes());
        out[63] &= 0x7f;
        out[63] |= sign_bit;
        out
    }
}

impl std::fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PrivateKey(<redacted>)")
    }
}

/// Output of X25519; zeroized on drop.
#[derive(Zeroize, ZeroizeOnDrop)]
pub struct SharedSecret([u8; 32]);

impl SharedSecret {
    pub(crate) fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl std::fmt::Debug for SharedSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SharedSecret(<redacted>)")
    }
}

/// A Curve25519 key pair (ephemeral, ratchet, or prekey). Its `Debug`
/// shows only the public half.
#[derive(Clone)]
pub struct KeyPair {
    /// The public half.
    pub public_key: PublicKey,
    /// The private half (zeroized on drop).
    pub private_key: PrivateKey,
}

impl KeyPair {
    /// A fresh random pair from `rng`.
    pub fn generate<R: RngCore + CryptoRng>(rng: &mut R) -> Self {
        Self::from_private(PrivateKey::generate(rng))
    }

    /// The pair whose private half is `private_key`.
    pub fn from_private(private_key: PrivateKey) -> Self {
        Self {
            public_key: private_key.public_key(),
            private_key,
        }
    }
}

impl std::fmt::Debug for KeyPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyPair")
            .field("public_key", &self.public_key)
            .finish_non_exhaustive()
    }
}

/// A long-term identity public key.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct IdentityKey(pub PublicKey);

impl IdentityKey {
    /// Parses the 33-byte `0x05 || u` form (see [`PublicKey::deserialize`]).
    pub fn deserialize(bytes: &[u8]) -> Result<Self> {
        PublicKey::deserialize(bytes).map(Self)
    }
    /// The 33-byte wire form, `0x05 || u`.
    pub fn serialize(&self) -> [u8; 33] {
        self.0.serialize()
    }
    /// The underlying Curve25519 key.
    pub fn public_key(&self) -> &PublicKey {
        &self.0
    }
}

/// A device's long-term identity: it signs the signed prekey and enters
/// every X3DH agreement. `Debug` never shows the private key.
#[derive(Clone, Debug)]
pub struct IdentityKeyPair {
    identity_key: IdentityKey,
    private_key: PrivateKey,
}

impl IdentityKeyPair {
    /// A fresh random identity from `rng`.
    pub fn generate<R: RngCore + CryptoRng>(rng: &mut R) -> Self {
        Self::from_private(PrivateKey::generate(rng))
    }
    /// The identity whose private key is `private_key`.
    pub fn from_private(private_key: PrivateKey) -> Self {
        Self {
            identity_key: IdentityKey(private_key.public_key()),
            private_key,
        }
    }
    /// The public identity key peers trust.
    pub fn identity_key(&self) -> &IdentityKey {
        &self.identity_key
    }
    /// The public identity key as a plain Curve25519 key.
    pub fn public_key(&self) -> &PublicKey {
        &self.identity_key.0
    }
    /// The private identity key (secret).
    pub fn private_key(&self) -> &PrivateKey {
        &self.private_key
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha20Rng;

    #[test]
    fn xeddsa_sign_verify_and_reject_tamper() {
        let mut rng = ChaCha20Rng::seed_from_u64(7);
        for _ in 0..16 {
            let kp = KeyPair::generate(&mut rng);
            let msg = b"signed prekey public";
            let sig = kp.private_key.calculate_signature(msg, &mut rng);
            assert!(kp.public_key.verify_signature(msg, &sig));
            assert!(!kp.public_key.verify_signature(b"other", &sig));
            for i in [0usize, 31, 32, 63] {
                let mut bad = sig;
                bad[i] ^= 0x01;
                assert!(!kp.public_key.verify_signature(msg, &bad), "byte {i}");
            }
            let other = KeyPair::generate(&mut rng);
            assert!(!other.public_key.verify_signature(msg, &sig));
        }
    }

    #[test]
    fn public_key_encoding() {
        let mut rng = ChaCha20Rng::seed_from_u64(1);
        let kp = KeyPair::generate(&mut rng);
        let ser = kp.public_key.serialize();
        assert_eq!(ser[0], 0x05);
        assert_eq!(PublicKey::deserialize(&ser).ok(), Some(kp.public_key));
        assert!(PublicKey::deserialize(&ser[..32]).is_err());
        let mut wrong = ser;
        wrong[0] = 0x06;
        assert!(PublicKey::deserialize(&wrong).is_err());
        assert!(!format!("{:?}", kp).contains(&format!("{:?}", kp.private_key.serialize())));
        assert_eq!(format!("{:?}", kp.private_key), "PrivateKey(<redacted>)");
    }

    #[test]
    fn agreement_is_symmetric() {
        let mut rng = ChaCha20Rng::seed_from_u64(2);
        let a = KeyPair::generate(&mut rng);
        let b = KeyPair::generate(&mut rng);
        assert_eq!(
            a.private_key.agree(&b.public_key).as_bytes(),
            b.private_key.agree(&a.public_key).as_bytes()
        );
    }
}

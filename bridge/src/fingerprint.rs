//! Safety numbers: libsignal's displayable numeric fingerprint (version
//! 0; 5200 SHA-512 iterations, `hash = SHA-512(hash || key)` starting from
//! `hash = version || key || identifier`), 30 digits per side, the lower
//! side first so both users see the same 60 digits.

use sha2::{Digest, Sha512};

use crate::keys::IdentityKey;

const FINGERPRINT_VERSION: u16 = 0;
const ITERATIONS: usize = 5200;

fn side(identifier: &[u8], key: &IdentityKey) -> String {
    let key = key.serialize();
    let mut hash = Sha512::new();
    hash.update(FINGERPRINT_VERSION.to_be_bytes());
    hash.update(key);
    hash.update(identifier);
    hash.update(key);
    let mut digest = hash.finalize();
    for _ in 1..ITERATIONS {
        let mut h = Sha512::new();
        h.update(digest);
        h.update(key);
        digest = h.finalize();
    }
    (0..6)
        .map(|chunk| {
            let b = &digest[chunk * 5..chunk * 5 + 5];
            let v = b.iter().fold(0u64, |acc, &x| (acc << 8) | u64::from(x));
            format!("{:05}", v % 100_000)
        })
        .collect()
}

/// The 60-digit safety number between two identities.
pub fn safety_number(
    local_id: &[u8],
    local_key: &IdentityKey,
    remote_id: &[u8],
    remote_key: &IdentityKey,
) -> String {
    let local = side(local_id, local_key);
    let remote = side(remote_id, remote_key);
    if local <= remote {
        local + &remote
    } else {
        remote + &local
    }
}

#[cfg(test)]
#[allow(clippy::panic)]
mod tests {
    use super::*;
    use crate::keys::PublicKey;

    /// libsignal's `fingerprint.rs` test vectors (version 1 of the
    /// scannable format, same displayable digits; identifiers are the
    /// E.164 numbers, keys the 33-byte identity keys).
    #[test]
    fn matches_libsignal_vectors() {
        let alice = IdentityKey(
            PublicKey::deserialize(
                &hex::decode("0506863bc66d02b40d27b8d49ca7c09e9239236f9d7d25d6fcca5ce13c7064d868")
                    .unwrap_or_default(),
            )
            .unwrap_or_else(|e| panic!("{e}")),
        );
        let bob = IdentityKey(
            PublicKey::deserialize(
                &hex::decode("05f781b6fb32fed9ba1cf2de978d4d5da28dc34046ae814402b5c0dbd96fda907b")
                    .unwrap_or_default(),
            )
            .unwrap_or_else(|e| panic!("{e}")),
        );
        let a = safety_number(b"+14152222222", &alice, b"+14153333333", &bob);
        let b = safety_number(b"+14153333333", &bob, b"+14152222222", &alice);
        assert_eq!(a, b);
        assert_eq!(a.len(), 60);
        assert_eq!(
            a,
            "300354477692869396892869876765458257569162576843440918079131"
        );
    }
}

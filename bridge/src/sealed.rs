//! Sealing at rest: the application's [`StorageKey`], the AEAD
//! (XChaCha20-Poly1305) every stored byte goes through, the keyed tags
//! that name record files without revealing whose they are, and the file
//! operations the record directory ([`crate::record_dir`]) is built from.
//!
//! Two keys are derived from the storage key with HKDF-SHA256 (distinct
//! `info` strings): one for the AEAD, one for the HMAC that turns a
//! record's kind and name into its file tag. The caller supplies the
//! associated data: it is what binds a sealed blob to its place.

use std::fs;
use std::io::Write;
use std::path::Path;

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use hkdf::Hkdf;
use hmac::{Hmac, Mac};
use rand_core::{OsRng, RngCore};
use sha2::Sha256;
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use crate::error::{Error, Result};

pub(crate) const NONCE_LEN: usize = 24;
pub(crate) const TAG_LEN: usize = 16;
/// What sealing adds to a plaintext: the nonce and the Poly1305 tag.
pub(crate) const SEAL_OVERHEAD: usize = NONCE_LEN + 16;

/// The 32-byte key the application provides for data at rest.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct StorageKey([u8; 32]);

impl StorageKey {
    /// Wraps 32 key bytes the application keeps (e.g. in the platform
    /// keystore); the same bytes must be given to reopen the state
    /// directory.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }
}

impl std::fmt::Debug for StorageKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StorageKey(<redacted>)")
    }
}

/// The keys derived from a [`StorageKey`].
pub(crate) struct Sealer {
    aead: XChaCha20Poly1305,
    tag_key: Zeroizing<[u8; 32]>,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sealer(<redacted>)")
    }
}

impl Sealer {
    pub(crate) fn new(key: &StorageKey) -> Self {
        let hk = Hkdf::<Sha256>::new(None, &key.0);
        let mut aead_key = Zeroizing::new([0u8; 32]);
        let mut tag_key = Zeroizing::new([0u8; 32]);
        // Both lengths are far below HKDF-SHA256's 8160-byte limit.
        let _ = hk.expand(b"sotto store v2: record aead", aead_key.as_mut());
        let _ = hk.expand(b"sotto store v2: record file tags", tag_key.as_mut());
        Self {
            aead: XChaCha20Poly1305::new(aead_key.as_ref().into()),
            tag_key,
        }
    }

    /// `nonce || ciphertext+tag`.
    pub(crate) fn seal(&self, aad: &[u8], plaintext: &[u8]) -> Result<Vec<u8>> {
        let mut nonce = [0u8; NONCE_LEN];
        OsRng.fill_bytes(&mut nonce);
        let sealed = self
            .aead
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: plaintext,
                    aad,
                },
            )
            .map_err(|_| Error::Store("AEAD encryption failed".into()))?;
        let mut out = Vec::with_capacity(NONCE_LEN + sealed.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        Ok(out)
    }

    /// `None` when the blob was not sealed under this key with this
    /// associated data (wrong key, corrupted, or moved).
    pub(crate) fn open(&self, aad: &[u8], sealed: &[u8]) -> Option<Zeroizing<Vec<u8>>> {
        if sealed.len() < SEAL_OVERHEAD {
            return None;
        }
        let (nonce, body) = sealed.split_at(NONCE_LEN);
        self.aead
            .decrypt(XNonce::from_slice(nonce), Payload { msg: body, aad })
            .ok()
            .map(Zeroizing::new)
    }

    /// The file tag of a record: a keyed hash, so file names do not reveal
    /// peer addresses or conversation ids.
    pub(crate) fn tag(&self, kind: u8, name: &[u8]) -> [u8; TAG_LEN] {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(self.tag_key.as_ref())
            .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
        mac.update(&[kind]);
        mac.update(name);
        let full = mac.finalize().into_bytes();
        let mut tag = [0u8; TAG_LEN];
        tag.copy_from_slice(&full[..TAG_LEN]);
        tag
    }
}

pub(crate) fn io_error(path: &Path, source: std::io::Error) -> Error {
    Error::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Creates `path` (which must not exist), writes `bytes` and fsyncs it.
pub(crate) fn write_new_file(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(|e| io_error(path, e))?;
    f.write_all(bytes).map_err(|e| io_error(path, e))?;
    f.sync_all().map_err(|e| io_error(path, e))
}

/// Makes a directory's entries (creations, renames) durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_error(dir, e))
}

/// Replaces `path` by `bytes` atomically: a temp file that is fsynced,
/// renamed over the target, and the directory fsynced. A crash at any
/// point leaves either the old or the new content, never a mix.
pub(crate) fn replace_file(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{file_name}.tmp"));
    match fs::remove_file(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_error(&tmp, e)),
    }
    write_new_file(&tmp, bytes)?;
    fs::rename(&tmp, path).map_err(|e| io_error(path, e))?;
    sync_dir(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_blob_opens_only_with_its_key_and_associated_data() {
        let sealer = Sealer::new(&StorageKey::from_bytes([7; 32]));
        let blob = sealer.seal(b"place A", b"secret").unwrap_or_default();
        assert_eq!(
            sealer.open(b"place A", &blob).map(|p| p.to_vec()),
            Some(b"secret".to_vec())
        );
        assert!(sealer.open(b"place B", &blob).is_none());
        let other = Sealer::new(&StorageKey::from_bytes([8; 32]));
        assert!(other.open(b"place A", &blob).is_none());
        let mut flipped = blob.clone();
        flipped[NONCE_LEN + 1] ^= 1;
        assert!(sealer.open(b"place A", &flipped).is_none());
        assert!(sealer
            .open(b"place A", &blob[..SEAL_OVERHEAD - 1])
            .is_none());
        assert!(!blob.windows(6).any(|w| w == b"secret"));
    }

    #[test]
    fn tags_depend_on_key_kind_and_name() {
        let a = Sealer::new(&StorageKey::from_bytes([1; 32]));
        let b = Sealer::new(&StorageKey::from_bytes([2; 32]));
        assert_eq!(a.tag(1, b"alice.1"), a.tag(1, b"alice.1"));
        assert_ne!(a.tag(1, b"alice.1"), a.tag(2, b"alice.1"));
        assert_ne!(a.tag(1, b"alice.1"), a.tag(1, b"alice.2"));
        assert_ne!(a.tag(1, b"alice.1"), b.tag(1, b"alice.1"));
    }

    #[test]
    fn storage_key_debug_is_redacted() {
        let key = StorageKey::from_bytes([0xab; 32]);
        assert_eq!(format!("{key:?}"), "StorageKey(<redacted>)");
        assert!(!format!("{:?}", Sealer::new(&key)).contains("ab"));
    }
}

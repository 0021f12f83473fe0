//! Sealing at rest: the application's [`StorageKey`], the AEAD
//! (XChaCha20-Poly1305) every stored byte goes through, the keyed tags
//! that name record files without revealing whose they are, and the file
//! operations the record directory ([`crate::record_dir`]) is built from.
//!
//! Two keys are derived from the storage key with HKDF-SHA256 (distinct
//! `info` strings): one for the AEAD, one for the HMAC that turns a
//! record's kind and name into its file tag. The caller supplies the
//! associated data: it is what binds a sealed blob to its place.
//!
//! The same mechanism seals what the application keeps outside the state
//! directory (the engine's saved sessions): [`Sealer::for_purpose`] derives
//! keys of their own for each purpose, with a key check that tells a wrong
//! key from a damaged blob, and [`write_file_atomically`] writes the file.

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
pub const SEAL_OVERHEAD: usize = NONCE_LEN + 16;
/// Bytes of [`Sealer::key_check`].
pub const KEY_CHECK_LEN: usize = 16;

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

/// The keys derived from a [`StorageKey`] for one purpose: an AEAD key,
/// a key for file tags, and a key check (a value derived from the key that
/// is stored in the clear beside what was sealed, so opening with another
/// key is told apart from a damaged blob without revealing the key).
pub struct Sealer {
    aead: XChaCha20Poly1305,
    tag_key: Zeroizing<[u8; 32]>,
    key_check: [u8; KEY_CHECK_LEN],
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sealer(<redacted>)")
    }
}

impl Sealer {
    /// The state directory's keys.
    pub(crate) fn new(key: &StorageKey) -> Self {
        Self::derive(
            key,
            b"sotto store v2: record aead",
            b"sotto store v2: record file tags",
            b"sotto store v2: key check",
        )
    }

    /// Keys of their own for sealing `purpose`'s blobs (for example
    /// `"engine session"`) under the application's key: distinct from the
    /// state directory's and from every other purpose's.
    pub fn for_purpose(key: &StorageKey, purpose: &str) -> Self {
        let info = |what: &str| format!("sotto sealed blob v1: {purpose}: {what}").into_bytes();
        Self::derive(key, &info("aead"), &info("file tags"), &info("key check"))
    }

    fn derive(key: &StorageKey, aead_info: &[u8], tag_info: &[u8], check_info: &[u8]) -> Self {
        let hk = Hkdf::<Sha256>::new(None, &key.0);
        let mut aead_key = Zeroizing::new([0u8; 32]);
        let mut tag_key = Zeroizing::new([0u8; 32]);
        let mut key_check = [0u8; KEY_CHECK_LEN];
        // All lengths are far below HKDF-SHA256's 8160-byte limit.
        let _ = hk.expand(aead_info, aead_key.as_mut());
        let _ = hk.expand(tag_info, tag_key.as_mut());
        let _ = hk.expand(check_info, &mut key_check);
        Self {
            aead: XChaCha20Poly1305::new(aead_key.as_ref().into()),
            tag_key,
            key_check,
        }
    }

    /// A value derived from the key (one-way), to store in the clear
    /// beside sealed blobs: a blob whose stored check differs was sealed
    /// under another key.
    pub fn key_check(&self) -> [u8; KEY_CHECK_LEN] {
        self.key_check
    }

    /// Seals `plaintext` bound to `aad` (which is not stored): `nonce ||
    /// ciphertext+tag`, [`SEAL_OVERHEAD`] bytes longer than `plaintext`.
    pub fn seal(&self, aad: &[u8], plaintext: &[u8]) -> Result<Vec<u8>> {
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
    pub fn open(&self, aad: &[u8], sealed: &[u8]) -> Option<Zeroizing<Vec<u8>>> {
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
    pub fn tag(&self, kind: u8, name: &[u8]) -> [u8; TAG_LEN] {
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
pub fn write_file_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
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
    fn purposes_seal_apart_and_key_checks_tell_keys_apart() {
        let key = StorageKey::from_bytes([3; 32]);
        let sessions = Sealer::for_purpose(&key, "engine session");
        let other = Sealer::for_purpose(&key, "something else");
        let store = Sealer::new(&key);
        let blob = sessions.seal(b"aad", b"kv").unwrap_or_default();
        assert!(sessions.open(b"aad", &blob).is_some());
        assert!(other.open(b"aad", &blob).is_none());
        assert!(store.open(b"aad", &blob).is_none());
        assert_ne!(sessions.tag(0, b"c"), other.tag(0, b"c"));
        let again = Sealer::for_purpose(&key, "engine session");
        assert_eq!(sessions.key_check(), again.key_check());
        assert_ne!(sessions.key_check(), other.key_check());
        let wrong = Sealer::for_purpose(&StorageKey::from_bytes([4; 32]), "engine session");
        assert_ne!(sessions.key_check(), wrong.key_check());
    }

    #[test]
    fn storage_key_debug_is_redacted() {
        let key = StorageKey::from_bytes([0xab; 32]);
        assert_eq!(format!("{key:?}"), "StorageKey(<redacted>)");
        assert!(!format!("{:?}", Sealer::new(&key)).contains("ab"));
    }
}

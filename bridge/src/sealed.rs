//! Encrypted, atomically replaced snapshot files: `magic(6) || kind(1) ||
//! version(1) || nonce(24) || XChaCha20-Poly1305(snapshot)`, the header as
//! associated data. A write goes to a temp file that is fsynced, renamed
//! over the target, and the directory fsynced: a crash at any point leaves
//! either the old or the new snapshot, never a mix.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use rand_core::{OsRng, RngCore};
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use crate::error::{Error, Result};

const MAGIC: &[u8; 6] = b"SOTTO\x00";
const HEADER_LEN: usize = 8;
const NONCE_LEN: usize = 24;

/// The 32-byte key the application provides for data at rest.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct StorageKey([u8; 32]);

impl StorageKey {
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }
}

impl std::fmt::Debug for StorageKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StorageKey(<redacted>)")
    }
}

/// One sealed file of a given kind and snapshot version.
#[derive(Debug, Clone)]
pub(crate) struct SealedFile {
    path: PathBuf,
    key: StorageKey,
    header: [u8; HEADER_LEN],
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.display().to_string(),
        source,
    }
}

impl SealedFile {
    pub(crate) fn new(path: PathBuf, key: StorageKey, kind: u8, version: u8) -> Self {
        let mut header = [0u8; HEADER_LEN];
        header[..6].copy_from_slice(MAGIC);
        header[6] = kind;
        header[7] = version;
        Self { path, key, header }
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// `Ok(None)` when no snapshot was ever committed.
    pub(crate) fn load(&self) -> Result<Option<Zeroizing<Vec<u8>>>> {
        let bytes = match fs::read(&self.path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err(&self.path)(e)),
        };
        let path = || self.path.display().to_string();
        if bytes.len() < HEADER_LEN + NONCE_LEN
            || bytes[..6] != MAGIC[..]
            || bytes[6] != self.header[6]
        {
            return Err(Error::StoreDecrypt { path: path() });
        }
        if bytes[7] != self.header[7] {
            return Err(Error::SnapshotVersion {
                path: path(),
                version: bytes[7],
            });
        }
        let cipher = XChaCha20Poly1305::new((&self.key.0).into());
        let nonce = XNonce::from_slice(&bytes[HEADER_LEN..HEADER_LEN + NONCE_LEN]);
        let plain = cipher
            .decrypt(
                nonce,
                Payload {
                    msg: &bytes[HEADER_LEN + NONCE_LEN..],
                    aad: &self.header,
                },
            )
            .map_err(|_| Error::StoreDecrypt { path: path() })?;
        Ok(Some(Zeroizing::new(plain)))
    }

    pub(crate) fn store(&self, snapshot: &[u8]) -> Result<()> {
        let cipher = XChaCha20Poly1305::new((&self.key.0).into());
        let mut nonce = [0u8; NONCE_LEN];
        OsRng.fill_bytes(&mut nonce);
        let sealed = cipher
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: snapshot,
                    aad: &self.header,
                },
            )
            .map_err(|_| Error::Store("AEAD encryption failed".into()))?;
        let dir = self
            .path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let file_name = self
            .path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let tmp = dir.join(format!(".{file_name}.tmp"));
        {
            let mut f = fs::File::create(&tmp).map_err(io_err(&tmp))?;
            f.write_all(&self.header).map_err(io_err(&tmp))?;
            f.write_all(&nonce).map_err(io_err(&tmp))?;
            f.write_all(&sealed).map_err(io_err(&tmp))?;
            f.sync_all().map_err(io_err(&tmp))?;
        }
        fs::rename(&tmp, &self.path).map_err(io_err(&self.path))?;
        fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io_err(dir))?;
        Ok(())
    }
}

//! What a saved session is bound to: the SHA-256 of every byte the model
//! was loaded from (for a GGUF file, exactly `sha256sum` of the file; for
//! a model quantized at load, of the quantized image). A digest of the
//! header or of sampled tensors would let two files with the same shapes
//! and different weights pass for one another, and cached keys and values
//! are only valid for the weights that computed them.
//!
//! Hashing reads the whole mapped file (0.18 s for the 98 MB default
//! model on a shared 2-core machine), so it runs once per loaded model,
//! when the first session is saved or restored, not at load.

use sha2::{Digest, Sha256};
use sotto_models::Model;
use std::sync::{Arc, OnceLock};

/// The digest of one loaded model, computed on first use and shared by
/// every session opened from it.
pub struct ModelDigest {
    model: Arc<Model>,
    digest: OnceLock<[u8; 32]>,
}

impl std::fmt::Debug for ModelDigest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModelDigest")
            .field("computed", &self.digest.get().is_some())
            .finish()
    }
}

impl ModelDigest {
    pub(crate) fn new(model: Arc<Model>) -> Self {
        Self {
            model,
            digest: OnceLock::new(),
        }
    }

    /// SHA-256 of the bytes the model was read from (computed once).
    pub fn get(&self) -> [u8; 32] {
        *self.digest.get_or_init(|| {
            let mut hasher = Sha256::new();
            for bytes in self.model.gguf.source_bytes() {
                hasher.update(bytes);
            }
            hasher.finalize().into()
        })
    }
}

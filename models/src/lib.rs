//! sotto-models: what a model is.
//!
//! * [`gguf`]: a hardened, zero-copy GGUF v2/v3 reader (and a small writer).
//! * [`spec`]: [`DecoderSpec`], the one generic decoder description every
//!   backend executes.
//! * [`weights`]: [`DecoderWeights`], views of the tensors shaped for that spec.
//! * [`arch`]: the registry, one file per architecture family.
//! * [`tokenizer`]: the GGUF tokenizer, matching llama.cpp token for token.
//! * [`chat`]: chat templates rendered like Python jinja2.
//!
//! [`Model::load`] does all of it for one file.

// Tests assert by unwrapping; library code may not.
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

pub mod arch;
pub mod chat;
mod error;
pub mod gguf;
pub mod spec;
#[doc(hidden)]
pub mod testutil;
pub mod tokenizer;
pub mod weights;

use std::path::Path;
use std::sync::Arc;

pub use chat::{ChatMessage, ChatTemplate};
pub use error::{Error, Result};
pub use gguf::GgufFile;
pub use spec::DecoderSpec;
pub use tokenizer::Tokenizer;
pub use weights::{DecoderWeights, LayerWeights, Weight};

/// A loaded model: its description, weights (mapped, not copied), tokenizer
/// and chat template.
#[derive(Debug)]
pub struct Model {
    pub spec: DecoderSpec,
    pub weights: DecoderWeights,
    pub tokenizer: Tokenizer,
    pub template: ChatTemplate,
    pub gguf: Arc<GgufFile>,
}

impl Model {
    /// Opens and validates the GGUF model at `path`.
    pub fn load(path: impl AsRef<Path>) -> Result<Model> {
        Self::from_gguf(GgufFile::open(path)?)
    }

    /// Builds a model from an already parsed file.
    pub fn from_gguf(gguf: GgufFile) -> Result<Model> {
        let spec = arch::decoder_spec(&gguf)?;
        let weights = arch::decoder_weights(&gguf, &spec)?;
        let tokenizer = Tokenizer::from_gguf(&gguf)?;
        if tokenizer.vocab_size() != spec.vocab_size {
            return Err(Error::InvalidHyperParameter {
                key: format!("{}.vocab_size", spec.arch),
                reason: format!(
                    "{} differs from the tokenizer's {} tokens",
                    spec.vocab_size,
                    tokenizer.vocab_size()
                ),
            });
        }
        let template = ChatTemplate::from_gguf(&gguf, &tokenizer)?;
        Ok(Model {
            spec,
            weights,
            tokenizer,
            template,
            gguf: Arc::new(gguf),
        })
    }
}

//! sotto-models: what a model is.
//!
//! * [`gguf`]: a hardened, zero-copy GGUF v2/v3 reader (and a small writer).
//! * [`spec`]: [`DecoderSpec`], the one decoder description every executor
//!   walks (per-layer rope, attention variant, optional norms and scales).
//! * [`weights`]: [`DecoderWeights`], views of the tensors shaped for that
//!   description (linears with optional biases, fused tensors split at load).
//! * [`arch`]: the registry, one file per architecture family.
//! * [`tokenizer`]: the GGUF tokenizer, matching llama.cpp token for token.
//! * [`chat`]: chat templates rendered like Python jinja2.
//!
//! * [`lora`]: LoRA adapters (llama.cpp GGUF and PEFT), bound to a model,
//!   merged into its weights or applied by an executor at run time.
//! * Hugging Face folders (`config.json`, safetensors, `tokenizer.json`),
//!   read into the same description through a GGUF view of the folder.
//!
//! [`Model::load`] does all of it for one file or folder.

// Tests assert by unwrapping; library code may not.
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used, clippy::panic))]
#![warn(missing_docs)]

pub mod arch;
pub mod chat;
pub mod convert;
mod error;
pub mod gguf;
pub mod hf;
pub mod lora;
pub mod spec;
#[cfg(any(test, feature = "testutil"))]
#[doc(hidden)]
pub mod testutil;
pub mod tokenizer;
pub mod weights;

use std::path::Path;
use std::sync::Arc;

pub use chat::{ChatMessage, ChatTemplate};
pub use error::{Error, Result};
pub use gguf::{GgufFile, HugeAnon, MappedFile};
pub use lora::{LoraAdapter, LoraFormat, LoraTarget};
pub use spec::DecoderSpec;
pub use tokenizer::Tokenizer;
pub use weights::{DecoderWeights, LayerWeights, Linear, Weight};

/// A loaded model: its description, weights (mapped, not copied), tokenizer
/// and chat template.
#[derive(Debug)]
pub struct Model {
    /// What the decoder is (sizes, per-layer variants).
    pub spec: DecoderSpec,
    /// Views of its tensors in the mapped file.
    pub weights: DecoderWeights,
    /// The file's tokenizer.
    pub tokenizer: Tokenizer,
    /// The file's chat template (or the ChatML fallback; see
    /// [`ChatTemplate::is_fallback`]).
    pub template: ChatTemplate,
    /// The parsed, memory-mapped file the weights borrow from.
    pub gguf: Arc<GgufFile>,
}

impl Model {
    /// Opens and validates the model at `path`: a GGUF file, or a Hugging
    /// Face folder (`config.json`, `model.safetensors` or shards with
    /// `model.safetensors.index.json`, `tokenizer.json`, optional
    /// `tokenizer_config.json`), whose weights stay memory-mapped.
    pub fn load(path: impl AsRef<Path>) -> Result<Model> {
        Self::load_with_tokenizer_pending(path)?.ready()
    }

    /// [`Model::load`], returning while the tokenizer's encoding pipeline
    /// may still be building on a thread of its own (most of a load's
    /// time; see [`Tokenizer::from_gguf_in_background`]), so the caller
    /// can prepare a backend meanwhile. Call
    /// `model.tokenizer.wait_ready()` before the model counts as loaded:
    /// it reports a pipeline that could not be built (encoding waits too).
    pub fn load_with_tokenizer_pending(path: impl AsRef<Path>) -> Result<Model> {
        let path = path.as_ref();
        if path.is_dir() {
            let folder = hf::open(path)?;
            return Self::build(folder.gguf, folder.rope_style, Some(folder.tokenizer));
        }
        Self::build(GgufFile::open(path)?, None, None)
    }

    /// Builds a model from an already parsed file.
    pub fn from_gguf(gguf: GgufFile) -> Result<Model> {
        Self::build(gguf, None, None)?.ready()
    }

    /// This model once its tokenizer's pipeline is built.
    fn ready(self) -> Result<Model> {
        self.tokenizer.wait_ready()?;
        Ok(self)
    }

    /// The model of `gguf` (a file, or a folder's view with `rope_style`
    /// and its `tokenizer.json` pipeline), its tokenizer's pipeline
    /// perhaps still building.
    pub(crate) fn build(
        gguf: GgufFile,
        rope_style: Option<spec::RopeStyle>,
        hf_pipeline: Option<tokenizers::Tokenizer>,
    ) -> Result<Model> {
        // The tokenizer first: its pipeline builds on a thread of its own
        // while the rest is read.
        let tokenizer = match hf_pipeline {
            Some(p) => Tokenizer::from_hf_pipeline(&gguf, p)?,
            None => Tokenizer::from_gguf_in_background(&gguf)?,
        };
        let mut spec = arch::decoder_spec(&gguf)?;
        if let Some(style) = rope_style {
            spec.rope_style = style;
        }
        let weights = arch::decoder_weights(&gguf, &spec)?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use testutil::{tiny_model, TinyDims, TINY_ARCHITECTURES};

    #[test]
    fn tiny_models_load_whole() {
        for arch in TINY_ARCHITECTURES {
            let bytes = tiny_model(arch, TinyDims::default()).to_bytes();
            let m = Model::from_gguf(GgufFile::from_bytes(bytes).unwrap()).unwrap();
            assert_eq!(m.spec.arch, arch);
            assert_eq!(m.weights.layers.len(), 2);
            assert!(m.template.is_fallback());
            assert_eq!(m.tokenizer.eos_id(), Some(262));
            assert!(m.tokenizer.is_end_of_generation(262));
        }
    }

    /// The fuzz seeds written by llama.cpp's own GGUF writer (PyPI `gguf`,
    /// models/fuzz/make-corpus.py): every architecture with each tokenizer
    /// kind loads whole, and the truncated and lying ones are typed errors.
    #[test]
    fn fuzz_seed_models_written_by_pypi_gguf_load() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/model_load");
        let mut loaded = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            let result = Model::load(&path);
            if name.contains("truncated") || name.contains("block-count") {
                assert!(result.is_err(), "{name} loaded");
                continue;
            }
            let model = result.unwrap_or_else(|e| panic!("{name}: {e}"));
            assert!(
                name.starts_with(&model.spec.arch),
                "{name}: {}",
                model.spec.arch
            );
            let ids = model.tokenizer.encode("hello world", false).unwrap();
            assert!(!ids.is_empty(), "{name}");
            loaded += 1;
        }
        assert_eq!(loaded, 11, "valid seeds in {}", dir.display());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Random byte edits anywhere in a complete model file (header,
        /// hyper-parameters, vocabulary, merges, tensor table, data) give a
        /// model or a typed error, never a panic.
        #[test]
        fn mutated_models_never_panic(
            edits in proptest::collection::vec((any::<proptest::sample::Index>(), any::<u8>()), 1..6),
            arch in proptest::sample::select(TINY_ARCHITECTURES.to_vec()),
        ) {
            let mut bytes = tiny_model(arch, TinyDims::default()).to_bytes();
            for (at, value) in edits {
                let i = at.index(bytes.len());
                bytes[i] = value;
            }
            if let Ok(g) = GgufFile::from_bytes(bytes) {
                if let Ok(m) = Model::from_gguf(g) {
                    let ids = m.tokenizer.encode("hello <|im_end|> world", true).unwrap_or_default();
                    for id in ids {
                        prop_assert!((id as usize) < m.tokenizer.vocab_size());
                    }
                }
            }
        }
    }
}

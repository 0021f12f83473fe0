//! The candle reference backend: candle-transformers' quantized Llama
//! (`quantized_llama::ModelWeights::from_gguf`) on the same GGUF file the
//! CPU backend runs. It is an independent implementation of the same model,
//! used to cross-check outputs and as a benchmark baseline; it is not a
//! production path.
//!
//! candle keeps its KV cache inside the model (per layer, f32 tensors that
//! grow with every call), not in our [`KvCache`]. The mapping:
//! * [`Backend::new_cache`] returns a [`KvCache`] with no layers: it only
//!   tracks the length and capacity, and holds no memory;
//! * [`Backend::forward`] runs candle at `index_pos = cache.len()` and
//!   advances the cache by the tokens fed;
//! * candle cannot drop the tail of its cache, so when the cache was
//!   truncated (or a failed call left candle's state unknown) the next
//!   forward rebuilds candle's cache by re-running the kept prefix, whose
//!   tokens this backend remembers. That costs a prefill, and it is why one
//!   backend serves one cache at a time;
//! * candle's forward returns the last position's logits only, so
//!   [`LogitsFor::All`] runs the tokens one at a time (slow; for tests).
//!
//! Threads: candle sizes its CPU pool once per process from
//! `CANDLE_NUM_THREADS` (else `RAYON_NUM_THREADS`, else the core count), so
//! the thread count is a property of the process, checked at load.

use crate::backend::{Backend, LogitsFor};
use crate::error::{Error, Result};
use crate::kv_cache::KvCache;
use candle_core::quantized::gguf_file;
use candle_core::{Device, Tensor};
use candle_transformers::models::quantized_llama::{ModelWeights, MAX_SEQ_LEN};
use sotto_models::spec::DecoderSpec;
use std::path::Path;

fn candle_err(e: candle_core::Error) -> Error {
    Error::Backend {
        backend: "candle",
        reason: e.to_string(),
    }
}

/// The thread count candle will use, when the environment fixes it.
fn candle_threads_from_env() -> Option<usize> {
    ["CANDLE_NUM_THREADS", "RAYON_NUM_THREADS"]
        .iter()
        .find_map(|k| {
            std::env::var(k)
                .ok()
                .and_then(|v| v.parse::<usize>().ok())
                .filter(|&n| n > 0)
        })
}

/// candle-transformers' quantized Llama as a [`Backend`]
/// (Llama-family files only): a reference and a benchmark baseline.
pub struct CandleBackend {
    model: ModelWeights,
    spec: DecoderSpec,
    device: Device,
    /// Tokens at positions 0..history.len(), as last fed.
    history: Vec<u32>,
    /// How many leading `history` positions candle's internal cache holds.
    in_candle: usize,
    threads: Option<usize>,
}

impl std::fmt::Debug for CandleBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CandleBackend")
            .field("arch", &self.spec.arch)
            .field("positions", &self.in_candle)
            .field("threads", &self.threads)
            .finish()
    }
}

impl CandleBackend {
    /// Loads the GGUF model at `path` into candle (CPU). `threads` = 0
    /// accepts candle's per-process default; otherwise it must match
    /// `CANDLE_NUM_THREADS` (or `RAYON_NUM_THREADS`), which candle reads.
    pub fn load(path: impl AsRef<Path>, threads: usize) -> Result<Self> {
        let path = path.as_ref();
        let env_threads = candle_threads_from_env();
        if threads != 0 && env_threads != Some(threads) {
            return Err(Error::Backend {
                backend: "candle",
                reason: format!(
                    "candle's thread count is fixed per process by CANDLE_NUM_THREADS ({}); run with CANDLE_NUM_THREADS={threads} for {threads} threads",
                    env_threads.map_or_else(|| "unset".to_string(), |n| n.to_string())
                ),
            });
        }
        // Our own reader validates the file and gives the spec reports use.
        let spec = sotto_models::Model::load(path)?.spec;
        if spec.arch != "llama" {
            return Err(Error::Backend {
                backend: "candle",
                reason: format!(
                    "the candle baseline runs llama-architecture models, not {}",
                    spec.arch
                ),
            });
        }
        let mut file = std::fs::File::open(path).map_err(|e| Error::Backend {
            backend: "candle",
            reason: format!("{}: {e}", path.display()),
        })?;
        let content = gguf_file::Content::read(&mut file).map_err(candle_err)?;
        let device = Device::Cpu;
        let model = ModelWeights::from_gguf(content, &mut file, &device).map_err(candle_err)?;
        Ok(Self {
            model,
            spec,
            device,
            history: Vec::new(),
            in_candle: 0,
            threads: env_threads,
        })
    }

    /// Bytes candle's cache holds per position: keys and values of every
    /// layer, f32 on the CPU.
    pub fn kv_bytes_per_position(&self) -> usize {
        self.spec.n_layer
            * 2
            * self.spec.n_kv_head
            * self.spec.head_dim
            * std::mem::size_of::<f32>()
    }

    /// Runs `tokens` at `index_pos`; logits of the last one.
    fn run(&mut self, tokens: &[u32], index_pos: usize) -> Result<Vec<f32>> {
        let input = Tensor::new(tokens, &self.device)
            .and_then(|t| t.unsqueeze(0))
            .map_err(candle_err)?;
        let logits = self.model.forward(&input, index_pos).map_err(candle_err)?;
        logits
            .squeeze(0)
            .and_then(|l| l.to_vec1::<f32>())
            .map_err(candle_err)
    }

    /// Makes candle's cache hold exactly history[..len].
    fn sync_to(&mut self, len: usize) -> Result<()> {
        if self.in_candle == len {
            return Ok(());
        }
        self.model.clear_kv_cache();
        self.in_candle = 0;
        let prefix = self.history[..len].to_vec();
        if !prefix.is_empty() {
            self.run(&prefix, 0)?;
        }
        self.in_candle = len;
        Ok(())
    }

    fn forward_inner(
        &mut self,
        start: usize,
        tokens: &[u32],
        which: LogitsFor,
    ) -> Result<Vec<f32>> {
        self.sync_to(start)?;
        self.history.truncate(start);
        let logits = match which {
            LogitsFor::Last => self.run(tokens, start)?,
            LogitsFor::All => {
                let mut all = Vec::with_capacity(tokens.len() * self.spec.vocab_size);
                for (i, &t) in tokens.iter().enumerate() {
                    all.extend(self.run(&[t], start + i)?);
                }
                all
            }
        };
        self.history.extend_from_slice(tokens);
        self.in_candle = start + tokens.len();
        Ok(logits)
    }
}

impl Backend for CandleBackend {
    fn name(&self) -> &'static str {
        "candle"
    }

    fn spec(&self) -> &DecoderSpec {
        &self.spec
    }

    /// A length-only cache: candle holds the keys and values itself. Capped
    /// at candle's precomputed RoPE table.
    fn new_cache(&self, capacity: usize) -> Result<KvCache> {
        let capacity = capacity.min(self.spec.context_length).min(MAX_SEQ_LEN);
        // f16 types: no layer is ever allocated
        KvCache::new(
            0,
            self.spec.n_kv_head,
            self.spec.head_dim,
            capacity,
            Default::default(),
        )
    }

    fn forward(
        &mut self,
        cache: &mut KvCache,
        tokens: &[u32],
        which: LogitsFor,
    ) -> Result<Vec<f32>> {
        let start = crate::backend::check_forward(cache, tokens, self.spec.vocab_size)?;
        if start > self.history.len() {
            return Err(Error::KvCache(format!(
                "the cache holds {start} positions but candle was fed {}; candle keeps its own cache and cannot import another backend's",
                self.history.len()
            )));
        }
        match self.forward_inner(start, tokens, which) {
            Ok(logits) => {
                cache.advance(tokens.len())?;
                Ok(logits)
            }
            Err(e) => {
                // A failure may leave some layers' caches appended: forget
                // candle's state so the next call rebuilds it from history.
                self.model.clear_kv_cache();
                self.in_candle = 0;
                self.history.truncate(start);
                Err(e)
            }
        }
    }

    fn describe(&self) -> String {
        let threads = self
            .threads
            .map_or_else(|| "default".to_string(), |n| n.to_string());
        format!("candle-transformers quantized_llama (cpu, {threads} threads)")
    }
}

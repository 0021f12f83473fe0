//! [`HybridBackend`]: prefill on the exported graphs (an NPU through its EP,
//! where wide static matmuls pay off), decode on the CPU kernels (where one
//! token's matvecs are memory-bound and the NPU's fixed per-run cost does
//! not). Both write one engine [`KvCache`]: the graphs commit the prefilled
//! positions to it, the CPU backend reads them and appends decoded ones, and
//! the next prefill (the next chat turn) converts only those back.
//!
//! Which side runs a pass: more than one token, all fitting the graphs'
//! context, goes to the graphs; a single token, or a pass that would run
//! past the graphs' context, goes to the CPU. The cache itself may be
//! longer than the graphs' context: past it the CPU carries on alone.

use sotto_models::spec::DecoderSpec;

use super::decoder::OrtDecoder;
use crate::backend::{Backend, LogitsFor};
use crate::cpu::CpuBackend;
use crate::error::{Error, Result};
use crate::kv_cache::KvCache;

/// What ran where so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HybridCounts {
    /// Tokens prefilled through the graphs.
    pub graph_prefill: usize,
    /// Multi-token passes the CPU took (past the graphs' context).
    pub cpu_prefill: usize,
    /// Single tokens decoded on the CPU.
    pub cpu_decode: usize,
    /// Positions the graphs took over from the CPU's writes.
    pub handed_to_graphs: usize,
}

/// Prefill on exported graphs (the NPU), decode on the CPU kernels, one
/// engine [`KvCache`] between them: multi-token passes that fit the
/// graphs' context run on the graphs, single tokens and passes beyond the
/// graphs' context on the CPU. `Send`; a pass takes `&mut self`.
#[derive(Debug)]
pub struct HybridBackend {
    prefill: OrtDecoder,
    decode: CpuBackend,
    counts: HybridCounts,
}

impl HybridBackend {
    /// Pairs graphs and a CPU backend of the same model (their layer, head
    /// and vocabulary sizes must agree).
    pub fn new(prefill: OrtDecoder, decode: CpuBackend) -> Result<HybridBackend> {
        let (a, b) = (prefill.spec(), decode.spec());
        let shape = |s: &DecoderSpec| (s.n_layer, s.n_kv_head, s.head_dim, s.vocab_size);
        if shape(a) != shape(b) {
            return Err(Error::Backend {
                backend: "hybrid",
                reason: format!(
                    "graphs (n_layer, n_kv_head, head_dim, vocab) {:?} differ from the CPU model's {:?}",
                    shape(a),
                    shape(b)
                ),
            });
        }
        Ok(HybridBackend {
            prefill,
            decode,
            counts: HybridCounts::default(),
        })
    }

    /// What ran where since the backend was built.
    pub fn counts(&self) -> HybridCounts {
        self.counts
    }
    /// The prefill graphs.
    pub fn graphs(&self) -> &OrtDecoder {
        &self.prefill
    }
    /// The CPU decoder.
    pub fn cpu(&self) -> &CpuBackend {
        &self.decode
    }
}

impl Backend for HybridBackend {
    fn name(&self) -> &'static str {
        "hybrid"
    }

    fn spec(&self) -> &DecoderSpec {
        self.decode.spec()
    }

    /// Every position of every layer: the graphs exchange the cache.
    fn new_cache(&self, capacity: usize) -> Result<KvCache> {
        self.decode.new_linear_cache(capacity)
    }

    fn forward(
        &mut self,
        cache: &mut KvCache,
        tokens: &[u32],
        which: LogitsFor,
    ) -> Result<Vec<f32>> {
        let on_graphs = tokens.len() > 1 && cache.len() + tokens.len() <= self.prefill.context();
        if on_graphs {
            let logits = self.prefill.forward(cache, tokens, which)?;
            self.counts.graph_prefill += tokens.len();
            self.counts.handed_to_graphs += self.prefill.last_import();
            Ok(logits)
        } else {
            let logits = self.decode.forward(cache, tokens, which)?;
            if tokens.len() > 1 {
                self.counts.cpu_prefill += tokens.len();
            } else {
                self.counts.cpu_decode += 1;
            }
            Ok(logits)
        }
    }

    fn describe(&self) -> String {
        let c = self.counts;
        format!(
            "hybrid: prefill on {} up to position {}, decode on {}; so far {} tokens prefilled on the graphs, {} on the CPU, {} decoded on the CPU, {} positions handed back to the graphs | {}",
            self.prefill.name(),
            self.prefill.context(),
            self.decode.describe(),
            c.graph_prefill,
            c.cpu_prefill,
            c.cpu_decode,
            c.handed_to_graphs,
            self.prefill.describe(),
        )
    }
}

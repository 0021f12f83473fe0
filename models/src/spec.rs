//! The one decoder description every executor walks: the CPU backend runs
//! it with the kernels, the ONNX exporter emits it as a graph. An
//! architecture (see [`crate::arch`]) is only a way of filling it in from a
//! file's hyper-parameters; nothing downstream looks at the architecture name.
//!
//! The description is data: a [`DecoderSpec`] with one [`LayerSpec`] per
//! layer (its rope, its attention variant, which optional norms and scales
//! it has) and, beside it, the tensors of each layer
//! ([`crate::weights::LayerWeights`]: linears with optional biases, norm
//! gains, fused projections already split into row views at load). Per layer,
//! with `x` the residual stream (`[d_model]` per position):
//! ```text
//! h = attn_norm(x)                                    RMSNorm, eps = norm_eps
//! q = h·Wqᵀ (+bq)  [n_head·head_dim]   k, v = h·Wkᵀ (+bk), h·Wvᵀ (+bv)  [n_kv_head·head_dim]
//! if qk_norm:  q, k = RMSNorm per head(q), RMSNorm per head(k)
//! q, k = rope(q, k)                  layer.rope: base, scaling, factors, attn_factor
//! a = softmax(cap·tanh(q·kᵀ·scale / cap) [window]) · v        (GQA: n_head / n_kv_head)
//! a = a·Woᵀ (+bo);  if post_attention_norm: a = RMSNorm(a);  a *= residual_scale;  x += a
//! h = ffn_norm(x);  f = (act(h·Wgateᵀ (+b)) ⊙ (h·Wupᵀ (+b)))·Wdownᵀ (+b)
//! if post_ffn_norm: f = RMSNorm(f);  f *= residual_scale;  x += f
//! ```
//! with `x = embedding row · embed_scale` on the way in and
//! `logits = cap·tanh((output_norm(x)·Woutᵀ (+b)) · logit_scale / cap)` on the
//! way out. Absent options are identities.

/// Gated feed-forward activation: `act(gate) * up`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// SwiGLU: `silu(gate) * up` (Llama, Qwen, Phi-3, Granite).
    SiluGlu,
    /// GeGLU with the tanh approximation of GELU (Gemma family).
    GeluTanhGlu,
}

/// How rotary embedding pairs dimensions: `Interleaved` is ggml rope mode 0
/// (llama and granite GGUFs, whose Q/K rows llama.cpp's converter permuted
/// to match), `NeoX` mode 2 (Qwen, Phi-3, Gemma). The kernels' type, so
/// backends pass it through.
pub use sotto_kernels::ops::RopeStyle;

/// Rotary frequency scaling for long contexts.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RopeScaling {
    /// Positions and frequencies are used as they are.
    None,
    /// Positions divided by `factor` (ggml `freq_scale = 1/factor`).
    Linear {
        /// How many times the trained context the positions are stretched
        /// over (> 0).
        factor: f32,
    },
    /// Llama 3.1 wavelength-dependent scaling of the inverse frequencies,
    /// when a converter wrote its parameters as keys (llama.cpp's writes a
    /// `rope_freqs` tensor instead: [`RopeFactors::Fixed`]).
    Llama3 {
        /// Divisor of the frequencies whose wavelength exceeds
        /// `original_context / low_freq_factor`.
        factor: f32,
        /// Wavelengths above `original_context / low_freq_factor` are
        /// divided by `factor` in full.
        low_freq_factor: f32,
        /// Wavelengths below `original_context / high_freq_factor` are kept;
        /// those between the two bounds are blended smoothly.
        high_freq_factor: f32,
        /// The context length, in tokens, the model was pre-trained with.
        original_context: usize,
    },
}

/// Per-pair divisors of the rope frequencies stored in the file as tensors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RopeFactors {
    /// No frequency-divisor tensors.
    None,
    /// `rope_freqs.weight` (Llama 3.1+), always applied.
    Fixed,
    /// Phi-3 `longrope`/`su`: `rope_factors_short.weight` while the KV cache
    /// holds at most `original_context` positions, `rope_factors_long.weight`
    /// beyond (llama.cpp chooses by the context size, not the position).
    ShortLong {
        /// The pre-training context length, in tokens, at which the long
        /// factors take over.
        original_context: usize,
    },
}

/// The rotary embedding of one layer. Style and rotated width are the
/// decoder's ([`DecoderSpec::rope_style`], [`DecoderSpec::n_rot`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RopeSpec {
    /// Base of the inverse frequencies (`freq_base`).
    pub theta: f32,
    /// How positions are scaled for long contexts.
    pub scaling: RopeScaling,
    /// Per-pair frequency divisors, if any.
    pub factors: RopeFactors,
    /// Multiplies cos and sin, so `q·k` grows by its square (ggml's
    /// `attn_factor`; Phi-3 long-context models store it as
    /// `rope.scaling.attn_factor`). 1 for every other family.
    pub attn_factor: f32,
}

impl RopeSpec {
    /// A plain rope of base `theta`.
    pub fn plain(theta: f32) -> Self {
        RopeSpec {
            theta,
            scaling: RopeScaling::None,
            factors: RopeFactors::None,
            attn_factor: 1.0,
        }
    }

    /// Inverse frequencies of the `n_rot / 2` rotated pairs, scaling
    /// included and file factors not (see
    /// `DecoderWeights::rope_inv_freqs`), in f64 so every backend builds
    /// the same angles.
    pub fn inv_freqs(&self, n_rot: usize) -> Vec<f64> {
        (0..n_rot / 2)
            .map(|i| {
                let base = 1.0 / (self.theta as f64).powf((2 * i) as f64 / n_rot as f64);
                match self.scaling {
                    RopeScaling::None => base,
                    RopeScaling::Linear { factor } => base / factor as f64,
                    RopeScaling::Llama3 {
                        factor,
                        low_freq_factor,
                        high_freq_factor,
                        original_context,
                    } => llama3_scale(
                        base,
                        factor as f64,
                        low_freq_factor as f64,
                        high_freq_factor as f64,
                        original_context as f64,
                    ),
                }
            })
            .collect()
    }

    /// Whether a KV cache of `capacity` positions reads the long factors.
    pub fn uses_long_factors(&self, capacity: usize) -> bool {
        matches!(self.factors, RopeFactors::ShortLong { original_context } if capacity > original_context)
    }
}

/// Llama 3.1 rope scaling: long wavelengths slowed by `factor`, short ones
/// kept, a smooth blend in between (as in Meta's reference and llama.cpp's
/// `rope_freqs` tensor).
fn llama3_scale(freq: f64, factor: f64, low: f64, high: f64, original_context: f64) -> f64 {
    let low_wavelen = original_context / low;
    let high_wavelen = original_context / high;
    let wavelen = 2.0 * std::f64::consts::PI / freq;
    if wavelen < high_wavelen {
        freq
    } else if wavelen > low_wavelen {
        freq / factor
    } else {
        let smooth = (original_context / wavelen - low) / (high - low);
        (1.0 - smooth) * freq / factor + smooth * freq
    }
}

/// The attention variant of one layer.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AttentionSpec {
    /// Multiplies `q·k` (usually `1/sqrt(head_dim)`).
    pub scale: f32,
    /// `cap * tanh(score / cap)` after scaling (Gemma 2).
    pub softcap: Option<f32>,
    /// A query at position `p` sees keys at positions `> p - window` only.
    pub window: Option<usize>,
}

/// One transformer block: everything in which layers of one model may differ.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LayerSpec {
    /// This layer's rotary embedding.
    pub rope: RopeSpec,
    /// This layer's attention variant.
    pub attention: AttentionSpec,
    /// RMSNorm over each head of Q and K before rope (Gemma 3, Qwen 3).
    pub qk_norm: bool,
    /// RMSNorm on the attention output before the residual add (Gemma 2/3).
    pub post_attention_norm: bool,
    /// RMSNorm on the FFN output before the residual add (Gemma 2/3).
    pub post_ffn_norm: bool,
    /// Multiplies the attention and FFN outputs before each residual add (Granite).
    pub residual_scale: Option<f32>,
}

/// A decoder-only transformer, described as data.
#[derive(Debug, Clone, PartialEq)]
pub struct DecoderSpec {
    /// `general.architecture` as found in the file.
    pub arch: String,
    /// `general.name`, if present.
    pub name: Option<String>,
    /// Transformer blocks.
    pub n_layer: usize,
    /// Width of the residual stream (embedding length).
    pub d_model: usize,
    /// Query heads.
    pub n_head: usize,
    /// Key/value heads (fewer than `n_head` for grouped-query attention).
    pub n_kv_head: usize,
    /// Elements per head.
    pub head_dim: usize,
    /// Hidden width of the feed-forward block.
    pub ffn_dim: usize,
    /// Tokens in the vocabulary (rows of the embedding and output).
    pub vocab_size: usize,
    /// Training context length.
    pub context_length: usize,
    /// Epsilon of every RMSNorm.
    pub norm_eps: f32,
    /// The feed-forward gate's activation.
    pub activation: Activation,
    /// How rope pairs the dimensions it rotates.
    pub rope_style: RopeStyle,
    /// Number of leading dimensions of each head that are rotated.
    pub n_rot: usize,
    /// One entry per layer.
    pub layers: Vec<LayerSpec>,
    /// `output` shares `token_embd`'s data.
    pub tied_embeddings: bool,
    /// Multiplier applied to embedding rows (Gemma: `sqrt(d_model)`, Granite).
    pub embed_scale: Option<f32>,
    /// Multiplier of the output logits (Granite: `1 / logit_scale`).
    pub logit_scale: Option<f32>,
    /// `cap * tanh(logit / cap)` on the output logits (Gemma 2).
    pub final_logit_softcap: Option<f32>,
}

impl DecoderSpec {
    /// Width of the concatenated query heads.
    pub fn q_dim(&self) -> usize {
        self.n_head * self.head_dim
    }
    /// Width of the concatenated key (or value) heads.
    pub fn kv_dim(&self) -> usize {
        self.n_kv_head * self.head_dim
    }
    /// Query heads sharing one KV head.
    pub fn gqa_group(&self) -> usize {
        self.n_head / self.n_kv_head.max(1)
    }

    /// The distinct ropes of the layers, in order of first use, and for each
    /// layer the index of its own: what a backend builds tables for.
    pub fn distinct_ropes(&self) -> (Vec<RopeSpec>, Vec<usize>) {
        let mut ropes: Vec<RopeSpec> = Vec::new();
        let index = self
            .layers
            .iter()
            .map(|l| match ropes.iter().position(|r| *r == l.rope) {
                Some(i) => i,
                None => {
                    ropes.push(l.rope);
                    ropes.len() - 1
                }
            })
            .collect();
        (ropes, index)
    }

    /// The variants in use, in one line (for `sotto inspect` and logs).
    pub fn features(&self) -> String {
        let mut f = vec![
            format!("{:?}", self.activation),
            format!("rope {:?}/{}", self.rope_style, self.n_rot),
        ];
        let (ropes, _) = self.distinct_ropes();
        for r in &ropes {
            let mut s = format!("base {}", r.theta);
            if r.scaling != RopeScaling::None {
                s += &format!(" {:?}", r.scaling);
            }
            if r.factors != RopeFactors::None {
                s += &format!(" factors {:?}", r.factors);
            }
            if r.attn_factor != 1.0 {
                s += &format!(" attn_factor {}", r.attn_factor);
            }
            f.push(s);
        }
        let windows: Vec<String> = self
            .layers
            .iter()
            .map(|l| l.attention.window.map_or("-".into(), |w| w.to_string()))
            .collect();
        if self.layers.iter().any(|l| l.attention.window.is_some()) {
            f.push(format!("window per layer [{}]", windows.join(",")));
        }
        let any = |p: &dyn Fn(&LayerSpec) -> bool| self.layers.iter().any(p);
        if any(&|l| l.qk_norm) {
            f.push("qk_norm".into());
        }
        if any(&|l| l.post_attention_norm || l.post_ffn_norm) {
            f.push("post_norms".into());
        }
        if let Some(l) = self.layers.first() {
            f.push(format!("attn scale {}", l.attention.scale));
            if let Some(c) = l.attention.softcap {
                f.push(format!("attn softcap {c}"));
            }
            if let Some(r) = l.residual_scale {
                f.push(format!("residual scale {r}"));
            }
        }
        if let Some(s) = self.embed_scale {
            f.push(format!("embed scale {s}"));
        }
        if let Some(s) = self.logit_scale {
            f.push(format!("logit scale {s}"));
        }
        if let Some(c) = self.final_logit_softcap {
            f.push(format!("final softcap {c}"));
        }
        if self.tied_embeddings {
            f.push("tied embeddings".into());
        }
        f.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inv_freqs_follow_theta_and_linear_scaling() {
        let global = RopeSpec {
            scaling: RopeScaling::Linear { factor: 8.0 },
            ..RopeSpec::plain(1_000_000.0)
        };
        let local = RopeSpec::plain(10_000.0);
        let (g, l) = (global.inv_freqs(8), local.inv_freqs(8));
        assert_eq!(g.len(), 4);
        assert!((g[0] - 1.0 / 8.0).abs() < 1e-12);
        assert!((l[0] - 1.0).abs() < 1e-12);
        // theta^(-2/8) = 10000^(-0.25) = 0.1 on the unscaled local rope
        assert!((l[1] - 0.1).abs() < 1e-12);
        assert!((g[1] - 1e6f64.powf(-0.25) / 8.0).abs() < 1e-12);
    }

    #[test]
    fn llama3_scaling_keeps_high_and_slows_low_frequencies() {
        let rope = RopeSpec {
            scaling: RopeScaling::Llama3 {
                factor: 8.0,
                low_freq_factor: 1.0,
                high_freq_factor: 4.0,
                original_context: 8192,
            },
            ..RopeSpec::plain(500_000.0)
        };
        let (s, u) = (
            rope.inv_freqs(128),
            RopeSpec::plain(500_000.0).inv_freqs(128),
        );
        assert!((s[0] - u[0]).abs() < 1e-15, "highest frequency unchanged");
        let last = s.len() - 1;
        assert!(
            (s[last] - u[last] / 8.0).abs() < 1e-18,
            "lowest slowed by factor"
        );
        for i in 0..s.len() {
            assert!(s[i] <= u[i] + 1e-15 && s[i] >= u[i] / 8.0 - 1e-18);
        }
    }

    #[test]
    fn long_factors_start_past_the_original_context() {
        let rope = RopeSpec {
            factors: RopeFactors::ShortLong {
                original_context: 4096,
            },
            ..RopeSpec::plain(10_000.0)
        };
        assert!(!rope.uses_long_factors(4096));
        assert!(rope.uses_long_factors(4097));
        assert!(!RopeSpec::plain(1.0).uses_long_factors(1 << 20));
    }
}

//! The one generic decoder description every backend executes: the CPU
//! backend runs it, the ONNX exporter walks it. Architectures (see
//! [`crate::arch`]) differ only in how they fill this struct in; nothing
//! downstream branches on the architecture name.
//!
//! Per layer, with `x` the residual stream (`[d_model]` per position):
//! ```text
//! h = attn_norm(x)                        RMSNorm, eps = norm_eps
//! q = h·Wq  [n_head·head_dim]   k = h·Wk, v = h·Wv  [n_kv_head·head_dim]
//! if qk_norm: q, k = per-head RMSNorm(q), RMSNorm(k)
//! q, k = rope(q, k)                       theta = local_theta on sliding layers
//! a = softmax(q·kᵀ·attn_scale [softcap] [window]) · v    (GQA: n_head / n_kv_head)
//! a = a·Wo;  if post_norms: a = post_attention_norm(a);  x += a
//! h = ffn_norm(x);  f = (act(h·Wgate) ⊙ h·Wup)·Wdown
//! if post_norms: f = post_ffw_norm(f);  x += f
//! ```
//! then `logits = output_norm(x)·Woutᵀ` (optionally soft-capped), with the
//! embedding row scaled by `embed_scale` on the way in.

/// Gated feed-forward activation: `act(gate) * up`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// SwiGLU: `silu(gate) * up` (Llama family).
    SiluGlu,
    /// GeGLU with the tanh approximation of GELU (Gemma family).
    GeluTanhGlu,
}

/// How rotary embedding pairs dimensions: `Interleaved` is ggml rope mode 0
/// (llama GGUFs, whose Q/K rows llama.cpp's converter permuted to match),
/// `NeoX` mode 2 (Gemma 3). The kernels' type, so backends pass it through.
pub use sotto_kernels::ops::RopeStyle;

/// Rotary frequency scaling for long contexts.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RopeScaling {
    None,
    /// Positions divided by `factor` (ggml `freq_scale = 1/factor`).
    Linear {
        factor: f32,
    },
    /// Llama 3.1 wavelength-dependent scaling of the inverse frequencies.
    Llama3 {
        factor: f32,
        low_freq_factor: f32,
        high_freq_factor: f32,
        original_context: usize,
    },
}

/// Rotary position embedding parameters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RopeSpec {
    /// Base of the inverse frequencies (`freq_base`).
    pub theta: f32,
    /// Base used on sliding-window layers when it differs (Gemma 3: 10 000).
    pub local_theta: Option<f32>,
    pub style: RopeStyle,
    /// Number of leading dimensions of each head that are rotated.
    pub n_rot: usize,
    /// Scaling applied on global layers (sliding layers are never scaled).
    pub scaling: RopeScaling,
}

impl RopeSpec {
    /// ggml's `freq_scale`: the position multiplier of linear scaling
    /// (`1 / factor`), 1 otherwise. Llama 3 scaling is not a single scale;
    /// backends that support it use [`inv_freqs`](Self::inv_freqs) (or
    /// `DecoderWeights::rope_inv_freqs`, which also applies `rope_freqs`).
    pub fn freq_scale(&self) -> f32 {
        match self.scaling {
            RopeScaling::Linear { factor } => 1.0 / factor,
            RopeScaling::None | RopeScaling::Llama3 { .. } => 1.0,
        }
    }

    /// Inverse frequencies for the `n_rot / 2` rotated pairs of a layer,
    /// scaling included, so every backend computes the same angles.
    pub fn inv_freqs(&self, sliding: bool) -> Vec<f32> {
        let theta = if sliding {
            self.local_theta.unwrap_or(self.theta)
        } else {
            self.theta
        };
        let half = self.n_rot / 2;
        let scaling = if sliding {
            RopeScaling::None
        } else {
            self.scaling
        };
        (0..half)
            .map(|i| {
                let base = 1.0 / (theta as f64).powf((2 * i) as f64 / self.n_rot as f64);
                let f = match scaling {
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
                };
                f as f32
            })
            .collect()
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

/// A decoder-only transformer, described generically.
#[derive(Debug, Clone, PartialEq)]
pub struct DecoderSpec {
    /// `general.architecture` as found in the file.
    pub arch: String,
    /// `general.name`, if present.
    pub name: Option<String>,
    pub n_layer: usize,
    pub d_model: usize,
    pub n_head: usize,
    pub n_kv_head: usize,
    pub head_dim: usize,
    pub ffn_dim: usize,
    pub vocab_size: usize,
    /// Training context length.
    pub context_length: usize,
    pub norm_eps: f32,
    pub activation: Activation,
    pub rope: RopeSpec,
    /// RMSNorm over each head of Q and K before rope (Gemma 3, Qwen 3).
    pub qk_norm: bool,
    /// RMSNorm on the attention and FFN outputs before the residual add (Gemma 2/3).
    pub post_norms: bool,
    /// Window size of sliding-window layers.
    pub sliding_window: Option<usize>,
    /// Per layer: uses the sliding window (and `rope.local_theta`).
    pub layer_is_sliding: Vec<bool>,
    /// `output` shares `token_embd`'s data.
    pub tied_embeddings: bool,
    /// Multiplier applied to embedding rows (Gemma: `sqrt(d_model)`).
    pub embed_scale: Option<f32>,
    /// Scale of `q·kᵀ` (usually `1/sqrt(head_dim)`).
    pub attn_scale: f32,
    /// `cap * tanh(logit / cap)` on attention scores.
    pub attn_logit_softcap: Option<f32>,
    /// `cap * tanh(logit / cap)` on output logits.
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
    /// Whether layer `layer` uses the sliding window.
    pub fn is_sliding(&self, layer: usize) -> bool {
        self.layer_is_sliding.get(layer).copied().unwrap_or(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inv_freqs_follow_theta_and_local_theta() {
        let rope = RopeSpec {
            theta: 1_000_000.0,
            local_theta: Some(10_000.0),
            style: RopeStyle::NeoX,
            n_rot: 8,
            scaling: RopeScaling::Linear { factor: 8.0 },
        };
        let global = rope.inv_freqs(false);
        let local = rope.inv_freqs(true);
        assert_eq!(global.len(), 4);
        assert!((global[0] - 1.0 / 8.0).abs() < 1e-7);
        assert!((local[0] - 1.0).abs() < 1e-7);
        // theta^(-2/8) = 10000^(-0.25) = 0.1 on the unscaled local layer
        assert!((local[1] - 0.1).abs() < 1e-6);
        assert!((global[1] - 1_000_000f32.powf(-0.25) / 8.0).abs() < 1e-7);
        assert_eq!(rope.freq_scale(), 0.125);
    }

    #[test]
    fn llama3_scaling_keeps_high_and_slows_low_frequencies() {
        let rope = RopeSpec {
            theta: 500_000.0,
            local_theta: None,
            style: RopeStyle::Interleaved,
            n_rot: 128,
            scaling: RopeScaling::Llama3 {
                factor: 8.0,
                low_freq_factor: 1.0,
                high_freq_factor: 4.0,
                original_context: 8192,
            },
        };
        let unscaled = RopeSpec {
            scaling: RopeScaling::None,
            ..rope
        };
        let (s, u) = (rope.inv_freqs(false), unscaled.inv_freqs(false));
        assert!((s[0] - u[0]).abs() < 1e-9, "highest frequency unchanged");
        let last = s.len() - 1;
        assert!(
            (s[last] - u[last] / 8.0).abs() < 1e-12,
            "lowest slowed by factor"
        );
        for i in 0..s.len() {
            assert!(s[i] <= u[i] + 1e-9 && s[i] >= u[i] / 8.0 - 1e-12);
        }
    }
}

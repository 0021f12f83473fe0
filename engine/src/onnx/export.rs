//! The decoder description ([`DecoderSpec`] + [`DecoderWeights`]) as a
//! static-shape ONNX graph over `T` tokens with a fixed `C`-slot KV cache.
//! The graph walks the same per-layer description as the CPU backend: each
//! optional step (biases, QK-norm, post-norms, soft-caps, sliding windows,
//! residual/embedding/logit scales, per-layer rope tables) is emitted when
//! the description has it, with no architecture name involved.
//!
//! Inputs: `input_ids` int64 `[1, T]`, `position_ids` int64 `[1, T]`,
//! `attention_mask` int64 `[1, C]` (1 for slots that hold a token once this
//! chunk is written), `past_key_values.{i}.key|value` f32 `[1, n_kv, C, hd]`.
//! Outputs: `logits` f32 `[1, T, vocab]`, `present.{i}.key|value` (same shape
//! as past, with this chunk written at its positions).
//!
//! Choices made for NPUs (QNN HTP) rather than for CPU speed:
//! * the KV write is a one-hot blend `past·(1 − hit) + onehotᵀ·new`, not
//!   ScatterND, so it is a MatMul and elementwise ops every EP has;
//! * GQA reshapes the query heads onto their KV head (`[1, n_kv, G·T, hd]`)
//!   instead of repeating K/V, so no Expand/Tile of the cache;
//! * the causal + padding (+ sliding window) mask becomes an additive bias
//!   of −100 (not −inf): enough to zero a softmax weight, and small enough
//!   that a uint16 activation scale still resolves the real scores; one
//!   bias per distinct window, shared by the layers that use it;
//! * interleaved (ggml mode 0) rope becomes NeoX rope by permuting the rows
//!   of Wq and Wk inside each head at export time: q·k is unchanged by a
//!   common permutation, and NeoX rotation is two Slices and a Concat.
//!   The cache therefore holds keys in that permuted order (see
//!   [`rope_row_permutation`]) — KV hand-over to the CPU backend undoes it.

use sotto_models::spec::{Activation, DecoderSpec, RopeStyle};
use sotto_models::weights::{DecoderWeights, Linear, Weight};

use super::graph::{Attr, GraphBuilder};
use super::nbits;
use super::proto::{DataType, ModelProto, MS_DOMAIN};
use super::{Error, Result};

/// How weight matrices are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightFormat {
    /// Every weight dequantized to f32 (reference graph, calibration).
    Float,
    /// Q4_0/Q4_1 re-packed to MatMulNBits (CPU EP); other types as f32.
    MatMulNBits,
}

/// Shape of one exported graph.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GraphShape {
    /// Tokens per run (prefill chunk, or 1 for decode).
    pub tokens: usize,
    /// KV cache slots (max context).
    pub context: usize,
}

/// RMSNorm divides its input by this before squaring: SmolLM2's residual
/// stream reaches |x| ≈ 25,000 on its massive-activation token, whose
/// square (6e8) overflows f16 (65,504); over 256 it is 9.5e3.
pub const RMS_PRESCALE: f32 = 256.0;

/// Additive attention bias of a masked slot (see module docs).
pub const MASK_BIAS: f32 = -100.0;

pub fn past_key(i: usize) -> String {
    format!("past_key_values.{i}.key")
}
pub fn past_value(i: usize) -> String {
    format!("past_key_values.{i}.value")
}
pub fn present_key(i: usize) -> String {
    format!("present.{i}.key")
}
pub fn present_value(i: usize) -> String {
    format!("present.{i}.value")
}

/// For each output row of Wq/Wk, the source row: identity for NeoX; for
/// interleaved rope, inside each head the even rotated dims first, then the
/// odd ones (`[0, 2, 4, …, 1, 3, 5, …]`), so NeoX rotation computes the
/// same angles.
pub fn rope_row_permutation(spec: &DecoderSpec, n_heads: usize) -> Vec<usize> {
    let hd = spec.head_dim;
    let n_rot = spec.n_rot.min(hd);
    let mut order = Vec::with_capacity(n_heads * hd);
    for h in 0..n_heads {
        let base = h * hd;
        if spec.rope_style == RopeStyle::Interleaved {
            order.extend((0..n_rot).step_by(2).map(|i| base + i));
            order.extend((1..n_rot).step_by(2).map(|i| base + i));
            order.extend((n_rot..hd).map(|i| base + i));
        } else {
            order.extend(base..base + hd);
        }
    }
    order
}

fn check_supported(spec: &DecoderSpec) -> Result<()> {
    if spec.n_kv_head == 0
        || !spec.n_head.is_multiple_of(spec.n_kv_head)
        || !spec.n_rot.is_multiple_of(2)
    {
        return Err(Error::Unsupported(format!(
            "head layout n_head {} / n_kv_head {} / n_rot {}",
            spec.n_head, spec.n_kv_head, spec.n_rot
        )));
    }
    Ok(())
}

struct DecoderGraph<'a> {
    g: GraphBuilder,
    spec: &'a DecoderSpec,
    format: WeightFormat,
    t: i64,
}

fn dequantized(w: &Weight) -> Result<Vec<f32>> {
    w.to_f32().map_err(|e| Error::Weight {
        tensor: w.name.clone(),
        reason: e.to_string(),
    })
}

impl DecoderGraph<'_> {
    /// `x·Wᵀ + b` for the linear `l` (`W: [out, in]`), its output rows
    /// reordered by `rows` when given (the bias too).
    fn linear(&mut self, x: &str, l: &Linear, rows: Option<&[usize]>) -> Result<String> {
        let y = self.matmul_weight(x, &l.weight, rows)?;
        let Some(bias) = &l.bias else {
            return Ok(y);
        };
        let b: Vec<f32> = match rows {
            Some(order) => order.iter().map(|&r| bias[r]).collect(),
            None => bias.clone(),
        };
        let name = format!("{}.bias", l.weight.name);
        let b = self.g.init_f32(&name, &[b.len()], &b);
        Ok(self.g.add(&y, &b))
    }

    /// `x·Wᵀ` for `W: [out, in]`, rows reordered by `rows` when given.
    fn matmul_weight(&mut self, x: &str, w: &Weight, rows: Option<&[usize]>) -> Result<String> {
        let (n, k) = (w.rows(), w.cols());
        if self.format == WeightFormat::MatMulNBits {
            if let Some(q) = nbits::repack(w.dtype, w.data(), n, k, rows) {
                let b = self
                    .g
                    .init_raw(&w.name, DataType::Uint8, &[n, k / 32, 16], q.packed);
                let s = self.g.init_f32("scales", &[n * (k / 32)], &q.scales);
                let inputs = [x.to_string(), b, s];
                let out = format!("{}_out", w.name);
                let refs: Vec<&str> = inputs.iter().map(String::as_str).collect();
                self.g.node_full(
                    "MatMulNBits",
                    MS_DOMAIN,
                    &refs,
                    &[(&out, DataType::Float)],
                    &[
                        ("K", Attr::Int(k as i64)),
                        ("N", Attr::Int(n as i64)),
                        ("bits", Attr::Int(4)),
                        ("block_size", Attr::Int(32)),
                    ],
                );
                let Some(offsets) = &q.block_offsets else {
                    return Ok(out);
                };
                // Q4_1's per-block offsets (see nbits): x [1, T, K] summed
                // per 32-block [1, T, K/32], times offsetsᵀ [K/32, N].
                let kb = k / 32;
                let mut ct = vec![0f32; kb * n];
                for o in 0..n {
                    for b in 0..kb {
                        ct[b * n + o] = offsets[o * kb + b];
                    }
                }
                let ct = self.g.init_f32("block_offsets", &[kb, n], &ct);
                let blocks = self.g.reshape(x, &[1, self.t, kb as i64, 32]);
                let axes = self.g.ints(&[-1]);
                let sums = self.g.node(
                    "ReduceSum",
                    &[&blocks, &axes],
                    &[("keepdims", Attr::Int(0))],
                );
                let shift = self.g.matmul(&sums, &ct);
                return Ok(self.g.add(&out, &shift));
            }
        }
        let full = dequantized(w)?;
        // [in, out] so the graph computes x·W directly.
        let mut wt = vec![0f32; n * k];
        for (o, &src) in rows
            .map(<[usize]>::to_vec)
            .unwrap_or_else(|| (0..n).collect())
            .iter()
            .enumerate()
        {
            let row = full
                .get(src * k..(src + 1) * k)
                .ok_or_else(|| Error::Weight {
                    tensor: w.name.clone(),
                    reason: format!("row {src} out of {n}"),
                })?;
            for (i, &v) in row.iter().enumerate() {
                wt[i * n + o] = v;
            }
        }
        let wname = self.g.init_f32(&w.name, &[k, n], &wt);
        Ok(self.g.matmul(x, &wname))
    }

    /// RMSNorm over the last axis.
    fn rms_norm(&mut self, x: &str, w: &Weight) -> Result<String> {
        let gain = dequantized(w)?;
        Ok(self.rms_norm_gain(x, &w.name, &gain))
    }

    /// RMSNorm over the last axis with the gain `gain` (named `name`).
    fn rms_norm_gain(&mut self, x: &str, name: &str, gain: &[f32]) -> String {
        let gain = self.g.init_f32(name, &[gain.len()], gain);
        // x / sqrt(mean(x²) + eps) computed on x / RMS_PRESCALE, so the
        // squares stay inside f16 (QNN HTP runs float graphs in f16).
        let inv = self.g.scalar(1.0 / RMS_PRESCALE);
        let xs = self.g.mul(x, &inv);
        let sq = self.g.mul(&xs, &xs);
        let axes = self.g.ints(&[-1]);
        let mean = self
            .g
            .node("ReduceMean", &[&sq, &axes], &[("keepdims", Attr::Int(1))]);
        let eps = self
            .g
            .scalar(self.spec.norm_eps / (RMS_PRESCALE * RMS_PRESCALE));
        let var = self.g.add(&mean, &eps);
        let rms = self.g.node("Sqrt", &[&var], &[]);
        let normed = self.g.div(&xs, &rms);
        self.g.mul(&normed, &gain)
    }

    /// RMSNorm of each head of `x: [1, heads, T, hd]` (QK-norm), its gain
    /// reordered like the head's rows (see [`rope_row_permutation`]).
    fn head_norm(&mut self, x: &str, w: &Weight) -> Result<String> {
        let gain = dequantized(w)?;
        let order = rope_row_permutation(self.spec, 1);
        let gain: Vec<f32> = order.iter().map(|&i| gain[i]).collect();
        Ok(self.rms_norm_gain(x, &w.name, &gain))
    }

    /// `x` times a constant, or `x` itself when there is none.
    fn scaled(&mut self, x: String, scale: Option<f32>) -> String {
        match scale {
            Some(s) => {
                let s = self.g.scalar(s);
                self.g.mul(&x, &s)
            }
            None => x,
        }
    }

    /// `cap · tanh(x / cap)`.
    fn softcap(&mut self, x: &str, cap: f32) -> String {
        let inv = self.g.scalar(1.0 / cap);
        let scaled = self.g.mul(x, &inv);
        let t = self.g.node("Tanh", &[&scaled], &[]);
        let c = self.g.scalar(cap);
        self.g.mul(&t, &c)
    }

    /// NeoX rotation of `x: [1, heads, T, hd]` with `cos`, `sin_signed`:
    /// `[1, 1, T, n_rot]` (`sin_signed = [−sin, sin]`).
    fn rope(&mut self, x: &str, cos: &str, sin_signed: &str) -> String {
        let hd = self.spec.head_dim as i64;
        let n_rot = self.spec.n_rot as i64;
        let half = n_rot / 2;
        let rotated = if n_rot < hd {
            self.g.slice(x, 3, 0, n_rot)
        } else {
            x.to_string()
        };
        let x1 = self.g.slice(&rotated, 3, 0, half);
        let x2 = self.g.slice(&rotated, 3, half, n_rot);
        let swapped = self.g.concat(&[&x2, &x1], 3);
        let a = self.g.mul(&rotated, cos);
        let b = self.g.mul(&swapped, sin_signed);
        let out = self.g.add(&a, &b);
        if n_rot < hd {
            let pass = self.g.slice(x, 3, n_rot, hd);
            self.g.concat(&[&out, &pass], 3)
        } else {
            out
        }
    }

    /// `[1, T, heads·hd]` → `[1, heads, T, hd]`.
    fn split_heads(&mut self, x: &str, heads: usize) -> String {
        let r = self
            .g
            .reshape(x, &[1, self.t, heads as i64, self.spec.head_dim as i64]);
        self.g.transpose(&r, &[0, 2, 1, 3])
    }
}

/// Exports one graph of the decoder.
pub fn export_decoder(
    spec: &DecoderSpec,
    weights: &DecoderWeights,
    shape: GraphShape,
    format: WeightFormat,
) -> Result<ModelProto> {
    export_decoder_typed(spec, weights, shape, format).map(|(m, _)| m)
}

/// [`export_decoder`] plus the names of the graph's float values (what the
/// QDQ pass quantizes).
pub fn export_decoder_typed(
    spec: &DecoderSpec,
    weights: &DecoderWeights,
    shape: GraphShape,
    format: WeightFormat,
) -> Result<(ModelProto, std::collections::HashSet<String>)> {
    check_supported(spec)?;
    if shape.tokens == 0 || shape.context < shape.tokens {
        return Err(Error::Unsupported(format!(
            "graph of {} tokens over {} slots",
            shape.tokens, shape.context
        )));
    }
    let (t, c) = (shape.tokens as i64, shape.context as i64);
    let (hd, n_kv, n_head) = (
        spec.head_dim as i64,
        spec.n_kv_head as i64,
        spec.n_head as i64,
    );
    let group = n_head / n_kv;
    let n_rot = spec.n_rot;
    let mut d = DecoderGraph {
        g: GraphBuilder::new(if t == 1 { "decode" } else { "prefill" }),
        spec,
        format,
        t,
    };

    let ids = d.g.input("input_ids", DataType::Int64, &[1, t]);
    let pos = d.g.input("position_ids", DataType::Int64, &[1, t]);
    let mask = d.g.input("attention_mask", DataType::Int64, &[1, c]);
    for i in 0..spec.n_layer {
        d.g.input(&past_key(i), DataType::Float, &[1, n_kv, c, hd]);
        d.g.input(&past_value(i), DataType::Float, &[1, n_kv, c, hd]);
    }

    // Rope tables over every slot, one per distinct rope of the layers,
    // gathered by position: [1, 1, T, n_rot]. The factors are those of a
    // KV cache of C slots, as the CPU backend picks them.
    let (ropes, layer_rope) = spec.distinct_ropes();
    let mut rope_tables = Vec::with_capacity(ropes.len());
    for (r, rope) in ropes.iter().enumerate() {
        let inv = weights
            .rope_inv_freqs(rope, n_rot, shape.context)
            .map_err(|e| Error::Weight {
                tensor: "rope frequencies".into(),
                reason: e.to_string(),
            })?;
        let m = rope.attn_factor as f64;
        let mut cos_t = Vec::with_capacity(shape.context * n_rot);
        let mut sin_t = Vec::with_capacity(shape.context * n_rot);
        for p in 0..shape.context {
            for j in 0..n_rot {
                let angle = p as f64 * inv[j % (n_rot / 2)];
                cos_t.push((angle.cos() * m) as f32);
                let s = (angle.sin() * m) as f32;
                sin_t.push(if j < n_rot / 2 { -s } else { s });
            }
        }
        let cos_table =
            d.g.init_f32(&format!("rope{r}_cos"), &[shape.context, n_rot], &cos_t);
        let sin_table =
            d.g.init_f32(&format!("rope{r}_sin"), &[shape.context, n_rot], &sin_t);
        let cos_g =
            d.g.node("Gather", &[&cos_table, &pos], &[("axis", Attr::Int(0))]);
        let sin_g =
            d.g.node("Gather", &[&sin_table, &pos], &[("axis", Attr::Int(0))]);
        let cos = d.g.reshape(&cos_g, &[1, 1, t, n_rot as i64]);
        let sin = d.g.reshape(&sin_g, &[1, 1, t, n_rot as i64]);
        rope_tables.push((cos, sin));
    }

    // Slot bookkeeping, shared by every layer.
    let slots: Vec<i64> = (0..c).collect();
    let slots = d.g.init_i64("slots", &[1, shape.context], &slots);
    let pos_col = d.g.reshape(&pos, &[t, 1]);
    let hit =
        d.g.node_typed("Equal", &[&pos_col, &slots], &[], DataType::Bool); // [T, C]
    let onehot = d.g.node_typed(
        "Cast",
        &[&hit],
        &[("to", Attr::Int(DataType::Float as i64))],
        DataType::Float,
    );
    let onehot_t = d.g.transpose(&onehot, &[1, 0]); // [C, T]
    let axes1 = d.g.ints(&[1]);
    let written = d.g.node(
        "ReduceSum",
        &[&onehot_t, &axes1],
        &[("keepdims", Attr::Int(1))],
    ); // [C, 1]
    let one = d.g.scalar(1.0);
    let keep = d.g.sub(&one, &written);
    let causal =
        d.g.node_typed("LessOrEqual", &[&slots, &pos_col], &[], DataType::Bool); // [T, C]
    let valid = d.g.node_typed(
        "Cast",
        &[&mask],
        &[("to", Attr::Int(DataType::Bool as i64))],
        DataType::Bool,
    );
    let allowed =
        d.g.node_typed("And", &[&causal, &valid], &[], DataType::Bool);
    // One additive bias [G·T, C] (0 or −100) per distinct window: a sliding
    // layer also masks slots at distance `window` or more behind the query.
    let mut windows: Vec<Option<usize>> = Vec::new();
    for l in &spec.layers {
        if !windows.contains(&l.attention.window) {
            windows.push(l.attention.window);
        }
    }
    let big = d.g.scalar(-MASK_BIAS);
    let mut biases = Vec::with_capacity(windows.len());
    for window in &windows {
        let allowed = match window {
            None => allowed.clone(),
            Some(w) => {
                let behind = d.g.sub(&pos_col, &slots); // [T, C] int64
                let w = d.g.init_i64("window", &[], &[*w as i64]);
                let near = d.g.node_typed("Less", &[&behind, &w], &[], DataType::Bool);
                d.g.node_typed("And", &[&allowed, &near], &[], DataType::Bool)
            }
        };
        let allowed_f = d.g.node_typed(
            "Cast",
            &[&allowed],
            &[("to", Attr::Int(DataType::Float as i64))],
            DataType::Float,
        );
        let shifted = d.g.sub(&allowed_f, &one);
        let bias_t = d.g.mul(&shifted, &big); // [T, C]: 0 or −100
        let bias_refs: Vec<&str> = (0..group).map(|_| bias_t.as_str()).collect();
        let bias = if group > 1 {
            d.g.concat(&bias_refs, 0)
        } else {
            bias_t.clone()
        }; // [G·T, C]
        biases.push(bias);
    }

    let table = dequantized(&weights.token_embd)?;
    let table =
        d.g.init_f32("token_embd", &[spec.vocab_size, spec.d_model], &table);
    let x =
        d.g.node("Gather", &[&table, &ids], &[("axis", Attr::Int(0))]);
    let mut x = d.scaled(x, spec.embed_scale);
    let q_rows = rope_row_permutation(spec, spec.n_head);
    let k_rows = rope_row_permutation(spec, spec.n_kv_head);

    for (i, (ls, lw)) in spec.layers.iter().zip(&weights.layers).enumerate() {
        let h = d.rms_norm(&x, &lw.attn_norm)?;
        let q = d.linear(&h, &lw.attn_q, Some(&q_rows))?;
        let k = d.linear(&h, &lw.attn_k, Some(&k_rows))?;
        let v = d.linear(&h, &lw.attn_v, None)?;
        let mut q = d.split_heads(&q, spec.n_head);
        let mut k = d.split_heads(&k, spec.n_kv_head);
        let v = d.split_heads(&v, spec.n_kv_head);
        if let (Some(qn), Some(kn)) = (&lw.attn_q_norm, &lw.attn_k_norm) {
            q = d.head_norm(&q, qn)?;
            k = d.head_norm(&k, kn)?;
        }
        let (cos, sin) = rope_tables[layer_rope[i]].clone();
        let q = d.rope(&q, &cos, &sin);
        let k = d.rope(&k, &cos, &sin);

        // Write this chunk into the cache: [1, n_kv, C, hd].
        for (new, past, present) in [
            (&k, past_key(i), present_key(i)),
            (&v, past_value(i), present_value(i)),
        ] {
            let kept = d.g.mul(&past, &keep);
            let placed = d.g.matmul(&onehot_t, new);
            d.g.node_named("Add", &[&kept, &placed], &present, &[]);
        }
        let qg = d.g.reshape(&q, &[1, n_kv, group * t, hd]);
        let kt = d.g.transpose(&present_key(i), &[0, 1, 3, 2]);
        let scores = d.g.matmul(&qg, &kt);
        let scale = d.g.scalar(ls.attention.scale);
        let mut scores = d.g.mul(&scores, &scale);
        if let Some(cap) = ls.attention.softcap {
            scores = d.softcap(&scores, cap);
        }
        let window = windows
            .iter()
            .position(|w| *w == ls.attention.window)
            .unwrap_or(0);
        let scores = d.g.add(&scores, &biases[window]);
        let probs = d.g.node("Softmax", &[&scores], &[("axis", Attr::Int(-1))]);
        let att = d.g.matmul(&probs, &present_value(i)); // [1, n_kv, G·T, hd]
        let att = d.g.reshape(&att, &[1, n_head, t, hd]);
        let att = d.g.transpose(&att, &[0, 2, 1, 3]);
        let att = d.g.reshape(&att, &[1, t, n_head * hd]);
        let mut o = d.linear(&att, &lw.attn_output, None)?;
        if let Some(n) = &lw.post_attention_norm {
            o = d.rms_norm(&o, n)?;
        }
        let o = d.scaled(o, ls.residual_scale);
        x = d.g.add(&x, &o);

        let h = d.rms_norm(&x, &lw.ffn_norm)?;
        let gate = d.linear(&h, &lw.ffn_gate, None)?;
        let up = d.linear(&h, &lw.ffn_up, None)?;
        let act = match spec.activation {
            Activation::SiluGlu => {
                let sig = d.g.node("Sigmoid", &[&gate], &[]);
                d.g.mul(&gate, &sig)
            }
            Activation::GeluTanhGlu => d.g.node(
                "Gelu",
                &[&gate],
                &[("approximate", Attr::Str("tanh".into()))],
            ),
        };
        let prod = d.g.mul(&act, &up);
        let mut f = d.linear(&prod, &lw.ffn_down, None)?;
        if let Some(n) = &lw.post_ffw_norm {
            f = d.rms_norm(&f, n)?;
        }
        let f = d.scaled(f, ls.residual_scale);
        x = d.g.add(&x, &f);
    }
    let h = d.rms_norm(&x, &weights.output_norm)?;
    let logits = d.linear(&h, &weights.output, None)?;
    let mut logits = d.scaled(logits, spec.logit_scale);
    if let Some(cap) = spec.final_logit_softcap {
        logits = d.softcap(&logits, cap);
    }
    d.g.node_named("Identity", &[&logits], "logits", &[]);
    d.g.output("logits", &[1, t, spec.vocab_size as i64]);
    for i in 0..spec.n_layer {
        d.g.output(&present_key(i), &[1, n_kv, c, hd]);
        d.g.output(&present_value(i), &[1, n_kv, c, hd]);
    }
    let doc = format!(
        "sotto decoder export: {} ({}), {} tokens over {} slots, {:?}",
        spec.name.as_deref().unwrap_or("?"),
        spec.arch,
        t,
        c,
        format
    );
    let floats = d.g.float_values();
    Ok((d.g.finish(&doc), floats))
}

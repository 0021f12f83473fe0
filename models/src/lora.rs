//! LoRA adapters: low-rank updates `W' = W + s·B·A` of a base model's
//! projection matrices, read from either format people hold them in, into
//! one type bound to a loaded [`Model`].
//!
//! * GGUF, as llama.cpp's `convert_lora_to_gguf.py` writes it:
//!   `general.type = adapter`, `adapter.type = lora`, `adapter.lora.alpha`,
//!   the base's `general.architecture`, and per adapted matrix
//!   `<base tensor>.lora_a` (ggml ne `[in, rank]`) and `.lora_b` (ne
//!   `[rank, out]`). The scale is `alpha / rank` (the user's scale alone
//!   when alpha is 0 or absent), as llama.cpp computes it.
//! * Hugging Face PEFT, a folder with `adapter_config.json` (`r`,
//!   `lora_alpha`, `target_modules`, optional `rank_pattern` /
//!   `alpha_pattern`, `use_rslora`) and `adapter_model.safetensors`
//!   (`base_model.model.model.layers.N.<module>.lora_A.weight` `[rank, in]`,
//!   `.lora_B.weight` `[out, rank]`). The scale is `alpha / rank`, or
//!   `alpha / sqrt(rank)` with rsLoRA.
//!
//! Both are bound to a base model at load: every pair is checked against the
//! matrix it updates (an adapter made for another model is a typed error,
//! [`Error::LoraBaseMismatch`], before anything runs), and the B rows of
//! Q/K adapters are put in the base's row order. llama.cpp's converter
//! reorders the Q/K rows of Llama checkpoints (each head's two rope halves
//! interleaved into pairs) and a Q/K adapter's B rows with them, so a GGUF
//! adapter is in that order for such architectures and a PEFT one in Hugging
//! Face's; the base is in the interleaved order exactly when its decoder
//! rotates adjacent pairs ([`RopeStyle::Interleaved`]).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde_json::Value;
use sotto_kernels::quant::DType;

use crate::error::{Error, Result};
use crate::gguf::GgufFile;
use crate::spec::RopeStyle;
use crate::weights::{LayerWeights, Linear, Weight};
use crate::Model;

/// A projection matrix of a block an adapter may update.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LoraTarget {
    /// `attn_q` / `q_proj`.
    AttnQ,
    /// `attn_k` / `k_proj`.
    AttnK,
    /// `attn_v` / `v_proj`.
    AttnV,
    /// `attn_output` / `o_proj`.
    AttnOutput,
    /// `ffn_gate` / `gate_proj`.
    FfnGate,
    /// `ffn_up` / `up_proj`.
    FfnUp,
    /// `ffn_down` / `down_proj`.
    FfnDown,
}

impl LoraTarget {
    /// Every target, in [`LoraTarget::index`] order.
    pub const ALL: [LoraTarget; 7] = [
        LoraTarget::AttnQ,
        LoraTarget::AttnK,
        LoraTarget::AttnV,
        LoraTarget::AttnOutput,
        LoraTarget::FfnGate,
        LoraTarget::FfnUp,
        LoraTarget::FfnDown,
    ];

    /// Position in [`LoraTarget::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }

    /// The GGUF tensor name within a block (`blk.N.<this>.weight`).
    pub fn gguf_name(self) -> &'static str {
        match self {
            LoraTarget::AttnQ => "attn_q",
            LoraTarget::AttnK => "attn_k",
            LoraTarget::AttnV => "attn_v",
            LoraTarget::AttnOutput => "attn_output",
            LoraTarget::FfnGate => "ffn_gate",
            LoraTarget::FfnUp => "ffn_up",
            LoraTarget::FfnDown => "ffn_down",
        }
    }

    /// The Hugging Face module path within a layer (`model.layers.N.<this>`).
    pub fn hf_module(self) -> &'static str {
        match self {
            LoraTarget::AttnQ => "self_attn.q_proj",
            LoraTarget::AttnK => "self_attn.k_proj",
            LoraTarget::AttnV => "self_attn.v_proj",
            LoraTarget::AttnOutput => "self_attn.o_proj",
            LoraTarget::FfnGate => "mlp.gate_proj",
            LoraTarget::FfnUp => "mlp.up_proj",
            LoraTarget::FfnDown => "mlp.down_proj",
        }
    }

    fn from_gguf_name(name: &str) -> Option<LoraTarget> {
        Self::ALL.into_iter().find(|t| t.gguf_name() == name)
    }

    fn from_hf_module(module: &str) -> Option<LoraTarget> {
        Self::ALL.into_iter().find(|t| t.hf_module() == module)
    }

    /// The PEFT `target_modules` name (`q_proj`).
    fn peft_name(self) -> &'static str {
        let module = self.hf_module();
        module.rsplit('.').next().unwrap_or(module)
    }

    /// The linear of `layer` this target updates.
    pub fn linear(self, layer: &LayerWeights) -> &Linear {
        match self {
            LoraTarget::AttnQ => &layer.attn_q,
            LoraTarget::AttnK => &layer.attn_k,
            LoraTarget::AttnV => &layer.attn_v,
            LoraTarget::AttnOutput => &layer.attn_output,
            LoraTarget::FfnGate => &layer.ffn_gate,
            LoraTarget::FfnUp => &layer.ffn_up,
            LoraTarget::FfnDown => &layer.ffn_down,
        }
    }

    fn linear_mut(self, layer: &mut LayerWeights) -> &mut Linear {
        match self {
            LoraTarget::AttnQ => &mut layer.attn_q,
            LoraTarget::AttnK => &mut layer.attn_k,
            LoraTarget::AttnV => &mut layer.attn_v,
            LoraTarget::AttnOutput => &mut layer.attn_output,
            LoraTarget::FfnGate => &mut layer.ffn_gate,
            LoraTarget::FfnUp => &mut layer.ffn_up,
            LoraTarget::FfnDown => &mut layer.ffn_down,
        }
    }
}

/// One adapted matrix: `W' = W + scale·B·A`, in f32.
#[derive(Clone, Debug)]
pub struct LoraPair {
    /// Block index.
    pub layer: usize,
    /// Which matrix of the block.
    pub target: LoraTarget,
    /// `r`.
    pub rank: usize,
    /// `W`'s input width.
    pub cols: usize,
    /// `W`'s output width.
    pub rows: usize,
    /// `A`, `[rank, cols]`, f32 in memory (an executor's matmul reads it
    /// like any F32 weight).
    pub a: Weight,
    /// `B`, `[rows, rank]`, f32 in memory, in the base's row order.
    pub b: Weight,
    /// The adapter's `alpha / rank` (or its rsLoRA form) times the user's scale.
    pub scale: f32,
}

impl LoraPair {
    /// `A`'s values, `[rank, cols]` row-major.
    pub fn a_values(&self) -> Result<&[f32]> {
        f32_values(&self.a)
    }

    /// `B`'s values, `[rows, rank]` row-major.
    pub fn b_values(&self) -> Result<&[f32]> {
        f32_values(&self.b)
    }

    /// `out[t] += scale·B·(A·x[t])` for the `n` rows of `x` (`[n, cols]`),
    /// `out` being `[n, rows]`: the unmerged update, in f32. An executor
    /// splits the tokens between its threads.
    pub fn add_to(&self, x: &[f32], n: usize, out: &mut [f32]) -> Result<()> {
        let (a, b) = (self.a_values()?, self.b_values()?);
        let mut ax = vec![0f32; self.rank];
        for (xt, ot) in x
            .chunks_exact(self.cols)
            .zip(out.chunks_exact_mut(self.rows))
            .take(n)
        {
            for (v, a_row) in ax.iter_mut().zip(a.chunks_exact(self.cols)) {
                *v = self.scale * dot(a_row, xt);
            }
            for (o, b_row) in ot.iter_mut().zip(b.chunks_exact(self.rank)) {
                *o += dot(b_row, &ax);
            }
        }
        Ok(())
    }

    /// `W + scale·B·A` for `w` (`[rows, cols]`, row-major), in place.
    fn merge_into(&self, w: &mut [f32]) -> Result<()> {
        let (a, b) = (self.a.to_f32()?, self.b.to_f32()?);
        for (w_row, b_row) in w.chunks_exact_mut(self.cols).zip(b.chunks_exact(self.rank)) {
            for (k, &bk) in b_row.iter().enumerate() {
                let s = self.scale * bk;
                let a_row = &a[k * self.cols..(k + 1) * self.cols];
                w_row.iter_mut().zip(a_row).for_each(|(w, a)| *w += s * a);
            }
        }
        Ok(())
    }
}

/// A dot product in eight independent lanes, which the compiler turns into
/// one SIMD register (a single running sum is a latency-bound chain: it
/// made an unmerged adapter cost a quarter of the prefill time).
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut lanes = [0f32; 8];
    let (ac, bc) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ac
        .remainder()
        .iter()
        .zip(bc.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ac.zip(bc) {
        for i in 0..8 {
            lanes[i] += x[i] * y[i];
        }
    }
    lanes.iter().sum::<f32>() + tail
}

fn f32_values(w: &Weight) -> Result<&[f32]> {
    bytemuck::try_cast_slice(w.data()).map_err(|e| Error::BadTensor {
        tensor: w.name.clone(),
        reason: format!("not an aligned f32 matrix in memory: {e}"),
    })
}

/// Which file format an adapter was read from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LoraFormat {
    /// llama.cpp's GGUF LoRA.
    Gguf,
    /// Hugging Face PEFT (`adapter_config.json` + `adapter_model.safetensors`).
    Peft,
}

/// A LoRA adapter bound to one base model: every pair checked against the
/// matrix it updates and in its row order.
#[derive(Clone, Debug)]
pub struct LoraAdapter {
    /// The file or folder it was read from.
    pub path: PathBuf,
    /// Its format.
    pub format: LoraFormat,
    /// The adapted matrices.
    pub pairs: Vec<LoraPair>,
    /// `by_layer[layer][target.index()]` indexes `pairs`.
    by_layer: Vec<[Option<usize>; 7]>,
}

/// A pair as read from a file, before it is checked against the base.
struct RawPair {
    layer: usize,
    target: LoraTarget,
    /// Tensor name in the file, for errors.
    name: String,
    a: Weight,
    b: Weight,
    /// Scale before the user's (alpha over rank, format's rule).
    scale: f32,
}

impl LoraAdapter {
    /// Reads the adapter at `path` (a GGUF file, or a PEFT folder or its
    /// `adapter_config.json`) and binds it to `model`, its updates
    /// multiplied by `user_scale` (1 applies the adapter as trained).
    pub fn load(path: impl AsRef<Path>, model: &Model, user_scale: f32) -> Result<LoraAdapter> {
        let path = path.as_ref();
        if !user_scale.is_finite() {
            return Err(Error::LoraFile {
                path: path.to_path_buf(),
                reason: format!("scale {user_scale} is not a finite number"),
            });
        }
        let peft_dir = if path.is_dir() {
            Some(path.to_path_buf())
        } else if path.file_name().is_some_and(|n| n == "adapter_config.json") {
            path.parent().map(Path::to_path_buf)
        } else {
            None
        };
        let (format, raw) = match &peft_dir {
            Some(dir) => (LoraFormat::Peft, read_peft(dir)?),
            None => (LoraFormat::Gguf, read_gguf(path, model)?),
        };
        let mut adapter = LoraAdapter {
            path: path.to_path_buf(),
            format,
            pairs: Vec::with_capacity(raw.len()),
            by_layer: vec![[None; 7]; model.weights.layers.len()],
        };
        let reorder = qk_reorder(model, format)?;
        for r in raw {
            let pair = bind(path, model, r, user_scale, reorder)?;
            let slot = &mut adapter.by_layer[pair.layer][pair.target.index()];
            if slot.is_some() {
                return Err(Error::LoraFile {
                    path: path.to_path_buf(),
                    reason: format!(
                        "two updates of blk.{}.{}",
                        pair.layer,
                        pair.target.gguf_name()
                    ),
                });
            }
            *slot = Some(adapter.pairs.len());
            adapter.pairs.push(pair);
        }
        if adapter.pairs.is_empty() {
            return Err(Error::LoraFile {
                path: path.to_path_buf(),
                reason: "holds no LoRA pair".into(),
            });
        }
        Ok(adapter)
    }

    /// The update of `target` in block `layer`, if the adapter has one.
    pub fn pair(&self, layer: usize, target: LoraTarget) -> Option<&LoraPair> {
        let i = (*self.by_layer.get(layer)?)[target.index()]?;
        self.pairs.get(i)
    }

    /// Bytes of its f32 A and B matrices.
    pub fn bytes(&self) -> usize {
        self.pairs
            .iter()
            .map(|p| p.a.data().len() + p.b.data().len())
            .sum()
    }

    /// `model` with `adapters` merged into its weights (`W + s·B·A`, in
    /// order): each adapted matrix is dequantized and updated, then stored
    /// as Q8_0 when it was quantized (and its rows hold whole Q8_0 blocks),
    /// else as f32; every other tensor stays the mapped one. Q8_0 rather
    /// than the base's own type: requantizing to 4 bits would add a
    /// rounding error as large as a small adapter's update, 8 bits adds
    /// ~0.4 % per weight, and keeps the matrix on the quantized kernels
    /// (f32 matrices read 4.5x the bytes of Q8_0 per token). Each adapter
    /// must have been loaded for `model`.
    pub fn merge(model: &Model, adapters: &[LoraAdapter]) -> Result<Model> {
        let mut weights = model.weights.clone();
        let mut merged: HashMap<(usize, LoraTarget), Vec<f32>> = HashMap::new();
        for adapter in adapters {
            for p in &adapter.pairs {
                let layer = weights.layers.get(p.layer).ok_or_else(|| {
                    mismatch(
                        &adapter.path,
                        format!("blk.{}", p.layer),
                        format!("the model has {} blocks", weights.layers.len()),
                    )
                })?;
                let w = p.target.linear(layer).weight.clone();
                check_shape(&adapter.path, &w, p.rows, p.cols)?;
                let values = match merged.entry((p.layer, p.target)) {
                    std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                    std::collections::hash_map::Entry::Vacant(e) => e.insert(w.to_f32()?),
                };
                p.merge_into(values)?;
            }
        }
        for ((il, target), values) in merged {
            let linear = target.linear_mut(&mut weights.layers[il]);
            let shape = linear.weight.shape;
            let name = format!("{}+lora", linear.weight.name);
            let was_float = matches!(linear.weight.dtype, DType::F32 | DType::F16 | DType::BF16);
            linear.weight = match DType::Q8_0.row_bytes(shape[1]) {
                Some(row_bytes) if !was_float => {
                    let mut bytes = vec![0u8; row_bytes * shape[0]];
                    for (src, dst) in values
                        .chunks_exact(shape[1])
                        .zip(bytes.chunks_exact_mut(row_bytes))
                    {
                        sotto_kernels::quant::quantize_row(DType::Q8_0, src, dst).map_err(|e| {
                            Error::BadTensor {
                                tensor: name.clone(),
                                reason: format!("requantizing to Q8_0: {e}"),
                            }
                        })?;
                    }
                    Weight::from_bytes(name, DType::Q8_0, shape, bytes)?
                }
                _ => Weight::from_f32(name, shape, values)?,
            };
        }
        Ok(Model {
            spec: model.spec.clone(),
            weights,
            tokenizer: model.tokenizer.clone(),
            template: model.template.clone(),
            gguf: model.gguf.clone(),
        })
    }
}

/// How Q/K B rows must be reordered to reach the base's order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum QkReorder {
    None,
    /// Hugging Face halves -> llama.cpp's interleaved pairs.
    Interleave,
    /// llama.cpp's interleaved pairs -> Hugging Face halves.
    Deinterleave,
}

fn qk_reorder(model: &Model, format: LoraFormat) -> Result<QkReorder> {
    let base_interleaved = model.spec.rope_style == RopeStyle::Interleaved;
    // What a GGUF of this architecture stores: llama.cpp's converter
    // interleaves exactly where the architecture's rope rotates adjacent
    // pairs (a folder of such a model rotates halves instead, see hf.rs).
    let adapter_interleaved = match format {
        LoraFormat::Peft => false,
        LoraFormat::Gguf => {
            crate::arch::decoder_spec(&model.gguf)?.rope_style == RopeStyle::Interleaved
        }
    };
    Ok(match (adapter_interleaved, base_interleaved) {
        (false, true) => QkReorder::Interleave,
        (true, false) => QkReorder::Deinterleave,
        _ => QkReorder::None,
    })
}

/// `b` (`[rows, rank]`) with each head's rows reordered.
fn reorder_rows(b: &[f32], rank: usize, n_head: usize, how: QkReorder) -> Vec<f32> {
    let rows = b.len() / rank;
    let hd = rows / n_head;
    let mut out = vec![0f32; b.len()];
    for h in 0..n_head {
        for gguf_row in 0..hd {
            let hf_row = crate::hf::hf_row_of_interleaved(gguf_row, hd);
            let (src, dst) = match how {
                QkReorder::Interleave => (hf_row, gguf_row),
                _ => (gguf_row, hf_row),
            };
            let (src, dst) = ((h * hd + src) * rank, (h * hd + dst) * rank);
            out[dst..dst + rank].copy_from_slice(&b[src..src + rank]);
        }
    }
    out
}

fn mismatch(path: &Path, tensor: String, reason: String) -> Error {
    Error::LoraBaseMismatch {
        path: path.to_path_buf(),
        tensor,
        reason,
    }
}

fn check_shape(path: &Path, w: &Weight, rows: usize, cols: usize) -> Result<()> {
    if w.shape == [rows, cols] {
        return Ok(());
    }
    Err(mismatch(
        path,
        w.name.clone(),
        format!(
            "the update is [{rows}, {cols}], the base matrix is {:?}",
            w.shape
        ),
    ))
}

/// Checks `raw` against `model` and converts it to f32 in the base's order.
fn bind(
    path: &Path,
    model: &Model,
    raw: RawPair,
    user_scale: f32,
    reorder: QkReorder,
) -> Result<LoraPair> {
    let name = &raw.name;
    let layer = model.weights.layers.get(raw.layer).ok_or_else(|| {
        mismatch(
            path,
            name.clone(),
            format!(
                "block {} does not exist: the model has {} blocks",
                raw.layer,
                model.weights.layers.len()
            ),
        )
    })?;
    let w = &raw.target.linear(layer).weight;
    let [rank, cols] = raw.a.shape;
    let [rows, b_rank] = raw.b.shape;
    if rank == 0 || b_rank != rank {
        return Err(Error::LoraFile {
            path: path.to_path_buf(),
            reason: format!(
                "{name}: A is {:?} and B {:?}; they need one rank (A [rank, in], B [out, rank])",
                raw.a.shape, raw.b.shape
            ),
        });
    }
    check_shape(path, w, rows, cols)?;
    let a = raw.a.to_f32()?;
    let mut b = raw.b.to_f32()?;
    if a.iter().chain(&b).any(|v| !v.is_finite()) {
        return Err(Error::LoraFile {
            path: path.to_path_buf(),
            reason: format!("{name}: a value is not finite"),
        });
    }
    let n_head = match raw.target {
        LoraTarget::AttnQ => Some(model.spec.n_head),
        LoraTarget::AttnK => Some(model.spec.n_kv_head),
        _ => None,
    };
    if let Some(n_head) = n_head {
        if reorder != QkReorder::None {
            b = reorder_rows(&b, rank, n_head, reorder);
        }
    }
    Ok(LoraPair {
        layer: raw.layer,
        target: raw.target,
        rank,
        cols,
        rows,
        a: Weight::from_f32(format!("{name}.lora_a"), [rank, cols], a)?,
        b: Weight::from_f32(format!("{name}.lora_b"), [rows, rank], b)?,
        scale: raw.scale * user_scale,
    })
}

/// The pairs of a llama.cpp GGUF adapter.
fn read_gguf(path: &Path, model: &Model) -> Result<Vec<RawPair>> {
    let gguf = GgufFile::open(path)?;
    let file_err = |reason: String| Error::LoraFile {
        path: path.to_path_buf(),
        reason,
    };
    match gguf.try_get_str("general.type")? {
        Some("adapter") => {}
        other => {
            return Err(file_err(format!(
                "general.type is {other:?}, a LoRA adapter says \"adapter\""
            )))
        }
    }
    match gguf.try_get_str("adapter.type")? {
        Some("lora") => {}
        other => {
            return Err(file_err(format!(
                "adapter.type is {other:?}; only \"lora\" adapters are applied"
            )))
        }
    }
    let arch = gguf.try_get_str("general.architecture")?.unwrap_or("");
    if arch != model.spec.arch {
        return Err(mismatch(
            path,
            "general.architecture".into(),
            format!(
                "the adapter is for {arch:?}, the model is {:?}",
                model.spec.arch
            ),
        ));
    }
    let alpha = gguf.try_get_f32("adapter.lora.alpha")?.unwrap_or(0.0);
    let mut halves: HashMap<&str, [Option<Weight>; 2]> = HashMap::new();
    for info in gguf.tensors() {
        let (base, which) = if let Some(b) = info.name.strip_suffix(".lora_a") {
            (b, 0)
        } else if let Some(b) = info.name.strip_suffix(".lora_b") {
            (b, 1)
        } else {
            return Err(file_err(format!(
                "tensor {:?} is neither a .lora_a nor a .lora_b",
                info.name
            )));
        };
        halves.entry(base).or_default()[which] = Some(Weight::from_gguf(&gguf, info)?);
    }
    let mut out = Vec::with_capacity(halves.len());
    for (base, [a, b]) in halves {
        let (Some(a), Some(b)) = (a, b) else {
            return Err(file_err(format!("{base}: lora_a or lora_b is missing")));
        };
        let (layer, target) = parse_gguf_name(base).ok_or_else(|| {
            file_err(format!(
                "{base}: sotto applies adapters to the seven projections of a block \
                 (blk.N.attn_q.weight ... blk.N.ffn_down.weight)"
            ))
        })?;
        // llama.cpp: the rank is B's ne[0], the scale alpha/rank, or the
        // user's scale alone when alpha is 0.
        let rank = b.cols().max(1) as f32;
        let scale = if alpha == 0.0 { 1.0 } else { alpha / rank };
        out.push(RawPair {
            layer,
            target,
            name: base.to_string(),
            a,
            b,
            scale,
        });
    }
    Ok(out)
}

fn parse_gguf_name(base: &str) -> Option<(usize, LoraTarget)> {
    let rest = base.strip_prefix("blk.")?;
    let (layer, rest) = rest.split_once('.')?;
    let target = LoraTarget::from_gguf_name(rest.strip_suffix(".weight")?)?;
    Some((layer.parse().ok()?, target))
}

/// What `adapter_config.json` says about scales.
struct PeftConfig {
    r: usize,
    alpha: f64,
    rank_pattern: Vec<(String, usize)>,
    alpha_pattern: Vec<(String, f64)>,
    rslora: bool,
    targets: Vec<String>,
}

impl PeftConfig {
    fn read(file: &Path) -> Result<PeftConfig> {
        let text = std::fs::read_to_string(file).map_err(|source| Error::Io {
            path: file.to_path_buf(),
            source,
        })?;
        let bad = |key: &str, reason: String| Error::LoraConfig {
            path: file.to_path_buf(),
            key: key.to_string(),
            reason,
        };
        let c: Value =
            serde_json::from_str(&text).map_err(|e| bad("", format!("not valid JSON: {e}")))?;
        if let Some(t) = c.get("peft_type").and_then(Value::as_str) {
            if t != "LORA" {
                return Err(bad("peft_type", format!("{t:?}; only LORA is applied")));
            }
        }
        for (key, what) in [
            ("use_dora", "DoRA"),
            ("fan_in_fan_out", "Conv1D (fan_in_fan_out) weights"),
        ] {
            if c.get(key).and_then(Value::as_bool) == Some(true) {
                return Err(bad(key, format!("{what} is not supported")));
            }
        }
        let r = c
            .get("r")
            .and_then(Value::as_u64)
            .filter(|&r| r > 0)
            .ok_or_else(|| bad("r", "missing or not a positive integer".into()))?
            as usize;
        let alpha = c
            .get("lora_alpha")
            .and_then(Value::as_f64)
            .ok_or_else(|| bad("lora_alpha", "missing or not a number".into()))?;
        let pattern = |key: &str| -> Result<Vec<(String, f64)>> {
            match c.get(key) {
                None | Some(Value::Null) => Ok(Vec::new()),
                Some(Value::Object(m)) => m
                    .iter()
                    .map(|(k, v)| {
                        v.as_f64()
                            .map(|v| (k.clone(), v))
                            .ok_or_else(|| bad(key, format!("{k}: not a number")))
                    })
                    .collect(),
                Some(_) => Err(bad(key, "not an object".into())),
            }
        };
        let rank_pattern = pattern("rank_pattern")?
            .into_iter()
            .map(|(k, v)| (k, v as usize))
            .collect();
        let targets = match c.get("target_modules") {
            Some(Value::Array(a)) => a
                .iter()
                .map(|v| {
                    v.as_str()
                        .map(str::to_string)
                        .ok_or_else(|| bad("target_modules", "a name is not a string".into()))
                })
                .collect::<Result<Vec<_>>>()?,
            Some(Value::String(s)) => vec![s.clone()],
            _ => return Err(bad("target_modules", "missing".into())),
        };
        Ok(PeftConfig {
            r,
            alpha,
            rank_pattern,
            alpha_pattern: pattern("alpha_pattern")?,
            rslora: c.get("use_rslora").and_then(Value::as_bool) == Some(true),
            targets,
        })
    }

    /// PEFT's per-module overrides match a key that ends the module path.
    fn lookup<T: Copy>(pattern: &[(String, T)], module: &str) -> Option<T> {
        pattern
            .iter()
            .find(|(k, _)| module == k || module.ends_with(&format!(".{k}")))
            .map(|(_, v)| *v)
    }

    fn scale(&self, module: &str) -> f32 {
        let r = Self::lookup(&self.rank_pattern, module).unwrap_or(self.r) as f64;
        let alpha = Self::lookup(&self.alpha_pattern, module).unwrap_or(self.alpha);
        let s = if self.rslora {
            alpha / r.sqrt()
        } else {
            alpha / r
        };
        s as f32
    }
}

/// The pairs of a PEFT folder.
fn read_peft(dir: &Path) -> Result<Vec<RawPair>> {
    let config = PeftConfig::read(&dir.join("adapter_config.json"))?;
    let file = dir.join("adapter_model.safetensors");
    let bytes = std::fs::read(&file).map_err(|source| Error::Io {
        path: file.clone(),
        source,
    })?;
    let file_err = |reason: String| Error::LoraFile {
        path: file.clone(),
        reason,
    };
    let tensors = safetensors::SafeTensors::deserialize(&bytes)
        .map_err(|e| file_err(format!("not a safetensors file: {e}")))?;
    let mut halves: HashMap<String, [Option<Weight>; 2]> = HashMap::new();
    for (name, view) in tensors.tensors() {
        let (module, which) = if let Some(m) = name.strip_suffix(".lora_A.weight") {
            (m, 0)
        } else if let Some(m) = name.strip_suffix(".lora_B.weight") {
            (m, 1)
        } else {
            return Err(file_err(format!(
                "tensor {name:?} is neither a lora_A nor a lora_B weight"
            )));
        };
        let values: Vec<f32> = match view.dtype() {
            safetensors::Dtype::F32 => view
                .data()
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
            safetensors::Dtype::F16 => view
                .data()
                .chunks_exact(2)
                .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            safetensors::Dtype::BF16 => view
                .data()
                .chunks_exact(2)
                .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            other => {
                return Err(file_err(format!(
                    "{name}: dtype {other:?} (F32, F16 and BF16 are read)"
                )))
            }
        };
        let shape: [usize; 2] = match view.shape() {
            [rows, cols] => [*rows, *cols],
            other => return Err(file_err(format!("{name}: shape {other:?} is not a matrix"))),
        };
        let weight = Weight::from_f32(name.clone(), shape, values)?;
        halves.entry(module.to_string()).or_default()[which] = Some(weight);
    }
    let mut out = Vec::with_capacity(halves.len());
    for (module, [a, b]) in halves {
        let (Some(a), Some(b)) = (a, b) else {
            return Err(file_err(format!("{module}: lora_A or lora_B is missing")));
        };
        let (layer, target) = parse_peft_module(&module).ok_or_else(|| {
            file_err(format!(
                "{module}: sotto applies adapters to the seven projections of a decoder \
                 layer (model.layers.N.self_attn.q_proj ... mlp.down_proj)"
            ))
        })?;
        if !config.targets.iter().any(|t| t == target.peft_name()) {
            return Err(Error::LoraConfig {
                path: dir.join("adapter_config.json"),
                key: "target_modules".into(),
                reason: format!("the weights update {module}, which target_modules does not list"),
            });
        }
        let scale = config.scale(&module);
        out.push(RawPair {
            layer,
            target,
            name: module,
            a,
            b,
            scale,
        });
    }
    Ok(out)
}

fn parse_peft_module(module: &str) -> Option<(usize, LoraTarget)> {
    let rest = module.split_once("layers.")?.1;
    let (layer, rest) = rest.split_once('.')?;
    Some((layer.parse().ok()?, LoraTarget::from_hf_module(rest)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gguf::{GgufWriter, MetaValue};
    use crate::testutil::{tiny_lora_adapter, tiny_model_random, TinyDims, TINY_LORA_RANK as RANK};

    fn values(n: usize, seed: u64) -> Vec<f32> {
        (0..n as u64)
            .map(|i| ((i * 7919 + seed * 104_729) % 1000) as f32 / 1000.0 - 0.5)
            .collect()
    }

    fn model(arch: &str, dims: TinyDims) -> Model {
        let bytes = tiny_model_random(arch, dims, 11).to_bytes();
        Model::from_gguf(GgufFile::from_bytes(bytes).unwrap()).unwrap()
    }

    fn temp_dir(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("sotto-lora-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn write(dir: &Path, w: &GgufWriter) -> PathBuf {
        let path = dir.join("adapter.gguf");
        std::fs::write(&path, w.to_bytes()).unwrap();
        path
    }

    fn write_peft(dir: &Path, config: &str, tensors: &[(&str, [usize; 2], Vec<f32>)]) {
        std::fs::write(dir.join("adapter_config.json"), config).unwrap();
        let bytes: Vec<(String, Vec<u8>, [usize; 2])> = tensors
            .iter()
            .map(|(n, s, v)| {
                (
                    n.to_string(),
                    v.iter().flat_map(|x| x.to_le_bytes()).collect(),
                    *s,
                )
            })
            .collect();
        let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = bytes
            .iter()
            .map(|(n, b, s)| {
                let view =
                    safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.to_vec(), b)
                        .unwrap();
                (n.clone(), view)
            })
            .collect();
        let file = safetensors::serialize(views, None).unwrap();
        std::fs::write(dir.join("adapter_model.safetensors"), file).unwrap();
    }

    const CONFIG: &str = r#"{"peft_type": "LORA", "r": 2, "lora_alpha": 4,
        "target_modules": ["v_proj"], "base_model_name_or_path": "tiny"}"#;

    fn matvec(w: &[f32], x: &[f32]) -> Vec<f32> {
        w.chunks_exact(x.len()).map(|row| dot(row, x)).collect()
    }

    /// Hugging Face's halves `[a0 a1 | b0 b1]` of a 4-wide head are
    /// llama.cpp's pairs `[a0 b0 a1 b1]`, and back.
    #[test]
    fn qk_rows_interleave_as_llama_cpp_orders_them() {
        // two heads of four rows, rank 1: row value = its index
        let hf: Vec<f32> = (0..8).map(|i| i as f32).collect();
        let gguf = reorder_rows(&hf, 1, 2, QkReorder::Interleave);
        assert_eq!(gguf, [0., 2., 1., 3., 4., 6., 5., 7.]);
        assert_eq!(reorder_rows(&gguf, 1, 2, QkReorder::Deinterleave), hf);
    }

    /// The unmerged update (`W·x + s·B·(A·x)`) equals the merged matrix
    /// times `x`, and the scale is llama.cpp's `alpha / rank` times the
    /// user's.
    #[test]
    fn merged_and_unmerged_updates_agree() {
        let dims = TinyDims::default();
        let base = model("llama", dims);
        let dir = temp_dir("merge");
        let path = write(&dir, &tiny_lora_adapter("llama", dims, 1));
        let adapter = LoraAdapter::load(&path, &base, 0.5).unwrap();
        assert_eq!(adapter.format, LoraFormat::Gguf);
        assert_eq!(adapter.pairs.len(), 2);
        let merged = LoraAdapter::merge(&base, std::slice::from_ref(&adapter)).unwrap();
        for (il, target) in [(0, LoraTarget::AttnQ), (1, LoraTarget::FfnDown)] {
            let p = adapter.pair(il, target).unwrap();
            assert_eq!(p.scale, 0.5 * 4.0 / RANK as f32);
            let w = target
                .linear(&base.weights.layers[il])
                .weight
                .to_f32()
                .unwrap();
            let m = target.linear(&merged.weights.layers[il]).weight.clone();
            assert_eq!(m.dtype, sotto_kernels::quant::DType::F32);
            let x = values(p.cols * 3, 9);
            let mut unmerged: Vec<f32> = x
                .chunks_exact(p.cols)
                .flat_map(|xt| matvec(&w, xt))
                .collect();
            p.add_to(&x, 3, &mut unmerged).unwrap();
            let m = m.to_f32().unwrap();
            let want: Vec<f32> = x
                .chunks_exact(p.cols)
                .flat_map(|xt| matvec(&m, xt))
                .collect();
            let diff = want
                .iter()
                .zip(&unmerged)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            assert!(diff < 1e-4, "{target:?}: {diff}");
            assert_ne!(w, m, "{target:?}: the merge changed nothing");
        }
        // an untouched matrix is the file's, not a copy
        assert_eq!(
            merged.weights.layers[0].attn_v.weight.name,
            base.weights.layers[0].attn_v.weight.name
        );
        assert!(adapter.pair(0, LoraTarget::AttnV).is_none());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// An adapter made for another model is refused when it is bound, by a
    /// typed error naming what does not fit.
    #[test]
    fn an_adapter_for_another_base_model_is_a_typed_error() {
        let dims = TinyDims::default();
        let base = model("llama", dims);
        let dir = temp_dir("mismatch");
        let wider = TinyDims {
            d_model: dims.d_model * 2,
            ..dims
        };
        let qwen = tiny_lora_adapter("qwen2", dims, 1);
        let mut beyond = tiny_lora_adapter("llama", dims, 1);
        for t in &mut beyond.tensors {
            t.name = t.name.replace("blk.1.", "blk.7.");
        }
        for (what, w) in [
            ("wider", tiny_lora_adapter("llama", wider, 1)),
            ("architecture", qwen),
            ("layer", beyond),
        ] {
            let path = write(&dir, &w);
            let err = LoraAdapter::load(&path, &base, 1.0).unwrap_err();
            assert!(
                matches!(err, Error::LoraBaseMismatch { .. }),
                "{what}: {err}"
            );
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Files that are no LoRA adapter, or only half of one, are typed errors.
    #[test]
    fn malformed_adapters_are_typed_errors() {
        let dims = TinyDims::default();
        let base = model("llama", dims);
        let dir = temp_dir("malformed");
        let mut half = tiny_lora_adapter("llama", dims, 1);
        half.tensors
            .retain(|t| t.name != "blk.1.ffn_down.weight.lora_b");
        let mut not_adapter = tiny_lora_adapter("llama", dims, 1);
        not_adapter.set("general.type", MetaValue::string("model"));
        let mut embd = tiny_lora_adapter("llama", dims, 1);
        for t in &mut embd.tensors {
            t.name = t.name.replace("blk.1.ffn_down", "token_embd");
        }
        let mut transposed = tiny_lora_adapter("llama", dims, 1);
        transposed.tensors[0].dims.reverse();
        for (what, w) in [
            ("half", half),
            ("type", not_adapter),
            ("embedding", embd),
            ("transposed", transposed),
        ] {
            let path = write(&dir, &w);
            let err = LoraAdapter::load(&path, &base, 1.0).unwrap_err();
            assert!(
                matches!(err, Error::LoraFile { .. } | Error::LoraBaseMismatch { .. }),
                "{what}: {err}"
            );
        }
        let err = LoraAdapter::load(dir.join("missing.gguf"), &base, 1.0).unwrap_err();
        assert!(matches!(err, Error::Io { .. }), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A PEFT folder: the scale from its config (rsLoRA, alpha_pattern), and
    /// bad configs as typed errors naming the key.
    #[test]
    fn peft_adapters_read_their_scale_and_refuse_bad_configs() {
        let dims = TinyDims::default();
        let base = model("llama", dims);
        let dir = temp_dir("peft");
        let (d, kv) = (dims.d_model, dims.n_kv_head * dims.head_dim);
        let tensors = [
            (
                "base_model.model.model.layers.1.self_attn.v_proj.lora_A.weight",
                [RANK, d],
                values(RANK * d, 5),
            ),
            (
                "base_model.model.model.layers.1.self_attn.v_proj.lora_B.weight",
                [kv, RANK],
                values(kv * RANK, 6),
            ),
        ];
        write_peft(&dir, CONFIG, &tensors);
        let a = LoraAdapter::load(&dir, &base, 1.0).unwrap();
        assert_eq!(a.format, LoraFormat::Peft);
        let p = a.pair(1, LoraTarget::AttnV).unwrap();
        assert_eq!((p.scale, p.rank, p.rows, p.cols), (2.0, RANK, kv, d));
        assert_eq!(
            p.b.to_f32().unwrap(),
            values(kv * RANK, 6),
            "v rows are never reordered"
        );
        let rs = CONFIG.replace(
            "\"r\": 2",
            "\"r\": 2, \"use_rslora\": true, \"alpha_pattern\": {\"v_proj\": 8}",
        );
        write_peft(&dir, &rs, &tensors);
        let p = LoraAdapter::load(dir.join("adapter_config.json"), &base, 1.0).unwrap();
        assert_eq!(p.pairs[0].scale, 8.0 / 2f32.sqrt());
        for (key, config) in [
            ("r", CONFIG.replace("\"r\": 2,", "")),
            ("target_modules", CONFIG.replace("v_proj", "q_proj")),
            (
                "use_dora",
                CONFIG.replace("\"r\": 2", "\"r\": 2, \"use_dora\": true"),
            ),
            ("", "{not json".to_string()),
        ] {
            write_peft(&dir, &config, &tensors);
            let err = LoraAdapter::load(&dir, &base, 1.0).unwrap_err();
            assert!(
                matches!(&err, Error::LoraConfig { key: k, .. } if k == key),
                "{key}: {err}"
            );
        }
        // the same adapter on a model with wider V rows
        let narrow = model(
            "llama",
            TinyDims {
                n_kv_head: 2,
                ..dims
            },
        );
        write_peft(&dir, CONFIG, &tensors);
        let err = LoraAdapter::load(&dir, &narrow, 1.0).unwrap_err();
        assert!(matches!(err, Error::LoraBaseMismatch { .. }), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

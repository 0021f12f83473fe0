#!/usr/bin/env python3
"""Write a tiny random-weight GGUF of one architecture, for parity tests.

    python3 tests/scripts/tiny_arch_gguf.py ARCH OUT.gguf \
        --bpe-vocab SmolLM2-135M-Instruct.Q4_1.gguf --spm-vocab gemma-3-270m-q4_k_m.gguf

Only PyPI `gguf` (llama.cpp's own writer) and numpy are used. Each file has
the tensor names, shapes and metadata keys llama.cpp's converter writes for
that architecture (`conversion/*.py` in llama.cpp), random weights at a scale
that keeps activations O(1) and gives logits a spread of a few units (so the
top-two margins are clear), and a real tokenizer copied from a real file:

| ARCH          | what it exercises                                      | tokenizer          |
|---------------|--------------------------------------------------------|--------------------|
| llama         | interleaved rope, GQA, Llama 3.1 `rope_freqs` (llama3) | SmolLM2 BPE, llama-bpe |
| llama-swa     | Mistral-style sliding window on every layer            | SmolLM2 BPE, smollm |
| qwen2         | QKV biases, NeoX rope                                  | SmolLM2 BPE, qwen2 |
| qwen3         | QK-norm, head_dim != d_model / n_head                  | SmolLM2 BPE, qwen2 |
| gemma2        | attention and final soft-caps, alternating SWA, post-norms, tied, sqrt(d) embedding scale | Gemma 3 SPM |
| gemma3        | 5 local : 1 global, local rope base, linear-scaled global rope, QK-norm, post-norms | Gemma 3 SPM |
| phi3          | fused attn_qkv and gate-up, longrope short/long factors, attn_factor | Gemma 3 SPM |
| granite       | embedding, residual, attention and logit scales        | SmolLM2 BPE, refact |

`--twin granite_swa` writes the `llama-swa` weights as llama.cpp's
`granite_swa` architecture with every scale 1 and every layer sliding:
llama.cpp's `llama` graph ignores `llama.attention.sliding_window`, so that
twin is how llama.cpp computes a Mistral-style sliding-window Llama.

`--layers/--d-model/--heads/--kv-heads/--head-dim/--ffn` replace the tiny
dimensions and `--vocab N` pads the copied tokenizer with unused control
tokens up to N entries, so a file has the exact tensor shapes of a real model
(`sotto bench --sweep-sizes` writes speed fixtures of SmolLM2-360M,
Qwen2.5-0.5B, Llama-3.2-1B and Qwen2.5-1.5B this way); `--tied` / `--untied`
choose whether the output projection is the embedding table, as the real
model does. Large files draw their weights in float32 (the tiny defaults keep
their float64 draws, so their bytes do not change).

Deterministic: the same arguments give the same bytes.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np

import gguf
from gguf import GGMLQuantizationType as Q

# Shapes: large enough for clear logit margins, small enough that llama.cpp
# evaluates a few hundred tokens in seconds.
BPE_DIMS = dict(n_layer=4, d_model=256, n_head=8, n_kv_head=2, head_dim=32, ffn=512)
SPM_DIMS = dict(n_layer=6, d_model=128, n_head=4, n_kv_head=1, head_dim=32, ffn=256)
CONTEXT = 4096
WINDOW = 24
LOGIT_STD = 4.0
POST_NORM_GAIN = 8.0

# tq1_0 (ternary, 256-element blocks: BPE-sized families only) is a type Sotto
# has no kernel for: the file `sotto inspect` must show and explain.
TYPES = {"f32": Q.F32, "f16": Q.F16, "q8_0": Q.Q8_0, "q4_0": Q.Q4_0, "q4_1": Q.Q4_1,
         "tq1_0": Q.TQ1_0}

ARCHES = ["llama", "llama-swa", "qwen2", "qwen3", "gemma2", "gemma3", "phi3", "granite"]


class Weights:
    """Random tensors from one seeded generator, quantized as llama.cpp would."""

    def __init__(self, seed: int, wtype: Q):
        self.rng = np.random.default_rng(seed)
        self.wtype = wtype

    # Set for model-sized files: float32 draws, half the time and memory.
    float32 = False

    def normal(self, shape: tuple[int, ...], std: float) -> np.ndarray:
        if self.float32:
            x = self.rng.standard_normal(shape, dtype=np.float32)
            x *= np.float32(std)
            return x
        return (self.rng.standard_normal(shape) * std).astype(np.float32)

    def matrix(self, rows: int, cols: int, std: float | None = None) -> np.ndarray:
        """`[rows, cols]` (numpy order; ggml ne = [cols, rows]), fan-in scaled."""
        return self.normal((rows, cols), std if std is not None else 1.0 / math.sqrt(cols))

    def gain(self, n: int) -> np.ndarray:
        """A norm weight around 1, as trained models have them."""
        return (1.0 + self.normal((n,), 0.15)).astype(np.float32)


def add_matrix(w: gguf.GGUFWriter, name: str, data: np.ndarray, wtype: Q) -> None:
    if wtype == Q.F32:
        w.add_tensor(name, data)
    elif wtype == Q.F16:
        w.add_tensor(name, data.astype(np.float16))
    else:
        q = gguf.quants.quantize(data, wtype)
        w.add_tensor(name, q, raw_shape=q.shape, raw_dtype=wtype)


def read_vocab(path: Path) -> dict:
    """Every `tokenizer.ggml.*` key of a real GGUF file (and nothing else)."""
    r = gguf.GGUFReader(str(path))
    out = {}
    for key, field in r.fields.items():
        if key.startswith("tokenizer.ggml."):
            out[key] = field
    return out


# llama.cpp's token type of a control token (gguf.TokenType.CONTROL).
CONTROL_TOKEN = 3


def copy_vocab(w: gguf.GGUFWriter, fields: dict, pre: str | None, pad_to: int | None = None) -> int:
    """Writes the tokenizer keys of `fields`; returns the vocabulary size.
    `pad_to` appends unused control tokens (and scores) up to that size."""
    n_vocab = 0
    for key, field in fields.items():
        if key == "tokenizer.ggml.pre" and pre is not None:
            w.add_string(key, pre)
            continue
        value = field.contents()
        vtype = field.types[0]
        if vtype == gguf.GGUFValueType.ARRAY:
            sub = field.types[1] if len(field.types) > 1 else None
            if pad_to is not None and key in ("tokenizer.ggml.tokens", "tokenizer.ggml.token_type",
                                              "tokenizer.ggml.scores"):
                extra = pad_to - len(value)
                if extra < 0:
                    sys.exit(f"--vocab {pad_to} is smaller than the copied vocabulary ({len(value)})")
                base = len(value)
                value = list(value) + {
                    "tokenizer.ggml.tokens": [f"<|sweep_pad_{base + i}|>" for i in range(extra)],
                    "tokenizer.ggml.token_type": [CONTROL_TOKEN] * extra,
                    "tokenizer.ggml.scores": [0.0] * extra,
                }[key]
            if key == "tokenizer.ggml.tokens":
                n_vocab = len(value)
            w.add_key_value(key, value, vtype, sub_type=sub)
        else:
            w.add_key_value(key, value, vtype)
    if pre is not None and "tokenizer.ggml.pre" not in fields:
        w.add_string("tokenizer.ggml.pre", pre)
    return n_vocab


def llama3_rope_freqs(theta: float, n_rot: int, factor: float, low: float, high: float,
                      original_context: int) -> np.ndarray:
    """The divisors llama.cpp's converter stores as `rope_freqs` for Llama 3.1
    (`rope_scaling.rope_type == "llama3"`): 1 for short wavelengths, `factor`
    for long ones, a smooth blend in between."""
    freqs = 1.0 / theta ** (np.arange(0, n_rot, 2, dtype=np.float64) / n_rot)
    low_wavelen = original_context / low
    high_wavelen = original_context / high
    out = []
    for f in freqs:
        wavelen = 2 * math.pi / f
        if wavelen < high_wavelen:
            out.append(1.0)
        elif wavelen > low_wavelen:
            out.append(factor)
        else:
            smooth = (original_context / wavelen - low) / (high - low)
            out.append(1.0 / ((1 - smooth) / factor + smooth))
    return np.array(out, dtype=np.float32)


def build(arch: str, out: Path, bpe_vocab: Path | None, spm_vocab: Path | None,
          twin: str | None, wtype: Q, etype: Q, otype: Q, seed: int,
          shape: dict | None = None, pad_vocab: int | None = None,
          tied_override: bool | None = None) -> None:
    spm = arch in ("gemma2", "gemma3", "phi3")
    dims = SPM_DIMS if spm else BPE_DIMS
    if arch == "gemma3":
        dims = dict(dims, n_layer=8)
    if shape:
        dims = dict(dims, **shape)
    n_layer, d, n_head, n_kv = dims["n_layer"], dims["d_model"], dims["n_head"], dims["n_kv_head"]
    hd, ff = dims["head_dim"], dims["ffn"]
    if arch == "qwen3":
        hd = 48  # n_head * head_dim = 384 != d_model, as in real Qwen 3
    q_dim, kv_dim = n_head * hd, n_kv * hd

    gguf_arch = {"llama-swa": twin or "llama"}.get(arch, arch)
    w = gguf.GGUFWriter(str(out), gguf_arch)
    # Not the family's name: llama.cpp's vocabulary loader changes token
    # attributes for some model names (e.g. any name containing "phi3").
    w.add_name("tiny random decoder")
    w.add_block_count(n_layer)
    w.add_context_length(CONTEXT)
    w.add_embedding_length(d)
    w.add_feed_forward_length(ff)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_kv)
    w.add_key_length(hd)
    w.add_value_length(hd)
    w.add_layer_norm_rms_eps(1e-6 if spm else 1e-5)
    w.add_rope_dimension_count(hd)
    w.add_file_type({Q.Q8_0: gguf.LlamaFileType.MOSTLY_Q8_0, Q.Q4_0: gguf.LlamaFileType.MOSTLY_Q4_0,
                     Q.Q4_1: gguf.LlamaFileType.MOSTLY_Q4_1,
                     Q.F16: gguf.LlamaFileType.MOSTLY_F16, Q.TQ1_0: gguf.LlamaFileType.MOSTLY_TQ1_0}.get(wtype, gguf.LlamaFileType.ALL_F32))

    vocab_path = spm_vocab if spm else bpe_vocab
    if vocab_path is None:
        sys.exit(f"{arch} needs --{'spm' if spm else 'bpe'}-vocab")
    pre = {"llama": "llama-bpe", "llama-swa": "smollm", "qwen2": "qwen2", "qwen3": "qwen2",
           "granite": "refact"}.get(arch)
    n_vocab = copy_vocab(w, read_vocab(vocab_path), pre, pad_vocab)

    rope_theta = 10_000.0
    tied = False
    rng = Weights(seed, wtype)
    rng.float32 = bool(shape) or pad_vocab is not None
    extra: list[tuple[str, np.ndarray]] = []
    if arch == "llama":
        rope_theta = 500_000.0
        extra.append(("rope_freqs.weight", llama3_rope_freqs(rope_theta, hd, 8.0, 1.0, 4.0, 64)))
    elif arch == "llama-swa":
        w.add_sliding_window(WINDOW)
        if twin == "granite_swa":
            # granite_swa with unit scales and every layer sliding is the
            # Llama graph with a sliding-window mask.
            w.add_logit_scale(1.0)
            w.add_residual_scale(1.0)
            w.add_embedding_scale(1.0)
            w.add_attention_scale(1.0 / math.sqrt(hd))
            w.add_sliding_window_pattern([True] * n_layer)
    elif arch in ("qwen2", "qwen3"):
        rope_theta = 1_000_000.0
    elif arch == "gemma2":
        tied = True
        w.add_sliding_window(WINDOW)
        # Caps small enough that tanh bends the scores and logits (the real
        # model's 50 and 30 leave tiny random logits in the linear range).
        w.add_attn_logit_softcapping(4.0)
        w.add_final_logit_softcapping(20.0)
    elif arch == "gemma3":
        tied = True
        rope_theta = 1_000_000.0
        w.add_sliding_window(WINDOW)
        # Gemma 3 4B+ scale their global rope linearly; the local layers keep
        # their own base (10 000, llama.cpp's default without the key).
        w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        w.add_rope_scaling_factor(8.0)
    elif arch == "phi3":
        original = 256
        w.add_rope_scaling_orig_ctx_len(original)
        w.add_sliding_window(0)  # what the converter writes for Phi-4-style files
        w.add_rope_scaling_attn_factors(math.sqrt(1 + math.log(CONTEXT / original) / math.log(original)))
        half = hd // 2
        short = 1.0 + rng.rng.uniform(0.0, 0.5, half)
        long = np.linspace(1.0, 16.0, half) * (1.0 + rng.rng.uniform(0.0, 0.2, half))
        extra.append(("rope_factors_long.weight", long.astype(np.float32)))
        extra.append(("rope_factors_short.weight", short.astype(np.float32)))
    elif arch == "granite":
        w.add_embedding_scale(12.0)
        w.add_residual_scale(0.22)
        w.add_attention_scale(0.3)
        w.add_logit_scale(8.0)
    w.add_rope_freq_base(rope_theta)
    if tied_override is not None:
        tied = tied_override

    logit_std = LOGIT_STD * (8.0 if arch == "granite" else 1.0)
    embd = rng.matrix(n_vocab, d, std=logit_std / math.sqrt(d))
    add_matrix(w, "token_embd.weight", embd, etype)
    for name, values in extra:
        w.add_tensor(name, values)
    for il in range(n_layer):
        p = f"blk.{il}."
        w.add_tensor(p + "attn_norm.weight", rng.gain(d))
        wq, wk, wv = rng.matrix(q_dim, d), rng.matrix(kv_dim, d), rng.matrix(kv_dim, d)
        if arch == "phi3":
            add_matrix(w, p + "attn_qkv.weight", np.concatenate([wq, wk, wv]), wtype)
        else:
            add_matrix(w, p + "attn_q.weight", wq, wtype)
            add_matrix(w, p + "attn_k.weight", wk, wtype)
            add_matrix(w, p + "attn_v.weight", wv, wtype)
        if arch == "qwen2":
            w.add_tensor(p + "attn_q.bias", rng.normal((q_dim,), 0.5))
            w.add_tensor(p + "attn_k.bias", rng.normal((kv_dim,), 0.5))
            w.add_tensor(p + "attn_v.bias", rng.normal((kv_dim,), 0.5))
        if arch in ("qwen3", "gemma3"):
            w.add_tensor(p + "attn_q_norm.weight", rng.gain(hd))
            w.add_tensor(p + "attn_k_norm.weight", rng.gain(hd))
        add_matrix(w, p + "attn_output.weight", rng.matrix(d, q_dim), wtype)
        w.add_tensor(p + "ffn_norm.weight", rng.gain(d))
        gate, up = rng.matrix(ff, d), rng.matrix(ff, d)
        if arch == "phi3":
            add_matrix(w, p + "ffn_up.weight", np.concatenate([gate, up]), wtype)
        else:
            add_matrix(w, p + "ffn_gate.weight", gate, wtype)
            add_matrix(w, p + "ffn_up.weight", up, wtype)
        add_matrix(w, p + "ffn_down.weight", rng.matrix(d, ff), wtype)
        if arch in ("gemma2", "gemma3"):
            # Post-norm gains large enough that the blocks, not the scaled
            # (and tied) embedding, decide the next token.
            w.add_tensor(p + "post_attention_norm.weight", POST_NORM_GAIN * rng.gain(d))
            w.add_tensor(p + "post_ffw_norm.weight", POST_NORM_GAIN * rng.gain(d))
        if twin == "granite_swa":
            # granite_swa requires per-head attention sinks; -1000 adds
            # exp(-1000 - max) = 0 to each softmax denominator.
            w.add_tensor(p + "attn_sinks.weight", np.full(n_head, -1000.0, dtype=np.float32))
    w.add_tensor("output_norm.weight", rng.gain(d))
    if not tied:
        add_matrix(w, "output.weight", rng.matrix(n_vocab, d, std=logit_std / math.sqrt(d)), otype)

    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("arch", choices=ARCHES)
    ap.add_argument("out", type=Path)
    ap.add_argument("--bpe-vocab", type=Path, help="GGUF whose byte-level BPE tokenizer is copied")
    ap.add_argument("--spm-vocab", type=Path, help="GGUF whose SentencePiece tokenizer is copied")
    ap.add_argument("--twin", choices=["granite_swa"], help="write llama-swa as this llama.cpp architecture")
    # f32 layers by default: the test is of the architecture's arithmetic,
    # and 8-bit activation rounding (what llama.cpp pairs with quantized
    # weights) makes llama.cpp's own self-difference ten times larger.
    ap.add_argument("--wtype", choices=TYPES, default="f32", help="type of the layers' weight matrices")
    ap.add_argument("--embd-type", choices=TYPES, default="f16", help="type of token_embd")
    # f32 by default for the same reason: llama.cpp rounds the activations
    # of an f16 output projection to f16 (2e-4 relative on the logits),
    # more than its own self-difference on a model with flat attention.
    ap.add_argument("--output-type", choices=TYPES, default="f32", help="type of output (untied families)")
    ap.add_argument("--seed", type=int, default=0)
    dims = ap.add_argument_group("a real model's shape (default: the tiny shape of the family)")
    for flag, key in [("--layers", "n_layer"), ("--d-model", "d_model"), ("--heads", "n_head"),
                      ("--kv-heads", "n_kv_head"), ("--head-dim", "head_dim"), ("--ffn", "ffn")]:
        dims.add_argument(flag, type=int, dest=key)
    dims.add_argument("--vocab", type=int, help="pad the tokenizer to this many tokens")
    tie = dims.add_mutually_exclusive_group()
    tie.add_argument("--tied", dest="tied", action="store_true", default=None,
                     help="the output projection is the embedding table")
    tie.add_argument("--untied", dest="tied", action="store_false", help="a separate output matrix")
    args = ap.parse_args()
    if args.twin and args.arch != "llama-swa":
        sys.exit("--twin applies to llama-swa only")
    wtype, etype, otype = TYPES[args.wtype], TYPES[args.embd_type], TYPES[args.output_type]
    seed = args.seed * 1000 + ARCHES.index(args.arch)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    shape = {k: getattr(args, k) for k in ("n_layer", "d_model", "n_head", "n_kv_head", "head_dim", "ffn")
             if getattr(args, k) is not None}
    # Written beside the destination and renamed: a cut run leaves no file
    # that looks complete.
    tmp = args.out.with_name(args.out.name + ".tmp")
    build(args.arch, tmp, args.bpe_vocab, args.spm_vocab, args.twin, wtype, etype, otype, seed,
          shape or None, args.vocab, args.tied)
    tmp.replace(args.out)


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""A third engine for the parity tests: the exact forward pass of a
Llama-architecture GGUF in float64, with numpy and gguf-py only (no llama.cpp,
no Sotto code).

    f64_forward.py --model M.gguf --refs DIR/refs.json --out DIR/NAME.json
                   [--lora ADAPTER.gguf [--lora-scale S]]

Both engines under test round on the way: llama.cpp and Sotto quantize
activations to 8 bits for quantized weights (ggml's `vec_dot_type`), keep the
KV cache in f16, and llama.cpp also rounds activations to f16 for F16
weights. The parity tests budget Sotto's distance to llama.cpp by llama.cpp's
distance to itself (its one-token and flash-attention runs), which is a
sample of that rounding noise, not a bound on it: on AVX2 llama.cpp's
alternates round the same way its reference does, so its self-difference is
smaller than on AVX-512 while the distance between two engines that round
differently is not. This script gives the tests the arithmetic both engines
approximate: every weight dequantized exactly as ggml defines its blocks
(gguf-py's `dequantize`), then RMSNorm, rope, causal grouped-query attention,
SwiGLU and the output projection, all in float64 with no rounding of
activations or cache. A test can then ask which engine is further from it.

For every sequence of refs.json (llama_ref.py's output: prompt plus
llama.cpp's continuation) it writes, evaluated along the same tokens:
the argmax and top-two margin at every teacher-forced position, and the full
logit rows at the same positions as llama.cpp's `full_logits`, to
DIR/f64_<name>.f32 (row-major little-endian f32: rounding the result once is
far below what any comparison here resolves). `--lora` applies a GGUF LoRA
adapter as llama.cpp does, unmerged and exact: W·x + s·B·(A·x) with
s = scale·alpha/rank (scale alone when the adapter has no alpha). An
adapter merged at load is a model of its own: lora_adapters.py `--merged`
writes it as a GGUF, which this script runs like any other file.

Architectures: `llama` (Llama, SmolLM, Mistral without a sliding window);
any other is refused. Cached: when --out records the same inputs (this
script, refs.json's inputs key, the adapter) and its row files are there,
nothing runs; concurrent runs on one --out take turns (a lock file beside it).
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import sys
from pathlib import Path

import numpy as np
from gguf import GGUFReader
from gguf.quants import dequantize


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def field(reader: GGUFReader, key: str, default=None):
    f = reader.get_field(key)
    if f is None:
        return default
    value = f.contents()
    return value


def tensors_f64(reader: GGUFReader) -> dict[str, np.ndarray]:
    """Every tensor dequantized to float64, numpy shape = reversed ggml ne."""
    out = {}
    for t in reader.tensors:
        shape = tuple(int(d) for d in reversed(t.shape.tolist()))
        data = dequantize(t.data, t.tensor_type)
        out[t.name] = np.asarray(data, dtype=np.float64).reshape(shape)
    return out


def apply_lora(weights: dict[str, np.ndarray], adapter: Path, scale: float) -> int:
    """Folds W + s·B·A into `weights` in float64 (exact: the product of the
    adapter's f32 factors). Returns the pairs applied."""
    reader = GGUFReader(adapter)
    if field(reader, "general.type") != "adapter" or field(reader, "adapter.type") != "lora":
        raise SystemExit(f"{adapter}: not a GGUF LoRA adapter")
    alpha = float(field(reader, "adapter.lora.alpha", 0.0) or 0.0)
    parts = tensors_f64(reader)
    pairs = 0
    for name, a in parts.items():
        if not name.endswith(".lora_a"):
            continue
        base = name[: -len(".lora_a")]
        b = parts.get(base + ".lora_b")
        if b is None:
            raise SystemExit(f"{adapter}: {name} has no lora_b")
        if base not in weights:
            raise SystemExit(f"{adapter}: {base} is not a tensor of the base model")
        rank = a.shape[0]
        s = scale * alpha / rank if alpha else scale
        w = weights[base]
        if (b.shape[0], a.shape[1]) != w.shape:
            raise SystemExit(f"{adapter}: {base} is {w.shape}, the adapter's B·A is "
                             f"{(b.shape[0], a.shape[1])}")
        weights[base] = w + s * (b @ a)
        pairs += 1
    return pairs


class Llama:
    """The float64 forward pass of a `llama`-architecture GGUF (llama.cpp's
    graph: rope in the GGUF's adjacent-pair layout, tied output when the file
    has no `output.weight`)."""

    def __init__(self, model: Path, lora: Path | None, lora_scale: float):
        reader = GGUFReader(model)
        arch = field(reader, "general.architecture")
        if arch != "llama":
            raise SystemExit(f"{model}: architecture {arch!r}; this reference runs 'llama' only")
        self.n_layer = int(field(reader, "llama.block_count"))
        self.n_embd = int(field(reader, "llama.embedding_length"))
        self.n_head = int(field(reader, "llama.attention.head_count"))
        self.n_head_kv = int(field(reader, "llama.attention.head_count_kv", self.n_head))
        self.eps = float(field(reader, "llama.attention.layer_norm_rms_epsilon", 1e-5))
        self.rope_base = float(field(reader, "llama.rope.freq_base", 10000.0))
        head_dim = self.n_embd // self.n_head
        self.head_dim = int(field(reader, "llama.attention.key_length", head_dim))
        self.n_rot = int(field(reader, "llama.rope.dimension_count", self.head_dim))
        for key in ("llama.rope.scaling.type", "llama.attention.sliding_window"):
            if field(reader, key) not in (None, "none"):
                raise SystemExit(f"{model}: {key} is not supported by this reference")
        self.w = tensors_f64(reader)
        self.lora_pairs = apply_lora(self.w, lora, lora_scale) if lora else 0
        if "output.weight" not in self.w:
            self.w["output.weight"] = self.w["token_embd.weight"]
        freqs = self.rope_base ** (-np.arange(0, self.n_rot, 2, dtype=np.float64) / self.n_rot)
        if "rope_freqs.weight" in self.w:
            freqs = freqs / self.w["rope_freqs.weight"]
        self.freqs = freqs

    def rms_norm(self, x: np.ndarray, weight: np.ndarray) -> np.ndarray:
        return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + self.eps) * weight

    def rope(self, x: np.ndarray) -> np.ndarray:
        """x: [tokens, heads, head_dim]; rotates the first n_rot dims in
        adjacent pairs (2i, 2i+1) by position · freq_i."""
        t = np.arange(x.shape[0], dtype=np.float64)[:, None] * self.freqs[None, :]
        cos, sin = np.cos(t)[:, None, :], np.sin(t)[:, None, :]
        out = x.copy()
        x0 = x[..., 0 : self.n_rot : 2]
        x1 = x[..., 1 : self.n_rot : 2]
        out[..., 0 : self.n_rot : 2] = x0 * cos - x1 * sin
        out[..., 1 : self.n_rot : 2] = x0 * sin + x1 * cos
        return out

    def hidden(self, tokens: list[int]) -> np.ndarray:
        """The final-normed hidden states, [tokens, n_embd]."""
        w = self.w
        n, hd = len(tokens), self.head_dim
        x = w["token_embd.weight"][np.asarray(tokens)]
        mask = np.triu(np.full((n, n), -np.inf), k=1)
        group = self.n_head // self.n_head_kv
        for il in range(self.n_layer):
            p = f"blk.{il}."
            h = self.rms_norm(x, w[p + "attn_norm.weight"])
            q = (h @ w[p + "attn_q.weight"].T).reshape(n, self.n_head, hd)
            k = (h @ w[p + "attn_k.weight"].T).reshape(n, self.n_head_kv, hd)
            v = (h @ w[p + "attn_v.weight"].T).reshape(n, self.n_head_kv, hd)
            q, k = self.rope(q), self.rope(k)
            heads = np.empty((n, self.n_head, hd))
            for head in range(self.n_head):
                kv = head // group
                scores = (q[:, head, :] @ k[:, kv, :].T) / np.sqrt(hd) + mask
                scores -= scores.max(axis=-1, keepdims=True)
                p_att = np.exp(scores)
                p_att /= p_att.sum(axis=-1, keepdims=True)
                heads[:, head, :] = p_att @ v[:, kv, :]
            x = x + heads.reshape(n, self.n_head * hd) @ w[p + "attn_output.weight"].T
            h = self.rms_norm(x, w[p + "ffn_norm.weight"])
            gate = h @ w[p + "ffn_gate.weight"].T
            up = h @ w[p + "ffn_up.weight"].T
            x = x + (gate / (1.0 + np.exp(-gate)) * up) @ w[p + "ffn_down.weight"].T
        return self.rms_norm(x, w["output_norm.weight"])

    def logits(self, hidden: np.ndarray, positions: list[int]) -> np.ndarray:
        return hidden[positions] @ self.w["output.weight"].T


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", type=Path, required=True)
    p.add_argument("--refs", type=Path, required=True, help="llama_ref.py's refs.json")
    p.add_argument("--out", type=Path, required=True, help="the JSON to write (rows beside it)")
    p.add_argument("--lora", type=Path, help="a GGUF LoRA adapter, applied exactly")
    p.add_argument("--lora-scale", type=float, default=1.0)
    args = p.parse_args()

    refs = json.loads(args.refs.read_text(encoding="utf-8"))
    h = hashlib.sha256(Path(__file__).read_bytes())
    h.update(refs["inputs_key"].encode())
    h.update(sha256_of(args.model).encode())
    if args.lora:
        h.update(sha256_of(args.lora).encode())
        h.update(repr(args.lora_scale).encode())
    key = h.hexdigest()
    out_dir = args.out.parent
    # Tests running at once on one reference wait for each other's pass.
    lock = open(args.out.with_suffix(".lock"), "w")
    fcntl.flock(lock, fcntl.LOCK_EX)
    if args.out.is_file():
        old = json.loads(args.out.read_text(encoding="utf-8"))
        if old.get("inputs_key") == key and all(
            (out_dir / s["full_logits"]["file"]).is_file() for s in old["sequences"]
        ):
            print(f"{args.out}: up to date", file=sys.stderr)
            return

    model = Llama(args.model, args.lora, args.lora_scale)
    sequences = []
    for seq in refs["sequences"]:
        tokens = seq["prompt_ids"] + seq["continuation_ids"]
        hidden = model.hidden(tokens)
        tf_pos = [s["pos"] for s in seq["teacher_forced"]]
        rows = model.logits(hidden, tf_pos)
        steps = []
        for pos, row in zip(tf_pos, rows):
            order = np.argsort(row)[::-1][:2]
            steps.append({"pos": pos, "argmax": int(order[0]),
                          "margin": float(row[order[0]] - row[order[1]])})
        full_pos = seq["full_logits"]["positions"]
        file = f"{args.out.stem}_{seq['name']}.f32"
        model.logits(hidden, full_pos).astype("<f4").tofile(out_dir / file)
        sequences.append({
            "name": seq["name"],
            "teacher_forced": steps,
            "full_logits": {"file": file, "positions": full_pos,
                            "vocab_size": int(rows.shape[1])},
        })
        print(f"[{seq['name']}] {len(tokens)} tokens in float64", file=sys.stderr)
    doc = {
        "generator": "tests/scripts/f64_forward.py",
        "inputs_key": key,
        "model_file": args.model.name,
        "lora": {"file": args.lora.name, "scale": args.lora_scale, "pairs": model.lora_pairs}
        if args.lora else None,
        "sequences": sequences,
    }
    tmp = args.out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(doc, indent=1), encoding="utf-8")
    tmp.replace(args.out)


if __name__ == "__main__":
    main()

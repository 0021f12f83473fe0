#!/usr/bin/env python3
"""Write one random low-rank (LoRA) adapter for a Llama-family GGUF in the two
formats people hold adapters in (issue 13's fixture), with PyPI gguf, numpy
and safetensors only: no Sotto code.

    lora_adapters.py BASE.gguf OUT_DIR [--seed N] [--rank R] [--alpha A]
        [--targets attn_q,attn_v,ffn_up] [--relative-size F] [--merged]

OUT_DIR/adapter.gguf is the adapter as llama.cpp's convert_lora_to_gguf.py
writes it (llama.cpp loads it with `--lora`, llama-cpp-python with
`lora_path`): `general.type = adapter`, `adapter.type = lora`,
`adapter.lora.alpha`, the base's `general.architecture`, and per adapted
matrix `<base tensor>.lora_a` (numpy [rank, in], ggml ne [in, rank]) and
`<base tensor>.lora_b` (numpy [out, rank]), both F32.

OUT_DIR/peft/ is the same adapter as Hugging Face PEFT saves it:
`adapter_config.json` (r, lora_alpha, target_modules,
base_model_name_or_path, ...) and `adapter_model.safetensors` with
`base_model.model.model.layers.N.<module>.lora_A.weight` [rank, in] and
`.lora_B.weight` [out, rank].

The two differ where the layouts of the base differ: llama.cpp's converter
reorders the Q/K rows of Llama checkpoints (each head's two rope halves
interleaved into pairs), and it reorders a q_proj/k_proj adapter's B rows the
same way (A acts on the input and keeps its columns). The PEFT B here is in
Hugging Face's order and the GGUF one in llama.cpp's.

With `--merged`, OUT_DIR/merged.gguf is the base with the adapter folded in
as an engine that merges at load stores it: each adapted matrix W + s·B·A
(float64, from the f32 factors) rounded once to Q8_0 by gguf-py's quantizer
when the base matrix is quantized, every other tensor and all metadata copied.
llama.cpp runs that file as a model of its own, so an engine's merge can be
held to llama.cpp on the very weights it computes with, rather than to the
unmerged adapter, which is a slightly different model.

B·A is scaled so that, for each adapted matrix W, the update
(alpha / rank)·B·A has a Frobenius norm of `--relative-size` (default 0.2)
times W's (W dequantized by gguf-py): the logits move clearly (a few top-1
changes) but the model still talks.
"""

import argparse
import json
import os
import sys

import numpy as np
from gguf import GGMLQuantizationType, GGUFReader, GGUFValueType, GGUFWriter, GGUFType
from gguf.quants import dequantize, quantize
from safetensors.numpy import save_file

# GGUF name (after "blk.N.") -> PEFT module path (after "model.layers.N.")
# and its target_modules name.
MODULES = {
    "attn_q": ("self_attn.q_proj", "q_proj"),
    "attn_k": ("self_attn.k_proj", "k_proj"),
    "attn_v": ("self_attn.v_proj", "v_proj"),
    "attn_output": ("self_attn.o_proj", "o_proj"),
    "ffn_gate": ("mlp.gate_proj", "gate_proj"),
    "ffn_up": ("mlp.up_proj", "up_proj"),
    "ffn_down": ("mlp.down_proj", "down_proj"),
}


def field(reader, key):
    f = reader.get_field(key)
    if f is None:
        sys.exit(f"{key}: missing from the base model")
    return f.contents()


def to_gguf_rows(b, n_head):
    """Hugging Face's Q/K row order to llama.cpp's: within each head, rows
    [first half, second half] become interleaved pairs (half0[0], half1[0],
    half0[1], ...), as llama.cpp's converter reorders the base rows."""
    rows, cols = b.shape
    hd = rows // n_head
    return b.reshape(n_head, 2, hd // 2, cols).swapaxes(1, 2).reshape(rows, cols)


FLOAT_TYPES = {GGMLQuantizationType.F32, GGMLQuantizationType.F16, GGMLQuantizationType.BF16}


def write_merged(reader, replaced, path):
    """The base model at `path` with the tensors in `replaced` (name ->
    (data, ggml type)) swapped in: every metadata field copied as is (as
    gguf-py's gguf_new_metadata.py copies them), the tensors in their order."""
    writer = GGUFWriter(path, field(reader, "general.architecture"))
    for f in reader.fields.values():
        if f.name == "general.architecture" or f.name.startswith("GGUF."):
            continue
        vtype = f.types[0]
        sub = f.types[-1] if vtype == GGUFValueType.ARRAY else None
        writer.add_key_value(f.name, f.contents(), vtype, sub_type=sub)
    for t in reader.tensors:
        data, qtype = replaced.get(t.name, (t.data, t.tensor_type))
        writer.add_tensor(t.name, data, raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("base", help="the base model GGUF")
    p.add_argument("out_dir")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--rank", type=int, default=8)
    p.add_argument("--alpha", type=float, default=16.0)
    p.add_argument("--targets", default="attn_q,attn_v,ffn_up")
    p.add_argument("--relative-size", type=float, default=0.2)
    p.add_argument("--base-name", default="HuggingFaceTB/SmolLM2-135M-Instruct",
                   help="base_model_name_or_path of the PEFT config")
    p.add_argument("--merged", action="store_true",
                   help="also write merged.gguf: the base with the adapter merged as Q8_0")
    args = p.parse_args()

    targets = [t for t in args.targets.split(",") if t]
    for t in targets:
        if t not in MODULES:
            sys.exit(f"unknown target {t}; one of {', '.join(MODULES)}")
    reader = GGUFReader(args.base)
    arch = field(reader, "general.architecture")
    if arch != "llama":
        sys.exit(f"{args.base}: architecture {arch}; this fixture writes Llama adapters")
    n_layer = int(field(reader, f"{arch}.block_count"))
    n_head = int(field(reader, f"{arch}.attention.head_count"))
    n_kv_head = int(field(reader, f"{arch}.attention.head_count_kv"))
    by_name = {t.name: t for t in reader.tensors}

    rng = np.random.default_rng(args.seed)
    scale = args.alpha / args.rank
    gguf_tensors = {}
    peft_tensors = {}
    merged = {}
    for il in range(n_layer):
        for target in targets:
            name = f"blk.{il}.{target}.weight"
            t = by_name.get(name)
            if t is None:
                sys.exit(f"{name}: not in the base model")
            w = dequantize(t.data, t.tensor_type).reshape(int(t.shape[1]), int(t.shape[0]))
            out_dim, in_dim = w.shape
            a = rng.standard_normal((args.rank, in_dim)).astype(np.float64) / np.sqrt(in_dim)
            b = rng.standard_normal((out_dim, args.rank)).astype(np.float64)
            delta = scale * np.linalg.norm(b @ a)
            b *= args.relative_size * np.linalg.norm(w.astype(np.float64)) / delta
            a32, b32 = a.astype(np.float32), b.astype(np.float32)
            module, _ = MODULES[target]
            peft = f"base_model.model.model.layers.{il}.{module}"
            peft_tensors[f"{peft}.lora_A.weight"] = np.ascontiguousarray(a32)
            peft_tensors[f"{peft}.lora_B.weight"] = np.ascontiguousarray(b32)
            b_gguf = b32
            if target == "attn_q":
                b_gguf = to_gguf_rows(b32, n_head)
            elif target == "attn_k":
                b_gguf = to_gguf_rows(b32, n_kv_head)
            gguf_tensors[f"{name}.lora_a"] = np.ascontiguousarray(a32)
            gguf_tensors[f"{name}.lora_b"] = np.ascontiguousarray(b_gguf)
            if args.merged:
                m = w.astype(np.float64) + scale * (b_gguf.astype(np.float64) @ a32.astype(np.float64))
                if t.tensor_type in FLOAT_TYPES or in_dim % 32:
                    merged[name] = (m.astype(np.float32), GGMLQuantizationType.F32)
                else:
                    q8 = quantize(m.astype(np.float32), GGMLQuantizationType.Q8_0)
                    merged[name] = (q8, GGMLQuantizationType.Q8_0)

    os.makedirs(os.path.join(args.out_dir, "peft"), exist_ok=True)
    writer = GGUFWriter(os.path.join(args.out_dir, "adapter.gguf"), arch)
    writer.add_type(GGUFType.ADAPTER)
    writer.add_string("adapter.type", "lora")
    writer.add_float32("adapter.lora.alpha", args.alpha)
    for name, data in gguf_tensors.items():
        writer.add_tensor(name, data)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()

    if args.merged:
        write_merged(reader, merged, os.path.join(args.out_dir, "merged.gguf"))

    config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": args.base_name,
        "r": args.rank,
        "lora_alpha": args.alpha,
        "lora_dropout": 0.0,
        "target_modules": sorted(MODULES[t][1] for t in targets),
        "bias": "none",
        "fan_in_fan_out": False,
        "use_rslora": False,
        "use_dora": False,
        "inference_mode": True,
    }
    with open(os.path.join(args.out_dir, "peft", "adapter_config.json"), "w") as f:
        json.dump(config, f, indent=2)
    save_file(peft_tensors, os.path.join(args.out_dir, "peft", "adapter_model.safetensors"),
              metadata={"format": "pt"})
    print(f"{args.out_dir}: {len(gguf_tensors) // 2} adapted matrices, rank {args.rank}, "
          f"alpha {args.alpha}, targets {targets}", file=sys.stderr)


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Writes the seed corpus of the sotto-models fuzz targets with PyPI `gguf`
(llama.cpp's own GGUF writer), so the seeds are files llama.cpp's tools
would write, not files our writer thinks are right.

  corpus/model_load/   one minimal valid model per architecture the registry
                       knows (llama, qwen2, qwen3, gemma2, gemma3, phi3,
                       granite) with tiny F32/F16 tensors and a tiny
                       vocabulary of each tokenizer kind (gpt2 byte-level
                       BPE, llama SentencePiece), plus the optional paths
                       (llama3 rope + rope_freqs, sliding-window patterns,
                       longrope factors, fused projections, biases)
  corpus/gguf_reader/  every metadata value type (nested arrays included),
                       a custom alignment, tensors of several ggml types,
                       and truncated / mutated copies of the above

Run: /work/venvs/llama/bin/python models/fuzz/make-corpus.py
(deterministic: re-running rewrites the same bytes).
"""
import os
import struct
import sys
import tempfile

import numpy as np
import gguf
from gguf import GGMLQuantizationType as T
from gguf import GGUFValueType as V

HERE = os.path.dirname(os.path.abspath(__file__))
READER = os.path.join(HERE, "corpus", "gguf_reader")
LOAD = os.path.join(HERE, "corpus", "model_load")

D, N_HEAD, N_KV, HEAD_DIM, FFN, N_LAYER = 8, 2, 1, 4, 16, 1


def image(build, arch="llama"):
    """The bytes gguf.GGUFWriter writes after `build(writer)`."""
    with tempfile.NamedTemporaryFile(suffix=".gguf", delete=False) as f:
        path = f.name
    try:
        w = gguf.GGUFWriter(path, arch)
        build(w)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        with open(path, "rb") as f:
            return f.read()
    finally:
        os.unlink(path)


def values(shape, seed):
    n = int(np.prod(shape))
    v = ((np.arange(n) * 7 + seed * 13) % 17 - 8) / 16.0
    return v.reshape(shape).astype(np.float32)


def gpt2_vocab(w):
    chars = list("helo wrd") + ["Ġ"]
    tokens = [c for c in chars if c != " "] + ["he", "ll", "hell", "Ġw"]
    tokens += ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    types = [1] * (len(tokens) - 3) + [3, 3, 3]
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("smollm")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(["h e", "l l", "he ll", "Ġ w"])
    w.add_bos_token_id(len(tokens) - 2)
    w.add_eos_token_id(len(tokens) - 1)
    w.add_add_bos_token(False)
    w.add_chat_template(
        "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n"
        "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    return len(tokens)


def spm_vocab(w):
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in (0x0A, 0x20, 0xC3)]
    tokens += ["▁", "h", "e", "l", "o", "w", "▁h", "he", "ll", "hell", "▁hell", "<end_of_turn>"]
    types = [2, 3, 3] + [6] * 3 + [1] * 11 + [3]
    scores = [0.0] * 6 + [-float(i) for i in range(11)] + [0.0]
    w.add_tokenizer_model("llama")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_scores(scores)
    w.add_unk_token_id(0)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_add_bos_token(True)
    w.add_add_space_prefix(True)
    return len(tokens)


def model(arch, spm=False, extra=None, layers=N_LAYER, dtype=np.float32):
    def build(w):
        k = lambda s: f"{arch}.{s}"
        w.add_name("tiny")
        w.add_uint32(k("block_count"), layers)
        w.add_uint32(k("embedding_length"), D)
        w.add_uint32(k("attention.head_count"), N_HEAD)
        w.add_uint32(k("attention.head_count_kv"), N_KV)
        w.add_uint32(k("attention.key_length"), HEAD_DIM)
        w.add_uint32(k("feed_forward_length"), FFN)
        w.add_uint32(k("context_length"), 128)
        w.add_float32(k("rope.freq_base"), 10000.0)
        w.add_uint32(k("rope.dimension_count"), HEAD_DIM)
        w.add_float32(k("attention.layer_norm_rms_epsilon"), 1e-5)
        vocab = spm_vocab(w) if spm else gpt2_vocab(w)
        if arch in ("gemma2", "gemma3"):
            w.add_uint32(k("attention.sliding_window"), 4)
        if arch == "gemma2":
            w.add_float32(k("attn_logit_softcapping"), 50.0)
            w.add_float32(k("final_logit_softcapping"), 30.0)
        if arch == "granite":
            w.add_float32(k("logit_scale"), 4.0)
            w.add_float32(k("residual_scale"), 0.5)
            w.add_float32(k("embedding_scale"), 3.0)
            w.add_float32(k("attention.scale"), 0.25)
        q, kv = N_HEAD * HEAD_DIM, N_KV * HEAD_DIM
        seed = [0]

        def t(name, rows, cols=None, norm=False):
            seed[0] += 1
            shape = (cols,) if rows is None else (rows, cols)
            v = values(shape, seed[0])
            w.add_tensor(name, v if norm or dtype == np.float32 else v.astype(dtype))

        t("token_embd.weight", vocab, D)
        fused = arch == "phi3"
        for il in range(layers):
            n = lambda s: f"blk.{il}.{s}.weight"
            t(n("attn_norm"), None, D, norm=True)
            if fused:
                t(n("attn_qkv"), q + 2 * kv, D)
            else:
                t(n("attn_q"), q, D)
                t(n("attn_k"), kv, D)
                t(n("attn_v"), kv, D)
            if arch == "qwen2":
                for p, rows in (("attn_q", q), ("attn_k", kv), ("attn_v", kv)):
                    t(f"blk.{il}.{p}.bias", None, rows, norm=True)
            t(n("attn_output"), D, q)
            t(n("ffn_norm"), None, D, norm=True)
            if fused:
                t(n("ffn_up"), 2 * FFN, D)
            else:
                t(n("ffn_gate"), FFN, D)
                t(n("ffn_up"), FFN, D)
            t(n("ffn_down"), D, FFN)
            if arch in ("qwen3", "gemma3"):
                t(n("attn_q_norm"), None, HEAD_DIM, norm=True)
                t(n("attn_k_norm"), None, HEAD_DIM, norm=True)
            if arch in ("gemma2", "gemma3"):
                t(n("post_attention_norm"), None, D, norm=True)
                t(n("post_ffw_norm"), None, D, norm=True)
        t("output_norm.weight", None, D, norm=True)
        if arch not in ("gemma2", "gemma3"):
            t("output.weight", vocab, D)
        if extra:
            extra(w, k, t)

    return image(build, arch)


def llama3_rope(w, k, t):
    w.add_string(k("rope.scaling.type"), "llama3")
    w.add_float32(k("rope.scaling.factor"), 8.0)
    w.add_float32(k("rope.scaling.low_freq_factor"), 1.0)
    w.add_float32(k("rope.scaling.high_freq_factor"), 4.0)
    w.add_uint32(k("rope.scaling.original_context_length"), 64)
    w.add_uint32(k("attention.sliding_window"), 16)
    t("rope_freqs.weight", None, HEAD_DIM // 2, norm=True)


def longrope(w, k, t):
    w.add_string(k("rope.scaling.type"), "longrope")
    w.add_uint32(k("rope.scaling.original_context_length"), 64)
    w.add_float32(k("rope.scaling.attn_factor"), 1.2)
    t("rope_factors_short.weight", None, HEAD_DIM // 2, norm=True)
    t("rope_factors_long.weight", None, HEAD_DIM // 2, norm=True)


def swa_pattern(w, k, t):
    w.add_array(k("attention.sliding_window_pattern"), [True, False])
    w.add_float32(k("rope.freq_base_swa"), 10000.0)
    w.add_float32(k("final_logit_softcapping"), 30.0)


def every_value_type():
    """Every metadata value type, arrays of each, nested arrays, a custom
    alignment and tensors of several ggml types (raw blocks)."""

    def build(w):
        w.add_custom_alignment(64)
        w.add_key_value("t.u8", 200, V.UINT8)
        w.add_key_value("t.i8", -5, V.INT8)
        w.add_key_value("t.u16", 60000, V.UINT16)
        w.add_key_value("t.i16", -300, V.INT16)
        w.add_key_value("t.u32", 4_000_000_000, V.UINT32)
        w.add_key_value("t.i32", -70000, V.INT32)
        w.add_key_value("t.f32", 1.5, V.FLOAT32)
        w.add_key_value("t.bool", True, V.BOOL)
        w.add_key_value("t.string", "héllo", V.STRING)
        w.add_key_value("t.u64", 2**40, V.UINT64)
        w.add_key_value("t.i64", -(2**40), V.INT64)
        w.add_key_value("t.f64", 2.25, V.FLOAT64)
        w.add_array("t.arr.i32", [1, -2, 3])
        w.add_array("t.arr.f32", [0.5, -1.0])
        w.add_array("t.arr.str", ["a", "", "ü"])
        w.add_array("t.arr.bool", [True, False])
        w.add_array("t.arr.empty", [])
        w.add_array("t.arr.nested", [[1, 2], [3]])
        w.add_tensor("f32", values((2, 4), 1))
        w.add_tensor("f16", values((3, 2), 2).astype(np.float16))
        # Raw blocks, shaped rows × bytes: Q8_0 (34 bytes per 32 values),
        # Q4_0 (18 per 32), Q4_K (144 per 256).
        w.add_tensor("q8_0", np.arange(68, dtype=np.uint8).reshape(2, 34), raw_dtype=T.Q8_0)
        w.add_tensor("q4_0", np.arange(18, dtype=np.uint8).reshape(1, 18), raw_dtype=T.Q4_0)
        w.add_tensor("q4_k", np.zeros((1, 144), dtype=np.uint8), raw_dtype=T.Q4_K)
        w.add_tensor("i32", np.arange(4, dtype=np.int32))

    return image(build, "none")


def write(directory, name, data):
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, name), "wb") as f:
        f.write(data)


def main():
    models = {}
    for arch in ("llama", "qwen2", "qwen3", "gemma2", "gemma3", "phi3", "granite"):
        models[f"{arch}-gpt2"] = model(arch)
    models["llama-spm"] = model("llama", spm=True)
    models["gemma3-spm"] = model("gemma3", spm=True, extra=swa_pattern, layers=2)
    models["llama-llama3-rope-f16"] = model("llama", extra=llama3_rope, dtype=np.float16)
    models["phi3-longrope"] = model("phi3", extra=longrope)
    for name, data in models.items():
        write(LOAD, name, data)

    reader = {"every-value-type": every_value_type(), "llama-spm": models["llama-spm"]}
    base = reader["every-value-type"]
    reader["truncated-header"] = base[:20]
    reader["truncated-metadata"] = base[: len(base) // 3]
    reader["truncated-data"] = base[:-40]
    # Mutations at the fields that drive allocation and offsets.
    huge_count = bytearray(base)
    huge_count[16:24] = struct.pack("<Q", 2**62)  # metadata count
    reader["huge-metadata-count"] = bytes(huge_count)
    bad_version = bytearray(base)
    bad_version[4:8] = struct.pack("<I", 1)
    reader["version-1"] = bytes(bad_version)
    for name, data in reader.items():
        write(READER, name, data)
    # Truncated and mutated models for the loader too.
    llama = models["llama-gpt2"]
    write(LOAD, "llama-gpt2-truncated", llama[: len(llama) * 2 // 3])
    many_layers = model("llama", extra=lambda w, k, t: None)
    needle = struct.pack("<Q", len("llama.block_count")) + b"llama.block_count"
    at = many_layers.index(needle) + len(needle) + 4
    mutated = bytearray(many_layers)
    mutated[at : at + 4] = struct.pack("<I", 1 << 24)
    write(LOAD, "llama-block-count-2pow24", bytes(mutated))
    total = sum(os.path.getsize(os.path.join(d, f)) for d in (READER, LOAD) for f in os.listdir(d))
    print(f"{len(os.listdir(LOAD))} model_load seeds, {len(os.listdir(READER))} gguf_reader seeds, {total} bytes", file=sys.stderr)


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Write a Hugging Face model folder from a GGUF of the Llama, Mistral,
Granite, Qwen 2, Qwen 3, Phi-3, Gemma 2 or Gemma 3 family (issue 13's
fixture), with PyPI gguf, numpy, safetensors and tokenizers only: no Sotto
code, so the folder is an independent rendering of the same model.

    hf_folder_from_gguf.py MODEL.gguf OUT_DIR [--dtype f32|f16] [--shards N]
        [--check-tokens tests/data/llama_cpp/tokenization.json]
        [--rope-scaling JSON]

The folder holds what `transformers` writes for a LlamaForCausalLM
(MistralForCausalLM when the GGUF has a sliding window, GraniteForCausalLM,
Qwen2ForCausalLM, Qwen3ForCausalLM, Phi3ForCausalLM, Gemma2ForCausalLM,
Gemma3ForCausalLM):
- `config.json` (hyper-parameters from the GGUF metadata);
- the weights dequantized by gguf-py (llama.cpp's own reader) and renamed to
  the Hugging Face layout, with the Q/K rows put back from GGUF's rope
  layout (llama.cpp's converter interleaves each head's two rotated halves;
  Hugging Face keeps them as halves), in `model.safetensors`, or in N shards
  with `model.safetensors.index.json`;
- `tokenizer.json` built from the GGUF vocabulary and merges (byte-level
  BPE with the pre-tokenizer `tokenizer.ggml.pre` names, as the model's own
  tokenizer.json writes it), the control tokens as added special tokens; a
  SentencePiece vocabulary (Gemma) becomes what `transformers` converts it
  to: BPE with byte fallback, its merges ordered by the merged piece's score;
- Gemma's norm weights without the `+1` llama.cpp's converter bakes in;
- Phi-3's `rope_factors_long`/`_short` tensors as config.json's longrope
  `long_factor`/`short_factor` lists;
- Llama 3 rope scaling is a `rope_freqs` tensor in GGUF and a
  `rope_scaling` object in config.json: the tensor's generator parameters
  are not in the GGUF, so the caller passes them (--rope-scaling).
- `tokenizer_config.json` (chat template, special tokens) and
  `generation_config.json`.

With --check-tokens, the written tokenizer.json must encode every case of
that file (llama.cpp's ids for its reference strings on the same model:
`text`, `parse_special`, `ids`) into the same ids, or the script exits 1.
"""

import argparse
import json
import os
import sys

import numpy as np
from gguf import GGUFReader, GGMLQuantizationType
from gguf.quants import dequantize
from safetensors.numpy import save_file
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers

# GGUF tensor name (after "blk.N.") -> Hugging Face name (after "model.layers.N.").
LAYER_NAMES = {
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_output.weight": "self_attn.o_proj.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
    "attn_norm.weight": "input_layernorm.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "attn_q.bias": "self_attn.q_proj.bias",
    "attn_k.bias": "self_attn.k_proj.bias",
    "attn_v.bias": "self_attn.v_proj.bias",
    "attn_q_norm.weight": "self_attn.q_norm.weight",
    "attn_k_norm.weight": "self_attn.k_norm.weight",
}

# Gemma's four layer norms: the second follows attention (Llama's
# post_attention_layernorm precedes the FFN).
GEMMA_LAYER_NAMES = dict(
    LAYER_NAMES,
    **{
        "post_attention_norm.weight": "post_attention_layernorm.weight",
        "ffn_norm.weight": "pre_feedforward_layernorm.weight",
        "post_ffw_norm.weight": "post_feedforward_layernorm.weight",
    },
)

# Phi-3's fused projections.
PHI3_LAYER_NAMES = dict(
    LAYER_NAMES,
    **{"attn_qkv.weight": "self_attn.qkv_proj.weight", "ffn_up.weight": "mlp.gate_up_proj.weight"},
)

# GGUF architecture -> (transformers class, model_type); llama.cpp's
# converter permutes Q/K rows for the Llama family (Granite included) only.
FAMILIES = {
    "llama": ("LlamaForCausalLM", "llama"),
    "granite": ("GraniteForCausalLM", "granite"),
    "phi3": ("Phi3ForCausalLM", "phi3"),
    "qwen2": ("Qwen2ForCausalLM", "qwen2"),
    "qwen3": ("Qwen3ForCausalLM", "qwen3"),
    "gemma2": ("Gemma2ForCausalLM", "gemma2"),
    "gemma3": ("Gemma3ForCausalLM", "gemma3_text"),
}

# The split regexes of Llama 3's and Qwen 2's own tokenizer.json files.
LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|"
                r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}|"
               r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")


def regex_split(pattern):
    return lambda: pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(pattern), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
GLOBAL_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}

# Pre-tokenizer splits of the byte-level vocabularies this fixture supports,
# as llama.cpp's llama-vocab.cpp defines them per `tokenizer.ggml.pre`.
PRE_TOKENIZERS = {
    # Each digit alone, then GPT-2's split (SmolLM, SmolLM2).
    "smollm": lambda: pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    ),
    "gpt2": lambda: pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    "refact": lambda: PRE_TOKENIZERS["smollm"](),
    "llama-bpe": regex_split(LLAMA3_SPLIT),
    "qwen2": regex_split(QWEN2_SPLIT),
    "default": lambda: pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
}


def field(reader, key, default=None):
    f = reader.fields.get(key)
    if f is None:
        return default
    return f.contents()


def unpermute(w, n_head):
    """Inverse of llama.cpp's convert_hf_to_gguf permute: each head's rows go
    from interleaved pairs (GGUF) back to two halves (Hugging Face)."""
    rows, cols = w.shape
    hd = rows // n_head
    return w.reshape(n_head, hd // 2, 2, cols).swapaxes(1, 2).reshape(rows, cols)


def tensors(reader, n_head, n_kv_head, dtype, permuted, gemma, phi3):
    out = {}
    for t in reader.tensors:
        # ggml lists dimensions fastest first; numpy wants them slowest first.
        shape = [int(d) for d in reversed(t.shape)]
        if t.tensor_type in (GGMLQuantizationType.F32, GGMLQuantizationType.F16):
            w = np.asarray(t.data, dtype=np.float32).reshape(shape)
        else:
            w = dequantize(t.data, t.tensor_type).astype(np.float32).reshape(shape)
        name = t.name
        if gemma and name.endswith("norm.weight"):
            w = w - 1.0  # transformers' Gemma RMSNorm multiplies by 1 + weight
        layer_names = GEMMA_LAYER_NAMES if gemma else PHI3_LAYER_NAMES if phi3 else LAYER_NAMES
        if name.startswith("blk."):
            _, layer, rest = name.split(".", 2)
            if rest not in layer_names:
                sys.exit(f"{name}: no Hugging Face name for it in this fixture")
            if permuted and rest == "attn_q.weight":
                w = unpermute(w, n_head)
            elif permuted and rest == "attn_k.weight":
                w = unpermute(w, n_kv_head)
            hf = f"model.layers.{layer}.{layer_names[rest]}"
        elif name in GLOBAL_NAMES:
            hf = GLOBAL_NAMES[name]
        elif name in ("rope_freqs.weight", "rope_factors_long.weight", "rope_factors_short.weight"):
            continue  # rope factors live in config.json as rope_scaling.
        else:
            sys.exit(f"{name}: no Hugging Face name for it in this fixture")
        out[hf] = np.ascontiguousarray(w.astype(dtype))
    return out


def write_weights(out_dir, weights, shards, dtype_name):
    names = sorted(weights)
    if shards <= 1:
        save_file(weights, os.path.join(out_dir, "model.safetensors"), metadata={"format": "pt"})
        return
    per = -(-len(names) // shards)
    weight_map, total = {}, 0
    for i in range(shards):
        part = names[i * per : (i + 1) * per]
        fname = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        save_file({n: weights[n] for n in part}, os.path.join(out_dir, fname), metadata={"format": "pt"})
        for n in part:
            weight_map[n] = fname
            total += weights[n].nbytes
    with open(os.path.join(out_dir, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)


def add_special(tk, tokens, types):
    """Control (3) and user-defined (4) tokens match whole, before the split."""
    specials = [
        AddedToken(tokens[i], special=(types[i] == 3), normalized=False)
        for i in range(len(tokens))
        if types[i] in (3, 4)
    ]
    tk.add_special_tokens([a for a in specials if a.special])
    tk.add_tokens([a for a in specials if not a.special])


def build_sentencepiece_tokenizer(reader):
    """A SentencePiece vocabulary as transformers' converter writes it: BPE
    with byte fallback, each normal piece's splits into two vocabulary
    pieces as merges, ranked by the piece's score (llama.cpp's SentencePiece
    tokenizer merges the best-scoring pair first)."""
    tokens = field(reader, "tokenizer.ggml.tokens")
    scores = field(reader, "tokenizer.ggml.scores")
    types = field(reader, "tokenizer.ggml.token_type")
    vocab = {t: i for i, t in enumerate(tokens)}
    merges = []
    for i, piece in enumerate(tokens):
        if types[i] != 1:
            continue
        local = [(piece[:k], piece[k:]) for k in range(1, len(piece))
                 if piece[:k] in vocab and piece[k:] in vocab]
        local.sort(key=lambda m: (vocab[m[0]], vocab[m[1]]))
        merges.extend((scores[i], m) for m in local)
    merges.sort(key=lambda x: x[0], reverse=True)  # stable: ties keep piece order
    unk = field(reader, "tokenizer.ggml.unknown_token_id", 0)
    tk = Tokenizer(models.BPE(vocab=vocab, merges=[m for _, m in merges], unk_token=tokens[unk],
                              fuse_unk=True, byte_fallback=True))
    prefix = bool(field(reader, "tokenizer.ggml.add_space_prefix", True))
    replace = normalizers.Replace(" ", "\u2581")
    tk.normalizer = normalizers.Sequence([normalizers.Prepend("\u2581"), replace]) if prefix else replace
    steps = [decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()]
    if prefix:
        steps.append(decoders.Strip(" ", 1, 0))
    tk.decoder = decoders.Sequence(steps)
    add_special(tk, tokens, types)
    return tk, tokens


def build_tokenizer(reader):
    model = field(reader, "tokenizer.ggml.model")
    if model == "llama":
        return build_sentencepiece_tokenizer(reader)
    if model != "gpt2":
        sys.exit(f"tokenizer.ggml.model {model!r}: this fixture writes BPE (gpt2, llama) only")
    tokens = field(reader, "tokenizer.ggml.tokens")
    types = field(reader, "tokenizer.ggml.token_type")
    merges = [tuple(m.split(" ", 1)) for m in field(reader, "tokenizer.ggml.merges")]
    pre = field(reader, "tokenizer.ggml.pre", "default")
    if pre not in PRE_TOKENIZERS:
        sys.exit(f"tokenizer.ggml.pre {pre!r}: no Hugging Face pre-tokenizer for it in this fixture")
    vocab = {t: i for i, t in enumerate(tokens)}
    # llama.cpp looks whole words up before merging for Llama 3 only, as
    # Llama 3's tokenizer.json says with ignore_merges.
    tk = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False,
                              ignore_merges=(pre == "llama-bpe")))
    if pre == "qwen2":
        tk.normalizer = normalizers.NFC()
    tk.pre_tokenizer = PRE_TOKENIZERS[pre]()
    tk.decoder = decoders.ByteLevel()
    add_special(tk, tokens, types)
    return tk, tokens


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("gguf")
    ap.add_argument("out_dir")
    ap.add_argument("--dtype", choices=["f32", "f16"], default="f32")
    ap.add_argument("--shards", type=int, default=1)
    ap.add_argument("--check-tokens")
    ap.add_argument("--rope-scaling", help="config.json's rope_scaling object (JSON)")
    args = ap.parse_args()

    reader = GGUFReader(args.gguf)
    arch = field(reader, "general.architecture")
    if arch not in FAMILIES:
        sys.exit(f"general.architecture {arch!r}: this fixture writes {sorted(FAMILIES)} folders only")
    architecture, model_type = FAMILIES[arch]
    g = lambda k, d=None: field(reader, f"{arch}.{k}", d)
    window = g("attention.sliding_window")
    if arch == "llama" and window:
        architecture, model_type = "MistralForCausalLM", "mistral"
    n_head, n_kv_head = int(g("attention.head_count")), int(g("attention.head_count_kv"))
    d_model = int(g("embedding_length"))
    dtype = np.float32 if args.dtype == "f32" else np.float16
    gemma = arch.startswith("gemma")
    weights = tensors(reader, n_head, n_kv_head, dtype, permuted=(arch in ("llama", "granite")),
                      gemma=gemma, phi3=(arch == "phi3"))
    has_rope_freqs = any(t.name == "rope_freqs.weight" for t in reader.tensors)
    if has_rope_freqs and not args.rope_scaling:
        sys.exit("the GGUF has a rope_freqs tensor: pass its parameters with --rope-scaling")
    tied = "lm_head.weight" not in weights
    tk, tokens = build_tokenizer(reader)

    bos, eos = field(reader, "tokenizer.ggml.bos_token_id"), field(reader, "tokenizer.ggml.eos_token_id")
    config = {
        "architectures": [architecture],
        "model_type": model_type,
        "hidden_size": d_model,
        "intermediate_size": int(g("feed_forward_length")),
        "num_hidden_layers": int(g("block_count")),
        "num_attention_heads": n_head,
        "num_key_value_heads": n_kv_head,
        "head_dim": int(g("attention.key_length", d_model // n_head)),
        "hidden_act": "silu",
        "max_position_embeddings": int(g("context_length")),
        "rms_norm_eps": float(g("attention.layer_norm_rms_epsilon")),
        "rope_theta": float(g("rope.freq_base", 10000.0)),
        "rope_scaling": json.loads(args.rope_scaling) if args.rope_scaling else None,
        "attention_bias": "model.layers.0.self_attn.q_proj.bias" in weights,
        "mlp_bias": False,
        "tie_word_embeddings": tied,
        "vocab_size": len(tokens),
        "bos_token_id": bos,
        "eos_token_id": eos,
        "torch_dtype": "float32" if args.dtype == "f32" else "float16",
    }
    if model_type == "mistral":
        config["sliding_window"] = int(window)
    elif arch == "granite":
        for key, gguf_key in (("embedding_multiplier", "embedding_scale"), ("residual_multiplier", "residual_scale"),
                              ("attention_multiplier", "attention.scale"), ("logits_scaling", "logit_scale")):
            config[key] = float(g(gguf_key))
    elif arch == "phi3":
        config["sliding_window"] = int(window) if window else None
        factors = {t.name: [float(x) for x in np.asarray(t.data, dtype=np.float32)] for t in reader.tensors
                   if t.name.startswith("rope_factors_")}
        if factors:
            config["original_max_position_embeddings"] = int(g("rope.scaling.original_context_length"))
            config["rope_scaling"] = {"type": "longrope", "long_factor": factors["rope_factors_long.weight"],
                                      "short_factor": factors["rope_factors_short.weight"]}
    elif gemma:
        n_layer = config["num_hidden_layers"]
        del config["hidden_act"]
        config["hidden_activation"] = "gelu_pytorch_tanh"
        config["query_pre_attn_scalar"] = config["head_dim"]
        config["sliding_window"] = int(window) if window else None
        for key, default in (("attn_logit_softcapping", 50.0), ("final_logit_softcapping", 30.0)):
            cap = g(key)
            config[key] = float(cap) if cap else (default if arch == "gemma2" else None)
        if arch == "gemma3":
            config["rope_local_base_freq"] = float(g("rope.freq_base_swa", 10000.0))
            # llama.cpp's default: every sixth layer is global.
            config["layer_types"] = ["full_attention" if il % 6 == 5 else "sliding_attention"
                                     for il in range(n_layer)]
            if g("rope.scaling.type") == "linear":
                config["rope_scaling"] = {"rope_type": "linear", "factor": float(g("rope.scaling.factor"))}
    elif model_type in ("qwen2", "qwen3"):
        config["use_sliding_window"] = False
        config["sliding_window"] = None
    os.makedirs(args.out_dir, exist_ok=True)
    write_weights(args.out_dir, weights, args.shards, args.dtype)
    with open(os.path.join(args.out_dir, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
    tk.save(os.path.join(args.out_dir, "tokenizer.json"))
    tok_config = {
        "tokenizer_class": "GemmaTokenizer" if gemma else "GPT2Tokenizer",
        "bos_token": tokens[bos] if bos is not None else None,
        "eos_token": tokens[eos] if eos is not None else None,
        "unk_token": tokens[field(reader, "tokenizer.ggml.unknown_token_id", 0)],
        "add_bos_token": bool(field(reader, "tokenizer.ggml.add_bos_token", False)),
        "model_max_length": config["max_position_embeddings"],
        "chat_template": field(reader, "tokenizer.chat_template"),
    }
    pad = field(reader, "tokenizer.ggml.padding_token_id")
    if pad is not None:
        tok_config["pad_token"] = tokens[pad]
    with open(os.path.join(args.out_dir, "tokenizer_config.json"), "w") as f:
        json.dump(tok_config, f, indent=2)
    with open(os.path.join(args.out_dir, "generation_config.json"), "w") as f:
        json.dump({"bos_token_id": bos, "eos_token_id": eos, "pad_token_id": pad}, f, indent=2)

    if args.check_tokens:
        with open(args.check_tokens) as f:
            cases = json.load(f)
        bad = 0
        for case in cases:
            # parse_special=False: control tokens' text is plain text.
            tk.encode_special_tokens = not case["parse_special"]
            got = tk.encode(case["text"], add_special_tokens=False).ids
            if got != case["ids"]:
                bad += 1
                if bad <= 5:
                    print(f"tokens differ on {case['text']!r}: {got[:12]} vs llama.cpp {case['ids'][:12]}",
                          file=sys.stderr)
        tk.encode_special_tokens = False
        print(f"tokenizer.json vs llama.cpp: {len(cases) - bad}/{len(cases)} strings identical", file=sys.stderr)
        if bad:
            sys.exit(1)
    print(f"wrote {args.out_dir}: {len(weights)} tensors ({args.dtype}, {max(args.shards, 1)} file(s)), "
          f"tokenizer of {len(tokens)} tokens, tied embeddings: {tied}", file=sys.stderr)


if __name__ == "__main__":
    main()

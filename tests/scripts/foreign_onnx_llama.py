#!/usr/bin/env python3
"""Builds a Llama decoder as ONNX the way Hugging Face optimum exports one,
from a llama GGUF, with the `onnx` helper API alone (no torch, no sotto code):
an independent "foreign" export for tests/tests/ort_foreign.rs.

    foreign_onnx_llama.py MODEL.gguf OUT_DIR [--kv-dtype f16]
        [--no-position-ids] [--no-attention-mask] [--omit-output NAME]

Writes OUT_DIR/model.onnx (weights in OUT_DIR/model.onnx_data, external
data) and OUT_DIR/config.json. The graph has optimum's decoder I/O:

    input_ids          int64 [batch_size, sequence_length]
    attention_mask     int64 [batch_size, total_sequence_length]   (optional)
    position_ids       int64 [batch_size, sequence_length]         (optional)
    past_key_values.N.key/value  [batch_size, kv_heads, past_sequence_length, head_dim]
    logits             [batch_size, sequence_length, vocab]
    present.N.key/value          [batch_size, kv_heads, total_sequence_length, head_dim]

every batch/sequence/past axis symbolic. It is written from the Hugging
Face modeling code's definition of Llama, not from sotto's exporter:
RMSNorm as Pow/ReduceMean/Add/Sqrt/Div/Mul, rotate_half RoPE with cos/sin
computed in the graph from position_ids, past and new KV concatenated,
grouped-query attention by repeating KV heads, an additive causal and
padding mask from attention_mask and the cache positions, SiLU gating.

Weights: llama.cpp's converter permutes the Q and K rows of each head so
that rope pairs adjacent dimensions (ggml rope mode 0); a Hugging Face
checkpoint pairs dimension i with i + head_dim/2. The permutation is undone
here, so the graph holds the checkpoint's layout, as a real export would.
"""

import argparse
import json
import os
import sys

import numpy as np

try:
    import gguf
    import onnx
    from onnx import TensorProto, helper, numpy_helper
except ImportError as e:  # the Rust test reports this line
    sys.exit(f"missing python dependency ({e}): run scripts/ort-deps.sh")

OPSET = 17


def read_gguf(path):
    r = gguf.GGUFReader(path)

    def field(key):
        f = r.fields.get(key)
        if f is None:
            return None
        v = f.parts[f.data[0]]
        if f.types and f.types[0] == gguf.GGUFValueType.STRING:
            return bytes(v).decode("utf-8")
        return v.tolist()[0] if hasattr(v, "tolist") else v

    arch = field("general.architecture")
    if arch != "llama":
        sys.exit(f"{path}: architecture {arch!r}, this script builds llama only")
    hp = {
        "n_layer": field("llama.block_count"),
        "d_model": field("llama.embedding_length"),
        "n_head": field("llama.attention.head_count"),
        "n_kv_head": field("llama.attention.head_count_kv"),
        "ffn": field("llama.feed_forward_length"),
        "ctx": field("llama.context_length"),
        "theta": field("llama.rope.freq_base") or 10000.0,
        "eps": field("llama.attention.layer_norm_rms_epsilon"),
        "bos": field("tokenizer.ggml.bos_token_id"),
        "eos": field("tokenizer.ggml.eos_token_id"),
    }
    hp["head_dim"] = field("llama.attention.key_length") or hp["d_model"] // hp["n_head"]
    tensors = {}
    for t in r.tensors:
        # numpy shape is GGUF's dims reversed: [out, in] for matrices, the
        # layout of a torch Linear weight.
        shape = tuple(int(x) for x in reversed(t.shape.tolist()))
        data = gguf.quants.dequantize(t.data, t.tensor_type)
        tensors[t.name] = np.ascontiguousarray(data.reshape(shape), dtype=np.float32)
    hp["vocab"] = tensors["token_embd.weight"].shape[0]
    return hp, tensors


def unpermute_rope_rows(w, n_heads, head_dim):
    """Inverse of llama.cpp's convert permute: per head, GGUF row 2i goes to
    row i and row 2i+1 to row i + head_dim/2."""
    out_dim, in_dim = w.shape
    assert out_dim == n_heads * head_dim
    return (
        w.reshape(n_heads, head_dim // 2, 2, in_dim)
        .swapaxes(1, 2)
        .reshape(out_dim, in_dim)
    )


class Graph:
    def __init__(self):
        self.nodes, self.inits, self.count = [], [], 0

    def name(self, hint):
        self.count += 1
        return f"/{hint}_{self.count}"

    def op(self, op_type, inputs, hint=None, **attrs):
        out = self.name(hint or op_type)
        self.nodes.append(helper.make_node(op_type, inputs, [out], name=out + "/node", **attrs))
        return out

    def const(self, value, hint, dtype=None):
        arr = np.asarray(value, dtype=dtype)
        name = self.name(hint)
        self.inits.append(numpy_helper.from_array(arr, name))
        return name

    def weight(self, name, arr):
        self.inits.append(numpy_helper.from_array(np.ascontiguousarray(arr), name))
        return name


def rms_norm(g, x, weight, eps):
    sq = g.op("Pow", [x, g.const(np.float32(2.0), "two")])
    mean = g.op("ReduceMean", [sq], axes=[-1], keepdims=1)
    std = g.op("Sqrt", [g.op("Add", [mean, g.const(np.float32(eps), "eps")])])
    return g.op("Mul", [g.op("Div", [x, std]), weight])


def rotate_half(g, x, half, hd):
    lo = g.op("Slice", [x, g.const([0], "s", np.int64), g.const([half], "e", np.int64),
                        g.const([-1], "ax", np.int64)])
    hi = g.op("Slice", [x, g.const([half], "s", np.int64), g.const([hd], "e", np.int64),
                        g.const([-1], "ax", np.int64)])
    return g.op("Concat", [g.op("Neg", [hi]), lo], axis=-1)


def build(hp, t, args):
    g = Graph()
    L, D, H, KV, hd = hp["n_layer"], hp["d_model"], hp["n_head"], hp["n_kv_head"], hp["head_dim"]
    V, eps, half, rep = hp["vocab"], hp["eps"], hp["head_dim"] // 2, hp["n_head"] // hp["n_kv_head"]
    kv_type = TensorProto.FLOAT16 if args.kv_dtype == "f16" else TensorProto.FLOAT

    inputs = [helper.make_tensor_value_info("input_ids", TensorProto.INT64,
                                            ["batch_size", "sequence_length"])]
    if not args.no_attention_mask:
        inputs.append(helper.make_tensor_value_info("attention_mask", TensorProto.INT64,
                                                    ["batch_size", "total_sequence_length"]))
    if not args.no_position_ids:
        inputs.append(helper.make_tensor_value_info("position_ids", TensorProto.INT64,
                                                    ["batch_size", "sequence_length"]))
    past_shape = ["batch_size", KV, "past_sequence_length", hd]
    for i in range(L):
        for kind in ("key", "value"):
            inputs.append(helper.make_tensor_value_info(
                f"past_key_values.{i}.{kind}", kv_type, past_shape))

    # Lengths: S new tokens, P past positions, T = P + S.
    zero = g.const([0], "zero", np.int64)
    ids_shape = g.op("Shape", ["input_ids"])
    seq = g.op("Gather", [ids_shape, g.const(1, "one_idx", np.int64)])            # S (scalar)
    past0 = g.op("Shape", ["past_key_values.0.key"])
    past_len = g.op("Gather", [past0, g.const(2, "two_idx", np.int64)])          # P (scalar)
    total = g.op("Add", [past_len, seq])                                         # T
    one = g.const(1, "one", np.int64)
    cache_pos = g.op("Range", [past_len, total, one])                           # [S]: P..T-1

    if args.no_position_ids:
        if args.no_attention_mask:
            pos = g.op("Unsqueeze", [cache_pos, zero])                           # [1, S]
        else:  # as transformers does for left padding: cumsum(mask) - 1
            csum = g.op("CumSum", ["attention_mask", g.const(1, "axis", np.int64)])
            pos_all = g.op("Sub", [csum, one])
            pos = g.op("Slice", [pos_all, g.op("Unsqueeze", [past_len, zero]),
                                 g.op("Unsqueeze", [total, zero]), g.const([1], "ax", np.int64)])
    else:
        pos = "position_ids"

    # RoPE tables [B, 1, S, hd] from the positions.
    inv_freq = 1.0 / (hp["theta"] ** (np.arange(0, hd, 2, dtype=np.int64).astype(np.float32) / hd))
    freqs = g.op("Mul", [g.op("Unsqueeze", [g.op("Cast", [pos], to=TensorProto.FLOAT),
                                            g.const([-1], "m1", np.int64)]),
                         g.const(inv_freq.astype(np.float32), "inv_freq")])             # [B, S, hd/2]
    emb = g.op("Concat", [freqs, freqs], axis=-1)
    cos = g.op("Unsqueeze", [g.op("Cos", [emb]), g.const([1], "ax1", np.int64)])
    sin = g.op("Unsqueeze", [g.op("Sin", [emb]), g.const([1], "ax1", np.int64)])

    # Additive mask [B, 1, S, T]: key position k visible from query position
    # q when k <= q and attention_mask[k] is 1.
    key_pos = g.op("Range", [g.const(0, "zero_s", np.int64), total, one])                 # [T]
    causal = g.op("LessOrEqual", [g.op("Unsqueeze", [key_pos, zero]),
                                  g.op("Unsqueeze", [cache_pos, g.const([1], "ax1", np.int64)])])  # [S, T]
    if args.no_attention_mask:
        allowed = g.op("Unsqueeze", [causal, g.const([0, 1], "ax01", np.int64)])
    else:
        pad = g.op("Cast", ["attention_mask"], to=TensorProto.BOOL)                   # [B, T]
        pad = g.op("Unsqueeze", [pad, g.const([1, 2], "ax12", np.int64)])               # [B,1,1,T]
        allowed = g.op("And", [g.op("Unsqueeze", [causal, g.const([0, 1], "ax01", np.int64)]), pad])
    bias = g.op("Where", [allowed, g.const(np.float32(0.0), "zero_f"),
                          g.const(np.float32(np.finfo(np.float32).min), "fmin")])

    x = g.op("Gather", [g.weight("model.embed_tokens.weight", t["token_embd.weight"]), "input_ids"])
    outputs_kv = []
    scale = g.const(np.float32(1.0 / np.sqrt(hd)), "scale")
    for i in range(L):
        p = f"model.layers.{i}"
        b = lambda s: t[f"blk.{i}.{s}.weight"]
        h = rms_norm(g, x, g.weight(f"{p}.input_layernorm.weight", b("attn_norm")), eps)
        wq = unpermute_rope_rows(b("attn_q"), H, hd)
        wk = unpermute_rope_rows(b("attn_k"), KV, hd)

        def heads(w, n, name):
            y = g.op("MatMul", [h, g.weight(name, np.ascontiguousarray(w.T))])
            y = g.op("Reshape", [y, g.const([0, 0, n, hd], "shape", np.int64)])
            return g.op("Transpose", [y], perm=[0, 2, 1, 3])                         # [B, n, S, hd]

        q = heads(wq, H, f"{p}.self_attn.q_proj.weight_T")
        k = heads(wk, KV, f"{p}.self_attn.k_proj.weight_T")
        v = heads(b("attn_v"), KV, f"{p}.self_attn.v_proj.weight_T")
        q = g.op("Add", [g.op("Mul", [q, cos]), g.op("Mul", [rotate_half(g, q, half, hd), sin])])
        k = g.op("Add", [g.op("Mul", [k, cos]), g.op("Mul", [rotate_half(g, k, half, hd), sin])])

        past_k, past_v = f"past_key_values.{i}.key", f"past_key_values.{i}.value"
        if kv_type == TensorProto.FLOAT16:
            past_k = g.op("Cast", [past_k], to=TensorProto.FLOAT)
            past_v = g.op("Cast", [past_v], to=TensorProto.FLOAT)
        k_all = g.op("Concat", [past_k, k], axis=2)                                    # [B, KV, T, hd]
        v_all = g.op("Concat", [past_v, v], axis=2)
        for kind, val in (("key", k_all), ("value", v_all)):
            name = f"present.{i}.{kind}"
            if kv_type == TensorProto.FLOAT16:
                val = g.op("Cast", [val], to=TensorProto.FLOAT16)
            g.nodes.append(helper.make_node("Identity", [val], [name], name=f"/{name}/node"))
            outputs_kv.append(helper.make_tensor_value_info(
                name, kv_type, ["batch_size", KV, "total_sequence_length", hd]))

        def repeat_kv(y):
            if rep == 1:
                return y
            u = g.op("Unsqueeze", [y, g.const([2], "ax2", np.int64)])                   # [B, KV, 1, T, hd]
            u = g.op("Concat", [u] * rep, axis=2)                                     # [B, KV, rep, T, hd]
            return g.op("Reshape", [u, g.const([0, H, -1, hd], "shape", np.int64)])

        kr, vr = repeat_kv(k_all), repeat_kv(v_all)
        scores = g.op("Mul", [g.op("MatMul", [q, g.op("Transpose", [kr], perm=[0, 1, 3, 2])]), scale])
        probs = g.op("Softmax", [g.op("Add", [scores, bias])], axis=-1)
        a = g.op("Transpose", [g.op("MatMul", [probs, vr])], perm=[0, 2, 1, 3])         # [B, S, H, hd]
        a = g.op("Reshape", [a, g.const([0, 0, H * hd], "shape", np.int64)])
        a = g.op("MatMul", [a, g.weight(f"{p}.self_attn.o_proj.weight_T", np.ascontiguousarray(b("attn_output").T))])
        x = g.op("Add", [x, a])

        h = rms_norm(g, x, g.weight(f"{p}.post_attention_layernorm.weight", b("ffn_norm")), eps)
        gate = g.op("MatMul", [h, g.weight(f"{p}.mlp.gate_proj.weight_T", np.ascontiguousarray(b("ffn_gate").T))])
        up = g.op("MatMul", [h, g.weight(f"{p}.mlp.up_proj.weight_T", np.ascontiguousarray(b("ffn_up").T))])
        act = g.op("Mul", [gate, g.op("Sigmoid", [gate])])                             # SiLU
        f = g.op("MatMul", [g.op("Mul", [act, up]),
                            g.weight(f"{p}.mlp.down_proj.weight_T", np.ascontiguousarray(b("ffn_down").T))])
        x = g.op("Add", [x, f])

    x = rms_norm(g, x, g.weight("model.norm.weight", t["output_norm.weight"]), eps)
    head = t.get("output.weight", t["token_embd.weight"])
    logits = g.op("MatMul", [x, g.weight("lm_head.weight_T", np.ascontiguousarray(head.T))])
    logits_type = TensorProto.FLOAT
    if kv_type == TensorProto.FLOAT16:
        logits = g.op("Cast", [logits], to=TensorProto.FLOAT16)
        logits_type = TensorProto.FLOAT16
    g.nodes.append(helper.make_node("Identity", [logits], ["logits"], name="/logits/node"))
    outputs = [helper.make_tensor_value_info("logits", logits_type,
                                             ["batch_size", "sequence_length", V])] + outputs_kv
    outputs = [o for o in outputs if o.name not in args.omit_output]
    graph = helper.make_graph(g.nodes, "main_graph", inputs, outputs, g.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="foreign_onnx_llama.py")
    model.ir_version = 8
    return model


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("gguf")
    ap.add_argument("out")
    ap.add_argument("--kv-dtype", choices=["f32", "f16"], default="f32")
    ap.add_argument("--no-position-ids", action="store_true")
    ap.add_argument("--no-attention-mask", action="store_true")
    ap.add_argument("--omit-output", action="append", default=[])
    args = ap.parse_args()

    hp, tensors = read_gguf(args.gguf)
    model = build(hp, tensors, args)
    onnx.checker.check_model(model)
    os.makedirs(args.out, exist_ok=True)
    onnx.save_model(model, os.path.join(args.out, "model.onnx"), save_as_external_data=True,
                    all_tensors_to_one_file=True, location="model.onnx_data", size_threshold=1024)
    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": hp["d_model"],
        "intermediate_size": hp["ffn"],
        "num_hidden_layers": hp["n_layer"],
        "num_attention_heads": hp["n_head"],
        "num_key_value_heads": hp["n_kv_head"],
        "head_dim": hp["head_dim"],
        "vocab_size": hp["vocab"],
        "max_position_embeddings": hp["ctx"],
        "rms_norm_eps": hp["eps"],
        "rope_theta": hp["theta"],
        "bos_token_id": hp["bos"],
        "eos_token_id": hp["eos"],
        "tie_word_embeddings": "output.weight" not in tensors,
        "torch_dtype": "float16" if args.kv_dtype == "f16" else "float32",
    }
    with open(os.path.join(args.out, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
    print(json.dumps({"nodes": len(model.graph.node), "layers": hp["n_layer"],
                      "vocab": hp["vocab"], "out": args.out}))


if __name__ == "__main__":
    main()

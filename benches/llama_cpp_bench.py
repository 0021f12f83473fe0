#!/usr/bin/env python3
"""llama.cpp side of `sotto bench --compare llama.cpp`.

Runs the same sweep as `sotto bench` on llama.cpp through llama-cpp-python's
low-level C API (llama_batch_get_one + llama_decode), the way llama-bench
does, so Python adds only a call per decode: negligible next to a forward
pass. Prints one JSON array of rows on stdout, in the schema of
`sotto bench --json-rows`; progress and llama.cpp's own logs go to stderr.

Test semantics (shared with sotto bench, after llama-bench):
  pp<p>  clear the KV, fill `depth` random tokens untimed, then time the
         prefill of p random tokens (one decode call, batch = p).
  tg<n>  clear the KV, fill depth + 1 random tokens untimed, then time n
         single-token decodes of random tokens (as llama-bench does).
Tokens/s = tokens / seconds per repetition; mean and sample sd over -r reps
after --warmup untimed runs.

--kv-type T or K,V (repeatable; f16, q8_0, q4_0) sets llama.cpp's cache
types (type_k / type_v); a quantized V cache needs flash attention there,
which is then switched on.
"""

import argparse
import ctypes
import json
import math
import os
import random
import sys
import time

INSTALL_HINT = (
    "llama-cpp-python is not importable. Install it built for this CPU with AMX off "
    "(AMX is advertised but disabled on some machines, and llama.cpp would crash; "
    "in a source checkout scripts/llama-deps.sh does this):\n"
    "  CMAKE_ARGS=\"-DGGML_NATIVE=ON -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF "
    "-DCMAKE_C_FLAGS='-mno-amx-tile -mno-amx-int8 -mno-amx-bf16' "
    "-DCMAKE_CXX_FLAGS='-mno-amx-tile -mno-amx-int8 -mno-amx-bf16'\" "
    "pip install --no-binary llama-cpp-python llama-cpp-python"
)


def int_list(text):
    try:
        values = [int(v) for v in text.split(",") if v.strip() != ""]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a comma list of integers: {text!r}")
    if not values or any(v < 0 for v in values):
        raise argparse.ArgumentTypeError(f"expected non-negative integers: {text!r}")
    return values


# ggml type ids and bytes per 32 elements of the KV cache types.
KV_TYPES = {"f16": (1, 64), "q8_0": (8, 34), "q4_0": (2, 18)}


def kv_pair(text):
    names = [t.strip().lower() for t in text.split(",")]
    if len(names) == 1:
        names = names * 2
    if len(names) != 2 or any(n not in KV_TYPES for n in names):
        raise argparse.ArgumentTypeError(f"--kv-type {text!r}: T or K,V of {', '.join(KV_TYPES)}")
    return tuple(names)


def kv_label(pair):
    return pair[0] if pair[0] == pair[1] else f"{pair[0]},{pair[1]}"


def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-m", "--model", required=True, help="GGUF model file")
    ap.add_argument("-p", "--n-prompt", type=int_list, default=[512])
    ap.add_argument("-n", "--n-gen", type=int_list, default=[128])
    ap.add_argument("-t", "--threads", type=int_list, default=[os.cpu_count() or 1])
    ap.add_argument("-d", "--depth", type=int_list, default=[0])
    ap.add_argument("-r", "--repetitions", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--kv-type", type=kv_pair, action="append", help="KV cache types, T or K,V (repeatable)")
    ap.add_argument("--progress", action="store_true", help="one line per test on stderr")
    args = ap.parse_args(argv)
    if not args.kv_type:
        args.kv_type = [("f16", "f16")]
    return args


def mean_sd(xs):
    if not xs:
        return 0.0, 0.0
    m = sum(xs) / len(xs)
    if len(xs) < 2:
        return m, 0.0
    return m, math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1))


def percentile(xs, q):
    """Linear interpolation between closest ranks (numpy's default)."""
    if not xs:
        return 0.0
    s = sorted(xs)
    pos = (len(s) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def peak_rss_bytes():
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def reset_peak_rss():
    # Writing 5 to clear_refs resets VmHWM (Linux >= 4.0); best effort.
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


class LlamaCpp:
    def __init__(self, llama_cpp, model_path):
        self.ll = llama_cpp
        t0 = time.perf_counter()
        mparams = llama_cpp.llama_model_default_params()
        mparams.n_gpu_layers = 0
        self.model = llama_cpp.llama_model_load_from_file(model_path.encode(), mparams)
        self.load_s = time.perf_counter() - t0
        if not self.model:
            raise RuntimeError(f"llama.cpp could not load {model_path}")
        self.vocab = llama_cpp.llama_model_get_vocab(self.model)
        self.n_vocab = llama_cpp.llama_vocab_n_tokens(self.vocab)
        self.weights_bytes = int(llama_cpp.llama_model_size(self.model))
        self.n_layer = llama_cpp.llama_model_n_layer(self.model)
        n_embd = llama_cpp.llama_model_n_embd(self.model)
        n_head = llama_cpp.llama_model_n_head(self.model)
        self.n_head_kv = llama_cpp.llama_model_n_head_kv(self.model)
        self.head_dim = n_embd // n_head
        self.ctx = None
        self.kv = ("f16", "f16")
        # "CPU : SSE3 = 1 | AVX2 = 1 | ..." -> "sse3+avx2+..."
        info = llama_cpp.llama_print_system_info().decode(errors="replace")
        flags = [f.split("=")[0].strip().lower() for f in info.replace("CPU :", "").split("|") if f.strip().endswith("= 1")]
        self.isa = "+".join(f for f in flags if f.startswith(("avx", "f16c", "fma", "neon", "dotprod", "matmul_int8", "amx", "sve")))

    def new_context(self, n_ctx, threads, kv=("f16", "f16")):
        ll = self.ll
        self.kv = kv
        if self.ctx:
            ll.llama_free(self.ctx)
            self.ctx = None
        cparams = ll.llama_context_default_params()
        cparams.n_ctx = n_ctx
        # One ubatch per prompt like llama-bench's defaults (n_batch 2048,
        # n_ubatch 512) for the sizes benchmarked here.
        cparams.n_batch = max(n_ctx, 512)
        cparams.n_ubatch = 512
        cparams.n_threads = threads
        cparams.n_threads_batch = threads
        cparams.no_perf = True
        cparams.type_k = KV_TYPES[kv[0]][0]
        cparams.type_v = KV_TYPES[kv[1]][0]
        if kv[1] != "f16":
            cparams.flash_attn_type = ll.LLAMA_FLASH_ATTN_TYPE_ENABLED
        self.ctx = ll.llama_init_from_model(self.model, cparams)
        if not self.ctx:
            raise RuntimeError(f"llama.cpp could not create a context of {n_ctx} tokens")
        self.n_ctx = ll.llama_n_ctx(self.ctx)

    def kv_bytes(self):
        # keys and values of the context's types, per 32 elements
        per_row = [KV_TYPES[t][1] * self.head_dim // 32 for t in self.kv]
        return self.n_layer * self.n_ctx * self.n_head_kv * sum(per_row)

    def clear(self):
        self.ll.llama_memory_clear(self.ll.llama_get_memory(self.ctx), True)

    def decode(self, tokens):
        arr = (self.ll.llama_token * len(tokens))(*tokens)
        rc = self.ll.llama_decode(self.ctx, self.ll.llama_batch_get_one(arr, len(tokens)))
        if rc != 0:
            raise RuntimeError(f"llama_decode returned {rc}")
        self.ll.llama_synchronize(self.ctx)

    def greedy(self):
        import numpy as np

        logits = self.ll.llama_get_logits_ith(self.ctx, -1)
        return int(np.ctypeslib.as_array(logits, shape=(self.n_vocab,)).argmax())

    def close(self):
        if self.ctx:
            self.ll.llama_free(self.ctx)
        self.ll.llama_model_free(self.model)


def fill_depth(lc, rng, n):
    # Prefill in chunks of n_batch so any depth fits one context.
    toks = [rng.randrange(lc.n_vocab) for _ in range(n)]
    for i in range(0, len(toks), 512):
        lc.decode(toks[i : i + 512])


def run_pp(lc, rng, depth, n_prompt):
    lc.clear()
    if depth:
        fill_depth(lc, rng, depth)
    toks = [rng.randrange(lc.n_vocab) for _ in range(n_prompt)]
    t0 = time.perf_counter()
    for i in range(0, len(toks), 512):
        lc.decode(toks[i : i + 512])
    elapsed = time.perf_counter() - t0
    return elapsed


def run_tg(lc, rng, depth, n_gen):
    lc.clear()
    fill_depth(lc, rng, depth + 1)
    per_token = []
    t0 = time.perf_counter()
    for _ in range(n_gen):
        tok = rng.randrange(lc.n_vocab)
        s = time.perf_counter()
        lc.decode([tok])
        per_token.append(time.perf_counter() - s)
    return time.perf_counter() - t0, per_token


def row(lc, kind, threads, depth, n_prompt, n_gen, samples_s, reps, ttft_s=None, per_token_s=None):
    tokens = n_prompt if kind == "pp" else n_gen
    tps = [tokens / s for s in samples_s if s > 0]
    m, sd = mean_sd(tps)
    out = {
        "backend": "llama.cpp",
        "describe": "llama.cpp via llama-cpp-python " + lc.ll.__version__,
        "isa": lc.isa,
        "threads": threads,
        "test": kind,
        "n_prompt": n_prompt if kind == "pp" else 0,
        "n_gen": n_gen if kind == "tg" else 0,
        "depth": depth,
        "repetitions": reps,
        "tokens_per_s_mean": m,
        "tokens_per_s_sd": sd,
        "tokens_per_s_samples": tps,
        "ttft_ms": None if ttft_s is None else ttft_s * 1e3,
        "latency_p50_ms": None,
        "latency_p90_ms": None,
        "latency_p99_ms": None,
        "load_ms": lc.load_s * 1e3,
        "peak_rss_bytes": peak_rss_bytes(),
        "weights_bytes": lc.weights_bytes,
        "kv_bytes": lc.kv_bytes(),
        "kv_type": kv_label(lc.kv),
    }
    if per_token_s:
        for q in (50, 90, 99):
            out[f"latency_p{q}_ms"] = percentile(per_token_s, q) * 1e3
    return out


def main(argv):
    args = parse_args(argv)
    try:
        import llama_cpp
    except ImportError:
        print(INSTALL_HINT, file=sys.stderr)
        return 2

    if not args.progress:
        # Silence llama.cpp's load chatter.
        cb_type = ctypes.CFUNCTYPE(None, ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p)
        quiet = cb_type(lambda level, text, data: None)
        llama_cpp.llama_log_set(quiet, ctypes.c_void_p(0))
    llama_cpp.llama_backend_init()
    rng = random.Random(args.seed)
    reset_peak_rss()
    lc = LlamaCpp(llama_cpp, args.model)
    rows = []
    try:
        for kv in args.kv_type:
            for depth in args.depth:
                for threads in args.threads:
                    for p in args.n_prompt:
                        if p == 0:
                            continue
                        lc.new_context(depth + p, threads, kv)
                        for _ in range(args.warmup):
                            run_pp(lc, rng, depth, p)
                        samples, ttfts = [], []
                        for _ in range(args.repetitions):
                            s = run_pp(lc, rng, depth, p)
                            t0 = time.perf_counter()
                            lc.greedy()
                            ttfts.append(s + time.perf_counter() - t0)
                            samples.append(s)
                        rows.append(row(lc, "pp", threads, depth, p, 0, samples, args.repetitions, ttft_s=mean_sd(ttfts)[0]))
                        if args.progress:
                            print(f"llama.cpp pp{p} d{depth} t{threads} kv {kv_label(kv)}: {rows[-1]['tokens_per_s_mean']:.1f} tok/s", file=sys.stderr)
                    for n in args.n_gen:
                        if n == 0:
                            continue
                        lc.new_context(depth + 1 + n, threads, kv)
                        for _ in range(args.warmup):
                            run_tg(lc, rng, depth, n)
                        samples, lat = [], []
                        for _ in range(args.repetitions):
                            s, per_token = run_tg(lc, rng, depth, n)
                            samples.append(s)
                            lat.extend(per_token)
                        rows.append(row(lc, "tg", threads, depth, 0, n, samples, args.repetitions, per_token_s=lat))
                        if args.progress:
                            print(f"llama.cpp tg{n} d{depth} t{threads} kv {kv_label(kv)}: {rows[-1]['tokens_per_s_mean']:.1f} tok/s", file=sys.stderr)
    finally:
        lc.close()
    json.dump(rows, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

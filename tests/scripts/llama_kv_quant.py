#!/usr/bin/env python3
"""llama.cpp's teacher-forced logits with a quantized KV cache.

    llama_kv_quant.py --model M.gguf --cases CASE.json --out OUT.f32

CASE.json: {"tokens": [ids], "prefill": P, "chunk": C, "types": "f16,q8_0,q4_0"}.

For each KV type (keys and values of that type: llama.cpp's type_k and
type_v, flash attention on, which a quantized V cache needs there and
which the f16 run shares so the types differ in the cache alone), the
first P tokens are decoded in batches of C and the logits of each batch's
last token kept, then every remaining token is decoded alone and its
logits kept: the protocol of tests/tests/kv_quant.rs on Sotto. OUT.f32
receives, per type in order, (P / C + len(tokens) - P) rows of n_vocab
little-endian f32. Threads as llama_ref.py. References come from
llama.cpp only.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from llama_ref import N_THREADS, SEED  # noqa: E402

import llama_cpp  # noqa: E402
import numpy as np  # noqa: E402
from llama_cpp import Llama  # noqa: E402

# ggml type ids of the cache types
GGML = {"f16": 1, "q8_0": 8, "q4_0": 2}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--cases", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    case = json.loads(args.cases.read_text(encoding="utf-8"))
    tokens, prefill, chunk = case["tokens"], int(case["prefill"]), int(case["chunk"])
    if not (0 < chunk and prefill % chunk == 0 and prefill < len(tokens)):
        raise SystemExit(f"prefill {prefill} in chunks of {chunk} of {len(tokens)} tokens")
    rows = []
    for name in case.get("types", "f16,q8_0,q4_0").split(","):
        llm = Llama(model_path=str(args.model), n_ctx=len(tokens), n_batch=chunk,
                    n_ubatch=chunk, n_threads=N_THREADS, n_threads_batch=N_THREADS,
                    seed=SEED, type_k=GGML[name], type_v=GGML[name], flash_attn=True,
                    verbose=False)
        n_vocab = llm.n_vocab()

        def last_logits() -> np.ndarray:
            ptr = llama_cpp.llama_get_logits_ith(llm._ctx.ctx, -1)
            return np.ctypeslib.as_array(ptr, shape=(n_vocab,)).astype(np.float32)

        for i in range(0, prefill, chunk):
            llm.eval(tokens[i : i + chunk])
            rows.append(last_logits())
        for t in tokens[prefill:]:
            llm.eval([t])
            rows.append(last_logits())
        del llm
    tmp = args.out.with_name(args.out.name + ".tmp")
    np.stack(rows).astype("<f4").tofile(tmp)
    tmp.replace(args.out)
    print(f"{args.out}: {len(rows)} rows", file=sys.stderr)


if __name__ == "__main__":
    main()

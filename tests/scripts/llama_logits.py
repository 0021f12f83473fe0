#!/usr/bin/env python3
"""llama.cpp's logits at every position of given token sequences.

    llama_logits.py --model M.gguf --sequences SEQS.json --out OUT.f32

SEQS.json is a list of token id lists. Each sequence is evaluated in one
llama_decode from an empty cache, with llama_ref.py's settings (context,
batch, threads), and OUT.f32 receives its logits at every position,
sequences one after another (row-major, little-endian f32, n_vocab per row).
A test compares the logits of several files along the same tokens with it
(tests/tests/hf_convert.rs). References come from llama.cpp only.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from llama_ref import N_BATCH, N_CTX, N_THREADS, SEED  # noqa: E402

import numpy as np  # noqa: E402
from llama_cpp import Llama  # noqa: E402


def reference_llama(model: Path) -> Llama:
    """`model` loaded with llama_ref.py's settings, logits at every position."""
    return Llama(model_path=str(model), n_ctx=N_CTX, n_batch=N_BATCH, n_ubatch=N_BATCH,
                 n_threads=N_THREADS, n_threads_batch=N_THREADS, seed=SEED, logits_all=True,
                 verbose=False)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--sequences", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    sequences = json.loads(args.sequences.read_text(encoding="utf-8"))
    llm = reference_llama(args.model)
    rows = []
    for seq in sequences:
        if not seq or len(seq) > N_CTX:
            raise SystemExit(f"a sequence of {len(seq)} tokens (1 to {N_CTX})")
        llm.reset()
        llm.eval(seq)
        rows.append(np.array(llm.scores[: len(seq)], dtype=np.float32))
    tmp = args.out.with_name(args.out.name + ".tmp")
    np.concatenate(rows).astype("<f4").tofile(tmp)
    tmp.replace(args.out)
    print(f"{args.out}: {sum(len(s) for s in sequences)} positions x {llm.n_vocab()}", file=sys.stderr)


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""llama.cpp's next-token logits after its own context shift.

    llama_context_shift.py --model M.gguf --cases CASES.json --out OUT.f32

CASES.json is a list of {"tokens": [...], "keep": K, "discard": D}. For each
case llama.cpp evaluates every token but the last, then shifts its context
as llama.cpp's examples do (llama_memory_seq_rm of positions K..K+D,
llama_memory_seq_add of -D on the positions after: the keys are re-rotated
when the next batch runs), evaluates the last token and writes its logits.
A second row per case is the logits of a fresh evaluation of the kept tokens
(first K, those after K+D, the last), for reports: a shift keeps what the
moved entries had attended to, so the two differ. OUT.f32 receives two rows
of n_vocab little-endian f32 per case. Settings (context, batch, threads)
are llama_ref.py's, through llama_logits.py. References come from llama.cpp only.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from llama_logits import reference_llama  # noqa: E402
from llama_ref import N_CTX  # noqa: E402

import llama_cpp  # noqa: E402
import numpy as np  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--cases", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    cases = json.loads(args.cases.read_text(encoding="utf-8"))
    llm = reference_llama(args.model)
    memory = llama_cpp.llama_get_memory(llm._ctx.ctx)
    if not llama_cpp.llama_memory_can_shift(memory):
        raise SystemExit(f"{args.model}: llama.cpp cannot shift this model's memory")
    rows = []
    for case in cases:
        seq, keep, discard = case["tokens"], case["keep"], case["discard"]
        head, last = seq[:-1], seq[-1]
        if not (0 < discard and keep + discard <= len(head) <= N_CTX):
            raise SystemExit(f"a case of {len(seq)} tokens, keep {keep}, discard {discard}")
        llm.reset()
        llm.eval(head)
        if not llama_cpp.llama_memory_seq_rm(memory, 0, keep, keep + discard):
            raise SystemExit("llama_memory_seq_rm refused the range")
        llama_cpp.llama_memory_seq_add(memory, 0, keep + discard, len(head), -discard)
        llm.n_tokens = len(head) - discard
        llm.eval([last])
        rows.append(np.array(llm.scores[llm.n_tokens - 1], dtype=np.float32))
        kept = head[:keep] + head[keep + discard:] + [last]
        llm.reset()
        llm.eval(kept)
        rows.append(np.array(llm.scores[len(kept) - 1], dtype=np.float32))
    tmp = args.out.with_name(args.out.name + ".tmp")
    np.stack(rows).astype("<f4").tofile(tmp)
    tmp.replace(args.out)
    print(f"{args.out}: {len(cases)} cases x 2 rows x {llm.n_vocab()}", file=sys.stderr)


if __name__ == "__main__":
    main()

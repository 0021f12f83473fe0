#!/usr/bin/env python3
"""llama.cpp's own GBNF grammar sampler as the reference for Sotto's GBNF
support: greedy generation under a grammar, with the margin of every step.

    llama_grammar.py --model M.gguf --cases CASES.json --out OUT.json

CASES.json is a list of {"name", "grammar" (GBNF text, start rule `root`),
"prompt_ids" (token ids, BOS included when the model wants one),
"max_tokens"}. For each case the prompt is evaluated in one batch, then at
every step llama.cpp's grammar sampler (`llama_sampler_init_grammar`, what
`LlamaGrammar.from_string` hands to llama-cpp-python's sampler chain) masks
the logits, the argmax of the masked logits is taken (temperature 0) and
accepted by the grammar, until an end-of-generation token or `max_tokens`.

OUT.json: {"inputs_key", "llama_cpp_python", "cases": [{"name", "tokens"
(the continuation, the end-of-generation token included when one was
picked), "text", "margins" (top-1 minus top-2 of the masked logits per step,
null when only one token was allowed), "stopped" ("eog" or "max_tokens")}]}.
Cached by inputs (model sha256, cases, this script, llama-cpp-python
version): nothing runs when OUT.json is up to date. A grammar llama.cpp does
not parse is an error (exit status 1).
"""

from __future__ import annotations

import argparse
import ctypes
import hashlib
import json
import sys
from pathlib import Path

import numpy as np

from llama_ref import N_THREADS, _QUIET_LOG, detokenize, sha256_of, write_json  # noqa: E402 (sibling script)

import llama_cpp  # noqa: E402
from llama_cpp import Llama, LlamaGrammar  # noqa: E402

N_CTX = 1024
N_BATCH = 512


def inputs_key(*parts) -> str:
    h = hashlib.sha256()
    h.update(Path(__file__).read_bytes())
    h.update(llama_cpp.__version__.encode())
    h.update(json.dumps(parts, sort_keys=True, ensure_ascii=False).encode())
    return h.hexdigest()


def run_case(llm: Llama, case: dict) -> dict:
    vocab = llm._model.vocab
    n_vocab = llm.n_vocab()
    grammar = LlamaGrammar.from_string(case["grammar"], verbose=False)
    sampler = llama_cpp.llama_sampler_init_grammar(
        vocab, grammar._grammar.encode("utf-8"), grammar._root.encode("utf-8"))
    if not sampler:
        raise SystemExit(f"{case['name']}: llama.cpp does not parse the grammar")
    data = np.recarray((n_vocab,), dtype=np.dtype(
        [("id", np.intc), ("logit", np.single), ("p", np.single)], align=True))
    array = llama_cpp.llama_token_data_array(
        data=data.ctypes.data_as(llama_cpp.llama_token_data_p), size=n_vocab, selected=-1,
        sorted=False)
    try:
        llm.reset()
        llm.eval(case["prompt_ids"])
        tokens: list[int] = []
        margins: list[float | None] = []
        stopped = "max_tokens"
        for _ in range(case["max_tokens"]):
            data.id[:] = np.arange(n_vocab, dtype=np.intc)
            data.logit[:] = llm.scores[llm.n_tokens - 1]
            data.p[:] = 0
            array.size = n_vocab
            array.sorted = False
            array.selected = -1
            llama_cpp.llama_sampler_apply(sampler, ctypes.byref(array))
            logits = np.array(data.logit[: array.size], dtype=np.float64)
            ids = np.array(data.id[: array.size])
            order = np.argsort(-logits, kind="stable")
            best = int(ids[order[0]])
            if not np.isfinite(logits[order[0]]):
                raise SystemExit(f"{case['name']}: the grammar allows no token")
            second = logits[order[1]] if len(order) > 1 else -np.inf
            margins.append(float(logits[order[0]] - second) if np.isfinite(second) else None)
            tokens.append(best)
            if llama_cpp.llama_vocab_is_eog(vocab, best):
                stopped = "eog"
                break
            llama_cpp.llama_sampler_accept(sampler, best)
            llm.eval([best])
    finally:
        llama_cpp.llama_sampler_free(sampler)
    text = detokenize(vocab, [t for t in tokens if not llama_cpp.llama_vocab_is_eog(vocab, t)], False)
    return {"name": case["name"], "tokens": tokens, "text": text.decode("utf-8", "replace"),
            "margins": margins, "stopped": stopped}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--cases", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    if not args.model.is_file():
        raise SystemExit(f"model not found: {args.model}")
    cases = json.loads(args.cases.read_text(encoding="utf-8"))
    key = inputs_key(sha256_of(args.model), cases)
    if args.out.is_file() and json.loads(args.out.read_text(encoding="utf-8")).get("inputs_key") == key:
        print(f"{args.out}: up to date", file=sys.stderr)
        return
    llama_cpp.llama_log_set(_QUIET_LOG, ctypes.c_void_p())
    llm = Llama(model_path=str(args.model), n_ctx=N_CTX, n_batch=N_BATCH, n_ubatch=N_BATCH,
                n_threads=N_THREADS, n_threads_batch=N_THREADS, logits_all=True, verbose=False)
    out = [run_case(llm, c) for c in cases]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".json.tmp")
    write_json(tmp, {"generator": "tests/scripts/llama_grammar.py", "inputs_key": key,
                     "llama_cpp_python": llama_cpp.__version__, "model_file": args.model.name,
                     "cases": out})
    tmp.replace(args.out)
    print(f"{args.out}: {len(out)} cases", file=sys.stderr)


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Generate the llama.cpp reference data Sotto's parity tests compare against.

Run from the repository root:

    python3 tests/scripts/gen_llama_cpp_refs.py               # everything
    python3 tests/scripts/gen_llama_cpp_refs.py --only tokenization
    python3 tests/scripts/gen_llama_cpp_refs.py --only chat

The references come from llama.cpp itself (through llama-cpp-python), never
from Sotto, so the Rust tests check Sotto against an independent
implementation. Output goes to tests/data/llama_cpp/ (format: tests/data/README.md).

The generic machinery (greedy, teacher forcing, llama.cpp's self-difference)
is tests/scripts/llama_ref.py's; this script adds the tokenization strings,
the fixed conversations and the France check. Run it with the python
scripts/llama-deps.sh prints (llama-cpp-python built from source with AMX
off, pins in tests/scripts/requirements-refs.txt):

    "$(scripts/llama-deps.sh)" tests/scripts/gen_llama_cpp_refs.py

Model: $SOTTO_MODEL, else ~/.cache/sotto/models/SmolLM2-135M-Instruct.Q4_1.gguf
(its sha256 is recorded in meta.json; regenerate with that exact file).

Determinism: tokenization is exact. Generation is greedy by argmax over the
logits this script reads itself (no sampler, so no seed or temperature is
involved); the seed is still fixed and recorded. Logits depend on ggml's
kernels and thread count, so n_threads and the build's system info are
recorded with them.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
# llama_ref first: it sets up the environment llama.cpp loads with.
from llama_ref import (  # noqa: E402  (the generic reference generator this one specializes)
    SETTINGS,
    LlamaRef,
    detokenize,
    sha256_of,
    versions,
    write_json,
)
import tokenization_cases  # noqa: E402
from llama_cpp import Llama  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[2]
OUT_DIR = REPO_ROOT / "tests" / "data" / "llama_cpp"
DEFAULT_MODEL = Path.home() / ".cache/sotto/models/SmolLM2-135M-Instruct.Q4_1.gguf"

FRANCE_ANSWER = "The capital of France is Paris."

CONVERSATIONS = [
    (
        "france_system",
        [
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": "What is the capital of France?"},
        ],
    ),
    (
        "france_default_system",
        [{"role": "user", "content": "What is the capital of France?"}],
    ),
    (
        "multi_turn",
        [
            {"role": "user", "content": "Hi! Can you help me plan a short trip?"},
            {
                "role": "assistant",
                "content": "Of course! Where would you like to go, and for how many days?",
            },
            {"role": "user", "content": "Three days in Rome. What should I see first?"},
        ],
    ),
    (
        "coding",
        [{"role": "user", "content": "Write a Python function that reverses a string."}],
    ),
    (
        "french",
        [{"role": "user", "content": "Quelle est la plus haute montagne de France ?"}],
    ),
    (
        "chinese",
        [{"role": "user", "content": "请用一句话介绍一下长城。"}],
    ),
    (
        "long_multi_turn_system",
        [
            {
                "role": "system",
                "content": "You are a concise assistant that answers questions about cooking.",
            },
            {"role": "user", "content": "How long should I boil an egg for a soft yolk?"},
            {
                "role": "assistant",
                "content": "About six minutes in boiling water, then cool it in cold water.",
            },
            {"role": "user", "content": "And for a hard-boiled egg?"},
            {
                "role": "assistant",
                "content": "Around ten to twelve minutes, then an ice bath so it peels easily.",
            },
            {"role": "user", "content": "What can I make with leftover boiled eggs?"},
        ],
    ),
    (
        "math",
        [{"role": "user", "content": "What is 12 + 35? Then multiply the result by 3."}],
    ),
]


def gen_tokenization(model_path: Path) -> None:
    llm = Llama(model_path=str(model_path), vocab_only=True, verbose=False)
    vocab = llm._model.vocab
    cases = []

    def add(text: str, parse_special: bool) -> None:
        ids = llm.tokenize(text.encode("utf-8"), add_bos=False, special=parse_special)
        cases.append(
            {
                "text": text,
                "parse_special": parse_special,
                "ids": ids,
                "detok_hex": detokenize(vocab, ids, False).hex(),
                "detok_special_hex": detokenize(vocab, ids, True).hex(),
            }
        )

    for text in tokenization_cases.ALL:
        add(text, True)
    for text in tokenization_cases.PLAIN_TOO:
        add(text, False)

    # Byte-level BPE must round-trip every string when specials are rendered.
    for c in cases:
        if bytes.fromhex(c["detok_special_hex"]) != c["text"].encode("utf-8"):
            raise AssertionError(f"llama.cpp does not round-trip {c['text']!r}")
    write_json(OUT_DIR / "tokenization.json", cases)
    n_special = sum(c["parse_special"] for c in cases)
    print(f"tokenization.json: {len(cases)} cases ({n_special} parse_special, "
          f"{len(cases) - n_special} plain)")


def check_france(ref: LlamaRef, results: list[dict]) -> dict:
    """Sanity check of the whole pipeline on the (a) conversation.

    The expected greedy answer is FRANCE_ANSWER + <|im_end|>. On the reference
    build llama.cpp's first token is a near-tie (" La" vs "The", ~0.13 logit
    apart; an f64 forward pass over the dequantized weights puts "The" ahead
    by ~0.09), so the literal greedy text can differ. The check that must
    hold either way: the expected first token is in llama.cpp's top 2, and
    once it is given, llama.cpp's argmax reproduces the rest of the expected
    answer and then <|im_end|>. A wrong template, tokenization or model would
    break that. The teacher-forced expected answer is stored too
    (logits_france_expected.f32) so Sotto can be compared on it.
    """
    france = next(r for r in results if r["name"] == "france_system")
    im_end = ref.tokenize("<|im_end|>", add_special=False, special=True)
    assert len(im_end) == 1
    expected_ids = ref.tokenize(FRANCE_ANSWER, add_special=False, special=False) + im_end
    greedy_ok = france["continuation_ids"] == expected_ids
    tf = ref.teacher_force(france["prompt_ids"], expected_ids, OUT_DIR, "logits_france_expected.f32")
    first, rest = tf["teacher_forced"][0], tf["teacher_forced"][1:-1]
    first_in_top2 = expected_ids[0] in (first["argmax"], first["top2_id"])
    rest_ok = all(p["argmax"] == p["next_token"] for p in rest)
    vocab = ref.vocab
    print("=" * 72)
    print(f"France (a) greedy answer: {france['continuation_text_special']!r}")
    if greedy_ok:
        print(f"France answer OK: {FRANCE_ANSWER!r} + '<|im_end|>'")
    else:
        print(f"France greedy answer is NOT {FRANCE_ANSWER!r} + '<|im_end|>': first token near-tie, "
              f"argmax {first['argmax']} {detokenize(vocab, [first['argmax']], True)!r} "
              f"({first['top1_logit']:.4f}) vs {first['top2_id']} "
              f"{detokenize(vocab, [first['top2_id']], True)!r} ({first['top2_logit']:.4f})")
        print(f"  expected first token in llama.cpp's top 2: {first_in_top2}; "
              f"rest of the expected answer is llama.cpp's argmax: {rest_ok}")
    print("=" * 72)
    assert greedy_ok or (first_in_top2 and rest_ok), "France check failed: pipeline is broken"
    return {
        "expected_text": FRANCE_ANSWER,
        "expected_ids": expected_ids,
        "greedy_matches_expected": greedy_ok,
        "expected_first_token_in_top2": first_in_top2,
        "expected_rest_is_argmax": rest_ok,
        **tf,
    }


def gen_chat(model_path: Path) -> dict:
    ref = LlamaRef(model_path)
    results = []
    for name, messages in CONVERSATIONS:
        r = ref.sequence({"name": name, "messages": messages}, OUT_DIR)
        results.append(r)
        print(f"[{name}] prompt {len(r['prompt_ids'])} tok, continuation "
              f"{len(r['continuation_ids'])} tok, stop={r['stop_token']}, "
              f"tf-disagree={r['teacher_forced_argmax_disagrees_at']}")
        print(f"    {r['continuation_text']!r}")

    france_check = check_france(ref, results)
    write_json(
        OUT_DIR / "chat.json",
        {
            "chat_template": ref.template,
            "bos_token": ref.bos_token,
            "eos_token": ref.eos_token,
            "add_bos": ref.add_bos,
            "eog_ids": ref.eog_ids,
            "n_ctx": SETTINGS["n_ctx"],
            "max_new_tokens": SETTINGS["max_new_tokens"],
            "conversations": results,
            "france_check": france_check,
        },
    )
    return {"eog_ids": ref.eog_ids, "add_bos": ref.add_bos, "bos_id": ref.bos_id,
            "eos_id": ref.eos_id}


def write_meta(model_path: Path, chat_info: dict | None) -> None:
    meta_path = OUT_DIR / "meta.json"
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    settings = {k: SETTINGS[k] for k in ("n_ctx", "n_batch", "n_ubatch", "n_threads",
                                         "n_threads_batch", "seed", "sampling", "max_new_tokens")}
    meta.update(
        {
            "generator": "tests/scripts/gen_llama_cpp_refs.py",
            "generated_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            **versions(),
            "model_file": model_path.name,
            "model_sha256": sha256_of(model_path),
            "settings": {**settings, "tokenize_add_bos": False},
        }
    )
    if chat_info is not None:
        meta.update(chat_info)
    write_json(meta_path, meta)


def main() -> None:
    global OUT_DIR
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=["tokenization", "chat"])
    parser.add_argument("--model", type=Path,
                        default=Path(os.environ.get("SOTTO_MODEL") or DEFAULT_MODEL))
    parser.add_argument("--out", type=Path, default=OUT_DIR,
                        help="output directory (default tests/data/llama_cpp)")
    args = parser.parse_args()
    OUT_DIR = args.out
    if not args.model.is_file():
        sys.exit(f"model not found: {args.model} (set SOTTO_MODEL or pass --model)")
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    chat_info = None
    if args.only in (None, "tokenization"):
        gen_tokenization(args.model)
    if args.only in (None, "chat"):
        chat_info = gen_chat(args.model)
    write_meta(args.model, chat_info)


if __name__ == "__main__":
    main()

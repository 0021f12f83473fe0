#!/usr/bin/env python3
"""Generate the llama.cpp reference data Sotto's parity tests compare against.

Run from the repository root:

    python3 tests/scripts/gen_llama_cpp_refs.py               # everything
    python3 tests/scripts/gen_llama_cpp_refs.py --only tokenization
    python3 tests/scripts/gen_llama_cpp_refs.py --only chat

The references come from llama.cpp itself (through llama-cpp-python), never
from Sotto, so the Rust tests check Sotto against an independent
implementation. Output goes to tests/data/llama_cpp/ (format: tests/data/README.md).

Install (tests/scripts/requirements-refs.txt pins the versions used). On a CPU
that advertises AMX while the kernel keeps it disabled, ggml built with
GGML_NATIVE would emit AMX instructions and crash, so build with AMX off:

    CMAKE_ARGS="-DGGML_NATIVE=ON -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF \
      -DGGML_AMX_BF16=OFF \
      -DCMAKE_C_FLAGS='-mno-amx-tile -mno-amx-int8 -mno-amx-bf16' \
      -DCMAKE_CXX_FLAGS='-mno-amx-tile -mno-amx-int8 -mno-amx-bf16'" \
      pip install llama-cpp-python
    pip install gguf jinja2 numpy

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
import ctypes
import datetime
import hashlib
import json
import os
import platform
import sys
from pathlib import Path

import gguf
import jinja2
import jinja2.ext
import jinja2.sandbox
import numpy as np

import llama_cpp
from llama_cpp import Llama

sys.path.insert(0, str(Path(__file__).resolve().parent))
import tokenization_cases  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[2]
OUT_DIR = REPO_ROOT / "tests" / "data" / "llama_cpp"
DEFAULT_MODEL = Path.home() / ".cache/sotto/models/SmolLM2-135M-Instruct.Q4_1.gguf"

N_CTX = 2048
# One batch holds the whole teacher-forced sequence, so its logits come from a
# single llama_decode call.
N_BATCH = 2048
N_THREADS = 2
SEED = 1234
MAX_NEW_TOKENS = 64
# Full logit vectors are stored for the last prompt position plus this many
# positions spread evenly over the continuation.
FULL_LOGIT_CONTINUATION_POSITIONS = 15

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


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def gguf_field(reader: gguf.GGUFReader, key: str):
    field = reader.get_field(key)
    return None if field is None else field.contents()


def detokenize(vocab, ids: list[int], unparse_special: bool) -> bytes:
    """llama.cpp's own llama_detokenize (no Python-side space stripping)."""
    arr = (llama_cpp.llama_token * max(len(ids), 1))(*ids)
    size = 64 + 32 * len(ids)
    buf = ctypes.create_string_buffer(size)
    n = llama_cpp.llama_detokenize(vocab, arr, len(ids), buf, size, False, unparse_special)
    if n < 0:
        size = -n
        buf = ctypes.create_string_buffer(size)
        n = llama_cpp.llama_detokenize(vocab, arr, len(ids), buf, size, False, unparse_special)
    if n < 0:
        raise RuntimeError(f"llama_detokenize failed for {ids}")
    return buf.raw[:n]


def write_json(path: Path, value) -> None:
    path.write_text(json.dumps(value, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")


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


def make_renderer(template: str):
    """The same Jinja2 environment llama-cpp-python's Jinja2ChatFormatter builds."""
    env = jinja2.sandbox.ImmutableSandboxedEnvironment(
        loader=jinja2.BaseLoader(),
        trim_blocks=True,
        lstrip_blocks=True,
        extensions=[jinja2.ext.loopcontrols],
    )
    return env.from_string(template)


def top2(row: np.ndarray) -> tuple[int, float, int, float]:
    """(argmax, its logit, runner-up, its logit); ties go to the lowest id, as np.argmax."""
    best = int(np.argmax(row))
    rest = np.array(row, dtype=np.float32, copy=True)
    rest[best] = -np.inf
    second = int(np.argmax(rest))
    return best, float(row[best]), second, float(row[second])


def spread(lo: int, hi: int, count: int) -> list[int]:
    """`count` distinct positions evenly covering [lo, hi] (all of them if fewer)."""
    if hi - lo + 1 <= count:
        return list(range(lo, hi + 1))
    return sorted({int(round(x)) for x in np.linspace(lo, hi, count)})


def teacher_force(llm: Llama, prompt_ids: list[int], continuation: list[int], logit_file: str,
                  alternates: dict) -> dict:
    """Evaluate prompt + continuation in one llama_decode and record llama.cpp's logits.

    Top-2 for every position from the last prompt token to the end; full
    vectors for the last prompt position and up to 15 spread over the
    continuation, written to `logit_file` (row-major, little-endian f32).

    `alternates` are llama.cpp instances configured differently but equally
    valid (one token per micro-batch, flash attention): the relative L2
    distance of their logits to the reference's, at the same positions, is
    llama.cpp's own rounding noise, recorded as `llama_cpp_self_rel_l2` so a
    parity test can set its tolerance against it.
    """
    seq = prompt_ids + continuation
    llm.reset()
    llm.eval(seq)
    logits = np.array(llm.scores[: len(seq)], dtype=np.float32)
    first = len(prompt_ids) - 1
    positions = []
    for pos in range(first, len(seq)):
        best, l1, second, l2 = top2(logits[pos])
        entry = {"pos": pos, "argmax": best, "top1_logit": l1, "top2_id": second,
                 "top2_logit": l2, "margin": l1 - l2}
        if pos + 1 < len(seq):
            entry["next_token"] = seq[pos + 1]
        positions.append(entry)
    disagree = [p["pos"] for p in positions if "next_token" in p and p["argmax"] != p["next_token"]]
    full_pos = [first] + spread(len(prompt_ids), len(seq) - 1, FULL_LOGIT_CONTINUATION_POSITIONS)
    logits[full_pos].astype("<f4").tofile(OUT_DIR / logit_file)
    self_noise = {}
    for label, alt in alternates.items():
        alt.reset()
        alt.eval(seq)
        other = np.array(alt.scores[: len(seq)], dtype=np.float64)
        ref = logits.astype(np.float64)
        self_noise[label] = max(
            float(np.linalg.norm(other[p] - ref[p]) / np.linalg.norm(ref[p])) for p in full_pos
        )
    return {
        "llama_cpp_self_rel_l2": self_noise,
        "teacher_forced": positions,
        "teacher_forced_argmax_disagrees_at": disagree,
        "full_logits": {
            "file": logit_file,
            "positions": full_pos,
            "vocab_size": int(logits.shape[1]),
            "dtype": "float32",
            "byte_order": "little",
            "shape": [len(full_pos), int(logits.shape[1])],
        },
    }


def check_france(llm: Llama, vocab, results: list[dict], alternates: dict) -> dict:
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
    im_end = llm.tokenize(b"<|im_end|>", add_bos=False, special=True)
    assert len(im_end) == 1
    expected_ids = llm.tokenize(FRANCE_ANSWER.encode("utf-8"), add_bos=False, special=False) + im_end
    greedy_ok = france["continuation_ids"] == expected_ids
    tf = teacher_force(llm, france["prompt_ids"], expected_ids, "logits_france_expected.f32", alternates)
    first, rest = tf["teacher_forced"][0], tf["teacher_forced"][1:-1]
    first_in_top2 = expected_ids[0] in (first["argmax"], first["top2_id"])
    rest_ok = all(p["argmax"] == p["next_token"] for p in rest)
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
    reader = gguf.GGUFReader(str(model_path))
    template = gguf_field(reader, "tokenizer.chat_template")
    tokens = reader.get_field("tokenizer.ggml.tokens")
    bos_id = int(gguf_field(reader, "tokenizer.ggml.bos_token_id"))
    eos_id = int(gguf_field(reader, "tokenizer.ggml.eos_token_id"))
    add_bos = bool(gguf_field(reader, "tokenizer.ggml.add_bos_token"))
    bos_token = tokens.contents(bos_id)
    eos_token = tokens.contents(eos_id)
    renderer = make_renderer(template)

    llm = Llama(
        model_path=str(model_path),
        n_ctx=N_CTX,
        n_batch=N_BATCH,
        n_ubatch=N_BATCH,
        n_threads=N_THREADS,
        n_threads_batch=N_THREADS,
        seed=SEED,
        logits_all=True,
        verbose=False,
    )
    # The same model run other equally valid ways, to measure llama.cpp's own
    # rounding noise (see teacher_force).
    common = dict(model_path=str(model_path), n_ctx=N_CTX, n_batch=N_BATCH, n_threads=N_THREADS,
                  n_threads_batch=N_THREADS, seed=SEED, logits_all=True, verbose=False)
    alternates = {
        "one_token_ubatches": Llama(n_ubatch=1, **common),
        "flash_attention": Llama(n_ubatch=N_BATCH, flash_attn=True, **common),
    }
    vocab = llm._model.vocab
    n_vocab = llm.n_vocab()
    assert llm._model.token_get_text(bos_id) == bos_token
    assert llm._model.token_get_text(eos_id) == eos_token
    assert bool(llama_cpp.llama_vocab_get_add_bos(vocab)) == add_bos
    eog_ids = [t for t in range(n_vocab) if llama_cpp.llama_vocab_is_eog(vocab, t)]

    # Cross-check the rendering against llama-cpp-python's own formatter.
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    formatter = Jinja2ChatFormatter(template=template, eos_token=eos_token, bos_token=bos_token)

    results = []
    for name, messages in CONVERSATIONS:
        prompt = renderer.render(
            messages=messages,
            bos_token=bos_token,
            eos_token=eos_token,
            add_generation_prompt=True,
        )
        assert prompt == formatter(messages=messages).prompt, name
        prompt_ids = llm.tokenize(prompt.encode("utf-8"), add_bos=add_bos, special=True)

        # Greedy: prompt in one batch, then one token per llama_decode.
        llm.reset()
        llm.eval(prompt_ids)
        continuation: list[int] = []
        stop_token = None
        greedy_steps = []
        for _ in range(MAX_NEW_TOKENS):
            pos = llm.n_tokens - 1
            next_id, l1, second, l2 = top2(llm.scores[pos])
            greedy_steps.append({"pos": pos, "argmax": next_id, "top1_logit": l1,
                                 "top2_id": second, "top2_logit": l2, "margin": l1 - l2})
            continuation.append(next_id)
            if next_id in eog_ids:
                stop_token = next_id
                break
            llm.eval([next_id])

        tf = teacher_force(llm, prompt_ids, continuation, f"logits_{name}.f32", alternates)

        text = detokenize(vocab, continuation, False)
        results.append(
            {
                "name": name,
                "messages": messages,
                "prompt_text": prompt,
                "prompt_ids": prompt_ids,
                "continuation_ids": continuation,
                "stop_token": stop_token,
                "continuation_text": text.decode("utf-8", errors="replace"),
                "continuation_hex": text.hex(),
                "continuation_text_special": detokenize(vocab, continuation, True).decode(
                    "utf-8", errors="replace"
                ),
                "greedy_steps": greedy_steps,
                **tf,
            }
        )
        print(f"[{name}] prompt {len(prompt_ids)} tok, continuation {len(continuation)} tok, "
              f"stop={stop_token}, tf-disagree={tf['teacher_forced_argmax_disagrees_at']}")
        print(f"    {text.decode('utf-8', errors='replace')!r}")

    france_check = check_france(llm, vocab, results, alternates)
    write_json(
        OUT_DIR / "chat.json",
        {
            "chat_template": template,
            "bos_token": bos_token,
            "eos_token": eos_token,
            "add_bos": add_bos,
            "eog_ids": eog_ids,
            "n_ctx": N_CTX,
            "max_new_tokens": MAX_NEW_TOKENS,
            "conversations": results,
            "france_check": france_check,
        },
    )
    return {"eog_ids": eog_ids, "add_bos": add_bos, "bos_id": bos_id, "eos_id": eos_id}


def write_meta(model_path: Path, chat_info: dict | None) -> None:
    meta_path = OUT_DIR / "meta.json"
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    meta.update(
        {
            "generator": "tests/scripts/gen_llama_cpp_refs.py",
            "generated_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "llama_cpp_python_version": llama_cpp.__version__,
            "gguf_py_version": _version("gguf"),
            "jinja2_version": jinja2.__version__,
            "numpy_version": np.__version__,
            "python_version": platform.python_version(),
            "llama_system_info": llama_cpp.llama_print_system_info().decode("utf-8", "replace").strip(),
            "model_file": model_path.name,
            "model_sha256": sha256_of(model_path),
            "settings": {
                "n_ctx": N_CTX,
                "n_batch": N_BATCH,
                "n_ubatch": N_BATCH,
                "n_threads": N_THREADS,
                "n_threads_batch": N_THREADS,
                "seed": SEED,
                "sampling": "greedy argmax over logits (temperature 0), no sampler",
                "max_new_tokens": MAX_NEW_TOKENS,
                "tokenize_add_bos": False,
            },
        }
    )
    if chat_info is not None:
        meta.update(chat_info)
    write_json(meta_path, meta)


def _version(dist: str) -> str:
    from importlib.metadata import version

    return version(dist)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=["tokenization", "chat"])
    parser.add_argument("--model", type=Path,
                        default=Path(os.environ.get("SOTTO_MODEL") or DEFAULT_MODEL))
    args = parser.parse_args()
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

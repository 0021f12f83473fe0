#!/usr/bin/env python3
"""llama.cpp as the reference for Sotto's parity tests, on any GGUF file.

Three subcommands, run with the python scripts/llama-deps.sh prints:

    llama_ref.py refs --model M.gguf --prompts PROMPTS.json --out DIR
                      [--max-new-tokens N] [--max-prompts K]
                      [--lora ADAPTER.gguf [--lora-scale S]]
    llama_ref.py quantize --model SRC.gguf --type Q6_K --out DST.gguf
    llama_ref.py tokenize --model M.gguf --cases CASES.json --out OUT.json

`refs` writes DIR/refs.json and DIR/logits_<name>.f32: for each prompt,
llama.cpp's tokens, its greedy continuation (with the top-2 margin of every
step), the teacher-forced top-2 margins at every position of prompt +
continuation evaluated in one batch, full logit vectors at a spread of
positions, and llama.cpp's own self-difference (the same sequence run with
one-token micro-batches and with flash attention). Format: tests/data/README.md.
`--max-new-tokens` (default 64) caps the greedy continuation and
`--max-prompts` takes the first K prompts only: a test bounds llama.cpp's time
with them (most of it is the greedy steps and the one-token alternate).
`--lora` runs every llama.cpp instance (reference and alternates) with that
GGUF LoRA adapter applied at `--lora-scale` (default 1), unmerged, as
llama.cpp applies adapters (llama-cpp-python's `lora_path`/`lora_scale`).

PROMPTS.json is a list of prompts, each
    {"name": ..., "messages": [{"role": ..., "content": ...}, ...]}
rendered with the file's chat template exactly as llama-cpp-python's
Jinja2ChatFormatter does, or
    {"name": ..., "text": ..., "parse_special": true}
raw text with BOS (and EOS) as the file says (`add_bos_token`), tokenized like
llama.cpp's command-line tools (special-token text parsed unless
`parse_special` is false).

`refs` is cached: when DIR/refs.json already records the same inputs (model
sha256, prompts, this script, llama-cpp-python version, settings) and its
logit files are there, nothing runs.

`quantize` runs llama.cpp's own quantizer (`llama_model_quantize`, with
`allow_requantize`, so an already quantized file can be the source) with a
llama.cpp ftype preset (Q4_K_M, Q6_K, ...) or, with --pure, every tensor the
type can hold in that type (llama.cpp still falls back to another type where a
row length is not a multiple of the type's block). Also cached by inputs.

`tokenize` runs llama.cpp's tokenizer (the model loaded `vocab_only`) on
every case of CASES.json (a list of {"text", "parse_special"}, e.g.
tests/data/llama_cpp/tokenization.json) and writes the same list with
llama.cpp's "ids" (no BOS/EOS added) and "detok_hex" (llama_detokenize
without special tokens); cached by inputs like the others.

References come from llama.cpp only, never from Sotto.
"""

from __future__ import annotations

import argparse
import ctypes
import hashlib
import json
import os
import sys
from pathlib import Path

# ggml's OpenMP workers spin between ops by default. When the cores are shared
# (parallel builds, other tests) spinning workers starve each other: 20 decode
# steps of the default model took 173 s spinning and 2.3 s passive on a loaded
# 2-core machine. Logits do not depend on it. Set before libgomp loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import gguf  # noqa: E402
import jinja2  # noqa: E402
import jinja2.ext  # noqa: E402
import jinja2.sandbox  # noqa: E402
import numpy as np  # noqa: E402

import llama_cpp  # noqa: E402
from llama_cpp import Llama  # noqa: E402

# Prompt + continuation stay well under this. With `logits_all` llama.cpp and
# llama-cpp-python each hold an n_ctx x n_vocab f32 buffer per instance (three
# instances): 2048 would be 6 GB with Gemma's 262k vocabulary.
N_CTX = 512
# One batch holds the whole teacher-forced sequence, so its logits come from a
# single llama_decode call.
N_BATCH = 512
N_THREADS = 2
SEED = 1234
DEFAULT_MAX_NEW_TOKENS = 64
# Full logit vectors are stored for the last prompt position plus this many
# positions spread evenly over the continuation.
FULL_LOGIT_CONTINUATION_POSITIONS = 15

# llama.cpp's `llama_ftype` presets (include/llama.h).
FTYPES = {
    "F32": 0, "F16": 1, "Q4_0": 2, "Q4_1": 3, "Q8_0": 7, "Q5_0": 8, "Q5_1": 9,
    "Q2_K": 10, "Q3_K_S": 11, "Q3_K_M": 12, "Q3_K_L": 13, "Q4_K_S": 14, "Q4_K_M": 15,
    "Q5_K_S": 16, "Q5_K_M": 17, "Q6_K": 18, "IQ4_NL": 25, "IQ4_XS": 30, "BF16": 32,
}

SETTINGS = {
    "n_ctx": N_CTX,
    "n_batch": N_BATCH,
    "n_ubatch": N_BATCH,
    "n_threads": N_THREADS,
    "n_threads_batch": N_THREADS,
    "seed": SEED,
    "sampling": "greedy argmax over logits (temperature 0), no sampler",
    "full_logit_continuation_positions": FULL_LOGIT_CONTINUATION_POSITIONS,
    "self_difference": {
        "one_token_ubatches": "n_ubatch=1 (matrix-vector kernels)",
        "flash_attention": "flash_attn=True",
    },
}


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# Bump when `quantize` changes what it writes: requantized files are keyed by
# this, not by the whole script, so editing the reference code keeps them.
QUANTIZE_VERSION = 1


def inputs_key(*parts, script: bool = True) -> str:
    """A digest of everything an output depends on (JSON-serializable parts),
    including this script's source unless `script` is false."""
    h = hashlib.sha256()
    if script:
        h.update(Path(__file__).read_bytes())
    h.update(llama_cpp.__version__.encode())
    h.update(json.dumps(parts, sort_keys=True, ensure_ascii=False).encode())
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


class LlamaRef:
    """One GGUF file in llama.cpp: the reference instance and the alternates
    that measure llama.cpp's own rounding noise, plus what the file says about
    its vocabulary and template."""

    def __init__(self, model_path: Path, max_new_tokens: int, lora: Path | None = None,
                 lora_scale: float = 1.0):
        self.model_path = model_path
        self.max_new_tokens = max_new_tokens
        reader = gguf.GGUFReader(str(model_path))
        self.template = gguf_field(reader, "tokenizer.chat_template")
        tokens = reader.get_field("tokenizer.ggml.tokens")
        bos = gguf_field(reader, "tokenizer.ggml.bos_token_id")
        eos = gguf_field(reader, "tokenizer.ggml.eos_token_id")
        self.bos_id = None if bos is None else int(bos)
        self.eos_id = None if eos is None else int(eos)
        self.bos_token = "" if bos is None else tokens.contents(self.bos_id)
        self.eos_token = "" if eos is None else tokens.contents(self.eos_id)
        self.tensor_types: dict[str, list[str]] = {}
        for t in reader.tensors:
            self.tensor_types.setdefault(t.tensor_type.name, []).append(t.name)

        common = dict(model_path=str(model_path), n_ctx=N_CTX, n_batch=N_BATCH,
                      n_threads=N_THREADS, n_threads_batch=N_THREADS, seed=SEED,
                      logits_all=True, verbose=False)
        if lora is not None:
            common.update(lora_path=str(lora), lora_scale=lora_scale)
        self.llm = Llama(n_ubatch=N_BATCH, **common)
        # The same model run other equally valid ways (see teacher_force).
        self.alternates = {
            "one_token_ubatches": Llama(n_ubatch=1, **common),
            "flash_attention": Llama(n_ubatch=N_BATCH, flash_attn=True, **common),
        }
        self.vocab = self.llm._model.vocab
        self.n_vocab = self.llm.n_vocab()
        self.add_bos = bool(llama_cpp.llama_vocab_get_add_bos(self.vocab))
        add_bos_key = gguf_field(reader, "tokenizer.ggml.add_bos_token")
        if add_bos_key is not None:
            assert bool(add_bos_key) == self.add_bos, "add_bos_token differs from llama.cpp's"
        if self.bos_id is not None:
            assert self.llm._model.token_get_text(self.bos_id) == self.bos_token
        if self.eos_id is not None:
            assert self.llm._model.token_get_text(self.eos_id) == self.eos_token
        self.eog_ids = [t for t in range(self.n_vocab) if llama_cpp.llama_vocab_is_eog(self.vocab, t)]
        self.renderer = None if self.template is None else make_renderer(self.template)

    def tokenize(self, text: str, add_special: bool, special: bool) -> list[int]:
        """llama_tokenize: `add_special` adds BOS (and EOS) where the file
        asks for them; `special` parses special-token text."""
        return self.llm.tokenize(text.encode("utf-8"), add_bos=add_special, special=special)

    def chat_prompt(self, messages: list[dict]) -> str:
        """The prompt text for `messages` with a generation prompt, as
        llama-cpp-python renders it (cross-checked against its formatter)."""
        if self.renderer is None:
            raise SystemExit(f"{self.model_path}: no tokenizer.chat_template; use a raw text prompt")
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        prompt = self.renderer.render(messages=messages, bos_token=self.bos_token,
                                      eos_token=self.eos_token, add_generation_prompt=True)
        formatter = Jinja2ChatFormatter(template=self.template, eos_token=self.eos_token,
                                        bos_token=self.bos_token)
        assert prompt == formatter(messages=messages).prompt, "renderer differs from llama-cpp-python's"
        return prompt

    def greedy(self, prompt_ids: list[int]) -> tuple[list[int], int | None, list[dict]]:
        """llama.cpp's greedy continuation: the prompt in one batch, then one
        token per llama_decode, argmax of the logits (no sampler), at most
        max_new_tokens, stopping after an end-of-generation token."""
        llm = self.llm
        llm.reset()
        llm.eval(prompt_ids)
        continuation: list[int] = []
        stop_token = None
        steps = []
        for _ in range(self.max_new_tokens):
            pos = llm.n_tokens - 1
            next_id, l1, second, l2 = top2(llm.scores[pos])
            steps.append({"pos": pos, "argmax": next_id, "top1_logit": l1,
                          "top2_id": second, "top2_logit": l2, "margin": l1 - l2})
            continuation.append(next_id)
            if next_id in self.eog_ids:
                stop_token = next_id
                break
            llm.eval([next_id])
        return continuation, stop_token, steps

    def teacher_force(self, prompt_ids: list[int], continuation: list[int], out_dir: Path,
                      logit_file: str) -> dict:
        """Evaluate prompt + continuation in one llama_decode and record llama.cpp's logits.

        Top-2 for every position from the last prompt token to the end; full
        vectors for the last prompt position and up to
        FULL_LOGIT_CONTINUATION_POSITIONS spread over the continuation,
        written to `out_dir/logit_file` (row-major, little-endian f32).

        The alternates are llama.cpp instances configured differently but
        equally valid (one token per micro-batch, flash attention): the
        relative L2 distance of their logits to the reference's, at the same
        positions, is llama.cpp's own rounding noise, recorded as
        `llama_cpp_self_rel_l2`, and the positions where their argmax differs
        from the reference's as `llama_cpp_self_argmax`, so a parity test can
        set its tolerances against llama.cpp's own.
        """
        seq = prompt_ids + continuation
        self.llm.reset()
        self.llm.eval(seq)
        logits = np.array(self.llm.scores[: len(seq)], dtype=np.float32)
        first = len(prompt_ids) - 1
        positions = []
        for pos in range(first, len(seq)):
            best, l1, second, l2 = top2(logits[pos])
            entry = {"pos": pos, "argmax": best, "top1_logit": l1, "top2_id": second,
                     "top2_logit": l2, "margin": l1 - l2}
            if pos + 1 < len(seq):
                entry["next_token"] = seq[pos + 1]
            positions.append(entry)
        disagree = [p["pos"] for p in positions
                    if "next_token" in p and p["argmax"] != p["next_token"]]
        full_pos = [first] + spread(len(prompt_ids), len(seq) - 1, FULL_LOGIT_CONTINUATION_POSITIONS)
        logits[full_pos].astype("<f4").tofile(out_dir / logit_file)
        self_noise = {}
        self_argmax = {}
        for label, alt in self.alternates.items():
            alt.reset()
            alt.eval(seq)
            other = np.array(alt.scores[: len(seq)], dtype=np.float64)
            ref = logits.astype(np.float64)
            self_noise[label] = max(
                float(np.linalg.norm(other[p] - ref[p]) / np.linalg.norm(ref[p])) for p in full_pos
            )
            # Where the alternate's argmax differs from the reference's, by
            # how much the alternate prefers its own token.
            self_argmax[label] = []
            for p in positions:
                row = other[p["pos"]]
                best = int(np.argmax(row))
                if best != p["argmax"]:
                    self_argmax[label].append({
                        "pos": p["pos"], "argmax": best,
                        "margin": float(row[best] - row[p["argmax"]]),
                    })
        return {
            "llama_cpp_self_rel_l2": self_noise,
            "llama_cpp_self_argmax": self_argmax,
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

    def sequence(self, prompt: dict, out_dir: Path) -> dict:
        """Everything recorded for one prompt (see tests/data/README.md)."""
        name = prompt["name"]
        if "messages" in prompt:
            prompt_text = self.chat_prompt(prompt["messages"])
            head = {"name": name, "messages": prompt["messages"], "prompt_text": prompt_text}
            # As the committed references were made: BOS only where the file
            # asks for it (the template may write it itself).
            prompt_ids = self.tokenize(prompt_text, add_special=self.add_bos, special=True)
        else:
            special = bool(prompt.get("parse_special", True))
            prompt_text = prompt["text"]
            head = {"name": name, "text": prompt_text, "parse_special": special,
                    "prompt_text": prompt_text}
            # add_special: llama.cpp adds BOS/EOS as the vocabulary says.
            prompt_ids = self.tokenize(prompt_text, add_special=True, special=special)
        continuation, stop_token, steps = self.greedy(prompt_ids)
        tf = self.teacher_force(prompt_ids, continuation, out_dir, f"logits_{name}.f32")
        text = detokenize(self.vocab, continuation, False)
        return {
            **head,
            "prompt_ids": prompt_ids,
            "continuation_ids": continuation,
            "stop_token": stop_token,
            "continuation_text": text.decode("utf-8", errors="replace"),
            "continuation_hex": text.hex(),
            "continuation_text_special": detokenize(self.vocab, continuation, True).decode(
                "utf-8", errors="replace"),
            "greedy_steps": steps,
            **tf,
        }

    def file_info(self) -> dict:
        return {
            "chat_template": self.template,
            "bos_token": self.bos_token,
            "eos_token": self.eos_token,
            "bos_id": self.bos_id,
            "eos_id": self.eos_id,
            "add_bos": self.add_bos,
            "eog_ids": self.eog_ids,
            "vocab_size": self.n_vocab,
            "tensor_types": self.tensor_types,
        }


def versions() -> dict:
    from importlib.metadata import version
    import platform

    return {
        "llama_cpp_python_version": llama_cpp.__version__,
        "gguf_py_version": version("gguf"),
        "jinja2_version": jinja2.__version__,
        "numpy_version": np.__version__,
        "python_version": platform.python_version(),
        "llama_system_info": llama_cpp.llama_print_system_info().decode("utf-8", "replace").strip(),
    }


def cmd_refs(args) -> None:
    prompts = json.loads(args.prompts.read_text(encoding="utf-8"))
    if args.max_prompts is not None:
        prompts = prompts[: args.max_prompts]
    names = [p["name"] for p in prompts]
    if len(set(names)) != len(names) or not all(n.replace("_", "").isalnum() for n in names):
        raise SystemExit(f"{args.prompts}: prompt names must be unique identifiers: {names}")
    model_sha = sha256_of(args.model)
    settings = {**SETTINGS, "max_new_tokens": args.max_new_tokens}
    if args.lora is not None:
        if not args.lora.is_file():
            raise SystemExit(f"LoRA adapter not found: {args.lora}")
        settings["lora"] = {"file": args.lora.name, "sha256": sha256_of(args.lora),
                            "scale": args.lora_scale}
    key = inputs_key(model_sha, prompts, settings)
    out_file = args.out / "refs.json"
    if out_file.is_file():
        old = json.loads(out_file.read_text(encoding="utf-8"))
        if old.get("inputs_key") == key and all(
            (args.out / s["full_logits"]["file"]).is_file() for s in old["sequences"]
        ):
            print(f"{out_file}: up to date", file=sys.stderr)
            return
    args.out.mkdir(parents=True, exist_ok=True)
    ref = LlamaRef(args.model, args.max_new_tokens, args.lora, args.lora_scale)
    sequences = []
    for prompt in prompts:
        s = ref.sequence(prompt, args.out)
        sequences.append(s)
        print(f"[{s['name']}] prompt {len(s['prompt_ids'])} tok, continuation "
              f"{len(s['continuation_ids'])} tok, stop={s['stop_token']}, self rel L2 "
              f"{max(s['llama_cpp_self_rel_l2'].values()):.3f}: {s['continuation_text'][:60]!r}",
              file=sys.stderr)
    doc = {
        "generator": "tests/scripts/llama_ref.py",
        "inputs_key": key,
        **versions(),
        "model_file": args.model.name,
        "model_sha256": model_sha,
        "settings": settings,
        **ref.file_info(),
        "sequences": sequences,
    }
    # refs.json last: its presence with this key means the logit files are complete.
    tmp = out_file.with_suffix(".json.tmp")
    write_json(tmp, doc)
    tmp.replace(out_file)


def cmd_quantize(args) -> None:
    if args.type not in FTYPES:
        raise SystemExit(f"unknown llama.cpp ftype {args.type}; one of {', '.join(FTYPES)}")
    key = inputs_key(sha256_of(args.model), args.type, args.pure, QUANTIZE_VERSION, script=False)
    stamp = args.out.with_name(args.out.name + ".inputs")
    if args.out.is_file() and stamp.is_file() and stamp.read_text() == key:
        print(f"{args.out}: up to date", file=sys.stderr)
        return
    args.out.parent.mkdir(parents=True, exist_ok=True)
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = FTYPES[args.type]
    params.nthread = N_THREADS
    params.allow_requantize = True
    params.pure = args.pure
    tmp = args.out.with_name(args.out.name + ".tmp")
    llama_cpp.llama_log_set(None if args.verbose else _QUIET_LOG, ctypes.c_void_p())
    rc = llama_cpp.llama_model_quantize(str(args.model).encode(), str(tmp).encode(),
                                        ctypes.byref(params))
    if rc != 0:
        tmp.unlink(missing_ok=True)
        raise SystemExit(f"llama_model_quantize {args.model} -> {args.type} failed ({rc})")
    tmp.replace(args.out)
    stamp.write_text(key)
    reader = gguf.GGUFReader(str(args.out))
    counts: dict[str, int] = {}
    for t in reader.tensors:
        counts[t.tensor_type.name] = counts.get(t.tensor_type.name, 0) + 1
    print(f"{args.out}: {counts}", file=sys.stderr)


def cmd_tokenize(args) -> None:
    cases = [{"text": c["text"], "parse_special": bool(c["parse_special"])}
             for c in json.loads(args.cases.read_text(encoding="utf-8"))]
    key = inputs_key(sha256_of(args.model), cases)
    if args.out.is_file() and json.loads(args.out.read_text(encoding="utf-8")).get("inputs_key") == key:
        print(f"{args.out}: up to date", file=sys.stderr)
        return
    llama_cpp.llama_log_set(_QUIET_LOG, ctypes.c_void_p())
    llm = Llama(model_path=str(args.model), vocab_only=True, verbose=False)
    vocab = llm._model.vocab
    out = []
    for c in cases:
        ids = llm.tokenize(c["text"].encode("utf-8"), add_bos=False, special=c["parse_special"])
        out.append({**c, "ids": ids, "detok_hex": detokenize(vocab, ids, False).hex()})
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".json.tmp")
    write_json(tmp, {"generator": "tests/scripts/llama_ref.py tokenize", "inputs_key": key,
                     **versions(), "model_file": args.model.name, "cases": out})
    tmp.replace(args.out)
    print(f"{args.out}: {len(out)} cases", file=sys.stderr)


@llama_cpp.llama_log_callback
def _QUIET_LOG(level, text, user_data):  # noqa: N802 (a ctypes callback kept alive here)
    pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    refs = sub.add_parser("refs", help="llama.cpp tokens, greedy, teacher-forced logits")
    refs.add_argument("--model", type=Path, required=True)
    refs.add_argument("--prompts", type=Path, required=True)
    refs.add_argument("--out", type=Path, required=True)
    refs.add_argument("--max-new-tokens", type=int, default=DEFAULT_MAX_NEW_TOKENS,
                      help="greedy continuation length cap (default %(default)s)")
    refs.add_argument("--max-prompts", type=int, help="only the first K prompts of the file")
    refs.add_argument("--lora", type=Path, help="a GGUF LoRA adapter llama.cpp applies")
    refs.add_argument("--lora-scale", type=float, default=1.0,
                      help="the adapter's scale (default %(default)s)")
    quant = sub.add_parser("quantize", help="llama.cpp's quantizer on a GGUF")
    quant.add_argument("--model", type=Path, required=True)
    quant.add_argument("--type", required=True, help="llama.cpp ftype: " + ", ".join(FTYPES))
    quant.add_argument("--pure", action="store_true",
                       help="every tensor in the type (no preset mix), where its rows allow")
    quant.add_argument("--out", type=Path, required=True)
    quant.add_argument("--verbose", action="store_true", help="show llama.cpp's log")
    tok = sub.add_parser("tokenize", help="llama.cpp's tokenizer on a list of strings")
    tok.add_argument("--model", type=Path, required=True)
    tok.add_argument("--cases", type=Path, required=True)
    tok.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    if not args.model.is_file():
        raise SystemExit(f"model not found: {args.model}")
    {"refs": cmd_refs, "quantize": cmd_quantize, "tokenize": cmd_tokenize}[args.command](args)


if __name__ == "__main__":
    main()

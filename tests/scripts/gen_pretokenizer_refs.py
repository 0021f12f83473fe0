#!/usr/bin/env python3
"""llama.cpp references for the byte-level BPE pre-tokenizers (tokenizer.ggml.pre).

Run from the repository root:

    python3 tests/scripts/gen_pretokenizer_refs.py [--model PATH]

Writes tests/data/llama_cpp/pretokenizers.json, which
tests/tests/tokenizer_pretokenizers.rs compares Sotto's tokenizer against.

The default model (SmolLM2-135M-Instruct, GPT-2 byte-level BPE, pre
"smollm") is the only byte-level vocabulary at hand, so for each pre-tokenizer
in PRES this script writes a vocab-only GGUF with gguf-py's GGUFWriter:
general.architecture = llama, every tokenizer.* key of the model copied
verbatim except tokenizer.ggml.pre, no other key and no tensors (VARIANTS:
each pre once as is and once "+digits", with DIGIT_MERGES appended). llama.cpp
(llama-cpp-python 0.3.36) loads that with vocab_only=True: with vocab_only it
reads no llama.* hyper-parameter, so none is written (the Rust test builds the
same key set). Each file is tokenized with
Llama(path, vocab_only=True).tokenize(text, add_bos=False, special=parse_special)
for every string of tests/scripts/tokenization_cases.py: ALL with
parse_special=True, PLAIN_TOO again with parse_special=False (the same case
list as tests/data/llama_cpp/tokenization.json), then the EXTRA strings below
that are not already in it.

"smollm" is the control: its ids must equal tokenization.json's, made from
the full model file, which checks that the vocab-only rebuild changes nothing
but the pre-tokenizer (asserted below when that file is present).

Needs llama-cpp-python and gguf (tests/scripts/requirements-refs.txt). The
output has no timestamp: a rerun with the same versions and model is
byte-identical.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from importlib import metadata as importlib_metadata
from pathlib import Path

import gguf
import llama_cpp
from llama_cpp import Llama

sys.path.insert(0, str(Path(__file__).resolve().parent))
import tokenization_cases  # noqa: E402
from gen_llama_cpp_refs import sha256_of  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "tests/data/llama_cpp/pretokenizers.json"
TOKENIZATION_JSON = ROOT / "tests/data/llama_cpp/tokenization.json"
DEFAULT_MODEL = Path(
    os.environ.get("SOTTO_MODEL")
    or Path.home() / ".cache/sotto/models/SmolLM2-135M-Instruct.Q4_1.gguf"
)
# The pre-tokenizers under test, then the model's own as the control.
PRES = ["llama-bpe", "qwen2", "gpt-2", "smollm"]
CONTROL = "smollm"

# SmolLM2's merges never join two digits (its own pre-tokenizer isolates each
# one), so on the plain vocabulary llama-bpe (digits in runs of up to 3) and
# qwen2 (single digits) give identical ids. The "+digits" variants append
# these tokens, with one merge each (lowest priority, after the model's), so
# that how a pre-tokenizer groups digits shows in the ids.
DIGIT_MERGES = [
    ("1", "2"), ("12", "3"), ("4", "5"), ("45", "6"),
    ("0", "0"), ("00", "0"), ("9", "9"), ("99", "9"),
]
VARIANTS = [{"name": pre, "pre": pre, "extra_merges": []} for pre in PRES] + [
    {"name": f"{pre}+digits", "pre": pre, "extra_merges": [f"{a} {b}" for a, b in DIGIT_MERGES]}
    for pre in PRES
]

# Strings aimed at where the pre-tokenizer regexes differ (digit grouping,
# whitespace before newlines, case-insensitive contractions, punctuation
# glued to letters); tokenized with parse_special=True after the shared list.
EXTRA = [
    "1", "12", "123", "1234", "12345", "123456", "1234567", "000000", "9999999",
    " 123", "  1234", "x=123456;", "1,234,567.890", "2024-12-31", "v1.23.456",
    "a123b", "abc123def456", "Call 555-1234 now!", "Price: $1234.56", "ID#00042",
    "The 1990s and 2000s", "\u0661\u0662\u0663\u0664", "\uff11\uff12\uff13\uff14",
    "\U0001d7d9\U0001d7da\U0001d7db", "\u216b12", "\u00bd123",
    "a\r\nb", "a \r\n b", "a  \n\n  b", "\t\n", " \n\n ", "x\n\n\n y", "end.\n",
    "end.\r\n\r\n", "  \r\n  ", "a\n \n \nb", "word \n", "\n\nstart", "a\t\n\tb",
    "I'M", "YOU'RE", "IT'S", "WE'VE", "THEY'LL", "HE'D", "DON'T", "i'M", "It'S",
    "(hello)", ".com", "#tag", "@user", "$var", "...and", "--flag", "foo.bar.baz",
    "a,b,c", "x:y", "\u00abmot\u00bb", "\u00bfQu\u00e9?", "\u00a1Hola!", "__init__", "x_1",
]


def tokenizer_fields(model: Path) -> list[tuple[str, gguf.GGUFValueType, object, gguf.GGUFValueType | None]]:
    """(key, type, value, array element type) of every tokenizer.* key, in file order."""
    reader = gguf.GGUFReader(model)
    out = []
    for key, field in reader.fields.items():
        if not key.startswith("tokenizer."):
            continue
        vtype = gguf.GGUFValueType(field.types[0])
        sub = gguf.GGUFValueType(field.types[1]) if vtype == gguf.GGUFValueType.ARRAY else None
        out.append((key, vtype, field.contents(), sub))
    assert any(k == "tokenizer.ggml.pre" for k, *_ in out), "model has no tokenizer.ggml.pre"
    return out


def write_vocab_only(path: Path, fields, variant: dict) -> None:
    """The model's tokenizer.* keys with the variant's pre and appended merges."""
    merges = variant["extra_merges"]
    new_tokens = ["".join(m.split(" ")) for m in merges]
    w = gguf.GGUFWriter(str(path), "llama")  # writes general.architecture = llama
    for key, vtype, value, sub in fields:
        if key == "tokenizer.ggml.pre":
            value = variant["pre"]
        elif key == "tokenizer.ggml.tokens":
            assert not set(new_tokens) & set(value), "appended token already in the vocabulary"
            value = list(value) + new_tokens
        elif key == "tokenizer.ggml.token_type":
            value = list(value) + [int(gguf.TokenType.NORMAL)] * len(new_tokens)
        elif key == "tokenizer.ggml.merges":
            value = list(value) + merges
        if sub is None:
            w.add_key_value(key, value, vtype)
        else:
            w.add_key_value(key, value, vtype, sub_type=sub)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    args = parser.parse_args()
    model: Path = args.model
    if not model.is_file():
        sys.exit(f"model not found: {model} (run scripts/fetch-model.sh)")

    inputs = [(t, True) for t in tokenization_cases.ALL] + [
        (t, False) for t in tokenization_cases.PLAIN_TOO
    ]
    shared = len(inputs)
    inputs += [(t, True) for t in EXTRA if (t, True) not in set(inputs)]
    fields = tokenizer_fields(model)
    names = [v["name"] for v in VARIANTS]
    ids: dict[str, list[list[int]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for variant in VARIANTS:
            path = Path(tmp) / "vocab.gguf"
            write_vocab_only(path, fields, variant)
            llm = Llama(model_path=str(path), vocab_only=True, verbose=False)
            ids[variant["name"]] = [
                llm.tokenize(text.encode("utf-8"), add_bos=False, special=ps) for text, ps in inputs
            ]
            del llm

    # Control: the relabelled file with the model's own pre must tokenize
    # exactly as the full model did (tokenization.json, same case list).
    if TOKENIZATION_JSON.is_file():
        full = {
            (c["text"], c["parse_special"]): c["ids"]
            for c in json.loads(TOKENIZATION_JSON.read_text(encoding="utf-8"))
        }
        for (text, ps), got in zip(inputs, ids[CONTROL]):
            want = full.get((text, ps))
            assert want is None or want == got, f"control differs from full model on {text!r}"

    cases = [
        {"text": text, "parse_special": ps, "ids": {n: ids[n][i] for n in names}}
        for i, (text, ps) in enumerate(inputs)
    ]
    data = {
        "llama_cpp_python_version": llama_cpp.__version__,
        "gguf_py_version": importlib_metadata.version("gguf"),
        "model_file": model.name,
        "model_sha256": sha256_of(model),
        "method": "gguf-py GGUFWriter vocab-only file: general.architecture=llama, the model's "
        "tokenizer.* keys with tokenizer.ggml.pre replaced (and, for +digits, "
        "extra_merges appended to merges with their results appended to tokens as "
        "NORMAL tokens), no tensors; "
        "Llama(path, vocab_only=True).tokenize(text, add_bos=False, special=parse_special); "
        "tests/scripts/gen_pretokenizer_refs.py",
        "variants": VARIANTS,
        "control": CONTROL,
        "shared_cases": shared,
        "cases": cases,
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    with open(OUT, "w", encoding="utf-8") as f:
        json.dump(data, f, ensure_ascii=False, indent=None, separators=(",", ":"))
        f.write("\n")

    n_special = sum(1 for _, ps in inputs if ps)
    print(f"{OUT.relative_to(ROOT)}: {len(cases)} cases per variant "
          f"({shared} from tokenization_cases.py, {len(cases) - shared} extra; "
          f"{n_special} parse_special, {len(cases) - n_special} plain)")
    for a, b in [("llama-bpe", CONTROL), ("qwen2", CONTROL), ("gpt-2", CONTROL),
                 ("llama-bpe", "qwen2"), ("llama-bpe", "gpt-2"), ("qwen2", "gpt-2")]:
        for suffix in ("", "+digits"):
            differ = sum(1 for x, y in zip(ids[a + suffix], ids[b + suffix]) if x != y)
            print(f"  {a + suffix} vs {b + suffix}: {differ} cases differ")

if __name__ == "__main__":
    main()

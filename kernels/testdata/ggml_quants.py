#!/usr/bin/env python3
"""Known answers for sotto-kernels' quant blocks, from independent code only.

Writes kernels/testdata/ggml_quants.txt (read by kernels/src/quant/known_answers.rs):

* every ggml type id the installed ggml knows, with its name, elements per
  block and bytes per block (ggml_type_name / ggml_blck_size / ggml_type_size);
* per quant type, two rows of 256 floats from a seeded integer generator that
  the Rust test reproduces exactly (no float maths involved):
  - the row quantized by ggml's own quantizer (`ggml_quantize_chunk`, the
    function llama.cpp's `llama_model_quantize` runs when no importance matrix
    is given),
  - those bytes decoded by PyPI gguf (`gguf.quants.dequantize`, numpy),
    checked here bit for bit against ggml's C `dequantize_row_*`,
  - a second row quantized into the type's activation blocks by ggml's CPU
    `quantize_row_q8_*`, and ggml's CPU `ggml_vec_dot_*` of the two.

Nothing here calls Sotto. Run with a Python that has llama-cpp-python (for its
bundled libggml) and gguf, e.g.:

    /work/venvs/llama/bin/python kernels/testdata/ggml_quants.py
"""

import ctypes
import pathlib
import sys
from importlib.metadata import version

import numpy as np
import gguf
import llama_cpp
from gguf.constants import GGMLQuantizationType as T

LIB = pathlib.Path(llama_cpp.__file__).parent / "lib"
base = ctypes.CDLL(str(LIB / "libggml-base.so"))
cpu = ctypes.CDLL(str(LIB / "libggml-cpu.so"))

base.ggml_type_name.restype = ctypes.c_char_p
base.ggml_type_name.argtypes = [ctypes.c_int]
base.ggml_blck_size.restype = ctypes.c_int64
base.ggml_blck_size.argtypes = [ctypes.c_int]
base.ggml_type_size.restype = ctypes.c_size_t
base.ggml_type_size.argtypes = [ctypes.c_int]
base.ggml_quantize_chunk.restype = ctypes.c_size_t
base.ggml_quantize_chunk.argtypes = [
    ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p,
    ctypes.c_int64, ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p,
]
cpu.ggml_cpu_init.restype = None
cpu.ggml_cpu_init()

N = 256  # elements per row: one k-quant super-block, eight legacy blocks

# (type, activation type, ggml vec_dot symbol)
TYPES = [
    (T.Q4_0, T.Q8_0, "ggml_vec_dot_q4_0_q8_0"),
    (T.Q4_1, T.Q8_1, "ggml_vec_dot_q4_1_q8_1"),
    (T.Q5_0, T.Q8_0, "ggml_vec_dot_q5_0_q8_0"),
    (T.Q5_1, T.Q8_1, "ggml_vec_dot_q5_1_q8_1"),
    (T.Q8_0, T.Q8_0, "ggml_vec_dot_q8_0_q8_0"),
    (T.Q2_K, T.Q8_K, "ggml_vec_dot_q2_K_q8_K"),
    (T.Q3_K, T.Q8_K, "ggml_vec_dot_q3_K_q8_K"),
    (T.Q4_K, T.Q8_K, "ggml_vec_dot_q4_K_q8_K"),
    (T.Q5_K, T.Q8_K, "ggml_vec_dot_q5_K_q8_K"),
    (T.Q6_K, T.Q8_K, "ggml_vec_dot_q6_K_q8_K"),
    (T.IQ4_NL, T.Q8_0, "ggml_vec_dot_iq4_nl_q8_0"),
    (T.IQ4_XS, T.Q8_K, "ggml_vec_dot_iq4_xs_q8_K"),
]


def lcg_row(seed: int, n: int, zero_run: bool) -> np.ndarray:
    """n floats, each an integer over 2^15 (exact in f32): a sum of four
    16-bit uniforms (roughly normal, about +-4), every 37th draw times 8.
    With `zero_run`, elements 64..96 are 0 and 160..176 all 0.75 (the
    all-zero and constant branches of the quantizers)."""
    state = seed & (2**64 - 1)

    def draw() -> int:
        nonlocal state
        state = (state * 6364136223846793005 + 1442695040888963407) & (2**64 - 1)
        return state >> 33

    out = []
    for i in range(n):
        s = sum(draw() & 0xFFFF for _ in range(4)) - 2 * 65536
        if draw() % 37 == 0:
            s *= 8
        v = s / 32768.0
        if zero_run and 64 <= i < 96:
            v = 0.0
        if zero_run and 160 <= i < 176:
            v = 0.75
        out.append(v)
    return np.array(out, dtype=np.float32)


def ggml_quantize(t: T, x: np.ndarray) -> bytes:
    size = base.ggml_type_size(t.value) * (len(x) // base.ggml_blck_size(t.value))
    dst = ctypes.create_string_buffer(size)
    n = base.ggml_quantize_chunk(t.value, x.ctypes.data, dst, 0, 1, len(x), None)
    assert n == size, (t, n, size)
    return dst.raw


def ggml_dequantize(t: T, q: bytes, n: int) -> np.ndarray:
    f = getattr(base, f"dequantize_row_{base.ggml_type_name(t.value).decode()}")
    f.restype = None
    f.argtypes = [ctypes.c_char_p, ctypes.c_void_p, ctypes.c_int64]
    y = np.zeros(n, dtype=np.float32)
    f(q, y.ctypes.data, n)
    return y


def ggml_activations(t: T, x: np.ndarray) -> bytes:
    f = getattr(cpu, f"quantize_row_{base.ggml_type_name(t.value).decode()}")
    f.restype = None
    f.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int64]
    size = base.ggml_type_size(t.value) * (len(x) // base.ggml_blck_size(t.value))
    dst = ctypes.create_string_buffer(size)
    f(x.ctypes.data, dst, len(x))
    return dst.raw


def ggml_dot(symbol: str, n: int, w: bytes, a: bytes) -> float:
    f = getattr(cpu, symbol)
    f.restype = None
    f.argtypes = [
        ctypes.c_int, ctypes.POINTER(ctypes.c_float), ctypes.c_size_t,
        ctypes.c_char_p, ctypes.c_size_t, ctypes.c_char_p, ctypes.c_size_t, ctypes.c_int,
    ]
    s = ctypes.c_float()
    f(n, ctypes.byref(s), 0, w, 0, a, 0, 1)
    return s.value


def f32_hex(v: np.ndarray) -> str:
    return "".join(f"{b:08x}" for b in np.asarray(v, dtype=np.float32).view(np.uint32))


def main() -> None:
    out = pathlib.Path(__file__).with_name("ggml_quants.txt")
    lines = [
        "# Known answers for sotto-kernels' quant blocks. Generated by",
        "# kernels/testdata/ggml_quants.py from llama-cpp-python "
        f"{version('llama-cpp-python')} (its libggml) and gguf {version('gguf')};",
        "# do not edit. Lines:",
        "#   type <id> <name> <elements per block> <bytes per block>",
        "#   row <type> <seed> <zero_run 0|1>   (the input, from the generator in the script)",
        "#   ggml <bytes quantized by ggml, hex>",
        "#   dequant <those bytes decoded by gguf-py, f32 bits as 8 hex digits each>",
        "#   act <type> <activation row (seed + 1000) quantized by ggml's CPU quantize_row, hex>",
        "#   dot <ggml_vec_dot of the weights and activations, f32 bits>",
    ]
    for i in range(64):
        name = base.ggml_type_name(i)
        if name is None or base.ggml_blck_size(i) == 0:
            continue
        name = name.decode()
        if " " in name or name == "DEPRECATED":
            continue
        lines.append(f"type {i} {name} {base.ggml_blck_size(i)} {base.ggml_type_size(i)}")
        if i >= 41:
            break
    for t, act, dot_symbol in TYPES:
        name = base.ggml_type_name(t.value).decode()
        for k, zero_run in enumerate([False, True]):
            seed = 1000 * t.value + k
            x = lcg_row(seed, N, zero_run)
            q = ggml_quantize(t, x)
            y = gguf.quants.dequantize(np.frombuffer(q, dtype=np.uint8), t).astype(np.float32)
            y_c = ggml_dequantize(t, q, N)
            if not np.array_equal(y.view(np.uint32), y_c.view(np.uint32)):
                sys.exit(f"{name}: gguf-py and ggml decode differently")
            a = ggml_activations(act, lcg_row(seed + 1000, N, False))
            d = ggml_dot(dot_symbol, N, q, a)
            lines += [
                f"row {name} {seed} {int(zero_run)}",
                f"ggml {q.hex()}",
                f"dequant {f32_hex(y)}",
                f"act {base.ggml_type_name(act.value).decode()} {a.hex()}",
                f"dot {f32_hex(np.array([d]))}",
            ]
    out.write_text("\n".join(lines) + "\n")
    print(f"wrote {out} ({out.stat().st_size} bytes)")


if __name__ == "__main__":
    main()

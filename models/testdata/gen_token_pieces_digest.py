"""FNV-1a 64 digest of every token's piece as llama.cpp renders it
(llama_token_to_piece(special=True)), each prefixed by its length as u32 LE.
tests/tests/tokenizer_parity.rs::every_token_piece_matches_llama_cpp
recomputes it from Tokenizer::token_bytes."""
import ctypes, os, struct, llama_cpp
from llama_cpp import Llama
MODEL = os.environ.get("SOTTO_MODEL", os.path.expanduser("~/.cache/sotto/models/SmolLM2-135M-Instruct.Q4_1.gguf"))
m = Llama(model_path=MODEL, vocab_only=True, verbose=False)
vocab = llama_cpp.llama_model_get_vocab(m.model)
buf = ctypes.create_string_buffer(4096)
h = 0xcbf29ce484222325
def feed(data):
    global h
    for b in data:
        h = ((h ^ b) * 0x100000001b3) & 0xFFFFFFFFFFFFFFFF
for i in range(m.n_vocab()):
    n = llama_cpp.llama_token_to_piece(vocab, i, buf, 4096, 0, True)
    piece = buf.raw[:n]
    feed(struct.pack("<I", len(piece))); feed(piece)
print(m.n_vocab(), "0x%016x" % h)

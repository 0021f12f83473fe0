"""SentencePiece ("llama" tokenizer model) parity data: a synthetic SPM
vocabulary written to a metadata-only GGUF, tokenized by llama.cpp
(llama-cpp-python) with add_space_prefix on and off."""
import json, os, struct, tempfile, random, collections
import llama_cpp
from llama_cpp import Llama

random.seed(11)
corpus = """The quick brown fox jumps over the lazy dog. Hello world, hello there!
I'm here and you're there; we'll see. It's 2024 and numbers like 12345 appear.
Tokenization with sentencepiece merges pieces by score. Café naïve résumé déjà vu.
def main(): return 42  # code   with   spaces\n\tand tabs\nand newlines"""
words = corpus.replace("\n", " ").split(" ")
pieces = collections.Counter()
for w in words:
    w = "\u2581" + w
    for i in range(len(w)):
        for j in range(i + 2, min(len(w), i + 6) + 1):
            pieces[w[i:j]] += 1
chars = sorted(set("\u2581" + corpus.replace("\n", "").replace("\t", "")) | set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.,;:!?'\"()-"))
tokens, scores, types = ["<unk>", "<s>", "</s>"], [0.0, 0.0, 0.0], [2, 3, 3]
for b in range(256):
    tokens.append("<0x%02X>" % b); scores.append(0.0); types.append(6)
for c in chars:
    if c not in tokens:
        tokens.append(c); scores.append(-1000.0 - len(tokens)); types.append(1)
for p, n in pieces.most_common(1500):
    if p not in tokens:
        tokens.append(p); scores.append(-float(len(tokens)) + 0.5 * n); types.append(1)
for special, ty in (("<start_of_turn>", 3), ("<end_of_turn>", 3), ("<|user|>", 4)):
    tokens.append(special); scores.append(0.0); types.append(ty)

def gguf_bytes(add_space_prefix):
    out = bytearray()
    kvs = []
    def s(v): b = v.encode(); return struct.pack("<Q", len(b)) + b
    def kv(k, t, payload): kvs.append(s(k) + struct.pack("<I", t) + payload)
    kv("general.architecture", 8, s("llama"))
    for k, v in (("block_count", 1), ("embedding_length", 8), ("attention.head_count", 2), ("feed_forward_length", 16), ("context_length", 64)):
        kv("llama." + k, 4, struct.pack("<I", v))
    kv("llama.attention.layer_norm_rms_epsilon", 6, struct.pack("<f", 1e-5))
    kv("tokenizer.ggml.model", 8, s("llama"))
    kv("tokenizer.ggml.pre", 8, s("default"))
    kv("tokenizer.ggml.tokens", 9, struct.pack("<IQ", 8, len(tokens)) + b"".join(s(t) for t in tokens))
    kv("tokenizer.ggml.scores", 9, struct.pack("<IQ", 6, len(scores)) + b"".join(struct.pack("<f", x) for x in scores))
    kv("tokenizer.ggml.token_type", 9, struct.pack("<IQ", 5, len(types)) + b"".join(struct.pack("<i", x) for x in types))
    kv("tokenizer.ggml.bos_token_id", 4, struct.pack("<I", 1))
    kv("tokenizer.ggml.eos_token_id", 4, struct.pack("<I", 2))
    kv("tokenizer.ggml.unknown_token_id", 4, struct.pack("<I", 0))
    kv("tokenizer.ggml.add_space_prefix", 7, struct.pack("<?", add_space_prefix))
    return b"GGUF" + struct.pack("<IQQ", 3, 0, len(kvs)) + b"".join(kvs)

texts = ["", " ", "Hello world", " Hello world", "hello  world", "The quick brown fox.", "I'm here, you're there.", "12345 numbers",
         "Café naïve résumé", "emoji 😀 and 日本", "tabs\tand\nnewlines\n", "  leading spaces", "trailing   ", "<start_of_turn>user\nHi<end_of_turn>",
         "x<|user|>y", "<|user|>", "a<start_of_turn>b", "def main(): return 42", "sentencepiece merges", "ÀÉÎÕÜ", "\u2581already", "multiple\n\n\nlines",
         "Tokenization!", "déjà vu", "fox jumps over the lazy dog"]
alphabet = list("abcdefghijklmnopqrstuvwxyzTHEQ ,.!?'\n\t0123456789") + ["é", "日", "😀", "\u2581"]
for _ in range(60):
    texts.append("".join(random.choice(alphabet) for _ in range(random.randint(1, 30))))
cases = []
with tempfile.TemporaryDirectory() as tmp:
    for asp in (True, False):
        path = os.path.join(tmp, f"spm_{asp}.gguf")
        open(path, "wb").write(gguf_bytes(asp))
        m = Llama(model_path=path, vocab_only=True, verbose=False)
        for t in texts:
            for ps in (True, False):
                cases.append({"add_space_prefix": asp, "text": t, "parse_special": ps,
                              "ids": m.tokenize(t.encode("utf-8"), add_bos=False, special=ps)})
json.dump({"generator": f"llama-cpp-python {llama_cpp.__version__}; models/testdata/gen_spm_cases.py",
           "tokens": tokens, "scores": scores, "token_types": types, "cases": cases},
          open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "llama_cpp_spm.json"), "w"), ensure_ascii=False, separators=(",", ":"))
print(len(tokens), len(cases))

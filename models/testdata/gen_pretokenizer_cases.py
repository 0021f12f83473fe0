import json, os, random
from llama_cpp import Llama
MODEL = os.environ.get("SOTTO_MODEL", os.path.expanduser("~/.cache/sotto/models/SmolLM2-135M-Instruct.Q4_1.gguf"))
base = [
 "", " ", "  ", "\n", "\n\n", " \n", "\t", "\t\t\n ", "Hello", " Hello", "Hello world", "Hello  world", "Hello   world ",
 "hello, world!", "I'm here. You're there. He'll go, she'd say, we've done, they're OK, it's mine.",
 "I'M LOUD. YOU'RE LOUD. IT'S", "don't can't won't shouldn't", "'s 't 're", "'''", "\"quoted\" 'single'",
 "1", "12", "123", "1234", "12345678901234567890", "3.14159", "1,000,000", "2024-01-01", "v1.2.3", "0x1F", "-42", "+7", "1e10",
 "The year 1999 and 2000.", "a1b2c3", "ab12cd", "１２３ (fullwidth digits)", "٣٤٥ arabic-indic", "Ⅻ roman numeral", "½ ¾ ²",
 "café", "naïve résumé", "Ünïcödé", "Straße", "İstanbul", "ﬁnance ligature", "e\u0301 combining", "\u00e9 precomposed",
 "日本語のテキスト", "中文文本，标点。", "한국어 텍스트", "Привет, мир!", "Γειά σου Κόσμε", "שלום עולם", "مرحبا بالعالم", "नमस्ते दुनिया", "สวัสดีชาวโลก",
 "emoji 😀😃😄", "👨‍👩‍👧‍👦 family", "🇫🇷 flag", "❤️ heart", "✓ check ✗", "→ ← ↑ ↓", "∑∫√∞≈≠", "©®™", "€£¥₹", "…—–", "«guillemets»", "„quotes“",
 "def foo(x):\n    return x * 2\n", "fn main() {\n\tprintln!(\"hi\");\n}", "<html><body class=\"x\">text</body></html>", "SELECT * FROM t WHERE a = 1;",
 "if (a && b || !c) { x += 1; }", "path/to/file.txt", "C:\\Windows\\System32", "https://example.com/a?b=c&d=e#f", "user@example.com", "#hashtag @mention",
 "    indented", "trailing   ", "mixed \t tabs", "line1\nline2\r\nline3\rline4", "a\n\n\nb", "   \n   \n", "!!!", "???", "...", "---", "***", "===", "~~~", "```python\nprint(1)\n```",
 "$100", "50%", "#1", "a+b=c", "x^2", "a|b", "<tag>", "[1, 2, 3]", "{\"k\": \"v\"}", "(parens)", "snake_case_name", "camelCaseName", "PascalCase", "kebab-case-name", "SCREAMING_CASE",
 "<|im_start|>", "<|im_end|>", "<|endoftext|>", "<|im_start|>user\nhi<|im_end|>", "text<|im_end|>more", "<|im_start|><|im_end|>", "<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>user\nHello!<|im_end|>\n<|im_start|>assistant\n",
 "<|im_start", "im_start|>", "< |im_start| >", "<|unknown_token|>", "<repo_name>", "<file_sep>", "<filename>", "<jupyter_code>",
 "The quick brown fox jumps over the lazy dog.", "THE QUICK BROWN FOX", "Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor incididunt ut labore et dolore magna aliqua.",
 "What is the capital of France?", "Explain quantum computing in simple terms.", "Write a haiku about autumn leaves.", "Translate 'good morning' to Spanish.",
 "\u00a0nbsp", "zero\u200bwidth", "\ufeffbom", "soft\u00adhyphen", "ideographic\u3000space", "em\u2003space", "line\u2028sep", "\x00null", "\x01ctrl\x7f", "\u0085nel",
 "a" * 100, "ab" * 50, " " * 20 + "x", "x" + " " * 20, "\n" * 10, "😀" * 10, "1" * 40, "—" * 5,
 "Mr. O'Neil's dog's bone", "rock 'n' roll", "'tis", "y'all'd've", "ma'am", "don’t curly apostrophe", "it’s", 
 "tabs\tand\tnewlines\n", " leading space", "  two leading", "\ttab lead", "\n newline lead",
 "Hello<|im_end|>", " <|im_end|> ", "\n<|im_start|>\n", "<|im_start|>assistant", "<|endoftext|><|endoftext|>",
]
random.seed(7)
alphabet = list("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 \n\t.,;:!?'\"-_()[]{}<>/\\|@#$%^&*+=~`") + list("éüßñçøåæ日本中文한국Привет😀🎉—…€°±×÷")
for i in range(80):
    n = random.randint(1, 40)
    base.append("".join(random.choice(alphabet) for _ in range(n)))
specials = ["<|im_start|>", "<|im_end|>", "<|endoftext|>"]
for i in range(20):
    parts = []
    for _ in range(random.randint(2, 6)):
        parts.append(random.choice(specials) if random.random() < 0.4 else "".join(random.choice(alphabet) for _ in range(random.randint(0, 12))))
    base.append("".join(parts))

# --- GGUF metadata copy with a different tokenizer.ggml.pre (no tensors) ---
import struct, tempfile
def read_metadata(path):
    d = open(path, "rb").read(); o = 0
    def rd(fmt):
        nonlocal o; v = struct.unpack_from("<" + fmt, d, o); o += struct.calcsize("<" + fmt); return v[0]
    def rs():
        nonlocal o; n = rd("Q"); s = d[o:o + n]; o += n; return s
    fmts = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
    def rv(t):
        if t == 8: return rs()
        if t == 9:
            et = rd("I"); n = rd("Q"); return (et, [rv(et) for _ in range(n)])
        return rd(fmts[t])
    assert d[:4] == b"GGUF"; o = 8; rd("Q"); n_kv = rd("Q")
    kvs = []
    for _ in range(n_kv):
        k = rs(); t = rd("I"); kvs.append((k, t, rv(t)))
    return kvs, fmts
def write_metadata(kvs, fmts, path):
    out = bytearray(b"GGUF" + struct.pack("<IQQ", 3, 0, len(kvs)))
    def ws(s): out.extend(struct.pack("<Q", len(s)) + s)
    def wv(t, v):
        if t == 8: ws(v)
        elif t == 9:
            et, items = v; out.extend(struct.pack("<IQ", et, len(items)))
            for it in items: wv(et, it)
        else: out.extend(struct.pack("<" + fmts[t], v))
    for k, t, v in kvs:
        ws(k); out.extend(struct.pack("<I", t)); wv(t, v)
    open(path, "wb").write(out)

PRES = ["llama-bpe", "qwen2", "gpt-2", "default", "smollm"]
kvs, fmts = read_metadata(MODEL)
refs = {}
with tempfile.TemporaryDirectory() as tmp:
    for pre in PRES:
        path = os.path.join(tmp, f"{pre}.gguf")
        write_metadata([(k, t, pre.encode() if k == b"tokenizer.ggml.pre" else v) for k, t, v in kvs], fmts, path)
        m = Llama(model_path=path, vocab_only=True, verbose=False)
        refs[pre] = [[m.tokenize(s.encode("utf-8"), add_bos=False, special=ps) for ps in (True, False)] for s in base]
cases = []
for i, s in enumerate(base):
    for j, ps in enumerate((True, False)):
        cases.append({"text": s, "parse_special": ps, "ids": {p: refs[p][i][j] for p in PRES}})
import llama_cpp
json.dump({"generator": f"llama-cpp-python {llama_cpp.__version__}, Llama(vocab_only=True).tokenize(text, add_bos=False, special=parse_special) on SmolLM2-135M-Instruct's vocabulary re-labelled with each tokenizer.ggml.pre; models/testdata/gen_pretokenizer_cases.py",
           "pre_tokenizers": PRES, "cases": cases},
          open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "llama_cpp_pretokenizers.json"), "w"), ensure_ascii=False, separators=(",", ":"))
print(len(cases))

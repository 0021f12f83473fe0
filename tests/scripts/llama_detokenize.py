#!/usr/bin/env python3
"""llama.cpp's text for token ids, as llama_ref.py records continuations.

    llama_detokenize.py MODEL.gguf ID,ID,...

Writes llama_detokenize's bytes (special tokens not rendered) to stdout, for a
test that compares a prefix of llama.cpp's greedy continuation as text.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from llama_ref import detokenize  # noqa: E402
from llama_cpp import Llama  # noqa: E402


def main() -> None:
    if len(sys.argv) != 3:
        raise SystemExit(__doc__)
    ids = [int(t) for t in sys.argv[2].split(",") if t]
    llm = Llama(model_path=sys.argv[1], vocab_only=True, verbose=False)
    sys.stdout.buffer.write(detokenize(llm._model.vocab, ids, False))


if __name__ == "__main__":
    main()

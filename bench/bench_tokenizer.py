"""Tokenizer throughput: 10,000 caption-like texts, cold (empty word cache) and warm, vs open_clip.

    python bench/bench_tokenizer.py
Prints seconds for the captions (10,000 by default, --captions N); not a test.
"""

import argparse
import random
import time

from trainer.tokenizer import SimpleTokenizer


def captions(n: int, seed: int = 0) -> list[str]:
    """Caption-like texts over a ~5k-word vocabulary (real BPE words), a few with accents and entities."""
    tok = SimpleTokenizer()
    words = [w[:-4] for w in tok.encoder if w.endswith("</w>") and w[:-4].isalpha() and len(w) > 6][:5000]
    rng = random.Random(seed)
    out = []
    for i in range(n):
        text = "a photo of " + " ".join(rng.choice(words) for _ in range(rng.randint(3, 15))) + "."
        if i % 20 == 0:
            text += " café &amp; crème"
        out.append(text.capitalize())
    return out


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--captions", type=int, default=10_000, help="how many captions (default 10000)")
    n = parser.parse_args().captions
    texts = captions(n)
    tok = SimpleTokenizer()
    print(f"ours, cold cache : {timed(lambda: tok.tokenize(texts)):.3f} s / {n} captions")
    print(f"ours, warm cache : {timed(lambda: tok.tokenize(texts)):.3f} s / {n} captions")
    try:
        import open_clip
    except ImportError:
        return
    ref = open_clip.tokenizer.SimpleTokenizer()
    print(f"open_clip, cold  : {timed(lambda: ref(texts)):.3f} s / {n} captions")
    print(f"open_clip, warm  : {timed(lambda: ref(texts)):.3f} s / {n} captions")


if __name__ == "__main__":
    main()

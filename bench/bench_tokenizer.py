"""Tokenizer throughput: 10,000 caption-like texts, cold (empty word cache) and warm, vs open_clip.

    python bench/bench_tokenizer.py
Prints seconds per 10k captions; not a test.
"""

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
    texts = captions(10_000)
    tok = SimpleTokenizer()
    print(f"ours, cold cache : {timed(lambda: tok.tokenize(texts)):.3f} s / 10k captions")
    print(f"ours, warm cache : {timed(lambda: tok.tokenize(texts)):.3f} s / 10k captions")
    try:
        import open_clip
    except ImportError:
        return
    ref = open_clip.tokenizer.SimpleTokenizer()
    print(f"open_clip, cold  : {timed(lambda: ref(texts)):.3f} s / 10k captions")
    print(f"open_clip, warm  : {timed(lambda: ref(texts)):.3f} s / 10k captions")


if __name__ == "__main__":
    main()

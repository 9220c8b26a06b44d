"""CLIP's byte-level BPE tokenizer (the 49,408-token vocabulary of OpenAI CLIP and open_clip).

Text is cleaned as CLIP was trained (ftfy, HTML unescaped twice, whitespace collapsed, lower-cased), split
into words with CLIP's regex, each word's UTF-8 bytes mapped onto printable characters and merged with the
BPE ranks from `assets/bpe_simple_vocab_16e6.txt.gz`. `tokenize()` wraps each text in start/end tokens and
pads to the context length, giving the same ids as `clip.tokenize` and `open_clip.tokenize`.

Captions repeat words endlessly, so BPE results are cached per word; that cache is what makes tokenizing
10,000 captions take a fraction of a second.
"""

from __future__ import annotations

import gzip
import html
import threading
from functools import lru_cache
from pathlib import Path

import ftfy
import regex
import torch

DEFAULT_BPE_PATH = Path(__file__).parent / "assets" / "bpe_simple_vocab_16e6.txt.gz"
DEFAULT_CONTEXT_LENGTH = 77
SOT_TOKEN = "<start_of_text>"
EOT_TOKEN = "<end_of_text>"
# The vocabulary file holds more merges than CLIP used; CLIP kept the first 48,894 (49,152 - 256 bytes - 2).
_NUM_MERGES = 49152 - 256 - 2
# CLIP's pre-tokenizer: special tokens, English contractions, letter runs, single digits, symbol runs.
_WORD_PATTERN = (
    regex.escape(SOT_TOKEN) + "|" + regex.escape(EOT_TOKEN)
    + r"""|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""
)


@lru_cache(maxsize=1)
def bytes_to_unicode() -> dict[int, str]:
    """Map each of the 256 byte values to a printable character, so BPE never sees whitespace or controls.

    Printable Latin-1 bytes map to themselves; the others are shifted to code points 256 and up.
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    mapping = {b: chr(b) for b in printable}
    shifted = 0
    for b in range(256):
        if b not in mapping:
            mapping[b] = chr(256 + shifted)
            shifted += 1
    # Insertion order matters: it fixes the ids of the 512 single-symbol tokens at the start of the vocab.
    return mapping


def _is_plain_ascii(text: str) -> bool:
    # Printable ASCII without '&' is a fixed point of ftfy.fix_text and html.unescape: every ftfy fixer acts
    # only on non-ASCII characters, control characters, line breaks or HTML entities (tests fuzz this).
    return text.isascii() and text.isprintable() and "&" not in text


def clean_text(text: str) -> str:
    """CLIP's text normalisation: ftfy, HTML unescape twice, collapse whitespace, lower-case."""
    if not _is_plain_ascii(text):
        text = html.unescape(html.unescape(ftfy.fix_text(text)))
    return " ".join(text.split()).lower()


class SimpleTokenizer:
    """CLIP's BPE tokenizer: `encode(text) -> list[int]`, `decode(ids) -> str`, `tokenize(texts) -> tensor`."""

    def __init__(self, bpe_path: str | Path = DEFAULT_BPE_PATH, cache_size: int = 1_000_000):
        self.byte_encoder = bytes_to_unicode()
        self.byte_decoder = {c: b for b, c in self.byte_encoder.items()}
        merges = _read_merges(Path(bpe_path))
        symbols = list(self.byte_encoder.values())
        vocab = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges] + [SOT_TOKEN, EOT_TOKEN]
        self.encoder: dict[str, int] = {token: i for i, token in enumerate(vocab)}
        self.decoder: dict[int, str] = dict(enumerate(vocab))
        self.bpe_ranks: dict[tuple[str, str], int] = {pair: rank for rank, pair in enumerate(merges)}
        self.sot_token_id = self.encoder[SOT_TOKEN]
        self.eot_token_id = self.encoder[EOT_TOKEN]
        self.vocab_size = len(vocab)
        self.word_pattern = regex.compile(_WORD_PATTERN, regex.IGNORECASE)
        # The special tokens written out in a text are the special ids (as in OpenAI's and open_clip's).
        self._special_ids = {SOT_TOKEN: (self.sot_token_id,), EOT_TOKEN: (self.eot_token_id,)}
        # word -> its token ids. Bounded so a stream of unique words (URLs, ids) cannot grow it forever;
        # when full it starts over, which costs O(1) per word and lets the common words come straight back.
        self.cache_size = cache_size
        self._cache: dict[str, tuple[int, ...]] = {}

    def bpe(self, word: str) -> list[str]:
        """Merge one byte-encoded word into BPE symbols, the last one marked with `</w>`."""
        symbols = [*word[:-1], word[-1] + "</w>"]
        ranks = self.bpe_ranks
        while len(symbols) > 1:
            # The adjacent pair learned earliest wins; merge every occurrence of it, left to right.
            best = min(zip(symbols, symbols[1:]), key=lambda pair: ranks.get(pair, _NUM_MERGES))
            if best not in ranks:
                break
            first, second = best
            merged, i = [], 0
            while i < len(symbols):
                if i < len(symbols) - 1 and symbols[i] == first and symbols[i + 1] == second:
                    merged.append(first + second)
                    i += 2
                else:
                    merged.append(symbols[i])
                    i += 1
            symbols = merged
        return symbols

    def _word_ids(self, word: str) -> tuple[int, ...]:
        ids = self._cache.get(word)
        if ids is None:
            ids = self._special_ids.get(word)
            if ids is None:
                encoded = "".join(self.byte_encoder[b] for b in word.encode("utf-8"))
                ids = tuple(self.encoder[symbol] for symbol in self.bpe(encoded))
            if len(self._cache) >= self.cache_size:
                self._cache.clear()
            self._cache[word] = ids
        return ids

    def encode(self, text: str) -> list[int]:
        """Token ids of `text` after CLIP's cleaning, without start/end tokens."""
        ids: list[int] = []
        for word in self.word_pattern.findall(clean_text(text)):
            ids.extend(self._word_ids(word))
        return ids

    def decode(self, ids) -> str:
        """Text of token ids (a list or 1-D tensor); word ends become spaces, special tokens show as text.

        Padding is not stripped: id 0 is the symbol '!', so drop zeros after the end token first.
        """
        if isinstance(ids, torch.Tensor):
            ids = ids.tolist()
        # Every vocabulary symbol, the special tokens included, is spelled in byte-encoder characters.
        chars = "".join(self.decoder[int(i)] for i in ids)
        text = bytearray(self.byte_decoder[c] for c in chars).decode("utf-8", errors="replace")
        return text.replace("</w>", " ")

    def tokenize(
        self, texts: str | list[str], context_length: int = DEFAULT_CONTEXT_LENGTH, truncate: bool = False
    ) -> torch.Tensor:
        """Ids of each text wrapped in start/end tokens and zero-padded: a LongTensor [N, context_length].

        A text longer than the context raises ValueError naming it, unless `truncate`, which cuts it and
        keeps the end token last (as `clip.tokenize(..., truncate=True)` does).
        """
        if isinstance(texts, str):
            texts = [texts]
        if context_length < 2:
            raise ValueError(f"context_length must be at least 2 (start and end tokens), got {context_length}")
        rows = []
        for index, text in enumerate(texts):
            if not isinstance(text, str):  # else an AttributeError from deep inside the text cleaning
                raise TypeError(f"text {index} is {type(text).__name__} ({text!r:.60}), not str: tokenize takes "
                                "a string or a list of strings")
            ids = [self.sot_token_id, *self.encode(text), self.eot_token_id]
            if len(ids) > context_length:
                if not truncate:
                    raise ValueError(_too_long_message(index, text, len(ids), context_length))
                ids = ids[:context_length]
                ids[-1] = self.eot_token_id
            rows.append(ids)
        out = torch.zeros(len(rows), context_length, dtype=torch.long)
        if rows:
            lengths = torch.tensor([len(r) for r in rows])
            mask = torch.arange(context_length) < lengths[:, None]
            # One flat copy instead of a tensor per row: a third of the time for 10k captions.
            out[mask] = torch.tensor([i for r in rows for i in r], dtype=torch.long)
        return out

    __call__ = tokenize


def _too_long_message(index: int, text: str, n_tokens: int, context_length: int) -> str:
    shown = text if len(text) <= 80 else text[:77] + "..."
    return (
        f"text {index} ({shown!r}) is {n_tokens} tokens with start/end, longer than context_length "
        f"{context_length}; shorten it or pass truncate=True"
    )


def _read_merges(path: Path) -> list[tuple[str, str]]:
    try:
        lines = gzip.open(path, "rt", encoding="utf-8").read().split("\n")
    except OSError as exc:
        raise FileNotFoundError(f"cannot read the BPE vocabulary {path}: {exc}") from exc
    # Line 0 is a version header; the merges follow, one "a b" pair per line.
    merges = [tuple(line.split()) for line in lines[1 : _NUM_MERGES + 1]]
    if len(merges) != _NUM_MERGES or any(len(m) != 2 for m in merges):
        raise ValueError(f"{path} is not CLIP's BPE vocabulary: expected {_NUM_MERGES} merge pairs")
    return merges  # type: ignore[return-value]


_default_tokenizer: SimpleTokenizer | None = None
_default_lock = threading.Lock()


def default_tokenizer() -> SimpleTokenizer:
    """The shared tokenizer over the bundled vocabulary, built on first use (reading it takes ~0.1 s)."""
    global _default_tokenizer
    if _default_tokenizer is None:
        with _default_lock:
            if _default_tokenizer is None:
                _default_tokenizer = SimpleTokenizer()
    return _default_tokenizer


def tokenize(
    texts: str | list[str], context_length: int = DEFAULT_CONTEXT_LENGTH, truncate: bool = False
) -> torch.Tensor:
    """`clip.tokenize`: a LongTensor [N, context_length] of start + BPE ids + end, zero-padded.

    Raises ValueError naming the text when it does not fit and `truncate` is False.
    """
    return default_tokenizer().tokenize(texts, context_length=context_length, truncate=truncate)

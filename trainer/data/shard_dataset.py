"""Streaming image-caption pairs from WebDataset-style tar shards (`<key>.jpg|png` + `<key>.txt` [+ `.cls`]).

    ds = ShardDataset("data/shards/shard-{000000..000009}.tar", train_transform(224), batch_size=64)

Shards are read sequentially (no random access, so a spinning disk or a network filesystem streams them at
full speed), split across ranks and DataLoader workers, and mixed with a seeded shuffle buffer.

Epochs. For training (shuffle=True) an epoch is exactly `total // (batch_size * world_size)` batches per
rank, so ranks never disagree on the number of steps. Each (rank, worker) slot reads its own shards (or,
with fewer shards than slots, every slots-th record) and wraps around within them when its share is short.
With one rank and no workers an epoch is every record once, in buffer-shuffled order. Without shuffling
(evaluation) each slot reads its share once, in order.

Resume. `set_position(epoch, start_batch)` makes iteration start at batch `start_batch` of that epoch,
identical to the uninterrupted run given the same seed, world size, batch size and number of workers;
the records before it are skipped without being decoded.

Image ids. A shard member is keyed by its row (dataset/shards.py), so nothing in it names the source image:
`image_id` is a hash of the image member's bytes, which are read anyway. The writer copies a file's bytes as
they are, so the rows of one image with several captions get the same id (and so do byte-identical files).
"""

from __future__ import annotations

import glob
import json
import posixpath
import random
import re
import tarfile
from itertools import islice
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from contract.datasets import DEFAULT_MAX_IMAGE_PIXELS, IMAGE_EXTENSIONS, SHARD_IMAGE_MEMBERS
from contract.table import DataError, read_dataset_info
from trainer.data.samples import (
    Skipped,
    Tokenizer,
    caption_hash,
    check_image_size,
    content_hash,
    decode_image,
    default_tokenizer,
    describe_error,
    encoded_payload,
    is_jpeg,
    large_image,
    sample_seed,
    seeded_cpu_rng,
    tokenize_captions,
)

INDEX_SUFFIX = ".index.json"
_BRACE = re.compile(r"\{([^{}]*)\}")
_TOKEN_CACHE_LIMIT = 100_000


def expand_braces(pattern: str) -> list[str]:
    """`a-{000..002}.tar` -> [a-000.tar, a-001.tar, a-002.tar]; `{x,y}` lists too; nested groups expand left
    to right. Numeric ranges keep the zero padding of the first bound."""
    m = _BRACE.search(pattern)
    if not m:
        return [pattern]
    body, head, tail = m.group(1), pattern[:m.start()], pattern[m.end():]
    rng = re.fullmatch(r"(\d+)\.\.(\d+)", body)
    if rng:
        lo, hi = rng.group(1), rng.group(2)
        width = len(lo)
        items = [str(i).zfill(width) for i in range(int(lo), int(hi) + 1)]
    else:
        items = body.split(",")
    return [expanded for item in items for expanded in expand_braces(head + item + tail)]


def _what_the_folder_is(folder: Path) -> str:
    """What to give instead of a folder that holds no shards: one of its pairs tables, or a dataset made from
    the images in it (a folder is read as shards only)."""
    tables = sorted(p.name for p in folder.glob("*") if p.suffix.lower() in (".csv", ".tsv"))
    if tables:
        return f"; it holds pairs tables: pass one of them, e.g. {folder / tables[0]}"
    if any(p.suffix.lower() in IMAGE_EXTENSIONS for p in folder.rglob("*")):
        return (f"; it holds images: make a dataset of them first, e.g. `cliplab prepare folders {folder}` (a "
                "folder per class), then pass the CSV it writes")
    return ""


def resolve_shards(pattern: str | Path) -> list[Path]:
    """Shard files from a brace pattern, a glob, a directory (its *.tar) or one .tar; errors name the pattern."""
    text = str(pattern)
    if text.startswith("~"):
        text = str(Path(text).expanduser())
    path = Path(text)
    if path.is_dir():
        files = sorted(path.glob("*.tar"))
        if not files:
            raise DataError(f"no .tar shards in directory {path}{_what_the_folder_is(path)}")
        return files
    if "{" in text:
        files = [Path(p) for p in expand_braces(text)]
        missing = [str(p) for p in files if not p.is_file()]
        if missing:
            raise DataError(f"shard pattern {pattern} names {len(missing)} missing file(s), e.g. {missing[0]}")
        return files
    if any(ch in text for ch in "*?["):
        files = sorted(Path(p) for p in glob.glob(text))
        if not files:
            raise DataError(f"shard glob {pattern} matches no files")
        return files
    if path.is_file():
        return [path]
    raise DataError(f"shards not found: {pattern} (expected a .tar file, a directory of .tar files, a glob, "
                    "or a brace pattern such as dir/shard-{000000..000009}.tar)")


def _split_member_name(name: str) -> tuple[str, str]:
    """WebDataset convention: the key is the path up to the first dot of the file name."""
    folder, base = posixpath.split(name)
    stem, _, ext = base.partition(".")
    return posixpath.join(folder, stem), ext.lower()


def iter_records(shard: Path) -> Iterator[dict[str, Any]]:
    """Group consecutive tar members by key: {"__key__", "jpg": bytes, "txt": bytes, ...}.

    A damaged tar ends its shard with an {"__key__", "__error__"} record (in place of the record it was
    reading) instead of raising, so one bad shard is reported like a bad image and the others still stream.
    """
    record: dict[str, Any] = {}
    try:
        with tarfile.open(shard, mode="r|*") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                key, ext = _split_member_name(member.name)
                if record and key != record["__key__"]:
                    yield record
                    record = {}
                record.setdefault("__key__", key)
                f = tar.extractfile(member)
                record[ext] = f.read() if f is not None else b""
    except (tarfile.TarError, OSError, EOFError) as exc:
        # The record being read when the damage hit may be incomplete: report it as the damage, not as data.
        yield {"__key__": record.get("__key__", "<start>"), "__error__": f"damaged shard: {describe_error(exc)}"}
        return
    if record:
        yield record


def count_records(shard: Path) -> int:
    """Keys in a shard, by reading its tar headers (used when no index json describes it)."""
    keys = set()
    try:
        with tarfile.open(shard, mode="r:*") as tar:
            for member in tar.getmembers():
                if member.isfile():
                    keys.add(_split_member_name(member.name)[0])
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise DataError(f"cannot read shard {shard}: {describe_error(exc)}") from exc
    return len(keys)


def shard_counts(shards: list[Path]) -> list[int]:
    """Records per shard, from `*.index.json` files beside the shards (dataset/shards.py writes them), else
    by scanning the tar headers."""
    known: dict[str, int] = {}
    for folder in {s.parent for s in shards}:
        for index_file in folder.glob(f"*{INDEX_SUFFIX}"):
            try:
                entries = json.loads(index_file.read_text(encoding="utf-8")).get("shards", [])
                known.update({str(folder / e["file"]): int(e["count"]) for e in entries})
            except (OSError, ValueError, KeyError, TypeError, AttributeError):
                continue  # a stale or foreign json: fall back to scanning
    return [known[str(s)] if str(s) in known else count_records(s) for s in shards]


def buffer_shuffle(records: Iterator[Any], size: int, rng: random.Random) -> Iterator[Any]:
    """Approximate shuffle of a stream with a buffer of `size` items (WebDataset-style)."""
    buffer: list[Any] = []
    for record in records:
        if len(buffer) < size:
            buffer.append(record)
            continue
        j = rng.randrange(size)
        yield buffer[j]
        buffer[j] = record
    rng.shuffle(buffer)
    yield from buffer


class ShardDataset(torch.utils.data.IterableDataset):
    """An IterableDataset over tar shards yielding the same samples (or Skipped markers) as CsvDataset
    (`max_pixels` and `draft_side` as there)."""

    def __init__(
        self,
        pattern: str | Path,
        transform: Callable[[Any], torch.Tensor] | None,
        tokenizer: Tokenizer | None = None,
        context_length: int = 77,
        *,
        batch_size: int = 1,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
        shuffle: bool = True,
        shuffle_buffer: int = 1000,
        encoded: bool = False,
        probe: int = 8,
        max_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS,
        draft_side: int | None = None,
    ):
        self.pattern = str(pattern)
        self.max_pixels, self.draft_side = max_pixels, draft_side
        self.shards = resolve_shards(pattern)
        self.counts = shard_counts(self.shards)
        self.offsets = [sum(self.counts[:i]) for i in range(len(self.counts))]
        self.total = sum(self.counts)
        if self.total == 0:
            raise DataError(f"shards {self.pattern} hold no records")
        self.transform, self.encoded = transform, encoded
        self.tokenizer = tokenizer or default_tokenizer()
        self.context_length = context_length
        self.batch_size, self.rank, self.world_size, self.seed = batch_size, rank, world_size, seed
        self.shuffle, self.shuffle_buffer = shuffle, max(1, shuffle_buffer)
        self.epoch, self.start_batch = 0, 0
        # Evaluation reads only records with a global index below this (None: all), so "the first N pairs"
        # is the same set whatever the number of ranks and workers.
        self.limit: int | None = None
        info = read_dataset_info(self.shards[0].parent)
        self.classes: list[str] | None = info.get("classes")
        self.templates: list[str] | None = info.get("templates")
        self._tokens: dict[str, torch.Tensor] = {}
        if shuffle and self.batches_per_epoch() == 0:
            raise DataError(f"shards {self.pattern} hold {self.total} records, fewer than one global batch of "
                            f"{batch_size * world_size}; lower train.batch_size")
        if probe > 0:
            self.probe(probe)

    def __len__(self) -> int:
        """Records in all shards (the epoch length of one rank without workers)."""
        return self.total

    # --- position (the StepLoader protocol shared with the batch samplers) ---

    def batches_per_epoch(self, epoch: int = 0) -> int:
        """Training batches per rank in any epoch (the same for every epoch and rank)."""
        return self.total // (self.batch_size * self.world_size)

    def set_position(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch, self.start_batch = int(epoch), int(start_batch)

    def set_epoch(self, epoch: int) -> None:
        self.set_position(epoch, 0)

    # --- iteration ---

    def __iter__(self) -> Iterator[dict[str, Any] | Skipped]:
        info = torch.utils.data.get_worker_info()
        workers, worker = (info.num_workers, info.id) if info else (1, 0)
        if not self.shuffle:
            slot, slots = self.rank * workers + worker, self.world_size * workers
            for record in self._slot_records(slot, slots, epoch=0, cycles=1):
                yield self._sample(record, None)
            return
        epoch, start, nb, b = self.epoch, self.start_batch, self.batches_per_epoch(), self.batch_size
        # The DataLoader asks worker k % W for request k; after a resume request 0 must be batch `start`,
        # so this worker plays the logical stream that owns batch start + worker.
        stream = (worker + start) % workers
        done, total = len(range(stream, min(start, nb), workers)), len(range(stream, nb, workers))
        slot, slots = self.rank * workers + stream, self.world_size * workers
        rng = random.Random(sample_seed(self.seed, epoch, -3 - slot))
        records = self._slot_records(slot, slots, epoch, rng=rng)
        for record in islice(records, done * b, total * b):
            yield self._sample(record, epoch)

    def _slot_records(self, slot: int, slots: int, epoch: int, cycles: int | None = None,
                      rng: random.Random | None = None) -> Iterator[dict]:
        """This slot's records, tagged with their global index. Passes over the slot's share repeat (with a
        reshuffled shard order) until `cycles` are done (None: forever). With `rng`, each pass goes through
        its own shuffle buffer, drained before the next pass starts, so one pass is exactly one epoch's
        worth of records when the share fits."""
        cycle = 0
        while cycles is None or cycle < cycles:
            produced = 0
            records = self._one_pass(slot, slots, epoch, cycle)
            for record in buffer_shuffle(records, self.shuffle_buffer, rng) if rng is not None else records:
                produced += 1
                yield record
            if produced == 0:
                if cycles is None:
                    raise DataError(f"shards {self.pattern}: reader {slot} of {slots} got no records")
                return
            cycle += 1

    def _one_pass(self, slot: int, slots: int, epoch: int, cycle: int) -> Iterator[dict]:
        order = [s for s in range(len(self.shards)) if self.limit is None or self.offsets[s] < self.limit]
        if self.shuffle:
            random.Random(sample_seed(self.seed, epoch, -1000 - cycle)).shuffle(order)
        if len(order) >= slots:
            for s in order[slot::slots]:
                yield from self._shard_records(s)
            return
        # Fewer shards than readers: every reader reads everything and keeps every slots-th record.
        position = 0
        for s in order:
            for record in self._shard_records(s):
                if position % slots == slot:
                    yield record
                position += 1

    def _shard_records(self, s: int) -> Iterator[dict]:
        for ordinal, record in enumerate(iter_records(self.shards[s])):
            if self.limit is not None and self.offsets[s] + ordinal >= self.limit:
                return
            record["__index__"] = self.offsets[s] + ordinal
            record["__source__"] = f"{self.shards[s]}:{record['__key__']}"
            yield record

    def _sample(self, record: dict[str, Any], epoch: int | None) -> dict[str, Any] | Skipped:
        index, source = record["__index__"], record["__source__"]
        if "__error__" in record:
            return Skipped(index, source, record["__error__"])
        ext = next((e for e in SHARD_IMAGE_MEMBERS if e in record), None)
        if ext is None:
            return Skipped(index, source, f"no image member (expected one of .{', .'.join(SHARD_IMAGE_MEMBERS)})")
        if "txt" not in record:
            return Skipped(index, source, "no caption member (.txt)")
        try:
            caption = record["txt"].decode("utf-8").strip()
            label = int(record["cls"].decode("utf-8").strip()) if "cls" in record else -1
        except (UnicodeDecodeError, ValueError) as exc:
            return Skipped(index, source, f"bad .txt/.cls: {describe_error(exc)}")
        seed = sample_seed(self.seed, epoch, index) if epoch is not None else None
        try:
            image, large = self._image(record[ext], seed, source)
        except Exception as exc:  # any decode/transform failure makes just this record unusable
            return Skipped(index, source, describe_error(exc))
        sample = {"image": image, "text": self._caption_tokens(caption), "caption_id": caption_hash(caption),
                  "image_id": content_hash(record[ext]), "label": label, "index": index}
        if large:
            sample["large_image"] = large
        if seed is not None:
            sample["aug_seed"] = seed
        if self.encoded:
            sample["source"] = source
        return sample

    def _image(self, data: bytes, seed: int | None,
               source: str) -> tuple[torch.Tensor, tuple[str, int, int] | None]:
        if self.encoded and is_jpeg(data):
            check_image_size(data, self.max_pixels)
            return encoded_payload(data), None
        image = decode_image(data, self.max_pixels, self.draft_side)
        if self.transform is None:
            raise DataError(f"ShardDataset({self.pattern}) needs a transform to turn images into tensors")
        with seeded_cpu_rng(seed):
            return self.transform(image), large_image(source, image)

    def _caption_tokens(self, caption: str) -> torch.Tensor:
        tokens = self._tokens.get(caption)
        if tokens is None:
            if len(self._tokens) >= _TOKEN_CACHE_LIMIT:
                self._tokens.clear()
            tokens = self._tokens[caption] = tokenize_captions(self.tokenizer, [caption], self.context_length)[0]
        return tokens

    def probe(self, n: int = 8) -> None:
        """Decode the first n records of the first shard; raise DataError if none is usable."""
        failures = []
        for record in islice(self._shard_records(0), n):
            item = self._sample(record, 0)  # seeded: probing must not consume the caller's RNG stream
            if not isinstance(item, Skipped):
                return
            failures.append(f"{item.path}: {item.reason}")
        raise DataError(f"shards {self.pattern}: none of the first {len(failures)} records of {self.shards[0]} "
                        "could be used. First failures:\n  " + "\n  ".join(failures[:4]))

"""A decoded-image cache: every image of a CSV dataset as uint8 [S,S,3] in one memory-mapped file.

JPEG decoding dominates data loading for small models; decoding once and reading raw pixels afterwards
(the page cache keeps a small dataset in RAM) removes it from every later epoch and run. Images are stored
at the eval geometry (short side resized to S, centre crop): S = resolution for evaluation, so cached
pixels equal the direct path's; S = ceil(resolution * 1.15) for training, leaving room for the random crop.
Reads hand out PIL images (HWC storage makes that a plain copy), so the same PIL transforms as the direct
path apply: PIL's single-threaded resize is as fast as torch's here and never competes for intra-op threads.

Files live in <cache_dir>/<key>.u8 (+ .json with the bad items), key = hash of the CSV path, its mtime and
size, S, and the dataset's pixel limit and draft side. A build writes to a temporary name and renames at the
end, under an flock so concurrent ranks or runs build it once; editing the CSV gives a new key (images edited
in place are not noticed).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import math
import os
import shutil
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from PIL import Image

from contract.table import DataError
from trainer.data.csv_dataset import CsvDataset
from trainer.data.samples import SampleKey, Skipped, describe_error, detach_from_stop_signals, seeded_cpu_rng, split_key
from trainer.transforms import eval_transform_uint8

CACHE_VERSION = 2  # 2: large JPEGs decoded at a reduced scale (draft), the pixel limit in the key
TRAIN_MARGIN = 1.15  # cached side = resolution * margin for training crops


def train_cache_size(resolution: int) -> int:
    return int(math.ceil(resolution * TRAIN_MARGIN))


class _DecodeForCache(torch.utils.data.Dataset):
    """Build-time items: (index, uint8 [S,S,3] array or the reason it could not be read)."""

    def __init__(self, dataset: CsvDataset, size: int):
        self.dataset, self.transform = dataset, eval_transform_uint8(size)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[int, np.ndarray | str]:
        try:
            return index, self.transform(self.dataset.load_image(index)).permute(1, 2, 0).numpy()
        except Exception as exc:  # recorded per item; CachedDataset reports it as Skipped
            return index, describe_error(exc.__cause__ or exc)


def _as_list(items: list[Any]) -> list[Any]:
    return items


class ImageCache:
    """uint8 images [N,S,S,3] of a CsvDataset in <cache_dir>/<key>.u8; `ensure()` builds it once."""

    builds = 0  # builds done by this process (tests use it to prove reuse)

    def __init__(self, dataset: CsvDataset, size: int, cache_dir: str | Path, num_workers: int = 0):
        self.size, self.num_workers = int(size), num_workers
        self.length = len(dataset)
        self.csv_path = dataset.csv_path
        stat = dataset.csv_path.stat()
        # The pixel limit decides which images are bad, the draft side how large JPEGs decode.
        key_text = (f"v{CACHE_VERSION}|{dataset.csv_path}|{stat.st_mtime_ns}|{stat.st_size}|{self.size}|"
                    f"{dataset.max_pixels}|{dataset.draft_side}")
        key = hashlib.sha256(key_text.encode()).hexdigest()[:20]
        self.cache_dir = Path(cache_dir).expanduser()
        self.path = self.cache_dir / f"{key}.u8"
        self.meta_path = self.cache_dir / f"{key}.json"
        self._dataset: CsvDataset | None = dataset  # needed only to build
        self._array: np.ndarray | None = None
        self.bad: dict[int, str] = {}

    @property
    def nbytes(self) -> int:
        return self.length * 3 * self.size * self.size

    def __getstate__(self) -> dict[str, Any]:
        # Workers reopen the memmap themselves; the source dataset is not needed once built.
        return {**self.__dict__, "_array": None, "_dataset": None}

    def ready(self) -> bool:
        return self.meta_path.is_file() and self.path.is_file() and self.path.stat().st_size == self.nbytes

    def ensure(self, log: Callable[[str], None] = print) -> bool:
        """Build the cache unless a complete one exists; returns True when this call built it."""
        built = False
        if not self.ready():
            self.cache_dir.mkdir(parents=True, exist_ok=True)
            with open(self.cache_dir / f"{self.path.stem}.lock", "w") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)  # another rank/run building it: wait, then reuse theirs
                if not self.ready():
                    self._build(log)
                    built = True
        meta = json.loads(self.meta_path.read_text())
        self.bad = {int(k): v for k, v in meta["bad"].items()}
        if len(self.bad) >= self.length:
            examples = "\n  ".join(f"row {k}: {v}" for k, v in list(self.bad.items())[:4])
            raise DataError(f"{self.csv_path}: none of its {self.length} images could be read. First failures:\n  "
                            + examples)
        return built

    def _build(self, log: Callable[[str], None]) -> None:
        if self._dataset is None:
            raise DataError(f"image cache {self.path} is missing and this copy cannot build it")
        free = shutil.disk_usage(self.cache_dir).free
        if free < self.nbytes * 1.05:
            raise DataError(f"image cache for {self.csv_path} needs {self.nbytes / 2**30:.1f} GiB in "
                            f"{self.cache_dir}, only {free / 2**30:.1f} GiB free; set data.cache: false")
        log(f"building image cache {self.path} ({self.length} images at {self.size}px, "
            f"{self.nbytes / 2**20:.0f} MiB)")
        start = time.perf_counter()
        tmp = self.path.with_name(f"{self.path.name}.tmp{os.getpid()}")
        out = np.memmap(tmp, dtype=np.uint8, mode="w+", shape=(self.length, self.size, self.size, 3))
        loader = torch.utils.data.DataLoader(
            _DecodeForCache(self._dataset, self.size), batch_size=32, num_workers=self.num_workers,
            collate_fn=_as_list, worker_init_fn=detach_from_stop_signals,
        )
        bad: dict[int, str] = {}
        for items in loader:
            for index, image in items:
                if isinstance(image, str):
                    bad[index] = image
                else:
                    out[index] = image
        out.flush()
        del out
        os.replace(tmp, self.path)
        meta = {"version": CACHE_VERSION, "csv": str(self.csv_path), "size": self.size, "count": self.length,
                "bad": {str(k): v for k, v in bad.items()}, "seconds": round(time.perf_counter() - start, 2)}
        tmp_meta = self.meta_path.with_name(f"{self.meta_path.name}.tmp{os.getpid()}")
        tmp_meta.write_text(json.dumps(meta))
        os.replace(tmp_meta, self.meta_path)  # written last: its presence marks the cache complete
        ImageCache.builds += 1
        log(f"image cache built in {meta['seconds']} s ({len(bad)} unreadable images)")

    def read(self, index: int) -> Image.Image:
        """The cached RGB image of item `index` (S x S)."""
        if self._array is None:
            self._array = np.memmap(self.path, dtype=np.uint8, mode="r",
                                    shape=(self.length, self.size, self.size, 3))
        return Image.fromarray(np.array(self._array[index]), mode="RGB")


class CachedDataset(torch.utils.data.Dataset):
    """A CsvDataset whose images come from an ImageCache; `transform` (PIL image -> tensor, e.g. the train
    random crop) runs on the cached image. Everything else delegates to the CsvDataset."""

    def __init__(self, base: CsvDataset, cache: ImageCache, transform: Callable[[Image.Image], torch.Tensor]):
        self.base, self.cache, self.transform = base, cache, transform

    def __len__(self) -> int:
        return len(self.base)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_") or name in ("base", "cache", "transform"):
            raise AttributeError(name)
        return getattr(self.base, name)

    def __getitem__(self, key: SampleKey) -> dict[str, Any] | Skipped:
        index, seed = split_key(key)
        reason = self.cache.bad.get(index)
        if reason is not None:
            return Skipped(index, self.base.path(index), reason)
        with seeded_cpu_rng(seed):
            image = self.transform(self.cache.read(index))
        sample = self.base.sample_meta(index)
        sample["image"] = image
        return sample

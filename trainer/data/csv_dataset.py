"""Image-caption pairs listed in a CSV/TSV: `filepath,caption[,label]`, paths relative to the CSV's folder.

    ds = CsvDataset("~/.cliplab/datasets/demo/train.csv", eval_transform(224))
    ds[0]            -> {"image": [3,224,224], "text": [77], "caption_id", "image_id", "label", "index"} or Skipped
    ds.captions      -> list[str];  ds.caption_ids -> LongTensor [N] (equal ids = identical captions)
    ds.image_ids     -> LongTensor [N] (equal ids = the same image file, e.g. one image with 5 captions)

Captions are tokenised once, per distinct caption, when the dataset is built. Paths, ids and labels live in
numpy/torch arrays rather than Python lists so forked DataLoader workers do not copy them (refcount writes
would touch every list element's page).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from contract.datasets import DEFAULT_MAX_IMAGE_PIXELS
from contract.table import CAPTION_COLUMN, LABEL_COLUMN, PATH_COLUMN, DataError, read_dataset_info, read_pairs_table
from trainer.data.samples import (
    SampleKey,
    Skipped,
    Tokenizer,
    check_image_size,
    decode_image,
    default_tokenizer,
    describe_error,
    encoded_payload,
    is_jpeg,
    large_image,
    seeded_cpu_rng,
    split_key,
    tokenize_captions,
)

PROBE_ITEMS = 8


def image_ids_of_paths(paths: np.ndarray) -> torch.Tensor:
    """LongTensor [N]: equal ids for rows naming the same image path (as resolved against the CSV's folder),
    so the captions of one image are positives of each other in the loss."""
    unique: dict[str, int] = {}
    return torch.tensor([unique.setdefault(p, len(unique)) for p in paths.tolist()], dtype=torch.long)


class CsvDataset(torch.utils.data.Dataset):
    """Map-style dataset over a CSV/TSV of image paths and captions.

    `transform` maps an RGB PIL image to a tensor. With `encoded=True`, JPEG files are returned as raw
    bytes (1-D uint8) for GPU decoding and `transform` (a uint8 one) only handles the other formats.
    Images over `max_pixels` (None: no limit) are skipped, naming their size; `draft_side` (the side the
    transform resizes to) lets large JPEGs decode at a reduced scale (dataset.images.draft_for).
    A dataset whose probed items all fail raises DataError at construction.
    """

    def __init__(
        self,
        csv_path: str | Path,
        transform: Callable[[Any], torch.Tensor] | None = None,
        tokenizer: Tokenizer | None = None,
        context_length: int = 77,
        *,
        encoded: bool = False,
        probe: int = PROBE_ITEMS,
        path_column: str = PATH_COLUMN,
        caption_column: str = CAPTION_COLUMN,
        label_column: str = LABEL_COLUMN,
        max_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS,
        draft_side: int | None = None,
    ):
        self.csv_path = Path(csv_path).expanduser().resolve()
        self.root = self.csv_path.parent
        self.transform = transform
        self.encoded = encoded
        self.max_pixels, self.draft_side = max_pixels, draft_side
        self.context_length = context_length
        paths, captions, labels = read_pairs_table(self.csv_path, path_column, caption_column, label_column)
        if not paths:
            raise DataError(f"{self.csv_path}: no rows with a {path_column}; the dataset is empty")
        # Resolve once: relative paths are relative to the CSV's folder, not the working directory.
        self._paths = np.array([str(self.root / p) if not Path(p).is_absolute() else p for p in paths])
        unique: dict[str, int] = {}
        self.caption_ids = torch.tensor([unique.setdefault(c, len(unique)) for c in captions], dtype=torch.long)
        self.unique_captions = list(unique)
        self.image_ids = image_ids_of_paths(self._paths)
        tokens = tokenize_captions(tokenizer or default_tokenizer(), self.unique_captions, context_length)
        self._tokens = tokens.to(torch.int32)  # half the memory; widened per sample
        self.labels = torch.tensor(labels if labels is not None else [-1] * len(paths), dtype=torch.long)
        self.has_labels = labels is not None
        info = read_dataset_info(self.root)
        self.classes: list[str] | None = info.get("classes")
        self.templates: list[str] | None = info.get("templates")
        if probe > 0:
            self.probe(probe)

    def __len__(self) -> int:
        return len(self._paths)

    @property
    def captions(self) -> list[str]:
        return [self.unique_captions[i] for i in self.caption_ids.tolist()]

    def caption(self, index: int) -> str:
        return self.unique_captions[int(self.caption_ids[index])]

    def path(self, index: int) -> str:
        return str(self._paths[index])

    def tokens(self, index: int) -> torch.Tensor:
        return self._tokens[self.caption_ids[index]].long()

    def load_image(self, index: int):
        """The RGB PIL image of item `index`; raises DataError naming the path and the reason."""
        path = self.path(index)
        try:
            return decode_image(path, self.max_pixels, self.draft_side)
        except Exception as exc:  # PIL raises many types for bad files; all mean "this item is unusable"
            raise DataError(f"cannot read image {path} (row {index} of {self.csv_path}): "
                            f"{describe_error(exc)}") from exc

    def sample_meta(self, index: int) -> dict[str, Any]:
        """Everything of a sample except the image."""
        return {
            "text": self.tokens(index),
            "caption_id": int(self.caption_ids[index]),
            "image_id": int(self.image_ids[index]),
            "label": int(self.labels[index]),
            "index": index,
        }

    def __getitem__(self, key: SampleKey) -> dict[str, Any] | Skipped:
        index, seed = split_key(key)
        try:
            image, large = self._image(index, seed)
        except Exception as exc:
            cause = exc.__cause__ if isinstance(exc, DataError) and exc.__cause__ else exc
            return Skipped(index, self.path(index), describe_error(cause))
        sample = self.sample_meta(index)
        sample["image"] = image
        if large:
            sample["large_image"] = large
        if seed is not None:
            sample["aug_seed"] = seed
        if self.encoded:
            sample["source"] = self.path(index)  # named in the report if the GPU cannot decode it either
        return sample

    def _image(self, index: int, seed: int | None) -> tuple[torch.Tensor, tuple[str, int, int] | None]:
        """(the image tensor, or encoded JPEG bytes; (path, width, height) when it decoded large)."""
        if self.encoded:
            with open(self.path(index), "rb") as f:
                data = f.read()
            if is_jpeg(data):
                check_image_size(data, self.max_pixels)
                return encoded_payload(data), None
            image = decode_image(data, self.max_pixels)
        else:
            image = decode_image(self.path(index), self.max_pixels, self.draft_side)
        if self.transform is None:
            raise DataError(f"{self.csv_path}: CsvDataset needs a transform to turn images into tensors")
        with seeded_cpu_rng(seed):
            return self.transform(image), large_image(self.path(index), image)

    def probe(self, n: int = PROBE_ITEMS) -> None:
        """Read up to n items spread over the dataset; raise DataError if none of them is usable."""
        picks = sorted(set(np.linspace(0, len(self) - 1, num=min(n, len(self))).round().astype(int).tolist()))
        failures = []
        for i in picks:
            item = self[(i, 0)]  # a fixed seed: probing must not consume the caller's RNG stream
            if not isinstance(item, Skipped):
                return
            failures.append(f"{item.path}: {item.reason}")
        raise DataError(
            f"{self.csv_path}: none of the {len(picks)} probed images could be read, so the dataset is "
            "unusable (paths are resolved against the CSV's folder). First failures:\n  "
            + "\n  ".join(failures[:4])
        )

"""What every dataset here yields and how samples become a batch.

A dataset item is either a sample dict ({"image", "text", "caption_id", "image_id", "label", "index"}) or a
`Skipped` marker carrying the path and the reason the image could not be used. Nothing retries: the collate function
drops the markers and lists them under the batch's `skipped`, so bad data is counted and reported, never
looped over. An image over data.max_image_pixels is such a marker too (dataset.images.ImageTooLarge); a sample
whose image was large but decoded carries `large_image` (path, width, height), for the loader's one note.
"""

from __future__ import annotations

import hashlib
import io
import os
from contextlib import contextmanager
from typing import Any, Callable, Iterator, NamedTuple

import torch
from PIL import Image

from contract.datasets import DEFAULT_MAX_IMAGE_PIXELS
from dataset.images import LARGE_IMAGE_PIXELS, TRAINING_LIMIT, ImageTooLarge, draft_for, megapixels, open_image

# Items a sampler hands to a dataset: an index, or (index, augmentation seed) for reproducible crops.
SampleKey = int | tuple[int, int]
Tokenizer = Callable[..., torch.Tensor]

JPEG_MAGIC = b"\xff\xd8\xff"


class Skipped(NamedTuple):
    """An item dropped from its batch: which one, where it lives, and why."""

    index: int
    path: str
    reason: str


def default_tokenizer() -> Tokenizer:
    from trainer.tokenizer import tokenize

    return tokenize


def tokenize_captions(tokenizer: Tokenizer, captions: list[str], context_length: int) -> torch.Tensor:
    """Token ids [N, context_length]; captions longer than the context are cut (CLIP keeps the end token)."""
    return tokenizer(captions, context_length=context_length, truncate=True)


def caption_hash(caption: str) -> int:
    """A stable 63-bit id for a caption, for streams that cannot number captions up front (shards)."""
    return content_hash(caption.encode("utf-8"))


def content_hash(data: bytes) -> int:
    """A stable 63-bit id of some bytes (non-negative, so it fits a torch long): equal bytes, equal id."""
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little") >> 1


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """Per-sample augmentation seed: depends only on (seed, epoch, index), so crops survive a resume and do
    not depend on which worker produced the sample."""
    x = (seed * 0x9E3779B97F4A7C15 + epoch * 0xBF58476D1CE4E5B9 + index * 0x94D049BB133111EB) % (1 << 64)
    # splitmix64 finaliser: nearby (epoch, index) pairs must not give correlated generator seeds.
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) % (1 << 64)
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) % (1 << 64)
    return (x ^ (x >> 31)) >> 1


def split_key(key: SampleKey) -> tuple[int, int | None]:
    if isinstance(key, tuple):
        return int(key[0]), int(key[1])
    return int(key), None


@contextmanager
def seeded_cpu_rng(seed: int | None) -> Iterator[None]:
    """Run torchvision's random transforms from `seed` without disturbing the caller's CPU RNG stream.

    Only the CPU generator is touched (torch.manual_seed would also reseed CUDA in the training process).
    """
    if seed is None:
        yield
        return
    state = torch.get_rng_state()
    torch.default_generator.manual_seed(seed)
    try:
        yield
    finally:
        torch.set_rng_state(state)


def describe_error(exc: BaseException) -> str:
    """A short reason for a skipped image, e.g. 'file not found' or 'OSError: image file is truncated'."""
    if isinstance(exc, FileNotFoundError):
        return "file not found"
    if isinstance(exc, IsADirectoryError):
        return "is a directory, not an image"
    if isinstance(exc, Image.UnidentifiedImageError):
        return "not a readable image (unknown or corrupt format)"
    if isinstance(exc, ImageTooLarge):
        return str(exc)  # whole: its size, the limit and the remedy
    text = str(exc).split("\n")[0][:200]
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def decode_image(data: bytes | str, max_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS,
                 draft_side: int | None = None, *, setting: str | None = TRAINING_LIMIT) -> Image.Image:
    """Fully decode image bytes (or a file path) into an RGB PIL image; raises on any defect, ImageTooLarge
    (naming its size and `setting`, the limit to raise) over `max_pixels`.

    With `draft_side` (the side the transform resizes to) a large JPEG decodes at a reduced scale that keeps
    the resized result within a few levels of a full decode (dataset.images.draft_for). `load()` forces the
    decode here: PIL is lazy, and a truncated file would otherwise fail later inside a transform, far from
    the path that explains it.
    """
    with open_image(_as_source(data), max_pixels, setting) as image:
        draft_for(image, draft_side)
        image.load()
        return to_rgb(image)


def check_image_size(data: bytes, max_pixels: int | None) -> None:
    """ImageTooLarge when the image in `data` is over `max_pixels`; reads the header only (for JPEGs handed
    to the GPU decoder, which has no limit of its own)."""
    if max_pixels is not None:
        with open_image(io.BytesIO(data), max_pixels):
            pass


def large_image(path: str, image: Image.Image) -> tuple[str, int, int] | None:
    """(path, width, height) of an image decoded at more than LARGE_IMAGE_PIXELS, for a one-time note."""
    return (path, image.width, image.height) if image.width * image.height > LARGE_IMAGE_PIXELS else None


def large_image_note(path: str, width: int, height: int) -> str:
    """The note a loader logs once about images decoded at full size although they are large."""
    return (f"{path} is {width}x{height} pixels ({megapixels(width * height)}) and decodes at full size for every "
            "sample (about 3 bytes a pixel and a second or more per decode, in each data-loader worker); other "
            "images this large are not named. Downscaling them once (a few thousand pixels a side) makes loading "
            "much faster; JPEGs this large decode at a reduced scale by themselves")


def _as_source(data: bytes | str) -> io.BytesIO | str:
    return io.BytesIO(data) if isinstance(data, (bytes, bytearray, memoryview)) else data


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB, with 16-bit, 32-bit and float grayscale (medical, microscopy, depth, scientific TIFF/PNG) scaled to
    8 bits first: PIL's convert("RGB") clips them at 255, which turns a 16-bit image almost all white."""
    if image.mode not in ("I", "F") and not image.mode.startswith("I;16"):
        return image.convert("RGB")
    import numpy as np

    pixels = np.asarray(image, dtype=np.float64)
    # 16-bit sources fill 0..65535; other integer and float images only their own range.
    top = 65535.0 if image.mode.startswith("I;16") else float(np.nanmax(pixels)) if pixels.size else 0.0
    if image.mode == "I" and 255 < top <= 65535:
        top = 65535.0  # 16-bit PNGs open as mode "I" in older Pillow versions
    scale = 255.0 / top if top > 255 or (image.mode == "F" and top > 0) else 1.0
    gray = np.nan_to_num(np.clip(pixels * scale, 0, 255)).astype(np.uint8)
    return Image.fromarray(gray, mode="L").convert("RGB")


def encoded_payload(data: bytes) -> torch.Tensor:
    """Raw JPEG bytes as a 1-D uint8 tensor, decoded later on the GPU (torchvision.io.decode_jpeg)."""
    return torch.frombuffer(bytearray(data), dtype=torch.uint8)


def is_jpeg(data: bytes) -> bool:
    return data[:3] == JPEG_MAGIC


def collate_samples(items: list[dict[str, Any] | Skipped]) -> dict[str, Any]:
    """Stack the good samples of a batch; list the dropped ones as `skipped: [(path, reason)]` and the large
    images decoded at full size as `large_images: [(path, width, height)]`.

    `image` is a stacked tensor when every sample holds a decoded [3,H,W] image. When some hold encoded
    JPEG bytes (1-D uint8, GPU-decode path) the batch carries `image_parts` (a list), `aug_seed` and
    `image_sources` instead,
    and the StepLoader decodes them on the device. A batch whose every item was skipped has B = 0.
    `image_id` (equal ids: the same image) is there when every sample carries one, as the datasets here do.
    """
    samples = [s for s in items if not isinstance(s, Skipped)]
    skipped = [(s.path, s.reason) for s in items if isinstance(s, Skipped)]
    batch: dict[str, Any] = {
        "text": torch.stack([s["text"] for s in samples]) if samples else torch.zeros(0, 0, dtype=torch.long),
        "caption_id": torch.tensor([s["caption_id"] for s in samples], dtype=torch.long),
        "label": torch.tensor([s["label"] for s in samples], dtype=torch.long),
        "index": torch.tensor([s["index"] for s in samples], dtype=torch.long),
        "skipped": skipped,
        "large_images": [s["large_image"] for s in samples if s.get("large_image")],
    }
    if all("image_id" in s for s in samples):
        batch["image_id"] = torch.tensor([s["image_id"] for s in samples], dtype=torch.long)
    images = [s["image"] for s in samples]
    if any(img.dim() == 1 for img in images):
        batch["image_parts"] = images
        batch["aug_seed"] = torch.tensor([s.get("aug_seed", -1) for s in samples], dtype=torch.long)
        batch["image_sources"] = [s.get("source", "") for s in samples]
    elif images:
        batch["image"] = torch.stack(images)
    else:
        batch["image"] = torch.zeros(0, 3, 0, 0)
    return batch


def batch_size_of(batch: dict[str, Any]) -> int:
    return int(batch["index"].shape[0])


def detach_from_stop_signals(worker_id: int) -> None:
    """DataLoader worker_init_fn: move the worker into its own session.

    A stop (SIGTERM to the trainer's process group, as torchrun sends its ranks, or Ctrl-C to the terminal's
    group) is the main process's to handle: a worker killed by it would turn a clean stop into a failed run.
    Outside the group the worker never sees it, yet still dies of a SIGTERM sent to it alone (multiprocessing
    at interpreter exit, DataLoader shutdown), and torch's watchdog ends it if the main process dies.
    Ignoring SIGTERM instead would make an unclosed loader hang the process at exit.
    """
    os.setsid()

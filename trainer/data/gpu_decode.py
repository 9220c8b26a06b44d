"""Decode JPEG bytes on the GPU (torchvision.io.decode_jpeg) and apply the crop there.

The DataLoader workers only read files; the training process decodes a whole batch in one nvjpeg call,
crops/resizes each image on the device and normalises. Anything the GPU decoder rejects (CMYK, corrupt
data) falls back to PIL on the CPU for that image alone; an image neither can read is skipped.
"""

from __future__ import annotations

import functools
import warnings
from typing import Any

import torch

from trainer.data.samples import decode_image, describe_error, seeded_cpu_rng
from trainer.transforms import eval_geometry_tensor, normalize_on_device, train_geometry_tensor

# torchvision 0.29 deprecates its decoders in favour of torchcodec; they still work, and a warning per
# batch would flood the run log.
warnings.filterwarnings("ignore", message=".*image decoding and encoding capabilities of TorchVision",
                        category=DeprecationWarning)


def gpu_decode_available() -> tuple[bool, str]:
    """(available, why not): GPU decoding needs CUDA and a torchvision built with nvjpeg."""
    if not torch.cuda.is_available():
        return False, "CUDA is not available on this machine"
    try:
        from torchvision.io import decode_jpeg  # noqa: F401
    except ImportError as exc:  # pragma: no cover - torchvision without io ops
        return False, f"torchvision.io.decode_jpeg is unavailable ({exc})"
    return True, ""


@functools.lru_cache(maxsize=8)
def _geometry(resolution: int, scale: tuple[float, float] | None):
    return eval_geometry_tensor(resolution) if scale is None else train_geometry_tensor(resolution, scale)


def _decode_all(parts: list[torch.Tensor], device: torch.device) -> list[torch.Tensor | Exception]:
    """Decode the 1-D (encoded) parts in one batched call; per image when the batch call fails."""
    from torchvision.io import ImageReadMode, decode_jpeg

    encoded = [p for p in parts if p.dim() == 1]
    try:
        decoded: list[torch.Tensor | Exception] = list(decode_jpeg(encoded, mode=ImageReadMode.RGB, device=device))
    except Exception:  # one bad image fails the batched call: find it by decoding one at a time
        decoded = []
        for data in encoded:
            try:
                decoded.append(decode_jpeg(data, mode=ImageReadMode.RGB, device=device))
            except Exception as exc:
                decoded.append(exc)
    it = iter(decoded)
    return [next(it) if p.dim() == 1 else p.to(device, non_blocking=True) for p in parts]


def _cpu_fallback(data: torch.Tensor, device: torch.device) -> torch.Tensor:
    import numpy as np

    image = decode_image(data.numpy().tobytes(), max_pixels=None)  # its worker checked the limit on these bytes
    array = torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1).contiguous()
    return array.to(device)


def decode_batch_on_device(
    batch: dict[str, Any], device: torch.device, resolution: int, scale: tuple[float, float] | None
) -> dict[str, Any]:
    """Turn `image_parts` (encoded JPEGs and already-decoded uint8 images) into a normalised `image` on
    `device`; `scale` None = eval geometry, else the random resized crop seeded by each `aug_seed`.
    Images that cannot be decoded are removed from the batch and appended to `skipped`."""
    parts: list[torch.Tensor] = batch.pop("image_parts")
    seeds = batch.pop("aug_seed").tolist()
    sources = batch.pop("image_sources")
    geometry = _geometry(resolution, scale)
    images, keep = [], []
    for k, (part, image) in enumerate(zip(parts, _decode_all(parts, device))):
        if isinstance(image, Exception):
            try:
                image = _cpu_fallback(part, device)
            except Exception as exc:
                batch["skipped"].append((sources[k], describe_error(exc)))
                continue
        if image.shape[-2:] != (resolution, resolution) or part.dim() == 1:
            with seeded_cpu_rng(seeds[k] if seeds[k] >= 0 else None):
                image = geometry(image)
        images.append(image)
        keep.append(k)
    if len(keep) < len(parts):
        rows = torch.tensor(keep, dtype=torch.long)
        for key in ("text", "caption_id", "image_id", "label", "index"):
            if key in batch:  # image_id: when every sample of the batch has one
                batch[key] = batch[key][rows]
    batch["image"] = normalize_on_device(torch.stack(images)) if images else torch.zeros(0, 3, 0, 0, device=device)
    return batch

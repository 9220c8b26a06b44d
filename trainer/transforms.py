"""Image transforms: OpenAI's eval preprocessing, the random-resized-crop train augmentation, and uint8
variants that stop before normalising so the fast paths (image cache, GPU decode) can normalise on the device.

    eval_transform(224)(pil_image)        -> float [3, 224, 224], identical to clip.load(...)[1]
    train_transform(224, (0.9, 1.0))      -> RandomResizedCrop(bicubic) + the same normalisation
    eval_transform_uint8(224)(pil_image)  -> uint8 [3, 224, 224]; normalize_on_device(batch) finishes it
"""

from __future__ import annotations

import torch
from PIL import Image
from torchvision import transforms as T
from torchvision.transforms import InterpolationMode

# The statistics OpenAI's CLIP was trained with; every checkpoint we load expects them.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

BICUBIC = InterpolationMode.BICUBIC
# RandomResizedCrop's default aspect-ratio range; kept explicit because the GPU path needs it too.
CROP_RATIO = (3.0 / 4.0, 4.0 / 3.0)


def to_rgb(image: Image.Image) -> Image.Image:
    """Module-level (not a lambda) so transforms pickle into DataLoader workers."""
    return image if image.mode == "RGB" else image.convert("RGB")


def _check_resolution(resolution: int) -> int:
    if not isinstance(resolution, int) or resolution < 1:
        raise ValueError(f"resolution must be a positive int (pixels), got {resolution!r}")
    return resolution


def _check_scale(scale: tuple[float, float]) -> tuple[float, float]:
    lo, hi = (float(s) for s in scale)
    if not 0.0 < lo <= hi <= 1.0:
        raise ValueError(f"crop scale must satisfy 0 < low <= high <= 1, got {list(scale)}")
    return lo, hi


def eval_transform_uint8(resolution: int) -> T.Compose:
    """Bicubic resize of the short side, centre crop, RGB -> uint8 [3, res, res] (not normalised)."""
    res = _check_resolution(resolution)
    return T.Compose([T.Resize(res, interpolation=BICUBIC), T.CenterCrop(res), to_rgb, T.PILToTensor()])


def eval_transform(resolution: int) -> T.Compose:
    """OpenAI's CLIP preprocessing: resize short side (bicubic), centre crop, RGB, to tensor, normalise."""
    res = _check_resolution(resolution)
    return T.Compose([
        T.Resize(res, interpolation=BICUBIC),
        T.CenterCrop(res),
        to_rgb,
        T.ToTensor(),
        T.Normalize(CLIP_MEAN, CLIP_STD),
    ])


def train_transform_uint8(resolution: int, scale: tuple[float, float] = (0.9, 1.0)) -> T.Compose:
    """RandomResizedCrop (bicubic, `scale` of the area) -> uint8 [3, res, res] (not normalised)."""
    res = _check_resolution(resolution)
    return T.Compose([
        T.RandomResizedCrop(res, scale=_check_scale(scale), ratio=CROP_RATIO, interpolation=BICUBIC),
        to_rgb,
        T.PILToTensor(),
    ])


def train_transform(resolution: int, scale: tuple[float, float] = (0.9, 1.0)) -> T.Compose:
    """RandomResizedCrop (bicubic, `scale` of the area) + CLIP normalisation -> float [3, res, res].

    Randomness comes from torch's global CPU generator, as in torchvision; the datasets seed it per sample
    (see trainer.data) so that a resumed run sees the same crops.
    """
    res = _check_resolution(resolution)
    return T.Compose([
        T.RandomResizedCrop(res, scale=_check_scale(scale), ratio=CROP_RATIO, interpolation=BICUBIC),
        to_rgb,
        T.ToTensor(),
        T.Normalize(CLIP_MEAN, CLIP_STD),
    ])


def normalize_on_device(images: torch.Tensor) -> torch.Tensor:
    """uint8 [B,3,H,W] or [3,H,W] (on any device) -> float32 normalised with CLIP mean/std.

    Uses the same operations in the same order as ToTensor + Normalize, so on the CPU the result is
    bit-identical to eval_transform's.
    """
    if images.dtype != torch.uint8:
        raise TypeError(f"normalize_on_device expects uint8 images, got {images.dtype}")
    if images.dim() not in (3, 4) or images.shape[-3] != 3:
        raise ValueError(f"normalize_on_device expects [B,3,H,W] or [3,H,W], got {list(images.shape)}")
    mean = torch.tensor(CLIP_MEAN, dtype=torch.float32, device=images.device).view(3, 1, 1)
    std = torch.tensor(CLIP_STD, dtype=torch.float32, device=images.device).view(3, 1, 1)
    return images.to(torch.float32).div(255).sub_(mean).div_(std)


def eval_geometry_tensor(resolution: int) -> T.Compose:
    """uint8 [3,H,W] tensor (CPU or GPU) -> uint8 [3,res,res]: eval's resize + centre crop on a decoded tensor."""
    res = _check_resolution(resolution)
    return T.Compose([T.Resize(res, interpolation=BICUBIC, antialias=True), T.CenterCrop(res)])


def train_geometry_tensor(resolution: int, scale: tuple[float, float] = (0.9, 1.0)) -> T.RandomResizedCrop:
    """uint8 [3,H,W] tensor (CPU or GPU) -> uint8 [3,res,res] random resized crop (global CPU RNG)."""
    res = _check_resolution(resolution)
    return T.RandomResizedCrop(res, scale=_check_scale(scale), ratio=CROP_RATIO, interpolation=BICUBIC,
                               antialias=True)

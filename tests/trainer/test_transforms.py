"""Transforms against independent references: open_clip's image_transform and torchvision's own modules."""

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image

from trainer.transforms import (
    CLIP_MEAN,
    CLIP_STD,
    eval_geometry_tensor,
    eval_transform,
    eval_transform_uint8,
    normalize_on_device,
    train_transform,
    train_transform_uint8,
)


def _image(h: int, w: int, mode: str = "RGB", seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    image = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
    return image.convert(mode)


@pytest.mark.parametrize("size,mode", [((300, 200), "RGB"), ((120, 260), "RGB"), ((64, 64), "L"), ((90, 70), "RGBA")])
def test_eval_transform_equals_open_clip_image_transform(size, mode):
    image = _image(*size, mode=mode, seed=size[0])
    ours = eval_transform(96)(image)
    reference = open_clip.image_transform(96, is_train=False)(image)
    assert ours.shape == (3, 96, 96) and ours.dtype == torch.float32
    assert torch.equal(ours, reference)


def test_openai_constants_are_the_ones_open_clip_uses():
    assert CLIP_MEAN == tuple(open_clip.OPENAI_DATASET_MEAN)
    assert CLIP_STD == tuple(open_clip.OPENAI_DATASET_STD)


def test_train_transform_matches_open_clip_train_transform_for_the_same_seed():
    image = _image(150, 230, seed=3)
    reference = open_clip.image_transform(64, is_train=True, aug_cfg={"scale": (0.5, 1.0)})
    for seed in range(5):
        torch.manual_seed(seed)
        expected = reference(image)
        torch.manual_seed(seed)
        assert torch.equal(train_transform(64, scale=(0.5, 1.0))(image), expected)


def test_train_transform_crops_differ_between_seeds():
    image = _image(150, 230, seed=4)
    t = train_transform(64, scale=(0.3, 1.0))
    outs = []
    for seed in range(3):
        torch.manual_seed(seed)
        outs.append(t(image))
    assert not torch.equal(outs[0], outs[1]) and not torch.equal(outs[1], outs[2])


def test_uint8_variants_then_normalize_on_device_equal_the_float_transforms_bitwise():
    image = _image(140, 180, seed=5)
    eval_u8 = eval_transform_uint8(80)(image)
    assert eval_u8.dtype == torch.uint8 and eval_u8.shape == (3, 80, 80)
    assert torch.equal(normalize_on_device(eval_u8), eval_transform(80)(image))
    torch.manual_seed(7)
    train_u8 = train_transform_uint8(80, (0.6, 1.0))(image)
    torch.manual_seed(7)
    assert torch.equal(normalize_on_device(train_u8.unsqueeze(0))[0], train_transform(80, (0.6, 1.0))(image))


def test_eval_geometry_on_a_tensor_is_close_to_the_pil_path():
    # PIL and torch implement antialiased bicubic separately; they agree to a few grey levels.
    image = _image(120, 200, seed=6).resize((200, 120), Image.BILINEAR)  # smooth content, like photos
    tensor = torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1)
    ours = eval_geometry_tensor(64)(tensor).float()
    reference = eval_transform_uint8(64)(image).float()
    assert ours.shape == reference.shape
    assert (ours - reference).abs().mean() < 2.0


def test_normalize_on_device_rejects_float_and_wrong_shapes():
    with pytest.raises(TypeError, match="uint8"):
        normalize_on_device(torch.zeros(2, 3, 4, 4))
    with pytest.raises(ValueError, match=r"\[B,3,H,W\]"):
        normalize_on_device(torch.zeros(2, 4, 4, 4, dtype=torch.uint8))


def test_bad_scale_and_resolution_are_named():
    with pytest.raises(ValueError, match="crop scale"):
        train_transform(64, scale=(0.9, 1.2))
    with pytest.raises(ValueError, match="resolution"):
        eval_transform(0)

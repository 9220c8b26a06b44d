"""Images that are not 8-bit RGB (16-bit and float grayscale, CMYK, palettes) reach training as the picture
they show, not as PIL's clipped conversion of it. Real files, read through CsvDataset as training reads them."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from trainer.data import CsvDataset

pytestmark = pytest.mark.timeout(60)


def identity_tensor(image: Image.Image):
    import torch

    return torch.from_numpy(np.asarray(image, dtype=np.uint8).copy())


def dataset_of(root: Path, files: dict[str, Image.Image]) -> CsvDataset:
    rows = ["filepath,caption"]
    for name, image in files.items():
        image.save(root / name)
        rows.append(f"{name},a picture of {name}")
    (root / "pairs.csv").write_text("\n".join(rows) + "\n")
    return CsvDataset(root / "pairs.csv", identity_tensor)


def ramp(dtype, top: float) -> np.ndarray:
    """A left-to-right ramp from 0 to `top`: its 8-bit picture runs from black to white."""
    return np.tile(np.linspace(0, top, 64), (8, 1)).astype(dtype)


def test_16_bit_and_float_grayscale_images_are_scaled_not_clipped_to_white(tmp_path):
    ds = dataset_of(tmp_path, {
        "sixteen.png": Image.fromarray(ramp(np.uint16, 65535)),
        "float.tif": Image.fromarray(ramp(np.float32, 1.0), mode="F"),
    })
    for i in range(len(ds)):
        pixels = ds[i]["image"].numpy()
        assert pixels.shape == (8, 64, 3), ds.path(i)
        # PIL's own convert("RGB") clips: a 16-bit ramp is 99% white, a 0..1 float ramp all but black.
        assert 0.3 < (pixels[..., 0] < 128).mean() < 0.7, ds.path(i)
        assert pixels[0, 0, 0] < 5 and pixels[0, -1, 0] > 250, ds.path(i)


def test_8_bit_modes_still_convert_as_pil_converts_them(tmp_path):
    palette = Image.new("P", (8, 8), 3)
    palette.putpalette([0, 0, 0, 10, 20, 30, 40, 50, 60, 200, 100, 50] + [0] * 756)
    files = {"gray.png": Image.new("L", (8, 8), 77), "cmyk.jpg": Image.new("CMYK", (8, 8), (0, 0, 0, 0)),
             "palette.png": palette}
    ds = dataset_of(tmp_path, files)
    for i, image in enumerate(files.values()):
        expected = np.asarray(Image.open(ds.path(i)).convert("RGB"))
        assert np.array_equal(ds[i]["image"].numpy(), expected), ds.path(i)

"""Big scans and satellite tiles in training data: an image over data.max_image_pixels is skipped and counted
like any unreadable image, its reason naming its size and the setting; one decoded at full size although
large is named once per loader; large JPEGs decode at a reduced scale that keeps the resized pixels within a
few levels of a full decode. Pillow's anonymous DecompressionBombWarning/Error never reach the user.

The 200 MP and 100 MP images are PNG headers (tests.dataset.test_prepare_huge_images.png_header_only): PIL
reads their size without allocating their pixels."""

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

import trainer.data.samples
from contract.config import DataConfig
from contract.events import read_events
from dataset.shards import write_shards
from trainer.data import CsvDataset, ShardDataset, Skipped, build_train_loader, build_val_dataset
from trainer.data.build import train_draft_side
from trainer.data.samples import decode_image
from trainer.transforms import eval_transform, eval_transform_uint8, train_transform_uint8

from tests.dataset.test_prepare_huge_images import png_header_only
from tests.train_support import make_dataset as make_class_dataset
from tests.train_support import run_trainer, tiny_config, train_env, write_config
from tests.trainer.test_data import drain, make_dataset, quiet, write_jpeg

pytestmark = pytest.mark.timeout(120)

HUGE_REASON = ("image too large: 20000x10000 pixels (200 MP) is over the limit of 178,956,970 pixels; downscale it "
               "(a few thousand pixels a side is plenty for CLIP) or raise data.max_image_pixels")


@pytest.fixture(autouse=True)
def cliplab_process(monkeypatch):
    """What a `cliplab` command does first (dataset.images.own_pixel_check), undone after the test, so the
    in-process loaders behave as in `cliplab train`; test_library_use_keeps_pillows_guard undoes it."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)


def test_library_use_keeps_pillows_guard(tmp_path, monkeypatch):
    # A program importing cliplab keeps Pillow's guard for its own images: reading ours never changes it.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 89_478_485)  # Pillow's default
    write_jpeg(tmp_path / "ok.jpg", 3, size=(64, 48))
    decode_image(str(tmp_path / "ok.jpg"))
    assert Image.MAX_IMAGE_PIXELS == 89_478_485
    png_header_only(tmp_path / "huge.png", 20_000, 10_000)
    with pytest.raises(Image.DecompressionBombError):  # Pillow refuses first, as it would for any reader
        decode_image(str(tmp_path / "huge.png"))


def add_rows(csv_path: Path, *files: str) -> None:
    with csv_path.open("a", encoding="utf-8") as f:
        f.writelines(f"{name},a scan,0\n" for name in files)


def _cfg(csv_path: Path, **kw) -> DataConfig:
    return DataConfig(train=str(csv_path), val=str(csv_path), **{"num_workers": 0, **kw})


def test_an_image_over_the_limit_is_skipped_and_counted_naming_its_size_and_the_setting(tmp_path):
    csv_path = make_dataset(tmp_path, n=15)
    png_header_only(tmp_path / "images" / "huge.png", 20_000, 10_000)
    add_rows(csv_path, "images/huge.png")
    loader = build_train_loader(_cfg(csv_path), 4, 16, seed=0, log=quiet)
    skipped = [item for batch in drain(loader, 2 * loader.batches_per_epoch()) for item in batch["skipped"]]
    assert skipped == [(str(tmp_path / "images" / "huge.png"), HUGE_REASON)] * 2  # once per epoch
    assert loader.total_skipped == 2
    loader.close()


def test_max_image_pixels_sets_the_limit_for_training_evaluation_and_the_cache(tmp_path):
    csv_path = make_dataset(tmp_path, n=12)  # 40..44 x 52 pixels: at most 2,288
    write_jpeg(tmp_path / "images" / "big.jpg", seed=99, size=(80, 80))  # 6,400 pixels
    add_rows(csv_path, "images/big.jpg")
    cfg = _cfg(csv_path, max_image_pixels=5000)
    loader = build_train_loader(cfg, 4, 16, seed=0, log=quiet)
    reasons = {reason for b in drain(loader, loader.batches_per_epoch()) for _, reason in b["skipped"]}
    assert reasons == {"image too large: 80x80 pixels (0.0 MP) is over the limit of 5,000 pixels; downscale it "
                       "(a few thousand pixels a side is plenty for CLIP) or raise data.max_image_pixels"}
    val = build_val_dataset(cfg, 16, log=quiet)
    assert isinstance(val[12], Skipped) and "80x80 pixels" in val[12].reason
    cached = build_val_dataset(cfg.model_copy(update={"cache": True}), 16, data_dir=tmp_path / "d", log=quiet)
    assert isinstance(cached[12], Skipped) and "80x80 pixels" in cached[12].reason
    assert not isinstance(build_val_dataset(_cfg(csv_path, max_image_pixels=None), 16, log=quiet)[12], Skipped)


def test_jpegs_for_the_gpu_decoder_are_checked_by_their_header_in_the_worker(tmp_path):
    csv_path = make_dataset(tmp_path, n=4)
    write_jpeg(tmp_path / "images" / "big.jpg", seed=99, size=(80, 80))
    add_rows(csv_path, "images/big.jpg")
    ds = CsvDataset(csv_path, train_transform_uint8(16), encoded=True, max_pixels=5000)
    assert ds[0]["image"].dim() == 1  # raw JPEG bytes, decoded later on the GPU
    assert isinstance(ds[4], Skipped) and ds[4].reason.startswith("image too large: 80x80 pixels")


def test_shards_skip_an_image_over_the_limit_like_a_table_does(tmp_path):
    csv_path = make_dataset(tmp_path, n=6)
    png_header_only(tmp_path / "images" / "huge.png", 20_000, 10_000)
    add_rows(csv_path, "images/huge.png")
    write_shards(csv_path, tmp_path / "shards", shard_size=100, log=None)
    items = list(ShardDataset(tmp_path / "shards", eval_transform(16), shuffle=False))
    assert [(Path(s.path).name, s.reason) for s in items if isinstance(s, Skipped)] == \
        [("shard-000000.tar:000006", HUGE_REASON)]


def test_an_image_decoded_at_full_size_although_large_is_named_once_per_loader(tmp_path, monkeypatch):
    monkeypatch.setattr(trainer.data.samples, "LARGE_IMAGE_PIXELS", 4000)  # what 89 MP is to real data
    csv_path = make_dataset(tmp_path, n=12)
    for name in ("tile-a.png", "tile-b.png"):
        Image.new("RGB", (80, 60), (10, 120, 40)).save(tmp_path / "images" / name)
    add_rows(csv_path, "images/tile-a.png", "images/tile-b.png")
    logged: list[str] = []
    loader = build_train_loader(_cfg(csv_path), 4, 16, seed=0, log=logged.append)
    batches = drain(loader, 2 * loader.batches_per_epoch())
    assert Counter(Path(p).name for b in batches for p, _, _ in b["large_images"]) == {"tile-a.png": 2, "tile-b.png": 2}
    notes = [m for m in logged if "decodes at full size" in m]
    assert len(notes) == 1 and loader.notes[-1] == notes[0]
    assert notes[0].startswith(f"{tmp_path / 'images'}/tile-") and " is 80x60 pixels (0.0 MP)" in notes[0]
    assert "Downscaling them once" in notes[0]
    loader.close()


def photo(size: tuple[int, int], seed: int) -> Image.Image:
    """Smooth colour fields, pixel noise and thin lines: fine detail a reduced-scale decode could lose."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)
    pixels = np.asarray(Image.fromarray(coarse).resize(size, Image.BICUBIC), dtype=np.int16)
    image = Image.fromarray(np.clip(pixels + rng.integers(-10, 11, pixels.shape), 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(30):
        x, y = int(rng.integers(0, size[0])), int(rng.integers(0, size[1]))
        draw.line([x, y, x + int(rng.integers(-400, 400)), y + int(rng.integers(-400, 400))], fill=(250, 250, 250))
    return image


def test_a_large_jpeg_decodes_reduced_and_resizes_within_a_few_levels_of_a_full_decode(tmp_path):
    path = tmp_path / "scan.jpg"
    photo((1800, 1400), seed=1).save(path, quality=90)
    full, reduced = decode_image(str(path)), decode_image(str(path), draft_side=56)
    assert full.size == (1800, 1400) and reduced.size == (450, 350)  # 1/4: short side still >= 4 x 56
    to_56 = eval_transform_uint8(56)
    difference = (to_56(full).int() - to_56(reduced).int()).abs()
    assert difference.max() <= 6 and difference.float().mean() < 0.5, (difference.max(), difference.float().mean())


def test_jpegs_too_small_for_the_margin_decode_exactly_as_before(tmp_path):
    path = tmp_path / "photo.jpg"
    photo((640, 480), seed=2).save(path, quality=90)
    with Image.open(path) as plain:
        expected = np.asarray(plain.convert("RGB"))
    for side in (64, 224, 336):  # 480 < 2 x 4 x 64: even 1/2 would not keep 4x the side
        assert np.array_equal(np.asarray(decode_image(str(path), draft_side=side)), expected)


def test_the_train_draft_side_covers_the_smallest_random_crop():
    # The smallest crop of (0.9, 1.0) at ratio 3:4 spans sqrt(0.675) = 0.82 of the short side.
    assert train_draft_side(224, (0.9, 1.0)) == 273 and train_draft_side(224, (0.08, 1.0)) == 915


@pytest.mark.slow  # a trainer subprocess
def test_training_on_huge_scans_skips_them_in_a_data_warning_without_pillows_warning(tmp_path):
    data = make_class_dataset(tmp_path / "data", 1, 1)
    png_header_only(data / "images" / "huge.png", 20_000, 10_000)  # over the limit
    png_header_only(data / "images" / "big.png", 10_000, 10_000)  # under it, over Pillow's warning point
    with (data / "train.csv").open("a") as f:
        f.write("images/huge.png,a scan,0\nimages/big.png,a scan,0\n")
    cfg = tiny_config(data, train={"steps": 2, "batch_size": 5}, eval={"every": 2}, checkpoint={"every": 2})
    run_dir = tmp_path / "run"
    done = run_trainer([str(write_config(tmp_path / "c.yaml", cfg)), "--run-dir", str(run_dir)], train_env(tmp_path))
    assert done.returncode == 0, done.stderr
    assert "DecompressionBomb" not in done.stderr + done.stdout
    assert "image too large: 20000x10000 pixels (200 MP)" in done.stdout
    warned = [e for e in read_events(run_dir / "events.jsonl") if e["kind"] == "data_warning"]
    reasons = {Path(x["path"]).name: x["reason"] for e in warned for x in e["examples"]}
    assert reasons["huge.png"] == HUGE_REASON
    assert "too large" not in reasons.get("big.png", "")  # unreadable only because its pixel data is a stub
    assert sum(e["skipped"] for e in warned) == 2  # each once: 10 rows, batches of 5, two steps

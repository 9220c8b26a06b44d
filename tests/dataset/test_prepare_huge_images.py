"""`cliplab prepare` on folders of big scans and satellite tiles: an image over the pixel limit is unreadable with
its size and the flag to raise named, one between Pillow's warning and refusal points is kept with one note,
and Pillow's anonymous DecompressionBombWarning/Error never reach the user.

The huge images are PNG headers (a real IHDR claiming the size, a few bytes of data): PIL opens and verifies
them without allocating their pixels, as prepare's check (no --decode) does."""

import struct
import zlib
from pathlib import Path

from PIL import Image

import dataset.checks
from dataset.checks import check_image

from tests.dataset.test_prepare import cliplab_prepare, make_image, read_rows, run_prepare


def png_header_only(path: Path, width: int, height: int) -> Path:
    """A PNG whose header says width x height (8-bit RGB) and whose data is one empty row: opens and verifies,
    never decodes. CRCs are right, so PIL's verify() accepts it."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    path.parent.mkdir(parents=True, exist_ok=True)
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0"))
                     + chunk(b"IEND", b""))
    return path


def scans_folder(root: Path) -> Path:
    """Two classes of small photos, plus a 200 MP 'scan' (over the default limit) and a 100 MP one (under it,
    over Pillow's warning point) in class a."""
    for cls in ("a", "b"):
        for i in range(4):
            make_image(root / cls / f"{i}.jpg", colour=(40 * i, 90, 20))
    png_header_only(root / "a" / "huge.png", 20_000, 10_000)
    png_header_only(root / "a" / "big.png", 10_000, 10_000)
    return root


def test_pillows_anonymous_bomb_warning_and_error_become_named_cliplab_messages(tmp_path):
    root = scans_folder(tmp_path / "scans")
    proc = cliplab_prepare("folders", str(root), "--out", str(tmp_path / "out"))
    assert proc.returncode == 0, proc.stderr
    assert "DecompressionBomb" not in proc.stderr + proc.stdout  # neither Pillow's warning nor its error text
    assert "unreadable: 1" in proc.stdout
    assert (f"{root / 'a' / 'huge.png'}: unreadable (image too large: 20000x10000 pixels (200 MP) is over the limit "
            "of 178,956,970 pixels; downscale it") in proc.stdout
    assert "raise --max-image-pixels (and data.max_image_pixels for training)" in proc.stdout
    # The 100 MP one is kept, with one note that names it and says what it costs.
    assert "warning: 1 image(s) are over 89 MP and not JPEGs (the largest: " in proc.stdout
    assert f"{root / 'a' / 'big.png'}, 10000x10000); they are kept" in proc.stdout
    rows = read_rows(tmp_path / "out" / "train.csv") + read_rows(tmp_path / "out" / "val.csv")
    assert sorted(Path(r["filepath"]).name for r in rows if r["filepath"].endswith(".png")) == ["big.png"]


def test_max_image_pixels_raises_or_lowers_the_limit_and_none_lifts_it(tmp_path):
    root = scans_folder(tmp_path / "scans")
    code, out, _ = run_prepare("folders", str(root), "--out", str(tmp_path / "high"), "--max-image-pixels", "300000000")
    assert code == 0 and "unreadable: 0" in out
    code, out, _ = run_prepare("folders", str(root), "--out", str(tmp_path / "none"), "--max-image-pixels", "none")
    assert code == 0 and "unreadable: 0" in out
    code, out, _ = run_prepare("folders", str(root), "--out", str(tmp_path / "low"), "--max-image-pixels", "5000000")
    assert code == 0 and "unreadable: 2" in out
    assert "big.png: unreadable (image too large: 10000x10000 pixels (100 MP) is over the limit of 5,000,000" in out


def test_a_bad_max_image_pixels_is_a_usage_error_naming_the_value(tmp_path):
    root = scans_folder(tmp_path / "scans")
    proc = cliplab_prepare("folders", str(root), "--out", str(tmp_path / "out"), "--max-image-pixels", "0")
    assert proc.returncode == 2
    assert "--max-image-pixels: '0' is not a positive number of pixels" in proc.stderr


def test_large_jpegs_get_no_note_they_decode_at_a_reduced_scale(tmp_path, monkeypatch):
    monkeypatch.setattr(dataset.checks, "LARGE_IMAGE_PIXELS", 1000)  # 40x40 = 1600 pixels counts as large
    root = tmp_path / "photos"
    for cls in ("a", "b"):
        for i in range(4):
            make_image(root / cls / f"{i}.jpg", size=(40, 40))
    make_image(root / "a" / "tile.png", size=(40, 40))
    code, out, _ = run_prepare("folders", str(root), "--out", str(tmp_path / "out"))
    assert code == 0
    assert "1 image(s) are over" in out and f"{root / 'a' / 'tile.png'}, 40x40)" in out


def test_check_image_refuses_by_the_header_alone(tmp_path, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)  # as `cliplab prepare` does (dataset.images.own_pixel_check)
    huge = png_header_only(tmp_path / "huge.png", 30_000, 30_000)  # 900 MP: decoding it would need 2.7 GB
    problem = check_image(huge, decode=True)
    assert problem.startswith("unreadable (image too large: 30000x30000 pixels (900 MP)")
    assert check_image(huge, decode=False, max_pixels=None) == (30_000, 30_000, "PNG")


def test_shards_leave_out_images_over_max_image_pixels_read_from_their_header(tmp_path):
    root = scans_folder(tmp_path / "scans")
    out = tmp_path / "ds"
    code, _, err = run_prepare("folders", str(root), "--out", str(out), "--max-image-pixels", "none",
                               "--val-per-class", "0")
    assert code == 0, err  # the table lists both scans: shards must apply their own limit
    code, stdout, err = run_prepare("shards", str(out / "train.csv"), "--out", str(tmp_path / "s"), "--name", "d")
    assert code == 0, err
    assert "pairs: 9  left out: 1" in stdout
    assert ("a/huge.png: image too large: 20000x10000 pixels (200 MP) is over the limit of 178,956,970 "
            "pixels") in stdout
    assert "raise --max-image-pixels (and data.max_image_pixels for training)" in stdout
    code, stdout, _ = run_prepare("shards", str(out / "train.csv"), "--out", str(tmp_path / "s"), "--name", "d",
                                  "--overwrite", "--max-image-pixels", "5000000")
    assert code == 0 and "pairs: 8  left out: 2" in stdout and "big.png: image too large: 10000x10000" in stdout
    code, stdout, _ = run_prepare("shards", str(out / "train.csv"), "--out", str(tmp_path / "s"), "--name", "d",
                                  "--overwrite", "--max-image-pixels", "none")
    assert code == 0 and "pairs: 10  left out: 0" in stdout

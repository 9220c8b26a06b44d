"""The built-in demo dataset: rendered coloured shapes with captions that describe them.

8 colours x 6 shapes = 48 classes ("red circle", ..., "pink ring"). Each image varies position, size,
rotation, colour shade, background (white, grey or black, tinted) and noise; captions come from a few
templates ("a photo of a red circle.", "a red circle on a grey background.", "a small red circle.", ...).
Chance-level in-batch accuracy at batch 64 is ~1/64, yet colour and shape are easy enough that a tiny CLIP
at 64 px learns them on a laptop CPU in minutes.

Generated on first use with PIL only (no torch, no download), one seeded RNG per image, so the images and
CSVs are byte-identical across runs (for a given Pillow/libjpeg). Generation writes to a temporary folder
and renames it into place, so an interrupted or concurrent generation never leaves a half dataset behind.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import tempfile
import uuid
from contextlib import contextmanager
from pathlib import Path

from PIL import Image, ImageDraw

from dataset.items import Item
from dataset.split import interleave_by_class
from dataset.writer import write_csv, write_dataset_json

DEMO_VERSION = 1  # bump when the rendering changes; older demo folders are then regenerated
SEED = 0
IMAGE_SIZE = 80
TRAIN_PER_CLASS = 64
VAL_PER_CLASS = 10
_SUPERSAMPLE = 2  # draw at 2x and downsample: anti-aliased edges without per-shape smoothing code

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (215, 35, 35),
    "orange": (245, 135, 25),
    "yellow": (240, 215, 35),
    "green": (45, 165, 55),
    "cyan": (40, 200, 215),
    "blue": (35, 70, 215),
    "purple": (135, 50, 185),
    "pink": (245, 125, 190),
}
SHAPES = ("circle", "square", "triangle", "star", "cross", "ring")
BACKGROUNDS: dict[str, int] = {"white": 232, "grey": 128, "black": 28}

CAPTION_TEMPLATES = (
    "a photo of a {colour} {shape}.",
    "a {colour} {shape}.",
    "a {colour} {shape} on a {background} background.",
    "a drawing of a {colour} {shape}.",
    "a {size} {colour} {shape}.",
)
# Prompts for zero-shot evaluation on the demo; each fits the captions the images were trained with.
ZERO_SHOT_TEMPLATES = ["a photo of a {}.", "a {}.", "a drawing of a {}."]


def demo_classes() -> list[str]:
    """The 48 class names in label order: colour-major ("red circle", "red square", ...)."""
    return [f"{colour} {shape}" for colour in COLOURS for shape in SHAPES]


# -------------------------------------------------------------------------------------------- rendering


def _polygon(shape: str, cx: float, cy: float, r: float, angle: float) -> list[tuple[float, float]]:
    """Vertices of a polygonal shape of outer radius r centred on (cx, cy), rotated by `angle` radians."""
    if shape == "square":
        radii, count, offset = [r * 0.9], 4, math.pi / 4
    elif shape == "triangle":
        radii, count, offset = [r], 3, -math.pi / 2
    elif shape == "star":
        radii, count, offset = [r, r * 0.45], 10, -math.pi / 2
    else:
        raise ValueError(f"not a polygon shape: {shape}")
    points = []
    for k in range(count):
        a = angle + offset + 2 * math.pi * k / count
        rad = radii[k % len(radii)]
        points.append((cx + rad * math.cos(a), cy + rad * math.sin(a)))
    return points


def _cross(cx: float, cy: float, r: float, angle: float) -> list[tuple[float, float]]:
    """A plus sign: 12 vertices, arms of half-width 0.32 r."""
    w = 0.32 * r
    outline = [(w, r), (w, w), (r, w), (r, -w), (w, -w), (w, -r),
               (-w, -r), (-w, -w), (-r, -w), (-r, w), (-w, w), (-w, r)]
    c, s = math.cos(angle), math.sin(angle)
    return [(cx + x * c - y * s, cy + x * s + y * c) for x, y in outline]


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, r: float, angle: float,
                colour: tuple[int, int, int], ring_width: int) -> None:
    box = (cx - r, cy - r, cx + r, cy + r)
    if shape == "circle":
        draw.ellipse(box, fill=colour)
    elif shape == "ring":
        draw.ellipse(box, outline=colour, width=ring_width)
    elif shape == "cross":
        draw.polygon(_cross(cx, cy, r, angle), fill=colour)
    else:
        draw.polygon(_polygon(shape, cx, cy, r, angle), fill=colour)


def _jitter(rgb: tuple[int, ...], rng: random.Random, amount: int) -> tuple[int, int, int]:
    return tuple(min(255, max(0, v + rng.randint(-amount, amount))) for v in rgb)  # type: ignore[return-value]


def render_sample(colour: str, shape: str, rng: random.Random) -> tuple[Image.Image, str]:
    """One IMAGE_SIZE x IMAGE_SIZE RGB image of a `colour` `shape`, and a caption describing it."""
    big = IMAGE_SIZE * _SUPERSAMPLE
    background = rng.choice(list(BACKGROUNDS))
    level = BACKGROUNDS[background]
    image = Image.new("RGB", (big, big), _jitter((level, level, level), rng, 14))
    r = big * rng.uniform(0.16, 0.36)
    margin = r + 2
    cx, cy = rng.uniform(margin, big - margin), rng.uniform(margin, big - margin)
    angle = rng.uniform(0, 2 * math.pi)
    ring_width = max(2, round(r * rng.uniform(0.28, 0.4)))
    _draw_shape(ImageDraw.Draw(image), shape, cx, cy, r, angle, _jitter(COLOURS[colour], rng, 22), ring_width)
    image = image.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BOX)
    # Uniform noise from the seeded RNG (PIL's effect_noise is seeded by C rand(), so not reproducible).
    noise = Image.frombytes("RGB", image.size, rng.randbytes(IMAGE_SIZE * IMAGE_SIZE * 3))
    image = Image.blend(image, noise, rng.uniform(0.0, 0.15))
    return image, _caption(colour, shape, background, r / big, rng)


def _caption(colour: str, shape: str, background: str, relative_radius: float, rng: random.Random) -> str:
    size = "small" if relative_radius < 0.22 else "large" if relative_radius > 0.30 else None
    templates = [t for t in CAPTION_TEMPLATES if size or "{size}" not in t]
    return rng.choice(templates).format(colour=colour, shape=shape, background=background, size=size)


# ------------------------------------------------------------------------------------------- generation


def _render_split(out_dir: Path, split: str, per_class: int) -> list[Item]:
    classes = demo_classes()
    folder = out_dir / "images" / split
    folder.mkdir(parents=True, exist_ok=True)
    items = []
    for index in range(per_class * len(classes)):
        label = index % len(classes)
        colour, shape = classes[label].split(" ")
        # One RNG per image, seeded by its identity: reproducible whatever order images are made in.
        image, caption = render_sample(colour, shape, random.Random(f"cliplab-demo:{SEED}:{split}:{index}"))
        path = folder / f"{index:06d}.jpg"
        image.save(path, format="JPEG", quality=90)
        items.append(Item(path, caption, label))
    return items


def write_demo_dataset(
    out_dir: Path, train_per_class: int = TRAIN_PER_CLASS, val_per_class: int = VAL_PER_CLASS
) -> Path:
    """Render the demo dataset into `out_dir` (not atomic: use `ensure_demo_at` for a shared location)."""
    out_dir = Path(out_dir)
    train = _render_split(out_dir, "train", train_per_class)
    val = _render_split(out_dir, "val", val_per_class)
    random.Random(SEED).shuffle(train)
    write_csv(out_dir / "train.csv", train, labelled=True)
    write_csv(out_dir / "val.csv", interleave_by_class(val), labelled=True)
    counts = {"listed": len(train) + len(val), "found": len(train) + len(val), "missing": 0, "unreadable": 0,
              "bad_rows": 0, "classes": len(demo_classes()), "train": len(train), "val": len(val)}
    write_dataset_json(out_dir, {
        "name": "demo", "source": "demo", "classes": demo_classes(), "templates": ZERO_SHOT_TEMPLATES,
        "counts": counts, "caption_template": None, "generator": {"name": "cliplab-demo", "version": DEMO_VERSION},
        "image_size": IMAGE_SIZE,
    })
    return out_dir


def is_complete_demo(path: Path) -> bool:
    """True when `path` holds a finished demo dataset of the current version with all its images."""
    try:
        info = json.loads((Path(path) / "dataset.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    if info.get("source") != "demo" or info.get("generator", {}).get("version") != DEMO_VERSION:
        return False
    counts = info.get("counts", {})
    for split in ("train", "val"):
        folder = Path(path) / "images" / split
        if not (Path(path) / f"{split}.csv").is_file() or not folder.is_dir():
            return False
        if sum(1 for _ in os.scandir(folder)) != counts.get(split):
            return False
    return True


def ensure_demo_at(target: Path, replace: bool = False) -> Path:
    """Make sure `target` holds the demo dataset, generating it if missing, incomplete or outdated.

    Safe under concurrency: generation happens in a private temporary folder that is renamed into place;
    a file lock (where the OS has one) lets a second process wait instead of rendering twice.
    `replace` regenerates even a complete dataset.
    """
    target = Path(target).absolute()
    _refuse_foreign(target)
    if not replace and is_complete_demo(target):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with _lock(target.parent / f".{target.name}.lock") as exclusive:
        if not replace and is_complete_demo(target):  # another process finished while we waited
            return target
        if exclusive:  # no one else is generating, so leftovers of a killed process can go
            for kind in ("tmp", "old"):
                for stale in target.parent.glob(f".{target.name}-{kind}-*"):
                    shutil.rmtree(stale, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-tmp-", dir=target.parent))
        tmp.chmod(0o755)  # mkdtemp makes it private; the dataset is meant to be shared like any other
        try:
            write_demo_dataset(tmp)
            _install(tmp, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def ensure_demo_dataset(data_dir: str | os.PathLike | None = None) -> Path:
    """<data_dir>/datasets/demo, generated on first use (data_dir defaults to contract.config.default_data_dir())."""
    if data_dir is None:
        from contract.config import default_data_dir

        data_dir = default_data_dir()
    return ensure_demo_at(Path(data_dir) / "datasets" / "demo")


def _refuse_foreign(target: Path) -> None:
    # Never delete a dataset that is not ours, even at the demo's path.
    try:
        source = json.loads((target / "dataset.json").read_text(encoding="utf-8")).get("source")
    except (OSError, ValueError, AttributeError):
        return
    if source != "demo":
        raise FileExistsError(f"{target} holds a {source!r} dataset, not the demo; move it or choose another path")


def _install(tmp: Path, target: Path) -> None:
    """Move the finished `tmp` into `target`, first moving an old or partial `target` aside."""
    for _ in range(5):
        try:
            os.rename(tmp, target)  # atomic; fails if target exists and is not empty
            return
        except OSError:
            if not target.exists():
                continue
        aside = target.with_name(f".{target.name}-old-{uuid.uuid4().hex[:8]}")
        try:
            os.rename(target, aside)
        except FileNotFoundError:
            continue
        shutil.rmtree(aside, ignore_errors=True)
    raise RuntimeError(f"could not move the generated demo dataset into {target}")


@contextmanager
def _lock(path: Path):
    try:
        import fcntl
    except ImportError:  # no flock (Windows): the temp-then-rename still keeps the dataset whole
        yield False
        return
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)

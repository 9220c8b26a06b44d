"""The image check of preparation: which listed images exist and PIL can read (threaded, with a progress bar)."""

from __future__ import annotations

import errno
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from contract.datasets import DEFAULT_MAX_IMAGE_PIXELS
from dataset.images import LARGE_IMAGE_PIXELS, ImageTooLarge, megapixels, open_image
from dataset.items import Item
from dataset.problems import MAX_EXAMPLES

# What a too-large image's message tells a `cliplab prepare` user to raise.
PREPARE_LIMIT = "--max-image-pixels (and data.max_image_pixels for training)"


@dataclass
class ImageCheck:
    """The outcome of checking a list of images: the readable items, the counts and named examples of the
    rest, and the large non-JPEG images (decoded at full size in training) as (path, width, height)."""

    readable: list[Item] = field(default_factory=list)
    missing: int = 0
    unreadable: int = 0
    examples: list[str] = field(default_factory=list)
    large: list[tuple[Path, int, int]] = field(default_factory=list)

    def large_note(self) -> str | None:
        """One summary line about the large images, or None."""
        if not self.large:
            return None
        path, width, height = max(self.large, key=lambda item: item[1] * item[2])
        return (f"{len(self.large)} image(s) are over {megapixels(LARGE_IMAGE_PIXELS)} and not JPEGs (the largest: "
                f"{path}, {width}x{height}); they are kept, but training decodes each at full size for every "
                "sample (about 3 bytes a pixel, a second or more): downscale them (a few thousand pixels a "
                "side) for faster training")


def check_image(path: Path, decode: bool = False,
                max_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS) -> str | tuple[int, int, str | None]:
    """(width, height, format) when PIL can open (and verify, or fully `decode`) the image and it has at most
    `max_pixels` pixels; else why not ('missing', 'unreadable (...)')."""
    if not path.is_file():
        return _not_a_file(path)
    try:
        with open_image(path, max_pixels, PREPARE_LIMIT) as im:
            size, kind = im.size, im.format
            im.load() if decode else im.verify()
    except ImageTooLarge as exc:
        return f"unreadable ({exc})"
    except Exception as exc:  # PIL raises many types (OSError, SyntaxError, ValueError)
        return f"unreadable ({type(exc).__name__}: {exc})"
    return size[0], size[1], kind


def _not_a_file(path: Path) -> str:
    """'missing' for a path that is not there; what it is instead when something else is there (counted
    as unreadable: the file was found, it just cannot be an image)."""
    if path.is_dir():
        return "unreadable (a directory, not an image file)"
    try:
        path.stat()
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "unreadable (a symlink loop)"
    return "missing"


def check_images(items: list[Item], decode: bool = False, workers: int = 8, progress: bool = True,
                 max_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS) -> ImageCheck:
    """Check every item's image: readable ones are kept, the rest counted (and the first few named)."""
    from tqdm import tqdm

    out = ImageCheck()
    bar = tqdm(total=len(items), desc="checking images", unit="img", disable=not progress, file=sys.stderr)
    # Threads hide file-system latency (network disks); PIL releases the GIL while decoding. Blocks keep
    # the number of pending futures bounded for million-row CSVs.
    with ThreadPoolExecutor(max(1, workers)) as pool, bar:
        for start in range(0, len(items), 4096):
            block = items[start : start + 4096]
            for item, result in zip(block, pool.map(lambda it: check_image(it.path, decode, max_pixels), block)):
                bar.update()
                _count(out, item, result)
    return out


def _count(out: ImageCheck, item: Item, result: str | tuple[int, int, str | None]) -> None:
    if isinstance(result, tuple):
        out.readable.append(item)
        width, height, kind = result
        if width * height > LARGE_IMAGE_PIXELS and kind not in ("JPEG", "MPO"):  # JPEGs decode reduced
            out.large.append((item.path, width, height))
        return
    out.missing += result == "missing"
    out.unreadable += result != "missing"
    if len(out.examples) < MAX_EXAMPLES:
        out.examples.append(f"{item.path}: {result}")

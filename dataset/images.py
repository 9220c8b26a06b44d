"""Opening an image file the way every cliplab reader does (prepare's check, shards, the training and eval
loaders, embed): one pixel limit checked on the header, before any pixel is decoded, and an error that names
the size, the limit and what to do.

Pillow's own guard against decompression bombs (Image.MAX_IMAGE_PIXELS) prints an anonymous
DecompressionBombWarning above ~89 MP, once per process (so once per DataLoader worker) and without the file's
name, and raises DecompressionBombError above ~179 MP. cliplab replaces it with `max_pixels` (default: that
179 MP refusal point). Its commands (train, eval, embed, prepare) turn Pillow's check off for their process
and its forked DataLoader workers (`own_pixel_check`), since every image they open is checked here instead;
library code never does, so a program that imports cliplab keeps Pillow's guard for the images it opens
itself (and gets Pillow's own warning or error there for images Pillow finds too large).

JPEGs can be decoded at 1/2, 1/4 or 1/8 scale (`draft_side`): a 100 MP scan then costs what a 2 MP photo
does. The reduced image keeps its short side at least DRAFT_MARGIN times the side the transform resizes to,
which keeps the resized pixels within a few levels of a full decode (bench figures in `draft_for`'s comment);
an image too small for that margin decodes at full size, so ordinary photos are decoded exactly as before.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import IO, TYPE_CHECKING, Iterator

from contract.datasets import DEFAULT_MAX_IMAGE_PIXELS

if TYPE_CHECKING:
    from PIL import Image

# Above Pillow's warning point (its Image.MAX_IMAGE_PIXELS default) a full RGB decode takes ~270 MB and about
# a second: worth one note, not an error.
LARGE_IMAGE_PIXELS = 89_478_485
DRAFT_MARGIN = 4
TRAINING_LIMIT = "data.max_image_pixels"  # the setting named in ImageTooLarge's advice


class ImageTooLarge(ValueError):
    """An image with more pixels than the limit; the message gives its size, the limit and the remedies."""

    def __init__(self, size: tuple[int, int], max_pixels: int, setting: str | None = TRAINING_LIMIT):
        self.size, self.max_pixels = size, max_pixels
        width, height = size
        super().__init__(
            f"image too large: {width}x{height} pixels ({megapixels(width * height)}) is over the limit of "
            f"{max_pixels:,} pixels; downscale it (a few thousand pixels a side is plenty for CLIP)"
            + (f" or raise {setting}" if setting else ""))


def megapixels(pixels: int) -> str:
    return f"{pixels / 1e6:.1f} MP" if pixels < 1e7 else f"{pixels / 1e6:.0f} MP"


def check_pixels(size: tuple[int, int], max_pixels: int | None, setting: str | None = TRAINING_LIMIT) -> None:
    """Raise ImageTooLarge when width x height is over `max_pixels` (None: no limit); `setting` is what the
    message tells the user to raise (None: nothing can be)."""
    if max_pixels is not None and size[0] * size[1] > max_pixels:
        raise ImageTooLarge(size, max_pixels, setting)


def own_pixel_check() -> None:
    """In a process cliplab owns (a `cliplab` command; fork-started workers inherit it), let `open_image`'s
    check, which names the file's size and the setting, replace Pillow's anonymous one. Never called by library
    code: Image.MAX_IMAGE_PIXELS is the whole process's setting."""
    from PIL import Image

    Image.MAX_IMAGE_PIXELS = None


@contextmanager
def open_image(source: str | Path | IO[bytes], max_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS,
               setting: str | None = TRAINING_LIMIT) -> Iterator["Image.Image"]:
    """The opened (not yet decoded) PIL image of a file or file object, after the pixel-limit check.

    Raises ImageTooLarge (a ValueError) over the limit, and what PIL raises for files it cannot read.
    """
    from PIL import Image

    with Image.open(source) as image:
        check_pixels(image.size, max_pixels, setting)
        yield image


def draft_for(image: "Image.Image", draft_side: int | None) -> None:
    """Let a JPEG decode at 1/2, 1/4 or 1/8 scale while its short side stays >= DRAFT_MARGIN x `draft_side`
    (the side the transform resizes to); a no-op for other formats, small images and `draft_side` None.

    Measured on photo-like 4:3 JPEGs with fine lines, eval resize + centre crop to 224 and 336 px, uint8:
    images under 2 x DRAFT_MARGIN x the side (1792 px short side at 224) are not reduced, so bit-identical;
    12-108 MP ones differ from a full decode by at most 5 levels (mean 0.1-0.2) and load 2-5x faster.
    A margin of 1 (reduce while still >= the side) differed by up to 42 levels, a margin of 2 by up to 12.
    """
    if draft_side is None or image.format not in ("JPEG", "MPO"):
        return
    side = DRAFT_MARGIN * draft_side
    if min(image.width // side, image.height // side) >= 2:
        image.draft(None, (side, side))

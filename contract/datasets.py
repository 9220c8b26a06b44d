"""Rules a prepared dataset follows, shared by `cliplab prepare` and the backend: the name rule and the
image file extensions and the default pixel limit. Standard library only: the backend imports it without torch or PIL.

    dataset_name_problem("my set")      -> "holds ' ', which a name cannot"
    derive_dataset_name("фото кошки")   -> "фото-кошки"
"""

from __future__ import annotations

import re
import unicodedata

# Files prepare lists and the backend previews; PIL reads all of them.
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})

# Images with more pixels are unreadable to cliplab (prepare's check, the loaders, embed) unless the limit is
# raised (data.max_image_pixels, prepare --max-image-pixels): Pillow's own decompression-bomb refusal point
# (2 x its Image.MAX_IMAGE_PIXELS default), so what Pillow read before cliplab checked sizes still reads.
DEFAULT_MAX_IMAGE_PIXELS = 178_956_970

# Tar-shard member extension for each image file extension (WebDataset style: `<key>.jpg`, `<key>.txt`), and
# the members a shard reader takes as the image (`jpeg` too: shards written by other tools use it).
SHARD_MEMBER = {".jpg": "jpg", ".jpeg": "jpg", ".png": "png", ".webp": "webp", ".bmp": "bmp", ".gif": "gif",
                ".tif": "tif", ".tiff": "tif"}
SHARD_IMAGE_MEMBERS = ("jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff")

# A name is a folder name under <data_dir>/datasets and a URL segment (/api/datasets/{name}); 200 bytes
# stays under every filesystem's 255-byte name limit.
NAME_MAX_BYTES = 200
NAME_RULE = (f"letters and digits (any script), '.', '_' and '-'; not starting with '.' or '-', no '..', "
             f"at most {NAME_MAX_BYTES} bytes in UTF-8")
_NAME_RE = re.compile(r"\w[\w.-]*")
_NOT_NAME_CHARS = re.compile(r"[^\w.-]")


def dataset_name_problem(name: str) -> str | None:
    """None when `name` is a valid dataset name, else what is wrong with it (for an error message)."""
    if not name:
        return "is empty"
    if bad := _NOT_NAME_CHARS.findall(name):
        shown = ", ".join(repr(c) for c in dict.fromkeys(bad))
        return f"holds {shown}, which a name cannot"
    if not _NAME_RE.fullmatch(name):
        return f"starts with {name[0]!r}"
    if ".." in name:
        return "contains '..'"
    if (size := len(name.encode("utf-8"))) > NAME_MAX_BYTES:
        return f"is {size} bytes long in UTF-8 (at most {NAME_MAX_BYTES})"
    return None


def derive_dataset_name(raw: str, fallback: str = "dataset") -> str:
    """A valid dataset name made from a folder or file name: runs of other characters become '-'."""
    # NFC: macOS hands out decomposed names ('e' + combining accent), and the accent alone is not \w.
    name = _NOT_NAME_CHARS.sub("-", unicodedata.normalize("NFC", raw))
    name = re.sub(r"\.{2,}", ".", re.sub(r"-{2,}", "-", name)).strip("-.")
    while len(name.encode("utf-8")) > NAME_MAX_BYTES:
        name = name[:-1].rstrip("-.")
    return name if dataset_name_problem(name) is None else fallback

"""The image check of preparation: which listed images exist and PIL can read (threaded, with a progress bar)."""

from __future__ import annotations

import errno
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from dataset.items import Item
from dataset.problems import MAX_EXAMPLES


def check_image(path: Path, decode: bool = False) -> str | None:
    """None when PIL can open (and verify, or fully `decode`) the image; else why not ('missing', ...)."""
    from PIL import Image

    if not path.is_file():
        return _not_a_file(path)
    try:
        with Image.open(path) as im:
            im.load() if decode else im.verify()
    except Exception as exc:  # PIL raises many types (OSError, SyntaxError, ValueError, DecompressionBombError)
        return f"unreadable ({type(exc).__name__}: {exc})"
    return None


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


def check_images(
    items: list[Item], decode: bool = False, workers: int = 8, progress: bool = True
) -> tuple[list[Item], int, int, list[str]]:
    """Keep the readable items; returns (readable, missing count, unreadable count, examples)."""
    from tqdm import tqdm

    readable, missing, unreadable, examples = [], 0, 0, []
    bar = tqdm(total=len(items), desc="checking images", unit="img", disable=not progress, file=sys.stderr)
    # Threads hide file-system latency (network disks); PIL releases the GIL while decoding. Blocks keep
    # the number of pending futures bounded for million-row CSVs.
    with ThreadPoolExecutor(max(1, workers)) as pool, bar:
        for start in range(0, len(items), 4096):
            block = items[start : start + 4096]
            for item, problem in zip(block, pool.map(lambda it: check_image(it.path, decode), block)):
                bar.update()
                if problem is None:
                    readable.append(item)
                    continue
                missing += problem == "missing"
                unreadable += problem != "missing"
                if len(examples) < MAX_EXAMPLES:
                    examples.append(f"{item.path}: {problem}")
    return readable, missing, unreadable, examples

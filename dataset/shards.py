"""Write WebDataset-style tar shards from a pairs CSV: `<key>.jpg|png|...` + `<key>.txt` [+ `<key>.cls`].

    write_shards("~/.cliplab/datasets/mine/train.csv", "~/.cliplab/datasets/mine/shards", shard_size=1000)
    -> [shard-000000.tar, shard-000001.tar, ...] and shard.index.json (records per shard, for the reader)

Image bytes go in exactly as they are on disk (no re-encode: no quality loss, and it runs at disk speed).
Missing files are left out and counted, and so are images over `max_pixels` when one is given (read from the
header, no decode: `cliplab prepare shards` passes --max-image-pixels); corrupt files are copied as they are
unless `verify=True` (a full decode), and the reader (trainer.data.ShardDataset) skips and reports them, as it
does images over data.max_image_pixels. Torch-free.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import tarfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from contract.datasets import SHARD_MEMBER
from contract.table import DataError, read_pairs_table
from dataset.images import TRAINING_LIMIT, ImageTooLarge, open_image

INDEX_SUFFIX = ".index.json"  # trainer.data.shard_dataset reads "*.index.json" beside the shards


def existing_shards(out_dir: str | os.PathLike, name: str) -> list[Path]:
    """The shards named `<name>-NNNNNN.tar` in `out_dir`, sorted; not those of a longer name that starts
    the same (`pets` does not match `pets-val-000000.tar`)."""
    out = Path(out_dir).expanduser()
    if not out.is_dir():
        return []
    pattern = re.compile(re.escape(name) + r"-\d{6,}\.tar")
    return sorted(p for p in out.iterdir() if pattern.fullmatch(p.name))


def _add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o644
    info.mtime = 0  # reproducible shards: same CSV and images -> byte-identical tars
    tar.addfile(info, io.BytesIO(data))


@dataclass(frozen=True)
class _ImageRule:
    """What an image must pass to be packed: the pixel limit (None: none; `setting` is what its message says to
    raise) and, with `decode`, a full decode."""

    decode: bool = False
    max_pixels: int | None = None
    setting: str | None = TRAINING_LIMIT

    def problem(self, data: bytes) -> str | None:
        """Why the image is left out, or None. Without `decode` only the header is read, and a header PIL cannot
        read is packed as it is (the reader skips and reports it)."""
        if self.max_pixels is None and not self.decode:
            return None  # nothing to check: no need to parse the header
        from PIL import Image

        try:
            with open_image(io.BytesIO(data), self.max_pixels, self.setting) as image:
                if self.decode:
                    image.load()
        except (ImageTooLarge, Image.DecompressionBombError) as exc:  # Pillow's, when its own check is on
            return str(exc)
        except Exception as exc:
            return f"{type(exc).__name__}: {exc}" if self.decode else None
        return None


def _read_image_member(image_path: Path, rule: _ImageRule) -> tuple[str, bytes] | str:
    """(member extension, bytes) of an image to pack, or why it cannot be packed."""
    ext = SHARD_MEMBER.get(image_path.suffix.lower())
    try:
        data = image_path.read_bytes()
    except OSError as exc:
        return "file not found" if isinstance(exc, FileNotFoundError) else f"{type(exc).__name__}: {exc}"
    if not ext:
        return f"unsupported image extension {image_path.suffix!r}"
    problem = rule.problem(data)
    return (ext, data) if problem is None else problem


class _ShardWriter:
    """Opens `<name>-NNNNNN.tar.tmp`, renames it into place when full or closed."""

    def __init__(self, out_dir: Path, name: str, shard_size: int):
        self.out_dir, self.name, self.shard_size = out_dir, name, shard_size
        self.written: list[tuple[Path, int]] = []
        self._tar: tarfile.TarFile | None = None
        self._count = 0

    def add(self, key: str, members: dict[str, bytes]) -> None:
        if self._tar is None:
            self._path = self.out_dir / f"{self.name}-{len(self.written):06d}.tar"
            self._tmp = self._path.with_name(self._path.name + ".tmp")
            self._tar = tarfile.open(self._tmp, "w", format=tarfile.USTAR_FORMAT)
        for ext, data in members.items():
            _add_member(self._tar, f"{key}.{ext}", data)
        self._count += 1
        if self._count == self.shard_size:
            self.close()

    def close(self) -> None:
        if self._tar is None:
            return
        self._tar.close()
        os.replace(self._tmp, self._path)
        self.written.append((self._path, self._count))
        self._tar, self._count = None, 0


def write_shards(
    csv_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    shard_size: int = 1000,
    name: str = "shard",
    *,
    verify: bool = False,
    overwrite: bool = False,
    log: Callable[[str], None] | None = print,
    max_pixels: int | None = None,
    limit_setting: str | None = TRAINING_LIMIT,
) -> list[Path]:
    """Pack the pairs of `csv_path` into `<out_dir>/<name>-000000.tar, ...`; returns the shard paths.

    Left out (and listed in the index): missing files, images with more than `max_pixels` pixels (None: no
    limit of ours, though in a process that keeps Pillow's decompression-bomb check on, `verify` reports what it
    refuses; the reason names `limit_setting` as what to raise) and, with `verify`, images that do not decode.

    Also writes `<name>.index.json` ({"shards": [{"file", "count"}], "total", "missing", ...}) and copies
    the CSV's dataset.json (classes, templates) when there is one. Raises DataError when no image could be
    packed, or when shards of the same name already exist in out_dir and `overwrite` is False; with it, they
    and their index are replaced once the new shards are written.
    """
    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, got {shard_size}")
    csv_path = Path(csv_path).expanduser().resolve()
    out = Path(out_dir).expanduser()
    paths, captions, labels = read_pairs_table(csv_path)
    out.mkdir(parents=True, exist_ok=True)
    existing = existing_shards(out, name)
    if existing and not overwrite:
        raise DataError(f"{out} already holds shards named {name}-NNNNNN.tar (e.g. {existing[0].name}); "
                        "choose another out_dir or name, or pass overwrite=True to replace them")
    writer = _ShardWriter(out, name, shard_size)
    problems = _pack(writer, csv_path.parent, paths, captions, labels, _ImageRule(verify, max_pixels, limit_setting))
    if not writer.written:
        examples = "; ".join(f"{p['path']}: {p['reason']}" for p in problems[:3])
        raise DataError(f"{csv_path}: no image could be packed into shards ({examples})")
    _write_index(out, name, csv_path, writer.written, problems, labels is not None)
    # New shards replaced old ones of the same number; old ones past the new count would still be read.
    for stale in set(existing) - {path for path, _ in writer.written}:
        stale.unlink()
    if (csv_path.parent / "dataset.json").is_file() and (overwrite or not (out / "dataset.json").exists()):
        shutil.copyfile(csv_path.parent / "dataset.json", out / "dataset.json")
    if log is not None:
        total = sum(count for _, count in writer.written)
        example = f" (e.g. {problems[0]['path']}: {problems[0]['reason']})" if problems else ""
        log(f"wrote {total} pairs into {len(writer.written)} shard(s) in {out}; {len(problems)} left out{example}")
    return [path for path, _ in writer.written]


def _pack(writer: _ShardWriter, base: Path, paths: list[str], captions: list[str], labels: list[int] | None,
          rule: _ImageRule) -> list[dict[str, str]]:
    """Add each pair (keyed by its row) that passes `rule` to the shards; returns the left-out ones' path and
    reason."""
    problems: list[dict[str, str]] = []
    key_width = max(6, len(str(len(paths))))
    for row, file in enumerate(paths):
        image_path = Path(file) if Path(file).is_absolute() else base / file
        image = _read_image_member(image_path, rule)
        if isinstance(image, str):
            problems.append({"path": str(image_path), "reason": image})
            continue
        members = {image[0]: image[1], "txt": captions[row].encode("utf-8")}
        if labels is not None and labels[row] >= 0:
            members["cls"] = str(labels[row]).encode("ascii")
        writer.add(str(row).zfill(key_width), members)
    writer.close()
    return problems


def _write_index(out: Path, name: str, csv_path: Path, written: list[tuple[Path, int]],
                 problems: list[dict[str, str]], has_labels: bool) -> None:
    index = {
        "name": name,
        "source_csv": str(csv_path),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "has_labels": has_labels,
        "total": sum(count for _, count in written),
        "shards": [{"file": path.name, "count": count} for path, count in written],
        "left_out": len(problems),
        "left_out_examples": problems[:20],
    }
    tmp = out / f"{name}{INDEX_SUFFIX}.tmp"
    tmp.write_text(json.dumps(index, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, out / f"{name}{INDEX_SUFFIX}")

"""Checkpoint directories that say when they are damaged and survive a crash of the machine.

- A checksum manifest, SHA256SUMS, in the format `sha256sum` writes and reads (`<hex>  <name>` per line), so
  `cd step_000100 && sha256sum -c SHA256SUMS` checks a copy by hand. torch.load skips its zip CRCs and
  safetensors has no checksum, so without it a flipped bit on a network filesystem or a partial copy loads
  silently.
- fsync of files and directories: a rename is atomic for other processes, but only durable once the files
  and then the directory holding the new name are fsync'ed; after a power loss a renamed directory could
  otherwise hold empty files while `latest` names it.

Standard library only: the library's loaders and the training program's CheckpointFolder both use it.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
from pathlib import Path

MANIFEST = "SHA256SUMS"
CHUNK = 4 << 20  # hashed in 4 MiB reads: a 1.8 GB checkpoint is never in memory at once
_LINE = re.compile(r"([0-9a-f]{64}) [ *](.+)")  # `sha256sum`'s text (" ") and binary ("*") modes


class ManifestError(ValueError):
    """A SHA256SUMS that cannot be read (the loaders turn it into a CheckpointError naming the directory)."""


def sha256_file(path: Path) -> str:
    """The hex SHA-256 of the file at `path`, read in CHUNK pieces."""
    digest = hashlib.sha256()
    buffer = bytearray(CHUNK)
    view = memoryview(buffer)
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buffer):
            digest.update(view[:n])
    return digest.hexdigest()


def write_manifest(directory: Path) -> Path:
    """Write <directory>/SHA256SUMS over every regular file in it (subfolders' as `sub/name`), atomically; call
    it after the last file is written. Returns the manifest's path."""
    names = sorted(p.relative_to(directory).as_posix() for p in directory.rglob("*")
                   if p.is_file() and not p.is_symlink() and p != directory / MANIFEST)
    bad = [n for n in names if "\n" in n or "\\" in n]
    if bad:  # sha256sum escapes such names; ours never have them, so refuse rather than write a lie
        raise ValueError(f"cannot list {bad} in {directory / MANIFEST}: newline or backslash in a file name")
    text = "".join(f"{sha256_file(directory / n)}  {n}\n" for n in names)
    manifest = directory / MANIFEST
    tmp = directory / f".{MANIFEST}.tmp-{os.getpid()}"
    try:
        tmp.write_text(text)
        fsync_file(tmp)
        os.replace(tmp, manifest)
    finally:
        tmp.unlink(missing_ok=True)
    return manifest


def read_manifest(directory: Path) -> dict[str, str] | None:
    """{file name: hex digest} from <directory>/SHA256SUMS; None when there is none (a checkpoint written by an
    older cliplab, or assembled by hand). Raises ManifestError for a line that is not `<hex>  <name>`."""
    path = directory / MANIFEST
    if not path.is_file():
        return None
    try:
        text = path.read_bytes().decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ManifestError(f"{path} is unreadable ({exc})") from exc
    entries = {}
    for number, line in enumerate(text.splitlines(), 1):
        match = _LINE.fullmatch(line)
        if match is None:
            raise ManifestError(f"{path} line {number} is not '<sha256 hex>  <file name>' (damaged?)")
        name = match.group(2)
        if name.startswith("/") or ".." in name.split("/"):  # a manifest speaks for its own directory only
            raise ManifestError(f"{path} line {number} names {name!r}, a file outside its directory")
        entries[name] = match.group(1)
    return entries


def manifest_problems(directory: Path, names: list[str] | None = None) -> list[str] | None:
    """Check the files SHA256SUMS lists (only those of `names` it lists, when given) against their digests.

    None when the directory has no manifest (nothing to check); else one line per damaged file, "<name>:
    checksum mismatch (...)" or "<name>: missing", empty when all match. Raises ManifestError."""
    entries = read_manifest(directory)
    if entries is None:
        return None
    problems = []
    for name, expected in entries.items():
        if names is not None and name not in names:
            continue
        path = directory / name
        if not path.is_file():
            problems.append(f"{name}: missing (listed in {MANIFEST})")
        elif (found := sha256_file(path)) != expected:
            problems.append(f"{name}: checksum mismatch ({MANIFEST} records {expected[:16]}..., the file has "
                            f"{found[:16]}...; damaged or partly copied)")
    return problems


def fsync_file(path: Path) -> None:
    """Flush a file's data to the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    """Flush a directory's entries (names created, renamed or removed in it) to the disk. Platforms that cannot
    open a directory (Windows) have no such step."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except (IsADirectoryError, PermissionError):
        return
    try:
        os.fsync(fd)
    except OSError as exc:  # some network and FUSE filesystems cannot sync a directory: nothing more to do there
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
            raise
    finally:
        os.close(fd)


def fsync_tree(directory: Path) -> None:
    """fsync every file in `directory` (and its subfolders), each folder, then `directory` itself: what must be on
    the disk before the directory is renamed into place."""
    for path in sorted(directory.rglob("*")):
        if path.is_symlink():
            continue
        if path.is_file():
            fsync_file(path)
        elif path.is_dir():
            fsync_dir(path)
    fsync_dir(directory)

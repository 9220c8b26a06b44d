"""cliplab's version, for `cliplab --version` and the server's /api/health. Standard library only."""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path


@lru_cache(maxsize=1)  # a metadata lookup scans sys.path (~0.4 ms), and /api/health answers every poll
def package_version() -> str:
    """The installed package's version, else the source tree's pyproject.toml version (a plain checkout),
    else "unknown"."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("cliplab")
    except PackageNotFoundError:
        pass
    try:
        pyproject = (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text()
    except OSError:
        return "unknown"
    project = pyproject.split("[project]", 1)[-1].split("\n[", 1)[0]  # only the [project] table's own keys
    found = re.search(r'^version\s*=\s*"([^"]+)"', project, re.MULTILINE)
    return found.group(1) if found else "unknown"

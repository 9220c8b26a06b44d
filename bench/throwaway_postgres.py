"""A throwaway PostgreSQL server for benchmarks (initdb + pg_ctl in a temporary folder), like the tests' fixture."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


def _pg_bin() -> Path | None:
    for candidate in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (candidate / "initdb").exists() and (candidate / "pg_ctl").exists():
            return candidate
    found = shutil.which("initdb")
    return Path(found).parent if found else None


@contextmanager
def throwaway_postgres(keep: Path | None = None) -> Iterator[str | None]:
    """Yields the URL of a fresh server (None where PostgreSQL is not installed); removes it on exit.
    With `keep`, the server's files live in that folder and stay there, and a later call starts them again
    (a benchmark's database is then built once)."""
    bindir = _pg_bin()
    if bindir is None:
        yield None
        return
    as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []  # postgres refuses root
    root = Path(tempfile.mkdtemp(prefix="cliplab-pg-bench-")) if keep is None else keep
    root.mkdir(parents=True, exist_ok=True)
    if as_user:
        shutil.chown(root, "postgres")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    run = lambda *a: subprocess.run([*as_user, *a], capture_output=True, text=True, timeout=300)  # noqa: E731
    try:
        if not (root / "data" / "PG_VERSION").exists():
            init = run(str(bindir / "initdb"), "-D", str(root / "data"), "-A", "trust", "-U", "cliplab")
            assert init.returncode == 0, init.stderr
        start = run(str(bindir / "pg_ctl"), "-D", str(root / "data"), "-l", str(root / "log"), "-w", "-o",
                    f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off", "start")
        assert start.returncode == 0, start.stdout + start.stderr
        yield f"postgresql://cliplab@127.0.0.1:{port}/postgres"
    finally:
        run(str(bindir / "pg_ctl"), "-D", str(root / "data"), "-m", "immediate" if keep is None else "fast", "stop")
        if keep is None:
            shutil.rmtree(root, ignore_errors=True)

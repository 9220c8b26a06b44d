"""A throwaway PostgreSQL server (initdb + pg_ctl in a temporary folder) for the benchmarks and the tests'
`postgres_url` fixture."""

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


def postgres_unavailable() -> str | None:
    """Why no throwaway server can start here (no binaries; root without a `postgres` user to run it), or None."""
    if _pg_bin() is None:
        return "PostgreSQL server binaries (initdb, pg_ctl) are not installed"
    if os.geteuid() != 0:
        return None
    if shutil.which("runuser") is None:
        return "running as root without runuser: cannot start PostgreSQL as another user"
    try:
        import pwd

        pwd.getpwnam("postgres")
    except KeyError:
        return "running as root and there is no 'postgres' user to run the server"
    return None


@contextmanager
def throwaway_postgres(keep: Path | None = None) -> Iterator[str | None]:
    """Yields the URL of a fresh server (None where PostgreSQL is not installed); removes it on exit.
    With `keep`, the server's files live in that folder and stay there, and a later call starts them again
    (a benchmark's database is then built once)."""
    if postgres_unavailable() is not None:
        yield None
        return
    bindir = _pg_bin()
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
        with socket.create_connection(("127.0.0.1", port), timeout=10):
            pass
        yield f"postgresql://cliplab@127.0.0.1:{port}/postgres"
    finally:
        run(str(bindir / "pg_ctl"), "-D", str(root / "data"), "-m", "immediate" if keep is None else "fast", "stop")
        if keep is None:
            shutil.rmtree(root, ignore_errors=True)

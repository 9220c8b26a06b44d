"""Live-server fixtures: real uvicorn on a free 127.0.0.1 port, real SQLite files in tmp_path.

- `live_server`: `python -m trainer serve` as a subprocess (what users run); can be killed and restarted.
  Its data dir links a demo dataset generated once per session. By default it starts no runs
  (CLIPLAB_MAX_CPU_RUNS=0); `live_server_factory(max_cpu_runs=1, ...)` gives one that launches trainers.
- `app_server`: the app in a thread of the test process, so a test can reach its services (the database
  writer, the launcher) directly.

Teardown ends trainer processes a test left behind: found by the test's own (unique) data dir in their
command line, ended by pid.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import httpx
import pytest

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(predicate: Any, timeout: float, interval: float = 0.2, what: str = "condition") -> Any:
    """Poll `predicate` until it returns something truthy; fail the test with `what` after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def processes_under(data_dir: Path) -> list[int]:
    """Pids whose command line mentions `data_dir` (trainers a test's server launched)."""
    needle = str(data_dir).encode()
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if needle in (entry / "cmdline").read_bytes():
                pids.append(int(entry.name))
        except OSError:
            continue
    return pids


def end_processes_under(data_dir: Path) -> None:
    for pid in processes_under(data_dir):
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


class LiveServer:
    """`cliplab serve` in a subprocess; `client` is an httpx.Client on its base URL."""

    def __init__(self, data_dir: Path, env: dict[str, str], args: list[str] | None = None, host: str = "127.0.0.1"):
        self.data_dir = data_dir
        self.port = free_port()
        self.host = host
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.env = {**os.environ, "CLIPLAB_DATA_DIR": str(data_dir), **env}
        for key in ("CLIPLAB_TOKEN", "DATABASE_URL"):
            if key not in env:
                self.env.pop(key, None)
        self.args = args or []
        self.proc: subprocess.Popen | None = None
        self.client = httpx.Client(base_url=self.base_url, timeout=30)
        self.log_path = data_dir / "server.log"

    def start(self, timeout: float = 60) -> "LiveServer":
        cmd = [sys.executable, "-m", "trainer", "serve", "--host", self.host, "--port", str(self.port),
               "--data-dir", str(self.data_dir), "--no-demo", *self.args]
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(cmd, cwd=REPO, env=self.env, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"cliplab serve exited with {self.proc.returncode}:\n{self.log()}")
            try:
                if httpx.get(f"{self.base_url}/api/health", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"cliplab serve did not answer within {timeout}s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def kill(self) -> None:
        """SIGKILL the server (no shutdown code runs), as a crash would."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def restart(self) -> "LiveServer":
        self.stop()
        return self.start()

    # conveniences
    def get(self, path: str, **kw: Any) -> httpx.Response:
        return self.client.get(path, **kw)

    def post(self, path: str, **kw: Any) -> httpx.Response:
        return self.client.post(path, **kw)

    def run(self, run_id: str) -> dict[str, Any]:
        r = self.client.get(f"/api/runs/{run_id}")
        r.raise_for_status()
        return r.json()

    def wait_status(self, run_id: str, statuses: tuple[str, ...], timeout: float = 120) -> dict[str, Any]:
        return wait_until(lambda: (lambda r: r if r["status"] in statuses else None)(self.run(run_id)),
                          timeout, 0.3, f"run {run_id} to reach {statuses}")


@pytest.fixture(scope="session")
def demo_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo dataset, generated once per test session."""
    from dataset.demo import ensure_demo_at

    return ensure_demo_at(tmp_path_factory.mktemp("demo-dataset") / "demo")


def make_data_dir(root: Path, demo: Path | None) -> Path:
    data_dir = root / "cliplab-data"
    (data_dir / "datasets").mkdir(parents=True)
    if demo is not None:
        (data_dir / "datasets" / "demo").symlink_to(demo, target_is_directory=True)
    return data_dir


@pytest.fixture
def live_server_factory(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Any]:
    """Call with env settings (max_cpu_runs=..., lost_after_s=...) to get a started LiveServer."""
    servers: list[LiveServer] = []

    def make(demo: bool = True, args: list[str] | None = None, host: str = "127.0.0.1", **settings: Any) -> LiveServer:
        demo_dir = request.getfixturevalue("demo_dataset") if demo else None
        root = tmp_path / f"server{len(servers)}"
        data_dir = make_data_dir(root, demo_dir)
        env = {f"CLIPLAB_{k.upper()}": str(v) for k, v in {"max_cpu_runs": 0, **settings}.items()}
        server = LiveServer(data_dir, env, args, host)
        servers.append(server)
        return server.start()

    yield make
    for server in servers:
        server.stop()
        server.client.close()
        end_processes_under(server.data_dir)


@pytest.fixture
def live_server(live_server_factory: Any) -> LiveServer:
    """A running `cliplab serve` with the demo dataset that keeps runs queued (no trainer processes)."""
    return live_server_factory()


class AppServer:
    """The app served by uvicorn in a thread of this process; `services` is its live Services object."""

    def __init__(self, settings: Any):
        import uvicorn

        from backend.app import create_app

        self.settings = settings
        self.app = create_app(settings)
        self.base_url = f"http://127.0.0.1:{settings.port}"
        self.server = uvicorn.Server(uvicorn.Config(self.app, host="127.0.0.1", port=settings.port,
                                                    log_level="warning", timeout_graceful_shutdown=2))
        self.thread = threading.Thread(target=self.server.run, name="test-uvicorn", daemon=True)
        self.client = httpx.Client(base_url=self.base_url, timeout=30)

    @property
    def services(self) -> Any:
        return self.app.state.services

    def start(self) -> "AppServer":
        self.thread.start()
        wait_until(lambda: self.server.started, 30, 0.05, "uvicorn to start")
        return self

    def stop(self) -> None:
        svc = getattr(self.app.state, "services", None)
        if svc is not None:
            svc.broadcaster.close()
        self.server.should_exit = True
        self.thread.join(20)
        self.client.close()


@contextmanager
def served_app(root: Path, demo: Path | None = None) -> Iterator[AppServer]:
    """The app served in-process on SQLite under `root` (the demo dataset when given; nothing launched) for the
    length of a `with`: a module's browser tests share one."""
    from backend.settings import Settings

    settings = Settings(data_dir=make_data_dir(root, demo), port=free_port(), max_cpu_runs=0, database_url=None,
                        token=None)
    server = AppServer(settings).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def app_server_factory(tmp_path: Path) -> Iterator[Any]:
    servers: list[AppServer] = []

    def make(**overrides: Any) -> AppServer:
        from backend.settings import Settings

        root = tmp_path / f"app{len(servers)}"
        data_dir = make_data_dir(root, None)
        settings = Settings(**{"data_dir": data_dir, "port": free_port(), "max_cpu_runs": 0, "database_url": None,
                               "token": None, **overrides})
        server = AppServer(settings)
        servers.append(server)
        return server.start()

    yield make
    for server in servers:
        server.stop()
        end_processes_under(server.settings.data_dir)


@pytest.fixture
def app_server(app_server_factory: Any) -> AppServer:
    """The app in-process on SQLite in tmp_path; runs stay queued unless a test launches them."""
    return app_server_factory()


def running_run_in_live_server(server: LiveServer, token: str, config: dict[str, Any] | None = None) -> str:
    """A run created through the API, then made `running` with a known run token, written to the server's
    SQLite file as the launcher does when it spawns a trainer (the server reads the row on every request)."""
    import sqlite3

    from backend.services.ingest import hash_token

    r = server.post("/api/runs", json={"name": "posted", "config": config or {"train": {"steps": 10}}})
    assert r.status_code == 201, r.text
    run_id = r.json()["id"]
    with sqlite3.connect(server.data_dir / "cliplab.db", timeout=30) as db:
        db.execute("UPDATE runs SET status = 'running', token_hash = ?, started_at = ? WHERE id = ?",
                   (hash_token(token), time.time(), run_id))
    return run_id


def point_count(events: list[dict[str, Any]]) -> int:
    """Series points a run's events carry (metric, eval and system values), as the server stores them."""
    return sum(1 for e in events if e["kind"] in ("metric", "eval", "system") for v in e["values"].values()
               if v is not None)

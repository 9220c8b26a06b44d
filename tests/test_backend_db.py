"""Database: Alembic migrations, SQLite settings, the single writer under concurrency, PostgreSQL."""

from __future__ import annotations

import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest
from backend_fixtures import free_port
from sqlalchemy import text
from sqlmodel import Session

from alembic.script import ScriptDirectory

from backend.db import DbWriter, alembic_config, make_engine, migrate
from backend.models import Run

REPO = Path(__file__).resolve().parent.parent


def _alembic(*args: str, env: dict[str, str], cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "alembic", "-c", str(REPO / "backend" / "alembic.ini"), *args],
                          cwd=cwd, env={**os.environ, **env}, capture_output=True, text=True, timeout=120)


def test_alembic_cli_creates_the_schema_and_it_matches_the_models(tmp_path):
    env = {"CLIPLAB_DATA_DIR": str(tmp_path)}
    env.pop("DATABASE_URL", None)
    up = _alembic("upgrade", "head", env=env, cwd=tmp_path)
    assert up.returncode == 0, up.stderr
    with sqlite3.connect(tmp_path / "cliplab.db") as db:
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        version = db.execute("SELECT version_num FROM alembic_version").fetchone()[0]
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert {"runs", "metric_points", "events", "checkpoints"} <= tables and version == head
    check = _alembic("check", env=env, cwd=tmp_path)  # fails if the models drifted from the migrations
    assert check.returncode == 0, check.stdout + check.stderr
    down = _alembic("downgrade", "base", env=env, cwd=tmp_path)
    assert down.returncode == 0, down.stderr


def test_sqlite_runs_in_wal_mode_with_foreign_keys_that_cascade(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path / 'c.db'}")
    migrate(engine)
    with engine.connect() as conn:
        assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert conn.execute(text("PRAGMA foreign_keys")).scalar() == 1
        assert conn.execute(text("PRAGMA busy_timeout")).scalar() >= 10_000
    with Session(engine) as s:
        s.add(Run(id="r-1", name="a", created_at=1.0))
        s.commit()
        s.execute(text("INSERT INTO metric_points VALUES ('r-1', 'loss', 1, 0, 1.0, 2.0)"))
        s.commit()
        s.delete(s.get(Run, "r-1"))
        s.commit()
        assert s.execute(text("SELECT COUNT(*) FROM metric_points")).scalar() == 0
    engine.dispose()


def test_many_threads_writing_through_the_writer_never_see_database_locked(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path / 'c.db'}")
    migrate(engine)
    writer = DbWriter(engine)
    errors: list[BaseException] = []

    def insert_runs(worker: int) -> None:
        try:
            for i in range(40):
                def job(session: Session, i: int = i) -> None:
                    session.add(Run(id=f"r-{worker}-{i}", name="x", created_at=time.time()))
                writer.call(job)
                with Session(engine) as s:  # reads run concurrently on their own connections
                    s.execute(text("SELECT COUNT(*) FROM runs")).scalar()
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=insert_runs, args=(w,)) for w in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    writer.close()
    assert errors == []
    with Session(engine) as s:
        assert s.execute(text("SELECT COUNT(*) FROM runs")).scalar() == 320
    engine.dispose()


def test_writer_reraises_a_jobs_error_and_rolls_it_back(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path / 'c.db'}")
    migrate(engine)
    writer = DbWriter(engine)

    def bad(session: Session) -> None:
        session.add(Run(id="r-x", name="x", created_at=1.0))
        session.flush()
        raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        writer.call(bad)
    assert writer.call(lambda s: s.get(Run, "r-x")) is None
    writer.close()
    engine.dispose()


# ---- PostgreSQL ----------------------------------------------------------------------------------------


def _pg_bin() -> Path | None:
    for candidate in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (candidate / "initdb").exists() and (candidate / "pg_ctl").exists():
            return candidate
    found = shutil.which("initdb")
    return Path(found).parent if found else None


@pytest.fixture
def postgres_url():
    """A throwaway PostgreSQL server in tmp_path (initdb + pg_ctl), skipped where PostgreSQL is not installed."""
    bindir = _pg_bin()
    if bindir is None:
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) are not installed")
    as_user: list[str] = []
    if os.geteuid() == 0:  # postgres refuses to run as root
        if shutil.which("runuser") is None:
            pytest.skip("running as root without runuser: cannot start PostgreSQL as another user")
        try:
            import pwd

            pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no 'postgres' user to run the server")
        as_user = ["runuser", "-u", "postgres", "--"]
    # Not under tmp_path: pytest's folders are private to our user, and the server runs as `postgres`.
    root = Path(tempfile.mkdtemp(prefix="cliplab-pg-"))
    if as_user:
        shutil.chown(root, "postgres")
    port = free_port()
    run = lambda *a: subprocess.run([*as_user, *a], capture_output=True, text=True, timeout=120)  # noqa: E731
    init = run(str(bindir / "initdb"), "-D", str(root / "data"), "-A", "trust", "-U", "cliplab")
    assert init.returncode == 0, init.stderr
    start = run(str(bindir / "pg_ctl"), "-D", str(root / "data"), "-l", str(root / "log"), "-w", "-o",
                f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off", "start")
    assert start.returncode == 0, start.stdout + start.stderr
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10):
            pass
        yield f"postgresql://cliplab@127.0.0.1:{port}/postgres"
    finally:
        run(str(bindir / "pg_ctl"), "-D", str(root / "data"), "-m", "immediate", "stop")
        shutil.rmtree(root, ignore_errors=True)


def test_postgresql_stores_runs_events_and_series_like_sqlite(postgres_url, app_server_factory):
    from test_backend_ingest import _metric, _post, _running_with_token

    server = app_server_factory(database_url=postgres_url)
    assert server.services.engine.dialect.name == "postgresql"
    bad = server.client.post("/api/runs", json={"config": {"optim": {"lr": 0}}})
    assert bad.status_code == 422 and bad.json()["detail"][0]["field"] == "optim.lr"
    run_id, token = _running_with_token(server)
    events = [_metric(i, i, loss=float(i % 50), lr=0.1) for i in range(3000)]
    for i in range(0, 3000, 1000):
        assert _post(server, run_id, token, events[i:i + 1000]).json()["accepted"] == 1000
    assert _post(server, run_id, token, events[:10]).json() == {"accepted": 0, "duplicates": 10}
    got = server.client.get(f"/api/runs/{run_id}/series", params={"names": "loss", "buckets": 60}).json()
    loss = got["series"]["loss"]
    assert got["downsampled"] and len(loss["step"]) == 60
    assert loss["min"][0] == 0.0 and loss["max"][0] == 49.0 and loss["step"][-1] == 2999
    tagged = server.client.post("/api/runs", json={"config": {}, "tags": ["pg"]}).json()["id"]
    listed = server.client.get("/api/runs", params={"tag": "pg"}).json()
    assert [r["id"] for r in listed["items"]] == [tagged]
    assert server.client.post(f"/api/runs/{tagged}/stop").json()["status"] == "stopped"
    assert server.client.delete(f"/api/runs/{tagged}").status_code == 204
    assert server.client.get(f"/api/runs/{tagged}").status_code == 404

"""Database: Alembic migrations, SQLite settings, the single writer under concurrency, PostgreSQL."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from alembic.script import ScriptDirectory
from sqlalchemy import text
from sqlmodel import Session

from backend.db import DbWriter, alembic_config, make_engine, migrate, migration_pending
from backend.models import Run

REPO = Path(__file__).resolve().parents[2]


def _alembic(*args: str, env: dict[str, str], cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "alembic", "-c", str(REPO / "backend" / "alembic.ini"), *args],
                          cwd=cwd, env={**os.environ, **env}, capture_output=True, text=True, timeout=120)


@pytest.mark.slow  # alembic subprocesses
def test_alembic_cli_creates_the_schema_and_it_matches_the_models(tmp_path):
    env = {"CLIPLAB_DATA_DIR": str(tmp_path)}
    env.pop("DATABASE_URL", None)
    up = _alembic("upgrade", "head", env=env, cwd=tmp_path)
    assert up.returncode == 0, up.stderr
    with sqlite3.connect(tmp_path / "cliplab.db") as db:
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        version = db.execute("SELECT version_num FROM alembic_version").fetchone()[0]
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()  # each schema change adds one
    assert {"runs", "metric_points", "metric_rollups", "events", "checkpoints"} <= tables and version == head
    check = _alembic("check", env=env, cwd=tmp_path)  # fails if the models drifted from the migrations
    assert check.returncode == 0, check.stdout + check.stderr
    down = _alembic("downgrade", "base", env=env, cwd=tmp_path)
    assert down.returncode == 0, down.stderr


def test_sqlite_runs_in_wal_mode_with_foreign_keys_that_cascade(engine):
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


def test_many_threads_writing_through_the_writer_never_see_database_locked(engine):
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


def test_writer_reraises_a_jobs_error_and_rolls_it_back(engine):
    writer = DbWriter(engine)

    def bad(session: Session) -> None:
        session.add(Run(id="r-x", name="x", created_at=1.0))
        session.flush()
        raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        writer.call(bad)
    assert writer.call(lambda s: s.get(Run, "r-x")) is None
    writer.close()



def test_grouped_jobs_queued_together_share_one_commit_and_a_failing_one_fails_alone(engine):
    writer = DbWriter(engine)
    release = threading.Event()
    writer.submit(lambda session: release.wait(10))  # holds the writer while the group queues up
    sessions: list[Session] = []  # kept alive, so ids stay distinct

    def add_run(session: Session, i: int) -> str:
        sessions.append(session)
        if i == 5:
            raise ValueError("run 5 is refused")
        session.add(Run(id=f"r-{i}", name="x", created_at=1.0))
        session.flush()
        return f"r-{i}"

    futures = [writer.submit(add_run, i, group=True) for i in range(10)]
    ungrouped = writer.submit(add_run, 10)  # not groupable: runs after the group, alone
    release.set()
    assert [f.result() for i, f in enumerate(futures) if i != 5] == [f"r-{i}" for i in range(10) if i != 5]
    with pytest.raises(ValueError, match="run 5 is refused"):
        futures[5].result()
    assert ungrouped.result() == "r-10"
    # The ten ran together first (rolled back by run 5), then each alone, then the ungrouped one.
    ids = [id(s) for s in sessions]
    assert len(set(ids[:6])) == 1 and len(set(ids[6:])) == len(ids[6:]) == 11
    writer.close()
    with Session(engine) as s:
        stored = set(s.execute(text("SELECT id FROM runs")).scalars())
    assert stored == {f"r-{i}" for i in range(11) if i != 5}


# ---- PostgreSQL ----------------------------------------------------------------------------------------


@pytest.mark.slow  # starts PostgreSQL
def test_postgresql_stores_runs_events_and_series_like_sqlite(postgres_url, app_server_factory):
    from tests.backend.test_ingest import _metric, _post, _running_with_token

    server = app_server_factory(database_url=postgres_url)
    assert server.services.engine.dialect.name == "postgresql"
    bad = server.client.post("/api/runs", json={"config": {"optim": {"lr": 0}}})
    assert bad.status_code == 422 and bad.json()["detail"][0]["field"] == "optim.lr"
    run_id, token = _running_with_token(server)
    events = [_metric(i, i, loss=float(i % 50), lr=0.1) for i in range(3000)]
    for i in range(0, 3000, 1000):
        assert _post(server, run_id, token, events[i:i + 1000]).json()["accepted"] == 1000
    assert _post(server, run_id, token, events[:10]).json() == {"accepted": 0, "duplicates": 10, "uncharted": []}
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


def test_postgresql_sessions_run_without_jit_even_after_a_rolled_back_transaction(postgres_engine):
    # The server's default is JIT on, so the engine's own setting is what turns it off.
    with postgres_engine.connect() as conn:
        assert conn.execute(text("SELECT reset_val FROM pg_settings WHERE name = 'jit'")).scalar() == "on"
        assert conn.execute(text("SHOW jit")).scalar() == "off"
        conn.rollback()  # the pool also rolls back every connection it takes back
    for _ in range(2):  # the same pooled connection again, then a fresh one
        with postgres_engine.connect() as conn:
            assert conn.execute(text("SHOW jit")).scalar() == "off"
        postgres_engine.pool.dispose()


def test_migration_heads_read_from_the_files_are_alembics_heads():
    from alembic.script import ScriptDirectory

    from backend.db import alembic_config, migration_heads

    assert migration_heads() == set(ScriptDirectory.from_config(alembic_config()).get_heads())


def test_serving_an_up_to_date_database_imports_neither_alembic_nor_plotly(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path / 'c.db'}")
    assert migration_pending(engine)
    migrate(engine)
    assert not migration_pending(engine)
    engine.dispose()
    code = ("import sys\n"
            "from pathlib import Path\n"
            "from backend.app import create_app\n"
            "from backend.services.container import build_services\n"
            "from backend.settings import Settings\n"
            f"settings = Settings(data_dir=Path({str(tmp_path)!r}), database_url={'sqlite:///' + str(tmp_path / 'c.db')!r})\n"
            "app = create_app(settings)\n"
            "build_services(settings).close()\n"
            "loaded = [m for m in ('alembic', 'plotly', 'torch', 'mako') if m in sys.modules]\n"
            "assert not loaded, loaded\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr


def test_upgrading_a_database_of_the_first_schema_and_back_keeps_every_run_event_point_and_checkpoint(tmp_path):
    """A schema change must never rebuild `runs` on SQLite: dropping the old table cascades (foreign keys on)."""
    from alembic import command

    engine = make_engine(f"sqlite:///{tmp_path / 'old.db'}")  # the server's engine: foreign keys enforced
    cfg = alembic_config()
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0001")
        insert_run_of_the_first_schema(conn, "r1")
        conn.execute(text("INSERT INTO events (run_id, seq, kind, time, step, payload) VALUES "
                          "('r1', :seq, 'metric', 0, :seq, '{}')"), [{"seq": s} for s in range(3)])
        conn.execute(text("INSERT INTO metric_points (run_id, name, step, seq, time, value) VALUES "
                          "('r1', 'loss', :seq, :seq, 0, 1.5)"), [{"seq": s} for s in range(3)])
        conn.execute(text("INSERT INTO checkpoints (run_id, name, step, kind, path, time) VALUES "
                          "('r1', 'step_000003', 3, 'latest', 'checkpoints/step_000003', 0)"))
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")
    with engine.connect() as conn:
        counts = {t: conn.execute(text(f"SELECT COUNT(*) FROM {t}")).scalar_one()
                  for t in ("runs", "events", "metric_points", "checkpoints")}
        name, status = conn.execute(text("SELECT name, status FROM runs")).one()
    assert counts == {"runs": 1, "events": 3, "metric_points": 3, "checkpoints": 1}
    assert (name, status) == ("old", "finished")
    with engine.begin() as conn:  # and back down: a downgrade must not cascade either
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "0001")
    with engine.connect() as conn:
        assert {t: conn.execute(text(f"SELECT COUNT(*) FROM {t}")).scalar_one() for t in counts} == counts


def insert_run_of_the_first_schema(conn: Any, run_id: str) -> None:
    """A finished run named 'old', written as revision 0001 stored it (for migration tests)."""
    conn.execute(text("INSERT INTO runs (id, name, status, tags, config, gpus, nproc, devices, step, latest, best, "
                      "metric_names, model, dataset, created_at, run_dir, last_seq, resume, stop_requested) "
                      "VALUES (:id, 'old', 'finished', '[]', '{}', 0, 1, '[]', 3, '{}', '{}', '[]', 'tiny-vit', "
                      "'demo', 0, '/runs/' || :id, 2, 0, 0)"), {"id": run_id})

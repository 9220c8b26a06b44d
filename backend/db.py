"""The database: engine (SQLite tuned for a server, or PostgreSQL), migrations, reads and the single writer.

Every write goes through `DbWriter`, one thread committing one job at a time, so concurrent runs posting
events never contend for SQLite's write lock ("database is locked") and each job sees a consistent state
(the duplicate check in ingestion relies on it). Reads use their own pooled connections; WAL lets them
proceed while the writer commits.
"""

from __future__ import annotations

import logging
import queue
import re
import threading
from concurrent.futures import Future
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, TypeVar

from sqlalchemy import event, text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError
from sqlmodel import Session, create_engine

if TYPE_CHECKING:
    from alembic.config import Config as AlembicConfig

log = logging.getLogger("cliplab.db")
T = TypeVar("T")
BACKEND_DIR = Path(__file__).resolve().parent


def make_engine(url: str) -> Engine:
    """An engine for `url`; SQLite files get WAL, a busy timeout and enforced foreign keys; PostgreSQL
    sessions run without JIT."""
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url[len("postgresql://"):]  # psycopg 3 is the driver we install
    engine = create_engine(url, pool_pre_ping=True, pool_size=8, max_overflow=8)
    if engine.dialect.name == "postgresql":
        event.listen(engine, "connect", _postgres_settings)
    return engine


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.execute("PRAGMA foreign_keys=ON")
    # With WAL, NORMAL cannot corrupt the file; a power cut may lose the last commits, which the
    # events.jsonl backfill restores.
    cur.execute("PRAGMA synchronous=NORMAL")
    # Checkpoint the WAL into the database every ~40 MB instead of every 4 MB: pages that every batch
    # rewrites (the B-tree pages where each series grows) are copied once per checkpoint, not ten times,
    # which took 40% off the commits of a busy ingest.
    cur.execute("PRAGMA wal_autocheckpoint=10000")
    cur.close()
    # SQLite's own lower() folds ASCII only, so a search for "étude" missed "Étude"; PostgreSQL's folds all.
    dbapi_conn.create_function("lower", 1, _lower, deterministic=True)


def _lower(value: Any) -> Any:
    return value.lower() if isinstance(value, str) else value


def _postgres_settings(dbapi_conn: Any, _record: Any) -> None:
    # No JIT: cliplab's statements are short index-driven reads and writes, but the planner's row estimates
    # for the series query's LATERAL seeks put its cost past jit_above_cost, and compiling it took 15-20 ms
    # of a 25-35 ms chart query: on every first call, and on every call of the generic plan psycopg prepares
    # after five (whole-range p95 47 -> 35 ms). Read from pg_settings, so servers before JIT (< 11) skip it.
    cur = dbapi_conn.cursor()
    cur.execute("SELECT set_config('jit', 'off', false) FROM pg_settings WHERE name = 'jit'")
    cur.close()
    dbapi_conn.commit()  # a setting made in a transaction that the pool later rolls back would be undone


def alembic_config(url: str | None = None) -> "AlembicConfig":
    from alembic.config import Config as AlembicConfig

    cfg = AlembicConfig(str(BACKEND_DIR / "alembic.ini"))
    cfg.set_main_option("script_location", str(BACKEND_DIR / "migrations"))
    if url:
        cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


_REVISION = re.compile(r"^revision\s*=\s*['\"]([^'\"]+)['\"]", re.M)
_DOWN_REVISION = re.compile(r"^down_revision\s*=\s*(.+)$", re.M)


def migration_heads() -> set[str]:
    """The newest revisions in migrations/versions, read from the files without importing alembic (which
    costs the server ~0.3 s and ~10 MB at every start when nothing is pending)."""
    revisions, parents = set(), set()
    for path in (BACKEND_DIR / "migrations" / "versions").glob("*.py"):
        source = path.read_text(encoding="utf-8")
        if found := _REVISION.search(source):
            revisions.add(found.group(1))
        if down := _DOWN_REVISION.search(source):
            parents.update(re.findall(r"['\"]([^'\"]+)['\"]", down.group(1)))
    return revisions - parents


def migration_pending(engine: Engine) -> bool:
    """True unless the database is at exactly the newest revisions."""
    try:
        with engine.connect() as conn:
            current = set(conn.execute(text("SELECT version_num FROM alembic_version")).scalars())
    except DBAPIError:  # no alembic_version table: an empty database
        return True
    return current != migration_heads()


def migrate(engine: Engine) -> None:
    """Bring the schema to the newest migration (creates it on an empty database); alembic is imported
    only when a migration is pending."""
    if not migration_pending(engine):
        return
    from alembic import command

    cfg = alembic_config()
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")


def read(engine: Engine, fn: Callable[..., T], *args: Any) -> T:
    """Run `fn(session, *args)` on a short-lived read session."""
    with Session(engine, expire_on_commit=False) as session:
        return fn(session, *args)


class DbWriter:
    """Executes write jobs `fn(session, *args)` one at a time in a dedicated thread, committing each.

    Jobs submitted with `group=True` (idempotent, database-only work such as ingesting a batch) that are
    queued together share one transaction and one commit (group commit: 16 runs posting at once pay for a
    few commits, not 16). If any of them fails, the group is rolled back and its jobs re-run one by one,
    so a bad job never takes the others down with it.
    """

    MAX_GROUP = 32

    def __init__(self, engine: Engine):
        self.engine = engine
        self._jobs: queue.Queue[tuple[Future, Callable, tuple, bool] | None] = queue.Queue()
        self._held: tuple[Future, Callable, tuple, bool] | None = None  # taken while grouping, runs next
        self._thread = threading.Thread(target=self._loop, name="cliplab-db-writer", daemon=True)
        self._thread.start()

    def submit(self, fn: Callable[..., T], *args: Any, group: bool = False) -> "Future[T]":
        future: Future = Future()
        self._jobs.put((future, fn, args, group))
        return future

    def call(self, fn: Callable[..., T], *args: Any, group: bool = False) -> T:
        """Run a write job and wait for its result (re-raising its exception)."""
        if threading.current_thread() is self._thread:
            raise RuntimeError("DbWriter.call from inside a write job would deadlock; pass the session instead")
        return self.submit(fn, *args, group=group).result()

    def _loop(self) -> None:
        while True:
            job = self._held if self._held is not None else self._jobs.get()
            self._held = None
            if job is None:
                return
            jobs = [job] + (self._more_groupable() if job[3] else [])
            jobs = [j for j in jobs if j[0].set_running_or_notify_cancel()]
            if len(jobs) > 1 and self._run_together(jobs):
                continue
            for one in jobs:
                self._run_together([one], alone=True)

    def _more_groupable(self) -> list[tuple[Future, Callable, tuple, bool]]:
        more = []
        while len(more) < self.MAX_GROUP - 1:
            try:
                job = self._jobs.get_nowait()
            except queue.Empty:
                break
            if job is None:
                self._jobs.put(None)  # stop after this group
                break
            if not job[3]:
                self._held = job  # runs next, in its own transaction
                break
            more.append(job)
        return more

    def _run_together(self, jobs: list[tuple[Future, Callable, tuple, bool]], alone: bool = False) -> bool:
        """Run `jobs` in one transaction; True when it committed (results set). A lone job's error goes to
        its caller; a group's error rolls the group back and returns False (the caller re-runs them alone)."""
        try:
            with Session(self.engine, expire_on_commit=False) as session:
                results = [fn(session, *args) for _, fn, args, _ in jobs]
                session.commit()
        except BaseException as exc:  # noqa: BLE001 - handed to the caller through the future
            if not alone:
                return False
            jobs[0][0].set_exception(exc)
            return True
        for (future, *_), result in zip(jobs, results):
            future.set_result(result)
        return True

    def close(self, timeout_s: float = 10.0) -> None:
        self._jobs.put(None)
        self._thread.join(timeout_s)

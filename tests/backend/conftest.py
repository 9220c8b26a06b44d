"""Database fixtures of the backend tests: a migrated SQLite file, and a throwaway PostgreSQL server."""

from __future__ import annotations

from pathlib import Path

import pytest

from backend.db import make_engine, migrate
from bench.throwaway_postgres import postgres_unavailable, throwaway_postgres


@pytest.fixture
def engine(tmp_path: Path):
    """The server's engine on a migrated SQLite file."""
    engine = make_engine(f"sqlite:///{tmp_path / 'cliplab.db'}")
    migrate(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def postgres_url():
    """A throwaway PostgreSQL server (initdb + pg_ctl), skipped where PostgreSQL cannot start here."""
    reason = postgres_unavailable()
    if reason is not None:
        pytest.skip(reason)
    with throwaway_postgres() as url:
        yield url


@pytest.fixture
def postgres_engine(postgres_url: str):
    """The server's engine on a migrated throwaway PostgreSQL database."""
    engine = make_engine(postgres_url)
    migrate(engine)
    yield engine
    engine.dispose()

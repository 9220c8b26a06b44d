"""Alembic environment: the connection `cliplab serve` hands over, or the configured database URL."""

from __future__ import annotations

from logging.config import fileConfig

from alembic import context
from sqlmodel import SQLModel

import backend.models  # noqa: F401 - registers the tables on SQLModel.metadata
from backend.db import make_engine
from backend.settings import Settings

config = context.config
target_metadata = SQLModel.metadata


def _run(connection) -> None:
    # Batch mode lets later migrations alter SQLite tables (which lack most ALTER TABLE forms).
    context.configure(connection=connection, target_metadata=target_metadata,
                      render_as_batch=connection.dialect.name == "sqlite")
    with context.begin_transaction():
        context.run_migrations()


connection = config.attributes.get("connection")
if connection is not None:
    _run(connection)
else:
    # Command line: configure logging from alembic.ini and find the database like the server does.
    if config.config_file_name:
        fileConfig(config.config_file_name)
    url = config.get_main_option("sqlalchemy.url") or Settings().db_url
    engine = make_engine(url)
    with engine.begin() as conn:
        _run(conn)
    engine.dispose()

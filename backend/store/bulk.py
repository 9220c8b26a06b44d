"""Bulk inserts through the driver's executemany, for the ingest hot path."""

from __future__ import annotations

from sqlalchemy.engine import Connection
from sqlmodel import Session


def placeholders(conn: Connection, n: int) -> str:
    """`?, ?, ...` or `%s, %s, ...`: n parameter marks in the driver's own style."""
    mark = "?" if conn.dialect.paramstyle == "qmark" else "%s"
    return ", ".join([mark] * n)


def insert_new(session: Session, table: str, columns: tuple[str, ...], rows: list[tuple]) -> None:
    """INSERT ... ON CONFLICT DO NOTHING (SQLite >= 3.24 and PostgreSQL) through the driver's executemany.

    On this hot path SQLAlchemy's per-row parameter processing costs more than the insert itself.
    """
    if not rows:
        return
    conn = session.connection()
    conn.exec_driver_sql(
        f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({placeholders(conn, len(columns))}) "
        "ON CONFLICT DO NOTHING", rows)

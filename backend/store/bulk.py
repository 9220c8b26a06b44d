"""Bulk inserts for the ingest hot path: on SQLite many rows per statement, not the driver's executemany.

Python's sqlite3 releases the GIL around every row's sqlite3_step and must win it back after each one. In a
server whose other threads parse and validate requests, each win-back can wait the interpreter's switch
interval (5 ms): an executemany of a 1,600-point batch took 7 s next to one busy thread, 4 ms alone. One
INSERT carrying hundreds of rows steps once, so it pays that wait once (and is faster alone too: ~2.8 ms).
Row counts are split into powers of two, so each table needs a handful of statement texts, which sqlite3's
statement cache keeps prepared. psycopg pipelines an executemany in a few round trips, so PostgreSQL keeps it.
"""

from __future__ import annotations

from itertools import chain

from sqlalchemy.engine import Connection
from sqlmodel import Session

MAX_PARAMETERS = 32_766  # SQLite's bound-parameter limit since 3.32
MAX_ROWS = 1024  # rows per statement; more only lengthens a statement text that is parsed once per size


def placeholders(conn: Connection, n: int) -> str:
    """`?, ?, ...` or `%s, %s, ...`: n parameter marks in the driver's own style."""
    mark = "?" if conn.dialect.paramstyle == "qmark" else "%s"
    return ", ".join([mark] * n)


def insert_new(session: Session, table: str, columns: tuple[str, ...], rows: list[tuple]) -> None:
    """INSERT ... ON CONFLICT DO NOTHING (SQLite >= 3.24 and PostgreSQL): rows stored already stay as they are."""
    insert_rows(session, table, columns, rows, "ON CONFLICT DO NOTHING")


def insert_rows(session: Session, table: str, columns: tuple[str, ...], rows: list[tuple], on_conflict: str) -> None:
    """INSERT `rows` into `table` with the `on_conflict` clause: on SQLite in statements of up to MAX_ROWS rows,
    on PostgreSQL through psycopg's executemany (pipelined and prepared: 1.7x the ingest rate of many-row
    statements there). A DO UPDATE clause must not meet one key twice in one statement."""
    if not rows:
        return
    conn = session.connection()
    insert = f"INSERT INTO {table} ({', '.join(columns)}) VALUES "
    row_marks = f"({placeholders(conn, len(columns))})"
    if conn.dialect.name != "sqlite":
        conn.exec_driver_sql(f"{insert}{row_marks} {on_conflict}", rows)
        return
    largest = max(1, min(MAX_ROWS, MAX_PARAMETERS // len(columns)))
    start = 0
    for size in chunk_sizes(len(rows), largest):
        values = tuple(chain.from_iterable(rows[start:start + size]))
        start += size
        conn.exec_driver_sql(f"{insert}{', '.join([row_marks] * size)} {on_conflict}", values)


def chunk_sizes(n: int, largest: int) -> list[int]:
    """n split into powers of two of at most `largest` each, biggest first (1600, 1024 -> [1024, 512, 64])."""
    cap = 1 << (largest.bit_length() - 1)  # the largest power of two <= largest
    sizes = []
    while n:
        size = min(cap, 1 << (n.bit_length() - 1))
        sizes.append(size)
        n -= size
    return sizes

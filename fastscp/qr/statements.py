"""Parsed SQL statements, kept for the next query of the same shape.

DuckDB parses the text of every ``execute`` again (its PEG parser), and for
the small statements of a C-FIND that is a visible share: on the network
benchmark's index the date query's main SELECT took 2.0 ms from its text and
1.7 ms from a statement parsed once (docs/query-retrieve.md,
"Performance"). ``execute(conn, sql, params)`` runs ``sql`` from the
statement parsed the first time this thread saw that text
(``conn.extract_statements``); DuckDB copies a parsed statement on each
execution, so it is never changed by use. The parameters stay parameters:
only the SQL text, made of column names, fixed operators and placeholders
(``matching.build_sql``), is the key.

Each thread keeps its own statements (the C-FIND workers are a few), at most
``MAX_KEPT`` texts: past that the oldest is dropped.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

import duckdb

MAX_KEPT = 512  # texts per thread; a query's shape (terms, IN-list lengths) makes its text

_local = threading.local()


def execute(conn: duckdb.DuckDBPyConnection, sql: str,
            params: Sequence[object] | None = None) -> duckdb.DuckDBPyConnection:
    """``conn.execute(sql, params)``, from a parsed statement kept per thread."""
    kept: dict[str, duckdb.Statement] | None = getattr(_local, "kept", None)
    if kept is None:
        kept = _local.kept = {}
    statement = kept.get(sql)
    if statement is None:
        parsed = conn.extract_statements(sql)
        if len(parsed) != 1:
            raise ValueError(f"one SQL statement expected, got {len(parsed)}")
        statement = parsed[0]
        if len(kept) >= MAX_KEPT:
            del kept[next(iter(kept))]
        kept[sql] = statement
    return conn.execute(statement, params)

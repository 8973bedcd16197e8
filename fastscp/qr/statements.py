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

Each thread keeps its own statements (the C-FIND workers are a few), the
most recently used first to stay. A parsed statement takes memory in
proportion to its text (measured: 5 KiB for a 279-character text, 29 KiB
for 651 characters with 128 placeholders, 120 KiB for 2,067 with 600), so
the bound is on text: a text longer than ``MAX_TEXT`` characters (a long
UID list) is parsed and run but not kept, and the kept texts of a thread
add up to at most ``BUDGET`` characters (about 2 MiB of parsed statements).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

import duckdb

MAX_TEXT = 2048  # characters: a longer text is not kept
BUDGET = 32768  # characters of kept text per thread

_local = threading.local()


class _Kept:
    """One thread's statements by text, least recently used first."""

    def __init__(self) -> None:
        self.statements: dict[str, duckdb.Statement] = {}
        self.chars = 0


def execute(conn: duckdb.DuckDBPyConnection, sql: str,
            params: Sequence[object] | None = None) -> duckdb.DuckDBPyConnection:
    """``conn.execute(sql, params)``, from a parsed statement kept per thread."""
    kept: _Kept | None = getattr(_local, "kept", None)
    if kept is None:
        kept = _local.kept = _Kept()
    statements = kept.statements
    statement = statements.pop(sql, None)
    if statement is None:
        parsed = conn.extract_statements(sql)
        if len(parsed) != 1:
            raise ValueError(f"one SQL statement expected, got {len(parsed)}")
        statement = parsed[0]
        if len(sql) > MAX_TEXT:
            return conn.execute(statement, params)
        kept.chars += len(sql)
        while kept.chars > BUDGET:
            oldest = next(iter(statements))
            kept.chars -= len(oldest)
            del statements[oldest]
    statements[sql] = statement  # last: the most recently used
    return conn.execute(statement, params)

"""Read-only SQL over the catalog, and the output formats of ``fastscp query``.

``run_readonly_query(conn, sql)`` is what the CLI and the server's status
endpoint both call. Three locks, each enough for the common case, together
enough for the odd ones:

1. DuckDB's own parser (``duckdb.extract_statements``) must find exactly one
   statement of type SELECT (which covers WITH, DESCRIBE, SHOW, SUMMARIZE,
   FROM-first and VALUES) or EXPLAIN; an EXPLAIN's inner statement is parsed
   again, because ``EXPLAIN ANALYZE UPDATE ...`` runs the update.
2. The physical plan (``EXPLAIN (FORMAT json)``, which does not execute) must
   contain no writing operator: DuckDB parses ``WITH x AS (UPDATE ...
   RETURNING *) SELECT ...`` as a SELECT and runs the update.
3. The statement runs inside a transaction that is always rolled back (and
   the CLI opens the database file read-only).

What a statement can reach outside the index is not decided here: every
connection to the index is locked down by DuckDB's own settings
(``schema.lock_down``: no external access but the export directory, no
extension loading, configuration locked), so ``read_text('/etc/passwd')``,
``glob``, ``ATTACH``, ``enable_logging``, ``SET`` and ``INSTALL`` fail in
DuckDB itself, whatever their name.

Errors name the user's statement, never the ``EXPLAIN (FORMAT json)`` wrapper
used for lock 2.
"""

from __future__ import annotations

import csv
import datetime as _dt
import decimal
import io
import re
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

import duckdb
import orjson

ALLOWED_TEXT = "SELECT, WITH, DESCRIBE, SHOW, EXPLAIN"
_EXPLAIN_PREFIX = re.compile(r"^\s*EXPLAIN\s+(?:ANALYZE\s+)?(?:\([^)]*\)\s*)?", re.IGNORECASE)
# Physical operators that change something. Names as DuckDB prints them in plans.
_WRITING_OPERATORS = re.compile(
    r"^(?:BATCH_)?(?:INSERT|UPDATE|DELETE|MERGE|CREATE|DROP|ALTER|COPY|EXPORT|ATTACH|DETACH|"
    r"VACUUM|PRAGMA|LOAD|SET|RESET|TRANSACTION|CHECKPOINT)",
)


class ReadOnlyQueryError(ValueError):
    """The SQL is not a single read-only statement."""


def _refuse(what: str) -> ReadOnlyQueryError:
    return ReadOnlyQueryError(
        f"refused: {what}. The index is read-only here: only one {ALLOWED_TEXT} "
        f"statement is allowed"
    )


def _single_statement(sql: str) -> Any:
    statements = duckdb.extract_statements(sql)
    if not statements:
        raise _refuse("no statement given")
    if len(statements) > 1:
        kinds = ", ".join(s.type.name for s in statements)
        raise _refuse(f"{len(statements)} statements given ({kinds})")
    return statements[0]


def _walk_plan(nodes: Any) -> list[str]:
    names: list[str] = []
    stack = list(nodes) if isinstance(nodes, list) else [nodes]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            name = node.get("name")
            if isinstance(name, str):
                names.append(name)
            stack.extend(node.get("children", []))
    return names


_PLAN_PREFIX = "EXPLAIN (FORMAT json) "


def _without_wrapper(exc: duckdb.Error) -> duckdb.Error:
    """The same error about the user's statement: DuckDB quotes the text it
    was given (``LINE 1: EXPLAIN (FORMAT json) SELECT ...`` and a caret under
    it), which here is the plan check's wrapper."""
    lines = str(exc).split("\n")
    out: list[str] = []
    shift = 0
    for line in lines:
        m = re.match(r"^(LINE \d+: )", line)
        if m and line[m.end():].startswith(_PLAN_PREFIX):
            line = m.group(1) + line[m.end() + len(_PLAN_PREFIX):]
            shift = len(_PLAN_PREFIX)
        elif shift:  # the caret line under it
            if set(line.strip()) == {"^"} and line[:shift].isspace():
                line = line[shift:]
            shift = 0
        out.append(line.replace(_PLAN_PREFIX, ""))
    try:
        return type(exc)("\n".join(out))
    except TypeError:
        return exc


def check_readonly(conn: duckdb.DuckDBPyConnection, sql: str) -> str:
    """Return the statement text if ``sql`` is one read-only statement, else
    raise ReadOnlyQueryError naming what was found."""
    statement = _single_statement(sql)
    kind = statement.type
    text: str = statement.query
    inner = text
    if kind == duckdb.StatementType.EXPLAIN:
        inner = _EXPLAIN_PREFIX.sub("", text, count=1)
        inner_kind = _single_statement(inner).type
        if inner_kind != duckdb.StatementType.SELECT:
            raise _refuse(f"EXPLAIN of {inner_kind.name} statement")
    elif kind != duckdb.StatementType.SELECT:
        raise _refuse(f"{kind.name} statement")
    try:
        plan_rows = conn.execute(_PLAN_PREFIX + inner).fetchall()
    except duckdb.Error as exc:
        raise _without_wrapper(exc) from None
    for _kind, plan_json in plan_rows:
        for name in _walk_plan(orjson.loads(plan_json)):
            if _WRITING_OPERATORS.match(name):
                raise _refuse(f"the query plan writes ({name})")
    return text


def run_readonly_query(
    conn: duckdb.DuckDBPyConnection, sql: str, max_rows: int | None = None
) -> tuple[list[str], list[tuple[Any, ...]]]:
    """Run one read-only statement; return (column names, rows).

    ``conn`` may be a read-write connection (the server's ``writer.cursor()``):
    the statement runs in a transaction that is rolled back whatever happens.
    ``max_rows`` caps the rows fetched (None: all).
    """
    text = check_readonly(conn, sql)
    conn.begin()
    try:
        cur = conn.execute(text)
        columns = [d[0] for d in (cur.description or [])]
        rows = cur.fetchall() if max_rows is None else cur.fetchmany(max_rows)
    finally:
        conn.rollback()
    return columns, rows


def export_parquet(conn: duckdb.DuckDBPyConnection, sql: str, path: str | Path) -> int:
    """Write the result of one read-only statement to a Parquet file; returns rows written."""
    text = check_readonly(conn, sql).rstrip().rstrip(";")
    rel = conn.sql(text)
    rel.write_parquet(str(path))
    row = conn.execute("SELECT count(*) FROM read_parquet(?)", [str(path)]).fetchone()
    return int(row[0]) if row else 0


# ---- output formats -------------------------------------------------------------------


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, _dt.datetime):
        return value.isoformat(sep=" ", timespec="seconds")
    return str(value)


def format_table(columns: Sequence[str], rows: Sequence[Sequence[Any]], max_width: int = 60) -> str:
    """Aligned text table; cells wider than ``max_width`` are cut with '…'."""
    def cut(text: str) -> str:
        text = text.replace("\n", " ")
        return text if len(text) <= max_width else text[: max_width - 1] + "…"

    cells = [[cut(_cell(v)) for v in row] for row in rows]
    widths = [len(c) for c in columns]
    for row in cells:
        for i, text in enumerate(row):
            widths[i] = max(widths[i], len(text))
    numeric = [
        all(isinstance(r[i], (int, float, decimal.Decimal)) or r[i] is None for r in rows) and bool(rows)
        for i in range(len(columns))
    ]

    def line(values: Sequence[str]) -> str:
        return "  ".join(
            v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric, strict=True)
        ).rstrip()

    out = [line(columns), "  ".join("-" * w for w in widths)]
    out.extend(line(row) for row in cells)
    out.append(f"({len(rows)} row{'s' if len(rows) != 1 else ''})")
    return "\n".join(out) + "\n"


def write_csv(columns: Sequence[str], rows: Sequence[Sequence[Any]], fp: TextIO) -> None:
    writer = csv.writer(fp, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow(
            ["" if v is None else (v.isoformat() if isinstance(v, (_dt.date, _dt.time)) else v) for v in row])


def json_default(value: Any) -> Any:
    if isinstance(value, decimal.Decimal):
        return float(value)
    if isinstance(value, (uuid.UUID, _dt.timedelta)):
        return str(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).hex()
    raise TypeError(f"cannot encode {type(value).__name__} as JSON")


def to_json(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> bytes:
    """A JSON array of objects, one per row."""
    records = [dict(zip(columns, row, strict=True)) for row in rows]
    return orjson.dumps(records, default=json_default, option=orjson.OPT_INDENT_2 | orjson.OPT_NAIVE_UTC) + b"\n"


def to_csv_text(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    buf = io.StringIO()
    write_csv(columns, rows, buf)
    return buf.getvalue()

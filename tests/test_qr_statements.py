"""qr/statements.py: parsed statements kept per thread, parameters still bound per call."""

from __future__ import annotations

import threading

import duckdb
import pytest

from fastscp.qr import statements
from fastscp.qr.statements import execute


def _kept() -> dict[str, duckdb.Statement]:
    kept: dict[str, duckdb.Statement] = statements._local.kept
    return kept


def test_the_same_text_runs_the_kept_statement_with_each_calls_parameters() -> None:
    conn = duckdb.connect()
    conn.execute("CREATE TABLE t (k VARCHAR, v INTEGER)")
    conn.execute("INSERT INTO t VALUES ('a', 1), ('b', 2)")
    sql = "SELECT v FROM t WHERE k = ?"
    assert execute(conn, sql, ["a"]).fetchall() == [(1,)]
    first = _kept()[sql]
    assert execute(conn, sql, ["b"]).fetchall() == [(2,)]
    assert _kept()[sql] is first  # parsed once
    assert execute(conn.cursor(), sql, ["a"]).fetchall() == [(1,)]  # another cursor, same statement


def test_a_kept_statement_binds_against_the_database_it_runs_on() -> None:
    one, two = duckdb.connect(), duckdb.connect()
    for conn, value in ((one, 1), (two, 2)):
        conn.execute("CREATE TABLE t (v INTEGER)")
        conn.execute("INSERT INTO t VALUES (?)", [value])
    sql = "SELECT v FROM t"
    assert execute(one, sql).fetchall() == [(1,)]
    assert execute(two, sql).fetchall() == [(2,)]
    two.execute("DROP TABLE t")
    with pytest.raises(duckdb.CatalogException):
        execute(two, sql)  # bound at each run: a dropped table is no kept result


def test_each_thread_keeps_its_own_and_at_most_max_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    conn = duckdb.connect()
    execute(conn, "SELECT 1")
    seen: list[dict[str, duckdb.Statement]] = []

    def other() -> None:
        execute(conn.cursor(), "SELECT 1")
        seen.append(_kept())

    thread = threading.Thread(target=other)
    thread.start()
    thread.join()
    assert seen and seen[0] is not _kept()
    monkeypatch.setattr(statements, "MAX_KEPT", 3)
    _kept().clear()
    for n in range(5):
        assert execute(conn, f"SELECT {n}").fetchall() == [(n,)]
    assert list(_kept()) == ["SELECT 2", "SELECT 3", "SELECT 4"]  # the oldest dropped first


def test_more_than_one_statement_is_refused() -> None:
    with pytest.raises(ValueError):
        execute(duckdb.connect(), "SELECT 1; SELECT 2")

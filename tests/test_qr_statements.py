"""qr/statements.py: parsed statements kept per thread, parameters still bound per call."""

from __future__ import annotations

import threading

import duckdb
import pytest

from fastscp.qr import statements
from fastscp.qr.statements import execute


def _kept() -> dict[str, duckdb.Statement]:
    kept: dict[str, duckdb.Statement] = statements._local.kept.statements
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


def test_each_thread_keeps_its_own() -> None:
    conn = duckdb.connect()
    execute(conn, "SELECT 1")
    seen: list[dict[str, duckdb.Statement]] = []

    def other() -> None:
        execute(conn.cursor(), "SELECT 1")
        seen.append(_kept())

    thread = threading.Thread(target=other)
    thread.start()
    thread.join()
    assert seen and seen[0] is not _kept() and "SELECT 1" in seen[0]


def test_kept_text_stays_within_the_budget_least_recently_used_out(monkeypatch: pytest.MonkeyPatch) -> None:
    conn = duckdb.connect()
    monkeypatch.setattr(statements._local, "kept", statements._Kept())
    monkeypatch.setattr(statements, "BUDGET", 3 * len("SELECT 0"))
    for n in range(3):
        execute(conn, f"SELECT {n}")
    execute(conn, "SELECT 0")  # used again: now the most recent
    assert execute(conn, "SELECT 3").fetchall() == [(3,)]
    assert list(_kept()) == ["SELECT 2", "SELECT 0", "SELECT 3"]  # SELECT 1 went first
    assert statements._local.kept.chars == 3 * len("SELECT 0")


def test_a_long_text_runs_but_is_not_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    conn = duckdb.connect()
    monkeypatch.setattr(statements._local, "kept", statements._Kept())
    long = "SELECT " + " + ".join("?" for _ in range(statements.MAX_TEXT // 3))
    assert len(long) > statements.MAX_TEXT
    assert execute(conn, long, [1] * (statements.MAX_TEXT // 3)).fetchall() == [(statements.MAX_TEXT // 3,)]
    assert long not in _kept() and statements._local.kept.chars == 0


def test_more_than_one_statement_is_refused() -> None:
    with pytest.raises(ValueError):
        execute(duckdb.connect(), "SELECT 1; SELECT 2")

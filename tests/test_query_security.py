"""The status endpoint's /query reaches the index and nothing else (issue 20
part 1), tested as classes: every DuckDB table function and every one-string
scalar function is called with the path of a secret file through a real
StatusServer, and must neither return the secret nor create a file nor change
a setting; the functions and statements named in the security review are
each refused outright."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from pathlib import Path

import duckdb
import pytest

from status_support import LiveStatus


def _functions(kind: str) -> list[str]:
    """Every built-in function of ``kind`` whose first parameter takes a
    string (a path, a pattern, SQL text), from DuckDB's own catalogue, so a
    function added by a DuckDB upgrade is tested without editing this file."""
    conn = duckdb.connect(config={"autoload_known_extensions": False, "autoinstall_known_extensions": False})
    try:
        rows = conn.execute(
            "SELECT DISTINCT function_name FROM duckdb_functions() WHERE function_type = ? "
            "AND len(parameter_types) >= 1 AND parameter_types[1] IN ('VARCHAR', 'VARIANT', 'ANY', 'ANY[]') "
            "ORDER BY 1", [kind]).fetchall()
    finally:
        conn.close()
    return [r[0] for r in rows]


TABLE_FUNCTIONS = _functions("table")
SCALAR_FUNCTIONS = [f for f in _functions("scalar") if f.isidentifier()]


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LiveStatus, Path, str, Path]]:
    root = tmp_path_factory.mktemp("querysec")
    secret = secrets.token_hex(16)
    secret_file = root / "outside" / "secret.txt"
    secret_file.parent.mkdir()
    secret_file.write_text(f"col\n{secret}\n")
    (root / "srv").mkdir()
    srv = LiveStatus(root / "srv")
    sink = root / "sink"  # where a side effect would create files
    sink.mkdir()
    try:
        yield srv, secret_file, secret, sink
    finally:
        srv.close()


def _settings(srv: LiveStatus) -> dict[str, str]:
    cur = srv.writer.cursor()
    try:
        return {n: str(v) for n, v in cur.execute("SELECT name, value FROM duckdb_settings()").fetchall()}
    finally:
        cur.close()


def _assert_contained(srv: LiveStatus, sql: str, secret: str, sink: Path, before: dict[str, str]) -> tuple[int, object]:
    status, doc = srv.query(sql)
    assert secret not in str(doc), (sql, status, doc)
    assert not list(sink.iterdir()), (sql, list(sink.iterdir()))
    assert _settings(srv) == before, sql
    return status, doc


def test_the_enumeration_covers_the_file_functions() -> None:
    # if DuckDB renamed these, the enumeration (not the server) would be wrong
    for name in ("read_text", "read_blob", "read_csv", "read_json", "read_parquet", "glob", "read_duckdb",
                 "parquet_scan", "enable_logging", "query"):
        assert name in TABLE_FUNCTIONS


@pytest.mark.parametrize("fn", TABLE_FUNCTIONS)
def test_every_table_function_on_a_secret_path_reads_nothing(live, fn: str) -> None:  # type: ignore[no-untyped-def]
    srv, secret_file, secret, sink = live
    before = _settings(srv)
    for arg in (f"'{secret_file}'", f"'{secret_file.parent}/*'", f"['{secret_file}']",
                f"'{sink}/x'"):
        _assert_contained(srv, f"SELECT * FROM {fn}({arg})", secret, sink, before)
    assert srv.query("SELECT count(*) FROM instances")[1]["rows"] == [[5]]


def test_every_one_string_scalar_function_on_a_secret_path_reads_nothing(live) -> None:  # type: ignore[no-untyped-def]
    srv, secret_file, secret, sink = live
    before = _settings(srv)
    assert len(SCALAR_FUNCTIONS) > 100
    for fn in SCALAR_FUNCTIONS:
        _assert_contained(srv, f"SELECT {fn}('{secret_file}')", secret, sink, before)


REFUSED = [
    "SELECT * FROM read_text('{secret}')",
    "SELECT * FROM read_blob('{secret}')",
    "SELECT * FROM read_csv('{secret}')",
    "SELECT * FROM read_csv_auto('{secret}')",
    "SELECT * FROM read_json('{secret}')",
    "SELECT * FROM read_ndjson('{secret}')",
    "SELECT * FROM read_parquet('{secret}')",
    "SELECT * FROM parquet_scan('{secret}')",
    "SELECT * FROM parquet_metadata('{secret}')",
    "SELECT * FROM read_duckdb('{secret}')",
    "SELECT * FROM '{secret}'",
    "SELECT * FROM glob('/*')",
    "SELECT * FROM glob('{sink}/../*')",
    "SELECT * FROM query('SELECT * FROM read_text(''{secret}'')')",
    "SELECT * FROM read_csv('http://127.0.0.1:9/x.csv')",
    "SELECT * FROM enable_logging(storage='file', storage_path='{sink}/log')",
    "SELECT * FROM enable_logging(level='trace')",
    "SELECT * FROM enable_profiling(save_location='{sink}/profile.json')",
    "SELECT * FROM duckdb_settings()  WHERE set_config('threads', '4') IS NULL",
    "ATTACH '{sink}/other.db' AS other",
    "COPY instances TO '{sink}/out.csv'",
    "COPY (SELECT 1) TO '{sink}/out.parquet' (FORMAT parquet)",
    "EXPORT DATABASE '{sink}/dump'",
    "INSTALL httpfs",
    "LOAD httpfs",
    "LOAD '{sink}/x.duckdb_extension'",
    "SET enable_external_access = true",
    "SET lock_configuration = false",
    "RESET allowed_directories",
    "PRAGMA enable_profiling",
    "PRAGMA threads = 4",
    "CALL enable_logging(storage='file', storage_path='{sink}/log')",
    "CREATE SECRET s (TYPE s3, KEY_ID 'k', SECRET 's')",
]


@pytest.mark.parametrize("template", REFUSED)
def test_named_escape_is_refused(live, template: str) -> None:  # type: ignore[no-untyped-def]
    srv, secret_file, secret, sink = live
    before = _settings(srv)
    sql = template.format(secret=secret_file, sink=sink)
    status, doc = _assert_contained(srv, sql, secret, sink, before)
    assert status in (400, 422), (sql, status, doc)
    assert isinstance(doc, dict) and doc.get("error"), doc


def test_the_lockdown_is_duckdbs_own_setting(live) -> None:  # type: ignore[no-untyped-def]
    srv = live[0]
    settings = _settings(srv)
    assert settings["enable_external_access"] == "false"
    assert settings["lock_configuration"] == "true"
    assert settings["autoload_known_extensions"] == "false"
    assert settings["autoinstall_known_extensions"] == "false"
    # even on the writer's own cursor, not only through /query
    cur = srv.writer.cursor()
    try:
        with pytest.raises(duckdb.Error):
            cur.execute("SELECT * FROM read_text(?)", [str(live[1])])
        with pytest.raises(duckdb.Error):
            cur.execute("SET enable_external_access = true")
    finally:
        cur.close()
    assert os.path.exists(live[1])

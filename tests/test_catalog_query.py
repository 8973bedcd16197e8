"""Read-only query enforcement, output formats and the query command."""

from __future__ import annotations

import csv
import io
import subprocess
import sys
import textwrap

import duckdb
import orjson
import pytest

from fastscp.catalog import CatalogWriter, ReadOnlyQueryError, run_readonly_query, schema
from fastscp.cli_catalog import main as catalog_main
from test_catalog_support import make_info


@pytest.fixture()
def db(tmp_path):
    path = tmp_path / "i.db"
    with CatalogWriter(path) as w:
        for i in range(10):
            w.enqueue(make_info(i, study=i % 2, calling_ae="SCU_A" if i < 7 else "SCU_B"))
    return path


REFUSED = [
    ("UPDATE instances SET path = 'x'", "UPDATE"),
    ("DELETE FROM instances", "DELETE"),
    ("INSERT INTO patients VALUES ('x', 'y', NULL, 'M', NULL)", "INSERT"),
    ("ATTACH 'other.db' AS other", "ATTACH"),
    ("COPY instances TO 'out.csv'", "COPY"),
    ("DROP TABLE instances", "DROP"),
    ("CREATE TABLE t AS SELECT 1", "CREATE"),
    ("PRAGMA version", "PRAGMA"),
    ("SET threads = 1", "SET"),
    ("SELECT 1; DELETE FROM instances", "2 statements"),
    ("EXPLAIN ANALYZE DELETE FROM instances", "EXPLAIN of DELETE"),
    ("WITH x AS (DELETE FROM instances RETURNING *) SELECT count(*) FROM x", "plan writes"),
    ("   ", "no statement"),
]


@pytest.mark.parametrize("sql,kind", REFUSED)
def test_writing_statements_are_refused_with_a_clear_message(db, sql, kind):
    conn = schema.connect(db)  # read-write on purpose: the check must hold anyway
    try:
        with pytest.raises(ReadOnlyQueryError) as err:
            run_readonly_query(conn, sql)
        assert "refused" in str(err.value) and kind in str(err.value)
        assert "SELECT, WITH, DESCRIBE, SHOW, EXPLAIN" in str(err.value)
        assert conn.execute("SELECT count(*) FROM instances").fetchone() == (10,)
        assert conn.execute("SELECT count(*) FROM patients").fetchone() == (2,)
    finally:
        conn.close()


@pytest.mark.parametrize("sql", [
    "SELECT count(*) FROM instances",
    "WITH x AS (SELECT * FROM instances) SELECT count(*) FROM x",
    "DESCRIBE instances",
    "SHOW TABLES",
    "EXPLAIN SELECT * FROM instances",
    "SUMMARIZE instances",
    "FROM study_summary",
])
def test_read_statements_run(db, sql):
    conn = schema.connect(db, read_only=True)
    try:
        columns, result = run_readonly_query(conn, sql)
    finally:
        conn.close()
    assert columns and result


def test_max_rows_caps_the_fetch(db):
    conn = schema.connect(db, read_only=True)
    cols, result = run_readonly_query(conn, "SELECT sop_instance_uid FROM instances", max_rows=3)
    conn.close()
    assert cols == ["sop_instance_uid"] and len(result) == 3


def test_query_command_formats(db, tmp_path, capsys):
    sql = "SELECT calling_ae, count(*) AS n FROM instances GROUP BY 1 ORDER BY 2 DESC"
    assert catalog_main(["query", sql, "--index-db", str(db)]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["calling_ae", "n"] and table[2].split() == ["SCU_A", "7"]
    assert table[-1] == "(2 rows)"

    assert catalog_main(["query", sql, "--format", "csv", "--index-db", str(db)]) == 0
    parsed = list(csv.reader(io.StringIO(capsys.readouterr().out)))
    assert parsed == [["calling_ae", "n"], ["SCU_A", "7"], ["SCU_B", "3"]]

    out = tmp_path / "r.json"
    assert catalog_main(["query", "SELECT sop_instance_uid, received_at FROM instances LIMIT 2",
                         "--format", "json", "--output", str(out), "--index-db", str(db)]) == 0
    records = orjson.loads(out.read_bytes())
    assert len(records) == 2 and set(records[0]) == {"sop_instance_uid", "received_at"}

    pq = tmp_path / "r.parquet"
    assert catalog_main(["query", sql, "--format", "parquet", "--output", str(pq),
                         "--index-db", str(db)]) == 0
    assert duckdb.connect().execute(f"SELECT sum(n) FROM '{pq}'").fetchone() == (10,)
    assert catalog_main(["query", sql, "--format", "parquet", "--index-db", str(db)]) == 2


def test_query_command_refuses_and_reports_sql_errors(db, capsys):
    assert catalog_main(["query", "DELETE FROM instances", "--index-db", str(db)]) == 2
    assert "refused: DELETE statement" in capsys.readouterr().err
    assert catalog_main(["query", "SELECT nope FROM instances", "--index-db", str(db)]) == 1
    assert "nope" in capsys.readouterr().err
    assert catalog_main(["query", "SELECT 1", "--index-db", str(db) + ".missing"]) == 1
    assert "does not exist" in capsys.readouterr().err


def test_query_command_explains_a_locked_database(db, capsys):
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import duckdb, sys
            conn = duckdb.connect({str(db)!r})
            print("ready", flush=True)
            sys.stdin.read()
        """)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "ready"
        assert catalog_main(["query", "SELECT 1", "--index-db", str(db)]) == 1
        err = capsys.readouterr().err
        assert "open for writing by another process" in err
    finally:
        holder.stdin.close()
        holder.wait(10)


def test_documented_example_queries_run(db):
    import re
    from pathlib import Path

    doc = Path(__file__).resolve().parent.parent / "docs" / "catalog.md"
    queries = re.findall(r"```sql\n(.*?)```", doc.read_text(), re.S)
    assert len(queries) >= 4
    conn = schema.connect(db, read_only=True)
    try:
        results = [run_readonly_query(conn, q) for q in queries]
    finally:
        conn.close()
    today = results[0][1]
    assert len(today) == 2  # both studies of the fixture were received now
    busiest = results[1][1]
    assert [(r[0], r[1]) for r in busiest] == [("SCU_A", 7), ("SCU_B", 3)]

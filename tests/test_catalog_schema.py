"""Schema versioning: a v1 database with data migrates forward intact."""

from __future__ import annotations

import dataclasses
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import pytest

from fastscp.catalog import CatalogWriter, schema
from test_catalog_support import make_info


def test_new_database_is_at_the_current_version(tmp_path):
    conn = schema.connect(tmp_path / "i.db")
    assert schema.schema_version(conn) == schema.SCHEMA_VERSION
    tables = {r[0] for r in conn.execute("SHOW TABLES").fetchall()}
    assert {"patients", "studies", "series", "instances", "associations", "catalog_meta"} <= tables
    conn.close()


def test_v1_data_migrates_to_current(tmp_path):
    db = tmp_path / "old.db"
    conn = duckdb.connect(str(db))
    assert schema.migrate(conn, target=1) == 0
    assert schema.schema_version(conn) == 1
    conn.execute("INSERT INTO patients VALUES ('P1', 'Old^Patient', DATE '1950-05-01', 'M', NULL)")
    conn.execute("""INSERT INTO instances (sop_instance_uid, series_instance_uid, path, file_size)
                    VALUES ('1.2.3', '1.2.3.1', '/s/old.dcm', 1234)""")
    cols = {r[0] for r in conn.execute("DESCRIBE instances").fetchall()}
    assert "status" not in cols
    conn.close()

    # A read-only open refuses an old schema rather than failing later.
    with pytest.raises(RuntimeError, match="schema version 1"):
        schema.connect(db, read_only=True)

    conn = schema.connect(db)  # migrates
    assert schema.schema_version(conn) == schema.SCHEMA_VERSION
    row = conn.execute("SELECT path, file_size, status, source, missing_since FROM instances").fetchall()
    assert row == [("/s/old.dcm", 1234, "present", "received", None)]
    assert conn.execute("SELECT patient_name FROM patients").fetchall() == [("Old^Patient",)]
    assert conn.execute("SELECT count(*) FROM associations").fetchone() == (0,)
    assert conn.execute("SELECT instance_count FROM series_summary").fetchall() == []
    conn.close()

    # The writer works on the migrated file and upserts over the v1 row.
    with CatalogWriter(db) as w:
        info = dataclasses.replace(make_info(5), sop_instance_uid="1.2.3")
        w.enqueue(info)
    conn = duckdb.connect(str(db), read_only=True)
    assert conn.execute("SELECT count(*), max(path) FROM instances").fetchone() == (1, info.path)
    conn.close()


def test_newer_schema_is_refused(tmp_path):
    db = tmp_path / "new.db"
    conn = schema.connect(db)
    conn.execute("UPDATE catalog_meta SET schema_version = 99")
    conn.close()
    with pytest.raises(RuntimeError, match="upgrade fastscp"):
        schema.connect(db)


def test_failed_migration_leaves_the_last_complete_version(tmp_path, monkeypatch):
    db = tmp_path / "i.db"
    conn = duckdb.connect(str(db))
    schema.migrate(conn, target=1)

    def broken(c):
        c.execute("ALTER TABLE instances ADD COLUMN source VARCHAR")
        raise RuntimeError("boom")

    monkeypatch.setattr(schema, "MIGRATIONS", (schema.MIGRATIONS[0], broken))
    with pytest.raises(RuntimeError, match="boom"):
        schema.migrate(conn)
    assert schema.schema_version(conn) == 1
    assert "source" not in {r[0] for r in conn.execute("DESCRIBE instances").fetchall()}
    conn.close()


# ---- DuckDB's temporary files left by a process that died ----------------------------------------

def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_an_open_removes_the_temporary_files_of_processes_that_no_longer_run(tmp_path, caplog):
    db = tmp_path / "i.db"
    tmp = tmp_path / "i.db.tmp"
    tmp.mkdir()
    dead, alive = _dead_pid(), os.getppid()
    gone = [tmp / f"duckdb_temp_{dead}_0_owner", tmp / f"duckdb_temp_{dead}_0_storage_DEFAULT-0.tmp"]
    kept = [tmp / f"duckdb_temp_{alive}_0_storage_DEFAULT-0.tmp", tmp / f"duckdb_temp_{os.getpid()}_0_owner",
            tmp / "notes.txt"]
    for f in gone + kept:
        f.write_bytes(b"x" * 1000)
    with caplog.at_level(logging.WARNING, logger="fastscp.catalog.schema"):
        conn = schema.connect(db)
    conn.close()
    assert [f.exists() for f in gone] == [False, False]
    assert all(f.exists() for f in kept)
    assert "removed 2 temporary file(s)" in caplog.text


def test_a_query_killed_while_spilling_leaves_files_that_the_next_open_removes(tmp_path):
    """The case itself: a process whose query spilled past memory_limit is
    killed; DuckDB leaves its files; the next read-write open removes them."""
    db = tmp_path / "i.db"
    script = (
        "import sys\n"
        "from fastscp.catalog import schema\n"
        f"c = schema.connect({str(db)!r}, memory_limit=32 * 1024 * 1024)\n"
        "c.execute(\"SELECT count(*) FROM (SELECT DISTINCT 'uid.' || i::VARCHAR || repeat('x', 60) "
        "FROM range(50000000) t(i))\").fetchone()\n"
    )
    child = subprocess.Popen([sys.executable, "-c", script])
    tmp = Path(f"{db}.tmp")
    try:
        deadline = time.monotonic() + 120
        while not any(f.name.endswith(".tmp") for f in (tmp.iterdir() if tmp.exists() else ())):
            assert child.poll() is None, "the query ended before it spilled"
            assert time.monotonic() < deadline, "no temporary file appeared"
            time.sleep(0.02)
    finally:
        child.kill()
        child.wait()
    assert any(tmp.iterdir())  # what the killed process left
    conn = schema.connect(db)
    conn.close()
    assert not [f for f in tmp.iterdir() if f.name.startswith(f"duckdb_temp_{child.pid}_")]

"""Schema versioning: a v1 database with data migrates forward intact."""

from __future__ import annotations

import dataclasses
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

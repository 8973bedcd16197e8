"""Schema v4: Study ID (0020,0010) in the index, and its backfill.

A v3 index (rows written before the column existed) migrates with a log line
that says reindex fills the column; reconcile then re-reads one file per such
study and sets only ``study_id``, keeping the reception fields of the rows."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import duckdb
import pytest
from pydicom import dcmread
from test_catalog_support import make_info, write_instance

from fastscp.catalog import schema
from fastscp.catalog.reconcile import read_header, reconcile
from fastscp.catalog.rows import BatchWriter
from fastscp.storage.header import parse_file

STUDY_A = "1.2.826.0.1.3680043.9.7.10"
STUDY_B = "1.2.826.0.1.3680043.9.7.20"


def _file(root: Path, name: str, sop: str, study: str, study_id: str | None) -> Path:
    path = write_instance(root / name, sop, study, study + ".1")
    ds = dcmread(path)
    if study_id is None:
        ds.pop("StudyID", None)
    else:
        ds.StudyID = study_id
    ds.save_as(path)
    return path


def test_new_rows_carry_study_id(tmp_path: Path) -> None:
    conn = schema.connect(tmp_path / "i.db")
    info = dataclasses.replace(make_info(1), study_id="S42")
    BatchWriter(conn).write([info])
    assert conn.execute("SELECT study_id FROM studies").fetchall() == [("S42",)]
    info2 = dataclasses.replace(make_info(2), study_instance_uid="9.9.9")
    BatchWriter(conn).write([info2])  # absent attribute: "", not NULL (NULL means "not read yet")
    assert conn.execute("SELECT study_id FROM studies WHERE study_instance_uid = '9.9.9'").fetchall() == [("",)]
    conn.close()


def test_header_reader_reads_study_id(tmp_path: Path) -> None:
    path = _file(tmp_path, "a.dcm", "1.2.3.4.1", STUDY_A, "ST-1")
    assert parse_file(path).study_id == "ST-1"
    assert read_header(str(path)).study_id == "ST-1"


def test_v3_index_migrates_and_reindex_backfills_study_id(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    storage = tmp_path / "store"
    storage.mkdir()
    a1 = _file(storage, "a1.dcm", "1.2.3.4.1", STUDY_A, "ST-A")
    a2 = _file(storage, "a2.dcm", "1.2.3.4.2", STUDY_A, "ST-A")
    b1 = _file(storage, "b1.dcm", "1.2.3.4.3", STUDY_B, None)  # no Study ID in the file
    db = tmp_path / "old.db"
    conn = duckdb.connect(str(db))
    schema.migrate(conn, target=3)
    for study in (STUDY_A, STUDY_B):
        conn.execute("INSERT INTO studies (study_instance_uid, patient_id, study_description) "
                     "VALUES (?, 'PID1', 'old')", [study])
    for sop, study, path in (("1.2.3.4.1", STUDY_A, a1), ("1.2.3.4.2", STUDY_A, a2), ("1.2.3.4.3", STUDY_B, b1)):
        conn.execute("INSERT INTO instances (sop_instance_uid, study_instance_uid, path, calling_ae, content_hash) "
                     "VALUES (?, ?, ?, 'MODALITY1', 'abc')", [sop, study, str(path.resolve())])
    conn.close()

    with caplog.at_level(logging.WARNING, logger="fastscp.catalog.schema"):
        conn = schema.connect(db)
    assert schema.schema_version(conn) == schema.SCHEMA_VERSION
    assert any("study_id" in r.getMessage() and "fastscp reindex" in r.getMessage() for r in caplog.records)
    assert conn.execute("SELECT count(*) FROM studies WHERE study_id IS NULL").fetchone() == (2,)

    report = reconcile(storage, conn, workers=1, progress=False, adopt_root=True)
    assert report.indexed == 0 and report.backfilled == 2
    got = dict(conn.execute("SELECT study_instance_uid, study_id FROM studies").fetchall())
    assert got == {STUDY_A: "ST-A", STUDY_B: ""}
    # only the column was set: the rest of the rows is what reception wrote
    assert conn.execute("SELECT DISTINCT study_description FROM studies").fetchall() == [("old",)]
    assert conn.execute("SELECT DISTINCT calling_ae, content_hash, source FROM instances").fetchall() == [
        ("MODALITY1", "abc", "received")]
    # a second reconcile has nothing left to backfill
    assert reconcile(storage, conn, workers=1, progress=False).backfilled == 0
    conn.close()


def test_backfill_skips_studies_whose_files_are_gone(tmp_path: Path) -> None:
    storage = tmp_path / "store"
    storage.mkdir()
    a1 = _file(storage, "a1.dcm", "1.2.3.4.1", STUDY_A, "ST-A")
    db = tmp_path / "old.db"
    conn = duckdb.connect(str(db))
    schema.migrate(conn, target=3)
    conn.execute("INSERT INTO studies (study_instance_uid) VALUES (?)", [STUDY_A])
    conn.execute("INSERT INTO instances (sop_instance_uid, study_instance_uid, path) VALUES ('1.2.3.4.1', ?, ?)",
                 [STUDY_A, str(a1.resolve())])
    conn.close()
    a1.unlink()
    conn = schema.connect(db)
    report = reconcile(storage, conn, workers=1, progress=False, adopt_root=True)
    assert report.marked_missing == 1 and report.backfilled == 0
    assert conn.execute("SELECT study_id FROM studies").fetchall() == [(None,)]
    conn.close()

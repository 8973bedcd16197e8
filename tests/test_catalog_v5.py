"""Schema v5: the per-study aggregates of ``study_summary`` are stored
(``study_stats``) and kept by every write, and each instance row holds its
modality. What the view shows must be what it computed from ``instances``
before v5, after any sequence of writes: these tests compare the two."""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path

import duckdb
import pytest
from test_catalog_support import make_info, write_instance

from fastscp.catalog import reconcile, schema
from fastscp.catalog.rows import BatchWriter, DuplicateRecord

# study_summary's aggregates as the view computed them up to v4
COMPUTED = """
    SELECT s.study_instance_uid, count(i.sop_instance_uid), count(DISTINCT i.series_instance_uid),
           coalesce(sum(i.file_size), 0), min(i.received_at), max(i.received_at),
           count(*) FILTER (WHERE i.status = 'missing')
    FROM studies s LEFT JOIN instances i USING (study_instance_uid) GROUP BY 1 ORDER BY 1"""
STORED = """
    SELECT study_instance_uid, instance_count, series_count, bytes, first_received_at, last_received_at,
           missing_count FROM study_summary ORDER BY 1"""


def agree(conn: duckdb.DuckDBPyConnection) -> list[tuple[object, ...]]:
    stored = conn.execute(STORED).fetchall()
    assert stored == conn.execute(COMPUTED).fetchall()
    return stored


T0 = 1_700_000_000.0


def test_new_rows_re_sends_and_dropped_copies_keep_the_stored_counts_exact(tmp_path: Path) -> None:
    conn = schema.connect(tmp_path / "i.db")
    w = BatchWriter(conn)
    # two studies, three series, times out of order inside the batch
    w.write([make_info(i, study=i % 2, series=i % 3, received_at=T0 + (7 * i) % 30, file_size=1000 + i)
             for i in range(30)])
    assert [r[1:4] for r in agree(conn)] == [(15, 3, sum(1000 + i for i in range(0, 30, 2))),
                                             (15, 3, sum(1000 + i for i in range(1, 30, 2)))]
    # more of study 0 (a known series and a new one), a new study 2, and one earlier than all
    w.write([make_info(100 + i, study=0, series=i % 2 + 2, received_at=T0 + 50 + i) for i in range(6)]
            + [make_info(200, study=2, received_at=T0 - 100)])
    stats = {r[0]: r[1:] for r in agree(conn)}
    assert stats[make_info(0, study=0).study_instance_uid][:2] == (21, 4)
    # re-sends stored again: a bigger copy, and one that moves to another study
    bigger = dataclasses.replace(make_info(4, study=0, series=1, received_at=T0 + 500, file_size=9999),
                                 duplicate="overwritten")
    moved = dataclasses.replace(make_info(5, study=2, received_at=T0 + 600), duplicate="overwritten")
    # a dropped re-send (policy ignore): only the reception columns change
    dropped = DuplicateRecord.of(dataclasses.replace(make_info(0, study=0), received_at=T0 + 700,
                                                     duplicate="ignored"))
    w.write([bigger, moved], duplicates=[dropped])
    stats = {r[0]: r[1:] for r in agree(conn)}
    assert stats[moved.study_instance_uid][0] == 2  # 200 and the moved one
    assert stats[make_info(0, study=1).study_instance_uid][0] == 14  # the one it left
    assert max(r[4] for r in stats.values()).timestamp() == pytest.approx(T0 + 700, abs=1)
    # an instance with no series UID is counted as the view counted it ('' is a value)
    w.write([dataclasses.replace(make_info(300, study=2), series_instance_uid="")])
    agree(conn)
    assert w.fallbacks == 0
    conn.close()


def test_a_new_looking_uid_already_in_the_index_falls_back_to_upserts(tmp_path: Path) -> None:
    conn = schema.connect(tmp_path / "i.db")
    w = BatchWriter(conn)
    w.write([make_info(i, study=i % 2, received_at=T0 + i) for i in range(10)])
    conn.execute("UPDATE instances SET status = 'missing' WHERE sop_instance_uid = ?",
                 [make_info(3).sop_instance_uid])
    # its file went missing, so the duplicate check took the re-send for new
    again = make_info(3, study=1, received_at=T0 + 100, path="/storage/again.dcm")
    w.write([again, make_info(20, study=1, received_at=T0 + 101)])
    assert w.fallbacks == 1
    assert conn.execute("SELECT count(*), count(DISTINCT sop_instance_uid) FROM instances").fetchone() == (11, 11)
    assert conn.execute("SELECT path, status FROM instances WHERE sop_instance_uid = ?",
                        [again.sop_instance_uid]).fetchone() == ("/storage/again.dcm", "present")
    agree(conn)
    conn.close()


def test_reconcile_keeps_the_missing_counts(tmp_path: Path) -> None:
    storage = tmp_path / "store"
    files = [write_instance(storage / f"{i}.dcm", f"1.2.3.9.{i}", f"1.2.3.8.{i % 2}", f"1.2.3.8.{i % 2}.1",
                            instance_number=i) for i in range(6)]
    db = tmp_path / "i.db"
    assert reconcile(storage, db, workers=1, progress=False, adopt_root=True).indexed == 6
    moved = files[2].rename(tmp_path / "aside.dcm")
    assert reconcile(storage, db, workers=1, progress=False).marked_missing == 1
    conn = schema.connect(db)
    assert sorted(r[6] for r in agree(conn)) == [0, 1]
    conn.close()
    moved.rename(files[2])
    assert reconcile(storage, db, workers=1, progress=False).restored == 1
    conn = schema.connect(db)
    assert [r[6] for r in agree(conn)] == [0, 0]
    # the modality of each row is its header's
    assert conn.execute("SELECT DISTINCT modality FROM instances").fetchall() == [("CT",)]
    conn.close()


def test_v4_index_migrates_with_its_counts_and_modalities(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    db = tmp_path / "old.db"
    conn = duckdb.connect(str(db))
    schema.migrate(conn, target=4)
    conn.execute("INSERT INTO studies (study_instance_uid, patient_id) VALUES ('S1', 'P1'), ('S2', 'P1')")
    conn.execute("INSERT INTO series (series_instance_uid, study_instance_uid, modality) "
                 "VALUES ('S1.1', 'S1', 'MR'), ('S1.2', 'S1', 'CT')")
    now = time.time()
    for n, (series, status) in enumerate((("S1.1", "present"), ("S1.1", "missing"), ("S1.2", "present"))):
        conn.execute("INSERT INTO instances (sop_instance_uid, series_instance_uid, study_instance_uid, file_size, "
                     "received_at, status) VALUES (?, ?, 'S1', 100, to_timestamp(?)::TIMESTAMP, ?)",
                     [f"I{n}", series, now + n, status])
    # a row without a Study Instance UID (v1 rows could have one): no study_summary row
    conn.execute("INSERT INTO instances (sop_instance_uid, file_size) VALUES ('I9', 5)")
    computed = conn.execute(COMPUTED).fetchall()
    conn.close()
    with caplog.at_level(logging.WARNING, logger="fastscp.catalog.schema"):
        conn = schema.connect(db)
    assert schema.schema_version(conn) == 5
    assert any("index schema v5" in r.getMessage() and "4 instance rows" in r.getMessage() for r in caplog.records)
    assert conn.execute(STORED).fetchall() == computed
    assert computed[0][1:4] == (3, 2, 300) and computed[0][6] == 1 and computed[1][1] == 0
    assert conn.execute("SELECT sop_instance_uid, modality FROM instances ORDER BY 1").fetchall() == [
        ("I0", "MR"), ("I1", "MR"), ("I2", "CT"), ("I9", None)]
    # the writer counts new studies into the migrated table
    BatchWriter(conn).write([make_info(i, study=7, received_at=T0 + i) for i in range(3)])
    assert {r[0]: r[1] for r in agree(conn)}[make_info(0, study=7).study_instance_uid] == 3
    conn.close()


def test_a_later_header_replaces_the_patient_study_and_series_rows(tmp_path: Path) -> None:
    conn = schema.connect(tmp_path / "i.db")
    w = BatchWriter(conn)
    w.write([make_info(i, study=1, series=0, received_at=T0 + i) for i in range(3)])
    later = [dataclasses.replace(make_info(10 + i, study=1, series=0, modality="MR", received_at=T0 + 10 + i),
                                 patient_name="Roe^Jane", study_description="Head", series_description="Sag")
             for i in range(2)]
    w.write(later)
    assert conn.execute("SELECT count(*), max(patient_name) FROM patients").fetchone() == (1, "Roe^Jane")
    assert conn.execute("SELECT count(*), max(study_description) FROM studies").fetchone() == (1, "Head")
    assert conn.execute("SELECT count(*), max(series_description), max(modality) FROM series").fetchone() == (
        1, "Sag", "MR")
    assert [r[1:3] for r in agree(conn)] == [(5, 1)]
    assert w.fallbacks == 0  # the known keys were replaced on the plain path, not by the fallback
    conn.close()

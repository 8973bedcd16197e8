"""Reconcile/reindex against a real tree of Part-10 files written with pydicom."""

from __future__ import annotations

import importlib
import os
import shutil
from pathlib import Path

import duckdb
import pydicom
import pytest

from fastscp.catalog import IndexRootMismatch, iter_stored_instances, reconcile, schema
from fastscp.cli_catalog import main as catalog_main
from test_catalog_support import write_instance

reconcile_module = importlib.import_module("fastscp.catalog.reconcile")


def make_tree(root: Path, n_studies: int = 2, per_series: int = 6) -> list[Path]:
    paths = []
    for s in range(n_studies):
        study = f"1.2.826.0.1.3680043.9.70.{s}"
        for se in range(2):
            series = f"{study}.{se}"
            for k in range(per_series):
                uid = f"{series}.{k}"
                p = root / f"study{s}" / f"series{se}" / f"{k}.dcm"
                write_instance(p, uid, study, series, patient_id=f"P{s}",
                               modality="CT" if se == 0 else "MR", instance_number=k + 1,
                               rows=8, columns=6)
                paths.append(p)
    (root / ".incoming").mkdir()
    write_instance(root / ".incoming" / "partial.dcm", "9.9.9")  # must be ignored
    (root / "notes.txt").write_text("not DICOM")
    return paths


def rows(db: Path, sql: str) -> list[tuple]:
    conn = duckdb.connect(str(db), read_only=True)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


def test_reindex_indexes_files_with_their_header_attributes(tmp_path):
    root = (tmp_path / "store").resolve()
    paths = make_tree(root)
    db = tmp_path / "i.db"
    report = reconcile(root, db, progress=False)
    assert report.files_seen == len(paths) + 1  # + notes.txt, not .incoming/
    assert report.indexed == len(paths) == 24
    assert report.unreadable == 1 and "notes.txt" in report.problems[0]
    assert report.marked_missing == 0 and report.conflicts == 0

    assert rows(db, "SELECT count(*) FROM instances WHERE path LIKE '%.incoming%'") == [(0,)]
    got = {r[0]: r[1:] for r in rows(db, """
        SELECT i.path, i.sop_instance_uid, i.instance_number, i."rows", i."columns",
               i.file_size, i.transfer_syntax_uid, i.source, se.modality, st.study_date,
               p.patient_name
        FROM instances i JOIN series se USING (series_instance_uid)
        JOIN studies st ON st.study_instance_uid = i.study_instance_uid
        JOIN patients p ON p.patient_id = i.patient_id""")}
    assert set(got) == {str(p) for p in paths}
    for p in paths:  # checked against the files themselves
        ds = pydicom.dcmread(p)
        uid, number, r, c, size, ts, source, modality, date, name = got[str(p)]
        assert uid == ds.SOPInstanceUID and number == ds.InstanceNumber
        assert (r, c) == (ds.Rows, ds.Columns) == (8, 6)
        assert size == os.path.getsize(p) and ts == ds.file_meta.TransferSyntaxUID
        assert source == "reindex" and modality == ds.Modality
        assert str(date) == "2024-01-31" and name == str(ds.PatientName)
    assert rows(db, "SELECT count(*) FROM studies") == [(2,)]
    assert rows(db, "SELECT count(*) FROM series") == [(4,)]

    again = reconcile(root, db, progress=False)
    assert again.indexed == 0 and again.marked_missing == 0


def test_missing_files_are_marked_and_restored(tmp_path):
    root = (tmp_path / "store").resolve()
    paths = make_tree(root)
    db = tmp_path / "i.db"
    reconcile(root, db, progress=False)
    gone = paths[:3]
    saved = tmp_path / "saved.dcm"
    shutil.copy(gone[0], saved)
    for p in gone:
        p.unlink()
    report = reconcile(root, db, progress=False)
    assert report.marked_missing == 3 and report.indexed == 0
    missing = rows(db, "SELECT path FROM instances WHERE status = 'missing' AND missing_since IS NOT NULL")
    assert sorted(r[0] for r in missing) == sorted(str(p) for p in gone)
    # no present row points to a missing file
    for (path,) in rows(db, "SELECT path FROM instances WHERE status = 'present'"):
        assert os.path.exists(path)
    # the index describes root: a reconcile of another tree is refused and touches nothing
    before = rows(db, "SELECT sop_instance_uid, status FROM instances ORDER BY 1")
    with pytest.raises(IndexRootMismatch, match="describes .*store, not .*study1"):
        reconcile(tmp_path / "store" / "study1", db, progress=False)
    assert rows(db, "SELECT sop_instance_uid, status FROM instances ORDER BY 1") == before

    shutil.copy(saved, gone[0])
    back = reconcile(root, db, progress=False)
    assert back.restored == 1 and back.marked_missing == 0
    assert rows(db, "SELECT count(*) FROM instances WHERE status = 'missing'") == [(2,)]

    warm = list(iter_stored_instances(db, root))
    assert len(warm) == len(paths) - 2
    assert all(h == "" for _, _, h in warm)  # reindex does not hash files
    assert {p for _, p, _ in warm} == {str(p) for p in paths if p.exists()}


def test_a_copy_with_the_same_uid_is_a_conflict_not_a_second_row(tmp_path):
    root = (tmp_path / "store").resolve()
    paths = make_tree(root, n_studies=1, per_series=2)
    db = tmp_path / "i.db"
    reconcile(root, db, progress=False)
    shutil.copy(paths[0], root / "copy.dcm")
    report = reconcile(root, db, progress=False)
    assert report.conflicts == 1 and report.indexed == 0
    assert rows(db, "SELECT path FROM instances WHERE sop_instance_uid = "
                    f"'{pydicom.dcmread(paths[0]).SOPInstanceUID}'") == [(str(paths[0]),)]


def test_process_pool_path_and_moved_file(tmp_path, monkeypatch):
    monkeypatch.setattr(reconcile_module, "INLINE_LIMIT", 0)
    monkeypatch.setattr(reconcile_module, "CHUNK", 5)
    root = (tmp_path / "store").resolve()
    paths = make_tree(root, n_studies=2, per_series=5)
    db = tmp_path / "i.db"
    report = reconcile(root, db, workers=2, progress=False, batch_size=7)
    assert report.indexed == len(paths) == 20
    # a file moved inside the tree: the old row is missing, the UID is free, so
    # the new path replaces it
    target = root / "moved.dcm"
    paths[0].rename(target)
    moved = reconcile(root, db, workers=2, progress=False)
    assert moved.marked_missing == 1 and moved.indexed == 1 and moved.conflicts == 0
    assert rows(db, "SELECT count(*) FROM instances") == [(20,)]
    assert rows(db, f"SELECT status FROM instances WHERE path = '{target}'") == [("present",)]


def test_reindex_command(tmp_path, capsys):
    root = (tmp_path / "store").resolve()
    paths = make_tree(root, n_studies=1, per_series=3)
    db = tmp_path / "i.db"
    rc = catalog_main(["reindex", "--storage-dir", str(root), "--index-db", str(db), "--no-progress"])
    out = capsys.readouterr()
    assert rc == 0
    assert f"{len(paths)} indexed" in out.out and "1 unreadable" in out.out
    conn = schema.connect(db, read_only=True)
    assert conn.execute("SELECT count(*) FROM instances").fetchone() == (len(paths),)
    conn.close()
    assert catalog_main(["reindex", "--storage-dir", str(tmp_path / "nope"), "--index-db", str(db)]) == 1


def test_progress_bar_reports_counts(tmp_path):
    import io

    stream = io.StringIO()
    bar = reconcile_module.Progress(10, "reindex", stream=stream, enabled=True)
    for _ in range(10):
        bar.update()
    bar.close()
    text = stream.getvalue()
    assert "10/10" in text and "100.0%" in text


def test_an_index_made_before_roots_were_recorded_takes_its_tree_or_refuses_a_mixed_one(tmp_path):
    """Schema version 2 had no storage root: the first reconcile records it,
    unless present rows lie outside it (refused; reindex adopts)."""
    root_a, root_b = (tmp_path / "a").resolve(), (tmp_path / "b").resolve()
    make_tree(root_a, n_studies=1, per_series=2)
    make_tree(root_b, n_studies=1, per_series=2)
    db = tmp_path / "i.db"
    reconcile(root_a, db, progress=False)
    with duckdb.connect(str(db)) as conn:  # as an index from before the root was recorded
        conn.execute("UPDATE catalog_meta SET storage_root = NULL")
    with pytest.raises(IndexRootMismatch, match=r"lists 4 present file\(s\) outside .*b"):
        reconcile(root_b, db, progress=False)
    assert reconcile(root_a, db, progress=False).indexed == 0  # its own tree: recorded again
    with duckdb.connect(str(db)) as conn:
        assert conn.execute("SELECT storage_root FROM catalog_meta").fetchone() == (str(root_a),)

    report = reconcile(root_b, db, progress=False, adopt_root=True)  # what fastscp reindex does
    assert report.indexed == 4
    assert report.marked_missing == 0  # a's rows were marked by the adoption, before the walk
    assert rows(db, "SELECT count(*) FROM instances WHERE status = 'present'") == [(4,)]
    assert {p for _, p, _ in iter_stored_instances(db, root_b)} == {str(p) for p in root_b.glob("study*/*/*.dcm")}
    assert list(iter_stored_instances(db, root_a)) == []


def test_the_receivers_own_scan_sheets_are_not_foreign_files(tmp_path):
    root = (tmp_path / "store").resolve()
    paths = make_tree(root, n_studies=1, per_series=2)
    for name in ("scan_sheet.html", "scan_sheet.png"):
        (paths[0].parent.parent / name).write_bytes(b"<html></html>")
    report = reconcile(root, tmp_path / "i.db", progress=False)
    assert report.indexed == 4 and report.unreadable == 1  # make_tree's notes.txt, nothing else
    assert not any("scan_sheet" in problem for problem in report.problems)

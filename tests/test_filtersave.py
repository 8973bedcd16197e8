"""The duplicate check's filter kept from a clean stop to the next start
(catalog/filtersave.py): used only for the index file exactly as that stop
left it, once, and never after the index was opened for writing."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest
from conftest import Server, make_image
from test_interop import run_storescu

from fastscp.catalog import filtersave, schema
from fastscp.storage.uidfilter import UidFilter


def _closed_index(tmp_path: Path, uids: list[str]) -> tuple[Path, UidFilter]:
    """An index with rows for ``uids``, closed, and a filter holding them."""
    db = tmp_path / "index.db"
    conn = schema.connect(db)
    for uid in uids:
        conn.execute("INSERT INTO instances (sop_instance_uid, path, status) VALUES (?, ?, 'present')",
                     [uid, f"/nowhere/{uid}.dcm"])
    conn.close()
    f = UidFilter.for_rows(len(uids))
    for uid in uids:
        f.add(uid)
    return db, f


UIDS = [f"1.2.826.0.1.3680043.9.7.{n}" for n in range(200)]


def test_a_kept_filter_comes_back_whole_and_once(tmp_path: Path) -> None:
    db, f = _closed_index(tmp_path, UIDS)
    assert filtersave.save(db, f)
    assert filtersave.saved_path(db).is_file()
    got = filtersave.take(db)
    assert got is not None
    assert (got.capacity, got.hashes, got.size, got.added, got.bits_per_item) == (
        f.capacity, f.hashes, f.size, f.added, f.bits_per_item)
    assert got.bits_digest() == f.bits_digest()
    assert all(uid in got for uid in UIDS)
    assert not filtersave.saved_path(db).exists()
    assert filtersave.take(db) is None  # once


def test_an_index_written_since_is_not_described_by_it(tmp_path: Path) -> None:
    """Any write through DuckDB since the save: the row it added is unknown
    to the kept filter, which must not be used."""
    db, f = _closed_index(tmp_path, UIDS)
    assert filtersave.save(db, f)
    kept = filtersave.saved_path(db).read_bytes()
    conn = duckdb.connect(str(db))  # not schema.connect: a writer that knows nothing of the kept filter
    conn.execute("INSERT INTO instances (sop_instance_uid, path, status) VALUES ('1.2.3.999', '/x.dcm', 'present')")
    conn.close()
    assert filtersave.saved_path(db).read_bytes() == kept
    assert filtersave.take(db) is None
    assert not filtersave.saved_path(db).exists()


def test_an_index_with_a_write_ahead_log_is_not_at_rest(tmp_path: Path) -> None:
    db, f = _closed_index(tmp_path, UIDS)
    wal = db.with_name(db.name + ".wal")
    wal.write_bytes(b"")
    assert not filtersave.save(db, f)  # not saved for an index that is not closed
    assert not filtersave.saved_path(db).exists()
    wal.unlink()
    assert filtersave.save(db, f)
    wal.write_bytes(b"")  # a WAL appeared since: something wrote
    assert filtersave.take(db) is None


@pytest.mark.parametrize("damage", ["flip", "cut", "extra", "magic"])
def test_a_damaged_copy_is_not_used(tmp_path: Path, damage: str) -> None:
    db, f = _closed_index(tmp_path, UIDS)
    assert filtersave.save(db, f)
    path = filtersave.saved_path(db)
    data = bytearray(path.read_bytes())
    if damage == "flip":
        data[-100] ^= 0x10
    elif damage == "cut":
        del data[-1]
    elif damage == "extra":
        data += b"\0"
    else:
        data[0:8] = b"NOTMINE!"
    path.write_bytes(bytes(data))
    os.utime(db, ns=(db.stat().st_atime_ns, db.stat().st_mtime_ns))  # the index itself unchanged
    assert filtersave.take(db) is None
    assert not path.exists()


def test_opening_the_index_for_writing_drops_it(tmp_path: Path) -> None:
    db, f = _closed_index(tmp_path, UIDS)
    assert filtersave.save(db, f)
    schema.connect(db, read_only=True).close()
    assert filtersave.saved_path(db).exists()  # reading leaves it
    schema.connect(db).close()
    assert not filtersave.saved_path(db).exists()


def test_it_fits_only_an_index_it_took_every_row_of(tmp_path: Path) -> None:
    f = UidFilter(1000)
    for n in range(600):
        f.add(f"1.2.3.{n}")
    assert filtersave.fits(f, 600)
    assert not filtersave.fits(f, 601)  # more rows than UIDs it took
    g = UidFilter(1000)
    for n in range(700):
        g.add(f"1.2.3.{n}")
    assert not filtersave.fits(g, 700)  # no room to grow: a new one is sized for twice the rows


def test_a_restart_reads_the_kept_filter_and_still_finds_re_sends(tmp_path: Path) -> None:
    """serve, stop cleanly, serve again: the second start says the filter
    was kept (no fill), and a re-send of an instance stored by the first run
    is a duplicate; an index written between two runs makes the next one
    fill its filter again."""
    images = [tmp_path / f"img{n}.dcm" for n in range(6)]
    uids = [str(make_image(path, n, study=n % 2).SOPInstanceUID) for n, path in enumerate(images)]
    storage = tmp_path / "store"
    first = Server(storage, tmp_path / "first.log", [])
    try:
        assert [r[1] for r in run_storescu(first, images[:4])] == ["Success"] * 4
    finally:
        assert first.stop() == 0
    log = first.log_text()
    assert "duplicate check filter kept for the next start" in log, log
    assert filtersave.saved_path(first.index_db).is_file()

    second = Server(storage, tmp_path / "second.log", [])
    try:
        text = second.indexed().log_text()  # the start-up thread's end: a fill would have logged before it
        assert "duplicate check filter of" in text and "kept by the last clean stop" in text, text
        assert "duplicate check ready" not in text, text  # no fill
        assert not filtersave.saved_path(second.index_db).exists()  # taken
        assert [r[1] for r in run_storescu(second, images[2:])] == ["Success"] * 4
        text = second.log_once_it_says(f"duplicate {uids[2]}", f"duplicate {uids[3]}")
        assert f"duplicate {uids[2]}" in text and f"duplicate {uids[3]}" in text, text
        assert f"duplicate {uids[4]}" not in text and f"duplicate {uids[5]}" not in text, text
    finally:
        assert second.stop() == 0
    assert filtersave.saved_path(second.index_db).is_file()

    # another writer between two runs (reindex does this with schema.connect)
    done = subprocess.run([sys.executable, "-m", "fastscp.cli", "reindex", "--storage-dir", str(storage),
                           "--index-db", str(second.index_db)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert not filtersave.saved_path(second.index_db).exists()
    third = Server(storage, tmp_path / "third.log", [])
    try:
        text = third.indexed().log_text()  # the start-up thread's end: after its fill
        assert "filled after the port opens" in text and "duplicate check ready: 6 indexed instances" in text, text
    finally:
        assert third.stop() == 0


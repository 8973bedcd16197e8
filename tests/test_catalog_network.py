"""The index against real floods: what dcmtk storescu sent is exactly what
the catalog holds, and a SIGKILL mid-flood is repaired by reconcile."""

from __future__ import annotations

import contextlib
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import duckdb
import pydicom
import pytest
import xxhash

from conftest import dataset_bytes, dcmtk, make_image
from fastscp.storage.duplicates import file_content_hash
from test_interop import run_storescu

pytestmark = pytest.mark.interop


def _rows(db: Path, sql: str) -> list[tuple]:  # type: ignore[type-arg]
    with duckdb.connect(str(db), read_only=True) as conn:
        return conn.execute(sql).fetchall()


def test_flood_is_indexed_exactly(start_server, synthetic_corpus: list[Path]) -> None:  # type: ignore[no-untyped-def]
    srv = start_server()
    results = run_storescu(srv, synthetic_corpus)
    assert [r[1] for r in results] == ["Success"] * len(synthetic_corpus)
    assert srv.stop() == 0  # clean shutdown flushes the writer
    rows = _rows(srv.index_db, """
        SELECT i.sop_instance_uid, i.path, i.study_instance_uid, i.series_instance_uid, i.patient_id,
               i.instance_number, i."rows", i.calling_ae, se.modality, p.patient_name, i.file_size, i.content_hash
        FROM instances i JOIN series se USING (series_instance_uid) JOIN patients p USING (patient_id)""")
    assert len(rows) == len(synthetic_corpus)
    by_uid = {r[0]: r for r in rows}
    for f in synthetic_corpus:
        ds = pydicom.dcmread(f, stop_before_pixels=True)
        row = by_uid[str(ds.SOPInstanceUID)]
        assert Path(row[1]).is_file() and Path(row[1]).stat().st_size == row[10]
        assert row[2:10] == (ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.PatientID, ds.InstanceNumber, ds.Rows,
                             "STORESCU", ds.Modality, str(ds.PatientName))
        assert len(row[11]) == 32  # xxh3-128 hex
    assert _rows(srv.index_db, "SELECT count(*) FROM studies")[0][0] == 6
    assoc = _rows(srv.index_db, "SELECT instances, outcome FROM associations")
    assert assoc == [(len(synthetic_corpus), "released")]


def test_sigkill_mid_flood_then_reconcile(start_server, synthetic_corpus: list[Path], tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    srv = start_server()
    parts = [synthetic_corpus[i::2] for i in range(2)]
    procs = [subprocess.Popen([dcmtk("storescu"), "-v", "-aec", srv.ae_title, "127.0.0.1", str(srv.port), *map(str, part)],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for part in parts]
    deadline = time.monotonic() + 60
    while len(srv.stored_files()) < 60 and time.monotonic() < deadline:
        time.sleep(0.02)
    srv.proc.send_signal(signal.SIGKILL)
    srv.proc.wait()
    outs = [p.communicate(timeout=60)[0] for p in procs]
    acknowledged = sum(o.count("Received Store Response (Success)") for o in outs)
    assert 0 < acknowledged < len(synthetic_corpus)
    on_disk = srv.stored_files()
    assert len(on_disk) >= acknowledged
    # restart on the same storage and index: reconcile runs at start
    again = start_server("--storage-dir", str(srv.storage), "--index-db", str(srv.index_db))
    assert not srv.incoming()  # same storage directory: leftovers swept at start
    # reconcile runs in the background once the port is open
    assert "reconciled" in again.log_once_it_says("reconciled", timeout=60)
    assert again.stop() == 0
    present = {r[0] for r in _rows(srv.index_db, "SELECT path FROM instances WHERE status = 'present'")}
    assert present == {str(p) for p in srv.stored_files()}
    for path in present:
        pydicom.dcmread(path)  # complete and parseable


def test_locked_index_does_not_stop_reception(start_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Another process holds the DuckDB file: instances are still stored and
    acknowledged, the failure is logged and shown in /status, and the next
    start indexes them."""
    import json
    import urllib.request

    from conftest import free_port, make_image

    db = tmp_path / "locked.db"
    with held_duckdb(db):
        status_port = free_port()
        srv = start_server("--index-db", str(db), "--status-port", str(status_port))
        image = tmp_path / "one.dcm"
        ds = make_image(image, 1, study=1)
        assert [r[1] for r in run_storescu(srv, [image])] == ["Success"]
        assert len(srv.stored_files()) == 1
        req = urllib.request.Request(f"http://127.0.0.1:{status_port}/status", headers={
            "Authorization": "Bearer " + (srv.storage / ".status" / "token").read_text().strip()})
        doc = json.load(urllib.request.urlopen(req, timeout=10))
        assert any("index unavailable" in w for w in doc["warnings"])
        assert "receiving WITHOUT indexing" in srv.log_text()
        assert srv.stop() == 0
    again = start_server("--storage-dir", str(srv.storage), "--index-db", str(db))
    assert "reconciled" in again.log_once_it_says("reconciled", timeout=60)  # in the background, after listening
    assert again.stop() == 0
    assert _rows(db, "SELECT sop_instance_uid FROM instances") == [(str(ds.SOPInstanceUID),)]


@contextlib.contextmanager
def held_duckdb(db: Path) -> Iterator[None]:
    """Another process holds the DuckDB file ``db`` open for the block."""
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    ready, release = ctx.Event(), ctx.Event()
    holder = ctx.Process(target=_hold_duckdb, args=(str(db), ready, release))
    holder.start()
    try:
        assert ready.wait(30)
        yield
    finally:
        release.set()
        holder.join(30)


def _hold_duckdb(path: str, ready, release) -> None:  # type: ignore[no-untyped-def]
    conn = duckdb.connect(path)
    conn.execute("CREATE TABLE IF NOT EXISTS holder (x INTEGER)")
    ready.set()
    release.wait(60)
    conn.close()


def test_large_instances_in_small_pdus_are_stored_and_hashed_exactly(start_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """16 KiB PDUs (dcmtk's and pynetdicom's default): the PDVs between the
    first and the last of a data set are written in the framer, without
    events (``PDUFramer.sink_dataset``). The files hold exactly what was
    sent, and the index's content hash is that of the stored data set,
    computed again from the file."""
    corpus = []
    for i, size in enumerate((128, 256, 512, 64)):  # 32 KiB to 512 KiB of pixels; the last one PDV
        path = tmp_path / f"big{i}.dcm"
        make_image(path, i, study=1, size=size)
        corpus.append(path)
    srv = start_server("--max-pdu", "16384")
    results = run_storescu(srv, corpus)
    assert [r[1] for r in results] == ["Success"] * len(corpus)
    assert srv.stop() == 0
    by_uid = {r[0]: r for r in _rows(srv.index_db, "SELECT sop_instance_uid, path, content_hash FROM instances")}
    assert len(by_uid) == len(corpus)
    for f in corpus:
        uid = str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID)
        _, stored, digest = by_uid[uid]
        assert dataset_bytes(stored) == dataset_bytes(f)
        assert digest == file_content_hash(Path(stored)) == xxhash.xxh3_128(dataset_bytes(f)).hexdigest()

"""CatalogWriter: flush by size, by time, at close; retry after errors;
backpressure; upsert semantics; reads from another thread while writing."""

from __future__ import annotations

import dataclasses
import datetime
import threading
import time
import weakref
from pathlib import Path

import duckdb
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_catalog_support import make_info

from fastscp.catalog import CatalogWriter, run_readonly_query, schema
from fastscp.catalog.rows import APPEND_CHUNK, BatchWriter, utc_timestamp
from fastscp.catalog.writer import batch_wait


def wait_for(pred, timeout: float = 10.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(0.01)
    return pred()


def count(db: Path, sql: str = "SELECT count(*) FROM instances") -> int:
    conn = duckdb.connect(str(db), read_only=True)
    try:
        return conn.execute(sql).fetchone()[0]
    finally:
        conn.close()


def test_flushes_by_size_before_the_interval(tmp_path):
    w = CatalogWriter(tmp_path / "i.db", batch_size=50, flush_interval=3600, flush_quiet=3600)
    for i in range(100):
        w.enqueue(make_info(i))
    # Two full batches are written long before the hour-long interval.
    assert wait_for(lambda: w.rows_written == 100)
    assert w.batches_written >= 2 and w.last_batch_rows <= 50
    # Fewer than a batch: nothing is written until the interval (or close).
    for i in range(100, 110):
        w.enqueue(make_info(i))
    time.sleep(0.3)
    c = w.counters()
    assert c.rows_written == 100 and c.queue_depth == 10
    assert w.close()
    assert count(tmp_path / "i.db") == 110


def test_flushes_by_time_below_the_batch_size(tmp_path):
    w = CatalogWriter(tmp_path / "i.db", batch_size=10_000, flush_interval=0.05)
    for i in range(5):
        w.enqueue(make_info(i))
    assert wait_for(lambda: w.rows_written == 5)
    c = w.counters()
    assert c.batches_written == 1 and c.last_batch_rows == 5 and c.queue_depth == 0
    w.close()


def test_batch_wait_is_due_at_the_pause_or_the_interval_whichever_is_sooner():
    # rows began at t=10, last grew at t=11; interval 5 s, quiet 0.25 s
    assert batch_wait(11.0, 10.0, 11.0, 5.0, 0.25) == pytest.approx(0.25)
    assert batch_wait(11.2, 10.0, 11.0, 5.0, 0.25) == pytest.approx(0.05)
    assert batch_wait(11.3, 10.0, 11.0, 5.0, 0.25) < 0  # the senders paused: write
    # still growing at t=14.9: the interval since the first row decides
    assert batch_wait(14.9, 10.0, 14.9, 5.0, 0.25) == pytest.approx(0.1)
    assert batch_wait(15.0, 10.0, 14.95, 5.0, 0.25) <= 0


def test_a_pause_of_the_senders_writes_a_partial_batch_before_the_interval(tmp_path):
    written = threading.Event()
    w = CatalogWriter(tmp_path / "i.db", batch_size=10_000, flush_interval=3600, flush_quiet=0.05)
    w.on_written = lambda infos: written.set()
    for i in range(20):
        w.enqueue(make_info(i))
    assert written.wait(30)  # not the hour-long interval
    assert w.counters().rows_written == 20
    assert w.close()


def test_flush_writes_at_once_whatever_the_interval_and_the_pause(tmp_path):
    w = CatalogWriter(tmp_path / "i.db", batch_size=10_000, flush_interval=3600, flush_quiet=3600)
    for i in range(20):
        w.enqueue(make_info(i))
    assert w.flush(30) and w.rows_written == 20 and w.batches_written == 1
    assert w.flush(30)  # nothing queued: returns at once
    w.enqueue(make_info(20))
    assert w.flush(30) and w.rows_written == 21 and w.batches_written == 2
    assert w.close()


def test_close_flushes_everything_and_records_associations(tmp_path):
    db = tmp_path / "i.db"
    w = CatalogWriter(db, batch_size=10_000, flush_interval=3600, flush_quiet=3600)
    for i in range(300):
        w.enqueue(make_info(i, study=i % 3, series=i % 2))
    w.record_association("assoc-1", "10.0.0.5:4000", "SCU1", "FASTSCP", 1_700_000_000.0,
                         1_700_000_010.5, 300, 300_000, "released")
    assert w.rows_written == 0
    assert w.close()
    assert count(db) == 300
    assert count(db, "SELECT count(*) FROM studies") == 3
    assert count(db, "SELECT count(*) FROM series") == 6
    conn = duckdb.connect(str(db), read_only=True)
    row = conn.execute("SELECT peer, calling_ae, instances, bytes, outcome, "
                       "epoch(ended_at) - epoch(started_at) FROM associations").fetchall()
    conn.close()
    assert row == [("10.0.0.5:4000", "SCU1", 300, 300_000, "released", pytest.approx(10.5))]
    with pytest.raises(RuntimeError):
        w.enqueue(make_info(1))


def test_row_attributes_round_trip(tmp_path):
    db = tmp_path / "i.db"
    info = make_info(7, study=2, series=1, calling_ae="CT_SCANNER", received_at=1_700_000_000.25)
    with CatalogWriter(db) as w:
        w.enqueue(info)
    conn = duckdb.connect(str(db), read_only=True)
    got = conn.execute(
        """SELECT i.sop_instance_uid, i.path, i.file_size, i.content_hash, i.calling_ae,
                  epoch(i.received_at), i."rows", i.status, i.source,
                  st.study_date, st.accession_number, se.modality, p.birth_date
           FROM instances i JOIN studies st USING (study_instance_uid)
           JOIN series se USING (series_instance_uid) JOIN patients p ON p.patient_id = i.patient_id"""
    ).fetchall()
    conn.close()
    assert len(got) == 1
    r = got[0]
    assert r[:5] == (info.sop_instance_uid, info.path, info.file_size, info.content_hash, "CT_SCANNER")
    assert r[5] == pytest.approx(1_700_000_000.25)
    assert r[6:9] == (512, "present", "received")
    assert str(r[9]) == "2024-01-31" and r[10] == "ACC2" and r[11] == "CT" and str(r[12]) == "1970-01-01"


def test_in_one_batch_the_last_instance_of_a_patient_study_and_series_gives_its_row(tmp_path):
    """The patient, study and series rows are made once per key and batch,
    from the last instance of that key, as a later batch would set them."""
    db = tmp_path / "i.db"
    first = make_info(1, study=3, series=1)
    last = dataclasses.replace(make_info(2, study=3, series=1), patient_name="Doe^Later",
                               study_description="Chest later", series_description="Axial later")
    conn = schema.connect(db)
    try:
        BatchWriter(conn).write([first, make_info(3, study=4), last])
        got = conn.execute(
            """SELECT p.patient_name, st.study_description, se.series_description
               FROM studies st JOIN series se USING (study_instance_uid) JOIN patients p USING (patient_id)
               WHERE st.study_instance_uid = ?""", [first.study_instance_uid]).fetchall()
        counts = conn.execute("SELECT (SELECT count(*) FROM patients), (SELECT count(*) FROM studies), "
                              "(SELECT count(*) FROM series)").fetchone()
    finally:
        conn.close()
    assert got == [("Doe^Later", "Chest later", "Axial later")]
    assert counts == (2, 2, 2)


def test_same_sop_instance_twice_keeps_the_last_reception(tmp_path):
    db = tmp_path / "i.db"
    with CatalogWriter(db, batch_size=10_000, flush_interval=3600, flush_quiet=3600) as w:
        first = make_info(1, path="/s/a.dcm")
        second = dataclasses.replace(make_info(1, path="/s/b.dcm"), duplicate="overwritten")
        w.enqueue(first)
        w.enqueue(second)  # same batch
        assert w.flush(10)
        third = make_info(1, path="/s/c.dcm")
        w.enqueue(third)  # later batch: an upsert over the stored row
    conn = duckdb.connect(str(db), read_only=True)
    rows = conn.execute("SELECT path, duplicate FROM instances").fetchall()
    conn.close()
    assert rows == [("/s/c.dcm", "")]


class FlakyConnection:
    """A real DuckDB connection whose ``begin`` fails the first ``failures`` times
    (``dead``: every statement fails too, as after a fatal error)."""

    def __init__(self, real: duckdb.DuckDBPyConnection, failures: int, dead: bool = False):
        self._real = real
        self.failures = failures
        self.dead = dead

    def begin(self):
        if self.failures > 0:
            self.failures -= 1
            raise duckdb.IOException("injected: disk unwritable")
        return self._real.begin()

    def execute(self, *a, **k):
        if self.dead:
            raise duckdb.ConnectionException("injected: connection invalidated")
        return self._real.execute(*a, **k)

    def __getattr__(self, name):
        return getattr(self._real, name)


def test_failed_batches_are_retried_not_lost(tmp_path, caplog):
    db = tmp_path / "i.db"
    w = CatalogWriter(db, batch_size=100, flush_interval=0.02, retry_initial=0.01,
                      connect=lambda: FlakyConnection(schema.connect(db), failures=3))
    for i in range(250):
        w.enqueue(make_info(i))
    assert w.flush(20)
    c = w.counters()
    assert c.errors == 3 and "injected" in c.last_error and c.retry_rows == 0
    assert c.rows_written == 250
    assert w.close()
    assert count(db) == 250
    assert "retrying" in caplog.text


def test_broken_connection_is_reopened(tmp_path):
    db = tmp_path / "i.db"
    made: list[FlakyConnection] = []

    def connect():
        # first connection: dead after construction; later ones healthy
        conn = FlakyConnection(schema.connect(db), failures=1 if not made else 0, dead=not made)
        made.append(conn)
        return conn

    w = CatalogWriter(db, batch_size=10, flush_interval=0.02, retry_initial=0.01, connect=connect)
    for i in range(25):
        w.enqueue(make_info(i))
    assert w.flush(20)
    assert len(made) == 2 and w.errors >= 1
    assert w.close()
    assert count(db) == 25


def test_backpressure_flag_and_resume_callback(tmp_path):
    db = tmp_path / "i.db"
    gate = threading.Event()
    entered = threading.Event()

    class Gated(FlakyConnection):
        def begin(self):
            entered.set()
            gate.wait(10)
            return self._real.begin()

    resumed = threading.Event()
    w = CatalogWriter(db, batch_size=1000, flush_interval=0.01, high_water=10, low_water=5,
                      on_resume=resumed.set, connect=lambda: Gated(schema.connect(db), 0))
    assert w.enqueue(make_info(0)) is True
    assert entered.wait(10)  # the writer is now stuck in its first batch
    answers = [w.enqueue(make_info(i)) for i in range(1, 12)]
    assert answers[:9] == [True] * 9 and answers[9:] == [False, False]  # depth 10 and 11
    assert w.is_full and w.counters().over_high_water
    gate.set()
    assert resumed.wait(10)
    assert not w.is_full
    assert w.close()
    assert count(db) == 12


def test_readonly_queries_from_another_thread_while_writing(tmp_path):
    db = tmp_path / "i.db"
    w = CatalogWriter(db, batch_size=100, flush_interval=0.01)
    results: list[int] = []

    def reader():
        cur = w.cursor()
        for _ in range(20):
            cols, rows = run_readonly_query(cur, "SELECT count(*) AS n FROM instances")
            assert cols == ["n"]
            results.append(rows[0][0])
            time.sleep(0.005)
        cur.close()

    t = threading.Thread(target=reader)
    t.start()
    for i in range(2000):
        w.enqueue(make_info(i))
    t.join()
    w.close()
    assert results == sorted(results)  # counts only grow
    assert count(db) == 2000


def test_a_batch_reaches_the_appender_in_chunks_so_the_event_loop_runs_between(tmp_path, monkeypatch):
    """The appender holds the GIL while it converts the rows of one call:
    a batch goes in calls of at most APPEND_CHUNK rows, and all of it
    still lands in one transaction."""
    CatalogWriter(tmp_path / "i.db").close()  # the schema
    conn = duckdb.connect(str(tmp_path / "i.db"))
    batch = BatchWriter(conn)
    calls: dict[str, list[int]] = {}
    real = batch._appender

    class Counting:
        def __init__(self, app, table):
            self.app, self.table = app, table

        def append_rows(self, rows_):
            calls.setdefault(self.table, []).append(len(rows_))
            self.app.append_rows(rows_)

        def __getattr__(self, name):
            return getattr(self.app, name)

    monkeypatch.setattr(batch, "_appender", lambda table, upsert=True: Counting(real(table, upsert), table))
    chunk = APPEND_CHUNK
    n = 2 * chunk + 7
    batch.write([make_info(i, study=i) for i in range(n)])
    assert calls["instances"] == [chunk, chunk, 7]
    assert calls["studies"] == [chunk, chunk, 7]
    assert conn.execute("SELECT count(*) FROM instances").fetchone()[0] == n
    assert conn.execute("SELECT count(*) FROM studies").fetchone()[0] == n
    conn.close()


def test_a_dropped_re_send_updates_the_row_and_a_later_stored_copy_supersedes_it(tmp_path):
    """docs/catalog.md: the row names the last reception of the UID. A
    re-send the policy dropped takes the reception columns and outcome; the
    copy in the tree (path, hash) stays. In one batch, a stored copy that
    follows the dropped one wins."""
    db = tmp_path / "i.db"
    first = dataclasses.replace(make_info(0), calling_ae="FIRST", path="/x/1.dcm", content_hash="aa")
    dropped = dataclasses.replace(make_info(0), calling_ae="AGAIN", path="/x/1.dcm", duplicate="ignored")
    with CatalogWriter(db, batch_size=100, flush_interval=0.05) as w:
        w.enqueue(first)
        w.record_duplicate(dropped)
        assert w.flush(10)
        row = w.cursor().execute("SELECT calling_ae, duplicate, path, content_hash FROM instances").fetchall()
        assert row == [("AGAIN", "ignored", "/x/1.dcm", "aa")]

        again = dataclasses.replace(make_info(0), calling_ae="AGAIN", duplicate="identical")
        overwrite = dataclasses.replace(make_info(0), calling_ae="FIXER", path="/x/1b.dcm", content_hash="bb",
                                        duplicate="overwritten")
        w.record_duplicate(again)
        w.enqueue(overwrite)
        assert w.flush(10)
        row = w.cursor().execute("SELECT calling_ae, duplicate, path, content_hash FROM instances").fetchall()
        assert row == [("FIXER", "overwritten", "/x/1b.dcm", "bb")]


def test_a_written_batch_is_not_held_while_the_queue_refills(tmp_path):
    """Once a batch is committed the writer keeps none of its instances
    (they were held till the next batch replaced them: up to 5000 InstanceInfo
    of about 2.3 KB each, issue 23). Only weak references are kept here."""
    w = CatalogWriter(tmp_path / "i.db", batch_size=50, flush_interval=3600, flush_quiet=3600)
    refs = []
    for i in range(50):
        info = make_info(i)
        refs.append(weakref.ref(info))
        w.enqueue(info)
    del info
    assert w.flush(20) and w.rows_written == 50
    # the thread lets go of the batch just after counting it done
    assert wait_for(lambda: all(r() is None for r in refs), 5.0), sum(r() is not None for r in refs)
    assert w.close()
    assert count(tmp_path / "i.db") == 50


def test_a_quiet_spell_folds_a_large_enough_wal_into_the_file(tmp_path):
    checkpointed = threading.Event()
    w = CatalogWriter(tmp_path / "i.db", batch_size=10_000, flush_interval=3600, flush_quiet=3600,
                      quiet_checkpoint=0.05, quiet_checkpoint_wal=1)
    w.on_checkpoint = checkpointed.set
    for i in range(50):
        w.enqueue(make_info(i))
    assert w.flush(30)
    assert checkpointed.wait(30)  # after the quiet spell, not at close
    assert w.checkpoints == 1
    assert not w.wal_path.exists() or w.wal_path.stat().st_size == 0
    cur = w.cursor()
    assert cur.execute("SELECT count(*) FROM instances").fetchone()[0] == 50
    cur.close()
    assert w.close()


def test_a_wal_under_the_threshold_or_the_setting_off_is_left_alone(tmp_path):
    # quiet_checkpoint 0: the writer thread never checkpoints; the decision is called here
    w = CatalogWriter(tmp_path / "i.db", batch_size=10_000, flush_interval=3600, flush_quiet=3600,
                      quiet_checkpoint=0, quiet_checkpoint_wal=1 << 40)
    for i in range(50):
        w.enqueue(make_info(i))
    assert w.flush(30)
    size = w.wal_path.stat().st_size
    assert size > 0
    w._checkpoint_if_due()  # under the threshold
    assert w.checkpoints == 0 and w.wal_path.stat().st_size == size
    w.quiet_checkpoint_wal = size
    w._checkpoint_if_due()  # at it
    assert w.checkpoints == 1
    assert not w.wal_path.exists() or w.wal_path.stat().st_size == 0
    assert w.close()


def _memory_limit(conn: duckdb.DuckDBPyConnection) -> str:
    row = conn.execute("SELECT current_setting('memory_limit')").fetchone()
    assert row is not None
    return str(row[0])


def test_memory_limit_bounds_the_index_for_every_connection_of_the_writer(tmp_path):
    """database.memory_limit reaches DuckDB: the writer's connection and the
    cursors the queries use (the status page's SQL, C-FIND) share it."""
    with CatalogWriter(tmp_path / "i.db", memory_limit=64 * 1024 * 1024) as w:
        w.enqueue(make_info(1))
        assert w.flush()
        cur = w.cursor()
        assert _memory_limit(cur) == "64.0 MiB"
        cur.close()
    conn = schema.connect(tmp_path / "j.db")
    default = _memory_limit(conn)
    conn.close()
    assert default != "64.0 MiB"  # without it, DuckDB's own (80% of RAM)


def test_a_query_needing_more_than_the_memory_limit_spills_and_answers(tmp_path):
    """A hash aggregate over more distinct keys than the bound holds goes to
    <index>.tmp/ rather than failing (lock_down leaves DuckDB's own
    temporary files alone)."""
    conn = schema.connect(tmp_path / "i.db", memory_limit=32 * 1024 * 1024)
    try:
        assert _memory_limit(conn) == "32.0 MiB"
        row = conn.execute("SELECT count(*) FROM (SELECT DISTINCT 'uid.' || i::VARCHAR || repeat('x', 40) "
                           "FROM range(1500000) t(i))").fetchone()
        assert row == (1_500_000,)
    finally:
        conn.close()


def test_the_servers_index_gets_database_memory_limit(tmp_path):
    from fastscp.app import build_state, open_catalog
    from fastscp.config import load_config

    cfg = load_config(None, {"storage.directory": str(tmp_path / "s"), "database.path": str(tmp_path / "i.db"),
                             "database.memory_limit": "48MiB"})
    writer = open_catalog(cfg, build_state(cfg))
    assert writer is not None
    try:
        cur = writer.cursor()
        assert _memory_limit(cur) == "48.0 MiB"
        cur.close()
    finally:
        writer.close()


@given(st.one_of(st.floats(min_value=1e-6, max_value=2**34, allow_nan=False),
                 st.integers(min_value=1, max_value=2**34).map(lambda s: s + 0.5e-6),
                 st.integers(min_value=1, max_value=2**34 * 10**6).map(lambda us: us / 1e6)))
@settings(max_examples=2000, deadline=None)
def test_utc_timestamp_is_fromtimestamp_without_its_zone(epoch):
    """The writer's quick epoch -> TIMESTAMP conversion gives what
    ``datetime.fromtimestamp(epoch, UTC)`` gives, rounding included (half
    microseconds, values from the clock's microsecond grid); 0 and None
    stay None."""
    expected = datetime.datetime.fromtimestamp(epoch, datetime.timezone.utc).replace(tzinfo=None)
    assert utc_timestamp(epoch) == expected
    assert utc_timestamp(0) is None and utc_timestamp(None) is None

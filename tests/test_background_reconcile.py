"""``fastscp serve`` listens before it reconciles the index with the tree, and
the duplicate check holds meanwhile.

Unit level: ``reconcile(..., live=WhileReceiving(since, ...))`` leaves what
this run stored to the receiver. Network level: a real ``App`` runs in a
thread of this process, with the background step it is tested in held on an
Event (so "before it finished" is certain, not a race), and dcmtk's storescu
sends to it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import importlib
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import duckdb
import pydicom
import pytest
from conftest import dcmtk, free_port, make_image
from test_catalog_support import make_info, write_instance
from test_interop import store_responses

from fastscp.app import App
from fastscp.catalog import ReconcileStopped, WhileReceiving, filtersave, reconcile, schema
from fastscp.catalog.rows import BatchWriter
from fastscp.config import load_config
from fastscp.storage.duplicates import IndexedInstances

startup_module = importlib.import_module("fastscp.catalog.startup")


def rows(db: Path, sql: str, params: list[Any] | None = None) -> list[tuple[Any, ...]]:
    conn = duckdb.connect(str(db), read_only=True)
    try:
        return conn.execute(sql, params or []).fetchall()
    finally:
        conn.close()


# ---- reconcile while the receiver stores --------------------------------------------------------


def _old(path: Path, seconds: float = 3600) -> Path:
    t = time.time() - seconds
    os.utime(path, (t, t))
    return path


def test_reconcile_while_receiving_leaves_this_runs_rows_and_files_to_the_receiver(tmp_path: Path) -> None:
    root = (tmp_path / "store").resolve()
    old_file = _old(write_instance(root / "old" / "1.dcm", "1.2.826.0.1.3680043.9.60.1"))
    since = time.time()
    new_file = write_instance(root / "new" / "2.dcm", "1.2.826.0.1.3680043.9.60.2")  # stored by this run
    conn = schema.connect(tmp_path / "i.db")
    # rows whose files are not in the tree: one from a past run, one this run wrote
    # (its file came after the walk passed its folder, say)
    past = make_info(1, path=str(root / "past" / "gone.dcm"), received_at=since - 600)
    ours = make_info(2, path=str(root / "late" / "fresh.dcm"), received_at=since + 1)
    BatchWriter(conn).write([past, ours])
    indexed: list[str] = []
    report = reconcile(root, conn, workers=1, progress=False, live=WhileReceiving(since, indexed.extend))
    assert report.indexed == 1 and report.left_to_receiver == 1
    assert indexed == ["1.2.826.0.1.3680043.9.60.1"]
    status = dict(conn.execute("SELECT path, status FROM instances").fetchall())
    assert status[str(old_file)] == "present"
    assert str(new_file) not in status  # the receiver's writer indexes it
    assert status[past.path] == "missing"
    assert status[ours.path] == "present"
    conn.close()


def test_a_file_stamped_a_clock_tick_before_since_is_still_the_receivers(tmp_path: Path) -> None:
    """File times come from the kernel's coarse clock, which lags time.time()."""
    root = (tmp_path / "store").resolve()
    since = time.time()
    path = write_instance(root / "new" / "1.dcm", "1.2.826.0.1.3680043.9.65.1")
    os.utime(path, (since - 0.01, since - 0.01))  # written after since, stamped a tick "before"
    conn = schema.connect(tmp_path / "i.db")
    report = reconcile(root, conn, workers=1, progress=False, live=WhileReceiving(since))
    assert report.left_to_receiver == 1 and report.indexed == 0
    conn.close()


def test_reconcile_without_live_indexes_every_file_as_before(tmp_path: Path) -> None:
    root = (tmp_path / "store").resolve()
    write_instance(root / "a" / "1.dcm", "1.2.826.0.1.3680043.9.61.1")
    conn = schema.connect(tmp_path / "i.db")
    gone = make_info(2, path=str(root / "x" / "gone.dcm"), received_at=time.time() + 60)
    BatchWriter(conn).write([gone])
    report = reconcile(root, conn, workers=1, progress=False)
    assert report.indexed == 1 and report.left_to_receiver == 0 and report.marked_missing == 1
    conn.close()


def test_a_file_whose_uid_this_run_stored_elsewhere_is_a_conflict_not_indexed(tmp_path: Path) -> None:
    """The re-send went to another path before reconcile reached the old file:
    the index keeps the row of the copy the sender was answered for."""
    root = (tmp_path / "store").resolve()
    uid = "1.2.826.0.1.3680043.9.62.1"
    old_file = _old(write_instance(root / "old" / "1.dcm", uid))
    since = time.time()
    conn = schema.connect(tmp_path / "i.db")
    resent = dataclasses.replace(make_info(1, path=str(root / "new" / "1.dcm"), received_at=since + 1),
                                 sop_instance_uid=uid)
    BatchWriter(conn).write([resent])
    report = reconcile(root, conn, workers=1, progress=False, live=WhileReceiving(since))
    assert report.conflicts == 1 and report.indexed == 0
    assert str(old_file) in report.problems[0] and resent.path in report.problems[0]
    assert conn.execute("SELECT path FROM instances").fetchall() == [(resent.path,)]
    conn.close()


def test_a_file_the_writer_indexed_meanwhile_is_no_conflict(tmp_path: Path) -> None:
    root = (tmp_path / "store").resolve()
    uid = "1.2.826.0.1.3680043.9.63.1"
    path = _old(write_instance(root / "a" / "1.dcm", uid))
    conn = schema.connect(tmp_path / "i.db")
    row = dataclasses.replace(make_info(1, path=str(path)), sop_instance_uid=uid)

    real = importlib.import_module("fastscp.catalog.reconcile")._write_new

    def writer_first(c, writer, infos, report, live=None):  # type: ignore[no-untyped-def]
        BatchWriter(c).write([row])  # the receiver's row lands between the walk and the write
        real(c, writer, infos, report, live)

    mp = pytest.MonkeyPatch()
    mp.setattr(importlib.import_module("fastscp.catalog.reconcile"), "_write_new", writer_first)
    try:
        report = reconcile(root, conn, workers=1, progress=False)
    finally:
        mp.undo()
    assert report.conflicts == 0 and report.indexed == 0
    assert conn.execute("SELECT path, source FROM instances").fetchall() == [(str(path), "received")]
    conn.close()


def test_reconcile_stops_when_asked(tmp_path: Path) -> None:
    root = (tmp_path / "store").resolve()
    for i in range(3):
        _old(write_instance(root / f"{i}.dcm", f"1.2.826.0.1.3680043.9.64.{i}"))
    conn = schema.connect(tmp_path / "i.db")
    live = WhileReceiving(time.time())
    live.stop.set()
    with pytest.raises(ReconcileStopped):
        reconcile(root, conn, workers=1, progress=False, live=live)
    assert conn.execute("SELECT count(*) FROM instances").fetchone() == (0,)
    conn.close()


# ---- a real receiver, with its background step held ------------------------------------------


class LogWatch(logging.Handler):
    """Sets an Event for each awaited text once a log record contains it."""

    def __init__(self, *texts: str) -> None:
        super().__init__(logging.DEBUG)
        self.seen = {t: threading.Event() for t in texts}
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        self.lines.append(text)
        for t, event in self.seen.items():
            if t in text:
                event.set()


@dataclasses.dataclass
class Running:
    app: App
    port: int
    thread: threading.Thread
    watch: LogWatch


class Held:
    """Wraps a function of the start-up module: each call sets ``entered``
    and waits for ``release`` before it runs."""

    def __init__(self, real: Callable[..., Any]) -> None:
        self.real = real
        self.entered = threading.Event()
        self.release = threading.Event()

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.entered.set()
        assert self.release.wait(120), "never released"
        return self.real(*args, **kwargs)


@pytest.fixture
def in_process() -> Iterator[Callable[..., Running]]:
    running: list[Running] = []
    switch = sys.getswitchinterval()
    logger = logging.getLogger("fastscp")
    level = logger.level
    logger.setLevel(logging.INFO)  # serve's logging set-up is not run here

    def start(storage: Path, index: Path, **settings: Any) -> Running:
        port = free_port()
        overrides = {"server.port": port, "server.ae_title": "FASTSCP", "storage.directory": str(storage),
                     "database.path": str(index), "status.port": 0, "database.flush_interval": 0.1, **settings}
        watch = LogWatch("reconciled", "duplicate check ready", "stopped:")
        logging.getLogger("fastscp").addHandler(watch)
        app = App(load_config(None, overrides), None, overrides)
        thread = threading.Thread(target=lambda: asyncio.run(app.run()), daemon=True)
        thread.start()
        r = Running(app, port, thread, watch)
        running.append(r)
        return r

    yield start
    for r in running:
        r.app.request_stop()
        r.thread.join(60)
        logger.removeHandler(r.watch)
    logger.setLevel(level)
    sys.setswitchinterval(switch)


def storescu(port: int, files: list[Path]) -> list[str]:
    cmd = [dcmtk("storescu"), "-v", "-nh", "-aec", "FASTSCP", "127.0.0.1", str(port), *map(str, files)]
    out = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=120).stdout
    return [status for _, status in store_responses(out)]


def wait_listening(r: Running) -> None:
    import socket

    deadline = time.monotonic() + 30
    while True:
        assert r.thread.is_alive(), "the receiver stopped"
        try:
            with socket.create_connection(("127.0.0.1", r.port), timeout=1):
                return
        except OSError:
            assert time.monotonic() < deadline, "not listening"
            time.sleep(0.02)


def changed_copy(image: Path, where: Path) -> Path:
    """``image`` with other content and the same SOP Instance UID (and the
    same attributes the naming schemes use): under ``reject``, a duplicate
    is answered 0xCD01; an identical copy would be Success either way."""
    ds = pydicom.dcmread(image)
    ds.ImageComments = "changed"
    ds.save_as(where, enforce_file_format=True)
    return where


def first_run(tmp_path: Path, files: list[Path], *flags: str) -> Path:
    """Store ``files`` with a real ``fastscp serve`` (its own index, then
    removed unless kept by the caller); returns the storage tree."""
    from conftest import Server

    srv = Server(tmp_path / "store", tmp_path / "first.log", list(flags))
    try:
        assert storescu(srv.port, files) == ["Success"] * len(files)
        srv.log_once_it_says("reconciled", timeout=60)
    finally:
        assert srv.stop() == 0
    return srv.storage


@pytest.mark.interop
def test_the_port_opens_before_reconcile_and_a_re_send_of_an_unindexed_file_is_a_duplicate(
        tmp_path: Path, in_process, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    """A tree whose index is new (lost, say): reconcile has not read a file
    yet when the same instance comes again; it is a duplicate all the same
    (it is where the naming scheme puts it: the no-replace rename refuses)."""
    old, new = tmp_path / "old.dcm", tmp_path / "new.dcm"
    make_image(old, 1, study=1)
    make_image(new, 2, study=1)
    storage = first_run(tmp_path, [old])
    changed = changed_copy(old, tmp_path / "changed.dcm")
    (tmp_path / "store.db").unlink()  # the index is gone: the tree is not indexed
    held = Held(startup_module.reconcile)
    monkeypatch.setattr(startup_module, "reconcile", held)
    index = tmp_path / "fresh.db"
    r = in_process(storage, index, **{"storage.duplicates": "reject"})
    assert held.entered.wait(60)
    wait_listening(r)
    assert r.app.index_startup is not None and not r.app.index_startup.done.is_set()
    assert storescu(r.port, [changed, new]) == ["Error: CannotUnderstand", "Success"]
    assert not r.watch.seen["reconciled"].is_set()  # all of it while reconcile had not run
    held.release.set()
    assert r.watch.seen["reconciled"].wait(60), r.watch.lines
    r.app.request_stop()
    r.thread.join(60)
    assert r.watch.seen["stopped:"].is_set()
    stored = sorted(p for p in storage.rglob("*.dcm") if ".incoming" not in p.parts)
    uids = sorted(str(pydicom.dcmread(p).SOPInstanceUID) for p in stored)
    assert uids == sorted([str(pydicom.dcmread(old).SOPInstanceUID), str(pydicom.dcmread(new).SOPInstanceUID)])
    got = dict(rows(index, "SELECT sop_instance_uid, source FROM instances WHERE status = 'present'"))
    assert got == {str(pydicom.dcmread(old).SOPInstanceUID): "reindex", str(pydicom.dcmread(new).SOPInstanceUID): "received"}


@pytest.mark.interop
def test_a_re_send_to_another_path_is_a_duplicate_before_and_after_the_filter_is_filled(
        tmp_path: Path, in_process, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    """The index has the instance where the flat naming put it; this run names
    hierarchically, so the target path is free: only the index can tell it
    is a duplicate, before the filter is filled (by a query) and after."""
    image = tmp_path / "one.dcm"
    make_image(image, 1, study=1)
    storage = first_run(tmp_path, [image], "--naming", "flat")
    changed = changed_copy(image, tmp_path / "changed.dcm")
    filtersave.saved_path(tmp_path / "store.db").unlink()  # the first run's clean stop kept its filter: fill one
    held = Held(startup_module.fill_filter)
    monkeypatch.setattr(startup_module, "fill_filter", held)
    r = in_process(storage, tmp_path / "store.db", **{"storage.duplicates": "reject",
                                                      "storage.naming": "hierarchical"})
    assert held.entered.wait(60)
    wait_listening(r)
    assert not r.watch.seen["duplicate check ready"].is_set()
    assert storescu(r.port, [changed]) == ["Error: CannotUnderstand"]
    held.release.set()
    assert r.watch.seen["duplicate check ready"].wait(60)
    assert storescu(r.port, [changed]) == ["Error: CannotUnderstand"]
    assert r.watch.seen["reconciled"].wait(60)
    assert len([p for p in storage.rglob("*.dcm") if ".incoming" not in p.parts]) == 1


@pytest.mark.interop
def test_a_re_send_to_another_path_is_a_duplicate_with_the_filter_kept_by_the_last_stop(
        tmp_path: Path, in_process) -> None:  # type: ignore[no-untyped-def]
    """As above, with the filter the first run's clean stop kept
    (catalog/filtersave.py): it is ready before the port opens, no fill
    runs, and it knows the instance, so the index is asked and says
    duplicate. (A kept filter that lost the UID would answer "new", and the
    changed copy would be stored at its free hierarchical path.)"""
    image = tmp_path / "one.dcm"
    make_image(image, 1, study=1)
    storage = first_run(tmp_path, [image], "--naming", "flat")
    changed = changed_copy(image, tmp_path / "changed.dcm")
    assert filtersave.saved_path(tmp_path / "store.db").is_file()
    r = in_process(storage, tmp_path / "store.db", **{"storage.duplicates": "reject",
                                                      "storage.naming": "hierarchical"})
    wait_listening(r)
    known = r.app.state.storage.guard.index
    assert isinstance(known, IndexedInstances) and known.ready
    assert storescu(r.port, [changed]) == ["Error: CannotUnderstand"]
    assert known.confirmed >= 1 and known.unconfirmed == 0  # the filter said maybe, the index said yes
    assert r.watch.seen["reconciled"].wait(60), r.watch.lines
    assert not r.watch.seen["duplicate check ready"].is_set()  # never filled
    assert len([p for p in storage.rglob("*.dcm") if ".incoming" not in p.parts]) == 1


class FillAfterStop(Held):
    """A fill that starts only once the receiver's stop has reached the
    start-up thread (its ``stop`` event is set): a stop during the fill,
    deterministically."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.entered.set()
        assert kwargs["stop"].wait(120), "never stopped"
        return self.real(*args, **kwargs)


@pytest.mark.interop
def test_a_stop_during_the_fill_keeps_no_filter(tmp_path: Path, in_process,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    """The filter is kept only when it held the whole index: a stop before
    the fill ended keeps nothing, and the next start fills it."""
    image = tmp_path / "one.dcm"
    make_image(image, 1, study=1)
    storage = first_run(tmp_path, [image])
    index = tmp_path / "store.db"
    filtersave.saved_path(index).unlink()  # kept by the first run's clean stop: this start must fill
    held = FillAfterStop(startup_module.fill_filter)
    monkeypatch.setattr(startup_module, "fill_filter", held)
    r = in_process(storage, index)
    assert held.entered.wait(60)
    wait_listening(r)
    r.app.request_stop()
    r.thread.join(60)
    assert r.watch.seen["stopped:"].is_set()
    assert not r.watch.seen["duplicate check ready"].is_set()
    assert not filtersave.saved_path(index).exists()


@pytest.mark.interop
def test_a_crash_keeps_no_filter(tmp_path: Path) -> None:
    """A start takes the kept filter away before it reads it: a crash
    after it (kill -9) leaves none, and the next start fills one from the
    index (its reconcile indexes the file whose row the crash lost)."""
    from conftest import Server

    images = [tmp_path / "a.dcm", tmp_path / "b.dcm"]
    for n, path in enumerate(images):
        make_image(path, n, study=1)
    storage = first_run(tmp_path, images[:1])
    index = tmp_path / "store.db"
    assert filtersave.saved_path(index).is_file()
    srv = Server(storage, tmp_path / "second.log", [])
    try:
        assert "kept by the last clean stop" in srv.log_once_it_says("kept by the last clean stop")
        assert not filtersave.saved_path(index).exists()
        assert storescu(srv.port, images[1:]) == ["Success"]
        srv.log_once_it_says("released")
    finally:
        srv.stop(signal.SIGKILL)
    assert not filtersave.saved_path(index).exists()
    third = Server(storage, tmp_path / "third.log", [])
    try:
        text = third.indexed().log_text()
        assert "filled after the port opens" in text and "duplicate check ready: " in text, text
    finally:
        assert third.stop() == 0
    assert rows(index, "SELECT count(*) FROM instances WHERE status = 'present'") == [(2,)]

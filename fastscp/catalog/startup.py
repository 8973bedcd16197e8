"""What ``fastscp serve`` does with its index once the port is open.

Before listening, the server only opens the index (schema migration), checks
that it describes the storage tree (``root.bind_root``) and counts its rows to
size the duplicate check's filter: a few milliseconds whatever the archive
holds. Then ``IndexStartup``, one thread:

1. fills the filter with every UID of the index (``known.fill_filter``), and
   marks the duplicate check ready; until then every duplicate check that
   this run's own stores do not answer is one index query. A filter kept by
   the last clean stop (``filtersave.py``) is ready before the port opens,
   and this step is skipped;
2. reconciles the index with the tree (``reconcile`` with ``WhileReceiving``):
   the index learns the files it lacks (each UID goes into the filter as it is
   indexed) and which of its files are gone.

docs/catalog.md ("While reconcile runs") says what the duplicate check
catches during each step.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path

import duckdb

from ..storage.duplicates import IndexedInstances
from .known import fill_filter
from .reconcile import ReconcileStopped, WhileReceiving, reconcile
from .writer import CatalogWriter

log = logging.getLogger(__name__)

__all__ = ["IndexStartup"]


class IndexStartup:
    """The thread that fills the duplicate filter, then reconciles; ``done``
    is set when it ends, however it ends."""

    def __init__(self, writer: CatalogWriter, known: IndexedInstances, storage_dir: str | Path, since: float,
                 db_name: str, on_done: Callable[[], None] | None = None) -> None:
        self.writer = writer
        self.on_done = on_done  # called on this thread once ``done`` is set
        self.known = known
        self.storage_dir = Path(storage_dir)
        self.since = since
        self.db_name = db_name
        self.done = threading.Event()
        self.reconciled = False
        self._stop = threading.Event()
        self._conn: duckdb.DuckDBPyConnection | None = None
        self._thread = threading.Thread(target=self._run, name="fastscp-index-startup", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float | None = None) -> bool:
        """Ask the thread to end (between chunks; a running query is
        interrupted) and wait for it; True if it ended."""
        self._stop.set()
        conn = self._conn
        if conn is not None and not self.done.is_set():
            try:
                conn.interrupt()
            except duckdb.Error:
                pass
        if not self._thread.is_alive() and not self.done.is_set():
            return True  # never started
        return self.done.wait(timeout)

    def _run(self) -> None:
        try:
            self._conn = self.writer.cursor()
            if not self.known.ready:  # else read from the last clean stop (filtersave.py)
                self._fill(self._conn)
            if not self._stop.is_set():
                self._reconcile(self._conn)
        except Exception:
            log.exception("index start-up failed")
        finally:
            if self._conn is not None:
                try:
                    self._conn.close()
                except duckdb.Error:
                    pass
            self.done.set()
            if self.on_done is not None:
                self.on_done()

    def _fill(self, conn: duckdb.DuckDBPyConnection) -> None:
        uid_filter = self.known.filter
        t0 = time.perf_counter()
        try:
            n = fill_filter(conn, uid_filter, stop=self._stop)
        except duckdb.Error as exc:
            if not self._stop.is_set():
                log.error("duplicate check: cannot read the UIDs of index %s (%s); every check queries the index",
                          self.db_name, exc)
            return
        if self._stop.is_set():
            return
        self.known.mark_ready()
        log.info("duplicate check ready: %d indexed instances in a %.1f MB filter in %.1f s "
                 "(expected false positives %.3f%%)", n, uid_filter.nbytes / 1e6, time.perf_counter() - t0,
                 100 * uid_filter.expected_false_positive_rate())

    def _reconcile(self, conn: duckdb.DuckDBPyConnection) -> None:
        uid_filter = self.known.filter

        def indexed(uids: list[str]) -> None:
            for uid in uids:
                uid_filter.add(uid)

        log.info("index %s: reconciling with %s in the background", self.db_name, self.storage_dir)
        try:
            report = reconcile(self.storage_dir, conn, progress=False,
                               live=WhileReceiving(self.since, indexed, self._stop))
        except ReconcileStopped:
            log.info("index %s: reconcile stopped with the receiver; the next start runs it again", self.db_name)
            return
        except (duckdb.Error, OSError, RuntimeError, ValueError) as exc:
            if self._stop.is_set():
                log.info("index %s: reconcile stopped with the receiver; the next start runs it again",
                         self.db_name)
                return
            log.error("index %s: reconcile failed (%s: %s); files it did not index are indexed by the next start "
                      "or `fastscp reindex`", self.db_name, type(exc).__name__, exc)
            return
        self.reconciled = True
        log.info("index %s reconciled with %s in %.1f s: %d files, %d indexed, %d marked missing, %d unreadable, "
                 "%d conflicts, %d left to the receiver", self.db_name, self.storage_dir, report.seconds,
                 report.files_seen, report.indexed, report.marked_missing, report.unreadable, report.conflicts,
                 report.left_to_receiver)

"""CatalogWriter: the one thread that owns the index database connection.

The event loop calls ``enqueue(info)`` / ``record_association(...)`` for every
stored instance and finished association. Those calls only append to a
``collections.deque`` (atomic under the GIL, no lock) and, when the queue goes
from empty to non-empty or reaches a full batch, set an Event to wake the
thread. They never wait for the database.

The thread waits for the first pending row, then writes what is pending in
batches of at most ``batch_size`` with the plain and upsert appenders
(rows.BatchWriter) when the first of these comes: ``batch_size`` rows are
pending; no row has come for ``flush_quiet`` seconds (the senders paused);
``flush_interval`` seconds have passed since that first row; ``flush`` or
``close`` is called. Only full batches are written back to back. So a row is
in the catalog about ``flush_quiet`` (at most twice that) after the last
instance of a burst, and at most ``flush_interval`` (plus one write) after
it was queued while rows keep coming.

Why a burst's rows wait for its end (issue 23): on a 2-core machine the
writer's batches during a flood take a core from the receive path and the
sender; written after the burst, in fewer and larger batches, they cost less
CPU (a batch has about 12 ms of fixed cost: its lookups, the study counts,
the commit) and none of the flood's wall time. docs/benchmark.md has the
figures. The queue holds at most ``batch_size`` rows before a write starts,
as before.

Backpressure: the queue never drops a row. ``enqueue`` returns False once the
depth reaches ``high_water``: the caller should stop reading from its sockets
(``transport.pause_reading()``) until ``on_resume`` is called, which the
writer thread does when the depth falls back to ``low_water``. ``on_resume``
runs in the writer thread, so an asyncio server passes something like
``lambda: loop.call_soon_threadsafe(resume_all)``. Rows enqueued while over
the mark are still accepted: once reading is paused, at most one in-flight
instance per association can arrive, so memory stays bounded.

``on_written``, when set, is called in the writer thread after each batch is
committed with the instances it wrote: the duplicate check
(storage/duplicates.py ``IndexedInstances.written``) lets the index answer
for them from then on.

Errors: a failed batch is rolled back, logged, counted, and retried with
exponential backoff (the connection is reopened after a failure that leaves
it unusable). ``close()`` stops taking rows, writes everything left and
checkpoints. If the database stays broken past ``close``'s timeout, the count
of unwritten rows is logged as an error: their files are on disk and the next
reconcile indexes them from their headers.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import duckdb

from ..instance import InstanceInfo
from . import schema
from .rows import AssociationRecord, BatchWriter, DuplicateRecord

log = logging.getLogger(__name__)

DEFAULT_BATCH_SIZE = 5000
DEFAULT_FLUSH_INTERVAL = 5.0
DEFAULT_FLUSH_QUIET = 0.25
# After this long with nothing to write, a WAL of at least QUIET_CHECKPOINT_WAL
# bytes is folded into the file (CHECKPOINT): until a checkpoint DuckDB keeps
# the rows committed since the last one in memory, about 0.4 MB per 1000
# instances, and its own threshold (schema.CHECKPOINT_THRESHOLD, 256 MB of
# WAL, kept high because a checkpoint's cost grows with the index) comes only
# after some 700,000 of them. 32 MiB of WAL: about 90,000 instances.
DEFAULT_QUIET_CHECKPOINT = 10.0
QUIET_CHECKPOINT_WAL = 32 * 1024 * 1024


def batch_wait(now: float, first_row: float, last_change: float, interval: float, quiet: float) -> float:
    """Seconds until the pending rows are due to be written (<= 0: now):
    ``interval`` after the first of them came (``first_row``), or ``quiet``
    after the queue last grew (``last_change``, as the writer thread saw
    it), whichever is sooner. All times are ``time.monotonic()`` seconds."""
    return min(first_row + interval, last_change + quiet) - now


@dataclass(slots=True, frozen=True)
class WriterCounters:
    """A snapshot for monitoring (cheap: plain attribute reads)."""

    queue_depth: int
    rows_enqueued: int
    rows_written: int  # instance rows committed
    associations_written: int
    batches_written: int
    last_batch_rows: int
    last_batch_seconds: float
    errors: int  # failed batch attempts (each is retried)
    retry_rows: int  # rows in the batch currently waiting for a retry
    over_high_water: bool
    last_error: str


class CatalogWriter:
    """Batched, non-blocking writer of InstanceInfo rows into the index database.

    ``connect`` makes the connection (default: ``schema.connect(db_path,
    memory_limit=memory_limit)``, which migrates the schema); it is called
    once at construction, in the caller's thread so that a bad path fails at
    start, and again after a failure that broke the connection.
    """

    def __init__(
        self,
        db_path: str | Path,
        *,
        batch_size: int = DEFAULT_BATCH_SIZE,
        flush_interval: float = DEFAULT_FLUSH_INTERVAL,
        flush_quiet: float = DEFAULT_FLUSH_QUIET,
        high_water: int = 50_000,
        low_water: int | None = None,
        on_resume: Callable[[], None] | None = None,
        retry_initial: float = 0.2,
        retry_max: float = 10.0,
        connect: Callable[[], duckdb.DuckDBPyConnection] | None = None,
        quiet_checkpoint: float = DEFAULT_QUIET_CHECKPOINT,
        quiet_checkpoint_wal: int = QUIET_CHECKPOINT_WAL,
        memory_limit: int | None = None,
    ) -> None:
        if batch_size < 1 or flush_interval <= 0 or flush_quiet <= 0 or high_water < 1:
            raise ValueError("batch_size, flush_interval, flush_quiet and high_water must be positive")
        if quiet_checkpoint < 0:
            raise ValueError("quiet_checkpoint must not be negative")
        self.db_path = Path(db_path)
        self.batch_size = batch_size
        self.flush_interval = flush_interval
        self.flush_quiet = flush_quiet
        self.high_water = high_water
        self.low_water = high_water // 2 if low_water is None else low_water
        self.on_resume = on_resume
        self.on_written: Callable[[list[InstanceInfo]], None] | None = None
        self.on_checkpoint: Callable[[], None] | None = None  # after a quiet checkpoint, on the writer thread
        self.quiet_checkpoint = quiet_checkpoint  # seconds; 0 = never
        self.quiet_checkpoint_wal = quiet_checkpoint_wal
        self.wal_path = Path(f"{self.db_path}.wal")
        self.retry_initial = retry_initial
        self.retry_max = retry_max
        self._connect = connect or (lambda: schema.connect(self.db_path, memory_limit=memory_limit))

        self._queue: collections.deque[InstanceInfo | AssociationRecord | DuplicateRecord] = collections.deque()
        self._wake = threading.Event()
        self._hurry = False  # flush() wants what is queued written now
        self._closing = False
        self._done = threading.Condition()
        self._over = False

        self.rows_enqueued = 0
        self.rows_written = 0
        self.associations_written = 0
        self.batches_written = 0
        self.last_batch_rows = 0
        self.last_batch_seconds = 0.0
        self.checkpoints = 0  # quiet checkpoints made
        self.errors = 0
        self.last_error = ""
        self._retry_rows = 0
        self._items_done = 0  # queue items written (instances + associations)
        self._items_in = 0

        self._conn = self._connect()
        self._batch = BatchWriter(self._conn)
        self._thread = threading.Thread(target=self._run, name="fastscp-catalog", daemon=True)
        self._thread.start()

    # ---- called from the event loop: never blocks -------------------------------

    def enqueue(self, info: InstanceInfo) -> bool:
        """Queue one stored instance. Always accepted; returns False when the
        queue is at or over ``high_water`` (pause reading until ``on_resume``)."""
        if self._closing:
            raise RuntimeError("CatalogWriter is closed")
        return self._put(info, True)

    def record_association(
        self,
        association_id: str,
        peer: str,
        calling_ae: str,
        called_ae: str,
        started_at: float,
        ended_at: float,
        instances: int,
        bytes: int,
        outcome: str,
    ) -> bool:
        """Queue the row of one finished association (same contract as enqueue)."""
        if self._closing:
            raise RuntimeError("CatalogWriter is closed")
        rec = AssociationRecord(association_id, peer, calling_ae, called_ae, started_at,
                                ended_at, instances, bytes, outcome)
        return self._put(rec, False)

    def record_duplicate(self, info: InstanceInfo) -> bool:
        """Queue a re-sent copy the duplicate policy dropped: its row's
        reception columns and ``duplicate`` outcome are updated (same
        contract as enqueue)."""
        if self._closing:
            raise RuntimeError("CatalogWriter is closed")
        return self._put(DuplicateRecord.of(info), False)

    def _put(self, item: InstanceInfo | AssociationRecord | DuplicateRecord, is_instance: bool) -> bool:
        q = self._queue
        q.append(item)
        self._items_in += 1
        if is_instance:
            self.rows_enqueued += 1
        depth = len(q)
        if depth == 1 or depth == self.batch_size:
            self._wake.set()
        if depth >= self.high_water:
            self._over = True
            return False
        return True

    @property
    def is_full(self) -> bool:
        """True from reaching ``high_water`` until the depth falls to ``low_water``."""
        return self._over

    @property
    def queue_depth(self) -> int:
        return len(self._queue)

    def counters(self) -> WriterCounters:
        return WriterCounters(
            queue_depth=len(self._queue), rows_enqueued=self.rows_enqueued,
            rows_written=self.rows_written, associations_written=self.associations_written,
            batches_written=self.batches_written, last_batch_rows=self.last_batch_rows,
            last_batch_seconds=self.last_batch_seconds, errors=self.errors,
            retry_rows=self._retry_rows, over_high_water=self._over,
            last_error=self.last_error,
        )

    # ---- for other threads ---------------------------------------------------------

    def cursor(self) -> duckdb.DuckDBPyConnection:
        """A new connection to the same database, for reads from another thread
        (e.g. the status endpoint's queries through ``run_readonly_query``)."""
        return self._conn.cursor()

    def flush(self, timeout: float | None = None) -> bool:
        """Have everything queued before this call written now (not at the
        pause or the interval) and wait until it is; True if so."""
        target = self._items_in
        self._hurry = True
        self._wake.set()
        with self._done:
            return self._done.wait_for(lambda: self._items_done >= target, timeout)

    def close(self, timeout: float | None = None) -> bool:
        """Stop accepting rows, write all pending rows, checkpoint, close the
        connection. Returns False (and logs) if rows could not be written
        before ``timeout``."""
        if self._closing and not self._thread.is_alive():
            return True
        self._closing = True
        self._wake.set()
        self._thread.join(timeout)
        if self._thread.is_alive():
            pending = len(self._queue) + self._retry_rows
            log.error(
                "catalog: %d rows not written to %s at shutdown (last error: %s); "
                "their files are on disk and the next reconcile will index them",
                pending, self.db_path, self.last_error,
            )
            return False
        return True

    def __enter__(self) -> CatalogWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- the writer thread ------------------------------------------------------------

    def _run(self) -> None:
        q = self._queue
        while True:
            # Wait for a first row (or close); a quiet spell folds the WAL in.
            quiet_since = time.monotonic()
            while not q and not self._closing:
                self._hurry = False  # a flush with nothing queued has nothing to hurry
                wait = 1.0
                if self.quiet_checkpoint:
                    left = quiet_since + self.quiet_checkpoint - time.monotonic()
                    if left <= 0:
                        # once per quiet spell; refused (another connection's
                        # transaction was open): again after another spell
                        quiet_since = float("inf") if self._checkpoint_if_due() else time.monotonic()
                    else:
                        wait = min(wait, left)
                self._wake.wait(wait)
                self._wake.clear()
            if not q and self._closing:
                break
            # Then for a full batch, a pause of the senders, the interval,
            # flush or close (batch_wait).
            first_row = last_change = time.monotonic()
            seen = self._items_in
            while len(q) < self.batch_size and not self._closing and not self._hurry:
                now = time.monotonic()
                if self._items_in != seen:
                    seen, last_change = self._items_in, now
                remaining = batch_wait(now, first_row, last_change, self.flush_interval, self.flush_quiet)
                if remaining <= 0:
                    break
                self._wake.wait(remaining)
                self._wake.clear()
            self._hurry = False
            while q:
                n = min(len(q), self.batch_size)
                items = [q.popleft() for _ in range(n)]
                self._write_with_retry(items)
                # let go of the written batch now, not when the next one
                # replaces it: its InstanceInfo (about 2.3 KB each with their
                # strings) are not held while the queue refills (issue 23)
                del items
                if self._over and len(q) <= self.low_water:
                    self._over = False
                    if self.on_resume is not None:
                        try:
                            self.on_resume()
                        except Exception:
                            log.exception("catalog: on_resume callback failed")
                # Back to back only while full batches wait: rows that came in
                # during the write wait for the next interval. (Writing them at
                # once made every batch as small as one commit's worth of
                # arrivals: 225 batches for 5000 rows, 1 ms of CPU per row.)
                if len(q) < self.batch_size and not self._closing:
                    break
        self._shutdown()

    def _write_with_retry(self, items: list[InstanceInfo | AssociationRecord | DuplicateRecord]) -> None:
        instances = [x for x in items if isinstance(x, InstanceInfo)]
        assocs = [x for x in items if isinstance(x, AssociationRecord)]
        # a dropped re-send is applied after the batch's rows, so one that a
        # later stored copy of the same UID supersedes (overwrite) is left out
        latest: dict[str, DuplicateRecord] = {}
        for x in items:
            if isinstance(x, DuplicateRecord):
                latest[x.sop_instance_uid] = x
            elif isinstance(x, InstanceInfo):
                latest.pop(x.sop_instance_uid, None)
        duplicates = list(latest.values())
        delay = self.retry_initial
        while True:
            t0 = time.perf_counter()
            try:
                self._batch.write(instances, assocs, duplicates=duplicates)
            except Exception as exc:
                self.errors += 1
                self.last_error = f"{type(exc).__name__}: {exc}"
                self._retry_rows = len(items)
                log.error("catalog: writing %d rows failed (%s); retrying in %.1fs",
                          len(items), self.last_error, delay)
                time.sleep(delay)
                delay = min(delay * 2, self.retry_max)
                self._reopen_if_broken()
                continue
            self.last_batch_seconds = time.perf_counter() - t0
            self.last_batch_rows = len(instances)
            self.rows_written += len(instances)
            self.associations_written += len(assocs)
            self.batches_written += 1
            self._retry_rows = 0
            if self.on_written is not None and instances:
                try:
                    self.on_written(instances)
                except Exception:
                    log.exception("catalog: on_written callback failed")
            with self._done:
                self._items_done += len(items)
                self._done.notify_all()
            return

    def _checkpoint_if_due(self) -> bool:
        """CHECKPOINT when the WAL holds at least ``quiet_checkpoint_wal``
        bytes: DuckDB then writes the rows it kept in memory into the file
        and lets go of them. False if DuckDB refused it (it does while
        another connection has a transaction open: a query, reconcile): the
        rows stay in the WAL, and the caller tries again later."""
        try:
            if self.wal_path.stat().st_size < self.quiet_checkpoint_wal:
                return True
        except FileNotFoundError:
            return True
        except OSError as exc:
            log.warning("catalog: cannot read the size of %s: %s", self.wal_path, exc)
            return True
        t0 = time.perf_counter()
        try:
            self._conn.execute("CHECKPOINT")
        except Exception as exc:
            log.debug("catalog: checkpoint after a quiet spell not made now: %s", exc)
            return False
        self.checkpoints += 1
        log.info("catalog: index checkpointed after a quiet spell in %.2f s", time.perf_counter() - t0)
        if self.on_checkpoint is not None:
            try:
                self.on_checkpoint()
            except Exception:
                log.exception("catalog: on_checkpoint callback failed")
        return True

    def _reopen_if_broken(self) -> None:
        """A fatal DuckDB error invalidates the database instance; a closed or
        invalid connection fails even a trivial query. Then reconnect."""
        try:
            self._conn.execute("SELECT 1").fetchall()
            return
        except Exception:
            pass
        try:
            self._conn.close()
        except Exception:
            pass
        try:
            self._conn = self._connect()
            self._batch = BatchWriter(self._conn)
            log.warning("catalog: reopened %s", self.db_path)
        except Exception as exc:
            self.last_error = f"{type(exc).__name__}: {exc}"
            log.error("catalog: reopening %s failed: %s", self.db_path, self.last_error)

    def _shutdown(self) -> None:
        try:
            self._conn.execute("CHECKPOINT")
        except Exception as exc:
            log.warning("catalog: checkpoint at close failed: %s", exc)
        try:
            self._conn.close()
        except Exception:
            pass

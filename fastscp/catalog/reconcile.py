"""Reconcile the index with the storage tree, and read the index back at start.

``reconcile(storage_dir, db)``:

1. walks the tree (``os.scandir``, skipping ``.incoming/`` and dot-files) and
   streams every file path into a temporary table;
2. in SQL: rows under the storage directory whose file is not there are
   marked ``status='missing'``; rows marked missing whose file is back are
   marked present again; files with no row are the ones to index;
3. parses those files' headers with the receiver's reader (``read_header``:
   storage/header.py ``parse_file``) in a process pool, in chunks, with a progress bar,
   and upserts the rows in batches through the writer's ``BatchWriter``
   (``source='reindex'``, ``received_at`` = file mtime, ``content_hash`` = ""
   since hashing every file would read every pixel).

A file whose SOP Instance UID already has a row pointing to another file that
is present is a conflict: it is reported, not indexed (one row per UID).

4. backfills columns a schema migration added to rows that predate it
   (``_backfill``): studies written before schema v4 have ``study_id`` NULL;
   one present file of each is re-read and only that column is set, so the
   reception fields of the rows (AE titles, hashes, times) are kept.

``fastscp serve`` runs it in a thread after the port opened, while instances
arrive (``WhileReceiving``): rows and files this run made (received at or
after ``since``; file mtime at or after it, less ``MTIME_SLACK``) are the
receiver's, which indexes them itself: such a row is never marked missing
(its file may have come after the walk passed its folder), such a file is
not parsed, and a file whose UID this run stored elsewhere is a conflict,
reported, not indexed. The UIDs reconcile indexes are handed to the
duplicate check (``indexed``), and ``stop`` ends it between chunks
(``ReconcileStopped``) when the server stops.

Paths are compared as strings: the storage directory is resolved
(``Path.resolve()``) and the rows' paths are expected under it, which is how
the receiver records them.
"""

from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

import duckdb

from ..instance import InstanceInfo
from ..storage.header import parse_file
from ..storage.layout import RECEIVER_FILES
from . import schema
from .root import bind_root, under_root_prefix
from .rows import BatchWriter, refresh_study_stats_in, utc_timestamp

log = logging.getLogger(__name__)

INLINE_LIMIT = 200  # below this many files a process pool costs more than it saves
# File times come from the kernel's coarse clock, up to a tick behind
# time.time(): a file written just after ``WhileReceiving.since`` may carry an
# mtime just before it. The receiver's own start takes far longer than this,
# so no file of an earlier run is this close to ``since``.
MTIME_SLACK = 0.05
CHUNK = 128


@dataclass(slots=True)
class ReconcileReport:
    files_seen: int = 0
    indexed: int = 0  # files that had no row and got one
    marked_missing: int = 0
    restored: int = 0  # rows marked missing whose file is back
    unreadable: int = 0  # not DICOM or header unreadable
    conflicts: int = 0  # same SOP Instance UID as another present file
    backfilled: int = 0  # study rows from before schema v4 given their Study ID
    left_to_receiver: int = 0  # files stored since the receiver listens: it indexes them
    seconds: float = 0.0
    problems: list[str] = field(default_factory=list)  # the first few, for the log

    @property
    def files_per_second(self) -> float:
        return self.indexed / self.seconds if self.seconds > 0 else 0.0


class ReconcileStopped(Exception):
    """``WhileReceiving.stop`` was set: reconcile ended before it was done."""


@dataclass(frozen=True, slots=True)
class WhileReceiving:
    """Reconcile in the background of a receiver that listens since ``since``
    (epoch seconds); see the module doc."""

    since: float
    indexed: Callable[[list[str]], None] = lambda uids: None
    stop: threading.Event = field(default_factory=threading.Event)

    def check(self) -> None:
        if self.stop.is_set():
            raise ReconcileStopped("the receiver is stopping")


class Progress:
    """A one-line progress bar on stderr (rewritten at most 10 times a second;
    on a non-terminal, one plain line every 5 s)."""

    def __init__(self, total: int, label: str, stream: TextIO | None = None,
                 enabled: bool | None = None) -> None:
        self.total = total
        self.label = label
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.enabled = self.tty if enabled is None else enabled
        self.done = 0
        self.start = time.monotonic()
        self._last = 0.0

    def update(self, n: int = 1) -> None:
        self.done += n
        if not self.enabled:
            return
        now = time.monotonic()
        if now - self._last < (0.1 if self.tty else 5.0) and self.done < self.total:
            return
        self._last = now
        self._draw(now)

    def _draw(self, now: float) -> None:
        elapsed = max(now - self.start, 1e-9)
        rate = self.done / elapsed
        frac = self.done / self.total if self.total else 1.0
        eta = (self.total - self.done) / rate if rate > 0 else 0.0
        bar = "#" * int(frac * 30)
        text = (f"{self.label} [{bar:<30}] {self.done}/{self.total} "
                f"{frac:6.1%} {rate:7.0f}/s ETA {eta:4.0f}s")
        self.stream.write(("\r" + text) if self.tty else (text + "\n"))
        self.stream.flush()

    def close(self) -> None:
        if self.enabled:
            self._draw(time.monotonic())
            if self.tty:
                self.stream.write("\n")
            self.stream.flush()


# ---- header parsing (runs in worker processes) -----------------------------------------


def read_header(path: str) -> InstanceInfo:
    """InstanceInfo from a stored Part-10 file, read by the receiver's own
    reader (storage/header.py ``parse_file``), so a rebuilt index holds what
    reception wrote. Reception fields are left empty except path, file size
    and received_at = mtime. Raises on unreadable files and on files without
    a SOP Instance UID (in the data set or the file meta)."""
    st = os.stat(path)
    info = parse_file(path)
    if not info.sop_instance_uid:
        raise ValueError("no SOP Instance UID")
    # header: pydicom's Dataset when parse_file fell back to it; not sent back from the workers
    return dataclasses.replace(info, header=None, received_at=st.st_mtime, file_size=st.st_size, path=path)


def _read_chunk(paths: Sequence[str]) -> list[InstanceInfo | tuple[str, str]]:
    out: list[InstanceInfo | tuple[str, str]] = []
    for path in paths:
        try:
            out.append(read_header(path))
        except Exception as exc:  # one bad file must not stop the others
            out.append((path, f"{type(exc).__name__}: {exc}"))
    return out


# ---- the tree walk ---------------------------------------------------------------------------


# DICOMDIR, and what the receiver writes itself (scan sheets): not instances
_NOT_INSTANCES = RECEIVER_FILES | {"DICOMDIR"}


def iter_storage_files(storage_dir: Path) -> Iterator[str]:
    """Every regular file under ``storage_dir`` except ``.incoming/``,
    dot-files, DICOMDIR and the receiver's own files (``storage.layout``)."""
    stack = [str(storage_dir)]
    while stack:
        top = stack.pop()
        try:
            entries = list(os.scandir(top))
        except OSError as exc:
            log.warning("reconcile: cannot list %s: %s", top, exc)
            continue
        for entry in entries:
            if entry.name.startswith("."):
                continue  # .incoming/ (partial files) and other hidden things
            if entry.is_dir(follow_symlinks=False):
                stack.append(entry.path)
            elif entry.is_file(follow_symlinks=False) and entry.name not in _NOT_INSTANCES:
                yield entry.path


# ---- reconcile ------------------------------------------------------------------------------------


def reconcile(
    storage_dir: str | Path,
    db: str | Path | duckdb.DuckDBPyConnection,
    *,
    workers: int | None = None,
    progress: bool | None = None,
    batch_size: int = 1000,
    adopt_root: bool = False,
    live: WhileReceiving | None = None,
) -> ReconcileReport:
    """Make the index agree with the files under ``storage_dir``; see the module doc.

    The index must describe ``storage_dir`` (``root.bind_root``): raises
    IndexRootMismatch if it describes another tree, unless ``adopt_root``
    (``fastscp reindex``), which re-describes it for this one."""
    t0 = time.perf_counter()
    root = Path(storage_dir).resolve()
    if not root.is_dir():
        raise NotADirectoryError(f"storage directory {root} does not exist")
    own = not isinstance(db, duckdb.DuckDBPyConnection)
    conn: duckdb.DuckDBPyConnection = db if isinstance(db, duckdb.DuckDBPyConnection) else schema.connect(db)
    report = ReconcileReport()
    try:
        bind_root(conn, root, db_name="the index" if not own else str(db), adopt=adopt_root)
        _reconcile(conn, root, report, workers, progress, batch_size, live)
    finally:
        try:
            conn.execute("DROP TABLE IF EXISTS temp.reconcile_files")
        except duckdb.Error:
            pass
        if own:
            conn.close()
    report.seconds = time.perf_counter() - t0
    return report


def _note(report: ReconcileReport, text: str) -> None:
    if len(report.problems) < 20:
        report.problems.append(text)
    log.warning("reconcile: %s", text)


def _reconcile(conn: duckdb.DuckDBPyConnection, root: Path, report: ReconcileReport,
               workers: int | None, progress: bool | None, batch_size: int, live: WhileReceiving | None) -> None:
    prefix = under_root_prefix(root)
    conn.execute("CREATE OR REPLACE TEMP TABLE reconcile_files (path VARCHAR)")
    app = conn.appender("temp.reconcile_files")
    pending: list[tuple[str]] = []
    for path in iter_storage_files(root):
        pending.append((path,))
        report.files_seen += 1
        if len(pending) >= 10_000:
            if live is not None:
                live.check()
            app.append_rows(pending)
            app.flush()
            pending.clear()
    app.append_rows(pending)
    app.flush()
    del app

    now = utc_timestamp(time.time())
    # rows of this run: their file may have come after the walk passed its folder
    older = "" if live is None else "AND (received_at IS NULL OR received_at < ?)"
    conn.begin()
    try:
        # the studies whose stored counts change (study_stats): of the rows restored, then of those marked missing
        conn.execute("""CREATE OR REPLACE TEMP TABLE reconcile_touched AS
                        SELECT DISTINCT study_instance_uid FROM instances
                        WHERE status = 'missing' AND path IN (SELECT path FROM temp.reconcile_files)""")
        missing = conn.execute(
            f"""UPDATE instances SET status = 'missing', missing_since = ?
               WHERE status = 'present' AND starts_with(path, ?) {older}
                 AND path NOT IN (SELECT path FROM temp.reconcile_files)""",
            [now, prefix] + ([] if live is None else [utc_timestamp(live.since)]),
        ).fetchone()
        restored = conn.execute(
            """UPDATE instances SET status = 'present', missing_since = NULL
               WHERE status = 'missing' AND path IN (SELECT path FROM temp.reconcile_files)""",
        ).fetchone()
        if missing and missing[0]:
            conn.execute("""INSERT INTO temp.reconcile_touched SELECT DISTINCT study_instance_uid FROM instances
                            WHERE status = 'missing' AND missing_since = ?""", [now])
        if (missing and missing[0]) or (restored and restored[0]):
            refresh_study_stats_in(conn, "SELECT study_instance_uid FROM temp.reconcile_touched")
        conn.commit()
    except BaseException:
        conn.rollback()
        raise
    report.marked_missing = int(missing[0]) if missing else 0
    report.restored = int(restored[0]) if restored else 0

    new_paths = [
        r[0] for r in conn.execute(
            """SELECT f.path FROM temp.reconcile_files f
               ANTI JOIN instances i ON i.path = f.path ORDER BY f.path"""
        ).fetchall()
    ]
    if new_paths:
        _index_new(conn, new_paths, report, workers, progress, batch_size, live)
    _backfill(conn, prefix, report, workers, progress)


def _backfill(conn: duckdb.DuckDBPyConnection, prefix: str, report: ReconcileReport,
              workers: int | None, progress: bool | None) -> None:
    """Fill ``studies.study_id`` (schema v4) for study rows written before it.

    NULL marks a row no v4 reader has seen (v4 writers store "" when the
    attribute is absent). One present file per such study under the storage
    root is read with ``read_header``, and only the column is updated: the
    rows' other values, and the instances' reception fields, stay as they
    are. A study whose files are all missing keeps NULL (C-FIND treats it as
    an empty value) and is tried again by the next reconcile.
    """
    todo = conn.execute(
        """SELECT s.study_instance_uid, min(i.path) FROM studies s
           JOIN instances i USING (study_instance_uid)
           WHERE s.study_id IS NULL AND i.status = 'present' AND starts_with(i.path, ?)
           GROUP BY s.study_instance_uid ORDER BY 2""", [prefix],
    ).fetchall()
    if not todo:
        return
    study_of_path = {path: uid for uid, path in todo}
    found: list[tuple[str, str]] = []
    bar = Progress(len(todo), "backfill", enabled=progress)
    try:
        for chunk in _parse_all(list(study_of_path), workers):
            for item in chunk:
                if isinstance(item, InstanceInfo):
                    uid = study_of_path.get(item.path, "")
                    if item.study_instance_uid == uid:
                        found.append((uid, item.study_id))
                    else:
                        _note(report, f"backfill: {item.path} is not in study {uid} any more")
                else:
                    report.unreadable += 1
                    _note(report, f"unreadable {item[0]}: {item[1]}")
            bar.update(len(chunk))
    finally:
        bar.close()
    if not found:
        return
    conn.begin()
    try:
        conn.execute("CREATE OR REPLACE TEMP TABLE reconcile_backfill (uid VARCHAR, study_id VARCHAR)")
        app = conn.appender("temp.reconcile_backfill")
        app.append_rows(found)
        app.flush()
        del app
        conn.execute(
            """UPDATE studies SET study_id = b.study_id FROM temp.reconcile_backfill b
               WHERE studies.study_instance_uid = b.uid AND studies.study_id IS NULL""")
        conn.execute("DROP TABLE temp.reconcile_backfill")
        conn.commit()
    except BaseException:
        conn.rollback()
        raise
    report.backfilled = len(found)


def _index_new(conn: duckdb.DuckDBPyConnection, new_paths: list[str], report: ReconcileReport,
               workers: int | None, progress: bool | None, batch_size: int, live: WhileReceiving | None) -> None:
    bar = Progress(len(new_paths), "reindex", enabled=progress)
    writer = BatchWriter(conn)
    buffer: list[InstanceInfo] = []
    try:
        for chunk in _parse_all(new_paths, workers):
            if live is not None:
                live.check()
            for item in chunk:
                if isinstance(item, InstanceInfo):
                    if live is not None and item.received_at >= live.since - MTIME_SLACK:
                        report.left_to_receiver += 1  # stored by this run: the receiver indexes it
                    else:
                        buffer.append(item)
                else:
                    report.unreadable += 1
                    _note(report, f"unreadable {item[0]}: {item[1]}")
            bar.update(len(chunk))
            if len(buffer) >= batch_size:
                _write_new(conn, writer, buffer, report, live)
                buffer = []
        if buffer:
            _write_new(conn, writer, buffer, report, live)
    finally:
        bar.close()


def _parse_all(paths: list[str], workers: int | None) -> Iterator[list[InstanceInfo | tuple[str, str]]]:
    chunks = [paths[i:i + CHUNK] for i in range(0, len(paths), CHUNK)]
    n_workers = workers if workers is not None else (os.cpu_count() or 1)
    if len(paths) < INLINE_LIMIT or n_workers <= 1:
        for chunk in chunks:
            yield _read_chunk(chunk)
        return
    # forkserver: forking a process that runs DuckDB's and the server's threads
    # could copy a held lock into the child. Imported here: a receiver whose
    # reconcile finds few files never needs multiprocessing (issue 23).
    import multiprocessing

    method = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"
    ctx = multiprocessing.get_context(method)
    with cf.ProcessPoolExecutor(max_workers=n_workers, mp_context=ctx) as pool:
        futures = [pool.submit(_read_chunk, chunk) for chunk in chunks]
        try:
            for fut in cf.as_completed(futures):
                yield fut.result()
        finally:
            # stopped early (ReconcileStopped, an error, Ctrl-C): the pool's
            # exit would otherwise wait for every chunk still queued
            for fut in futures:
                fut.cancel()


def _write_new(conn: duckdb.DuckDBPyConnection, writer: BatchWriter,
               infos: list[InstanceInfo], report: ReconcileReport, live: WhileReceiving | None = None) -> None:
    """Upsert parsed files, leaving out UID conflicts with present files."""
    by_uid: dict[str, InstanceInfo] = {}
    for info in infos:
        first = by_uid.get(info.sop_instance_uid)
        if first is not None:
            report.conflicts += 1
            _note(report, f"conflict: {info.path} has the SOP Instance UID of {first.path}")
            continue
        by_uid[info.sop_instance_uid] = info
    conn.execute("CREATE OR REPLACE TEMP TABLE reconcile_uids (uid VARCHAR)")
    app = conn.appender("temp.reconcile_uids")
    app.append_rows([(u,) for u in by_uid])
    app.flush()
    # present rows of the same UIDs at files present: those found by the
    # walk, and (while receiving) those this run stored since
    this_run = "" if live is None else "OR i.received_at >= ?"
    taken = conn.execute(
        f"""SELECT i.sop_instance_uid, i.path FROM instances i
           JOIN temp.reconcile_uids u ON u.uid = i.sop_instance_uid
           WHERE i.status = 'present'
             AND (i.path IN (SELECT path FROM temp.reconcile_files) {this_run})""",
        [] if live is None else [utc_timestamp(live.since)],
    ).fetchall()
    for uid, other in taken:
        info = by_uid.pop(uid)
        if other == info.path:
            continue  # the receiver's writer indexed this very file meanwhile
        report.conflicts += 1
        _note(report, f"conflict: {info.path} has the SOP Instance UID of {other}")
    conn.execute("DROP TABLE temp.reconcile_uids")
    if by_uid:
        writer.write(list(by_uid.values()), source="reindex")
        report.indexed += len(by_uid)
        if live is not None:
            live.indexed(list(by_uid))


# ---- warm-up ----------------------------------------------------------------------------------


def iter_stored_instances(
    db: str | Path | duckdb.DuckDBPyConnection, root: str | Path, chunk: int = 10_000
) -> Iterator[tuple[str, str, str]]:
    """Yield ``(sop_instance_uid, path, content_hash)`` of every present
    instance under the storage directory ``root``, streamed in chunks: what
    the duplicate map is warmed with at start. Rows outside ``root`` never
    warm it (a Success must mean a file in the tree being served)."""
    conn = db.cursor() if isinstance(db, duckdb.DuckDBPyConnection) else schema.connect(db)
    try:
        cur = conn.execute(
            "SELECT sop_instance_uid, path, coalesce(content_hash, '') FROM instances "
            "WHERE status = 'present' AND starts_with(path, ?)",
            [under_root_prefix(Path(root).resolve())],
        )
        while True:
            rows = cur.fetchmany(chunk)
            if not rows:
                break
            yield from rows
    finally:
        conn.close()

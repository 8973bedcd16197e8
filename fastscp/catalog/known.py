"""The index's side of the duplicate check (storage/duplicates.py ``IndexedInstances``).

- ``count_instances``: how many rows the index holds, to size the filter at start;
- ``fill_filter``: adds every UID of the index to a ``UidFilter``, with the
  hashes computed by DuckDB (``md5_number_lower``/``_upper``, the same halves
  ``uidfilter.uid_hash`` computes in Python), read in chunks of rows so that
  memory stays a few MB over the filter's own whatever the index holds;
- ``IndexConfirm``: the query a filter hit is confirmed with, by primary key.

Every row fills the filter, present or missing (a missing file's UID costs a
query when it comes back; a row marked present again by reconcile needs no
further step); ``IndexConfirm`` answers only for present rows under the
storage root, as the duplicate map's warm-up did.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

import duckdb

from ..storage.uidfilter import UidFilter
from .root import under_root_prefix

__all__ = ["FILL_CHUNK", "IndexConfirm", "count_instances", "fill_filter"]

FILL_CHUNK = 1 << 18  # rows per read: 4 MB of hash halves (1 << 20 left 20 MB more in the heap)


def count_instances(conn: duckdb.DuckDBPyConnection) -> int:
    row = conn.execute("SELECT count(*) FROM instances").fetchone()
    return int(row[0]) if row else 0


def fill_filter(conn: duckdb.DuckDBPyConnection, uid_filter: UidFilter, chunk: int = FILL_CHUNK,
                stop: threading.Event | None = None) -> int:
    """Add every instance row's UID to ``uid_filter``; returns how many. Rows
    are read by ``rowid`` range, so rows the writer adds meanwhile may be left
    out: the receiver adds what it stores to the filter itself."""
    row = conn.execute("SELECT max(rowid) FROM instances").fetchone()
    top = -1 if row is None or row[0] is None else int(row[0])
    total = 0
    for start in range(0, top + 1, chunk):
        if stop is not None and stop.is_set():
            break
        got = conn.execute(
            "SELECT md5_number_lower(sop_instance_uid) AS lower, md5_number_upper(sop_instance_uid) AS upper "
            "FROM instances WHERE rowid >= ? AND rowid < ?", [start, start + chunk]).fetchnumpy()
        uid_filter.add_hashes(got["lower"], got["upper"])
        total += len(got["lower"])
    return total


class IndexConfirm:
    """``confirm(uid)``: (path, content hash) of the present row of ``uid``
    under the storage root, or None. Holds one cursor from ``cursor()`` (the
    writer's ``cursor``); call it from one thread (the event loop). A cursor
    that fails (the writer reopened its database after a fatal error) is
    replaced once per call before the error is raised."""

    def __init__(self, cursor: Callable[[], duckdb.DuckDBPyConnection], root: str | os.PathLike[str]) -> None:
        self._new_cursor = cursor
        self._cursor: duckdb.DuckDBPyConnection | None = None
        self._prefix = under_root_prefix(Path(root).resolve())
        self.seconds = 0.0  # spent in queries, for the record

    def _query(self, uid: str) -> tuple[str, str] | None:
        if self._cursor is None:
            self._cursor = self._new_cursor()
        row = self._cursor.execute(
            "SELECT path, coalesce(content_hash, '') FROM instances "
            "WHERE sop_instance_uid = ? AND status = 'present' AND starts_with(path, ?)",
            [uid, self._prefix]).fetchone()
        return None if row is None else (str(row[0]), str(row[1]))

    def __call__(self, uid: str) -> tuple[str, str] | None:
        t0 = time.perf_counter()
        try:
            try:
                return self._query(uid)
            except duckdb.Error:
                self.close()
                return self._query(uid)
        finally:
            self.seconds += time.perf_counter() - t0

    def close(self) -> None:
        cursor, self._cursor = self._cursor, None
        if cursor is not None:
            try:
                cursor.close()
            except duckdb.Error:
                pass

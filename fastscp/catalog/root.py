"""Which storage tree an index describes.

An index file and a storage tree belong together: the duplicate check is
warmed from the index's ``present`` rows, and a row that names a file in
another tree would make the receiver answer Success for an instance it has
not stored here. So the index records the (resolved) storage root it
describes, in ``catalog_meta.storage_root``, and a server start with another
root is refused (``IndexRootMismatch``, one line saying what to do) rather
than mixing two trees in one index.

``fastscp reindex`` re-describes an index for a new root on purpose
(``adopt=True``): the rows of files outside the new root are marked
``missing`` (kept, as history), the new root is recorded, and reconcile then
indexes the tree. That is also the way to follow storage moved to another
disk or path.

An index made before the root was recorded (schema version 2) has none: the
first start records its root, unless the index has present rows outside it,
which is refused the same way.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import duckdb

from .rows import refresh_study_stats, utc_timestamp

log = logging.getLogger(__name__)

__all__ = ["IndexRootMismatch", "bind_root", "recorded_root", "under_root_prefix"]


class IndexRootMismatch(Exception):
    """The index describes another storage tree; the message says what to do."""


def under_root_prefix(root: str | os.PathLike[str]) -> str:
    """``<root>/``: the prefix every path the index holds for ``root`` starts with."""
    return os.fspath(root).rstrip(os.sep) + os.sep


def recorded_root(conn: duckdb.DuckDBPyConnection) -> str | None:
    """The storage root recorded in the index, or None if none is yet."""
    row = conn.execute("SELECT storage_root FROM catalog_meta").fetchone()
    return None if row is None or row[0] is None else str(row[0])


def bind_root(conn: duckdb.DuckDBPyConnection, root: Path, *, db_name: str, adopt: bool = False) -> None:
    """Tie the index in ``conn`` to the resolved storage directory ``root``.

    Raises IndexRootMismatch if it describes another root (or, with no root
    recorded, has present rows outside ``root``), unless ``adopt``: then
    those rows are marked missing and ``root`` is recorded."""
    text = os.fspath(root)
    recorded = recorded_root(conn)
    if recorded == text:
        return
    prefix = under_root_prefix(root)
    outside = conn.execute(
        "SELECT count(*), min(path) FROM instances WHERE status = 'present' AND NOT starts_with(path, ?)",
        [prefix],
    ).fetchone()
    n_outside, first_outside = (int(outside[0]), outside[1]) if outside else (0, None)
    if not adopt and (recorded is not None or n_outside):
        what = (f"describes {recorded}, not {text}" if recorded is not None else
                f"lists {n_outside} present file(s) outside {text} (such as {first_outside})")
        raise IndexRootMismatch(
            f"index {db_name} {what}: pass --index-db for this tree, "
            f"or run `fastscp reindex --storage-dir {text} --index-db {db_name}` to re-describe it")
    conn.begin()
    try:
        if n_outside:
            conn.execute(
                "UPDATE instances SET status = 'missing', missing_since = ? "
                "WHERE status = 'present' AND NOT starts_with(path, ?)",
                [utc_timestamp(time.time()), prefix],
            )
            refresh_study_stats(conn, None)  # their studies' missing counts (rare: recount all)
        conn.execute("UPDATE catalog_meta SET storage_root = ?", [text])
        conn.commit()
    except BaseException:
        conn.rollback()
        raise
    if recorded is None and not n_outside:
        log.info("index %s now records its storage root %s", db_name, text)
    else:
        log.warning("index %s re-described for %s (was %s): %d row(s) of files outside it marked missing",
                    db_name, text, recorded or "not recorded", n_outside)

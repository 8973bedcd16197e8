"""The duplicate check's filter, kept from a clean stop to the next start.

Filling the filter at start reads every SOP Instance UID of the index
(``known.fill_filter``): 14 s for 10 M instances on the 2-core machine of
docs/benchmark.md, and DuckDB keeps the UID column's blocks in its cache
afterwards. Until the fill ends, every received instance the filter cannot
answer costs an index query on the event loop. So a clean stop writes the
filter beside the index (``<index>.uidfilter``, ``save``) and the next start
reads it back (``take``) instead of filling it, when the index file is as
that stop left it.

A filter may know more UIDs than the index (a false positive costs one
query) but never fewer: one that missed a UID would take its re-send for a
new instance. What makes a saved filter usable:

- it is written only when it held the whole index (its fill ended, or it
  was itself read from a saved copy), and only after the index was closed;
- it carries the index file's identity as that close left it (``FileStamp``:
  device, inode, size, modification and change times in ns) and is used only
  if the file is still the same and no write-ahead log lies beside it. DuckDB
  writes a commit to the WAL and a checkpoint into the file, so a write since
  shows in one or the other;
- every read-write open of the index through ``schema.connect``
  (``fastscp reindex``, the catalog tools, the next ``serve``) removes it
  first (``discard``), and the start that reads it removes it before
  reading, so it is used once at most;
- its bits carry an xxh3-64 checksum, and it must have taken at least as many
  UIDs as the index has rows, with room to grow (``fits``): each row's UID
  was added at least once, so fewer means it is not this index's filter.

Anything else, and the filter is filled from the index as before.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import struct
from pathlib import Path

from ..storage.uidfilter import UidFilter

log = logging.getLogger(__name__)

__all__ = ["SUFFIX", "FileStamp", "discard", "fits", "save", "saved_path", "take"]

SUFFIX = ".uidfilter"
_MAGIC = b"FSCPUIDF"
_VERSION = 1
# magic, version, hashes, bits per item, capacity, added, then the index
# file's device, inode, size, mtime_ns, ctime_ns, then the bits' xxh3-64
_HEADER = struct.Struct("<8sIIIQQQQQqqQ")


def saved_path(db: str | os.PathLike[str]) -> Path:
    """Where the filter of index ``db`` is kept between a stop and a start."""
    p = Path(db)
    return p.with_name(p.name + SUFFIX)


@dataclasses.dataclass(frozen=True, slots=True)
class FileStamp:
    """The identity of an index file at rest."""

    device: int
    inode: int
    size: int
    mtime_ns: int
    ctime_ns: int

    @classmethod
    def of(cls, db: str | os.PathLike[str]) -> FileStamp | None:
        """The stamp of ``db`` now; None when it is missing or has a
        write-ahead log beside it (``<db>.wal``: not at rest)."""
        p = Path(db)
        if p.with_name(p.name + ".wal").exists():
            return None
        try:
            st = p.stat()
        except FileNotFoundError:
            return None
        return cls(st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def save(db: str | os.PathLike[str], uid_filter: UidFilter) -> bool:
    """Write ``uid_filter``, which holds every UID of index ``db``, beside
    it; call it once the index is closed. False (and nothing left) when the
    index is not at rest or the write fails."""
    stamp = FileStamp.of(db)
    if stamp is None:
        log.info("duplicate check filter not kept for the next start: index %s is not closed", db)
        return False
    path = saved_path(db)
    tmp = path.with_name(path.name + ".tmp")
    header = _HEADER.pack(_MAGIC, _VERSION, uid_filter.hashes, uid_filter.bits_per_item, uid_filter.capacity,
                          uid_filter.added, stamp.device, stamp.inode, stamp.size, stamp.mtime_ns, stamp.ctime_ns,
                          uid_filter.bits_digest())
    try:
        with open(tmp, "wb") as fh:
            fh.write(header)
            uid_filter.write_bits(fh)
        # No fsync: a copy cut short by a crash fails its checksum at the
        # next start, which then fills the filter from the index.
        os.replace(tmp, path)
    except OSError as exc:
        log.warning("duplicate check filter not kept for the next start: %s", exc)
        try:
            os.unlink(tmp)
        except OSError:
            pass
        return False
    log.info("duplicate check filter kept for the next start: %s (%.1f MB)", path, uid_filter.nbytes / 1e6)
    return True


def discard(db: str | os.PathLike[str]) -> None:
    """Remove the kept filter of ``db``, if any: the index is about to be
    opened for writing (raises OSError if it cannot be removed)."""
    try:
        os.unlink(saved_path(db))
    except FileNotFoundError:
        pass


def take(db: str | os.PathLike[str]) -> UidFilter | None:
    """The filter kept by the last clean stop of index ``db``, if it
    describes the file as it is now (call it before opening the index); the
    kept copy is removed whatever is found. None if there is none or it may
    not be used (one log line says why)."""
    path = saved_path(db)
    try:
        fh = open(path, "rb")
    except FileNotFoundError:
        return None
    except OSError as exc:
        log.warning("duplicate check filter kept at %s cannot be read (%s): filling it from the index", path, exc)
        return None
    with fh:
        try:
            os.unlink(path)  # used once at most, whatever follows
        except OSError as exc:
            log.warning("duplicate check filter kept at %s cannot be removed (%s): filling it from the index",
                        path, exc)
            return None
        why = ""
        try:
            raw = fh.read(_HEADER.size)
            if len(raw) != _HEADER.size:
                raise ValueError("file too short")
            (magic, version, hashes, bits_per_item, capacity, added, device, inode, size, mtime_ns, ctime_ns,
             digest) = _HEADER.unpack(raw)
            if magic != _MAGIC or version != _VERSION:
                raise ValueError("not a filter of this version")
            if FileStamp.of(db) != FileStamp(device, inode, size, mtime_ns, ctime_ns):
                why = "the index changed since it was kept"
            else:
                uid_filter = UidFilter.read(fh, capacity, bits_per_item, hashes, added)
                if fh.read(1):
                    raise ValueError("file too long")
                if uid_filter.bits_digest() != digest:
                    raise ValueError("checksum differs")
                return uid_filter
        except ValueError as exc:
            why = f"damaged ({exc})"
    log.info("duplicate check filter kept at %s not used: %s; filling it from the index", path, why)
    return None


def fits(uid_filter: UidFilter, rows: int) -> bool:
    """Whether a kept filter may serve an index of ``rows`` instances: it
    took at least that many UIDs, and has room for half as many again
    (``UidFilter.for_rows`` sizes a new one for twice the rows)."""
    return uid_filter.added >= rows and 2 * uid_filter.capacity >= 3 * rows

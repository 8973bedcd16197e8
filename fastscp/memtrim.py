"""Give back the clean file pages start-up touched once.

Importing DuckDB, pydicom and the rest, and opening the index, fault in
tens of megabytes of read-only pages of shared libraries (DuckDB's library
alone: about 28 MB of its 66 MB file, measured on the 2-core EPYC machine of
docs/benchmark.md), most of them never used again by a receiver. They count
in the process's resident set and its PSS as long as they stay mapped, and
the kernel unmaps them only under memory pressure.

``release_clean_pages`` drops them from this process's page tables with
``madvise(MADV_DONTNEED)`` (madvise(2)): only the private, read-only
mappings of loaded libraries (files the process also maps executable)
holding no anonymous (copy-on-write) page, so that what is dropped is
exactly the file's own bytes: text and read-only data, not the relocated
data the loader made read-only afterwards (RELRO), which holds anonymous
pages. The pages stay in the page cache; a page used again comes back on a
minor fault with the same contents. Nothing writable, nothing shared, no
data file and no anonymous memory is touched. A library stays mapped for the
process's life (CPython never unloads an extension module), so a mapping
read from ``/proc/self/smaps`` is still the same one at the ``madvise`` that
follows. Linux only; elsewhere it does nothing.
"""

from __future__ import annotations

import ctypes
import logging
import sys
from collections.abc import Iterator
from dataclasses import dataclass

log = logging.getLogger(__name__)

MADV_DONTNEED = 4


@dataclass(frozen=True, slots=True)
class Mapping:
    """One line of ``/proc/self/smaps`` and the counters this module reads."""

    start: int
    end: int
    perms: str
    inode: int
    path: str
    rss_kib: int
    anonymous_kib: int

    @property
    def clean_file_pages(self) -> bool:
        """Private (``p``), not writable, backed by a file (an inode and an
        absolute path), with no anonymous page: its resident pages are the
        file's bytes, and dropping them loses nothing."""
        return (self.inode != 0 and self.path.startswith("/") and self.perms.endswith("p")
                and "w" not in self.perms and self.anonymous_kib == 0)


def releasable(maps: list[Mapping]) -> list[Mapping]:
    """The mappings ``release_clean_pages`` drops: those with only clean
    file pages, of files the process also maps executable (libraries)."""
    libraries = {m.path for m in maps if "x" in m.perms and m.inode != 0 and m.path.startswith("/")}
    return [m for m in maps if m.clean_file_pages and m.path in libraries]


def parse_smaps(lines: Iterator[str]) -> list[Mapping]:
    """The mappings of an smaps text (proc(5)): a header line per mapping,
    then ``Key: value kB`` lines, of which ``Rss`` and ``Anonymous`` are
    kept. A mapping whose ``Anonymous`` line is missing counts as holding
    anonymous pages (never released)."""
    out: list[Mapping] = []
    head: list[str] | None = None
    fields: dict[str, int] = {}

    def close() -> None:
        if head is not None:
            lo, _, hi = head[0].partition("-")
            out.append(Mapping(int(lo, 16), int(hi, 16), head[1], int(head[4]),
                               head[5] if len(head) > 5 else "", fields.get("Rss", 0),
                               fields.get("Anonymous", -1)))

    for line in lines:
        first = line.split(None, 1)[0] if line.strip() else ""
        if first.endswith(":"):
            parts = line.split()
            if len(parts) >= 2 and parts[1].isdigit():
                fields[first[:-1]] = int(parts[1])
            continue
        if "-" in first:
            close()
            head = line.split(None, 5)
            if len(head) > 5:
                head[5] = head[5].strip()
            fields = {}
    close()
    return out


def release_clean_pages() -> tuple[int, int]:
    """Drop the resident pages of every releasable mapping of this process;
    returns (mappings, KiB that were resident in them). Does nothing (0, 0)
    off Linux or where ``/proc/self/smaps`` cannot be read."""
    if not sys.platform.startswith("linux"):
        return 0, 0
    try:
        with open("/proc/self/smaps", encoding="ascii", errors="replace") as f:
            maps = parse_smaps(iter(f))
        libc = ctypes.CDLL(None, use_errno=True)
    except OSError as exc:
        log.debug("clean pages not released: %s", exc)
        return 0, 0
    madvise = libc.madvise
    madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    madvise.restype = ctypes.c_int
    count = kib = 0
    for m in releasable(maps):
        if m.rss_kib and madvise(m.start, m.end - m.start, MADV_DONTNEED) == 0:
            count += 1
            kib += m.rss_kib
    return count, kib


__all__ = ["Mapping", "parse_smaps", "releasable", "release_clean_pages"]

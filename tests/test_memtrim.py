"""memtrim: which mappings count as clean file pages, and that releasing them
drops them from the resident set without changing a byte, while a read-only
mapping holding a copy-on-write page is left alone."""

from __future__ import annotations

import ctypes
import mmap
import sys
from pathlib import Path
from typing import Any

import pytest

from fastscp.memtrim import Mapping, parse_smaps, release_clean_pages

SMAPS = """\
7f00000000-7f00010000 r--p 00000000 08:01 1234                       /usr/lib/libfoo.so
Size:                 64 kB
Rss:                  40 kB
Anonymous:             0 kB
7f00010000-7f00020000 r-xp 00010000 08:01 1234                       /usr/lib/libfoo.so
Size:                 64 kB
Rss:                  64 kB
Anonymous:             0 kB
7f00020000-7f00021000 r--p 00020000 08:01 1234                       /usr/lib/libfoo.so
Rss:                   4 kB
Anonymous:             4 kB
7f00021000-7f00022000 rw-p 00021000 08:01 1234                       /usr/lib/libfoo.so
Rss:                   4 kB
Anonymous:             0 kB
7f00030000-7f00031000 r--s 00000000 08:01 99                         /dev/shm/shared
Rss:                   4 kB
Anonymous:             0 kB
7f00040000-7f00050000 r--p 00000000 08:01 77                         /data/file with spaces.bin
Rss:                   8 kB
Anonymous:             0 kB
7f00060000-7f00070000 r--p 00000000 08:01 78                         /data/no-anonymous-line
Rss:                   8 kB
55d000000000-55d000100000 rw-p 00000000 00:00 0                      [heap]
Rss:                 512 kB
Anonymous:           512 kB
7ffd00000000-7ffd00001000 r-xp 00000000 00:00 0                      [vdso]
Rss:                   4 kB
Anonymous:             0 kB
7f00080000-7f00090000 ---p 00000000 00:00 0
Rss:                   0 kB
Anonymous:             0 kB
"""


def test_parse_and_choose() -> None:
    maps = parse_smaps(iter(SMAPS.splitlines(keepends=True)))
    assert [m.path for m in maps] == [
        "/usr/lib/libfoo.so", "/usr/lib/libfoo.so", "/usr/lib/libfoo.so", "/usr/lib/libfoo.so",
        "/dev/shm/shared", "/data/file with spaces.bin", "/data/no-anonymous-line", "[heap]", "[vdso]", ""]
    assert maps[1] == Mapping(0x7f00010000, 0x7f00020000, "r-xp", 1234, "/usr/lib/libfoo.so", 64, 0)
    assert maps[6].anonymous_kib == -1
    chosen = [m.path + " " + m.perms for m in maps if m.releasable]
    # text and read-only data of the file, and a plain read-only file mapping;
    # not: relocated data made read-only (anonymous pages), writable data,
    # shared mappings, a mapping whose anonymous count is unknown, anonymous memory
    assert chosen == ["/usr/lib/libfoo.so r--p", "/usr/lib/libfoo.so r-xp", "/data/file with spaces.bin r--p"]


def _mapping(path: Path) -> Mapping:
    maps = parse_smaps(iter(Path("/proc/self/smaps").read_text().splitlines(keepends=True)))
    return next(m for m in maps if m.path == str(path))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="madvise and /proc/self/smaps are Linux's")
def test_release_drops_clean_pages_and_keeps_copied_ones(tmp_path: Path) -> None:
    size = 64 * mmap.PAGESIZE
    data = bytes(range(256)) * (size // 256)
    clean_file, copied_file = tmp_path / "clean.bin", tmp_path / "copied.bin"
    clean_file.write_bytes(data)
    copied_file.write_bytes(data)
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    with open(clean_file, "rb") as fh:
        clean = mmap.mmap(fh.fileno(), size, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ)
    with open(copied_file, "r+b") as fh:
        copied = mmap.mmap(fh.fileno(), size, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ | mmap.PROT_WRITE)
    view = ctypes.c_char.from_buffer(copied)
    addr = ctypes.addressof(view)
    del view
    try:
        assert clean[:] == data  # every page faulted in
        copied[5] = 0xEE  # a private copy of the first page: anonymous memory
        assert copied[:] == data[:5] + b"\xee" + data[6:]
        # then made read-only, as the loader does with relocated data (RELRO)
        assert libc.mprotect(addr, size, mmap.PROT_READ) == 0
        before_clean, before_copied = _mapping(clean_file), _mapping(copied_file)
        assert before_clean.releasable and before_clean.rss_kib == size // 1024
        assert before_copied.perms == "r--p" and before_copied.anonymous_kib > 0 and not before_copied.releasable

        regions, kib = release_clean_pages()

        assert regions >= 1 and kib >= size // 1024
        assert _mapping(clean_file).rss_kib == 0
        assert _mapping(copied_file).rss_kib == before_copied.rss_kib
        assert clean[:] == data  # the same bytes, faulted in again from the page cache
        assert copied[:] == data[:5] + b"\xee" + data[6:]  # the private copy kept
    finally:
        libc.mprotect(addr, size, mmap.PROT_READ | mmap.PROT_WRITE)
        clean.close()
        copied.close()


def test_serve_releases_after_listening_and_after_index_start_up(start_server: Any, tmp_path: Path) -> None:
    srv = start_server("--log-level", "debug")
    text = srv.log_once_it_says("listening: released", "index start-up done: released")
    assert "listening: released" in text and "index start-up done: released" in text, text[-3000:]


def test_serve_leaves_pages_when_told(start_server: Any, tmp_path: Path) -> None:
    cfg = tmp_path / "off.yaml"
    cfg.write_text("server:\n  release_start_up_pages: false\n")
    srv = start_server("--log-level", "debug", "--config", str(cfg)).indexed()
    srv.stop()  # the start-up thread's end (its reconcile line) and the stop are both logged by now
    text = srv.log_text()
    assert "stopped:" in text and "clean file pages" not in text, text[-3000:]

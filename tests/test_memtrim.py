"""memtrim: which mappings count as a library's clean pages, and that
releasing them drops them from the resident set while the library's
relocated data (read-only, but copied pages) stays, and its code runs on;
and that ``fastscp serve`` releases them unless told not to."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

from fastscp._ext import bloom
from fastscp.memtrim import Mapping, parse_smaps, releasable, release_clean_pages

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
    assert [m.path for m in maps if m.clean_file_pages] == [
        "/usr/lib/libfoo.so", "/usr/lib/libfoo.so", "/data/file with spaces.bin"]
    chosen = [m.path + " " + m.perms for m in releasable(maps)]
    # the library's text and read-only data; not: its relocated data made
    # read-only (anonymous pages), its writable data, a shared mapping, a data
    # file (no executable mapping), a mapping whose anonymous count is
    # unknown, anonymous memory, the vDSO
    assert chosen == ["/usr/lib/libfoo.so r--p", "/usr/lib/libfoo.so r-xp"]


def _mappings_of(path: str) -> list[Mapping]:
    maps = parse_smaps(iter(Path("/proc/self/smaps").read_text().splitlines(keepends=True)))
    return [m for m in maps if m.path == path]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="madvise and /proc/self/smaps are Linux's")
def test_release_drops_a_library_s_clean_pages_and_keeps_its_relocated_data() -> None:
    # one of our own small compiled modules, which nothing runs during this test
    library = str(Path(bloom.__file__).resolve())
    bits = bytearray(64)
    digest = bytes(range(16))
    bloom.set_bits(bits, digest, 512, 4)
    assert bloom.test_bits(bits, digest, 512, 4)
    before = _mappings_of(library)
    text = [m for m in before if "x" in m.perms]
    relro = [m for m in before if m.perms == "r--p" and m.anonymous_kib > 0]
    assert text and text[0].rss_kib > 0
    assert relro, before  # the loader's relocated data, made read-only

    regions, kib = release_clean_pages()

    assert regions >= len(text) and kib >= text[0].rss_kib
    after = {m.start: m for m in _mappings_of(library)}
    assert after[text[0].start].rss_kib == 0
    for m in relro:  # copied pages kept: dropping them would lose the relocations
        assert after[m.start].rss_kib == m.rss_kib and after[m.start].anonymous_kib == m.anonymous_kib
    # the code runs again (its pages come back from the page cache)
    bits2 = bytearray(64)
    bloom.set_bits(bits2, digest, 512, 4)
    assert bits2 == bits and bloom.test_bits(bits2, digest, 512, 4)
    assert {m.start: m for m in _mappings_of(library)}[text[0].start].rss_kib > 0


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

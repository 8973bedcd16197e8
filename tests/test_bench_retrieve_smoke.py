"""Smoke run of bench/bench_retrieve.py on a tiny corpus: fastscp, dcmqrscp,
Orthanc and a second fastscp (--baseline) all move and get every instance to the dcmtk peers (the
harness checks the count of files received after each run). It asserts no
timings."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"
sys.path.insert(0, str(BENCH))

import bench_retrieve  # noqa: E402  (bench/ is put on the path just above)

pytestmark = pytest.mark.interop


def test_bench_retrieve_runs_all_three(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BENCH_TMP", str(tmp_path))
    # --baseline: the package of this checkout again, as "fastscp-before"
    # and once more under a name of its own (--baseline NAME=DIR)
    assert bench_retrieve.main(["--count", "30", "--runs", "1", "--orthanc", "--baseline", str(BENCH.parent),
                                "--baseline", f"step={BENCH.parent}",
                                "--corpus-root", str(tmp_path / "corpus")]) == 0
    out = capsys.readouterr().out
    for mode in ("move", "get"):
        for server in ("fastscp", "dcmqrscp", "orthanc", "fastscp-before", "step"):
            assert f"| {mode} | {server} |" in out
        assert f"{mode}: fastscp / dcmqrscp = " in out and f"{mode}: fastscp / orthanc = " in out
        assert f"{mode}: fastscp / fastscp-before = " in out and f"{mode}: fastscp / step = " in out
    assert "30 x " in out and "1 patient(s)" in out
    # the CPU table: one row per server and mode, the server's and the peers' time per instance
    cpu_rows = [line.split("|")[1:-1] for line in out.split("CPU time per instance", 1)[1].splitlines()
                if line.startswith(("| move |", "| get |"))]
    assert len(cpu_rows) == 10
    assert all(int(row[3]) > 0 for row in cpu_rows), cpu_rows  # the SCUs (and storescp) always spend some


def test_clear_sets_the_received_files_aside_without_deleting_them(tmp_path: Path) -> None:
    """Between timed runs the received folder is renamed aside, not emptied
    file by file: a deletion would make the next run's file creations walk
    the freed inodes on a no-journal ext4 (docs/benchmark.md, "Retrieve
    with the received folders set aside, not deleted")."""
    received = tmp_path / "got"
    received.mkdir()
    for name in ("a.dcm", "b.dcm"):
        (received / name).write_bytes(b"x")
    bench_retrieve.clear(received)
    assert received.is_dir() and not any(received.iterdir())
    kept = sorted(p.name for p in (tmp_path / "set-aside").glob("got-*/*"))
    assert kept == ["a.dcm", "b.dcm"]
    (received / "c.dcm").write_bytes(b"x")
    bench_retrieve.clear(received)  # a second run's files go to a folder of their own
    assert len(list((tmp_path / "set-aside").glob("got-*"))) == 2

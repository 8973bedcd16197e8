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

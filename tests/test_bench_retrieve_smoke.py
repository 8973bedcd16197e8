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
    assert bench_retrieve.main(["--count", "30", "--runs", "1", "--orthanc", "--baseline", str(BENCH.parent),
                                "--corpus-root", str(tmp_path / "corpus")]) == 0
    out = capsys.readouterr().out
    for mode in ("move", "get"):
        for server in ("fastscp", "dcmqrscp", "orthanc", "fastscp-before"):
            assert f"| {mode} | {server} |" in out
        assert f"{mode}: fastscp / dcmqrscp = " in out and f"{mode}: fastscp / orthanc = " in out
        assert f"{mode}: fastscp / fastscp-before = " in out
    assert "30 x " in out and "1 patient(s)" in out

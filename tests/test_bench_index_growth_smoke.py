"""Smoke run of bench/bench_index_growth.py on tiny indexes: the harness
builds an index, starts ``fastscp serve`` on it, sees it listen, fill its
duplicate filter and reconcile in the background, and reads its memory. It
asserts no timings: a timing is a benchmark figure, not a test."""
from __future__ import annotations

import json
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent / "bench"
sys.path.insert(0, str(BENCH))

import bench_index_growth  # noqa: E402


def test_index_growth_bench_runs_on_a_tiny_index(tmp_path: Path) -> None:
    out = tmp_path / "runs.json"
    rc = bench_index_growth.main(["--sizes", "0,2000", "--files", "5", "--work-dir", str(tmp_path / "work"),
                                  "--timeout", "120", "--json", str(out), "--restart"])
    assert rc == 0
    runs = json.loads(out.read_text())["runs"]
    assert [(r["rows"], r["start"]) for r in runs] == [(0, "first"), (0, "restart"), (2000, "first"),
                                                       (2000, "restart")]
    for r in runs:
        assert 0 < r["listen_s"] <= r["ready_s"] and r["listen_s"] <= r["reconciled_s"]
        assert 0 < r["pss_listen_mb"] <= r["pss_peak_mb"]
        assert r["index_mb"] > 0
    assert not list((tmp_path / "work").iterdir())  # each case's tree and index removed


def test_index_growth_bench_compares_the_old_map_with_the_filter(tmp_path: Path) -> None:
    out = tmp_path / "compared.json"
    assert bench_index_growth.main(["--compare-map", "500", "--work-dir", str(tmp_path / "work"),
                                    "--json", str(out)]) == 0
    compared = json.loads(out.read_text())["compared"]
    assert [(c["structure"], c["rows"]) for c in compared] == [("filter", 500), ("map", 500)]
    assert all(c["pss_mb"] >= 0 and c["seconds"] > 0 for c in compared)
    assert not list((tmp_path / "work").iterdir())

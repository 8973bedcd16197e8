"""Smoke run of bench/bench_index_scale.py on a tiny index: the harness fills
the index by DuckDB to each checkpoint, writes batches through BatchWriter
(new rows and re-sends of existing UIDs) and runs the dashboard's three
queries. It asserts what the run did, not how fast: a timing is a
benchmark figure, not a test."""
from __future__ import annotations

import json
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent / "bench"
sys.path.insert(0, str(BENCH))

import bench_index_scale  # noqa: E402

from fastscp.catalog.stats import TREND_SQL  # noqa: E402
from fastscp.monitor import http  # noqa: E402


def test_the_bench_times_the_status_pages_trend_query() -> None:
    assert bench_index_scale.TREND_SQL is TREND_SQL is http.TREND_SQL


def test_index_scale_bench_runs_on_a_tiny_index(tmp_path: Path) -> None:
    out = tmp_path / "points.json"
    work = tmp_path / "work"
    rc = bench_index_scale.main(["--rows", "4000", "--checkpoints", "0,2000", "--batches", "2", "--resend-batches", "1",
                                 "--batch-size", "300", "--resend", "20", "--repeat", "1", "--work-dir", str(work),
                                 "--json", str(out)])
    assert rc == 0
    points = json.loads(out.read_text())["points"]
    # each point: the rows filled by DuckDB plus the new rows the earlier points' batches wrote
    # (two batches of 300 new UIDs, then one of 280 new and 20 re-sent; the first point has
    # nothing to re-send)
    assert [p["rows"] for p in points] == [0, 2000 + 900, 4000 + 900 + 880]
    for p in points:
        assert len(p["batch_us_per_row"]) == 2 and all(t > 0 for t in p["batch_us_per_row"])
        assert len(p["resend_us_per_row"]) == 1 and p["resend_mean_us_per_row"] > 0 and p["fallbacks"] == 0
        assert p["patient_ms"] > 0 and p["trend_ms"] > 0 and p["latest_ms"] > 0
        assert p["patient_rows"] >= 1 and p["trend_rows"] >= 1
    # the latest 20 studies: the first point has only its batches' 9 (100 instances a study)
    assert [p["latest_rows"] for p in points] == [9, 20, 20]
    assert points[1]["patient_rows"] == 2  # two studies a patient in the filled rows
    assert not (work / "index.db").exists()  # removed without --keep

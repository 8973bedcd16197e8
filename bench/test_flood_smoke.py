"""Smoke run of the flood suite on a tiny corpus: the harness works and every
receiver that is installed got every image. It asserts no timings.

Run: python -m pytest bench/test_flood_smoke.py   (fastscp is included only
when FASTSCP_SMOKE=1, until its receiver serves.)
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

import sys

sys.path.insert(0, str(Path(__file__).resolve().parent))

import flood  # noqa: E402
from receivers import dcmtk_tool  # noqa: E402


def _available() -> list[str]:
    names = []
    try:
        dcmtk_tool("storescu")
        dcmtk_tool("storescp")
        names += ["storescp", "storescp-fork"]
    except FileNotFoundError:
        pytest.skip("dcmtk (storescu) is not installed")
    names.append("pynetdicom")
    if shutil.which("Orthanc") or os.path.exists("/usr/sbin/Orthanc"):
        names.append("orthanc")
    if os.environ.get("FASTSCP_SMOKE") == "1":
        names.append("fastscp")
    return names


def test_every_receiver_gets_every_image(tmp_path: Path) -> None:
    names = _available()
    rc = flood.main([
        "--receivers", ",".join(names), "--corpus", "large,small,multiframe", "--assocs", "1,2",
        "--large-count", "6", "--small-count", "10", "--multiframe-mb", "4",
        "--latency-count", "3", "--repeat", "1", "--settle", "0",
        "--corpus-dir", str(tmp_path / "corpus"), "--work-dir", str(tmp_path / "work"),
        "--out-dir", str(tmp_path / "out"),
        "--update-readme-snippet", str(tmp_path / "snippet.md"),
    ])
    run = json.loads((tmp_path / "out" / "results.json").read_text())
    problems = [(r["receiver"], r["corpus"], r["assocs"], r.get("error"), r.get("arrived"))
                for r in run["results"] if not r.get("all_arrived")]
    assert not problems, problems
    assert rc == 0
    assert len(run["results"]) == len(names) * 3 * 2
    assert (tmp_path / "out" / "images_per_s.png").stat().st_size > 0
    assert "| storescp |" in (tmp_path / "snippet.md").read_text()
    latencies = [r["latency"] for r in run["results"] if r["assocs"] == 1 and r["corpus"] != "multiframe"]
    assert all(lat["count"] > 0 for lat in latencies)

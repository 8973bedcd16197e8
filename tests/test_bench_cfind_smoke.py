"""Smoke run of bench/bench_cfind.py on a small generated index: the harness
fills through BatchWriter, every PatientID query finds that patient's two
studies, and the date/modality queries run. It asserts no timings."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"
sys.path.insert(0, str(BENCH))

import bench_cfind


def test_bench_cfind_runs_and_finds_each_patients_studies(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "argv", ["bench_cfind.py", "--instances", "2000", "--queries", "20",
                                      "--db", str(tmp_path / "index.db")])
    assert bench_cfind.main() == 0
    out = capsys.readouterr().out
    assert "index: 2000 instances, 20 studies, 10 patients" in out
    patient = re.search(r"PatientID .* matches/query mean ([0-9.]+) \(n=20\)", out)
    assert patient is not None and float(patient.group(1)) == 2.0
    assert re.search(r"date range \+ modality .* \(n=20\)", out)

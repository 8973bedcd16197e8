"""Smoke run of bench/idle_pss.py: it starts the real receiver (the venv's
interpreter, ``-m fastscp.cli``) on an empty index, reads its PSS once it
listens and stops it. It asserts what the run did, not how much memory: a
figure is a benchmark result, not a test."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent / "bench" / "idle_pss.py"


def test_idle_pss_bench_measures_a_running_receiver(tmp_path: Path) -> None:
    work = tmp_path / "work"
    out = subprocess.run([sys.executable, str(BENCH), "--runs", "1", "--settle", "0.5", "--work-dir", str(work),
                          "--cmd", f"a={sys.executable} -m fastscp.cli", "--cmd", f"b={sys.executable} -m fastscp.cli",
                          "--", "--status-port", "0"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    rows = re.findall(r"^(a|b) +Pss +(\d+) kB +anon +(\d+) +file +(\d+) +rss +(\d+) +threads (\d+)$",
                      out.stdout, re.MULTILINE)
    assert [r[0] for r in rows] == ["a", "b"], out.stdout
    for _, pss, anon, file, rss, threads in rows:
        # a real interpreter with DuckDB loaded: tens of MB, split into anonymous and file pages
        assert 20_000 < int(pss) <= int(rss)
        assert int(anon) > 0 and int(file) > 0 and int(threads) >= 2
    assert list(work.iterdir()) == []  # each run's storage folder and index are removed

"""Smoke run of the flood suite (bench/flood.py) on a tiny corpus: the
harness works and every receiver it compares got every image, over 1 and 2
associations, for the large, small and multi-frame corpora. It asserts no
timings: a timing is a benchmark figure, not a test.

Every receiver the suite compares must be installed: dcmtk (storescp,
storescu) and Orthanc come from Debian (`.ci/run` installs them); fastscp is
this package; pynetdicom is a test dependency; the sink (bench/sink.c) is
compiled with the C compiler the package build needs anyway.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent / "bench"
sys.path.insert(0, str(BENCH))

import flood  # noqa: E402
from receivers import dcmtk_tool, orthanc_exe  # noqa: E402

RECEIVERS = ["fastscp", "fastscp-fsync", "fastscp-nopoll", "storescp", "storescp-fork", "pynetdicom", "orthanc", "sink",
             "pyfloor"]


def _missing_peers() -> list[str]:
    missing = []
    for tool in ("storescu", "storescp"):
        try:
            dcmtk_tool(tool)
        except FileNotFoundError:
            missing.append(f"dcmtk {tool}")
    try:
        orthanc_exe()
    except FileNotFoundError:
        missing.append("Orthanc (Debian package orthanc)")
    return missing


def test_every_receiver_gets_every_image(tmp_path: Path) -> None:
    missing = _missing_peers()
    assert not missing, f"the suite's peers are not installed: {missing}; run .ci/run"
    rc = flood.main([
        "--receivers", ",".join(RECEIVERS), "--corpus", "large,small,multiframe", "--assocs", "1,2",
        "--large-count", "6", "--small-count", "10", "--multiframe-mb", "4",
        "--latency-count", "3", "--repeat", "1", "--settle", "0",
        "--corpus-dir", str(tmp_path / "corpus"), "--work-dir", str(tmp_path / "work"),
        "--out-dir", str(tmp_path / "out"),
        "--update-readme-snippet", str(tmp_path / "snippet.md"), "--ballast-mb", "2",
        "--send-pdu", "16384",  # as modalities send to dcmtk's and pynetdicom's receivers: many PDVs a data set
    ])
    run = json.loads((tmp_path / "out" / "results.json").read_text())
    problems = [(r["receiver"], r["corpus"], r["assocs"], r.get("error"), r.get("arrived"))
                for r in run["results"] if not r.get("all_arrived")]
    assert not problems, problems
    assert rc == 0
    assert len(run["results"]) == len(RECEIVERS) * 3 * 2
    assert not (tmp_path / "work" / ".trash").exists()  # the trees put aside are deleted at the end
    assert (tmp_path / "out" / "images_per_s.png").stat().st_size > 0
    assert "| storescp |" in (tmp_path / "snippet.md").read_text()
    latencies = [r["latency"] for r in run["results"] if r["assocs"] == 1 and r["corpus"] != "multiframe"]
    assert all(lat["count"] > 0 and lat["failures"] == 0 for lat in latencies), latencies
    assert run["latency_sender"] == "raw"  # bench/rawscu.py, the default
    assert run["send_pdu"] == 16384
    # the ballast freed before each flood (free_hot_pages), and removed again
    assert all(r["ballast_s"] > 0 for r in run["results"]), [r["ballast_s"] for r in run["results"]]
    assert not (tmp_path / "work" / ".ballast").exists()
    assert isinstance(run["machine"]["page_reporting"], dict)


def test_hotpath_benchmark_runs_every_corpus(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    """bench/bench_hotpath.py (the receive path fed from memory) runs on each
    corpus, with and without the catalog writer, and every instance it fed
    was answered Success and stored (it exits 1 otherwise)."""
    import bench_hotpath

    for corpus, count, extra in (("small", 20, ["--floor", "--lane", "--cold-mb", "1"]),
                                 ("large", 4, ["--observers", "--lane"]),
                                 ("multiframe", None, ["--multiframe-mb", "3"])):
        argv = ["--corpus", corpus, "--repeat", "1", "--json", "--corpus-dir", str(tmp_path / "corpus"),
                "--work-dir", str(tmp_path), *extra]
        if count is not None:
            argv += ["--count", str(count)]
        assert bench_hotpath.main(argv) == 0, corpus
        figures = json.loads(capsys.readouterr().out)
        assert figures["instances"] == (count or 1)
        assert figures["dataset_bytes"] > 0 and figures["instances_per_s"] > 0
        assert figures["observers"] == ("--observers" in extra)
        assert figures["cold_mb"] == (1 if "--cold-mb" in extra else 0)
        # --floor: bench/pyfloor.py's protocol fed the same stream (it exits 1
        # unless every instance was answered Success and stored there too)
        assert ("vs_floor" in figures) == ("--floor" in extra)
        if "--floor" in extra:
            assert figures["floor_us_per_instance"] > 0 and figures["vs_floor"] > 0
        # --lane: bench/lane.py, fastscp's storage work without the layers
        # (also exits 1 unless every instance was answered Success and stored)
        assert ("vs_lane" in figures) == ("--lane" in extra)
        if "--lane" in extra:
            assert figures["lane_us_per_instance"] > 0 and figures["vs_lane"] > 0


def test_median_run_keeps_the_median_and_names_a_failed_repeat() -> None:
    runs = [
        {"wall_s": 3.0, "all_arrived": True, "arrived": 10, "storescu_exit_codes": [0]},
        {"wall_s": 1.0, "all_arrived": False, "arrived": 9, "storescu_exit_codes": [1]},
        {"wall_s": 2.0, "all_arrived": True, "arrived": 10, "storescu_exit_codes": [0]},
    ]
    best = flood.median_run(runs)
    assert best["wall_s"] == 2.0
    assert best["all_arrived"] is False  # one repeat lost an image
    assert best["repeats_wall_s"] == [3.0, 1.0, 2.0]
    assert best["repeats_failed"] == [{"repeat": 1, "arrived": 9, "storescu_exit_codes": [1], "error": None}]


def test_report_gives_each_flood_its_ratios_spread_and_pss() -> None:
    """The table compares each receiver with storescp, with the faster of
    dcmtk's two modes and with the sink, on the same flood only."""
    import report

    def row(receiver: str, wall: float, assocs: int = 4, walls: tuple[float, ...] = ()) -> dict[str, object]:
        return {"receiver": receiver, "corpus": "small", "assocs": assocs, "images": 10, "megabytes": 1.0,
                "wall_s": wall, "repeats_wall_s": list(walls) or [wall], "all_arrived": True,
                "peak_rss_mb": 50.0, "peak_pss_mb": 42.0}

    results = [row("fastscp", 1.2, walls=(1.1, 1.2, 1.4)), row("storescp", 2.0), row("storescp-fork", 1.5),
               row("sink", 1.0), row("storescp", 0.1, assocs=1)]
    run = {"results": results, "repeat": 3, "started": "now", "storage": "ext4",
           "machine": {"nproc": 2, "cpu_model": "cpu", "mem_gib": 1, "os": "linux"}}
    line = next(s for s in report.markdown_table(run).splitlines() if s.startswith("| fastscp |"))
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert cells[5] == "1.20 (1.10-1.40)"
    assert cells[8:11] == ["0.60x", "0.80x", "1.20x"]  # storescp, best dcmtk (--fork), sink
    assert cells[13] == "42"  # peak PSS MB

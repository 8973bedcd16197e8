"""Smoke run of bench/bench_cfind_dimse.py on a few hundred files: both
servers (fastscp, dcmtk dcmqrscp) start, every query kind runs both ways,
and fastscp's answers are the studies the generated data holds. It asserts
no timings."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

from fastscp.scu.commands import answers_to_the_caller

BENCH = Path(__file__).resolve().parent.parent / "bench"
sys.path.insert(0, str(BENCH))

import bench_cfind_dimse  # noqa: E402  (bench/ is not a package: on sys.path above)

pytestmark = pytest.mark.interop


def test_bench_cfind_dimse_runs_both_servers(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "argv", ["bench_cfind_dimse.py", "--instances", "200", "--studies", "20",
                                      "--queries", "5", "--processes", "3", "--workdir", str(tmp_path / "w")])
    assert bench_cfind_dimse.main() == 0
    out = capsys.readouterr().out
    assert "data: 200 instances, 20 studies, 10 patients" in out
    rows = re.findall(r"^\| (by PatientID|StudyDate[^|]*) \| ([^|]+) \| (fastscp|dcmqrscp|orthanc) \| (\d+) \|", out, re.M)
    assert len(rows) == 12  # 2 kinds x 2 ways x 3 servers
    # every PatientID query finds that patient's two studies on both servers
    by_patient = re.findall(r"^\| by PatientID .*$", out, re.M)
    assert len([r for r in by_patient if r.endswith("| 2.0 |")]) == 6, by_patient  # which server, if one fails
    assert "fastscp, " not in out  # no note: fastscp returned what the data holds, every query
    assert len(re.findall(r"(dcmqrscp|orthanc) p50 / fastscp p50 = [0-9.]+", out)) == 8


def test_bench_cfind_dimse_raw_client_and_reuse(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """--raw times a bare-socket client against the three servers, --floor
    an echoscu process against each, and a --reuse run serves what the
    first left in --workdir without loading."""
    work = tmp_path / "w"
    base = ["bench_cfind_dimse.py", "--instances", "60", "--studies", "6", "--queries", "3", "--processes", "1",
            "--workdir", str(work)]
    monkeypatch.setattr(sys, "argv", base)
    assert bench_cfind_dimse.main() == 0
    capsys.readouterr()
    monkeypatch.setattr(sys, "argv", [*base, "--reuse", "--raw", "--floor"])
    assert bench_cfind_dimse.main() == 0
    out = capsys.readouterr().out
    assert "reused from" in out and "indexed in" not in out  # nothing loaded again
    raw = re.findall(r"^\| (by PatientID|StudyDate[^|]*) \| held association \(raw socket\) \| "
                     r"(fastscp|dcmqrscp|orthanc) \| 3 \|.*\| ([0-9.]+) \|$", out, re.M)
    assert len(raw) == 6
    # the bare-socket client counts each patient's two studies on every server
    assert all(float(n) == 2.0 for kind, _, n in raw if kind == "by PatientID")
    assert "fastscp, " not in out and "orthanc, by PatientID" not in out  # their answers match the data
    floor = re.findall(r"^\| C-ECHO \(floor\) \| echoscu process \| (fastscp|dcmqrscp|orthanc) \| 1 \| [0-9.]+ ms",
                       out, re.M)
    assert sorted(floor) == ["dcmqrscp", "fastscp", "orthanc"]
    assert len(re.findall(r"^C-ECHO \(floor\), echoscu process: (dcmqrscp|orthanc) p50 / fastscp p50", out, re.M)) == 2


def test_held_client_keeps_every_response_when_its_reactor_is_late(caplog: pytest.LogCaptureFixture) -> None:
    """The bench's pynetdicom client loses no response to pynetdicom's own
    reactor thread (fastscp.scu.commands.answers_to_the_caller,
    which the bench uses). The race is
    widened on purpose, not synchronised: the reactor sleeps after its
    checkpoint's wait() returns (the moment send_c_find takes it for
    paused), and the client dwells on the first match, so the next
    responses wait in the queue when the reactor polls it. The peer is a
    pynetdicom C-FIND SCP answering two matches per query. Without the
    fix, 11 to 15 of the 20 queries lost a response here (three runs)."""
    import threading
    import time

    from pydicom.dataset import Dataset
    from pydicom.uid import ExplicitVRLittleEndian
    from pynetdicom import AE, evt

    def answer(event: evt.Event) -> object:
        for n in range(2):
            ds = Dataset()
            ds.QueryRetrieveLevel = "STUDY"
            ds.StudyInstanceUID = f"1.2.3.{n}"
            yield 0xFF00, ds

    scp = AE(ae_title="PEER")
    scp.add_supported_context(bench_cfind_dimse.STUDY_FIND, [ExplicitVRLittleEndian])
    server = scp.start_server(("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_C_FIND, answer)])
    try:
        port = server.server_address[1]
        scu = AE(ae_title="BENCH")
        scu.add_requested_context(bench_cfind_dimse.STUDY_FIND, [ExplicitVRLittleEndian])
        assoc = scu.associate("127.0.0.1", port, ae_title="PEER")
        assert assoc.is_established
        checkpoint = assoc._reactor_checkpoint
        wait = checkpoint.wait

        def late_wait(timeout: float | None = None) -> bool:
            woken = wait(timeout)
            if threading.current_thread() is not threading.main_thread():  # the reactor thread
                time.sleep(0.05)
            return woken

        checkpoint.wait = late_wait  # type: ignore[method-assign]
        answers_to_the_caller(assoc)
        query = Dataset()
        query.QueryRetrieveLevel = "STUDY"
        query.StudyInstanceUID = ""
        counts = []
        with caplog.at_level("WARNING", logger="pynetdicom"):
            for _ in range(20):
                statuses = []
                for status, _ in assoc.send_c_find(query, bench_cfind_dimse.STUDY_FIND):
                    statuses.append(int(status.Status))
                    if len(statuses) == 1:
                        time.sleep(0.15)  # the reactor's late poll comes while we dwell
                counts.append(statuses.count(0xFF00))
                assert statuses[-1] == 0
        assoc.release()
    finally:
        server.shutdown()
    assert counts == [2] * 20
    assert "unexpected" not in caplog.text

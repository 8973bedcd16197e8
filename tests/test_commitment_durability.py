"""A storage commitment is a promise (PS3.4 J.3.3.1.2), whatever
``storage.durability`` says: with ``durability: none`` the committed files
are synced before the report. A process kill leaves the page cache intact,
so surviving kill -9 alone would pass without any sync; the server therefore
runs under ``strace``, and the test checks that every committed file and
each folder from it up to the storage root got an fsync that returned 0
before the report arrived, then kills the server with SIGKILL and checks
the files are whole."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pydicom
import pytest
from conftest import free_port, make_image, wait_for_port
from test_commitment_network import request_commitment, store

from fastscp.storage.header import complete_copy

WELL_KNOWN = "1.2.840.10008.1.20.1.1"
SYNC_LINE = re.compile(r"^(?:\[pid\s+\d+\]\s+|\d+\s+)?(\d+\.\d+) (fsync|fdatasync|syncfs)\(\d+<(.*)>\) = (-?\d+)")


def _strace() -> str:
    path = shutil.which("strace")
    if path is None:
        pytest.fail("strace is not installed (Debian package strace): the sync check needs it")
    return path


def test_committed_files_are_synced_with_durability_none_and_survive_kill_9(tmp_path: Path) -> None:
    storage = tmp_path / "store"
    trace = tmp_path / "strace.txt"
    log_path = tmp_path / "server.log"
    port = free_port()
    cmd = [_strace(), "-f", "-qq", "--seccomp-bpf", "-y", "-ttt", "-e", "trace=fsync,fdatasync,syncfs",
           "-o", str(trace), sys.executable, "-m", "fastscp.cli", "serve", str(port), "FASTSCP",
           "--storage-dir", str(storage), "--index-db", str(tmp_path / "index.db"), "--status-port", "0",
           "--durability", "none", "--config", str(tmp_path / "none.yaml")]
    (tmp_path / "none.yaml").write_text("{}\n")
    with open(log_path, "ab") as log_file:
        proc = subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT)
    try:
        wait_for_port(port, proc)
        originals = [tmp_path / f"i{n}.dcm" for n in range(4)]
        sent = [make_image(p, n, study=7, modality="CT" if n % 2 else "MR", size=256) for n, p in enumerate(originals)]
        store(port, originals)
        refs = [(str(ds.SOPClassUID), str(ds.SOPInstanceUID)) for ds in sent]

        def answered(transaction: str) -> None:
            said = f"storage commitment {transaction}: reported"
            deadline = time.monotonic() + 30
            while said not in log_path.read_text(errors="replace") and time.monotonic() < deadline:
                time.sleep(0.05)
            assert said in log_path.read_text(errors="replace")

        reported_at, report = request_commitment(port, "1.2.3.4.200", refs, answered)
        assert report.event_type == 1
        assert report.committed == refs

        # the server is python under strace: its pid is in the storage lock file
        pid = int((storage / ".fastscp.lock").read_text().split()[0])
        os.kill(pid, signal.SIGKILL)
        proc.wait(timeout=30)  # strace ends with its tracee and has written every line
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()

    syncs: dict[str, float] = {}
    for line in trace.read_text().splitlines():
        m = SYNC_LINE.match(line)
        if m and m.group(4) == "0":
            syncs.setdefault(m.group(3), float(m.group(1)))
    root = storage.resolve()
    stored = sorted(p for p in root.rglob("*.dcm") if ".incoming" not in p.parts)
    assert len(stored) == len(sent)
    for path in stored:
        must = [str(path)]
        folder = path.parent
        while True:
            must.append(str(folder))
            if folder == root:
                break
            folder = folder.parent
        for name in must:
            assert name in syncs, f"{name} was never synced (fsync calls seen: {sorted(syncs)})"
            assert syncs[name] <= reported_at, f"{name} was synced after the report arrived"

    # after SIGKILL: every committed file is whole (its data set ends at the
    # file's last byte) and holds the data set sent (pynetdicom may have sent
    # it in another transfer syntax: compared decoded)
    by_uid = {str(ds.SOPInstanceUID): ds for ds in sent}
    for path in stored:
        ds = pydicom.dcmread(path)
        assert complete_copy(path, str(ds.SOPInstanceUID))
        original = by_uid[str(ds.SOPInstanceUID)]
        assert ds == original
        assert ds.PixelData == original.PixelData

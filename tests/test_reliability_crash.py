"""kill -9 in the middle of a flood (issue 9, "Durability", without fsync:
the process dies, the kernel survives, so the page cache is the disk).

Four dcmtk storescu associations flood the server while a raw peer holds a
half-sent dataset (so a temp file surely exists); the server is SIGKILLed
mid-flood and restarted on the same storage directory. Every instance a
sender saw acknowledged ("Received Store Response (Success)" after "Sending
file: X" in storescu -v) must be on disk, complete, fully parseable and
byte-equal to what was sent; .incoming/ is swept at start; nothing partial
is anywhere in the tree; the restarted server serves.
"""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path

import pydicom
import pytest

import rawclient as rc
from conftest import Server, dcmtk, make_image
from reliability import DCMTK_ENV, DatasetTemplate, acknowledged, check_tree, dataset_bytes, incoming, storescu, wait_until

pytestmark = pytest.mark.interop

SENDERS = 4
PER_SENDER = 300


@pytest.fixture(scope="module")
def flood_corpus(tmp_path_factory: pytest.TempPathFactory) -> list[list[Path]]:
    root = tmp_path_factory.mktemp("flood")
    groups = []
    for g in range(SENDERS):
        files = []
        for i in range(PER_SENDER):
            path = root / f"s{g}_{i:04d}.dcm"
            # mostly 8 KB, every 10th 128 KB (several PDVs: preallocated temp files)
            make_image(path, g * 1000 + i, study=g, size=256 if i % 10 == 0 else 64)
            files.append(path)
        groups.append(files)
    return groups


def test_kill_9_mid_flood_loses_no_acknowledged_instance(tmp_path: Path, flood_corpus: list[list[Path]]) -> None:
    storage = tmp_path / "store"
    srv = Server(storage, tmp_path / "server0.log", [])
    senders = []
    try:
        # a peer stuck in the middle of a dataset: its temp file is in .incoming at the kill
        stuck = rc.connect_and_associate(srv.port, srv.ae_title)
        stuck_uid, data = DatasetTemplate(200_000).instance(1)
        stuck.sendall(rc.pdata(1, rc.c_store_rq(1, rc.CT, stuck_uid), command=True, last=True))
        stuck.sendall(rc.pdata(1, data[:50_000], command=False, last=False))
        assert wait_until(lambda: len(incoming(storage)) == 1, 10)

        for g, files in enumerate(flood_corpus):
            out = open(tmp_path / f"storescu{g}.txt", "w")
            cmd = [dcmtk("storescu"), "-v", "-nh", "-aec", srv.ae_title, "127.0.0.1", str(srv.port), *map(str, files)]
            senders.append((subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=DCMTK_ENV), out))
        total = SENDERS * PER_SENDER
        assert wait_until(lambda: sum(1 for _ in storage.rglob("*.dcm")) >= total // 6, 60), "the flood did not start"
        srv.proc.send_signal(signal.SIGKILL)
        srv.proc.wait(10)
        stuck.close()
        for proc, out in senders:
            proc.wait(60)
            out.close()
        left_over = incoming(storage)
    finally:
        for proc, _ in senders:
            if proc.poll() is None:
                proc.kill()
        srv.stop()

    outputs = [(tmp_path / f"storescu{g}.txt").read_text() for g in range(SENDERS)]
    acked = [Path(f) for out in outputs for f in acknowledged(out)]
    assert 0 < len(acked) < total, f"the kill should land mid-flood ({len(acked)} of {total} acknowledged)"
    assert left_over, "a temp file should have been left in .incoming by the kill"

    srv2 = Server(storage, tmp_path / "server1.log", [])
    try:
        assert not incoming(storage), ".incoming not swept at start"
        assert f"removed {len(left_over)} unfinished file(s)" in srv2.log_text()
        stored = check_tree(storage)  # every file complete and parseable
        for path in acked:
            uid = str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)
            assert uid in stored, f"{path.name} was acknowledged before the kill but is not on disk"
            assert dataset_bytes(stored[uid]) == dataset_bytes(path), f"{path.name}: stored bytes differ"
        assert stuck_uid not in stored  # the stuck peer's instance never became visible
        # the restarted server serves
        # from every sender's share: under load one sender can finish before the kill
        acked_set = set(acked)
        resend = [f for files in flood_corpus for f in files if f not in acked_set][:20]
        out = storescu(srv2, resend)
        assert out.returncode == 0 and len(acknowledged(out.stdout)) == len(resend), out.stdout[-2000:]
        print(f"\nkill -9 after {len(acked)}/{total} acknowledged ({len(stored)} files on disk, "
              f"{len(left_over)} temp file(s) swept at restart)")
    finally:
        srv2.stop()

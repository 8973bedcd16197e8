"""Load (issue 9): 64 concurrent associations, several thousand instances.

32 pynetdicom senders (threads) associate and wait at a barrier, so all 32
hold their associations; then 32 dcmtk storescu processes start, and the
pynetdicom senders go. The server runs with --max-associations 64: every
association must be accepted. Afterwards: every instance acknowledged and
stored (zero lost, zero failure statuses), each complete and byte-equal
(storescu files) or pixel-equal (pynetdicom datasets), nothing in
.incoming, and the server's peak RSS (VmHWM) bounded.

LOAD_SCALE multiplies the instances per sender (default 1: 3200 instances).
"""

from __future__ import annotations

import copy
import os
import re
import subprocess
import threading
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian

from conftest import Server, dcmtk, make_image
from reliability import DCMTK_ENV, acknowledged, check_tree, dataset_bytes, incoming, proc_status_kb, server_log_clean

pytestmark = pytest.mark.interop

SCALE = int(os.environ.get("LOAD_SCALE", "1"))
DCMTK_SENDERS, DCMTK_EACH = 32, 60 * SCALE
PYNETDICOM_SENDERS, PYNETDICOM_EACH = 32, 40 * SCALE
RSS_GROWTH_LIMIT_KB = 256 * 1024


@pytest.fixture(scope="module")
def load_files(tmp_path_factory: pytest.TempPathFactory) -> list[list[Path]]:
    root = tmp_path_factory.mktemp("load")
    groups = []
    for g in range(DCMTK_SENDERS):
        files = []
        for i in range(DCMTK_EACH):
            path = root / f"d{g:02d}_{i:04d}.dcm"
            make_image(path, i, study=g, size=32)
            files.append(path)
        groups.append(files)
    return groups


def _pynetdicom_datasets(sender: int, template: pydicom.Dataset) -> list[pydicom.Dataset]:
    out = []
    for i in range(PYNETDICOM_EACH):
        ds = copy.deepcopy(template)
        ds.file_meta = template.file_meta.copy()
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = f"1.2.826.0.1.3680043.8.498.8.{sender + 1}.{i + 1}"
        ds.PixelData = os.urandom(32 * 32 * 2)
        out.append(ds)
    return out


class PynetdicomSender(threading.Thread):
    def __init__(self, port: int, index: int, datasets: list[pydicom.Dataset], barrier: threading.Barrier) -> None:
        super().__init__(daemon=True)
        self.port, self.index, self.datasets, self.barrier = port, index, datasets, barrier
        self.statuses: list[int] = []
        self.error = ""

    def run(self) -> None:
        from pynetdicom import AE

        ae = AE(ae_title=f"PYNET{self.index:02d}")
        ae.add_requested_context(self.datasets[0].SOPClassUID, ExplicitVRLittleEndian)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 120
        assoc = ae.associate("127.0.0.1", self.port, ae_title="FASTSCP")
        try:
            self.barrier.wait(120)
            if not assoc.is_established:
                self.error = "association not established"
                return
            for ds in self.datasets:
                rsp = assoc.send_c_store(ds)
                self.statuses.append(int(rsp.Status) if "Status" in rsp else -1)
            assoc.release()
        except Exception as exc:  # reported, asserted below
            self.error = repr(exc)
            if assoc.is_established:
                assoc.abort()


def peak_concurrency(log: str) -> int:
    live = peak = 0
    for line in log.splitlines():
        if re.search(r"assoc \S+ open:", line):
            live += 1
            peak = max(peak, live)
        elif re.search(r"assoc \S+ closed \(", line):
            live -= 1
    return peak


def test_64_concurrent_associations_lose_nothing(tmp_path: Path, load_files: list[list[Path]]) -> None:
    srv = Server(tmp_path / "store", tmp_path / "server.log", ["--max-associations", "64"])
    pid = srv.proc.pid
    rss_start = proc_status_kb(pid, "VmHWM")
    template = pydicom.dcmread(load_files[0][0])
    barrier = threading.Barrier(PYNETDICOM_SENDERS + 1)
    senders = [PynetdicomSender(srv.port, i, _pynetdicom_datasets(i, template), barrier) for i in range(PYNETDICOM_SENDERS)]
    procs = []
    try:
        for s in senders:
            s.start()
        barrier.wait(120)  # all 32 pynetdicom associations are open
        for g, files in enumerate(load_files):
            out = open(tmp_path / f"storescu{g}.txt", "w")
            cmd = [dcmtk("storescu"), "-v", "-nh", "-aet", f"DCMTK{g:02d}", "-aec", srv.ae_title, "127.0.0.1", str(srv.port), *map(str, files)]
            procs.append((subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=DCMTK_ENV), out))
        for proc, out in procs:
            proc.wait(120)
            out.close()
        for s in senders:
            s.join(120)
        rss_peak = proc_status_kb(pid, "VmHWM")
    finally:
        for proc, _ in procs:
            if proc.poll() is None:
                proc.kill()
        srv.stop()

    log = srv.log_text()
    errors = [s.error for s in senders if s.error]
    assert not errors, errors[:3]
    failed = [(s.index, st) for s in senders for st in s.statuses if st != 0]
    assert not failed, f"pynetdicom failure statuses: {failed[:5]}"
    assert all(len(s.statuses) == PYNETDICOM_EACH for s in senders)
    dcmtk_acked = []
    for g, (proc, _) in enumerate(procs):
        text = (tmp_path / f"storescu{g}.txt").read_text()
        acked = acknowledged(text)
        assert proc.returncode == 0 and len(acked) == DCMTK_EACH, f"storescu {g}: {len(acked)}/{DCMTK_EACH}\n{text[-2000:]}"
        dcmtk_acked += acked
    assert "rejected" not in log, "an association was refused under the 64 limit"

    stored = check_tree(srv.storage)
    total = DCMTK_SENDERS * DCMTK_EACH + PYNETDICOM_SENDERS * PYNETDICOM_EACH
    assert len(stored) == total, f"{len(stored)} stored of {total}"
    for path in dcmtk_acked:
        uid = str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)
        assert dataset_bytes(stored[uid]) == dataset_bytes(path)
    for s in senders:
        for ds in s.datasets:
            assert pydicom.dcmread(stored[str(ds.SOPInstanceUID)]).PixelData == ds.PixelData
    assert not incoming(srv.storage)
    server_log_clean(srv)
    peak = peak_concurrency(log)
    assert peak >= PYNETDICOM_SENDERS + 1, f"peak concurrency {peak}: the senders did not overlap"
    assert rss_peak - rss_start < RSS_GROWTH_LIMIT_KB, f"peak RSS {rss_peak} kB (started at {rss_start} kB)"
    print(f"\nload: {total} instances over {DCMTK_SENDERS + PYNETDICOM_SENDERS} associations, peak {peak} at once; "
          f"0 lost, 0 failed; VmHWM {rss_start // 1024} MB at start, {rss_peak // 1024} MB peak")

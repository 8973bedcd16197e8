"""Orthanc's Storage Commitment SCU against fastscp (PS3.4 Annex J).

Orthanc (Debian's, started here on free DICOM and HTTP ports: its default
HTTP port 8042 is our status port) lists fastscp under ``DicomModalities``
and asks it through ``POST /modalities/{id}/storage-commitment``. Orthanc
releases the association after the N-ACTION-RSP and expects the report on
a new association to its own DICOM port, so fastscp lists Orthanc in
``remote_aes``. The outcome is read back from Orthanc's
``GET /storage-commitment/{transaction}``."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import free_port, make_image
from pynetdicom.sop_class import CTImageStorage, MRImageStorage
from test_commitment_network import store

TIMEOUT = 60.0


def orthanc_exe() -> str:
    for path in (shutil.which("Orthanc"), "/usr/sbin/Orthanc"):
        if path and os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    pytest.fail("Orthanc is not installed (Debian package orthanc; .ci/run installs it)")


class Orthanc:
    def __init__(self, workdir: Path, dicom_port: int, fastscp_port: int) -> None:
        self.http_port = free_port()
        self.dicom_port = dicom_port
        self.workdir = workdir
        (workdir / "index").mkdir(parents=True)
        config = {
            "Name": "fastscp-commitment-test",
            "StorageDirectory": str(workdir / "storage"),
            "IndexDirectory": str(workdir / "index"),
            "DicomAet": "ORTHANC",
            "DicomPort": dicom_port,
            "DicomCheckCalledAet": False,
            "HttpServerEnabled": True,
            "HttpPort": self.http_port,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "Plugins": [],
            "SaveJobs": False,
            "DicomModalities": {"fastscp": ["FASTSCP", "127.0.0.1", fastscp_port]},
        }
        (workdir / "orthanc.json").write_text(json.dumps(config, indent=2))
        self.log = open(workdir / "orthanc.log", "ab")
        self.proc = subprocess.Popen([orthanc_exe(), "--verbose", str(workdir / "orthanc.json")],
                                     stdout=self.log, stderr=subprocess.STDOUT)
        self._wait_ready()

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + TIMEOUT
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"Orthanc exited with {self.proc.returncode}: {self.log_text()[-2000:]}")
            try:
                self.get("/system")
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def get(self, path: str) -> Any:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}{path}", timeout=10) as r:
            return json.loads(r.read())

    def post(self, path: str, body: object) -> Any:
        request = urllib.request.Request(f"http://127.0.0.1:{self.http_port}{path}", json.dumps(body).encode(),
                                         method="POST")
        with urllib.request.urlopen(request, timeout=30) as r:
            return json.loads(r.read())

    def commitment_outcome(self, transaction: str) -> Any:
        """Orthanc's record of the transaction once it is no longer pending
        (Orthanc's REST API is the only way to hear it: polled)."""
        deadline = time.monotonic() + TIMEOUT
        while True:
            outcome = self.get(f"/storage-commitment/{transaction}")
            if outcome.get("Status") != "Pending" or time.monotonic() > deadline:
                return outcome
            time.sleep(0.1)

    def log_text(self) -> str:
        return (self.workdir / "orthanc.log").read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


@pytest.fixture
def orthanc_and_fastscp(start_server: Any, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Any]:
    dicom_port = free_port()
    config = tmp_path / "config.yaml"
    config.write_text(f"remote_aes:\n  - ae_title: ORTHANC\n    host: 127.0.0.1\n    port: {dicom_port}\n")
    server = start_server("--config", str(config))
    orthanc = Orthanc(tmp_path / "orthanc", dicom_port, server.port)
    try:
        yield orthanc, server
    finally:
        orthanc.stop()
        call = getattr(request.node, "report_call", None)
        if call is not None and call.failed:
            print(f"----- orthanc.log -----\n{orthanc.log_text()[-20000:]}")


def test_orthanc_storage_commitment_success_and_failure(orthanc_and_fastscp: Any, tmp_path: Path) -> None:
    orthanc, server = orthanc_and_fastscp
    paths = [tmp_path / f"i{n}.dcm" for n in range(3)]
    sent = [make_image(p, n, study=5, modality="CT" if n % 2 else "MR") for n, p in enumerate(paths)]
    store(server.port, paths)
    instances = [{"SOPClassUID": str(ds.SOPClassUID), "SOPInstanceUID": str(ds.SOPInstanceUID)} for ds in sent]

    # all stored: Orthanc hears Event Type 1
    answer = orthanc.post("/modalities/fastscp/storage-commitment", {"DicomInstances": instances})
    first = answer["ID"]
    outcome = orthanc.commitment_outcome(first)
    assert outcome["Status"] == "Success", outcome
    assert sorted(i["SOPInstanceUID"] for i in outcome["Success"]) == sorted(i["SOPInstanceUID"] for i in instances)
    assert outcome["Failures"] == []

    # one unknown, one with the wrong SOP class: Event Type 2 with their reasons
    unknown = {"SOPClassUID": CTImageStorage, "SOPInstanceUID": "1.2.3.4.5.6.7.8.11"}
    wrong = {"SOPClassUID": CTImageStorage if instances[0]["SOPClassUID"] == MRImageStorage else MRImageStorage,
             "SOPInstanceUID": instances[0]["SOPInstanceUID"]}
    answer = orthanc.post("/modalities/fastscp/storage-commitment",
                          {"DicomInstances": [instances[1], unknown, wrong]})
    outcome = orthanc.commitment_outcome(answer["ID"])
    assert outcome["Status"] == "Failure", outcome
    assert [i["SOPInstanceUID"] for i in outcome["Success"]] == [instances[1]["SOPInstanceUID"]]
    reasons = {f["SOPInstanceUID"]: f["FailureReason"] for f in outcome["Failures"]}
    assert reasons == {unknown["SOPInstanceUID"]: 0x0112, wrong["SOPInstanceUID"]: 0x0119}
    # Orthanc releases after the N-ACTION-RSP: both reports went on a new association
    said = [f"storage commitment {first}: reported (event type 1) to ORTHANC at 127.0.0.1:{orthanc.dicom_port} "
            "on a new association",
            f"storage commitment {answer['ID']}: reported (event type 2) to ORTHANC at "
            f"127.0.0.1:{orthanc.dicom_port} on a new association"]
    text = server.log_once_it_says(*said)
    assert all(line in text for line in said)

"""Shared fixtures: a real ``fastscp serve`` process, real dcmtk tools, corpora."""

from __future__ import annotations

import io
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from pydicom.filereader import _read_file_meta_info, read_preamble

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE.parent / "bench"))  # bench/ is not a package

from ports import free_port  # noqa: E402  (one rule for every server started, tests/ and bench/)


def dcmtk(tool: str) -> str:
    """Path of a dcmtk command-line tool. pynetdicom installs console scripts
    with the same names (storescu, echoscu), so look for dcmtk's own."""
    for candidate in (f"/usr/bin/{tool}", shutil.which(tool)):
        if candidate and os.path.exists(candidate):
            out = subprocess.run([candidate, "--version"], capture_output=True, text=True).stdout
            if "dcmtk" in out.lower():
                return candidate
    pytest.fail(f"dcmtk's {tool} is not installed (Debian package dcmtk; .ci/run installs it)")


def wait_for_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("server did not start listening")


class Server:
    """A running ``fastscp serve`` subprocess."""

    def __init__(self, storage: Path, log: Path, extra: list[str], ae_title: str = "FASTSCP") -> None:
        self.port = free_port()
        self.ae_title = ae_title
        self.storage = storage
        self.log = log
        self.index_db = storage.parent / f"{storage.name}.db"
        self.cmd = [sys.executable, "-m", "fastscp.cli", "serve", str(self.port), ae_title,
                    "--storage-dir", str(storage), "--index-db", str(self.index_db), "--status-port", "0", *extra]
        self._log_fh = open(log, "ab")
        self.proc = subprocess.Popen(self.cmd, stdout=self._log_fh, stderr=subprocess.STDOUT)
        wait_for_port(self.port, self.proc)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def log_once_it_says(self, *texts: str, timeout: float = 10.0) -> str:
        """The log once every one of ``texts`` is in it (or once ``timeout``
        passed: the caller's assertion then shows what is missing). The
        server's log lines are written by a listener thread, so a line logged
        before an answer can reach the file just after the peer got it."""
        deadline = time.monotonic() + timeout
        while True:
            text = self.log_text()
            if all(t in text for t in texts) or time.monotonic() >= deadline:
                return text
            time.sleep(0.05)

    def indexed(self, timeout: float = 60.0) -> Server:
        """This server, once its start's background reconcile has indexed
        the tree (its ``reconciled with`` line): a test that put files in the
        tree before the start waits on it before it queries or retrieves."""
        text = self.log_once_it_says(" reconciled with ", timeout=timeout)
        assert " reconciled with " in text, f"reconcile did not end within {timeout} s:\n{text[-4000:]}"
        return self

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log_fh.close()
        return self.proc.returncode

    def stored_files(self) -> list[Path]:
        return sorted(p for p in self.storage.rglob("*.dcm") if ".incoming" not in p.parts)

    def incoming(self) -> list[Path]:
        return list((self.storage / ".incoming").iterdir())


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    """Keep each phase's report on the test item, so a fixture's teardown can
    tell whether the test failed. (A hookwrapper, not wrapper=True: that
    needs pluggy 1.2, and pyproject allows any pytest>=7.)"""
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"report_{report.when}", report)


@pytest.fixture
def start_server(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator:
    servers: list[Server] = []

    def start(*extra: str, ae_title: str = "FASTSCP") -> Server:
        n = len(servers)
        srv = Server(tmp_path / f"store{n}", tmp_path / f"server{n}.log", list(extra), ae_title)
        servers.append(srv)
        return srv

    yield start
    for srv in servers:
        srv.stop()
    call = getattr(request.node, "report_call", None)
    if call is not None and call.failed:  # the receivers' side of a failure, shown with pytest's report
        for srv in servers:
            print(f"----- {srv.log.name} ({' '.join(srv.cmd[2:])}) -----\n{srv.log_text()[-20000:]}")


@pytest.fixture
def server(start_server) -> Server:  # type: ignore[no-untyped-def]
    return start_server()


def dataset_bytes(path: str | os.PathLike[str]) -> bytes:
    """The bytes of a Part-10 file after its file meta group."""
    raw = Path(path).read_bytes()
    fh = io.BytesIO(raw)
    read_preamble(fh, False)
    _read_file_meta_info(fh)
    return raw[fh.tell():]


def make_image(path: Path, index: int, study: int, modality: str = "CT", size: int = 64, series: int = 1,
               patient_name: str | None = None) -> pydicom.Dataset:
    """A small synthetic image, explicit VR little endian, with unique UIDs;
    ``patient_name``, if given, in UTF-8 (ISO_IR 192)."""
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    sop_class = {"CT": "1.2.840.10008.5.1.4.1.1.2", "MR": "1.2.840.10008.5.1.4.1.1.4"}[modality]
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=[str(path), str(index)])
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.PatientID = f"P{study:03d}"
    ds.PatientName = f"Test^Patient{study}"
    ds.StudyInstanceUID = generate_uid(entropy_srcs=["study", str(path.parent), str(study)])
    ds.SeriesInstanceUID = generate_uid(entropy_srcs=["series", str(path.parent), str(study), str(series)])
    ds.StudyDate = "20260101"
    ds.Modality = modality
    ds.SeriesNumber = series
    ds.InstanceNumber = index
    ds.Rows = ds.Columns = size
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.PixelData = os.urandom(size * size * 2)
    if patient_name is not None:
        ds.SpecificCharacterSet = "ISO_IR 192"
        ds.PatientName = patient_name
    ds.save_as(path, enforce_file_format=True)
    return ds


@pytest.fixture(scope="session")
def synthetic_corpus(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """300 CT/MR images over 6 studies."""
    root = tmp_path_factory.mktemp("corpus")
    files = []
    for i in range(300):
        path = root / f"img{i:04d}.dcm"
        make_image(path, i, study=i % 6, modality="CT" if i % 2 else "MR", size=64 if i % 3 else 128, series=i % 3 + 1)
        files.append(path)
    return files

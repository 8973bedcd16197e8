"""Helpers shared by the reliability, load and fuzz tests (issue 9): process
probes (/proc fd count, peak RSS), a dcmtk storescu runner that reports what
was acknowledged, dataset templates with a swappable SOP Instance UID, and
the tree check every test ends with ("nothing partial is ever visible").
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pydicom
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset

from conftest import Server, dataset_bytes, dcmtk

CT = "1.2.840.10008.5.1.4.1.1.2"
MR = "1.2.840.10008.5.1.4.1.1.4"
EXPLICIT_LE = "1.2.840.10008.1.2.1"
IMPLICIT_LE = "1.2.840.10008.1.2"

# dcmtk keeps Nagle on unless told (see ARCHITECTURE.md, "Measured here")
DCMTK_ENV = {**os.environ, "TCP_NODELAY": "1"}


def fd_count(pid: int) -> int:
    return len(fd_targets(pid))


def settled_fds(pid: int, quiet: float = 0.5) -> list[str]:
    """fd_targets once the set has not changed for ``quiet`` seconds (the
    readiness probe's connection, say, has been closed by the server)."""
    last = fd_targets(pid)
    while True:
        time.sleep(quiet)
        now = fd_targets(pid)
        if now == last:
            return now
        last = now


def fd_targets(pid: int) -> list[str]:
    """What the process's descriptors point at, leaving out the DuckDB index's
    own files (DuckDB opens its WAL lazily, at the first commit after start:
    that is not a leak)."""
    out = []
    for fd in sorted(os.listdir(f"/proc/{pid}/fd"), key=int):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if not target.endswith((".db", ".db.wal")):
            out.append(f"{fd}->{target}")
    return out


def proc_status_kb(pid: int, field: str) -> int:
    """A kB figure from /proc/<pid>/status (VmHWM = peak RSS, VmRSS = now)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def wait_until(cond: Callable[[], bool], timeout: float, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(interval)
    return cond()


def storescu(srv: Server, files: list[Path] | list[str], *flags: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """dcmtk storescu -v, output (stdout + stderr) in ``.stdout``."""
    cmd = [dcmtk("storescu"), "-v", "-nh", "-aec", srv.ae_title, *flags, "127.0.0.1", str(srv.port), *map(str, files)]
    return subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=timeout, env=DCMTK_ENV)


def store_responses(output: str) -> list[tuple[str, str]]:
    """(file, response text) for every C-STORE-RSP storescu -v reported;
    "Success" means acknowledged."""
    results = []
    current = None
    for line in output.splitlines():
        if m := re.match(r"I: Sending file: (.*)$", line):
            current = m.group(1)
        elif (m := re.match(r"[IEW]: Received Store Response \((.*)\)", line)) and current:
            results.append((current, m.group(1)))
            current = None
    return results


def acknowledged(output: str) -> list[str]:
    return [f for f, rsp in store_responses(output) if rsp == "Success"]


class DatasetTemplate:
    """Dataset bytes (no file meta) of one synthetic image, in which the SOP
    Instance UID can be swapped for another of the same length without
    re-encoding: cheap unique instances for hundreds of fault iterations."""

    PREFIX = "1.2.826.0.1.3680043.8.498.9."

    def __init__(self, pixels: int, sop_class: str = CT, implicit: bool = False) -> None:
        self.sop_class = sop_class
        self.placeholder = self.uid(0)
        ds = pydicom.Dataset()
        ds.SOPClassUID = sop_class
        ds.SOPInstanceUID = self.placeholder
        ds.PatientID = "FAULT"
        ds.PatientName = "Fault^Test"
        ds.StudyInstanceUID = self.PREFIX + "1"
        ds.SeriesInstanceUID = self.PREFIX + "2"
        ds.StudyDate = "20260101"
        ds.Modality = "CT" if sop_class == CT else "MR"
        ds.SeriesNumber = 1
        ds.InstanceNumber = 1
        ds.Columns = 250
        ds.Rows = max(1, pixels // 500)
        ds.BitsAllocated = ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 0
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.PixelData = os.urandom(ds.Rows * ds.Columns * 2)
        self.bytes = encode(ds, implicit)
        assert self.bytes.count(self.placeholder.encode()) == 1

    @classmethod
    def uid(cls, n: int) -> str:
        return f"{cls.PREFIX}1{n:010d}"

    def instance(self, n: int) -> tuple[str, bytes]:
        uid = self.uid(n)
        return uid, self.bytes.replace(self.placeholder.encode(), uid.encode())


def encode(ds: pydicom.Dataset, implicit: bool = False) -> bytes:
    fh = DicomBytesIO()
    fh.is_little_endian = True
    fh.is_implicit_VR = implicit
    write_dataset(fh, ds)
    return fh.getvalue()


def check_tree(storage: Path, mutated: bool = False) -> dict[str, Path]:
    """Every file under the storage tree (outside .incoming) is a complete,
    fully parseable Part-10 file; returns {SOP Instance UID: path}. Anything
    else in the tree (a stray temp file, a truncated file) fails.

    ``mutated``: the senders' bytes were fuzzed, so a stored dataset may be
    well-formed yet say other Rows or Columns than its pixel data has (a
    flipped bit in a value): only the elements' own lengths are checked."""
    found: dict[str, Path] = {}
    for path in storage.rglob("*"):
        parts = path.relative_to(storage).parts
        # working folders (.incoming, .pipeline) start with a dot: no instance
        # can be placed there (resolve_inside); scan sheets sit beside studies
        if any(p.startswith(".") for p in parts) or path.is_dir() or path.name.startswith("scan_sheet"):
            continue
        assert path.suffix == ".dcm", f"unexpected file in the tree: {path}"
        ds = pydicom.dcmread(path)  # full read: raises on most truncated files
        # a dataset cut by a fuzzer exactly at an element boundary before the
        # pixel data is well-formed and may be stored: only what is there must be whole
        if "PixelData" in ds:
            # pydicom hands back a short value for a file cut inside the
            # element: compare with the length its header declares
            raw = ds.get_item("PixelData")
            length = getattr(raw, "length", 0xFFFFFFFF)
            if length != 0xFFFFFFFF:
                assert len(raw.value) == length, f"{path}: pixel data truncated ({len(raw.value)} of {length} bytes)"
            if not mutated and "Rows" in ds and "Columns" in ds and ds.get("BitsAllocated") == 16:
                assert len(ds.PixelData) == ds.Rows * ds.Columns * 2, f"{path}: pixel data truncated"
        uid = str(ds.SOPInstanceUID)
        assert uid == str(ds.file_meta.MediaStorageSOPInstanceUID)
        assert uid not in found, f"{uid} stored twice: {found[uid]} and {path}"
        found[uid] = path
    return found


def incoming(storage: Path) -> list[str]:
    d = storage / ".incoming"
    return sorted(os.listdir(d)) if d.exists() else []


def incoming_while_open(storage: Path, associations: int = 1) -> list[str]:
    """What .incoming holds beyond the spares of open associations: each may
    keep one empty temp file opened ahead for its next C-STORE (scp.py
    ``_prepare_spare``). A temp file with any byte in it (every used one has
    at least the Part-10 prefix), or more empty ones than associations, is
    a leftover."""
    d = storage / ".incoming"
    names, empty = [], []
    for name in incoming(storage):
        try:
            size = (d / name).stat().st_size
        except FileNotFoundError:  # removed since listed
            continue
        names.append(name)
        if size == 0:
            empty.append(name)
    return names if len(empty) > associations else [n for n in names if n not in empty]


def server_log_clean(srv: Server) -> None:
    text = srv.log_text()
    assert "Traceback" not in text, text[-4000:]
    assert "internal error" not in text, text[-4000:]


__all__ = [
    "CT", "MR", "EXPLICIT_LE", "IMPLICIT_LE", "DCMTK_ENV", "DatasetTemplate", "acknowledged", "check_tree",
    "dataset_bytes", "encode", "fd_count", "fd_targets", "settled_fds", "incoming", "proc_status_kb", "server_log_clean", "store_responses",
    "storescu", "wait_until",
]

"""Helpers shared by the reliability, load and fuzz tests (issue 9): process
probes (/proc fd count, peak RSS), a dcmtk storescu runner that reports what
was acknowledged, dataset templates with a swappable SOP Instance UID, and
the tree check every test ends with ("nothing partial is ever visible").
"""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol, TypeVar

import pydicom
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset

import rawclient as rc
from conftest import Server, dataset_bytes, dcmtk

CT = "1.2.840.10008.5.1.4.1.1.2"
MR = "1.2.840.10008.5.1.4.1.1.4"
EXPLICIT_LE = "1.2.840.10008.1.2.1"
IMPLICIT_LE = "1.2.840.10008.1.2"

# dcmtk keeps Nagle on unless told (see ARCHITECTURE.md, "Measured here")
DCMTK_ENV = {**os.environ, "TCP_NODELAY": "1"}


def fd_count(pid: int) -> int:
    return len(fd_targets(pid))


def settled_fds(pid: int) -> list[str]:
    """fd_targets as they are once the server has no connection open, read
    now, without waiting for anything: every socket is left out but the
    listening TCP ones and those of other families (unix, netlink, UDP). A
    connection the server has not closed yet (the readiness probe's, a peer
    that just left, in whatever TCP state, even one a reset took out of
    /proc/net/tcp) is not part of what it holds at rest."""
    held: set[str] = set()
    for table in ("tcp", "tcp6", "udp", "udp6", "raw", "raw6", "unix", "netlink"):
        try:
            rows = [line.split() for line in Path(f"/proc/net/{table}").read_text().splitlines()[1:]]
        except OSError:
            continue
        column = 6 if table == "unix" else 9  # where each table keeps the socket's inode
        for row in rows:
            if len(row) > column and (not table.startswith("tcp") or row[3] == "0A"):  # 0A: TCP_LISTEN
                held.add(row[column])
    return [fd for fd in fd_targets(pid) if not (target := fd.partition("->")[2]).startswith("socket:[") or target[8:-1] in held]


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
    keep one empty temp file opened ahead for its next C-STORE (services/storage.py
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


# ---- the fault generator (tests/test_reliability_faults.py) ----------------------------

FAULT_PHASES = (
    "connect", "negotiation", "after_rq", "associated", "mid_command_pdu", "between_pdus",
    "mid_dataset_pdu", "between_dataset_pdus", "before_response", "after_response", "release",
)
FAULT_ENDINGS = ("abort", "reset", "close")
# phases that stop inside a PDU: the cut PDU must stay unfinished whatever the ending sends
CUT_PHASES = ("negotiation", "mid_command_pdu", "mid_dataset_pdu")

T = TypeVar("T")


class Chooser(Protocol):
    """The part of random.Random the generator uses (hypothesis drives it too)."""

    def choice(self, seq: Sequence[T]) -> T: ...
    def randint(self, a: int, b: int) -> int: ...


@dataclasses.dataclass(frozen=True)
class Send:
    data: bytes


@dataclasses.dataclass(frozen=True)
class Expect:
    """Read one PDU of this type (4: the C-STORE-RSP, which must say success)."""

    pdu_type: int


@dataclasses.dataclass(frozen=True)
class FaultPlan:
    """What one faulty peer does: ``steps`` in order, then the ending."""

    phase: str
    how: str
    steps: tuple[Send | Expect, ...]
    complete: bool  # the whole dataset is among the bytes sent

    def tail(self) -> bytes:
        """The bytes the ending sends: an A-ABORT PDU, or nothing (RST, FIN)."""
        return rc.ABORT if self.how == "abort" else b""

    def wire(self) -> bytes:
        """Every byte the peer sends, the ending included."""
        return b"".join(s.data for s in self.steps if isinstance(s, Send)) + self.tail()


def fault_fragments(rng: Chooser, payload: bytes) -> list[bytes]:
    """A dataset cut into P-DATA PDUs of random sizes (1 byte .. 12 KB)."""
    out = []
    pos = 0
    while pos < len(payload):
        n = rng.choice([1, 7, 512, 4096, 12000, rng.randint(1, 12000)])
        chunk = payload[pos:pos + n]
        pos += len(chunk)
        out.append(rc.pdata(1, chunk, command=False, last=pos >= len(payload)))
    return out


PDU_HEADER = 6


def can_cut(pdu: bytes, tail: bytes) -> bool:
    return len(pdu) - len(tail) - 1 >= (PDU_HEADER if tail else 1)


def cut_short(rng: Chooser, pdu: bytes, tail: bytes) -> bytes:
    """A proper prefix of ``pdu`` that ``tail`` (what the ending sends after
    it) cannot turn into a PDU: more bytes are missing than the tail holds,
    and with a tail the PDU header is whole, so its declared length stands.
    (Cut 4 bytes short and followed by a 10-byte A-ABORT, a PDU is whole
    again: the abort's first bytes finish it, and a last fragment cut so was
    a complete dataset, rightly stored. Cut inside the header, the abort's
    bytes become a new length.) The tail then lands inside the unfinished
    PDU, as a receiver must read it, and the connection closes."""
    assert can_cut(pdu, tail), f"a {len(pdu)}-byte PDU cannot be cut short of a {len(tail)}-byte ending"
    return pdu[:rng.randint(PDU_HEADER if tail else 1, len(pdu) - len(tail) - 1)]


def plan_fault(rng: Chooser, called_ae: str, uid: str, data: bytes,
               phase: str | None = None, how: str | None = None) -> FaultPlan:
    """One faulty peer storing ``data`` as ``uid``, ending at a random phase
    in a random way (or the ones given). Pure: no socket, so the property
    "an injected fault never sends a complete dataset" is checked offline
    (tests/test_reliability_generator.py)."""
    where: str = phase or rng.choice(FAULT_PHASES)
    ending: str = how or rng.choice(FAULT_ENDINGS)
    tail = rc.ABORT if ending == "abort" else b""
    steps: list[Send | Expect] = []

    def plan(complete: bool = False) -> FaultPlan:
        return FaultPlan(where, ending, tuple(steps), complete)

    rq = rc.associate_rq(called_ae, "FAULTY", [(1, rc.CT, [rc.EXPLICIT_LE])])
    if where == "connect":
        return plan()
    if where == "negotiation":
        steps.append(Send(cut_short(rng, rq, tail)))
        return plan()
    steps.append(Send(rq))
    if where == "after_rq":
        return plan()
    steps.append(Expect(2))
    if where == "associated":
        return plan()
    command = rc.pdata(1, rc.c_store_rq(1, rc.CT, uid), command=True, last=True)
    if where == "mid_command_pdu":
        steps.append(Send(cut_short(rng, command, tail)))
        return plan()
    steps.append(Send(command))
    if where == "between_pdus":
        return plan()
    pdus = fault_fragments(rng, data)
    if where == "mid_dataset_pdu":
        # any PDU long enough to be cut short of the ending, the last one
        # included: cut inside the last fragment is the case closest to a
        # complete dataset (a 1-byte fragment is a 13-byte PDU, too short to
        # be cut short of an A-ABORT with its header whole)
        cuttable = [i for i, p in enumerate(pdus) if can_cut(p, tail)]
        if cuttable:
            k = rng.choice(cuttable)
            steps.append(Send(b"".join(pdus[:k])))
            steps.append(Send(cut_short(rng, pdus[k], tail)))
            return plan()
        where = "between_dataset_pdus"  # no PDU to cut: stop between two
    if where == "between_dataset_pdus":
        k = rng.randint(0, len(pdus) - 1)
        steps.append(Send(b"".join(pdus[:k])))
        return plan()
    steps.append(Send(b"".join(pdus)))
    if where == "before_response":
        return plan(complete=True)
    steps.append(Expect(4))
    if where == "after_response":
        return plan(complete=True)
    steps.append(Send(rc.RELEASE_RQ))
    return plan(complete=True)


__all__ = [
    "CT", "MR", "EXPLICIT_LE", "IMPLICIT_LE", "DCMTK_ENV", "DatasetTemplate", "acknowledged", "check_tree",
    "CUT_PHASES", "FAULT_ENDINGS", "FAULT_PHASES", "Chooser", "Expect", "FaultPlan", "Send", "can_cut", "cut_short", "fault_fragments", "plan_fault",
    "dataset_bytes", "encode", "fd_count", "fd_targets", "settled_fds", "incoming", "proc_status_kb", "server_log_clean", "store_responses",
    "storescu", "wait_until",
]

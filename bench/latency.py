"""C-STORE round-trip latency: images sent one by one over one association.

Two senders. ``raw`` (the default, bench/rawscu.py) encodes every message
before the clock starts and times one ``sendall`` to the whole answer: it
adds a few tens of microseconds of its own. ``pynetdicom`` times each
send_c_store from the call to the returned status, which includes
pynetdicom's own per-message cost (3-5 ms here, its threads hand each
message over): ten times a fast receiver's own time, so it cannot tell fast
receivers apart. Both are the same for every receiver. Datasets are read
before the clock starts.

pynetdicom leaves Nagle's algorithm on; with it, the small command PDU of each
message waits for a delayed ACK (about 40 ms on Linux) whatever the receiver
does. The sender's sockets get TCP_NODELAY here, as dcmtk's storescu gets
TCP_NODELAY=1 in the flood, so the figure is the receiver's and not Nagle's.
"""
from __future__ import annotations

import logging
import socket
import statistics
import time
from pathlib import Path

import pydicom
import rawscu
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.transport import AssociationSocket

from fastscp.scu.commands import answers_to_the_caller

_plain_create_socket = AssociationSocket._create_socket


def _create_socket_nodelay(self: AssociationSocket, address: object) -> socket.socket:
    sock = _plain_create_socket(self, address)  # type: ignore[arg-type]
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


AssociationSocket._create_socket = _create_socket_nodelay  # type: ignore[method-assign]


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty list."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def summary(seconds: list[float], failures: int, associations: int, lost: int) -> dict[str, float | int]:
    """The figures a latency run reports, from its round trips in seconds."""
    ms = [t * 1000 for t in seconds]
    return {
        "count": len(ms), "failures": failures, "associations": associations,
        "lost_to_sender_timeout": lost,
        "p50_ms": percentile(ms, 50), "p99_ms": percentile(ms, 99),
        "mean_ms": statistics.fmean(ms), "max_ms": max(ms),
    }


def median_of(runs: list[dict[str, float | int]]) -> dict[str, float | int | list[float]]:
    """One latency result for several repeats: each figure's median over
    them (p50 and p99 of different repeats, not one repeat's), with every
    repeat's p50 and p99 beside it."""
    out: dict[str, float | int | list[float]] = {
        key: statistics.median(float(r[key]) for r in runs) for key in ("p50_ms", "p99_ms", "mean_ms", "max_ms")}
    out["count"] = sum(int(r["count"]) for r in runs)
    out["failures"] = sum(int(r["failures"]) for r in runs)
    out["associations"] = sum(int(r["associations"]) for r in runs)
    out["lost_to_sender_timeout"] = sum(int(r["lost_to_sender_timeout"]) for r in runs)
    out["repeats_p50_ms"] = [float(r["p50_ms"]) for r in runs]
    out["repeats_p99_ms"] = [float(r["p99_ms"]) for r in runs]
    return out


def measure(port: int, files: list[Path], called_aet: str, max_pdu: int,
            log_path: Path | None = None, dimse_timeout: float = 5.0,
            sender: str = "raw", send_pdu: int = 0) -> dict[str, float | int]:
    """Send files one by one over one association; ``sender`` is ``raw``
    (bench/rawscu.py, in PDUs of at most ``send_pdu`` bytes, 0: the
    receiver's maximum) or ``pynetdicom`` (re-associating if it drops; the
    receiver's maximum)."""
    if sender == "raw":
        return summary(*rawscu.measure(port, files, called_aet, max_pdu, send_pdu), 1, 0)
    if sender != "pynetdicom":
        raise ValueError(f"unknown latency sender {sender!r}")
    if send_pdu:
        raise ValueError("send_pdu is for the raw sender")
    if log_path is not None:
        handler = logging.FileHandler(log_path)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        logger = logging.getLogger("pynetdicom")
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
    datasets = [pydicom.dcmread(p) for p in files]
    ae = AE(ae_title="LATENCY")
    ae.maximum_pdu_size = max_pdu
    ae.dimse_timeout = dimse_timeout
    for sop_class in sorted({str(ds.SOPClassUID) for ds in datasets}):
        ae.add_requested_context(sop_class, ExplicitVRLittleEndian)
    times: list[float] = []
    failures = associations = lost = 0
    assoc = None
    try:
        for msg_id, ds in enumerate(datasets, start=1):
            if assoc is None or not assoc.is_established:
                associations += 1
                if associations > 10:
                    raise RuntimeError(f"latency sender: association to port {port} "
                                       f"lost or refused {associations - 1} times")
                assoc = ae.associate("127.0.0.1", port, ae_title=called_aet, max_pdu=max_pdu)
                if not assoc.is_established:
                    continue
                answers_to_the_caller(assoc)  # else pynetdicom's reactor can take a response
            t0 = time.perf_counter()
            status = assoc.send_c_store(ds, msg_id=msg_id % 65536)
            elapsed = time.perf_counter() - t0
            if "Status" not in status:
                # No response within dimse_timeout: pynetdicom aborted. Seen with
                # "Received unexpected C-STORE service message" in its log, i.e.
                # its reactor thread took the response (sender-side race), so
                # the sample is dropped rather than counted as receiver latency.
                lost += 1
                continue
            times.append(elapsed)
            if status.Status != 0x0000:
                failures += 1
    finally:
        if assoc is not None and assoc.is_established:
            assoc.release()
        if log_path is not None:
            logger.removeHandler(handler)
            handler.close()
    return summary(times, failures, associations, lost)

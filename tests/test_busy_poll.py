"""Polling the socket after a read (server.busy_poll_us): the Cython poll on
a socket pair, and the server with one association and with two."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import pytest

from fastscp._ext.sockio import recv_spin
from fastscp.scu.commands import answers_to_the_caller
from reliability import DatasetTemplate, check_tree, dataset_bytes
from test_reliability_disk import InProcessServer

pytestmark = pytest.mark.interop

CT = "1.2.840.10008.5.1.4.1.1.2"


def test_recv_spin_returns_zero_once_the_window_has_passed() -> None:
    a, b = socket.socketpair()
    try:
        buf = bytearray(100)
        started = time.monotonic()
        assert recv_spin(a.fileno(), buf, 20_000_000) == 0
        assert time.monotonic() - started >= 0.019
    finally:
        a.close()
        b.close()


def test_recv_spin_reads_what_arrives_during_the_window() -> None:
    a, b = socket.socketpair()
    try:
        threading.Timer(0.02, b.sendall, (b"hello",)).start()
        buf = bytearray(100)
        n = recv_spin(a.fileno(), buf, 2_000_000_000)
        assert n == 5 and bytes(buf[:5]) == b"hello"
    finally:
        a.close()
        b.close()


def test_recv_spin_says_minus_one_at_end_of_stream() -> None:
    a, b = socket.socketpair()
    b.close()
    try:
        assert recv_spin(a.fileno(), bytearray(10), 1_000_000_000) == -1
    finally:
        a.close()


def _send(port: int, datasets: list[object], associations: int) -> list[int]:
    from pynetdicom import AE

    ae = AE(ae_title="POLLTEST")
    ae.add_requested_context(CT, "1.2.840.10008.1.2.1")
    assocs = [ae.associate("127.0.0.1", port, ae_title="FASTSCP") for _ in range(associations)]
    assert all(a.is_established for a in assocs)
    for a in assocs:
        answers_to_the_caller(a)  # pynetdicom's reactor race (scu/commands.py); fast answers hit it
    try:
        return [int(assocs[i % associations].send_c_store(ds).Status) for i, ds in enumerate(datasets)]
    finally:
        for a in assocs:
            a.release()


def _datasets(n: int, first: int) -> list[object]:
    from io import BytesIO

    import pydicom

    template = DatasetTemplate(150_000)  # several PDVs per instance
    out = []
    for k in range(first, first + n):
        uid, raw = template.instance(k)
        ds = pydicom.dcmread(BytesIO(raw), force=True)
        ds.file_meta = pydicom.dataset.FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
        out.append((uid, raw, ds))
    return out


@pytest.mark.parametrize("poll_us, associations, polls", [(10_000, 1, True), (0, 1, False), (10_000, 2, False)])
def test_reads_are_polled_only_when_enabled_and_one_association_is_open(
        tmp_path: Path, poll_us: int, associations: int, polls: bool) -> None:
    srv = InProcessServer(tmp_path / "store", {"server.busy_poll_us": poll_us})
    try:
        items = _datasets(12, 700 + 100 * associations + poll_us % 7)
        assert _send(srv.port, [ds for _, _, ds in items], associations) == [0] * len(items)
        stored = check_tree(tmp_path / "store")
        for uid, raw, _ in items:
            assert dataset_bytes(stored[uid]) == raw
        polled = srv.app.server.polled_reads
        assert (polled > 0) == polls, f"{polled} polled reads"
    finally:
        srv.stop()

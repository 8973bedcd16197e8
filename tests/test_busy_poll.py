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


def test_polling_rests_for_a_slow_sender_and_comes_back_for_a_fast_one(tmp_path: Path) -> None:
    """A sender that leaves more than the window between its PDUs makes the
    polls miss; after SPIN_MISSES_TO_REST misses in a row polling rests (no
    CPU burnt for nothing), and a message that then comes within the window
    of a skipped poll brings it back. The slow phase's gaps are the workload
    (six times the window), not a wait for the server."""
    from rawclient import RELEASE_RQ, associate_rq, c_store_rq, pdata, read_pdu

    from fastscp._ext.framer import decode_command
    from fastscp.net.server import SPIN_MISSES_TO_REST

    window_s = 0.010
    srv = InProcessServer(tmp_path / "store", {"server.busy_poll_us": int(window_s * 1e6), "database.path": None})
    items = [(uid, raw) for uid, raw, _ in _datasets(16, 5100)]
    server = srv.app.server
    try:
        sock = socket.create_connection(("127.0.0.1", srv.port))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.sendall(associate_rq("FASTSCP", "SLOWFAST", [(1, CT, ["1.2.840.10008.1.2.1"])], max_pdu=1 << 20))
        assert read_pdu(sock)[0] == 2

        def store(i: int, uid: str, raw: bytes, gap: float) -> None:
            sock.sendall(pdata(1, c_store_rq(i + 1, CT, uid), True, True))
            if gap:
                time.sleep(gap)
            chunks = [raw[k:k + 65536] for k in range(0, len(raw), 65536)]  # within the server's max PDU
            sock.sendall(b"".join(pdata(1, c, False, n == len(chunks) - 1) for n, c in enumerate(chunks)))
            kind, pdu = read_pdu(sock)
            assert kind == 4 and decode_command(pdu[12:])[0x00000900] == 0
            if gap:
                time.sleep(gap)

        for i, (uid, raw) in enumerate(items[:6]):
            store(i, uid, raw, 6 * window_s)
        assert server.poll_rests >= 1, f"misses in a row needed: {SPIN_MISSES_TO_REST}"
        polled_slow = server.polled_reads
        for i, (uid, raw) in enumerate(items[6:], start=6):
            store(i, uid, raw, 0.0)
        assert server.poll_resumes >= 1
        assert server.polled_reads > polled_slow  # polling again once back
        sock.sendall(RELEASE_RQ)
        read_pdu(sock)
        sock.close()
        stored = check_tree(tmp_path / "store")
        assert {uid: dataset_bytes(stored[uid]) for uid, _ in items} == dict(items)
    finally:
        srv.stop()


def test_no_poll_inside_a_data_set_only_at_the_turn_of_the_conversation(tmp_path: Path) -> None:
    """A read that ends inside a data set queues no poll (the rest is on
    its way, and the poll would take the sender's CPU); the command before
    it and the answer after it do. The data set's second fragment is sent
    once the first is in the temp file, within the window of a poll queued
    after the first fragment's read, which would take it (polled_reads)."""
    from rawclient import RELEASE_RQ, associate_rq, c_store_rq, pdata, read_pdu

    from fastscp._ext.framer import decode_command

    srv = InProcessServer(tmp_path / "store", {"server.busy_poll_us": 10_000, "database.path": None})
    server = srv.app.server
    incoming = tmp_path / "store" / ".incoming"
    uid, raw = [(u, r) for u, r, _ in _datasets(1, 6100)][0]
    thirds = [raw[:50_000], raw[50_000:100_000], raw[100_000:]]

    def written() -> int:
        return max((p.stat().st_size for p in incoming.glob("*.part")), default=0)

    def wait_written(at_least: int) -> None:
        deadline = time.monotonic() + 30
        while written() < at_least and time.monotonic() < deadline:
            time.sleep(0.002)
        assert written() >= at_least

    try:
        sock = socket.create_connection(("127.0.0.1", srv.port))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.sendall(associate_rq("FASTSCP", "STREAMS", [(1, CT, ["1.2.840.10008.1.2.1"])], max_pdu=1 << 20))
        assert read_pdu(sock)[0] == 2
        sock.sendall(pdata(1, c_store_rq(1, CT, uid), True, True) + pdata(1, thirds[0], False, False))
        wait_written(len(thirds[0]))
        before = server.polled_reads  # the command's poll may have read the first fragment
        sock.sendall(pdata(1, thirds[1], False, False))
        wait_written(len(thirds[0]) + len(thirds[1]))
        assert server.polled_reads == before  # the loop read it: no poll was waiting inside the data set
        sock.sendall(pdata(1, thirds[2], False, True))
        kind, pdu = read_pdu(sock)
        assert kind == 4 and decode_command(pdu[12:])[0x00000900] == 0
        sock.sendall(RELEASE_RQ)
        assert read_pdu(sock)[0] == 6
        sock.close()
        stored = check_tree(tmp_path / "store")
        assert dataset_bytes(stored[uid]) == raw
    finally:
        srv.stop()

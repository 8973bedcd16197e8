"""Slow and silent peers (issue 9, "Faults").

A peer that connects and says nothing is cut by ARTIM; one that trickles an
A-ASSOCIATE-RQ a byte at a time is cut by ARTIM too (the request must be
complete in time, not merely started). An associated peer that trickles a
PDU one byte a second holds its slot only until the DIMSE/idle timeout: a
byte now and then is not progress. With --max-associations 3 and three such
peers, a fourth legitimate client is refused transiently (A-ASSOCIATE-RJ,
local limit exceeded) while they hold the slots, and succeeds once they are
cut. Silent connections that never associate hold no slot at all.
"""

from __future__ import annotations

import socket
import subprocess
import threading
import time

import pytest

import rawclient as rc
from conftest import Server, dcmtk
from reliability import DCMTK_ENV, DatasetTemplate, check_tree, fd_count, fd_targets, incoming, settled_fds, server_log_clean, wait_until

pytestmark = pytest.mark.interop


def closed_by_server(sock: socket.socket, timeout: float) -> bytes | None:
    """Read until the server closes; everything it sent, or None if it did
    not close within ``timeout`` (or reset: then b"")."""
    sock.settimeout(timeout)
    got = b""
    try:
        while chunk := sock.recv(65536):
            got += chunk
    except socket.timeout:
        return None
    except ConnectionResetError:
        pass
    return got


class Trickler(threading.Thread):
    """Sends ``data`` one byte every ``interval`` seconds until the server
    closes the connection (or the data runs out)."""

    def __init__(self, sock: socket.socket, data: bytes, interval: float) -> None:
        super().__init__(daemon=True)
        self.sock, self.data, self.interval = sock, data, interval
        self.sent = 0
        self.cut_at: float | None = None
        self.started = time.monotonic()

    def run(self) -> None:
        for i in range(len(self.data)):
            try:
                self.sock.sendall(self.data[i:i + 1])
                self.sent += 1
            except OSError:
                break
            time.sleep(self.interval)
            if self.sock.fileno() < 0:
                break
        self.cut_at = time.monotonic()


def echo(srv: Server) -> subprocess.CompletedProcess[str]:
    return subprocess.run([dcmtk("echoscu"), "-v", "-aec", srv.ae_title, "127.0.0.1", str(srv.port)],
                          capture_output=True, text=True, timeout=30, env=DCMTK_ENV)


def test_silent_connections_hold_no_slot_and_are_cut_by_artim(start_server) -> None:  # type: ignore[no-untyped-def]
    srv = start_server("--artim-timeout", "2", "--max-associations", "2")
    silent = [socket.create_connection(("127.0.0.1", srv.port), timeout=10) for _ in range(20)]
    try:
        # twenty silent sockets, yet the two association slots are free
        for _ in range(3):
            result = echo(srv)
            assert result.returncode == 0, result.stdout + result.stderr
        start = time.monotonic()
        for sock in silent:
            assert closed_by_server(sock, 15) == b"", "a silent peer should be closed with nothing sent"
        assert time.monotonic() - start < 15
    finally:
        for sock in silent:
            sock.close()
    server_log_clean(srv)


def test_request_trickled_a_byte_a_second_is_cut_by_artim(start_server) -> None:  # type: ignore[no-untyped-def]
    srv = start_server("--artim-timeout", "2")
    sock = socket.create_connection(("127.0.0.1", srv.port), timeout=10)
    rq = rc.associate_rq(srv.ae_title, "SLOW", [(1, rc.CT, [rc.EXPLICIT_LE])])
    t = Trickler(sock, rq, 0.5)
    t.start()
    got = closed_by_server(sock, 20)
    sock.close()
    t.join(5)
    assert got is not None, "a trickled request kept the connection open past ARTIM"
    assert t.sent < len(rq)
    assert b"\x02\x00" not in got[:2]  # never associated


@pytest.mark.parametrize("where", ["command", "dataset"])
def test_slow_peers_cannot_keep_the_association_limit(start_server, where: str) -> None:  # type: ignore[no-untyped-def]
    srv: Server = start_server("--max-associations", "3", "--idle-timeout", "3", "--dimse-timeout", "3")
    pid = srv.proc.pid
    # one association first: libuv opens a reserve descriptor (/dev/null, for
    # its EMFILE handling) when the loop makes its first stream, which with our
    # own accept loop is the first connection, not the listen; read before
    # that, the count grew by one and the check below failed now and then
    assert echo(srv).returncode == 0
    fds_before = settled_fds(pid)
    # three calling AE titles: each holds one slot, within its share (issue 20: one title gets half the total)
    slow = [rc.connect_and_associate(srv.port, srv.ae_title, calling=f"SLOW{i}") for i in range(3)]
    uid, data = DatasetTemplate(20_000).instance(7)
    tricklers = []
    for sock in slow:
        if where == "command":
            payload = rc.pdata(1, rc.c_store_rq(1, rc.CT, uid), command=True, last=True)
        else:  # the command whole, then the dataset a byte a second
            sock.sendall(rc.pdata(1, rc.c_store_rq(1, rc.CT, uid), command=True, last=True))
            payload = rc.pdata(1, data, command=False, last=True)
        t = Trickler(sock, payload, 1.0)
        t.start()
        tricklers.append(t)
    try:
        time.sleep(0.5)
        # all three slots held: a fourth, legitimate client is refused transiently
        refused = echo(srv)
        assert refused.returncode != 0
        assert "Association Rejected" in refused.stdout + refused.stderr, refused.stdout + refused.stderr
        assert "Transient" in refused.stdout + refused.stderr
        # the trickles are cut (a byte a second is not progress), freeing the slots
        for sock in slow:
            assert closed_by_server(sock, 20) is not None, "a slow peer kept its association past the timeouts"
        for t in tricklers:
            t.join(5)
            assert t.sent < 30, f"{t.sent} bytes trickled before the cut"
        assert wait_until(lambda: echo(srv).returncode == 0, 10), "slots not freed after the slow peers were cut"
    finally:
        for sock in slow:
            sock.close()
    assert wait_until(lambda: not incoming(srv.storage), 5)
    assert not check_tree(srv.storage)
    assert wait_until(lambda: fd_count(pid) == len(fds_before), 10), \
        f"fds before {len(fds_before)}, after {fd_count(pid)}: new {sorted(set(fd_targets(pid)) - set(fds_before))}, gone {sorted(set(fds_before) - set(fd_targets(pid)))}"
    server_log_clean(srv)

"""Faults over real sockets: a peer that aborts or drops mid-dataset leaves
nothing behind, and the server keeps serving the next association."""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path

import pytest

import rawclient as rc
from conftest import Server, dcmtk
from reliability import wait_until

pytestmark = pytest.mark.interop


def _partial_store(srv: Server, finish: str) -> None:
    sock = rc.connect_and_associate(srv.port, srv.ae_title)
    uid = "1.2.826.0.1.3680043.8.498.1"
    sock.sendall(rc.pdata(1, rc.c_store_rq(1, rc.CT, uid), command=True, last=True))
    # 3 of many dataset fragments: enough that a temp file exists
    for _ in range(3):
        sock.sendall(rc.pdata(1, b"\x08\x00\x16\x00UI\x1a\x00" + rc.CT.encode() + b"\0" + bytes(4000), command=False, last=False))
    # the receiver says nothing when a C-STORE starts streaming: poll for its temp file
    assert wait_until(lambda: bool(srv.incoming()), 20), "the dataset should be streaming into .incoming"
    if finish == "abort":
        sock.sendall(rc.ABORT)
        sock.close()
    elif finish == "reset":
        rc.reset(sock)
    else:
        sock.close()


def _wait_until_closed(srv: Server) -> None:
    """Until the server logs the association's end record ("assoc ID
    <outcome>: ..., N stored, ..."), which it writes after removing the
    association's temp files and freeing its slot (services/dispatcher.py ``_end``)."""
    assert " stored, " in srv.log_once_it_says(" stored, ", timeout=30), srv.log_text()


@pytest.mark.parametrize("finish", ["abort", "reset", "close"])
def test_peer_gone_mid_dataset_leaves_nothing(server: Server, finish: str, tmp_path: Path) -> None:
    _partial_store(server, finish)
    _wait_until_closed(server)
    assert not server.incoming(), "temp file left behind"
    assert not server.stored_files(), "a partial instance became visible"
    # the server still serves the next association
    from pydicom.data import get_testdata_file

    ok = subprocess.run([dcmtk("storescu"), "-aec", server.ae_title, "127.0.0.1", str(server.port), get_testdata_file("CT_small.dcm")],
                        capture_output=True, text=True)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert len(server.stored_files()) == 1
    assert "aborted" in server.log_text() or "closed" in server.log_text()


def test_pdu_larger_than_our_maximum_is_aborted(start_server) -> None:  # type: ignore[no-untyped-def]
    srv = start_server("--max-pdu", "16384")
    sock = rc.connect_and_associate(srv.port, srv.ae_title)
    sock.sendall(rc.pdata(1, bytes(20000), command=False, last=True))
    pdu_type, pdu = rc.read_pdu(sock)
    assert pdu_type == 7 and pdu[8] == 2 and pdu[9] == 6  # A-P-ABORT, invalid PDU parameter value
    sock.close()
    assert subprocess.run([dcmtk("echoscu"), "-aec", srv.ae_title, "127.0.0.1", str(srv.port)]).returncode == 0


def test_garbage_instead_of_associate_rq_is_aborted(server: Server) -> None:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=5)
    sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    pdu_type, pdu = rc.read_pdu(sock)
    assert pdu_type == 7 and pdu[9] == 1  # unrecognized PDU
    sock.close()
    assert subprocess.run([dcmtk("echoscu"), "-aec", server.ae_title, "127.0.0.1", str(server.port)]).returncode == 0


def test_silent_peer_is_cut_off_by_artim(start_server) -> None:  # type: ignore[no-untyped-def]
    srv = start_server("--artim-timeout", "1")
    sock = socket.create_connection(("127.0.0.1", srv.port), timeout=5)
    start = time.monotonic()
    assert sock.recv(100) == b""  # closed by the server, nothing sent
    assert time.monotonic() - start < 4
    sock.close()


def test_association_limit_rejects_transiently(start_server) -> None:  # type: ignore[no-untyped-def]
    srv = start_server("--max-associations", "1")
    first = rc.connect_and_associate(srv.port, srv.ae_title)
    sock = socket.create_connection(("127.0.0.1", srv.port), timeout=5)
    sock.sendall(rc.associate_rq(srv.ae_title, "SECOND", [(1, rc.CT, [rc.EXPLICIT_LE])]))
    pdu_type, pdu = rc.read_pdu(sock)
    assert pdu_type == 3
    assert (pdu[7], pdu[8], pdu[9]) == (2, 3, 2)  # transient, presentation provider, local limit exceeded
    sock.close()
    first.sendall(rc.RELEASE_RQ)
    assert rc.read_pdu(first)[0] == 6
    first.close()
    _wait_until_closed(srv)  # its slot is free again
    assert subprocess.run([dcmtk("echoscu"), "-aec", srv.ae_title, "127.0.0.1", str(srv.port)]).returncode == 0


def test_sigterm_exits_zero(server: Server) -> None:
    assert server.stop() == 0

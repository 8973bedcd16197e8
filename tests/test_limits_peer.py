"""Limits against one peer (issue 20, part 2): association slots and
progress. Real ``fastscp serve`` processes; raw sockets (tests/rawclient.py)
play the hostile peer, dcmtk's echoscu the newcomer."""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from conftest import Server, dcmtk
from rawclient import CT, EXPLICIT_LE, associate_rq, read_pdu

pytestmark = pytest.mark.interop


def _request(port: int, calling: str) -> tuple[socket.socket, bytes]:
    """Open a connection and send an A-ASSOCIATE-RQ; (socket, the answer PDU)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(associate_rq("FASTSCP", calling, [(1, CT, [EXPLICIT_LE])]))
    return sock, read_pdu(sock)[1]


@contextmanager
def _held(port: int) -> Iterator[list[socket.socket]]:
    socks: list[socket.socket] = []
    try:
        yield socks
    finally:
        for s in socks:
            s.close()


def _take(port: int, calling: str, socks: list[socket.socket]) -> bytes:
    """Ask for an association as ``calling``; keep it open if accepted.
    The answer PDU is returned."""
    sock, answer = _request(port, calling)
    if answer[0] == 2:
        socks.append(sock)
    else:
        sock.close()
    return answer


def _is_local_limit_rj(answer: bytes) -> bool:
    """A-ASSOCIATE-RJ (type 3), result 2 rejected-transient, source 3
    service-provider (presentation), reason 2 local-limit-exceeded
    (PS3.8 9.3.4, Table 9-21)."""
    return answer[0] == 3 and tuple(answer[7:10]) == (2, 3, 2)


def _echo(srv: Server, calling: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([dcmtk("echoscu"), "-aet", calling, "-aec", srv.ae_title, "127.0.0.1", str(srv.port)],
                          capture_output=True, text=True, timeout=60)


def test_default_limits_keep_a_slot_for_a_new_peer(server: Server) -> None:
    """Defaults (10 associations, nothing else configured): one calling AE
    gets half of them, a second title the peer makes up gets what is left
    but the last slot, which goes to a calling AE holding none. Each
    refusal is A-ASSOCIATE-RJ transient / service-provider (presentation) /
    local-limit-exceeded, and logged."""
    with _held(server.port) as socks:
        answers = [_take(server.port, "HOG", socks) for _ in range(6)]
        assert [a[0] for a in answers[:5]] == [2] * 5
        assert _is_local_limit_rj(answers[5]), answers[5][:10]
        answers = [_take(server.port, "HOG2", socks) for _ in range(5)]
        assert [a[0] for a in answers[:4]] == [2] * 4  # 9 running now
        assert _is_local_limit_rj(answers[4]), answers[4][:10]
        assert len(socks) == 9
        out = _echo(server, "NEWPEER")  # the kept slot
        assert out.returncode == 0, out.stdout + out.stderr
        with _held(server.port) as more:
            assert _take(server.port, "NEWPEER", more)[0] == 2  # a newcomer's first one: the last slot
            assert _is_local_limit_rj(_take(server.port, "LATE", more))  # 10 running: full
        text = server.log_once_it_says("the limit is 5", "are kept for a calling AE holding none", "the limit is 10")
        assert "'HOG' holds" not in text and "'HOG2' holds 4" in text

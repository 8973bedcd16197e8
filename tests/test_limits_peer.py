"""Limits against one peer (issue 20, part 2): association slots and
progress. Real ``fastscp serve`` processes; raw sockets (tests/rawclient.py)
play the hostile peer, dcmtk's echoscu the newcomer."""

from __future__ import annotations

import select
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import rawclient as rc
from conftest import Server, dcmtk
from rawclient import CT, EXPLICIT_LE, associate_rq, read_pdu
from reliability import DatasetTemplate, check_tree, incoming, wait_until

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
                          capture_output=True, text=True, timeout=60, check=False)


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


def _rate_config(tmp_path: Path) -> str:
    path = tmp_path / "rate.yaml"
    path.write_text("server:\n  min_transfer_rate: 4096\n  transfer_rate_window: 1.0\n"
                    "  dimse_timeout: 60\n  idle_timeout: 60\n")
    return str(path)


def test_a_trickled_dataset_is_aborted_by_the_progress_rule(start_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Whole P-DATA PDUs of 64 bytes, five a second: every PDU resets the
    DIMSE and idle timers (60 s here), but 350 bytes/s is below the 4096
    bytes/s the rule asks over its 1 s window. The receiver aborts within a
    couple of windows, logs one line, and leaves nothing in .incoming/."""
    srv: Server = start_server("--config", _rate_config(tmp_path))
    uid, data = DatasetTemplate(20_000).instance(7)
    sock = rc.connect_and_associate(srv.port, calling="TRICKLE")
    try:
        sock.sendall(rc.pdata(1, rc.c_store_rq(1, rc.CT, uid), command=True, last=True))
        started = time.monotonic()
        answer = b""
        sent = 0
        while time.monotonic() - started < 30 and sent + 64 < len(data):
            try:
                sock.sendall(rc.pdata(1, data[sent:sent + 64], command=False, last=False))
            except OSError:  # closed under us: the answer is read below
                break
            sent += 64
            readable, _, _ = select.select([sock], [], [], 0.2)  # the pace, and the receiver's move
            if readable:
                break
        sock.settimeout(10)
        try:
            while chunk := sock.recv(4096):
                answer += chunk
        except OSError:
            pass
        elapsed = time.monotonic() - started
    finally:
        sock.close()
    assert answer[:1] == b"\x07", f"no A-ABORT after {elapsed:.1f} s: {answer[:20]!r}"  # A-ABORT, then closed
    assert elapsed < 10, elapsed
    text = srv.log_once_it_says("below server.min_transfer_rate")
    assert text.count("below server.min_transfer_rate") == 1
    assert wait_until(lambda: not incoming(srv.storage), 10)


def test_a_slow_honest_sender_passes_the_progress_rule(start_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """The same rule, a sender at about three times the minimum rate for
    about three windows: the instance is stored."""
    srv: Server = start_server("--config", _rate_config(tmp_path))
    uid, data = DatasetTemplate(40_000).instance(8)
    sock = rc.connect_and_associate(srv.port, calling="SLOWOK")
    try:
        sock.sendall(rc.pdata(1, rc.c_store_rq(1, rc.CT, uid), command=True, last=True))
        step = 1024
        for offset in range(0, len(data), step):
            chunk = data[offset:offset + step]
            sock.sendall(rc.pdata(1, chunk, command=False, last=offset + step >= len(data)))
            time.sleep(1 / 12)  # the sender's pace (12 KiB/s), not a synchronisation
        pdu_type, _ = rc.read_pdu(sock)
        assert pdu_type == 4  # the C-STORE-RSP, not an A-ABORT
        sock.sendall(rc.RELEASE_RQ)
        assert rc.read_pdu(sock)[0] == 6
    finally:
        sock.close()
    assert list(check_tree(srv.storage)) == [uid]
    assert "min_transfer_rate" not in srv.log_text()

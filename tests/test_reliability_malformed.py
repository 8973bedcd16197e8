"""Malformed datasets inside valid framing (issue 9, "Bad input").

The PDUs and the command are well formed; the dataset is not: truncated
inside an element (in the header or in the pixel data), a length that runs
past the end, a SOP Instance UID that differs from the command's, a SOP
Class UID that differs, bytes in another transfer syntax than the
negotiated one. Each gets the status of the README's table (0xC000 cannot
understand / instance UID mismatch, 0xA900 SOP class mismatch, 0x0122 for
a command whose class is not its context's), nothing is stored, nothing is
left in .incoming, and the same association then stores a good instance.
"""

from __future__ import annotations

import socket
import struct

import pytest

import rawclient as rc
from conftest import Server
from reliability import CT, MR, DatasetTemplate, check_tree, dataset_bytes, incoming, incoming_while_open, server_log_clean, wait_until

pytestmark = pytest.mark.interop

EXPLICIT, IMPLICIT, DEFLATED = rc.EXPLICIT_LE, "1.2.840.10008.1.2", "1.2.840.10008.1.2.1.99"
SMALL = DatasetTemplate(4000)  # whole dataset within the kept head
LARGE = DatasetTemplate(150_000)  # several PDVs, longer than the head
SMALL_IMPLICIT = DatasetTemplate(4000, implicit=True)
SMALL_MR = DatasetTemplate(4000, sop_class=MR)
LARGE_MR = DatasetTemplate(150_000, sop_class=MR)
LARGE_IMPLICIT = DatasetTemplate(150_000, implicit=True)


def status_of(pdu: bytes) -> int:
    at = pdu.find(b"\x00\x00\x00\x09\x02\x00\x00\x00")  # (0000,0900) US, length 2
    assert at > 0, pdu
    return int(struct.unpack_from("<H", pdu, at + 8)[0])


def store(sock: socket.socket, context_id: int, sop_class: str, uid: str, data: bytes, fragment: int = 16000) -> int:
    sock.sendall(rc.pdata(context_id, rc.c_store_rq(1, sop_class, uid), command=True, last=True))
    chunks = [data[i:i + fragment] for i in range(0, len(data), fragment)] or [b""]
    for i, chunk in enumerate(chunks):
        sock.sendall(rc.pdata(context_id, chunk, command=False, last=i == len(chunks) - 1))
    pdu_type, pdu = rc.read_pdu(sock)
    assert pdu_type == 4, f"expected a C-STORE-RSP, got PDU type {pdu_type}"
    return status_of(pdu)


def _patch_length(data: bytes, tag: bytes, new_len: int) -> bytes:
    """Explicit VR LE: set the 16-bit length of the first element with ``tag``."""
    at = data.index(tag)
    return data[:at + 6] + struct.pack("<H", new_len) + data[at + 8:]


PATIENT_NAME = b"\x10\x00\x10\x00PN"
PIXEL_DATA = b"\xe0\x7f\x10\x00OW"


def _cases() -> list[tuple[str, int, int, str, bytes, int]]:
    """(name, context id, status, sop class in command, dataset, n) ..."""
    n = iter(range(100, 1000))
    out = []

    def add(name: str, ctx: int, status: int, sop_class: str, make) -> None:  # type: ignore[no-untyped-def]
        k = next(n)
        out.append((name, ctx, status, sop_class, make(k), k))

    add("cut inside PatientName", 1, 0xC000, CT, lambda k: SMALL.instance(k)[1][:SMALL.bytes.index(PATIENT_NAME) + 11])
    add("cut inside an element header", 1, 0xC000, CT, lambda k: SMALL.instance(k)[1][:SMALL.bytes.index(PATIENT_NAME) + 5])
    add("cut inside pixel data (small)", 1, 0xC000, CT, lambda k: SMALL.instance(k)[1][:-100])
    add("cut inside pixel data (large)", 1, 0xC000, CT, lambda k: LARGE.instance(k)[1][:-5000])
    add("length runs past the end", 1, 0xC000, CT, lambda k: _patch_length(SMALL.instance(k)[1], PATIENT_NAME, 0xFFF0))
    add("length two bytes short", 1, 0xC000, CT, lambda k: _patch_length(SMALL.instance(k)[1], b"\x08\x00\x18\x00UI", 8))
    add("empty dataset", 1, 0xC000, CT, lambda k: b"")
    add("random bytes", 1, 0xC000, CT, lambda k: bytes(range(256)) * 4)
    add("instance UID differs from the command's", 1, 0xC000, CT, lambda k: SMALL.instance(k + 5000)[1])
    add("SOP class differs from the command's", 1, 0xA900, CT, lambda k: SMALL_MR.instance(k)[1])
    add("implicit VR bytes on an explicit context", 1, 0xC000, CT, lambda k: SMALL_IMPLICIT.instance(k)[1])
    add("explicit VR bytes on an implicit context", 3, 0xC000, CT, lambda k: SMALL.instance(k)[1])
    add("command class differs from the context's", 1, 0x0122, MR, lambda k: SMALL_MR.instance(k)[1])
    # several PDVs: the header is parsed once the head is full, before the
    # last fragment (services/storage.py _parse_early); the answer must be the same
    add("length runs past the end (large)", 1, 0xC000, CT,
        lambda k: _patch_length(LARGE.instance(k)[1], PATIENT_NAME, 0xFFF0))
    add("instance UID differs from the command's (large)", 1, 0xC000, CT, lambda k: LARGE.instance(k + 5000)[1])
    add("SOP class differs from the command's (large)", 1, 0xA900, CT, lambda k: LARGE_MR.instance(k)[1])
    add("implicit VR bytes on an explicit context (large)", 1, 0xC000, CT, lambda k: LARGE_IMPLICIT.instance(k)[1])
    add("deflated context, bytes that do not inflate (large)", 5, 0xC000, CT, lambda k: bytes(range(256)) * 600)
    return out


CASES = _cases()


@pytest.fixture(scope="module")
def malformed_server(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    root = tmp_path_factory.mktemp("malformed")
    srv = Server(root / "store", root / "server.log", [])
    yield srv
    srv.stop()


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_malformed_dataset_gets_failure_status_and_nothing_is_stored(malformed_server: Server, case) -> None:  # type: ignore[no-untyped-def]
    srv = malformed_server
    name, ctx, expected, sop_class, data, k = case
    sock = rc.connect_and_associate(srv.port, srv.ae_title,
                                    [(1, CT, [EXPLICIT]), (3, CT, [IMPLICIT]), (5, CT, [DEFLATED])])
    try:
        before = set(check_tree(srv.storage))
        status = store(sock, ctx, sop_class, DatasetTemplate.uid(k), data)
        assert status == expected, f"{name}: status {status:#06x}, expected {expected:#06x}"
        assert set(check_tree(srv.storage)) == before, f"{name}: something was stored"
        assert wait_until(lambda: not incoming_while_open(srv.storage), 5)
        # the association goes on: a good instance on it is stored
        uid, good = SMALL.instance(k + 10_000)
        assert store(sock, 1, CT, uid, good) == 0
        assert dataset_bytes(check_tree(srv.storage)[uid]) == good
        sock.sendall(rc.RELEASE_RQ)
        assert rc.read_pdu(sock)[0] == 6
        assert not incoming(srv.storage), "the released association's spare temp file is left"
    finally:
        sock.close()
    server_log_clean(srv)


def test_a_malformed_association_request_gets_one_log_line(server) -> None:  # type: ignore[no-untyped-def]
    """Bad input gets a protocol answer and one log line: an A-ASSOCIATE-RQ
    without its User Information item (PS3.8 9.3.2) is aborted, and the
    server says so once. A bare connect and close (a port probe) says nothing."""
    rq = rc.associate_rq(server.ae_title, "MALFORMED", [(1, "1.2.840.10008.1.1", ["1.2.840.10008.1.2"])])
    cut = rq.rindex(b"\x50\x00")  # the User Information item is last: leave it out
    body = rq[6:cut]
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(b"\x01\x00" + len(body).to_bytes(4, "big") + body)
        assert rc.read_pdu(sock)[0] == 0x07  # A-ABORT
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(rq)
        assert rc.read_pdu(sock)[0] == 0x02  # a well-formed request after it is accepted
    text = server.log_once_it_says("malformed A-ASSOCIATE-RQ")
    lines = [line for line in text.splitlines() if "ended before an association" in line]
    assert len(lines) == 1 and "malformed A-ASSOCIATE-RQ" in lines[0] and "user information" in lines[0], lines

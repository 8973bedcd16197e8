"""Network fuzz: mutated association streams sent to a live server.

Each input is a real store conversation (A-ASSOCIATE-RQ, C-ECHO, a C-STORE
in several PDUs, A-RELEASE-RQ) with random byte flips, overwrites,
insertions, deletions, lying length fields and cuts. Invariant: whatever
the server sends back is whole PDUs an acceptor may send (AC, RJ, P-DATA,
RELEASE-RP, ABORT); it never crashes, never logs an internal error, leaves
no temp file, no partial file and no descriptor behind, and a normal dcmtk
storescu succeeds afterwards. Inputs that crashed anything would be kept in
tests/fuzz_corpus/ (replayed by test_fuzz_protocol.py).

FUZZ_NET sets the number of inputs (default 300), RELIAB_SEED the seed.
"""

from __future__ import annotations

import os
import random
import socket
import struct
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

import rawclient as rc
from conftest import Server
from reliability import DatasetTemplate, acknowledged, check_tree, fd_count, fd_targets, incoming, server_log_clean, settled_fds, storescu, wait_until

pytestmark = pytest.mark.interop

INPUTS = int(os.environ.get("FUZZ_NET", "300"))
VERIFICATION = "1.2.840.10008.1.1"


def conversation(n: int) -> bytes:
    uid, data = DatasetTemplate(6000).instance(n)
    body = struct.pack("<HHI", 0, 2, 18) + VERIFICATION.encode() + b"\0" \
        + struct.pack("<HHIH", 0, 0x100, 2, 0x30) + struct.pack("<HHIH", 0, 0x110, 2, 7) + struct.pack("<HHIH", 0, 0x800, 2, 0x101)
    echo = struct.pack("<HHII", 0, 0, 4, len(body)) + body
    out = rc.associate_rq("FASTSCP", "FUZZER", [(1, rc.CT, [rc.EXPLICIT_LE]), (3, VERIFICATION, [rc.EXPLICIT_LE])])
    out += rc.pdata(3, echo, command=True, last=True)
    out += rc.pdata(1, rc.c_store_rq(1, rc.CT, uid), command=True, last=True)
    for i in range(0, len(data), 2500):
        out += rc.pdata(1, data[i:i + 2500], command=False, last=i + 2500 >= len(data))
    return out + rc.RELEASE_RQ


def mutate(rng: random.Random, data: bytes) -> bytes:
    buf = bytearray(data)
    for _ in range(rng.randint(1, 5)):
        kind = rng.choice(["flip", "set", "insert", "delete", "truncate", "length32", "length16"])
        pos = rng.randrange(len(buf)) if buf else 0
        if kind == "flip" and buf:
            buf[pos] ^= 1 << rng.randrange(8)
        elif kind == "set" and buf:
            buf[pos] = rng.choice([0, 1, 2, 4, 7, 0x7F, 0x80, 0xFF, rng.randrange(256)])
        elif kind == "insert":
            buf[pos:pos] = os.urandom(rng.randint(1, 16))
        elif kind == "delete":
            del buf[pos:pos + rng.randint(1, 16)]
        elif kind == "truncate":
            del buf[pos:]
        elif kind == "length32" and len(buf) > pos + 4:
            buf[pos:pos + 4] = struct.pack(">I", rng.choice([0, 1, 5, 6, 0xFFFF, 0x7FFFFFFF, 0xFFFFFFFF, rng.randrange(1 << 20)]))
        elif kind == "length16" and len(buf) > pos + 2:
            buf[pos:pos + 2] = struct.pack(">H", rng.choice([0, 1, 0xFFFF, rng.randrange(1 << 16)]))
    return bytes(buf)


def pdu_types(out: bytes) -> list[int]:
    types, pos = [], 0
    while pos + 6 <= len(out):
        types.append(out[pos])
        pos += 6 + struct.unpack_from(">I", out, pos + 2)[0]
    return types


def whole_acceptor_pdus(out: bytes) -> bool:
    """Everything received is whole PDUs of acceptor types (a cut at the end
    is allowed only if the server closed mid-send, which it never should)."""
    pos = 0
    while pos + 6 <= len(out):
        if out[pos] not in (2, 3, 4, 6, 7):
            return False
        (length,) = struct.unpack_from(">I", out, pos + 2)
        pos += 6 + length
    return pos == len(out)


def send_one(port: int, data: bytes) -> bytes:
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    got = b""
    try:
        try:
            sock.sendall(data)
        except OSError:
            pass  # the server aborted and closed before we finished: fine
        sock.settimeout(0.3)
        try:
            while chunk := sock.recv(65536):
                got += chunk
        except (socket.timeout, ConnectionResetError):
            pass  # still waiting for more bytes of a PDU we cut short: fine
    finally:
        rc.reset(sock)
    return got


def test_mutated_streams_to_a_live_server(start_server, synthetic_corpus: list[Path], tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    seed = int(os.environ.get("RELIAB_SEED", random.randrange(1 << 32)))
    rng = random.Random(seed)
    srv: Server = start_server("--artim-timeout", "3", "--idle-timeout", "3", "--dimse-timeout", "3", "--max-pdu", "16384",
                               "--max-associations", "64")
    pid = srv.proc.pid
    base = conversation(1)
    answer = send_one(srv.port, base)
    assert pdu_types(answer) == [2, 4, 4, 6], answer  # unmutated: AC, C-ECHO-RSP, C-STORE-RSP, A-RELEASE-RP
    fds_before = len(settled_fds(pid))

    inputs = [mutate(rng, conversation(n)) for n in range(2, INPUTS + 2)]
    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(lambda data: send_one(srv.port, data), inputs))
    bad = [(i, a[:40]) for i, a in enumerate(answers) if not whole_acceptor_pdus(a)]
    if bad:  # keep what broke the server as a regression fixture
        for i, _ in bad:
            (Path(__file__).parent / "fuzz_corpus" / f"crash-net-{seed}-{i}.bin").write_bytes(inputs[i])
    assert not bad, f"seed {seed}: answers that are not whole acceptor PDUs: {bad[:3]}"
    assert srv.proc.poll() is None, f"seed {seed}: the server died"
    server_log_clean(srv)

    last = [(pdu_types(a) or [0])[-1] for a in answers]
    outcome = {name: last.count(t) for name, t in
               (("A-ABORT", 7), ("A-ASSOCIATE-RJ", 3), ("A-RELEASE-RP", 6), ("P-DATA (responses)", 4), ("A-ASSOCIATE-AC only", 2), ("nothing", 0))}
    assert wait_until(lambda: not incoming(srv.storage), 10), f"seed {seed}: temp files left"
    try:
        check_tree(srv.storage, mutated=True)  # whatever got stored is whole
    except AssertionError as exc:
        raise AssertionError(f"seed {seed}: {exc}") from None
    assert wait_until(lambda: fd_count(pid) == fds_before, 10), f"seed {seed}: fds {fds_before} -> {fd_targets(pid)}"
    out = storescu(srv, synthetic_corpus[:5])
    assert out.returncode == 0 and len(acknowledged(out.stdout)) == 5, out.stdout[-2000:]
    print(f"\nnetwork fuzz: {len(inputs)} mutated conversations (seed {seed}), last PDU answered: {outcome}; "
          f"fds {fds_before} -> {fd_count(pid)}")

"""Random faults against a live server (issue 9, "Faults").

Hundreds of raw peers (tests/rawclient.py) abort (A-ABORT), reset (RST) or
just close at a random point of an association: during negotiation, right
after it, between PDUs, inside a PDU, inside a dataset, right before the
C-STORE-RSP, around the release. A healthy dcmtk storescu runs alongside the
whole time and must succeed every time. Afterwards: nothing partial in the
tree, no temp file in .incoming/, the server process holds exactly the file
descriptors it held before, and it still serves.

Each faulty peer is planned by reliability.plan_fault, which no server is
needed to check: tests/test_reliability_generator.py proves offline that a
fault never sends a complete dataset unless it says so.

RELIAB_FAULTS sets the number of faulty peers (default 300); RELIAB_SEED the
random seed (default: random, printed on failure).
"""

from __future__ import annotations

import os
import random
import socket
import struct
import threading
from pathlib import Path

import pytest

import rawclient as rc
from conftest import Server
from reliability import (
    DatasetTemplate,
    FaultPlan,
    Send,
    acknowledged,
    check_tree,
    dataset_bytes,
    fd_count,
    fd_targets,
    incoming,
    plan_fault,
    server_log_clean,
    settled_fds,
    storescu,
    wait_until,
)

pytestmark = pytest.mark.interop

FAULTS = int(os.environ.get("RELIAB_FAULTS", "300"))


def _end(sock: socket.socket, plan: FaultPlan) -> None:
    try:
        if plan.how == "abort":
            sock.sendall(plan.tail())
            sock.close()
        elif plan.how == "reset":
            rc.reset(sock)
        else:
            sock.close()
    except OSError:
        sock.close()  # the server closed first: fine


class Fault:
    def __init__(self, plan: FaultPlan) -> None:
        self.phase, self.how = plan.phase, plan.how
        self.complete = plan.complete  # the whole dataset was sent
        self.acknowledged = False  # and a success C-STORE-RSP came back


def one_fault(rng: random.Random, srv: Server, uid: str, data: bytes) -> Fault:
    """One faulty peer (reliability.plan_fault), ending at a random phase in a random way."""
    plan = plan_fault(rng, srv.ae_title, uid, data)
    f = Fault(plan)
    sock = socket.create_connection(("127.0.0.1", srv.port), timeout=10)
    try:
        for step in plan.steps:
            if isinstance(step, Send):
                sock.sendall(step.data)
                continue
            pdu_type, pdu = rc.read_pdu(sock)
            assert pdu_type == step.pdu_type, (plan.phase, pdu_type)
            if pdu_type == 4:
                status = struct.unpack_from("<H", pdu, pdu.find(b"\x00\x00\x00\x09\x02\x00\x00\x00") + 8)[0]
                assert status == 0, hex(status)
                f.acknowledged = True
        return f
    finally:
        _end(sock, plan)


class HealthyTraffic(threading.Thread):
    """dcmtk storescu associations, one after another, until told to stop;
    each must succeed for every file."""

    def __init__(self, srv: Server, files: list[Path], per_run: int = 20) -> None:
        super().__init__(daemon=True)
        self.srv, self.files, self.per_run = srv, files, per_run
        self.stop = threading.Event()
        self.runs = 0
        self.sent: set[Path] = set()
        self.failures: list[str] = []

    def run(self) -> None:
        i = 0
        while not self.stop.is_set() or self.runs == 0:
            batch = [self.files[(i + k) % len(self.files)] for k in range(self.per_run)]
            i += self.per_run
            out = storescu(self.srv, batch)
            acked = acknowledged(out.stdout)
            if out.returncode != 0 or len(acked) != len(batch):
                self.failures.append(out.stdout[-3000:])
            self.sent.update(Path(a) for a in acked)
            self.runs += 1


def test_random_faults_leave_nothing_and_healthy_peer_succeeds(start_server, synthetic_corpus: list[Path]) -> None:  # type: ignore[no-untyped-def]
    seed = int(os.environ.get("RELIAB_SEED", random.randrange(1 << 32)))
    rng = random.Random(seed)
    srv: Server = start_server("--artim-timeout", "5")
    pid = srv.proc.pid
    small, large = DatasetTemplate(2000), DatasetTemplate(150_000)

    # warm up every lazily created resource (thread pool, imports) before counting
    assert storescu(srv, synthetic_corpus[:2]).returncode == 0
    one_fault(random.Random(0), srv, DatasetTemplate.uid(10**9), small.instance(10**9)[1])
    assert wait_until(lambda: not incoming(srv.storage), 10)
    fds_before = len(settled_fds(pid))

    healthy = HealthyTraffic(srv, synthetic_corpus)
    healthy.start()
    sent: dict[str, bytes] = {}
    acked: list[str] = []
    tally: dict[str, int] = {}
    try:
        for n in range(1, FAULTS + 1):
            uid, data = (large if rng.random() < 0.3 else small).instance(n)
            f = one_fault(rng, srv, uid, data)
            tally[f"{f.phase}/{f.how}"] = tally.get(f"{f.phase}/{f.how}", 0) + 1
            if f.complete:
                sent[uid] = data
            if f.acknowledged:
                acked.append(uid)
    finally:
        healthy.stop.set()
        healthy.join(120)
    context = f"seed {seed}, faults {dict(sorted(tally.items()))}"

    assert not healthy.failures, f"{context}: healthy association failed:\n{healthy.failures[0]}"
    assert healthy.runs >= 1
    assert wait_until(lambda: not incoming(srv.storage), 15), f"{context}: temp files left: {incoming(srv.storage)}"
    assert wait_until(lambda: fd_count(pid) == fds_before, 15), \
        f"{context}: fds {fds_before} before, {fd_count(pid)} after: {fd_targets(pid)}"

    stored = check_tree(srv.storage)
    # an instance is only in the tree if all of it was sent, and then byte for byte
    for uid, path in stored.items():
        if uid.startswith(DatasetTemplate.PREFIX) and uid != DatasetTemplate.uid(10**9):
            assert uid in sent, f"{context}: {uid} stored although its dataset never fully arrived"
            assert dataset_bytes(path) == sent[uid], f"{context}: {uid} stored with different bytes"
    for path in healthy.sent:
        from pydicom import dcmread

        uid = str(dcmread(path, stop_before_pixels=True).SOPInstanceUID)
        assert dataset_bytes(stored[uid]) == dataset_bytes(path)
    # every instance a faulty peer saw acknowledged is there, whatever came after
    for uid in acked:
        assert uid in stored, f"{context}: {uid} acknowledged but not stored"
    server_log_clean(srv)
    # still serving
    out = storescu(srv, synthetic_corpus[-3:])
    assert out.returncode == 0 and len(acknowledged(out.stdout)) == 3, out.stdout
    print(f"\nfaults: {FAULTS} ({context}); healthy storescu runs: {healthy.runs}, "
          f"{len(healthy.sent)} distinct files acknowledged; fds {fds_before} -> {fd_count(pid)}")

"""The service layer's seam (services/dispatcher.py, services/session.py),
driven by pynetdicom as the requestor: a module registered for a request
type gets the request and its data set, streams Pending responses from a
worker thread through ``Session.call_soon``, is cancelled by C-CANCEL
(PS3.7 9.3.2.3) and by the association's end; a data set over the limit is
refused 0xA700 and an unserved request type 0x0211, the association
surviving both.

The module here is a test's own module of our own interface (the seam under
test), not a stand-in for a peer: the peer is pynetdicom.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path

import pytest
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_dataset
from pydicom.filewriter import write_dataset
from pynetdicom import AE
from test_reliability_disk import InProcessServer

from fastscp.protocol import dimse as D
from fastscp.protocol.commands import CFindRequest, Request
from fastscp.protocol.negotiation import AcceptPolicy
from fastscp.scu.commands import answers_to_the_caller
from fastscp.services.session import Session

FIND = "1.2.840.10008.5.1.4.1.2.2.1"  # Study Root Query/Retrieve Information Model - FIND
VERIFICATION = "1.2.840.10008.1.1"
IMPLICIT_LE = "1.2.840.10008.1.2"


class _Count:
    """Streams ``n`` Pending responses from a worker thread, each echoing the
    request's PatientID with its index, one at a time once the requestor
    has seen the previous one; stops at cancel()."""

    sop_classes = frozenset({FIND})

    def __init__(self, n: int) -> None:
        self.n = n
        self.started = threading.Event()
        self.cancelled = threading.Event()
        self.step = threading.Semaphore(0)  # the test lets each next Pending go
        self.requests: list[tuple[Request, bytes | None]] = []

    def start(self, session: Session, context_id: int, request: Request, dataset: bytes | None) -> None:
        assert isinstance(request, CFindRequest)
        self.requests.append((request, dataset))
        identifier = read_dataset(BytesIO(dataset or b""), True, True)
        module = self

        class Op:
            def cancel(self) -> None:
                module.cancelled.set()
                module.step.release()

        session.operation_started(request.message_id, Op())

        def respond(status: int, ds: Dataset | None) -> None:
            if status != D.PENDING:
                session.operation_ended(request.message_id)
            command = D.encode_command({D.COMMAND_FIELD: D.C_FIND_RSP, D.MESSAGE_ID_RESPONDED: request.message_id,
                                        D.AFFECTED_SOP_CLASS: FIND, D.STATUS: status}, ds is not None)
            payload = None
            if ds is not None:
                out = DicomBytesIO()
                out.is_little_endian, out.is_implicit_VR = True, True
                write_dataset(out, ds)
                payload = out.getvalue()
            session.send(context_id, command, payload)

        def work() -> None:
            self.started.set()
            for i in range(self.n):
                self.step.acquire()
                if self.cancelled.is_set():
                    session.call_soon(lambda: respond(D.CANCEL, None))
                    return
                ds = Dataset()
                ds.PatientID = f"{identifier.PatientID}-{i}"
                session.call_soon(lambda ds=ds: respond(D.PENDING, ds))
            session.call_soon(lambda: respond(D.SUCCESS, None))

        threading.Thread(target=work, daemon=True).start()


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[InProcessServer, _Count]]:
    srv = InProcessServer(tmp_path / "store", {"database.path": None})
    module = _Count(5)
    state = srv.app.state
    storage_ok = state.policy.abstract_syntax_ok
    state.policy = AcceptPolicy(lambda uid: uid == FIND or storage_ok(uid), state.policy.transfer_syntaxes)
    state.services = {CFindRequest: module}
    state.max_request_dataset = 4096
    try:
        yield srv, module
    finally:
        srv.stop()


def _associate(port: int):  # type: ignore[no-untyped-def]
    ae = AE(ae_title="FINDSCU")
    ae.add_requested_context(FIND, IMPLICIT_LE)
    ae.add_requested_context(VERIFICATION, IMPLICIT_LE)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 20
    assoc = ae.associate("127.0.0.1", port, ae_title="FASTSCP")
    assert assoc.is_established
    answers_to_the_caller(assoc)  # pynetdicom's reactor must not take our answers (scu/commands.py says why)
    return assoc


def _query(patient_id: str) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    ds.PatientID = patient_id
    return ds


def test_pendings_stream_from_a_worker_then_success(served: tuple[InProcessServer, _Count]) -> None:
    srv, module = served
    assoc = _associate(srv.port)
    try:
        for _ in range(module.n):
            module.step.release()
        answers = [(status.Status, ident.PatientID if ident is not None else None)
                   for status, ident in assoc.send_c_find(_query("P7"), FIND, msg_id=9)]
        assert answers == [(0xFF00, f"P7-{i}") for i in range(5)] + [(0x0000, None)]
        request, dataset = module.requests[0]
        assert request == CFindRequest(9, FIND, 2, True) and dataset
        assert assoc.send_c_echo().Status == 0x0000  # the association carries on
    finally:
        assoc.release()


def test_c_cancel_reaches_the_running_operation(served: tuple[InProcessServer, _Count]) -> None:
    srv, module = served
    assoc = _associate(srv.port)
    try:
        module.step.release()
        statuses = []
        for status, _ident in assoc.send_c_find(_query("P1"), FIND, msg_id=3):
            statuses.append(status.Status)
            if len(statuses) == 1:  # the first Pending is in: cancel the rest
                assoc.send_c_cancel(3, query_model=FIND)
        assert module.cancelled.wait(10)
        assert statuses == [0xFF00, 0xFE00]
        assert assoc.send_c_echo().Status == 0x0000
    finally:
        assoc.release()


def test_the_association_end_cancels_what_runs(served: tuple[InProcessServer, _Count]) -> None:
    srv, module = served
    assoc = _associate(srv.port)
    responses = assoc.send_c_find(_query("P2"), FIND, msg_id=4)
    module.step.release()
    status, _ident = next(responses)
    assert status.Status == 0xFF00
    assoc.abort()
    assert module.cancelled.wait(10)


def test_a_request_data_set_over_the_limit_is_refused(served: tuple[InProcessServer, _Count]) -> None:
    srv, module = served
    assoc = _associate(srv.port)
    try:
        big = _query("P" * 60)
        big.StudyDescription = "x" * 64
        big.PatientComments = "y" * 8000  # over max_request_dataset (4096)
        answers = [status.Status for status, _ident in assoc.send_c_find(big, FIND, msg_id=5)]
        assert answers == [0xA700]
        assert module.requests == []
        assert assoc.send_c_echo().Status == 0x0000
    finally:
        assoc.release()


def test_a_request_no_module_serves_is_unrecognized(served: tuple[InProcessServer, _Count]) -> None:
    srv, _module = served
    srv.app.state.services = {}
    assoc = _associate(srv.port)
    try:
        answers = [status.Status for status, _ident in assoc.send_c_find(_query("P3"), FIND, msg_id=6)]
        assert answers == [0x0211]
        assert assoc.send_c_echo().Status == 0x0000
    finally:
        assoc.release()


def test_a_second_request_with_a_running_message_id_is_refused(served: tuple[InProcessServer, _Count]) -> None:
    """0x0210 (duplicate invocation) for a request reusing the Message ID of
    an operation under way; the running one is untouched and still ends."""
    import socket

    from rawclient import associate_rq, pdata, read_pdu

    from fastscp._ext.framer import decode_command

    srv, module = served
    identifier = DicomBytesIO()
    identifier.is_little_endian, identifier.is_implicit_VR = True, True
    write_dataset(identifier, _query("P9"))
    command = D.encode_command({D.COMMAND_FIELD: D.C_FIND_RQ, D.MESSAGE_ID: 5, D.PRIORITY: 0,
                                D.AFFECTED_SOP_CLASS: FIND}, True)
    with socket.create_connection(("127.0.0.1", srv.port), timeout=20) as sock:
        sock.sendall(associate_rq("FASTSCP", "RAW", [(1, FIND, [IMPLICIT_LE])]))
        assert read_pdu(sock)[0] == 2
        for _ in range(2):
            sock.sendall(pdata(1, command, True, True) + pdata(1, identifier.getvalue(), False, True))
        kind, pdu = read_pdu(sock)  # the first is held by the module: this answers the second
        answer = decode_command(pdu[12:])
        assert kind == 4 and answer[D.STATUS] == D.DUPLICATE_INVOCATION and answer[D.MESSAGE_ID_RESPONDED] == 5
        assert len(module.requests) == 1
        for _ in range(module.n):
            module.step.release()
        statuses = []
        while not statuses or statuses[-1] == D.PENDING:
            kind, pdu = read_pdu(sock)
            if pdu[11] & 1:  # a command PDV (message control header bit 0)
                statuses.append(decode_command(pdu[12:])[D.STATUS])
        assert statuses == [D.PENDING] * module.n + [D.SUCCESS]

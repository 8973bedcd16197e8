"""Storage Commitment Push Model (PS3.4 Annex J) against a real ``fastscp
serve``, with pynetdicom as the Storage Commitment SCU: the report on the
requesting association, failures with their reasons, the report on a new
association to a requester listed in ``remote_aes``, and refused requests."""

from __future__ import annotations

import queue
import shutil
import ssl
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import free_port, make_image
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pynetdicom import AE, evt
from pynetdicom.sop_class import CTImageStorage, MRImageStorage, StorageCommitmentPushModel

from fastscp.scu.commands import answers_to_the_caller

WELL_KNOWN = "1.2.840.10008.1.20.1.1"
TIMEOUT = 30.0


def store(port: int, paths: list[Path], calling: str = "MODALITY") -> list[Dataset]:
    """Send the files with pynetdicom; every one must be answered Success."""
    import pydicom

    ae = AE(ae_title=calling)
    ae.add_requested_context(CTImageStorage)
    ae.add_requested_context(MRImageStorage)
    assoc = ae.associate("127.0.0.1", port, ae_title="FASTSCP")
    assert assoc.is_established
    answers_to_the_caller(assoc)  # pynetdicom's reactor race (scu/commands.py); seen here in a loop
    sent = []
    try:
        for path in paths:
            ds = pydicom.dcmread(path)
            status = assoc.send_c_store(ds)
            assert status.Status == 0
            sent.append(ds)
    finally:
        assoc.release()
    return sent


def reactor_takes_requests_only(assoc: Any) -> None:
    """pynetdicom's reactor race (fastscp/scu/commands.py) for an association
    that must still serve requests (the N-EVENT-REPORT-RQ): its reactor
    thread may take a message off the DIMSE queue only when it is a request,
    so a response (the N-ACTION-RSP) always reaches the caller waiting for it.
    The peek and the take cannot be split by the caller: it waits only while
    a response is due, and fastscp sends the N-ACTION-RSP before any report."""
    dimse = assoc.dimse
    get_msg, pending = dimse.get_msg, dimse.msg_queue

    def get(block: bool = False) -> Any:
        if block:
            return get_msg(block=True)
        with pending.mutex:
            if not pending.queue or not pending.queue[0][1].is_valid_request:
                return None, None
        return get_msg(block=False)

    dimse.get_msg = get


def action_information(transaction: str, refs: list[tuple[str, str]]) -> Dataset:
    ds = Dataset()
    ds.TransactionUID = transaction
    items = []
    for sop_class, sop_instance in refs:
        item = Dataset()
        item.ReferencedSOPClassUID = sop_class
        item.ReferencedSOPInstanceUID = sop_instance
        items.append(item)
    ds.ReferencedSOPSequence = Sequence(items)
    return ds


class Report:
    """What an EVT_N_EVENT_REPORT handler saw."""

    def __init__(self, event: Any) -> None:
        self.event_type = int(event.request.EventTypeID)
        self.sop_class = str(event.request.AffectedSOPClassUID)
        self.sop_instance = str(event.request.AffectedSOPInstanceUID)
        info = event.event_information
        self.transaction = str(info.TransactionUID)
        self.committed = [(str(i.ReferencedSOPClassUID), str(i.ReferencedSOPInstanceUID))
                          for i in info.get("ReferencedSOPSequence", [])]
        self.failed = [(str(i.ReferencedSOPClassUID), str(i.ReferencedSOPInstanceUID), int(i.FailureReason))
                       for i in info.get("FailedSOPSequence", [])]
        self.same_association = event.assoc.is_requestor
        context = next(c for c in event.assoc.accepted_contexts if c.context_id == event.context.context_id)
        self.roles = (context.as_scu, context.as_scp)


def request_commitment(port: int, transaction: str, refs: list[tuple[str, str]],
                       answered: Callable[[str], object], calling: str = "MODALITY") -> tuple[float, Report]:
    """N-ACTION with pynetdicom; wait for the report on the same association,
    then for ``answered(transaction)`` (the server heard our N-EVENT-REPORT-RSP)
    before releasing: pynetdicom's handler returns its answer only after it
    ran, and a release started meanwhile breaks pynetdicom's state machine.
    Returns when the report arrived (time.time()) and the report."""
    reports: queue.Queue[tuple[float, Report]] = queue.Queue()

    def on_report(event: Any) -> tuple[int, None]:
        reports.put((time.time(), Report(event)))
        return 0x0000, None

    ae = AE(ae_title=calling)
    ae.add_requested_context(StorageCommitmentPushModel)
    assoc = ae.associate("127.0.0.1", port, ae_title="FASTSCP", evt_handlers=[(evt.EVT_N_EVENT_REPORT, on_report)])
    assert assoc.is_established
    reactor_takes_requests_only(assoc)
    try:
        status, _ = assoc.send_n_action(action_information(transaction, refs), 1, StorageCommitmentPushModel,
                                        WELL_KNOWN)
        assert status.Status == 0, f"N-ACTION answered 0x{status.Status:04X}"
        reported = reports.get(timeout=TIMEOUT)
        answered(transaction)
    finally:
        assoc.release()
    return reported


def answer_heard(server: Any) -> Callable[[str], object]:
    def wait(transaction: str) -> None:
        said = f"storage commitment {transaction}: reported"
        assert said in server.log_once_it_says(said)
    return wait


def test_all_present_is_event_type_1_on_the_same_association(server: Any, tmp_path: Path) -> None:
    paths = [tmp_path / f"i{n}.dcm" for n in range(3)]
    sent = [make_image(p, n, study=1, modality="CT" if n % 2 else "MR") for n, p in enumerate(paths)]
    store(server.port, paths)
    refs = [(str(ds.SOPClassUID), str(ds.SOPInstanceUID)) for ds in sent]
    _, report = request_commitment(server.port, "1.2.3.4.100", refs, answer_heard(server))
    assert report.same_association
    assert report.event_type == 1
    assert (report.sop_class, report.sop_instance) == (StorageCommitmentPushModel, WELL_KNOWN)
    assert report.transaction == "1.2.3.4.100"
    assert report.committed == refs
    assert report.failed == []


def test_unknown_and_wrong_class_are_event_type_2_with_reasons(server: Any, tmp_path: Path) -> None:
    paths = [tmp_path / f"i{n}.dcm" for n in range(2)]
    sent = [make_image(p, n, study=2, modality="CT") for n, p in enumerate(paths)]
    store(server.port, paths)
    good = (CTImageStorage, str(sent[0].SOPInstanceUID))
    wrong_class = (MRImageStorage, str(sent[1].SOPInstanceUID))  # stored as CT
    unknown = (CTImageStorage, "1.2.3.4.5.6.7.8.9")
    never_accepted = ("1.2.840.10008.5.1.1.1", "1.2.3.4.5.6.7.8.12")  # Basic Film Session: not a storage class
    _, report = request_commitment(server.port, "1.2.3.4.101", [good, wrong_class, unknown, never_accepted],
                                   answer_heard(server))
    assert report.event_type == 2
    assert report.transaction == "1.2.3.4.101"
    assert report.committed == [good]
    assert report.failed == [(*wrong_class, 0x0119), (*unknown, 0x0112), (*never_accepted, 0x0122)]


def n_action_pdus(message_id: int, transaction: str, refs: list[tuple[str, str]]) -> bytes:
    """An N-ACTION-RQ of Storage Commitment as P-DATA-TF PDUs on context 1,
    encoded by pynetdicom."""
    from io import BytesIO

    from pynetdicom.dimse_messages import N_ACTION_RQ
    from pynetdicom.dimse_primitives import N_ACTION
    from pynetdicom.dsutils import encode
    from pynetdicom.pdu import P_DATA_TF

    primitive = N_ACTION()
    primitive.MessageID = message_id
    primitive.RequestedSOPClassUID = StorageCommitmentPushModel
    primitive.RequestedSOPInstanceUID = WELL_KNOWN
    primitive.ActionTypeID = 1
    data = encode(action_information(transaction, refs), False, True)
    assert data is not None
    primitive.ActionInformation = BytesIO(data)
    message = N_ACTION_RQ()
    message.primitive_to_message(primitive)
    pdus = b""
    for p_data in message.encode_msg(1, 16384):
        pdu = P_DATA_TF()
        pdu.from_primitive(p_data)
        pdus += pdu.encode()
    return pdus


def read_commands(sock: Any, until: Callable[[list[Dataset]], bool] | None) -> list[Dataset]:
    """The command sets the server sends, decoded by pydicom: until
    ``until(commands)`` holds, or (None) until the A-RELEASE-RP."""
    import struct
    from io import BytesIO

    from pydicom.filereader import read_dataset
    from rawclient import read_pdu

    commands: list[Dataset] = []
    fragment = b""
    while until is None or not until(commands):
        kind, pdu = read_pdu(sock)
        if kind == 6 and until is None:
            return commands
        assert kind == 4, f"PDU type {kind} while a response was due"
        at = 6
        while at < len(pdu):
            (length,) = struct.unpack(">I", pdu[at:at + 4])
            control, value = pdu[at + 5], pdu[at + 6:at + 4 + length]
            at += 4 + length
            if control & 1:  # a command fragment
                fragment += value
                if control & 2:
                    commands.append(read_dataset(BytesIO(fragment), True, True))
                    fragment = b""
    return commands


def n_action_then_release(port: int, transaction: str, refs: list[tuple[str, str]], calling: str) -> int:
    """N-ACTION-RQ and A-RELEASE-RQ in one write, so the association has
    ended before any report could go out on it: the report must come on a
    new association. Returns the N-ACTION-RSP status."""
    from rawclient import EXPLICIT_LE, RELEASE_RQ, connect_and_associate

    sock = connect_and_associate(port, contexts=[(1, StorageCommitmentPushModel, [EXPLICIT_LE])], calling=calling)
    try:
        sock.sendall(n_action_pdus(7, transaction, refs) + RELEASE_RQ)
        commands = read_commands(sock, None)
    finally:
        sock.close()
    assert [c.CommandField for c in commands] == [0x8130], "expected the N-ACTION-RSP alone before the release"
    return int(commands[0].Status)


@pytest.fixture
def requester() -> Any:
    """The Storage Commitment SCU's own listening AE (pynetdicom) on a free
    port: where a report on a new association arrives."""
    reports: queue.Queue[Report] = queue.Queue()

    def on_report(event: Any) -> tuple[int, None]:
        reports.put(Report(event))
        return 0x0000, None

    ae = AE(ae_title="MODALITY")
    ae.add_supported_context(StorageCommitmentPushModel, scu_role=False, scp_role=True)
    port = free_port()
    listener = ae.start_server(("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_N_EVENT_REPORT, on_report)])
    try:
        yield port, reports
    finally:
        listener.shutdown()


def config_with_requester(tmp_path: Path, port: int) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(f"remote_aes:\n  - ae_title: MODALITY\n    host: 127.0.0.1\n    port: {port}\n")
    return path


def test_report_on_a_new_association_after_release(start_server: Any, requester: Any, tmp_path: Path) -> None:
    port, reports = requester
    server = start_server("--config", str(config_with_requester(tmp_path, port)))
    paths = [tmp_path / f"i{n}.dcm" for n in range(2)]
    sent = [make_image(p, n, study=3, modality="MR") for n, p in enumerate(paths)]
    store(server.port, paths)
    good = (MRImageStorage, str(sent[0].SOPInstanceUID))
    unknown = (MRImageStorage, "1.2.3.4.5.6.7.8.10")
    assert n_action_then_release(server.port, "1.2.3.4.102", [good, unknown], "MODALITY") == 0
    report = reports.get(timeout=TIMEOUT)
    assert not report.same_association
    # we proposed the SCP role (PS3.4 J.3.3.1.3): the requester is the SCU here
    assert report.roles == (True, False)
    assert report.event_type == 2
    assert report.transaction == "1.2.3.4.102"
    assert report.committed == [good]
    assert report.failed == [(*unknown, 0x0112)]
    assert "on a new association" in server.log_once_it_says("on a new association")
    assert reports.empty()


def test_requester_not_in_remote_aes_gets_no_report(server: Any, tmp_path: Path) -> None:
    paths = [tmp_path / "i0.dcm"]
    sent = [make_image(p, n, study=4) for n, p in enumerate(paths)]
    store(server.port, paths)
    ref = (CTImageStorage, str(sent[0].SOPInstanceUID))
    assert n_action_then_release(server.port, "1.2.3.4.103", [ref], "STRANGER") == 0
    said = "STRANGER ended the association before the report and is not in remote_aes: no report sent"
    assert said in server.log_once_it_says(said)


def test_bad_requests_are_refused_with_their_status(server: Any) -> None:
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(StorageCommitmentPushModel)
    assoc = ae.associate("127.0.0.1", server.port, ae_title="FASTSCP")
    assert assoc.is_established
    answers_to_the_caller(assoc)  # only answers come on this one
    good = action_information("1.2.3.4.104", [(CTImageStorage, "1.2.3.4.5")])
    no_transaction = action_information("", [(CTImageStorage, "1.2.3.4.5")])
    del no_transaction.TransactionUID
    no_items = action_information("1.2.3.4.105", [])
    try:
        answers = [
            int(assoc.send_n_action(good, 2, StorageCommitmentPushModel, WELL_KNOWN)[0].Status),
            int(assoc.send_n_action(good, 1, StorageCommitmentPushModel, "1.2.3.4.999")[0].Status),
            int(assoc.send_n_action(no_transaction, 1, StorageCommitmentPushModel, WELL_KNOWN)[0].Status),
            int(assoc.send_n_action(no_items, 1, StorageCommitmentPushModel, WELL_KNOWN)[0].Status),
        ]
        # each refusal leaves the association serving
        assert assoc.is_established
    finally:
        assoc.release()
    # PS3.7 10.1.4.1.10: no such action, no such SOP instance, invalid argument value (twice)
    assert answers == [0x0123, 0x0112, 0x0115, 0x0115]
    text = server.log_once_it_says("no Referenced SOP Sequence")
    refusals = [line for line in text.splitlines() if "storage commitment request from MODALITY refused" in line]
    assert len(refusals) == 4
    assert "(0x0123): Action Type ID 2, not 1" in refusals[0]
    assert "no Transaction UID (0008,1195)" in refusals[2]


def test_a_transaction_or_message_id_still_running_is_a_duplicate_invocation(server: Any) -> None:
    """Three N-ACTIONs in one write: the second repeats the first's
    Transaction UID, the third its Message ID, while the first is still
    running (its report is never answered here): both 0x0210."""
    from rawclient import EXPLICIT_LE, RELEASE_RQ, connect_and_associate

    refs = [(CTImageStorage, "1.2.3.4.5.6")]
    sock = connect_and_associate(server.port, contexts=[(1, StorageCommitmentPushModel, [EXPLICIT_LE])],
                                 calling="MODALITY")
    try:
        sock.sendall(n_action_pdus(1, "1.2.3.4.300", refs) + n_action_pdus(2, "1.2.3.4.300", refs)
                     + n_action_pdus(1, "1.2.3.4.301", refs))
        answers = [c for c in read_commands(sock, lambda cs: sum(c.CommandField == 0x8130 for c in cs) == 3)
                   if c.CommandField == 0x8130]
        sock.sendall(RELEASE_RQ)
        read_commands(sock, None)
    finally:
        sock.close()
    assert [(int(c.MessageIDBeingRespondedTo), int(c.Status)) for c in answers] == [(1, 0), (2, 0x0210), (1, 0x0210)]
    text = server.log_once_it_says("message ID 1 is still being processed")
    assert "(0x0210): transaction 1.2.3.4.300 is already being processed" in text


def _openssl(directory: Path, *args: str) -> None:
    subprocess.run(["openssl", *args], cwd=directory, check=True, capture_output=True)


def _authority(directory: Path, name: str) -> None:
    _openssl(directory, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", f"/CN={name}",
             "-keyout", f"{name}.key", "-out", f"{name}.pem",
             "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign")


def _host_certificate(directory: Path, name: str, authority: str) -> None:
    """A certificate for 127.0.0.1, usable by a server and a client."""
    (directory / f"{name}.ext").write_text("subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n"
                                           "extendedKeyUsage=serverAuth,clientAuth\n")
    _openssl(directory, "req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}",
             "-keyout", f"{name}.key", "-out", f"{name}.csr")
    _openssl(directory, "x509", "-req", "-in", f"{name}.csr", "-CA", f"{authority}.pem", "-CAkey",
             f"{authority}.key", "-CAcreateserial", "-days", "2", "-extfile", f"{name}.ext", "-out", f"{name}.pem")


@pytest.fixture(scope="module")
def commitment_pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CA and a certificate (for 127.0.0.1) the configuration trusts, and
    a certificate from another CA."""
    if shutil.which("openssl") is None:
        pytest.fail("the openssl command is needed to make test certificates")
    d = tmp_path_factory.mktemp("commitment-pki")
    _authority(d, "test-ca")
    _authority(d, "rogue-ca")
    _host_certificate(d, "test-server", "test-ca")
    _host_certificate(d, "rogue-server", "rogue-ca")
    return d


def tls_requester(pki: Path, certificate: str) -> tuple[AE, ssl.SSLContext]:
    ae = AE(ae_title="MODALITY")
    ae.add_supported_context(StorageCommitmentPushModel, scu_role=False, scp_role=True)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(pki / f"{certificate}.pem", pki / f"{certificate}.key")
    return ae, ctx


@pytest.mark.parametrize("certificate", ["test-server", "rogue-server"])
def test_report_over_tls_to_a_requester_marked_tls(start_server: Any, commitment_pki: Path, tmp_path: Path,
                                                    certificate: str) -> None:
    """remote_aes[].tls: the report's association is TLS, the requester's
    certificate verified against server.tls.ca_bundle: one from another CA
    gets no report."""
    reports: queue.Queue[tuple[Report, bool]] = queue.Queue()

    def on_report(event: Any) -> tuple[int, None]:
        reports.put((Report(event), isinstance(event.assoc.dul.socket.socket, ssl.SSLSocket)))
        return 0x0000, None

    ae, ctx = tls_requester(commitment_pki, certificate)
    port = free_port()
    listener = ae.start_server(("127.0.0.1", port), block=False, ssl_context=ctx,
                               evt_handlers=[(evt.EVT_N_EVENT_REPORT, on_report)])
    try:
        config = tmp_path / "config.yaml"
        config.write_text(
            f"server:\n  tls:\n    enabled: true\n    port: {free_port()}\n"
            f"    certificate: {commitment_pki / 'test-server.pem'}\n    key: {commitment_pki / 'test-server.key'}\n"
            f"    ca_bundle: {commitment_pki / 'test-ca.pem'}\n"
            f"remote_aes:\n  - ae_title: MODALITY\n    host: 127.0.0.1\n    port: {port}\n    tls: true\n")
        server = start_server("--config", str(config))
        paths = [tmp_path / "i0.dcm"]
        sent = [make_image(p, n, study=6) for n, p in enumerate(paths)]
        store(server.port, paths)
        ref = (CTImageStorage, str(sent[0].SOPInstanceUID))
        assert n_action_then_release(server.port, "1.2.3.4.106", [ref], "MODALITY") == 0
        if certificate == "test-server":
            report, over_tls = reports.get(timeout=TIMEOUT)
            assert over_tls
            assert report.event_type == 1
            assert report.committed == [ref]
            said = f"storage commitment 1.2.3.4.106: reported (event type 1) to MODALITY at 127.0.0.1:{port} (TLS)"
            assert said in server.log_once_it_says(said)
        else:
            said = f"storage commitment 1.2.3.4.106: cannot open an association to MODALITY at 127.0.0.1:{port} (TLS)"
            assert said in server.log_once_it_says(said)
            assert reports.empty()
    finally:
        listener.shutdown()


def test_report_left_unanswered_goes_on_a_new_association(start_server: Any, requester: Any,
                                                           tmp_path: Path) -> None:
    """The requester keeps its association open but never answers the
    report sent there: after the idle timeout the report goes on a new
    association, and the idle timeout applies to the silent association
    again (it is aborted)."""
    from rawclient import EXPLICIT_LE, connect_and_associate, read_pdu

    port, reports = requester
    server = start_server("--config", str(config_with_requester(tmp_path, port)), "--idle-timeout", "2")
    paths = [tmp_path / "i0.dcm"]
    sent = [make_image(p, n, study=8) for n, p in enumerate(paths)]
    store(server.port, paths)
    ref = (CTImageStorage, str(sent[0].SOPInstanceUID))
    sock = connect_and_associate(server.port, contexts=[(1, StorageCommitmentPushModel, [EXPLICIT_LE])],
                                 calling="MODALITY")
    sock.settimeout(30)
    try:
        sock.sendall(n_action_pdus(1, "1.2.3.4.107", [ref]))
        commands = read_commands(sock, lambda cs: any(c.CommandField == 0x0100 for c in cs))
        assert [int(c.CommandField) for c in commands] == [0x8130, 0x0100]  # N-ACTION-RSP, N-EVENT-REPORT-RQ
        report = reports.get(timeout=TIMEOUT)  # never answered above: it comes on a new association
        assert not report.same_association
        assert report.event_type == 1
        assert report.committed == [ref]
        kind = 4
        while kind == 4:  # the rest of the report's data set, then the idle timeout's A-ABORT
            kind, _ = read_pdu(sock)
        assert kind == 7
    finally:
        sock.close()
    said = "storage commitment 1.2.3.4.107: no answer to the report in 2 s"
    assert said in server.log_once_it_says(said)

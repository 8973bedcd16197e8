"""C-MOVE and C-GET SCP (services/retrieve.py) with real clients: dcmtk
movescu (into a real dcmtk storescp) and getscu, pynetdicom as SCU and as
move destination, including C-CANCEL mid-way and an unknown destination.

The archive is a storage tree filled before the server starts. The start's
reconcile indexes it in the background, after the port opens, so a test
waits for its ``reconciled with`` line (``Server.indexed``) before it asks:
until then the index does not hold the files. One test stores through
C-STORE first and restarts.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
import pytest
from conftest import Server, dataset_bytes, dcmtk, free_port, make_image, wait_for_port
from pydicom.dataset import Dataset
from pynetdicom import AE, build_role, evt
from pynetdicom.association import Association
from pynetdicom.pdu_primitives import SCP_SCU_RoleSelectionNegotiation
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    CTImageStorage,
    MRImageStorage,
    PatientRootQueryRetrieveInformationModelGet,
    PatientRootQueryRetrieveInformationModelMove,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
)
from pynetdicom.status import code_to_category
from test_catalog_network import held_duckdb

pytestmark = pytest.mark.interop

EXPLICIT_LE = "1.2.840.10008.1.2.1"
IMPLICIT_LE = "1.2.840.10008.1.2"


@dataclass
class Archive:
    files: list[Path]  # the images, as made (the server's tree holds copies)
    by_uid: dict[str, Dataset] = field(default_factory=dict)

    def study_uids(self) -> list[str]:
        return sorted({str(ds.StudyInstanceUID) for ds in self.by_uid.values()})

    def of_study(self, uid: str) -> set[str]:
        return {k for k, ds in self.by_uid.items() if ds.StudyInstanceUID == uid}


def fill(tree: Path, count: int = 12, studies: int = 2) -> Archive:
    """``count`` CT/MR images over ``studies`` studies, put in ``tree``."""
    tree.mkdir(parents=True, exist_ok=True)
    archive = Archive([])
    for i in range(count):
        path = tree / f"img{i:04d}.dcm"
        ds = make_image(path, i, study=i % studies, modality="CT" if i % 3 else "MR", size=16)
        archive.files.append(path)
        archive.by_uid[str(ds.SOPInstanceUID)] = ds
    return archive


def config(tmp_path: Path, destinations: dict[str, int], pending_interval: float | None = None) -> str:
    """A config file naming ``destinations``; ``pending_interval``:
    query_retrieve.pending_interval (None: the default)."""
    lines = ["remote_aes:"] if destinations else ["remote_aes: []"]
    for ae_title, port in destinations.items():
        lines += [f"  - ae_title: {ae_title}", "    host: 127.0.0.1", f"    port: {port}"]
    if pending_interval is not None:
        lines += ["query_retrieve:", f"  pending_interval: {pending_interval}"]
    path = tmp_path / "fastscp.yaml"
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def stored_by_uid(srv: Server) -> dict[str, Path]:
    return {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID): p for p in srv.stored_files()}


# ---- destinations ------------------------------------------------------------------------------


@pytest.fixture
def storescp(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """dcmtk storescp, bit-preserving, as the move destination DEST."""
    out = tmp_path / "dest"
    out.mkdir()
    port = free_port()
    proc = subprocess.Popen([dcmtk("storescp"), "--bit-preserving", "-aet", "DEST", "-od", str(out), str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for_port(port, proc)
    yield port, out
    proc.terminate()
    proc.wait()


class Destination:
    """A pynetdicom Storage SCP: what it received, byte for byte, and the
    Move Originator fields of each C-STORE-RQ. ``hold_at``: the sub-operation
    (1-based) whose answer waits for ``release``."""

    def __init__(self, sop_classes: tuple[str, ...] = (CTImageStorage, MRImageStorage),
                 transfer_syntaxes: tuple[str, ...] = (EXPLICIT_LE, IMPLICIT_LE), hold_at: int = 0) -> None:
        self.received: dict[str, bytes] = {}
        self.originators: list[tuple[str, int]] = []
        self.hold_at = hold_at
        self.reached = threading.Event()
        self.release = threading.Event()
        self.ae = AE(ae_title="DEST")
        for sop_class in sop_classes:
            self.ae.add_supported_context(sop_class, list(transfer_syntaxes))
        self.port = free_port()
        self.server = self.ae.start_server(("127.0.0.1", self.port), block=False,
                                           evt_handlers=[(evt.EVT_C_STORE, self._store)])

    def _store(self, event: evt.Event) -> int:
        rq = event.request
        self.originators.append((str(rq.MoveOriginatorApplicationEntityTitle or ""),
                                 int(rq.MoveOriginatorMessageID or 0)))
        self.received[str(rq.AffectedSOPInstanceUID)] = bytes(rq.DataSet.getvalue())
        if len(self.received) == self.hold_at:
            self.reached.set()
            assert self.release.wait(30)
        return 0x0000

    def stop(self) -> None:
        self.release.set()
        self.server.shutdown()


@pytest.fixture
def destinations() -> Iterator[list[Destination]]:
    made: list[Destination] = []
    yield made
    for d in made:
        d.stop()


# ---- SCU helpers -------------------------------------------------------------------------------


def identifier(level: str, **keys: str) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = level
    for keyword, value in keys.items():
        setattr(ds, keyword, value)
    return ds


def move(srv: Server, destination: str, query: Dataset,
         model: str = StudyRootQueryRetrieveInformationModelMove) -> list[tuple[int, Dataset, Dataset | None]]:
    """pynetdicom C-MOVE: every response as (status, status dataset, identifier)."""
    ae = AE(ae_title="MOVER")
    ae.add_requested_context(model)
    assoc = ae.associate("127.0.0.1", srv.port, ae_title=srv.ae_title)
    assert assoc.is_established
    try:
        return [(int(status.Status), status, ident) for status, ident in assoc.send_c_move(query, destination, model)]
    finally:
        assoc.release()


def counts(status: Dataset) -> tuple[int | None, int, int, int]:
    remaining = status.get("NumberOfRemainingSuboperations")
    return (None if remaining is None else int(remaining), int(status.NumberOfCompletedSuboperations),
            int(status.NumberOfFailedSuboperations), int(status.NumberOfWarningSuboperations))


def status_codes(responses: Iterable[tuple[Dataset, Dataset | None]]) -> list[int | None]:
    """The Status of each C-GET/C-MOVE response pynetdicom yields; None for
    the empty data set it yields when the association ended (aborted,
    connection closed, DIMSE timeout) before a final response."""
    return [int(status.Status) if "Status" in status else None for status, _ in responses]


def abort_and_wake(assoc: Association) -> None:
    """``assoc.abort()`` while another thread iterates its send_c_get or
    send_c_move, and wake that thread. pynetdicom's state machine queues a
    ``(None, None)`` for the waiting iterator when the peer aborts or the
    connection drops, but not on our own abort: the iterator would sit out
    its DIMSE timeout, and its thread outlive the test. Queued once the
    association's reactor thread, the other reader of that queue, has ended."""
    assoc.abort()
    assoc.join(30)
    assert not assoc.is_alive()
    assoc.dimse.msg_queue.put((None, None))


def failed_list(ident: Dataset | None) -> set[str]:
    if ident is None or "FailedSOPInstanceUIDList" not in ident:
        return set()
    value = ident.FailedSOPInstanceUIDList
    return {str(v) for v in (value if isinstance(value, pydicom.multival.MultiValue) else [value]) if v}


# ---- C-MOVE ------------------------------------------------------------------------------------


def test_movescu_study_into_storescp_byte_identical(start_server, storescp, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    port, out = storescp
    archive = fill(tmp_path / "store0")
    srv = start_server("--config", config(tmp_path, {"DEST": port})).indexed()
    study = archive.study_uids()[0]
    result = subprocess.run([dcmtk("movescu"), "-v", "-S", "-aet", "MOVER", "-aec", srv.ae_title, "-aem", "DEST",
                             "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study}",
                             "127.0.0.1", str(srv.port)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Received Final Move Response (Success)" in result.stdout + result.stderr
    received = {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID): p for p in out.iterdir()}
    assert set(received) == archive.of_study(study)
    stored = stored_by_uid(srv)
    for uid, path in received.items():
        assert dataset_bytes(path) == dataset_bytes(stored[uid]), f"{uid}: the data set sent differs from the file"


def test_move_series_and_image_levels_patient_root(start_server, destinations, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    dest = Destination()
    destinations.append(dest)
    archive = fill(tmp_path / "store0")
    srv = start_server("--config", config(tmp_path, {"DEST": dest.port}, pending_interval=0)).indexed()
    ds = next(iter(archive.by_uid.values()))
    series = {k for k, d in archive.by_uid.items() if d.SeriesInstanceUID == ds.SeriesInstanceUID}
    query = identifier("SERIES", PatientID=str(ds.PatientID), StudyInstanceUID=str(ds.StudyInstanceUID),
                       SeriesInstanceUID=str(ds.SeriesInstanceUID))
    responses = move(srv, "DEST", query, PatientRootQueryRetrieveInformationModelMove)
    assert responses[-1][0] == 0x0000 and counts(responses[-1][1]) == (None, len(series), 0, 0)
    assert set(dest.received) == series
    # pending_interval 0: Pending after every sub-operation but the last, Remaining counting down
    assert [counts(r[1]) for r in responses[:-1]] == [(len(series) - n, n, 0, 0) for n in range(1, len(series))]
    # Move Originator AE Title and Message ID on every sub-operation (PS3.7 9.3.1.1)
    assert set(dest.originators) == {("MOVER", 1)}
    stored = stored_by_uid(srv)
    assert all(dest.received[uid] == dataset_bytes(stored[uid]) for uid in series)
    # IMAGE level, a list of two UIDs (list of UID matching); PATIENT level by Patient ID
    two = sorted(archive.by_uid)[:2]
    dest.received.clear()
    responses = move(srv, "DEST", identifier("IMAGE", SOPInstanceUID="\\".join(two)))
    assert responses[-1][0] == 0x0000 and set(dest.received) == set(two)
    dest.received.clear()
    patient = {k for k, d in archive.by_uid.items() if d.PatientID == ds.PatientID}
    responses = move(srv, "DEST", identifier("PATIENT", PatientID=str(ds.PatientID)),
                     PatientRootQueryRetrieveInformationModelMove)
    assert responses[-1][0] == 0x0000 and set(dest.received) == patient


def test_unknown_destination_is_0xA801_with_one_log_line(start_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    archive = fill(tmp_path / "store0", count=3)
    srv = start_server("--config", config(tmp_path, {"DEST": free_port()})).indexed()
    responses = move(srv, "NOWHERE", identifier("STUDY", StudyInstanceUID=archive.study_uids()[0]))
    assert [r[0] for r in responses] == [0xA801]
    log = srv.log_once_it_says("'NOWHERE' is not in remote_aes")
    assert log.count("'NOWHERE' is not in remote_aes") == 1


def test_refused_sop_class_fails_its_sub_operations_with_a_warning(start_server, destinations, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    dest = Destination(sop_classes=(CTImageStorage,))  # MR refused by the destination
    destinations.append(dest)
    archive = fill(tmp_path / "store0")
    srv = start_server("--config", config(tmp_path, {"DEST": dest.port})).indexed()
    study = archive.study_uids()[0]
    uids = archive.of_study(study)
    mr = {u for u in uids if archive.by_uid[u].Modality == "MR"}
    assert mr and mr != uids
    responses = move(srv, "DEST", identifier("STUDY", StudyInstanceUID=study))
    status, final, ident = responses[-1]
    assert status == 0xB000
    assert counts(final) == (None, len(uids) - len(mr), len(mr), 0)
    assert failed_list(ident) == mr
    assert set(dest.received) == uids - mr
    # nothing it accepts: every sub-operation fails, 0xA702, all listed
    only_mr = Destination(sop_classes=(MRImageStorage,), transfer_syntaxes=("1.2.840.10008.1.2.2",))
    destinations.append(only_mr)
    srv.stop()
    srv2 = Server(srv.storage, tmp_path / "server-b.log", ["--config", config(tmp_path, {"DEST": only_mr.port})])
    try:
        responses = move(srv2, "DEST", identifier("STUDY", StudyInstanceUID=study))
        status, final, ident = responses[-1]
        assert status == 0xA702
        assert counts(final) == (None, 0, len(uids), 0)
        assert failed_list(ident) == uids
    finally:
        srv2.stop()


def test_unreachable_destination_fails_every_sub_operation(start_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    archive = fill(tmp_path / "store0", count=4)
    srv = start_server("--config", config(tmp_path, {"DEST": free_port()})).indexed()  # nobody listens there
    study = archive.study_uids()[0]
    responses = move(srv, "DEST", identifier("STUDY", StudyInstanceUID=study))
    status, _, ident = responses[-1]
    assert status == 0xA702 and failed_list(ident) == archive.of_study(study)
    assert "could not associate with DEST" in srv.log_once_it_says("could not associate with DEST")


def test_move_cancel_mid_way(start_server, destinations, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    dest = Destination(hold_at=2)
    destinations.append(dest)
    archive = fill(tmp_path / "store0", count=10, studies=1)
    srv = start_server("--config", config(tmp_path, {"DEST": dest.port})).indexed()
    ae = AE(ae_title="MOVER")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelMove)
    assoc = ae.associate("127.0.0.1", srv.port, ae_title=srv.ae_title)
    assert assoc.is_established
    responses: list[tuple[int, Dataset, Dataset | None]] = []

    def run() -> None:
        for status, ident in assoc.send_c_move(identifier("STUDY", StudyInstanceUID=archive.study_uids()[0]), "DEST",
                                               StudyRootQueryRetrieveInformationModelMove, msg_id=7):
            responses.append((int(status.Status), status, ident))

    thread = threading.Thread(target=run)
    thread.start()
    assert dest.reached.wait(30)  # the second sub-operation is being answered
    context_id = assoc.accepted_contexts[0].context_id
    assoc.send_c_cancel(7, context_id)
    srv.log_once_it_says("C-CANCEL")
    dest.release.set()
    thread.join(60)
    assoc.release()
    status, final, ident = responses[-1]
    assert status == 0xFE00
    assert counts(final) == (8, 2, 0, 0)  # Remaining: the sub-operations not started
    assert failed_list(ident) == set()
    assert len(dest.received) == 2


def test_stored_by_cstore_then_moved(start_server, destinations, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """The whole path: storescu stores, the index takes the rows, C-MOVE sends the files."""
    dest = Destination()
    destinations.append(dest)
    source = fill(tmp_path / "source", count=6, studies=1)
    srv = start_server("--config", config(tmp_path, {"DEST": dest.port})).indexed()
    out = subprocess.run([dcmtk("storescu"), "-aec", srv.ae_title, "127.0.0.1", str(srv.port), *map(str, source.files)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert srv.stop() == 0  # a clean stop writes every row
    srv2 = Server(srv.storage, tmp_path / "server-b.log", ["--config", config(tmp_path, {"DEST": dest.port})])
    try:
        responses = move(srv2, "DEST", identifier("STUDY", StudyInstanceUID=source.study_uids()[0]))
        assert responses[-1][0] == 0x0000
        assert set(dest.received) == set(source.by_uid)
        stored = stored_by_uid(srv2)
        assert all(dest.received[u] == dataset_bytes(stored[u]) for u in stored)
    finally:
        srv2.stop()


def test_missing_file_and_bad_identifiers(start_server, destinations, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    dest = Destination()
    destinations.append(dest)
    archive = fill(tmp_path / "store0", count=6, studies=1)
    srv = start_server("--config", config(tmp_path, {"DEST": dest.port})).indexed()
    study = archive.study_uids()[0]
    # no unique key at the level, a key below the level, an unknown level: 0xA900
    assert [r[0] for r in move(srv, "DEST", identifier("STUDY", PatientID="P000"))] == [0xA900]
    assert [r[0] for r in move(srv, "DEST", identifier("STUDY", StudyInstanceUID=study,
                                                       SOPInstanceUID="1.2.3"))] == [0xA900]
    assert [r[0] for r in move(srv, "DEST", identifier("FRAME", StudyInstanceUID=study))] == [0xA900]
    # nothing matches: Success with no sub-operation
    responses = move(srv, "DEST", identifier("STUDY", StudyInstanceUID="1.2.3.4"))
    assert [r[0] for r in responses] == [0x0000] and counts(responses[0][1]) == (None, 0, 0, 0)
    # a file removed behind the index's back: that sub-operation fails, the rest go
    victim = sorted(stored_by_uid(srv).items())[0]
    victim[1].unlink()
    responses = move(srv, "DEST", identifier("STUDY", StudyInstanceUID=study))
    status, _, ident = responses[-1]
    assert status == 0xB000 and failed_list(ident) == {victim[0]}
    assert set(dest.received) == archive.of_study(study) - {victim[0]}


def test_move_missing_files_fail_in_their_turn(  # type: ignore[no-untyped-def]
        start_server, destinations, tmp_path: Path) -> None:
    """A file missing when its turn comes fails its own sub-operation,
    counted after the response to the one before and not earlier (the
    Pending response after each sub-operation, pending interval 0, shows
    the counts in order), as a sender that prepares the next sub-operation
    ahead must keep it; the others go byte for byte."""
    dest = Destination()
    destinations.append(dest)
    archive = fill(tmp_path / "store0", count=7, studies=1)
    study = archive.study_uids()[0]
    srv = start_server("--config", config(tmp_path, {"DEST": dest.port}, pending_interval=0)).indexed()
    stored = stored_by_uid(srv)
    # sent in InstanceNumber order (fill's index): the second and the fifth are removed
    order = sorted(archive.by_uid, key=lambda u: int(archive.by_uid[u].InstanceNumber))
    gone = {order[1], order[4]}
    for uid in gone:
        stored[uid].unlink()
    responses = move(srv, "DEST", identifier("STUDY", StudyInstanceUID=study))
    n = len(order)
    expected: list[tuple[int | None, int, int, int]] = []
    completed = failed = 0
    for k, uid in enumerate(order[:-1], start=1):
        failed += uid in gone
        completed += uid not in gone
        expected.append((n - k, completed, failed, 0))
    assert [counts(r[1]) for r in responses[:-1]] == expected
    status, final, ident = responses[-1]
    assert status == 0xB000 and counts(final) == (None, n - 2, 2, 0)
    assert failed_list(ident) == gone
    assert set(dest.received) == set(order) - gone
    assert all(dest.received[u] == dataset_bytes(stored[u]) for u in dest.received)
    log = srv.log_once_it_says("2 of 7 sub-operations failed")
    assert "2 of 7 sub-operations failed: 1 x cannot read" in log


def test_move_file_removed_while_the_one_before_is_stored(  # type: ignore[no-untyped-def]
        start_server, destinations, tmp_path: Path) -> None:
    """A file removed while the destination holds the sub-operation before
    it (after the sender read it, if it prepares ahead): what is reported
    agrees with what went, either sent whole and completed, or failed and
    listed in Failed SOP Instance UID List; the sub-operations after it go."""
    dest = Destination(hold_at=2)
    destinations.append(dest)
    archive = fill(tmp_path / "store0", count=5, studies=1)
    study = archive.study_uids()[0]
    srv = start_server("--config", config(tmp_path, {"DEST": dest.port})).indexed()
    stored = stored_by_uid(srv)
    order = sorted(archive.by_uid, key=lambda u: int(archive.by_uid[u].InstanceNumber))
    victim = order[2]
    original = dataset_bytes(stored[victim])
    moved: list[tuple[int, Dataset, Dataset | None]] = []
    mover = threading.Thread(target=lambda: moved.extend(move(srv, "DEST", identifier("STUDY",
                                                                                        StudyInstanceUID=study))))
    mover.start()
    assert dest.reached.wait(30)
    stored[victim].unlink()
    dest.release.set()
    mover.join(60)
    status, final, ident = moved[-1]
    if victim in dest.received:
        assert dest.received[victim] == original
        assert status == 0x0000 and counts(final) == (None, 5, 0, 0) and failed_list(ident) == set()
    else:
        assert status == 0xB000 and counts(final) == (None, 4, 1, 0) and failed_list(ident) == {victim}
    assert set(dest.received) >= set(order) - {victim}


# ---- C-GET -------------------------------------------------------------------------------------


def test_getscu_study_byte_identical(start_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    archive = fill(tmp_path / "store0")
    srv = start_server().indexed()
    out = tmp_path / "got"
    out.mkdir()
    study = archive.study_uids()[1]
    result = subprocess.run([dcmtk("getscu"), "-v", "-S", "-aet", "GETTER", "-aec", srv.ae_title, "-od", str(out),
                             "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study}",
                             "127.0.0.1", str(srv.port)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    received = {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID): p for p in out.iterdir()}
    assert set(received) == archive.of_study(study)
    stored = stored_by_uid(srv)
    for uid, path in received.items():
        assert dataset_bytes(path) == dataset_bytes(stored[uid])


class Getter:
    """pynetdicom C-GET SCU taking the SCP role for CT and MR (PS3.7 D.3.3.4)."""

    def __init__(self, srv: Server, hold_at: int = 0, roles: bool = True, ct_syntax: str = EXPLICIT_LE) -> None:
        self.received: dict[str, bytes] = {}
        self.hold_at = hold_at
        self.reached = threading.Event()
        self.release = threading.Event()
        ae = AE(ae_title="GETTER")
        ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
        ae.add_requested_context(PatientRootQueryRetrieveInformationModelGet)
        ae.add_requested_context(CTImageStorage, [ct_syntax])
        ae.add_requested_context(MRImageStorage, [EXPLICIT_LE])
        ext = [build_role(c, scp_role=True) for c in (CTImageStorage, MRImageStorage)] if roles else []
        self.assoc = ae.associate("127.0.0.1", srv.port, ae_title=srv.ae_title, ext_neg=ext,
                                  evt_handlers=[(evt.EVT_C_STORE, self._store)])
        assert self.assoc.is_established

    def _store(self, event: evt.Event) -> int:
        self.received[str(event.request.AffectedSOPInstanceUID)] = bytes(event.request.DataSet.getvalue())
        if len(self.received) == self.hold_at:
            self.reached.set()
            assert self.release.wait(30)
        return 0x0000

    def get(self, query: Dataset, msg_id: int = 1) -> list[tuple[int, Dataset, Dataset | None]]:
        return [(int(s.Status), s, i) for s, i in self.assoc.send_c_get(
            query, StudyRootQueryRetrieveInformationModelGet, msg_id=msg_id)]

    def statuses(self, query: Dataset) -> list[int | None]:
        """A C-GET of ``query``: each response's Status (status_codes), for a
        C-GET whose association ends before its final response."""
        return status_codes(self.assoc.send_c_get(query, StudyRootQueryRetrieveInformationModelGet))


def test_pynetdicom_get_byte_identical_and_roles(start_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    archive = fill(tmp_path / "store0")
    srv = start_server("--config", config(tmp_path, {}, pending_interval=0)).indexed()
    getter = Getter(srv)
    try:
        # the SCP role was granted for the storage classes
        roles = {str(r.sop_class_uid): (r.scu_role, r.scp_role) for r in getter.assoc.acceptor.user_information
                 if isinstance(r, SCP_SCU_RoleSelectionNegotiation)}
        assert roles == {CTImageStorage: (False, True), MRImageStorage: (False, True)}
        study = archive.study_uids()[0]
        responses = getter.get(identifier("STUDY", StudyInstanceUID=study))
        n = len(archive.of_study(study))
        assert responses[-1][0] == 0x0000 and counts(responses[-1][1]) == (None, n, 0, 0)
        # pending_interval 0: Pending after every sub-operation but the last
        assert [counts(r[1]) for r in responses[:-1]] == [(n - k, k, 0, 0) for k in range(1, n)]
        assert set(getter.received) == archive.of_study(study)
        stored = stored_by_uid(srv)
        assert all(getter.received[u] == dataset_bytes(stored[u]) for u in getter.received)
    finally:
        getter.assoc.release()


def test_get_without_scp_role_fails_with_the_list(start_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    archive = fill(tmp_path / "store0", count=4, studies=1)
    srv = start_server().indexed()
    getter = Getter(srv, roles=False)  # storage contexts proposed, but no SCP role taken
    try:
        responses = getter.get(identifier("STUDY", StudyInstanceUID=archive.study_uids()[0]))
        status, _, ident = responses[-1]
        assert status == 0xA702 and failed_list(ident) == set(archive.by_uid)
        assert not getter.received
    finally:
        getter.assoc.release()


def test_get_stored_syntax_not_negotiated_fails_with_a_warning(start_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    archive = fill(tmp_path / "store0", count=9, studies=1)  # stored explicit VR LE
    srv = start_server().indexed()
    getter = Getter(srv, ct_syntax=IMPLICIT_LE)  # CT only in implicit VR: no transcoding, those fail
    try:
        responses = getter.get(identifier("STUDY", StudyInstanceUID=archive.study_uids()[0]))
        status, final, ident = responses[-1]
        ct = {u for u, d in archive.by_uid.items() if d.Modality == "CT"}
        assert status == 0xB000 and counts(final) == (None, 9 - len(ct), len(ct), 0)
        assert failed_list(ident) == ct
        assert set(getter.received) == set(archive.by_uid) - ct
        log = srv.log_once_it_says("sub-operations failed")
        assert f"{len(ct)} x no accepted context with the SCP role for 1.2.840.10008.5.1.4.1.1.2" in log
    finally:
        getter.assoc.release()


def test_get_cancel_mid_way(start_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    archive = fill(tmp_path / "store0", count=9, studies=1)
    srv = start_server().indexed()
    getter = Getter(srv, hold_at=3)
    responses: list[tuple[int, Dataset, Dataset | None]] = []
    thread = threading.Thread(target=lambda: responses.extend(
        getter.get(identifier("STUDY", StudyInstanceUID=archive.study_uids()[0]), msg_id=5)))
    thread.start()
    try:
        assert getter.reached.wait(30)
        context_id = next(c.context_id for c in getter.assoc.accepted_contexts
                          if c.abstract_syntax == StudyRootQueryRetrieveInformationModelGet)
        getter.assoc.send_c_cancel(5, context_id)
        srv.log_once_it_says("C-CANCEL")
        getter.release.set()
        thread.join(60)
        status, final, _ = responses[-1]
        assert status == 0xFE00, [hex(r[0]) for r in responses]
        assert counts(final) == (6, 3, 0, 0)
        assert len(getter.received) == 3
        # the association still serves: a second C-GET of one image
        one = sorted(archive.by_uid)[0]
        getter.hold_at = 0
        again = getter.get(identifier("IMAGE", StudyInstanceUID=archive.study_uids()[0],
                                      SeriesInstanceUID=str(archive.by_uid[one].SeriesInstanceUID),
                                      SOPInstanceUID=one), msg_id=6)
        assert again[-1][0] == 0x0000 and code_to_category(again[-1][0]) == "Success"
    finally:
        getter.release.set()
        getter.assoc.release()


def _accepted_with_get_roles(srv: Server) -> tuple[set[str], set[str]]:
    """(accepted abstract syntaxes, SOP classes whose SCP role was granted)
    for a request proposing MOVE, GET and CT with the SCP role for CT."""
    ae = AE(ae_title="MOVER")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelMove)
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
    ae.add_requested_context(CTImageStorage)
    assoc = ae.associate("127.0.0.1", srv.port, ae_title=srv.ae_title,
                         ext_neg=[build_role(CTImageStorage, scu_role=True, scp_role=True)])
    try:
        assert assoc.is_established
        roles = {str(r.sop_class_uid) for r in assoc.acceptor.user_information
                 if isinstance(r, SCP_SCU_RoleSelectionNegotiation) and r.scp_role}
        return {str(c.abstract_syntax) for c in assoc.accepted_contexts}, roles
    finally:
        assoc.release()


def test_retrieve_not_negotiated_without_an_index(start_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    srv = start_server("--index-db", "")
    assert _accepted_with_get_roles(srv) == ({CTImageStorage}, set())


def test_retrieve_not_negotiated_when_the_index_cannot_open(start_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """An index configured but held by another process: the server receives
    without it, and refuses MOVE/GET at negotiation rather than accept and fail."""
    db = tmp_path / "locked.db"
    with held_duckdb(db):
        srv = start_server("--index-db", str(db))
        assert "receiving WITHOUT indexing" in srv.log_text()
        assert _accepted_with_get_roles(srv) == ({CTImageStorage}, set())
        assert srv.stop() == 0
    # with the index: all three accepted, and the SCP role granted for CT
    again = start_server("--storage-dir", str(srv.storage), "--index-db", str(db))
    assert _accepted_with_get_roles(again) == (
        {CTImageStorage, StudyRootQueryRetrieveInformationModelMove, StudyRootQueryRetrieveInformationModelGet},
        {CTImageStorage})


# ---- Orthanc as the C-MOVE SCU -----------------------------------------------------------------


def _orthanc_exe() -> str:
    for path in (shutil.which("Orthanc"), "/usr/sbin/Orthanc"):
        if path and Path(path).exists():
            return path
    pytest.fail("Orthanc is not installed (Debian package orthanc; .ci/run installs it)")


def _http(port: int, path: str, body: object | None = None) -> object:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data,
                                     method="GET" if body is None else "POST")
    with urllib.request.urlopen(request, timeout=120) as answer:
        return json.loads(answer.read() or b"null")


def test_orthanc_moves_a_study_to_itself(start_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Orthanc's /modalities/{id}/move: Orthanc asks fastscp to C-MOVE a study to Orthanc."""
    archive = fill(tmp_path / "store0", count=8)
    dicom_port, http_port = free_port(), free_port()
    srv = start_server("--config", config(tmp_path, {"ORTHANC": dicom_port})).indexed()
    work = tmp_path / "orthanc"
    (work / "index").mkdir(parents=True)
    (work / "orthanc.json").write_text(json.dumps({
        "Name": "retrieve-test", "StorageDirectory": str(work / "storage"), "IndexDirectory": str(work / "index"),
        "DicomAet": "ORTHANC", "DicomPort": dicom_port, "HttpPort": http_port, "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False, "DicomAlwaysAllowStore": True, "DicomCheckCalledAet": False,
        "Plugins": [], "SaveJobs": False,
        "DicomModalities": {"fastscp": [srv.ae_title, "127.0.0.1", srv.port]},
    }))
    orthanc = subprocess.Popen([_orthanc_exe(), str(work / "orthanc.json")], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    try:
        wait_for_port(http_port, orthanc, timeout=60)
        study = archive.study_uids()[0]
        _http(http_port, "/modalities/fastscp/move",
              {"Level": "Study", "Resources": [{"StudyInstanceUID": study}], "TargetAet": "ORTHANC"})
        instances = _http(http_port, "/instances?expand")
        assert isinstance(instances, list)
        got = {str(i["MainDicomTags"]["SOPInstanceUID"]) for i in instances}
        assert got == archive.of_study(study)
    finally:
        orthanc.terminate()
        orthanc.wait(60)


# ---- the requestor vanishes mid-way ------------------------------------------------------------


def _echo_ok(srv: Server) -> bool:
    return subprocess.run([dcmtk("echoscu"), "-aec", srv.ae_title, "127.0.0.1", str(srv.port)],
                          capture_output=True, timeout=60).returncode == 0


def test_get_requestor_aborts_mid_way(start_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    archive = fill(tmp_path / "store0", count=8, studies=1)
    srv = start_server().indexed()
    getter = Getter(srv, hold_at=2)
    # no DIMSE timeout: the C-GET's thread ends when its association does, and
    # not 30 s after the test, wherever the run is then (daemon: should it not
    # end, the assertion below says so and the process can still exit)
    getter.assoc.dimse_timeout = None
    seen: list[int | None] = []
    thread = threading.Thread(target=lambda: seen.extend(getter.statuses(
        identifier("STUDY", StudyInstanceUID=archive.study_uids()[0]))), daemon=True)
    thread.start()
    assert getter.reached.wait(30)
    abort_and_wake(getter.assoc)
    getter.release.set()
    thread.join(30)
    assert not thread.is_alive()
    assert seen[-1:] == [None] and set(seen[:-1]) <= {0xFF00}  # no final response: the association ended first
    log = srv.log_once_it_says("ended during the retrieve")
    assert "C-GET: association" in log and "2 of 8 sub-operations done" in log
    assert _echo_ok(srv)  # still serving
    assert "Traceback" not in srv.log_text()


def test_move_requestor_aborts_mid_way(start_server, destinations, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    dest = Destination(hold_at=2)
    destinations.append(dest)
    archive = fill(tmp_path / "store0", count=8, studies=1)
    srv = start_server("--config", config(tmp_path, {"DEST": dest.port})).indexed()
    ae = AE(ae_title="MOVER")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelMove)
    assoc = ae.associate("127.0.0.1", srv.port, ae_title=srv.ae_title)
    assert assoc.is_established
    assoc.dimse_timeout = None  # (as above)
    seen: list[int | None] = []
    thread = threading.Thread(target=lambda: seen.extend(status_codes(assoc.send_c_move(
        identifier("STUDY", StudyInstanceUID=archive.study_uids()[0]), "DEST",
        StudyRootQueryRetrieveInformationModelMove))), daemon=True)
    thread.start()
    assert dest.reached.wait(30)
    abort_and_wake(assoc)
    thread.join(30)
    assert not thread.is_alive()
    assert seen[-1:] == [None] and set(seen[:-1]) <= {0xFF00}
    assert "aborted_by_peer" in srv.log_once_it_says("aborted_by_peer")  # the server saw the abort ...
    dest.release.set()  # ... before the sub-operation under way ends
    log = srv.log_once_it_says("ended during the retrieve")
    assert "2 of 8 sub-operations done" in log
    assert len(dest.received) == 2  # nothing sent after the requestor went away
    assert _echo_ok(srv)
    assert "Traceback" not in srv.log_text()


# ---- C-MOVE to a DICOM TLS destination ---------------------------------------------------------


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=cwd)


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
def test_move_to_a_tls_destination(start_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """remote_aes tls: true: the sub-operations go over DICOM TLS to dcmtk
    storescp +tls, our side presenting server.tls's certificate and trusting
    its CA bundle (dcmtk verifies the client certificate by default)."""
    pki = tmp_path / "pki"
    pki.mkdir()
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
             "-subj", "/CN=retrieve test CA", cwd=pki)
    for who in ("srv", "dest"):
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{who}.key", "-out", f"{who}.csr",
                 "-subj", f"/CN={who}", cwd=pki)
        _openssl("x509", "-req", "-in", f"{who}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
                 "-out", f"{who}.pem", "-days", "2", cwd=pki)
    out = tmp_path / "dest"
    out.mkdir()
    dest_port, tls_port = free_port(), free_port()
    dest = subprocess.Popen([dcmtk("storescp"), "+tls", str(pki / "dest.key"), str(pki / "dest.pem"),
                             "+cf", str(pki / "ca.pem"), "--bit-preserving", "-aet", "DEST", "-od", str(out),
                             str(dest_port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port(dest_port, dest)
        archive = fill(tmp_path / "store0", count=4, studies=1)
        cfg = tmp_path / "tls.yaml"
        cfg.write_text(f"""\
server:
  tls:
    enabled: true
    port: {tls_port}
    certificate: {pki / 'srv.pem'}
    key: {pki / 'srv.key'}
    ca_bundle: {pki / 'ca.pem'}
remote_aes:
  - ae_title: DEST
    host: 127.0.0.1
    port: {dest_port}
    tls: true
""")
        srv = start_server("--config", str(cfg)).indexed()
        responses = move(srv, "DEST", identifier("STUDY", StudyInstanceUID=archive.study_uids()[0]))
        assert responses[-1][0] == 0x0000, srv.log_text()[-2000:]
        received = {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID): p for p in out.iterdir()}
        assert set(received) == set(archive.by_uid)
        stored = stored_by_uid(srv)
        assert all(dataset_bytes(received[u]) == dataset_bytes(stored[u]) for u in received)
    finally:
        dest.terminate()
        dest.wait()


def test_get_requestor_that_never_answers_is_aborted(start_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """A C-GET requestor that takes a C-STORE-RQ and never answers: after
    server.dimse_timeout the association is aborted, the server serves on."""
    archive = fill(tmp_path / "store0", count=4, studies=1)
    srv = start_server("--dimse-timeout", "1.5").indexed()
    getter = Getter(srv, hold_at=1)
    seen: list[int | None] = []
    thread = threading.Thread(target=lambda: seen.extend(getter.statuses(
        identifier("STUDY", StudyInstanceUID=archive.study_uids()[0]))), daemon=True)
    thread.start()
    try:
        assert getter.reached.wait(30)
        said = "no C-STORE response in 1.5 s: aborting the association"
        log = srv.log_once_it_says(said, "ended during the retrieve")
        assert said in log
        assert "1 of 4 sub-operations done" in log
        assert _echo_ok(srv)
    finally:
        getter.release.set()
    thread.join(30)  # the server's A-ABORT woke the C-GET's thread (pynetdicom wakes it for a peer's abort)
    assert not thread.is_alive()
    assert seen == [None]  # the association ended with no response to the C-GET


def test_movescu_as_its_own_destination(start_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """The usual movescu set-up: -aem names movescu itself, which takes the
    sub-operations on its own port (--port) while the C-MOVE is open."""
    archive = fill(tmp_path / "store0", count=6, studies=1)
    port = free_port()
    srv = start_server("--config", config(tmp_path, {"MOVESCU": port})).indexed()
    out = tmp_path / "got"
    out.mkdir()
    result = subprocess.run([dcmtk("movescu"), "-v", "-S", "-aet", "MOVESCU", "-aec", srv.ae_title, "-aem", "MOVESCU",
                             "--port", str(port), "-od", str(out), "-k", "QueryRetrieveLevel=STUDY",
                             "-k", f"StudyInstanceUID={archive.study_uids()[0]}", "127.0.0.1", str(srv.port)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    received = {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in out.iterdir()}
    assert received == set(archive.by_uid)


def test_move_and_get_files_larger_than_a_read_byte_identical(start_server, storescp, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """1.3 MB images: many PDUs per file (storescp's and getscu's maximum is
    16 KB) and more than one 1 MiB read per file in the C-MOVE sender."""
    port, out = storescp
    tree = tmp_path / "store0"
    tree.mkdir()
    made = [make_image(tree / f"big{n}.dcm", n, study=7, size=800) for n in range(3)]
    srv = start_server("--config", config(tmp_path, {"DEST": port})).indexed()
    study = str(made[0].StudyInstanceUID)
    keys = ["-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study}", "127.0.0.1", str(srv.port)]
    moved = subprocess.run([dcmtk("movescu"), "-v", "-S", "-aet", "MOVER", "-aec", srv.ae_title, "-aem", "DEST", *keys],
                           capture_output=True, text=True, timeout=120)
    assert moved.returncode == 0, moved.stdout + moved.stderr
    got = tmp_path / "got"
    got.mkdir()
    fetched = subprocess.run([dcmtk("getscu"), "-S", "-aet", "GETTER", "-aec", srv.ae_title, "-od", str(got), *keys],
                             capture_output=True, text=True, timeout=120)
    assert fetched.returncode == 0, fetched.stdout + fetched.stderr
    stored = stored_by_uid(srv)
    for directory in (out, got):
        received = {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID): p for p in directory.iterdir()}
        assert set(received) == {str(d.SOPInstanceUID) for d in made}
        assert all(dataset_bytes(received[u]) == dataset_bytes(stored[u]) for u in received)


# ---- the cap on one retrieve's instances ---------------------------------------------------------


def test_a_retrieve_past_max_retrieve_instances_is_refused_a701(start_server, destinations, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """query_retrieve.max_retrieve_instances: a C-MOVE or C-GET naming more
    instances is refused 0xA701 (Refused: Out of Resources - Unable to
    calculate number of matches, PS3.4 C.4.2.1.5 / C.4.3.1.4) with no
    sub-operation and one warning line; one naming exactly that many goes
    through, and the server goes on serving (pynetdicom C-MOVE and C-GET,
    dcmtk getscu)."""
    dest = Destination()
    destinations.append(dest)
    archive = fill(tmp_path / "store0", count=7, studies=2)  # study 0 (P000): 4 instances, study 1 (P001): 3
    big, small = (next(str(ds.StudyInstanceUID) for ds in archive.by_uid.values() if ds.PatientID == p)
                  for p in ("P000", "P001"))
    (tmp_path / "cap.yaml").write_text(f"remote_aes:\n  - ae_title: DEST\n    host: 127.0.0.1\n    port: {dest.port}\n"
                                       "query_retrieve:\n  max_retrieve_instances: 3\n")
    srv = start_server("--config", str(tmp_path / "cap.yaml")).indexed()
    refused = move(srv, "DEST", identifier("STUDY", StudyInstanceUID=big))
    assert [r[0] for r in refused] == [0xA701]
    assert "3 instances" in str(refused[0][1].get("ErrorComment", ""))
    assert not dest.received
    responses = move(srv, "DEST", identifier("STUDY", StudyInstanceUID=small))  # exactly the limit
    assert responses[-1][0] == 0x0000 and counts(responses[-1][1]) == (None, 3, 0, 0)
    assert set(dest.received) == archive.of_study(small)
    getter = Getter(srv)
    try:
        assert [r[0] for r in getter.get(identifier("STUDY", StudyInstanceUID=big), msg_id=7)] == [0xA701]
        assert not getter.received
        responses = getter.get(identifier("STUDY", StudyInstanceUID=small), msg_id=8)  # same association
        assert responses[-1][0] == 0x0000 and set(getter.received) == archive.of_study(small)
    finally:
        getter.assoc.release()
    got = tmp_path / "got"
    got.mkdir()
    result = subprocess.run([dcmtk("getscu"), "-v", "-P", "-aet", "GETTER", "-aec", srv.ae_title, "-od", str(got),
                             "-k", "QueryRetrieveLevel=PATIENT", "-k", "PatientID=P000", "127.0.0.1", str(srv.port)],
                            capture_output=True, text=True, timeout=120)
    out = result.stdout + result.stderr
    assert "Received C-GET Response (Refused: OutOfResourcesNumberOfMatches)" in out, out  # dcmtk's name of 0xA701
    assert not list(got.iterdir())
    text = srv.log_once_it_says("message 7)", "message 1)")
    lines = [ln for ln in text.splitlines() if "max_retrieve_instances" in ln]
    assert len(lines) == 3 and all("refused 0xA701" in ln and "WARNING" in ln for ln in lines), lines
    assert _echo_ok(srv)


def test_move_and_get_stream_files_larger_than_a_segment_byte_identical(start_server, storescp, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """9.8 MB images: C-GET and C-MOVE frame and send each in pieces
    (SEGMENT, 4 MiB; C-GET's loop waiting while the transport holds more than
    BACKLOG); dcmtk getscu (16 KB PDUs), pynetdicom and a dcmtk storescp move
    destination receive every data set byte for byte, and the next
    sub-operation follows."""
    from fastscp.services.retrieve import SEGMENT

    tree = tmp_path / "store0"
    tree.mkdir()
    made = [make_image(tree / f"huge{n}.dcm", n, study=8, size=2210) for n in range(2)]
    made.append(make_image(tree / "small.dcm", 9, study=8, size=16))
    assert (tree / "huge0.dcm").stat().st_size > 2 * SEGMENT
    port, out = storescp
    srv = start_server("--config", config(tmp_path, {"DEST": port}, pending_interval=0)).indexed()
    study = str(made[0].StudyInstanceUID)
    keys = ["-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study}", "127.0.0.1", str(srv.port)]
    got = tmp_path / "got"
    got.mkdir()
    fetched = subprocess.run([dcmtk("getscu"), "-S", "-aet", "GETTER", "-aec", srv.ae_title, "-od", str(got), *keys],
                             capture_output=True, text=True, timeout=120)
    assert fetched.returncode == 0, fetched.stdout + fetched.stderr
    moved = subprocess.run([dcmtk("movescu"), "-v", "-S", "-aet", "MOVER", "-aec", srv.ae_title, "-aem", "DEST", *keys],
                           capture_output=True, text=True, timeout=120)
    assert moved.returncode == 0 and "Received Final Move Response (Success)" in moved.stdout + moved.stderr
    stored = stored_by_uid(srv)
    for directory in (got, out):
        received = {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID): p for p in directory.iterdir()}
        assert set(received) == {str(d.SOPInstanceUID) for d in made}
        assert all(dataset_bytes(received[u]) == dataset_bytes(stored[u]) for u in received), directory.name
    getter = Getter(srv)
    try:
        responses = getter.get(identifier("STUDY", StudyInstanceUID=study))
        assert responses[-1][0] == 0x0000 and counts(responses[-1][1]) == (None, 3, 0, 0)
        assert [counts(r[1]) for r in responses[:-1]] == [(2, 1, 0, 0), (1, 2, 0, 0)]
        assert all(getter.received[u] == dataset_bytes(stored[u]) for u in stored)
    finally:
        getter.assoc.release()


def test_get_requestor_that_stops_reading_mid_file_is_aborted(start_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """A C-GET requestor that stops reading in the middle of a 32 MB data
    set: the server sends the file's next piece only while the transport
    holds under BACKLOG, and aborts the association once it has held more
    for server.dimse_timeout; the server serves on."""
    import socket

    from fastscp.protocol import dimse as D
    from fastscp.protocol import pdu as P
    from fastscp.services.identifiers import encode_identifier

    tree = tmp_path / "store0"
    tree.mkdir()
    made = make_image(tree / "huge.dcm", 0, study=9, size=4000)
    srv = start_server("--dimse-timeout", "1.5").indexed()
    ae = AE(ae_title="GETTER")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet, [EXPLICIT_LE])
    ae.add_requested_context(CTImageStorage, [EXPLICIT_LE])
    assoc = ae.associate("127.0.0.1", srv.port, ae_title=srv.ae_title,
                         ext_neg=[build_role(CTImageStorage, scp_role=True)])
    assert assoc.is_established
    sock = assoc.dul.socket.socket  # type: ignore[union-attr]
    assert isinstance(sock, socket.socket)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    assoc.dul.kill_dul()  # pynetdicom's reader stops: from here nobody reads the socket
    assoc.dul.join(10)
    assert not assoc.dul.is_alive()
    context_id = next(c.context_id for c in assoc.accepted_contexts
                      if c.abstract_syntax == StudyRootQueryRetrieveInformationModelGet)
    command = D.encode_command({D.AFFECTED_SOP_CLASS: StudyRootQueryRetrieveInformationModelGet,
                                D.COMMAND_FIELD: D.C_GET_RQ, D.MESSAGE_ID: 1, D.PRIORITY: 0}, True)
    data = encode_identifier(identifier("STUDY", StudyInstanceUID=str(made.StudyInstanceUID)), EXPLICIT_LE)
    sock.sendall(P.encode_pdata(context_id, command, True, 16384) + P.encode_pdata(context_id, data, False, 16384))
    said = "MiB unread for 1.5 s: aborting the association"
    log = srv.log_once_it_says(said, "ended during the retrieve", timeout=30)
    assert said in log and "0 of 1 sub-operations done" in log
    assert _echo_ok(srv)
    assert "Traceback" not in srv.log_text()
    sock.close()


# ---- Pending responses: query_retrieve.pending_interval ------------------------------------------


def _dcmtk_responses(tool: str, srv: Server, study: str, out: Path) -> list[str]:
    """dcmtk movescu (to DEST) or getscu (into ``out``) of ``study``, -v:
    the status of each C-MOVE/C-GET response it logs, in order."""
    args = ["-aem", "DEST"] if tool == "movescu" else ["-od", str(out)]
    result = subprocess.run([dcmtk(tool), "-v", "-S", "-aet", "SCU", "-aec", srv.ae_title, *args,
                             "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study}",
                             "127.0.0.1", str(srv.port)], capture_output=True, text=True, timeout=120)
    text = result.stdout + result.stderr
    assert result.returncode == 0, text
    kind = "Move" if tool == "movescu" else "C-GET"
    return [line.split("(", 1)[1].rstrip(")") for line in text.splitlines()
            if f"Received {kind} Response" in line or f"Received Final {kind} Response" in line]


@pytest.mark.parametrize("interval", [0, 3600])
def test_pending_responses_follow_pending_interval(start_server, destinations, tmp_path: Path,  # type: ignore[no-untyped-def]
                                                   interval: float) -> None:
    """query_retrieve.pending_interval: 0 sends a Pending response after
    every sub-operation but the last; 3600 (longer than the retrieve) sends
    none, PS3.4 C.4.2.3.1 / C.4.3.3.1 making them optional. Either way the
    final response carries the right counts, for pynetdicom's C-MOVE and
    C-GET and dcmtk movescu and getscu."""
    dest = Destination()
    destinations.append(dest)
    archive = fill(tmp_path / "store0", count=10, studies=1)
    study = archive.study_uids()[0]
    n = len(archive.of_study(study))
    srv = start_server("--config", config(tmp_path, {"DEST": dest.port}, pending_interval=interval)).indexed()
    expected_pending = [(n - k, k, 0, 0) for k in range(1, n)] if interval == 0 else []
    responses = move(srv, "DEST", identifier("STUDY", StudyInstanceUID=study))
    assert [r[0] for r in responses[:-1]] == [0xFF00] * len(expected_pending)
    assert [counts(r[1]) for r in responses[:-1]] == expected_pending
    assert responses[-1][0] == 0x0000 and counts(responses[-1][1]) == (None, n, 0, 0)
    assert set(dest.received) == archive.of_study(study)
    getter = Getter(srv)
    try:
        responses = getter.get(identifier("STUDY", StudyInstanceUID=study))
    finally:
        getter.assoc.release()
    assert [counts(r[1]) for r in responses[:-1]] == expected_pending
    assert responses[-1][0] == 0x0000 and counts(responses[-1][1]) == (None, n, 0, 0)
    assert set(getter.received) == archive.of_study(study)
    got = tmp_path / "got"
    got.mkdir()
    statuses = ["Pending"] * len(expected_pending) + ["Success"]
    assert _dcmtk_responses("getscu", srv, study, got) == statuses
    assert len(list(got.iterdir())) == n
    dest.received.clear()
    assert _dcmtk_responses("movescu", srv, study, got) == statuses
    assert set(dest.received) == archive.of_study(study)


def test_a_sub_operation_longer_than_pending_interval_is_followed_by_a_pending(  # type: ignore[no-untyped-def]
        start_server, destinations, tmp_path: Path) -> None:
    """pending_interval 0.3 s: the destination (C-MOVE) or the requestor
    (C-GET) holds its answer to the third sub-operation for longer than
    that, so a Pending response with Completed 3 must follow it, whatever
    the machine's speed (the pacer's clock started before the hold)."""
    dest = Destination(hold_at=3)
    destinations.append(dest)
    archive = fill(tmp_path / "store0", count=8, studies=1)
    study = archive.study_uids()[0]
    n = len(archive.of_study(study))
    srv = start_server("--config", config(tmp_path, {"DEST": dest.port}, pending_interval=0.3)).indexed()
    query = identifier("STUDY", StudyInstanceUID=study)
    moved: list[tuple[int, Dataset, Dataset | None]] = []
    mover = threading.Thread(target=lambda: moved.extend(move(srv, "DEST", query)))
    mover.start()
    assert dest.reached.wait(30)
    time.sleep(0.4)  # not a synchronisation: the time the held sub-operation takes, past the interval
    dest.release.set()
    mover.join(60)
    assert (0xFF00, (n - 3, 3, 0, 0)) in [(r[0], counts(r[1])) for r in moved[:-1]]
    assert moved[-1][0] == 0x0000 and counts(moved[-1][1]) == (None, n, 0, 0)

    getter = Getter(srv, hold_at=3)
    got: list[tuple[int, Dataset, Dataset | None]] = []
    runner = threading.Thread(target=lambda: got.extend(getter.get(query)))
    runner.start()
    try:
        assert getter.reached.wait(30)
        time.sleep(0.4)  # as above
        getter.release.set()
        runner.join(60)
    finally:
        getter.release.set()
        getter.assoc.release()
    assert (0xFF00, (n - 3, 3, 0, 0)) in [(r[0], counts(r[1])) for r in got[:-1]]
    assert got[-1][0] == 0x0000 and counts(got[-1][1]) == (None, n, 0, 0)


def test_move_sender_acks_at_once_after_each_read(destinations, tmp_path: Path,  # type: ignore[no-untyped-def]
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """The C-MOVE sender (store_scu.StoreAssociation) sets TCP_QUICKACK on
    its socket when it connects and again after every read: a destination
    with Nagle's algorithm on (dcmtk storescp's default) otherwise waits for
    a delayed ACK, about 40 ms, in each C-STORE-RSP (docs/benchmark.md). The
    peer is a pynetdicom Storage SCP; the calls are counted, not timed."""
    from fastscp.services import store_scu

    calls: list[int] = []
    real = store_scu.tcp_quickack

    def counting(fd: int) -> None:
        calls.append(fd)
        real(fd)

    monkeypatch.setattr(store_scu, "tcp_quickack", counting)
    dest = Destination()
    destinations.append(dest)
    archive = fill(tmp_path / "src", count=3, studies=1)
    pairs = sorted({(str(ds.SOPClassUID), EXPLICIT_LE) for ds in archive.by_uid.values()})
    assoc = store_scu.StoreAssociation("127.0.0.1", dest.port, "FASTSCP", "DEST", pairs)
    try:
        fd = assoc.sock.fileno() if assoc.sock is not None else -1
        after_accept = len(calls)
        assert after_accept >= 2 and set(calls) == {fd}  # on connecting, and after reading the A-ASSOCIATE-AC
        for path in archive.files:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
            before = len(calls)
            assert assoc.store(str(path), str(ds.SOPClassUID), str(ds.SOPInstanceUID), EXPLICIT_LE)[0] == 0x0000
            assert len(calls) > before  # the C-STORE-RSP's read(s)
    finally:
        assoc.release()
    assert set(dest.received) == set(archive.by_uid)

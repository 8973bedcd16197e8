"""Pieces of C-MOVE/C-GET without a network: where a file's data set
starts (store_scu.dataset_offset) and which identifiers name instances
(retrieve.retrieve_keys, select_instances on a real DuckDB index)."""

from __future__ import annotations

import io
import socket
import struct
import threading
from pathlib import Path

import pytest
from _pdu_fixtures import associate_ac
from conftest import make_image
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.filereader import _read_file_meta_info, read_preamble

from fastscp.catalog import reconcile
from fastscp.catalog.schema import connect
from fastscp.qr import IdentifierError, InformationModel, Level
from fastscp.services.retrieve import TooManyInstances, retrieve_keys, select_instances
from fastscp.services.store_scu import AssociationLost, StoreAssociation, dataset_offset


def _pydicom_offset(raw: bytes) -> int:
    fh = io.BytesIO(raw)
    read_preamble(fh, False)
    _read_file_meta_info(fh)
    return fh.tell()


@pytest.mark.parametrize("name", ["CT_small.dcm", "MR_small.dcm", "JPEG2000.dcm", "rtplan.dcm", "MR_small_RLE.dcm",
                                  "image_dfl.dcm", "MR_small_bigendian.dcm"])
def test_dataset_offset_agrees_with_pydicom(name: str) -> None:
    path = get_testdata_file(name)
    assert isinstance(path, str)
    raw = Path(path).read_bytes()
    assert dataset_offset(raw) == _pydicom_offset(raw)


def test_dataset_offset_refuses_what_is_not_part10() -> None:
    with pytest.raises(ValueError, match="DICM"):
        dataset_offset(b"\0" * 200)
    raw = Path(str(get_testdata_file("CT_small.dcm"))).read_bytes()
    with pytest.raises(ValueError, match="past"):
        dataset_offset(raw[:150])  # cut inside the meta group


def _ident(level: str, **keys: str) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = level
    for k, v in keys.items():
        setattr(ds, k, v)
    return ds


def test_retrieve_keys_levels_and_lists() -> None:
    study = InformationModel.STUDY_ROOT
    level, values = retrieve_keys(_ident("SERIES", StudyInstanceUID="1.2", SeriesInstanceUID="1.2.3\\1.2.4",
                                         PatientName="X*", Modality="CT"), study)
    assert level is Level.SERIES and values == {Level.STUDY: ["1.2"], Level.SERIES: ["1.2.3", "1.2.4"]}
    # Patient ID is not a unique key in Study Root: ignored there
    assert retrieve_keys(_ident("STUDY", PatientID="P1", StudyInstanceUID="1.2"), study)[1] == {Level.STUDY: ["1.2"]}
    patient = InformationModel.PATIENT_ROOT
    assert retrieve_keys(_ident("PATIENT", PatientID="P1"), patient)[1] == {Level.PATIENT: ["P1"]}


@pytest.mark.parametrize("ident, model", [
    (_ident("STUDY"), InformationModel.STUDY_ROOT),                                   # no unique key at the level
    (_ident("STUDY", StudyInstanceUID=""), InformationModel.STUDY_ROOT),              # empty unique key
    (_ident("PATIENT", PatientID="P1"), InformationModel.STUDY_ROOT),                 # no PATIENT level in Study Root
    (_ident("PATIENT", PatientID="P1\\P2"), InformationModel.PATIENT_ROOT),           # one Patient ID only
    (_ident("STUDY", StudyInstanceUID="1.2", SOPInstanceUID="1.2.3"), InformationModel.STUDY_ROOT),  # key below
    (Dataset(), InformationModel.STUDY_ROOT),                                         # no level at all
])
def test_retrieve_keys_refusals(ident: Dataset, model: InformationModel) -> None:
    with pytest.raises(IdentifierError) as exc:
        retrieve_keys(ident, model)
    assert exc.value.status == 0xA900


def test_select_only_present_rows_under_the_root(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    tree.mkdir()
    made = [make_image(tree / f"i{n}.dcm", n, study=0) for n in range(4)]
    db = tmp_path / "index.db"
    reconcile(tree, db, progress=False)
    study = str(made[0].StudyInstanceUID)
    with connect(db) as conn:
        got = select_instances(conn, _ident("STUDY", StudyInstanceUID=study), InformationModel.STUDY_ROOT, tree)
        assert sorted(i.sop_instance_uid for i in got) == sorted(str(d.SOPInstanceUID) for d in made)
        assert {i.transfer_syntax_uid for i in got} == {"1.2.840.10008.1.2.1"}
        assert [i.sop_instance_uid for i in got] == [str(d.SOPInstanceUID) for d in made]  # instance number order
        # a row marked missing is not sent; nor is a tree the index does not describe
        conn.execute("UPDATE instances SET status = 'missing' WHERE sop_instance_uid = ?",
                     [str(made[1].SOPInstanceUID)])
        got = select_instances(conn, _ident("STUDY", StudyInstanceUID=study), InformationModel.STUDY_ROOT, tree)
        assert str(made[1].SOPInstanceUID) not in {i.sop_instance_uid for i in got} and len(got) == 3
        assert select_instances(conn, _ident("STUDY", StudyInstanceUID=study), InformationModel.STUDY_ROOT,
                                tmp_path / "elsewhere") == []
        # SQL-looking values are matched literally
        assert select_instances(conn, _ident("STUDY", StudyInstanceUID="1' OR '1'='1"),
                                InformationModel.STUDY_ROOT, tree) == []


def test_select_counts_up_to_max_instances(tmp_path: Path) -> None:
    """max_instances: TooManyInstances past it (counted among present rows
    under the root only), the whole ordered list at it."""
    tree = tmp_path / "tree"
    tree.mkdir()
    made = [make_image(tree / f"i{n}.dcm", n, study=0) for n in range(4)]
    db = tmp_path / "index.db"
    reconcile(tree, db, progress=False)
    ident = _ident("STUDY", StudyInstanceUID=str(made[0].StudyInstanceUID))
    with connect(db) as conn:
        with pytest.raises(TooManyInstances) as exc:
            select_instances(conn, ident, InformationModel.STUDY_ROOT, tree, max_instances=3)
        assert exc.value.limit == 3
        got = select_instances(conn, ident, InformationModel.STUDY_ROOT, tree, max_instances=4)
        assert [i.sop_instance_uid for i in got] == [str(d.SOPInstanceUID) for d in made]
        conn.execute("UPDATE instances SET status = 'missing' WHERE sop_instance_uid = ?",
                     [str(made[1].SOPInstanceUID)])
        assert len(select_instances(conn, ident, InformationModel.STUDY_ROOT, tree, max_instances=3)) == 3


@pytest.mark.parametrize("room", [16372, 1000, 7])
def test_frame_file_is_the_file_between_pdu_headers(tmp_path: Path, room: int) -> None:
    """frame_file: P-DATA-TF PDUs of ``room`` data bytes each, whose data
    joined is the file's bytes at the offset (with room 7 and 20000 bytes:
    2858 buffers, more than one preadv's IOV_MAX) or the head given, the last-fragment bit on
    the final PDV only when asked; a file shorter than asked is an OSError."""
    import os
    import struct

    from fastscp.services.retrieve import frame_file

    raw = os.urandom(30000)
    path = tmp_path / "f.bin"
    path.write_bytes(raw)
    fd = os.open(path, os.O_RDONLY)
    try:
        cases = [(100, 20000, True, head) for head in (b"", raw[:20100], raw)]
        cases += [(0, 30000, False, b""), (0, 30000, True, raw), (5, 0, True, b"")]
        for offset, length, last, head in cases:  # from the file (preadv), or from its head already read
            buf = bytes(frame_file(fd, offset, length, 5, room, last, head))
            data, pos, flags = b"", 0, []
            while pos < len(buf):
                pdu_type, _, pdu_len, pdv_len, cid, header = struct.unpack_from(">BBIIBB", buf, pos)
                assert (pdu_type, cid, pdv_len) == (4, 5, pdu_len - 4) and pdv_len - 2 <= room
                data += buf[pos + 12:pos + 6 + pdu_len]
                flags.append(header)
                pos += 6 + pdu_len
            assert pos == len(buf) and data == raw[offset:offset + length]
            assert flags == [0] * (len(flags) - 1) + [2 if last else 0]
        with pytest.raises(OSError):
            frame_file(fd, 29000, 2000, 5, room, True)
    finally:
        os.close(fd)


# ---- the C-MOVE sender's association set-up (store_scu.StoreAssociation) ------------------

CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
MR_IMAGE = "1.2.840.10008.5.1.4.1.1.4"
EXPLICIT_LE = "1.2.840.10008.1.2.1"


def _destination(answer: bytes) -> tuple[socket.socket, threading.Thread]:
    """A listening socket that reads one A-ASSOCIATE-RQ and sends ``answer``."""
    server = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        conn, _ = server.accept()
        with conn:
            header = conn.recv(6, socket.MSG_WAITALL)
            conn.recv(int.from_bytes(header[2:6], "big"), socket.MSG_WAITALL)
            conn.sendall(answer)
            conn.recv(1)  # until the requester closes

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return server, thread


def test_store_association_reads_the_destination_accept() -> None:
    # pynetdicom's encoding: CT accepted as context 1, MR refused (3 = abstract syntax not supported)
    server, thread = _destination(associate_ac(((1, 0, EXPLICIT_LE), (3, 3, EXPLICIT_LE)), max_pdu=20000))
    with server:
        assoc = StoreAssociation("127.0.0.1", server.getsockname()[1], "FASTSCP", "DEST",
                                 [(CT_IMAGE, EXPLICIT_LE), (MR_IMAGE, EXPLICIT_LE)], timeout=10)
        try:
            assert assoc.accepted == {(CT_IMAGE, EXPLICIT_LE): 1}
            assert list(assoc.refused) == [(MR_IMAGE, EXPLICIT_LE)] and "abstract syntax" in assoc.refused[
                (MR_IMAGE, EXPLICIT_LE)]
            assert assoc.peer_max_pdu == 20000
        finally:
            assoc.close()
        thread.join(10)


def test_store_association_refuses_a_malformed_accept() -> None:
    raw = associate_ac(((1, 0, EXPLICIT_LE),))
    cut = raw[:-3]  # the last (user information) item runs past the PDU
    server, thread = _destination(cut[:2] + struct.pack(">I", len(cut) - 6) + cut[6:])
    with server:
        with pytest.raises(AssociationLost, match="malformed A-ASSOCIATE-AC"):
            StoreAssociation("127.0.0.1", server.getsockname()[1], "FASTSCP", "DEST",
                             [(CT_IMAGE, EXPLICIT_LE)], timeout=10)
        thread.join(10)


def test_pending_pacer_allows_one_per_interval() -> None:
    """query_retrieve.pending_interval: after each sub-operation a Pending
    response goes out only once the interval has passed since the start or
    the last one; 0 allows every one (and reads no clock)."""
    from fastscp.services.retrieve import PendingPacer

    now = [0.0]

    def clock() -> float:
        return now[0]

    pacer = PendingPacer(1.0, clock)
    allowed = []
    for _ in range(9):  # a sub-operation every 0.4 s
        now[0] += 0.4
        allowed.append(pacer.due())
    assert allowed == [False, False, True, False, False, True, False, False, True]
    now[0] += 5.0  # a long sub-operation: the next one is due at once
    assert pacer.due() and not pacer.due()

    def no_clock() -> float:
        raise AssertionError("an interval of 0 reads no clock")

    every = PendingPacer(0.0, no_clock)
    assert all(every.due() for _ in range(5))


def test_store_association_gives_up_on_a_silent_destination(tmp_path: Path) -> None:
    """A destination that accepts the association, then never answers the
    C-STORE-RQ: ``store`` raises AssociationLost once the timeout passes
    (the C-MOVE's sub-operation fails with why, the rest are not tried on
    that association) and the socket is closed."""
    server = socket.create_server(("127.0.0.1", 0))
    done = threading.Event()

    def serve() -> None:
        conn, _ = server.accept()
        with conn:
            header = conn.recv(6, socket.MSG_WAITALL)
            conn.recv(int.from_bytes(header[2:6], "big"), socket.MSG_WAITALL)
            conn.sendall(associate_ac(((1, 0, EXPLICIT_LE),)))
            while conn.recv(65536):  # takes the request, answers nothing, until the sender closes
                pass
        done.set()

    threading.Thread(target=serve, daemon=True).start()
    path = tmp_path / "ct.dcm"
    ds = make_image(path, 0, study=0)
    outcome: list[BaseException | tuple[int, str]] = []
    with server:
        assoc = StoreAssociation("127.0.0.1", server.getsockname()[1], "FASTSCP", "DEST",
                                 [(CT_IMAGE, EXPLICIT_LE)], timeout=0.5)

        def send() -> None:
            try:
                outcome.append(assoc.store(str(path), CT_IMAGE, str(ds.SOPInstanceUID), EXPLICIT_LE))
            except AssociationLost as exc:
                outcome.append(exc)

        sender = threading.Thread(target=send, daemon=True)
        sender.start()
        sender.join(20)
        assert not sender.is_alive(), "store() did not give up"
        assert len(outcome) == 1 and isinstance(outcome[0], AssociationLost)
        assert "timed out" in str(outcome[0])
        assert assoc.sock is None  # closed
        assert done.wait(10)

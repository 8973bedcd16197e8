"""The C-FIND SCP (fastscp/services/query.py) against clients written by
others: dcmtk findscu, pynetdicom as SCU (C-CANCEL, relational queries by
extended negotiation, every transfer syntax) and Orthanc as a querying
archive (/modalities/{id}/query).

One archive per module: instances of known attributes are stored with dcmtk
storescu, the server is stopped (its clean stop writes every queued index
row: how tests/test_catalog_network.py waits for the index writer) and
started again on the same storage and index, so every query sees them all.
Each answer is checked against the attributes the stored files hold.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from conftest import Server, dcmtk, free_port
from test_interop import run_storescu

from fastscp.scu.commands import answers_to_the_caller

pytestmark = pytest.mark.interop

STUDY_FIND = "1.2.840.10008.5.1.4.1.2.2.1"
PATIENT_FIND = "1.2.840.10008.5.1.4.1.2.1.1"
CT = "1.2.840.10008.5.1.4.1.1.2"
MR = "1.2.840.10008.5.1.4.1.1.4"
MANY = 2000  # instances of one series: the C-CANCEL tests' long result


@dataclasses.dataclass(frozen=True)
class Study:
    key: str
    patient_id: str
    patient_name: str
    birth_date: str
    sex: str
    date: str
    time: str
    accession: str
    description: str
    series: tuple[tuple[str, int], ...]  # (modality, instances) per series, numbered from 1


STUDIES = (
    Study("S1", "PA1", "Doe^Jane", "19700101", "F", "20250110", "101500", "ACC1", "CT CHEST",
          (("CT", 3), ("CT", 2))),
    Study("S2", "PA1", "Doe^Jane", "19700101", "F", "20250305", "083000", "ACC2", "MR HEAD", (("MR", 2),)),
    Study("S3", "PB2", "Smith^John", "19651231", "M", "20251120", "170000", "ACC3", "CT ABDOMEN",
          (("CT", 2), ("MR", 1))),
    Study("S4", "PC3", "Müller^Jürgen", "19800229", "M", "20260101", "120000", "ACC4", "CT KNEE", (("CT", 1),)),
    Study("S5", "PD4", "Many^Images", "19900101", "O", "20260102", "090000", "ACC5", "MANY", (("CT", MANY),)),
)


@dataclasses.dataclass(frozen=True)
class Stored:
    study: Study
    study_uid: str
    series_uid: str
    series_number: int
    modality: str
    sop_uid: str
    sop_class: str
    instance_number: int


@dataclasses.dataclass
class Archive:
    server: Server
    instances: list[Stored]

    def study_uid(self, key: str) -> str:
        return next(i.study_uid for i in self.instances if i.study.key == key)

    def of(self, key: str) -> list[Stored]:
        return [i for i in self.instances if i.study.key == key]


def _write(path: Path, study: Study, study_uid: str, series_number: int, modality: str, number: int) -> Stored:
    sop_class = CT if modality == "CT" else MR
    series_uid = generate_uid(entropy_srcs=[study_uid, str(series_number)])
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, meta.MediaStorageSOPInstanceUID
    ds.PatientName, ds.PatientID = study.patient_name, study.patient_id
    ds.PatientBirthDate, ds.PatientSex = study.birth_date, study.sex
    ds.StudyInstanceUID, ds.StudyDate, ds.StudyTime = study_uid, study.date, study.time
    ds.AccessionNumber, ds.StudyDescription, ds.StudyID = study.accession, study.description, study.key
    ds.SeriesInstanceUID, ds.SeriesNumber, ds.Modality = series_uid, series_number, modality
    ds.InstanceNumber = number
    ds.Rows = ds.Columns = 4
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.PixelData = os.urandom(32)
    ds.save_as(path, enforce_file_format=True)
    return Stored(study, study_uid, series_uid, series_number, modality, str(ds.SOPInstanceUID), sop_class, number)


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Archive]:
    root = tmp_path_factory.mktemp("qr")
    files = root / "files"
    files.mkdir()
    instances: list[Stored] = []
    paths: list[Path] = []
    for study in STUDIES:
        study_uid = generate_uid()
        for series_number, (modality, count) in enumerate(study.series, start=1):
            for number in range(1, count + 1):
                path = files / f"{len(paths):05d}.dcm"
                instances.append(_write(path, study, study_uid, series_number, modality, number))
                paths.append(path)
    loader = Server(root / "store", root / "load.log", [])
    try:
        results = run_storescu(loader, paths)
        assert [r[1] for r in results] == ["Success"] * len(paths)
    finally:
        assert loader.stop() == 0  # a clean stop writes every queued index row
    srv = Server(root / "store", root / "serve.log", [])  # the same storage and index
    try:
        yield Archive(srv, instances)
    finally:
        srv.stop()


@pytest.fixture
def show_log(archive: Archive, request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    call = getattr(request.node, "report_call", None)
    if call is not None and call.failed:
        print(f"----- server log -----\n{archive.server.log_text()[-20000:]}")


# ---- dcmtk findscu ------------------------------------------------------------------------


@dataclasses.dataclass
class Found:
    final: str
    pending: list[str]
    responses: list[Dataset]
    text: str  # findscu's output


def findscu(srv: Server, out: Path, model: str, *keys: str, extra: tuple[str, ...] = ()) -> Found:
    """Run dcmtk findscu (``model``: -P Patient Root, -S Study Root) and
    read back the responses it extracted (-X)."""
    out.mkdir(exist_ok=True)
    cmd = [dcmtk("findscu"), "-v", model, "-aec", srv.ae_title, "-X", "-od", str(out), *extra]
    for key in keys:
        cmd += ["-k", key]
    text = subprocess.run([*cmd, "127.0.0.1", str(srv.port)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          timeout=120).stdout.decode("utf-8", "replace")
    final = re.search(r"Received Final Find Response \(([^)]*)\)", text)
    assert final is not None, text
    pending = re.findall(r"Find Response:? \d+ \((Pending[^)]*)\)", text)
    responses = [pydicom.dcmread(p, force=True) for p in sorted(out.glob("rsp*.dcm"))]
    return Found(final.group(1), pending, responses, text)


def _keys(ds: Dataset) -> set[str]:
    return {e.keyword for e in ds if e.keyword not in ("SpecificCharacterSet",)}


def test_findscu_study_root_study_level_name_wildcard(archive: Archive, tmp_path: Path, show_log: None) -> None:
    """Study Root, STUDY level: PN wildcard matched case-insensitively; the
    derived counts and Modalities in Study computed from what was stored."""
    found = findscu(archive.server, tmp_path, "-S", "QueryRetrieveLevel=STUDY", "PatientName=doe*",
                    "StudyInstanceUID", "PatientID", "StudyDate", "AccessionNumber", "ModalitiesInStudy",
                    "NumberOfStudyRelatedSeries", "NumberOfStudyRelatedInstances")
    assert found.final == "Success"
    assert found.pending == ["Pending"] * 2, found.text
    got = {str(r.StudyInstanceUID): r for r in found.responses}
    assert set(got) == {archive.study_uid("S1"), archive.study_uid("S2")}
    for key, study in (("S1", STUDIES[0]), ("S2", STUDIES[1])):
        r = got[archive.study_uid(key)]
        stored = archive.of(key)
        assert _keys(r) == {"QueryRetrieveLevel", "PatientName", "StudyInstanceUID", "PatientID", "StudyDate",
                            "AccessionNumber", "ModalitiesInStudy", "NumberOfStudyRelatedSeries",
                            "NumberOfStudyRelatedInstances"}
        assert (r.QueryRetrieveLevel, str(r.PatientName), r.PatientID, r.StudyDate, r.AccessionNumber) == (
            "STUDY", study.patient_name, study.patient_id, study.date, study.accession)
        assert sorted(r.ModalitiesInStudy if r["ModalitiesInStudy"].VM > 1 else [r.ModalitiesInStudy]) == sorted(
            {i.modality for i in stored})
        assert int(r.NumberOfStudyRelatedSeries) == len({i.series_uid for i in stored})
        assert int(r.NumberOfStudyRelatedInstances) == len(stored)


def test_findscu_study_root_date_range_and_modality(archive: Archive, tmp_path: Path, show_log: None) -> None:
    found = findscu(archive.server, tmp_path, "-S", "QueryRetrieveLevel=STUDY", "StudyDate=20250101-20251231",
                    "ModalitiesInStudy=CT", "StudyInstanceUID", "StudyDescription")
    assert found.final == "Success"
    assert {(str(r.StudyInstanceUID), r.StudyDescription) for r in found.responses} == {
        (archive.study_uid("S1"), "CT CHEST"), (archive.study_uid("S3"), "CT ABDOMEN")}


def test_findscu_study_root_series_level(archive: Archive, tmp_path: Path, show_log: None) -> None:
    stored = archive.of("S3")
    found = findscu(archive.server, tmp_path, "-S", "QueryRetrieveLevel=SERIES",
                    f"StudyInstanceUID={archive.study_uid('S3')}", "SeriesInstanceUID", "Modality", "SeriesNumber",
                    "NumberOfSeriesRelatedInstances")
    assert found.final == "Success"
    got = {(str(r.SeriesInstanceUID), r.Modality, int(r.SeriesNumber), int(r.NumberOfSeriesRelatedInstances))
           for r in found.responses}
    assert got == {(i.series_uid, i.modality, i.series_number, sum(1 for j in stored if j.series_uid == i.series_uid))
                   for i in stored}
    assert len(got) == 2


def test_findscu_study_root_image_level_uid_list(archive: Archive, tmp_path: Path, show_log: None) -> None:
    """List of UID matching (PS3.4 C.2.2.2.2) at IMAGE level."""
    series = [i for i in archive.of("S1") if i.series_number == 1]
    wanted = series[:2]
    found = findscu(archive.server, tmp_path, "-S", "QueryRetrieveLevel=IMAGE",
                    f"StudyInstanceUID={archive.study_uid('S1')}", f"SeriesInstanceUID={series[0].series_uid}",
                    "SOPInstanceUID=" + "\\".join(i.sop_uid for i in wanted), "InstanceNumber", "SOPClassUID")
    assert found.final == "Success"
    assert {(str(r.SOPInstanceUID), int(r.InstanceNumber), str(r.SOPClassUID)) for r in found.responses} == {
        (i.sop_uid, i.instance_number, i.sop_class) for i in wanted}


def test_findscu_patient_root_patient_level(archive: Archive, tmp_path: Path, show_log: None) -> None:
    found = findscu(archive.server, tmp_path, "-P", "QueryRetrieveLevel=PATIENT", "PatientID=P*",
                    "PatientName", "PatientBirthDate", "PatientSex", "NumberOfPatientRelatedStudies",
                    "NumberOfPatientRelatedInstances")
    assert found.final == "Success"
    got = {r.PatientID: (str(r.PatientName), r.PatientBirthDate, r.PatientSex, int(r.NumberOfPatientRelatedStudies),
                         int(r.NumberOfPatientRelatedInstances)) for r in found.responses}
    expected = {}
    for study in STUDIES:
        mine = [i for i in archive.instances if i.study.patient_id == study.patient_id]
        expected[study.patient_id] = (study.patient_name, study.birth_date, study.sex,
                                      len({i.study_uid for i in mine}), len(mine))
    assert got == expected
    assert len(found.responses) == 4


def test_findscu_patient_root_study_and_image_levels(archive: Archive, tmp_path: Path, show_log: None) -> None:
    """Patient Root: an open-ended date range under one patient, then the
    images of one series (hierarchical: each level's unique key above)."""
    studies = findscu(archive.server, tmp_path / "study", "-P", "QueryRetrieveLevel=STUDY", "PatientID=PA1",
                      "StudyDate=-20250201", "StudyInstanceUID", "StudyTime")
    assert studies.final == "Success"
    assert [(str(r.StudyInstanceUID), r.StudyTime) for r in studies.responses] == [(archive.study_uid("S1"), "101500")]
    series = [i for i in archive.of("S1") if i.series_number == 2]
    images = findscu(archive.server, tmp_path / "image", "-P", "QueryRetrieveLevel=IMAGE", "PatientID=PA1",
                     f"StudyInstanceUID={archive.study_uid('S1')}", f"SeriesInstanceUID={series[0].series_uid}",
                     "SOPInstanceUID", "InstanceNumber")
    assert images.final == "Success"
    assert sorted((int(r.InstanceNumber), str(r.SOPInstanceUID)) for r in images.responses) == sorted(
        (i.instance_number, i.sop_uid) for i in series)


def test_findscu_utf8_name(archive: Archive, tmp_path: Path, show_log: None) -> None:
    """A non-ASCII name in the request's character set (ISO_IR 192) matches
    the stored one; the response says its character set."""
    found = findscu(archive.server, tmp_path, "-S", "SpecificCharacterSet=ISO_IR 192", "QueryRetrieveLevel=STUDY",
                    "PatientName=müller*", "StudyInstanceUID")
    assert found.final == "Success"
    assert [(str(r.PatientName), r.SpecificCharacterSet, str(r.StudyInstanceUID)) for r in found.responses] == [
        ("Müller^Jürgen", "ISO_IR 192", archive.study_uid("S4"))]


def test_findscu_unsupported_optional_key_is_pending_warning(archive: Archive, tmp_path: Path,
                                                             show_log: None) -> None:
    """PS3.4 C.4.1.1.4: 0xFF01 when an optional key is not supported;
    the key comes back with no value."""
    found = findscu(archive.server, tmp_path, "-S", "QueryRetrieveLevel=STUDY", "PatientID=PB2", "StudyInstanceUID",
                    "InstitutionAddress=Somewhere*")
    assert found.final == "Success"
    assert found.pending == ["Pending: WarningUnsupportedOptionalKeys"]
    [r] = found.responses
    assert str(r.StudyInstanceUID) == archive.study_uid("S3") and r.InstitutionAddress in ("", None)


def test_findscu_level_outside_the_model_is_refused(archive: Archive, tmp_path: Path, show_log: None) -> None:
    """PATIENT is no level of Study Root (PS3.4 C.6.2): 0xA900, one log line."""
    found = findscu(archive.server, tmp_path, "-S", "QueryRetrieveLevel=PATIENT", "PatientName")
    assert found.final.startswith("Error: DataSetDoesNotMatchSOPClass") and found.responses == []
    assert "Query/Retrieve Level 'PATIENT' is not one of the STUDY_ROOT model: answered 0xa900" in \
        archive.server.log_once_it_says("Query/Retrieve Level 'PATIENT'")


def test_findscu_cancel(archive: Archive, tmp_path: Path, show_log: None) -> None:
    """dcmtk's own C-CANCEL (--cancel 1: after the first response) on a
    query of MANY matches: the final status is Cancel."""
    series = archive.of("S5")[0].series_uid
    found = findscu(archive.server, tmp_path, "-S", "QueryRetrieveLevel=IMAGE",
                    f"StudyInstanceUID={archive.study_uid('S5')}", f"SeriesInstanceUID={series}", "SOPInstanceUID",
                    extra=("--cancel", "1"))
    assert found.final.startswith("Cancel"), found.final
    assert 1 <= len(found.pending) < MANY


# ---- pynetdicom ---------------------------------------------------------------------------


def _ae(*contexts: tuple[str, list[str]]):  # type: ignore[no-untyped-def]
    from pynetdicom import AE

    ae = AE(ae_title="PYNETDICOM")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 60
    for abstract, syntaxes in contexts:
        ae.add_requested_context(abstract, syntaxes)
    return ae


IMPLICIT, EXPLICIT = "1.2.840.10008.1.2", "1.2.840.10008.1.2.1"


def _study_query(patient_id: str) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    ds.PatientID = patient_id
    ds.StudyInstanceUID = ""
    ds.PatientName = ""
    ds.NumberOfStudyRelatedInstances = ""
    return ds


@pytest.mark.parametrize("syntax", [IMPLICIT, EXPLICIT, "1.2.840.10008.1.2.2", "1.2.840.10008.1.2.1.99"])
def test_pynetdicom_in_each_transfer_syntax(archive: Archive, syntax: str, show_log: None) -> None:
    """The identifier is decoded, and the responses encoded, in the
    context's transfer syntax (big endian and deflate included)."""
    ae = _ae((STUDY_FIND, [syntax]))
    assoc = ae.associate("127.0.0.1", archive.server.port, ae_title=archive.server.ae_title)
    assert assoc.is_established
    answers_to_the_caller(assoc)  # pynetdicom's reactor must not take a response
    try:
        assert assoc.accepted_contexts[0].transfer_syntax[0] == syntax
        answers = list(assoc.send_c_find(_study_query("PA1"), STUDY_FIND))
    finally:
        assoc.release()
    statuses = [int(status.Status) for status, _ in answers]
    assert statuses == [0xFF00, 0xFF00, 0x0000]
    got = {str(ds.StudyInstanceUID): (str(ds.PatientName), int(ds.NumberOfStudyRelatedInstances))
           for _, ds in answers[:-1]}
    assert got == {archive.study_uid(k): ("Doe^Jane", len(archive.of(k))) for k in ("S1", "S2")}


def test_pynetdicom_cancel_mid_stream_keeps_the_association(archive: Archive, show_log: None) -> None:
    """C-CANCEL after the first Pending response of a MANY-match query:
    the final status is 0xFE00 (PS3.4 C.4.1.1.4), fewer than MANY matches
    came, and the same association then answers another C-FIND and a
    C-ECHO."""
    ae = _ae((STUDY_FIND, [EXPLICIT]), ("1.2.840.10008.1.1", [IMPLICIT]))
    assoc = ae.associate("127.0.0.1", archive.server.port, ae_title=archive.server.ae_title)
    assert assoc.is_established
    answers_to_the_caller(assoc)  # pynetdicom's reactor must not take a response
    try:
        query = Dataset()
        query.QueryRetrieveLevel = "IMAGE"
        query.StudyInstanceUID = archive.study_uid("S5")
        query.SeriesInstanceUID = archive.of("S5")[0].series_uid
        query.SOPInstanceUID = ""
        pending = 0
        final = None
        for status, _identifier in assoc.send_c_find(query, STUDY_FIND, msg_id=77):
            if int(status.Status) in (0xFF00, 0xFF01):
                pending += 1
                if pending == 1:
                    assoc.send_c_cancel(77, query_model=STUDY_FIND)
            else:
                final = int(status.Status)
        assert final == 0xFE00
        assert 1 <= pending < MANY
        assert assoc.is_established
        again = list(assoc.send_c_find(_study_query("PB2"), STUDY_FIND, msg_id=78))
        assert [int(s.Status) for s, _ in again] == [0xFF00, 0x0000]
        assert str(again[0][1].StudyInstanceUID) == archive.study_uid("S3")
        assert int(assoc.send_c_echo().Status) == 0
    finally:
        assoc.release()
    assert "C-FIND 77: cancelled after" in archive.server.log_once_it_says("C-FIND 77: cancelled after")


def _offending(status: Dataset) -> list[int]:
    value = status["OffendingElement"].value
    return [int(t) for t in (value if isinstance(value, list) else [value])]


def _series_query() -> Dataset:
    """A relational query (PS3.4 C.4.1.3.2): SERIES level, no Study
    Instance UID, matching on a series key and a study key."""
    ds = Dataset()
    ds.QueryRetrieveLevel = "SERIES"
    ds.Modality = "MR"
    ds.PatientID = "PA1"
    ds.SeriesInstanceUID = ""
    ds.StudyInstanceUID = ""
    return ds


def test_pynetdicom_relational_only_when_negotiated(archive: Archive, show_log: None) -> None:
    """Relational queries need SOP Class Extended Negotiation (PS3.4 C.5.1):
    proposed, we answer relational-queries 1 and run it; not proposed, the
    same identifier is a hierarchical query matching above its level and
    gets 0xA900 with the Offending Element."""
    from pynetdicom.pdu_primitives import SOPClassExtendedNegotiation

    ext = SOPClassExtendedNegotiation()
    ext.sop_class_uid = STUDY_FIND
    ext.service_class_application_information = b"\x01\x01"  # relational, combined date-time
    ae = _ae((STUDY_FIND, [EXPLICIT]))
    assoc = ae.associate("127.0.0.1", archive.server.port, ae_title=archive.server.ae_title, ext_neg=[ext])
    assert assoc.is_established
    answers_to_the_caller(assoc)  # pynetdicom's reactor must not take a response
    try:
        # relational agreed, combined date-time matching not supported
        assert dict(assoc.acceptor.sop_class_extended) == {STUDY_FIND: b"\x01\x00"}
        answers = list(assoc.send_c_find(_series_query(), STUDY_FIND))
    finally:
        assoc.release()
    mr_series = {i.series_uid for i in archive.of("S2")}
    assert [int(s.Status) for s, _ in answers] == [0xFF00] * len(mr_series) + [0]
    assert {str(ds.SeriesInstanceUID) for _, ds in answers[:-1]} == mr_series

    plain = _ae((STUDY_FIND, [EXPLICIT]))
    assoc = plain.associate("127.0.0.1", archive.server.port, ae_title=archive.server.ae_title)
    assert assoc.is_established
    answers_to_the_caller(assoc)  # pynetdicom's reactor must not take a response
    try:
        [(status, identifier)] = list(assoc.send_c_find(_series_query(), STUDY_FIND))
    finally:
        assoc.release()
    assert int(status.Status) == 0xA900 and identifier is None
    # hierarchical (C.4.1.3.1): Patient ID is a non-unique key above the level and may not carry a value
    assert "PatientID" in str(status.ErrorComment)
    assert _offending(status) == [0x00100020]


def test_pynetdicom_error_comment_and_offending_element(archive: Archive, show_log: None) -> None:
    ae = _ae((PATIENT_FIND, [EXPLICIT]))
    assoc = ae.associate("127.0.0.1", archive.server.port, ae_title=archive.server.ae_title)
    assert assoc.is_established
    answers_to_the_caller(assoc)  # pynetdicom's reactor must not take a response
    try:
        query = Dataset()
        query.QueryRetrieveLevel = "SERIES"  # a value for a unique key above is missing; a date that is no date
        query.PatientID = "PA1"
        query.StudyInstanceUID = archive.study_uid("S1")
        with pytest.warns(UserWarning, match="Invalid value for VR DA"):  # pydicom, the sender, warns too
            query.StudyDate = "2025-01"
        [(status, _)] = list(assoc.send_c_find(query, PATIENT_FIND))
    finally:
        assoc.release()
    assert int(status.Status) == 0xA900
    assert "StudyDate" in str(status.ErrorComment)
    assert _offending(status) == [0x00080020]


# ---- a malformed identifier, by hand (no peer sends one) -----------------------------------


def test_malformed_identifier_is_answered_c000(archive: Archive, show_log: None) -> None:
    """An identifier cut inside an element: 0xC000 (cannot understand) with
    one log line, and the association stays usable."""
    import struct

    from rawclient import associate_rq, pdata, read_pdu

    def el(tag: int, value: bytes) -> bytes:
        return struct.pack("<HHI", 0, tag, len(value)) + value

    uid = STUDY_FIND.encode() + b"\0"
    body = (el(0x0002, uid) + el(0x0100, struct.pack("<H", 0x0020)) + el(0x0110, struct.pack("<H", 5))
            + el(0x0700, struct.pack("<H", 0)) + el(0x0800, struct.pack("<H", 0)))
    command = el(0x0000, struct.pack("<I", len(body))) + body
    # implicit VR: (0008,0052) "STUDY " then (0010,0010) announcing 40 bytes, holding 4
    identifier = struct.pack("<HHI", 0x0008, 0x0052, 6) + b"STUDY " + struct.pack("<HHI", 0x0010, 0x0010, 40) + b"Doe*"
    import socket

    with socket.create_connection(("127.0.0.1", archive.server.port), timeout=30) as sock:
        sock.sendall(associate_rq(archive.server.ae_title, "RAW", [(1, STUDY_FIND, [IMPLICIT])]))
        assert read_pdu(sock)[0] == 2
        sock.sendall(pdata(1, command, True, True) + pdata(1, identifier, False, True))
        pdu_type, raw = read_pdu(sock)
        assert pdu_type == 4
        status = struct.unpack_from("<H", raw, raw.index(struct.pack("<HHI", 0, 0x0900, 2)) + 8)[0]
        assert status == 0xC000
        assert b"identifier not decodable" in raw
        sock.sendall(bytes((5, 0, 0, 0, 0, 4, 0, 0, 0, 0)))  # A-RELEASE-RQ: the association is still there
        assert read_pdu(sock)[0] == 6
    log = archive.server.log_once_it_says("C-FIND 5: identifier is not a data set")
    assert log.count("C-FIND 5: identifier is not a data set") == 1


# ---- Orthanc as a querying archive -------------------------------------------------------


def _orthanc() -> str:
    for path in ("/usr/sbin/Orthanc", "/usr/bin/Orthanc"):
        if os.path.exists(path):
            return path
    pytest.fail("Orthanc is not installed (Debian package orthanc; .ci/run installs it)")


def _http(port: int, path: str, body: object | None = None) -> object:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data, method="POST" if data else "GET")
    with urllib.request.urlopen(req, timeout=60) as r:
        return json.loads(r.read())


@pytest.fixture
def orthanc(archive: Archive, tmp_path: Path) -> Iterator[int]:
    """Orthanc with fastscp under DicomModalities; yields its HTTP port."""
    http_port, dicom_port = free_port(), free_port()
    (tmp_path / "index").mkdir()
    config = {
        "Name": "qr-test", "StorageDirectory": str(tmp_path / "storage"), "IndexDirectory": str(tmp_path / "index"),
        "DicomAet": "ORTHANC", "DicomPort": dicom_port, "HttpPort": http_port, "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False, "Plugins": [], "SaveJobs": False,
        "DicomModalities": {"fastscp": [archive.server.ae_title, "127.0.0.1", archive.server.port]},
    }
    (tmp_path / "orthanc.json").write_text(json.dumps(config))
    with open(tmp_path / "orthanc.log", "wb") as log:
        proc = subprocess.Popen([_orthanc(), str(tmp_path / "orthanc.json")], stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while True:  # ready once its REST API answers
            assert proc.poll() is None, (tmp_path / "orthanc.log").read_text()
            try:
                _http(http_port, "/system")
                break
            except OSError:
                assert time.monotonic() < deadline, "Orthanc did not start"
                time.sleep(0.1)
        yield http_port
    finally:
        proc.terminate()
        proc.wait(30)


def _orthanc_query(port: int, level: str, query: dict[str, str]) -> list[dict[str, dict[str, object]]]:
    started = _http(port, "/modalities/fastscp/query", {"Level": level, "Query": query})
    assert isinstance(started, dict)
    answers = _http(port, f"/queries/{started['ID']}/answers?expand")
    assert isinstance(answers, list)
    return answers


def _tag(answer: dict[str, dict[str, object]], tag: str) -> object:
    return answer[tag]["Value"]


def test_orthanc_queries_studies_and_series(orthanc: int, archive: Archive, show_log: None) -> None:
    studies = _orthanc_query(orthanc, "Study", {"PatientID": "PA1", "StudyDescription": "", "StudyDate": ""})
    assert {(_tag(a, "0020,000d"), _tag(a, "0008,1030"), _tag(a, "0008,0020")) for a in studies} == {
        (archive.study_uid("S1"), "CT CHEST", "20250110"), (archive.study_uid("S2"), "MR HEAD", "20250305")}
    series = _orthanc_query(orthanc, "Series", {"StudyInstanceUID": archive.study_uid("S3"), "Modality": "CT"})
    assert {_tag(a, "0020,000e") for a in series} == {i.series_uid for i in archive.of("S3") if i.modality == "CT"}
    assert len(series) == 1
    patients = _orthanc_query(orthanc, "Patient", {"PatientName": "SMITH*"})
    assert [(_tag(a, "0010,0020"), _tag(a, "0010,0010")) for a in patients] == [("PB2", "Smith^John")]


def test_a_query_past_max_find_matches_is_refused_a700(tmp_path: Path) -> None:
    """query_retrieve.max_find_matches: a C-FIND matching more gets that
    many Pending responses, then 0xA700 Refused: Out of Resources (PS3.4
    C.4.1.1.4), with one warning line; one matching no more is answered in
    full."""
    from conftest import make_image

    study_uid, series_uid = generate_uid(), generate_uid()
    paths = []
    for i in range(5):
        path = tmp_path / f"{i}.dcm"
        ds = make_image(path, i, study=1)
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    config = tmp_path / "fastscp.yaml"
    config.write_text("query_retrieve:\n  max_find_matches: 3\n")
    loader = Server(tmp_path / "store", tmp_path / "load.log", [])
    try:
        assert [r[1] for r in run_storescu(loader, paths)] == ["Success"] * 5
    finally:
        assert loader.stop() == 0  # a clean stop writes every queued index row
    srv = Server(tmp_path / "store", tmp_path / "serve.log", ["--config", str(config)])
    try:
        ae = _ae((STUDY_FIND, [EXPLICIT]))
        assoc = ae.associate("127.0.0.1", srv.port, ae_title=srv.ae_title)
        assert assoc.is_established
        answers_to_the_caller(assoc)  # pynetdicom's reactor must not take a response
        try:
            query = Dataset()
            query.QueryRetrieveLevel = "IMAGE"
            query.StudyInstanceUID = study_uid
            query.SeriesInstanceUID = series_uid
            query.SOPInstanceUID = ""
            statuses = [int(s.Status) for s, _ in assoc.send_c_find(query, STUDY_FIND, msg_id=5)]
            assert statuses == [0xFF00] * 3 + [0xA700]
            studies = [int(s.Status) for s, _ in assoc.send_c_find(_study_query(""), STUDY_FIND, msg_id=6)]
            assert studies == [0xFF00, 0x0000]  # one study: under the limit
        finally:
            assoc.release()
        line = srv.log_once_it_says("C-FIND 5 (")
        assert sum("answered 0xa700" in ln for ln in line.splitlines() if "C-FIND 5 (" in ln) == 1
    finally:
        srv.stop()

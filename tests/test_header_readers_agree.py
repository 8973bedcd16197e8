"""One header reader for reception and reindex: storage/header.py
``parse_head`` on the bytes as they arrive, ``parse_file`` on a stored file,
and catalog/reconcile.py ``read_header`` (``parse_file`` plus the file's
path, size and mtime) must give the same InstanceInfo for the same file, or
an index rebuilt by ``fastscp reindex`` differs from the one written during
reception. Each field is also checked against pydicom's view of the file
(text as pydicom decodes it, multi-values joined by backslash), and the IS
numbers against what reception makes of values senders really write: "2.0",
padded, signed, several values, and ones that are not integers."""

from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path

import pydicom
import pytest
from conftest import dataset_bytes, make_image
from pydicom.multival import MultiValue
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

from fastscp.catalog.reconcile import read_header
from fastscp.instance import InstanceInfo
from fastscp.storage.header import parse_file, parse_head

# Filled by the receiver from the association and the file it wrote, not read from the header.
RECEPTION_ONLY = {"calling_ae", "called_ae", "peer", "association_id", "received_at", "dataset_size",
                  "file_size", "path", "content_hash", "duplicate", "header"}
HEADER_FIELDS = [f.name for f in dataclasses.fields(InstanceInfo) if f.name not in RECEPTION_ONLY]

# InstanceInfo field -> pydicom keyword, for the fields read as text (the IS numbers and US are checked apart)
TEXT_KEYWORDS = {
    "specific_character_set": "SpecificCharacterSet", "sop_class_uid": "SOPClassUID",
    "sop_instance_uid": "SOPInstanceUID", "study_date": "StudyDate", "study_time": "StudyTime",
    "accession_number": "AccessionNumber", "modality": "Modality", "manufacturer": "Manufacturer",
    "institution_name": "InstitutionName", "referring_physician": "ReferringPhysicianName",
    "station_name": "StationName", "study_description": "StudyDescription",
    "series_description": "SeriesDescription", "patient_name": "PatientName", "patient_id": "PatientID",
    "patient_birth_date": "PatientBirthDate", "patient_sex": "PatientSex",
    "body_part_examined": "BodyPartExamined", "echo_numbers": "EchoNumbers", "protocol_name": "ProtocolName",
    "study_instance_uid": "StudyInstanceUID", "series_instance_uid": "SeriesInstanceUID",
    "study_id": "StudyID", "requesting_physician": "RequestingPhysician",
}


def _pydicom_text(ds: pydicom.Dataset, keyword: str) -> str:
    value = ds.get(keyword)
    if value is None:
        return ""
    if isinstance(value, MultiValue):
        return "\\".join(str(v).strip() for v in value)
    return str(value).strip()


# (SeriesNumber, InstanceNumber, NumberOfFrames) as written, and what reception makes of them
IS_CASES = [
    (("2.0", "7", "1.0"), (2, 7, 1)),  # the newcomer's file: reconcile stored None for 2.0 and 1.0
    ((" 3", "+4 ", "12"), (3, 4, 12)),
    (("5\\6", "-1", "0"), (5, -1, 0)),  # several values: the first
    (("1_0", "2.5", ""), (None, None, None)),  # not integers (Python's int() would take 1_0)
]


def _write(path: Path, transfer_syntax: str, numbers: tuple[str, str, str]) -> None:
    ds = make_image(path, 1, study=1, modality="MR", size=8)
    ds.file_meta.TransferSyntaxUID = transfer_syntax
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.PatientName = "Müller^Jürgen"
    ds.PatientBirthDate, ds.PatientSex = "19700101", "M"
    ds.StudyTime, ds.AccessionNumber, ds.StudyDescription = "101010.5", "ACC1", "Kopf nativ"
    ds.ReferringPhysicianName, ds.RequestingPhysician = "Dr^Who", "Dr^Strange"
    ds.SeriesDescription, ds.BodyPartExamined, ds.ProtocolName = "t1 sag", "HEAD", "t1_se"
    ds.Manufacturer, ds.StationName, ds.InstitutionName = "ACME", "MR1", "Klinikum Süd"
    ds.EchoNumbers = "1\\2"
    ds.StudyID = "Stüdie 7"  # SH in the data set's character set (schema v4)
    with warnings.catch_warnings():  # pydicom warns about IS values that are not integers: that is the point
        warnings.simplefilter("ignore")
        ds.SeriesNumber, ds.InstanceNumber, ds.NumberOfFrames = numbers
        ds.save_as(path, enforce_file_format=True)


@pytest.mark.parametrize("numbers, expected", IS_CASES, ids=[",".join(c[0]) for c in IS_CASES])
@pytest.mark.parametrize("transfer_syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian,
                                             DeflatedExplicitVRLittleEndian], ids=["explicit", "implicit", "deflated"])
def test_reception_and_reconcile_read_a_file_alike(tmp_path: Path, transfer_syntax: str,
                                                   numbers: tuple[str, str, str],
                                                   expected: tuple[int | None, int | None, int | None]) -> None:
    path = tmp_path / "image.dcm"
    _write(path, transfer_syntax, numbers)
    received = parse_head(dataset_bytes(path), transfer_syntax, True)
    assert received is not None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        on_disk = parse_file(path)
        reindexed = read_header(str(path))
    assert (received.series_number, received.instance_number, received.number_of_frames) == expected
    assert received.study_id == "Stüdie 7"
    for name in HEADER_FIELDS:
        assert getattr(reindexed, name) == getattr(received, name), name
        assert getattr(on_disk, name) == getattr(received, name), name
    assert (reindexed.path, reindexed.file_size, reindexed.header) == (str(path), path.stat().st_size, None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        pydicom_view = {name: _pydicom_text(ds, keyword) for name, keyword in TEXT_KEYWORDS.items()}
    assert {name: getattr(received, name) for name in TEXT_KEYWORDS} == pydicom_view
    assert (received.rows, received.columns) == (ds.Rows, ds.Columns)
    assert received.transfer_syntax_uid == ds.file_meta.TransferSyntaxUID == transfer_syntax


def test_reindex_takes_the_sop_uids_from_the_file_meta_when_the_data_set_lacks_them(tmp_path: Path) -> None:
    path = tmp_path / "image.dcm"
    ds = make_image(path, 1, study=1, modality="MR", size=8)
    del ds.SOPInstanceUID, ds.SOPClassUID
    ds.save_as(path, enforce_file_format=True)
    info = read_header(str(path))
    assert (info.sop_class_uid, info.sop_instance_uid) == (
        ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID)
    assert info.sop_instance_uid


def test_reindex_refuses_a_file_without_any_sop_instance_uid(tmp_path: Path) -> None:
    path = tmp_path / "image.dcm"
    ds = make_image(path, 1, study=1, modality="MR", size=8)
    del ds.SOPInstanceUID
    del ds.file_meta.MediaStorageSOPInstanceUID
    ds.preamble = b"\0" * 128  # a Part-10 file, only without the UID
    ds.save_as(path, enforce_file_format=False)
    with pytest.raises(ValueError, match="no SOP Instance UID"):
        read_header(str(path))

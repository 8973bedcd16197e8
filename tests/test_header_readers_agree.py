"""The receiver's header reader (storage/header.py: ``parse_head`` on the
bytes as they arrive, ``parse_file`` on a stored file) and the one reconcile
and reindex use (catalog/reconcile.py ``read_header``, through pydicom) must
give the same InstanceInfo for the same file, or an index rebuilt by
``fastscp reindex`` differs from the one written during reception. Until
the two are one reader, this checks them against each other on files with
values senders really write: IS numbers as "2.0", padded, signed, several
values, and ones that are not integers."""

from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path

import pytest
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from conftest import dataset_bytes, make_image
from fastscp.catalog.reconcile import read_header
from fastscp.instance import InstanceInfo
from fastscp.storage.header import parse_file, parse_head

# Filled by the receiver from the association and the file it wrote, not read from the header.
RECEPTION_ONLY = {"calling_ae", "called_ae", "peer", "association_id", "received_at", "dataset_size",
                  "file_size", "path", "content_hash", "duplicate", "header"}
HEADER_FIELDS = [f.name for f in dataclasses.fields(InstanceInfo) if f.name not in RECEPTION_ONLY]

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

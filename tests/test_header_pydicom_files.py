"""parse_head against pydicom on every bundled pydicom test file.

The character set files (ISO_IR 100/192, ISO 2022 IR 87/149/58, ...) check
the decoding through Specific Character Set. For each file pydicom can read (force=True, as non-Part-10 files need it),
the dataset bytes after the file meta are parsed whole and as truncated
heads; every InstanceInfo field must equal what pydicom.dcmread decodes for
the same attribute, and a truncated head must either give the same answer
or say "not enough" (None) -- never a different answer.
"""

from __future__ import annotations

import os
import warnings
from functools import lru_cache
from typing import Any

import pydicom
import pytest
from pydicom.data import get_charset_files, get_palette_files, get_testdata_files
from pydicom.filereader import _read_file_meta_info, read_preamble
from pydicom.multival import MultiValue

from fastscp.storage.header import (
    MalformedDataset,
    info_from_dataset,
    parse_file,
    parse_head,
    read_file_meta,
)

# InstanceInfo field -> (pydicom keyword, how the field is derived)
FIELDS: dict[str, tuple[str, str]] = {
    "specific_character_set": ("SpecificCharacterSet", "text"),
    "sop_class_uid": ("SOPClassUID", "text"),
    "sop_instance_uid": ("SOPInstanceUID", "text"),
    "study_date": ("StudyDate", "text"),
    "study_time": ("StudyTime", "text"),
    "accession_number": ("AccessionNumber", "text"),
    "modality": ("Modality", "text"),
    "manufacturer": ("Manufacturer", "text"),
    "institution_name": ("InstitutionName", "text"),
    "referring_physician": ("ReferringPhysicianName", "text"),
    "station_name": ("StationName", "text"),
    "study_description": ("StudyDescription", "text"),
    "series_description": ("SeriesDescription", "text"),
    "patient_name": ("PatientName", "text"),
    "patient_id": ("PatientID", "text"),
    "patient_birth_date": ("PatientBirthDate", "text"),
    "patient_sex": ("PatientSex", "text"),
    "body_part_examined": ("BodyPartExamined", "text"),
    "echo_numbers": ("EchoNumbers", "text"),
    "protocol_name": ("ProtocolName", "text"),
    "study_instance_uid": ("StudyInstanceUID", "text"),
    "series_instance_uid": ("SeriesInstanceUID", "text"),
    "series_number": ("SeriesNumber", "int"),
    "instance_number": ("InstanceNumber", "int"),
    "number_of_frames": ("NumberOfFrames", "int"),
    "rows": ("Rows", "int"),
    "columns": ("Columns", "int"),
    "requesting_physician": ("RequestingPhysician", "text"),
}

# Files pydicom "reads" only because force=True accepts anything, whose first
# element's length runs past the end of the file: the scanner rightly calls
# them malformed. Anything else that the scanner rejects is a test failure.
NOT_DICOM = {"crayons.icc": "ICC profile; first 'element' length exceeds the file"}

HEAD_SIZES = (0, 1, 7, 8, 64, 300, 1024, 4096, 16384)


def _expected_text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, MultiValue):
        return "\\".join(str(v).strip(" \0") for v in value)
    return str(value).strip(" \0")


def _expected_int(value: Any) -> int | None:
    if isinstance(value, MultiValue):
        value = value[0] if len(value) else None
    if value is None or value == "":
        return None
    number = float(value)
    return int(number) if number.is_integer() else None


def _all_files() -> list[str]:
    """pydicom's bundled test, character set and palette files (not directories)."""
    files = get_testdata_files() + get_charset_files() + get_palette_files()
    return sorted({f for f in files if os.path.isfile(f)})


@lru_cache(maxsize=None)
def _reference(path: str) -> tuple[dict[str, Any], bytes, str] | None:
    """(expected fields, dataset bytes, transfer syntax) or None if pydicom cannot read it."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            ds = pydicom.dcmread(path, force=True, stop_before_pixels=True)
            expected = {
                field: (_expected_int if kind == "int" else _expected_text)(ds.get(keyword))
                for field, (keyword, kind) in FIELDS.items()
            }
        except Exception:
            return None
        with open(path, "rb") as fp:
            read_preamble(fp, True)
            meta = _read_file_meta_info(fp)
            data = fp.read()
    uid = meta.get("TransferSyntaxUID")
    if uid is None:  # no file meta: the encoding pydicom settled on
        implicit, little = ds.original_encoding
        uid = "1.2.840.10008.1.2" if implicit else ("1.2.840.10008.1.2.1" if little else "1.2.840.10008.1.2.2")
    return expected, data, str(uid)


def _fields(info: Any) -> dict[str, Any]:
    return {field: getattr(info, field) for field in FIELDS}


@pytest.mark.parametrize("path", _all_files(), ids=os.path.basename)
def test_matches_pydicom(path: str) -> None:
    reference = _reference(path)
    if reference is None:
        pytest.skip("pydicom cannot read this file")
    expected, data, uid = reference
    name = os.path.basename(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom's charset warnings on odd files
        if name in NOT_DICOM:
            with pytest.raises(MalformedDataset):
                parse_head(data, uid, complete=True)
            return
        info = parse_head(data, uid, complete=True)
        assert info is not None
        assert _fields(info) == expected
        assert info.transfer_syntax_uid == uid
        assert info.header is None  # the default path builds no Dataset

        for size in HEAD_SIZES:
            if size >= len(data):
                continue
            partial = parse_head(data[:size], uid, complete=False)
            if partial is not None:
                assert _fields(partial) == expected, f"head of {size} bytes"
        # a memoryview slice works the same as bytes
        view_info = parse_head(memoryview(data)[: min(len(data), 16384)], uid, len(data) <= 16384)
        if view_info is not None:
            assert _fields(view_info) == expected


@pytest.mark.parametrize("path", _all_files(), ids=os.path.basename)
def test_parse_file_and_file_meta(path: str) -> None:
    reference = _reference(path)
    if reference is None or os.path.basename(path) in NOT_DICOM:
        pytest.skip("pydicom cannot read this file")
    expected, data, uid = reference
    with open(path, "rb") as fp:
        raw = fp.read()
    offset = len(raw) - len(data)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        info = parse_file(path, offset, uid)
        assert _fields(info) == expected
        if raw[128:132] == b"DICM" and offset > 132:
            meta_offset, meta_uid = read_file_meta(raw)
            assert meta_offset == offset
            if meta_uid:
                assert meta_uid == uid.rstrip("\0 ")
                # reading the meta itself, parse_file takes the SOP UIDs from it when the data set lacks them
                with open(path, "rb") as fp:
                    read_preamble(fp, False)
                    meta = _read_file_meta_info(fp)
                from_meta = dict(expected)
                for name, keyword in (("sop_class_uid", "MediaStorageSOPClassUID"),
                                      ("sop_instance_uid", "MediaStorageSOPInstanceUID")):
                    if not from_meta[name]:
                        from_meta[name] = str(meta.get(keyword, "")).strip("\0 ")
                assert _fields(parse_file(path)) == from_meta
        # the pydicom fallback decodes the same fields the same way
        ds = pydicom.dcmread(path, force=True, stop_before_pixels=True)
        assert _fields(info_from_dataset(ds, uid)) == expected


def test_corpus_coverage() -> None:
    """Most of the corpus is really checked, across all transfer syntaxes."""
    files = _all_files()
    readable = [f for f in files if _reference(f) is not None]
    syntaxes = {ref[2] for f in readable if (ref := _reference(f)) is not None}
    skipped = len(files) - len(readable)
    print(f"\n{len(files)} files, {len(readable)} checked against pydicom, {skipped} skipped")
    assert len(readable) >= 150
    assert skipped <= 10
    for uid in ("1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2", "1.2.840.10008.1.2.1.99"):
        assert uid in syntaxes

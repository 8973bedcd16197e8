"""Header-only parse of a received dataset into an InstanceInfo.

Works on the head bytes the writer kept (the first KiB of the dataset, in
the negotiated transfer syntax), stopping before pixel data. Returns None
when the head ends before the attributes we need; the caller then parses
the file on disk (``parse_file``).
"""

from __future__ import annotations

import io
import zlib
from typing import Any

import pydicom
import pydicom.config
from pydicom.filereader import read_dataset

from ..instance import InstanceInfo

# A receiver stores what it is sent: invalid values are the sender's business,
# and pydicom's per-value validation warnings would cost time on every instance.
pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE

DEFLATED = "1.2.840.10008.1.2.1.99"
IMPLICIT_LE = "1.2.840.10008.1.2"
EXPLICIT_BE = "1.2.840.10008.1.2.2"
_LAST_NEEDED = 0x00321032  # RequestingPhysician, the highest tag we read


class _StopBeforePixels:
    """stop_when callback that remembers whether it fired."""

    __slots__ = ("fired",)

    def __init__(self) -> None:
        self.fired = False

    def __call__(self, tag: Any, vr: Any, length: int) -> bool:
        if int(tag) >= 0x7FE00008:
            self.fired = True
        return self.fired


def _to_int(value: Any) -> int | None:
    try:
        return int(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


def _text(ds: Any, keyword: str) -> str:
    value = ds.get(keyword, "")
    if value is None:
        return ""
    if isinstance(value, pydicom.multival.MultiValue):
        return "\\".join(str(v) for v in value)
    return str(value).strip()


def info_from_dataset(ds: Any, transfer_syntax_uid: str) -> InstanceInfo:
    return InstanceInfo(
        sop_class_uid=_text(ds, "SOPClassUID"),
        sop_instance_uid=_text(ds, "SOPInstanceUID"),
        transfer_syntax_uid=transfer_syntax_uid,
        patient_id=_text(ds, "PatientID"),
        patient_name=_text(ds, "PatientName"),
        patient_birth_date=_text(ds, "PatientBirthDate"),
        patient_sex=_text(ds, "PatientSex"),
        study_instance_uid=_text(ds, "StudyInstanceUID"),
        study_date=_text(ds, "StudyDate"),
        study_time=_text(ds, "StudyTime"),
        accession_number=_text(ds, "AccessionNumber"),
        study_description=_text(ds, "StudyDescription"),
        referring_physician=_text(ds, "ReferringPhysicianName"),
        requesting_physician=_text(ds, "RequestingPhysician"),
        series_instance_uid=_text(ds, "SeriesInstanceUID"),
        modality=_text(ds, "Modality"),
        series_number=_to_int(ds.get("SeriesNumber")),
        series_description=_text(ds, "SeriesDescription"),
        body_part_examined=_text(ds, "BodyPartExamined"),
        protocol_name=_text(ds, "ProtocolName"),
        manufacturer=_text(ds, "Manufacturer"),
        station_name=_text(ds, "StationName"),
        institution_name=_text(ds, "InstitutionName"),
        instance_number=_to_int(ds.get("InstanceNumber")),
        echo_numbers=_text(ds, "EchoNumbers"),
        rows=_to_int(ds.get("Rows")),
        columns=_to_int(ds.get("Columns")),
        number_of_frames=_to_int(ds.get("NumberOfFrames")),
        specific_character_set=_text(ds, "SpecificCharacterSet"),
        header=ds,
    )


def _read(stream: io.BufferedIOBase | io.BytesIO, transfer_syntax_uid: str, stop: _StopBeforePixels | None = None) -> Any:
    return read_dataset(
        stream,
        is_implicit_VR=transfer_syntax_uid == IMPLICIT_LE,
        is_little_endian=transfer_syntax_uid != EXPLICIT_BE,
        stop_when=stop or _StopBeforePixels(),
    )


def parse_head(head: bytes, transfer_syntax_uid: str, complete: bool) -> InstanceInfo | None:
    """InstanceInfo from the head bytes; None if the head was not enough."""
    if transfer_syntax_uid == DEFLATED:
        head = zlib.decompressobj(-zlib.MAX_WBITS).decompress(head)
    stop = _StopBeforePixels()
    try:
        ds = _read(io.BytesIO(head), transfer_syntax_uid, stop)
        tags = list(ds.keys())
    except Exception:
        if complete:
            raise
        return None
    if not complete and not stop.fired and (not tags or int(tags[-1]) <= _LAST_NEEDED):
        # the head may have ended inside the attributes we need
        return None
    return info_from_dataset(ds, transfer_syntax_uid)


def parse_file(path: str, dataset_offset: int, transfer_syntax_uid: str) -> InstanceInfo:
    """InstanceInfo from a stored (or temp) Part-10 file."""
    with open(path, "rb") as fh:
        fh.seek(dataset_offset)
        if transfer_syntax_uid == DEFLATED:
            data = zlib.decompressobj(-zlib.MAX_WBITS).decompress(fh.read())
            return info_from_dataset(_read(io.BytesIO(data), transfer_syntax_uid), transfer_syntax_uid)
        return info_from_dataset(_read(fh, transfer_syntax_uid), transfer_syntax_uid)

"""InstanceInfo: what the receiver learned about one stored instance.

Produced once per C-STORE by the header-only parse (storage/header.py) plus what
the association knows (AE titles, peer, transfer syntax); consumed by naming
(storage/naming.py), the catalog (catalog/), monitoring and hooks. It is a leaf
module: every layer may import it, it imports nothing of the project.

Text values are decoded with the dataset's Specific Character Set and stripped;
an absent or empty attribute is "" (text) or None (numbers). Person names are
kept in DICOM form ("Family^Given").

It is frozen: a value handed on is never changed afterwards. Each step of the
C-STORE path makes a new one instead: the header parse (``from_fields``), the
reception facts (``received``), the placement (``placed``). Those three are
the hot path's constructors and fill the instance's ``__dict__`` in one
update each (about 1 us for the 42 fields); the dataclass ``__init__`` of a
frozen class sets each field through ``object.__setattr__`` (about 4 us, and
``dataclasses.replace`` about 9 us), which the per-instance budget (about
70 us in bench/bench_hotpath.py) cannot spare. That is also why it has no
``__slots__``. ``dataclasses.replace`` works as usual elsewhere.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pydicom import Dataset


@dataclasses.dataclass(frozen=True)
class InstanceInfo:
    # Instance identity (from the command set, checked against the dataset)
    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax_uid: str

    # Patient
    patient_id: str = ""
    patient_name: str = ""
    patient_birth_date: str = ""
    patient_sex: str = ""

    # Study
    study_instance_uid: str = ""
    study_date: str = ""  # DICOM DA, "YYYYMMDD" or ""
    study_time: str = ""
    accession_number: str = ""
    study_id: str = ""  # (0020,0010), SH: a Required key of C-FIND's STUDY level
    study_description: str = ""
    referring_physician: str = ""  # (0008,0090)
    requesting_physician: str = ""  # (0032,1032)

    # Series
    series_instance_uid: str = ""
    modality: str = ""
    series_number: int | None = None
    series_description: str = ""
    body_part_examined: str = ""
    protocol_name: str = ""
    manufacturer: str = ""
    station_name: str = ""
    institution_name: str = ""

    # Instance
    instance_number: int | None = None
    echo_numbers: str = ""  # (0018,0086), IS, may be multi-valued ("1\\2")
    rows: int | None = None
    columns: int | None = None
    number_of_frames: int | None = None
    specific_character_set: str = ""

    # Reception (filled by the receiver, not the header)
    calling_ae: str = ""
    called_ae: str = ""
    peer: str = ""  # "ip:port"
    association_id: str = ""
    received_at: float = 0.0  # time.time() when the last fragment arrived
    dataset_size: int = 0  # bytes of the dataset as received (without file meta)
    file_size: int = 0  # bytes of the Part-10 file
    path: str = ""  # final path of the stored file (absolute)
    content_hash: str = ""  # hex digest of the dataset bytes, "" if not computed
    duplicate: str = ""  # "" (new), or the duplicate outcome ("ignored", "overwritten", ...)

    # The parsed header (pydicom Dataset, stopped before pixel data) for
    # consumers that need attributes beyond the fields above (template naming).
    # Values are decoded lazily by pydicom; None when not available.
    header: Dataset | None = dataclasses.field(default=None, repr=False, compare=False)

    @classmethod
    def from_fields(cls, fields: Mapping[str, object]) -> InstanceInfo:
        """The instance with ``fields`` (by field name; the three UIDs are
        required) and every other field at its default: the header parser's
        constructor. The names are not checked here (the parser's are, once,
        by ``check_field_names``)."""
        info = object.__new__(cls)
        values = info.__dict__
        values.update(_DEFAULTS)
        values.update(fields)
        return info

    @staticmethod
    def check_field_names(names: Iterable[str]) -> None:
        """Raise TypeError unless ``names`` are fields that, with the three
        UIDs, make a whole ``from_fields`` argument."""
        given = set(names) | _REQUIRED
        if not given <= _FIELDS:
            raise TypeError(f"not InstanceInfo fields: {sorted(given - _FIELDS)}")

    def received(self, *, sop_class_uid: str, calling_ae: str, called_ae: str, peer: str, association_id: str,
                 received_at: float, dataset_size: int, file_size: int, content_hash: str,
                 header: Dataset | None) -> InstanceInfo:
        """This instance with the reception facts (the SOP Class UID is the command's)."""
        info = object.__new__(type(self))
        values = info.__dict__
        values.update(self.__dict__)
        values["sop_class_uid"] = sop_class_uid
        values["calling_ae"] = calling_ae
        values["called_ae"] = called_ae
        values["peer"] = peer
        values["association_id"] = association_id
        values["received_at"] = received_at
        values["dataset_size"] = dataset_size
        values["file_size"] = file_size
        values["content_hash"] = content_hash
        values["header"] = header
        return info

    def placed(self, path: str, duplicate: str) -> InstanceInfo:
        """This instance with where it is stored and the duplicate outcome."""
        info = object.__new__(type(self))
        values = info.__dict__
        values.update(self.__dict__)
        values["path"] = path
        values["duplicate"] = duplicate
        return info


_DEFAULTS: dict[str, object] = {f.name: f.default for f in dataclasses.fields(InstanceInfo)
                                if f.default is not dataclasses.MISSING}
_FIELDS = frozenset(f.name for f in dataclasses.fields(InstanceInfo))
_REQUIRED = _FIELDS - _DEFAULTS.keys()

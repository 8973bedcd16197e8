"""InstanceInfo: what the receiver learned about one stored instance.

Produced once per C-STORE by the header-only parse (storage/header.py) plus what
the association knows (AE titles, peer, transfer syntax); consumed by naming
(storage/naming.py), the catalog (catalog/), monitoring and hooks. It is a leaf
module: every layer may import it, it imports nothing of the project.

Text values are decoded with the dataset's Specific Character Set and stripped;
an absent or empty attribute is "" (text) or None (numbers). Person names are
kept in DICOM form ("Family^Given").
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pydicom import Dataset


@dataclasses.dataclass(slots=True)
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

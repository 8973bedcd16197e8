"""The Query/Retrieve information models as data: levels, SOP classes, keys.

PS3.4 C.6.1 (Patient Root: PATIENT, STUDY, SERIES, IMAGE) and C.6.2 (Study
Root: STUDY, SERIES, IMAGE, where the patient's attributes are keys of the
STUDY level). Each ``Key`` names the DICOM attribute, the catalog column it
matches against (an SQL expression over the aliases the level's query uses:
``p`` patients, ``st`` studies, ``se`` series, ``i`` instances), the entity
it belongs to, how values are matched (``Match``), and its type in the
tables (Unique, Required, Optional). Derived keys (the counts of PS3.4 C.3.4
Table C.3-1, Modalities/SOP Classes in Study) have no column: ``find.py``
computes them.

Nothing here touches the database or pydicom Datasets, so a DICOMweb QIDO-RS
front end (PS3.18 10.6) can map its query parameters onto the same keys.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Level(enum.IntEnum):
    """Query/Retrieve Level (0008,0052) values, top to bottom."""

    PATIENT = 0
    STUDY = 1
    SERIES = 2
    IMAGE = 3

    @classmethod
    def parse(cls, text: str) -> Level | None:
        return cls.__members__.get(text.strip(" \0").upper())


class KeyType(enum.Enum):
    """Key types of PS3.4 C.6.1.1 and C.6.2.1 tables."""

    UNIQUE = "U"
    REQUIRED = "R"
    OPTIONAL = "O"


class Match(enum.Enum):
    """How a key's value is matched (PS3.4 C.2.2.2), by the attribute's VR."""

    TEXT = "text"  # CS, SH, LO, AE: single value, wildcard, list (each value)
    NAME = "name"  # PN: like TEXT, case-insensitive (the SCP's choice, C.2.2.2.1)
    UID = "uid"  # UI: single value or list of UIDs (C.2.2.2.2); no wildcards
    DATE = "date"  # DA: single value or range (C.2.2.2.5)
    TIME = "time"  # TM: single value or range
    DATETIME = "datetime"  # DT: single value or range
    INTEGER = "integer"  # IS/US held as INTEGER: single value or list
    DERIVED = "derived"  # computed by find.py; not matched (ModalitiesInStudy is, see below)
    MODALITIES = "modalities"  # ModalitiesInStudy: any listed modality among the study's series


class InformationModel(enum.Enum):
    """The two models fastscp serves, with their SOP Class UIDs (PS3.4 C.6)."""

    PATIENT_ROOT = "patient"
    STUDY_ROOT = "study"

    @property
    def find_uid(self) -> str:
        return _UIDS[self][0]

    @property
    def move_uid(self) -> str:
        return _UIDS[self][1]

    @property
    def get_uid(self) -> str:
        return _UIDS[self][2]

    @property
    def levels(self) -> tuple[Level, ...]:
        if self is InformationModel.PATIENT_ROOT:
            return (Level.PATIENT, Level.STUDY, Level.SERIES, Level.IMAGE)
        return (Level.STUDY, Level.SERIES, Level.IMAGE)

    def key_level(self, key: Key) -> Level:
        """The level a key belongs to in this model: patient attributes are
        STUDY level keys in the Study Root model (C.6.2.1.2)."""
        if self is InformationModel.STUDY_ROOT and key.entity is Level.PATIENT:
            return Level.STUDY
        return key.entity

    def key_type(self, key: Key) -> KeyType:
        if self is InformationModel.STUDY_ROOT and key.keyword == "PatientID":
            return KeyType.REQUIRED  # Table C.6-5: Required, not Unique, in Study Root
        return key.type

    @classmethod
    def for_sop_class(cls, uid: str) -> InformationModel | None:
        for model, uids in _UIDS.items():
            if uid in uids:
                return model
        return None


_UIDS: dict[InformationModel, tuple[str, str, str]] = {
    InformationModel.PATIENT_ROOT: (
        "1.2.840.10008.5.1.4.1.2.1.1", "1.2.840.10008.5.1.4.1.2.1.2", "1.2.840.10008.5.1.4.1.2.1.3"),
    InformationModel.STUDY_ROOT: (
        "1.2.840.10008.5.1.4.1.2.2.1", "1.2.840.10008.5.1.4.1.2.2.2", "1.2.840.10008.5.1.4.1.2.2.3"),
}


@dataclass(frozen=True, slots=True)
class Key:
    """One matching/return key the index can answer."""

    keyword: str
    tag: int
    vr: str
    entity: Level  # the entity the attribute describes (patient attributes: PATIENT)
    match: Match
    column: str  # SQL expression over the level's aliases; "" for derived keys
    type: KeyType = KeyType.OPTIONAL


_P, _ST, _SE, _I = Level.PATIENT, Level.STUDY, Level.SERIES, Level.IMAGE
_U, _R = KeyType.UNIQUE, KeyType.REQUIRED

KEYS: tuple[Key, ...] = (
    # Patient (C.6.1.1.2 Table C.6-1; STUDY level of Study Root, Table C.6-5)
    Key("PatientName", 0x00100010, "PN", _P, Match.NAME, "p.patient_name", _R),
    Key("PatientID", 0x00100020, "LO", _P, Match.TEXT, "p.patient_id", _U),
    Key("PatientBirthDate", 0x00100030, "DA", _P, Match.DATE, "p.birth_date"),
    Key("PatientSex", 0x00100040, "CS", _P, Match.TEXT, "p.sex"),
    Key("NumberOfPatientRelatedStudies", 0x00201200, "IS", _P, Match.DERIVED, ""),
    Key("NumberOfPatientRelatedSeries", 0x00201202, "IS", _P, Match.DERIVED, ""),
    Key("NumberOfPatientRelatedInstances", 0x00201204, "IS", _P, Match.DERIVED, ""),
    # Study (C.6.1.1.3 Table C.6-2, C.6.2.1.2 Table C.6-5)
    Key("StudyDate", 0x00080020, "DA", _ST, Match.DATE, "st.study_date", _R),
    Key("StudyTime", 0x00080030, "TM", _ST, Match.TIME, "st.study_time", _R),
    Key("AccessionNumber", 0x00080050, "SH", _ST, Match.TEXT, "st.accession_number", _R),
    Key("StudyID", 0x00200010, "SH", _ST, Match.TEXT, "st.study_id", _R),
    Key("StudyInstanceUID", 0x0020000D, "UI", _ST, Match.UID, "st.study_instance_uid", _U),
    Key("ReferringPhysicianName", 0x00080090, "PN", _ST, Match.NAME, "st.referring_physician"),
    Key("StudyDescription", 0x00081030, "LO", _ST, Match.TEXT, "st.study_description"),
    Key("RequestingPhysician", 0x00321032, "PN", _ST, Match.NAME, "st.requesting_physician"),
    Key("ModalitiesInStudy", 0x00080061, "CS", _ST, Match.MODALITIES, ""),
    Key("SOPClassesInStudy", 0x00080062, "UI", _ST, Match.DERIVED, ""),
    Key("NumberOfStudyRelatedSeries", 0x00201206, "IS", _ST, Match.DERIVED, ""),
    Key("NumberOfStudyRelatedInstances", 0x00201208, "IS", _ST, Match.DERIVED, ""),
    # Series (C.6.1.1.4 Table C.6-3)
    Key("Modality", 0x00080060, "CS", _SE, Match.TEXT, "se.modality", _R),
    Key("SeriesNumber", 0x00200011, "IS", _SE, Match.INTEGER, "se.series_number", _R),
    Key("SeriesInstanceUID", 0x0020000E, "UI", _SE, Match.UID, "se.series_instance_uid", _U),
    Key("SeriesDescription", 0x0008103E, "LO", _SE, Match.TEXT, "se.series_description"),
    Key("BodyPartExamined", 0x00180015, "CS", _SE, Match.TEXT, "se.body_part_examined"),
    Key("ProtocolName", 0x00181030, "LO", _SE, Match.TEXT, "se.protocol_name"),
    Key("Manufacturer", 0x00080070, "LO", _SE, Match.TEXT, "se.manufacturer"),
    Key("StationName", 0x00081010, "SH", _SE, Match.TEXT, "se.station_name"),
    Key("InstitutionName", 0x00080080, "LO", _SE, Match.TEXT, "se.institution_name"),
    Key("NumberOfSeriesRelatedInstances", 0x00201209, "IS", _SE, Match.DERIVED, ""),
    # Composite object instance (C.6.1.1.5 Table C.6-4)
    Key("InstanceNumber", 0x00200013, "IS", _I, Match.INTEGER, "i.instance_number", _R),
    Key("SOPInstanceUID", 0x00080018, "UI", _I, Match.UID, "i.sop_instance_uid", _U),
    Key("SOPClassUID", 0x00080016, "UI", _I, Match.UID, "i.sop_class_uid"),
    Key("Rows", 0x00280010, "US", _I, Match.INTEGER, 'i."rows"'),
    Key("Columns", 0x00280011, "US", _I, Match.INTEGER, 'i."columns"'),
    Key("NumberOfFrames", 0x00280008, "IS", _I, Match.INTEGER, "i.number_of_frames"),
)

KEYS_BY_TAG: dict[int, Key] = {key.tag: key for key in KEYS}
KEYS_BY_KEYWORD: dict[str, Key] = {key.keyword: key for key in KEYS}

# Attributes of the identifier that are not keys of any level.
SPECIFIC_CHARACTER_SET = 0x00080005
QUERY_RETRIEVE_LEVEL = 0x00080052
RETRIEVE_AE_TITLE = 0x00080054
INSTANCE_AVAILABILITY = 0x00080056
TIMEZONE_OFFSET = 0x00080201

# The unique key of each level (C.6.1.1, C.6.2.1).
UNIQUE_KEY: dict[Level, Key] = {
    Level.PATIENT: KEYS_BY_KEYWORD["PatientID"],
    Level.STUDY: KEYS_BY_KEYWORD["StudyInstanceUID"],
    Level.SERIES: KEYS_BY_KEYWORD["SeriesInstanceUID"],
    Level.IMAGE: KEYS_BY_KEYWORD["SOPInstanceUID"],
}

"""Exact paths from each naming scheme on a synthetic corpus with known attributes."""

from __future__ import annotations

import time
from pathlib import PurePosixPath

import pydicom
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydicom.charset import decode_element
from pydicom.dataelem import DataElement

from fastscp.instance import InstanceInfo
from fastscp.storage.naming import (
    DateBasedNaming,
    FlatNaming,
    HierarchicalNaming,
    NAMING_SCHEMES,
    PhysicianNaming,
    TemplateNaming,
    make_naming,
)

CT = "1.2.840.10008.5.1.4.1.1.2"
EXPLICIT_LE = "1.2.840.10008.1.2.1"


def make_info(**fields: object) -> InstanceInfo:
    base: dict[str, object] = dict(
        sop_class_uid=CT,
        sop_instance_uid="1.2.826.0.1.3680043.8.498.1001",
        transfer_syntax_uid=EXPLICIT_LE,
        patient_id="PAT-0042",
        patient_name="DOE^JOHN^^^",
        study_instance_uid="1.2.826.0.1.3680043.8.498.1",
        study_date="20240315",
        accession_number="ACC77",
        series_instance_uid="1.2.826.0.1.3680043.8.498.1.3",
        modality="CT",
        series_number=3,
        series_description="Chest 1.0 B70f",
        instance_number=12,
        received_at=time.mktime((2025, 1, 2, 12, 0, 0, 0, 0, -1)),
    )
    base.update(fields)
    return InstanceInfo(**base)  # type: ignore[arg-type]


# -- hierarchical -----------------------------------------------------------

def test_hierarchical_full_attributes():
    assert HierarchicalNaming().relative_path(make_info()) == PurePosixPath(
        "PAT-0042_DOE_JOHN/20240315_ACC77/3_CT_Chest 1.0 B70f/12_1.2.826.0.1.3680043.8.498.1001.dcm"
    )


def test_hierarchical_falls_back_to_study_uid_and_drops_optional_parts():
    info = make_info(
        patient_name="", accession_number="", modality="", series_description="", instance_number=None
    )
    assert HierarchicalNaming().relative_path(info) == PurePosixPath(
        "PAT-0042/20240315_1.2.826.0.1.3680043.8.498.1/3/1.2.826.0.1.3680043.8.498.1001.dcm"
    )


def test_hierarchical_missing_required_values_are_unknown():
    info = make_info(patient_id="", study_date="", series_number=None)
    assert HierarchicalNaming().relative_path(info).parts[:3] == (
        "UNKNOWN_DOE_JOHN",
        "UNKNOWN_ACC77",
        "UNKNOWN_CT_Chest 1.0 B70f",
    )


# -- flat -----------------------------------------------------------------------

def test_flat():
    assert FlatNaming().relative_path(make_info()) == PurePosixPath("1.2.826.0.1.3680043.8.498.1001.dcm")


# -- date-based -----------------------------------------------------------------

def test_date_based_uses_study_date():
    assert DateBasedNaming().relative_path(make_info()) == PurePosixPath(
        "2024/03/15/1.2.826.0.1.3680043.8.498.1/1.2.826.0.1.3680043.8.498.1.3/1.2.826.0.1.3680043.8.498.1001.dcm"
    )


def test_date_based_accepts_legacy_date_form():
    assert DateBasedNaming().relative_path(make_info(study_date="1999.12.31")).parts[:3] == ("1999", "12", "31")


@pytest.mark.parametrize("bad", ["", "2024", "20241345", "2024-03-15", "abcdefgh"])
def test_date_based_falls_back_to_received_date(bad: str):
    info = make_info(study_date=bad)
    expected = time.strftime("%Y/%m/%d", time.localtime(info.received_at)).split("/")
    assert list(DateBasedNaming().relative_path(info).parts[:3]) == expected == ["2025", "01", "02"]


def test_date_based_utc_option():
    info = make_info(study_date="", received_at=86400 * 365.0)  # 1971-01-01T00:00Z
    assert DateBasedNaming(utc=True).relative_path(info).parts[:3] == ("1971", "01", "01")


# -- template -------------------------------------------------------------------

def test_template_issue_example():
    scheme = TemplateNaming("{PatientID}/{StudyDate:%Y/%m}/{StudyInstanceUID}/{SOPInstanceUID}.dcm")
    assert scheme.relative_path(make_info()) == PurePosixPath(
        "PAT-0042/2024/03/1.2.826.0.1.3680043.8.498.1/1.2.826.0.1.3680043.8.498.1001.dcm"
    )


def test_template_tags_are_the_same_as_keywords():
    by_tag = TemplateNaming("{00100020}/{0020000D}/{0020000E}/{00080018}.dcm")
    by_keyword = TemplateNaming("{PatientID}/{StudyInstanceUID}/{SeriesInstanceUID}/{SOPInstanceUID}.dcm")
    info = make_info()
    assert by_tag.relative_path(info) == by_keyword.relative_path(info)
    assert by_tag.relative_path(info).parts[0] == "PAT-0042"


def test_template_padding_slicing_case_hash_and_fallback():
    scheme = TemplateNaming(
        "{PatientName[0]|lower}/{PatientName[:3]}{{x}}/{AccessionNumber,StudyInstanceUID}/"
        "{SeriesNumber:03}-{InstanceNumber:06}-{SOPInstanceUID|hash[:8]}.dcm"
    )
    info = make_info()
    import hashlib

    digest = hashlib.blake2b(info.sop_instance_uid.encode(), digest_size=8).hexdigest()
    assert scheme.relative_path(info) == PurePosixPath(f"d/DOE{{x}}/ACC77/003-000012-{digest[:8]}.dcm")
    no_accession = scheme.relative_path(make_info(accession_number=""))
    assert no_accession.parts[2] == "1.2.826.0.1.3680043.8.498.1"


def test_template_values_from_header_and_multivalue_first():
    header = pydicom.Dataset()
    header.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    header.InstitutionAddress = "../../etc/passwd"
    header.add_new(0x00291010, "LO", "private/value")
    info = make_info(header=header)
    scheme = TemplateNaming("{ImageType}/{ImageType|first}/{InstitutionAddress}/{00291010}/{OperatorsName}/x.dcm")
    assert scheme.relative_path(info) == PurePosixPath(
        "ORIGINAL_PRIMARY_AXIAL/ORIGINAL/_.._etc_passwd/private_value/UNKNOWN/x.dcm"
    )
    # no header at all: values are simply absent
    assert TemplateNaming("{ImageType}/x.dcm").relative_path(make_info()) == PurePosixPath("UNKNOWN/x.dcm")


def test_template_date_and_time_formats_keep_depth_when_absent():
    scheme = TemplateNaming("{StudyDate:%Y/%m/%d}/{StudyTime:%Hh%M}/{SOPInstanceUID}.dcm")
    info = make_info(study_time="093015.123")
    assert scheme.relative_path(info).parts[:4] == ("2024", "03", "15", "09h30")
    absent = scheme.relative_path(make_info(study_date="", study_time="garbage"))
    assert absent.parts[:4] == ("UNKNOWN", "UNKNOWN", "UNKNOWN", "UNKNOWNhUNKNOWN")


def test_template_reception_fields():
    info = make_info(calling_ae="MODALITY1", called_ae="FASTSCP")
    scheme = TemplateNaming("{CallingAE}/{CalledAE}/{ReceivedDate:%Y-%m}/{SOPInstanceUID}.dcm")
    assert scheme.relative_path(info).parts[:3] == ("MODALITY1", "FASTSCP", "2025-01")


@pytest.mark.parametrize(
    "pattern, message",
    [
        ("", "empty"),
        ("{NoSuchKeyword}/x", "unknown DICOM keyword"),
        ("{PatientID", "unclosed"),
        ("a}b", "single }"),
        ("{PatientID|shout}", "unknown operation"),
        ("{PatientID:5}", "bad format spec"),
        ("{PatientID[a:b]}", "bad slice"),
        ("/abs/{PatientID}", "relative"),
        ("a//{PatientID}", "relative"),
        ("../{PatientID}", "relative"),
        ("{PatientID}/", "relative"),
        ("{}", "must start with"),
    ],
)
def test_template_errors_at_compile_time(pattern: str, message: str):
    with pytest.raises(ValueError, match=message):
        TemplateNaming(pattern)


# -- factory --------------------------------------------------------------------

def test_make_naming_knows_exactly_the_five_names(tmp_path):
    assert set(NAMING_SCHEMES) == {"hierarchical", "flat", "date-based", "physician", "template"}
    assert isinstance(make_naming("hierarchical"), HierarchicalNaming)
    assert isinstance(make_naming("flat"), FlatNaming)
    assert isinstance(make_naming("date-based", utc=True), DateBasedNaming)
    assert isinstance(make_naming("physician", accounts_root=tmp_path), PhysicianNaming)
    scheme = make_naming("template", pattern="{SOPInstanceUID}.dcm")
    assert scheme.relative_path(make_info()) == PurePosixPath("1.2.826.0.1.3680043.8.498.1001.dcm")


@pytest.mark.parametrize("name", ["Hierarchical", "date_based", "dicomdir", ""])
def test_make_naming_rejects_other_names_listing_valid_ones(name: str):
    with pytest.raises(ValueError, match="hierarchical, flat, date-based, physician, template"):
        make_naming(name)


def test_make_naming_rejects_unknown_options():
    with pytest.raises(ValueError, match="accepts: utc"):
        make_naming("date-based", pattern="x")
    with pytest.raises(ValueError, match="template"):
        make_naming("template")  # pattern is required
    with pytest.raises(ValueError, match="accounts_root"):
        make_naming("physician")


# -- character sets ---------------------------------------------------------------

def _decoded_name(raw: bytes, charset: str | list[str]) -> str:
    element = DataElement(0x00100010, "PN", raw)
    decode_element(element, charset if isinstance(charset, list) else [charset])
    return str(element.value)


@pytest.mark.parametrize(
    "raw, charset, expected",
    [
        (b"Buc^J\xe9r\xf4me", "ISO_IR 100", "Buc_Jérôme"),
        ("Wang^XiaoDong=王^小東=".encode(), "ISO_IR 192", "Wang_XiaoDong=王_小東"),
        (  # PS3.5 H.3.1: Japanese, ISO 2022 IR 87 with escape sequences
            b"Yamada^Tarou=\x1b$B;3ED\x1b(B^\x1b$BB@O:\x1b(B=\x1b$B$d$^$@\x1b(B^\x1b$B$?$m$&\x1b(B",
            ["", "ISO 2022 IR 87"],
            "Yamada_Tarou=山田_太郎=やまだ_たろう",
        ),
    ],
)
def test_non_ascii_names_stay_readable(tmp_path, raw: bytes, charset, expected: str):
    name = _decoded_name(raw, charset)
    rel = HierarchicalNaming().relative_path(make_info(patient_name=name))
    assert rel.parts[0] == f"PAT-0042_{expected}"
    # and the filesystem takes it
    (tmp_path / rel).parent.mkdir(parents=True)
    (tmp_path / rel).write_bytes(b"")
    assert (tmp_path / rel).exists()


def test_decomposed_unicode_is_normalised_to_nfc():
    decomposed = "Jo\u0065\u0301l^Buc"  # e + combining acute
    part = HierarchicalNaming().relative_path(make_info(patient_name=decomposed)).parts[0]
    assert part == "PAT-0042_Jo\u00e9l_Buc"


@pytest.mark.parametrize("accession", ["..", "///", " . ", "\x00\x01"])
@pytest.mark.parametrize("scheme", [
    HierarchicalNaming(),
    PhysicianNaming(accounts_root="/nonexistent-accounts"),
    TemplateNaming("{PatientID}/{StudyDate}_{AccessionNumber,StudyInstanceUID}/{SOPInstanceUID}.dcm"),
], ids=["hierarchical", "physician", "template"])
def test_an_accession_number_that_sanitises_to_nothing_falls_back_to_the_study_uid(scheme, accession):
    """docs/naming.md: the study folder is named by the accession number,
    else the Study Instance UID. A value that names nothing once sanitised
    must take the fallback, not UNKNOWN: two such studies of one patient on
    one day would otherwise share a folder."""
    first = scheme.relative_text(make_info(accession_number=accession))
    other = scheme.relative_text(make_info(accession_number=accession, study_instance_uid="1.2.3.4.5"))
    assert "1.2.826.0.1.3680043.8.498.1" in first and "UNKNOWN" not in first
    assert first.rsplit("/", 1)[0] != other.rsplit("/", 1)[0]


_NAME_PARTS = st.sampled_from(["1", "2", "0", "9", ".", "..", "-", "_", " ", "a", "/", "\x00", "é", "\\"])


@given(number=st.none() | st.integers(min_value=-(10**80), max_value=10**80) | st.integers(-10, 10**4)
       | st.sampled_from([10**63, 10**64 - 1, 10**64, -(10**62), -(10**63) + 1, -(10**63)]),
       uid=st.lists(_NAME_PARTS, max_size=80).map("".join)
       | st.from_regex(r"[1-9][0-9]{0,3}(\.[0-9]{1,20}){0,8}", fullmatch=True))
@settings(max_examples=3000, deadline=None)
def test_hierarchical_file_name_shortcut_gives_the_general_steps_name(number: int | None, uid: str) -> None:
    """The common case (a plain number and UID) skips the general steps of
    the file name; for every number and UID the name is what those steps
    give (safe_component on each part, then bound_name)."""
    from fastscp.storage.naming import _joined, _number, _optional, _required

    assert HierarchicalNaming._file_name(number, uid) == _joined(_optional(_number(number)), _required(uid),
                                                                  ext=".dcm")

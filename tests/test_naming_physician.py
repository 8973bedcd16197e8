"""The store server's physician layout (seed 002): the four account branches,
account matching, and the 3-3-6 file names."""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath

import pytest

from fastscp.instance import InstanceInfo
from fastscp.storage.naming import PhysicianNaming


def make_info(**fields: object) -> InstanceInfo:
    base: dict[str, object] = dict(
        sop_class_uid="1.2.840.10008.5.1.4.1.1.4",
        sop_instance_uid="1.2.3.4.5.6",
        transfer_syntax_uid="1.2.840.10008.1.2.1",
        patient_name="Roe^Jane",
        study_instance_uid="1.2.3.4",
        study_date="20230704",
        accession_number="A9",
        series_instance_uid="1.2.3.4.5",
        modality="MR",
        series_number=5,
        series_description="T2 FLAIR",
        instance_number=17,
        echo_numbers="2",
        requesting_physician="Smith^John",
        referring_physician="Jones^Ann",
    )
    base.update(fields)
    return InstanceInfo(**base)  # type: ignore[arg-type]


INSIDE = "20230704_Roe_Jane_A9/Dicom/5_T2 FLAIR/005-002-000017.dcm"


@pytest.fixture
def accounts(tmp_path: Path) -> Path:
    for name in ("Smith_John", "jones", "Guest", "Unknown", ".hidden"):
        (tmp_path / name).mkdir()
    (tmp_path / "notes.txt").write_text("a file is not an account")
    return tmp_path


def test_branch_1_requesting_physician_account(accounts: Path):
    scheme = PhysicianNaming(accounts_root=accounts)
    info = make_info()
    assert scheme.route(info)[0] == "requesting"
    assert scheme.relative_path(info) == PurePosixPath(f"Smith_John/{INSIDE}")


def test_branch_2_referring_physician_account(accounts: Path):
    scheme = PhysicianNaming(accounts_root=accounts)
    info = make_info(requesting_physician="Nobody^Here")
    assert scheme.route(info)[0] == "referring"
    # the account folder's own spelling is kept ("jones"), matched by family name
    assert scheme.relative_path(info) == PurePosixPath(f"jones/{INSIDE}")


def test_branch_3_guest_under_requesting_name(accounts: Path):
    scheme = PhysicianNaming(accounts_root=accounts)
    info = make_info(requesting_physician="Nobody^Here", referring_physician="Other^Doc")
    assert scheme.route(info)[0] == "guest"
    assert scheme.relative_path(info) == PurePosixPath(f"Guest/Nobody_Here/{INSIDE}")


def test_branch_3_guest_under_referring_name_when_no_requesting(accounts: Path):
    scheme = PhysicianNaming(accounts_root=accounts)
    info = make_info(requesting_physician="", referring_physician="Other^Doc")
    assert scheme.relative_path(info) == PurePosixPath(f"Guest/Other_Doc/{INSIDE}")


@pytest.mark.parametrize("empty", ["", "^^^^", "=="])
def test_branch_4_unknown_when_neither_tag_has_a_value(accounts: Path, empty: str):
    scheme = PhysicianNaming(accounts_root=accounts)
    info = make_info(requesting_physician=empty, referring_physician="")
    assert scheme.route(info)[0] == "unknown"
    assert scheme.relative_path(info) == PurePosixPath(f"Unknown/{INSIDE}")


def test_requesting_wins_over_referring_when_both_have_accounts(accounts: Path):
    info = make_info(requesting_physician="Jones^Ann", referring_physician="Smith^John")
    assert PhysicianNaming(accounts_root=accounts).relative_path(info).parts[0] == "jones"


def test_family_name_matching_can_be_turned_off(accounts: Path):
    scheme = PhysicianNaming(accounts_root=accounts, match_family_name=False)
    info = make_info(requesting_physician="Nobody", referring_physician="Jones^Ann")
    assert scheme.route(info) == ("guest", ("Guest", "Nobody"))


@pytest.mark.parametrize("written", ["SMITH^JOHN", "smith^john^^Dr", "Smith John", "Smith^John=スミス^ジョン"])
def test_name_matching_ignores_case_and_separators(accounts: Path, written: str):
    scheme = PhysicianNaming(accounts_root=accounts)
    assert scheme.account_for(written) == "Smith_John"


def test_ideographic_group_matches_an_ideographic_account(tmp_path: Path):
    (tmp_path / "山田太郎").mkdir()
    scheme = PhysicianNaming(accounts_root=tmp_path, match_family_name=False)
    info = make_info(requesting_physician="Yamada^Tarou=山田^太郎=やまだ^たろう")
    assert scheme.relative_path(info).parts[0] == "山田太郎"


def test_guest_and_unknown_folders_are_not_physician_accounts(accounts: Path):
    scheme = PhysicianNaming(accounts_root=accounts)
    info = make_info(requesting_physician="Guest", referring_physician="")
    assert scheme.relative_path(info).parts[:2] == ("Guest", "Guest")
    assert scheme.account_for("hidden") is None  # dot-folders are not accounts


def test_configured_account_list_without_root():
    scheme = PhysicianNaming(accounts=["Jones_Ann"])
    info = make_info(requesting_physician="Smith^John")
    assert scheme.route(info) == ("referring", ("Jones_Ann",))


def test_new_account_folder_is_picked_up(tmp_path: Path):
    scheme = PhysicianNaming(accounts_root=tmp_path)
    info = make_info()
    assert scheme.route(info)[0] == "guest"
    (tmp_path / "Smith_John").mkdir()
    os.utime(tmp_path, ns=(1, 1))  # make sure the mtime differs even on coarse clocks
    assert scheme.route(info)[0] == "requesting"


def test_missing_accounts_root_means_no_accounts(tmp_path: Path):
    scheme = PhysicianNaming(accounts_root=tmp_path / "absent")
    assert scheme.route(make_info())[0] == "guest"


# -- 3-3-6 file names -------------------------------------------------------------

@pytest.mark.parametrize(
    "series, echo, instance, name",
    [
        (5, "2", 17, "005-002-000017.dcm"),
        (1, "1\\2", 1, "001-001-000001.dcm"),  # multi-valued EchoNumbers: the first
        (12, "", 123456, "012-000-123456.dcm"),  # no echo number: 0
        (1001, "3", 1234567, "1001-003-1234567.dcm"),  # widths are minimums
        (None, "1", 2, "000-001-000002.dcm"),
    ],
)
def test_3_3_6_names(series, echo, instance, name):
    scheme = PhysicianNaming(accounts=[])
    rel = scheme.relative_path(make_info(series_number=series, echo_numbers=echo, instance_number=instance))
    assert rel.name == name


def test_count_is_arrival_order_per_series_without_instance_number():
    scheme = PhysicianNaming(accounts=[])
    names = []
    for series_uid in ("1.9.1", "1.9.1", "1.9.2", "1.9.1"):
        info = make_info(instance_number=None, series_instance_uid=series_uid)
        names.append(scheme.relative_path(info).name)
    assert names == ["005-002-000001.dcm", "005-002-000002.dcm", "005-002-000001.dcm", "005-002-000003.dcm"]
    # an instance that has a number does not advance the counter
    assert scheme.relative_path(make_info(series_instance_uid="1.9.1")).name == "005-002-000017.dcm"
    assert scheme.relative_path(make_info(instance_number=None, series_instance_uid="1.9.1")).name.endswith(
        "000004.dcm"
    )


def test_study_and_series_folders():
    scheme = PhysicianNaming(accounts=[])
    rel = scheme.relative_path(
        make_info(requesting_physician="", referring_physician="", accession_number="", series_description="")
    )
    assert rel == PurePosixPath("Unknown/20230704_Roe_Jane_1.2.3.4/Dicom/5/005-002-000017.dcm")

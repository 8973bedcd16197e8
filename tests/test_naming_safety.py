"""Path safety: sanitising DICOM values, keeping paths inside storage,
collision and version names, and a property test of every scheme against
hostile values."""

from __future__ import annotations

import dataclasses
import os
import unicodedata
from pathlib import Path, PurePosixPath

import pydicom
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fastscp.instance import InstanceInfo
from fastscp.storage.naming import make_naming, safe_component
from fastscp.storage.safepath import (
    MAX_NAME_BYTES,
    UnsafePathError,
    bound_name,
    free_path,
    is_safe_component,
    resolve_inside,
    versioned_path,
)

# -- safe_component -----------------------------------------------------------------


@pytest.mark.parametrize(
    "value, expected",
    [
        ("../../etc/passwd", "_.._etc_passwd"),
        ("..", "UNKNOWN"),
        ("/", "_"),
        ("", "UNKNOWN"),
        ("   ", "UNKNOWN"),
        (" . hidden . ", "hidden"),
        ("a\x00b\x1fc\x7fd\x85e", "a_b_c_d_e"),
        ('w:i*n?d"o<w>s|x\\y', "w_i_n_d_o_w_s_x_y"),
        ("evil\u202etxt.exe", "evil_txt.exe"),  # right-to-left override
        ("CON", "_CON"),
        ("nul.txt", "_nul.txt"),
        ("com1", "_com1"),
        ("CONSOLE", "CONSOLE"),
        ("山田^太郎", "山田^太郎"),
        ("Jérôme", "Jérôme"),
        ("name.", "name"),
    ],
)
def test_safe_component_cases(value: str, expected: str):
    assert safe_component(value) == expected


def test_safe_component_bounds_length_with_distinct_hash_suffix():
    long_a = safe_component("x" * 1000)
    long_b = safe_component("x" * 999)
    assert len(long_a) == len(long_b) == 64
    assert long_a != long_b
    assert long_a.startswith("x" * 55 + "_")
    assert safe_component("x" * 64) == "x" * 64  # at the bound: untouched


def test_safe_component_bounds_utf8_bytes():
    cut = safe_component("😀" * 64, max_len=200, max_bytes=100)
    assert len(cut.encode()) <= 100
    assert cut.startswith("😀")


def test_bound_name_keeps_extension():
    name = bound_name("y" * 300, ".dcm")
    assert name.endswith(".dcm") and len(name.encode()) <= MAX_NAME_BYTES
    assert bound_name("short", ".dcm") == "short.dcm"


# -- resolve_inside ----------------------------------------------------------------------


def test_resolve_inside_joins(tmp_path: Path):
    assert resolve_inside(tmp_path, PurePosixPath("a/b/c.dcm")) == tmp_path / "a" / "b" / "c.dcm"


@pytest.mark.parametrize(
    "rel",
    ["../x", "a/../../x", "/etc/passwd", ".", ".incoming/x.dcm", "a/.hidden", "a\\..\\..\\x", "a\x00b"],
)
def test_resolve_inside_refuses(tmp_path: Path, rel: str):
    with pytest.raises(UnsafePathError):
        resolve_inside(tmp_path, PurePosixPath(rel))


def test_resolve_inside_with_relative_storage_dir(tmp_path: Path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert resolve_inside(Path("store/../store"), PurePosixPath("a.dcm")) == tmp_path / "store" / "a.dcm"


def test_resolve_inside_symlink_check(tmp_path: Path):
    storage = tmp_path / "storage"
    outside = tmp_path / "outside"
    storage.mkdir()
    outside.mkdir()
    (storage / "link").symlink_to(outside)
    rel = PurePosixPath("link/x.dcm")
    assert resolve_inside(storage, rel) == storage / "link" / "x.dcm"  # lexical by default
    with pytest.raises(UnsafePathError, match="symlink"):
        resolve_inside(storage, rel, follow_symlinks=True)
    assert resolve_inside(storage, PurePosixPath("new/dir/x.dcm"), follow_symlinks=True) == storage / "new/dir/x.dcm"


# -- collisions and versions -------------------------------------------------------------


def test_free_path_suffixes_only_for_a_different_instance(tmp_path: Path):
    owners = {tmp_path / "1.dcm": "1.2.3", tmp_path / "1_2.dcm": "9.9.9"}
    uid_at = owners.get
    assert free_path(tmp_path / "1.dcm", "1.2.3", uid_at) == tmp_path / "1.dcm"  # its own file
    assert free_path(tmp_path / "1.dcm", "4.5.6", uid_at) == tmp_path / "1_3.dcm"
    assert free_path(tmp_path / "free.dcm", "4.5.6", uid_at) == tmp_path / "free.dcm"


def test_free_path_on_uid_names_without_extension(tmp_path: Path):
    owners = {tmp_path / "1.2.840.5": "other"}
    assert free_path(tmp_path / "1.2.840.5", "mine", owners.get) == tmp_path / "1.2.840.5_2"


def test_versioned_path(tmp_path: Path):
    (tmp_path / "005-002-000017.dcm").touch()
    (tmp_path / "005-002-000017_v2.dcm").touch()
    assert versioned_path(tmp_path / "005-002-000017.dcm") == tmp_path / "005-002-000017_v3.dcm"


# -- every scheme against hostile values -----------------------------------------------

HOSTILE = [
    "", ".", "..", "../../etc", "/", "//", "\\", "\x00", "a/../../b", "..\\..\\windows", "CON", "nul.dcm",
    " ", "...", ".incoming", "x" * 10_000, "山田^太郎" * 500, "\u202e\ufeff\u200b", "\ud800", "😀" * 300,
    "%Y/%m", "{PatientID}", "a\nb", "=^=^",
]
any_char = st.characters(min_codepoint=0, max_codepoint=0x10FFFF, exclude_categories=())
hostile_text = st.one_of(
    st.sampled_from(HOSTILE),
    st.text(any_char, max_size=80),
    st.builds(lambda chunk, n: chunk * n, st.text(any_char, min_size=1, max_size=4), st.integers(1, 2500)),
    st.lists(st.sampled_from(["..", "/", ".", "a", "\x00", "\\", "^", "="]), max_size=12).map("".join),
)
hostile_int = st.one_of(st.none(), st.integers(-(10**12), 10**12))

TEXT_FIELDS = [
    "sop_instance_uid", "patient_id", "patient_name", "study_instance_uid", "study_date", "study_time",
    "accession_number", "referring_physician", "requesting_physician", "series_instance_uid", "modality",
    "series_description", "echo_numbers", "calling_ae", "called_ae",
]
INT_FIELDS = ["series_number", "instance_number"]


@st.composite
def hostile_infos(draw: st.DrawFn) -> InstanceInfo:
    fields: dict[str, object] = {name: draw(hostile_text) for name in TEXT_FIELDS}
    fields.update({name: draw(hostile_int) for name in INT_FIELDS})
    fields["received_at"] = draw(st.floats(0, 4e9))
    header = pydicom.Dataset()
    header.InstitutionAddress = draw(hostile_text)
    header.ImageComments = draw(hostile_text)
    info = InstanceInfo(sop_class_uid="1.2.840.10008.5.1.4.1.1.7", sop_instance_uid="1", transfer_syntax_uid="1.2")
    return dataclasses.replace(info, header=header, **fields)


def _schemes(accounts_root: Path) -> dict[str, object]:
    return {
        "hierarchical": make_naming("hierarchical"),
        "flat": make_naming("flat"),
        "date-based": make_naming("date-based"),
        "physician": make_naming("physician", accounts_root=accounts_root, accounts=["../evil", "CON", "..", "a/b"]),
        "template": make_naming(
            "template",
            pattern="{PatientName}/{StudyDate:%Y/%m/%d}/{InstitutionAddress}{ImageComments|upper}/"
            "{0020000D[2:40]}-{SeriesNumber:05}/{RequestingPhysician,ReferringPhysicianName|first}/"
            "{SOPInstanceUID|hash}_{InstanceNumber:06}_{AccessionNumber}.dcm",
        ),
    }


SCHEME_NAMES = ("hierarchical", "flat", "date-based", "physician", "template")


@pytest.fixture(scope="module")
def storage_parent(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One storage tree for every example of every scheme (pytest's tmp dir,
    not /tmp directly), and the folder around it, which must stay empty."""
    parent = tmp_path_factory.mktemp("naming")
    (parent / "storage" / "Smith_John").mkdir(parents=True)
    return parent


@pytest.fixture(scope="module")
def schemes(storage_parent: Path) -> dict[str, object]:
    built = _schemes(storage_parent / "storage")
    assert tuple(built) == SCHEME_NAMES
    return built


def _assert_valid_component(part: str) -> None:
    assert part, "empty component"
    assert part not in (".", "..")
    assert not part.startswith(".")
    assert "/" not in part and "\\" not in part and "\x00" not in part
    assert not any(unicodedata.category(char) == "Cc" for char in part)
    assert len(part.encode("utf-8")) <= MAX_NAME_BYTES  # strict UTF-8: no lone surrogates
    assert part == part.strip() and not part.endswith(".")
    assert is_safe_component(part)


@pytest.mark.parametrize("scheme_name", SCHEME_NAMES)
@pytest.mark.filterwarnings("ignore:The value length")  # pydicom notes the 10 kB values; that is the point
@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(info=hostile_infos())
def test_every_scheme_stays_inside_storage(storage_parent: Path, schemes: dict[str, object], scheme_name: str,
                                          info: InstanceInfo) -> None:
    storage = storage_parent / "storage"
    rel = schemes[scheme_name].relative_path(info)  # type: ignore[attr-defined]
    assert isinstance(rel, PurePosixPath) and not rel.is_absolute() and rel.parts
    for part in rel.parts:
        _assert_valid_component(part)
    path = resolve_inside(storage, rel, follow_symlinks=True)
    base = os.path.realpath(storage)
    assert os.path.commonpath([base, os.path.realpath(path)]) == base
    # and the filesystem really takes it, inside storage
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch()
    assert os.path.realpath(path).startswith(base + os.sep)


def test_hostile_values_never_left_anything_outside(storage_parent: Path) -> None:
    created = {p.name for p in storage_parent.iterdir()}
    assert created == {"storage"}

"""parse_head / parse_file / header_dataset: decoding and the "not enough" signal."""

from __future__ import annotations

import dataclasses
import struct
import warnings
import zlib
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_charset_files, get_testdata_file
from pydicom.dataset import Dataset

from fastscp._ext.header import EXPLICIT_VR_BE, EXPLICIT_VR_LE, IMPLICIT_VR_LE
from fastscp.storage.header import (
    MalformedDataset,
    header_dataset,
    parse_file,
    parse_head,
    read_file_meta,
)

from test_header_scanner import element, marker

EXPLICIT = "1.2.840.10008.1.2.1"
IMPLICIT = "1.2.840.10008.1.2"
BIG = "1.2.840.10008.1.2.2"
DEFLATED = "1.2.840.10008.1.2.1.99"
JPEG = "1.2.840.10008.1.2.4.50"


def dataset_bytes(path: object) -> tuple[bytes, str]:
    assert isinstance(path, str)
    raw = Path(path).read_bytes()
    offset, uid = read_file_meta(raw)
    return raw[offset:], uid


def header(syntax: int = EXPLICIT_VR_LE, **values: bytes) -> bytes:
    """A small header; keyword arguments replace the default raw values."""
    defaults = {
        "charset": (0x00080005, "CS", b""),
        "sop_class": (0x00080016, "UI", b"1.2.840.10008.5.1.4.1.1.2\0"),
        "sop_instance": (0x00080018, "UI", b"1.2.3.4.5\0"),
        "modality": (0x00080060, "CS", b"CT"),
        "name": (0x00100010, "PN", b"Doe^John"),
        "patient_id": (0x00100020, "LO", b" PID-1  "),
        "echo": (0x00180086, "IS", b"1\\2 "),
        "series_number": (0x00200011, "IS", b" 12 "),
        "instance_number": (0x00200013, "IS", b"3"),
        "frames": (0x00280008, "IS", b"1.0 "),
        "rows": (0x00280010, "US", struct.pack("<H" if syntax != EXPLICIT_VR_BE else ">H", 512)),
    }
    parts = []
    for key, (tag, vr, value) in defaults.items():
        value = values.get(key, value)
        if key == "charset" and not value:
            continue
        parts.append(element(tag, vr, value, syntax))
    return b"".join(parts)


@pytest.mark.parametrize(
    "syntax, uid", [(EXPLICIT_VR_LE, EXPLICIT), (IMPLICIT_VR_LE, IMPLICIT), (EXPLICIT_VR_BE, BIG), (EXPLICIT_VR_LE, JPEG)]
)
def test_fields_are_decoded(syntax: int, uid: str) -> None:
    info = parse_head(header(syntax), uid, complete=True)
    assert info is not None
    assert info.transfer_syntax_uid == uid
    assert info.sop_class_uid == "1.2.840.10008.5.1.4.1.1.2"
    assert info.sop_instance_uid == "1.2.3.4.5"
    assert info.patient_name == "Doe^John"
    assert info.patient_id == "PID-1"
    assert info.modality == "CT"
    assert info.echo_numbers == "1\\2"
    assert info.series_number == 12
    assert info.instance_number == 3
    assert info.number_of_frames == 1
    assert info.rows == 512  # byte order follows the transfer syntax
    assert info.columns is None and info.study_description == "" and info.specific_character_set == ""
    assert info.header is None


@pytest.mark.parametrize(
    "raw, expected", [(b"", None), (b"  ", None), (b"abc", None), (b"2.5", None), (b"-4", -4), (b"7\\8", 7), (b"+9 ", 9), (b"1_0", None), (b"12\0", 12)]
)
def test_integer_strings(raw: bytes, expected: int | None) -> None:
    info = parse_head(header(series_number=raw), EXPLICIT, complete=True)
    assert info is not None and info.series_number == expected


@pytest.mark.parametrize(
    "charset, raw, expected",
    [
        (b"ISO_IR 100", "Müller^Jürgen".encode("latin-1"), "Müller^Jürgen"),
        (b"ISO_IR 192", "Θεοδώρα^Ελένη".encode("utf-8"), "Θεοδώρα^Ελένη"),
        (b"ISO_IR 144", "Люкceмбypг".encode("iso8859_5"), "Люкceмбypг"),
        (b"", b"Caf\xe9", "Café"),  # default repertoire: pydicom reads latin-1
        (b"ISO_IR 192", b"Bad\xff^Utf8", "Bad\ufffd^Utf8"),  # replaced, not an error
        (
            b"\\ISO 2022 IR 87",
            b"Yamada^Tarou=\x1b$B;3ED\x1b(B^\x1b$BB@O:\x1b(B=\x1b$B$d$^$@\x1b(B^\x1b$B$?$m$&\x1b(B",
            "Yamada^Tarou=山田^太郎=やまだ^たろう",
        ),
    ],
)
def test_person_names_in_character_sets(charset: bytes, raw: bytes, expected: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        info = parse_head(header(charset=charset, name=raw), EXPLICIT, complete=True)
    assert info is not None
    assert info.patient_name == expected
    assert info.specific_character_set == charset.decode()


def test_japanese_file_matches_known_name() -> None:
    path = next(f for f in get_charset_files() if f.endswith("chrH31.dcm"))
    data, uid = dataset_bytes(path)
    info = parse_head(data, uid, complete=True)
    assert info is not None
    assert info.patient_name == "Yamada^Tarou=山田^太郎=やまだ^たろう"
    assert info.specific_character_set == "\\ISO 2022 IR 87"


def test_short_head_returns_none_and_complete_truncation_raises() -> None:
    data = header()
    cut = data[:-3]  # inside Rows, the last wanted attribute present
    assert parse_head(cut, EXPLICIT, complete=False) is None
    with pytest.raises(MalformedDataset, match="ends inside"):
        parse_head(cut, EXPLICIT, complete=True)
    # whole dataset, but nothing after Rows: only 'complete' settles it
    assert parse_head(data, EXPLICIT, complete=False) is None
    assert parse_head(data, EXPLICIT, complete=True) is not None
    # an element past the last wanted tag settles a partial head
    more = data + element(0x00280011, "US", b"\x00\x02") + element(0x00321032, "PN", b"Req^Doc ") + b"\x08"
    info = parse_head(more, EXPLICIT, complete=False)
    assert info is not None and info.columns == 512 and info.requesting_physician == "Req^Doc"
    assert isinstance(MalformedDataset("x"), ValueError)


def test_malformed_is_reported() -> None:
    bad = element(0x00100010, "UT", b"", length=0xFFFFFFFF) + marker(0xFFFEE0DD, 0)
    with pytest.raises(MalformedDataset, match="undefined length"):
        parse_head(bad, EXPLICIT, complete=False)


def test_deflated_head_and_truncated_deflate() -> None:
    path = get_testdata_file("image_dfl.dcm")
    assert path is not None
    data, uid = dataset_bytes(path)
    assert uid == DEFLATED
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = pydicom.dcmread(path, stop_before_pixels=True)
    info = parse_head(data, uid, complete=True)
    assert info is not None
    assert (info.patient_name, info.rows, info.sop_instance_uid) == (
        str(ds.PatientName), ds.Rows, ds.SOPInstanceUID,
    )
    # a cut deflate stream inflates as far as it goes
    for size in (10, 100, 400, 2000):
        partial = parse_head(data[:size], uid, complete=False)
        assert partial is None or partial == info
    with pytest.raises(MalformedDataset, match="inflate"):
        parse_head(b"\xff" * 64, uid, complete=True)
    # our own deflate of an explicit VR header decodes like the plain one
    compressor = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    deflated = compressor.compress(header()) + compressor.flush()
    plain = parse_head(header(), EXPLICIT, complete=True)
    ours = parse_head(deflated, DEFLATED, complete=True)
    assert plain is not None and ours is not None
    assert ours.transfer_syntax_uid == DEFLATED
    assert dataclasses.replace(ours, transfer_syntax_uid=EXPLICIT) == plain
    # a whole deflate stream of a cut data set is still a truncated data set
    compressor = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    cut = compressor.compress(header()[:-3]) + compressor.flush()
    assert parse_head(cut, DEFLATED, complete=False) is None
    with pytest.raises(MalformedDataset):
        parse_head(cut, DEFLATED, complete=True)


def test_header_dataset_is_built_on_request() -> None:
    path = get_testdata_file("CT_small.dcm")
    assert path is not None
    data, uid = dataset_bytes(path)
    ds = header_dataset(data[:4096], uid)
    assert isinstance(ds, Dataset)
    assert str(ds.PatientName) == "CompressedSamples^CT1"
    assert "PixelData" not in ds
    full = header_dataset(data, uid)
    assert full.Rows == 128 and "PixelData" not in full and len(full) > len(ds)
    # implicit VR and big endian heads too
    for name in ("MR_small_implicit.dcm", "MR_small_bigendian.dcm"):
        path = get_testdata_file(name)
        assert path is not None
        data, uid = dataset_bytes(path)
        ds = header_dataset(data, uid)
        reference = pydicom.dcmread(path, stop_before_pixels=True)
        assert ds.PatientName == reference.PatientName and ds.Rows == reference.Rows


def test_parse_file_falls_back_to_pydicom(tmp_path: Path) -> None:
    """A file the scanner rejects but pydicom reads still gets an InstanceInfo."""
    path = tmp_path / "odd.dcm"
    good = Path(get_testdata_file("CT_small.dcm") or "").read_bytes()
    offset, _ = read_file_meta(good)
    odd_element = element(0x00080005, "CS", b"ISO_IR 100") + element(0x00080016, "UI", b"1.2.3\0")
    # (0010,21B0) with VR UT and undefined length: not allowed in explicit VR (PS3.5 7.1.2),
    # pydicom reads it up to a sequence delimiter anyway.
    odd = odd_element + element(0x00100010, "PN", b"Odd^Name") + element(
        0x001021B0, "UT", b"history", length=0xFFFFFFFF
    ) + marker(0xFFFEE0DD, 0) + element(0x00280010, "US", b"\x10\x00")
    path.write_bytes(good[:offset] + odd)
    with pytest.raises(MalformedDataset):
        parse_head(odd, EXPLICIT, complete=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        info = parse_file(path)
    assert (info.patient_name, info.rows, info.sop_class_uid) == ("Odd^Name", 16, "1.2.3")
    assert info.header is not None  # the pydicom path has the Dataset anyway


def test_parse_file_with_explicit_offset_and_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "raw.bin"
    path.write_bytes(b"JUNK" + header(IMPLICIT_VR_LE))
    info = parse_file(path, 4, IMPLICIT)
    assert info.patient_name == "Doe^John" and info.rows == 512
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    with pytest.raises(MalformedDataset):
        parse_file(empty, 0, EXPLICIT)
    with pytest.raises(MalformedDataset, match="preamble"):
        parse_file(path)


def test_parse_file_deflated(tmp_path: Path) -> None:
    path = get_testdata_file("image_dfl.dcm")
    assert path is not None
    data, uid = dataset_bytes(path)
    assert parse_file(path) == parse_head(data, uid, complete=True)


def test_the_character_set_is_decoded_once_per_value_and_the_cache_stays_bounded() -> None:
    """The instances of a study repeat their Specific Character Set: its text
    and codecs are kept by raw value. A peer that varies it forever does not
    grow that cache past its bound."""
    from fastscp.storage import header as H

    first = H._charset(b"ISO_IR 100\\ISO_IR 192 ")
    assert first == ("ISO_IR 100\\ISO_IR 192", first[1]) and first[1]
    assert H._charset(b"ISO_IR 100\\ISO_IR 192 ") is first
    with warnings.catch_warnings():  # pydicom warns of each unknown term
        warnings.simplefilter("ignore")
        for n in range(600):
            H._charset(f"ISO_IR {n}".encode())
    assert len(H._ENCODINGS_CACHE) <= 257
    assert H._charset(b"ISO_IR 100") == ("ISO_IR 100", ["latin_1"])

"""Hostile input: random and mutated bytes never crash, hang or raise anything
but ValueError (MalformedDataset in parse_head), and never read out of bounds
(a value the scanner returns is always a slice of the input)."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from pydicom.data import get_testdata_file

from fastscp._ext.header import (
    END,
    EXPLICIT_VR_BE,
    EXPLICIT_VR_LE,
    IMPLICIT_VR_LE,
    PAST_LAST,
    PIXEL_DATA,
    SHARED_MAX,
    TRUNCATED,
    HeaderScanner,
    decode_values_into,
)
from fastscp.instance import InstanceInfo
from fastscp.storage import header as _H
from fastscp.storage.header import MalformedDataset, parse_head, read_file_meta

SCANNER = HeaderScanner((0x00080005, 0x00080018, 0x00100010, 0x00280010, 0x00321032))
SYNTAXES = st.sampled_from([IMPLICIT_VR_LE, EXPLICIT_VR_LE, EXPLICIT_VR_BE])
UIDS = st.sampled_from(
    ["1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2", "1.2.840.10008.1.2.1.99"]
)
# bytes that steer the scanner into its interesting branches
TOKENS = st.sampled_from(
    [
        b"\xfe\xff\x00\xe0", b"\xfe\xff\x0d\xe0", b"\xfe\xff\xdd\xe0", b"\xff\xfe\xe0\x00",
        b"\xff\xff\xff\xff", b"SQ\0\0", b"UN\0\0", b"OB\0\0", b"UT\0\0", b"\xe0\x7f\x10\x00",
        b"\x08\x00\x05\x00", b"\x10\x00\x10\x00", b"\x00\x00\x00\x00", b"LO", b"PN",
    ]
)
# FUZZ_EXAMPLES=20000 for a long run
FUZZ = settings(max_examples=int(os.environ.get("FUZZ_EXAMPLES", "400")), deadline=500, suppress_health_check=[HealthCheck.too_slow])


def _heads() -> list[tuple[bytes, str]]:
    heads = []
    for name in ("CT_small.dcm", "MR_small_implicit.dcm", "MR_small_bigendian.dcm", "image_dfl.dcm", "rtplan.dcm"):
        path = get_testdata_file(name)
        assert path is not None
        raw = Path(path).read_bytes()
        offset, uid = read_file_meta(raw)
        heads.append((raw[offset : offset + 6000], uid))
    return heads


HEADS = _heads()


def _check_scan(data: bytes, syntax: int) -> None:
    try:
        values, status, offset = SCANNER.scan(data, syntax)
    except ValueError:
        return
    assert status in (TRUNCATED, END, PAST_LAST, PIXEL_DATA)
    assert 0 <= offset <= len(data)
    assert len(values) == len(SCANNER.tags)
    for value in values:
        assert value is None or (isinstance(value, bytes) and value in data)


def _check_parse(data: bytes, uid: str, complete: bool) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            result = parse_head(data, uid, complete)
        except MalformedDataset:
            return
    assert result is None or isinstance(result, InstanceInfo)
    if complete:
        assert result is not None


@FUZZ
@given(st.binary(max_size=512), SYNTAXES)
def test_random_bytes(data: bytes, syntax: int) -> None:
    _check_scan(data, syntax)


@FUZZ
@given(st.lists(st.one_of(TOKENS, st.binary(min_size=1, max_size=6)), max_size=80), SYNTAXES)
def test_structured_garbage(parts: list[bytes], syntax: int) -> None:
    _check_scan(b"".join(parts), syntax)


@FUZZ
@given(
    st.sampled_from(range(len(HEADS))),
    st.lists(st.tuples(st.integers(0, 5999), st.integers(0, 255)), min_size=1, max_size=8),
    st.integers(0, 6000),
    st.booleans(),
)
def test_mutated_real_heads(index: int, edits: list[tuple[int, int]], cut: int, complete: bool) -> None:
    head, uid = HEADS[index]
    data = bytearray(head)
    for position, byte in edits:
        if position < len(data):
            data[position] = byte
    data = data[:cut]
    _check_parse(bytes(data), uid, complete)
    for syntax in (IMPLICIT_VR_LE, EXPLICIT_VR_LE, EXPLICIT_VR_BE):
        _check_scan(bytes(data), syntax)


@FUZZ
@given(st.sampled_from(range(len(HEADS))), st.integers(0, 5999), st.binary(min_size=1, max_size=12), st.booleans())
def test_inserted_bytes_in_real_heads(index: int, position: int, insert: bytes, complete: bool) -> None:
    head, uid = HEADS[index]
    data = head[:position] + insert + head[position:]
    _check_parse(data, uid, complete)


@FUZZ
@given(st.binary(max_size=2048), UIDS, st.booleans())
def test_parse_head_random(data: bytes, uid: str, complete: bool) -> None:
    _check_parse(data, uid, complete)


@pytest.mark.parametrize("syntax", [IMPLICIT_VR_LE, EXPLICIT_VR_LE, EXPLICIT_VR_BE])
def test_big_buffer_of_tiny_items_finishes(syntax: int) -> None:
    """Worst case work: 4 MB of 8-byte items in an undefined-length sequence."""
    if syntax == EXPLICIT_VR_BE:
        opening = b"\x00\x08\x11\x40SQ\0\0\xff\xff\xff\xff"
        empty_item = b"\xff\xfe\xe0\x00\x00\x00\x00\x00"
    else:
        opening = b"\x08\x00\x40\x11" + (b"SQ\0\0" if syntax == EXPLICIT_VR_LE else b"") + b"\xff\xff\xff\xff"
        empty_item = b"\xfe\xff\x00\xe0\x00\x00\x00\x00"
    data = opening + empty_item * (1 << 19)
    assert SCANNER.scan(data, syntax) == ((None,) * 5, TRUNCATED, 0)


# The compiled decoding loop (_ext/header.pyx decode_values_into) strips and
# decodes the common cases itself and hands the rest to the Python decoders
# of storage/header.py: for any value, in any character set's codec, both
# must give the same field.
_KIND_DECODERS = {
    _H._CODE: lambda raw, enc: _H._decode_code(raw),
    _H._TEXT: _H._decode_text,
    _H._NAME: _H._decode_name,
    _H._INT: lambda raw, enc: _H._decode_int(raw),
}
VALUE_BYTES = st.lists(st.sampled_from([b" ", b"\0", b"\\", b"=", b"^", b"\x1b", b"+", b"-", b"_", b".", b"e", b"\t",
                                        b"0", b"7", b"9", b"A", b"z", b"\xe9", b"\xc3", b"\xa9", b"\x82", b"\xa0",
                                        b"\x81\x40", b"99999999999999999"]), max_size=12).map(b"".join)


@FUZZ
@example(b"9" * 18, _H._INT, "latin_1")  # the longest the compiled loop reads itself
@example(b"9" * 19, _H._INT, "latin_1")  # past a 64-bit integer: the Python decoder's
@example(b" -12\0", _H._INT, "latin_1")
@given(VALUE_BYTES, st.sampled_from(sorted(_KIND_DECODERS)),
       st.sampled_from(sorted(set(_H._CODECS.values()) | {"latin-1", "no-such-codec"})))
def test_compiled_value_decoding_matches_the_python_decoders(raw: bytes, kind: int, encoding: str) -> None:
    # twice, through shared-value caches that every example fills (values
    # kept by another kind or an earlier example must not change a result)
    for _ in range(2):
        fields: dict[str, object] = {}
        decode_values_into(fields, (None, raw), ("value",), (kind,), encoding, [encoding], True,
                           _H._decode_code, _H._decode_text, _H._decode_name, _H._decode_int,
                           _SHARED_CODES, _SHARED_TEXTS.setdefault(encoding, {}), -1)
        assert fields["value"] == _KIND_DECODERS[kind](raw, [encoding])


_SHARED_CODES: dict[bytes, str] = {}
_SHARED_TEXTS: dict[str, dict[bytes, str]] = {}


def test_repeated_values_are_shared_but_not_the_instance_uid() -> None:
    names = ("sop_instance_uid", "study_instance_uid", "patient_name", "series_number")
    kinds = (_H._CODE, _H._CODE, _H._NAME, _H._INT)
    codes: dict[bytes, str] = {}
    texts: dict[bytes, str] = {}
    got = []
    for _ in range(2):
        fields: dict[str, object] = {}
        values = (None, b"1.2.3.4 ", b"1.2.840.99\0", b"DOE^JOHN ", b"7 ")
        # fresh bytes objects each time, as the scanner makes them
        values = tuple(None if v is None else bytes(bytearray(v)) for v in values)
        decode_values_into(fields, values, names, kinds, "iso8859", ["iso8859"], True, _H._decode_code,
                           _H._decode_text, _H._decode_name, _H._decode_int, codes, texts, 0)
        got.append(fields)
    assert got[0] == got[1] == {"sop_instance_uid": "1.2.3.4", "study_instance_uid": "1.2.840.99",
                                "patient_name": "DOE^JOHN", "series_number": 7}
    assert got[0]["study_instance_uid"] is got[1]["study_instance_uid"]
    assert got[0]["patient_name"] is got[1]["patient_name"]
    assert got[0]["sop_instance_uid"] is not got[1]["sop_instance_uid"]
    assert list(codes.values()) == ["1.2.840.99"] and list(texts.values()) == ["DOE^JOHN"]


def test_a_shared_value_cache_is_emptied_at_its_bound() -> None:
    codes: dict[bytes, str] = {}
    for i in range(SHARED_MAX + 10):
        fields: dict[str, object] = {}
        decode_values_into(fields, (None, str(i).encode()), ("study_date",), (_H._CODE,), "iso8859", ["iso8859"],
                           True, _H._decode_code, _H._decode_text, _H._decode_name, _H._decode_int, codes, {}, -1)
        assert fields["study_date"] == str(i)
        assert len(codes) <= SHARED_MAX
    assert len(codes) == 10

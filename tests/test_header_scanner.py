"""HeaderScanner on hand-built encodings (PS3.5 section 7).

The fixtures are built element by element below so each test says exactly
what bytes it feeds; every prefix of each fixture is scanned too, since the
receiver hands the scanner a head that may end anywhere.
"""

from __future__ import annotations

import struct

import pytest

from fastscp._ext.header import (
    END,
    EXPLICIT_VR_BE,
    EXPLICIT_VR_LE,
    IMPLICIT_VR_LE,
    LONG_LENGTH_VRS,
    PAST_LAST,
    PIXEL_DATA,
    TRUNCATED,
    HeaderScanner,
)

LONG = {"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV"}
UNDEFINED = 0xFFFFFFFF


def element(tag: int, vr: str, value: bytes, syntax: int = EXPLICIT_VR_LE, length: int | None = None) -> bytes:
    """One data element; ``length`` overrides the encoded length (e.g. undefined)."""
    e = "<" if syntax != EXPLICIT_VR_BE else ">"
    size = len(value) if length is None else length
    head = struct.pack(e + "HH", tag >> 16, tag & 0xFFFF)
    if syntax == IMPLICIT_VR_LE:
        return head + struct.pack("<I", size) + value
    if vr in LONG:
        return head + vr.encode() + b"\0\0" + struct.pack(e + "I", size) + value
    return head + vr.encode() + struct.pack(e + "H", size) + value


def marker(tag: int, length: int, syntax: int = EXPLICIT_VR_LE) -> bytes:
    """Item / delimiter: tag + 32-bit length in every syntax (PS3.5 7.5)."""
    e = "<" if syntax != EXPLICIT_VR_BE else ">"
    return struct.pack(e + "HHI", tag >> 16, tag & 0xFFFF, length)


def item(content: bytes, syntax: int = EXPLICIT_VR_LE, undefined: bool = True) -> bytes:
    if undefined:
        return marker(0xFFFEE000, UNDEFINED, syntax) + content + marker(0xFFFEE00D, 0, syntax)
    return marker(0xFFFEE000, len(content), syntax) + content


def sequence(tag: int, items: list[bytes], syntax: int = EXPLICIT_VR_LE, vr: str = "SQ") -> bytes:
    body = b"".join(items) + marker(0xFFFEE0DD, 0, syntax)
    return element(tag, vr, body, syntax, length=UNDEFINED)


TAGS = (0x00080005, 0x00080018, 0x00100010, 0x00200013, 0x00280010)


def ct_like(syntax: int) -> bytes:
    """A header with every sequence shape in front of the wanted tags."""
    nested = sequence(0x00081140, [item(element(0x00081150, "UI", b"1.2\0", syntax), syntax)], syntax)
    return b"".join(
        [
            element(0x00080005, "CS", b"ISO_IR 100", syntax),
            element(0x00080008, "CS", b"ORIGINAL\\PRIMARY", syntax),
            element(0x00080018, "UI", b"1.2.3.4\0", syntax),
            # undefined-length SQ, undefined-length item holding a nested SQ,
            # a defined-length item, and an empty item
            sequence(
                0x00081032,
                [
                    item(element(0x00080100, "SH", b"CODE", syntax) + nested, syntax),
                    item(element(0x00080100, "SH", b"X2", syntax), syntax, undefined=False),
                    item(b"", syntax),
                ],
                syntax,
            ),
            # defined-length SQ is jumped over whole
            element(0x00082112, "SQ", item(element(0x00081150, "UI", b"9\0", syntax), syntax, False), syntax),
            # an empty undefined-length sequence
            sequence(0x00089215, [], syntax),
            element(0x00100010, "PN", "Müller^Jürgen".encode("latin-1") + b" ", syntax),
            element(0x00100020, "LO", b"ID1", syntax),
            element(0x00200013, "IS", b"7 ", syntax),
            element(0x00280010, "US", struct.pack("<H" if syntax != EXPLICIT_VR_BE else ">H", 512), syntax),
            element(0x00280011, "US", struct.pack("<H" if syntax != EXPLICIT_VR_BE else ">H", 256), syntax),
            element(0x7FE00010, "OW", b"\0" * 16, syntax),
        ]
    )


SYNTAXES = [IMPLICIT_VR_LE, EXPLICIT_VR_LE, EXPLICIT_VR_BE]


@pytest.mark.parametrize("syntax", SYNTAXES)
def test_finds_values_past_every_sequence_shape(syntax: int) -> None:
    data = ct_like(syntax)
    values, status, offset = HeaderScanner(TAGS).scan(data, syntax)
    rows = struct.pack("<H" if syntax != EXPLICIT_VR_BE else ">H", 512)
    assert values == (b"ISO_IR 100", b"1.2.3.4\0", "Müller^Jürgen ".encode("latin-1"), b"7 ", rows)
    assert status == PAST_LAST
    # stopped right after (0028,0010), before Columns and pixel data
    assert data[offset:].startswith(element(0x00280011, "US", b"\0\0", syntax)[:4])


@pytest.mark.parametrize("syntax", SYNTAXES)
def test_no_tags_walks_to_pixel_data(syntax: int) -> None:
    data = ct_like(syntax)
    values, status, offset = HeaderScanner(()).scan(data, syntax)
    assert values == ()
    assert status == PIXEL_DATA
    assert data[offset:] == element(0x7FE00010, "OW", b"\0" * 16, syntax)


@pytest.mark.parametrize("syntax", SYNTAXES)
def test_every_prefix_is_safe_and_consistent(syntax: int) -> None:
    """A head cut anywhere: no error, no wrong value, TRUNCATED until settled."""
    data = ct_like(syntax)
    scanner = HeaderScanner(TAGS)
    full, _, full_offset = scanner.scan(data, syntax)
    for size in range(len(data)):
        values, status, offset = scanner.scan(data[:size], syntax)
        assert 0 <= offset <= size
        for got, want in zip(values, full):
            assert got is None or got == want
        if size >= full_offset:
            assert (values, status) == (full, PAST_LAST)
        else:
            assert status in (TRUNCATED, END)
            assert values[-1] is None


def test_end_of_buffer_at_element_boundary() -> None:
    data = element(0x00080005, "CS", b"ISO_IR 192") + element(0x00100010, "PN", b"A^B")
    values, status, offset = HeaderScanner((0x00100010, 0x00100020)).scan(data)
    assert (values, status, offset) == ((b"A^B", None), END, len(data))
    values, status, offset = HeaderScanner((0x00100010, 0x00100020)).scan(data[:-1])
    assert (values, status) == ((None, None), TRUNCATED)
    assert offset == len(element(0x00080005, "CS", b"ISO_IR 192"))
    assert HeaderScanner((0x00100010,)).scan(b"") == ((None,), END, 0)


def test_stops_at_float_pixel_data_and_encapsulated_pixel_data() -> None:
    for tag in (0x7FE00008, 0x7FE00009, 0x7FE00010):
        data = element(0x00100010, "PN", b"A^B ") + element(tag, "OF", b"\0" * 8)
        assert HeaderScanner((0x00280010,)).scan(data)[1:] == (PIXEL_DATA, 12)
    fragments = [item(b"\0" * 4, undefined=False), item(b"\xff" * 6, undefined=False)]
    encapsulated = sequence(0x7FE00010, fragments, vr="OB")
    data = element(0x00100010, "PN", b"A^B ") + encapsulated
    assert HeaderScanner((0x00280010,)).scan(data) == ((None,), PIXEL_DATA, 12)


def test_skips_nested_encapsulated_icon_pixel_data() -> None:
    """Icon Image Sequence items hold their own (7FE0,0010) OB of undefined length."""
    icon = element(0x00280010, "US", b"\x40\x00") + sequence(
        0x7FE00010, [item(b"", undefined=False), item(b"\x01\x02", undefined=False)], vr="OB"
    )
    data = (
        element(0x00100010, "PN", b"A^B ")
        + sequence(0x00880200, [item(icon)])
        + element(0x00890010, "LO", b"AFTER ")
    )
    values, status, _ = HeaderScanner((0x00280010, 0x00890010)).scan(data)
    assert values == (None, b"AFTER ")  # the icon's Rows is not top level
    assert status == PAST_LAST


def test_undefined_length_un_holds_implicit_vr_items() -> None:
    """PS3.5 6.2.2: undefined-length UN is a sequence encoded implicit VR LE."""
    inner = element(0x00081150, "UI", b"1.2\0", IMPLICIT_VR_LE) + sequence(
        0x00081199, [item(element(0x00081155, "UI", b"3\0", IMPLICIT_VR_LE), IMPLICIT_VR_LE)], IMPLICIT_VR_LE
    )
    data = (
        element(0x00080005, "CS", b"ISO_IR 6")
        + sequence(0x00091010, [item(inner)], vr="UN")
        + element(0x00100010, "PN", b"A^B")
    )
    assert HeaderScanner((0x00100010,)).scan(data) == ((b"A^B",), PAST_LAST, len(data))


def test_top_level_undefined_length_value_is_captured() -> None:
    seq = sequence(0x00081032, [item(element(0x00080100, "SH", b"C1"))])
    data = element(0x00080005, "CS", b"ISO_IR 6") + seq
    values, status, _ = HeaderScanner((0x00081032,)).scan(data)
    assert values == (seq[12:-8],)  # items, without header and delimiter
    assert status == PAST_LAST


def test_first_element_overrides_the_declared_encoding() -> None:
    """Files that say explicit but are implicit (and the reverse) still scan."""
    implicit = element(0x00080005, "CS", b"ISO_IR 6", IMPLICIT_VR_LE) + element(
        0x00100010, "PN", b"A^B", IMPLICIT_VR_LE
    )
    explicit = element(0x00080005, "CS", b"ISO_IR 6") + element(0x00100010, "PN", b"A^B")
    for data, declared in ((implicit, EXPLICIT_VR_LE), (explicit, IMPLICIT_VR_LE)):
        assert HeaderScanner((0x00100010,)).scan(data, declared)[0] == (b"A^B",)


def test_explicit_element_without_vr_is_read_as_implicit() -> None:
    data = (
        element(0x00080005, "CS", b"ISO_IR 6")
        + element(0x00080016, "UI", b"1.2\0", IMPLICIT_VR_LE)
        + element(0x00100010, "PN", b"A^B")
    )
    assert HeaderScanner((0x00080016, 0x00100010)).scan(data)[0] == (b"1.2\0", b"A^B")


def test_duplicate_tag_last_value_wins() -> None:
    data = element(0x00100010, "PN", b"First") + element(0x00100010, "PN", b"Second")
    assert HeaderScanner((0x00100010, 0x00100020)).scan(data)[0] == (b"Second", None)


def test_accepts_bytearray_and_memoryview() -> None:
    data = ct_like(EXPLICIT_VR_LE)
    expected = HeaderScanner(TAGS).scan(data)
    assert HeaderScanner(TAGS).scan(bytearray(data)) == expected
    padded = b"\xaa" * 10 + data
    assert HeaderScanner(TAGS).scan(memoryview(padded)[10:]) == expected


# ---- malformed input: ValueError, never a crash --------------------------


@pytest.mark.parametrize("vr", ["LO", "UT", "UC", "UR", "SV", "UV"])
def test_undefined_length_only_for_the_vrs_that_allow_it(vr: str) -> None:
    # 2-byte-length VRs cannot carry 0xFFFFFFFF at all; of the 4-byte ones
    # only OB OD OF OL OV OW SQ UN may be undefined (PS3.5 7.1.2).
    if vr in LONG:
        data = element(0x00100010, vr, b"", length=UNDEFINED) + marker(0xFFFEE0DD, 0)
        with pytest.raises(ValueError, match="undefined length"):
            HeaderScanner((0x00200010,)).scan(data)
    else:
        data = element(0x00100010, vr, b"", length=0xFFFF)
        assert HeaderScanner((0x00200010,)).scan(data)[1] == TRUNCATED


@pytest.mark.parametrize("vr", ["OB", "OW", "OF", "OD", "OL", "OV", "SQ", "UN"])
def test_undefined_length_allowed_vrs(vr: str) -> None:
    data = sequence(0x00091010, [item(b"\0\0", undefined=False)], vr=vr) + element(0x00100010, "PN", b"A")
    assert HeaderScanner((0x00100010,)).scan(data)[0] == (b"A",)


@pytest.mark.parametrize(
    "data",
    [
        marker(0xFFFEE000, 0) + element(0x00100010, "PN", b"A"),  # item at top level
        marker(0xFFFEE0DD, 0),  # sequence delimiter at top level
        # something other than an item inside a sequence
        element(0x00081032, "SQ", b"", length=UNDEFINED) + element(0x00080100, "SH", b"XX"),
        # a sequence delimiter where an item's elements are expected
        element(0x00081032, "SQ", b"", length=UNDEFINED) + marker(0xFFFEE000, UNDEFINED) + marker(0xFFFEE0DD, 0),
    ],
    ids=["item-top", "delimiter-top", "non-item-in-sq", "seqdelim-in-item"],
)
def test_structure_errors(data: bytes) -> None:
    with pytest.raises(ValueError):
        HeaderScanner((0x00200010,)).scan(data + b"\0" * 16)


def test_nesting_depth_is_capped() -> None:
    opening = element(0x00081032, "SQ", b"", length=UNDEFINED) + marker(0xFFFEE000, UNDEFINED)
    data = opening * 300  # 600 stack levels
    with pytest.raises(ValueError, match="nested deeper"):
        HeaderScanner((0x00200010,)).scan(data)
    # 200 levels deep, properly closed, is fine
    closing = marker(0xFFFEE00D, 0) + marker(0xFFFEE0DD, 0)
    deep = opening * 200 + closing * 200 + element(0x00200010, "SH", b"OK")
    assert HeaderScanner((0x00200010,)).scan(deep)[0] == (b"OK",)


def test_huge_lengths_are_truncation_not_overreads() -> None:
    for length in (0xFFFFFFFE, 0x7FFFFFFF, 0x80000000):
        data = element(0x00100010, "OB", b"abc", length=length)
        assert HeaderScanner((0x00200010,)).scan(data) == ((None,), TRUNCATED, 0)
        data = element(0x00081032, "SQ", b"", length=UNDEFINED) + marker(0xFFFEE000, length)
        assert HeaderScanner((0x00200010,)).scan(data)[1] == TRUNCATED


@pytest.mark.parametrize(
    "tags",
    [(2, 1), (1, 1), (0x7FE00010,), (0x7FE00008,), (0xFFFEE000,), (-1,), ("x",), (1 << 32,)],
)
def test_bad_tag_sets(tags: tuple[object, ...]) -> None:
    with pytest.raises(ValueError):
        HeaderScanner(tags)  # type: ignore[arg-type]


def test_bad_syntax() -> None:
    with pytest.raises(ValueError):
        HeaderScanner(()).scan(b"", 7)


def test_long_length_vrs_are_ps35_table_7_1_1() -> None:
    # The one set of VRs with reserved bytes and a 32-bit length (the scanner's
    # C test, exposed to Python); pydicom's writer uses the same table.
    from pydicom.valuerep import EXPLICIT_VR_LENGTH_32

    assert LONG_LENGTH_VRS == frozenset(str(vr).encode() for vr in EXPLICIT_VR_LENGTH_32)

"""The one element walker (_ext/header.pyx and its .pxd cursor) behind the
end-of-data-set check and the file meta: ``check_dataset_end`` walks the
part of a received data set past its head with ``walk_to_end``, and
``read_file_meta`` is a HeaderScanner over group 0002."""

from __future__ import annotations

import pytest
from test_header_scanner import UNDEFINED, element, marker, sequence

from fastscp._ext.header import (
    EXPLICIT_VR_BE,
    EXPLICIT_VR_LE,
    IMPLICIT_VR_LE,
    HeaderScanner,
    walk_to_end,
)
from fastscp.storage.header import (
    MalformedDataset,
    check_dataset_end,
    file_meta,
    read_file_meta,
)

UIDS = {IMPLICIT_VR_LE: "1.2.840.10008.1.2", EXPLICIT_VR_LE: "1.2.840.10008.1.2.1", EXPLICIT_VR_BE: "1.2.840.10008.1.2.2"}
SYNTAXES = list(UIDS)


def encapsulated(syntax: int, fragments: list[bytes]) -> bytes:
    """Data set ending in encapsulated pixel data (PS3.5 A.4): basic offset table, fragments, delimiter."""
    items = marker(0xFFFEE000, 0, syntax) + b"".join(marker(0xFFFEE000, len(f), syntax) + f for f in fragments)
    return (element(0x00080016, "UI", b"1.2\0", syntax) + element(0x00280010, "US", b"\0\x02", syntax)
            + element(0x7FE00010, "OB", items + marker(0xFFFEE0DD, 0, syntax), syntax, length=UNDEFINED))


def check(data: bytes, syntax: int, head: int, reads: list[tuple[int, int]] | None = None) -> None:
    def read_at(offset: int, n: int) -> bytes:
        if reads is not None:
            reads.append((offset, n))
        return data[offset:offset + n]

    check_dataset_end(data[:head], len(data), UIDS[syntax], read_at)


@pytest.mark.parametrize("syntax", SYNTAXES)
def test_encapsulated_pixel_data_past_the_head_is_walked_to_its_delimiter(syntax: int) -> None:
    data = encapsulated(syntax, [b"\x01" * 10, b"\x02" * 6])
    for head in (0, 8, 24, len(data)):
        reads: list[tuple[int, int]] = []
        check(data, syntax, head, reads)
        assert all(offset + n > head for offset, n in reads)  # the head is not read again
        assert bool(reads) == (head < len(data))  # fragments past the head come from read_at
    element_ends = {len(element(0x00080016, "UI", b"1.2\0", syntax)),
                    len(element(0x00080016, "UI", b"1.2\0", syntax) + element(0x00280010, "US", b"\0\x02", syntax))}
    for cut in range(1, len(data)):
        if cut in element_ends:
            continue  # a shorter but whole data set
        with pytest.raises(MalformedDataset):
            check(data[:cut], syntax, min(cut, 8))


def test_bad_item_in_encapsulated_pixel_data() -> None:
    data = bytearray(encapsulated(EXPLICIT_VR_LE, [b"\x01" * 10]))
    data[-8:-8] = marker(0xFFFEE000, UNDEFINED)  # before the delimiter: an item of undefined length
    with pytest.raises(MalformedDataset, match="bad item"):
        check(bytes(data), EXPLICIT_VR_LE, 8)


def test_undefined_length_element_after_pixel_data_is_not_followed() -> None:
    data = (element(0x00080016, "UI", b"1.2\0") + element(0x7FE00010, "OW", b"\0" * 8)
            + sequence(0xFFFAFFFA, [marker(0xFFFEE000, 4) + b"abcd"]))  # (FFFA,FFFA) Digital Signatures SQ
    check(data, EXPLICIT_VR_LE, 8)
    check(data + b"junk that is never read", EXPLICIT_VR_LE, 8)


def test_last_element_running_past_the_end() -> None:
    data = element(0x00080016, "UI", b"1.2\0") + element(0x7FE00010, "OW", b"\0" * 8)
    with pytest.raises(MalformedDataset, match="runs 8 bytes past"):
        check_dataset_end(data[:12], len(data) - 8, UIDS[EXPLICIT_VR_LE], lambda o, n: data[o:o + n])


def test_walk_to_end_refuses_a_short_read() -> None:
    data = element(0x00080016, "UI", b"1.2\0") + element(0x7FE00010, "OW", b"\0" * 8)
    with pytest.raises(ValueError, match="inside an element header"):
        walk_to_end(data[:12], 12, len(data), EXPLICIT_VR_LE, lambda o, n: b"\xe0\x7f")
    walk_to_end(data[:12], 12, len(data), EXPLICIT_VR_LE, lambda o, n: data[o:o + n])
    with pytest.raises(ValueError, match="unknown syntax"):
        walk_to_end(data, 0, len(data), 7, lambda o, n: b"")


def part10(meta: bytes, dataset: bytes) -> bytes:
    return b"\0" * 128 + b"DICM" + meta + dataset


META = (element(0x00020000, "UL", b"\0\0\0\0") + element(0x00020001, "OB", b"\0\x01")
        + element(0x00020002, "UI", b"1.2.840.10008.5.1.4.1.1.2\0") + element(0x00020003, "UI", b"1.2.3.4\0")
        + element(0x00020010, "UI", b"1.2.840.10008.1.2\0") + element(0x00020012, "UI", b"1.2.3\0"))


def test_file_meta_walks_group_0002_and_reads_its_uids() -> None:
    dataset = element(0x00080016, "UI", b"1.2\0", IMPLICIT_VR_LE)
    meta = file_meta(part10(META, dataset))
    assert (meta.dataset_offset, meta.transfer_syntax_uid) == (132 + len(META), "1.2.840.10008.1.2")
    assert (meta.sop_class_uid, meta.sop_instance_uid) == ("1.2.840.10008.5.1.4.1.1.2", "1.2.3.4")
    assert read_file_meta(part10(META, dataset)) == (132 + len(META), "1.2.840.10008.1.2")
    assert read_file_meta(part10(META, b"")) == (132 + len(META), "1.2.840.10008.1.2")  # meta only


def test_file_meta_ends_at_the_first_element_of_another_group_even_a_lower_one() -> None:
    # (0000,xxxx) or (0001,xxxx) right after the meta belongs to the data set, not the meta
    for tag in (0x00000000, 0x00010010, 0x00030000, 0x00080005):
        raw = part10(META, element(tag, "UL", b"\0\0\0\0") + element(0x00100010, "PN", b"A^B"))
        assert read_file_meta(raw)[0] == 132 + len(META), hex(tag)


def test_file_meta_cut_inside_an_element() -> None:
    raw = part10(META, b"")
    with pytest.raises(MalformedDataset, match="truncated"):
        read_file_meta(raw[:-3])  # (0002,0012)'s value cut
    with pytest.raises(MalformedDataset, match="preamble"):
        read_file_meta(raw[4:])
    # a tail too short for an element header ends the meta, as before
    assert read_file_meta(raw + b"\x08\x00")[0] == len(raw)


def test_group_scanner_arguments() -> None:
    with pytest.raises(ValueError, match="not in group"):
        HeaderScanner((0x00020010, 0x00080016), group=2)
    values, _, offset = HeaderScanner((0x00020010,), group=2).scan(META + element(0x00080016, "UI", b"1.2\0"))
    assert values == (b"1.2.840.10008.1.2\0",) and offset == len(META)

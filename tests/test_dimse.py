"""The command-set codec (PS3.7 6.3.1, E.1): decode_command against command
sets encoded by pynetdicom/pydicom, and our encoded responses read back by
pydicom."""

from __future__ import annotations

import struct
from io import BytesIO

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from _pdu_fixtures import CT_IMAGE, VERIFICATION
from pydicom.dataset import Dataset
from pynetdicom.dimse_primitives import C_ECHO, C_STORE
from pynetdicom.dimse_messages import C_ECHO_RQ as PynetdicomEchoRQ
from pynetdicom.dimse_messages import C_STORE_RQ as PynetdicomStoreRQ
from pynetdicom.dsutils import decode as pynetdicom_decode
from pynetdicom.dsutils import encode as pynetdicom_encode

from fastscp.protocol import dimse as D
from fastscp.protocol.dimse import decode_command


def element(group: int, elem: int, value: bytes, length: int | None = None) -> bytes:
    """One implicit VR little endian element: group, element, 4-byte length, value."""
    return struct.pack("<HHI", group, elem, len(value) if length is None else length) + value


def pynetdicom_store_rq() -> bytes:
    """A C-STORE-RQ command set as pynetdicom puts it on the wire."""
    primitive = C_STORE()
    primitive.MessageID = 12345
    primitive.AffectedSOPClassUID = CT_IMAGE
    primitive.AffectedSOPInstanceUID = "1.2.826.0.1.3680043.2.1125.1.99"  # odd length: padded with NUL
    primitive.Priority = 2
    primitive.MoveOriginatorApplicationEntityTitle = "MOVER"
    primitive.MoveOriginatorMessageID = 77
    primitive.DataSet = BytesIO(b"\x08\x00\x16\x00\x00\x00\x00\x00")
    msg = PynetdicomStoreRQ()
    msg.primitive_to_message(primitive)
    return pynetdicom_encode(msg.command_set, True, True)


def test_decode_pynetdicom_store_request():
    cmd = decode_command(pynetdicom_store_rq())
    assert cmd[D.COMMAND_FIELD] == D.C_STORE_RQ
    assert cmd[D.MESSAGE_ID] == 12345
    assert cmd[D.AFFECTED_SOP_CLASS] == CT_IMAGE
    assert cmd[D.AFFECTED_SOP_INSTANCE] == "1.2.826.0.1.3680043.2.1125.1.99"  # NUL padding stripped
    assert cmd[D.PRIORITY] == 2
    assert cmd[D.MOVE_ORIGINATOR_AE] == "MOVER"  # space padding stripped
    assert cmd[D.MOVE_ORIGINATOR_ID] == 77
    assert D.has_dataset(cmd)
    # the group length is a UL and counts every byte after its own element
    raw = pynetdicom_store_rq()
    assert cmd[0x00000000] == len(raw) - 12


def test_decode_pynetdicom_echo_request_has_no_dataset():
    primitive = C_ECHO()
    primitive.MessageID = 1
    primitive.AffectedSOPClassUID = VERIFICATION
    msg = PynetdicomEchoRQ()
    msg.primitive_to_message(primitive)
    cmd = decode_command(pynetdicom_encode(msg.command_set, True, True))
    assert cmd[D.COMMAND_FIELD] == D.C_ECHO_RQ
    assert cmd[D.DATA_SET_TYPE] == D.NO_DATA_SET
    assert not D.has_dataset(cmd)


def test_decode_value_types():
    raw = (
        element(0, 0x0002, b"1.2.3\x00")  # UI with NUL padding
        + element(0, 0x0100, struct.pack("<H", 0x8001))  # US
        + element(0, 0x0900, struct.pack("<H", 0xA700))  # US, > 0x7FFF stays unsigned
        + element(0, 0x0901, struct.pack("<HHHH", 0x0010, 0x0020, 0x7FE0, 0x0010))  # AT: two tags
        + element(0, 0x0902, b"  no room ")  # LO, surrounding spaces dropped
        + element(0, 0x5010, b"\x01\x02\x03")  # not a command element we know: raw bytes
    )
    cmd = decode_command(raw)
    assert cmd == {
        0x00000002: "1.2.3",
        0x00000100: 0x8001,
        0x00000900: 0xA700,
        0x00000901: (0x00100020, 0x7FE00010),
        0x00000902: "no room",
        0x00005010: b"\x01\x02\x03",
    }


def test_decode_ul_with_high_bit():
    assert decode_command(element(0, 0, b"\xff\xff\xff\xff")) == {0: 0xFFFFFFFF}


def test_decode_empty_and_zero_length_text():
    assert decode_command(b"") == {}
    assert decode_command(element(0, 0x1000, b"")) == {0x00001000: ""}


@pytest.mark.parametrize("cut", [1, 4, 7])
def test_truncated_element_header(cut):
    good = element(0, 0x0100, b"\x30\x00")
    with pytest.raises(ValueError, match="truncated"):
        decode_command(good + good[:cut])


def test_element_running_past_the_command_set():
    with pytest.raises(ValueError, match="runs past"):
        decode_command(element(0, 0x1000, b"1.2.3.4", length=8))
    with pytest.raises(ValueError):  # undefined length is not allowed in a command set
        decode_command(element(0, 0x1000, b"1.2", length=0xFFFFFFFF))


def test_truncated_value_of_a_real_command():
    raw = pynetdicom_store_rq()
    for cut in range(1, len(raw)):
        try:
            cmd = decode_command(raw[:cut])
        except ValueError:
            continue
        # a cut that happens to fall between elements decodes to a prefix
        assert len(cmd) < len(decode_command(raw))


@pytest.mark.parametrize("value", [b"\x01", b"\x01\x00\x00\x00"])
def test_us_of_the_wrong_length(value):
    with pytest.raises(ValueError, match="US"):
        decode_command(element(0, 0x0110, value))


def test_ul_of_the_wrong_length():
    with pytest.raises(ValueError):
        decode_command(element(0, 0x0000, b"\x01\x00"))


def test_element_outside_group_0000():
    with pytest.raises(ValueError, match="outside group 0000"):
        decode_command(element(0, 0x0100, b"\x01\x00") + element(0x0008, 0x0016, b"1.2\x00"))


# ---- encoding ------------------------------------------------------------------------------


def read_back(raw: bytes) -> Dataset:
    return pynetdicom_decode(BytesIO(raw), True, True)


def check_well_formed(raw: bytes) -> None:
    """Group length first and right, tags ascending, every value even-length."""
    tags, pos = [], 0
    while pos < len(raw):
        group, elem, length = struct.unpack_from("<HHI", raw, pos)
        assert group == 0 and length % 2 == 0
        tags.append(elem)
        pos += 8 + length
    assert pos == len(raw)
    assert tags[0] == 0 and tags == sorted(tags) and len(set(tags)) == len(tags)
    assert struct.unpack_from("<I", raw, 8)[0] == len(raw) - 12


def test_echo_response_read_by_pydicom():
    raw = D.encode_response(D.C_ECHO_RSP, 42, D.SUCCESS, VERIFICATION)
    check_well_formed(raw)
    ds = read_back(raw)
    assert ds.CommandField == 0x8030
    assert ds.MessageIDBeingRespondedTo == 42
    assert ds.Status == 0
    assert ds.CommandDataSetType == 0x0101
    assert ds.AffectedSOPClassUID == VERIFICATION


def test_store_response_with_comment_read_by_pydicom():
    raw = D.encode_response(D.C_STORE_RSP, 65535, D.ERROR_CANNOT_UNDERSTAND, CT_IMAGE, "1.2.3.45", "header unreadable")
    check_well_formed(raw)
    ds = read_back(raw)
    assert ds.CommandField == D.C_STORE_RSP
    assert ds.MessageIDBeingRespondedTo == 65535
    assert ds.Status == 0xC000
    assert ds.AffectedSOPClassUID == CT_IMAGE
    assert ds.AffectedSOPInstanceUID == "1.2.3.45"
    assert ds.ErrorComment == "header unreadable"
    assert decode_command(raw)[D.ERROR_COMMENT] == "header unreadable"


def test_error_comment_is_cut_to_64_characters():
    raw = D.encode_response(D.C_STORE_RSP, 1, D.REFUSED_OUT_OF_RESOURCES, CT_IMAGE, "1.2", "x" * 200)
    check_well_formed(raw)
    assert len(decode_command(raw)[D.ERROR_COMMENT]) == 64


def test_store_request_round_trip_and_pydicom():
    raw = D.encode_request(D.C_STORE_RQ, 9, CT_IMAGE, "1.2.840.99.7", data_set=True, priority=1)
    check_well_formed(raw)
    cmd = decode_command(raw)
    assert cmd[D.COMMAND_FIELD] == D.C_STORE_RQ and cmd[D.MESSAGE_ID] == 9 and cmd[D.PRIORITY] == 1
    assert cmd[D.AFFECTED_SOP_INSTANCE] == "1.2.840.99.7" and D.has_dataset(cmd)
    ds = read_back(raw)
    assert ds.AffectedSOPInstanceUID == "1.2.840.99.7" and ds.CommandDataSetType == 0


def test_echo_request_has_no_priority_and_no_dataset():
    raw = D.encode_request(D.C_ECHO_RQ, 3, VERIFICATION)
    check_well_formed(raw)
    cmd = decode_command(raw)
    assert D.PRIORITY not in cmd and not D.has_dataset(cmd)


# decode_command's VR of each element (PS3.7 Table E.1-1), written out here
# independently of _ext/framer.pyx's switch, and the decoding each VR gets.
_VRS = {
    0x0000: "UL", 0x0002: "UI", 0x0003: "UI", 0x0100: "US", 0x0110: "US", 0x0120: "US", 0x0600: "AE",
    0x0700: "US", 0x0800: "US", 0x0900: "US", 0x0901: "AT", 0x0902: "LO", 0x0903: "US", 0x1000: "UI",
    0x1001: "UI", 0x1002: "US", 0x1005: "AT", 0x1008: "US", 0x1020: "US", 0x1021: "US", 0x1022: "US",
    0x1023: "US", 0x1030: "AE", 0x1031: "US",
}


def _reference_value(vr: str | None, raw: bytes) -> object:
    if vr == "US":
        return struct.unpack("<H", raw)[0]
    if vr == "UL":
        return struct.unpack("<I", raw)[0]
    if vr == "AT":
        return tuple((g << 16) | e for g, e in struct.iter_unpack("<HH", raw[: len(raw) // 4 * 4]))
    if vr is not None:
        return raw.rstrip(b"\x00 ").decode("ascii", "replace").lstrip()
    return raw


_TEXT_BYTES = st.lists(st.sampled_from([b" ", b"\0", b"\t", b"\x1c", b"\x1f", b"\x0b", b"1", b".", b"A", b"\xe9",
                                        b"\x7f", b"\x85", b"="]), max_size=10).map(b"".join)


@given(st.lists(st.tuples(st.sampled_from([*_VRS, 0x0004, 0x0005, 0x5000, 0xFFFF]), _TEXT_BYTES), max_size=8))
@settings(max_examples=500, deadline=None)
def test_decoded_values_follow_each_elements_vr(elements: list[tuple[int, bytes]]) -> None:
    data, expected = b"", {}
    for tag, text in elements:
        vr = _VRS.get(tag)
        raw = {"US": text[:2].ljust(2, b"\0"), "UL": text[:4].ljust(4, b"\0")}.get(vr or "", text)
        data += element(0, tag, raw)
        expected[tag] = _reference_value(vr, raw)
    assert decode_command(data) == expected

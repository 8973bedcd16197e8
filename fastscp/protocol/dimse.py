"""DIMSE command sets (PS3.7 section 9 and Annex E): what a decoded command
means, and the encoded responses we send.

Command sets are always implicit VR little endian. Decoding is done by the
Cython ``decode_command``; this module interprets the {tag: value} dict and
encodes the few responses an SCP sends (C-ECHO-RSP, C-STORE-RSP, and a
generic failure for commands we do not serve).
"""

from __future__ import annotations

import functools
import struct
from collections.abc import Mapping
from typing import Any

from .._ext.framer import decode_command  # noqa: F401  (re-exported)

# Command fields (PS3.7 E.1)
C_STORE_RQ = 0x0001
C_STORE_RSP = 0x8001
C_ECHO_RQ = 0x0030
C_ECHO_RSP = 0x8030
C_CANCEL_RQ = 0x0FFF
C_GET_RQ = 0x0010
C_GET_RSP = 0x8010
C_FIND_RQ = 0x0020
C_FIND_RSP = 0x8020
C_MOVE_RQ = 0x0021
C_MOVE_RSP = 0x8021
N_EVENT_REPORT_RQ = 0x0100
N_EVENT_REPORT_RSP = 0x8100
N_ACTION_RQ = 0x0130
N_ACTION_RSP = 0x8130
RESPONSE_BIT = 0x8000

# Tags
AFFECTED_SOP_CLASS = 0x00000002
COMMAND_FIELD = 0x00000100
MESSAGE_ID = 0x00000110
REQUESTED_SOP_CLASS = 0x00000003
MESSAGE_ID_RESPONDED = 0x00000120
MOVE_DESTINATION = 0x00000600
PRIORITY = 0x00000700
DATA_SET_TYPE = 0x00000800
STATUS = 0x00000900
OFFENDING_ELEMENT = 0x00000901
ERROR_COMMENT = 0x00000902
AFFECTED_SOP_INSTANCE = 0x00001000
REQUESTED_SOP_INSTANCE = 0x00001001
EVENT_TYPE_ID = 0x00001002
ACTION_TYPE_ID = 0x00001008
REMAINING_SUBOPERATIONS = 0x00001020
COMPLETED_SUBOPERATIONS = 0x00001021
FAILED_SUBOPERATIONS = 0x00001022
WARNING_SUBOPERATIONS = 0x00001023
MOVE_ORIGINATOR_AE = 0x00001030
MOVE_ORIGINATOR_ID = 0x00001031

NO_DATA_SET = 0x0101

# Statuses (PS3.7 C, PS3.4 B.2.3)
SUCCESS = 0x0000
PENDING = 0xFF00
CANCEL = 0xFE00
REFUSED_OUT_OF_RESOURCES = 0xA700
ERROR_DATASET_DOES_NOT_MATCH_SOP_CLASS = 0xA900
ERROR_CANNOT_UNDERSTAND = 0xC000
SOP_CLASS_NOT_SUPPORTED = 0x0122
UNRECOGNIZED_OPERATION = 0x0211
DUPLICATE_INVOCATION = 0x0210
RESOURCE_LIMITATION = 0x0213
WARNING_ELEMENTS_DISCARDED = 0xB006


def has_dataset(command: dict[int, Any]) -> bool:
    data_set_type: int = command.get(DATA_SET_TYPE, NO_DATA_SET)
    return data_set_type != NO_DATA_SET


def _element(tag: int, value: bytes) -> bytes:
    return struct.pack("<HHI", tag >> 16, tag & 0xFFFF, len(value)) + value


def _text(value: str) -> bytes:
    raw = value.encode("ascii", "replace")
    return raw + b"\x00" if len(raw) % 2 else raw


def _lo(value: str) -> bytes:
    raw = value.encode("ascii", "replace")[:64]
    return raw + b" " if len(raw) % 2 else raw


def _us(value: int) -> bytes:
    return struct.pack("<H", value)


def encode_response(
    command_field: int,
    message_id: int,
    status: int,
    sop_class_uid: str = "",
    sop_instance_uid: str = "",
    error_comment: str = "",
) -> bytes:
    """An encoded response command set, group length first, elements in tag order."""
    # Command Field, Message ID Being Responded To, Command Data Set Type and
    # Status are consecutive fixed-size US elements: one pack for the four.
    fixed = _FIXED4.pack(0, 0x0100, 2, command_field, 0, 0x0120, 2, message_id,
                         0, 0x0800, 2, NO_DATA_SET, 0, 0x0900, 2, status)
    body = b"".join((
        _uid_element(AFFECTED_SOP_CLASS, sop_class_uid) if sop_class_uid else b"",
        fixed,
        _element(ERROR_COMMENT, _lo(error_comment)) if error_comment else b"",
        _element(AFFECTED_SOP_INSTANCE, _text(sop_instance_uid)) if sop_instance_uid else b"",
    ))
    return _GROUP_LENGTH.pack(0, 0, 4, len(body)) + body


_FIXED4 = struct.Struct("<" + "HHIH" * 4)
_GROUP_LENGTH = struct.Struct("<HHII")


@functools.lru_cache(maxsize=512)
def _uid_element(tag: int, uid: str) -> bytes:
    """A UI element of a value that repeats (SOP Class UIDs): cached."""
    return _element(tag, _text(uid))


def encode_request(command_field: int, message_id: int, sop_class_uid: str, sop_instance_uid: str = "",
                   data_set: bool = False, priority: int = 0) -> bytes:
    """An encoded request command set (used by tests and client tools)."""
    elements = [_element(AFFECTED_SOP_CLASS, _text(sop_class_uid)), _element(COMMAND_FIELD, _us(command_field)),
                _element(MESSAGE_ID, _us(message_id))]
    if command_field == C_STORE_RQ:
        elements.append(_element(PRIORITY, _us(priority)))
    elements.append(_element(DATA_SET_TYPE, _us(0x0000 if data_set else NO_DATA_SET)))
    if sop_instance_uid:
        elements.append(_element(AFFECTED_SOP_INSTANCE, _text(sop_instance_uid)))
    body = b"".join(elements)
    return _element(0x00000000, struct.pack("<I", len(body))) + body


# The VR of each command element we encode (PS3.7 E.1): US, UI, AE or LO.
_COMMAND_VR = {
    AFFECTED_SOP_CLASS: "UI", REQUESTED_SOP_CLASS: "UI", COMMAND_FIELD: "US", MESSAGE_ID: "US",
    MESSAGE_ID_RESPONDED: "US", MOVE_DESTINATION: "AE", PRIORITY: "US", DATA_SET_TYPE: "US", STATUS: "US",
    ERROR_COMMENT: "LO", AFFECTED_SOP_INSTANCE: "UI", REQUESTED_SOP_INSTANCE: "UI", EVENT_TYPE_ID: "US",
    ACTION_TYPE_ID: "US", REMAINING_SUBOPERATIONS: "US", COMPLETED_SUBOPERATIONS: "US",
    FAILED_SUBOPERATIONS: "US", WARNING_SUBOPERATIONS: "US", MOVE_ORIGINATOR_AE: "AE", MOVE_ORIGINATOR_ID: "US",
    OFFENDING_ELEMENT: "AT",
}


def encode_command(fields: Mapping[int, int | str | tuple[int, ...]], has_data_set: bool) -> bytes:
    """Any command set (PS3.7 E.1) from {tag: value}: group length first,
    elements in tag order, Command Data Set Type from ``has_data_set``.
    An AT element (Offending Element) takes a tuple of tags. Empty strings
    and tuples are left out. Raises KeyError for a tag it has no VR for."""
    items = dict(fields)
    items[DATA_SET_TYPE] = 0x0000 if has_data_set else NO_DATA_SET
    parts = []
    for tag in sorted(items):
        value = items[tag]
        vr = _COMMAND_VR[tag]
        if vr == "US":
            assert isinstance(value, int)
            parts.append(_element(tag, _us(value)))
        elif vr == "AT":
            assert isinstance(value, tuple)
            if value:
                parts.append(_element(tag, b"".join(struct.pack("<HH", t >> 16, t & 0xFFFF) for t in value)))
        elif isinstance(value, str) and value:
            parts.append(_element(tag, _text(value) if vr == "UI" else _lo(value)))
    body = b"".join(parts)
    return _GROUP_LENGTH.pack(0, 0, 4, len(body)) + body

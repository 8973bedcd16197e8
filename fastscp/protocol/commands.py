"""DIMSE requests as typed values (PS3.7 9.3): what a received command set asks.

``parse_request(command)`` turns the framer's ``{tag: value}`` command set
into one of the frozen request types below, so the service dispatches on a
type and reads named fields, not tags. Requests a service of ours does not
handle come back as ``OtherRequest`` (the service answers 0x0211
"unrecognized operation", PS3.7 C.4.2). Sans-I/O, like the rest of
``protocol/``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from ..frozen import quick_init
from . import dimse as D

__all__ = [
    "CCancelRequest",
    "CEchoRequest",
    "CFindRequest",
    "CGetRequest",
    "CMoveRequest",
    "CStoreRequest",
    "DimseResponse",
    "NActionRequest",
    "OtherRequest",
    "Request",
    "parse_request",
]


@dataclasses.dataclass(frozen=True, slots=True)
class CEchoRequest:
    """C-ECHO-RQ (PS3.7 9.3.5.1)."""

    message_id: int
    affected_sop_class_uid: str


@quick_init
@dataclasses.dataclass(frozen=True, slots=True)
class CStoreRequest:
    """C-STORE-RQ (PS3.7 9.3.1.1); ``has_dataset`` is False only for a
    malformed request (a C-STORE always carries its data set)."""

    message_id: int
    affected_sop_class_uid: str
    affected_sop_instance_uid: str
    priority: int
    has_dataset: bool
    move_originator_ae: str = ""
    move_originator_id: int | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class CCancelRequest:
    """C-CANCEL-RQ (PS3.7 9.3.2.3): cancels ``message_id_responded``."""

    message_id_responded: int


@dataclasses.dataclass(frozen=True, slots=True)
class CFindRequest:
    """C-FIND-RQ (PS3.7 9.1.2.1): the identifier is its data set."""

    message_id: int
    affected_sop_class_uid: str
    priority: int
    has_dataset: bool


@dataclasses.dataclass(frozen=True, slots=True)
class CGetRequest:
    """C-GET-RQ (PS3.7 9.1.3.1): the identifier is its data set."""

    message_id: int
    affected_sop_class_uid: str
    priority: int
    has_dataset: bool


@dataclasses.dataclass(frozen=True, slots=True)
class CMoveRequest:
    """C-MOVE-RQ (PS3.7 9.1.4.1): the identifier is its data set; the
    instances go to ``move_destination`` (an AE title)."""

    message_id: int
    affected_sop_class_uid: str
    priority: int
    move_destination: str
    has_dataset: bool


@dataclasses.dataclass(frozen=True, slots=True)
class NActionRequest:
    """N-ACTION-RQ (PS3.7 10.1.4.1): Storage Commitment's request
    (PS3.4 J.3.2) has Action Type ID 1 and its data set lists the
    instances."""

    message_id: int
    requested_sop_class_uid: str
    requested_sop_instance_uid: str
    action_type_id: int
    has_dataset: bool


@dataclasses.dataclass(frozen=True, slots=True)
class DimseResponse:
    """Any response (Command Field with bit 15 set) to a request we sent:
    C-STORE-RSP of a C-GET's sub-operation, N-EVENT-REPORT-RSP."""

    command_field: int
    message_id_responded: int
    status: int
    affected_sop_class_uid: str
    affected_sop_instance_uid: str
    error_comment: str
    has_dataset: bool


@dataclasses.dataclass(frozen=True, slots=True)
class OtherRequest:
    """A command no service of ours handles; answered 0x0211."""

    command_field: int
    message_id: int
    affected_sop_class_uid: str
    has_dataset: bool


Request = (CEchoRequest | CStoreRequest | CCancelRequest | CFindRequest | CGetRequest | CMoveRequest
           | NActionRequest | DimseResponse | OtherRequest)


def parse_request(command: dict[int, Any]) -> Request:
    """The typed request of a decoded command set."""
    field = command.get(D.COMMAND_FIELD) or 0
    message_id = command.get(D.MESSAGE_ID, 0)
    sop_class = command.get(D.AFFECTED_SOP_CLASS, "")
    if field == D.C_STORE_RQ:
        return CStoreRequest(message_id, sop_class, command.get(D.AFFECTED_SOP_INSTANCE, ""),
                             command.get(D.PRIORITY, 0), D.has_dataset(command),
                             command.get(D.MOVE_ORIGINATOR_AE, ""), command.get(D.MOVE_ORIGINATOR_ID))
    if field == D.C_ECHO_RQ:
        return CEchoRequest(message_id, sop_class)
    if field == D.C_CANCEL_RQ:
        return CCancelRequest(command.get(D.MESSAGE_ID_RESPONDED, 0))
    priority = command.get(D.PRIORITY, 0)
    if field == D.C_FIND_RQ:
        return CFindRequest(message_id, sop_class, priority, D.has_dataset(command))
    if field == D.C_GET_RQ:
        return CGetRequest(message_id, sop_class, priority, D.has_dataset(command))
    if field == D.C_MOVE_RQ:
        return CMoveRequest(message_id, sop_class, priority, command.get(D.MOVE_DESTINATION, ""),
                            D.has_dataset(command))
    if field == D.N_ACTION_RQ:
        return NActionRequest(message_id, command.get(D.REQUESTED_SOP_CLASS, ""),
                              command.get(D.REQUESTED_SOP_INSTANCE, ""), command.get(D.ACTION_TYPE_ID, 0),
                              D.has_dataset(command))
    if field & D.RESPONSE_BIT:
        return DimseResponse(field, command.get(D.MESSAGE_ID_RESPONDED, 0), command.get(D.STATUS, 0),
                             sop_class, command.get(D.AFFECTED_SOP_INSTANCE, ""),
                             command.get(D.ERROR_COMMENT, ""), D.has_dataset(command))
    return OtherRequest(field, message_id, sop_class, D.has_dataset(command))

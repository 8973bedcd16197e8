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

from . import dimse as D

__all__ = ["CCancelRequest", "CEchoRequest", "CStoreRequest", "OtherRequest", "Request", "parse_request"]


@dataclasses.dataclass(frozen=True, slots=True)
class CEchoRequest:
    """C-ECHO-RQ (PS3.7 9.3.5.1)."""

    message_id: int
    affected_sop_class_uid: str


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
class OtherRequest:
    """A command no service of ours handles; answered 0x0211."""

    command_field: int
    message_id: int
    affected_sop_class_uid: str
    has_dataset: bool


Request = CEchoRequest | CStoreRequest | CCancelRequest | OtherRequest


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
    return OtherRequest(field, message_id, sop_class, D.has_dataset(command))

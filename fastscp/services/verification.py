"""The Verification service (PS3.4 Annex A): C-ECHO is answered Success."""

from __future__ import annotations

from ..protocol import dimse as D
from ..protocol.commands import CEchoRequest
from .session import Session

__all__ = ["echo"]


def echo(session: Session, context_id: int, request: CEchoRequest) -> None:
    """C-ECHO-RSP, Success, always (PS3.4 A.4: the SCP answers every C-ECHO)."""
    session.send(context_id, D.encode_response(D.C_ECHO_RSP, request.message_id, D.SUCCESS,
                                               request.affected_sop_class_uid))

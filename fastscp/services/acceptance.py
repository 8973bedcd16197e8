"""Whether to accept an association, and with what: a pure decision.

``decide`` takes the A-ASSOCIATE-RQ and the peer's address and returns
either the ``RejectReason`` to answer with (PS3.8 9.3.4: the access policy's
called/calling AE and address rules) or the negotiated presentation
contexts (``protocol.negotiation``). It has no state and does no I/O; the
dispatcher applies it, and takes a slot from the association limiter (the
one stateful check) only for a request the policy accepts.
"""

from __future__ import annotations

from ..access import AccessPolicy, RejectReason
from ..protocol import pdu as P
from ..protocol.negotiation import AcceptPolicy, Negotiated, negotiate

__all__ = ["decide"]


def decide(request: P.AssociateRequest, peer_ip: str, access: AccessPolicy,
           policy: AcceptPolicy) -> RejectReason | Negotiated:
    refusal = access.check(request.calling_ae, request.called_ae, peer_ip)
    if refusal is not None:
        return refusal
    return negotiate(request, policy)

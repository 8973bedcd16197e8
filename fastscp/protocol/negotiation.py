"""Presentation context negotiation (PS3.8 9.3.2.2 / 9.3.3.2, PS3.7 D.3.3).

For each proposed context: reject it if its abstract syntax is not one we
serve (result 3), else accept the FIRST proposed transfer syntax we accept
(the requestor lists them in its order of preference), else reject it (4).
SCP/SCU role selection is answered only for SOP classes that proposed it
(PS3.7 D.3.3.4): the requestor may keep the SCU role it proposes. The SCP
role it proposes is granted only for the SOP classes ``scp_role_ok``
accepts (the storage SOP classes, when C-GET is served: its sub-operations
are C-STOREs from us to the requestor on its own association); otherwise
it is refused, and a context left with no role for the requestor is
rejected (1).
An asynchronous operations window, if proposed, is answered 1/1 (no
asynchronous operations), which the standard allows. A SOP Class Extended
Negotiation sub-item (PS3.7 D.3.3.5) is answered only for a SOP class the
policy has an answer function for and whose context was accepted; the
function gets the proposed application information and returns ours (None:
no sub-item goes back, which D.3.3.5 allows and the requestor reads as no
extended behaviour).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping

from .pdu import (
    RESULT_ABSTRACT_SYNTAX_NOT_SUPPORTED,
    RESULT_ACCEPTANCE,
    RESULT_TRANSFER_SYNTAXES_NOT_SUPPORTED,
    RESULT_USER_REJECTION,
    AssociateRequest,
    ExtendedNegotiation,
    PresentationContextResult,
    RoleSelection,
)

VERIFICATION = "1.2.840.10008.1.1"


@dataclasses.dataclass(frozen=True, slots=True)
class AcceptPolicy:
    """What we accept. ``abstract_syntax_ok`` decides per SOP class UID."""

    abstract_syntax_ok: Callable[[str], bool]
    transfer_syntaxes: frozenset[str]
    # SOP class UID -> proposed application information -> ours (or None)
    extended: Mapping[str, Callable[[bytes], bytes | None]] = dataclasses.field(default_factory=dict)
    # SOP classes for which the requestor may take the SCP role (C-GET's storage classes)
    scp_role_ok: Callable[[str], bool] = dataclasses.field(default=lambda uid: False)


@dataclasses.dataclass(frozen=True, slots=True)
class Negotiated:
    results: tuple[PresentationContextResult, ...]
    roles: tuple[RoleSelection, ...]
    async_ops: tuple[int, int] | None
    extended: tuple[ExtendedNegotiation, ...] = ()

    @property
    def accepted(self) -> dict[int, PresentationContextResult]:
        return {r.context_id: r for r in self.results if r.result == RESULT_ACCEPTANCE}


def negotiate(request: AssociateRequest, policy: AcceptPolicy) -> Negotiated:
    proposed_roles = {r.sop_class_uid: r for r in request.roles}
    results = []
    for ctx in request.contexts:
        role = proposed_roles.get(ctx.abstract_syntax)
        if not policy.abstract_syntax_ok(ctx.abstract_syntax):
            result, ts = RESULT_ABSTRACT_SYNTAX_NOT_SUPPORTED, ""
        elif role is not None and not role.scu_role and not (role.scp_role and policy.scp_role_ok(role.sop_class_uid)):
            result, ts = RESULT_USER_REJECTION, ""
        else:
            ts = next((t for t in ctx.transfer_syntaxes if t in policy.transfer_syntaxes), "")
            result = RESULT_ACCEPTANCE if ts else RESULT_TRANSFER_SYNTAXES_NOT_SUPPORTED
        results.append(PresentationContextResult(ctx.context_id, result, ts, ctx.abstract_syntax))
    roles = tuple(RoleSelection(r.sop_class_uid, r.scu_role, r.scp_role and policy.scp_role_ok(r.sop_class_uid))
                  for r in request.roles)
    async_ops = (1, 1) if request.async_ops is not None else None
    return Negotiated(tuple(results), roles, async_ops, _extended(request, policy, results))


def _extended(request: AssociateRequest, policy: AcceptPolicy,
              results: list[PresentationContextResult]) -> tuple[ExtendedNegotiation, ...]:
    if not request.extended or not policy.extended:
        return ()
    accepted = {r.abstract_syntax for r in results if r.result == RESULT_ACCEPTANCE}
    answers: dict[str, ExtendedNegotiation] = {}
    for item in request.extended:
        answer = policy.extended.get(item.sop_class_uid)
        if answer is None or item.sop_class_uid not in accepted or item.sop_class_uid in answers:
            continue  # one answer per SOP class: the first proposal
        info = answer(item.info)
        if info is not None:
            answers[item.sop_class_uid] = ExtendedNegotiation(item.sop_class_uid, info)
    return tuple(answers.values())

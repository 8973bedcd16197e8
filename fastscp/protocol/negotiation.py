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
asynchronous operations), which the standard allows.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from .pdu import (
    RESULT_ABSTRACT_SYNTAX_NOT_SUPPORTED,
    RESULT_ACCEPTANCE,
    RESULT_TRANSFER_SYNTAXES_NOT_SUPPORTED,
    RESULT_USER_REJECTION,
    AssociateRequest,
    PresentationContextResult,
    RoleSelection,
)

VERIFICATION = "1.2.840.10008.1.1"


@dataclasses.dataclass(frozen=True, slots=True)
class AcceptPolicy:
    """What we accept. ``abstract_syntax_ok`` decides per SOP class UID."""

    abstract_syntax_ok: Callable[[str], bool]
    transfer_syntaxes: frozenset[str]
    # SOP classes for which the requestor may take the SCP role (C-GET's storage classes)
    scp_role_ok: Callable[[str], bool] = dataclasses.field(default=lambda uid: False)


@dataclasses.dataclass(frozen=True, slots=True)
class Negotiated:
    results: tuple[PresentationContextResult, ...]
    roles: tuple[RoleSelection, ...]
    async_ops: tuple[int, int] | None

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
    return Negotiated(tuple(results), roles, async_ops)

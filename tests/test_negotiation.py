"""Presentation context negotiation (PS3.8 9.3.3.2, PS3.7 D.3.3.3-4) on
requests encoded by pynetdicom."""

from __future__ import annotations

from _pdu_fixtures import CT_IMAGE, EXPLICIT_BE, EXPLICIT_LE, IMPLICIT_LE, JPEG_BASELINE, MR_IMAGE, VERIFICATION, associate_rq

from fastscp.protocol import pdu as P
from fastscp.protocol.negotiation import AcceptPolicy, negotiate

SERVED = {VERIFICATION, CT_IMAGE, MR_IMAGE}
POLICY = AcceptPolicy(abstract_syntax_ok=SERVED.__contains__, transfer_syntaxes=frozenset({IMPLICIT_LE, EXPLICIT_LE, JPEG_BASELINE}))


def results(raw: bytes, policy: AcceptPolicy = POLICY) -> dict[int, tuple[int, str]]:
    n = negotiate(P.decode_associate_rq(raw), policy)
    return {r.context_id: (r.result, r.transfer_syntax) for r in n.results}


def test_first_acceptable_transfer_syntax_in_proposal_order():
    got = results(associate_rq((
        (1, CT_IMAGE, (EXPLICIT_BE, JPEG_BASELINE, EXPLICIT_LE, IMPLICIT_LE)),
        (3, CT_IMAGE, (IMPLICIT_LE, EXPLICIT_LE)),
        (5, CT_IMAGE, (EXPLICIT_LE, IMPLICIT_LE)),
    )))
    # explicit BE is not in the policy; the requestor's order decides, not ours
    assert got == {1: (0, JPEG_BASELINE), 3: (0, IMPLICIT_LE), 5: (0, EXPLICIT_LE)}


def test_abstract_syntax_not_supported():
    got = results(associate_rq(((1, "1.2.840.10008.5.1.4.1.1.481.5", (IMPLICIT_LE,)), (3, VERIFICATION, (IMPLICIT_LE,)))))
    assert got == {1: (P.RESULT_ABSTRACT_SYNTAX_NOT_SUPPORTED, ""), 3: (0, IMPLICIT_LE)}


def test_no_acceptable_transfer_syntax():
    got = results(associate_rq(((7, MR_IMAGE, (EXPLICIT_BE, "1.2.840.10008.1.2.4.91")),)))
    assert got == {7: (P.RESULT_TRANSFER_SYNTAXES_NOT_SUPPORTED, "")}


def test_unsupported_abstract_syntax_wins_over_transfer_syntax():
    got = results(associate_rq(((1, "1.2.3.4", (EXPLICIT_BE,)),)))
    assert got[1][0] == P.RESULT_ABSTRACT_SYNTAX_NOT_SUPPORTED


def test_results_keep_the_proposal_order_and_abstract_syntax():
    n = negotiate(P.decode_associate_rq(associate_rq(((9, MR_IMAGE, (IMPLICIT_LE,)), (1, CT_IMAGE, (IMPLICIT_LE,)), (5, VERIFICATION, (IMPLICIT_LE,))))), POLICY)
    assert [r.context_id for r in n.results] == [9, 1, 5]
    assert [r.abstract_syntax for r in n.results] == [MR_IMAGE, CT_IMAGE, VERIFICATION]
    assert set(n.accepted) == {9, 1, 5}


def test_accepted_lists_only_accepted_contexts():
    n = negotiate(P.decode_associate_rq(associate_rq(((1, CT_IMAGE, (EXPLICIT_BE,)), (3, CT_IMAGE, (EXPLICIT_LE,))))), POLICY)
    assert set(n.accepted) == {3} and n.accepted[3].transfer_syntax == EXPLICIT_LE


def test_same_abstract_syntax_in_several_contexts_each_negotiated():
    got = results(associate_rq(((1, CT_IMAGE, (JPEG_BASELINE,)), (3, CT_IMAGE, (IMPLICIT_LE,)), (5, CT_IMAGE, ("1.2.840.10008.1.2.5",)))))
    assert got == {1: (0, JPEG_BASELINE), 3: (0, IMPLICIT_LE), 5: (4, "")}


def test_role_selection_scu_kept_scp_refused():
    n = negotiate(P.decode_associate_rq(associate_rq(((1, CT_IMAGE, (IMPLICIT_LE,)),), roles=((CT_IMAGE, True, True),))), POLICY)
    assert n.roles == (P.RoleSelection(CT_IMAGE, True, False),)
    assert n.results[0].result == P.RESULT_ACCEPTANCE


def test_role_selection_scu_only_answered_as_proposed():
    n = negotiate(P.decode_associate_rq(associate_rq(((1, MR_IMAGE, (IMPLICIT_LE,)),), roles=((MR_IMAGE, True, False),))), POLICY)
    assert n.roles == (P.RoleSelection(MR_IMAGE, True, False),)
    assert n.results[0].result == P.RESULT_ACCEPTANCE


def test_requestor_proposing_only_scp_role_is_rejected():
    n = negotiate(P.decode_associate_rq(associate_rq(
        ((1, CT_IMAGE, (IMPLICIT_LE,)), (3, MR_IMAGE, (IMPLICIT_LE,))), roles=((CT_IMAGE, False, True),))), POLICY)
    by_id = {r.context_id: r.result for r in n.results}
    assert by_id == {1: P.RESULT_USER_REJECTION, 3: P.RESULT_ACCEPTANCE}  # only the context whose role was refused
    # the reply never grants a role the requestor did not propose, nor our SCU role
    assert n.roles == (P.RoleSelection(CT_IMAGE, False, False),)


def test_no_role_items_means_no_role_replies():
    n = negotiate(P.decode_associate_rq(associate_rq(((1, CT_IMAGE, (IMPLICIT_LE,)),))), POLICY)
    assert n.roles == ()


def test_async_operations_window_answered_one_one():
    n = negotiate(P.decode_associate_rq(associate_rq(async_ops=(16, 8))), POLICY)
    assert n.async_ops == (1, 1)
    n = negotiate(P.decode_associate_rq(associate_rq(async_ops=None)), POLICY)
    assert n.async_ops is None


def test_policy_is_asked_per_abstract_syntax():
    asked = []
    policy = AcceptPolicy(abstract_syntax_ok=lambda uid: asked.append(uid) or uid == MR_IMAGE, transfer_syntaxes=frozenset({IMPLICIT_LE}))
    got = results(associate_rq(((1, CT_IMAGE, (IMPLICIT_LE,)), (3, MR_IMAGE, (IMPLICIT_LE,)))), policy)
    assert asked == [CT_IMAGE, MR_IMAGE]
    assert got == {1: (3, ""), 3: (0, IMPLICIT_LE)}


FIND = "1.2.840.10008.5.1.4.1.2.2.1"  # Study Root Query/Retrieve Information Model - FIND
PATIENT_FIND = "1.2.840.10008.5.1.4.1.2.1.1"


def test_extended_negotiation_answered_only_for_accepted_classes_with_an_answer():
    """PS3.7 D.3.3.5: a sub-item goes back only for a SOP class the policy
    answers and whose context was accepted; the answer is the policy's."""
    seen: list[bytes] = []

    def answer(info: bytes) -> bytes | None:
        seen.append(info)
        return b"\x01" + bytes(len(info) - 1)

    served = SERVED | {FIND}
    policy = AcceptPolicy(abstract_syntax_ok=served.__contains__, transfer_syntaxes=frozenset({IMPLICIT_LE}),
                          extended={FIND: answer, PATIENT_FIND: answer})
    rq = P.decode_associate_rq(associate_rq(
        ((1, FIND, (IMPLICIT_LE,)), (3, PATIENT_FIND, (IMPLICIT_LE,)), (5, CT_IMAGE, (IMPLICIT_LE,))),
        extended=((FIND, b"\x01\x01\x00"), (PATIENT_FIND, b"\x01"), (CT_IMAGE, b"\x01"))))
    n = negotiate(rq, policy)
    # PATIENT_FIND is not served (rejected context): no answer; CT has no answer function
    assert n.extended == (P.ExtendedNegotiation(FIND, b"\x01\x00\x00"),)
    assert seen == [b"\x01\x01\x00"]


def test_no_extended_negotiation_without_a_proposal_or_when_the_answer_is_none():
    served = SERVED | {FIND}
    policy = AcceptPolicy(abstract_syntax_ok=served.__contains__, transfer_syntaxes=frozenset({IMPLICIT_LE}),
                          extended={FIND: lambda info: None})
    assert negotiate(P.decode_associate_rq(associate_rq(((1, FIND, (IMPLICIT_LE,)),))), policy).extended == ()
    rq = P.decode_associate_rq(associate_rq(((1, FIND, (IMPLICIT_LE,)),), extended=((FIND, b"\x01"),)))
    assert negotiate(rq, policy).extended == ()
# ---- C-GET: the requestor takes the SCP role of storage SOP classes (PS3.7 D.3.3.4) ----

GET_POLICY = AcceptPolicy(abstract_syntax_ok=SERVED.__contains__, transfer_syntaxes=POLICY.transfer_syntaxes,
                          scp_role_ok={CT_IMAGE, MR_IMAGE}.__contains__)


def test_scp_role_granted_where_the_policy_allows_it():
    n = negotiate(P.decode_associate_rq(associate_rq(
        ((1, CT_IMAGE, (EXPLICIT_LE,)), (3, MR_IMAGE, (IMPLICIT_LE,))),
        roles=((CT_IMAGE, False, True), (MR_IMAGE, True, True)))), GET_POLICY)
    assert {r.context_id: (r.result, r.transfer_syntax) for r in n.results} == {1: (0, EXPLICIT_LE), 3: (0, IMPLICIT_LE)}
    # what was proposed is answered: SCP granted, SCU as proposed
    assert n.roles == (P.RoleSelection(CT_IMAGE, False, True), P.RoleSelection(MR_IMAGE, True, True))


def test_scp_role_refused_outside_the_policy():
    n = negotiate(P.decode_associate_rq(associate_rq(
        ((1, VERIFICATION, (IMPLICIT_LE,)), (3, CT_IMAGE, (IMPLICIT_LE,))),
        roles=((VERIFICATION, False, True), (CT_IMAGE, False, True)))), GET_POLICY)
    assert {r.context_id: r.result for r in n.results} == {1: P.RESULT_USER_REJECTION, 3: P.RESULT_ACCEPTANCE}
    assert n.roles == (P.RoleSelection(VERIFICATION, False, False), P.RoleSelection(CT_IMAGE, False, True))


def test_scp_role_granted_does_not_accept_an_unserved_sop_class():
    n = negotiate(P.decode_associate_rq(associate_rq(((1, "1.2.3.4", (IMPLICIT_LE,)),), roles=(("1.2.3.4", False, True),))),
                  AcceptPolicy(abstract_syntax_ok=SERVED.__contains__, transfer_syntaxes=POLICY.transfer_syntaxes,
                               scp_role_ok=lambda uid: True))
    assert n.results[0].result == P.RESULT_ABSTRACT_SYNTAX_NOT_SUPPORTED

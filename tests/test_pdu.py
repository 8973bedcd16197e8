"""Association PDU codecs (fastscp/protocol/pdu.py, PS3.8 9.3 and Annex D),
checked against pynetdicom's encoder and decoder."""

from __future__ import annotations

import struct

import pytest
from _pdu_fixtures import (
    ABORT_BY_PROVIDER_6,
    ABORT_BY_USER,
    APP_CONTEXT,
    CT_IMAGE,
    EXPLICIT_BE,
    EXPLICIT_LE,
    IMPLICIT_LE,
    JPEG_BASELINE,
    MR_IMAGE,
    RELEASE_RP,
    RELEASE_RQ,
    VERIFICATION,
    associate_ac,
    associate_rq,
    read_ac,
)
from pynetdicom.pdu import P_DATA_TF as PynetdicomPDataTF

from fastscp.protocol import pdu as P


def item(item_type: int, value: bytes) -> bytes:
    """A variable item / sub-item: type, reserved, 2-byte big-endian length, value (PS3.8 9.3.2.1)."""
    return struct.pack(">BBH", item_type, 0, len(value)) + value


def hand_rq(*items: bytes, version: int = 1, called: bytes = b"MY_PACS", calling: bytes = b"SENDER") -> bytes:
    """A-ASSOCIATE-RQ assembled per PS3.8 9.3.2: type 01, reserved, PDU length,
    protocol version, 2 reserved, called AE (16), calling AE (16), 32 reserved,
    then the variable items."""
    body = struct.pack(">HH", version, 0) + called.ljust(16) + calling.ljust(16) + bytes(32) + b"".join(items)
    return struct.pack(">BBI", 1, 0, len(body)) + body


APP_ITEM = item(0x10, APP_CONTEXT.encode())
# presentation context 1: Verification, implicit VR LE
PC_ITEM = item(0x20, bytes((1, 0, 0, 0)) + item(0x30, VERIFICATION.encode()) + item(0x40, IMPLICIT_LE.encode()))
# user information: maximum length 32768
USER_ITEM = item(0x50, item(0x51, struct.pack(">I", 32768)))


# ---- A-ASSOCIATE-RQ decoding --------------------------------------------------------------


def test_decode_pynetdicom_request():
    raw = associate_rq(
        ((1, VERIFICATION, (IMPLICIT_LE,)), (3, CT_IMAGE, (JPEG_BASELINE, EXPLICIT_LE, IMPLICIT_LE)), (255, MR_IMAGE, (EXPLICIT_BE,))),
        calling="MODALITY_01", called="ARCHIVE", max_pdu=28672,
        implementation_uid="1.2.3.4.5.6", implementation_version="VER_77",
        async_ops=(5, 3), roles=((CT_IMAGE, True, True), (MR_IMAGE, False, True)),
        user_identity=(1, b"alice"),
    )
    rq = P.decode_associate_rq(raw)
    assert rq.protocol_version == 1
    assert (rq.called_ae, rq.calling_ae) == ("ARCHIVE", "MODALITY_01")
    assert rq.application_context == APP_CONTEXT
    assert rq.contexts == (
        P.PresentationContextProposal(1, VERIFICATION, (IMPLICIT_LE,)),
        P.PresentationContextProposal(3, CT_IMAGE, (JPEG_BASELINE, EXPLICIT_LE, IMPLICIT_LE)),
        P.PresentationContextProposal(255, MR_IMAGE, (EXPLICIT_BE,)),
    )
    assert rq.max_pdu == 28672
    assert rq.implementation_class_uid == "1.2.3.4.5.6"
    assert rq.implementation_version_name == "VER_77"
    assert rq.async_ops == (5, 3)
    assert rq.roles == (P.RoleSelection(CT_IMAGE, True, True), P.RoleSelection(MR_IMAGE, False, True))
    assert rq.user_identity is not None and b"alice" in rq.user_identity


def test_decode_minimal_request_defaults():
    rq = P.decode_associate_rq(associate_rq(max_pdu=None, implementation_version=None))
    assert rq.max_pdu == 0  # no maximum length sub-item: unlimited
    assert rq.async_ops is None and rq.roles == () and rq.user_identity is None
    assert rq.implementation_version_name == ""


def test_decode_hand_assembled_request():
    rq = P.decode_associate_rq(hand_rq(APP_ITEM, PC_ITEM, USER_ITEM, version=3))
    assert rq.protocol_version == 3 and rq.max_pdu == 32768
    assert rq.contexts == (P.PresentationContextProposal(1, VERIFICATION, (IMPLICIT_LE,)),)


def test_uid_padding_is_stripped():
    pc = item(0x20, bytes((1, 0, 0, 0)) + item(0x30, VERIFICATION.encode() + b"\x00") + item(0x40, b"1.2.840.10008.1.2\x00"))
    rq = P.decode_associate_rq(hand_rq(item(0x10, APP_CONTEXT.encode() + b"\x00"), pc, USER_ITEM))
    assert rq.application_context == APP_CONTEXT
    assert rq.contexts[0].abstract_syntax == VERIFICATION and rq.contexts[0].transfer_syntaxes == (IMPLICIT_LE,)


def test_sop_class_extended_negotiation_is_decoded():
    """PS3.7 D.3.3.5: type 56H, UID length, UID, service class application information."""
    ext = item(0x56, struct.pack(">H", len(CT_IMAGE)) + CT_IMAGE.encode() + b"\x01")
    rq = P.decode_associate_rq(hand_rq(APP_ITEM, PC_ITEM, item(0x50, item(0x51, struct.pack(">I", 100)) + ext)))
    assert rq.max_pdu == 100
    assert rq.extended == (P.ExtendedNegotiation(CT_IMAGE, b"\x01"),)


def test_extended_negotiation_from_pynetdicom():
    find = "1.2.840.10008.5.1.4.1.2.2.1"
    rq = P.decode_associate_rq(associate_rq(((1, find, (IMPLICIT_LE,)),), extended=((find, b"\x01\x00\x01"),)))
    assert rq.extended == (P.ExtendedNegotiation(find, b"\x01\x00\x01"),)


@pytest.mark.parametrize("value", [b"\x00", struct.pack(">H", 40) + b"1.2.3"])
def test_malformed_extended_negotiation_is_refused(value):
    with pytest.raises(P.PDUError, match="extended negotiation"):
        P.decode_associate_rq(hand_rq(APP_ITEM, PC_ITEM, item(0x50, item(0x56, value))))


@pytest.mark.parametrize(
    "raw, words",
    [
        (hand_rq(APP_ITEM, PC_ITEM)[:73], "shorter"),
        (hand_rq(PC_ITEM), "application context"),
        (hand_rq(APP_ITEM), "presentation context"),
        (hand_rq(APP_ITEM, PC_ITEM), "user information"),
        (hand_rq(APP_ITEM, item(0x20, bytes((2, 0, 0, 0)) + item(0x30, VERIFICATION.encode()))), "even"),
        (hand_rq(APP_ITEM, PC_ITEM, PC_ITEM), "repeated"),
        (hand_rq(APP_ITEM, item(0x20, b"\x01\x00")), "too short"),
        (hand_rq(APP_ITEM, PC_ITEM, item(0x60, b"")), "unexpected item"),
        (hand_rq(APP_ITEM, item(0x20, bytes((1, 0, 0, 0)) + item(0x31, b"x"))), "sub-item"),
        (hand_rq(APP_ITEM, PC_ITEM, item(0x50, item(0x51, b"\x00\x01"))), "maximum length"),
        (hand_rq(APP_ITEM, PC_ITEM, item(0x50, item(0x53, b"\x00\x01"))), "asynchronous"),
        (hand_rq(APP_ITEM, PC_ITEM, item(0x50, item(0x54, b"\x00\x01"))), "role selection"),
        (hand_rq(APP_ITEM, PC_ITEM, item(0x50, item(0x54, b"\x00\x09" + CT_IMAGE.encode() + b"\x01\x00"))), "role selection"),
        (hand_rq(APP_ITEM, PC_ITEM) + b"\x10\x00", "truncated item header"),
        (hand_rq(APP_ITEM, PC_ITEM) + b"\x10\x00\x00\x09abc", "runs past"),
    ],
    ids=["short", "no-app-context", "no-context", "no-user-information", "even-id", "repeated-id", "short-context", "bad-item", "bad-sub-item",
         "max-length-size", "async-size", "role-short", "role-uid-length", "item-header-cut", "item-past-end"],
)
def test_malformed_request(raw, words):
    raw = raw[:2] + struct.pack(">I", len(raw) - 6) + raw[6:]  # keep the PDU length honest
    with pytest.raises(P.PDUError, match=words) as info:
        P.decode_associate_rq(raw)
    assert info.value.reason == 6


def test_every_truncation_of_a_request_is_a_pdu_error():
    """Cut anywhere (the PDU length kept honest), a request is refused. Two of
    the cuts fall between whole items, before the user information item: only
    its absence is wrong there (PS3.8 9.3.2 requires it)."""
    raw = associate_rq(((1, VERIFICATION, (IMPLICIT_LE,)), (3, CT_IMAGE, (EXPLICIT_LE,))), async_ops=(2, 2), roles=((CT_IMAGE, True, False),))
    P.decode_associate_rq(raw)  # whole, it decodes
    accepted = []
    for cut in range(len(raw)):
        body = raw[:cut]
        fixed = body[:2] + struct.pack(">I", max(0, len(body) - 6)) + body[6:] if len(body) >= 6 else body
        try:
            P.decode_associate_rq(fixed)
        except P.PDUError as exc:
            assert exc.reason == P.ABORT_INVALID_PARAMETER, (cut, exc)
        else:
            accepted.append(cut)
    assert accepted == [], f"truncated requests decoded without error at cuts {accepted} of {len(raw)}"


def test_request_without_user_information_is_aborted():
    """What the peer gets: an A-ABORT from the service provider, reason 6
    (invalid PDU parameter value), as for every malformed request (PS3.8
    Table 9-10: an invalid PDU in Sta2 is Evt19, AA-1)."""
    from fastscp.protocol.association import Aborted, Association

    assoc = Association()
    assoc.connection_made()
    [event] = assoc.feed(hand_rq(APP_ITEM, PC_ITEM))
    assert isinstance(event, Aborted) and not event.by_peer and event.reason == 6
    assert "user information" in event.description
    assert assoc.data_to_send() == ABORT_BY_PROVIDER_6
    assert assoc.state == "Sta13"


# ---- A-ASSOCIATE-AC / RJ encoding ----------------------------------------------------------


def test_accept_read_back_by_pynetdicom():
    rq = P.decode_associate_rq(associate_rq(
        ((1, VERIFICATION, (IMPLICIT_LE,)), (3, CT_IMAGE, (EXPLICIT_LE,)), (5, "1.2.3.999", (IMPLICIT_LE,))),
        calling="SCU_AE", called="SCP_AE"))
    accept = P.AssociateAccept(
        results=(
            P.PresentationContextResult(1, P.RESULT_ACCEPTANCE, IMPLICIT_LE),
            P.PresentationContextResult(3, P.RESULT_ACCEPTANCE, EXPLICIT_LE),
            P.PresentationContextResult(5, P.RESULT_ABSTRACT_SYNTAX_NOT_SUPPORTED, ""),
        ),
        max_pdu=65536,
        implementation_class_uid="1.2.826.0.1.3680043.10.1",
        implementation_version_name="FASTSCP_010",
        roles=(P.RoleSelection(CT_IMAGE, True, False),),
        async_ops=(1, 1),
        extended=(P.ExtendedNegotiation(CT_IMAGE, b"\x01\x00"),),
    )
    raw = P.encode_associate_ac(rq, accept)
    assert raw[0] == 0x02 and struct.unpack_from(">I", raw, 2)[0] == len(raw) - 6
    ac = read_ac(raw)
    assert ac["protocol_version"] == 1
    assert (ac["called_ae"], ac["calling_ae"]) == ("SCP_AE", "SCU_AE")  # echoed from the request
    assert ac["application_context"] == APP_CONTEXT
    assert ac["contexts"] == {1: (0, IMPLICIT_LE), 3: (0, EXPLICIT_LE), 5: (3, IMPLICIT_LE)}  # a rejected context still carries a (not significant) TS sub-item, PS3.8 9.3.3.2
    assert ac["max_pdu"] == 65536
    assert ac["implementation_class_uid"] == "1.2.826.0.1.3680043.10.1"
    assert ac["implementation_version_name"] == "FASTSCP_010"
    assert ac["roles"] == {CT_IMAGE: (True, False)}
    assert ac["async_ops"] == (1, 1)
    assert ac["extended"] == {CT_IMAGE: b"\x01\x00"}


def test_accept_without_optional_items():
    rq = P.decode_associate_rq(associate_rq())
    raw = P.encode_associate_ac(rq, P.AssociateAccept((P.PresentationContextResult(1, 0, IMPLICIT_LE),), 0, "1.2.3", "V"))
    ac = read_ac(raw)
    assert ac["max_pdu"] == 0 and ac["roles"] == {} and ac["async_ops"] is None and ac["extended"] == {}
    assert b"\x53\x00" not in raw[74:] and b"\x54\x00" not in raw[74:] and b"\x56\x00" not in raw[74:]


# ---- A-ASSOCIATE-AC decoding (the C-MOVE sender reads the destination's answer) ------------


def test_decode_pynetdicom_accept():
    raw = associate_ac(((1, 0, EXPLICIT_LE), (3, 3, IMPLICIT_LE), (5, 4, IMPLICIT_LE)), max_pdu=28672,
                       implementation_uid="1.2.3.4", implementation_version="VER_9",
                       roles=((CT_IMAGE, False, True),))
    ac = P.decode_associate_ac(raw)
    assert [(r.context_id, r.result) for r in ac.results] == [(1, 0), (3, 3), (5, 4)]
    assert ac.results[0].transfer_syntax == EXPLICIT_LE
    assert ac.max_pdu == 28672
    assert (ac.implementation_class_uid, ac.implementation_version_name) == ("1.2.3.4", "VER_9")
    assert ac.roles == (P.RoleSelection(CT_IMAGE, False, True),)


def test_decode_our_own_accept_round_trips():
    rq = P.decode_associate_rq(associate_rq(((1, VERIFICATION, (IMPLICIT_LE,)), (3, CT_IMAGE, (EXPLICIT_LE,)))))
    accept = P.AssociateAccept(
        results=(P.PresentationContextResult(1, P.RESULT_ACCEPTANCE, IMPLICIT_LE),
                 P.PresentationContextResult(3, P.RESULT_ABSTRACT_SYNTAX_NOT_SUPPORTED, IMPLICIT_LE)),
        max_pdu=65536, implementation_class_uid="1.2.3", implementation_version_name="V1",
        roles=(P.RoleSelection(CT_IMAGE, True, False),), async_ops=(1, 1),
        extended=(P.ExtendedNegotiation(CT_IMAGE, b"\x01"),))
    assert P.decode_associate_ac(P.encode_associate_ac(rq, accept)) == accept


def test_every_truncation_of_an_accept_is_a_pdu_error():
    raw = associate_ac(((1, 0, EXPLICIT_LE), (3, 0, IMPLICIT_LE)))
    for cut in range(len(raw)):
        body = raw[:cut]
        short = body[:2] + struct.pack(">I", max(len(body) - 6, 0)) + body[6:] if len(body) >= 6 else body
        if cut >= 74 and _whole_items(short):
            continue  # a cut between items leaves a shorter, well-formed PDU
        with pytest.raises(P.PDUError):
            P.decode_associate_ac(short)


def _whole_items(pdu: bytes) -> bool:
    pos = 74
    while pos + 4 <= len(pdu):
        pos += 4 + struct.unpack_from(">H", pdu, pos + 2)[0]
    return pos == len(pdu)


@pytest.mark.parametrize("result, source, reason", [(1, 1, 1), (1, 1, 2), (1, 2, 2), (2, 3, 1), (2, 3, 2), (1, 1, 7)])
def test_reject_bytes(result, source, reason):
    # type 03, reserved, length 4, reserved, result, source, reason/diag (PS3.8 9.3.4)
    assert P.encode_associate_rj(result, source, reason) == bytes((3, 0, 0, 0, 0, 4, 0, result, source, reason))


def test_release_and_abort_bytes():
    assert P.encode_release_rq() == RELEASE_RQ
    assert P.encode_release_rp() == RELEASE_RP
    assert P.encode_abort(0, 0) == ABORT_BY_USER
    assert P.encode_abort(2, 6) == ABORT_BY_PROVIDER_6


def test_decode_abort():
    assert P.decode_abort(ABORT_BY_PROVIDER_6) == (2, 6)
    assert P.decode_abort(ABORT_BY_USER) == (0, 0)
    assert P.decode_abort(b"\x07\x00\x00\x00\x00\x00") == (2, 0)  # too short: lenient


# ---- P-DATA-TF encoding -------------------------------------------------------------------


def split_pdata(raw: bytes) -> list[tuple[int, int, bytes, int]]:
    """(PDU length, context ID, fragment, message control header) of each PDU,
    checking each one also decodes with pynetdicom."""
    out, pos = [], 0
    while pos < len(raw):
        assert raw[pos] == 4
        (length,) = struct.unpack_from(">I", raw, pos + 2)
        pdu = raw[pos : pos + 6 + length]
        theirs = PynetdicomPDataTF()
        theirs.decode(pdu)
        [(ctx, value)] = [(v.presentation_context_id, v.presentation_data_value) for v in theirs.presentation_data_value_items]
        out.append((length, ctx, value[1:], value[0]))
        pos += 6 + length
    assert pos == len(raw)
    return out


@pytest.mark.parametrize("max_pdu", [7, 16, 100, 1006, 4096])
def test_pdata_respects_peer_maximum(max_pdu):
    payload = bytes(range(256)) * 8
    pdus = split_pdata(P.encode_pdata(5, payload, True, max_pdu))
    assert all(length <= max_pdu for length, *_ in pdus)
    assert b"".join(frag for _, _, frag, _ in pdus) == payload
    assert [mch for *_, mch in pdus] == [1] * (len(pdus) - 1) + [3]
    assert {ctx for _, ctx, _, _ in pdus} == {5}
    # fills each PDU: no more PDUs than needed
    assert len(pdus) == -(-len(payload) // (max_pdu - 6))


def test_pdata_unlimited_and_dataset_flag():
    payload = b"x" * 300000
    [(length, ctx, frag, mch)] = split_pdata(P.encode_pdata(1, payload, False, 0))
    assert (length, ctx, mch) == (300006, 1, 2) and frag == payload


def test_pdata_empty_payload_is_one_empty_last_fragment():
    raw = P.encode_pdata(3, b"", True, 1000)
    assert raw == bytes.fromhex("04 00 00000006 00000002 03 03")

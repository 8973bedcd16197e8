"""Typed DIMSE requests from decoded command sets (PS3.7 9.3)."""

from __future__ import annotations

from fastscp._ext.framer import decode_command
from fastscp.protocol import dimse as D
from fastscp.protocol.commands import (
    CCancelRequest,
    CEchoRequest,
    CFindRequest,
    CGetRequest,
    CMoveRequest,
    CStoreRequest,
    DimseResponse,
    NActionRequest,
    OtherRequest,
    parse_request,
)

CT = "1.2.840.10008.5.1.4.1.1.2"


def test_c_store_request_fields() -> None:
    cmd = decode_command(D.encode_request(D.C_STORE_RQ, 7, CT, "1.2.3.4", data_set=True, priority=2))
    assert parse_request(cmd) == CStoreRequest(7, CT, "1.2.3.4", 2, True)


def test_c_store_without_a_data_set_says_so() -> None:
    cmd = decode_command(D.encode_request(D.C_STORE_RQ, 8, CT, "1.2.3.4", data_set=False))
    request = parse_request(cmd)
    assert isinstance(request, CStoreRequest) and not request.has_dataset


def test_echo_cancel_and_other() -> None:
    echo = decode_command(D.encode_request(D.C_ECHO_RQ, 3, "1.2.840.10008.1.1"))
    assert parse_request(echo) == CEchoRequest(3, "1.2.840.10008.1.1")
    assert parse_request({D.COMMAND_FIELD: D.C_CANCEL_RQ, D.MESSAGE_ID_RESPONDED: 5}) == CCancelRequest(5)
    find = decode_command(D.encode_request(0x0020, 4, "1.2.840.10008.5.1.4.1.2.2.1", data_set=True))
    assert parse_request(find) == CFindRequest(4, "1.2.840.10008.5.1.4.1.2.2.1", 0, True)
    n_set = decode_command(D.encode_request(0x0120, 6, "1.2.840.10008.1.20.1", data_set=True))  # N-SET-RQ
    assert parse_request(n_set) == OtherRequest(0x0120, 6, "1.2.840.10008.1.20.1", True)


def test_queries_actions_and_responses() -> None:
    move = decode_command(D.encode_command({D.COMMAND_FIELD: D.C_MOVE_RQ, D.MESSAGE_ID: 7, D.PRIORITY: 0,
                                            D.AFFECTED_SOP_CLASS: "1.2.840.10008.5.1.4.1.2.2.2",
                                            D.MOVE_DESTINATION: "STORESCP"}, True))
    assert parse_request(move) == CMoveRequest(7, "1.2.840.10008.5.1.4.1.2.2.2", 0, "STORESCP", True)
    get = decode_command(D.encode_command({D.COMMAND_FIELD: D.C_GET_RQ, D.MESSAGE_ID: 8,
                                           D.AFFECTED_SOP_CLASS: "1.2.840.10008.5.1.4.1.2.2.3"}, True))
    assert parse_request(get) == CGetRequest(8, "1.2.840.10008.5.1.4.1.2.2.3", 0, True)
    action = decode_command(D.encode_command({D.COMMAND_FIELD: D.N_ACTION_RQ, D.MESSAGE_ID: 9,
                                              D.REQUESTED_SOP_CLASS: "1.2.840.10008.1.20.1",
                                              D.REQUESTED_SOP_INSTANCE: "1.2.840.10008.1.20.1.1",
                                              D.ACTION_TYPE_ID: 1}, True))
    assert parse_request(action) == NActionRequest(9, "1.2.840.10008.1.20.1", "1.2.840.10008.1.20.1.1", 1, True)
    rsp = decode_command(D.encode_response(D.C_STORE_RSP, 11, 0xB000, "1.2.3", "1.2.3.4", "coerced"))
    assert parse_request(rsp) == DimseResponse(D.C_STORE_RSP, 11, 0xB000, "1.2.3", "1.2.3.4", "coerced", False)

"""Typed DIMSE requests from decoded command sets (PS3.7 9.3)."""

from __future__ import annotations

from fastscp._ext.framer import decode_command
from fastscp.protocol import dimse as D
from fastscp.protocol.commands import CCancelRequest, CEchoRequest, CStoreRequest, OtherRequest, parse_request

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
    assert parse_request(find) == OtherRequest(0x0020, 4, "1.2.840.10008.5.1.4.1.2.2.1", True)

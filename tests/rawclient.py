"""A deliberately low-level DICOM client for fault tests: it can stop, abort
or reset the connection at any byte. Built from PS3.8 9.3 by hand (not from
fastscp's own encoders, so a shared misreading cannot hide)."""

from __future__ import annotations

import socket
import struct

CT = "1.2.840.10008.5.1.4.1.1.2"
EXPLICIT_LE = "1.2.840.10008.1.2.1"


def _item(t: int, value: bytes) -> bytes:
    return struct.pack(">BBH", t, 0, len(value)) + value


def associate_rq(called: str, calling: str, contexts: list[tuple[int, str, list[str]]], max_pdu: int = 16384) -> bytes:
    body = struct.pack(">HH", 1, 0) + called.encode().ljust(16) + calling.encode().ljust(16) + bytes(32)
    body += _item(0x10, b"1.2.840.10008.3.1.1.1")
    for cid, abstract, transfers in contexts:
        sub = _item(0x30, abstract.encode()) + b"".join(_item(0x40, t.encode()) for t in transfers)
        body += _item(0x20, bytes((cid, 0, 0, 0)) + sub)
    body += _item(0x50, _item(0x51, struct.pack(">I", max_pdu)) + _item(0x52, b"1.2.3.4"))
    return struct.pack(">BBI", 1, 0, len(body)) + body


def pdata(context_id: int, payload: bytes, command: bool, last: bool) -> bytes:
    mch = (1 if command else 0) | (2 if last else 0)
    return struct.pack(">BBIIBB", 4, 0, len(payload) + 6, len(payload) + 2, context_id, mch) + payload


def c_store_rq(message_id: int, sop_class: str, sop_instance: str) -> bytes:
    def el(tag: int, value: bytes) -> bytes:
        return struct.pack("<HHI", 0, tag, len(value)) + value

    def ui(v: str) -> bytes:
        raw = v.encode()
        return raw + b"\0" if len(raw) % 2 else raw

    body = (el(0x0002, ui(sop_class)) + el(0x0100, struct.pack("<H", 1)) + el(0x0110, struct.pack("<H", message_id))
            + el(0x0700, struct.pack("<H", 0)) + el(0x0800, struct.pack("<H", 0)) + el(0x1000, ui(sop_instance)))
    return el(0x0000, struct.pack("<I", len(body))) + body


ABORT = bytes((7, 0, 0, 0, 0, 4, 0, 0, 0, 0))
RELEASE_RQ = bytes((5, 0, 0, 0, 0, 4, 0, 0, 0, 0))


def read_pdu(sock: socket.socket) -> tuple[int, bytes]:
    head = _recv_exact(sock, 6)
    (length,) = struct.unpack(">I", head[2:])
    return head[0], head + _recv_exact(sock, length)


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("closed")
        buf += chunk
    return buf


def connect_and_associate(port: int, called: str = "FASTSCP", contexts: list[tuple[int, str, list[str]]] | None = None,
                          calling: str = "RAWSCU") -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(associate_rq(called, calling, contexts or [(1, CT, [EXPLICIT_LE])]))
    pdu_type, _ = read_pdu(sock)
    if pdu_type != 2:
        raise AssertionError(f"association not accepted (PDU type {pdu_type})")
    return sock


def reset(sock: socket.socket) -> None:
    """Close with a TCP RST instead of a FIN."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()

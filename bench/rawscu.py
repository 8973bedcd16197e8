"""A lean C-STORE sender on a plain socket, for round-trip latency.

pynetdicom's sender costs about 3-5 ms per message of its own (its reactor
and DIMSE threads hand each message over through queues), which is ten
times a fast receiver's time per instance: its p50 and p99 say more about
the sender than about the receiver. This one encodes every message before
the clock starts, then per instance does one ``sendall`` and reads the
answer; what it adds is a few tens of microseconds, the same for every
receiver.

It speaks only what a latency run needs (PS3.8 9.3 for the PDUs, PS3.7
9.1.1 and E.1 for the command): one A-ASSOCIATE-RQ with one presentation
context per SOP class of the files and the files' own transfer syntax, a
C-STORE-RQ per file (the command in one PDV, the data set in PDVs as large
as the receiver's maximum PDU allows), one answer read per request, then
A-RELEASE. An answer that is not a C-STORE-RSP, or an association that is
refused or aborted, raises ``ProtocolError``. The files must be Part-10
files whose file meta group is Explicit VR Little Endian (they all are).
"""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

APPLICATION_CONTEXT = b"1.2.840.10008.3.1.1.1"
IMPLEMENTATION_CLASS = b"1.2.826.0.1.3680043.10.1234.99"


class ProtocolError(RuntimeError):
    """The receiver answered something this sender does not expect."""


@dataclass(frozen=True)
class Instance:
    """One file: its SOP class, SOP instance, transfer syntax and data set bytes."""

    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax_uid: str
    dataset: bytes


def _even(value: bytes) -> bytes:
    return value + b"\0" if len(value) % 2 else value


def read_part10(path: Path) -> Instance:
    """The file meta group's UIDs and the data set that follows it."""
    data = path.read_bytes()
    if data[128:132] != b"DICM":
        raise ValueError(f"{path}: not a Part-10 file")
    pos, meta_end = 132, None
    values: dict[int, bytes] = {}
    while meta_end is None or pos < meta_end:
        group, element = struct.unpack_from("<HH", data, pos)
        if group != 2:
            break
        vr = data[pos + 4:pos + 6]
        if vr in (b"OB", b"OW", b"OF", b"SQ", b"UT", b"UN"):
            length = struct.unpack_from("<I", data, pos + 8)[0]
            start = pos + 12
        else:
            length = struct.unpack_from("<H", data, pos + 6)[0]
            start = pos + 8
        value = data[start:start + length]
        values[element] = value
        if element == 0x0000:
            meta_end = start + length + struct.unpack("<I", value)[0]
        pos = start + length
    uid = {key: values[key].rstrip(b"\0 ").decode() for key in (0x0002, 0x0003, 0x0010)}
    return Instance(uid[0x0002], uid[0x0003], uid[0x0010], data[pos:])


def _item(kind: int, body: bytes) -> bytes:
    return struct.pack(">BxH", kind, len(body)) + body


def associate_rq(calling: str, called: str, contexts: Sequence[tuple[int, str, str]], max_pdu: int) -> bytes:
    """A-ASSOCIATE-RQ (PS3.8 9.3.2): contexts are (id, abstract, transfer)."""
    items = _item(0x10, APPLICATION_CONTEXT)
    for context_id, abstract, transfer in contexts:
        items += _item(0x20, struct.pack(">B3x", context_id) + _item(0x30, abstract.encode())
                       + _item(0x40, transfer.encode()))
    items += _item(0x50, _item(0x51, struct.pack(">I", max_pdu)) + _item(0x52, IMPLEMENTATION_CLASS))
    body = (struct.pack(">HH", 1, 0) + called.encode().ljust(16) + calling.encode().ljust(16)
            + bytes(32) + items)
    return struct.pack(">BxI", 0x01, len(body)) + body


def _element(tag: int, value: bytes) -> bytes:
    """A command set element, Implicit VR Little Endian (PS3.7 6.3.1)."""
    return struct.pack("<HHI", 0x0000, tag, len(value)) + value


def c_store_rq(message_id: int, sop_class: str, sop_instance: str) -> bytes:
    """The C-STORE-RQ command set (PS3.7 9.3.1.1), with its group length."""
    body = (_element(0x0002, _even(sop_class.encode())) + _element(0x0100, struct.pack("<H", 0x0001))
            + _element(0x0110, struct.pack("<H", message_id)) + _element(0x0700, struct.pack("<H", 0))
            + _element(0x0800, struct.pack("<H", 0x0000)) + _element(0x1000, _even(sop_instance.encode())))
    return _element(0x0000, struct.pack("<I", len(body))) + body


def p_data(context_id: int, control: int, fragment: bytes) -> bytes:
    """One P-DATA-TF PDU with one PDV (PS3.8 9.3.5, E.2): control bit 0 =
    command, bit 1 = last fragment."""
    pdv = struct.pack(">IBB", len(fragment) + 2, context_id, control) + fragment
    return struct.pack(">BxI", 0x04, len(pdv)) + pdv


def message(context_id: int, message_id: int, instance: Instance, max_pdu: int) -> bytes:
    """All the PDUs of one C-STORE-RQ: the command, then the data set in
    fragments whose PDUs are at most ``max_pdu`` bytes long (PDV header 6)."""
    out = [p_data(context_id, 0x03, c_store_rq(message_id, instance.sop_class_uid, instance.sop_instance_uid))]
    step = max_pdu - 6
    data = instance.dataset
    for start in range(0, len(data), step):
        last = start + step >= len(data)
        out.append(p_data(context_id, 0x02 if last else 0x00, data[start:start + step]))
    return b"".join(out)


class Association:
    """One association to a Storage SCP on a blocking socket."""

    def __init__(self, host: str, port: int, calling: str, called: str,
                 syntaxes: Sequence[tuple[str, str]], max_pdu: int, timeout: float = 10.0,
                 send_pdu: int = 0) -> None:
        self.send_pdu = send_pdu  # our own limit on the PDUs we send (0: the peer's maximum alone)
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._buf = bytearray()
        contexts = [(2 * i + 1, abstract, transfer) for i, (abstract, transfer) in enumerate(syntaxes)]
        self.sock.sendall(associate_rq(calling, called, contexts, max_pdu))
        kind, body = self._pdu()
        if kind != 0x02:
            raise ProtocolError(f"association not accepted (PDU type {kind:#04x})")
        self.contexts: dict[tuple[str, str], int] = {}
        self.peer_max_pdu = 0  # 0: no limit (PS3.8 D.1)
        pos = 68
        while pos < len(body):
            item, length = body[pos], struct.unpack_from(">H", body, pos + 2)[0]
            value = body[pos + 4:pos + 4 + length]
            if item == 0x21 and value[2] == 0:  # accepted presentation context
                by_id = {cid: (abstract, transfer) for cid, abstract, transfer in contexts}
                self.contexts[by_id[value[0]]] = value[0]
            elif item == 0x50:
                sub = 0
                while sub < len(value):
                    sub_len = struct.unpack_from(">H", value, sub + 2)[0]
                    if value[sub] == 0x51:
                        self.peer_max_pdu = struct.unpack_from(">I", value, sub + 4)[0]
                    sub += 4 + sub_len
            pos += 4 + length

    def _read(self, n: int) -> bytes:
        while len(self._buf) < n:
            chunk = self.sock.recv(1 << 16)
            if not chunk:
                raise ProtocolError("connection closed")
            self._buf += chunk
        out = bytes(self._buf[:n])
        del self._buf[:n]
        return out

    def _pdu(self) -> tuple[int, bytes]:
        kind, length = struct.unpack(">BxI", self._read(6))
        return kind, self._read(length)

    def prepare(self, message_id: int, instance: Instance) -> bytes:
        """The bytes of one C-STORE-RQ for ``instance``."""
        context_id = self.contexts.get((instance.sop_class_uid, instance.transfer_syntax_uid))
        if context_id is None:
            raise ProtocolError(f"no accepted context for {instance.sop_class_uid}")
        limit = self.peer_max_pdu or 1 << 20
        return message(context_id, message_id, instance, min(limit, self.send_pdu) if self.send_pdu else limit)

    def store(self, request: bytes) -> int:
        """Send one prepared C-STORE-RQ; the status of its C-STORE-RSP."""
        self.sock.sendall(request)
        command = b""
        while True:
            kind, body = self._pdu()
            if kind != 0x04:
                raise ProtocolError(f"PDU type {kind:#04x} instead of the answer")
            pos = 0
            while pos < len(body):
                length = struct.unpack_from(">I", body, pos)[0]
                control = body[pos + 5]
                command += body[pos + 6:pos + 4 + length]
                pos += 4 + length
                if control & 0x03 == 0x03:  # last fragment of a command
                    return _status(command)

    def release(self) -> None:
        self.sock.sendall(struct.pack(">BxI", 0x05, 4) + bytes(4))
        try:
            self._pdu()  # A-RELEASE-RP
        finally:
            self.sock.close()


def _status(command: bytes) -> int:
    pos, fields = 0, {}
    while pos + 8 <= len(command):
        _group, element, length = struct.unpack_from("<HHI", command, pos)
        fields[element] = command[pos + 8:pos + 8 + length]
        pos += 8 + length
    if struct.unpack("<H", fields.get(0x0100, b"\0\0"))[0] != 0x8001:
        raise ProtocolError("answer is not a C-STORE-RSP")
    return int(struct.unpack("<H", fields[0x0900])[0])


def measure(port: int, files: Sequence[Path], called: str, max_pdu: int,
            send_pdu: int = 0) -> tuple[list[float], int]:
    """Send ``files`` one by one over one association, in PDUs of at most
    ``send_pdu`` bytes (0: the peer's maximum): each round trip in seconds
    (send of the request to the whole answer) and the number of answers
    that were not Success."""
    instances = [read_part10(path) for path in files]
    syntaxes = sorted({(i.sop_class_uid, i.transfer_syntax_uid) for i in instances})
    assoc = Association("127.0.0.1", port, "LATENCY", called, syntaxes, max_pdu, send_pdu=send_pdu)
    requests = [assoc.prepare(n % 65535 + 1, inst) for n, inst in enumerate(instances)]
    times: list[float] = []
    failures = 0
    try:
        for request in requests:
            t0 = time.perf_counter()
            status = assoc.store(request)
            times.append(time.perf_counter() - t0)
            failures += status != 0x0000
    finally:
        assoc.release()
    return times, failures

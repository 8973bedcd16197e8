"""A blocking C-STORE SCU association on the project's own PDU code: the
sending side of C-MOVE's sub-operations (PS3.4 C.4.2.3).

``StoreAssociation`` connects (TCP_NODELAY, optionally TLS), proposes one
presentation context per (SOP class, transfer syntax) pair, each with that
one transfer syntax (PS3.8 9.3.2.2), and sends files as stored: the
command set, then the file's data set read from disk in pieces of the
peer's maximum PDU, the PDUs of each 1 MiB read in one ``sendmsg``
(header and file bytes as separate buffers), no decoding. It
waits for each C-STORE-RSP before the next (no asynchronous operations).
Used from a worker thread; nothing here touches the event loop.
"""

from __future__ import annotations

import os
import socket
import ssl
import struct
from typing import BinaryIO

from .._ext.framer import decode_command
from ..protocol import dimse as D
from ..protocol import pdu as P
from ..storage.part10 import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME

__all__ = ["AssociationLost", "StoreAssociation", "dataset_offset"]

MAX_PDU = 131072  # what we accept from the peer (its responses are small)
_HEAD = 65536  # bytes read to find the end of the file meta

_LONG_VRS = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"})
_CONTEXT_RESULTS = {  # PS3.8 Table 9-18
    P.RESULT_USER_REJECTION: "user rejection",
    P.RESULT_NO_REASON: "no reason given",
    P.RESULT_ABSTRACT_SYNTAX_NOT_SUPPORTED: "abstract syntax (SOP class) not supported",
    P.RESULT_TRANSFER_SYNTAXES_NOT_SUPPORTED: "transfer syntax not supported",
}


class AssociationLost(Exception):
    """The association could not be opened, or it ended: no more sub-operations."""


def dataset_offset(head: bytes | memoryview) -> int:
    """Where the data set starts in a Part-10 file (PS3.10 7.1): after the
    128-byte preamble, ``DICM`` and the File Meta group (0002), whose
    elements are walked (explicit VR little endian), not trusted from its
    group length. ValueError if ``head`` is not a Part-10 file's start or
    the meta group does not end within it."""
    if len(head) < 132 or bytes(head[128:132]) != b"DICM":
        raise ValueError("not a DICOM Part-10 file (no DICM prefix)")
    pos = 132
    while pos + 8 <= len(head):
        group = struct.unpack_from("<H", head, pos)[0]
        if group != 0x0002:
            return pos
        vr = bytes(head[pos + 4:pos + 6])
        if vr in _LONG_VRS:
            if pos + 12 > len(head):
                break
            pos += 12 + struct.unpack_from("<I", head, pos + 8)[0]
        else:
            pos += 8 + struct.unpack_from("<H", head, pos + 6)[0]
    if pos == len(head):
        return pos  # the meta group ends the file: an empty data set
    raise ValueError("file meta information runs past what was read")


def encode_associate_rq(calling_ae: str, called_ae: str, pairs: list[tuple[str, str]], max_pdu: int) -> bytes:
    """A-ASSOCIATE-RQ (PS3.8 9.3.2): context IDs 1, 3, 5, ... in ``pairs`` order."""
    body = [struct.pack(">HH", 1, 0), P._ae(called_ae), P._ae(calling_ae), bytes(32),
            P._item(0x10, P.APPLICATION_CONTEXT.encode())]
    for n, (sop_class, ts) in enumerate(pairs):
        body.append(P._item(0x20, bytes((2 * n + 1, 0, 0, 0)) + P._item(0x30, sop_class.encode())
                            + P._item(0x40, ts.encode())))
    user = (P._item(0x51, struct.pack(">I", max_pdu)) + P._item(0x52, IMPLEMENTATION_CLASS_UID.encode())
            + P._item(0x55, IMPLEMENTATION_VERSION_NAME.encode()))
    body.append(P._item(0x50, user))
    return P._pdu(P.A_ASSOCIATE_RQ, b"".join(body))


class StoreAssociation:
    """One association to a Storage SCP; see the module doc."""

    def __init__(self, host: str, port: int, calling_ae: str, called_ae: str, pairs: list[tuple[str, str]],
                 timeout: float = 30.0, tls: ssl.SSLContext | None = None) -> None:
        self.where = f"{called_ae} at {host}:{port}"
        self.pairs = pairs
        self.accepted: dict[tuple[str, str], int] = {}
        self.refused: dict[tuple[str, str], str] = {}
        self.peer_max_pdu = 0
        self._message_ids = 0
        try:
            sock = socket.create_connection((host, port), timeout=timeout)
        except OSError as exc:
            raise AssociationLost(f"could not connect to {self.where}: {exc.strerror or exc}") from None
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if tls is not None:
            try:
                sock = tls.wrap_socket(sock, server_hostname=host)
            except (OSError, ssl.SSLError) as exc:
                sock.close()
                raise AssociationLost(f"TLS with {self.where} failed: {exc}") from None
        self.sock: socket.socket | None = sock
        try:
            self._send(encode_associate_rq(calling_ae, called_ae, pairs, MAX_PDU))
            pdu_type, body = self._read_pdu()
        except AssociationLost:
            self.close()
            raise
        if pdu_type == P.A_ASSOCIATE_RJ:
            self.close()
            raise AssociationLost(f"{self.where} rejected the association (result {body[1]}, source "
                                  f"{body[2]}, reason {body[3]})" if len(body) >= 4 else
                                  f"{self.where} rejected the association")
        if pdu_type != P.A_ASSOCIATE_AC:
            self.close()
            raise AssociationLost(f"{self.where} answered the association request with PDU type {pdu_type:#04x}")
        self._read_accept(body)

    def _read_accept(self, body: bytes) -> None:
        by_id = {2 * n + 1: pair for n, pair in enumerate(self.pairs)}
        for item_type, start, end in P._items(body, 68, len(body), "A-ASSOCIATE-AC"):
            if item_type == 0x21 and end - start >= 4:
                pair = by_id.get(body[start])
                if pair is None:
                    continue
                result = body[start + 2]
                if result == P.RESULT_ACCEPTANCE:
                    self.accepted[pair] = body[start]
                else:
                    self.refused[pair] = _CONTEXT_RESULTS.get(result, f"result {result}")
            elif item_type == 0x50:
                for sub_type, s, e in P._items(body, start, end, "user information"):
                    if sub_type == 0x51 and e - s == 4:
                        (self.peer_max_pdu,) = struct.unpack_from(">I", body, s)
        for pair in self.pairs:
            if pair not in self.accepted and pair not in self.refused:
                self.refused[pair] = "no answer for its context"

    # ---- I/O ----------------------------------------------------------------------------------

    def _send(self, *parts: bytes | memoryview) -> None:
        sock = self.sock
        if sock is None:
            raise AssociationLost(f"association with {self.where} closed")
        try:
            if len(parts) == 1 or isinstance(sock, ssl.SSLSocket):
                sock.sendall(b"".join(parts))
            else:
                buffers = [memoryview(p) for p in parts]
                while buffers:
                    sent = sock.sendmsg(buffers)
                    while buffers and sent >= len(buffers[0]):  # drop what went, keep the rest
                        sent -= len(buffers[0])
                        buffers.pop(0)
                    if buffers and sent:
                        buffers[0] = buffers[0][sent:]
        except OSError as exc:
            self.close()
            raise AssociationLost(f"association with {self.where} lost: {exc.strerror or exc}") from None

    def _recv_exact(self, n: int) -> bytes:
        sock = self.sock
        if sock is None:
            raise AssociationLost(f"association with {self.where} closed")
        out = bytearray()
        try:
            while len(out) < n:
                chunk = sock.recv(n - len(out))
                if not chunk:
                    raise AssociationLost(f"{self.where} closed the connection")
                out += chunk
        except OSError as exc:
            self.close()
            raise AssociationLost(f"association with {self.where} lost: {exc.strerror or exc}") from None
        return bytes(out)

    def _read_pdu(self) -> tuple[int, bytes]:
        head = self._recv_exact(6)
        pdu_type, _, length = struct.unpack(">BBI", head)
        if length > 16 << 20:
            raise AssociationLost(f"{self.where} sent a PDU of {length} bytes")
        return pdu_type, self._recv_exact(length)

    # ---- C-STORE --------------------------------------------------------------------------------

    def store(self, path: str, sop_class: str, sop_instance: str, transfer_syntax: str,
              originator_ae: str = "", originator_id: int | None = None, priority: int = 0) -> tuple[int, str]:
        """Send one file's data set as a C-STORE-RQ; (status, error comment).
        OSError/ValueError: the file cannot be read (nothing was sent).
        AssociationLost: the association ended."""
        context_id = self.accepted[(sop_class, transfer_syntax)]
        with open(path, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            head = fh.read(min(size, _HEAD))
            offset = dataset_offset(head)
            self._message_ids = self._message_ids % 0xFFFF + 1
            fields: dict[int, int | str] = {
                D.AFFECTED_SOP_CLASS: sop_class, D.COMMAND_FIELD: D.C_STORE_RQ, D.MESSAGE_ID: self._message_ids,
                D.PRIORITY: priority, D.AFFECTED_SOP_INSTANCE: sop_instance,
            }
            if originator_ae:
                fields[D.MOVE_ORIGINATOR_AE] = originator_ae
            if originator_id is not None:
                fields[D.MOVE_ORIGINATOR_ID] = originator_id
            self._send(P.encode_pdata(context_id, D.encode_command(fields, True), True, self.peer_max_pdu))
            try:
                self._send_file(fh, context_id, memoryview(head)[offset:], size - offset)
            except OSError as exc:  # the peer holds half a message: the association cannot go on
                self.abort()
                raise AssociationLost(f"reading {path} failed while sending it: {exc}") from None
        return self._response()

    def _send_file(self, fh: BinaryIO, context_id: int, pending: memoryview, remaining: int) -> None:
        """The data set as P-DATA-TF PDUs of at most the peer's maximum,
        read from ``fh`` in pieces of 1 MiB after what ``pending`` holds."""
        room = (self.peer_max_pdu or MAX_PDU) - 6
        if remaining == 0:
            self._send(_pdv_header(context_id, 0, True))
        while remaining > 0:
            if len(pending) == 0:
                pending = memoryview(fh.read(min(remaining, 1 << 20)))
                if len(pending) == 0:
                    raise OSError("the file shrank while being sent")
            # every PDU of what was read, headers and file bytes, in one sendmsg
            parts: list[bytes | memoryview] = []
            while len(pending) and len(parts) < 512:
                chunk, pending = pending[:room], pending[room:]
                remaining -= len(chunk)
                parts += (_pdv_header(context_id, len(chunk), remaining == 0), chunk)
            self._send(*parts)

    def _response(self) -> tuple[int, str]:
        command = bytearray()
        while True:
            pdu_type, body = self._read_pdu()
            if pdu_type == P.A_ABORT:
                self.close()
                raise AssociationLost(f"{self.where} aborted the association")
            if pdu_type != P.P_DATA_TF:
                self.abort()
                raise AssociationLost(f"{self.where} sent PDU type {pdu_type:#04x} instead of a C-STORE-RSP")
            pos = 0
            while pos + 6 <= len(body):
                (length,) = struct.unpack_from(">I", body, pos)
                header = body[pos + 5]
                command += body[pos + 6:pos + 4 + length]
                pos += 4 + length
                if header & 0x03 == 0x03:  # command, last fragment
                    fields = decode_command(bytes(command))
                    return int(fields.get(D.STATUS, 0xC000)), str(fields.get(D.ERROR_COMMENT, "") or "")

    # ---- ending ---------------------------------------------------------------------------------

    def release(self) -> None:
        """A-RELEASE-RQ, wait for A-RELEASE-RP (PS3.8 7.2), close."""
        if self.sock is None:
            return
        try:
            self._send(P.encode_release_rq())
            while self.sock is not None:
                pdu_type, _ = self._read_pdu()
                if pdu_type in (P.A_RELEASE_RP, P.A_ABORT):
                    break
        except AssociationLost:
            pass
        self.close()

    def abort(self) -> None:
        if self.sock is not None:
            try:
                self.sock.sendall(P.encode_abort(P.ABORT_SOURCE_USER, 0))
            except OSError:
                pass
        self.close()

    def close(self) -> None:
        sock, self.sock = self.sock, None
        if sock is not None:
            sock.close()


def _pdv_header(context_id: int, length: int, last: bool) -> bytes:
    """P-DATA-TF PDU header and its one PDV item header for a data set fragment."""
    return struct.pack(">BBIIBB", P.P_DATA_TF, 0, length + 6, length + 2, context_id, 2 if last else 0)

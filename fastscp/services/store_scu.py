"""A blocking C-STORE SCU association on the project's own PDU code: the
sending side of C-MOVE's sub-operations (PS3.4 C.4.2.3).

``StoreAssociation`` connects (TCP_NODELAY, TCP_QUICKACK again after each
read, optionally TLS), proposes one presentation context per (SOP class,
transfer syntax) pair, each with that one transfer syntax (PS3.8 9.3.2.2),
and sends files as stored, never decoded: the data set is read with
``os.preadv`` into one buffer that holds the P-DATA-TF PDU headers between
the pieces of the peer's maximum PDU (``frame_file``: the bytes copied
once, from the page cache; a file under 64 KB is taken from the first read
that finds its meta group), in pieces of about 4 MiB; the command PDU and the first piece go out in one
``sendmsg``. It waits for each C-STORE-RSP before the next (no
asynchronous operations), reading it with one ``recv`` as a rule.
Used from a worker thread; nothing here touches the event loop.
"""

from __future__ import annotations

import errno
import os
import socket
import ssl
import struct

from .._ext.framer import decode_command
from .._ext.sockio import tcp_quickack
from ..protocol import dimse as D
from ..protocol import pdu as P
from ..storage.header import read_file_meta
from ..storage.part10 import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME

__all__ = ["HEAD", "AssociationLost", "StoreAssociation", "dataset_offset", "frame_file"]

MAX_PDU = 131072  # what we accept from the peer (its responses are small)
HEAD = 65536  # the first read of a file: its meta group, and the whole of a small file
SEGMENT = 4 << 20  # a data set is framed and sent in pieces of about this
_PDV = struct.Struct(">BBIIBB")  # P-DATA-TF PDU header and its one PDV item header (PS3.8 9.3.5)
_IOV_MAX = 1024  # buffers per preadv (Linux's IOV_MAX)

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
    elements are walked by the storage's one element walker
    (``storage/header.read_file_meta``), not trusted from its group length.
    ValueError if ``head`` is not a Part-10 file's start or the meta group
    does not end within it."""
    offset = read_file_meta(head)[0]  # MalformedDataset is a ValueError
    if bytes(head[offset:offset + 2]) == b"\x02\x00":  # a meta element cut by the end of the head
        raise ValueError("file meta information runs past what was read")
    return offset


def _preadv_all(fd: int, views: list[memoryview], offset: int) -> None:
    """Fill ``views`` from ``fd`` at ``offset`` (preadv, IOV_MAX at a time,
    short reads continued); OSError if the file ends first."""
    pending = [v for v in views if len(v)]
    while pending:
        batch = pending[:_IOV_MAX]
        got = os.preadv(fd, batch, offset)
        if got == 0:
            raise OSError(errno.EIO, "the file shrank while being sent")
        offset += got
        done = 0
        while done < len(batch) and got >= len(batch[done]):
            got -= len(batch[done])
            done += 1
        rest = batch[done:]
        if rest and got:
            rest[0] = rest[0][got:]
        pending = rest + pending[len(batch):]


def frame_file(fd: int, offset: int, length: int, context_id: int, room: int, last: bool,
               head: bytes = b"") -> bytearray:
    """``length`` bytes of the file at ``offset`` as P-DATA-TF PDUs of a
    message's data set, ``room`` bytes of data each: the PDU and PDV headers
    written into one buffer and the file read between them (one preadv), so
    the bytes are copied once, from the page cache; taken from ``head``
    (the file's first bytes, already read) when it holds them. ``last``:
    the final PDV carries the last-fragment bit."""
    chunks = max(1, -(-length // room))
    buf = bytearray(length + 12 * chunks)
    view = memoryview(buf)
    views: list[memoryview] = []
    at, left = 0, length
    for _ in range(chunks):
        n = min(room, left)
        left -= n
        _PDV.pack_into(buf, at, P.P_DATA_TF, 0, n + 6, n + 2, context_id, 2 if last and left == 0 else 0)
        views.append(view[at + 12:at + 12 + n])
        at += 12 + n
    if offset + length <= len(head):
        source = memoryview(head)[offset:]
        for v in views:
            v[:] = source[:len(v)]
            source = source[len(v):]
    else:
        _preadv_all(fd, views, offset)
    return buf


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
        self._received = bytearray()  # read from the socket, not yet taken as a PDU
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
        # TCP_QUICKACK, set again after each read (Linux clears it): a peer
        # with Nagle's algorithm on (dcmtk storescp without TCP_NODELAY=1 in
        # its environment, its default) holds the end of its C-STORE-RSP until
        # the start is ACKed, and a delayed ACK here held that 40 ms per
        # sub-operation (measured: 100 instances took 4.7 s)
        self._quickack_fd = sock.fileno() if hasattr(socket, "TCP_QUICKACK") else -1
        self._quickack()
        try:
            self._send(P.encode_associate_rq(calling_ae, called_ae, pairs, MAX_PDU, IMPLEMENTATION_CLASS_UID,
                                              IMPLEMENTATION_VERSION_NAME))
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
        """The destination's A-ASSOCIATE-AC (``pdu.decode_associate_ac``):
        each of our pairs accepted (its context ID) or refused (why), and
        the destination's maximum PDU length."""
        try:
            ac = P.decode_associate_ac(struct.pack(">BBI", P.A_ASSOCIATE_AC, 0, len(body)) + body)
        except P.PDUError as exc:
            self.close()
            raise AssociationLost(f"{self.where} sent a malformed A-ASSOCIATE-AC: {exc}") from None
        by_id = {2 * n + 1: pair for n, pair in enumerate(self.pairs)}
        for result in ac.results:
            pair = by_id.get(result.context_id)
            if pair is None:
                continue
            if result.result == P.RESULT_ACCEPTANCE:
                self.accepted[pair] = result.context_id
            else:
                self.refused[pair] = _CONTEXT_RESULTS.get(result.result, f"result {result.result}")
        if ac.max_pdu:
            self.peer_max_pdu = ac.max_pdu
        for pair in self.pairs:
            if pair not in self.accepted and pair not in self.refused:
                self.refused[pair] = "no answer for its context"

    # ---- I/O ----------------------------------------------------------------------------------

    def _send(self, *parts: bytes | bytearray | memoryview) -> None:
        sock = self.sock
        if sock is None:
            raise AssociationLost(f"association with {self.where} closed")
        try:
            if len(parts) == 1:
                sock.sendall(parts[0])
            elif isinstance(sock, ssl.SSLSocket):
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

    def _fill(self, n: int) -> None:
        """Receive until ``n`` bytes are buffered (what a recv brings beyond
        them stays for the next PDU: one recv per response, as a rule)."""
        sock = self.sock
        if sock is None:
            raise AssociationLost(f"association with {self.where} closed")
        try:
            while len(self._received) < n:
                chunk = sock.recv(max(65536, n - len(self._received)))
                if not chunk:
                    raise AssociationLost(f"{self.where} closed the connection")
                self._received += chunk
                self._quickack()
        except OSError as exc:
            self.close()
            raise AssociationLost(f"association with {self.where} lost: {exc.strerror or exc}") from None

    def _quickack(self) -> None:
        if self._quickack_fd >= 0:
            try:
                tcp_quickack(self._quickack_fd)
            except OSError:  # the socket is going away: the next read or write says so
                self._quickack_fd = -1

    def _read_pdu(self) -> tuple[int, bytes]:
        self._fill(6)
        pdu_type, _, length = struct.unpack_from(">BBI", self._received)
        if length > 16 << 20:
            raise AssociationLost(f"{self.where} sent a PDU of {length} bytes")
        self._fill(6 + length)
        body = bytes(self._received[6:6 + length])
        del self._received[:6 + length]
        return pdu_type, body

    # ---- C-STORE --------------------------------------------------------------------------------

    def store(self, path: str, sop_class: str, sop_instance: str, transfer_syntax: str,
              originator_ae: str = "", originator_id: int | None = None, priority: int = 0) -> tuple[int, str]:
        """Send one file's data set as a C-STORE-RQ; (status, error comment).
        OSError/ValueError: the file cannot be read (nothing was sent).
        AssociationLost: the association ended."""
        context_id = self.accepted[(sop_class, transfer_syntax)]
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            head = os.pread(fd, HEAD, 0)
            # a file shorter than the head read is in it whole: no fstat, no second read
            size = len(head) if len(head) < HEAD else os.fstat(fd).st_size
            offset = dataset_offset(head)
            room = (self.peer_max_pdu or MAX_PDU) - 6
            segment = max(1, SEGMENT // room) * room  # a whole number of PDUs
            left = size - offset
            n = min(left, segment)
            first = frame_file(fd, offset, n, context_id, room, n == left, head)  # before anything is sent
            self._message_ids = self._message_ids % 0xFFFF + 1
            fields: dict[int, int | str] = {
                D.AFFECTED_SOP_CLASS: sop_class, D.COMMAND_FIELD: D.C_STORE_RQ, D.MESSAGE_ID: self._message_ids,
                D.PRIORITY: priority, D.AFFECTED_SOP_INSTANCE: sop_instance,
            }
            if originator_ae:
                fields[D.MOVE_ORIGINATOR_AE] = originator_ae
            if originator_id is not None:
                fields[D.MOVE_ORIGINATOR_ID] = originator_id
            # the command and the data set's first piece in one sendmsg
            self._send(P.encode_pdata(context_id, D.encode_command(fields, True), True, self.peer_max_pdu), first)
            offset, left = offset + n, left - n
            try:
                while left > 0:
                    n = min(left, segment)
                    self._send(frame_file(fd, offset, n, context_id, room, n == left))
                    offset, left = offset + n, left - n
            except OSError as exc:  # the peer holds half a message: the association cannot go on
                self.abort()
                raise AssociationLost(f"reading {path} failed while sending it: {exc}") from None
        finally:
            os.close(fd)
        return self._response()

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



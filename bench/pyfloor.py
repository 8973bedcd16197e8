"""pyfloor: the least a receiver that runs Python for each instance can do.

A floor for the flood benchmark beside bench/sink.c, to tell what a design
can reach, not a receiver to run. Like the sink it accepts every
presentation context with its first transfer syntax, answers C-ECHO, writes
each C-STORE's data set into ``<dir>/.incoming/`` (after the Part-10
prefix fastscp writes, ``storage/part10.file_meta``), renames it to
``<dir>/<SOP Instance UID>.dcm`` and answers Success.
Unlike the sink, that work runs in Python on uvloop, as fastscp's does, over
fastscp's own Cython framer (``_ext/framer.pyx``) and encoders: one Python
callback per read, a few Python lines per PDV and per instance. No header
parse, no checks, no index, no timers, no access control, no error recovery.

It answers one question: the wall time and CPU of a flood when the only
Python per instance is this glue. If that misses a target, no receiver
whose per-instance path is Python (however lean) can meet it on the same
machine; the path itself has to leave the interpreter.

    python bench/pyfloor.py PORT DIR [--busy-poll-us N]
"""
from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import signal
import socket
from typing import cast

import uvloop

from fastscp._ext.framer import EV_COMMAND, EV_DATASET, PDUFramer, decode_command
from fastscp._ext.sockio import recv_spin
from fastscp.protocol import dimse as D
from fastscp.protocol.pdu import (
    RESULT_ACCEPTANCE,
    AssociateAccept,
    PresentationContextResult,
    decode_associate_rq,
    encode_associate_ac,
    encode_pdata,
    encode_release_rp,
)
from fastscp.storage.part10 import file_meta

MAX_PDU = 131072
IMPLEMENTATION_UID = "2.25.248741131362635925947942029523567241809"  # a UUID-derived UID (PS3.5 B.2) of its own
TEMP_NAMES = itertools.count()  # one sequence for every association: their temp files never share a name
A_ASSOCIATE_RQ, A_RELEASE_RQ, A_ABORT = 0x01, 0x05, 0x07


class Floor(asyncio.BufferedProtocol):
    def __init__(self, directory: str, busy_poll_ns: int) -> None:
        self.directory = directory
        self.incoming = os.path.join(directory, ".incoming")
        self.busy_poll_ns = busy_poll_ns
        self.framer = PDUFramer(MAX_PDU)
        self.syntaxes: dict[int, str] = {}
        self.calling_ae = ""
        self.fd = -1
        self.temp = ""
        self.store: tuple[int, str, str] = (0, "", "")  # the C-STORE under way: message ID, SOP class, instance

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        sock = transport.get_extra_info("socket")
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sockfd = sock.fileno()
        self.loop = asyncio.get_running_loop()

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.framer.get_buffer(sizehint)

    def buffer_updated(self, nbytes: int) -> None:
        framer = self.framer
        framer.buffer_updated(nbytes)
        out = []
        while (ev := framer.next_event()) is not None:
            if ev[0] == EV_DATASET:
                _, context_id, data, last = cast(tuple[int, int, memoryview, bool], ev)
                os.write(self.fd, data)
                if last:
                    out.append(self._stored(context_id))
            elif ev[0] == EV_COMMAND:
                out.extend(self._command(ev[1], ev[2]))
            else:
                out.extend(self._pdu(ev[1], ev[2]))
        if out:
            self.transport.writelines(out)  # type: ignore[attr-defined]
            if self.busy_poll_ns:
                self.loop.call_soon(self._spin)

    def _spin(self) -> None:
        n = recv_spin(self.sockfd, self.framer.get_buffer(-1), self.busy_poll_ns)
        if n > 0:
            self.buffer_updated(n)

    def _command(self, context_id: int, data: bytes) -> list[bytes]:
        command = decode_command(data)
        field = command[D.COMMAND_FIELD]
        if field == D.C_ECHO_RQ:
            rsp = D.encode_response(D.C_ECHO_RSP, cast(int, command[D.MESSAGE_ID]), D.SUCCESS,
                                    str(command[D.AFFECTED_SOP_CLASS]))
            return [encode_pdata(context_id, rsp, True, MAX_PDU)]
        sop_class, sop_instance = str(command[D.AFFECTED_SOP_CLASS]), str(command[D.AFFECTED_SOP_INSTANCE])
        self.store = (cast(int, command[D.MESSAGE_ID]), sop_class, sop_instance)
        self.temp = os.path.join(self.incoming, f"{next(TEMP_NAMES)}.part")
        self.fd = os.open(self.temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.write(self.fd, file_meta(sop_class, sop_instance, self.syntaxes[context_id], self.calling_ae))
        return []

    def _stored(self, context_id: int) -> bytes:
        os.close(self.fd)
        message_id, sop_class, sop_instance = self.store
        os.rename(self.temp, os.path.join(self.directory, sop_instance + ".dcm"))
        rsp = D.encode_response(D.C_STORE_RSP, message_id, D.SUCCESS, sop_class, sop_instance)
        return encode_pdata(context_id, rsp, True, MAX_PDU)

    def _pdu(self, pdu_type: int, pdu: bytes) -> list[bytes]:
        if pdu_type == A_ASSOCIATE_RQ:
            request = decode_associate_rq(pdu)
            self.calling_ae = request.calling_ae
            results = []
            for ctx in request.contexts:
                self.syntaxes[ctx.context_id] = ctx.transfer_syntaxes[0]
                results.append(PresentationContextResult(ctx.context_id, RESULT_ACCEPTANCE, ctx.transfer_syntaxes[0],
                                                         ctx.abstract_syntax))
            return [encode_associate_ac(request, AssociateAccept(tuple(results), MAX_PDU, IMPLEMENTATION_UID,
                                                                 "PYFLOOR"))]
        if pdu_type == A_RELEASE_RQ:
            return [encode_release_rp()]
        if pdu_type == A_ABORT:
            self.transport.close()
        return []


async def serve(port: int, directory: str, busy_poll_ns: int) -> None:
    os.makedirs(os.path.join(directory, ".incoming"), exist_ok=True)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: Floor(directory, busy_poll_ns), "127.0.0.1", port)
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        await stop.wait()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("port", type=int)
    ap.add_argument("directory")
    ap.add_argument("--busy-poll-us", type=int, default=0, help="poll the socket this long after an answer")
    args = ap.parse_args()
    uvloop.run(serve(args.port, args.directory, args.busy_poll_us * 1000))


if __name__ == "__main__":
    main()

"""lane: fastscp's own per-instance storage work, with the least glue around it.

A reference for ``bench/bench_hotpath.py --lane``, beside bench/pyfloor.py.
For each C-STORE it runs the storage work of fastscp's receive path, with
fastscp's own objects and functions: the temp file opened ahead
(``Storage.open_temp``), the Part-10 prefix (``part10.file_meta``), the data
set written by ``InstanceFile`` and hashed, the header parsed
(``parse_head``) and the data set's end checked (``check_dataset_end``), the
UIDs compared with the command's, the ``InstanceInfo`` with its reception
facts, ``Storage.place`` (naming, duplicate check, rename) and the
C-STORE-RSP. It calls them straight from the read callback, as pyfloor does:
no association state table, dispatcher, service objects, durability
strategy, per-association accounting or observers in between.

Fed the same stream as fastscp, the difference tells what those layers cost
per instance, and the difference to pyfloor what the storage work's own
Python costs: the two parts a per-instance path compiled out of the
interpreter (issue 23) could take away. Not a receiver: no error
handling, no refusals, no association rules; it assumes a well-formed
stream of C-STOREs, as bench_hotpath feeds it.
"""
from __future__ import annotations

import asyncio
import os
import time
from typing import cast

from fastscp._ext.framer import EV_COMMAND, EV_DATASET, PDUFramer, decode_command
from fastscp._ext.writer import InstanceFile
from fastscp.protocol import dimse as D
from fastscp.protocol.pdu import decode_associate_rq, encode_pdata
from fastscp.services.session import ServerState
from fastscp.storage.duplicates import new_content_hash
from fastscp.storage.header import check_dataset_end, parse_head
from fastscp.storage.part10 import file_meta

A_ASSOCIATE_RQ = 0x01


class Lane(asyncio.BufferedProtocol):
    def __init__(self, state: ServerState, max_pdu: int) -> None:
        self.storage = state.storage
        self.max_pdu = max_pdu
        self.framer = PDUFramer(max_pdu)
        self.syntaxes: dict[int, str] = {}
        self.calling_ae = ""
        self.spare = self.storage.open_temp()
        self.temp = ""
        self.store: tuple[int, str, str, str] = (0, "", "", "")  # message ID, SOP class, instance, syntax
        self.writer: InstanceFile | None = None
        self.hasher = new_content_hash()
        self.stored = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.framer.get_buffer(sizehint)

    def buffer_updated(self, nbytes: int) -> None:
        framer = self.framer
        framer.buffer_updated(nbytes)
        while (ev := framer.next_event()) is not None:
            if ev[0] == EV_DATASET:
                _, context_id, data, last = cast(tuple[int, int, memoryview, bool], ev)
                assert self.writer is not None
                self.writer.write(data)
                self.hasher.update(data)
                if last:
                    self._stored(context_id, self.writer)
            elif ev[0] == EV_COMMAND:
                self._command(ev[1], ev[2])
            elif ev[1] == A_ASSOCIATE_RQ:
                request = decode_associate_rq(ev[2])
                self.calling_ae = request.calling_ae
                for ctx in request.contexts:
                    self.syntaxes[ctx.context_id] = ctx.transfer_syntaxes[0]

    def _command(self, context_id: int, data: bytes) -> None:
        command = decode_command(data)
        sop_class, sop_instance = str(command[D.AFFECTED_SOP_CLASS]), str(command[D.AFFECTED_SOP_INSTANCE])
        syntax = self.syntaxes[context_id]
        self.store = (cast(int, command[D.MESSAGE_ID]), sop_class, sop_instance, syntax)
        fd, self.temp = self.spare
        self.writer = InstanceFile(fd, file_meta(sop_class, sop_instance, syntax, self.calling_ae),
                                   self.storage.head_limit)
        self.hasher = new_content_hash()

    def _stored(self, context_id: int, writer: InstanceFile) -> None:
        message_id, sop_class, sop_instance, syntax = self.store
        file_size = writer.finish()
        head = writer.head
        info = parse_head(head, syntax, writer.head_complete)
        assert info is not None  # bench_hotpath's corpora have their header in the head
        fd, prefix = writer.fd, writer.prefix_size
        check_dataset_end(head, writer.dataset_size, syntax, lambda offset, n: os.pread(fd, n, prefix + offset))
        assert info.sop_instance_uid == sop_instance and info.sop_class_uid in ("", sop_class)
        info = info.received(sop_class_uid=sop_class, calling_ae=self.calling_ae, called_ae="FASTSCP",
                             peer="127.0.0.1:0", association_id="lane", received_at=time.time(),
                             dataset_size=writer.dataset_size, file_size=file_size,
                             content_hash=self.hasher.hexdigest(), header=None)
        placement = self.storage.place(self.temp, info)
        info = info.placed(placement.path, placement.duplicate)
        rsp = D.encode_response(D.C_STORE_RSP, message_id, D.SUCCESS, sop_class, sop_instance)
        self.transport.write(encode_pdata(context_id, rsp, True, self.max_pdu))
        writer.close()
        self.stored += 1
        self.spare = self.storage.open_temp()

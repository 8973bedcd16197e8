"""The dispatcher: one per association, between the socket layer and the
service modules (PS3.7 for the messages, PS3.8 for the association).

What the socket layer hands it (``net.seam.Service``):
- the association request: ``acceptance.decide`` says accept or reject, the
  association limiter gives a slot, observers hear ``AssociationOpened``;
- each command, as a typed request (``protocol.commands``): C-ECHO to
  ``verification``, C-STORE to ``storage.StoreService``, the others to the
  module registered for their type in ``ServerState.services`` once their
  data set is in (held in memory up to ``max_request_dataset``); C-CANCEL to
  the running operation it names; a response to the callback of the request
  we sent; anything else is answered 0x0211;
- each data set fragment, to whatever the current request receives;
- the association's end (release, abort, a dropped connection): running
  operations are cancelled, files under way removed, the slot given back,
  observers hear ``AssociationEnded`` with its ``Outcome``.

A request's data set is received before the next command (PS3.7 9.1.1: no
interleaving of messages on one association, as we answer ``async_ops``
1/1); a command arriving in the middle aborts the association.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import time
from collections.abc import Callable

from .._ext.writer import InstanceFile
from ..access import RejectReason
from ..events import (
    AssociationEnded,
    AssociationInfo,
    AssociationOpened,
    AssociationRejected,
    Outcome,
)
from ..net.seam import Link
from ..protocol import dimse as D
from ..protocol import pdu as P
from ..protocol.association import (
    Aborted,
    Association,
    AssociationRequested,
    CommandReceived,
    ConnectionClosed,
    DatasetFragment,
    Event,
    ReleaseConfirmed,
    ReleaseRequested,
)
from ..protocol.commands import (
    CCancelRequest,
    CEchoRequest,
    CFindRequest,
    CGetRequest,
    CMoveRequest,
    CStoreRequest,
    DimseResponse,
    NActionRequest,
    OtherRequest,
    Request,
    parse_request,
)
from ..storage.part10 import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME
from . import verification
from .acceptance import decide
from .session import Operation, ServerState, ServiceModule
from .storage import StoreService, _Store

log = logging.getLogger("fastscp.scp")

_ids = itertools.count(1)
_RUN = f"{int(time.time()):x}"

__all__ = ["Dispatcher"]

# the command field of each request type a module may serve (PS3.7 E.1)
_COMMAND_FIELD: dict[type, int] = {CFindRequest: D.C_FIND_RQ, CGetRequest: D.C_GET_RQ, CMoveRequest: D.C_MOVE_RQ,
                                   NActionRequest: D.N_ACTION_RQ}


@dataclasses.dataclass(slots=True)
class _Drain:
    """A request whose data set we receive and drop before answering."""

    context_id: int
    respond: Callable[[], None]


@dataclasses.dataclass(slots=True)
class _Collect:
    """A request whose data set a service module takes whole."""

    context_id: int
    request: Request
    module: ServiceModule
    parts: list[bytes] = dataclasses.field(default_factory=list)
    size: int = 0


class Dispatcher:
    """One association: ``net.seam.Service`` for the socket layer,
    ``session.Session`` for the service modules."""

    def __init__(self, server: ServerState, assoc: Association, link: Link) -> None:
        self._server = server
        self.assoc = assoc
        self._link = link
        self.peer = link.peer
        self.id = f"{_RUN}-{next(_ids)}"
        self._contexts: dict[int, tuple[str, str]] = {}
        self._scp_roles: frozenset[str] = frozenset()
        self._extended: dict[str, bytes] = {}
        self.calling_ae = ""
        self.called_ae = ""
        self.started = time.monotonic()
        self.started_at = time.time()
        self._info: AssociationInfo | None = None  # who, once accepted (events carry it)
        self._ended: tuple[Outcome, str] | None = None  # how, once it ended or was rejected
        self._counted = False  # holds a slot of the limiter and counts as active
        # answers owed from other threads plus operations running: while
        # > 0 the socket layer neither busy-polls nor times the peer's silence
        self.deferred = 0
        self._store = StoreService(self)
        self._current: _Store | _Drain | _Collect | None = None
        self._operations: dict[int, Operation] = {}
        self._awaiting: dict[int, Callable[[DimseResponse], None]] = {}
        self._message_ids = itertools.count(1)

    # ---- Session, for the service modules ------------------------------------------

    @property
    def server(self) -> ServerState:
        return self._server

    @property
    def info(self) -> AssociationInfo | None:
        return self._info

    @property
    def established(self) -> bool:
        return self.assoc.established

    @property
    def peer_max_pdu(self) -> int:
        return self.assoc.peer_max_pdu

    def context(self, context_id: int) -> tuple[str, str] | None:
        return self._contexts.get(context_id)

    def contexts_for(self, sop_class_uid: str) -> dict[int, str]:
        return {cid: ts for cid, (abstract, ts) in self._contexts.items() if abstract == sop_class_uid}

    def requestor_scp(self, sop_class_uid: str) -> bool:
        return sop_class_uid in self._scp_roles

    def extended_negotiation(self, sop_class_uid: str) -> bytes:
        return self._extended.get(sop_class_uid, b"")

    def send(self, context_id: int, command: bytes, dataset: bytes | memoryview | None = None) -> None:
        if self.assoc.established:
            self.assoc.send_command(context_id, command, dataset)
            self._link.flush()

    def send_framed(self, pdus: bytes | bytearray) -> None:
        if self.assoc.established:
            self.assoc.send_framed(pdus)

    def write_out(self) -> None:
        self._link.flush()

    def backlog(self) -> int:
        return self._link.backlog()

    def next_message_id(self) -> int:
        return next(self._message_ids) & 0xFFFF or next(self._message_ids)

    def expect_response(self, message_id: int, callback: Callable[[DimseResponse], None]) -> None:
        self._awaiting[message_id] = callback

    def call_soon(self, callback: Callable[[], None]) -> None:
        self._link.call_soon_threadsafe(callback)

    def stream_dataset(self, context_id: int, writer: InstanceFile, hash_update: Callable[[memoryview], object],
                       limit: int) -> None:
        self.assoc.stream_dataset(context_id, writer, hash_update, limit)

    def owe_answer(self, change: int) -> None:
        self.deferred += change

    def operation_started(self, message_id: int, operation: Operation) -> None:
        self._operations[message_id] = operation
        self.deferred += 1

    def operation_ended(self, message_id: int) -> None:
        if self._operations.pop(message_id, None) is not None:
            self.deferred -= 1

    def abort(self, reason: str) -> None:
        self.assoc.abort(reason)
        self._link.flush()

    # ---- events from the socket layer ------------------------------------------------

    def handle(self, ev: Event) -> None:
        """Every event of the association (the socket layer sends data set
        fragments and commands straight to on_fragment/on_command)."""
        match ev:
            case DatasetFragment():
                self.on_fragment(ev)
            case CommandReceived():
                self.on_command(ev)
            case AssociationRequested():
                self.on_request(ev.request)
            case ReleaseRequested():
                self.assoc.release_response()
                self._end(Outcome.RELEASED, "")
            case ReleaseConfirmed():
                self._end(Outcome.RELEASED, "")
            case Aborted():
                self._aborted(ev)
            case ConnectionClosed(expected=False):
                self._end(Outcome.DROPPED, "connection closed")
            case ConnectionClosed():
                outcome, how = self._ended or (Outcome.RELEASED, "")
                self._end(outcome, how)

    def _aborted(self, ev: Aborted) -> None:
        if ev.by_peer:
            self._end(Outcome.ABORTED_BY_PEER, ev.description or "aborted by peer")
        elif ev.transport_closed:
            self._end(Outcome.DROPPED, ev.description)
        else:
            self._end(Outcome.ABORTED, ev.description)

    def _association_info(self, proposed: int) -> AssociationInfo:
        return AssociationInfo(self.id, self.peer, self.calling_ae, self.called_ae, self._link.tls, proposed,
                               len(self._contexts), self.started_at, self.started)

    # ---- association ----------------------------------------------------------------

    def on_request(self, request: P.AssociateRequest) -> None:
        s = self._server
        self.calling_ae, self.called_ae = request.calling_ae, request.called_ae
        decision = decide(request, self.peer.rpartition(":")[0], s.access, s.policy)
        if isinstance(decision, RejectReason):
            self._reject(decision, len(request.contexts))
            return
        refusal = s.limiter.acquire(request.calling_ae)
        if refusal is not None:
            self._reject(refusal, len(request.contexts))
            return
        self._contexts = {r.context_id: (r.abstract_syntax, r.transfer_syntax)
                          for r in decision.accepted.values()}
        self._scp_roles = frozenset(r.sop_class_uid for r in decision.roles if r.scp_role)
        self._extended = {e.sop_class_uid: e.info for e in decision.extended}
        self.assoc.accept(P.AssociateAccept(
            results=decision.results,
            max_pdu=s.max_pdu,
            implementation_class_uid=IMPLEMENTATION_CLASS_UID,
            implementation_version_name=IMPLEMENTATION_VERSION_NAME,
            roles=decision.roles,
            async_ops=decision.async_ops,
            extended=decision.extended,
        ))
        s.active += 1
        s.associations_total += 1
        self._counted = True
        self._info = self._association_info(len(request.contexts))
        if s.observers:
            opened = AssociationOpened(self._info)
            for observer in s.observers:
                observer.association_opened(opened)
        log.info("assoc %s open: peer %s calling %s called %s, %d/%d contexts accepted, peer max PDU %d",
                 self.id, self.peer, request.calling_ae, request.called_ae, len(self._contexts),
                 len(request.contexts), request.max_pdu)

    def _reject(self, refusal: RejectReason, proposed: int) -> None:
        why = refusal.detail or refusal.description
        self.assoc.reject(refusal.result, refusal.source, refusal.reason)
        self._ended = (Outcome.REJECTED, f"rejected: {why}")
        log.warning("assoc %s rejected: peer %s calling %s called %s: %s",
                    self.id, self.peer, self.calling_ae, self.called_ae, why)
        if self._server.observers:
            rejected = AssociationRejected(self._association_info(proposed), why)
            for observer in self._server.observers:
                observer.association_rejected(rejected)

    def _end(self, outcome: Outcome, how: str) -> None:
        current, self._current = self._current, None
        self._store.close(current if isinstance(current, _Store) else None)
        for message_id, operation in list(self._operations.items()):
            operation.cancel()
            self.operation_ended(message_id)
        self._awaiting.clear()
        if not self._counted:
            if self._ended is None:  # a rejected request was logged by _reject
                self._ended = (outcome, how)
                if outcome is not Outcome.DROPPED:  # a bare connect and close (a port probe): no line
                    log.warning("connection %s from %s ended before an association: %s", self.id, self.peer, how)
            return
        self._counted = False
        self._server.active -= 1
        self._server.limiter.release(self.calling_ae)
        self._ended = (outcome, how or outcome.value)
        secs = time.monotonic() - self.started
        counts = self._store.counts()
        if self._server.observers and self._info is not None:
            ended = AssociationEnded(self._info, outcome, how, time.time(), counts)
            for observer in self._server.observers:
                observer.association_ended(ended)
        log.info("assoc %s closed (%s): peer %s calling %s, %d stored, %d duplicates, %d failed, "
                 "%.1f MB in %.2f s (%.1f MB/s)",
                 self.id, self._ended[1], self.peer, self.calling_ae, counts.stored, counts.duplicates,
                 counts.failed, counts.bytes / 1e6, secs, counts.bytes / 1e6 / secs if secs > 0 else 0.0)

    # ---- DIMSE ----------------------------------------------------------------------

    def on_command(self, ev: CommandReceived) -> None:
        if self._current is not None:
            self.assoc.abort("a new command arrived before the previous dataset ended")
            return
        context = self._contexts.get(ev.context_id)
        if context is None:
            self.assoc.abort(f"command on presentation context {ev.context_id}, which was not accepted")
            return
        request = parse_request(ev.command)
        match request:
            case CStoreRequest():
                self._current = self._store.begin(ev.context_id, context, request)
            case CEchoRequest():
                verification.echo(self, ev.context_id, request)
            case CCancelRequest():
                operation = self._operations.get(request.message_id_responded)
                if operation is not None:  # else it ended already (or never was): nothing to do
                    operation.cancel()
            case DimseResponse():
                self._response(ev.context_id, request)
            case OtherRequest():
                self._unrecognized(ev.context_id, request)
            case _:
                self._to_module(ev.context_id, request)

    def _to_module(self, context_id: int, request: Request) -> None:
        module = self._server.services.get(type(request))
        if module is None:
            self._unrecognized(context_id, request)
            return
        assert isinstance(request, (CFindRequest, CGetRequest, CMoveRequest, NActionRequest))  # what modules serve
        if request.message_id in self._operations:
            # PS3.7 9.3.1.1 (a Message ID distinguishes a request from the others under way on
            # an association): a second one would take the first's place
            # for C-CANCEL and for the cancel at the association's end
            log.warning("assoc %s: request with Message ID %d while an operation of that ID runs: refused 0x0210",
                        self.id, request.message_id)
            self._refuse(context_id, request, D.DUPLICATE_INVOCATION, "Message ID of an operation under way")
            return
        if request.has_dataset:
            self._current = _Collect(context_id, request, module)
        else:
            module.start(self, context_id, request, None)

    def _response(self, context_id: int, response: DimseResponse) -> None:
        pending = response.status in (D.PENDING, 0xFF01)
        callback = (self._awaiting.get if pending else self._awaiting.pop)(response.message_id_responded, None)
        if response.has_dataset:  # a response's data set is nothing we use: received and dropped
            self._current = _Drain(context_id, lambda: None)
        if callback is None:
            log.warning("assoc %s: a response to message %d, which we did not send or was answered; ignored",
                        self.id, response.message_id_responded)
            return
        callback(response)

    def _unrecognized(self, context_id: int, request: Request) -> None:
        """0x0211 for a request no service of ours handles (PS3.7 C.4.2)."""
        self._refuse(context_id, request, D.UNRECOGNIZED_OPERATION, "operation not supported")

    def _refuse(self, context_id: int, request: Request, status: int, comment: str) -> None:
        """Answer a request we do not carry out with ``status``; its data
        set, if any, is received and dropped first."""
        if isinstance(request, OtherRequest):
            field, sop_class = request.command_field, request.affected_sop_class_uid
        elif isinstance(request, NActionRequest):
            field, sop_class = D.N_ACTION_RQ, request.requested_sop_class_uid
        elif isinstance(request, (CFindRequest, CGetRequest, CMoveRequest)):
            field, sop_class = _COMMAND_FIELD[type(request)], request.affected_sop_class_uid
        else:
            raise TypeError(f"{type(request).__name__} is always served")
        rsp = D.encode_response(field | D.RESPONSE_BIT, request.message_id, status, sop_class,
                                error_comment=comment)
        if request.has_dataset:
            self._current = _Drain(context_id, lambda: self.send(context_id, rsp))
        else:
            self.send(context_id, rsp)

    def on_fragment(self, ev: DatasetFragment) -> None:
        current = self._current
        if current is None or current.context_id != ev.context_id:
            self.assoc.abort("dataset fragment without a request expecting one")
            return
        if ev.last:
            self._current = None
        if type(current) is _Store:
            self._store.fragment(current, ev)
        elif type(current) is _Collect:
            self._collect(current, ev)
        elif ev.last:
            assert isinstance(current, _Drain)
            current.respond()

    def _collect(self, current: _Collect, ev: DatasetFragment) -> None:
        current.size += len(ev.data)
        limit = self._server.max_request_dataset
        if current.size > limit:
            log.warning("assoc %s: a request's data set passed %d bytes: refused", self.id, limit)
            current.parts.clear()
            # PS3.7 C.4.1 (C-services: 0xA700 Refused: Out of Resources);
            # an N-ACTION's is 0x0213 Resource Limitation (PS3.7 Annex C)
            status = (D.RESOURCE_LIMITATION if isinstance(current.request, NActionRequest)
                      else D.REFUSED_OUT_OF_RESOURCES)
            self._refuse(current.context_id, current.request, status,
                         f"request data set larger than {limit} bytes")
            if ev.last:  # the drain that _refuse set up ends here
                drain, self._current = self._current, None
                assert isinstance(drain, _Drain)
                drain.respond()
            return
        current.parts.append(bytes(ev.data))
        if ev.last:
            current.module.start(self, current.context_id, current.request, b"".join(current.parts))

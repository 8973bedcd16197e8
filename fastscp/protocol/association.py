"""The acceptor side of the DICOM Upper Layer state machine (PS3.8 9.2, Table 9-10).

Sans-I/O, in the h11 manner: the socket layer hands received bytes in
(``get_buffer``/``buffer_updated``), pulls ``Event`` objects out with
``next_event``, calls the local primitives (``accept``, ``reject``,
``send_command``, ``release_response``, ``abort``) and writes whatever
``data_to_send`` returns. No sockets, clocks or files here: the ARTIM timer is
run by the caller, who reads ``artim_running`` after each call and reports
expiry with ``artim_expired``; ``closing`` tells it to close the transport.

Every transition lives in ``TRANSITIONS``: (state, event) -> (action, next
state), named as in the standard (``Sta6 + Evt10 -> DT-2``), and the table
alone decides the next state: actions do their work and never choose where
the machine goes. Where the standard's action branches (AE-6: "if the
A-ASSOCIATE-RQ is acceptable ... otherwise ..."), the branch is decided
before the table is consulted and enters it as its own event
(``Evt.Evt6_unacceptable``); a received PDU that cannot be decoded (a
malformed A-ASSOCIATE-RQ, an undecodable command set) is Evt19. A pair
missing from the table is a state the standard does not allow; a received
PDU there is treated like Evt19 (A-P-ABORT), a local call there raises
``LocalProtocolError``. The shortcuts of data transfer, a command set or
dataset fragment received in Sta6 and a message sent in Sta6, are checked
against the table at import (``Sta6 + Evt10 -> DT-2 -> Sta6``, ``Sta6 +
Evt9 -> DT-1 -> Sta6``).
Sta4/Sta5 (requestor awaiting transport / A-ASSOCIATE-AC) are never entered by
an acceptor and are left out.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Callable
from typing import Any, Literal

from .._ext.framer import EV_COMMAND, EV_DATASET, FramingError, PDUFramer, decode_command
from .._ext.writer import InstanceFile
from ..frozen import quick_init
from . import pdu as P


class State(str, enum.Enum):
    """The acceptor's states (PS3.8 Table 9-9). Members are named as their
    values, so a state compares (and hashes) equal to its name: ``"Sta6"``."""

    Sta1 = "Sta1"  # idle
    Sta2 = "Sta2"  # transport open, awaiting A-ASSOCIATE-RQ (ARTIM running)
    Sta3 = "Sta3"  # awaiting the local A-ASSOCIATE response primitive
    Sta6 = "Sta6"  # association established, ready for data transfer
    Sta7 = "Sta7"  # awaiting A-RELEASE-RP
    Sta8 = "Sta8"  # awaiting the local A-RELEASE response primitive
    Sta10 = "Sta10"  # release collision, acceptor: awaiting A-RELEASE-RP
    Sta12 = "Sta12"  # release collision, acceptor: awaiting the local A-RELEASE response
    Sta13 = "Sta13"  # awaiting transport close (ARTIM running)

    def __str__(self) -> str:
        return self.value


class Evt(str, enum.Enum):
    """Events (PS3.8 Table 9-6); named as their values, like ``State``."""

    Evt3 = "Evt3"  # A-ASSOCIATE-AC PDU received
    Evt4 = "Evt4"  # A-ASSOCIATE-RJ PDU received
    Evt5 = "Evt5"  # transport connection indication
    Evt6 = "Evt6"  # A-ASSOCIATE-RQ PDU received (acceptable to the service provider)
    # AE-6's "otherwise": an A-ASSOCIATE-RQ the service provider cannot
    # accept (protocol version, application context). Its own event so that
    # the table, not the action, decides the next state.
    Evt6_unacceptable = "Evt6_unacceptable"
    Evt7 = "Evt7"  # A-ASSOCIATE response primitive (accept)
    Evt8 = "Evt8"  # A-ASSOCIATE response primitive (reject)
    Evt9 = "Evt9"  # P-DATA request primitive
    Evt10 = "Evt10"  # P-DATA-TF PDU received
    Evt11 = "Evt11"  # A-RELEASE request primitive
    Evt12 = "Evt12"  # A-RELEASE-RQ PDU received
    Evt13 = "Evt13"  # A-RELEASE-RP PDU received
    Evt14 = "Evt14"  # A-RELEASE response primitive
    Evt15 = "Evt15"  # A-ABORT request primitive
    Evt16 = "Evt16"  # A-ABORT PDU received
    Evt17 = "Evt17"  # transport connection closed
    Evt18 = "Evt18"  # ARTIM timer expired
    Evt19 = "Evt19"  # unrecognized or invalid PDU received

    def __str__(self) -> str:
        return self.value


EVT3, EVT4, EVT5, EVT6 = Evt.Evt3, Evt.Evt4, Evt.Evt5, Evt.Evt6
EVT7, EVT8, EVT9, EVT10, EVT11 = Evt.Evt7, Evt.Evt8, Evt.Evt9, Evt.Evt10, Evt.Evt11
EVT12, EVT13, EVT14, EVT15, EVT16 = Evt.Evt12, Evt.Evt13, Evt.Evt14, Evt.Evt15, Evt.Evt16
EVT17, EVT18, EVT19 = Evt.Evt17, Evt.Evt18, Evt.Evt19
EVT6_UNACCEPTABLE = Evt.Evt6_unacceptable

# Every error a peer's bytes can cause is this one type (the framer's, with
# the A-ABORT reason to send); pdu.PDUError is a subclass.
RemoteProtocolError = FramingError

_PDU_EVENTS = {
    P.A_ASSOCIATE_RQ: EVT6,
    P.A_ASSOCIATE_AC: EVT3,
    P.A_ASSOCIATE_RJ: EVT4,
    P.A_RELEASE_RQ: EVT12,
    P.A_RELEASE_RP: EVT13,
    P.A_ABORT: EVT16,
}


class LocalProtocolError(Exception):
    """We (the local user) called a primitive the current state does not allow."""


# ---- events handed to the user -------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class AssociationRequested:
    request: P.AssociateRequest


@quick_init
@dataclasses.dataclass(frozen=True, slots=True)
class CommandReceived:
    context_id: int
    command: dict[int, Any]


@dataclasses.dataclass(slots=True)
class DatasetFragment:
    """One PDV of a dataset; ``data`` is valid only until the next read."""

    context_id: int
    data: memoryview
    last: bool


@dataclasses.dataclass(frozen=True, slots=True)
class ReleaseRequested:
    pass


@dataclasses.dataclass(frozen=True, slots=True)
class ReleaseConfirmed:
    pass


@dataclasses.dataclass(frozen=True, slots=True)
class Aborted:
    """The association ended abnormally. ``by_peer``: the peer sent A-ABORT;
    otherwise we aborted (protocol error, timeout, local request) or the
    transport dropped."""

    by_peer: bool
    source: int
    reason: int
    description: str
    transport_closed: bool = False  # AA-4: the connection dropped with no A-ABORT


@dataclasses.dataclass(frozen=True, slots=True)
class ConnectionClosed:
    """The transport closed; ``expected`` after a completed release or reject."""

    expected: bool


Event = (AssociationRequested | CommandReceived | DatasetFragment | ReleaseRequested | ReleaseConfirmed | Aborted
         | ConnectionClosed)

# ---- the transition table ------------------------------------------------------

_ANY_PDU_BUT = (EVT3, EVT4, EVT6, EVT10, EVT12, EVT13, EVT19)


def _build_table() -> dict[tuple[State, Evt], tuple[str, State]]:
    t: dict[tuple[State, Evt], tuple[str, State]] = {}

    def add(state: str, events: tuple[Evt, ...] | Evt, action: str, nxt: str) -> None:
        for e in (events,) if isinstance(events, Evt) else events:
            t[(State(state), e)] = (action, State(nxt))

    add("Sta1", EVT5, "AE-5", "Sta2")
    # Sta2: transport open, awaiting A-ASSOCIATE-RQ (ARTIM running)
    add("Sta2", (EVT3, EVT4, EVT10, EVT12, EVT13, EVT19), "AA-1", "Sta13")
    add("Sta2", EVT6, "AE-6", "Sta3")
    add("Sta2", EVT6_UNACCEPTABLE, "AE-6 reject", "Sta13")
    add("Sta2", (EVT16, EVT18), "AA-2", "Sta1")
    add("Sta2", EVT17, "AA-5", "Sta1")
    # Not in Table 9-10: a local abort (idle timeout, shutdown) before any
    # A-ASSOCIATE-RQ. There is no association to abort, so close as on
    # ARTIM expiry (AA-2) rather than raise.
    add("Sta2", EVT15, "AA-2", "Sta1")
    # Sta3: awaiting the local A-ASSOCIATE response
    add("Sta3", _ANY_PDU_BUT, "AA-8", "Sta13")
    add("Sta3", EVT7, "AE-7", "Sta6")
    add("Sta3", EVT8, "AE-8", "Sta13")
    # Sta6: established
    add("Sta6", (EVT3, EVT4, EVT6, EVT13, EVT19), "AA-8", "Sta13")
    add("Sta6", EVT9, "DT-1", "Sta6")
    add("Sta6", EVT10, "DT-2", "Sta6")
    add("Sta6", EVT11, "AR-1", "Sta7")
    add("Sta6", EVT12, "AR-2", "Sta8")
    # Sta7: we asked for release, awaiting A-RELEASE-RP
    add("Sta7", (EVT3, EVT4, EVT6, EVT19), "AA-8", "Sta13")
    add("Sta7", EVT10, "AR-6", "Sta7")
    add("Sta7", EVT12, "AR-8", "Sta10")  # release collision; as acceptor -> Sta10
    add("Sta7", EVT13, "AR-3", "Sta1")
    # Sta8: peer asked for release, awaiting our A-RELEASE response
    add("Sta8", _ANY_PDU_BUT, "AA-8", "Sta13")
    add("Sta8", EVT9, "AR-7", "Sta8")
    add("Sta8", EVT14, "AR-4", "Sta13")
    # Release collision, acceptor side (Sta10 -> Sta12 -> Sta13)
    add("Sta10", tuple(e for e in _ANY_PDU_BUT if e != EVT13), "AA-8", "Sta13")
    add("Sta10", EVT13, "AR-10", "Sta12")
    add("Sta12", _ANY_PDU_BUT, "AA-8", "Sta13")
    add("Sta12", EVT14, "AR-4", "Sta13")
    # Common to every state after Sta2
    for s in ("Sta3", "Sta6", "Sta7", "Sta8", "Sta10", "Sta12"):
        add(s, EVT15, "AA-1", "Sta13")
        add(s, EVT16, "AA-3", "Sta1")
        add(s, EVT17, "AA-4", "Sta1")
    # Sta13: awaiting transport close (ARTIM running)
    add("Sta13", (EVT3, EVT4, EVT10, EVT12, EVT13), "AA-6", "Sta13")
    add("Sta13", (EVT6, EVT19), "AA-7", "Sta13")
    add("Sta13", EVT15, "AA-6", "Sta13")
    add("Sta13", (EVT16, EVT18), "AA-2", "Sta1")
    add("Sta13", EVT17, "AR-5", "Sta1")
    return t


TRANSITIONS = _build_table()

# next_event() hands command sets and dataset fragments in Sta6 straight
# out, and send_command() frames a message in Sta6 straight away: these cells.
assert TRANSITIONS[(State.Sta6, Evt.Evt10)] == ("DT-2", State.Sta6)
assert TRANSITIONS[(State.Sta6, Evt.Evt9)] == ("DT-1", State.Sta6)

_STA1, _STA2, _STA6, _STA13 = State.Sta1, State.Sta2, State.Sta6, State.Sta13
_ENDED = (State.Sta1, State.Sta13)
_ESTABLISHED = frozenset((State.Sta6, State.Sta7, State.Sta8, State.Sta10, State.Sta12))
_DATA_STATES = (State.Sta6, State.Sta7)  # where a received command set is acted on (DT-2, AR-6)


class Association:
    """One association, acceptor side."""

    def __init__(self, max_pdu: int = 131072, max_other_pdu: int = 1 << 20) -> None:
        self.state = State.Sta1
        self.max_pdu = max_pdu
        self.framer = PDUFramer(max_pdu, max_other_pdu)
        self.request: P.AssociateRequest | None = None
        self.peer_max_pdu = 0
        self.artim_running = False
        self.closing = False
        self.abort_description = ""
        self._out: list[bytes | bytearray] = []
        self._pending: list[Event] = []
        # the bytes the current event carries (PDU or decode error)
        self._payload: Any = None
        self._actions: dict[str, Callable[[], str | None]] = {
            "AE-5": self._ae5, "AE-6": self._ae6, "AE-6 reject": self._ae6_reject,
            "AE-7": self._ae7, "AE-8": self._ae8,
            "DT-1": self._dt1, "DT-2": self._dt2, "AR-1": self._ar1, "AR-2": self._ar2,
            "AR-3": self._ar3, "AR-4": self._ar4, "AR-5": self._ar5, "AR-6": self._dt2,
            "AR-7": self._dt1, "AR-8": self._ar8, "AR-10": self._ar10,
            "AA-1": self._aa1, "AA-2": self._aa2, "AA-3": self._aa3, "AA-4": self._aa4,
            "AA-5": self._aa5, "AA-6": self._aa6, "AA-7": self._aa7, "AA-8": self._aa8,
        }

    # ---- transport side -----------------------------------------------------------

    def connection_made(self) -> None:
        self._fire(EVT5, None, local=True)

    def get_buffer(self, sizehint: int = -1) -> memoryview:
        return self.framer.get_buffer(sizehint)

    def buffer_updated(self, nbytes: int) -> None:
        self.framer.buffer_updated(nbytes)

    def stream_dataset(self, context_id: int, writer: InstanceFile, hash_update: Callable[[memoryview], object],
                       limit: int) -> None:
        """The running data set's next fragments on ``context_id`` go to
        ``writer`` in the framer, without events (``PDUFramer.sink_dataset``):
        Sta6 + Evt10 -> DT-2 -> Sta6 for each, as for any fragment taken
        in Sta6. Only in Sta6: elsewhere a fragment is an event to the
        table, and any other PDU received ends it (``next_event``)."""
        if self.state is _STA6:
            self.framer.sink_dataset(writer, hash_update, context_id, limit)

    def feed(self, data: bytes, respond: Callable[[Event], None] | None = None) -> list[Event]:
        """Copy ``data`` in and return every event it completes (for tests and
        callers without a BufferedProtocol). ``respond(event)``, if given, is
        called as each event is taken, before the next: what a server does
        (accept a request, say) before it reads on."""
        events: list[Event] = []
        view = memoryview(data)
        while view:
            buf = self.get_buffer()
            n = min(len(buf), len(view))
            buf[:n] = view[:n]
            self.buffer_updated(n)
            view = view[n:]
            while (ev := self.next_event()) is not None:
                if isinstance(ev, DatasetFragment):  # slices die at the next read
                    ev = DatasetFragment(ev.context_id, memoryview(bytes(ev.data)), ev.last)
                events.append(ev)
                if respond is not None:
                    respond(ev)
        return events

    def next_event(self) -> Event | None:
        """The next event from received bytes, or None when more are needed."""
        if self._pending:
            return self._pending.pop(0)
        while self.state is not _STA1:
            if self.state is _STA13:  # ending: what the peer still sends is ignored (AA-6)
                self.framer.discard()
                break
            try:
                item = self.framer.next_event()
            except FramingError as exc:
                self._fire(EVT19, exc, local=False)
                return self._pending.pop(0) if self._pending else None
            if item is None:
                return None
            if item[0] == EV_DATASET:  # (item[0], not a local: it narrows the tuple's type)
                if self.state is _STA6:  # the hot path: Sta6 + Evt10 -> DT-2 (checked at import)
                    return DatasetFragment(item[1], item[2], item[3])
                self._fire(EVT10, item, local=False)
            elif item[0] == EV_COMMAND:
                command = self._command_received(item)
                if command is not None:
                    return command
            elif item[1] == P.A_ASSOCIATE_RQ and self.state is _STA2:
                self._associate_rq_received(item[2])
            else:
                # any other PDU may move the machine out of Sta6: the next
                # P-DATA goes to the table again (stream_dataset)
                self.framer.unsink()
                self._fire(_PDU_EVENTS.get(item[1], EVT19), item[2], local=False)
            if self._pending:
                return self._pending.pop(0)
        return self._pending.pop(0) if self._pending else None

    def _command_received(self, item: tuple[Literal[2], int, bytes]) -> CommandReceived | None:
        """Evt10 with a command set; one that cannot be decoded, where it
        would be acted on, is an invalid PDU (Evt19). In Sta6 the decoded
        command is returned, not queued: Sta6 + Evt10 -> DT-2 -> Sta6, the
        cell checked at import."""
        if self.state not in _DATA_STATES:
            self._fire(EVT10, item, local=False)
            return None
        try:
            command = decode_command(item[2])
        except ValueError as exc:
            self._fire(EVT19, RemoteProtocolError(P.ABORT_INVALID_PARAMETER, f"undecodable command set: {exc}"),
                       local=False)
            return None
        if self.state is _STA6:
            return CommandReceived(item[1], command)
        self._fire(EVT10, CommandReceived(item[1], command), local=False)
        return None

    def _associate_rq_received(self, pdu: bytes) -> None:
        """Evt6 in Sta2, decided before the table (AE-6's branch): a
        malformed request is Evt19, one the provider cannot accept
        (protocol version, application context; PS3.8 9.3.2) is
        Evt6_unacceptable, any other is Evt6."""
        try:
            request = P.decode_associate_rq(pdu)
        except P.PDUError as exc:
            self._fire(EVT19, RemoteProtocolError(exc.reason, f"malformed A-ASSOCIATE-RQ: {exc}"), local=False)
            return
        self.request = request
        self.peer_max_pdu = request.max_pdu
        if not request.protocol_version & 1:
            rj = (P.RJ_PERMANENT, P.RJ_SOURCE_ACSE, P.RJ_ACSE_PROTOCOL_VERSION)
        elif request.application_context != P.APPLICATION_CONTEXT:
            rj = (P.RJ_PERMANENT, P.RJ_SOURCE_USER, P.RJ_USER_APP_CONTEXT_NOT_SUPPORTED)
        else:
            self._fire(EVT6, request, local=False)
            return
        self._fire(EVT6_UNACCEPTABLE, rj, local=False)

    def connection_lost(self) -> Event | None:
        """Evt17; returns the event to report (None if already reported)."""
        if self.state is _STA1:
            return None
        self._fire(EVT17, None, local=False)
        return self._pending.pop(0) if self._pending else None

    def artim_expired(self) -> None:
        if self.state is _STA2 or self.state is _STA13:
            self.abort_description = self.abort_description or "ARTIM timer expired"
            self._fire(EVT18, None, local=False)

    def data_to_send(self) -> bytes:
        out = b"".join(self._out)
        self._out.clear()
        return out

    def output(self) -> list[bytes | bytearray]:
        """What ``data_to_send`` joins, as the pieces queued (for a
        vectored write: a C-GET's framed file is not copied again)."""
        out, self._out = self._out, []
        return out

    # ---- local primitives ---------------------------------------------------------

    def accept(self, accept: P.AssociateAccept) -> None:
        self._fire(EVT7, accept, local=True)

    def reject(self, result: int, source: int, reason: int) -> None:
        self._fire(EVT8, (result, source, reason), local=True)

    def send_framed(self, pdus: bytes | bytearray) -> None:
        """Send P-DATA-TF PDUs framed by the caller (the PDU type, lengths
        and PDV headers already in place, none above the peer's maximum):
        part of a message, as DT-1 would send it (PS3.8 9.3.5); ignored
        once the association is not established."""
        if self.state is State.Sta6 or self.state is State.Sta8:  # where DT-1 / AR-7 send
            self._out.append(pdus)

    def send_command(self, context_id: int, command: bytes, dataset: bytes | memoryview | None = None) -> None:
        """Send a message (P-DATA request primitive, PS3.8 9.3.5): its
        command set, then its data set if it has one (a C-FIND's pending
        identifier, a C-GET's C-STORE-RQ, an N-EVENT-REPORT), each cut into
        PDUs no larger than the peer's maximum."""
        if self.state is _STA6:  # Sta6 + Evt9 -> DT-1 -> Sta6 (checked at import)
            self._payload = (context_id, command, dataset)
            self._dt1()
            return
        self._fire(EVT9, (context_id, command, dataset), local=True)

    def request_release(self) -> None:
        self._fire(EVT11, None, local=True)

    def release_response(self) -> None:
        self._fire(EVT14, None, local=True)

    def abort(self, reason: str = "aborted by the local user") -> None:
        if self.state in _ENDED:
            return
        self.abort_description = reason
        self._fire(EVT15, None, local=True)

    @property
    def established(self) -> bool:
        return self.state in _ESTABLISHED

    # ---- the machine --------------------------------------------------------------

    def _fire(self, event: Evt, payload: Any, local: bool) -> None:
        entry = TRANSITIONS.get((self.state, event))
        if entry is None:
            if local:
                raise LocalProtocolError(f"{event} is not allowed in {self.state}")
            # a received PDU the table has no cell for: treat as invalid (Evt19)
            entry = TRANSITIONS.get((self.state, EVT19))
            if entry is None:
                return
            payload = RemoteProtocolError(P.ABORT_UNEXPECTED_PDU, f"{event} unexpected in {self.state}")
        action, nxt = entry
        self._payload = payload
        self._actions[action]()
        self.state = nxt

    def _send_abort(self, source: int, reason: int) -> None:
        self._out.append(P.encode_abort(source, reason))

    # AE: establishment
    def _ae5(self) -> None:
        self.artim_running = True

    def _ae6(self) -> None:
        """Acceptable A-ASSOCIATE-RQ: stop ARTIM, issue the indication."""
        self.artim_running = False
        self._pending.append(AssociationRequested(self._payload))

    def _ae6_reject(self) -> None:
        """AE-6's other branch: stop ARTIM, send A-ASSOCIATE-RJ, start ARTIM."""
        self._ae8()

    def _ae7(self) -> None:
        assert self.request is not None
        self._out.append(P.encode_associate_ac(self.request, self._payload))

    def _ae8(self) -> None:
        self._out.append(P.encode_associate_rj(*self._payload))
        self.artim_running = True

    # DT: data transfer
    def _dt1(self) -> None:
        context_id, command, dataset = self._payload
        self._out.append(P.encode_pdata(context_id, command, True, self.peer_max_pdu))
        if dataset is not None:
            self._out.append(P.encode_pdata(context_id, dataset, False, self.peer_max_pdu))

    def _dt2(self) -> None:
        item = self._payload
        if isinstance(item, CommandReceived):
            self._pending.append(item)
        else:
            self._pending.append(DatasetFragment(item[1], item[2], item[3]))

    # AR: release
    def _ar1(self) -> None:
        self._out.append(P.encode_release_rq())

    def _ar2(self) -> None:
        self._pending.append(ReleaseRequested())

    def _ar3(self) -> None:
        self._pending.append(ReleaseConfirmed())
        self.closing = True

    def _ar4(self) -> None:
        self._out.append(P.encode_release_rp())
        self.artim_running = True

    def _ar5(self) -> None:
        self.artim_running = False
        self._pending.append(ConnectionClosed(expected=True))

    def _ar8(self) -> None:
        self._pending.append(ReleaseRequested())

    def _ar10(self) -> None:
        self._pending.append(ReleaseConfirmed())

    # AA: abort
    def _aa1(self) -> None:
        if isinstance(self._payload, FramingError):  # an invalid PDU in Sta2
            self.abort_description = str(self._payload)
            source, reason = P.ABORT_SOURCE_PROVIDER, self._payload.reason
        elif self._payload is None:  # local A-ABORT request
            source, reason = P.ABORT_SOURCE_USER, 0
        else:  # a valid PDU that has no place in Sta2
            self.abort_description = "unexpected PDU before A-ASSOCIATE-RQ"
            source, reason = P.ABORT_SOURCE_PROVIDER, P.ABORT_UNEXPECTED_PDU
        self._send_abort(source, reason)
        self.artim_running = True
        self._pending.append(Aborted(False, source, reason, self.abort_description))

    def _aa2(self) -> None:
        self.artim_running = False
        self.closing = True
        if isinstance(self._payload, (bytes, bytearray)):  # A-ABORT received in Sta2
            source, reason = P.decode_abort(self._payload)
            self._pending.append(Aborted(True, source, reason, "aborted by peer"))
        elif self.state is _STA2:  # ARTIM expired: no A-ASSOCIATE-RQ in time
            self._pending.append(Aborted(False, P.ABORT_SOURCE_PROVIDER, 0, self.abort_description))
        else:  # Sta13: ARTIM expired while waiting for the peer to close
            self._pending.append(ConnectionClosed(expected=True))

    def _aa3(self) -> None:
        source, reason = P.decode_abort(self._payload)
        self.closing = True
        self.abort_description = f"aborted by peer (source {source}, reason {reason})"
        self._pending.append(Aborted(True, source, reason, self.abort_description))

    def _aa4(self) -> None:
        self.abort_description = "connection closed by peer"
        # no A-ABORT was received: the transport dropped (see ``Aborted``)
        self._pending.append(Aborted(False, P.ABORT_SOURCE_PROVIDER, 0, self.abort_description, transport_closed=True))

    def _aa5(self) -> None:
        self.artim_running = False
        self._pending.append(ConnectionClosed(expected=False))

    def _aa6(self) -> None:
        pass

    def _aa7(self) -> None:
        self._send_abort(P.ABORT_SOURCE_PROVIDER, P.ABORT_UNEXPECTED_PDU)

    def _aa8(self) -> None:
        """Send A-P-ABORT, report it, start ARTIM (the table goes to Sta13)."""
        exc = self._payload if isinstance(self._payload, FramingError) else None
        reason = exc.reason if exc is not None else P.ABORT_UNEXPECTED_PDU
        self.abort_description = str(exc) if exc is not None else f"unexpected PDU in {self.state}"
        self._send_abort(P.ABORT_SOURCE_PROVIDER, reason)
        self.artim_running = True
        self._pending.append(Aborted(False, P.ABORT_SOURCE_PROVIDER, reason, self.abort_description))

"""What a service module sees: the server's shared state, and its association
as a ``Session``.

``ServerState`` is shared by every association (settings, storage, the index,
live counters). ``Session`` is the one association a request came on, as the
dispatcher offers it to a service module: who the peer is, the accepted
presentation contexts, and the ways to answer (``send``), to hear a response
to a request we sent (``expect_response``), and to come back to the event
loop from a worker thread (``call_soon``). A module holds no other reference
to the dispatcher and reads none of its fields.

A module that runs something across several messages (a C-FIND streaming
its matches, a C-MOVE's sub-operations) returns an ``Operation``: the
dispatcher keeps it by message ID, routes a C-CANCEL to it, and holds the
association's idle timeout and busy polling while any is running
(``operation_started``/``operation_ended``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Protocol

from .._ext.writer import InstanceFile
from ..access import AccessPolicy, AssociationLimiter
from ..events import AssociationInfo, Observer
from ..protocol.commands import DimseResponse, Request
from ..protocol.negotiation import AcceptPolicy
from ..storage.store import Storage

if TYPE_CHECKING:
    from ..catalog import CatalogWriter

__all__ = ["Operation", "RemoteAE", "ServerState", "ServiceModule", "Session"]


@dataclasses.dataclass(frozen=True, slots=True)
class RemoteAE:
    """An application entity we open associations to (``remote_aes`` in the
    configuration): a C-MOVE destination, a Storage Commitment requester."""

    ae_title: str
    host: str
    port: int
    tls: bool = False


class Operation(Protocol):
    """Something a request started that outlives the request's message."""

    def cancel(self) -> None:
        """C-CANCEL-RQ for it arrived (PS3.7 9.3.2.3), or the association
        ended: stop at the next step and answer as the service's rules say
        (no answer can go out once the association has ended)."""


class Session(Protocol):
    """One association, as a service module uses it (event loop thread only,
    except ``call_soon``)."""

    id: str
    peer: str  # "ip:port"
    calling_ae: str
    called_ae: str

    @property
    def server(self) -> ServerState: ...

    @property
    def info(self) -> AssociationInfo | None: ...

    @property
    def established(self) -> bool:
        """The association can still carry messages."""

    @property
    def peer_max_pdu(self) -> int: ...

    def context(self, context_id: int) -> tuple[str, str] | None:
        """(abstract syntax, transfer syntax) of an accepted context."""

    def contexts_for(self, sop_class_uid: str) -> dict[int, str]:
        """Accepted contexts of a SOP class: {context ID: transfer syntax}."""

    def requestor_scp(self, sop_class_uid: str) -> bool:
        """The requestor took the SCP role for this SOP class by SCP/SCU role
        selection (PS3.7 D.3.3.4), so we may send it C-STORE requests on this
        association: what a C-GET's sub-operations need."""

    def extended_negotiation(self, sop_class_uid: str) -> bytes:
        """The SOP Class Extended Negotiation we answered for this SOP class
        (PS3.7 D.3.3.5: what was agreed, e.g. relational queries, PS3.4
        C.5.1); b"" when none was proposed or answered."""

    def send(self, context_id: int, command: bytes, dataset: bytes | memoryview | None = None) -> None:
        """Send a message and write it out now (dropped once the association
        ended: no message can go out then)."""

    def send_framed(self, pdus: bytes | bytearray) -> None:
        """Queue P-DATA-TF PDUs the caller framed (part of a message, each
        PDU within the peer's maximum); ``write_out`` writes what is queued
        in one vectored write. Dropped once the association ended."""

    def write_out(self) -> None:
        """Write what ``send_framed`` queued."""

    def backlog(self) -> int:
        """Bytes written and not yet taken by the kernel (the peer reads
        slower than we send)."""

    def next_message_id(self) -> int:
        """A Message ID for a request we send on this association (safe from
        any thread: a C-GET's worker takes those of its C-STORE-RQs)."""

    def expect_response(self, message_id: int, callback: Callable[[DimseResponse], None]) -> None:
        """Call ``callback`` with the response to our request ``message_id``."""

    def call_soon(self, callback: Callable[[], None]) -> None:
        """Run ``callback`` on the event loop (safe from any thread), then
        write out what it sent."""

    def stream_dataset(self, context_id: int, writer: InstanceFile, hash_update: Callable[[memoryview], object],
                       limit: int) -> None:
        """Let the running data set's next fragments on ``context_id`` go
        to ``writer`` (and ``hash_update``) in the framer, without events,
        while they are not the last and keep the data set within ``limit``
        bytes; the first other fragment comes as an event again
        (``PDUFramer.sink_dataset``)."""

    def owe_answer(self, change: int) -> None:
        """+1: an answer is owed from another thread (durable mode's group
        commit); -1: it was given. While any is owed, the socket layer does
        not busy-poll the peer (the answer's callback needs the loop)."""

    def operation_started(self, message_id: int, operation: Operation) -> None: ...

    def operation_ended(self, message_id: int) -> None: ...

    def abort(self, reason: str) -> None: ...


class ServiceModule(Protocol):
    """A DIMSE service beyond Verification and Storage (query/retrieve,
    storage commitment): registered in ``ServerState.services`` by request
    type. ``dataset`` is the request's data set as received (encoded in the
    context's transfer syntax), or None."""

    sop_classes: frozenset[str]  # the abstract syntaxes it serves, for negotiation

    def start(self, session: Session, context_id: int, request: Request, dataset: bytes | None) -> None: ...


@dataclasses.dataclass
class ServerState:
    """What every association shares: settings, storage, live counters."""

    ae_title: str
    storage: Storage
    policy: AcceptPolicy
    access: AccessPolicy
    limiter: AssociationLimiter
    max_pdu: int = 131072
    max_instance_size: int | None = None
    index_error: str = ""  # why the index is not written, shown in status
    observers: list[Observer] = dataclasses.field(default_factory=list)
    # the index writer (None: no index): queries take their own cursor from it
    catalog: CatalogWriter | None = None
    # service modules beyond Verification and Storage, by request type
    services: Mapping[type, ServiceModule] = dataclasses.field(default_factory=dict)
    # AEs we connect to, by AE title (C-MOVE destinations, commitment reports)
    remote_aes: Mapping[str, RemoteAE] = dataclasses.field(default_factory=dict)
    # the largest request data set (identifier, action list) held in memory
    max_request_dataset: int = 1 << 20
    active: int = 0
    associations_total: int = 0
    instances_total: int = 0
    bytes_total: int = 0

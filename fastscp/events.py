"""What the receiver tells its observers: frozen events, and the observer base.

A leaf module (it imports only ``instance``): the service layer (services/) makes the
events; monitoring, the catalog feed and the pipeline receive them and never
hold the service's objects. An event is made once and handed to every
observer in turn, on the event loop thread; an observer must not block
(queue work to a thread).

``AssociationInfo`` is who the association is, fixed once it is accepted or
rejected; ``AssociationCounts`` is what it did, as of the event that carries
it. Observers that show live figures (the status page) keep their own counts
from ``InstanceStored``/``DuplicateReceived``/``StoreAnswered``.
"""

from __future__ import annotations

import dataclasses
import enum
from typing import Protocol

from .frozen import quick_init
from .instance import InstanceInfo

__all__ = [
    "AssociationCounts",
    "AssociationEnded",
    "AssociationInfo",
    "AssociationOpened",
    "AssociationRejected",
    "DuplicateReceived",
    "InstanceStored",
    "Observer",
    "Outcome",
    "ServerTotals",
    "StoreAnswered",
]


class Outcome(str, enum.Enum):
    """How an association ended (the connection log's and /status's words)."""

    RELEASED = "released"
    ABORTED_BY_PEER = "aborted_by_peer"
    ABORTED = "aborted"  # by us: protocol error, timeout, shutdown (the reason says which)
    DROPPED = "connection_dropped"  # the transport closed without a release or an A-ABORT
    REJECTED = "rejected"


@dataclasses.dataclass(frozen=True, slots=True)
class AssociationInfo:
    association_id: str
    peer: str  # "ip:port"
    calling_ae: str
    called_ae: str
    tls: bool
    contexts_proposed: int
    contexts_accepted: int
    started_at: float  # time.time() when the connection was made
    started: float  # time.monotonic() at the same moment, for durations


@dataclasses.dataclass(frozen=True, slots=True)
class AssociationCounts:
    stored: int = 0  # instances placed in the tree
    duplicates: int = 0  # receptions the duplicate policy acted on
    failed: int = 0  # C-STORE answers that were not Success
    bytes: int = 0  # dataset bytes of the instances placed
    statuses: tuple[tuple[int, int], ...] = ()  # (status, count) of the non-Success answers, by status


@dataclasses.dataclass(frozen=True, slots=True)
class AssociationOpened:
    assoc: AssociationInfo


@dataclasses.dataclass(frozen=True, slots=True)
class AssociationRejected:
    assoc: AssociationInfo
    reason: str


@quick_init
@dataclasses.dataclass(frozen=True, slots=True)
class InstanceStored:
    """An instance is in the tree (and answered Success or a warning)."""

    assoc: AssociationInfo
    info: InstanceInfo


@quick_init
@dataclasses.dataclass(frozen=True, slots=True)
class DuplicateReceived:
    """A copy the duplicate policy dropped (``info.duplicate``: identical,
    ignored, rejected); ``info.path`` is the copy kept, the reception fields
    are this reception's."""

    assoc: AssociationInfo
    info: InstanceInfo


@quick_init
@dataclasses.dataclass(frozen=True, slots=True)
class StoreAnswered:
    """Every C-STORE answer; ``seconds`` from the C-STORE-RQ to the answer."""

    assoc: AssociationInfo
    status: int
    seconds: float


@dataclasses.dataclass(frozen=True, slots=True)
class AssociationEnded:
    assoc: AssociationInfo
    outcome: Outcome
    reason: str  # "" when released
    ended_at: float  # time.time()
    counts: AssociationCounts


class Observer:
    """Told what happens, one method per event, from the event loop thread.
    Subclasses override what they need; each method runs once per event."""

    def association_opened(self, event: AssociationOpened) -> None: ...

    def association_rejected(self, event: AssociationRejected) -> None: ...

    def association_ended(self, event: AssociationEnded) -> None: ...

    def instance_stored(self, event: InstanceStored) -> None: ...

    def duplicate_received(self, event: DuplicateReceived) -> None: ...

    def store_answered(self, event: StoreAnswered) -> None: ...


class ServerTotals(Protocol):
    """What monitoring reads of the server as a whole (``services.session.ServerState``
    has these): live totals, not a handler."""

    active: int
    associations_total: int
    instances_total: int
    bytes_total: int
    index_error: str

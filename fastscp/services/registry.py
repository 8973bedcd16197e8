"""The service modules beyond Verification and Storage, by request type, each
loaded at its first request.

The query/retrieve and storage commitment modules read data sets with
pydicom, which brings numpy and the pixel plugins with it (about 30 MB of a
process on the benchmark VM). A receiver nobody queries never needs them, so
``modules`` registers ``Deferred`` stand-ins that know their SOP classes
(for negotiation) and import the real module when the first request comes
(once, on the event loop: that first request waits for the import, about
0.3 s here). The SOP Class UIDs are written out here for that reason;
tests/test_service_registry.py checks them against the modules'.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable, Mapping

from ..protocol.commands import CFindRequest, CGetRequest, CMoveRequest, Request
from .session import ServiceModule, Session

__all__ = [
    "FIND_SOP_CLASSES",
    "GET_SOP_CLASSES",
    "MOVE_SOP_CLASSES",
    "STORAGE_COMMITMENT_SOP_CLASSES",
    "Deferred",
    "answer_relational",
    "modules",
]

# PS3.4 Table C.6-1 (Patient Root) and C.6-2 (Study Root): FIND, MOVE, GET
FIND_SOP_CLASSES = frozenset({"1.2.840.10008.5.1.4.1.2.1.1", "1.2.840.10008.5.1.4.1.2.2.1"})
MOVE_SOP_CLASSES = frozenset({"1.2.840.10008.5.1.4.1.2.1.2", "1.2.840.10008.5.1.4.1.2.2.2"})
GET_SOP_CLASSES = frozenset({"1.2.840.10008.5.1.4.1.2.1.3", "1.2.840.10008.5.1.4.1.2.2.3"})
# PS3.4 J.3: Storage Commitment Push Model
STORAGE_COMMITMENT_SOP_CLASSES = frozenset({"1.2.840.10008.1.20.1"})


def answer_relational(info: bytes) -> bytes | None:
    """Our SOP Class Extended Negotiation answer for a FIND SOP class (PS3.4
    C.5.1.1, PS3.7 D.3.3.5): byte 1, relational-queries, is agreed to when
    proposed (1); every other byte the requestor proposed (combined date and
    time range matching, fuzzy semantic matching of person names, timezone
    query adjustment, ...) is answered 0, not supported. Nothing is answered
    for an empty proposal."""
    if not info:
        return None
    return bytes((1 if info[0] == 1 else 0,)) + bytes(len(info) - 1)


class _Group:
    """Modules imported together at the first request any of them gets."""

    def __init__(self, load: Callable[[], Mapping[type, ServiceModule]]) -> None:
        self._load = load
        self._modules: Mapping[type, ServiceModule] | None = None

    @property
    def loaded(self) -> bool:
        return self._modules is not None

    def module(self, request_type: type) -> ServiceModule:
        if self._modules is None:
            self._modules = self._load()
        return self._modules[request_type]


class Deferred:
    """A ServiceModule standing for one of a ``_Group``'s until it is loaded."""

    def __init__(self, sop_classes: frozenset[str], group: _Group) -> None:
        self.sop_classes = sop_classes
        self.group = group

    def start(self, session: Session, context_id: int, request: Request, dataset: bytes | None) -> None:
        self.group.module(type(request)).start(session, context_id, request, dataset)


def modules(with_index: bool, tls_context: Callable[[], ssl.SSLContext] | None = None,
            timeout: float | None = None, max_find_matches: int | None = None,
            max_retrieve_instances: int | None = None,
            pending_interval: float | None = None) -> dict[type, ServiceModule]:
    """The modules the server runs: C-FIND, C-MOVE and C-GET read the index,
    so they are served only with one; ``timeout`` (``server.dimse_timeout``)
    bounds the waits of the retrieve modules; a C-FIND matching more than
    ``max_find_matches`` is refused 0xA700 after that many responses; a
    C-MOVE or C-GET naming more than ``max_retrieve_instances`` is refused
    0xA701 before any sub-operation; ``pending_interval`` paces a C-MOVE's
    or C-GET's Pending responses (None: the retrieve module's default)."""
    if not with_index:
        return {}

    def _query() -> Mapping[type, ServiceModule]:
        from .query import QueryService

        return {CFindRequest: QueryService(max_matches=max_find_matches)}

    def retrieve() -> Mapping[type, ServiceModule]:
        from . import retrieve as module

        return module.services(tls_context, timeout, max_retrieve_instances, pending_interval)

    query, moving = _Group(_query), _Group(retrieve)
    return {
        CFindRequest: Deferred(FIND_SOP_CLASSES, query),
        CMoveRequest: Deferred(MOVE_SOP_CLASSES, moving),
        CGetRequest: Deferred(GET_SOP_CLASSES, moving),
    }

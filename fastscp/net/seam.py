"""The seam between the socket layer and the service it drives.

A leaf of types, no I/O: ``net/server.py`` makes a ``Link`` per connection
and hands it, with the connection's ``Association``, to the service factory;
the service (``services.dispatcher.Dispatcher``) is a ``Service``. Nothing is set on
the service from outside afterwards, and the socket layer reads nothing of
it but what ``Service`` declares.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Protocol

from ..protocol.association import Association, CommandReceived, DatasetFragment, Event

__all__ = ["Link", "Service", "ServiceFactory"]


@dataclasses.dataclass(frozen=True, slots=True)
class Link:
    """What the socket layer tells the service about its connection."""

    peer: str  # "ip:port"
    tls: bool
    # write what the association has to send now: for answers given outside
    # a read (durable mode's answers from the group-commit thread)
    flush: Callable[[], None]
    # run a callback on the event loop from any thread (then flush): how a
    # service's worker thread (a C-FIND's query, a C-MOVE's sends) answers
    call_soon_threadsafe: Callable[[Callable[[], None]], None]
    # bytes written and still waiting in the transport (a C-GET sending a
    # large file waits for the peer to take them)
    backlog: Callable[[], int] = lambda: 0


class Service(Protocol):
    """What the socket layer needs of the service for one connection."""

    id: str  # for the socket layer's log lines
    # answers owed but deferred to another thread: while > 0 the socket
    # layer does not poll the peer for more
    deferred: int

    def on_fragment(self, ev: DatasetFragment) -> None: ...

    def on_command(self, ev: CommandReceived) -> None: ...

    def handle(self, ev: Event) -> None: ...


ServiceFactory = Callable[[Association, Link], Service]

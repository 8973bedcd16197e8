"""Typed failures of a query, each carrying the C-FIND status PS3.4 names.

PS3.4 C.4.1.1.4 (C-FIND SCP statuses): 0xA700 Refused: Out of Resources,
0xA900 Identifier Does Not Match SOP Class, 0xCxxx Unable to Process,
0xFE00 Cancel. The service module answers with ``exc.status`` and puts
``exc.comment`` in Error Comment (0000,0902), which holds at most 64
characters (PS3.7 C.4.4, LO); ``comment`` is cut to that.
"""

from __future__ import annotations


class QueryError(Exception):
    """A query that cannot be answered; ``status`` is the C-FIND status."""

    status = 0xC000

    def __init__(self, message: str, *, offending: tuple[int, ...] = ()) -> None:
        super().__init__(message)
        self.message = message
        self.offending = offending  # tags for Offending Element (0000,0901)

    @property
    def comment(self) -> str:
        return self.message[:64]


class IdentifierError(QueryError):
    """The identifier is not a valid request of the SOP class: unknown or
    missing Query/Retrieve Level, a missing or multi-valued unique key above
    the level in a hierarchical query, a malformed value (0xA900)."""

    status = 0xA900


class UnableToProcess(QueryError):
    """The index could not run the query (0xC001: a database error)."""

    status = 0xC001


class OutOfResources(QueryError):
    """More matches than the configured limit (0xA700)."""

    status = 0xA700


class QueryCancelled(QueryError):
    """The requester sent C-CANCEL; no more responses (0xFE00)."""

    status = 0xFE00

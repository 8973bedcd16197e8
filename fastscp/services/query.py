"""The C-FIND SCP (PS3.4 C.4.1) of the Patient Root and Study Root
Query/Retrieve information models, over the DuckDB index (``fastscp.qr``).

Registered in ``ServerState.services`` for ``CFindRequest`` when an index is
configured (``app.build_state``); negotiation accepts the two FIND SOP
classes only then. For each C-FIND-RQ:

- on the event loop: the request is checked against its presentation
  context (0x0122 when the Affected SOP Class is not the context's FIND
  class) and handed to a worker thread of a bounded pool (``WORKERS``; a
  query beyond that waits for a worker, its association held open);
- in the worker: the identifier is checked to end exactly at its last
  element (``storage.header.check_dataset_end``, the receiver's own walk)
  and decoded by pydicom in the context's transfer syntax; one that does not
  decode is answered 0xC000 with one log line. ``qr.find`` then runs on a
  cursor of its own (``CatalogWriter.cursor()``: an MVCC snapshot; the
  index writer goes on) and each response identifier is encoded in the
  worker (``identifiers.encode_response``: written directly from the
  engine's elements when they are plain, through pydicom otherwise) and
  handed to the event loop (``session.call_soon``) as it comes:
  Pending responses go out while DuckDB is still reading the next rows, not
  after the whole result. At most ``WINDOW`` encoded responses wait for the
  loop; the worker waits beyond that.
- Pending status is 0xFF00, or 0xFF01 when the identifier holds optional
  keys this SCP does not support for matching or for return (PS3.4
  C.4.1.1.4, Table C.4-1: keys the index does not hold, sequences, keys of
  levels below the query level, a value for a key that is only returned);
  those keys come back with no value.
- the final response: Success; or the engine's ``QueryError`` status
  (0xA900, 0xA700, 0xC001) with its Error Comment and Offending Element
  where it names one (PS3.7 C.4.1.1, Annex C); 0xFE00 once a C-CANCEL
  arrived (``Operation.cancel`` sets the flag the engine polls between
  rows, and wakes a worker waiting for the loop).

Relational queries (PS3.4 C.4.1.3.2) are run only for a requestor that
proposed them in SOP Class Extended Negotiation (PS3.4 C.5.1, PS3.7
D.3.3.5) and got our agreement (``registry.answer_relational``); others are
hierarchical (C.4.1.3.1).
"""

from __future__ import annotations

import collections
import functools
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import duckdb
from pydicom.dataset import Dataset

from ..protocol import dimse as D
from ..protocol.commands import CFindRequest, Request
from ..qr import InformationModel, Level, Match, QueryCancelled, QueryError, find_responses
from ..qr.matching import element_text
from ..qr.model import (
    INSTANCE_AVAILABILITY,
    KEYS_BY_TAG,
    QUERY_RETRIEVE_LEVEL,
    RETRIEVE_AE_TITLE,
    SPECIFIC_CHARACTER_SET,
)
from .identifiers import MalformedIdentifier, decode_identifier, encode_response
from .session import Session

log = logging.getLogger("fastscp.scp")

__all__ = ["FIND_SOP_CLASSES", "QueryService", "unsupported_keys"]

FIND_SOP_CLASSES = frozenset(model.find_uid for model in InformationModel)
PENDING_WARNING = 0xFF01  # Matches are continuing: optional keys not supported (PS3.4 C.4.1.1.4)
UNABLE_TO_PROCESS = 0xC001
WORKERS = 4  # queries run at once; more wait for a worker
WINDOW = 32  # encoded responses handed to the event loop and not yet sent

# attributes of an identifier the response answers that are not index keys
_ANSWERED = frozenset({SPECIFIC_CHARACTER_SET, QUERY_RETRIEVE_LEVEL, RETRIEVE_AE_TITLE, INSTANCE_AVAILABILITY})


def unsupported_keys(identifier: Dataset, model: InformationModel) -> tuple[int, ...]:
    """Tags of the optional keys this SCP does not support for this query:
    not held by the index (private, sequences, other attributes), of a
    level below the query level (returned empty), or given a value where
    the key is only returned (the derived counts, SOP Classes in Study).
    Call after ``find`` accepted the identifier (its level and key values
    are then known to be readable)."""
    level = Level.parse(element_text(identifier[QUERY_RETRIEVE_LEVEL]))
    assert level is not None
    out: list[int] = []
    for dicom_tag in identifier.keys():
        tag = int(dicom_tag)
        if tag in _ANSWERED or tag & 0xFFFF == 0:
            continue
        key = KEYS_BY_TAG.get(tag)
        if key is None or model.key_level(key) > level:
            out.append(tag)
        elif key.match is Match.DERIVED and element_text(identifier[dicom_tag]):
            out.append(tag)
    return tuple(out)


class QueryService:
    """The C-FIND service module (``session.ServiceModule``)."""

    sop_classes = FIND_SOP_CLASSES

    def __init__(self, workers: int = WORKERS, max_matches: int | None = None) -> None:
        """``max_matches`` (``query_retrieve.max_find_matches``): a query
        matching more is answered 0xA700 after that many responses."""
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="fastscp-cfind")
        self._max_matches = max_matches

    def start(self, session: Session, context_id: int, request: Request, dataset: bytes | None) -> None:
        if not isinstance(request, CFindRequest):
            raise TypeError(f"QueryService serves C-FIND, not {type(request).__name__}")
        sop_class = request.affected_sop_class_uid
        context = session.context(context_id)
        model = InformationModel.for_sop_class(sop_class)

        def refuse(status: int, comment: str) -> None:
            log.warning("assoc %s C-FIND %d: %s: answered %#06x", session.id, request.message_id, comment, status)
            session.send(context_id, D.encode_command(
                {D.AFFECTED_SOP_CLASS: sop_class, D.COMMAND_FIELD: D.C_FIND_RSP,
                 D.MESSAGE_ID_RESPONDED: request.message_id, D.STATUS: status, D.ERROR_COMMENT: comment}, False))

        if context is None or context[0] != sop_class or model is None or model.find_uid != sop_class:
            refuse(D.SOP_CLASS_NOT_SUPPORTED, "SOP class differs from the presentation context's")
            return
        catalog = session.server.catalog
        if catalog is None:  # configured, but it failed to open (the status page says why)
            refuse(UNABLE_TO_PROCESS, "the index is unavailable")
            return
        if dataset is None:
            refuse(D.ERROR_DATASET_DOES_NOT_MATCH_SOP_CLASS, "C-FIND request without an identifier")
            return
        relational = session.extended_negotiation(sop_class)[:1] == b"\x01"
        operation = _Find(session, context_id, request, model, context[1], relational, catalog.cursor,
                          self._max_matches)
        session.operation_started(request.message_id, operation)
        self._pool.submit(operation.run, dataset)


class _Find:
    """One C-FIND under way (``session.Operation``): ``run`` in a worker
    thread, ``cancel`` and the sends on the event loop."""

    def __init__(self, session: Session, context_id: int, request: CFindRequest, model: InformationModel,
                 transfer_syntax: str, relational: bool,
                 cursor: Callable[[], duckdb.DuckDBPyConnection], max_matches: int | None = None) -> None:
        self._session = session
        self._max_matches = max_matches
        self._context_id = context_id
        self._request = request
        self._model = model
        self._syntax = transfer_syntax
        self._relational = relational
        self._cursor = cursor
        self._cancelled = threading.Event()
        self._lock = threading.Condition()
        self._queue: collections.deque[tuple[bytes, bytes]] = collections.deque()
        self._drain_queued = False

    # ---- event loop ---------------------------------------------------------------

    def cancel(self) -> None:
        self._cancelled.set()
        with self._lock:
            self._lock.notify_all()

    def _command(self, status: int, comment: str = "", offending: tuple[int, ...] = ()) -> bytes:
        fields: dict[int, int | str | tuple[int, ...]] = {
            D.AFFECTED_SOP_CLASS: self._request.affected_sop_class_uid, D.COMMAND_FIELD: D.C_FIND_RSP,
            D.MESSAGE_ID_RESPONDED: self._request.message_id, D.STATUS: status}
        if comment:
            fields[D.ERROR_COMMENT] = comment
        if offending:
            fields[D.OFFENDING_ELEMENT] = offending
        return D.encode_command(fields, status in (D.PENDING, PENDING_WARNING))

    def _drain(self) -> None:
        with self._lock:
            ready = list(self._queue)
            self._queue.clear()
            self._drain_queued = False
            self._lock.notify_all()
        for command, identifier in ready:
            self._session.send(self._context_id, command, identifier)

    def _final(self, command: bytes) -> None:
        self._session.send(self._context_id, command)
        self._session.operation_ended(self._request.message_id)

    # ---- worker thread --------------------------------------------------------------

    def _hand_over(self, command: bytes, identifier: bytes) -> None:
        """Queue one Pending response for the loop; wait while ``WINDOW``
        are queued. Raises QueryCancelled once cancelled."""
        with self._lock:
            self._lock.wait_for(lambda: len(self._queue) < WINDOW or self._cancelled.is_set())
            if self._cancelled.is_set():
                raise QueryCancelled("C-CANCEL received")
            self._queue.append((command, identifier))
            queue_drain = not self._drain_queued
            self._drain_queued = True
        if queue_drain:
            self._session.call_soon(self._drain)

    def run(self, dataset: bytes) -> None:
        session, request = self._session, self._request
        started = time.perf_counter()
        matches = 0
        level = "?"
        try:
            try:
                identifier = decode_identifier(dataset, self._syntax)
            except MalformedIdentifier as exc:
                log.warning("assoc %s C-FIND %d: identifier is not a data set in %s (%s): answered 0xC000",
                            session.id, request.message_id, self._syntax, exc)
                command = self._command(D.ERROR_CANNOT_UNDERSTAND, f"identifier not decodable: {exc}"[:64])
                session.call_soon(functools.partial(self._final, command))
                return
            conn = self._cursor()
            try:
                responses = find_responses(conn, identifier, self._model, relational=self._relational,
                                           cancelled=self._cancelled.is_set,
                                           retrieve_ae_title=session.server.ae_title,
                                           max_matches=self._max_matches)
                level = element_text(identifier[QUERY_RETRIEVE_LEVEL])
                pending = self._command(PENDING_WARNING if unsupported_keys(identifier, self._model)
                                        else D.PENDING)
                for response in responses:
                    self._hand_over(pending, encode_response(response, self._syntax))
                    matches += 1
            finally:
                conn.close()
            command = self._command(D.SUCCESS)
            log.debug("assoc %s C-FIND %d: %s %s, %d matches in %.1f ms", session.id, request.message_id,
                      self._model.name, level, matches, (time.perf_counter() - started) * 1e3)
        except QueryCancelled:
            command = self._command(D.CANCEL)
            log.info("assoc %s C-FIND %d: cancelled after %d matches", session.id, request.message_id, matches)
        except QueryError as exc:
            command = self._command(exc.status, exc.comment, exc.offending)
            log.warning("assoc %s C-FIND %d (%s): %s: answered %#06x", session.id, request.message_id,
                        self._model.name, exc.message, exc.status)
        except duckdb.Error as exc:  # the cursor could not be opened (the index closed at shutdown)
            command = self._command(UNABLE_TO_PROCESS, "index unavailable")
            log.error("assoc %s C-FIND %d: index query failed: %s: %s", session.id, request.message_id,
                      type(exc).__name__, exc)
        except Exception:  # a bug must not leave the requestor waiting: it gets a final answer
            command = self._command(UNABLE_TO_PROCESS, "internal error")
            log.exception("assoc %s C-FIND %d: internal error; answered 0xC001", session.id, request.message_id)
        session.call_soon(functools.partial(self._final, command))

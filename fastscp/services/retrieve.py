"""C-MOVE and C-GET SCP (PS3.4 C.4.2, C.4.3) over the index and the stored files.

A retrieve request names instances by the unique keys of its Query/Retrieve
Level (``select_instances``: Patient ID, Study/Series/SOP Instance UIDs, as
one value or a list of UIDs, PS3.4 C.4.2.2.1) and the index lists the
matching instances present in the served tree: path, SOP class, SOP
instance, transfer syntax. Each becomes one C-STORE sub-operation that sends
the file's data set exactly as stored (no decoding, no transcoding):

- C-MOVE (``MoveService``): on a new association to the Move Destination,
  looked up in ``remote_aes`` (an AE title not listed: 0xA801), opened from
  a worker thread by ``store_scu.StoreAssociation`` (the project's own PDU
  code: one presentation context per (SOP class, stored transfer syntax),
  each file streamed from disk one PDU per write, TCP_NODELAY); the
  C-STORE-RQs carry Move Originator AE Title and Message ID (PS3.7 9.3.1.1).
- C-GET (``GetService``): on the requesting association itself, on an
  accepted context of the instance's SOP class whose transfer syntax is the
  stored one and for which the requestor took the SCP role (PS3.7 D.3.3.4);
  one sub-operation at a time, each C-STORE-RSP awaited before the next.
  The worker frames the files (``frame_file``: preadv into a buffer with the
  PDU headers in place, large files in pieces) ahead of the sends, and the
  event loop sends them and handles the responses (``_GetPipeline``).

A sub-operation whose SOP class and transfer syntax the receiver did not
accept fails (transcoding is not done) and so does one whose file cannot be
read. Pending responses, with the Remaining, Completed, Failed and Warning
counts, are optional (PS3.4 C.4.2.3.1 for C-MOVE, C.4.3.3.1 for C-GET: "the
SCP may generate" them; PS3.7 9.3.3.4 and 9.3.4.4: "zero or more" before
the final one): one goes out after a sub-operation once
``query_retrieve.pending_interval`` seconds have passed since the
sub-operations began or since the last Pending (``PendingPacer``; 0: after
every sub-operation, as dcmqrscp and Orthanc do). The final response is
Success, 0xB000 (some failed or warned), 0xA702 (all failed) or 0xFE00
(C-CANCEL: counts, with Remaining the sub-operations not started), with
the Failed SOP Instance UID List (0008,0058) in its identifier when a
sub-operation failed (PS3.4 C.4.2.1.4, C.4.2.3.1, C.4.3.1.3). A retrieve
naming more instances than ``query_retrieve.max_retrieve_instances`` is
refused 0xA701 before any sub-operation (counted in SQL). See
docs/query-retrieve.md.

Threads: ``start`` runs on the event loop and starts one worker thread per
request; the worker reads the index (its own cursor) and the files, and
reaches the association only through ``session.call_soon`` (a C-GET's
sends and responses then run on the loop, fed by the worker).
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import dataclasses
import logging
import os
import ssl
import threading
import time
from collections.abc import Callable, Sequence
from typing import Protocol, TypeVar

import duckdb
from pydicom.dataset import Dataset
from pydicom.uid import UID

from ..catalog.root import under_root_prefix
from ..protocol import dimse as D
from ..protocol import pdu as P
from ..protocol.commands import CGetRequest, CMoveRequest, DimseResponse, Request
from ..qr.errors import IdentifierError
from ..qr.matching import element_text, query_level
from ..qr.model import KEYS_BY_TAG, UNIQUE_KEY, InformationModel, Key, Level
from .identifiers import decode_identifier, encode_identifier
from .session import RemoteAE, Session
from .store_scu import HEAD, AssociationLost, StoreAssociation, dataset_offset, frame_file

__all__ = [
    "GetService", "MoveService", "PendingPacer", "RetrieveStatus", "StoredInstance", "TooManyInstances",
    "select_instances",
]

log = logging.getLogger("fastscp.scp")

# Retrieve statuses (PS3.4 C.4.2.1.5 Table C.4-2, C.4.3.1.4 Table C.4-3)
SUB_OPERATIONS_WARNING = 0xB000
REFUSED_NO_MATCHES_COUNT = 0xA701
REFUSED_SUB_OPERATIONS = 0xA702
MOVE_DESTINATION_UNKNOWN = 0xA801
IDENTIFIER_DOES_NOT_MATCH = 0xA900
UNABLE_TO_PROCESS = 0xC001
FAILED_SOP_INSTANCE_UID_LIST = 0x00080058

# C-STORE statuses that count as a warning sub-operation (PS3.4 B.2.3)
_STORE_WARNINGS = frozenset({0x0001, 0xB000, 0xB006, 0xB007})
MAX_CONTEXTS = 128  # presentation context IDs are the odd numbers 1..255 (PS3.8 9.3.2.2)
RESPONSE_TIMEOUT = 120.0  # seconds a C-GET waits for a C-STORE-RSP before aborting

# The instances column holding each level's unique key (PS3.4 C.6.1.1, C.6.2.1)
_COLUMN: dict[Level, str] = {
    Level.PATIENT: "patient_id", Level.STUDY: "study_instance_uid",
    Level.SERIES: "series_instance_uid", Level.IMAGE: "sop_instance_uid",
}


@dataclasses.dataclass(frozen=True, slots=True)
class StoredInstance:
    """One instance a retrieve sends, as the index holds it."""

    path: str
    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax_uid: str


@dataclasses.dataclass(frozen=True, slots=True)
class RetrieveStatus:
    """A retrieve's counts of sub-operations and the failed SOP Instance UIDs."""

    remaining: int
    completed: int
    failed: int
    warning: int
    failed_uids: tuple[str, ...]


# ---- which instances -------------------------------------------------------------------------


def retrieve_keys(identifier: Dataset, model: InformationModel) -> tuple[Level, dict[Level, list[str]]]:
    """The Query/Retrieve Level and the unique keys' values of a C-MOVE/C-GET
    identifier, by level; IdentifierError (0xA900) for a missing or unknown
    level, a level the model does not have, a missing unique key at the
    level, or a key below the level given a value.

    Baseline retrieve (PS3.4 C.4.2.2.1) has the requester give the unique key
    of every level above (one value) and of the level itself (one value, or
    a list of UIDs at STUDY, SERIES, IMAGE). This SCP requires only the
    level's own: UIDs name their entity alone, and the keys above, when
    given, narrow the match. Keys that are not unique keys are ignored.
    """
    level = query_level(identifier, model)
    values: dict[Level, list[str]] = {}
    for tag in identifier.keys():
        key: Key | None = KEYS_BY_TAG.get(int(tag))
        if key is None:
            continue
        key_level = model.key_level(key)
        if key is not UNIQUE_KEY[key_level]:
            continue  # not a unique key in this model (Patient ID in Study Root): not matched
        try:
            text = element_text(identifier[tag])
        except (UnicodeError, ValueError, TypeError) as exc:
            raise IdentifierError(f"{key.keyword}: unreadable value ({exc})", offending=(key.tag,)) from None
        listed = [v.strip(" \0") for v in text.split("\\") if v.strip(" \0")]
        if key_level > level:
            if listed:
                raise IdentifierError(f"{key.keyword} is a {key_level.name} key, below the {level.name} "
                                      "level", offending=(key.tag,))
            continue
        if listed:
            values[key_level] = listed
    unique = UNIQUE_KEY[level]
    if level not in values:
        raise IdentifierError(f"a {level.name} level retrieve needs {unique.keyword} (C.4.2.2.1)",
                              offending=(unique.tag,))
    if level is Level.PATIENT and len(values[level]) > 1:
        raise IdentifierError("a PATIENT level retrieve takes one Patient ID (C.4.2.2.1)", offending=(unique.tag,))
    return level, values


class TooManyInstances(Exception):
    """A retrieve names more instances than ``max_instances`` (0xA701)."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"more than {limit} instances")
        self.limit = limit


def select_instances(conn: duckdb.DuckDBPyConnection, identifier: Dataset, model: InformationModel,
                     root: str | os.PathLike[str], max_instances: int | None = None) -> list[StoredInstance]:
    """The instances a C-MOVE/C-GET identifier names that are present in the
    tree under ``root``, in study, series, instance number order.
    Raises IdentifierError, and TooManyInstances when more than
    ``max_instances`` match (counted in SQL, up to one past the limit,
    before any row is read); DuckDB errors pass through."""
    _, values = retrieve_keys(identifier, model)
    where = ["status = 'present'", "starts_with(path, ?)"]
    params: list[object] = [under_root_prefix(root)]
    for level, uids in sorted(values.items()):
        # a fixed fragment with one placeholder per value: values never enter the SQL text
        where.append(f"{_COLUMN[level]} IN ({', '.join('?' * len(uids))})")
        params.extend(uids)
    condition = " AND ".join(where)
    if max_instances is not None:
        # no ORDER BY: the scan stops at the first max_instances + 1 rows
        (count,) = conn.execute(f"SELECT count(*) FROM (SELECT 1 FROM instances WHERE {condition} LIMIT ?)",
                                [*params, max_instances + 1]).fetchone() or (0,)
        if count > max_instances:
            raise TooManyInstances(max_instances)
    sql = ("SELECT path, sop_class_uid, sop_instance_uid, transfer_syntax_uid FROM instances WHERE "
           + condition
           + " ORDER BY study_instance_uid, series_instance_uid, instance_number NULLS LAST, sop_instance_uid")
    if max_instances is not None:  # rows indexed since the count do not pass the limit either
        sql += " LIMIT ?"
        params.append(max_instances)
    return [StoredInstance(*row) for row in conn.execute(sql, params).fetchall()]


# ---- identifiers in and out ------------------------------------------------------------------


def _failed_list(uids: Sequence[str], implicit: bool) -> Dataset:
    """Failed SOP Instance UID List (0008,0058); in explicit VR its value is
    at most 65534 bytes (a 16-bit length), so a longer list is cut there."""
    ds = Dataset()
    kept: list[str] = []
    size = 0
    for uid in uids:
        size += len(uid) + 1
        if not implicit and size > 65534:
            break
        kept.append(uid)
    ds.FailedSOPInstanceUIDList = kept
    return ds


# ---- one retrieve ----------------------------------------------------------------------------


class _Sender(Protocol):
    """The sending side of a retrieve's sub-operations."""

    def refused(self, instance: StoredInstance) -> str:
        """Why ``instance`` cannot be sent on what was negotiated ("" if it can)."""

    def store(self, instance: StoredInstance) -> tuple[int | None, str]:
        """One C-STORE sub-operation: (status, "") or (None, why it failed)."""

    def close(self) -> None: ...


class _Stopped(Exception):
    """The association ended (or the loop stopped): no answer can go out."""


PENDING_INTERVAL = 1.0  # seconds between Pending responses (query_retrieve.pending_interval)


class PendingPacer:
    """When a retrieve sends a Pending response: after a sub-operation, once
    ``interval`` seconds have passed since the pacer was made (the
    sub-operations' start) or since the last one it allowed; every time
    with an interval of 0.

    Pending C-MOVE and C-GET responses are optional (PS3.4 C.4.2.3.1,
    C.4.3.3.1) and the requester's protocol machine takes zero or more of
    them before the final response (PS3.7 9.3.3.4, 9.3.4.4), which alone
    carries the counts that count. Each one costs the requester a wake-up,
    a read and a command decode per sub-operation (and, for a C-MOVE, a
    hand-over from the worker to the event loop here), while what it tells
    a person watching changes little between two sub-operations a
    millisecond apart; one a second still shows progress and keeps a
    requester's DIMSE timeout from expiring while sub-operations go on.
    """

    def __init__(self, interval: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval = interval
        self.clock = clock
        self.last = clock() if interval > 0 else 0.0

    def due(self) -> bool:
        """A Pending response goes out now (and the interval restarts)."""
        if self.interval <= 0:
            return True
        now = self.clock()
        if now - self.last < self.interval:
            return False
        self.last = now
        return True


_T = TypeVar("_T")


class _Retrieval:
    """One C-MOVE or C-GET in its worker thread (an ``Operation``)."""

    def __init__(self, session: Session, context_id: int, request: CMoveRequest | CGetRequest,
                 response_field: int, transfer_syntax: str, what: str,
                 pending_interval: float = PENDING_INTERVAL) -> None:
        self.session = session
        self.context_id = context_id
        self.request = request
        self.response_field = response_field
        self.transfer_syntax = transfer_syntax
        self.what = what  # for log lines: "C-MOVE to X", "C-GET"
        self.pending_interval = pending_interval  # see PendingPacer
        self.cancelled = threading.Event()
        self.ended = threading.Event()  # the association ended: stop without answering
        self.wakeups: list[Callable[[], None]] = []  # called on cancel(): unblock a wait

    # Operation
    def cancel(self) -> None:
        self.cancelled.set()
        if not self.session.established:
            self.ended.set()
        else:
            log.info("%s (assoc %s, message %d): C-CANCEL received", self.what, self.session.id,
                     self.request.message_id)
        for wake in list(self.wakeups):
            wake()

    # ---- talking to the association from the worker ----------------------------------------

    def on_loop(self, fn: Callable[[], _T], timeout: float = 60.0) -> _T:
        """Run ``fn`` on the event loop and return its result (worker side)."""
        future: concurrent.futures.Future[_T] = concurrent.futures.Future()

        def run() -> None:
            try:
                future.set_result(fn())
            except BaseException as exc:  # handed to the worker, which re-raises it
                future.set_exception(exc)

        try:
            self.session.call_soon(run)
            return future.result(timeout)
        except (RuntimeError, concurrent.futures.TimeoutError):  # loop closed or not turning
            raise _Stopped() from None

    def respond(self, status: int, counts: RetrieveStatus | None, identifier: Dataset | None = None,
                comment: str = "", final: bool = False) -> None:
        fields: dict[int, int | str] = {
            D.AFFECTED_SOP_CLASS: self.request.affected_sop_class_uid, D.COMMAND_FIELD: self.response_field,
            D.MESSAGE_ID_RESPONDED: self.request.message_id, D.STATUS: status,
        }
        if counts is not None:
            # Remaining only while pending or after a cancel (PS3.4 C.4.2.1.6)
            if status in (D.PENDING, D.CANCEL):
                fields[D.REMAINING_SUBOPERATIONS] = min(counts.remaining, 0xFFFF)
            fields[D.COMPLETED_SUBOPERATIONS] = min(counts.completed, 0xFFFF)
            fields[D.FAILED_SUBOPERATIONS] = min(counts.failed, 0xFFFF)
            fields[D.WARNING_SUBOPERATIONS] = min(counts.warning, 0xFFFF)
        if comment:
            fields[D.ERROR_COMMENT] = comment[:64]
        data = encode_identifier(identifier, self.transfer_syntax) if identifier is not None else None
        command = D.encode_command(fields, data is not None)
        session, cid, message_id = self.session, self.context_id, self.request.message_id

        def send() -> None:
            session.send(cid, command, data)
            if final:
                session.operation_ended(message_id)

        try:
            session.call_soon(send)
        except RuntimeError:  # the loop is closed: the server stopped
            pass

    def fail(self, status: int, comment: str) -> None:
        self.respond(status, RetrieveStatus(0, 0, 0, 0, ()), comment=comment, final=True)

    # ---- the sub-operations ------------------------------------------------------------------

    def run(self, instances: Sequence[StoredInstance], sender: _Sender) -> None:
        """Send each instance through ``sender``; a Pending response after
        those the pacer allows, then the final response."""
        tally = _Tally(len(instances))
        pacer = PendingPacer(self.pending_interval)
        try:
            for instance in instances:
                if self.cancelled.is_set() or self.ended.is_set():
                    break
                why = sender.refused(instance)
                status: int | None = None
                if not why:
                    status, why = sender.store(instance)
                tally.record(instance.sop_instance_uid, status, why)
                if tally.done < tally.total and not self.ended.is_set() and pacer.due():
                    self.respond(D.PENDING, tally.counts(()))
        finally:
            sender.close()
        self.finish(tally)

    def finish(self, tally: _Tally) -> None:
        """The final response from the counts (nothing once the association ended)."""
        if self.ended.is_set():
            log.warning("%s: association %s ended during the retrieve: %d of %d sub-operations done",
                        self.what, self.session.id, tally.done, tally.total)
            return
        failed_uids = tally.failed_uids
        counts = tally.counts(tuple(failed_uids))
        implicit = UID(self.transfer_syntax).is_implicit_VR
        if self.cancelled.is_set() and tally.done < tally.total:
            status = D.CANCEL
            identifier: Dataset | None = _failed_list(failed_uids, implicit)
        elif tally.failed and tally.failed == tally.total:
            status, identifier = REFUSED_SUB_OPERATIONS, _failed_list(failed_uids, implicit)
        elif tally.failed or tally.warning:
            status = SUB_OPERATIONS_WARNING
            identifier = _failed_list(failed_uids, implicit) if tally.failed else None
        else:
            status, identifier = D.SUCCESS, None
        if tally.failed:
            top = "; ".join(f"{n} x {why}" for why, n in tally.reasons.most_common(3))
            log.warning("%s (assoc %s, message %d): %d of %d sub-operations failed: %s", self.what,
                        self.session.id, self.request.message_id, tally.failed, tally.total, top)
        log.info("%s (assoc %s, message %d): %d instances: %d completed, %d warning, %d failed, %d not "
                 "started (status 0x%04X)", self.what, self.session.id, self.request.message_id, tally.total,
                 tally.completed, tally.warning, tally.failed, tally.total - tally.done, status)
        self.respond(status, counts, identifier, final=True)


class _Tally:
    """A retrieve's sub-operations so far: counts, failed UIDs, why they failed."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.done = self.completed = self.failed = self.warning = 0
        self.failed_uids: list[str] = []
        self.reasons: collections.Counter[str] = collections.Counter()

    def record(self, sop_instance_uid: str, status: int | None, why: str) -> None:
        """One sub-operation ended: C-STORE status, or None and why it failed."""
        self.done += 1
        if status is None or (status != D.SUCCESS and status not in _STORE_WARNINGS):
            self.failed += 1
            self.failed_uids.append(sop_instance_uid)
            self.reasons[why or f"status 0x{status or 0:04X}"] += 1
        elif status == D.SUCCESS:
            self.completed += 1
        else:
            self.warning += 1

    def counts(self, failed_uids: tuple[str, ...]) -> RetrieveStatus:
        return RetrieveStatus(self.total - self.done, self.completed, self.failed, self.warning, failed_uids)


# ---- the services ----------------------------------------------------------------------------


class _RetrieveService:
    """What C-MOVE and C-GET share: checks, the identifier, the query, the thread."""

    response_field = 0

    def __init__(self, models: Sequence[InformationModel], max_instances: int | None = None,
                 pending_interval: float = PENDING_INTERVAL) -> None:
        self.models = {self.uid_of(m): m for m in models}
        self.sop_classes = frozenset(self.models)
        self.max_instances = max_instances
        self.pending_interval = pending_interval

    @staticmethod
    def uid_of(model: InformationModel) -> str:
        raise NotImplementedError

    def start(self, session: Session, context_id: int, request: Request, dataset: bytes | None) -> None:
        assert isinstance(request, (CMoveRequest, CGetRequest))
        context = session.context(context_id)
        model = self.models.get(request.affected_sop_class_uid)
        ts = context[1] if context is not None else ""
        op = _Retrieval(session, context_id, request, self.response_field, ts, self.describe(request),
                        self.pending_interval)
        session.operation_started(request.message_id, op)
        if model is None or context is None or context[0] != request.affected_sop_class_uid:
            log.warning("%s (assoc %s): SOP class %s is not a retrieve SOP class of its context", op.what,
                        session.id, request.affected_sop_class_uid)
            op.fail(D.SOP_CLASS_NOT_SUPPORTED, "not a retrieve SOP class of this context")
            return
        catalog = session.server.catalog
        if catalog is None:
            log.warning("%s (assoc %s): no index: refused 0x%04X", op.what, session.id, UNABLE_TO_PROCESS)
            op.fail(UNABLE_TO_PROCESS, "no index to retrieve from")
            return
        if dataset is None:
            log.warning("%s (assoc %s): no identifier: refused 0xA900", op.what, session.id)
            op.fail(IDENTIFIER_DOES_NOT_MATCH, "no identifier")
            return
        if not self.accept(session, op):
            return
        root = str(session.server.storage.directory)
        threading.Thread(target=self._work, args=(op, model, dataset, catalog.cursor, root),
                         name=f"retrieve-{session.id}-{request.message_id}", daemon=True).start()

    def describe(self, request: CMoveRequest | CGetRequest) -> str:
        raise NotImplementedError

    def accept(self, session: Session, op: _Retrieval) -> bool:
        """Checks on the event loop before the worker starts; False: answered."""
        return True

    def perform(self, op: _Retrieval, instances: Sequence[StoredInstance]) -> None:
        """The sub-operations and the final response (worker thread)."""
        raise NotImplementedError

    def _work(self, op: _Retrieval, model: InformationModel, dataset: bytes,
              cursor: Callable[[], duckdb.DuckDBPyConnection], root: str) -> None:
        try:
            try:
                identifier = decode_identifier(dataset, op.transfer_syntax)
                conn = cursor()
                try:
                    instances = select_instances(conn, identifier, model, root, self.max_instances)
                finally:
                    conn.close()
            except TooManyInstances as exc:
                log.warning("%s (assoc %s, message %d): more than %d instances match "
                            "(query_retrieve.max_retrieve_instances): refused 0x%04X, no sub-operation started; "
                            "retrieve by study or series", op.what, op.session.id, op.request.message_id,
                            exc.limit, REFUSED_NO_MATCHES_COUNT)
                op.fail(REFUSED_NO_MATCHES_COUNT, f"more than {exc.limit} instances: retrieve fewer at a time")
                return
            except IdentifierError as exc:
                log.warning("%s (assoc %s): identifier refused (0xA900): %s", op.what, op.session.id, exc.message)
                op.fail(IDENTIFIER_DOES_NOT_MATCH, exc.comment)
                return
            except duckdb.Error as exc:
                log.error("%s (assoc %s): index query failed (0x%04X): %s", op.what, op.session.id,
                          UNABLE_TO_PROCESS, exc)
                op.fail(UNABLE_TO_PROCESS, "index query failed")
                return
            except Exception as exc:  # an identifier pydicom cannot decode
                log.warning("%s (assoc %s): identifier unreadable (0xA900): %s", op.what, op.session.id, exc)
                op.fail(IDENTIFIER_DOES_NOT_MATCH, "identifier cannot be decoded")
                return
            if not instances:
                op.respond(D.SUCCESS, RetrieveStatus(0, 0, 0, 0, ()), final=True)
                log.info("%s (assoc %s, message %d): no instance matches", op.what, op.session.id,
                         op.request.message_id)
                return
            self.perform(op, instances)
        except _Stopped:
            log.warning("%s (assoc %s): stopped: the association or the server ended", op.what, op.session.id)
        except Exception:  # a bug must not leave the operation open (it holds the idle timeout)
            log.exception("%s (assoc %s): failed (0x%04X)", op.what, op.session.id, UNABLE_TO_PROCESS)
            op.fail(UNABLE_TO_PROCESS, "internal error")


# ---- C-MOVE ----------------------------------------------------------------------------------


class MoveService(_RetrieveService):
    """C-MOVE SCP: Patient Root and Study Root MOVE (PS3.4 C.4.2)."""

    response_field = D.C_MOVE_RSP

    def __init__(self, models: Sequence[InformationModel] = tuple(InformationModel),
                 tls_context: Callable[[], ssl.SSLContext] | None = None, timeout: float = 30.0,
                 max_instances: int | None = None, pending_interval: float = PENDING_INTERVAL) -> None:
        super().__init__(models, max_instances, pending_interval)
        self.tls_context = tls_context
        self.timeout = timeout

    @staticmethod
    def uid_of(model: InformationModel) -> str:
        return model.move_uid

    def describe(self, request: CMoveRequest | CGetRequest) -> str:
        assert isinstance(request, CMoveRequest)
        return f"C-MOVE to {request.move_destination.strip() or '(none)'}"

    def accept(self, session: Session, op: _Retrieval) -> bool:
        assert isinstance(op.request, CMoveRequest)
        destination = op.request.move_destination.strip(" \0")
        if destination not in session.server.remote_aes:
            log.warning("%s (assoc %s, calling %s): move destination %r is not in remote_aes: refused 0xA801",
                        op.what, session.id, session.calling_ae, destination)
            op.fail(MOVE_DESTINATION_UNKNOWN, "move destination unknown")
            return False
        return True

    def perform(self, op: _Retrieval, instances: Sequence[StoredInstance]) -> None:
        assert isinstance(op.request, CMoveRequest)
        remote = op.session.server.remote_aes[op.request.move_destination.strip(" \0")]
        op.run(instances, _MoveSender(op, remote, op.session.server.ae_title, self.tls_context, self.timeout,
                                      instances))


class _MoveSender:
    """The C-STORE SCU side of a C-MOVE (``store_scu.StoreAssociation``, in
    the worker thread). One association proposes up to 128 (SOP class,
    transfer syntax) pairs, one context each; a retrieve with more pairs
    opens one association per 128, in the order its instances come."""

    def __init__(self, op: _Retrieval, remote: RemoteAE, ae_title: str,
                 tls_context: Callable[[], ssl.SSLContext] | None, timeout: float,
                 instances: Sequence[StoredInstance]) -> None:
        self.op = op
        self.remote = remote
        self.ae_title = ae_title
        self.tls_context = tls_context
        self.timeout = timeout
        pairs = sorted({(i.sop_class_uid, i.transfer_syntax_uid) for i in instances})
        self.rounds = [pairs[n:n + MAX_CONTEXTS] for n in range(0, len(pairs), MAX_CONTEXTS)]
        self.round_of = {pair: n for n, chunk in enumerate(self.rounds) for pair in chunk}
        self.current = -1
        self.assoc: StoreAssociation | None = None
        self.lost = ""  # why the association cannot carry more sub-operations

    def _open(self, n: int) -> None:
        self.close()
        self.current, self.lost = n, ""
        where = f"{self.remote.ae_title} at {self.remote.host}:{self.remote.port}"
        tls = None
        if self.remote.tls:
            if self.tls_context is None:
                self.lost = f"{where} asks for TLS and server.tls has no client settings"
                return
            try:
                tls = self.tls_context()
            except (OSError, ssl.SSLError) as exc:
                self.lost = f"TLS client settings for {where} unusable: {exc}"
                return
        try:
            self.assoc = StoreAssociation(self.remote.host, self.remote.port, self.ae_title, self.remote.ae_title,
                                          self.rounds[n], self.timeout, tls)
        except AssociationLost as exc:
            self.lost = f"could not associate with {where}: {exc}"

    def refused(self, instance: StoredInstance) -> str:
        pair = (instance.sop_class_uid, instance.transfer_syntax_uid)
        n = self.round_of[pair]
        if n != self.current:
            self._open(n)
        if self.lost:
            return self.lost
        assert self.assoc is not None
        why = self.assoc.refused.get(pair)
        return f"{self.remote.ae_title} refused {pair[0]} in {pair[1]}: {why}" if why else ""

    def store(self, instance: StoredInstance) -> tuple[int | None, str]:
        assoc = self.assoc
        if assoc is None:
            return None, self.lost or f"association with {self.remote.ae_title} lost"
        assert isinstance(self.op.request, CMoveRequest)
        try:
            return assoc.store(instance.path, instance.sop_class_uid, instance.sop_instance_uid,
                               instance.transfer_syntax_uid, self.op.session.calling_ae,
                               self.op.request.message_id, self.op.request.priority)
        except (OSError, ValueError) as exc:  # nothing was sent
            return None, f"cannot read {os.path.basename(instance.path)}: {exc}"
        except AssociationLost as exc:
            self.lost = str(exc)
            self.assoc = None
            return None, self.lost

    def close(self) -> None:
        assoc, self.assoc = self.assoc, None
        if assoc is not None:
            assoc.release()


# ---- C-GET -----------------------------------------------------------------------------------


class GetService(_RetrieveService):
    """C-GET SCP: Patient Root and Study Root GET (PS3.4 C.4.3)."""

    response_field = D.C_GET_RSP

    def __init__(self, models: Sequence[InformationModel] = tuple(InformationModel),
                 response_timeout: float = RESPONSE_TIMEOUT, max_instances: int | None = None,
                 pending_interval: float = PENDING_INTERVAL) -> None:
        super().__init__(models, max_instances, pending_interval)
        self.response_timeout = response_timeout

    @staticmethod
    def uid_of(model: InformationModel) -> str:
        return model.get_uid

    def describe(self, request: CMoveRequest | CGetRequest) -> str:
        return "C-GET"

    def perform(self, op: _Retrieval, instances: Sequence[StoredInstance]) -> None:
        sop_classes = sorted({i.sop_class_uid for i in instances})
        session = op.session

        def contexts() -> tuple[dict[tuple[str, str], int], int]:
            out: dict[tuple[str, str], int] = {}
            for sop_class in sop_classes:
                if session.requestor_scp(sop_class):
                    for cid, ts in sorted(session.contexts_for(sop_class).items()):
                        out.setdefault((sop_class, ts), cid)
            return out, session.peer_max_pdu

        by_pair, peer_max_pdu = op.on_loop(contexts)
        _GetPipeline(op, by_pair, peer_max_pdu, instances, self.response_timeout).produce()


# ---- C-GET: files framed in the worker, sent from the event loop ------------------------------

AHEAD = 8 << 20  # framed bytes the worker may have ready beyond what the loop sent
SEGMENT = 4 << 20  # a data set is framed in pieces of about this (a larger file streams)
BACKLOG = 4 << 20  # the loop sends the next piece of a file once the transport holds less
@dataclasses.dataclass(slots=True)
class _Piece:
    """What the worker hands the loop: a sub-operation's start (``instance``
    set: its C-STORE-RQ goes out with the first PDUs of the data set), a
    later piece of its data set, or a sub-operation that failed before any
    byte (``why``)."""

    instance: StoredInstance | None
    context_id: int = 0
    data: bytearray | None = None
    last: bool = True
    why: str = ""
    abort: str = ""  # a file unreadable after part of it went: the association cannot go on
    command: bytes = b""  # a sub-operation's start: its C-STORE-RQ command PDU, made by the worker
    message_id: int = 0  # ... and that request's Message ID


_END = _Piece(None)


class _GetPipeline:
    """One C-GET's sub-operations (PS3.4 C.4.3.3), split between two threads.

    The worker (``produce``) reads each file into framed PDUs (``frame_file``)
    and encodes its C-STORE-RQ command PDU (its Message ID taken there),
    up to ``AHEAD`` bytes ahead; the event loop (``pump``) sends them: at a
    sub-operation's start the Pending response of the one before and the
    C-STORE-RQ with the first piece, in one write, the rest of a large file
    as its pieces come (while the transport holds less than ``BACKLOG``).
    A C-STORE-RSP is handled on the loop (``answered``), which sends the next
    sub-operation at once if the worker has it ready: no thread hand-over
    per sub-operation while the worker keeps ahead. One sub-operation at a
    time, as negotiated (asynchronous operations window 1/1).
    """

    def __init__(self, op: _Retrieval, contexts: dict[tuple[str, str], int], peer_max_pdu: int,
                 instances: Sequence[StoredInstance], timeout: float) -> None:
        self.op = op
        self.session = op.session
        self.contexts = contexts
        self.instances = instances
        self.timeout = timeout
        self.peer_max_pdu = peer_max_pdu
        self.room = max(1, (peer_max_pdu or SEGMENT + 6) - 6)  # data bytes per PDU
        self.segment = max(1, SEGMENT // self.room) * self.room  # a whole number of PDUs
        self.tally = _Tally(len(instances))
        self.pacer = PendingPacer(op.pending_interval)
        self.lock = threading.Lock()
        self.space = threading.Condition(self.lock)
        self.ready: collections.deque[_Piece] = collections.deque()
        self.ahead = 0  # bytes in ready
        self.full = False  # the worker waits for the loop to take some
        self.idle = True  # the loop found nothing ready: the next hand() schedules pump
        self.stopped = False  # ended, answered or abandoned: the worker stops
        # loop side
        self.current: StoredInstance | None = None  # sub-operation under way
        self.message_id = 0  # of the C-STORE-RQ under way
        self.awaiting = 0  # Message ID of the C-STORE-RQ whose response is due (0: none)
        self.sent_at = 0.0
        self.stalled_since = 0.0  # since when the transport holds more than BACKLOG (0: it does not)
        self.pending: list[bytes] = []  # Pending responses that go out with the next write
        self.finished = False
        op.wakeups.append(self._wake)

    # ---- worker ----------------------------------------------------------------------------

    def produce(self) -> None:
        try:
            for instance in self.instances:
                if self.stopped:
                    return
                self._produce_one(instance)
            self._hand(_END)
            with self.lock:
                while not self.stopped:
                    self.space.wait(1.0)
                    self._check_answer_time()
        except _Stopped:
            self._stop()

    def _produce_one(self, instance: StoredInstance) -> None:
        context_id = self.contexts.get((instance.sop_class_uid, instance.transfer_syntax_uid))
        if context_id is None:
            self._hand(_Piece(instance, why=f"no accepted context with the SCP role for {instance.sop_class_uid} "
                                            f"in {instance.transfer_syntax_uid}"))
            return
        try:
            fd = os.open(instance.path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        except OSError as exc:
            self._hand(_Piece(instance, why=f"cannot read {os.path.basename(instance.path)}: {exc.strerror or exc}"))
            return
        try:
            first = True
            try:
                head = os.pread(fd, HEAD, 0)
                # a file shorter than the head read is in it whole: no fstat, no second read
                size = len(head) if len(head) < HEAD else os.fstat(fd).st_size
                offset = dataset_offset(head)
                left = size - offset
                while first or left > 0:
                    n = min(left, self.segment)
                    data = frame_file(fd, offset, n, context_id, self.room, n == left, head)
                    if first:  # its command too: the loop only sends
                        message_id = self.session.next_message_id()
                        command = P.encode_pdata(context_id, D.encode_command({
                            D.AFFECTED_SOP_CLASS: instance.sop_class_uid, D.COMMAND_FIELD: D.C_STORE_RQ,
                            D.MESSAGE_ID: message_id, D.PRIORITY: self.op.request.priority,
                            D.AFFECTED_SOP_INSTANCE: instance.sop_instance_uid,
                        }, True), True, self.peer_max_pdu)
                        piece = _Piece(instance, context_id, data, n == left, command=command,
                                       message_id=message_id)
                    else:
                        piece = _Piece(None, context_id, data, n == left)
                    self._hand(piece)
                    first = False
                    offset += n
                    left -= n
                    if self.stopped:
                        return
            except (OSError, ValueError) as exc:
                why = f"cannot read {os.path.basename(instance.path)}: {exc}"
                # nothing of it was handed over: a failed sub-operation; else the
                # peer holds part of a message and the association cannot go on
                self._hand(_Piece(instance, why=why) if first else _Piece(None, abort=why))
        finally:
            os.close(fd)

    def _hand(self, piece: _Piece) -> None:
        size = len(piece.data) if piece.data is not None else 0
        with self.lock:
            while self.ahead and self.ahead + size > AHEAD and not self.stopped:
                self.full = True
                self.space.wait(1.0)
                self._check_answer_time()
            self.full = False
            if self.stopped:
                return
            self.ready.append(piece)
            self.ahead += size
            wake, self.idle = self.idle, False
        if wake:
            try:
                self.session.call_soon(self.pump)
            except RuntimeError:  # the loop is closed: the server stopped
                raise _Stopped() from None

    def _check_answer_time(self) -> None:
        """(lock held) No C-STORE-RSP within the timeout: abort the association."""
        if self.awaiting and time.monotonic() - self.sent_at > self.timeout and not self.stopped:
            self.stopped = True
            why = f"no C-STORE response in {self.timeout:g} s"
            log.warning("C-GET (assoc %s): %s: aborting the association", self.session.id, why)
            self.op.ended.set()
            session = self.session
            try:
                session.call_soon(lambda: session.abort(f"C-GET sub-operation: {why}"))
            except RuntimeError:
                pass

    def _stop(self) -> None:
        with self.lock:
            self.stopped = True
            self.ready.clear()
            self.ahead = 0
            self.space.notify_all()

    def _wake(self) -> None:
        """cancel(): C-CANCEL or the association's end (on the loop)."""
        if self.op.ended.is_set():
            self._stop()
            if self.awaiting and self.current is not None:  # its response cannot come
                instance, self.current, self.awaiting = self.current, None, 0
                self._record(instance, None, "association ended")
        if not self.awaiting:
            try:
                self.session.call_soon(self.pump)
            except RuntimeError:
                pass

    # ---- event loop ------------------------------------------------------------------------

    def pump(self) -> None:
        """Send what is ready, up to the next C-STORE-RSP to wait for."""
        session, op = self.session, self.op
        wrote = False
        while not self.finished and not self.awaiting:
            if op.ended.is_set() or not session.established:
                op.ended.set()
                self._finish()
                break
            if self.current is None and op.cancelled.is_set():
                self._finish()
                break
            if self.current is not None and session.backlog() > BACKLOG:  # the peer reads slower
                now = time.monotonic()
                self.stalled_since = self.stalled_since or now
                if now - self.stalled_since > self.timeout:
                    why = f"the peer left over {BACKLOG >> 20} MiB unread for {self.timeout:g} s"
                    log.warning("C-GET (assoc %s): %s: aborting the association", session.id, why)
                    op.ended.set()
                    session.abort(f"C-GET sub-operation: {why}")
                    self._finish()
                    return
                asyncio.get_running_loop().call_later(0.005, self.pump)
                break
            self.stalled_since = 0.0
            with self.lock:
                piece = self.ready.popleft() if self.ready else None
                if piece is None:
                    self.idle = True
                    break
                if piece.data is not None:
                    self.ahead -= len(piece.data)
                    if self.full and self.ahead <= AHEAD // 2:  # the worker reads a batch, not one per send
                        self.space.notify()
            if piece is _END:
                self._finish()
                break
            if piece.abort:
                log.warning("C-GET (assoc %s): %s: aborting the association", session.id, piece.abort)
                op.ended.set()
                session.abort(f"C-GET sub-operation: {piece.abort}")
                self._finish()
                return
            if piece.instance is not None and piece.data is None:  # failed before any byte
                self._record(piece.instance, None, piece.why)
                continue
            assert piece.data is not None
            if piece.instance is not None:  # a sub-operation starts: its C-STORE-RQ
                self.current = piece.instance
                for pending in self.pending:
                    session.send_framed(pending)
                self.pending.clear()
                session.send_framed(piece.command)
                session.expect_response(piece.message_id, self.answered)
                self.message_id = piece.message_id
            session.send_framed(piece.data)
            wrote = True
            if piece.last:
                self.sent_at = time.monotonic()  # before awaiting: the worker reads them in that order
                self.awaiting = self.message_id
        if wrote:
            session.write_out()

    def answered(self, answer: DimseResponse) -> None:
        """The C-STORE-RSP of the sub-operation under way (on the loop)."""
        instance, self.current, self.awaiting = self.current, None, 0
        assert instance is not None
        self._record(instance, answer.status, answer.error_comment or "")
        self.pump()

    def _record(self, instance: StoredInstance, status: int | None, why: str) -> None:
        tally = self.tally
        tally.record(instance.sop_instance_uid, status, why)
        if tally.done < tally.total and self.pacer.due():
            op = self.op
            command = D.encode_command({
                D.AFFECTED_SOP_CLASS: op.request.affected_sop_class_uid, D.COMMAND_FIELD: op.response_field,
                D.MESSAGE_ID_RESPONDED: op.request.message_id, D.STATUS: D.PENDING,
                D.REMAINING_SUBOPERATIONS: min(tally.total - tally.done, 0xFFFF),
                D.COMPLETED_SUBOPERATIONS: min(tally.completed, 0xFFFF),
                D.FAILED_SUBOPERATIONS: min(tally.failed, 0xFFFF),
                D.WARNING_SUBOPERATIONS: min(tally.warning, 0xFFFF),
            }, False)
            # goes out with the next C-STORE-RQ (or before the final response)
            self.pending.append(P.encode_pdata(op.context_id, command, True, self.session.peer_max_pdu))

    def _finish(self) -> None:
        if self.finished:
            return
        self.finished = True
        self._stop()
        if self.pending and not self.op.ended.is_set():
            for pending in self.pending:
                self.session.send_framed(pending)
            self.session.write_out()
        self.pending.clear()
        self.op.finish(self.tally)


def services(tls_context: Callable[[], ssl.SSLContext] | None = None, timeout: float | None = None,
             max_instances: int | None = None,
             pending_interval: float | None = None) -> dict[type, MoveService | GetService]:
    """The retrieve modules by request type, for ``ServerState.services``;
    ``timeout`` (``server.dimse_timeout``; None: 120 s) bounds the wait for
    a C-STORE-RSP and each socket operation of a C-MOVE's association; a
    retrieve naming more than ``max_instances``
    (``query_retrieve.max_retrieve_instances``; None: no limit) is refused
    0xA701 before any sub-operation; ``pending_interval``
    (``query_retrieve.pending_interval``; None: ``PENDING_INTERVAL``) paces
    the Pending responses (``PendingPacer``)."""
    wait = timeout or RESPONSE_TIMEOUT
    if pending_interval is None:
        pending_interval = PENDING_INTERVAL
    return {CMoveRequest: MoveService(tls_context=tls_context, timeout=wait, max_instances=max_instances,
                                      pending_interval=pending_interval),
            CGetRequest: GetService(response_timeout=wait, max_instances=max_instances,
                                    pending_interval=pending_interval)}

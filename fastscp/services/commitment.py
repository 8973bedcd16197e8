"""Storage Commitment Push Model SCP (PS3.4 Annex J).

A requester sends N-ACTION-RQ (Action Type ID 1) on the well-known instance
1.2.840.10008.1.20.1.1 with a Transaction UID (0008,1195) and a Referenced
SOP Sequence (0008,1199) of the instances it wants us to keep (PS3.4
J.3.2). The N-ACTION-RSP goes back at once: Success means the request was
taken, not that anything is committed (J.3.2.1.3). A malformed request is
answered with the N-ACTION failure status PS3.7 10.1.4.1.10 names for it,
and one log line.

Then, on a worker thread, each listed instance is checked against the tree
being served (``check``): known to the duplicate check (``DuplicateGuard``'s
index: this run's recent stores, then the DuckDB index, so a file a
background reconcile has not indexed yet is not known), a complete Part-10 copy of that UID inside the served root
(``DuplicateGuard.serves``), readable, and of the SOP class the request
names. A commitment is a promise whatever ``storage.durability`` says, so
each such file is ``fsync``ed, then every directory from its folder up to
the storage root, before it is reported committed; a failed sync fails that
instance (0x0110).

The result goes out as N-EVENT-REPORT-RQ (Event Type 1: all committed;
2: failures exist, each with its Failure Reason (0008,1197); J.3.3):
- on the same association while it is open: we are the SCP of the SOP
  class there, the sender of its N-EVENT-REPORT, with no role selection
  (J.3.3.1.2 allows this, the requester may release at any time). A report
  the association's end cuts off, or left unanswered for ``answer_wait``
  (the idle timeout), is sent again as below;
- else on a new association to the requester's address from ``remote_aes``
  (looked up by the calling AE title of the N-ACTION), opened by pynetdicom
  on a worker thread, proposing the SCP role for this SOP class by SCP/SCU
  role selection (PS3.4 J.3.3.1.3 note, PS3.7 D.3.3.4): the association's
  requester is then the Storage Commitment SCP. A requester not listed gets
  no report (one log line).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from ..protocol import dimse as D
from ..protocol.commands import DimseResponse, NActionRequest, Request
from ..storage.duplicates import DuplicateGuard
from ..storage.header import MalformedDataset, parse_file
from .session import RemoteAE, Session

if TYPE_CHECKING:  # pydicom, pynetdicom and ssl load on first use: a receiver of images needs none of them
    import ssl

    from pydicom.dataset import Dataset

log = logging.getLogger("fastscp.scp")

__all__ = [
    "CLASS_INSTANCE_CONFLICT",
    "NO_SUCH_OBJECT_INSTANCE",
    "PROCESSING_FAILURE",
    "REFERENCED_SOP_CLASS_NOT_SUPPORTED",
    "STORAGE_COMMITMENT_INSTANCE",
    "STORAGE_COMMITMENT_PUSH",
    "CommitmentResult",
    "CommitmentService",
    "Reference",
    "check",
]

STORAGE_COMMITMENT_PUSH = "1.2.840.10008.1.20.1"
STORAGE_COMMITMENT_INSTANCE = "1.2.840.10008.1.20.1.1"  # the well-known SOP instance (J.3.5)
ACTION_REQUEST_COMMIT = 1  # Action Type ID (J.3.2)
EVENT_ALL_COMMITTED = 1  # Event Type IDs (J.3.3)
EVENT_FAILURES_EXIST = 2

# Failure Reason (0008,1197) values (PS3.3 C.14.1.1)
PROCESSING_FAILURE = 0x0110
NO_SUCH_OBJECT_INSTANCE = 0x0112
CLASS_INSTANCE_CONFLICT = 0x0119
REFERENCED_SOP_CLASS_NOT_SUPPORTED = 0x0122

# N-ACTION-RSP statuses (PS3.7 10.1.4.1.10)
_NO_SUCH_SOP_INSTANCE = 0x0112
_INVALID_ARGUMENT_VALUE = 0x0115
_NO_SUCH_SOP_CLASS = 0x0118
_DUPLICATE_INVOCATION = 0x0210
_RESOURCE_LIMITATION = 0x0213

# transactions checked or awaiting their report at once, server-wide: one
# more is refused 0x0213 (each holds a thread while it is checked)
MAX_ACTIVE = 32
_NO_SUCH_ACTION = 0x0123

_IMPLICIT_VR_LE = "1.2.840.10008.1.2"


@dataclasses.dataclass(frozen=True, slots=True)
class Reference:
    """One item of a Referenced SOP Sequence."""

    sop_class_uid: str
    sop_instance_uid: str


@dataclasses.dataclass(frozen=True, slots=True)
class CommitmentResult:
    """What the N-EVENT-REPORT says: the committed references and the
    failed ones with their Failure Reason, in the request's order."""

    transaction_uid: str
    committed: tuple[Reference, ...]
    failed: tuple[tuple[Reference, int], ...]

    @property
    def event_type(self) -> int:
        return EVENT_FAILURES_EXIST if self.failed else EVENT_ALL_COMMITTED

    def dataset(self) -> Dataset:
        """The Event Information of N-EVENT-REPORT-RQ (PS3.4 Table J.3-2)."""
        from pydicom.dataset import Dataset
        from pydicom.sequence import Sequence

        ds = Dataset()
        ds.TransactionUID = self.transaction_uid
        if self.committed:
            ds.ReferencedSOPSequence = Sequence([_item(r) for r in self.committed])
        if self.failed:
            items = []
            for ref, reason in self.failed:
                item = _item(ref)
                item.FailureReason = reason
                items.append(item)
            ds.FailedSOPSequence = Sequence(items)
        return ds


def _item(ref: Reference) -> Dataset:
    from pydicom.dataset import Dataset

    item = Dataset()
    item.ReferencedSOPClassUID = ref.sop_class_uid
    item.ReferencedSOPInstanceUID = ref.sop_instance_uid
    return item


def parse_action(data: bytes, transfer_syntax: str) -> tuple[str, tuple[Reference, ...]]:
    """(Transaction UID, references) of an N-ACTION's Action Information
    (PS3.4 Table J.3-1). Raises ValueError saying what is wrong."""
    from .identifiers import MalformedIdentifier, decode_identifier  # pydicom: loaded on first use

    try:
        ds = decode_identifier(data, transfer_syntax)
    except MalformedIdentifier as exc:
        raise ValueError(f"undecodable action information: {exc}") from None
    try:
        transaction = str(ds.get("TransactionUID", "") or "").strip()
        sequence = ds.get("ReferencedSOPSequence")
        items = list(sequence) if sequence is not None else []
        refs = tuple(Reference(str(i.get("ReferencedSOPClassUID", "") or "").strip(),
                               str(i.get("ReferencedSOPInstanceUID", "") or "").strip()) for i in items)
    except ValueError:
        raise
    except Exception as exc:  # pydicom raises many kinds on bad input
        raise ValueError(f"undecodable action information: {exc}") from exc
    if not transaction:
        raise ValueError("no Transaction UID (0008,1195)")
    if not refs:
        raise ValueError("no Referenced SOP Sequence (0008,1199) items")
    for ref in refs:
        if not ref.sop_class_uid or not ref.sop_instance_uid:
            raise ValueError("a Referenced SOP Sequence item without its SOP Class or Instance UID")
    return transaction, refs


def _sync_directories(paths: Iterable[Path], root: Path) -> dict[Path, OSError | None]:
    """fsync each folder holding one of ``paths`` and each folder above it
    up to ``root`` (their entries name the new folders and files), each once."""
    done: dict[Path, OSError | None] = {}
    for path in paths:
        folder = path.parent
        while True:
            if folder not in done:
                error: OSError | None = None
                try:
                    fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
                    try:
                        os.fsync(fd)
                    finally:
                        os.close(fd)
                except OSError as exc:
                    error = exc
                done[folder] = error
            if folder == root or folder == folder.parent or root not in folder.parents:
                break
            folder = folder.parent
    return done


def _chain_error(path: Path, root: Path, synced: dict[Path, OSError | None]) -> OSError | None:
    folder = path.parent
    while True:
        error = synced.get(folder)
        if error is not None:
            return error
        if folder == root or folder == folder.parent or root not in folder.parents:
            return None
        folder = folder.parent


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def check(transaction_uid: str, refs: tuple[Reference, ...], known: dict[str, str | None],
          guard: DuplicateGuard, class_accepted: Callable[[str], bool] = lambda uid: True) -> CommitmentResult:
    """Decide each reference and sync what is committed (worker thread).

    ``known``: {SOP Instance UID: path (relative to the storage root, or
    absolute) the duplicate map had for it, None if it had none}.
    ``class_accepted``: whether negotiation accepts a SOP class: an instance
    not stored, of a class never accepted, fails 0x0122 rather than 0x0112."""
    root = Path(os.path.realpath(guard.storage_dir))
    verdicts: list[tuple[Reference, Path | None, int]] = []
    for ref in refs:
        where = known.get(ref.sop_instance_uid)
        if where is None:
            accepted = class_accepted(ref.sop_class_uid)
            verdicts.append((ref, None, NO_SUCH_OBJECT_INSTANCE if accepted else REFERENCED_SOP_CLASS_NOT_SUPPORTED))
            continue
        path = guard.storage_dir / where
        if not guard.serves(path, ref.sop_instance_uid):
            verdicts.append((ref, None, NO_SUCH_OBJECT_INSTANCE))
            continue
        real = Path(os.path.realpath(path))
        try:
            sop_class = parse_file(real).sop_class_uid or ""
        except (OSError, MalformedDataset):
            verdicts.append((ref, None, PROCESSING_FAILURE))
            continue
        if sop_class != ref.sop_class_uid:
            verdicts.append((ref, None, CLASS_INSTANCE_CONFLICT))
            continue
        try:
            _fsync_file(real)
        except OSError as exc:
            log.error("storage commitment %s: cannot sync %s: %s", transaction_uid, real, exc)
            verdicts.append((ref, None, PROCESSING_FAILURE))
            continue
        verdicts.append((ref, real, 0))
    synced = _sync_directories((p for _, p, _ in verdicts if p is not None), root)
    committed: list[Reference] = []
    failed: list[tuple[Reference, int]] = []
    for ref, real_path, reason in verdicts:
        if real_path is not None:
            error = _chain_error(real_path, root, synced)
            if error is None:
                committed.append(ref)
                continue
            log.error("storage commitment %s: cannot sync the folders of %s: %s", transaction_uid, real_path, error)
            reason = PROCESSING_FAILURE
        failed.append((ref, reason))
    return CommitmentResult(transaction_uid, tuple(committed), tuple(failed))


class CommitmentService:
    """The Storage Commitment Push Model SCP, registered for NActionRequest."""

    sop_classes = frozenset({STORAGE_COMMITMENT_PUSH})

    def __init__(self, client_tls: Callable[[], ssl.SSLContext] | None = None, answer_wait: float = 60.0) -> None:
        """``client_tls`` makes the TLS context for a report to a requester
        whose ``remote_aes`` entry says ``tls`` (None: such reports fail).
        ``answer_wait``: how long the requester may leave a report sent on
        its association unanswered before it goes on a new association
        instead (0: no limit); the server's idle timeout, as the requester's
        silence is no longer timed while we wait for its answer."""
        self.client_tls = client_tls
        self.answer_wait = answer_wait
        # Transaction UIDs being processed, and the (association, Message ID)
        # of their N-ACTION (event loop only)
        self._active: dict[str, tuple[str, int]] = {}

    def start(self, session: Session, context_id: int, request: Request, dataset: bytes | None) -> None:
        assert isinstance(request, NActionRequest)
        context = session.context(context_id)
        abstract, transfer_syntax = context if context is not None else ("", "")
        status, why = 0, ""
        transaction = ""
        refs: tuple[Reference, ...] = ()
        if request.requested_sop_class_uid != STORAGE_COMMITMENT_PUSH or abstract != STORAGE_COMMITMENT_PUSH:
            status, why = _NO_SUCH_SOP_CLASS, f"N-ACTION on SOP class {request.requested_sop_class_uid!r}"
        elif request.requested_sop_instance_uid != STORAGE_COMMITMENT_INSTANCE:
            status, why = _NO_SUCH_SOP_INSTANCE, (f"N-ACTION on instance {request.requested_sop_instance_uid!r}, "
                                                  f"not {STORAGE_COMMITMENT_INSTANCE}")
        elif request.action_type_id != ACTION_REQUEST_COMMIT:
            status, why = _NO_SUCH_ACTION, f"Action Type ID {request.action_type_id}, not 1"
        elif dataset is None:
            status, why = _INVALID_ARGUMENT_VALUE, "no action information"
        else:
            try:
                transaction, refs = parse_action(dataset, transfer_syntax)
            except ValueError as exc:
                status, why = _INVALID_ARGUMENT_VALUE, str(exc)
            else:
                if transaction in self._active:
                    status, why = _DUPLICATE_INVOCATION, f"transaction {transaction} is already being processed"
                elif (session.id, request.message_id) in self._active.values():
                    # PS3.7 Annex C, Duplicate invocation: the Message ID is held by an operation still running
                    status, why = _DUPLICATE_INVOCATION, f"message ID {request.message_id} is still being processed"
                elif len(self._active) >= MAX_ACTIVE:
                    status, why = _RESOURCE_LIMITATION, f"{MAX_ACTIVE} transactions are being processed"
        session.send(context_id, _action_response(request, status, why))
        if status:
            log.warning("assoc %s: storage commitment request from %s refused (0x%04X): %s",
                        session.id, session.calling_ae, status, why)
            return
        guard = session.server.storage.guard
        known: dict[str, str | None] = {}
        for ref in refs:
            entry = guard.index.lookup(ref.sop_instance_uid)  # the map is the event loop's
            known[ref.sop_instance_uid] = entry[0] if entry is not None else None
        log.info("assoc %s: storage commitment %s from %s: %d instance(s) to check",
                 session.id, transaction, session.calling_ae, len(refs))
        job = _Commitment(self, session, context_id, request.message_id, transaction, refs, known, guard,
                          session.server.policy.abstract_syntax_ok)
        self._active[transaction] = (session.id, request.message_id)
        session.operation_started(request.message_id, job)
        threading.Thread(target=job.run, name="fastscp-commitment", daemon=True).start()

    def finished(self, transaction: str) -> None:
        self._active.pop(transaction, None)


def _action_response(request: NActionRequest, status: int, comment: str) -> bytes:
    fields: dict[int, int | str] = {
        D.COMMAND_FIELD: D.N_ACTION_RSP, D.MESSAGE_ID_RESPONDED: request.message_id, D.STATUS: status,
        D.AFFECTED_SOP_CLASS: request.requested_sop_class_uid,
        D.AFFECTED_SOP_INSTANCE: request.requested_sop_instance_uid,
    }
    if status == 0:
        fields[D.ACTION_TYPE_ID] = request.action_type_id
    else:
        fields[D.ERROR_COMMENT] = comment[:64]
    return D.encode_command(fields, False)


class _Commitment:
    """One transaction: checked on its own thread, reported on the
    association it came on if still open, else on a new one."""

    def __init__(self, service: CommitmentService, session: Session, context_id: int, message_id: int,
                 transaction: str, refs: tuple[Reference, ...], known: dict[str, str | None],
                 guard: DuplicateGuard, class_accepted: Callable[[str], bool]) -> None:
        self._service = service
        self._session = session
        self._context_id = context_id
        self._message_id = message_id
        self.transaction = transaction
        self._refs = refs
        self._known = known
        self._guard = guard
        self._class_accepted = class_accepted
        self._calling_ae = session.calling_ae
        self._remote: RemoteAE | None = session.server.remote_aes.get(session.calling_ae)
        self._our_ae = session.server.ae_title
        self._result: CommitmentResult | None = None
        self._ended = False  # the association ended (cancel), event loop only
        self._answered = False  # the report's response arrived
        self._handed_on = False  # the report went to a new association's thread
        self._timer: threading.Timer | None = None  # bounds the wait for the report's answer

    # ---- worker thread -----------------------------------------------------------

    def run(self) -> None:
        try:
            result = check(self.transaction, self._refs, self._known, self._guard, self._class_accepted)
        except Exception:
            log.exception("storage commitment %s: checking failed", self.transaction)
            result = CommitmentResult(self.transaction, (), tuple((r, PROCESSING_FAILURE) for r in self._refs))
        self._result = result
        log.info("storage commitment %s: %d committed, %d failed", self.transaction, len(result.committed),
                 len(result.failed))
        try:
            self._session.call_soon(self._report_here)
        except RuntimeError:  # the event loop is closed: the server is stopping
            log.warning("storage commitment %s: server stopping, no report sent", self.transaction)

    # ---- event loop ----------------------------------------------------------------

    def _report_here(self) -> None:
        result = self._result
        assert result is not None
        session = self._session
        if self._ended or not session.established:
            self._elsewhere("ended the association before the report")
            return
        _, transfer_syntax = session.context(self._context_id) or ("", _IMPLICIT_VR_LE)
        from .identifiers import encode_identifier  # pydicom: loaded on first use

        try:
            data = encode_identifier(result.dataset(), transfer_syntax)
        except Exception as exc:  # pydicom raises many kinds; a report we cannot encode is not sent
            log.error("storage commitment %s: cannot encode the report (%s: %s)", self.transaction,
                      type(exc).__name__, exc)
            self._done()
            return
        message_id = session.next_message_id()
        command = D.encode_command({
            D.COMMAND_FIELD: D.N_EVENT_REPORT_RQ, D.MESSAGE_ID: message_id,
            D.AFFECTED_SOP_CLASS: STORAGE_COMMITMENT_PUSH, D.AFFECTED_SOP_INSTANCE: STORAGE_COMMITMENT_INSTANCE,
            D.EVENT_TYPE_ID: result.event_type,
        }, True)
        session.expect_response(message_id, self._answer)
        session.send(self._context_id, command, data)
        wait = self._service.answer_wait
        if wait > 0:
            self._timer = threading.Timer(wait, self._wait_over)
            self._timer.daemon = True
            self._timer.start()

    def _wait_over(self) -> None:
        """The timer's thread: back to the event loop, unless it is closed."""
        try:
            self._session.call_soon(self._not_answered)
        except RuntimeError:  # the server is stopping
            pass

    def _not_answered(self) -> None:
        """The requester left the report unanswered for ``answer_wait``: the
        association's idle timeout applies again, the report goes on a new
        association (PS3.4 J.3.3.1.3: the SCU must take it there)."""
        if self._answered or self._ended or self._handed_on:
            return
        wait = self._service.answer_wait
        log.warning("storage commitment %s: no answer to the report in %.0f s on assoc %s",
                    self.transaction, wait, self._session.id)
        self._session.operation_ended(self._message_id)
        self._elsewhere(f"did not answer the report in {wait:.0f} s")

    def _answer(self, response: DimseResponse) -> None:
        self._answered = True
        if self._timer is not None:
            self._timer.cancel()
        if self._handed_on:  # answered after all, once the report had gone elsewhere too
            log.info("storage commitment %s: the late answer to the report was 0x%04X", self.transaction,
                     response.status)
            return
        if response.status != 0:
            log.warning("storage commitment %s: the requester answered the report with status 0x%04X",
                        self.transaction, response.status)
        else:
            log.info("storage commitment %s: reported (event type %d) on the association it came on",
                     self.transaction, self._result.event_type if self._result else 0)
        self._done()

    def cancel(self) -> None:
        """The association ended (an N-ACTION has no C-CANCEL): a report not
        yet answered goes on a new association."""
        if self._ended:
            return
        self._ended = True
        if self._timer is not None:
            self._timer.cancel()
        if self._result is not None and not self._answered:
            self._elsewhere("ended the association before answering the report")
        # else run() is still checking; _report_here sees _ended

    def _done(self) -> None:
        self._service.finished(self.transaction)
        self._session.operation_ended(self._message_id)

    def _elsewhere(self, why: str) -> None:
        """Report on a new association (a worker thread opens it), once."""
        if self._handed_on:
            return
        self._handed_on = True
        self._service.finished(self.transaction)
        result = self._result
        assert result is not None
        remote = self._remote
        if remote is None:
            log.warning("storage commitment %s: %s %s and is not in remote_aes: no report sent",
                        self.transaction, self._calling_ae, why)
            return
        threading.Thread(target=send_report, args=(self._our_ae, remote, result, self._service.client_tls),
                         name="fastscp-commitment-report", daemon=True).start()


def send_report(our_ae: str, remote: RemoteAE, result: CommitmentResult,
                client_tls: Callable[[], ssl.SSLContext] | None = None) -> bool:
    """N-EVENT-REPORT on a new association to ``remote``, as the Storage
    Commitment SCP by role selection (blocking: a worker thread), over TLS
    when ``remote.tls`` (the context from ``client_tls``). True when the
    requester answered Success."""
    import ssl

    from pynetdicom import AE, build_role

    # our own lines say what happened; pynetdicom's INFO lines would repeat it
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)
    ae = AE(ae_title=our_ae)
    ae.add_requested_context(STORAGE_COMMITMENT_PUSH, ["1.2.840.10008.1.2.1", _IMPLICIT_VR_LE])
    role = build_role(STORAGE_COMMITMENT_PUSH, scu_role=False, scp_role=True)
    where = f"{remote.ae_title} at {remote.host}:{remote.port}"
    tls_args: tuple[ssl.SSLContext, str] | None = None
    if remote.tls:
        try:
            if client_tls is None:
                raise ValueError("no TLS client settings")
            tls_args = (client_tls(), remote.host)
        except (ssl.SSLError, OSError, ValueError) as exc:
            log.error("storage commitment %s: cannot set up TLS to %s (%s): no report sent",
                      result.transaction_uid, where, exc)
            return False
        where += " (TLS)"
    assoc = ae.associate(remote.host, remote.port, ae_title=remote.ae_title, ext_neg=[role], tls_args=tls_args)
    if not assoc.is_established:
        log.error("storage commitment %s: cannot open an association to %s: no report sent",
                  result.transaction_uid, where)
        return False
    try:
        status = assoc.send_n_event_report(result.dataset(), result.event_type, STORAGE_COMMITMENT_PUSH,
                                           STORAGE_COMMITMENT_INSTANCE)[0]
    finally:
        if assoc.is_established:
            assoc.release()
    code = int(status.get("Status", -1)) if status else -1
    if code != 0:
        log.error("storage commitment %s: report to %s answered %s", result.transaction_uid, where,
                  f"0x{code:04X}" if code >= 0 else "nothing")
        return False
    log.info("storage commitment %s: reported (event type %d) to %s on a new association",
             result.transaction_uid, result.event_type, where)
    return True

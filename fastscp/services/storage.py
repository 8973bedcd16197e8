"""The Storage service (PS3.4 Annex B): C-STORE requests of one association.

The C-STORE path:

  command (C-STORE-RQ) -> Storage.begin: an IncomingInstance (temp file,
                          Part-10 prefix, content hash)
  each dataset PDV     -> IncomingInstance.write(memoryview) (no copies); once
                          the head is full and more PDVs follow, the
                          header-only parse (the sender is still sending);
                          then the PDVs up to the next checkpoint are written
                          in the framer (Session.stream_dataset), no events
  last PDV             -> IncomingInstance.finish: header-only parse (unless
                          done), checks -> the received InstanceInfo (frozen)
                       -> Durability.commit (Storage.durability picks the
                          strategy): Storage.place (naming, duplicate policy,
                          rename) -> a Placement, with the syncs the strategy
                          needs around it -> done
                       -> ANSWERS maps the outcome to the C-STORE-RSP, sent
                          in one write, only now

Any failure before the rename removes the temp file and answers with a
failure status; an association that ends mid-dataset leaves nothing behind.
``StoreService`` is made by the dispatcher for its association and sees the
association only through ``Session``.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time

from ..events import AssociationCounts, DuplicateReceived, InstanceStored, StoreAnswered
from ..instance import InstanceInfo
from ..protocol import dimse as D
from ..protocol.association import DatasetFragment
from ..protocol.commands import CStoreRequest
from ..storage.duplicates import Outcome
from ..storage.durability import CommitFailure, Durability, Step
from ..storage.incoming import IncomingInstance, Reception, Refusal, Refused
from ..storage.safepath import UnsafePathError
from ..storage.store import Storage
from .session import ServerState, Session

log = logging.getLogger("fastscp.scp")

__all__ = ["ANSWERS", "StoreService"]

# What storage did or found (storage/: a duplicate outcome, a refusal) ->
# the C-STORE-RSP status and Error Comment: the one place they meet DIMSE.
# Failures of the disk are answered Out of Resources (0xA700) with the
# system's message, where they happen. 0xCD01 for a rejected duplicate:
# storage/duplicates.py says why that code.
DUPLICATE_REJECTED = 0xCD01
ANSWERS: dict[Outcome | Refusal, tuple[int, str]] = {
    Outcome.STORED: (D.SUCCESS, ""),
    Outcome.IDENTICAL: (D.SUCCESS, ""),
    Outcome.IGNORED: (D.SUCCESS, ""),
    Outcome.OVERWRITTEN: (D.SUCCESS, ""),
    Outcome.KEPT_BOTH: (D.SUCCESS, ""),
    Outcome.REJECTED: (DUPLICATE_REJECTED, "Duplicate SOP Instance UID with other content; first copy kept"),
    Refusal.HEADER_UNREADABLE: (D.ERROR_CANNOT_UNDERSTAND, "dataset header cannot be parsed"),
    Refusal.DATASET_TRUNCATED: (D.ERROR_CANNOT_UNDERSTAND, "data set truncated or element lengths wrong"),
    Refusal.INSTANCE_UID_DIFFERS: (D.ERROR_CANNOT_UNDERSTAND, "SOP Instance UID in dataset differs from the command's"),
    Refusal.CLASS_UID_DIFFERS: (D.ERROR_DATASET_DOES_NOT_MATCH_SOP_CLASS,
                                "SOP Class UID in dataset differs from the command's"),
    Refusal.UNSAFE_PATH: (D.ERROR_CANNOT_UNDERSTAND, "attribute values give no safe file name"),
}


@dataclasses.dataclass(slots=True)
class _Store:
    """A C-STORE in progress."""

    context_id: int
    message_id: int
    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax_uid: str
    started: float = 0.0
    incoming: IncomingInstance | None = None  # None once removed (refused) or handed to the commit
    status: int = D.SUCCESS
    comment: str = ""
    placed: InstanceInfo | None = None  # stored: observers hear of it once answered
    dropped: InstanceInfo | None = None  # a duplicate the policy dropped: observers hear of it too
    finished: IncomingInstance | None = None  # the committed instance's file, closed once the answer is out
    aborted: bool = False  # an internal error aborted the association during the commit: no answer
    # dataset size past which the next fragment goes through _checkpoint
    # (max_instance_size, the next in-flight accounting and reserve check)
    check_at: int = 0
    accounted: int = 0  # dataset bytes counted in Storage.incoming_bytes


class StoreService:
    """The C-STORE requests of one association, one at a time."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self.server: ServerState = session.server  # the same for the association's life
        self.stored = 0
        self.failed = 0
        self.duplicates = 0
        self.bytes = 0
        self.statuses: dict[int, int] = {}  # non-success C-STORE statuses answered, by status
        self._spare: tuple[int, str] | None = None  # the next C-STORE's temp file, opened ahead
        self._reception: Reception | None = None  # who sends, once the first C-STORE comes

    def counts(self) -> AssociationCounts:
        """What this association stored so far."""
        return AssociationCounts(self.stored, self.duplicates, self.failed, self.bytes,
                                 tuple(sorted(self.statuses.items())))

    def close(self, current: _Store | None) -> None:
        """The association ended: remove the spare temp file and whatever
        the C-STORE under way (if any) had written."""
        if self._spare is not None:
            try:
                Storage.drop_temp(self._spare)
            except OSError as exc:
                log.warning("assoc %s: cannot remove an unused temp file: %s", self.session.id, exc)
            self._spare = None
        if current is not None:
            self._release(current)
            self._abort(current)

    def begin(self, context_id: int, context: tuple[str, str], request: CStoreRequest) -> _Store | None:
        """Start a C-STORE; the store its fragments go to (None: answered already)."""
        abstract, ts = context
        st = _Store(context_id, request.message_id, request.affected_sop_class_uid,
                    request.affected_sop_instance_uid, ts, time.monotonic())
        if not request.has_dataset:
            st.status, st.comment = D.ERROR_CANNOT_UNDERSTAND, "C-STORE-RQ without a dataset"
            self._answer_store(st)
            return None
        if st.sop_class_uid != abstract:
            st.status, st.comment = D.SOP_CLASS_NOT_SUPPORTED, "SOP class differs from the presentation context's"
        elif not _valid_uid(st.sop_instance_uid):
            st.status, st.comment = D.ERROR_CANNOT_UNDERSTAND, "invalid Affected SOP Instance UID"
        else:
            spare, self._spare = self._spare, None
            try:
                storage = self.server.storage
                st.incoming = storage.begin(st.sop_class_uid, st.sop_instance_uid, ts, self.session.calling_ae, spare)
                limit = self.server.max_instance_size
                st.check_at = storage.check_every if limit is None else min(storage.check_every, limit)
            except OSError as exc:
                st.status, st.comment = D.REFUSED_OUT_OF_RESOURCES, f"cannot create file: {exc.strerror}"
                log.error("assoc %s: cannot create a temp file: %s", self.session.id, exc)
        return st

    def fragment(self, st: _Store, ev: DatasetFragment) -> None:
        """One PDV of the data set ``st`` receives (the dispatcher checked
        its context and forgets ``st`` after the last)."""
        incoming = st.incoming
        if incoming is not None and incoming.writer.dataset_size + len(ev.data) > st.check_at:
            self._checkpoint(st, incoming.writer.dataset_size + len(ev.data))
            incoming = st.incoming
        if incoming is not None:
            try:
                incoming.write(ev.data, ev.last)
            except OSError as exc:
                self._release(st)
                self._abort(st)
                st.status, st.comment = D.REFUSED_OUT_OF_RESOURCES, f"write failed: {exc.strerror}"
                log.error("assoc %s: writing %s failed: %s", self.session.id, st.sop_instance_uid, exc)
            else:
                if not ev.last:
                    server = self.server
                    durability = server.storage.durability(server.active)
                    durability.receiving(incoming)
                    if not durability.watches_receiving and (direct := incoming.direct()) is not None:
                        # the next fragments up to the next checkpoint (or the
                        # early parse) go to the file in the framer, no events
                        writer, hash_update, limit = direct
                        self.session.stream_dataset(st.context_id, writer, hash_update, min(limit, st.check_at))
        if ev.last:
            if st.accounted:
                self._release(st)
            if st.incoming is None:
                self._answer_store(st)
            else:
                self._finish_store(st)

    def _checkpoint(self, st: _Store, size: int) -> None:
        """Every Storage.check_every bytes of a dataset (and at
        max_instance_size): refuse it when it passes max_instance_size, or
        when the storage says no (bytes in flight over every association,
        the free-space reserve). A refused instance's temp file is removed
        now; the rest of its dataset is received and dropped, then answered
        0xA700."""
        storage = self.server.storage
        limit = self.server.max_instance_size
        if limit is not None and size > limit:
            why = f"dataset larger than the {limit}-byte limit"
        else:
            more, st.accounted = size - st.accounted, size
            why = storage.take_incoming(more, size)
            step = size + storage.check_every
            st.check_at = step if limit is None else min(step, limit)
        if why:
            self._release(st)
            self._abort(st)
            st.status, st.comment = D.REFUSED_OUT_OF_RESOURCES, why
            log.warning("assoc %s: refused %s after %d bytes: %s", self.session.id, st.sop_instance_uid, size, why)

    def _release(self, st: _Store) -> None:
        """Give back what ``_checkpoint`` counted in Storage.incoming_bytes."""
        self.server.storage.release_incoming(st.accounted)
        st.accounted = 0

    @staticmethod
    def _abort(st: _Store) -> None:
        """Remove what the C-STORE wrote (its temp file)."""
        if st.incoming is not None:
            st.incoming.abort()
            st.incoming = None

    def _finish_store(self, st: _Store) -> None:
        """The last fragment is in: the received instance, then the commit
        (placing it, durably as configured), then the answer."""
        incoming = st.incoming
        assert incoming is not None  # the caller checked
        session = self.session
        if self._reception is None:
            self._reception = Reception(session.calling_ae, session.called_ae, session.peer, session.id)
        try:
            received = incoming.finish(self._reception)
        except Refused as exc:
            st.status, st.comment = ANSWERS[exc.refusal]
            if exc.refusal is Refusal.HEADER_UNREADABLE:
                log.warning("assoc %s: header of %s cannot be parsed: %s", session.id, st.sop_instance_uid, exc.detail)
            else:
                log.warning("assoc %s: refused %s: %s", session.id, st.sop_instance_uid, exc.detail or st.comment)
            self._abort(st)
            self._answer_store(st)
            return
        except OSError as exc:
            self._store_error(st, exc, incoming)
            self._answer_store(st)
            return
        st.incoming, st.finished = None, incoming
        server = self.server
        durability = server.storage.durability(server.active)
        if durability.deferred:
            session.owe_answer(1)
        durability.commit(incoming, lambda: self._place(st, incoming, received, durability),
                          lambda failure: self._committed(st, incoming, durability, failure))

    def _store_error(self, st: _Store, exc: OSError, incoming: IncomingInstance) -> None:
        """The disk failed the instance: answer 0xA700, remove its temp file."""
        st.status, st.comment = D.REFUSED_OUT_OF_RESOURCES, f"cannot store: {exc.strerror}"
        log.error("assoc %s: storing %s failed: %s", self.session.id, st.sop_instance_uid, exc)
        incoming.abort()
        if st.incoming is incoming:
            st.incoming = None

    def _place(self, st: _Store, incoming: IncomingInstance, received: InstanceInfo, durability: Durability) -> bool:
        """Rename into place (``Storage.place``) and count it (observers hear
        of it after the answer). True when the answer will be Success: also
        for a copy the policy dropped with Success (the same content is
        stored), which needs the durable sync as much, since the stored
        copy's own sync may still be under way or may have failed."""
        try:
            placement = self.server.storage.place(incoming.temp, received)
        except UnsafePathError as exc:
            st.status, st.comment = ANSWERS[Refusal.UNSAFE_PATH]
            log.error("assoc %s: no safe path for %s: %s", self.session.id, st.sop_instance_uid, exc)
            incoming.abort()
            return False
        except OSError as exc:
            self._store_error(st, exc, incoming)
            return False
        except Exception:
            if not durability.deferred:
                raise  # the socket layer aborts the association, as for any error in a read
            # on the loop from the group commit: the association cannot go on
            log.exception("internal error on association %s; aborting it", self.session.id)
            self.session.abort("internal error")
            st.aborted = True
            return False
        st.status, st.comment = ANSWERS[placement.outcome]
        info = received.placed(placement.path, placement.duplicate)
        if info.duplicate:
            self.duplicates += 1
            log.info("assoc %s: duplicate %s %s", self.session.id, info.sop_instance_uid, info.duplicate)
        if not placement.placed:
            if info.duplicate:
                st.dropped = info
            return st.status == D.SUCCESS
        self.stored += 1
        self.bytes += info.dataset_size
        server = self.server
        server.instances_total += 1
        server.bytes_total += info.dataset_size
        st.placed = info
        return True

    def _committed(self, st: _Store, incoming: IncomingInstance, durability: Durability,
                   failure: CommitFailure | None) -> None:
        """The commit is done: answer (a deferred answer: ``_answer_store``
        writes it through ``flush``, which sees nothing owed any more)."""
        if durability.deferred:
            self.session.owe_answer(-1)
        if failure is not None and failure.step is Step.WRITE:  # never written out: nothing placed
            self._store_error(st, failure.error, incoming)
        elif failure is not None:  # the file is in place but maybe not on disk: do not claim success
            st.status, st.comment = D.REFUSED_OUT_OF_RESOURCES, f"cannot sync: {failure.error.strerror}"
        if st.aborted:
            incoming.close()
            return
        self._answer_store(st)

    def _answer_store(self, st: _Store) -> None:
        if st.status != D.SUCCESS:
            self.failed += 1
            self.statuses[st.status] = self.statuses.get(st.status, 0) + 1
        self.session.send(st.context_id, D.encode_response(D.C_STORE_RSP, st.message_id, st.status,
                                                           st.sop_class_uid, st.sop_instance_uid, st.comment))
        # The answer went out first (``Session.send`` writes it now): the
        # sender prepares its next instance while the file is closed, the
        # next temp file opened and the observers (index queue, statistics,
        # pipeline) run.
        if st.finished is not None:
            st.finished.close()
            st.finished = None
        self._prepare_spare()
        observers = self.server.observers
        assoc = self.session.info
        if observers and assoc is not None:
            stored = InstanceStored(assoc, st.placed) if st.placed is not None else None
            dropped = DuplicateReceived(assoc, st.dropped) if st.dropped is not None else None
            answered = StoreAnswered(assoc, st.status, time.monotonic() - st.started)
            for observer in observers:
                if stored is not None:
                    observer.instance_stored(stored)
                elif dropped is not None:
                    observer.duplicate_received(dropped)
                observer.store_answered(answered)

    def _prepare_spare(self) -> None:
        """Open the temp file the next C-STORE-RQ will stream into, now that
        the answer is out: the open leaves the sender's critical path. A
        failure is left for that request to meet (and answer)."""
        if self._spare is None and self.session.established:
            try:
                self._spare = self.server.storage.open_temp()
            except OSError:
                pass


def _valid_uid(uid: str) -> bool:
    return 0 < len(uid) <= 64 and uid.isascii() and uid.isprintable() and os.sep not in uid

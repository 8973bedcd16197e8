"""The Storage service (PS3.4 Annex B): C-STORE requests of one association.

The C-STORE path:

  command (C-STORE-RQ) -> Storage.begin: temp file, Part-10 prefix
  each dataset PDV     -> InstanceFile.write(memoryview) (no copies); once
                          the head is full and more PDVs follow, the
                          header-only parse (the sender is still sending)
  last PDV             -> header-only parse (unless done) -> checks -> naming
                       -> rename -> C-STORE-RSP, in one write, only now

Any failure before the rename removes the temp file and answers with a
failure status; an association that ends mid-dataset leaves nothing behind.
``StoreService`` is made by the dispatcher for its association and sees the
association only through ``Session``.
"""

from __future__ import annotations

import dataclasses
import logging
import mmap
import os
import time
from typing import Any

from ..events import AssociationCounts, DuplicateReceived, InstanceStored, StoreAnswered
from ..instance import InstanceInfo
from ..protocol import dimse as D
from ..protocol.association import DatasetFragment
from ..protocol.commands import CStoreRequest
from ..storage.duplicates import Outcome, new_content_hash
from ..storage.durability import GroupCommitter
from ..storage.header import check_dataset_end, header_dataset, parse_file, parse_head
from ..storage.incoming import Refusal
from ..storage.safepath import UnsafePathError
from ..storage.store import Storage
from .session import ServerState, Session

log = logging.getLogger("fastscp.scp")

_PAGE_MASK = ~(mmap.PAGESIZE - 1)

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
    writer: Any = None
    temp: str | None = None
    hasher: Any = None
    status: int = D.SUCCESS
    comment: str = ""
    info: InstanceInfo | None = None  # parsed early, from a full head, while the rest arrives
    parsed: bool = False  # the early parse was tried
    placed: InstanceInfo | None = None  # stored: observers hear of it once answered
    dropped: InstanceInfo | None = None  # a duplicate the policy dropped: observers hear of it too
    finished: Any = None  # the placed file's writer, closed once the answer is out
    written_out: int = 0  # durable mode, one association: file bytes whose write-out has started
    # dataset size past which the next fragment goes through _checkpoint
    # (max_instance_size, the next in-flight accounting and reserve check)
    check_at: int = 0
    accounted: int = 0  # dataset bytes counted in Storage.incoming_bytes


class StoreService:
    """The C-STORE requests of one association, one at a time."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self.stored = 0
        self.failed = 0
        self.duplicates = 0
        self.bytes = 0
        self.statuses: dict[int, int] = {}  # non-success C-STORE statuses answered, by status
        self._spare: tuple[int, str] | None = None  # the next C-STORE's temp file, opened ahead

    @property
    def server(self) -> ServerState:
        return self.session.server

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
            Storage.discard(current.writer, current.temp)
            current.writer = current.temp = None

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
                st.writer, st.temp = storage.begin(st.sop_class_uid, st.sop_instance_uid, ts,
                                                   self.session.calling_ae, spare)
                st.hasher = new_content_hash()
                limit = self.server.max_instance_size
                st.check_at = storage.check_every if limit is None else min(storage.check_every, limit)
            except OSError as exc:
                st.status, st.comment = D.REFUSED_OUT_OF_RESOURCES, f"cannot create file: {exc.strerror}"
                log.error("assoc %s: cannot create a temp file: %s", self.session.id, exc)
        return st

    def fragment(self, st: _Store, ev: DatasetFragment) -> None:
        """One PDV of the data set ``st`` receives (the dispatcher checked
        its context and forgets ``st`` after the last)."""
        if st.writer is not None and st.writer.dataset_size + len(ev.data) > st.check_at:
            self._checkpoint(st, st.writer.dataset_size + len(ev.data))
        if st.writer is not None:
            try:
                st.writer.write(ev.data, ev.last)
                st.hasher.update(ev.data)
            except OSError as exc:
                self._release(st)
                Storage.discard(st.writer, st.temp)
                st.writer = st.temp = None
                st.status, st.comment = D.REFUSED_OUT_OF_RESOURCES, f"write failed: {exc.strerror}"
                log.error("assoc %s: writing %s failed: %s", self.session.id, st.sop_instance_uid, exc)
            else:
                if not ev.last:
                    if not st.parsed and st.writer.dataset_size > self.server.storage.head_limit:
                        self._parse_early(st)
                    committer = self.server.storage.committer
                    if committer is not None and self._durable_on_loop(committer):
                        self._start_write_out(st, committer)
        if ev.last:
            if st.accounted:
                self._release(st)
            if st.writer is None or self._finish_store(st):
                self._answer_store(st)

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
            Storage.discard(st.writer, st.temp)
            st.writer = st.temp = None
            st.status, st.comment = D.REFUSED_OUT_OF_RESOURCES, why
            log.warning("assoc %s: refused %s after %d bytes: %s", self.session.id, st.sop_instance_uid, size, why)

    def _release(self, st: _Store) -> None:
        """Give back what ``_checkpoint`` counted in Storage.incoming_bytes."""
        self.server.storage.release_incoming(st.accounted)
        st.accounted = 0

    @staticmethod
    def _parse_early(st: _Store) -> None:
        """Parse the header once the head is full and more fragments are to
        come: the sender is still sending, so the parse leaves the time
        between the last fragment and the answer. The result is what the
        parse after the last fragment would give (same bytes, same call); a
        failure is left for that parse to meet and answer."""
        st.parsed = True
        try:
            st.info = parse_head(st.writer.head, st.transfer_syntax_uid, False)
        except Exception:  # pydicom raises many kinds on bad input
            st.info = None

    def _durable_on_loop(self, committer: GroupCommitter) -> bool:
        """Durable mode's steps run on the event loop: this association is
        the only one open and the disk has not been slow lately."""
        return self.server.active == 1 and committer.inline_ok()

    @staticmethod
    def _start_write_out(st: _Store, committer: GroupCommitter) -> None:
        """Durable mode, one association open: the pages filled so far start
        for the disk now, while the sender sends the rest, so the wait after
        the last fragment is for less data. Only whole pages: the one being
        filled is written again by the next fragment. ext4, 1000 x 0.5 MB
        over one association, without and with (median of 7 and of 9, two
        runs): 3.00 and 2.84 s, 2.89 and 2.66 s (default durability 2.00 and
        1.88 s). Over four associations the group commit already overlaps
        the disk with receiving, and starting early there measured no
        better (2.46 s without, 2.52 s with), so it is left to the thread."""
        writer = st.writer
        end = (writer.prefix_size + writer.dataset_size) & _PAGE_MASK
        if end > st.written_out:
            committer.start_write_out(writer.fd, st.written_out, end)
            st.written_out = end

    def _finish_store(self, st: _Store) -> bool:
        """Parse, check and place the instance; False when the answer is
        deferred to the group commit (durable mode)."""
        writer, temp = st.writer, st.temp
        assert writer is not None and temp is not None  # made together in _begin_store; the caller checked
        st.writer = st.temp = None
        storage = self.server.storage
        try:
            file_size = writer.finish()  # trimmed first: parse_file may read the whole file
            try:
                info = st.info or parse_head(writer.head, st.transfer_syntax_uid, writer.head_complete)
                if info is None:
                    info = parse_file(temp, writer.prefix_size, st.transfer_syntax_uid)
            except Exception as exc:  # pydicom raises many kinds on bad input
                st.status, st.comment = ANSWERS[Refusal.HEADER_UNREADABLE]
                log.warning("assoc %s: header of %s cannot be parsed: %s", self.session.id, st.sop_instance_uid, exc)
                Storage.discard(writer, temp)
                return True
            try:
                fd, prefix = writer.fd, writer.prefix_size
                check_dataset_end(writer.head, writer.dataset_size, st.transfer_syntax_uid,
                                  lambda offset, n: os.pread(fd, n, prefix + offset))
            except Exception as exc:  # MalformedDataset, or a short read
                st.status, st.comment = ANSWERS[Refusal.DATASET_TRUNCATED]
                log.warning("assoc %s: refused %s: %s", self.session.id, st.sop_instance_uid, exc)
                Storage.discard(writer, temp)
                return True
            if info.sop_instance_uid != st.sop_instance_uid:
                st.status, st.comment = ANSWERS[Refusal.INSTANCE_UID_DIFFERS]
            elif info.sop_class_uid and info.sop_class_uid != st.sop_class_uid:
                st.status, st.comment = ANSWERS[Refusal.CLASS_UID_DIFFERS]
            if st.status != D.SUCCESS:
                log.warning("assoc %s: refused %s: %s", self.session.id, st.sop_instance_uid, st.comment)
                Storage.discard(writer, temp)
                return True
            info = info.received(
                sop_class_uid=st.sop_class_uid, calling_ae=self.session.calling_ae,
                called_ae=self.session.called_ae, peer=self.session.peer, association_id=self.session.id,
                received_at=time.time(), dataset_size=writer.dataset_size, file_size=file_size,
                content_hash=st.hasher.hexdigest(),
                header=header_dataset(writer.head, st.transfer_syntax_uid) if storage.naming_needs_header else None)
        except OSError as exc:
            self._store_error(st, exc, writer, temp)
            return True
        if storage.committer is not None:
            if self._durable_on_loop(storage.committer):
                self._durable_alone(st, writer, temp, info, storage.committer)
                return True
            self.session.owe_answer(1)
            storage.committer.write_then(
                writer.fd, lambda err: self._durable_data_written(st, writer, temp, info, err))
            return False
        st.finished = writer
        self._place(st, temp, info)
        return True

    def _store_error(self, st: _Store, exc: OSError, writer: Any, temp: str | None) -> None:
        st.status, st.comment = D.REFUSED_OUT_OF_RESOURCES, f"cannot store: {exc.strerror}"
        log.error("assoc %s: storing %s failed: %s", self.session.id, st.sop_instance_uid, exc)
        Storage.discard(writer, temp)

    def _place(self, st: _Store, temp: str, received: InstanceInfo) -> bool:
        """Rename into place and count it (observers hear of it after the
        answer). False when nothing was placed (failure, or a duplicate the
        policy dropped)."""
        try:
            placement = self.server.storage.place(temp, received)
        except UnsafePathError as exc:
            st.status, st.comment = ANSWERS[Refusal.UNSAFE_PATH]
            log.error("assoc %s: no safe path for %s: %s", self.session.id, st.sop_instance_uid, exc)
            Storage.discard(None, temp)
            return False
        except OSError as exc:
            self._store_error(st, exc, None, temp)
            return False
        st.status, st.comment = ANSWERS[placement.outcome]
        info = received.placed(placement.path, placement.duplicate)
        if info.duplicate:
            self.duplicates += 1
            log.info("assoc %s: duplicate %s %s", self.session.id, info.sop_instance_uid, info.duplicate)
        if not placement.placed:
            if info.duplicate:
                st.dropped = info
            return False
        self.stored += 1
        self.bytes += info.dataset_size
        server = self.server
        server.instances_total += 1
        server.bytes_total += info.dataset_size
        st.placed = info
        return True

    # Durable mode: data written out -> rename -> filesystem synced -> answer
    # (storage/durability.py says why one sync is enough).
    def _durable_data_written(self, st: _Store, writer: Any, temp: str, info: InstanceInfo,
                              err: OSError | None) -> None:
        writer.close()
        committer = self.server.storage.committer
        try:
            if err is not None or committer is None:
                self._store_error(st, err or OSError(0, "storage closed"), None, temp)
            elif self._placed_or_same(st, temp, info):
                committer.sync_then(lambda err2: self._durable_placed(st, err2))
                return
        except Exception:  # as in a read: the association cannot go on
            self.session.owe_answer(-1)
            log.exception("internal error on association %s; aborting it", self.session.id)
            self.session.abort("internal error")
            return
        self._answer_deferred(st)

    def _durable_placed(self, st: _Store, err: OSError | None) -> None:
        self._sync_failed(st, err)
        self._answer_deferred(st)

    @staticmethod
    def _sync_failed(st: _Store, err: OSError | None) -> None:
        if err is not None:  # the file is in place but maybe not on disk: do not claim success
            st.status, st.comment = D.REFUSED_OUT_OF_RESOURCES, f"cannot sync: {err.strerror}"

    def _durable_alone(self, st: _Store, writer: Any, temp: str, info: InstanceInfo,
                       committer: GroupCommitter) -> None:
        """The durable steps on the loop, for the one association open: there
        is no other to group with, and the sender waits for this answer
        anyway. The loop is held for the disk's time (on the benchmark VM's
        ext4, about 0.3 ms for a 9 KB image and 0.9 ms for 0.5 MB)."""
        err = committer.write_out_now(writer.fd)
        writer.close()
        if err is not None:
            self._store_error(st, err, None, temp)
        elif self._placed_or_same(st, temp, info):
            self._sync_failed(st, committer.sync_now())

    def _placed_or_same(self, st: _Store, temp: str, info: InstanceInfo) -> bool:
        """``_place``, and True also for a copy the policy dropped with
        Success (the same content is stored): that Success needs the sync as
        much, since the stored copy's own sync may still be under way or
        may have failed."""
        return self._place(st, temp, info) or st.status == D.SUCCESS

    def _answer_deferred(self, st: _Store) -> None:
        """The answer the group commit held back (``_answer_store`` writes
        it through ``flush``, which sees nothing owed any more)."""
        self.session.owe_answer(-1)
        self._answer_store(st)

    def _answer_store(self, st: _Store) -> None:
        if st.status != D.SUCCESS:
            self.failed += 1
            self.statuses[st.status] = self.statuses.get(st.status, 0) + 1
        self._respond(st.context_id, D.encode_response(D.C_STORE_RSP, st.message_id, st.status, st.sop_class_uid,
                                                       st.sop_instance_uid, st.comment))
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

    def _respond(self, context_id: int, command: bytes) -> None:
        if self.session.established:
            self.session.send(context_id, command)


def _valid_uid(uid: str) -> bool:
    return 0 < len(uid) <= 64 and uid.isascii() and uid.isprintable() and os.sep not in uid

"""Group commit for ``storage.durability: fsync``.

A durable success answer needs the file's data on disk before its rename, and
the rename (the directory entry) on disk before the answer; else a power cut
can leave an acknowledged instance as an empty or missing file (ext4's delayed
allocation commits the rename's metadata before the data blocks it names).

So a durable instance goes: data written out, then renamed, then one
filesystem sync, then answered. The data is written with
``sync_file_range(WAIT_BEFORE | WRITE | WAIT_AFTER)``: it returns once the
pages have reached the device, which allocates their blocks first, so the
block and size metadata enter the journal no later than the rename that
follows. The one ``syncfs()`` after the rename then commits both, and its
cache flush covers the data written before it. A crash before that commit
leaves the file in ``.incoming/`` (swept at start, never acknowledged) or, if
a periodic commit took the rename, in place with all its data. This needs a
filesystem that records a file's blocks and size before its pages leave
writeback, so that the commit covers them: ext4 (it converts unwritten
extents before ending page writeback) and XFS. Anywhere else (btrfs records
its extents later, from a work queue; NFS; unknown), and where
sync_file_range is missing or refused, ``fdatasync`` is used instead: two
commits per instance, as sound as before. Measured on the benchmark VM's
ext4: one journal commit per instance instead of two.

One thread does the work for every association: a sync covers every
instance that asked since the previous sync began, and batches grow by
themselves under load (group commit). While a single association is open
the caller does the same steps on its own thread (``write_out_now``,
``sync_now``): nothing can share its sync, and the hand-over would only add
wake-ups. ``write_then(fd, callback)`` and
``sync_then(callback)`` run ``callback(error)`` on the event loop once the
data is out, or once a sync that STARTED after the call has finished.

The Storage service sees none of this: it asks ``Storage.durability`` for
the strategy an instance takes (``NoSync`` without durability, else
``SyncOnLoop`` while its association is the only one open and the disk has
been quick, else ``GroupCommit``) and calls its one ``commit(incoming,
place, done)``: the steps above run around ``place`` and ``done`` is called
once, with None or the step that failed.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import dataclasses
import enum
import errno
import logging
import mmap
import os
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from .incoming import IncomingInstance

log = logging.getLogger("fastscp.storage")

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_syncfs = getattr(_libc, "syncfs", None)
_sync_file_range = getattr(_libc, "sync_file_range", None)
if _sync_file_range is not None:
    _sync_file_range.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
_SFR_WAIT_BEFORE, _SFR_WRITE, _SFR_WAIT_AFTER = 1, 2, 4


def sync_filesystem(fd: int) -> None:
    """syncfs(fd), or fsync(fd) + os.sync() where syncfs does not exist."""
    if _syncfs is None:
        os.sync()
        return
    if _syncfs(fd) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


# a durable step on the event loop that took longer than this sends the
# instances of the next INLINE_PAUSE_S seconds through the thread
INLINE_SLOW_S = 0.05
INLINE_PAUSE_S = 10.0

_PAGE_MASK = ~(mmap.PAGESIZE - 1)

# where a write-out followed by the sync is enough (module docstring)
WRITEBACK_FILESYSTEMS = frozenset({"ext4", "xfs"})


def write_out(fds: list[int], writeback: bool = True) -> list[OSError | None]:
    """Write the dirty pages of every file to the device and wait for them
    (no metadata, no cache flush: the next sync does that). Writeback of
    all starts before the first wait, so the files' I/O overlaps. With
    ``writeback`` false, or without sync_file_range: ``fdatasync`` each."""
    srf = _sync_file_range if writeback else None
    if srf is not None:
        for fd in fds:
            srf(fd, 0, 0, _SFR_WRITE)
    errors: list[OSError | None] = []
    for fd in fds:
        error: OSError | None = None
        if srf is None or srf(fd, 0, 0, _SFR_WAIT_BEFORE | _SFR_WRITE | _SFR_WAIT_AFTER) != 0:
            err = ctypes.get_errno() if srf is not None else 0
            if err not in (0, errno.ENOSYS, errno.EINVAL, errno.ESPIPE, errno.EOPNOTSUPP):
                error = OSError(err, os.strerror(err))
            else:
                try:
                    os.fdatasync(fd)
                except OSError as exc:
                    error = exc
        errors.append(error)
    return errors


class GroupCommitter:
    def __init__(self, directory: str | os.PathLike[str], loop: asyncio.AbstractEventLoop,
                 writeback: bool = False) -> None:
        """``writeback``: the filesystem is one of WRITEBACK_FILESYSTEMS."""
        self._fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        self.writeback = writeback
        self._loop = loop
        self._pending: list[Callable[[OSError | None], None]] = []
        self._writes: list[tuple[int, Callable[[OSError | None], None]]] = []
        self._cv = threading.Condition()
        self._closed = False
        self.syncs = 0
        self.instances = 0
        self.written = 0
        self.inline = 0  # instances whose steps the caller did (write_out_now)
        self._counts = threading.Lock()  # the counters change on both threads
        self._inline_resume = 0.0
        self.clock: Callable[[], float] = time.monotonic
        self._thread = threading.Thread(target=self._run, name="fastscp-group-commit", daemon=True)
        self._thread.start()

    def sync_then(self, callback: Callable[[OSError | None], None]) -> None:
        with self._cv:
            if not self._closed:
                self._pending.append(callback)
                self._cv.notify()
                return
        self._refuse(callback)

    def write_then(self, fd: int, callback: Callable[[OSError | None], None]) -> None:
        """Write out the data of ``fd`` (kept open by the caller until the
        callback), then ``callback(error)`` on the event loop."""
        with self._cv:
            if not self._closed:
                self._writes.append((fd, callback))
                self._cv.notify()
                return
        self._refuse(callback)

    # One association alone has nobody to group with, and a trip to the
    # thread and back costs four wake-ups (two each way) on top of the disk's
    # own time: the caller then does the same steps on its own thread, unless
    # the disk was slow lately (the event loop would wait on it).
    def inline_ok(self) -> bool:
        """May the caller do an instance's steps itself (``write_out_now``, ``sync_now``)?"""
        return self.clock() >= self._inline_resume

    def start_write_out(self, fd: int, start: int, end: int) -> None:
        """Start writing out bytes [start, end) of ``fd`` without waiting
        (``sync_file_range`` WRITE), while the rest of the instance still
        arrives; ``write_out_now`` then waits for less. The caller passes
        whole pages only: the page being filled is written again by the next
        fragment. Errors are left for ``write_out_now`` to report. Nothing
        happens without writeback (fdatasync does the whole file later)."""
        if self.writeback and _sync_file_range is not None and end > start:
            t0 = self.clock()
            _sync_file_range(fd, start, end - start, _SFR_WRITE)
            self._check_inline(t0)  # a congested disk can make even the start wait

    def write_out_now(self, fd: int) -> OSError | None:
        """``write_then`` done on the caller's thread: the error, or None."""
        t0 = self.clock()
        error = self._write_out([fd])[0]
        with self._counts:
            self.inline += 1
        self._check_inline(t0)
        return error

    def sync_now(self) -> OSError | None:
        """``sync_then`` for one instance, on the caller's thread."""
        t0 = self.clock()
        error = self._sync(1)
        self._check_inline(t0)
        return error

    def _check_inline(self, t0: float) -> None:
        now = self.clock()
        if now - t0 > INLINE_SLOW_S:
            self._inline_resume = now + INLINE_PAUSE_S
            log.warning("durable write took %.0f ms on the event loop; the group commit thread "
                        "does it for the next %.0f s", (now - t0) * 1000, INLINE_PAUSE_S)

    def _write_out(self, fds: list[int]) -> list[OSError | None]:
        errors = write_out(fds, self.writeback)
        with self._counts:
            self.written += len(fds)
        for error in errors:
            if error is not None:
                log.error("writing out a received file failed: %s", error)
        return errors

    def _sync(self, instances: int) -> OSError | None:
        error: OSError | None = None
        try:
            sync_filesystem(self._fd)
        except OSError as exc:
            error = exc
            log.error("syncfs failed: %s", exc)
        with self._counts:
            self.syncs += 1
            self.instances += instances
        return error

    def _refuse(self, callback: Callable[[OSError | None], None]) -> None:
        """After close: the callback hears of an error, never of a success."""
        self._hand_over([callback], [OSError(errno.ESHUTDOWN, "storage closed")])

    def _hand_over(self, callbacks: list[Callable[[OSError | None], None]], errors: list[OSError | None]) -> bool:
        """Run the callbacks on the event loop; False once the loop is closed
        (nothing left to answer)."""
        try:
            self._loop.call_soon_threadsafe(self._deliver_each, callbacks, errors)
        except RuntimeError:
            return False
        return True

    def _run(self) -> None:
        while True:
            with self._cv:
                while not self._pending and not self._writes and not self._closed:
                    self._cv.wait()
                if not self._pending and not self._writes and self._closed:
                    return
                writes, self._writes = self._writes, []
                batch, self._pending = self._pending, []
            if writes:
                errors = self._write_out([fd for fd, _ in writes])
                if not self._hand_over([cb for _, cb in writes], errors):
                    return
            if not batch:
                continue
            error = self._sync(len(batch))
            if not self._hand_over(batch, [error] * len(batch)):
                return

    @staticmethod
    def _deliver_each(callbacks: list[Callable[[OSError | None], None]], errors: list[OSError | None]) -> None:
        for callback, error in zip(callbacks, errors, strict=True):
            try:
                callback(error)
            except Exception:
                log.exception("group-commit callback failed")

    def close(self) -> None:
        """Finish what was asked, then stop (call it off the event loop: the
        loop must stay free to run the callbacks). Later requests fail."""
        with self._cv:
            self._closed = True
            self._cv.notify()
        self._thread.join(timeout=30)
        if self._thread.is_alive():  # a sync still running: its descriptor stays open
            log.error("group commit thread still busy after 30 s; leaving it")
            return
        os.close(self._fd)


# ---- the strategies: how a received instance becomes durable ---------------------------


class Step(enum.Enum):
    WRITE = "write"  # writing the data out: nothing was placed
    SYNC = "sync"  # the sync after the rename: the file is in place but maybe not on disk


@dataclasses.dataclass(frozen=True, slots=True)
class CommitFailure:
    """Why a commit could not make the instance durable."""

    step: Step
    error: OSError


Done = Callable[[CommitFailure | None], None]


class Durability(Protocol):
    """How a received instance is made durable, the same way whichever
    strategy it is (``Storage.durability`` picks it): ``commit`` calls
    ``place()`` (rename into place, or drop; True when the answer will say
    the instance is stored, which then needs the sync), then ``done(None)``
    or ``done(failure)``, exactly once. ``deferred``: ``done`` comes later,
    from the event loop (the caller holds its association's timers
    meanwhile); else before ``commit`` returns. ``receiving`` is told of
    each fragment but the last, unless ``watches_receiving`` is False:
    then fragments may also go to the file without it (the framer's sink).
    The file stays open (the caller closes it after answering); after a
    WRITE failure the caller removes it."""

    deferred: bool
    watches_receiving: bool

    def receiving(self, incoming: IncomingInstance) -> None: ...

    def commit(self, incoming: IncomingInstance, place: Callable[[], bool], done: Done) -> None: ...


class NoSync:
    """``storage.durability: none``: rename, answer; the kernel writes back when it will."""

    deferred = False
    watches_receiving = False

    def receiving(self, incoming: IncomingInstance) -> None:
        pass

    def commit(self, incoming: IncomingInstance, place: Callable[[], bool], done: Done) -> None:
        place()
        done(None)


class SyncOnLoop:
    """The durable steps on the event loop, while one association is open:
    there is no other to group with, and the sender waits for this answer
    anyway; a trip to the thread and back would add four wake-ups. The loop
    is held for the disk's time (on the benchmark VM's ext4, about 0.3 ms
    for a 9 KB image and 0.9 ms for 0.5 MB); ``GroupCommitter.inline_ok``
    turns it off for a while after a slow step."""

    deferred = False
    watches_receiving = True  # starts the write-out of each fragment's pages

    def __init__(self, committer: GroupCommitter) -> None:
        self._committer = committer

    def receiving(self, incoming: IncomingInstance) -> None:
        """The pages filled so far start for the disk now, while the sender
        sends the rest, so the wait after the last fragment is for less
        data. Only whole pages: the one being filled is written again by the
        next fragment. ext4, 1000 x 0.5 MB over one association, without and
        with (median of 7 and of 9, two runs): 3.00 and 2.84 s, 2.89 and
        2.66 s (default durability 2.00 and 1.88 s). Over four associations
        the group commit already overlaps the disk with receiving, and
        starting early there measured no better (2.46 s without, 2.52 s
        with), so ``GroupCommit`` does not."""
        writer = incoming.writer
        end = (writer.prefix_size + writer.dataset_size) & _PAGE_MASK
        if end > incoming.written_out:
            self._committer.start_write_out(writer.fd, incoming.written_out, end)
            incoming.written_out = end

    def commit(self, incoming: IncomingInstance, place: Callable[[], bool], done: Done) -> None:
        error = self._committer.write_out_now(incoming.writer.fd)
        if error is not None:
            done(CommitFailure(Step.WRITE, error))
        elif place() and (error := self._committer.sync_now()) is not None:
            done(CommitFailure(Step.SYNC, error))
        else:
            done(None)


class GroupCommit:
    """The durable steps through the group commit thread, while other
    associations are open: their instances share its syncs. ``retire`` (the
    storage gave its committer up, at shutdown) makes what is in flight
    fail rather than answer success."""

    deferred = True
    watches_receiving = False

    def __init__(self, committer: GroupCommitter) -> None:
        self._committer = committer
        self._retired = False

    def retire(self) -> None:
        self._retired = True

    def receiving(self, incoming: IncomingInstance) -> None:
        pass

    def commit(self, incoming: IncomingInstance, place: Callable[[], bool], done: Done) -> None:
        committer = self._committer

        def written(error: OSError | None) -> None:
            if error is None and self._retired:
                error = OSError(0, "storage closed")
            if error is not None:
                done(CommitFailure(Step.WRITE, error))
            elif place():
                committer.sync_then(lambda error: done(None if error is None else CommitFailure(Step.SYNC, error)))
            else:
                done(None)

        committer.write_then(incoming.writer.fd, written)


NO_SYNC = NoSync()

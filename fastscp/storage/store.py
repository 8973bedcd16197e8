"""The storage tree: temp files in ``.incoming/``, then an atomic rename into place.

``begin`` opens a temp file under ``<storage>/.incoming/`` (same filesystem as
the tree, so the final ``os.replace`` is atomic) and returns an
``IncomingInstance`` (storage/incoming.py) that streams the dataset after the
Part-10 prefix and, once finished, gives the received ``InstanceInfo``
(its ``abort`` removes the temp file); ``durability`` picks how it is made
durable (storage/durability.py); ``place`` names the instance (naming
scheme, then ``resolve_inside``), applies the duplicate policy
(``DuplicateGuard``), renames it into place or drops it, and says what it
did (a frozen ``Placement``, no DIMSE status: the service maps it). Nothing
partial is ever visible in the tree: a file either is complete at its final
path or does not exist there. ``.incoming/`` is swept at start.
"""

from __future__ import annotations

import dataclasses
import errno
import itertools
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

from .._ext.writer import InstanceFile, rename_noreplace
from ..frozen import quick_init
from ..instance import InstanceInfo
from .duplicates import DuplicateGuard, Outcome
from .durability import NO_SYNC, Durability, GroupCommit, GroupCommitter, SyncOnLoop
from .incoming import IncomingInstance
from .naming import FlatNaming, NamingScheme, relative_text
from .part10 import file_meta
from .safepath import join_inside

log = logging.getLogger("fastscp.storage")

INCOMING = ".incoming"
# read-write: the end-of-data-set check (scp) reads element headers back
_OPEN_FLAGS = os.O_RDWR | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)


# The free-space reserve when none is configured: 5% of the volume, at most 1 GiB.
DEFAULT_RESERVE_SHARE = 0.05
DEFAULT_RESERVE_CAP = 1024**3
# How often a dataset being received is accounted and the reserve checked
# again (one statvfs): every this many bytes of it, not per PDU.
CHECK_EVERY = 16 * 1024 * 1024

LOCK_FILE = ".fastscp.lock"


@quick_init
@dataclasses.dataclass(frozen=True, slots=True)
class Placement:
    """What ``Storage.place`` did with a received instance (the service maps
    ``outcome`` to its answer). ``path`` is the file that holds the instance
    in the tree: the received copy when ``placed``, else the copy kept (""
    if none)."""

    outcome: Outcome  # STORED for a new instance, else the duplicate policy's
    path: str
    placed: bool  # the received file was renamed into the tree (else it was removed)
    duplicate: str  # InstanceInfo.duplicate: "" for a new instance, else the outcome's name (Outcome.label)


class StorageInUse(Exception):
    """Another running fastscp holds the storage directory."""


def lock_directory(directory: str | os.PathLike[str]) -> int:
    """Take the storage directory for this process: an exclusive flock on
    ``<directory>/.fastscp.lock``, held while the returned descriptor is
    open (the kernel drops it when the process ends, however it ends).
    Raises StorageInUse while another process holds it. Two receivers on
    one tree would sweep each other's temp files at start and keep two
    duplicate maps that do not see each other's instances."""
    import fcntl

    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, LOCK_FILE)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "?"
        os.close(fd)
        raise StorageInUse(f"storage directory {os.path.abspath(directory)} is in use by another "
                           f"fastscp (pid {holder})") from None
    except OSError:
        os.close(fd)
        raise
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def filesystem_type(path: str | os.PathLike[str], mountinfo: str = "/proc/self/mountinfo") -> str:
    """The type of the filesystem holding ``path`` (from /proc/self/mountinfo:
    the longest mount point that contains it), or "" when unknown."""
    target = os.path.realpath(path)
    best, kind = "", ""
    try:
        with open(mountinfo, encoding="utf-8", errors="replace") as fh:
            for line in fh:
                left, _, right = line.partition(" - ")
                fields = left.split()
                if len(fields) < 5 or not right:
                    continue
                mount = fields[4].replace("\\040", " ")
                inside = target == mount or target.startswith(mount.rstrip("/") + "/")
                if inside and len(mount) >= len(best):
                    best, kind = mount, right.split()[0]
    except OSError:
        return ""
    return kind


class Storage:
    def __init__(self, directory: str | os.PathLike[str], naming: NamingScheme | None = None, head_limit: int = 16384,
                 min_free_space: int | None = None, duplicates: str = "ignore", durable: bool = False,
                 max_incoming: int | None = None, statvfs: Callable[[str], os.statvfs_result] = os.statvfs) -> None:
        """``min_free_space``: None = the default reserve (DEFAULT_RESERVE_*),
        0 = none. ``max_incoming``: None = no bound on unfinished bytes."""
        self.directory = Path(directory).resolve()
        # storage.durability: fsync -> the app sets ``committer``, and
        # ``durability`` picks a strategy that syncs through it
        self.durable = durable
        self._committer: GroupCommitter | None = None
        self._strategies: tuple[SyncOnLoop, GroupCommit] | None = None
        self.guard = DuplicateGuard(self.directory, duplicates)
        self._statvfs = statvfs
        self._free_checked = -1e9
        self._free = 0
        self.min_free_space = min_free_space or 0
        self.max_incoming = max_incoming
        self.check_every = CHECK_EVERY
        # bytes of unfinished instances, as accounted every check_every bytes
        # (``take_incoming``) by the associations receiving them
        self.incoming_bytes = 0
        self.naming: NamingScheme = naming or FlatNaming()
        self.naming_needs_header = bool(getattr(self.naming, "needs_header", False))
        self.head_limit = head_limit
        self.incoming = self.directory / INCOMING
        self.incoming.mkdir(parents=True, exist_ok=True)
        if min_free_space is None:
            st = statvfs(str(self.directory))
            self.min_free_space = min(int(st.f_blocks * st.f_frsize * DEFAULT_RESERVE_SHARE), DEFAULT_RESERVE_CAP)
        self.filesystem = filesystem_type(self.incoming)  # for the durability write-out (app.py)
        self._base = str(self.directory)
        self._known_dirs: set[str] = {self._base}
        # renameat2(RENAME_NOREPLACE): the new-instance case in one system call;
        # off (check + os.replace) where the kernel or filesystem refuses it
        self._noreplace = True
        self._counter = itertools.count()
        self._tag = f"{os.getpid()}-{os.urandom(3).hex()}"

    def sweep_incoming(self) -> int:
        """Remove temp files left by a previous run (never acknowledged)."""
        removed = 0
        for entry in os.scandir(self.incoming):
            if entry.is_file(follow_symlinks=False):
                os.unlink(entry.path)
                removed += 1
        if removed:
            log.warning("removed %d unfinished file(s) from %s", removed, self.incoming)
        return removed

    def open_temp(self) -> tuple[int, str]:
        """A new empty temp file in .incoming/: (descriptor, path); raises OSError.
        The service opens its next one once an answer is out, so that the
        next C-STORE-RQ finds it ready (``begin(..., spare)``)."""
        temp = f"{self.incoming}/{self._tag}-{next(self._counter)}.part"
        return os.open(temp, _OPEN_FLAGS, 0o644), temp

    @staticmethod
    def drop_temp(spare: tuple[int, str]) -> None:
        """Close and remove a temp file from ``open_temp`` that was not used."""
        os.close(spare[0])
        try:
            os.unlink(spare[1])
        except FileNotFoundError:
            pass

    def begin(self, sop_class_uid: str, sop_instance_uid: str, transfer_syntax_uid: str, source_ae: str,
              spare: tuple[int, str] | None = None) -> IncomingInstance:
        """An incoming instance: a temp file with the Part-10 prefix to come
        (written with the first fragment); raises OSError. ``spare`` (from
        ``open_temp``) is used instead of a new file; it is the caller's no
        more, whatever happens."""
        if self.min_free_space and self.free_space() < self.min_free_space:
            if spare is not None:
                self.drop_temp(spare)
            raise OSError(errno.ENOSPC, f"less than {self.min_free_space} bytes free (storage.min_free_space)")
        fd, temp = spare if spare is not None else self.open_temp()
        try:
            writer = InstanceFile(fd, file_meta(sop_class_uid, sop_instance_uid, transfer_syntax_uid, source_ae),
                                  self.head_limit)
        except BaseException:
            os.close(fd)
            os.unlink(temp)
            raise
        return IncomingInstance(writer, temp, sop_class_uid, sop_instance_uid, transfer_syntax_uid, self.head_limit,
                                self.naming_needs_header)

    @property
    def committer(self) -> GroupCommitter | None:
        """The group committer of ``storage.durability: fsync`` (set by the
        app once its loop runs; None without durability, and from the
        start of shutdown: what is then in flight through it is answered
        a failure)."""
        return self._committer

    @committer.setter
    def committer(self, committer: GroupCommitter | None) -> None:
        if self._strategies is not None:
            self._strategies[1].retire()
        self._committer = committer
        self._strategies = None if committer is None else (SyncOnLoop(committer), GroupCommit(committer))

    def durability(self, associations: int) -> Durability:
        """The strategy that makes an instance durable now, ``associations``
        being open (durability.py): on the event loop for the only one while
        the disk is quick, else through the group commit thread."""
        strategies = self._strategies
        if strategies is None:
            return NO_SYNC
        on_loop, group = strategies
        assert self._committer is not None  # set together
        return on_loop if associations == 1 and self._committer.inline_ok() else group

    def place(self, temp: str, received: InstanceInfo) -> Placement:
        """Rename the finished temp file into place or drop it, as the
        duplicate policy says; what was done (``received`` is not changed).
        Raises OSError (temp file kept: the caller discards it) and
        UnsafePathError."""
        target = join_inside(self._base, relative_text(self.naming, received))
        uid = received.sop_instance_uid
        if self._noreplace and self.guard.index.lookup(uid) is None:
            parent = target.rpartition("/")[0] or "/"  # os.path.dirname of the normalised absolute path
            if parent not in self._known_dirs:
                os.makedirs(parent, exist_ok=True)
                self._known_dirs.add(parent)
            # The common case, a new instance: rename unless the target exists,
            # atomically. Anything there (an older file the index does not
            # know, another instance's) goes through the duplicate guard below.
            try:
                try:
                    rename_noreplace(temp, target)
                except FileNotFoundError:  # its folder was removed behind our back
                    if not os.path.exists(temp):
                        raise
                    os.makedirs(parent, exist_ok=True)
                    rename_noreplace(temp, target)
            except FileExistsError:
                pass
            except OSError as exc:
                if exc.errno not in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
                    raise
                self._noreplace = False
                log.info("renameat2(RENAME_NOREPLACE) not supported on %s (%s): checking before renaming",
                         self._base, exc.strerror)
            else:
                self.guard.stored(uid, target, received.content_hash)
                return Placement(Outcome.STORED, target, True, "")
        return self._place_checked(temp, received, Path(target))

    def _place_checked(self, temp: str, received: InstanceInfo, target: Path) -> Placement:
        """The duplicate guard's way: the UID is known, or the target is taken."""
        res = self.guard.resolve(received.sop_instance_uid, received.content_hash, target)
        outcome = res.decision.outcome
        if res.path is None:
            os.unlink(temp)
            return Placement(outcome, str(res.previous or ""), False, outcome.label)
        final = str(res.path)
        parent = os.path.dirname(final)
        if parent not in self._known_dirs:
            os.makedirs(parent, exist_ok=True)
            self._known_dirs.add(parent)
        os.replace(temp, final)
        if res.decision.replaces_previous and res.previous is not None and str(res.previous) != final:
            try:
                os.unlink(res.previous)
            except FileNotFoundError:
                pass
        self.guard.stored(received.sop_instance_uid, res.path, received.content_hash)
        if outcome is not Outcome.STORED:
            log.info("duplicate %s: %s -> %s", received.sop_instance_uid, outcome.value, final)
        return Placement(outcome, final, True, outcome.label)

    def take_incoming(self, more: int, own: int) -> str:
        """An association receiving an instance has ``more`` bytes of it
        (``own`` in all, accounted): count them, and say why the instance
        must not go on ("" = it may). It may not when the unfinished bytes of
        every association pass ``max_incoming`` and are not all its own (one
        instance alone is bounded by the reserve only), or when the next
        ``check_every`` bytes would take the volume below the reserve (a
        fresh statvfs). The caller gives the bytes back (``release_incoming``)
        whatever happens to the instance."""
        self.incoming_bytes += more
        bound = self.max_incoming
        if bound is not None and self.incoming_bytes > bound and self.incoming_bytes > own:
            return (f"{self.incoming_bytes} bytes of unfinished instances, more than storage.max_incoming "
                    f"({bound})")
        if self.min_free_space:
            free = self.free_space(0.0)
            if free < self.min_free_space + self.check_every:
                return (f"{free} bytes free, the next {self.check_every} would cross the reserve of "
                        f"{self.min_free_space} (storage.min_free_space)")
        return ""

    def release_incoming(self, accounted: int) -> None:
        self.incoming_bytes -= accounted

    def free_space(self, max_age: float = 1.0) -> int:
        """Free bytes on the storage volume (statvfs at most every max_age s)."""
        now = time.monotonic()
        if now - self._free_checked > max_age:
            st = self._statvfs(str(self.directory))
            self._free = st.f_bavail * st.f_frsize
            self._free_checked = now
        return self._free


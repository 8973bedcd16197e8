"""Duplicate instances: detection and the ``storage.duplicates`` policy.

An instance is a duplicate when its SOP Instance UID is already stored.
Which UIDs are stored is asked of the guard's ``index`` (``KnownInstances``):
``SeenInstances``, a dict of what this process stored, when no index is
configured; ``IndexedInstances`` with an index: a Bloom filter
(``uidfilter.UidFilter``, about 1.5 bytes per instance) that answers "new"
for almost every new UID, backed by the index (one query on a filter hit)
and a dict of this process's stores that the index does not have yet. The
memory it takes does not grow by more than the filter's bits with the
archive. The
content hash is XXH3-128 (the ``xxhash`` package) of the dataset bytes exactly
as received (no file meta, no re-encoding), fed incrementally while the
dataset streams in (``new_content_hash``), so comparing two copies costs
nothing extra. XXH3 rather than BLAKE2b: measured here, BLAKE2b took about
1.8 ms per MB (0.9 ms for a 0.5 MB CT, more than the whole per-image budget),
XXH3-128 about 0.1 ms per MB. It detects changed content; it is not meant to
resist a forger, which a receiver that trusts its callers does not need.

The policy decides what a duplicate with *different* content does; the same
UID with the same content is always a no-op success, whatever the policy:

==========  ==============================  =======  =========================
policy      same UID, other content         status   files
==========  ==============================  =======  =========================
ignore      keep the first copy (default)   0000     received copy dropped
reject      keep the first copy             CD01     received copy dropped
overwrite   the new copy replaces the old   0000     atomic rename over it
keep-both   new copy beside the old         0000     ``<stem>_v2.dcm``, v3 ...
==========  ==============================  =======  =========================

``reject`` answers Failure 0xCD01. PS3.4 B.2.3 (Table B.2-1) leaves the SCP
three failure families for C-STORE: A7xx "Refused: Out of Resources" (tells
the sender to retry later: wrong, a retry meets the same copy), A9xx "Data Set
does not match SOP Class" (untrue) and Cxxx "Error: Cannot understand", the
family for SCP-specific failures, which carries an Error Comment (0000,0902).
The warnings B000/B006/B007 all mean "stored, with changes", which would be a
lie about a copy we dropped. So: a Cxxx failure, with an Error Comment saying
why, picked clear of the C0xx/C2xx codes pynetdicom uses for its own errors.
"""

from __future__ import annotations

import enum
import logging
import os
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import xxhash

from .header import complete_copy
from .safepath import free_path, versioned_path
from .uidfilter import UidFilter

log = logging.getLogger("fastscp.storage")

__all__ = [
    "CONTENT_HASH_ALGORITHM",
    "DEFAULT_DUPLICATE_POLICY",
    "Decision",
    "DuplicateGuard",
    "DuplicatePolicy",
    "IndexedInstances",
    "KnownInstances",
    "Outcome",
    "Resolution",
    "SeenInstances",
    "decide",
    "file_content_hash",
    "new_content_hash",
    "uid_in_file",
]

CONTENT_HASH_ALGORITHM = "xxh3-128"


def new_content_hash() -> xxhash.xxh3_128:
    """A fresh incremental hash for one dataset: ``update(chunk)`` per PDV
    fragment (accepts memoryview slices, releases the GIL above 2 KiB), then
    ``hexdigest()`` for ``InstanceInfo.content_hash``."""
    return xxhash.xxh3_128()


class DuplicatePolicy(str, enum.Enum):
    IGNORE = "ignore"
    REJECT = "reject"
    OVERWRITE = "overwrite"
    KEEP_BOTH = "keep-both"

    @classmethod
    def parse(cls, name: str | DuplicatePolicy) -> DuplicatePolicy:
        """The policy called ``name`` (``storage.duplicates``); ValueError lists the valid names."""
        if isinstance(name, cls):
            return name
        for policy in cls:
            if policy.value == name:
                return policy
        raise ValueError(f"unknown duplicate policy {name!r}; valid: {', '.join(p.value for p in cls)}")


DEFAULT_DUPLICATE_POLICY = DuplicatePolicy.IGNORE


class Outcome(str, enum.Enum):
    STORED = "stored"  # not a duplicate
    IDENTICAL = "identical"  # same UID, same content: nothing to do
    IGNORED = "ignored"
    REJECTED = "rejected"
    OVERWRITTEN = "overwritten"
    KEPT_BOTH = "kept-both"

    @property
    def label(self) -> str:
        """The value for ``InstanceInfo.duplicate`` ("" for a new instance)."""
        return "" if self is Outcome.STORED else self.value


class Place(str, enum.Enum):
    """Where the received file goes."""

    NOWHERE = "nowhere"  # discard the temporary file
    TARGET = "target"  # the path the naming scheme gave (after collision check)
    VERSION = "version"  # a version name beside the stored copy


@dataclass(frozen=True, slots=True)
class Decision:
    """What the policy decides; the C-STORE-RSP status each outcome is
    answered with is the service's (services/storage.py ANSWERS)."""

    outcome: Outcome
    place: Place
    replaces_previous: bool = False  # remove the stored copy once the new one is in place

    @property
    def write(self) -> bool:
        return self.place is not Place.NOWHERE


_NEW = Decision(Outcome.STORED, Place.TARGET)
_IDENTICAL = Decision(Outcome.IDENTICAL, Place.NOWHERE)
_ON_CONFLICT: dict[DuplicatePolicy, Decision] = {
    DuplicatePolicy.IGNORE: Decision(Outcome.IGNORED, Place.NOWHERE),
    DuplicatePolicy.REJECT: Decision(Outcome.REJECTED, Place.NOWHERE),
    DuplicatePolicy.OVERWRITE: Decision(Outcome.OVERWRITTEN, Place.TARGET, replaces_previous=True),
    DuplicatePolicy.KEEP_BOTH: Decision(Outcome.KEPT_BOTH, Place.VERSION),
}


def decide(policy: DuplicatePolicy, seen: bool, same_content: bool) -> Decision:
    """What to do with a received instance. Pure: ``seen`` is whether its SOP
    Instance UID is already stored, ``same_content`` whether the stored copy's
    content hash equals the received one (pass False when either hash is
    unknown: only a proven match is a no-op)."""
    if not seen:
        return _NEW
    if same_content:
        return _IDENTICAL
    return _ON_CONFLICT[policy]


class KnownInstances(Protocol):
    """What the duplicate guard asks and tells about stored instances. Paths
    are relative to the storage directory or absolute (``DuplicateGuard``
    resolves them)."""

    def lookup(self, uid: str) -> tuple[str, str] | None:
        """(path, content hash) of the stored copy of ``uid``, None if none is known."""
        ...

    def record(self, uid: str, path: str, content_hash: str) -> None:
        """The copy of ``uid`` now stored at ``path``."""
        ...

    def forget(self, uid: str) -> None:
        """The copy known for ``uid`` is not one (removed, cut): do not offer it again."""
        ...

    def __contains__(self, uid: object) -> bool: ...


class SeenInstances:
    """SOP Instance UID -> (path, content hash) of the stored copy; O(1).

    Paths are kept as given (the catalog stores them relative to the storage
    directory; ``DuplicateGuard`` resolves them). One entry costs about 230
    bytes of memory with typical UIDs and hierarchical paths: the guard's
    index when no index database is configured, which then holds what this
    process stored."""

    __slots__ = ("_entries",)

    def __init__(self, rows: Iterable[tuple[str, str, str]] = ()) -> None:
        self._entries: dict[str, tuple[str, str]] = {}
        self.warm(rows)

    def warm(self, rows: Iterable[tuple[str, str, str]]) -> int:
        """Add (uid, path, content_hash) rows, e.g. streamed from the catalog;
        returns how many were read. Later rows win."""
        entries = self._entries
        count = 0
        for uid, path, content_hash in rows:
            entries[uid] = (path, content_hash)
            count += 1
        return count

    def lookup(self, uid: str) -> tuple[str, str] | None:
        return self._entries.get(uid)

    def record(self, uid: str, path: str, content_hash: str) -> None:
        self._entries[uid] = (path, content_hash)

    def forget(self, uid: str) -> None:
        self._entries.pop(uid, None)

    def __contains__(self, uid: object) -> bool:
        return uid in self._entries

    def __len__(self) -> int:
        return len(self._entries)


class IndexedInstances:
    """The known instances of an archive with an index database, in memory
    that does not grow with it.

    ``lookup(uid)`` asks, in order: the UIDs this process stored that the
    index has not confirmed yet (``recent``, a dict emptied by ``written``,
    which the index writer calls after each batch); the Bloom ``filter`` of
    every UID known, which says "new" for almost every new UID (no further
    cost); and, on a filter hit, ``confirm(uid)``, which queries the index
    (``catalog.known.IndexConfirm``). Until the filter holds the whole index
    (``mark_ready``, once it is built in the background after the port
    opened), every lookup that ``recent`` does not answer is confirmed.

    ``record``/``forget``/``lookup`` run on the event loop; ``written`` in the
    writer thread; the filter is filled from another thread: the dict is
    changed under a lock."""

    def __init__(self, storage_dir: str | os.PathLike[str], uid_filter: UidFilter,
                 confirm: Callable[[str], tuple[str, str] | None],
                 close: Callable[[], None] | None = None) -> None:
        self.filter = uid_filter
        self._confirm = confirm
        self._close = close
        self._base = os.path.join(os.fspath(storage_dir), "")
        self._recent: dict[str, tuple[str, str]] = {}
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self.confirmed = 0  # index queries made
        self.unconfirmed = 0  # of which found nothing: filter false positives (or not ready)
        self.confirm_errors = 0
        self._failing = False

    @property
    def ready(self) -> bool:
        """Whether the filter holds every UID of the index."""
        return self._ready.is_set()

    def mark_ready(self) -> None:
        self._ready.set()

    def wait_ready(self, timeout: float | None = None) -> bool:
        return self._ready.wait(timeout)

    @property
    def pending(self) -> int:
        """Stores of this process the index writer has not confirmed yet."""
        return len(self._recent)

    def lookup(self, uid: str) -> tuple[str, str] | None:
        entry = self._recent.get(uid)
        if entry is not None:
            return entry
        if self._ready.is_set() and uid not in self.filter:
            return None
        self.confirmed += 1
        try:
            found = self._confirm(uid)
        except Exception as exc:  # the index is unreadable: the disk checks still apply
            self.confirm_errors += 1
            if not self._failing:  # one line per outage, not one per instance
                self._failing = True
                log.error("duplicate check: cannot ask the index about %s (%s: %s); until it answers again, "
                          "a re-send is found only at the path its naming gives", uid, type(exc).__name__, exc)
            return None
        if self._failing:
            self._failing = False
            log.warning("duplicate check: the index answers again (%d queries failed so far)", self.confirm_errors)
        if found is None:
            self.unconfirmed += 1
        return found

    def record(self, uid: str, path: str, content_hash: str) -> None:
        with self._lock:
            self._recent[uid] = (path, content_hash)
        f = self.filter
        f.add(uid)
        if f.added == f.capacity + 1:
            log.warning("duplicate check: its filter, sized at start for %d instances, is full: more new instances "
                        "will cost an index query (about %.1f%% now); the next start sizes it for the index then",
                        f.capacity, 100 * f.expected_false_positive_rate())

    def forget(self, uid: str) -> None:
        with self._lock:
            self._recent.pop(uid, None)

    def written(self, rows: Iterable[tuple[str, str]]) -> None:
        """The index now holds (uid, absolute path) rows: what ``recent``
        holds for them with the same path is the index's to answer now."""
        base = self._base
        with self._lock:
            recent = self._recent
            for uid, path in rows:
                entry = recent.get(uid)
                if entry is None:
                    continue
                relative = path[len(base):] if path.startswith(base) else path
                if entry[0] == relative or entry[0] == path:
                    del recent[uid]

    def __contains__(self, uid: object) -> bool:
        return isinstance(uid, str) and self.lookup(uid) is not None

    def close(self) -> None:
        """Release what ``confirm`` holds (the index cursor); at shutdown."""
        if self._close is not None:
            self._close()
            self._close = None


def uid_in_file(path: Path) -> str | None:
    """Who holds ``path``: None if nothing is there, else the SOP Instance UID
    of the file there ("" if it cannot be read as DICOM: such a file is never
    taken for ours). Used only when a target path already exists."""
    if not os.path.lexists(path):
        return None
    try:
        import pydicom

        dataset = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SOPInstanceUID"])
        return str(dataset.get("SOPInstanceUID", "")).strip()
    except Exception:
        return ""


def file_content_hash(path: Path, chunk: int = 1 << 20) -> str | None:
    """The content hash of a stored Part-10 file: XXH3-128 of the bytes
    after the file meta group, i.e. of the dataset as it was received. None
    when the file has no preamble/``DICM`` or no (0002,0000) group length."""
    try:
        with open(path, "rb") as stream:
            head = stream.read(144)
            if len(head) < 144 or head[128:132] != b"DICM" or head[132:138] != b"\x02\x00\x00\x00UL":
                return None
            stream.seek(144 + int.from_bytes(head[140:144], "little"))
            digest = new_content_hash()
            while block := stream.read(chunk):
                digest.update(block)
            return str(digest.hexdigest())
    except OSError:
        return None


@dataclass(frozen=True, slots=True)
class Resolution:
    """A decision with its paths: ``path`` is where to rename the received
    file (None: drop it); ``previous`` is the stored copy, if any. With
    ``decision.replaces_previous`` and ``path != previous``, remove
    ``previous`` after the rename (the corrected instance moved)."""

    decision: Decision
    path: Path | None
    previous: Path | None


class DuplicateGuard:
    """The duplicate policy applied with the known instances (``index``) and the disk.

    ``resolve()`` before the final rename, ``stored()`` after it. Not
    thread-safe by itself: call both from the event loop (each is a lookup
    in ``index``: a dict or filter test, an index query on a filter hit; and,
    only when a path is taken, a stat or a header read)."""

    def __init__(
        self,
        storage_dir: Path,
        policy: DuplicatePolicy | str = DEFAULT_DUPLICATE_POLICY,
        index: KnownInstances | None = None,
        uid_at: Callable[[Path], str | None] = uid_in_file,
        stored_hash: Callable[[Path], str | None] = file_content_hash,
        complete: Callable[[Path, str], bool] = complete_copy,
    ) -> None:
        self.storage_dir = Path(storage_dir)
        self._base_prefix = os.path.join(os.fspath(self.storage_dir), "")  # "<dir>/", for stored()
        self._real_prefix = os.path.join(os.path.realpath(self.storage_dir), "")
        self.policy = DuplicatePolicy.parse(policy)
        self.index: KnownInstances = SeenInstances() if index is None else index
        self._uid_at = uid_at
        self._stored_hash = stored_hash
        self._complete = complete

    def serves(self, path: Path, sop_instance_uid: str) -> bool:
        """Whether ``path`` may stand for a received copy of the instance: a
        complete Part-10 file of that SOP Instance UID, inside the storage
        tree being served (symbolic links resolved, ``.incoming/`` excluded).
        Only this lets a duplicate be answered Success without storing it."""
        real = os.path.realpath(path)
        if not real.startswith(self._real_prefix):
            return False
        if real[len(self._real_prefix):].split(os.sep, 1)[0].startswith("."):
            return False  # .incoming/ and other hidden places are not the served tree
        return self._complete(Path(real), sop_instance_uid)

    def _absolute(self, path: str) -> Path:
        return self.storage_dir / path  # absolute paths stay absolute

    def resolve(self, sop_instance_uid: str, content_hash: str, target: Path) -> Resolution:
        """What to do with a received instance whose naming target is ``target``
        (absolute, already through ``resolve_inside``)."""
        previous: Path | None = None
        stored_hash = ""
        entry = self.index.lookup(sop_instance_uid)
        if entry is not None:
            known = self._absolute(entry[0])
            if self.serves(known, sop_instance_uid):
                previous, stored_hash = known, entry[1]
            else:
                # removed, cut, replaced or outside the tree served: the new
                # copy is stored (a Success must mean a file in this tree)
                self.index.forget(sop_instance_uid)
                log.warning("duplicate check: %s was known at %s, which is not a complete copy in %s; "
                            "storing the copy received", sop_instance_uid, known, self.storage_dir)
        if previous is None:
            # free_path asks uid_at (a stat) about each candidate; remember the
            # answer for the one it returns instead of asking the disk again
            owners: dict[Path, str | None] = {}

            def owner_of(candidate: Path) -> str | None:
                owners[candidate] = who = self._uid_at(candidate)
                return who

            path = free_path(target, sop_instance_uid, owner_of)
            if owners.get(path) is None:
                return Resolution(_NEW, path, None)
            if not self.serves(path, sop_instance_uid):
                # a cut or unreadable file of this UID holds the name: the
                # received copy replaces it
                return Resolution(_NEW, path, None)
            # This very instance is on disk but not in the index (not indexed
            # yet: reconcile runs after the port opened): a duplicate all the same.
            previous = path
            stored_hash = self._stored_hash(path) or ""
        same = bool(content_hash) and content_hash == stored_hash
        decision = decide(self.policy, True, same)
        if decision.place is Place.TARGET:
            return Resolution(decision, free_path(target, sop_instance_uid, self._uid_at), previous)
        if decision.place is Place.VERSION:
            return Resolution(decision, versioned_path(previous), previous)
        return Resolution(decision, None, previous)

    def stored(self, sop_instance_uid: str, path: str | os.PathLike[str], content_hash: str) -> None:
        """Record the copy now in place (after the rename). A ``keep-both``
        version is recorded too: later copies are compared with the newest."""
        text = os.fspath(path)
        base = self._base_prefix
        relative = text[len(base):] if text.startswith(base) else text
        self.index.record(sop_instance_uid, relative, content_hash)

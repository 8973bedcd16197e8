"""One instance being received (``IncomingInstance``), and why storage does
not take a received instance (``Refusal``).

``Storage.begin`` makes an ``IncomingInstance``: the temp file in
``.incoming/`` with the Part-10 prefix, the Cython ``InstanceFile`` writer
that streams the data set into it, the content hash fed with the same
bytes, and the head (the first bytes, for the header-only parse). The
service hands it each PDV (``write``) and, after the last, ``finish``es it:
the file is completed, the header parsed and checked against the command, and
a frozen ``InstanceInfo`` with the reception facts comes back, which nothing
changes afterwards (``Storage.place`` takes it and says what it did in a
``Placement``). ``abort`` removes the temp file; ``close`` closes it once
the answer is out (it stays open until then: durability writes it out).

``Refusal`` names what is wrong with a received instance, without a DIMSE
status: the Storage service (services/storage.py) maps each to its answer
in one table.
"""

from __future__ import annotations

import dataclasses
import enum
import os
import sys
import time
from collections.abc import Callable

from .._ext.writer import InstanceFile
from ..instance import InstanceInfo
from .duplicates import new_content_hash
from .header import check_dataset_end, header_dataset, parse_file, parse_head

__all__ = ["IncomingInstance", "Reception", "Refusal", "Refused"]


class Refusal(enum.Enum):
    HEADER_UNREADABLE = "header unreadable"  # the header-only parse failed
    DATASET_TRUNCATED = "dataset truncated"  # the data set ends inside an element
    INSTANCE_UID_DIFFERS = "instance UID differs"  # the data set's SOP Instance UID is not the command's
    CLASS_UID_DIFFERS = "class UID differs"  # the data set's SOP Class UID is not the command's
    UNSAFE_PATH = "unsafe path"  # the naming scheme gives no safe file name (Storage.place)


class Refused(Exception):
    """A received instance storage does not take; ``detail`` says what was
    found ("" when the refusal says it all)."""

    def __init__(self, refusal: Refusal, detail: str = "") -> None:
        super().__init__(f"{refusal.value}: {detail}" if detail else refusal.value)
        self.refusal = refusal
        self.detail = detail


@dataclasses.dataclass(frozen=True, slots=True)
class Reception:
    """Who sent the instances of one association (the reception facts that
    do not change from one instance to the next)."""

    calling_ae: str
    called_ae: str
    peer: str  # "ip:port"
    association_id: str


class IncomingInstance:
    """One instance being received into its temp file (``Storage.begin``)."""

    __slots__ = ("_hasher", "_head_limit", "_info", "_needs_header", "_parsed", "sop_class_uid",
                 "sop_instance_uid", "temp", "transfer_syntax_uid", "writer", "written_out")

    def __init__(self, writer: InstanceFile, temp: str, sop_class_uid: str, sop_instance_uid: str,
                 transfer_syntax_uid: str, head_limit: int, needs_header: bool) -> None:
        self.writer = writer
        self.temp = temp
        self.sop_class_uid = sop_class_uid
        self.sop_instance_uid = sop_instance_uid
        self.transfer_syntax_uid = transfer_syntax_uid
        self._hasher = new_content_hash()
        self._head_limit = head_limit
        self._needs_header = needs_header
        self._info: InstanceInfo | None = None  # parsed early, from a full head, while the rest arrives
        self._parsed = False  # the early parse was tried
        self.written_out = 0  # file bytes whose write-out has started (durability.SyncOnLoop)

    @property
    def dataset_size(self) -> int:
        """Data set bytes received so far."""
        return self.writer.dataset_size

    def write(self, data: bytes | bytearray | memoryview, last: bool) -> None:
        """One PDV of the data set, in order; raises OSError (then ``abort``)."""
        self.writer.write(data)
        self._hasher.update(data)
        if not last and not self._parsed and self.writer.dataset_size > self._head_limit:
            self._parse_early()

    def direct(self) -> tuple[InstanceFile, Callable[[memoryview], object], int] | None:
        """What lets the framer write the coming fragments itself
        (``PDUFramer.sink_dataset``): the writer, the content hash's update,
        and the data set size up to which that does what ``write`` does (the
        head's limit until the early parse, then any). None when the writer
        is not the compiled one (a test's wrapper)."""
        writer = self.writer
        if type(writer) is not InstanceFile:
            return None
        return writer, self._hasher.update, sys.maxsize if self._parsed else self._head_limit

    def _parse_early(self) -> None:
        """Parse the header once the head is full and more fragments are to
        come: the sender is still sending, so the parse leaves the time
        between the last fragment and the answer. The result is what the
        parse after the last fragment would give (same bytes, same call); a
        failure is left for that parse to meet and answer."""
        self._parsed = True
        try:
            self._info = parse_head(self.writer.head, self.transfer_syntax_uid, False)
        except Exception:  # pydicom raises many kinds on bad input
            self._info = None

    def finish(self, reception: Reception) -> InstanceInfo:
        """The whole data set is in: complete the file, parse and check the header
        (the data set's UIDs against the command's, the end of the data set)
        and return the received instance with its reception facts. Raises
        Refused and OSError (then ``abort``). The file stays open."""
        writer, ts = self.writer, self.transfer_syntax_uid
        file_size = writer.finish()  # complete first: parse_file may read the whole file
        head = writer.head
        try:
            info = self._info or parse_head(head, ts, writer.head_complete)
            if info is None:
                info = parse_file(self.temp, writer.prefix_size, ts)
        except Exception as exc:  # pydicom raises many kinds on bad input
            raise Refused(Refusal.HEADER_UNREADABLE, str(exc)) from exc
        try:
            fd, prefix = writer.fd, writer.prefix_size
            check_dataset_end(head, writer.dataset_size, ts, lambda offset, n: os.pread(fd, n, prefix + offset))
        except Exception as exc:  # MalformedDataset, or a short read
            raise Refused(Refusal.DATASET_TRUNCATED, str(exc)) from exc
        if info.sop_instance_uid != self.sop_instance_uid:
            raise Refused(Refusal.INSTANCE_UID_DIFFERS)
        if info.sop_class_uid and info.sop_class_uid != self.sop_class_uid:
            raise Refused(Refusal.CLASS_UID_DIFFERS)
        return info.received(
            sop_class_uid=self.sop_class_uid, calling_ae=reception.calling_ae, called_ae=reception.called_ae,
            peer=reception.peer, association_id=reception.association_id, received_at=time.time(),
            dataset_size=writer.dataset_size, file_size=file_size, content_hash=self._hasher.hexdigest(),
            header=header_dataset(head, ts) if self._needs_header else None)

    def close(self) -> None:
        """Close the file (again: nothing happens)."""
        self.writer.close()

    def abort(self) -> None:
        """Close the file and remove it, if it is still in ``.incoming/``."""
        self.writer.close()
        try:
            os.unlink(self.temp)
        except FileNotFoundError:
            pass

"""Durable mode (``storage.durability: fsync``) on an in-process server, with
the disk's answers injected: the steps run in order (write-out, rename,
sync, answer), a failed write-out or a failed sync must never be answered
Success, and a write-out failure must leave nothing in the tree.

Both ways an instance takes are covered: on the event loop when its
association is the only one open (``durability.SyncOnLoop``), and through the group
commit thread when another association is open (``durability.GroupCommit``, the deferred answer).
"""

from __future__ import annotations

import errno
import mmap
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from pynetdicom import AE

import fastscp.storage.durability as durability
from conftest import make_image
from fastscp.scu.commands import answers_to_the_caller
from fastscp.storage.durability import GroupCommitter
from reliability import check_tree, dataset_bytes, incoming
from test_reliability_disk import InProcessServer

pytestmark = pytest.mark.interop


@pytest.fixture
def durable(tmp_path: Path) -> Iterator[InProcessServer]:
    srv = InProcessServer(tmp_path / "store", {"storage.durability": "fsync"})
    # App.run makes the committer; the in-process server only starts the App
    srv.storage.committer = GroupCommitter(srv.storage.directory, srv.loop, writeback=True)
    try:
        yield srv
    finally:
        committer, srv.storage.committer = srv.storage.committer, None
        committer.close()
        srv.stop()


def _association(port: int, ds: pydicom.Dataset):  # type: ignore[no-untyped-def]
    ae = AE(ae_title="DURABLE")
    ae.add_requested_context(ds.SOPClassUID, pydicom.uid.ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", port, ae_title="FASTSCP")
    assert assoc.is_established
    answers_to_the_caller(assoc)  # pynetdicom's reactor race (scu/commands.py)
    return assoc


def _store(port: int, ds: pydicom.Dataset, alone: bool, answered: list[float] | None = None) -> tuple[int, str]:
    """Status and comment of one C-STORE; with ``alone`` false another
    association stays open meanwhile (so the group commit thread is used).
    ``answered`` gets the monotonic time the answer was in."""
    other = None if alone else _association(port, ds)
    assoc = _association(port, ds)
    try:
        rsp = assoc.send_c_store(ds)
        if answered is not None:
            answered.append(time.monotonic())
        return int(rsp.Status), str(rsp.get("ErrorComment", ""))
    finally:
        assoc.release()
        if other is not None:
            other.release()


@pytest.mark.parametrize("alone", [True, False], ids=["loop", "thread"])
def test_durable_success_takes_the_way_the_open_associations_call_for(
        durable: InProcessServer, tmp_path: Path, alone: bool) -> None:
    path = tmp_path / "img.dcm"
    ds = make_image(path, 1, study=1, size=384)  # three PDVs
    committer = durable.storage.committer
    assert _store(durable.port, ds, alone) == (0x0000, "")
    stored = check_tree(durable.storage.directory)
    assert dataset_bytes(stored[str(ds.SOPInstanceUID)]) == dataset_bytes(path)
    assert (committer.written, committer.syncs, committer.instances) == (1, 1, 1)
    assert committer.inline == (1 if alone else 0)


@pytest.mark.parametrize("alone", [True, False], ids=["loop", "thread"])
def test_durable_steps_run_in_order_write_out_rename_sync_answer(
        durable: InProcessServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, alone: bool) -> None:
    """The data is on its way to disk before the name points at it, the
    name is on disk before the answer: what each step finds in the tree, and
    when the answer came, tell the order."""
    path = tmp_path / "img.dcm"
    ds = make_image(path, 1, study=1, size=384)
    store_dir = Path(durable.storage.directory)
    real_write_out, real_sync = durability.write_out, durability.sync_filesystem
    steps: list[tuple[str, int, int, float]] = []

    def seen(step: str) -> None:  # files in the tree, temp files with data in them, when
        filled = [n for n in incoming(store_dir) if (store_dir / ".incoming" / n).stat().st_size]
        steps.append((step, len(check_tree(store_dir)), len(filled), time.monotonic()))

    def write_out(fds: list[int], writeback: bool = True) -> list[OSError | None]:
        seen("write-out")
        return real_write_out(fds, writeback)

    def sync(fd: int) -> None:
        real_sync(fd)
        seen("sync")

    monkeypatch.setattr(durability, "write_out", write_out)
    monkeypatch.setattr(durability, "sync_filesystem", sync)
    answered: list[float] = []
    assert _store(durable.port, ds, alone, answered) == (0x0000, "")
    assert [(step, placed) for step, placed, _, _ in steps] == [("write-out", 0), ("sync", 1)]
    assert (steps[0][2], steps[1][2]) == (1, 0)  # written out while a temp file, synced once renamed
    assert steps[1][3] < answered[0]  # answered after the sync returned


@pytest.mark.parametrize("alone", [True, False], ids=["loop", "thread"])
@pytest.mark.parametrize("failing", ["write-out", "sync"])
def test_durable_disk_failure_is_never_answered_success(
        durable: InProcessServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, alone: bool, failing: str) -> None:
    path = tmp_path / "img.dcm"
    ds = make_image(path, 1, study=1, size=384)
    store_dir = Path(durable.storage.directory)

    def write_out_fails(fds: list[int], writeback: bool = True) -> list[OSError | None]:
        return [OSError(errno.EIO, os.strerror(errno.EIO)) for _ in fds]

    def sync_fails(fd: int) -> None:
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    if failing == "write-out":
        monkeypatch.setattr(durability, "write_out", write_out_fails)
    else:
        monkeypatch.setattr(durability, "sync_filesystem", sync_fails)
    committer = durable.storage.committer
    status, comment = _store(durable.port, ds, alone)
    assert status == 0xA700, hex(status)
    assert ("cannot sync" if failing == "sync" else "cannot store") in comment
    assert committer.inline == (1 if alone else 0)
    assert not incoming(store_dir), "temp file left behind"
    if failing == "write-out":  # never renamed: nothing visible
        assert not check_tree(store_dir)
    # The disk is back: the sender's retry is answered Success only after a
    # sync. When only the sync failed, the first copy is in place and the
    # retry (same content) is dropped as a duplicate, but the first copy's
    # pages may not be on disk: its Success must wait for a sync all the same.
    monkeypatch.undo()
    syncs = committer.syncs
    assert _store(durable.port, ds, alone) == (0x0000, "")
    assert committer.syncs == syncs + 1
    stored = check_tree(durable.storage.directory)
    assert dataset_bytes(stored[str(ds.SOPInstanceUID)]) == dataset_bytes(path)


def test_a_slow_disk_sends_the_next_instances_through_the_thread(
        durable: InProcessServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A durable step on the event loop holds every association's timers and
    accepts: once one took longer than INLINE_SLOW_S, the thread takes over."""
    committer = durable.storage.committer
    real_sync = durability.sync_filesystem
    clock = [0.0]
    committer.clock = lambda: clock[0]

    def slow_sync(fd: int) -> None:
        real_sync(fd)
        clock[0] += durability.INLINE_SLOW_S * 2

    monkeypatch.setattr(durability, "sync_filesystem", slow_sync)
    for i in range(2):
        ds = make_image(tmp_path / f"img{i}.dcm", i, study=1)
        assert _store(durable.port, ds, alone=True) == (0x0000, "")
    assert committer.inline == 1  # the second went through the thread
    clock[0] += durability.INLINE_PAUSE_S
    ds = make_image(tmp_path / "img2.dcm", 2, study=1)
    assert _store(durable.port, ds, alone=True) == (0x0000, "")
    assert committer.inline == 2  # and the loop takes over again


@pytest.mark.parametrize("alone", [True, False], ids=["loop", "thread"])
def test_write_out_starts_with_whole_pages_while_the_rest_arrives(
        durable: InProcessServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, alone: bool) -> None:
    """One association open: after each fragment but the last, the pages
    filled so far start for the disk (sync_file_range WRITE, no wait), from
    where the previous start ended, never the page still being filled; the
    wait after the last fragment covers the whole file. With another
    association open the group commit does it all, as before."""
    path = tmp_path / "img.dcm"
    ds = make_image(path, 1, study=1, size=384)  # three PDVs
    real = durability._sync_file_range
    calls: list[tuple[int, int, int, int]] = []

    def recording(fd: int, offset: int, nbytes: int, flags: int) -> int:
        calls.append((fd, offset, nbytes, flags))
        return real(fd, offset, nbytes, flags)

    monkeypatch.setattr(durability, "_sync_file_range", recording)
    assert _store(durable.port, ds, alone) == (0x0000, "")
    early = [c for c in calls if c[2] > 0]
    whole = [c for c in calls if c[2] == 0]
    stored = check_tree(durable.storage.directory)[str(ds.SOPInstanceUID)]
    assert dataset_bytes(stored) == dataset_bytes(path)
    # the write-out after the last fragment: start all, then wait for all
    assert [(offset, flags) for _, offset, _, flags in whole] == [(0, 2), (0, 7)]
    if not alone:
        assert early == []
        return
    assert len(early) == 2, calls  # after the first and the second of three fragments
    page = mmap.PAGESIZE
    position = 0
    for fd, offset, nbytes, flags in early:
        assert fd == whole[0][0] and flags == 2
        assert offset == position  # each start picks up where the last ended
        position = offset + nbytes
        assert position % page == 0  # whole pages only
    # the last fragment's pages are left to the write-out that waits
    assert position < stored.stat().st_size - 16382

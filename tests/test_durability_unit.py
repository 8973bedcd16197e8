"""The group committer of ``storage.durability: fsync`` (storage/durability.py),
on the real filesystem under tmp_path, without a peer."""

from __future__ import annotations

import asyncio
import errno
import os
import threading
from pathlib import Path

from conftest import make_image
from fastscp.storage.durability import (
    NO_SYNC,
    CommitFailure,
    Durability,
    GroupCommit,
    GroupCommitter,
    Step,
    SyncOnLoop,
    write_out,
)
from fastscp.storage.incoming import IncomingInstance, Reception
from fastscp.storage.store import Storage

EXPLICIT_LE = "1.2.840.10008.1.2.1"


def test_write_out_reports_each_file_and_does_not_raise(tmp_path: Path) -> None:
    good = os.open(tmp_path / "a", os.O_RDWR | os.O_CREAT, 0o644)
    os.write(good, b"x" * 100_000)
    read_end, write_end = os.pipe()  # sync_file_range refuses a pipe (ESPIPE): fdatasync is tried, and fails
    closed = os.open(tmp_path / "b", os.O_RDWR | os.O_CREAT, 0o644)
    os.close(closed)  # opened after the pipe: its number is not reused below
    try:
        errors = write_out([good, closed, read_end])
    finally:
        for fd in (good, read_end, write_end):
            os.close(fd)
    assert errors[0] is None
    assert isinstance(errors[1], OSError) and errors[1].errno == errno.EBADF
    assert isinstance(errors[2], OSError)
    assert (tmp_path / "a").read_bytes() == b"x" * 100_000


def test_committer_answers_writes_and_syncs_on_the_loop(tmp_path: Path) -> None:
    async def scenario() -> list[tuple[str, object]]:
        loop = asyncio.get_running_loop()
        committer = GroupCommitter(tmp_path, loop, writeback=True)
        heard: list[tuple[str, object]] = []
        done = asyncio.Event()
        fd = os.open(tmp_path / "f", os.O_RDWR | os.O_CREAT, 0o644)
        os.write(fd, b"data")
        closed = os.open(tmp_path / "g", os.O_RDWR | os.O_CREAT, 0o644)
        os.close(closed)
        on_loop = threading.get_ident()

        def heard_on_loop(what: str, err: object) -> None:
            assert threading.get_ident() == on_loop
            heard.append((what, err))
            if len(heard) == 3:
                done.set()

        committer.write_then(fd, lambda err: heard_on_loop("written", err))
        committer.write_then(closed, lambda err: heard_on_loop("bad fd", err))
        committer.sync_then(lambda err: heard_on_loop("synced", err))
        await asyncio.wait_for(done.wait(), 30)
        os.close(fd)
        await loop.run_in_executor(None, committer.close)
        assert committer.written == 2 and committer.instances == 1 and committer.syncs == 1
        return heard

    heard = dict(asyncio.run(scenario()))
    assert heard["written"] is None and heard["synced"] is None
    assert isinstance(heard["bad fd"], OSError) and heard["bad fd"].errno == errno.EBADF


def test_write_out_without_writeback_uses_fdatasync(tmp_path: Path) -> None:
    read_end, write_end = os.pipe()
    try:
        # a pipe: fdatasync refuses it (EINVAL), where sync_file_range would say ESPIPE and fall back
        assert write_out([read_end], writeback=False)[0].errno == errno.EINVAL  # type: ignore[union-attr]
    finally:
        os.close(read_end)
        os.close(write_end)


def test_a_closed_committer_answers_every_later_request_with_an_error(tmp_path: Path) -> None:
    async def scenario() -> list[object]:
        loop = asyncio.get_running_loop()
        committer = GroupCommitter(tmp_path, loop)
        await loop.run_in_executor(None, committer.close)
        heard: list[object] = []
        fd = os.open(tmp_path / "f", os.O_RDWR | os.O_CREAT, 0o644)
        committer.write_then(fd, heard.append)
        committer.sync_then(heard.append)
        for _ in range(10):
            await asyncio.sleep(0.01)
        os.close(fd)
        return heard

    heard = asyncio.run(scenario())
    assert len(heard) == 2 and all(isinstance(e, OSError) and e.errno == errno.ESHUTDOWN for e in heard)


def _incoming(storage: Storage, tmp_path: Path, index: int) -> IncomingInstance:
    """An instance received whole into its temp file (not yet placed)."""
    source = tmp_path / f"src{index}.dcm"
    ds = make_image(source, index, study=1)
    raw = source.read_bytes()
    incoming = storage.begin(str(ds.SOPClassUID), str(ds.SOPInstanceUID), EXPLICIT_LE, "SENDER")
    incoming.write(raw[144 + int.from_bytes(raw[140:144], "little"):], True)
    incoming.finish(Reception("SENDER", "FASTSCP", "127.0.0.1:1", "a-1"))
    return incoming


def test_the_strategies_commit_through_one_interface(tmp_path: Path) -> None:
    """Storage.durability picks NoSync, SyncOnLoop (one association) or
    GroupCommit (more); each calls place() then done() once: on the loop
    before commit returns, or later for the group commit; a sync only when
    place() says the answer will claim the instance stored; a failed
    write-out without place(); a retired group commit never a success."""
    storage = Storage(tmp_path / "store", min_free_space=0, durable=True)
    assert storage.durability(1) is NO_SYNC and not NO_SYNC.deferred

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        committer = GroupCommitter(storage.directory, loop, writeback=True)
        storage.committer = committer
        on_loop, group = storage.durability(1), storage.durability(2)
        assert isinstance(on_loop, SyncOnLoop) and not on_loop.deferred
        assert isinstance(group, GroupCommit) and group.deferred

        async def commit(strategy: Durability, incoming: IncomingInstance, stored: bool) -> list[object]:
            steps: list[object] = []
            finished = asyncio.Event()

            def place() -> bool:
                steps.append(("place", committer.written))  # written out before the rename
                return stored

            def done(failure: CommitFailure | None) -> None:
                steps.append(failure)
                finished.set()

            strategy.commit(incoming, place, done)
            if strategy.deferred:
                assert steps == []  # the thread does the work
            else:
                assert finished.is_set()
            await asyncio.wait_for(finished.wait(), 30)
            incoming.close()
            return steps

        for number, strategy in enumerate((on_loop, group)):
            syncs, written = committer.syncs, committer.written
            assert await commit(strategy, _incoming(storage, tmp_path, 2 * number), True) == [
                ("place", written + 1), None]
            assert committer.syncs == syncs + 1
            # a copy the answer will not claim stored (a rejected duplicate): no sync
            assert await commit(strategy, _incoming(storage, tmp_path, 2 * number + 1), False) == [
                ("place", written + 2), None]
            assert committer.syncs == syncs + 1
            # the data cannot be written out: no place(), the failure of the write
            broken = _incoming(storage, tmp_path, 10 + number)
            broken.close()
            steps = await commit(strategy, broken, True)
            assert len(steps) == 1 and isinstance(steps[0], CommitFailure)
            assert steps[0].step is Step.WRITE and steps[0].error.errno == errno.EBADF
        assert committer.inline == 3  # SyncOnLoop's write-outs, on this thread

        storage.committer = None  # shutdown: what is in flight through the thread fails
        assert storage.durability(1) is NO_SYNC
        steps = await commit(group, _incoming(storage, tmp_path, 20), True)
        assert len(steps) == 1 and isinstance(steps[0], CommitFailure)
        assert steps[0].step is Step.WRITE and steps[0].error.strerror == "storage closed"
        await loop.run_in_executor(None, committer.close)

    asyncio.run(scenario())

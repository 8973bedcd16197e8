"""The group committer of ``storage.durability: fsync`` (storage/durability.py),
on the real filesystem under tmp_path, without a peer."""

from __future__ import annotations

import asyncio
import errno
import os
import threading
from pathlib import Path

from fastscp.storage.durability import GroupCommitter, write_out


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

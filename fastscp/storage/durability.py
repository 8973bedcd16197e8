"""Group commit for ``storage.durability: fsync``.

A durable success answer needs the file's data on disk before its rename, and
the rename (the directory entry) on disk before the answer; else a power cut
can leave an acknowledged instance as an empty or missing file (ext4's delayed
allocation commits the rename's metadata before the data blocks it names).
So a durable instance takes two syncs: data, then rename, then directory.

Instead of an fsync per file and per directory from the event loop, one
thread runs ``syncfs()`` on the storage filesystem for every instance that
asked since the previous sync began: one sync covers many instances across
associations, and batches grow by themselves under load (group commit).
``sync_then(callback)`` runs ``callback(error)`` on the event loop once a
sync that STARTED after the call has finished.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import logging
import os
import threading
from collections.abc import Callable

log = logging.getLogger("fastscp.storage")

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_syncfs = getattr(_libc, "syncfs", None)


def sync_filesystem(fd: int) -> None:
    """syncfs(fd), or fsync(fd) + os.sync() where syncfs does not exist."""
    if _syncfs is None:
        os.sync()
        return
    if _syncfs(fd) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


class GroupCommitter:
    def __init__(self, directory: str | os.PathLike[str], loop: asyncio.AbstractEventLoop) -> None:
        self._fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        self._loop = loop
        self._pending: list[Callable[[OSError | None], None]] = []
        self._cv = threading.Condition()
        self._closed = False
        self.syncs = 0
        self.instances = 0
        self._thread = threading.Thread(target=self._run, name="fastscp-group-commit", daemon=True)
        self._thread.start()

    def sync_then(self, callback: Callable[[OSError | None], None]) -> None:
        with self._cv:
            self._pending.append(callback)
            self._cv.notify()

    def _run(self) -> None:
        while True:
            with self._cv:
                while not self._pending and not self._closed:
                    self._cv.wait()
                if not self._pending and self._closed:
                    return
                batch, self._pending = self._pending, []
            error: OSError | None = None
            try:
                sync_filesystem(self._fd)
            except OSError as exc:
                error = exc
                log.error("syncfs failed: %s", exc)
            self.syncs += 1
            self.instances += len(batch)
            try:
                self._loop.call_soon_threadsafe(self._deliver, batch, error)
            except RuntimeError:  # loop closed: nothing left to answer
                return

    @staticmethod
    def _deliver(batch: list[Callable[[OSError | None], None]], error: OSError | None) -> None:
        for callback in batch:
            try:
                callback(error)
            except Exception:
                log.exception("group-commit callback failed")

    def close(self) -> None:
        with self._cv:
            self._closed = True
            self._cv.notify()
        self._thread.join(timeout=30)
        os.close(self._fd)

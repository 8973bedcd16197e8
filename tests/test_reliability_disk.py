"""Disk full (issue 9, "Faults").

A real small filesystem: the test mounts a 2 MiB tmpfs and puts the storage
directory on it (it needs the privilege to mount; without it the tests are
skipped, saying so). Floods until full: the answers become 0xA700 (storescu:
"Refused: OutOfResources"), every acknowledged file is complete, nothing partial is
anywhere, and once space is freed service resumes.

Plus ENOSPC injected through the storage layer of an in-process server
(fastscp.app.App on an event loop in a thread): at temp-file creation, on a
dataset write, when finishing the file and when renaming into place; each gives 0xA700 and leaves nothing.
"""

from __future__ import annotations

import asyncio
import errno
import os
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest

from conftest import Server, free_port, make_image
from fastscp.scu.commands import answers_to_the_caller
from fastscp.storage.incoming import IncomingInstance
from fastscp.storage.store import Placement
from reliability import DatasetTemplate, acknowledged, check_tree, dataset_bytes, incoming, server_log_clean, store_responses, storescu

pytestmark = pytest.mark.interop


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    mnt = tmp_path / "small"
    mnt.mkdir()
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if res.returncode != 0:
        why = res.stderr.strip()
        if os.geteuid() != 0 or "permission" in why.lower() or "not permitted" in why.lower() or "superuser" in why.lower():
            pytest.skip(f"cannot mount a small tmpfs for the disk-full test (needs root / CAP_SYS_ADMIN): {why}")
        pytest.fail(f"mount failed: {why}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def _uid(path: Path) -> str:
    return str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)


def test_disk_full_answers_out_of_resources_and_recovers(small_fs: Path, tmp_path: Path) -> None:
    corpus = []
    for i in range(120):
        path = tmp_path / f"img{i:03d}.dcm"
        make_image(path, i, study=i % 3, size=256 if i % 4 == 0 else 64)  # 128 KiB (3 PDVs) or 8 KiB
        corpus.append(path)
    storage = small_fs / "store"
    srv = Server(storage, tmp_path / "server.log", [])
    try:
        out = storescu(srv, corpus)
        responses = store_responses(out.stdout)
        assert len(responses) == len(corpus), out.stdout[-3000:]
        kinds = {rsp for _, rsp in responses}
        assert "Success" in kinds and "Refused: OutOfResources" in kinds, kinds
        assert kinds <= {"Success", "Refused: OutOfResources"}, kinds
        acked = [Path(f) for f in acknowledged(out.stdout)]
        refused = [Path(f) for f, rsp in responses if rsp != "Success"]

        assert not incoming(storage), "temp files left in .incoming on a full disk"
        stored = check_tree(storage)
        assert len(stored) == len(acked), "an instance answered Out of Resources is in the tree"
        for path in acked:
            assert dataset_bytes(stored[_uid(path)]) == dataset_bytes(path)
        assert "[Errno 28]" in srv.log_once_it_says("[Errno 28]")  # ENOSPC, logged

        # space returns: delete what was stored, send what was refused
        for path in stored.values():
            path.unlink()
        out = storescu(srv, refused[:10])
        assert out.returncode == 0 and len(acknowledged(out.stdout)) == 10, out.stdout[-3000:]
        stored = check_tree(storage)
        for path in refused[:10]:
            assert dataset_bytes(stored[_uid(path)]) == dataset_bytes(path)
        server_log_clean(srv)
        print(f"\ndisk full: {len(acked)} stored, {len(refused)} answered 0xA700 on a 2 MiB tmpfs, then 10 stored after freeing space")
    finally:
        srv.stop()


def test_nearly_full_disk_still_takes_a_multi_pdu_instance_that_fits(small_fs: Path, tmp_path: Path) -> None:
    """A 300 KB instance (three PDVs) with ~700 KB free: it fits, so it is
    stored (the writer once reserved 1 MiB+ extents ahead, and refused it)."""
    storage = small_fs / "store"
    srv = Server(storage, tmp_path / "server.log", [])
    try:
        # leave ~700 KB free, whatever the server's own files (its index) took
        st = os.statvfs(small_fs)
        (small_fs / "filler").write_bytes(bytes(max(0, st.f_bavail * st.f_frsize - 700 * 1024)))
        free = os.statvfs(small_fs).f_bavail * os.statvfs(small_fs).f_frsize
        assert 500_000 < free < 1_000_000, free
        path = tmp_path / "big.dcm"
        make_image(path, 1, study=1, size=384)  # 288 KiB of pixels
        out = storescu(srv, [path])
        assert acknowledged(out.stdout) == [str(path)], out.stdout[-2000:]
        stored = check_tree(storage)
        assert dataset_bytes(stored[_uid(path)]) == dataset_bytes(path)
        assert not incoming(storage)
    finally:
        srv.stop()


# ---- ENOSPC injected through the storage layer, in process ------------------------


class InProcessServer:
    """fastscp.app.App serving on its own event loop in a thread."""

    def __init__(self, storage: Path, settings: dict[str, object] | None = None) -> None:
        """``settings``: more config overrides, e.g. ``{"server.busy_poll_us": 0}``."""
        from fastscp.app import App
        from fastscp.config import load_config

        self.port = free_port()
        overrides = {"server.port": self.port, "server.ae_title": "FASTSCP", "storage.directory": str(storage),
                     "storage.naming": "flat", "database.path": str(storage.parent / f"{storage.name}.db"),
                     **(settings or {})}
        self.app = App(load_config(None, overrides), None, overrides)
        self.storage = self.app.state.storage
        self.loop = asyncio.new_event_loop()
        ready = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(self.loop)
            self.loop.run_until_complete(self.app.start())
            ready.set()
            self.loop.run_forever()

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()
        assert ready.wait(10)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.app.unlock()


class FailingWriter:
    """Wraps the real InstanceFile; the n-th write (or finish) raises ENOSPC."""

    def __init__(self, writer: object, fail_at: int, fail_finish: bool = False) -> None:
        self._w, self._left, self._fail_finish = writer, fail_at, fail_finish

    def write(self, data: memoryview) -> None:
        self._left -= 1
        if self._left <= 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self._w.write(data)  # type: ignore[attr-defined]

    def finish(self) -> int:
        if self._fail_finish:  # completing the temp file
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return self._w.finish()  # type: ignore[attr-defined,no-any-return]

    def __getattr__(self, name: str) -> object:
        return getattr(self._w, name)


def _send(port: int, ds: pydicom.Dataset) -> int:
    from pynetdicom import AE

    ae = AE(ae_title="INJECT")
    ae.add_requested_context(ds.SOPClassUID, pydicom.uid.ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", port, ae_title="FASTSCP")
    assert assoc.is_established
    answers_to_the_caller(assoc)  # pynetdicom's reactor race (scu/commands.py)
    try:
        rsp = assoc.send_c_store(ds)
        return int(rsp.Status)
    finally:
        assoc.release()


@pytest.mark.parametrize("where", ["begin", "second write", "first write", "finish", "place"])
def test_injected_enospc_answers_a700_and_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str) -> None:
    storage_dir = tmp_path / "store"
    srv = InProcessServer(storage_dir)
    storage = srv.storage
    real_begin, real_place = storage.begin, storage.place
    created: list[str] = []

    def begin(*args: object) -> IncomingInstance:
        if where == "begin":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        instance = real_begin(*args)  # type: ignore[arg-type]
        created.append(instance.temp)
        if "write" in where or where == "finish":
            instance.writer = FailingWriter(  # type: ignore[assignment]  # a wrapper, not an InstanceFile
                instance.writer, {"first write": 1, "second write": 2}.get(where, 1 << 30), where == "finish")
        return instance

    def no_space(*args: object) -> Placement:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    try:
        path = tmp_path / "big.dcm"
        ds = make_image(path, 1, study=1, size=384)  # 288 KiB: three PDVs
        monkeypatch.setattr(storage, "begin", begin)
        if where == "place":  # renaming it into place
            monkeypatch.setattr(storage, where, no_space)
        assert _send(srv.port, ds) == 0xA700
        assert where == "begin" or created, "the real temp file should have been created"
        assert not incoming(storage_dir), f"temp file left after ENOSPC at {where}"
        assert not check_tree(storage_dir), "a file became visible"
        # space is back
        monkeypatch.setattr(storage, "begin", real_begin)
        monkeypatch.setattr(storage, "place", real_place)
        assert _send(srv.port, ds) == 0x0000
        stored = check_tree(storage_dir)
        assert dataset_bytes(stored[str(ds.SOPInstanceUID)]) == dataset_bytes(path)
    finally:
        srv.stop()

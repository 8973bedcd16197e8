"""Limits against one peer (issue 20, part 2): the disk.

The free-space reserve holds while a dataset streams in, not only when its
C-STORE-RQ arrives, and the bytes of unfinished instances over every
association are bounded. A real small filesystem (a tmpfs the test mounts,
as in test_reliability_disk.py; skipped, saying so, without the privilege)
holds the storage, a real ``fastscp serve`` receives, dcmtk's storescu and a
raw socket send.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from conftest import Server, make_image
from rawclient import ABORT, CT, c_store_rq, connect_and_associate, pdata
from reliability import (
    acknowledged,
    check_tree,
    incoming,
    incoming_while_open,
    store_responses,
    storescu,
    wait_until,
)

pytestmark = pytest.mark.interop

MiB = 1024 * 1024


def _mount_tmpfs(mnt: Path, size: str) -> None:
    mnt.mkdir()
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mnt)],
                         capture_output=True, text=True, check=False)
    if res.returncode != 0:
        why = res.stderr.strip()
        if os.geteuid() != 0 or "permission" in why.lower() or "not permitted" in why.lower():
            pytest.skip(f"cannot mount a small tmpfs (needs root / CAP_SYS_ADMIN): {why}")
        pytest.fail(f"mount failed: {why}")


@pytest.fixture
def volume(tmp_path: Path) -> Iterator[Path]:
    """A 96 MiB tmpfs."""
    mnt = tmp_path / "vol"
    _mount_tmpfs(mnt, "96m")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def _config(tmp_path: Path, text: str) -> str:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return str(path)


def _free(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def _image(tmp_path: Path, name: str, megabytes: float, index: int) -> Path:
    path = tmp_path / f"{name}.dcm"
    side = int((megabytes * MiB / 2) ** 0.5)
    make_image(path, index, study=index, size=side)
    return path


def _uid(path: Path) -> str:
    return str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)


def test_instance_crossing_the_reserve_mid_stream_is_refused_and_removed(volume: Path, tmp_path: Path) -> None:
    """The reserve is 40 MiB on a 96 MiB volume: a 64 MiB instance passes
    the check at its C-STORE-RQ (about 90 MiB free) but would leave about
    26 MiB. It is answered 0xA700 and nothing of it stays, neither in the
    tree nor in .incoming/; a small instance after it is stored."""
    storage = volume / "store"
    srv = Server(storage, tmp_path / "server.log",
                 ["--config", _config(tmp_path, "storage:\n  min_free_space: 40MiB\n"), "--index-db", str(tmp_path / "i.db")])
    big, small = _image(tmp_path, "big", 64, 1), _image(tmp_path, "small", 1, 2)
    try:
        assert _free(volume) > 80 * MiB
        out = storescu(srv, [big, small])
        assert store_responses(out.stdout) == [(str(big), "Refused: OutOfResources"), (str(small), "Success")], out.stdout[-3000:]
        assert not incoming(storage), "a refused instance left its temp file"
        stored = check_tree(storage)
        assert list(stored) == [_uid(small)]
        assert _free(volume) > 80 * MiB
        text = srv.log_once_it_says("storage.min_free_space")
        assert "would cross the reserve" in text and "refused" in text
    finally:
        srv.stop()


def test_default_reserve_protects_an_unconfigured_volume(volume: Path, tmp_path: Path) -> None:
    """Nothing configured: the reserve is 5% of the volume (4.8 MiB here).
    An 84 MiB instance fits on the volume but would leave less than that:
    refused, and the volume keeps its space."""
    storage = volume / "store"
    srv = Server(storage, tmp_path / "server.log", ["--index-db", str(tmp_path / "i.db")])
    big = _image(tmp_path, "big", 84, 1)
    try:
        before = _free(volume)
        assert 90 * MiB < before < 96 * MiB
        out = storescu(srv, [big])
        assert store_responses(out.stdout) == [(str(big), "Refused: OutOfResources")], out.stdout[-3000:]
        assert not incoming(storage) and not check_tree(storage)
        assert _free(volume) > 90 * MiB
    finally:
        srv.stop()


def _stall_half_sent(port: int, megabytes: int) -> object:
    """A raw association that sends a C-STORE-RQ and ``megabytes`` of its
    dataset, then nothing more (the socket is returned, still open)."""
    sock = connect_and_associate(port, calling="STALLER")
    sock.sendall(pdata(1, c_store_rq(1, CT, "1.2.3.4.5.6.7.8.9"), command=True, last=True))
    chunk = bytes(128_000)
    for _ in range(megabytes * MiB // len(chunk)):
        sock.sendall(pdata(1, chunk, command=False, last=False))
    return sock


def test_bytes_in_flight_are_bounded_over_all_associations(tmp_path: Path) -> None:
    """max_incoming 24 MiB. A peer holds a half-sent instance (20 MiB, of
    which 16 MiB are accounted); storescu's 30 MiB instance sharing the
    bound is refused (0xA700, its temp file removed), and once the staller
    is gone the same instance, now alone, is stored even though it is larger
    than the bound."""
    storage = tmp_path / "store"
    srv = Server(storage, tmp_path / "server.log",
                 ["--config", _config(tmp_path, "storage:\n  max_incoming: 24MiB\n  min_free_space: 0\n")])
    big = _image(tmp_path, "big", 30, 1)
    try:
        sock = _stall_half_sent(srv.port, 20)
        try:
            assert wait_until(lambda: any(os.path.getsize(storage / ".incoming" / n) > 19 * MiB for n in incoming(storage)), 30)
            out = storescu(srv, [big])
            assert store_responses(out.stdout) == [(str(big), "Refused: OutOfResources")], out.stdout[-3000:]
            assert len(incoming_while_open(storage)) == 1  # the staller's temp file only
            assert "storage.max_incoming" in srv.log_once_it_says("storage.max_incoming")
        finally:
            sock.sendall(ABORT)  # type: ignore[attr-defined]
            sock.close()  # type: ignore[attr-defined]
        assert wait_until(lambda: not incoming(storage), 30), incoming(storage)
        out = storescu(srv, [big])
        assert acknowledged(out.stdout) == [str(big)], out.stdout[-3000:]
        assert list(check_tree(storage)) == [_uid(big)]
    finally:
        srv.stop()

"""Storage internals that need no peer: filesystem detection (for the
durability write-out), the streaming writer's file and head."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from fastscp._ext.writer import InstanceFile
from fastscp.storage.store import Storage, filesystem_type

MOUNTINFO = """\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
30 22 0:26 / /dev/shm rw,nosuid,nodev shared:5 - tmpfs tmpfs rw
31 22 0:27 / /srv/dicom\\040store rw,relatime shared:6 - xfs /dev/sdb1 rw
32 31 0:28 / /srv/dicom\\040store/ram rw shared:7 - ramfs ramfs rw
"""


def test_filesystem_type_takes_the_longest_mount(tmp_path: Path) -> None:
    info = tmp_path / "mountinfo"
    info.write_text(MOUNTINFO)
    assert filesystem_type("/dev/shm/x", str(info)) == "tmpfs"
    assert filesystem_type("/dev/shmx", str(info)) == "ext4"
    assert filesystem_type("/srv/dicom store/a/b", str(info)) == "xfs"
    assert filesystem_type("/srv/dicom store/ram/a", str(info)) == "ramfs"
    assert filesystem_type("/home", str(info)) == "ext4"
    assert filesystem_type("/x", str(tmp_path / "missing")) == ""


def test_filesystem_type_of_proc() -> None:
    assert filesystem_type("/proc/self") == "proc"


def test_fragments_make_the_file_prefix_first(tmp_path: Path) -> None:
    """The prefix goes out with the first fragment; the file is exactly the
    prefix and the fragments in order, and ``finish`` returns its size."""
    path = tmp_path / "f"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    f = InstanceFile(fd, b"PREFIX", 16)
    chunks = [bytes([i]) * 300_000 for i in range(5)]
    for chunk in chunks:
        f.write(chunk)
    size = f.finish()
    f.close()
    expected = b"PREFIX" + b"".join(chunks)
    assert size == len(expected) == path.stat().st_size
    assert path.read_bytes() == expected


def test_an_empty_dataset_is_the_prefix_alone(tmp_path: Path) -> None:
    path = tmp_path / "e"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    f = InstanceFile(fd, b"PREFIX", 16)
    assert f.finish() == 6 and f.dataset_size == 0
    f.close()
    assert path.read_bytes() == b"PREFIX"


def test_head_keeps_the_first_bytes(tmp_path: Path) -> None:
    fd = os.open(tmp_path / "h", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    f = InstanceFile(fd, b"", 10)
    f.write(b"abcdef")
    f.write(b"ghijklmnop")
    assert f.head == b"abcdefghij" and not f.head_complete and f.dataset_size == 16
    f.close()


CT = "1.2.840.10008.5.1.4.1.1.2"
EXPLICIT_LE = "1.2.840.10008.1.2.1"


def test_begin_streams_into_the_spare_temp_file_it_is_given(tmp_path: Path) -> None:
    storage = Storage(tmp_path / "store")
    spare = storage.open_temp()
    assert Path(spare[1]).parent == storage.incoming and Path(spare[1]).exists()
    incoming = storage.begin(CT, "1.2.3", EXPLICIT_LE, "SENDER", spare)
    assert (incoming.writer.fd, incoming.temp) == spare  # no second file was opened
    assert os.listdir(storage.incoming) == [Path(incoming.temp).name]
    incoming.write(b"\x08\x00\x18\x00UI\x06\x001.2.3\x00", True)
    incoming.abort()
    assert os.listdir(storage.incoming) == []


def test_a_refused_begin_removes_the_spare_it_was_given(tmp_path: Path) -> None:
    storage = Storage(tmp_path / "store", min_free_space=1 << 62)  # never enough space
    spare = storage.open_temp()
    with pytest.raises(OSError) as info:
        storage.begin(CT, "1.2.3", EXPLICIT_LE, "SENDER", spare)
    assert info.value.errno == errno.ENOSPC
    assert os.listdir(storage.incoming) == []
    with pytest.raises(OSError):
        os.fstat(spare[0])  # closed, not leaked


class _FakeVolume:
    """statvfs of a volume of ``size`` bytes with ``free`` free (4 KiB blocks)."""

    def __init__(self, size: int, free: int) -> None:
        self.size, self.free = size, free

    def __call__(self, path: str) -> os.statvfs_result:
        blocks, avail = self.size // 4096, self.free // 4096
        return os.statvfs_result((4096, 4096, blocks, avail, avail, 0, 0, 0, 0, 255))


def test_default_reserve_is_five_percent_of_the_volume_at_most_1_gib(tmp_path: Path) -> None:
    small = Storage(tmp_path / "a", statvfs=_FakeVolume(100 * 2**20, 50 * 2**20))
    assert small.min_free_space == 5 * 2**20
    big = Storage(tmp_path / "b", statvfs=_FakeVolume(2**40, 2**39))
    assert big.min_free_space == 2**30
    assert Storage(tmp_path / "c", min_free_space=0, statvfs=_FakeVolume(2**40, 0)).min_free_space == 0


def test_take_incoming_checks_the_reserve_afresh_and_the_bound_on_shared_bytes(tmp_path: Path) -> None:
    volume = _FakeVolume(2**30, 200 * 2**20)
    storage = Storage(tmp_path / "s", min_free_space=100 * 2**20, max_incoming=40 * 2**20, statvfs=volume)
    step = storage.check_every
    assert storage.take_incoming(step, step) == ""  # 200 MiB free, reserve + 16 MiB needed
    volume.free = 100 * 2**20 + step - 4096  # the next 16 MiB would cross it: seen at once, no cache
    assert "would cross the reserve" in storage.take_incoming(step, 2 * step)
    storage.release_incoming(2 * step)
    volume.free = 2**30
    assert storage.take_incoming(3 * step, 3 * step) == ""  # alone: over max_incoming, still fine
    assert "storage.max_incoming" in storage.take_incoming(step, step)  # another one shares it
    storage.release_incoming(3 * step + step)
    assert storage.incoming_bytes == 0

"""A Success is a file in the tree being served (issue: "Success must mean the
file is in the tree being served").

Every scenario sends through real senders (dcmtk storescu, pynetdicom) to a
real ``fastscp serve`` and then checks the invariant: each SOP Instance UID
the receiver acknowledged is a parseable regular file inside the served
storage tree, holding the dataset bytes that were sent last.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import duckdb
import pydicom
import pytest

from conftest import dataset_bytes, dcmtk, free_port, make_image, wait_for_port
from fastscp.scu.commands import answers_to_the_caller
from reliability import store_responses

pytestmark = pytest.mark.interop


class Receiver:
    """``fastscp serve`` on a given storage tree and index file."""

    def __init__(self, storage: Path, index_db: Path, log: Path, *extra: str) -> None:
        self.storage, self.index_db, self.log = storage, index_db, log
        self.port = free_port()
        self.cmd = [sys.executable, "-m", "fastscp.cli", "serve", str(self.port), "FASTSCP",
                    "--storage-dir", str(storage), "--index-db", str(index_db), "--status-port", "0", *extra]
        self._fh = open(log, "ab")
        self.proc = subprocess.Popen(self.cmd, stdout=self._fh, stderr=subprocess.STDOUT)

    def wait_listening(self) -> Receiver:
        wait_for_port(self.port, self.proc)
        return self

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=60)
        self._fh.close()
        return self.proc.returncode


@pytest.fixture
def receivers(tmp_path: Path) -> Iterator[list[Receiver]]:
    started: list[Receiver] = []
    yield started
    for r in started:
        r.stop()


def start(receivers: list[Receiver], storage: Path, index_db: Path, *extra: str) -> Receiver:
    r = Receiver(storage, index_db, storage.parent / f"{storage.name}-{len(receivers)}.log", *extra)
    receivers.append(r)
    return r.wait_listening()


def storescu(r: Receiver, files: list[Path], *flags: str) -> list[Path]:
    """Send with dcmtk storescu; the files it was answered Success for."""
    out = subprocess.run([dcmtk("storescu"), "-v", "-nh", *flags, "-aec", "FASTSCP", "127.0.0.1", str(r.port),
                          *map(str, files)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                         timeout=300).stdout
    return [Path(f) for f, rsp in store_responses(out) if rsp == "Success"]


def pynetdicom_send(r: Receiver, datasets: list[pydicom.Dataset], calling_ae: str = "PYNETDICOM") -> list[int]:
    from pynetdicom import AE

    ae = AE(ae_title=calling_ae)
    for ds in datasets:
        ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", r.port, ae_title="FASTSCP")
    assert assoc.is_established
    answers_to_the_caller(assoc)
    try:
        return [int(assoc.send_c_store(ds).Status) for ds in datasets]
    finally:
        assoc.release()


def served_copies(storage: Path) -> dict[str, list[Path]]:
    """SOP Instance UID -> regular files holding it inside the served tree
    (symbolic links not followed, hidden places such as .incoming/ left out,
    as reconcile walks it)."""
    found: dict[str, list[Path]] = {}
    stack = [storage]
    while stack:
        for entry in os.scandir(stack.pop()):
            if entry.name.startswith("."):
                continue
            if entry.is_dir(follow_symlinks=False):
                stack.append(Path(entry.path))
            elif entry.is_file(follow_symlinks=False) and entry.name.endswith(".dcm"):
                ds = pydicom.dcmread(entry.path, stop_before_pixels=True)
                found.setdefault(str(ds.SOPInstanceUID), []).append(Path(entry.path))
    return found


def assert_served(storage: Path, acknowledged: list[Path]) -> None:
    """The invariant: each acknowledged instance is a complete file in
    ``storage`` with the dataset bytes last sent for it."""
    copies = served_copies(storage)
    last: dict[str, bytes] = {}
    for path in acknowledged:
        last[str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)] = dataset_bytes(path)
    for uid, sent in last.items():
        assert uid in copies, f"{uid} acknowledged but no file in {storage}"
        assert any(dataset_bytes(p) == sent for p in copies[uid]), f"{uid}: no copy in {storage} has the bytes sent"
        for p in copies[uid]:
            pydicom.dcmread(p)  # parseable, pixel data included


@pytest.fixture
def images(tmp_path: Path) -> list[Path]:
    folder = tmp_path / "images"
    folder.mkdir()
    files = []
    for i in range(20):
        path = folder / f"img{i:02d}.dcm"
        make_image(path, i, study=i % 2)
        files.append(path)
    return files


def test_an_index_of_another_tree_is_refused_and_a_tree_of_its_own_stores_everything(
        tmp_path: Path, images: list[Path], receivers: list[Receiver]) -> None:
    """The issue's reproduction: ./a then ./b with one ./pacs.db."""
    index = tmp_path / "pacs.db"
    a = start(receivers, tmp_path / "a", index)
    acknowledged = storescu(a, images)
    assert len(acknowledged) == 20
    assert a.stop() == 0
    assert_served(tmp_path / "a", acknowledged)

    b = Receiver(tmp_path / "b", index, tmp_path / "b.log")
    receivers.append(b)
    assert b.proc.wait(timeout=60) == 1
    log = (tmp_path / "b.log").read_text()
    line = f"index {index} describes {(tmp_path / 'a').resolve()}, not {(tmp_path / 'b').resolve()}"
    assert line in log and "--index-db" in log and "fastscp reindex" in log
    assert "Traceback" not in log
    assert not (tmp_path / "b").exists()  # the folder this failed start made is removed

    # with an index of its own, ./b stores every image
    b2 = start(receivers, tmp_path / "b", tmp_path / "b.db")
    acknowledged = storescu(b2, images)
    assert len(acknowledged) == 20
    assert_served(tmp_path / "b", acknowledged)


def test_reindex_re_describes_the_index_for_a_moved_tree(
        tmp_path: Path, images: list[Path], receivers: list[Receiver]) -> None:
    """Storage moved to a new path: reindex adopts it; the old tree's rows are
    marked missing, not taken for copies in the new one."""
    index = tmp_path / "pacs.db"
    a = start(receivers, tmp_path / "a", index)
    assert len(storescu(a, images[:10])) == 10
    assert a.stop() == 0
    shutil.copytree(tmp_path / "a", tmp_path / "moved", ignore=shutil.ignore_patterns(".*"))
    # the moved tree lost half of its files on the way: they must be stored again, not "duplicates"
    kept = sorted((tmp_path / "moved").rglob("*.dcm"))
    for path in kept[:5]:
        path.unlink()
    out = subprocess.run([sys.executable, "-m", "fastscp.cli", "reindex", "--storage-dir", str(tmp_path / "moved"),
                          "--index-db", str(index)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    with duckdb.connect(str(index), read_only=True) as conn:
        assert conn.execute("SELECT storage_root FROM catalog_meta").fetchone() == (str((tmp_path / "moved").resolve()),)
        present = conn.execute("SELECT path FROM instances WHERE status = 'present'").fetchall()
    assert len(present) == 5 and all(p.startswith(str((tmp_path / "moved").resolve()) + "/") for (p,) in present)

    moved = start(receivers, tmp_path / "moved", index)
    acknowledged = storescu(moved, images)
    assert len(acknowledged) == 20
    assert_served(tmp_path / "moved", acknowledged)


def test_a_known_copy_that_is_cut_or_leads_outside_the_tree_is_replaced(
        tmp_path: Path, images: list[Path], receivers: list[Receiver]) -> None:
    """While the server runs, the file its duplicate map names is cut short
    (a bad restore) or replaced by a symbolic link to a file outside the tree:
    a re-send must be stored, not answered Success for that file."""
    storage = tmp_path / "store"
    r = start(receivers, storage, tmp_path / "store.db")
    assert len(storescu(r, images[:2])) == 2
    copies = served_copies(storage)
    cut_uid, linked_uid = (str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in images[:2])

    cut = copies[cut_uid][0]
    cut.write_bytes(cut.read_bytes()[:-100])
    linked = copies[linked_uid][0]
    outside = tmp_path / "outside.dcm"
    shutil.move(linked, outside)
    linked.symlink_to(outside)

    acknowledged = storescu(r, images[:2])
    assert len(acknowledged) == 2
    assert_served(storage, acknowledged)
    assert not linked.is_symlink()


def test_a_complete_known_copy_makes_a_re_send_a_duplicate_and_the_index_shows_it(
        tmp_path: Path, images: list[Path], receivers: list[Receiver]) -> None:
    """A re-send of a stored instance (same bytes from dcmtk, other bytes
    from pynetdicom) is answered Success under the default policy without a
    second file, and the instance's row names the last reception."""
    storage, index = tmp_path / "store", tmp_path / "store.db"
    r = start(receivers, storage, index)
    first = storescu(r, images[:1], "-aet", "FIRST")
    assert len(first) == 1
    again = storescu(r, images[:1], "-aet", "AGAIN")
    assert len(again) == 1
    changed = pydicom.dcmread(images[0])
    changed.PatientName = "Changed^Content"
    assert pynetdicom_send(r, [changed], calling_ae="CHANGER") == [0]
    assert r.stop() == 0  # the writer's queue is written before the process ends

    uid = str(changed.SOPInstanceUID)
    assert [len(v) for k, v in served_copies(storage).items() if k == uid] == [1]
    assert_served(storage, first)  # the first copy is kept (policy ignore)
    with duckdb.connect(str(index), read_only=True) as conn:
        row = conn.execute("SELECT calling_ae, duplicate, status FROM instances WHERE sop_instance_uid = ?",
                           [uid]).fetchone()
    assert row == ("CHANGER", "ignored", "present")


def test_a_dropped_identical_re_send_is_recorded_as_identical(
        tmp_path: Path, images: list[Path], receivers: list[Receiver]) -> None:
    storage, index = tmp_path / "store", tmp_path / "store.db"
    r = start(receivers, storage, index)
    assert len(storescu(r, images[:1], "-aet", "FIRST")) == 1
    assert len(storescu(r, images[:1], "-aet", "AGAIN")) == 1
    assert r.stop() == 0
    uid = str(pydicom.dcmread(images[0], stop_before_pixels=True).SOPInstanceUID)
    with duckdb.connect(str(index), read_only=True) as conn:
        row = conn.execute("SELECT calling_ae, duplicate FROM instances WHERE sop_instance_uid = ?", [uid]).fetchone()
    assert row == ("AGAIN", "identical")

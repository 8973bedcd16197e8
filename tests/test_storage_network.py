"""Storage behaviour seen from a real sender (dcmtk storescu): duplicate
policies, hostile attribute values, durable (fsync) mode."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file

from conftest import Server, dataset_bytes, dcmtk, make_image
from test_interop import run_storescu, stored_by_uid

pytestmark = pytest.mark.interop


@pytest.fixture(scope="module")
def original_and_changed(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """CT_small and a copy with the same SOP Instance UID but other content."""
    original = get_testdata_file("CT_small.dcm")
    ds = pydicom.dcmread(original)
    ds.PatientName = "Changed^Name"
    changed = tmp_path_factory.mktemp("dup") / "changed.dcm"
    ds.save_as(changed)
    return original, str(changed)


@pytest.mark.parametrize(
    "policy, statuses, kept",
    [
        ("ignore", ["Success", "Success", "Success"], ["original"]),
        ("reject", ["Success", "Success", "Error: CannotUnderstand"], ["original"]),
        ("overwrite", ["Success", "Success", "Success"], ["changed"]),
        ("keep-both", ["Success", "Success", "Success"], ["original", "changed"]),
    ],
)
def test_duplicate_policies(start_server, original_and_changed, policy: str, statuses: list[str], kept: list[str]) -> None:  # type: ignore[no-untyped-def]
    original, changed = original_and_changed
    srv = start_server("--duplicates", policy)
    # same file twice (same UID, same content: always a no-op success), then other content
    results = run_storescu(srv, [original, original, changed])
    assert [r[1] for r in results] == statuses
    # storescu re-encodes CT_small (drops group lengths), so tell the copies
    # apart by the attribute that differs
    names = {"original": str(pydicom.dcmread(original).PatientName), "changed": "Changed^Name"}
    on_disk = sorted(str(pydicom.dcmread(p).PatientName) for p in srv.stored_files())
    assert on_disk == sorted(names[k] for k in kept)
    assert not srv.incoming()
    log = srv.log_once_it_says("identical", "2 duplicates")
    assert "identical" in log
    assert "2 duplicates" in log


def _hostile_images(root: Path) -> list[Path]:
    values = [
        ("../../etc", "../../../passwd"),
        ("/", "/root/.ssh^x"),
        ("a\x00b", "nul\x00name"),
        ("x" * 60, "N" * 10000),
        ("..", ".."),
        ("CON", "AUX^NUL"),
    ]
    paths = []
    for i, (pid, name) in enumerate(values):
        path = root / f"hostile{i}.dcm"
        ds = make_image(path, i, study=i)
        ds.PatientID = pid
        ds.PatientName = name
        ds.SeriesDescription = "../" * 20
        ds.AccessionNumber = "/etc/shadow"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    # mixed character sets: Latin-1 and Japanese ISO 2022
    for i, (charset, name) in enumerate([("ISO_IR 100", "Müller^Jürgen"), (["ISO 2022 IR 6", "ISO 2022 IR 87"], "山田^太郎")], start=len(paths)):
        path = root / f"charset{i}.dcm"
        ds = make_image(path, i, study=i)
        ds.SpecificCharacterSet = charset
        ds.PatientName = name
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


@pytest.mark.parametrize("naming", ["hierarchical", "date-based", "physician"])
def test_hostile_values_stay_inside_storage(start_server, tmp_path: Path, naming: str) -> None:  # type: ignore[no-untyped-def]
    files = _hostile_images(tmp_path)
    srv = start_server("--naming", naming)
    results = run_storescu(srv, files)
    assert [r[1] for r in results] == ["Success"] * len(files)
    root = srv.storage.resolve()
    stored = srv.stored_files()
    assert len(stored) == len(files)
    for path in stored:
        real = path.resolve()
        assert root in real.parents
        assert all(len(part.encode()) <= 255 and "\x00" not in part for part in real.relative_to(root).parts)
    assert not list(tmp_path.parent.glob("etc")) and not (root.parent / "etc").exists()
    names = "/".join(str(p) for p in stored)
    if naming == "hierarchical":
        assert "Müller" in names and "山田" in names  # decoded, readable
    by_uid = stored_by_uid(srv)
    for f in files:
        assert dataset_bytes(by_uid[str(pydicom.dcmread(f).SOPInstanceUID)]) == dataset_bytes(f)


def test_durable_mode_stores_everything_with_group_commit(start_server, synthetic_corpus: list[Path]) -> None:  # type: ignore[no-untyped-def]
    srv = start_server("--durability", "fsync")
    parts = [synthetic_corpus[i::3] for i in range(3)]
    procs = [subprocess.Popen([dcmtk("storescu"), "-aec", srv.ae_title, "127.0.0.1", str(srv.port), *map(str, part)],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for part in parts]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    assert len(srv.stored_files()) == len(synthetic_corpus)
    assert srv.stop() == 0
    line = next(l for l in srv.log_text().splitlines() if "group commit:" in l)
    found = re.search(r"group commit: (\d+) instances in (\d+) syncs, (\d+) files written out "
                      r"\((\d+) on the event loop: one association open\)", line)
    assert found, line
    instances, syncs, written, _inline = (int(g) for g in found.groups())
    assert written == len(synthetic_corpus)
    # every instance took part in one sync (after its data was written out
    # and it was renamed); a sync may serve several instances where the
    # associations overlap (tests/test_durable_faults.py pins each path)
    assert instances == len(synthetic_corpus)
    assert 0 < syncs <= instances

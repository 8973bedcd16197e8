"""Duplicate policy: the decision table, the UID index, and the guard that
applies them to real Part-10 files on disk."""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.uid import ExplicitVRLittleEndian

from fastscp.services.storage import ANSWERS
from fastscp.storage.duplicates import (
    DuplicateGuard,
    DuplicatePolicy,
    Outcome,
    Place,
    SeenInstances,
    decide,
    file_content_hash,
    new_content_hash,
    uid_in_file,
)

IGNORE, REJECT, OVERWRITE, KEEP_BOTH = (DuplicatePolicy(p) for p in ("ignore", "reject", "overwrite", "keep-both"))

# -- the pure decision table ----------------------------------------------------------

TABLE = [
    # policy, seen, same content -> outcome, status, where the received copy goes
    (IGNORE, False, False, Outcome.STORED, 0x0000, Place.TARGET),
    (REJECT, False, False, Outcome.STORED, 0x0000, Place.TARGET),
    (OVERWRITE, False, False, Outcome.STORED, 0x0000, Place.TARGET),
    (KEEP_BOTH, False, False, Outcome.STORED, 0x0000, Place.TARGET),
    (IGNORE, True, True, Outcome.IDENTICAL, 0x0000, Place.NOWHERE),
    (REJECT, True, True, Outcome.IDENTICAL, 0x0000, Place.NOWHERE),
    (OVERWRITE, True, True, Outcome.IDENTICAL, 0x0000, Place.NOWHERE),
    (KEEP_BOTH, True, True, Outcome.IDENTICAL, 0x0000, Place.NOWHERE),
    (IGNORE, True, False, Outcome.IGNORED, 0x0000, Place.NOWHERE),
    (REJECT, True, False, Outcome.REJECTED, 0xCD01, Place.NOWHERE),
    (OVERWRITE, True, False, Outcome.OVERWRITTEN, 0x0000, Place.TARGET),
    (KEEP_BOTH, True, False, Outcome.KEPT_BOTH, 0x0000, Place.VERSION),
]


@pytest.mark.parametrize("policy, seen, same, outcome, status, place", TABLE)
def test_decision_table(policy, seen, same, outcome, status, place):
    decision = decide(policy, seen, same)
    assert (decision.outcome, ANSWERS[decision.outcome][0], decision.place) == (outcome, status, place)
    assert decision.write == (place is not Place.NOWHERE)
    assert decision.replaces_previous == (outcome is Outcome.OVERWRITTEN)


def test_reject_is_a_cxxx_failure_with_a_short_error_comment():
    status, comment = ANSWERS[decide(REJECT, True, False).outcome]  # the service's answer for it
    assert status == 0xCD01
    assert 0xC000 <= status <= 0xCFFF  # PS3.4 Table B.2-1 "Error: Cannot understand"
    assert 0 < len(comment) <= 64  # Error Comment (0000,0902) is LO


def test_policy_names():
    assert [p.value for p in DuplicatePolicy] == ["ignore", "reject", "overwrite", "keep-both"]
    assert DuplicatePolicy.parse("keep-both") is KEEP_BOTH
    assert DuplicatePolicy.parse(REJECT) is REJECT
    with pytest.raises(ValueError, match="ignore, reject, overwrite, keep-both"):
        DuplicatePolicy.parse("keep_both")


def test_outcome_labels_for_instance_info():
    assert Outcome.STORED.label == ""
    assert Outcome.IGNORED.label == "ignored" and Outcome.KEPT_BOTH.label == "kept-both"


# -- the index -------------------------------------------------------------------------------


def test_seen_instances_warm_lookup_record_forget():
    index = SeenInstances([("1.1", "a/1.dcm", "h1"), ("1.2", "a/2.dcm", "h2")])
    assert len(index) == 2 and "1.1" in index and "9" not in index
    assert index.warm(iter([("1.3", "a/3.dcm", "h3"), ("1.1", "b/1.dcm", "h1b")])) == 2
    assert index.lookup("1.1") == ("b/1.dcm", "h1b")  # later rows win
    index.record("1.4", "a/4.dcm", "h4")
    assert index.lookup("1.4") == ("a/4.dcm", "h4")
    index.forget("1.4")
    index.forget("never-there")
    assert index.lookup("1.4") is None and len(index) == 3


# -- content hash of stored files ---------------------------------------------------------


def make_dataset(uid: str, comment: str = "first") -> pydicom.Dataset:
    ds = pydicom.Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    ds.SOPInstanceUID = uid
    ds.PatientID = "P1"
    ds.ImageComments = comment
    ds.file_meta = pydicom.dataset.FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = uid
    return ds


def dataset_hash(ds: pydicom.Dataset) -> str:
    """What the receiver computes while streaming: the hash of the dataset bytes."""
    buffer = DicomBytesIO()
    buffer.is_little_endian, buffer.is_implicit_VR = True, False
    write_dataset(buffer, ds)
    digest = new_content_hash()
    digest.update(buffer.getvalue())
    return digest.hexdigest()


def store(path: Path, uid: str, comment: str = "first") -> str:
    ds = make_dataset(uid, comment)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return dataset_hash(ds)


def test_file_content_hash_is_the_streamed_dataset_hash(tmp_path: Path):
    expected = store(tmp_path / "a.dcm", "1.2.3")
    assert file_content_hash(tmp_path / "a.dcm") == expected
    assert len(expected) == 32  # 128 bits
    assert store(tmp_path / "b.dcm", "1.2.3", "second") != expected
    (tmp_path / "junk.dcm").write_bytes(b"not dicom")
    assert file_content_hash(tmp_path / "junk.dcm") is None
    assert file_content_hash(tmp_path / "missing.dcm") is None


def test_uid_in_file(tmp_path: Path):
    store(tmp_path / "a.dcm", "1.2.3")
    (tmp_path / "junk.dcm").write_bytes(b"\x00" * 10)
    assert uid_in_file(tmp_path / "a.dcm") == "1.2.3"
    assert uid_in_file(tmp_path / "junk.dcm") == ""  # occupied by something that is not ours
    assert uid_in_file(tmp_path / "missing.dcm") is None


# -- the guard: policy + index + disk -------------------------------------------------------


@pytest.fixture
def first(tmp_path: Path) -> tuple[Path, str]:
    """An instance 1.2.3 stored at P1/1.dcm and recorded in the index."""
    path = tmp_path / "P1" / "1.dcm"
    return path, store(path, "1.2.3")


def guard_for(tmp_path: Path, policy: str, first: tuple[Path, str]) -> DuplicateGuard:
    guard = DuplicateGuard(tmp_path, policy)
    guard.stored("1.2.3", first[0], first[1])
    return guard


def test_guard_new_instance(tmp_path: Path):
    guard = DuplicateGuard(tmp_path)
    res = guard.resolve("7.7.7", "abc", tmp_path / "P1" / "7.dcm")
    assert res.decision.outcome is Outcome.STORED and res.path == tmp_path / "P1" / "7.dcm" and res.previous is None


def test_guard_records_relative_paths(tmp_path: Path, first):
    guard = guard_for(tmp_path, "ignore", first)
    assert guard.index.lookup("1.2.3") == ("P1/1.dcm", first[1])


@pytest.mark.parametrize("policy", ["ignore", "reject", "overwrite", "keep-both"])
def test_guard_same_uid_same_content_is_always_a_noop(tmp_path: Path, first, policy: str):
    res = guard_for(tmp_path, policy, first).resolve("1.2.3", first[1], first[0])
    assert res.decision.outcome is Outcome.IDENTICAL and ANSWERS[res.decision.outcome][0] == 0
    assert res.path is None and res.previous == first[0]


@pytest.mark.parametrize(
    "policy, outcome, status, where",
    [
        ("ignore", Outcome.IGNORED, 0x0000, None),
        ("reject", Outcome.REJECTED, 0xCD01, None),
        ("overwrite", Outcome.OVERWRITTEN, 0x0000, "P1/1.dcm"),
        ("keep-both", Outcome.KEPT_BOTH, 0x0000, "P1/1_v2.dcm"),
    ],
)
def test_guard_same_uid_other_content(tmp_path: Path, first, policy, outcome, status, where):
    res = guard_for(tmp_path, policy, first).resolve("1.2.3", "0" * 32, first[0])
    assert res.decision.outcome is outcome and ANSWERS[res.decision.outcome][0] == status
    assert res.path == (None if where is None else tmp_path / where)
    assert res.previous == first[0]


def test_guard_overwrite_moves_a_corrected_instance(tmp_path: Path, first):
    res = guard_for(tmp_path, "overwrite", first).resolve("1.2.3", "0" * 32, tmp_path / "P1-corrected" / "1.dcm")
    assert res.path == tmp_path / "P1-corrected" / "1.dcm"
    assert res.previous == first[0] and res.decision.replaces_previous  # old copy to remove after the rename


def test_guard_unknown_hash_is_not_identical(tmp_path: Path, first):
    res = guard_for(tmp_path, "reject", first).resolve("1.2.3", "", first[0])
    assert res.decision.outcome is Outcome.REJECTED


def test_guard_keep_both_counts_versions(tmp_path: Path, first):
    guard = guard_for(tmp_path, "keep-both", first)
    (tmp_path / "P1" / "1_v2.dcm").touch()
    assert guard.resolve("1.2.3", "f" * 32, first[0]).path == tmp_path / "P1" / "1_v3.dcm"


def test_guard_forgets_files_removed_behind_its_back(tmp_path: Path, first):
    guard = guard_for(tmp_path, "reject", first)
    first[0].unlink()
    res = guard.resolve("1.2.3", "0" * 32, first[0])
    assert res.decision.outcome is Outcome.STORED and res.path == first[0]
    assert "1.2.3" not in guard.index


def test_guard_cold_index_still_sees_the_file_on_disk(tmp_path: Path, first):
    cold = DuplicateGuard(tmp_path, "reject")  # nothing warmed
    same = cold.resolve("1.2.3", first[1], first[0])
    assert same.decision.outcome is Outcome.IDENTICAL  # hash read back from the file
    other = cold.resolve("1.2.3", "0" * 32, first[0])
    assert other.decision.outcome is Outcome.REJECTED and other.previous == first[0]


def test_guard_collision_with_a_different_instance_gets_a_suffix(tmp_path: Path, first):
    guard = DuplicateGuard(tmp_path, "overwrite")
    res = guard.resolve("9.9.9", "abc", first[0])  # same path, other SOP Instance UID
    assert res.decision.outcome is Outcome.STORED and res.path == tmp_path / "P1" / "1_2.dcm"
    store(tmp_path / "P1" / "1_2.dcm", "9.9.9")
    again = guard.resolve("8.8.8", "abc", first[0])
    assert again.path == tmp_path / "P1" / "1_3.dcm"


# -- a duplicate is answered Success only for a complete copy in the served tree ------------


def test_guard_does_not_take_a_copy_outside_the_served_tree(tmp_path: Path):
    """A map entry (warmed from an index of another tree, say) that names a
    complete copy outside the storage directory is not a duplicate."""
    served = tmp_path / "served"
    served.mkdir()
    elsewhere = tmp_path / "other" / "1.dcm"
    guard = DuplicateGuard(served, "ignore")
    guard.stored("1.2.3", elsewhere, store(elsewhere, "1.2.3"))
    res = guard.resolve("1.2.3", "0" * 32, served / "P1" / "1.dcm")
    assert res.decision.outcome is Outcome.STORED and res.path == served / "P1" / "1.dcm"
    assert "1.2.3" not in guard.index


def test_guard_does_not_take_a_file_in_incoming_for_a_copy(tmp_path: Path):
    guard = DuplicateGuard(tmp_path, "reject")
    temp = tmp_path / ".incoming" / "x.part"
    guard.stored("1.2.3", temp, store(temp, "1.2.3"))
    assert guard.resolve("1.2.3", "0" * 32, tmp_path / "P1" / "1.dcm").decision.outcome is Outcome.STORED


@pytest.mark.parametrize("damage", ["cut", "other-instance", "symlink-out"])
@pytest.mark.parametrize("warm", [True, False], ids=["known", "cold"])
def test_guard_replaces_a_copy_that_cannot_stand_for_the_instance(tmp_path: Path, first, damage: str, warm: bool):
    """The stored copy was cut short, replaced by another instance's file,
    or by a link out of the tree: the received copy is stored at its place."""
    path = first[0]
    if damage == "cut":
        path.write_bytes(path.read_bytes()[:-7])
    elif damage == "other-instance":
        store(path, "9.9.9")
    else:
        outside = tmp_path.parent / f"{tmp_path.name}-outside.dcm"
        path.rename(outside)
        path.symlink_to(outside)
    guard = guard_for(tmp_path, "reject", first) if warm else DuplicateGuard(tmp_path, "reject")
    res = guard.resolve("1.2.3", first[1], path)
    assert res.decision.outcome is Outcome.STORED
    assert res.path is not None and res.path.parent == path.parent
    if damage != "other-instance":
        assert res.path == path  # the broken copy of this instance is replaced in place

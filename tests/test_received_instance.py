"""The data that crosses the C-STORE path's seams is frozen: the received
``InstanceInfo``, ``Storage.place``'s ``Placement``; and the service maps
every storage outcome to its answer in one table."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from conftest import make_image
from fastscp.instance import InstanceInfo
from fastscp.protocol import dimse as D
from fastscp.services.storage import ANSWERS
from fastscp.storage.duplicates import Outcome, file_content_hash
from fastscp.storage.incoming import Reception, Refusal, Refused
from fastscp.storage.store import Placement, Storage

CT = "1.2.840.10008.5.1.4.1.1.2"
EXPLICIT_LE = "1.2.840.10008.1.2.1"


def test_instance_info_is_frozen_and_its_steps_make_new_values() -> None:
    parsed = InstanceInfo.from_fields({"sop_class_uid": CT, "sop_instance_uid": "1.2.3",
                                       "transfer_syntax_uid": EXPLICIT_LE, "patient_id": "P1"})
    assert parsed == InstanceInfo(CT, "1.2.3", EXPLICIT_LE, patient_id="P1")
    with pytest.raises(dataclasses.FrozenInstanceError):
        parsed.path = "/elsewhere"  # type: ignore[misc]
    received = parsed.received(sop_class_uid=CT, calling_ae="SCU", called_ae="FASTSCP", peer="127.0.0.1:1",
                               association_id="a-1", received_at=5.0, dataset_size=10, file_size=20,
                               content_hash="ab", header=None)
    placed = received.placed("/store/1.dcm", "overwritten")
    assert received == dataclasses.replace(parsed, calling_ae="SCU", called_ae="FASTSCP", peer="127.0.0.1:1",
                                           association_id="a-1", received_at=5.0, dataset_size=10, file_size=20,
                                           content_hash="ab")
    assert placed == dataclasses.replace(received, path="/store/1.dcm", duplicate="overwritten")
    assert (parsed.calling_ae, received.path, received.duplicate) == ("", "", "")  # each step left its input alone
    InstanceInfo.check_field_names(["patient_id", "specific_character_set", "sop_class_uid"])
    with pytest.raises(TypeError, match="\\['colour'\\]"):
        InstanceInfo.check_field_names(["patient_id", "colour"])


def test_every_storage_outcome_has_an_answer() -> None:
    assert set(ANSWERS) == set(Outcome) | set(Refusal)
    assert {outcome for outcome in Outcome if ANSWERS[outcome][0] != D.SUCCESS} == {Outcome.REJECTED}
    assert ANSWERS[Outcome.REJECTED] == (0xCD01, "Duplicate SOP Instance UID with other content; first copy kept")
    assert all(status != D.SUCCESS and comment for status, comment in (ANSWERS[r] for r in Refusal))


def _arrive(storage: Storage, source: Path, uid: str, content_hash: str) -> tuple[str, InstanceInfo]:
    """A temp file holding ``source`` (as the receiver leaves it before the
    rename) and its received InstanceInfo."""
    fd, temp = storage.open_temp()
    with open(fd, "wb") as out:
        out.write(source.read_bytes())
    return temp, InstanceInfo(CT, uid, EXPLICIT_LE, patient_id="P1", content_hash=content_hash)


@pytest.mark.parametrize("policy, outcome", [("ignore", Outcome.IGNORED), ("reject", Outcome.REJECTED)])
def test_place_says_what_it_did_and_leaves_the_received_instance_alone(
        tmp_path: Path, policy: str, outcome: Outcome) -> None:
    storage = Storage(tmp_path / "store", duplicates=policy, min_free_space=0)
    source = tmp_path / "a.dcm"
    uid = str(make_image(source, 1, study=1).SOPInstanceUID)
    digest = file_content_hash(source) or ""
    temp, received = _arrive(storage, source, uid, digest)
    first = storage.place(temp, received)
    assert first == Placement(Outcome.STORED, str(storage.directory / f"{uid}.dcm"), True, "")
    assert (received.path, received.duplicate) == ("", "")
    assert Path(first.path).read_bytes() == source.read_bytes()

    temp, again = _arrive(storage, source, uid, digest)  # the same content again
    assert storage.place(temp, again) == Placement(Outcome.IDENTICAL, first.path, False, "identical")
    assert not Path(temp).exists()

    temp, other = _arrive(storage, source, uid, "0" * 32)  # the same UID, other content
    dropped = storage.place(temp, other)
    assert dropped == Placement(outcome, first.path, False, outcome.value)  # the path is the copy kept
    assert (other.path, other.duplicate) == ("", "")
    assert not Path(temp).exists() and list(storage.incoming.iterdir()) == []


def test_an_incoming_instance_finishes_into_the_received_instance(tmp_path: Path) -> None:
    storage = Storage(tmp_path / "store", min_free_space=0)
    source = tmp_path / "a.dcm"
    ds = make_image(source, 1, study=1)
    raw = source.read_bytes()
    dataset = raw[144 + int.from_bytes(raw[140:144], "little"):]
    reception = Reception("SCU", "FASTSCP", "127.0.0.1:9", "a-7")

    incoming = storage.begin(CT, str(ds.SOPInstanceUID), EXPLICIT_LE, "SCU")
    incoming.write(dataset[:100], False)
    incoming.write(dataset[100:], True)
    received = incoming.finish(reception)
    assert (received.sop_instance_uid, received.patient_id) == (str(ds.SOPInstanceUID), str(ds.PatientID))
    assert (received.calling_ae, received.called_ae, received.peer, received.association_id) == (
        "SCU", "FASTSCP", "127.0.0.1:9", "a-7")
    assert received.dataset_size == len(dataset) and received.content_hash == file_content_hash(source)
    assert received.file_size == Path(incoming.temp).stat().st_size
    assert (received.path, received.duplicate) == ("", "")  # placing it is Storage.place's
    with pytest.raises(dataclasses.FrozenInstanceError):
        received.calling_ae = "OTHER"  # type: ignore[misc]
    incoming.abort()
    assert list(storage.incoming.iterdir()) == []

    wrong = storage.begin(CT, "1.2.3.4", EXPLICIT_LE, "SCU")  # the command names another instance
    wrong.write(dataset, True)
    with pytest.raises(Refused) as refused:
        wrong.finish(reception)
    assert refused.value.refusal is Refusal.INSTANCE_UID_DIFFERS
    wrong.abort()
    cut = storage.begin(CT, str(ds.SOPInstanceUID), EXPLICIT_LE, "SCU")
    cut.write(dataset[:-3], True)  # the pixel data ends short
    with pytest.raises(Refused) as refused:
        cut.finish(reception)
    assert refused.value.refusal is Refusal.DATASET_TRUNCATED
    cut.abort()
    assert list(storage.incoming.iterdir()) == []

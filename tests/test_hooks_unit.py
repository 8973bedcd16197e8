"""Hook templates, the command runner, the worker pool and the study tracker,
without a server."""

from __future__ import annotations

import dataclasses
import os
import select
import sys
import threading
import time
from pathlib import Path

import pytest

from fastscp.instance import InstanceInfo
from fastscp.pipeline.hooks import (
    INSTANCE_PLACEHOLDERS,
    CallbackTask,
    HookCommand,
    HookRunner,
    clean_value,
    run_command,
)
from fastscp.pipeline.studies import StudyRecord, StudyTracker, study_folder


def test_placeholders_are_substituted_inside_single_arguments() -> None:
    cmd = HookCommand(["/bin/x", "--file={path}", "{{literal}}", "{calling_ae}-{called_ae}"], INSTANCE_PLACEHOLDERS)
    argv = cmd.expand({"path": "/a b/c;$(rm -rf /)", "calling_ae": "A", "called_ae": "B"})
    assert argv == ["/bin/x", "--file=/a b/c;$(rm -rf /)", "{literal}", "A-B"]


@pytest.mark.parametrize("arg, message", [("{paht}", "unknown placeholder {paht}"), ("{path", "unmatched brace"),
                                          ("x}", "unmatched brace")])
def test_bad_templates_are_refused(arg: str, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("{", r"\{")):
        HookCommand(["/bin/x", arg], INSTANCE_PLACEHOLDERS)


def test_nul_is_removed_from_values() -> None:
    assert clean_value("a\x00b") == "ab" and clean_value(None) == "" and clean_value(3) == "3"


def test_run_command_kills_the_whole_group_at_timeout(tmp_path: Path) -> None:
    pidfile = tmp_path / "child"
    # sh starts in milliseconds, so the child's pid is written long before the timeout even on a loaded machine
    script = 'sleep 60 & echo $! > "$0"; wait'
    t0 = time.monotonic()
    res = run_command(["/bin/sh", "-c", script, str(pidfile)], None, timeout=2.0)
    assert res.timed_out and not res.ok
    assert 1.9 <= time.monotonic() - t0 < 6
    child = int(pidfile.read_text())
    # the child's end is an event: its pidfd turns readable (a pid already reaped has none)
    try:
        pidfd = os.pidfd_open(child)
    except ProcessLookupError:
        return
    try:
        assert select.select([pidfd], [], [], 10)[0], f"the hook's child {child} outlived the timeout"
    finally:
        os.close(pidfd)
    status = Path(f"/proc/{child}/status")
    assert not status.exists() or "State:\tZ" in status.read_text()


def test_run_command_output_and_status() -> None:
    res = run_command([sys.executable, "-c", "import sys; print('out'); print('err', file=sys.stderr); sys.exit(4)"],
                      None, timeout=10)
    assert res.returncode == 4 and "out" in res.output and "err" in res.output
    missing = run_command(["/nonexistent/hook"], None, timeout=1)
    assert missing.returncode is None and missing.error


def test_runner_keeps_what_did_not_run_at_stop() -> None:
    runner = HookRunner(workers=1)
    runner.start()
    started = threading.Event()

    def slow(cancel: threading.Event) -> None:
        started.set()
        cancel.wait(30)

    done: list[int] = []
    first = CallbackTask(slow, "slow")
    runner.submit(first)
    later = [CallbackTask(lambda c, i=i: done.append(i), f"t{i}") for i in range(3)]
    for t in later:
        runner.submit(t)
    assert started.wait(5)
    t0 = time.monotonic()
    left = runner.stop(grace=0.3)
    assert time.monotonic() - t0 < 5
    assert left[0] is first and left[1:] == later and done == []


def test_runner_drops_instance_tasks_past_its_bound() -> None:
    runner = HookRunner(workers=1, max_pending=2)  # not started: nothing is taken
    assert runner.submit(CallbackTask(lambda c: None), droppable=True)
    assert runner.submit(CallbackTask(lambda c: None), droppable=True)
    assert not runner.submit(CallbackTask(lambda c: None), droppable=True)
    assert runner.submit(CallbackTask(lambda c: None), droppable=False)  # study work is never dropped
    assert runner.dropped == 1


def info(study: str, series: str, n: int, assoc: str, path: str = "", echo: str = "") -> InstanceInfo:
    return InstanceInfo(sop_class_uid="1.2", sop_instance_uid=f"{study}.{series}.{n}", transfer_syntax_uid="1.2.840.10008.1.2.1",
                        study_instance_uid=study, series_instance_uid=series, instance_number=n, association_id=assoc,
                        path=path or f"/s/{study}/{series}/{n}.dcm", echo_numbers=echo, received_at=1000.0 + n,
                        calling_ae=f"AE{assoc}", series_number=int(series[-1]) if series[-1].isdigit() else None)


def test_interleaved_studies_complete_by_idle_time_each() -> None:
    t = StudyTracker(study_timeout=10)
    for k in range(6):
        t.instance(info("A", "A1", k, "x"), now=k)
        t.instance(info("B", "B1", k, "y"), now=k)
    t.instance(info("B", "B2", 9, "z"), now=8)
    assert t.due(14) == []
    done = t.due(15)
    assert [r.study_uid for r in done] == ["A"] and done[0].count == 6 and done[0].reason == "timeout"
    assert t.next_due() == 18
    done = t.due(18)
    assert [r.study_uid for r in done] == ["B"] and done[0].count == 7 and len(done[0].series) == 2
    assert done[0].calling_aes == ["AEy", "AEz"]
    assert t.open == {}


def test_release_completes_only_when_no_other_association_brings_the_study() -> None:
    t = StudyTracker(study_timeout=100, complete_on_release=True)
    t.instance(info("A", "A1", 1, "x"), now=0)
    t.instance(info("A", "A1", 2, "y"), now=0)
    t.instance(info("C", "C1", 1, "y"), now=0)
    assert t.association_ended("x", released=True) == []  # y still sends A
    assert t.association_ended("y", released=False) == []  # an abort completes nothing
    t.instance(info("A", "A1", 3, "w"), now=1)
    done = t.association_ended("w", released=True)
    assert [r.study_uid for r in done] == ["A"] and done[0].reason == "release" and done[0].count == 3
    assert list(t.open) == ["C"]


def test_release_does_nothing_without_the_option() -> None:
    t = StudyTracker(study_timeout=100)
    t.instance(info("A", "A1", 1, "x"), now=0)
    assert t.association_ended("x", released=True) == []


def test_middle_image_and_echo_numbers() -> None:
    rec = StudyRecord("S")
    for n in (5, 1, 3, 2, 4):
        rec.add(info("S", "S1", n, "a", echo="1\\2" if n % 2 else "2"), now=0)
    s = rec.series["S1"]
    assert s.middle_path() == "/s/S/S1/3.dcm"
    assert s.echo_numbers == ["1", "2"]


def test_records_round_trip_through_json() -> None:
    rec = StudyRecord("S")
    rec.add(info("S", "S1", 1, "a"), now=0)
    back = StudyRecord.from_json(rec.to_json())
    assert back.study_uid == "S" and back.count == 1 and back.series["S1"].instances == [(1, "/s/S/S1/1.dcm")]


def test_study_fields_take_the_first_instance_that_has_them() -> None:
    """Each study field (patient, accession, dates, description, referring
    physician, institution) is the first non-empty value the study's
    instances bring; a later instance changes none of them, nor a value
    the record had before (restored from JSON, or set on it)."""
    rec = StudyRecord("S")
    first = info("S", "S1", 1, "a")
    assert first.patient_name == "" and first.institution_name == ""
    rec.add(first, now=0)
    assert rec.patient_name == "" and rec.institution == ""
    second = dataclasses.replace(info("S", "S1", 2, "a"), patient_id="P1", patient_name="DOE^JO",
                                 patient_sex="F", accession_number="ACC1", study_date="20240101",
                                 referring_physician="REF^A", institution_name="Here")
    rec.add(second, now=1)
    third = dataclasses.replace(second, sop_instance_uid="S.S1.3", patient_name="OTHER^X", accession_number="ACC2",
                                institution_name="There", study_description="Later", study_time="101500")
    rec.add(third, now=2)
    assert (rec.patient_id, rec.patient_name, rec.patient_sex, rec.accession, rec.study_date,
            rec.referring_physician, rec.institution) == ("P1", "DOE^JO", "F", "ACC1", "20240101", "REF^A", "Here")
    assert (rec.study_description, rec.study_time) == ("Later", "101500")  # empty until the third
    assert "_unfilled" not in rec.to_json()
    back = StudyRecord.from_json({**rec.to_json(), "patient_birth_date": ""})
    back.add(dataclasses.replace(third, patient_birth_date="19700101", patient_name="NEW^ONE"), now=3)
    assert back.patient_name == "DOE^JO" and back.patient_birth_date == "19700101"
    later = StudyRecord("T")
    later.patient_sex = "M"  # set on the record, not by add
    later.add(dataclasses.replace(second, study_instance_uid="T"), now=0)
    assert later.patient_sex == "M" and later.patient_id == "P1"


def test_restore_counts_idle_time_from_the_last_instance() -> None:
    t = StudyTracker(study_timeout=60)
    rec = StudyRecord("S", last_wall=1000.0)
    t.restore(rec, now=500.0, wall_now=1050.0)
    assert t.due(509.0) == [] and len(t.due(510.0)) == 1


@pytest.mark.parametrize("layout, single, expect", [
    ("P/20240101_ACC/{s}_CT/{n}.dcm", False, "P/20240101_ACC"),
    ("P/20240101_ACC/{s}_CT/{n}.dcm", True, "P/20240101_ACC"),
    ("Smith/20240101_Doe_ACC/Dicom/{s}_T2/00{s}-001-{n}.dcm", False, "Smith/20240101_Doe_ACC"),
    ("Smith/20240101_Doe_ACC/Dicom/{s}_T2/00{s}-001-{n}.dcm", True, "Smith/20240101_Doe_ACC"),
    ("2024/01/01/STUDY/SER{s}/{n}.dcm", False, "2024/01/01/STUDY"),
    ("{n}{s}.dcm", False, "scan_sheets/S"),
])
def test_study_folder_for_each_layout(tmp_path: Path, layout: str, single: bool, expect: str) -> None:
    rec = StudyRecord("S")
    for s in ([1] if single else [1, 2]):
        for n in range(2):
            rec.add(info("S", f"S{s}", n, "a", path=str(tmp_path / layout.format(s=s, n=n))), now=0)
    assert study_folder(rec, tmp_path) == tmp_path / expect


@pytest.mark.parametrize("yaml_text, tracks", [("", True), ("hooks:\n  scan_sheets: false\n", False),
                                               ("hooks:\n  scan_sheets: false\n  on_study_complete: [/bin/true]\n",
                                                True)])
def test_scan_sheets_key_decides_whether_studies_are_tracked(tmp_path: Path, yaml_text: str, tracks: bool) -> None:
    from fastscp.config import load_config
    from fastscp.pipeline.service import Pipeline, PipelineSettings

    cfg_file = tmp_path / "fastscp.yaml"
    cfg_file.write_text(yaml_text)
    cfg = load_config(cfg_file)
    settings = PipelineSettings.from_config(cfg.hooks, tmp_path)
    assert settings.scan_sheets is (yaml_text == "")
    assert settings.tracks_studies is tracks
    assert Pipeline(settings).active is tracks  # inactive: not an observer at all (app.py)

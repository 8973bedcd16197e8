"""Hooks over real sockets: a ``fastscp serve`` process, dcmtk storescu as the
sender, and a hook script that records its argv and environment."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pydicom
import pytest

from conftest import Server, dcmtk, make_image

HOOK = """#!{python}
import json, os, sys, time
rec = {{"argv": sys.argv[1:], "env": {{k: v for k, v in os.environ.items() if k.startswith("FASTSCP_")}},
        "pid": os.getpid(), "t": time.time()}}
with open({out!r}, "a") as fh:
    fh.write(json.dumps(rec) + "\\n")
mode = {mode!r}
if mode == "hang":
    time.sleep(120)
elif mode == "fail":
    print("hook says no", file=sys.stderr)
    sys.exit(3)
"""


def hook_script(tmp_path: Path, name: str, mode: str = "record") -> tuple[Path, Path]:
    out = tmp_path / f"{name}.jsonl"
    script = tmp_path / f"{name}.py"
    script.write_text(HOOK.format(python=sys.executable, out=str(out), mode=mode))
    script.chmod(0o755)
    return script, out


def records(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def wait_for(fn, timeout: float = 20.0, step: float = 0.1):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = fn()
        if value:
            return value
        time.sleep(step)
    return fn()


def storescu(srv: Server, files: list[Path], aet: str = "SENDER") -> subprocess.CompletedProcess[str]:
    return subprocess.run([dcmtk("storescu"), "-aet", aet, "-aec", srv.ae_title, "127.0.0.1", str(srv.port),
                           *map(str, files)], capture_output=True, text=True, timeout=120)


def one_study(d: Path, n: int, study: int) -> list[Path]:
    """``n`` images of one study in a new folder ``d``."""
    d.mkdir()
    files = [d / f"{i}.dcm" for i in range(n)]
    for i, f in enumerate(files):
        make_image(f, i, study=study)
    return files


def two_interleaved_studies(d: Path) -> tuple[list[Path], dict[str, list[pydicom.Dataset]]]:
    d.mkdir()
    files, by_study = [], {}
    for i in range(24):
        study = i % 2
        path = d / f"i{i:03d}.dcm"
        ds = make_image(path, i, study=study, modality="MR" if study else "CT", size=32, series=1 + (i // 2) % 3)
        files.append(path)
        by_study.setdefault(str(ds.StudyInstanceUID), []).append(ds)
    return files, by_study


def test_instance_and_study_hooks_after_interleaved_flood(start_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    inst, inst_out = hook_script(tmp_path, "inst")
    study, study_out = hook_script(tmp_path, "study")
    files, by_study = two_interleaved_studies(tmp_path / "src")
    srv = start_server("--exec-on-reception", f"{inst} {{path}} {{sop_uid}} {{study_uid}} {{calling_ae}} {{called_ae}}",
                       "--exec-on-study", f"{study} {{study_uid}} {{study_dir}} {{count}} {{series_count}} {{scan_sheet}}",
                       "--study-timeout", "1.5")
    # two associations at once, each carrying instances of both studies
    halves = [[f for i, f in enumerate(files) if (i // 2) % 2 == k] for k in (0, 1)]
    procs = [subprocess.Popen([dcmtk("storescu"), "-aet", f"SENDER{k}", "-aec", srv.ae_title, "127.0.0.1",
                               str(srv.port), *map(str, halves[k])],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for k in (0, 1)]
    for p in procs:
        assert p.wait(timeout=120) == 0, p.stdout.read() if p.stdout else ""
    stored = srv.stored_files()
    assert len(stored) == len(files)

    studies = wait_for(lambda: len(records(study_out)) >= 2 and records(study_out), timeout=30)
    time.sleep(2.0)  # nothing more may come
    studies = records(study_out)
    assert len(studies) == 2, studies
    # instance hooks are queued (two workers): under load the last may run
    # after the study hooks; wait for them, do not assume they are done
    instances = wait_for(lambda: len(records(inst_out)) >= len(files) and records(inst_out), timeout=60)
    assert len(instances) == len(files)

    # on_instance: one per instance, with the right values
    sop_by_path = {str(p): pydicom.dcmread(p, stop_before_pixels=True) for p in stored}
    seen = set()
    for rec in instances:
        path, sop, study_uid, calling, called = rec["argv"]
        ds = sop_by_path[path]
        assert sop == ds.SOPInstanceUID and study_uid == ds.StudyInstanceUID
        assert calling in ("SENDER0", "SENDER1") and called == srv.ae_title
        assert rec["env"]["FASTSCP_PATH"] == path and rec["env"]["FASTSCP_HOOK"] == "instance"
        assert rec["env"]["FASTSCP_SOP_UID"] == sop
        seen.add(sop)
    assert seen == {str(ds.SOPInstanceUID) for dss in by_study.values() for ds in dss}

    # on_study_complete: one per study, with counts and a folder holding its files
    got = {r["argv"][0]: r for r in studies}
    assert set(got) == set(by_study)
    for uid, rec in got.items():
        _uid, study_dir, count, series_count, sheet = rec["argv"]
        assert int(count) == len(by_study[uid])
        assert int(series_count) == len({str(ds.SeriesInstanceUID) for ds in by_study[uid]})
        in_dir = [p for p in Path(study_dir).rglob("*.dcm")]
        assert len(in_dir) == len(by_study[uid])
        assert all(str(pydicom.dcmread(p, stop_before_pixels=True).StudyInstanceUID) == uid for p in in_dir)
        assert sheet == str(Path(study_dir) / "scan_sheet.html") and Path(sheet).is_file()
        assert rec["env"]["FASTSCP_HOOK"] == "study" and rec["env"]["FASTSCP_REASON"] == "timeout"
        assert set(rec["env"]["FASTSCP_CALLING_AE"].split(",")) == {"SENDER0", "SENDER1"}
    # study hooks came after the idle time, not before
    # (measured from the last reception, the stored files' times: an instance
    # hook's own run time depends on its queue, not on the study's idle time)
    last_reception = max(p.stat().st_mtime for p in stored)
    assert all(r["t"] >= last_reception + 1.0 for r in studies)


def test_hostile_value_reaches_the_hook_as_one_plain_argument(start_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    marker = tmp_path / "pwned"
    hostile = f"$(touch {marker}); rm -rf / `touch {marker}2` | touch {marker}3 && x"
    src = tmp_path / "evil.dcm"
    ds = make_image(src, 1, study=9)
    ds.PatientName = hostile[:60]
    pid_marker = Path(f"/tmp/pwn{os.getpid()}")
    ds.PatientID = f"';touch {pid_marker};'"
    ds.save_as(src, enforce_file_format=True)
    hook, out = hook_script(tmp_path, "h")
    srv = start_server("--exec-on-reception", f"{hook} --name={{patient_name}} {{patient_id}} {{path}}")
    res = storescu(srv, [src])
    assert res.returncode == 0, res.stdout + res.stderr
    recs = wait_for(lambda: records(out))
    assert len(recs) == 1
    argv = recs[0]["argv"]
    assert argv[0] == "--name=" + hostile[:60]
    assert argv[1] == f"';touch {pid_marker};'"
    assert len(argv) == 3 and Path(argv[2]).is_file()
    assert recs[0]["env"]["FASTSCP_PATIENT_NAME"] == hostile[:60]
    time.sleep(0.5)
    assert not any(tmp_path.glob("pwned*")) and not pid_marker.exists()


def test_hanging_hook_is_killed_at_its_timeout_and_storage_is_unaffected(start_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    hook, out = hook_script(tmp_path, "hang", mode="hang")
    files = one_study(tmp_path / "src", 4, study=1)
    srv = start_server("--exec-on-reception", f"{hook} {{path}}", "--hook-timeout", "1.5", "--hook-workers", "2")
    t0 = time.monotonic()
    res = storescu(srv, files)
    elapsed = time.monotonic() - t0
    assert res.returncode == 0, res.stdout + res.stderr
    assert elapsed < 1.5, f"storescu took {elapsed:.2f} s: C-STORE answers waited for hooks"
    assert len(srv.stored_files()) == 4
    # 4 hooks, 2 workers, each killed at 1.5 s: all done within ~3 s (plus start-up)
    assert wait_for(lambda: srv.log_text().count("killed after") >= 4, timeout=15), srv.log_text()[-3000:]
    recs = records(out)
    assert len(recs) == 4
    for rec in recs:
        assert not _alive(rec["pid"]), f"hook {rec['pid']} still running"
    # each ran about its timeout, not 120 s
    durations = [float(line.split("killed after ")[1].split(" s")[0]) for line in srv.log_text().splitlines()
                 if "killed after" in line]
    assert all(1.4 <= d < 4.0 for d in durations), durations
    assert len(srv.stored_files()) == 4


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "State:\tZ" not in state


def test_failing_hook_is_logged_and_stores_still_succeed(start_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    hook, out = hook_script(tmp_path, "fail", mode="fail")
    f = tmp_path / "a.dcm"
    make_image(f, 1, study=3)
    srv = start_server("--exec-on-reception", f"{hook} {{path}}")
    res = storescu(srv, [f])
    assert res.returncode == 0, res.stdout + res.stderr
    assert len(srv.stored_files()) == 1
    assert wait_for(lambda: "exited with 3" in srv.log_text())
    assert "hook says no" in srv.log_text()


def test_complete_on_release(start_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    hook, out = hook_script(tmp_path, "study")
    files = one_study(tmp_path / "src", 3, study=5)
    srv = start_server("--exec-on-study", f"{hook} {{study_uid}} {{count}} {{reason}}", "--study-timeout", "600",
                       "--complete-on-release")
    t0 = time.time()
    assert storescu(srv, files).returncode == 0
    recs = wait_for(lambda: records(out), timeout=15)
    assert len(recs) == 1
    assert recs[0]["argv"][1:] == ["3", "release"]
    assert recs[0]["t"] - t0 < 15


def test_open_studies_survive_a_clean_restart(start_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    hook, out = hook_script(tmp_path, "study")
    src = tmp_path / "src"
    src.mkdir()
    files = [src / f"{i}.dcm" for i in range(5)]
    for i, f in enumerate(files):
        make_image(f, i, study=7, series=1 + i % 2)
    storage = tmp_path / "keep"
    flags = ("--storage-dir", str(storage), "--exec-on-study", f"{hook} {{study_uid}} {{count}} {{series_count}}")
    srv = start_server(*flags, "--study-timeout", "300")
    assert storescu(srv, files).returncode == 0
    assert srv.stop() == 0
    assert records(out) == []  # not complete yet: kept, not run early
    pending = orjson.loads((storage / ".pipeline" / "pending.json").read_bytes())
    assert len(pending["open_studies"]) == 1 and sum(s["count"] for s in pending["open_studies"][0]["series"]) == 5
    srv2 = start_server(*flags, "--study-timeout", "1")
    recs = wait_for(lambda: records(out), timeout=20)
    assert len(recs) == 1 and recs[0]["argv"][1:] == ["5", "2"]
    assert not (storage / ".pipeline" / "pending.json").exists()
    stored = sorted(storage.rglob("*.dcm"))
    assert len(stored) == 5
    assert (stored[0].parent.parent / "scan_sheet.html").is_file()


def test_unknown_placeholder_is_a_start_error(tmp_path: Path) -> None:
    res = subprocess.run([sys.executable, "-m", "fastscp.cli", "serve", "0", "--storage-dir", str(tmp_path / "s"),
                          "--exec-on-reception", "/bin/true {paht}"], capture_output=True, text=True, timeout=30)
    assert res.returncode == 2
    assert "{paht}" in res.stderr and "{path}" in res.stderr


@pytest.mark.parametrize("sheets", [True, False])
def test_scan_sheets_key_over_the_network(start_server, tmp_path: Path, sheets: bool) -> None:  # type: ignore[no-untyped-def]
    """``hooks.scan_sheets`` from a configuration file: with it false the study
    still completes and its hook runs, with no sheet drawn (an empty
    ``{scan_sheet}``); with it true (the default) the hook is told the sheet."""
    hook, out = hook_script(tmp_path, "study")
    files = one_study(tmp_path / "src", 3, study=7)
    cfg = tmp_path / "fastscp.yaml"
    cfg.write_text(f"hooks:\n  scan_sheets: {'true' if sheets else 'false'}\n")
    srv = start_server("--config", str(cfg), "--exec-on-study", f"{hook} {{study_uid}} {{count}} [{{scan_sheet}}]",
                       "--study-timeout", "600", "--complete-on-release")
    assert storescu(srv, files).returncode == 0
    recs = wait_for(lambda: records(out), timeout=30)
    assert len(recs) == 1 and recs[0]["argv"][1] == "3", recs
    drawn = sorted(srv.storage.rglob("scan_sheet.html"))
    if sheets:
        assert len(drawn) == 1 and recs[0]["argv"][2] == f"[{drawn[0]}]"
    else:
        assert drawn == [] and recs[0]["argv"][2] == "[]"

"""The after-reception pipeline: hooks, end-of-study detection, scan sheets.

``Pipeline`` is an ``events.Observer``. Its observer methods run on the
event loop thread and only put a small event on a queue (no I/O, no locks
held for long): C-STORE answers never wait for anything here. One pipeline
thread owns the ``StudyTracker``; it turns events into tasks for the
``HookRunner`` pool:

- each stored instance -> the ``on_instance`` hook (if configured);
- each completed study -> its scan sheet (a child process, ``python -m
  fastscp.pipeline.scansheet``, so its pixel decoding never competes with the
  receiver for the GIL), the ``scan_sheet_listeners`` (the catalog records
  the path there), then the ``on_study_complete`` hook with ``{scan_sheet}``.

Clean shutdown (``close``): queued and running tasks get ``grace`` seconds;
what is left, and every study still open, is written to
``<storage>/.pipeline/pending.json``. The next start (``start``) reads it
back: tasks are queued again, open studies resume their idle clock from
their last instance (wall time). Work is done at least once: a task killed
at shutdown runs again in full.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import orjson

from ..config import HooksConfig
from ..events import AssociationEnded, InstanceStored, Observer, Outcome
from ..instance import InstanceInfo
from .hooks import (
    INSTANCE_PLACEHOLDERS,
    STUDY_PLACEHOLDERS,
    HookCommand,
    HookRunner,
    Task,
    clean_value,
    log_result,
    run_command,
)
from .studies import StudyRecord, StudyTracker, study_folder

log = logging.getLogger("fastscp.pipeline")

__all__ = ["PENDING_FILE", "Pipeline", "PipelineSettings", "ScanSheetListener"]

PENDING_FILE = Path(".pipeline") / "pending.json"
POLL_INTERVAL = 0.2  # seconds between drains of the instance events

# (study record, html path, png path or None): called on a hook worker thread.
ScanSheetListener = Callable[[StudyRecord, Path, "Path | None"], None]


@dataclasses.dataclass(frozen=True)
class PipelineSettings:
    storage_root: Path
    on_instance: tuple[str, ...] = ()
    on_study_complete: tuple[str, ...] = ()
    study_timeout: float = 60.0
    complete_on_release: bool = False
    hook_timeout: float = 300.0
    workers: int = 2
    scan_sheets: bool = True
    scan_sheet_timeout: float = 300.0
    pass_env: tuple[str, ...] = ()

    @classmethod
    def from_config(cls, h: HooksConfig, storage_root: Path) -> PipelineSettings:
        """The settings of the configuration's ``hooks`` section."""
        return cls(storage_root=Path(storage_root), on_instance=tuple(h.on_instance),
                   on_study_complete=tuple(h.on_study_complete), study_timeout=h.study_timeout,
                   complete_on_release=h.complete_on_release, hook_timeout=h.timeout, workers=h.workers,
                   scan_sheets=h.scan_sheets, pass_env=tuple(h.pass_env))

    @property
    def tracks_studies(self) -> bool:
        return bool(self.on_study_complete) or self.scan_sheets


def instance_values(info: InstanceInfo, study_dir: str = "") -> dict[str, str]:
    c = clean_value
    return {
        "path": c(info.path), "filename": os.path.basename(info.path), "study_dir": c(study_dir),
        "calling_ae": c(info.calling_ae), "called_ae": c(info.called_ae), "peer": c(info.peer),
        "association_id": c(info.association_id), "study_uid": c(info.study_instance_uid),
        "series_uid": c(info.series_instance_uid), "sop_uid": c(info.sop_instance_uid),
        "sop_class_uid": c(info.sop_class_uid), "transfer_syntax_uid": c(info.transfer_syntax_uid),
        "patient_id": c(info.patient_id), "patient_name": c(info.patient_name), "accession": c(info.accession_number),
        "modality": c(info.modality), "series_number": c(info.series_number),
        "instance_number": c(info.instance_number),
    }


def instance_study_dir(path: str, storage_root: Path) -> str:
    """The study folder of one file, before its study is complete: the
    series folder's parent (above ``Dicom/`` in the physician layout); ""
    when the file is not that deep (flat naming)."""
    p = Path(path).parent.parent
    if p.name == "Dicom":
        p = p.parent
    root = Path(storage_root).resolve()
    return str(p) if p != root and root in p.parents else ""


def study_values(rec: StudyRecord, study_dir: Path, scan_sheet: str = "") -> dict[str, str]:
    c = clean_value
    return {
        "study_dir": str(study_dir), "study_uid": c(rec.study_uid), "patient_id": c(rec.patient_id),
        "patient_name": c(rec.patient_name), "accession": c(rec.accession), "study_date": c(rec.study_date),
        "study_description": c(rec.study_description), "calling_ae": c(",".join(rec.calling_aes)),
        "called_ae": c(",".join(rec.called_aes)), "count": str(rec.count), "series_count": str(len(rec.series)),
        "scan_sheet": scan_sheet, "reason": rec.reason,
    }


class InstanceHookTask(Task):
    def __init__(self, pipeline: Pipeline, values: dict[str, str]) -> None:
        self.pipeline = pipeline
        self.values = values
        self.label = f"instance {values.get('sop_uid', '')}"

    def run(self, cancel: threading.Event) -> None:
        cmd = self.pipeline.instance_hook
        if cmd is None:
            return
        argv, env = cmd.prepare(self.values, "instance", self.label)
        res = run_command(argv, env, self.pipeline.settings.hook_timeout, cancel=cancel)
        log_result("on_instance", self.label, res, quiet_success=True)
        self.pipeline.counts["instance ok" if res.ok else "instance failed"] += 1

    def to_json(self) -> dict[str, Any]:
        return {"kind": "instance", "values": self.values}


class StudyCompleteTask(Task):
    def __init__(self, pipeline: Pipeline, rec: StudyRecord) -> None:
        self.pipeline = pipeline
        self.rec = rec
        self.label = f"study {rec.study_uid}"

    def run(self, cancel: threading.Event) -> None:
        p = self.pipeline
        rec = self.rec
        folder = study_folder(rec, p.settings.storage_root)
        sheet = ""
        if p.settings.scan_sheets:
            html, png = p.make_scan_sheet(rec, folder, cancel)
            if html is not None:
                sheet = str(html)
                for listener in p.scan_sheet_listeners:
                    try:
                        listener(rec, html, png)
                    except Exception:
                        log.exception("scan sheet listener failed for %s", self.label)
        cmd = p.study_hook
        if cmd is not None and not cancel.is_set():
            values = study_values(rec, folder, sheet)
            argv, env = cmd.prepare(values, "study", self.label)
            res = run_command(argv, env, p.settings.hook_timeout, cancel=cancel)
            log_result("on_study_complete", self.label, res)
            p.counts["study ok" if res.ok else "study failed"] += 1
        log.info("study %s complete (%s): %d instance(s) in %d series, folder %s", rec.study_uid, rec.reason,
                 rec.count, len(rec.series), folder)

    def to_json(self) -> dict[str, Any]:
        return {"kind": "study", "study": self.rec.to_json()}


class Pipeline(Observer):
    """Observer + pipeline thread + hook pool. ``start()`` before serving,
    ``close(grace)`` after (from any thread but the event loop's)."""

    def __init__(self, settings: PipelineSettings,
                 scan_sheet_listeners: Sequence[ScanSheetListener] = ()) -> None:
        self.settings = settings
        self.instance_hook = (HookCommand(settings.on_instance, INSTANCE_PLACEHOLDERS, "hooks.on_instance",
                                          settings.pass_env)
                              if settings.on_instance else None)
        self.study_hook = (HookCommand(settings.on_study_complete, STUDY_PLACEHOLDERS,
                                       "hooks.on_study_complete", settings.pass_env)
                           if settings.on_study_complete else None)
        self.scan_sheet_listeners: list[ScanSheetListener] = list(scan_sheet_listeners)
        self.tracker = StudyTracker(settings.study_timeout, settings.complete_on_release)
        self.runner = HookRunner(settings.workers)
        self.counts: collections.Counter[str] = collections.Counter()  # "instance ok", "study failed", ...
        # Events from the event loop. An instance is only appended (no wake-up:
        # waking this thread per instance cost the receive path a GIL hand-over
        # each time); the thread drains the deque every POLL_INTERVAL seconds.
        # Rare events (association ended, stop) wake it at once.
        self._events: collections.deque[tuple[Any, ...]] = collections.deque()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def active(self) -> bool:
        return self.instance_hook is not None or self.settings.tracks_studies

    # ---- observer (event loop thread: enqueue only) -----------------------------------

    def instance_stored(self, event: InstanceStored) -> None:
        self._events.append(("instance", event.info, time.monotonic()))

    def association_ended(self, event: AssociationEnded) -> None:
        self._events.append(("ended", event.assoc.association_id, event.outcome is Outcome.RELEASED))
        self._wake.set()

    # ---- lifecycle -------------------------------------------------------------------

    def start(self) -> None:
        self.runner.start()
        self._restore()
        self._thread = threading.Thread(target=self._loop, name="fastscp-pipeline", daemon=True)
        self._thread.start()

    def close(self, grace: float) -> None:
        """Finish the events already received, give tasks ``grace`` seconds,
        then persist what is left (tasks and open studies)."""
        if self._thread is not None:
            self._events.append(("stop",))
            self._wake.set()
            self._thread.join()
        left = self.runner.stop(grace)
        studies = self.tracker.drain()
        self._persist(left, studies)

    # ---- the pipeline thread ---------------------------------------------------------

    def _loop(self) -> None:
        events = self._events
        while True:
            nxt = self.tracker.next_due()
            wait = POLL_INTERVAL if nxt is None else max(0.0, min(POLL_INTERVAL, nxt - time.monotonic()))
            self._wake.wait(wait)  # even with events queued: drained in batches
            self._wake.clear()
            while events:
                ev = events.popleft()
                if ev[0] == "stop":
                    return
                try:
                    self._handle(ev)
                except Exception:
                    log.exception("pipeline event %s failed", ev[0])
            for rec in self.tracker.due(time.monotonic()):
                self.runner.submit(StudyCompleteTask(self, rec))

    def _handle(self, ev: tuple[Any, ...]) -> None:
        if ev[0] == "instance":
            info: InstanceInfo = ev[1]
            if self.instance_hook is not None:
                study_dir = ""
                if "{study_dir}" in " ".join(self.instance_hook.template):
                    study_dir = instance_study_dir(info.path, self.settings.storage_root)
                self.runner.submit(InstanceHookTask(self, instance_values(info, study_dir)), droppable=True)
            if self.settings.tracks_studies and info.study_instance_uid:
                self.tracker.instance(info, ev[2])
        elif ev[0] == "ended":
            for rec in self.tracker.association_ended(ev[1], ev[2]):
                self.runner.submit(StudyCompleteTask(self, rec))

    # ---- scan sheets -----------------------------------------------------------------

    def make_scan_sheet(self, rec: StudyRecord, folder: Path,
                        cancel: threading.Event) -> tuple[Path | None, Path | None]:
        from .scansheet import manifest_from_record

        manifest = manifest_from_record(rec, folder)
        argv = [sys.executable, "-m", "fastscp.pipeline.scansheet", "--manifest", "-"]
        res = run_command(argv, None, self.settings.scan_sheet_timeout, stdin=orjson.dumps(manifest), cancel=cancel)
        if not res.ok:
            log_result("scan sheet", f"study {rec.study_uid}", res)
            return None, None
        try:
            out = orjson.loads(res.output.strip().splitlines()[-1])
            png = out.get("png")
            return Path(out["html"]), Path(png) if png else None
        except (ValueError, KeyError, IndexError):
            log.error("scan sheet for study %s: unexpected output %r", rec.study_uid, res.output[-200:])
            return None, None

    # ---- persistence -----------------------------------------------------------------

    @property
    def pending_path(self) -> Path:
        return self.settings.storage_root / PENDING_FILE

    def _persist(self, tasks: list[Task], studies: list[StudyRecord]) -> None:
        items = [t for t in (task.to_json() for task in tasks) if t is not None]
        path = self.pending_path
        if not items and not studies:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(orjson.dumps({"version": 1, "saved_at": time.time(), "tasks": items,
                                      "open_studies": [s.to_json() for s in studies]}))
        os.replace(tmp, path)
        log.info("pipeline: kept %d pending task(s) and %d open stud(y/ies) in %s for the next start",
                 len(items), len(studies), path)

    def _restore(self) -> None:
        path = self.pending_path
        try:
            data = orjson.loads(path.read_bytes())
        except FileNotFoundError:
            return
        except (OSError, ValueError) as exc:
            log.error("pipeline: cannot read %s (%s); moving it aside", path, exc)
            os.replace(path, path.with_suffix(f".bad-{int(time.time())}"))
            return
        os.unlink(path)  # what we take over is persisted again at the next clean stop
        now, wall = time.monotonic(), time.time()
        tasks = studies = 0
        for item in data.get("tasks", []):
            if item.get("kind") == "instance" and self.instance_hook is not None:
                self.runner.submit(InstanceHookTask(self, {k: str(v) for k, v in item["values"].items()}))
                tasks += 1
            elif item.get("kind") == "study":
                self.runner.submit(StudyCompleteTask(self, StudyRecord.from_json(item["study"])))
                tasks += 1
        for s in data.get("open_studies", []):
            self.tracker.restore(StudyRecord.from_json(s), now, wall)
            studies += 1
        log.info("pipeline: resumed %d task(s) and %d open stud(y/ies) from the last run", tasks, studies)

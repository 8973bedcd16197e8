"""End-of-study detection.

DICOM has no "study finished" message (Storage Commitment aside), so a study
is taken to be complete when no instance of it has arrived for
``study_timeout`` seconds, or, with ``complete_on_release``, when the last
association that brought instances of it is released normally (an abort
does not complete a study: its sender will likely try again). Studies can be
interleaved over any number of associations: the tracker is keyed by Study
Instance UID and counts the open associations that contributed to each.

A study that receives instances after it was completed starts a new record
and completes again later: hooks then see it twice, which is what a
receiver without a study-level protocol can honestly promise.

``StudyTracker`` is pure bookkeeping with the clock passed in; the pipeline
service (service.py) calls it from one thread. Records are JSON-able so a
clean shutdown can keep open studies and restore them at the next start.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

from ..instance import InstanceInfo

__all__ = ["SeriesRecord", "StudyRecord", "StudyTracker", "study_folder"]

# (a StudyRecord field, the InstanceInfo field it takes): the first
# instance with a value gives it
_FIRST_VALUES = (
    ("patient_id", "patient_id"), ("patient_name", "patient_name"),
    ("patient_birth_date", "patient_birth_date"), ("patient_sex", "patient_sex"),
    ("accession", "accession_number"), ("study_date", "study_date"), ("study_time", "study_time"),
    ("study_description", "study_description"), ("referring_physician", "referring_physician"),
    ("institution", "institution_name"),
)


@dataclasses.dataclass
class SeriesRecord:
    series_uid: str
    number: int | None = None
    description: str = ""
    modality: str = ""
    protocol: str = ""
    echo_numbers: list[str] = dataclasses.field(default_factory=list)
    count: int = 0
    # (instance number, path): enough to pick the middle image and the folder
    instances: list[tuple[int | None, str]] = dataclasses.field(default_factory=list)

    def middle_path(self) -> str:
        ordered = sorted(self.instances, key=lambda p: (p[0] is None, p[0] or 0, p[1]))
        return ordered[len(ordered) // 2][1] if ordered else ""


@dataclasses.dataclass
class StudyRecord:
    study_uid: str
    patient_id: str = ""
    patient_name: str = ""
    patient_birth_date: str = ""
    patient_sex: str = ""
    accession: str = ""
    study_date: str = ""
    study_time: str = ""
    study_description: str = ""
    referring_physician: str = ""
    institution: str = ""
    calling_aes: list[str] = dataclasses.field(default_factory=list)
    called_aes: list[str] = dataclasses.field(default_factory=list)
    series: dict[str, SeriesRecord] = dataclasses.field(default_factory=dict)
    first_wall: float = 0.0
    last_wall: float = 0.0
    last_seen: float = 0.0  # the tracker's clock (monotonic)
    open_associations: set[str] = dataclasses.field(default_factory=set)
    reason: str = ""

    def __post_init__(self) -> None:
        # the fields of _FIRST_VALUES still empty: once every one has a
        # value (most studies, from their first instance), ``add`` looks at
        # none of them (not a dataclass field: not in to_json)
        self._unfilled = [pair for pair in _FIRST_VALUES if not getattr(self, pair[0])]

    @property
    def count(self) -> int:
        return sum(s.count for s in self.series.values())

    def add(self, info: InstanceInfo, now: float) -> None:
        if self._unfilled:
            still = []
            for attr, source in self._unfilled:
                if getattr(self, attr):  # given a value meanwhile, not by add
                    continue
                value = getattr(info, source)
                if value:
                    setattr(self, attr, value)
                else:
                    still.append((attr, source))
            self._unfilled = still
        if info.calling_ae and info.calling_ae not in self.calling_aes:
            self.calling_aes.append(info.calling_ae)
        if info.called_ae and info.called_ae not in self.called_aes:
            self.called_aes.append(info.called_ae)
        key = info.series_instance_uid
        s = self.series.get(key)
        if s is None:
            s = self.series[key] = SeriesRecord(key, info.series_number, info.series_description, info.modality,
                                                info.protocol_name)
        for echo in (info.echo_numbers or "").split("\\"):
            echo = echo.strip()
            if echo and echo not in s.echo_numbers:
                s.echo_numbers.append(echo)
        s.count += 1
        s.instances.append((info.instance_number, info.path))
        wall = info.received_at or 0.0
        if not self.first_wall:
            self.first_wall = wall
        self.last_wall = max(self.last_wall, wall)
        self.last_seen = now
        if info.association_id:
            self.open_associations.add(info.association_id)

    def to_json(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["open_associations"] = []  # associations do not survive a restart
        d["series"] = [dataclasses.asdict(s) for s in self.series.values()]
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> StudyRecord:
        d = dict(d)
        series = d.pop("series", [])
        d.pop("open_associations", None)
        known = {f.name for f in dataclasses.fields(cls)}
        rec = cls(**{k: v for k, v in d.items() if k in known})
        for s in series:
            s = dict(s)
            s["instances"] = [(n, p) for n, p in s.get("instances", [])]
            sk = {f.name for f in dataclasses.fields(SeriesRecord)}
            rec.series[s["series_uid"]] = SeriesRecord(**{k: v for k, v in s.items() if k in sk})
        return rec


def study_folder(rec: StudyRecord, storage_root: str | os.PathLike[str]) -> Path:
    """The folder a study's files live in, found from where they were put
    (any naming scheme): the deepest folder holding all its series folders.
    A single-series study lives one level above its series folder; the
    physician layout's ``Dicom`` level is skipped (the study folder holds
    ``Dicom/``). When the files sit directly in the storage root (``flat``
    naming) there is no study folder: ``<root>/scan_sheets/<StudyUID>`` is
    used."""
    from ..storage.safepath import safe_component

    root = Path(storage_root).resolve()
    dirs = sorted({str(Path(p).parent) for s in rec.series.values() for _n, p in s.instances if p})
    if not dirs:
        return root / "scan_sheets" / safe_component(rec.study_uid)
    common = Path(os.path.commonpath(dirs))
    single_dir_series = len(dirs) == 1 and len(rec.series) == 1
    if single_dir_series:
        common = common.parent
    if common.name == "Dicom" and common.parent != root:
        common = common.parent
    try:
        inside = common.resolve().relative_to(root)
    except ValueError:
        inside = None
    if inside is None or inside == Path("."):
        return root / "scan_sheets" / safe_component(rec.study_uid)
    return common


class StudyTracker:
    """Open studies by Study Instance UID. Not thread-safe: one owner."""

    def __init__(self, study_timeout: float, complete_on_release: bool = False) -> None:
        self.study_timeout = study_timeout
        self.complete_on_release = complete_on_release
        self.open: dict[str, StudyRecord] = {}
        self._by_association: dict[str, set[str]] = {}

    def instance(self, info: InstanceInfo, now: float) -> None:
        uid = info.study_instance_uid
        rec = self.open.get(uid)
        if rec is None:
            rec = self.open[uid] = StudyRecord(uid)
        rec.add(info, now)
        if info.association_id:
            self._by_association.setdefault(info.association_id, set()).add(uid)

    def association_ended(self, association_id: str, released: bool) -> list[StudyRecord]:
        """Studies that the association's normal release completes."""
        done: list[StudyRecord] = []
        for uid in self._by_association.pop(association_id, ()):
            rec = self.open.get(uid)
            if rec is None:
                continue
            rec.open_associations.discard(association_id)
            if released and self.complete_on_release and not rec.open_associations:
                rec.reason = "release"
                done.append(self.open.pop(uid))
        return done

    def due(self, now: float) -> list[StudyRecord]:
        """Studies idle for ``study_timeout`` seconds. A study still receiving
        on an open association is idle like any other: a sender that pauses
        longer than the timeout mid-study gets two completions."""
        done = [uid for uid, rec in self.open.items() if now - rec.last_seen >= self.study_timeout]
        out = []
        for uid in done:
            rec = self.open.pop(uid)
            rec.reason = rec.reason or "timeout"
            out.append(rec)
        return out

    def next_due(self) -> float | None:
        if not self.open:
            return None
        return min(rec.last_seen for rec in self.open.values()) + self.study_timeout

    def restore(self, rec: StudyRecord, now: float, wall_now: float) -> None:
        """An open study kept over a restart: its idle time counts from its
        last instance, by the wall clock."""
        idle = max(0.0, wall_now - rec.last_wall) if rec.last_wall else self.study_timeout
        rec.last_seen = now - idle
        rec.open_associations = set()
        self.open[rec.study_uid] = rec

    def drain(self) -> list[StudyRecord]:
        out = list(self.open.values())
        self.open.clear()
        self._by_association.clear()
        return out

"""Live counters for the status endpoint and Prometheus.

``Monitor`` is a reception observer. Per stored instance it does a few dict
and deque operations (no lock, no I/O: everything runs on the event loop
thread); per C-STORE answer a ``bisect`` into the latency buckets. Everything
else is computed when someone asks: ``snapshot()`` builds the ``/status``
document, and ``metrics.MetricsCollector`` turns the same counters into
Prometheus metric families at scrape time (so prometheus-client's own locks
are never taken on the DICOM path).

A one-second sampler (``tick``) records the server totals for the throughput
graph, per-association byte counts for their current rates, and refreshes the
storage volume's usage (statvfs in a thread) to apply the low-free-space
watermark.
"""

from __future__ import annotations

import bisect
import collections
import logging
import os
import shutil
import time
from collections.abc import Callable, Mapping
from typing import Any

from .. import __version__
from ..events import (
    AssociationCounts,
    AssociationEnded,
    AssociationInfo,
    AssociationOpened,
    AssociationRejected,
    DuplicateReceived,
    InstanceStored,
    Observer,
    Outcome,
    ServerTotals,
    StoreAnswered,
)
from ..instance import InstanceInfo
from .connlog import OUTCOMES, status_key

log = logging.getLogger("fastscp.monitor")

# C-STORE latency (command received -> answer sent), seconds
LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0)
HISTORY_SECONDS = 600  # throughput graph: the last 10 minutes, one sample per second
RATE_WINDOW = 3  # samples behind a per-association "current rate"


class _Live:
    """An open association's counts, kept from its events."""

    __slots__ = ("assoc", "bytes", "duplicates", "failed", "stored")

    def __init__(self, assoc: AssociationInfo) -> None:
        self.assoc = assoc
        self.stored = self.bytes = self.failed = self.duplicates = 0


class Monitor(Observer):
    def __init__(self, state: ServerTotals, storage_dir: str | os.PathLike[str], *,
                 low_free_space: int | None = None,
                 min_free_space: int | None = None, index_counters: Callable[[], Any] | None = None,
                 info: dict[str, Any] | None = None, tls_refusals: Mapping[str, int] | None = None) -> None:
        self.state = state
        self.storage_dir = str(storage_dir)
        self.tls_refusals = tls_refusals  # refused TLS handshakes by reason (net.tls), None: no TLS port
        self.started_wall = time.time()
        self.started = time.monotonic()
        self.info = dict(info or {})  # ae_title, listening, storage_dir, index_db ...
        self.low_free_space = low_free_space
        self.min_free_space = min_free_space
        self.index_counters = index_counters
        # other queues (hooks, ...) register a depth function here
        self.queues: dict[str, Callable[[], int]] = {}

        self.active: dict[str, _Live] = {}
        self.outcomes: dict[str, int] = dict.fromkeys(OUTCOMES, 0)
        self.received: dict[tuple[str, str], list[int]] = {}  # (modality, calling AE) -> [instances, bytes]
        self.failures: dict[str, int] = {}  # by status
        self.duplicates = 0
        self.latency_counts = [0] * (len(LATENCY_BUCKETS) + 1)
        self.latency_sum = 0.0
        self.recent_instances: collections.deque[tuple[str, InstanceInfo]] = collections.deque(maxlen=25)
        self.recent_studies: collections.OrderedDict[str, dict[str, Any]] = collections.OrderedDict()
        self.recent_associations: collections.deque[dict[str, Any]] = collections.deque(maxlen=20)
        self.history: collections.deque[tuple[float, int, int]] = collections.deque(maxlen=HISTORY_SECONDS + 1)
        self._samples: dict[str, collections.deque[tuple[float, int, int]]] = {}

        self.disk: dict[str, int] | None = None
        self.disk_state = "unknown"  # ok | low | full

    # ---- observer (event loop thread) ----------------------------------------------

    def association_opened(self, event: AssociationOpened) -> None:
        aid = event.assoc.association_id
        self.active[aid] = _Live(event.assoc)
        self._samples[aid] = collections.deque([(time.monotonic(), 0, 0)], maxlen=RATE_WINDOW + 1)

    def association_rejected(self, event: AssociationRejected) -> None:
        self.outcomes[Outcome.REJECTED.value] += 1
        self.recent_associations.appendleft(
            _ended_row(event.assoc, AssociationCounts(), Outcome.REJECTED, event.reason, time.time()))

    def association_ended(self, event: AssociationEnded) -> None:
        aid = event.assoc.association_id
        self.active.pop(aid, None)
        self._samples.pop(aid, None)
        self.outcomes[event.outcome.value] += 1
        self.duplicates += event.counts.duplicates
        self.recent_associations.appendleft(
            _ended_row(event.assoc, event.counts, event.outcome, event.reason, event.ended_at))

    def duplicate_received(self, event: DuplicateReceived) -> None:
        live = self.active.get(event.assoc.association_id)
        if live is not None:
            live.duplicates += 1

    def instance_stored(self, event: InstanceStored) -> None:
        info = event.info
        live = self.active.get(event.assoc.association_id)
        if live is not None:
            live.stored += 1
            live.bytes += info.dataset_size
            if info.duplicate:
                live.duplicates += 1
        calling_ae = event.assoc.calling_ae
        key = (info.modality, calling_ae)
        counts = self.received.get(key)
        if counts is None:
            counts = self.received[key] = [0, 0]
        counts[0] += 1
        counts[1] += info.dataset_size
        self.recent_instances.append((event.assoc.association_id, info))  # made into a dict only when asked
        studies = self.recent_studies
        uid = info.study_instance_uid
        study = studies.get(uid)
        if study is None:
            study = studies[uid] = {
                "study_instance_uid": uid, "patient_id": info.patient_id, "patient_name": info.patient_name,
                "study_date": info.study_date, "description": info.study_description, "modalities": [],
                "calling_ae": calling_ae, "instances": 0, "bytes": 0, "first": info.received_at,
            }
            if len(studies) > 20:
                studies.popitem(last=False)
        else:
            studies.move_to_end(uid)
        study["instances"] += 1
        study["bytes"] += info.dataset_size
        study["last"] = info.received_at
        if info.modality and info.modality not in study["modalities"]:
            study["modalities"].append(info.modality)

    def store_answered(self, event: StoreAnswered) -> None:
        seconds = event.seconds
        self.latency_counts[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1
        self.latency_sum += seconds
        if event.status != 0:
            key = status_key(event.status)
            self.failures[key] = self.failures.get(key, 0) + 1
            live = self.active.get(event.assoc.association_id)
            if live is not None:
                live.failed += 1

    # ---- the sampler -----------------------------------------------------------------

    def tick(self) -> None:
        """Once a second, on the event loop."""
        now = time.monotonic()
        st = self.state
        self.history.append((time.time(), st.instances_total, st.bytes_total))
        for aid, live in self.active.items():
            samples = self._samples.get(aid)
            if samples is not None:
                samples.append((now, live.bytes, live.stored))

    def disk_usage(self) -> dict[str, int]:
        """statvfs of the storage volume; run in a thread."""
        u = shutil.disk_usage(self.storage_dir)
        return {"total": u.total, "used": u.used, "free": u.free}

    def set_disk(self, usage: dict[str, int]) -> None:
        """Apply the watermarks to a fresh disk reading (event loop); logs on change."""
        self.disk = usage
        free = usage["free"]
        if self.min_free_space is not None and free < self.min_free_space:
            state = "full"
        elif self.low_free_space is not None and free < self.low_free_space:
            state = "low"
        else:
            state = "ok"
        if state != self.disk_state:
            previous, self.disk_state = self.disk_state, state
            directory = self.storage_dir
            if state == "full":
                log.error("storage %s: %s free, below storage.min_free_space (%s): new C-STOREs are refused "
                          "with 0xA700", directory, _mb(free), _mb(self.min_free_space or 0))
            elif state == "low":
                log.warning("storage %s: %s free, below storage.low_free_space_warning (%s)",
                            directory, _mb(free), _mb(self.low_free_space or 0))
            elif previous in ("low", "full"):
                log.info("storage %s: %s free, above the watermarks again", directory, _mb(free))

    # ---- reading ---------------------------------------------------------------------

    def _active_row(self, live: _Live, now: float) -> dict[str, Any]:
        a = live.assoc
        samples = self._samples.get(a.association_id)
        rate_b = rate_i = 0.0
        if samples:
            t0, b0, i0 = samples[0]
            if now - t0 > 0.05:
                rate_b = (live.bytes - b0) / (now - t0)
                rate_i = (live.stored - i0) / (now - t0)
        return {
            "association_id": a.association_id, "peer": a.peer, "tls": a.tls, "calling_ae": a.calling_ae,
            "called_ae": a.called_ae, "age_s": round(now - a.started, 3), "instances": live.stored,
            "bytes": live.bytes, "failed": live.failed, "duplicates": live.duplicates,
            "contexts_accepted": a.contexts_accepted, "contexts_proposed": a.contexts_proposed,
            "rate_bytes_per_s": round(rate_b, 1), "rate_instances_per_s": round(rate_i, 2),
        }

    def rates(self, window: int = 5) -> tuple[float, float]:
        """Instances/s and bytes/s over the last ``window`` samples."""
        h = self.history
        if len(h) < 2:
            return 0.0, 0.0
        t1, i1, b1 = h[-1]
        t0, i0, b0 = h[-min(window + 1, len(h))]
        dt = t1 - t0
        return ((i1 - i0) / dt, (b1 - b0) / dt) if dt > 0 else (0.0, 0.0)

    def index_snapshot(self) -> dict[str, Any] | None:
        if self.index_counters is None:
            return None
        c = self.index_counters()
        return {"queue_depth": c.queue_depth, "rows_enqueued": c.rows_enqueued, "rows_written": c.rows_written,
                "batches_written": c.batches_written, "last_batch_rows": c.last_batch_rows,
                "last_batch_seconds": c.last_batch_seconds, "errors": c.errors,
                "over_high_water": c.over_high_water, "last_error": c.last_error}

    def snapshot(self) -> dict[str, Any]:
        """The ``/status`` document."""
        now = time.monotonic()
        st = self.state
        inst_rate, byte_rate = self.rates()
        index = self.index_snapshot()
        queues: dict[str, int | None] = {"index": index["queue_depth"] if index else None, "hooks": None}
        for name, depth in self.queues.items():
            queues[name] = depth()
        disk = self.disk or {}
        warnings = []
        if self.disk_state == "low":
            warnings.append(f"free space {_mb(disk.get('free', 0))} is below the warning threshold "
                            f"{_mb(self.low_free_space or 0)}")
        elif self.disk_state == "full":
            warnings.append(f"free space {_mb(disk.get('free', 0))} is below storage.min_free_space "
                            f"{_mb(self.min_free_space or 0)}: new instances are refused")
        if index and index["over_high_water"]:
            warnings.append("index writer behind: reception paused")
        if index and index["errors"]:
            warnings.append(f"index writes failing ({index['errors']} errors, retried): {index['last_error']}")
        index_error = getattr(st, "index_error", "")
        if index_error:
            warnings.append(f"index unavailable, receiving without it: {index_error}")
        return {
            "server": {**self.info, "version": __version__, "pid": os.getpid(),
                       "started_at": self.started_wall, "uptime_s": round(now - self.started, 1),
                       "time": time.time()},
            "totals": {"associations": st.associations_total, "associations_by_outcome": dict(self.outcomes),
                       "active": st.active, "instances": st.instances_total, "bytes": st.bytes_total,
                       "duplicates": self.duplicates + sum(live.duplicates for live in self.active.values()),
                       "failures_by_status": dict(self.failures)},
            "rates": {"instances_per_s": round(inst_rate, 2), "bytes_per_s": round(byte_rate, 1)},
            "active": [self._active_row(h, now) for h in self.active.values()],
            "recent_instances": [_instance_row(hid, info) for hid, info in reversed(self.recent_instances)],
            "recent_studies": list(reversed(self.recent_studies.values())),
            "recent_associations": list(self.recent_associations),
            "queues": queues,
            "index": index,
            "storage": {"directory": self.storage_dir, **disk,
                        "min_free_space": self.min_free_space, "low_free_space_warning": self.low_free_space,
                        "state": self.disk_state},
            "warnings": warnings,
            "throughput": [[round(t, 3), i, b] for t, i, b in self.history],
        }


def _ended_row(a: AssociationInfo, c: AssociationCounts, outcome: Outcome, reason: str,
               ended_at: float) -> dict[str, Any]:
    return {"association_id": a.association_id, "peer": a.peer, "tls": a.tls, "calling_ae": a.calling_ae,
            "called_ae": a.called_ae, "ended": ended_at, "duration_s": round(max(ended_at - a.started_at, 0.0), 3),
            "instances": c.stored, "bytes": c.bytes, "failed": c.failed, "duplicates": c.duplicates,
            "outcome": outcome.value, "reason": reason}


def _instance_row(association_id: str, info: InstanceInfo) -> dict[str, Any]:
    return {"time": info.received_at, "association_id": association_id, "calling_ae": info.calling_ae,
            "modality": info.modality, "patient_id": info.patient_id, "study_instance_uid": info.study_instance_uid,
            "sop_instance_uid": info.sop_instance_uid, "bytes": info.dataset_size}


def _mb(n: int) -> str:
    return f"{n / 1e6:.0f} MB" if n < 10e9 else f"{n / 1e9:.1f} GB"

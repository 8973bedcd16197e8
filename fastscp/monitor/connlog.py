"""The connection log: one structured record per association.

``ConnectionLog`` is a reception observer. It logs a line when an
association opens (or is rejected) and one record when it ends, on the
``fastscp.connections`` logger. Each log record carries the structured fields
in ``record.fields``; the JSON formatter (logsetup.py) writes them as one
JSON line, the text formatter writes the readable message. Nothing happens per
instance or per fragment: the fields come with the association's end event
(``events.AssociationEnded``), and the logging handlers run in a listener thread (QueueHandler),
so the event loop only builds a dict and appends it to a queue.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from ..events import (
    AssociationCounts,
    AssociationEnded,
    AssociationInfo,
    AssociationOpened,
    AssociationRejected,
    Observer,
    Outcome,
)

log = logging.getLogger("fastscp.connections")

# How an association ended: the values of events.Outcome, in its order.
RELEASED = Outcome.RELEASED.value
ABORTED_BY_PEER = Outcome.ABORTED_BY_PEER.value
ABORTED = Outcome.ABORTED.value  # by us: protocol error, timeout, shutdown (reason given)
DROPPED = Outcome.DROPPED.value  # transport closed without release or A-ABORT
REJECTED = Outcome.REJECTED.value
OUTCOMES = tuple(o.value for o in Outcome)


def _iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t % 1 * 1000):03d}Z"


def status_key(status: int) -> str:
    return f"0x{status:04X}"


def _common(a: AssociationInfo) -> dict[str, Any]:
    return {
        "association_id": a.association_id,
        "peer": a.peer,
        "tls": a.tls,
        "calling_ae": a.calling_ae,
        "called_ae": a.called_ae,
    }


def open_record(a: AssociationInfo) -> dict[str, Any]:
    return {"event": "association_open", "time": _iso(time.time()), **_common(a),
            "contexts_proposed": a.contexts_proposed, "contexts_accepted": a.contexts_accepted}


def end_record(a: AssociationInfo, counts: AssociationCounts, outcome: Outcome, reason: str,
               ended_at: float) -> dict[str, Any]:
    duration = max(ended_at - a.started_at, 0.0)
    return {
        "event": "association_rejected" if outcome is Outcome.REJECTED else "association_end",
        "time": _iso(ended_at),
        "started": _iso(a.started_at),
        **_common(a),
        "contexts_proposed": a.contexts_proposed,
        "contexts_accepted": a.contexts_accepted,
        "instances_stored": counts.stored,
        "duplicates": counts.duplicates,
        "failed": counts.failed,
        "failures_by_status": {status_key(s): n for s, n in counts.statuses},
        "bytes": counts.bytes,
        "duration_s": round(duration, 4),
        "throughput_mb_s": round(counts.bytes / 1e6 / duration, 3) if duration > 0 else 0.0,
        "instances_per_s": round(counts.stored / duration, 2) if duration > 0 else 0.0,
        "outcome": outcome.value,
        "reason": reason,
    }


def _tls(flag: bool) -> str:
    return "TLS" if flag else "no TLS"


class ConnectionLog(Observer):
    """Writes the open/end records. Rejections are logged once, as an end
    record with outcome ``rejected`` (a rejected association never opens)."""

    def association_opened(self, event: AssociationOpened) -> None:
        r = open_record(event.assoc)
        log.info("assoc %s open: peer %s, %s, calling %s called %s, %d/%d contexts accepted",
                 r["association_id"], r["peer"], _tls(r["tls"]), r["calling_ae"], r["called_ae"],
                 r["contexts_accepted"], r["contexts_proposed"], extra={"fields": r})

    def association_rejected(self, event: AssociationRejected) -> None:
        why = event.reason
        r = end_record(event.assoc, AssociationCounts(), Outcome.REJECTED, why, time.time())
        log.warning("assoc %s rejected: peer %s, %s, calling %s called %s: %s",
                    r["association_id"], r["peer"], _tls(r["tls"]), r["calling_ae"], r["called_ae"], why,
                    extra={"fields": r})

    def association_ended(self, event: AssociationEnded) -> None:
        r = end_record(event.assoc, event.counts, event.outcome, event.reason if event.outcome is not Outcome.RELEASED
                       else "", event.ended_at)
        failures = ", ".join(f"{n}x {k}" for k, n in r["failures_by_status"].items())
        how = r["outcome"] + (f" ({r['reason']})" if r["reason"] else "")
        level = logging.INFO if r["outcome"] == RELEASED else logging.WARNING
        log.log(level,
                "assoc %s %s: peer %s, %s, calling %s called %s, %d stored, %d duplicates, %d failed%s, "
                "%.1f MB in %.2f s (%.1f MB/s, %.0f instances/s)",
                r["association_id"], how, r["peer"], _tls(r["tls"]), r["calling_ae"], r["called_ae"],
                r["instances_stored"], r["duplicates"], r["failed"], f" [{failures}]" if failures else "",
                r["bytes"] / 1e6, r["duration_s"], r["throughput_mb_s"], r["instances_per_s"],
                extra={"fields": r})

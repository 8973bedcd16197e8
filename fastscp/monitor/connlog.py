"""The connection log: one structured record per association.

``ConnectionLog`` is a reception observer. It logs a line when an
association opens (or is rejected) and one record when it ends, on the
``fastscp.connections`` logger. Each log record carries the structured fields
in ``record.fields``; the JSON formatter (logsetup.py) writes them as one
JSON line, the text formatter writes the readable message. Nothing happens per
instance or per fragment: the fields are read from the handler's own counters
at the end, and the logging handlers run in a listener thread (QueueHandler),
so the event loop only builds a dict and appends it to a queue.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from ..scp import ReceptionObserver, StoreSCPHandler

log = logging.getLogger("fastscp.connections")

# How an association ended, from the handler's ``ended`` text.
RELEASED = "released"
ABORTED_BY_PEER = "aborted_by_peer"
ABORTED = "aborted"  # by us: protocol error, timeout, shutdown (reason given)
DROPPED = "connection_dropped"  # transport closed without release or A-ABORT
REJECTED = "rejected"
OUTCOMES = (RELEASED, ABORTED_BY_PEER, ABORTED, DROPPED, REJECTED)


def classify_ending(ended: str) -> tuple[str, str]:
    """(outcome, reason) from ``StoreSCPHandler.ended``."""
    if ended in ("released", "closed"):
        return RELEASED, ""
    if ended.startswith("rejected"):
        return REJECTED, ended.partition(": ")[2]
    if ended.startswith("aborted by peer"):
        return ABORTED_BY_PEER, ended
    if ended.startswith("connection closed"):
        return DROPPED, ended
    return ABORTED, ended


def _iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t % 1 * 1000):03d}Z"


def status_key(status: int) -> str:
    return f"0x{status:04X}"


def _common(h: StoreSCPHandler) -> dict[str, Any]:
    return {
        "association_id": h.id,
        "peer": h.peer,
        "tls": h.tls,
        "calling_ae": h.calling_ae,
        "called_ae": h.called_ae,
    }


def open_record(h: StoreSCPHandler) -> dict[str, Any]:
    rec = {"event": "association_open", "time": _iso(time.time()), **_common(h),
           "contexts_proposed": h.proposed, "contexts_accepted": len(h.contexts)}
    return rec


def end_record(h: StoreSCPHandler, rejected_why: str | None = None) -> dict[str, Any]:
    now = time.time()
    duration = max(time.monotonic() - h.started, 0.0)
    if rejected_why is not None:
        outcome, reason = REJECTED, rejected_why
    else:
        outcome, reason = classify_ending(h.ended)
    return {
        "event": "association_rejected" if outcome == REJECTED else "association_end",
        "time": _iso(now),
        "started": _iso(now - duration),
        **_common(h),
        "contexts_proposed": h.proposed,
        "contexts_accepted": len(h.contexts),
        "instances_stored": h.stored,
        "duplicates": h.duplicates,
        "failed": h.failed,
        "failures_by_status": {status_key(s): n for s, n in sorted(h.statuses.items())},
        "bytes": h.bytes,
        "duration_s": round(duration, 4),
        "throughput_mb_s": round(h.bytes / 1e6 / duration, 3) if duration > 0 else 0.0,
        "instances_per_s": round(h.stored / duration, 2) if duration > 0 else 0.0,
        "outcome": outcome,
        "reason": reason,
    }


def _tls(flag: bool) -> str:
    return "TLS" if flag else "no TLS"


class ConnectionLog(ReceptionObserver):
    """Writes the open/end records. Rejections are logged once, as an end
    record with outcome ``rejected`` (a rejected association never opens)."""

    def association_started(self, handler: StoreSCPHandler) -> None:
        r = open_record(handler)
        log.info("assoc %s open: peer %s, %s, calling %s called %s, %d/%d contexts accepted",
                 r["association_id"], r["peer"], _tls(r["tls"]), r["calling_ae"], r["called_ae"],
                 r["contexts_accepted"], r["contexts_proposed"], extra={"fields": r})

    def association_rejected(self, handler: StoreSCPHandler, why: str) -> None:
        r = end_record(handler, why)
        log.warning("assoc %s rejected: peer %s, %s, calling %s called %s: %s",
                    r["association_id"], r["peer"], _tls(r["tls"]), r["calling_ae"], r["called_ae"], why,
                    extra={"fields": r})

    def association_ended(self, handler: StoreSCPHandler) -> None:
        r = end_record(handler)
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

"""Logging for ``serve``: console (text or JSON lines) and an optional
rotating file (JSON lines), both fed from a queue by a listener thread.

The event loop never writes a log line itself: the root logger has one
``QueueHandler`` (an append to a ``SimpleQueue``), and a ``QueueListener``
thread formats and writes to the console and to the
``RotatingFileHandler``. A record that carries ``fields`` (the connection
log's) is written as those fields in JSON; any other record as time, level,
logger and message.

The service's own one-line "assoc ... open/closed/rejected" messages are
dropped here, because the connection log writes the same events with more
fields.
"""

from __future__ import annotations

import logging
import logging.handlers
import queue
import sys
import time
from dataclasses import dataclass
from typing import Any

import orjson

TEXT_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
_SCP_SUMMARIES = ("assoc %s open", "assoc %s closed", "assoc %s rejected")


class JsonLinesFormatter(logging.Formatter):
    """One JSON object per record (orjson)."""

    def format(self, record: logging.LogRecord) -> str:
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            out: dict[str, Any] = {"level": record.levelname.lower(), "logger": record.name, **fields}
            out.setdefault("time", self._iso(record.created))
        else:
            out = {"time": self._iso(record.created), "level": record.levelname.lower(),
                   "logger": record.name, "message": record.getMessage()}
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(out).decode()

    @staticmethod
    def _iso(t: float) -> str:
        return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t % 1 * 1000):03d}Z"


class DropServiceSummaries(logging.Filter):
    """Drops scp.py's association summary lines (the connection log has them)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.name == "fastscp.scp" and isinstance(record.msg, str)
                    and record.msg.startswith(_SCP_SUMMARIES))


@dataclass
class LoggingHandle:
    listener: logging.handlers.QueueListener
    handlers: list[logging.Handler]

    def stop(self) -> None:
        """Write what is queued and close the handlers."""
        self.listener.stop()
        for h in self.handlers:
            h.close()


def configure_logging(level: str = "info", fmt: str = "text", file: str | None = None,
                      max_bytes: int = 10 * 1024 * 1024, backup_count: int = 5,
                      stream: Any = None) -> LoggingHandle:
    """Replace the root logger's handlers with the queue -> (console, file)
    pair. Returns the handle whose ``stop()`` flushes and closes them."""
    console = logging.StreamHandler(stream or sys.stderr)
    console.setFormatter(JsonLinesFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    handlers: list[logging.Handler] = [console]
    if file:
        rotating = logging.handlers.RotatingFileHandler(file, maxBytes=max_bytes, backupCount=backup_count,
                                                        encoding="utf-8", delay=True)
        rotating.setFormatter(JsonLinesFormatter())
        handlers.append(rotating)
    q: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
    front = logging.handlers.QueueHandler(q)  # prepare() keeps the `fields` attribute
    front.addFilter(DropServiceSummaries())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
        old.close()
    root.addHandler(front)
    root.setLevel(getattr(logging, level.upper(), logging.INFO))
    listener = logging.handlers.QueueListener(q, *handlers, respect_handler_level=True)
    listener.start()
    return LoggingHandle(listener, handlers)

"""Logging for ``serve``: console (text or JSON lines) and an optional
rotating file (JSON lines), both fed from a queue by a listener thread.

The event loop never writes a log line itself: the root logger has one
``QueueHandler`` (an append to a ``SimpleQueue``), and a ``QueueListener``
thread formats and writes to the console and to the
``RotatingFileHandler``. A record that carries ``fields`` (the connection
log's) is written as those fields in JSON; any other record as time, level,
logger and message.

Text lines are safe to read on a terminal and to parse by line: every
character that is not printable (control characters such as newline, carriage
return and ESC, and Unicode's invisible format and separator characters) is
written as a backslash escape (``\\n``, ``\\x1b``, ``\\u202e``), wherever it came
from: a peer's AE title, a UID, a hook's output. A traceback keeps its own
line breaks, each continuation line indented, so a line that does not begin
with a space always begins a record. Python warnings (pydicom's, which may
quote a received value) are routed through logging for the same reason. JSON lines are escaped by JSON itself.

The service's own one-line "assoc ... open/closed/rejected" messages are
dropped here, because the connection log writes the same events with more
fields.
"""

from __future__ import annotations

import copy
import logging
import logging.handlers
import queue
import sys
import time
from dataclasses import dataclass
from typing import Any, TextIO

import orjson

TEXT_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
_SCP_SUMMARIES = ("assoc %s open", "assoc %s closed", "assoc %s rejected")


def escape_nonprintable(text: str) -> str:
    """``text`` with every non-printable character as a backslash escape
    (``str.isprintable``: C0/C1 controls, Unicode format and separator
    characters). Printable text, accented letters included, is unchanged."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else _ESCAPES.get(c) or _escape_char(c) for c in text)


_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape_char(c: str) -> str:
    n = ord(c)
    return f"\\x{n:02x}" if n < 0x100 else f"\\u{n:04x}" if n < 0x10000 else f"\\U{n:08x}"


class SafeTextFormatter(logging.Formatter):
    """The text form: ``TEXT_FORMAT`` with every non-printable character of
    the message escaped, so a record is one line whatever it quotes. The
    traceback or stack of a record keeps its line breaks (escaped
    otherwise), its lines indented."""

    def __init__(self, fmt: str = TEXT_FORMAT) -> None:
        super().__init__(fmt)

    def format(self, record: logging.LogRecord) -> str:
        record.message = record.getMessage()
        if self.usesTime():
            record.asctime = self.formatTime(record, self.datefmt)
        line = escape_nonprintable(self.formatMessage(record))
        trace = record.exc_text or (self.formatException(record.exc_info) if record.exc_info else "")
        if trace:
            line += "\n" + _indented(trace)
        if record.stack_info:
            line += "\n" + _indented(self.formatStack(record.stack_info))
        return line


def _indented(text: str) -> str:
    return "\n".join("  " + escape_nonprintable(line) for line in text.splitlines())


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
        elif record.exc_text:  # the queue front formatted it (_QueueFront)
            out["exception"] = record.exc_text
        return orjson.dumps(out).decode()

    @staticmethod
    def _iso(t: float) -> str:
        return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t % 1 * 1000):03d}Z"


class _QueueFront(logging.handlers.QueueHandler):
    """The root logger's handler: the record as it will be formatted in the
    listener thread, its message made text now (the arguments may change
    later) and its traceback kept apart from the message, so that each
    formatter can lay it out (the stock ``prepare`` merges the two)."""

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        record = copy.copy(record)
        record.message = record.getMessage()
        record.msg, record.args = record.message, None
        if record.exc_info:
            record.exc_text = record.exc_text or _PLAIN.formatException(record.exc_info)
            record.exc_info = None
        return record


_PLAIN = logging.Formatter()


class DropServiceSummaries(logging.Filter):
    """Drops the dispatcher's association summary lines (logger fastscp.scp) (the connection log has them)."""

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
        logging.captureWarnings(False)
        for h in self.handlers:
            h.close()


def configure_logging(level: str = "info", fmt: str = "text", file: str | None = None,
                      max_bytes: int = 10 * 1024 * 1024, backup_count: int = 5,
                      stream: TextIO | None = None) -> LoggingHandle:
    """Replace the root logger's handlers with the queue -> (console, file)
    pair. Returns the handle whose ``stop()`` flushes and closes them."""
    console = logging.StreamHandler(stream or sys.stderr)
    console.setFormatter(JsonLinesFormatter() if fmt == "json" else SafeTextFormatter())
    handlers: list[logging.Handler] = [console]
    if file:
        rotating = logging.handlers.RotatingFileHandler(file, maxBytes=max_bytes, backupCount=backup_count,
                                                        encoding="utf-8", delay=True)
        rotating.setFormatter(JsonLinesFormatter())
        handlers.append(rotating)
    q: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
    front = _QueueFront(q)  # prepare() keeps the `fields` attribute
    front.addFilter(DropServiceSummaries())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
        old.close()
    root.addHandler(front)
    # a library's warnings (pydicom quotes the values it complains about) go
    # through the same formatters, not raw to stderr
    logging.captureWarnings(True)
    root.setLevel(getattr(logging, level.upper(), logging.INFO))
    listener = logging.handlers.QueueListener(q, *handlers, respect_handler_level=True)
    listener.start()
    return LoggingHandle(listener, handlers)

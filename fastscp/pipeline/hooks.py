"""Hook commands: argv templates with placeholders, run off the receive path.

A hook is an argv list (``hooks.on_instance``, ``hooks.on_study_complete``,
``--exec-on-reception``/``--exec-on-study``). It is never given to a shell:
``{name}`` placeholders are replaced inside each argument, so a hostile
attribute value (``$(rm -rf /)``) reaches the program as one plain argument.
The same values are in the environment as ``FASTSCP_<NAME>``. ``{{``/``}}``
are literal braces. Unknown placeholders are refused when the command is
compiled, at start.

``HookRunner`` is a bounded pool of worker threads that run tasks (hooks,
scan sheets) one at a time each. A command gets its own process group; when
it outlives its timeout the whole group is killed. Exit status and the tail
of its output are logged. The pool keeps the tasks not yet started, so a
clean shutdown can persist them (see pipeline/service.py).
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

log = logging.getLogger("fastscp.hooks")

__all__ = [
    "INSTANCE_PLACEHOLDERS",
    "STUDY_PLACEHOLDERS",
    "CommandResult",
    "HookCommand",
    "HookRunner",
    "run_command",
]

# What each hook can name. Values are strings; absent ones are "".
INSTANCE_PLACEHOLDERS = (
    "path", "filename", "study_dir", "calling_ae", "called_ae", "peer", "association_id",
    "study_uid", "series_uid", "sop_uid", "sop_class_uid", "transfer_syntax_uid",
    "patient_id", "patient_name", "accession", "modality", "series_number", "instance_number",
)
STUDY_PLACEHOLDERS = (
    "study_dir", "study_uid", "patient_id", "patient_name", "accession", "study_date",
    "study_description", "calling_ae", "called_ae", "count", "series_count", "scan_sheet", "reason",
)

_FIELD = re.compile(r"\{\{|\}\}|\{([^{}]*)\}|[{}]")
_OUTPUT_TAIL = 2000


class HookCommand:
    """An argv template, checked once: ``expand(values)`` gives the argv."""

    def __init__(self, argv: Sequence[str], allowed: Sequence[str], what: str = "hook") -> None:
        if not argv:
            raise ValueError(f"{what}: empty command")
        self.template = tuple(argv)
        self.what = what
        for arg in self.template:
            for m in _FIELD.finditer(arg):
                text = m.group(0)
                if text in ("{{", "}}"):
                    continue
                name = m.group(1)
                if name is None:
                    raise ValueError(f"{what}: unmatched brace in {arg!r} (write {{{{ or }}}} for a literal one)")
                if name not in allowed:
                    raise ValueError(f"{what}: unknown placeholder {{{name}}} in {arg!r}; "
                                     f"known: {', '.join('{' + a + '}' for a in allowed)}")

    def expand(self, values: Mapping[str, str]) -> list[str]:
        def sub(m: re.Match[str]) -> str:
            text = m.group(0)
            if text == "{{":
                return "{"
            if text == "}}":
                return "}"
            return values.get(m.group(1), "")

        return [_FIELD.sub(sub, arg) for arg in self.template]

    @staticmethod
    def environment(values: Mapping[str, str], kind: str) -> dict[str, str]:
        env = dict(os.environ)
        env["FASTSCP_HOOK"] = kind
        for name, value in values.items():
            env[f"FASTSCP_{name.upper()}"] = value
        return env


def clean_value(value: Any) -> str:
    """A DICOM value as a hook argument: text, without NUL (which no argv or
    environment can carry)."""
    if value is None:
        return ""
    return str(value).replace("\x00", "")


@dataclasses.dataclass(slots=True)
class CommandResult:
    argv: list[str]
    returncode: int | None  # None: it could not be started
    seconds: float
    output: str
    timed_out: bool = False
    error: str = ""

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.timed_out


def run_command(argv: list[str], env: Mapping[str, str] | None, timeout: float,
                stdin: bytes | None = None, cancel: threading.Event | None = None) -> CommandResult:
    """Run ``argv`` (no shell) in its own process group; kill the group at
    ``timeout`` seconds or when ``cancel`` is set. Output (stdout and stderr
    merged) is returned, bounded to its tail."""
    t0 = time.monotonic()
    try:
        proc = subprocess.Popen(argv, stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=dict(env) if env else None,
                                start_new_session=True, close_fds=True)
    except (OSError, ValueError) as exc:
        return CommandResult(argv, None, time.monotonic() - t0, "", error=str(exc))
    chunks: collections.deque[bytes] = collections.deque()
    kept = [0]

    def drain() -> None:  # read all output, keep the tail (a chatty hook cannot fill memory)
        assert proc.stdout is not None
        for chunk in iter(lambda: proc.stdout.read1(65536), b""):  # type: ignore[union-attr,attr-defined]
            chunks.append(chunk)
            kept[0] += len(chunk)
            while kept[0] - len(chunks[0]) > _OUTPUT_TAIL * 4 and len(chunks) > 1:
                kept[0] -= len(chunks.popleft())

    reader = threading.Thread(target=drain, name="hook-output", daemon=True)
    reader.start()
    if stdin is not None:
        try:
            proc.stdin.write(stdin)  # type: ignore[union-attr]
            proc.stdin.close()  # type: ignore[union-attr]
        except OSError:
            pass
    timed_out = False
    deadline = t0 + timeout
    while True:
        step = min(0.25, deadline - time.monotonic())
        if step <= 0 or (cancel is not None and cancel.is_set()):
            timed_out = True
            _kill_group(proc)
            break
        try:
            proc.wait(timeout=step)
            break
        except subprocess.TimeoutExpired:
            continue
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        pass
    reader.join(timeout=2)  # a grandchild that left the group may still hold the pipe
    output = b"".join(chunks).decode("utf-8", "replace")[-_OUTPUT_TAIL:]
    return CommandResult(argv, proc.returncode, time.monotonic() - t0, output, timed_out)


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        try:
            proc.kill()
        except ProcessLookupError:
            pass


def log_result(kind: str, label: str, res: CommandResult, quiet_success: bool = False) -> None:
    name = os.path.basename(res.argv[0]) if res.argv else "?"
    if res.returncode is None and not res.timed_out:
        log.error("%s hook %s for %s could not start: %s", kind, name, label, res.error)
    elif res.timed_out:
        log.error("%s hook %s for %s killed after %.1f s (timeout)%s", kind, name, label, res.seconds, _tail(res.output))
    elif res.returncode != 0:
        log.warning("%s hook %s for %s exited with %s in %.2f s%s", kind, name, label, res.returncode, res.seconds,
                    _tail(res.output))
    else:
        log.log(logging.DEBUG if quiet_success else logging.INFO, "%s hook %s for %s done in %.2f s%s",
                kind, name, label, res.seconds, _tail(res.output))


def _tail(output: str) -> str:
    output = output.strip()
    return f"; output: {output}" if output else ""


class Task:
    """A unit of work for the pool. ``run(cancel)`` does it; ``to_json()``
    says how to redo it after a restart (None: not worth persisting)."""

    label = "task"

    def run(self, cancel: threading.Event) -> None:
        raise NotImplementedError

    def to_json(self) -> dict[str, Any] | None:
        return None


class HookRunner:
    """``workers`` threads taking tasks in order. ``submit`` never blocks: past
    ``max_pending`` queued tasks, new instance-level tasks are dropped (and
    counted) so a hook slower than the reception cannot exhaust memory."""

    def __init__(self, workers: int, max_pending: int = 100_000) -> None:
        self.workers = max(1, workers)
        self.max_pending = max_pending
        self._pending: collections.deque[Task] = collections.deque()
        self._running: set[Task] = set()
        self._cond = threading.Condition()
        self._stopping = False
        self.cancel = threading.Event()
        self.dropped = 0
        self.done = 0
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        for i in range(self.workers):
            t = threading.Thread(target=self._work, name=f"fastscp-hook-{i}", daemon=True)
            t.start()
            self._threads.append(t)

    def submit(self, task: Task, droppable: bool = False) -> bool:
        with self._cond:
            if droppable and len(self._pending) >= self.max_pending:
                self.dropped += 1
                if self.dropped in (1, 10, 100) or self.dropped % 1000 == 0:
                    log.error("hook backlog full (%d waiting): %d instance hook(s) dropped", len(self._pending), self.dropped)
                return False
            self._pending.append(task)
            self._cond.notify()
            return True

    def idle(self) -> bool:
        with self._cond:
            return not self._pending and not self._running

    def wait_idle(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._pending or self._running:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
        return True

    def stop(self, grace: float) -> list[Task]:
        """Let queued and running tasks finish for ``grace`` seconds; then
        kill what runs and return every task that did not complete."""
        self.wait_idle(grace)
        with self._cond:
            self._stopping = True
            left = list(self._pending)
            self._pending.clear()
            running = list(self._running)
            self._cond.notify_all()
        if running:
            self.cancel.set()
        for t in self._threads:
            t.join(timeout=10)
        return running + left

    def _work(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._stopping:
                    self._cond.wait()
                if self._stopping:
                    return
                task = self._pending.popleft()
                self._running.add(task)
            completed = False
            try:
                task.run(self.cancel)
                completed = not self.cancel.is_set()
            except Exception:
                log.exception("%s failed", task.label)
                completed = True
            finally:
                with self._cond:
                    if completed:
                        self._running.discard(task)
                        self.done += 1
                    elif not self._stopping:
                        self._running.discard(task)
                    self._cond.notify_all()


class CallbackTask(Task):
    """A task from a plain function (tests, small jobs)."""

    def __init__(self, fn: Callable[[threading.Event], None], label: str = "task") -> None:
        self.fn = fn
        self.label = label

    def run(self, cancel: threading.Event) -> None:
        self.fn(cancel)

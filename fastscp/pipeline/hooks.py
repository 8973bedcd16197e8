"""Hook commands: argv templates with placeholders, run off the receive path.

A hook is an argv list (``hooks.on_instance``, ``hooks.on_study_complete``,
``--exec-on-reception``/``--exec-on-study``). It is never given to a shell:
``{name}`` placeholders are replaced inside each argument, so a hostile
attribute value (``$(rm -rf /)``) reaches the program as one plain argument.
The same values are in the environment as ``FASTSCP_<NAME>``. ``{{``/``}}``
are literal braces. Unknown placeholders are refused when the command is
compiled, at start.

What a hook gets is bounded and explicit: each value is cut to
``MAX_VALUE_BYTES`` (a peer's 140 KB PatientName would otherwise overflow the
kernel's limit on argv plus environment and no hook could start), and the
environment is ``FASTSCP_*`` plus the few variables in ``BASE_ENV`` and the
configured ``hooks.pass_env``, never the server's whole environment.

``HookRunner`` is a bounded pool of worker threads that run tasks (hooks,
scan sheets) one at a time each. A command gets its own session and process
group. The receiver is a child subreaper (Linux ``PR_SET_CHILD_SUBREAPER``),
so a descendant that left the group (``setsid``, a double fork) is adopted by
the receiver instead of init. When the command ends or outlives its timeout,
everything it started is killed and reaped: its group and session, its
descendants, and adopted orphans that carry its run mark
(``FASTSCP_HOOK_RUN`` in their environment). Exit status and the tail of its
output are logged. The pool keeps the tasks not yet started, so a clean
shutdown can persist them (see pipeline/service.py).
"""

from __future__ import annotations

import collections
import ctypes
import dataclasses
import io
import itertools
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

# Longest value (UTF-8 bytes) given to a hook, in argv and in the environment.
# Linux refuses an exec whose single argument or "NAME=value" string passes
# 128 KiB (MAX_ARG_STRLEN) or whose argv plus environment passes ARG_MAX, so a
# peer's oversized attribute would make every hook fail ("Argument list too
# long"). DICOM's own limits are far below (64 characters for PN/LO/UI per
# value); 4096 still holds a whole PATH_MAX path.
MAX_VALUE_BYTES = 4096
# Variables a hook gets from the server's environment, when set; more are
# named in hooks.pass_env. Everything else (tokens, credentials the service
# was started with) stays out.
BASE_ENV = ("PATH", "HOME", "USER", "LOGNAME", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TMPDIR")
RUN_MARK = "FASTSCP_HOOK_RUN"


class HookCommand:
    """An argv template, checked once: ``expand(values)`` gives the argv."""

    def __init__(self, argv: Sequence[str], allowed: Sequence[str], what: str = "hook",
                 pass_env: Sequence[str] = ()) -> None:
        if not argv:
            raise ValueError(f"{what}: empty command")
        self.template = tuple(argv)
        self.what = what
        self.pass_env = tuple(pass_env)
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

    def environment(self, values: Mapping[str, str], kind: str) -> dict[str, str]:
        """The hook's whole environment: ``BASE_ENV`` and ``pass_env`` from
        the server's own (when set), ``FASTSCP_HOOK`` and ``FASTSCP_<NAME>``."""
        return hook_environment(values, kind, self.pass_env)

    def prepare(self, values: Mapping[str, str], kind: str, label: str) -> tuple[list[str], dict[str, str]]:
        """argv and environment for one run, every value bounded to
        ``MAX_VALUE_BYTES`` (one warning names the values cut)."""
        bounded, cut = bound_values(values)
        if cut:
            log.warning("%s for %s: %s cut to %d bytes", self.what, label,
                        ", ".join(f"{name} ({size} bytes)" for name, size in cut), MAX_VALUE_BYTES)
        return self.expand(bounded), self.environment(bounded, kind)


def hook_environment(values: Mapping[str, str], kind: str, pass_env: Sequence[str] = ()) -> dict[str, str]:
    env = {name: os.environ[name] for name in (*BASE_ENV, *pass_env) if name in os.environ}
    env.setdefault("PATH", os.defpath)
    env["FASTSCP_HOOK"] = kind
    for name, value in values.items():
        env[f"FASTSCP_{name.upper()}"] = value
    return env


def bound_values(values: Mapping[str, str]) -> tuple[dict[str, str], list[tuple[str, int]]]:
    """``values`` with each cut to ``MAX_VALUE_BYTES`` of UTF-8 (at a
    character boundary), and the (name, original size) of those cut."""
    out: dict[str, str] = {}
    cut: list[tuple[str, int]] = []
    for name, value in values.items():
        if len(value) > MAX_VALUE_BYTES // 4:  # 4 bytes per character at most: shorter ones fit
            raw = value.encode("utf-8", "replace")
            if len(raw) > MAX_VALUE_BYTES:
                cut.append((name, len(raw)))
                value = raw[:MAX_VALUE_BYTES].decode("utf-8", "ignore")
        out[name] = value
    return out, cut


def clean_value(value: object) -> str:
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
    """Run ``argv`` (no shell) in its own session and process group. At
    ``timeout`` seconds or when ``cancel`` is set it is killed; when it ends
    either way, every process it started is killed and reaped
    (``_kill_leftovers``). Output (stdout and stderr merged) is returned,
    bounded to its tail. ``env`` None: the server's environment (for the
    receiver's own helpers, not for hooks)."""
    become_subreaper()
    mark = f"{os.getpid()}-{next(_RUNS)}"
    run_env = dict(os.environ if env is None else env)
    run_env[RUN_MARK] = mark
    t0 = time.monotonic()
    try:
        proc = subprocess.Popen(argv, stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=run_env,
                                start_new_session=True, close_fds=True)
    except (OSError, ValueError) as exc:
        return CommandResult(argv, None, time.monotonic() - t0, "", error=str(exc))
    chunks: collections.deque[bytes] = collections.deque()
    kept = [0]

    def drain() -> None:  # read all output, keep the tail (a chatty hook cannot fill memory)
        stdout = proc.stdout
        assert isinstance(stdout, io.BufferedReader)  # stdout=PIPE with the default bufsize
        for chunk in iter(lambda: stdout.read1(65536), b""):
            chunks.append(chunk)
            kept[0] += len(chunk)
            while kept[0] - len(chunks[0]) > _OUTPUT_TAIL * 4 and len(chunks) > 1:
                kept[0] -= len(chunks.popleft())

    reader = threading.Thread(target=drain, name="hook-output", daemon=True)
    reader.start()
    if stdin is not None:
        assert proc.stdin is not None  # stdin=PIPE above
        try:
            proc.stdin.write(stdin)
            proc.stdin.close()
        except OSError:
            pass
    timed_out = False
    started: set[int] = set()  # what the run started, once found
    deadline = t0 + timeout
    while True:
        step = min(0.25, deadline - time.monotonic())
        if step <= 0 or (cancel is not None and cancel.is_set()):
            timed_out = True
            _kill_leftovers(proc.pid, mark, started, wait=0)  # the tree first, while its links hold
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
    _kill_leftovers(proc.pid, mark, started)
    reader.join(timeout=2)
    output = b"".join(chunks).decode("utf-8", "replace")[-_OUTPUT_TAIL:]
    return CommandResult(argv, proc.returncode, time.monotonic() - t0, output, timed_out)


_RUNS = itertools.count(1)
_PR_SET_CHILD_SUBREAPER = 36
_subreaper: bool | None = None
_subreaper_lock = threading.Lock()


def become_subreaper() -> bool:
    """Make this process the child subreaper of its descendants (Linux
    prctl), once: an orphaned hook descendant is then re-parented here, not to
    init, and stays findable and reapable. False where it is not available."""
    global _subreaper
    with _subreaper_lock:
        if _subreaper is None:
            _subreaper = False
            try:
                libc = ctypes.CDLL(None, use_errno=True)
                _subreaper = libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
            except (OSError, AttributeError):
                pass
            if not _subreaper:
                log.warning("cannot become a child subreaper: a hook's process that leaves its session "
                            "may outlive the hook")
        return _subreaper


@dataclasses.dataclass(frozen=True, slots=True)
class _Proc:
    pid: int
    ppid: int
    pgid: int
    sid: int
    zombie: bool


def _stat(pid: int) -> _Proc | None:
    """Parent, group, session and state of ``pid`` (None: gone)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            stat = fh.read()
    except OSError:
        return None
    fields = stat[stat.rfind(b")") + 2:].split()  # after "pid (comm) "
    return _Proc(pid, int(fields[1]), int(fields[2]), int(fields[3]), fields[0] == b"Z")


def _children(pid: int) -> list[int]:
    """The children of ``pid``, from each of its threads' children list."""
    out: list[int] = []
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/children", "rb") as fh:
                out.extend(int(c) for c in fh.read().split())
        except OSError:
            pass
    return out


def _has_mark(pid: int, mark: str) -> bool:
    try:
        with open(f"/proc/{pid}/environ", "rb") as fh:
            return f"{RUN_MARK}={mark}".encode() in fh.read().split(b"\0")
    except OSError:
        return False


def _run_members(leader: int, mark: str, known: set[int]) -> dict[int, _Proc]:
    """The processes one run started (the leader excluded: its Popen reaps
    it): the leader's descendants, and our own children (orphans re-parented
    to the subreaper) that are in the leader's session or group, carry the
    run's mark or are ``known`` (killed before), with their descendants. A walk from
    this process down, not a scan of every process."""
    found: dict[int, _Proc] = {}
    todo: list[int] = []
    for pid in _children(os.getpid()):
        if pid == leader:
            todo.append(pid)
            continue
        p = _stat(pid)
        if p is not None and (p.sid == leader or p.pgid == leader
                              or pid in known  # killed already: dying, its environ may be gone
                              or (not p.zombie and _has_mark(pid, mark))):
            found[pid] = p
            todo.append(pid)
    while todo:
        for child in _children(todo.pop()):
            if child not in found and child != leader:
                p = _stat(child)
                if p is not None:
                    found[child] = p
                    todo.append(child)
    return found


def _kill_leftovers(leader: int, mark: str, known: set[int], wait: float = 5.0) -> None:
    """Kill (SIGKILL) every process the run ``leader``/``mark`` started
    (``known``: those found by an earlier call, updated) and reap those
    re-parented to us, until none is left or ``wait`` seconds passed
    (``wait`` 0: one pass). Without /proc (not Linux) this does nothing."""
    me = os.getpid()
    deadline = time.monotonic() + wait
    while True:
        members = _run_members(leader, mark, known)
        if not members:
            return
        for pid, p in members.items():
            if not p.zombie:
                try:
                    os.kill(pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
            known.add(pid)
        for pid, p in members.items():
            if p.ppid == me:  # adopted (we are the subreaper): ours to reap
                try:
                    os.waitpid(pid, os.WNOHANG)
                except ChildProcessError:
                    pass
        if time.monotonic() >= deadline:
            if wait:
                log.error("hook processes %s still there %.0f s after SIGKILL", sorted(members), wait)
            return
        time.sleep(0.01)


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
        log.error("%s hook %s for %s killed after %.1f s (timeout)%s",
                  kind, name, label, res.seconds, _tail(res.output))
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
                    log.error("hook backlog full (%d waiting): %d instance hook(s) dropped",
                              len(self._pending), self.dropped)
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

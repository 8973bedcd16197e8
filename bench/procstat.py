"""CPU time and peak memory of a receiver's whole process tree, read from /proc.

CPU: utime+stime+cutime+cstime of the root plus the same of every live
descendant (proc(5), fields 14-17). When a forked child is reaped its time
moves into the parent's cutime/cstime, so the sum is conserved across
reaping and the difference of two readings is the tree's CPU in between.

Memory: a sampling thread adds up VmHWM (each process's own peak RSS) over
the processes alive at each sample and keeps the largest sum. For a single
process that is exactly its VmHWM; for a forking server it is the peak of
the processes alive together (an upper bound, as each child's HWM counts
even if the children peaked at different moments). RSS counts a page shared
by a parent and its forked children once in each, so the same thread also
adds up PSS (``/proc/PID/smaps_rollup``: each shared page divided among the
processes sharing it) over the tree, every ``pss_every``-th sample (the
kernel walks the page tables for it, so less often), and keeps the largest
sum: the memory the tree really holds. A peak between two PSS samples
(100 ms by default) can be missed; VmHWM cannot miss one.
"""
from __future__ import annotations

import os
import threading
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # comm (field 2) may contain spaces and parentheses: split after the last ')'.
    return raw[raw.rindex(")") + 2:].split()


def descendants(root: int) -> list[int]:
    """All live descendants of root (scan of /proc, by parent pid)."""
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        fields = _stat_fields(int(entry.name))
        if fields is not None:
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    out: list[int] = []
    stack = [root]
    while stack:
        for child in children.get(stack.pop(), []):
            out.append(child)
            stack.append(child)
    return out


def cpu_seconds(pid: int) -> float:
    """user+system CPU seconds of one process (its threads) and its reaped children; 0 once it is gone."""
    fields = _stat_fields(pid)
    # After the comm split: index 11..14 are utime, stime, cutime, cstime.
    return 0.0 if fields is None else sum(int(f) for f in fields[11:15]) / CLK_TCK


def tree_cpu_seconds(root: int) -> float:
    """user+system CPU seconds of root and its descendants, including reaped children."""
    return sum(cpu_seconds(pid) for pid in [root, *descendants(root)])


def _proc_field_kib(pid: int, name: str, field: str) -> int:
    """``field`` (kB) of /proc/PID/``name``; 0 once the process is gone."""
    try:
        with open(f"/proc/{pid}/{name}") as fh:
            for line in fh:
                if line.startswith(field):
                    return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        pass
    return 0


def vm_hwm_kib(pid: int) -> int:
    return _proc_field_kib(pid, "status", "VmHWM:")


def tree_hwm_kib(root: int) -> int:
    return sum(vm_hwm_kib(pid) for pid in [root, *descendants(root)])


def pss_kib(pid: int) -> int:
    """The process's proportional set size (kB), 0 once it is gone."""
    return _proc_field_kib(pid, "smaps_rollup", "Pss:")


def tree_pss_kib(root: int) -> int:
    return sum(pss_kib(pid) for pid in [root, *descendants(root)])


class PeakRssSampler:
    """Samples the tree's summed VmHWM every `interval` seconds in a thread.

    A forked child that lives less than one interval can be missed."""

    def __init__(self, root: int, interval: float = 0.02, pss_every: int = 5) -> None:
        self.root = root
        self.interval = interval
        self.pss_every = pss_every
        self.peak_kib = 0
        self.peak_pss_kib = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        n = 0
        while True:
            self.peak_kib = max(self.peak_kib, tree_hwm_kib(self.root))
            if n % self.pss_every == 0:
                self.peak_pss_kib = max(self.peak_pss_kib, tree_pss_kib(self.root))
            n += 1
            if self._stop.wait(self.interval):
                return

    def __enter__(self) -> PeakRssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_kib = max(self.peak_kib, tree_hwm_kib(self.root))
        self.peak_pss_kib = max(self.peak_pss_kib, tree_pss_kib(self.root))


def machine_busy_seconds() -> tuple[float, float]:
    """(busy, steal) CPU seconds of all cores since boot, from /proc/stat.

    busy is user+nice+system+irq+softirq (guest time is already inside user);
    steal is time the hypervisor gave to other machines."""
    f = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (f[0] + f[1] + f[2] + f[5] + f[6]) / CLK_TCK, f[7] / CLK_TCK

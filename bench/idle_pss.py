"""Idle memory of `fastscp serve` with an empty index, as PSS (issue 23).

Starts the receiver on a fresh storage folder and index (built-in defaults,
port 0, status endpoint on unless --status-port is given), waits for its
"listening" line, lets it settle, reads /proc/PID/smaps_rollup and stops it.
Several commands are run in turn (A, B, A, B, ...) so that a before/after
comparison shares the machine's moments:

    python bench/idle_pss.py --runs 3 \\
        --cmd "before=env PYTHONPATH=/tmp/base python -m fastscp.cli" \\
        --cmd "after=python -m fastscp.cli"

PSS divides a page among the processes that map it: run this from an
interpreter that does not map the receiver's libraries (the system python3
rather than the venv's, say) and with no other receiver of the same install
running, or the figures fall by what they share. Prints the load average
before and after, and per run Pss, Pss_Anon, Pss_File, Rss (kB) and the
thread count.

``--send PATH`` measures the level after some work instead: once listening,
the same command's ``send`` stores PATH (a file or folder) into it, and
``--settle`` starts when the send has ended (long enough for the index to
write the rows: more than ``database.flush_quiet``).
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

FIELDS = ("Pss", "Pss_Anon", "Pss_File", "Rss")


def rollup(pid: int) -> dict[str, int]:
    out: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        name, _, rest = line.partition(":")
        if name in FIELDS:
            out[name] = int(rest.split()[0])
    return out


def measure(cmd: list[str], extra: list[str], settle: float, work: Path, send: Path | None = None) -> dict[str, int]:
    wd = Path(tempfile.mkdtemp(dir=work))
    try:
        proc = subprocess.Popen([*cmd, "serve", "0", "FASTSCP", "--storage-dir", str(wd / "recv"),
                                 "--index-db", str(wd / "idx.db"), *extra],
                                stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, cwd=wd)
        assert proc.stderr is not None
        try:
            for line in proc.stderr:
                if "listening on" in line:
                    break
            else:
                raise RuntimeError(f"{cmd} exited before listening")
            if send is not None:
                port = re.search(r"listening on [^ ]*:(\d+)", line)
                if port is None:
                    raise RuntimeError(f"no port in {line!r}")
                subprocess.run([*cmd, "send", "--progress", "never", "-r", "127.0.0.1", port.group(1), str(send)],
                               check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=600)
            time.sleep(settle)
            got = rollup(proc.pid)
            got["threads"] = len(os.listdir(f"/proc/{proc.pid}/task"))
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(60)
        return got
    finally:
        shutil.rmtree(wd, ignore_errors=True)


def _load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f} {five:.2f} {fifteen:.2f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cmd", action="append", default=[],
                    help='LABEL=COMMAND that runs fastscp (default "fastscp=fastscp"); repeat to compare')
    ap.add_argument("--runs", type=int, default=3, help="runs of each command, interleaved")
    ap.add_argument("--settle", type=float, default=3.0, help="seconds after the listening line")
    ap.add_argument("--work-dir", type=Path, default=None, help="where the storage folders go (default: a temp dir)")
    ap.add_argument("--send", type=Path, default=None,
                    help="store this file or folder once listening, then settle (the level after work)")
    ap.add_argument("serve_args", nargs="*", help="more serve flags, after --")
    args = ap.parse_args()
    cmds = [c.partition("=") for c in (args.cmd or ["fastscp=fastscp"])]
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="idle-pss-"))
    work.mkdir(parents=True, exist_ok=True)
    print(_load(), flush=True)
    results: dict[str, list[dict[str, int]]] = {label: [] for label, _, _ in cmds}
    try:
        for _ in range(args.runs):
            for label, _, cmd in cmds:
                got = measure(shlex.split(cmd), args.serve_args, args.settle, work, args.send)
                results[label].append(got)
                print(f"{label:12s} Pss {got['Pss']:7d} kB  anon {got['Pss_Anon']:6d}  file {got['Pss_File']:6d}  "
                      f"rss {got['Rss']:6d}  threads {got['threads']}", flush=True)
    finally:
        if args.work_dir is None:
            shutil.rmtree(work, ignore_errors=True)
    print(_load())
    for label, runs in results.items():
        pss = sorted(r["Pss"] for r in runs)
        print(f"{label:12s} Pss {pss[0]}-{pss[-1]} kB over {len(runs)} runs")


if __name__ == "__main__":
    main()

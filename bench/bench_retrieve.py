"""C-MOVE and C-GET throughput: fastscp against dcmtk's dcmqrscp on the same files.

One corpus (bench/gen_corpus.py, by default the small kind: 1000 CT images
of 64x64, about 10 KB each, one patient, two studies; ``--kind large``:
512x512, about 0.5 MB each, 400 per patient) is copied into a
storage tree for each server on the same disk:

- fastscp serves its tree with its index (the start's reconcile indexes the
  files in the background once the port is open: the warm-up run is
  repeated until every file comes) and ``remote_aes`` naming the
  destination;
- dcmqrscp serves a database directory filled by ``dcmqridx`` (the time it
  takes is printed), its HostTable naming the destination.

Then, alternating between the two servers, ``--runs`` times each after one
warm-up each (the files are in the page cache for both):

- ``move``: dcmtk ``movescu`` (Patient Root, PATIENT level, one run per
  patient of the corpus) to a dcmtk ``storescp`` destination writing into
  a directory;
- ``get``: dcmtk ``getscu`` (same identifiers) writing into a directory.

Every dcmtk process gets TCP_NODELAY=1 in its environment (as in the flood
benchmark): without it dcmtk leaves Nagle's algorithm on, and a dcmtk
storescp destination delays each C-STORE-RSP by about 40 ms (measured: 100
instances moved by fastscp took 4.8 s without it, 0.47 s with it), whatever
the server. fastscp's C-MOVE sender sets TCP_NODELAY on its own socket.
``--nagle`` leaves TCP_NODELAY out, to time the peers as they come: the
move destination's Nagle then meets the sender's delayed ACKs unless the
sender ACKs at once (TCP_QUICKACK, as fastscp's sender does since
2026-12-06).

Each time is the wall clock from starting the first SCU to the last one's exit (association
set-up, the sub-operations, the destination's writes), checked by counting
the files received. Prints one Markdown row per server and mode (median,
min, max, instances/s) and the ratio fastscp / dcmqrscp of the medians.

A second table gives the CPU time (user + system) spent in each run, in
microseconds per instance, medians: the server's (``/proc/<pid>/stat``,
its threads and the children it has reaped: dcmqrscp forks one per
association) and the peers' (the SCU processes' from ``getrusage`` of
the children this script waited for, plus the storescp destination's from
its ``/proc`` entry for ``move``). Less noisy than the wall clock on a
shared machine, it shows what a change makes the server and the peers do.

    .venv/bin/python bench/bench_retrieve.py [--count 1000] [--kind small] [--runs 5] [--modes move,get] [--orthanc]

With ``--orthanc``, Orthanc (SQLite index, files uncompressed) is timed
too, after being sent the corpus by dcmtk storescu; its ratios are printed
as well. With ``--baseline DIR``, a second fastscp ("fastscp-before") runs
from the package copy in DIR (``DIR/fastscp``, e.g. ``cp -r fastscp
bench/out/base/`` made before a change, its compiled extensions included)
on a tree and index of its own, timed in the same alternation: a before and
after of a change in one run, next to the peers (every fastscp runs with
``python -P``, so that the checkout the script is started from does not
shadow the copy: before 2026-12-06 12:00 it did, and "fastscp-before" ran
the checkout's code). ``--baseline NAME=DIR``
names it ``NAME`` instead, and the option may be given more than once (two
steps of a change, each against the same peers in the same run).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import pydicom

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gen_corpus import DEFAULT_ROOT, default_spec, ensure_corpus
from procstat import cpu_seconds
from receivers import free_port, wait_for_port

ENV = {**os.environ, "TCP_NODELAY": "1"}  # read by the dcmtk tools (see the module doc); --nagle: removed


@contextmanager
def running(cmd: list[str], port: int, log: Path,
            env: dict[str, str] | None = None) -> Iterator[subprocess.Popen[bytes]]:
    with open(log, "ab") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env={**ENV, **(env or {})})
        try:
            wait_for_port(port, proc)
            yield proc
        finally:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def dcmqrscp_config(path: Path, port: int, db: Path, dest_port: int) -> None:
    path.write_text(f"""NetworkTCPPort  = {port}
MaxPDUSize      = 131072
MaxAssociations = 16

HostTable BEGIN
dest = (DEST, 127.0.0.1, {dest_port})
HostTable END

VendorTable BEGIN
VendorTable END

AETable BEGIN
QRSCP  {db}  RW  (2000, 4096mb)  ANY
AETable END
""")


def peak_rss(pid: int) -> int:
    """The process's peak resident set size in bytes (Linux VmHWM)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def orthanc_exe() -> str:
    for path in (shutil.which("Orthanc"), "/usr/sbin/Orthanc"):
        if path and Path(path).exists():
            return path
    return "Orthanc"


def orthanc_config(work: Path, port: int, http_port: int, dest_port: int) -> Path:
    """Orthanc with its SQLite index, files uncompressed, DEST as a modality
    (C-MOVE target) and BENCH as a known one (C-GET requester)."""
    (work / "index").mkdir(parents=True)
    path = work / "orthanc.json"
    path.write_text(json.dumps({
        "Name": "bench-retrieve", "StorageDirectory": str(work / "storage"), "IndexDirectory": str(work / "index"),
        "StorageCompression": False, "DicomAet": "ORTHANC", "DicomPort": port, "HttpPort": http_port,
        "RemoteAccessAllowed": False, "AuthenticationEnabled": False, "DicomCheckCalledAet": False,
        "DicomAlwaysAllowStore": True, "MaximumPduLength": 131072, "Plugins": [], "SaveJobs": False,
        "DicomModalities": {"dest": ["DEST", "127.0.0.1", dest_port], "bench": ["BENCH", "127.0.0.1", 1]},
    }))
    return path


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


_set_aside = 0


def clear(directory: Path) -> None:
    """Empty ``directory`` for the next run by renaming it into a
    ``set-aside`` folder beside it (removed with the work folder at the
    end), not by deleting its files: on an ext4 without a journal, as here,
    a file created within seconds of a deletion can cost a walk past the
    freed inodes, so the run after a deletion paid for it, whichever server
    it timed (the small set's ratio moved by 0.1-0.2 between runs of the
    same code). Then everything written is synced, untimed, so that the
    next run does not meet the kernel's writeback of this one's (the large
    set's runs spread from 0.8 to 2.6 s without it)."""
    global _set_aside
    _set_aside += 1
    aside = directory.parent / "set-aside"
    aside.mkdir(exist_ok=True)
    directory.rename(aside / f"{directory.name}-{_set_aside}")
    directory.mkdir()
    os.sync()


def timed(cmds: list[list[str]], received: Path, expected: int, cpu: list[tuple[float, float]] | None = None,
          server_pid: int = 0, peer_pid: int = 0) -> float:
    """Run the SCU commands one after the other; their total wall clock.
    ``cpu``: gets (server CPU s, peers' CPU s) of the run appended."""
    server0 = cpu_seconds(server_pid) if server_pid else 0.0
    peers0 = children_cpu() + (cpu_seconds(peer_pid) if peer_pid else 0.0)
    t0 = time.perf_counter()
    for cmd in cmds:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=ENV)
        if out.returncode != 0:
            raise RuntimeError(f"{cmd[0]}: exit {out.returncode}\n{out.stdout}{out.stderr}")
    seconds = time.perf_counter() - t0
    if cpu is not None:
        cpu.append(((cpu_seconds(server_pid) - server0) if server_pid else 0.0,
                    children_cpu() + (cpu_seconds(peer_pid) if peer_pid else 0.0) - peers0))
    got = sum(1 for _ in received.iterdir())
    if got != expected:
        raise RuntimeError(f"{cmds[0][0]}: {got}/{expected} files received")
    clear(received)
    return seconds


def warm_up(run: Callable[[], float], received: Path, wait: float = 300.0) -> None:
    """One untimed run; again while files are missing, for up to ``wait``
    seconds: fastscp's start reconciles its tree into the index in the
    background after the port opens, so its first retrieves may find part
    of the corpus."""
    deadline = time.monotonic() + wait
    while True:
        try:
            run()
            return
        except RuntimeError as exc:
            if "files received" not in str(exc) or time.monotonic() > deadline:
                raise
            clear(received)
            time.sleep(1.0)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kind", default="small", choices=["small", "large"])
    ap.add_argument("--count", type=int, default=1000)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--modes", default="move,get")
    ap.add_argument("--corpus-root", type=Path, default=DEFAULT_ROOT)
    ap.add_argument("--dcmtk-bin", default="/usr/bin")
    ap.add_argument("--orthanc", action="store_true", help="also time Orthanc (sent the corpus by storescu)")
    ap.add_argument("--nagle", action="store_true",
                    help="run the dcmtk peers without TCP_NODELAY=1 (their default: Nagle's algorithm on)")
    ap.add_argument("--baseline", action="append", default=[], metavar="[NAME=]DIR",
                    help="also time the fastscp package copy in this directory (as NAME; fastscp-before "
                         "without one); may be repeated")
    args = ap.parse_args(argv)
    if args.nagle:  # the dcmtk peers as they come: Nagle's algorithm on
        ENV.pop("TCP_NODELAY", None)
    baselines: dict[str, Path] = {}
    for spec in args.baseline:
        name, _, directory = spec.rpartition("=")
        copy = baselines[name or "fastscp-before"] = Path(directory).resolve()
        # -P: ``python -m`` would put the current directory first on sys.path, and
        # run from a checkout that is its own fastscp, whatever PYTHONPATH says
        found = subprocess.run([sys.executable, "-P", "-c", "import fastscp; print(fastscp.__file__)"],
                               capture_output=True, text=True, check=True,
                               env={**os.environ, "PYTHONPATH": str(copy)}).stdout
        if not Path(found.strip()).is_relative_to(copy):
            ap.error(f"--baseline {spec}: the package imported is {found.strip()}, not the copy in {directory}")
    tool = {name: str(Path(args.dcmtk_bin) / name) for name in
            ("storescp", "storescu", "movescu", "getscu", "dcmqrscp", "dcmqridx")}
    corpus = ensure_corpus(default_spec(args.kind, args.count), args.corpus_root)
    patients = sorted({str(pydicom.dcmread(f, stop_before_pixels=True, specific_tags=["PatientID"]).PatientID)
                       for f in corpus.files})
    n = len(corpus.files)
    with tempfile.TemporaryDirectory(prefix="bench-retrieve-", dir=os.environ.get("BENCH_TMP")) as tmp:
        work = Path(tmp)
        fast_tree, qr_db, dest, got = (work / "fastscp-tree", work / "dcmqr-db", work / "dest", work / "got")
        base_trees = {name: work / f"base-tree-{k}" for k, name in enumerate(baselines)}
        for d in (fast_tree, qr_db, dest, got, *base_trees.values()):
            d.mkdir()
        for f in corpus.files:
            shutil.copyfile(f, fast_tree / f.name)
            shutil.copyfile(f, qr_db / f.name)
            for tree in base_trees.values():
                shutil.copyfile(f, tree / f.name)
        t0 = time.perf_counter()
        subprocess.run([tool["dcmqridx"], str(qr_db), *(str(qr_db / f.name) for f in corpus.files)],
                       check=True, capture_output=True)
        print(f"dcmqridx indexed {n} files in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
        dest_port, fast_port, qr_port = free_port(), free_port(), free_port()
        base_ports = {name: free_port() for name in baselines}
        (work / "fastscp.yaml").write_text(f"remote_aes:\n  - ae_title: DEST\n    host: 127.0.0.1\n"
                                           f"    port: {dest_port}\n")
        dcmqrscp_config(work / "dcmqrscp.cfg", qr_port, qr_db, dest_port)
        def serve(port: int, tree: Path, db: Path) -> list[str]:
            return [sys.executable, "-P", "-m", "fastscp.cli", "serve", str(port), "FASTSCP", "--storage-dir",
                    str(tree), "--index-db", str(db), "--status-port", "0",
                    "--config", str(work / "fastscp.yaml"), "--log-level", "warning"]

        fastscp = serve(fast_port, fast_tree, work / "fastscp.db")
        qrscp = [tool["dcmqrscp"], "-c", str(work / "dcmqrscp.cfg"), str(qr_port)]

        def baseline(name: str) -> list[str]:
            return serve(base_ports[name], base_trees[name], work / f"{base_trees[name].name}.db")
        servers = {"fastscp": ("FASTSCP", fast_port), "dcmqrscp": ("QRSCP", qr_port)}
        for name, port in base_ports.items():
            servers[name] = ("FASTSCP", port)
        orthanc_port, orthanc_http = free_port(), free_port()
        orthanc = [orthanc_exe(), str(orthanc_config(work / "orthanc", orthanc_port, orthanc_http, dest_port))]
        if args.orthanc:
            servers["orthanc"] = ("ORTHANC", orthanc_port)

        def commands(mode: str, aec: str, port: int) -> list[list[str]]:
            """One SCU run per patient (PATIENT level, Patient Root)."""
            runs = []
            for patient_id in patients:
                keys = ["-k", "QueryRetrieveLevel=PATIENT", "-k", f"PatientID={patient_id}"]
                if mode == "move":
                    runs.append([tool["movescu"], "-P", "-aet", "BENCH", "-aec", aec, "-aem", "DEST", *keys,
                                 "127.0.0.1", str(port)])
                else:
                    runs.append([tool["getscu"], "-P", "-aet", "BENCH", "-aec", aec, "-od", str(got), *keys,
                                 "127.0.0.1", str(port)])
            return runs
        results: dict[tuple[str, str], list[float]] = {}
        cpu: dict[tuple[str, str], list[tuple[float, float]]] = {}
        pids: dict[str, int] = {}
        with running([tool["storescp"], "-aet", "DEST", "-od", str(dest), str(dest_port)], dest_port,
                     work / "storescp.log") as storescp_proc, \
                running(fastscp, fast_port, work / "fastscp.log") as fast_proc, \
                running(qrscp, qr_port, work / "dcmqrscp.log") as qr_proc, ExitStack() as more:
            pids.update({"fastscp": fast_proc.pid, "dcmqrscp": qr_proc.pid})
            for name, directory in baselines.items():
                pids[name] = more.enter_context(running(baseline(name), base_ports[name], work / f"{name}.log",
                                                        {"PYTHONPATH": str(directory)})).pid
            if args.orthanc:  # Orthanc holds what it stored: send it the corpus
                pids["orthanc"] = more.enter_context(running(orthanc, orthanc_port, work / "orthanc.log")).pid
                t0 = time.perf_counter()
                subprocess.run([tool["storescu"], "-aet", "BENCH", "-aec", "ORTHANC", "127.0.0.1", str(orthanc_port),
                                *map(str, corpus.files)], check=True, capture_output=True, env=ENV)
                print(f"Orthanc stored {n} files in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
            rss_start = peak_rss(fast_proc.pid)
            for mode in args.modes.split(","):
                target = dest if mode == "move" else got
                for aec, port in servers.values():  # warm-up
                    warm_up(functools.partial(timed, commands(mode, aec, port), target, n), target)
                peer = storescp_proc.pid if mode == "move" else 0
                for _ in range(args.runs):
                    for name, (aec, port) in servers.items():
                        results.setdefault((name, mode), []).append(timed(
                            commands(mode, aec, port), target, n, cpu.setdefault((name, mode), []), pids[name], peer))
            rss_end = peak_rss(fast_proc.pid)
    load = os.getloadavg()[0]
    print(f"\n{n} x {corpus.total_bytes / n / 1e3:.0f} KB ({args.kind}), {len(patients)} patient(s), one SCU "
          f"run per patient, {args.runs} runs each, {'peers with Nagle on (--nagle), ' if args.nagle else ''}"
          f"{platform.node()} {os.cpu_count()} CPUs, {platform.python_version()}, load average {load:.1f}\n")
    print(f"fastscp peak RSS (VmHWM): {rss_start / 1e6:.0f} MB once started and indexed, "
          f"{rss_end / 1e6:.0f} MB after the runs\n")
    print("| mode | server | median s | min s | max s | instances/s |")
    print("| --- | --- | --- | --- | --- | --- |")
    for (name, mode), times in results.items():
        med = statistics.median(times)
        print(f"| {mode} | {name} | {med:.2f} | {min(times):.2f} | {max(times):.2f} | {n / med:.0f} |")
    print("\nCPU time per instance (user + system, medians of the runs; peers: the SCUs, and the storescp "
          "destination for move):\n")
    print("| mode | server | server us/instance | peers us/instance |")
    print("| --- | --- | --- | --- |")
    for (name, mode), runs in cpu.items():
        print(f"| {mode} | {name} | {statistics.median(r[0] for r in runs) / n * 1e6:.0f} "
              f"| {statistics.median(r[1] for r in runs) / n * 1e6:.0f} |")
    for mode in args.modes.split(","):
        for other in [name for name in servers if name != "fastscp"]:
            ratio = statistics.median(results[("fastscp", mode)]) / statistics.median(results[(other, mode)])
            print(f"\n{mode}: fastscp / {other} = {ratio:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

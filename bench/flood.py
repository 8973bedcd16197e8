"""Flood benchmark: dcmtk storescu against each receiver over loopback.

For every corpus, association count and receiver (in that nesting, so the
receivers of one flood run close together in time) a fresh receiver is
started with an empty storage directory and waited for (port accepts, C-ECHO
answers); the corpus is split into N parts and N storescu processes send
them at once. Recorded per run: wall time from launching the senders until
the last exits, images/s, MB/s, the receiver tree's CPU seconds over the
flood, its peak RSS, and whether every SOP Instance UID sent is stored.
With one association, K images of a separate corpus are then sent one by
one with pynetdicom to time C-STORE round trips (p50/p99). The receiver is
stopped and its storage removed before the next.

    python bench/flood.py --receivers storescp,storescp-fork,pynetdicom,orthanc \
        --corpus large,small --assocs 1,4
"""
from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import gen_corpus
import latency
import procstat
import report
from receivers import (
    AE_TITLE,
    MAX_PDU,
    Receiver,
    build_receivers,
    dcmtk_tool,
    orthanc_exe,
    stored_sop_instance_uids,
)

BENCH_DIR = Path(__file__).resolve().parent
# Receivers write to tmpfs by default: on this VM's ext4 disk the same storescp
# flood varied by 2-4x from run to run (file creation in the journal), which
# drowns the ratios. Pass --work-dir on a disk to measure with the disk.
DEFAULT_WORK = Path("/dev/shm/fastscp-bench") if Path("/dev/shm").is_dir() else BENCH_DIR / "out" / "work"


def filesystem_of(path: Path) -> str:
    """Type and mount point of the filesystem holding path (from /proc/mounts)."""
    path = path.resolve()
    best = ("?", "")
    for line in Path("/proc/mounts").read_text().splitlines():
        _, mnt, fstype, *_ = line.split()
        if (path == Path(mnt) or Path(mnt) in path.parents) and len(mnt) >= len(best[1]):
            best = (fstype, mnt)
    return f"{best[0]} at {best[1]}"


def machine() -> dict[str, Any]:
    model = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    mem_kib = int(Path("/proc/meminfo").read_text().split()[1])
    try:
        os_name = platform.freedesktop_os_release().get("PRETTY_NAME", platform.platform())
    except OSError:
        os_name = platform.platform()
    return {"nproc": os.cpu_count(), "cpu_model": model, "mem_gib": mem_kib / 2**20,
            "os": os_name, "kernel": platform.release(), "python": platform.python_version(),
            "page_reporting": page_reporting()}


PAGE_REPORTING = Path("/sys/module/page_reporting/parameters")


def page_reporting() -> dict[str, str]:
    """The guest kernel's free page reporting settings, where it has them
    (see free_hot_pages): empty on a machine without."""
    out: dict[str, str] = {}
    if PAGE_REPORTING.is_dir():
        for entry in sorted(PAGE_REPORTING.iterdir()):
            try:
                out[entry.name] = entry.read_text().strip()
            except OSError:
                pass
    return out


def reported_kib() -> int:
    """KiB of free memory the guest has reported to the host so far (0 where unknown)."""
    try:
        return int((PAGE_REPORTING / "reported_kib").read_text())
    except (OSError, ValueError):
        return 0


def versions(dcmtk_bin: str | None) -> dict[str, str]:
    out: dict[str, str] = {}
    try:
        banner = subprocess.run([dcmtk_tool("storescu", dcmtk_bin), "--version"],
                                capture_output=True, text=True).stdout
        out["dcmtk"] = banner.split()[2] if len(banner.split()) > 2 else banner.strip()
    except (FileNotFoundError, OSError):
        pass
    try:
        first = subprocess.run([orthanc_exe(), "--version"], capture_output=True, text=True).stdout
        out["orthanc"] = first.splitlines()[0] if first else "?"
    except (FileNotFoundError, OSError):
        pass
    import pynetdicom
    out["pynetdicom"] = pynetdicom.__version__
    return out


def split(files: list[Path], parts: int) -> list[list[Path]]:
    return [files[i::parts] for i in range(parts) if files[i::parts]]


def warm_page_cache(files: list[Path]) -> None:
    """Read the corpus once so storescu reads it from memory, not from disk.

    Seen here: the page cache did not keep a corpus between runs, and a cold
    1000 x 0.5 MB corpus made storescp's flood 2x slower (the sender waited
    on the disk)."""
    buf = bytearray(1 << 20)
    for path in files:
        with open(path, "rb", buffering=0) as fh:
            while fh.readinto(buf):
                pass


def free_hot_pages(directory: Path, size: int) -> float:
    """Write ``size`` bytes into a file in ``directory`` (page cache only,
    never synced) and remove it: the seconds it took. Called right before
    each timed flood, so that the receiver's writes find free memory that
    the hypervisor backs.

    Why (measured on the 2-core EPYC VM, 2026-12-07): its kernel reports
    free memory back to the host as soon as it is free (virtio_balloon free
    page reporting, ``/sys/module/page_reporting``), and the host drops it.
    A write into the page cache that lands on such memory faults in the
    host: ``dd`` of 524 MB into a new ext4 file took 2.1-3.5 s of system
    time (94% of it in the kernel's copy into the page cache) instead of
    0.12-0.17 s, unless files had just been removed, whose pages are
    reused before they are reported. Whichever receiver ran then paid it
    ("slow spells" of docs/benchmark.md).
    On a real server new pages come from reclaimed page cache, which is
    backed; freeing a ballast the same way gives every receiver that. The
    removed file's dirty pages are dropped, so this costs no disk I/O.
    Where the guest reports at once (this kernel's ``min_free_ms`` 0) the
    ballast's pages may be reported before the flood is over; the runs of
    docs/benchmark.md ("The slow spells explained") also raised that
    setting, which is the machine's to choose, not this script's."""
    if size <= 0:
        return 0.0
    t0 = time.perf_counter()
    path = directory / ".ballast"
    chunk = bytes(1 << 20)
    with open(path, "wb", buffering=0) as fh:
        for _ in range((size + len(chunk) - 1) // len(chunk)):
            fh.write(chunk)
    path.unlink()
    return time.perf_counter() - t0


def wait_senders(senders: list[subprocess.Popen[bytes]]) -> tuple[list[int], float]:
    """Reap the storescu processes; return their exit codes and summed CPU seconds."""
    codes: list[int] = []
    cpu = 0.0
    for proc in senders:
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        codes.append(proc.returncode)
        cpu += usage.ru_utime + usage.ru_stime
    return codes, cpu


def wait_children_settled(root: int, baseline: int, timeout: float = 5.0) -> None:
    """Let forked per-association children exit, so their CPU lands in the parent."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and len(procstat.descendants(root)) > baseline:
        time.sleep(0.05)
    time.sleep(0.2)


def flood_once(receiver: Receiver, corpus: gen_corpus.Corpus, assocs: int,
               lat_corpus: gen_corpus.Corpus | None, args: argparse.Namespace) -> dict[str, Any]:
    result: dict[str, Any] = {
        "receiver": receiver.name, "corpus": corpus.name, "assocs": assocs,
        "images": len(corpus.files), "megabytes": corpus.total_bytes / 1e6,
        "corpus_key": corpus.spec.key(),
    }
    workdir = args.work_dir / f"{receiver.name}-{corpus.name}-{assocs}"
    storescu = dcmtk_tool("storescu", args.dcmtk_bin)
    echoscu = dcmtk_tool("echoscu", args.dcmtk_bin)
    inst = receiver.start(workdir)
    result["command"] = " ".join(inst.proc.args)  # type: ignore[arg-type]
    try:
        receiver.wait_ready(inst, echoscu, timeout=args.ready_timeout)
        os.sync()  # earlier runs' dirty pages must not be written back during this one
        warm_page_cache(corpus.files)
        time.sleep(args.settle)
        # the flood's writes and the latency run's after it (same receiver)
        written = corpus.total_bytes + (lat_corpus.total_bytes if lat_corpus is not None else 0)
        ballast = int(written * 1.25) + (64 << 20) if args.ballast_mb is None else args.ballast_mb << 20
        result["ballast_s"] = free_hot_pages(args.work_dir, ballast)
        root = inst.proc.pid
        baseline_children = len(procstat.descendants(root))
        cpu0 = procstat.tree_cpu_seconds(root)
        (busy0, steal0), own0 = procstat.machine_busy_seconds(), sum(os.times()[:2])
        reported0 = reported_kib()
        env = {**os.environ, "TCP_NODELAY": "1"}
        logs = []
        with procstat.PeakRssSampler(root) as rss:
            t0 = time.perf_counter()
            senders = []
            for i, part in enumerate(split(corpus.files, assocs)):
                log = open(workdir / f"storescu-{i}.log", "wb")
                logs.append(log)
                senders.append(subprocess.Popen(
                    [storescu, "-aet", f"FLOOD{i}", "-aec", AE_TITLE, "--max-pdu", str(MAX_PDU),
                     *(["--max-send-pdu", str(args.send_pdu)] if args.send_pdu else []),
                     "-nh", "127.0.0.1", str(inst.port), *map(str, part)],
                    stdout=log, stderr=subprocess.STDOUT, env=env))
            codes, sender_cpu = wait_senders(senders)
            wall = time.perf_counter() - t0
            (busy1, steal1), own1 = procstat.machine_busy_seconds(), sum(os.times()[:2])
            reported1 = reported_kib()
            wait_children_settled(root, baseline_children)
        for log in logs:
            log.close()
        cpu1 = procstat.tree_cpu_seconds(root)
        # CPU the machine spent on anything but this flood (other sessions'
        # work, kernel threads): a noise indicator. Approximate: the receiver
        # figure is read after children settle, the others at the flood's end.
        other = (busy1 - busy0) - (cpu1 - cpu0) - sender_cpu - (own1 - own0)
        result.update({
            "wall_s": wall, "images_per_s": len(corpus.files) / wall,
            "mb_per_s": corpus.total_bytes / 1e6 / wall, "cpu_s": cpu1 - cpu0,
            "peak_rss_mb": rss.peak_kib / 1024, "peak_pss_mb": rss.peak_pss_kib / 1024,
            "storescu_exit_codes": codes,
            "sender_cpu_s": sender_cpu, "other_cpu_s": max(0.0, other),
            "steal_s": steal1 - steal0,
            # memory handed back to the host during the flood: what the
            # receiver's writes may have to fault in again (free_hot_pages)
            "reported_mb": (reported1 - reported0) / 1024,
        })
        if receiver.count is not None:
            stored = receiver.stored(inst)
            result["arrived"] = min(stored, len(corpus.files))
            result["stored_count"] = stored
        else:
            uids = stored_sop_instance_uids(inst.storage)
            result["arrived"] = len(uids.intersection(corpus.sop_instance_uids))
            result["stored_count"] = len(uids)
        result["all_arrived"] = result["arrived"] == len(corpus.files) and not any(codes)
        if lat_corpus is not None:
            result["latency"] = latency.measure(inst.port, lat_corpus.files, AE_TITLE, MAX_PDU,
                                                workdir / "latency.log", sender=args.latency_sender,
                                                send_pdu=args.send_pdu)
    except Exception as exc:  # one receiver failing must not end the run
        result["error"] = f"{type(exc).__name__}: {exc}"
        result["all_arrived"] = False
        print(f"  ! {receiver.name}: {result['error']}", file=sys.stderr)
    finally:
        receiver.stop(inst)
        if not args.keep:
            to_trash(inst.storage, args)
    return result


def to_trash(tree: Path, args: argparse.Namespace) -> None:
    """Put a received tree aside instead of deleting it now, and empty the
    aside pile once it holds more than --trash-gb. On ext4 without a journal
    (this benchmark machine's disk) the kernel will not reuse an inode freed
    in the last 60 s or more, and walks past each such one when it creates a
    file (``recently_deleted`` in fs/ext4/ialloc.c): a receiver whose folder
    landed among 5000 just-deleted inodes paid up to 200 us of CPU per file
    created. Deleting at the end keeps one run's cleanup out of the next."""
    trash = args.work_dir / ".trash"
    trash.mkdir(parents=True, exist_ok=True)
    if tree.exists():
        size = sum(f.stat().st_size for f in tree.rglob("*") if f.is_file())  # this tree only
        tree.rename(trash / f"{len(list(trash.iterdir()))}-{tree.parent.name}")
        _trash_bytes[trash] = _trash_bytes.get(trash, 0) + size
    if _trash_bytes.get(trash, 0) > args.trash_gb * 1e9:
        empty_trash(args)


_trash_bytes: dict[Path, int] = {}  # bytes put aside in each trash folder since it was last emptied


def empty_trash(args: argparse.Namespace) -> None:
    trash = args.work_dir / ".trash"
    shutil.rmtree(trash, ignore_errors=True)
    _trash_bytes.pop(trash, None)


def median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    ok = [r for r in runs if r.get("wall_s") is not None]
    if not ok:
        return runs[0]
    best = sorted(ok, key=lambda r: r["wall_s"])[len(ok) // 2]
    best = dict(best)
    best["all_arrived"] = all(r.get("all_arrived") for r in runs)
    best["repeats_wall_s"] = [r.get("wall_s") for r in runs]
    latencies = [r["latency"] for r in runs if r.get("latency")]
    if latencies:  # each figure the median over the repeats, not the median-wall repeat's own
        best["latency"] = latency.median_of(latencies)
    # a repeat that lost images is not the median one: say which, and how
    best["repeats_failed"] = [
        {"repeat": i, "arrived": r.get("arrived"), "storescu_exit_codes": r.get("storescu_exit_codes"),
         "error": r.get("error")}
        for i, r in enumerate(runs) if not r.get("all_arrived")
    ]
    return best


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--receivers", default="fastscp,storescp,storescp-fork,pynetdicom,orthanc")
    ap.add_argument("--corpus", default="large,small", help="comma list of large,small,multiframe")
    ap.add_argument("--assocs", default="1,4", help="comma list of association counts")
    ap.add_argument("--large-count", type=int, default=200)
    ap.add_argument("--small-count", type=int, default=1000)
    ap.add_argument("--multiframe-mb", type=int, default=64,
                    help="size of the multi-frame instance (2048 for the 2 GB target)")
    ap.add_argument("--latency-count", type=int, default=100,
                    help="images sent one by one for p50/p99 (0: skip)")
    ap.add_argument("--latency-sender", choices=("raw", "pynetdicom"), default="raw",
                    help="raw: bench/rawscu.py, a few tens of us of its own per message (default); "
                         "pynetdicom: 3-5 ms of its own")
    ap.add_argument("--repeat", type=int, default=3,
                    help="runs per flood, each on a fresh receiver; the median wall time is kept")
    ap.add_argument("--fastscp-cmd", default=None, help="fastscp executable (default: on PATH)")
    ap.add_argument("--dcmtk-bin", default=None, help="directory of dcmtk programs")
    ap.add_argument("--corpus-dir", type=Path, default=gen_corpus.DEFAULT_ROOT)
    ap.add_argument("--work-dir", type=Path, default=DEFAULT_WORK,
                    help="where receivers store (default tmpfs /dev/shm/fastscp-bench)")
    ap.add_argument("--out-dir", type=Path, default=BENCH_DIR / "out")
    ap.add_argument("--update-readme-snippet", type=Path, default=None, metavar="FILE",
                    help="also write the markdown table to FILE")
    ap.add_argument("--settle", type=float, default=0.5, help="idle seconds before a flood")
    ap.add_argument("--ready-timeout", type=float, default=60.0)
    ap.add_argument("--flood-timeout", type=float, default=3600.0)
    ap.add_argument("--trash-gb", type=float, default=10.0,
                    help="received trees are deleted at the end of the run, or once they pass this size "
                         "(see to_trash)")
    ap.add_argument("--keep", action="store_true", help="keep received files")
    ap.add_argument("--send-pdu", type=int, default=0, metavar="BYTES",
                    help="the senders' own limit on the PDUs they send (storescu --max-send-pdu, and the raw "
                         "latency sender), e.g. 16384 as dcmtk's and pynetdicom's receivers announce; "
                         "0 = the receiver's maximum (131072)")
    ap.add_argument("--ballast-mb", type=int, default=None,
                    help="MB written to a file in --work-dir and removed right before each flood, so that "
                         "the receiver's writes find memory the hypervisor backs (see free_hot_pages; "
                         "0 = off; default: the corpus's size, and the latency corpus's, x 1.25 + 64)")
    args = ap.parse_args(argv)
    if args.send_pdu and not 4096 <= args.send_pdu <= MAX_PDU:
        ap.error(f"--send-pdu must be 0 or 4096..{MAX_PDU} (what storescu takes)")
    if args.send_pdu and args.latency_sender != "raw":
        ap.error("--send-pdu limits the raw latency sender only")
    # A SIGTERM to the harness must still stop the receiver it started (finally blocks).
    def on_sigterm(signum: int, frame: object) -> None:
        print("flood.py: SIGTERM, stopping the receiver and exiting", file=sys.stderr)
        sys.exit(128 + signum)

    signal.signal(signal.SIGTERM, on_sigterm)
    # Receivers run with their work directory as cwd: every path they get is absolute.
    args.work_dir = args.work_dir.resolve()
    args.corpus_dir = args.corpus_dir.resolve()

    if page_reporting().get("min_free_ms") == "0":
        print("flood.py: this guest hands free memory back to its host at once (page_reporting "
              "min_free_ms 0): expect slow spells; see free_hot_pages", file=sys.stderr)
    all_receivers = build_receivers(args.fastscp_cmd, args.dcmtk_bin)
    names = [n for n in args.receivers.split(",") if n]
    unknown = [n for n in names if n not in all_receivers]
    if unknown:
        ap.error(f"unknown receivers {unknown}; known: {sorted(all_receivers)}")
    counts = {"large": args.large_count, "small": args.small_count, "multiframe": 1}
    kinds = [k for k in args.corpus.split(",") if k]
    corpora = {k: gen_corpus.ensure_corpus(gen_corpus.default_spec(k, counts[k], args.multiframe_mb),
                                           args.corpus_dir) for k in kinds}
    lat_corpora: dict[str, gen_corpus.Corpus] = {}
    if args.latency_count > 0:
        for k in kinds:
            if k != "multiframe":
                spec = gen_corpus.default_spec(k, args.latency_count)
                spec = gen_corpus.CorpusSpec(**{**spec.__dict__, "seed": spec.seed + 1})
                lat_corpora[k] = gen_corpus.ensure_corpus(spec, args.corpus_dir)
    assoc_counts = [int(a) for a in args.assocs.split(",") if a]

    run: dict[str, Any] = {
        "started": dt.datetime.now().isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
        "machine": {**machine(), **versions(args.dcmtk_bin)},
        "storage": f"{args.work_dir} ({filesystem_of(args.work_dir.parent)})",
        "repeat": args.repeat, "max_pdu": MAX_PDU, "send_pdu": args.send_pdu, "latency_sender": args.latency_sender,
        "receivers": {n: all_receivers[n].notes for n in names},
        "results": [],
    }
    for kind in kinds:
        for assocs in assoc_counts:
            lat = lat_corpora.get(kind) if assocs == 1 else None
            # repeats interleaved (every receiver once, then again): on a
            # shared machine the load drifts, and back-to-back repeats of one
            # receiver would all meet the same spell
            runs: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
            for _ in range(args.repeat):
                for name in names:
                    runs[name].append(flood_once(all_receivers[name], corpora[kind], assocs, lat, args))
            for name in names:
                r = median_run(runs[name])
                run["results"].append(r)
                lat_txt = ""
                if r.get("latency"):
                    lat_txt = f" p50 {r['latency']['p50_ms']:.2f} ms p99 {r['latency']['p99_ms']:.2f} ms"
                wall = f"{r['wall_s']:.2f} s" if r.get("wall_s") is not None else "failed"
                print(f"{kind:10s} x{assocs} {name:14s} {wall} "
                      f"cpu {r.get('cpu_s', 0):.2f} s rss {r.get('peak_rss_mb', 0):.0f} MB "
                      f"arrived {r.get('arrived', 0)}/{r['images']}{lat_txt}", file=sys.stderr)
    if not args.keep:
        empty_trash(args)
    run["finished"] = dt.datetime.now().isoformat(timespec="seconds")
    paths = report.write_all(run, args.out_dir, args.update_readme_snippet)
    print(report.markdown_table(run))
    for kind, path in paths.items():
        print(f"{kind}: {path}", file=sys.stderr)
    return 0 if all(r.get("all_arrived") for r in run["results"]) else 1


if __name__ == "__main__":
    sys.exit(main())

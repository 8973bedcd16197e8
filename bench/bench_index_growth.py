"""Start-up time and memory of ``fastscp serve`` as its index grows.

For each size N, builds an index of N synthetic instance rows (DuckDB bulk
insert: about 10 s for 10 M rows here), starts ``fastscp serve`` on an empty
storage tree (or one with ``--files`` small real files that the index does
not know, for reconcile to index) and measures:

- ``listen s``: from the process start to the first accepted TCP connection;
- ``PSS listen``: memory right then, as PSS summed over the server and its
  children (``/proc/<pid>/smaps_rollup``: shared pages counted once);
- ``ready s`` / ``PSS ready``: the duplicate check's filter holds the index
  (log line ``duplicate check ready``; ``duplicate check warmed`` from the
  versions that loaded a map before listening, which this also measures;
  ``kept by the last clean stop`` when it was read back, with ``--restart``);
- ``reconciled s`` / ``PSS end``: the background reconcile logged its end;
- ``PSS peak``: the largest sum sampled every 50 ms over the run;
- ``B/inst``: (``PSS end`` at N - ``PSS end`` at the first size) / N.

The rows are ``--row-status missing`` by default: an archive whose files
are not on this disk (no N files to make here), which reconcile walks past.
``present`` makes reconcile mark all N missing, in one UPDATE, which the
figures then include.

    python bench/bench_index_growth.py --sizes 0,1000000,10000000 [--work-dir DIR] [--files 1000] [--json out.json]
    python bench/bench_index_growth.py --sizes 0,10000000 --restart   # then a second start on each index
    python bench/bench_index_growth.py --compare-map 2000000   # the old map beside the filter

``--compare-map N`` loads, each in a fresh interpreter, the duplicate map the
versions before the filter warmed at start and the filter, from one index of
N present rows, and prints the PSS each added.

Figures depend on the machine: give it with them.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from ports import free_port  # noqa: E402
from procstat import descendants  # noqa: E402

from fastscp.catalog import schema  # noqa: E402

UID_ROOT = "1.2.826.0.1.3680043.9.9999"


@dataclass
class Run:
    rows: int
    files: int
    listen_s: float
    pss_listen_mb: float
    ready_s: float
    pss_ready_mb: float
    reconciled_s: float
    pss_end_mb: float
    pss_peak_mb: float
    index_mb: float
    bytes_per_instance: float = 0.0
    start: str = "first"  # or "restart": after the first start's clean stop


def build_index(db: Path, storage: Path, rows: int, status: str) -> float:
    """N synthetic rows: 10 instances a series, 4 series a study, 2 studies a
    patient, paths under ``storage`` as the receiver writes them. Returns seconds."""
    t0 = time.perf_counter()
    conn = schema.connect(db)
    try:
        conn.execute("UPDATE catalog_meta SET storage_root = ?", [str(storage)])
        if rows:
            conn.execute(f"""
                INSERT INTO instances (sop_instance_uid, sop_class_uid, series_instance_uid, study_instance_uid,
                    patient_id, instance_number, transfer_syntax_uid, "rows", "columns", number_of_frames,
                    path, file_size, dataset_size, content_hash, received_at, calling_ae, called_ae, peer,
                    association_id, duplicate, source, status)
                SELECT '{UID_ROOT}.' || i, '1.2.840.10008.5.1.4.1.1.2', '{UID_ROOT}.2.' || (i // 10),
                    '{UID_ROOT}.1.' || (i // 40), 'P' || lpad((i // 80)::VARCHAR, 8, '0'), i % 10 + 1,
                    '1.2.840.10008.1.2.1', 512, 512, 1,
                    ? || '/P' || lpad((i // 80)::VARCHAR, 8, '0') || '/' || (i // 40) || '/' || (i // 10)
                        || '/' || i || '.dcm',
                    524700, 524288, md5(i::VARCHAR), now()::TIMESTAMP - to_seconds(i % 31536000),
                    'MODALITY', 'FASTSCP', '10.0.0.1:4000', 'a' || (i // 40), '', 'received', ?
                FROM range(?) t(i)""", [str(storage), status, rows])
        conn.execute("CHECKPOINT")
    finally:
        conn.close()
    return time.perf_counter() - t0


def make_files(storage: Path, count: int) -> None:
    """``count`` small real Part-10 files the index does not know."""
    if not count:
        return
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian

    for i in range(count):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
        meta.MediaStorageSOPInstanceUID = f"{UID_ROOT}.7.{i}"
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
        ds.PatientID, ds.PatientName, ds.Modality = f"F{i // 100}", "FILE^ONLY", "OT"
        ds.StudyInstanceUID, ds.SeriesInstanceUID = f"{UID_ROOT}.8.{i // 100}", f"{UID_ROOT}.9.{i // 10}"
        path = storage / "files" / str(i // 1000) / f"{i}.dcm"
        path.parent.mkdir(parents=True, exist_ok=True)
        ds.save_as(path, enforce_file_format=True)


def pss_kib(pid: int) -> int:
    """PSS of ``pid`` and its descendants, in KiB (0 for a process gone)."""
    total = 0
    for p in [pid, *descendants(pid)]:
        try:
            with open(f"/proc/{p}/smaps_rollup") as fh:
                for line in fh:
                    if line.startswith("Pss:"):
                        total += int(line.split()[1])
                        break
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
    return total


class PssSampler:
    def __init__(self, pid: int, interval: float = 0.05) -> None:
        self.pid, self.interval, self.peak = pid, interval, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, pss_kib(self.pid))
            self._stop.wait(self.interval)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak


def wait_for(predicate, timeout: float, what: str) -> float:  # type: ignore[no-untyped-def]
    t0 = time.monotonic()
    while not predicate():
        if time.monotonic() - t0 > timeout:
            raise TimeoutError(f"no {what} after {timeout} s")
        time.sleep(0.005)
    return time.monotonic()


def measure(work: Path, rows: int, files: int, status: str, timeout: float, restart: bool = False) -> list[Run]:
    """One start on a fresh index of ``rows`` rows (and ``files`` files the
    index does not know); with ``restart``, a second start after the first
    one's clean stop, which reads the duplicate filter that stop kept
    (catalog/filtersave.py) instead of filling it."""
    case = work / f"n{rows}"
    shutil.rmtree(case, ignore_errors=True)
    storage = (case / "store").resolve()
    storage.mkdir(parents=True)
    db = case / "index.db"
    built = build_index(db, storage, rows, status)
    make_files(storage, files)
    print(f"  index of {rows} rows built in {built:.1f} s ({db.stat().st_size / 1e6:.0f} MB)", flush=True)
    try:
        runs = [serve_once(case, storage, db, rows, files, timeout, "first")]
        if restart:
            runs.append(serve_once(case, storage, db, rows, files, timeout, "restart"))
    finally:
        shutil.rmtree(case, ignore_errors=True)
    return runs


def serve_once(case: Path, storage: Path, db: Path, rows: int, files: int, timeout: float, start: str) -> Run:
    """Start ``fastscp serve`` on ``db``, measure, stop it cleanly (SIGTERM)."""
    port = free_port()
    log = case / f"serve-{start}.log"
    cmd = [sys.executable, "-m", "fastscp.cli", "serve", str(port), "BENCH", "--storage-dir", str(storage),
           "--index-db", str(db), "--status-port", "0"]
    with open(log, "wb") as out:
        t0 = time.monotonic()
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=case)
        sampler = PssSampler(proc.pid)
        try:
            def listening() -> bool:
                if proc.poll() is not None:
                    raise RuntimeError(f"fastscp serve exited with {proc.returncode}: {log.read_text()[-2000:]}")
                try:
                    with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                        return True
                except OSError:
                    return False

            t_listen = wait_for(listening, timeout, "listening")
            pss_listen = pss_kib(proc.pid)

            def logged(*texts: str) -> bool:
                if proc.poll() is not None:
                    raise RuntimeError(f"fastscp serve exited with {proc.returncode}")
                text = log.read_text(errors="replace")
                return any(t in text for t in texts)

            # "warmed": the duplicate map of versions before the filter, filled before listening;
            # "kept by the last clean stop": read back before listening
            t_ready = wait_for(lambda: logged("duplicate check ready", "duplicate check warmed",
                                              "kept by the last clean stop"), timeout, "filled filter")
            pss_ready = pss_kib(proc.pid)
            t_rec = wait_for(lambda: logged(" reconciled with "), timeout, "reconcile")
            pss_end = pss_kib(proc.pid)
        finally:
            peak = sampler.stop()
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    peak = max(peak, pss_listen, pss_ready, pss_end)
    return Run(rows, files, t_listen - t0, pss_listen / 1024, t_ready - t0, pss_ready / 1024, t_rec - t0,
               pss_end / 1024, peak / 1024, db.stat().st_size / 1e6, start=start)


# One structure in a fresh interpreter: PSS before and after loading it from the index.
_STRUCTURE = r"""
import sys, time
from pathlib import Path
def pss():
    with open('/proc/self/smaps_rollup') as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith('Pss:')) / 1024
from fastscp.catalog import CatalogWriter, iter_stored_instances
from fastscp.catalog.known import count_instances, fill_filter
from fastscp.storage.duplicates import SeenInstances
from fastscp.storage.uidfilter import UidFilter
import numpy  # noqa: F401  (imported by serve anyway: not counted)
db, root, kind = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
writer = CatalogWriter(db)
conn = writer.cursor()
before, t0 = pss(), time.perf_counter()
if kind == "map":
    held = SeenInstances()
    n = held.warm(iter_stored_instances(conn, root))
else:
    held = UidFilter.for_rows(count_instances(conn))
    n = fill_filter(conn, held)
print(n, time.perf_counter() - t0, pss() - before)
conn.close()
writer.close()
"""


def compare_structures(work: Path, rows: int) -> list[dict[str, float | int | str]]:
    """The duplicate map of the versions before the filter (``SeenInstances``
    warmed from the index) and the filter (``fill_filter``), each loaded in a
    fresh interpreter from one index of ``rows`` present rows."""
    case = work / f"compare{rows}"
    shutil.rmtree(case, ignore_errors=True)
    storage = (case / "store").resolve()
    storage.mkdir(parents=True)
    db = case / "index.db"
    build_index(db, storage, rows, "present")
    out: list[dict[str, float | int | str]] = []
    try:
        for kind in ("filter", "map"):
            done = subprocess.run([sys.executable, "-c", _STRUCTURE, str(db), str(storage), kind], check=True,
                                  capture_output=True, text=True, cwd=case)
            n, seconds, grown = done.stdout.split()
            out.append({"structure": kind, "rows": int(n), "seconds": float(seconds), "pss_mb": float(grown),
                        "bytes_per_instance": float(grown) * 2**20 / max(int(n), 1)})
    finally:
        shutil.rmtree(case, ignore_errors=True)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="0,1000000", help="comma-separated index sizes (rows)")
    ap.add_argument("--files", type=int, default=0, help="unindexed files in the tree, for reconcile")
    ap.add_argument("--row-status", choices=("missing", "present"), default="missing")
    ap.add_argument("--work-dir", default="", help="where indexes and trees go (default: a temp dir, removed)")
    ap.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for each step")
    ap.add_argument("--json", default="", help="write the results here too")
    ap.add_argument("--restart", action="store_true",
                    help="start each index twice: the second start reads the filter the first one's stop kept")
    ap.add_argument("--compare-map", type=int, default=0, metavar="N",
                    help="instead: the memory of the old duplicate map and of the filter for N present rows")
    args = ap.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    tmp = None
    if args.work_dir:
        work = Path(args.work_dir)
        work.mkdir(parents=True, exist_ok=True)
    else:
        tmp = tempfile.TemporaryDirectory(prefix="fastscp-index-growth-")
        work = Path(tmp.name)
    runs: list[Run] = []
    if args.compare_map:
        try:
            compared = compare_structures(work, args.compare_map)
        finally:
            if tmp is not None:
                tmp.cleanup()
        print(f"{'structure':>9} {'rows':>10} {'load s':>7} {'PSS MB':>8} {'B/inst':>7}")
        for c in compared:
            print(f"{c['structure']:>9} {c['rows']:>10} {c['seconds']:>7.1f} {c['pss_mb']:>8.1f} "
                  f"{c['bytes_per_instance']:>7.1f}")
        if args.json:
            Path(args.json).write_text(json.dumps({"cpus": os.cpu_count(), "compared": compared}, indent=2))
        return 0
    try:
        print(f"{'rows':>10} {'start':>7} {'files':>6} {'listen s':>8} {'PSS listen':>10} {'ready s':>7} "
              f"{'PSS ready':>9} {'reconciled s':>12} {'PSS end':>8} {'PSS peak':>8} {'B/inst':>7}", flush=True)
        for rows in sizes:
            for run in measure(work, rows, args.files, args.row_status, args.timeout, args.restart):
                base = next((r for r in runs if r.start == run.start), None)  # the first size, same kind of start
                if base is not None and rows != base.rows:
                    run.bytes_per_instance = (run.pss_end_mb - base.pss_end_mb) * 2**20 / (rows - base.rows)
                runs.append(run)
                print(f"{run.rows:>10} {run.start:>7} {run.files:>6} {run.listen_s:>8.2f} {run.pss_listen_mb:>8.1f}MB "
                      f"{run.ready_s:>7.2f} {run.pss_ready_mb:>7.1f}MB {run.reconciled_s:>12.2f} "
                      f"{run.pss_end_mb:>6.1f}MB {run.pss_peak_mb:>6.1f}MB {run.bytes_per_instance:>7.1f}",
                      flush=True)
    finally:
        if tmp is not None:
            tmp.cleanup()
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": os.uname()._asdict() if hasattr(os.uname(), "_asdict")
                                               else list(os.uname()), "cpus": os.cpu_count(),
                                               "runs": [asdict(r) for r in runs]}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

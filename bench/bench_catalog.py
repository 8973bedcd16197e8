"""Catalog benchmarks: what the index writer costs per instance, and how fast
reindex parses a tree of small files.

  python bench/bench_catalog.py [--rows 1000000] [--sweep 50000] [--files 3000]

1. enqueue: the cost of ``CatalogWriter.enqueue`` on the caller's thread (the
   event loop's share), measured with the writer idle.
2. sweep: rows/s and process CPU per row for several batch sizes (all rows
   queued at once, then ``close``), to pick the batch size.
3. load: ``--rows`` rows produced one by one, honouring backpressure
   (``enqueue`` False -> wait for ``on_resume``), end-to-end rows/s into one file.
4. reindex: files/s of ``reconcile`` over ``--files`` generated Part-10 files.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from test_catalog_support import make_info, write_instance

from fastscp.catalog import CatalogWriter, reconcile


def bench_enqueue(tmp: Path, n: int) -> float:
    infos = [make_info(i) for i in range(n)]
    w = CatalogWriter(tmp / "enq.db", batch_size=10 * n, flush_interval=3600, flush_quiet=3600, high_water=10 * n)
    t = time.perf_counter()
    for info in infos:
        w.enqueue(info)
    per_call = (time.perf_counter() - t) / n
    w.close()
    return per_call


def bench_sweep(tmp: Path, n: int, batch_size: int) -> tuple[float, float, float]:
    infos = [make_info(i, study=i // 500, series=(i // 100) % 5) for i in range(n)]
    db = tmp / f"sweep{batch_size}.db"
    w = CatalogWriter(db, batch_size=batch_size, flush_interval=0.2, high_water=10 * n)
    c0, t0 = time.process_time(), time.perf_counter()
    for info in infos:
        w.enqueue(info)
    w.close()
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return n / wall, cpu / n, w.last_batch_seconds


def bench_load(tmp: Path, n: int, batch_size: int) -> tuple[float, float, int, int]:
    db = tmp / "load.db"
    resume = threading.Event()
    w = CatalogWriter(db, batch_size=batch_size, flush_interval=0.2, high_water=20_000,
                      on_resume=resume.set)
    pauses = 0
    c0, t0 = time.process_time(), time.perf_counter()
    for i in range(n):
        if not w.enqueue(make_info(i, study=i // 500, series=(i // 100) % 5)):
            pauses += 1
            resume.wait()
            resume.clear()
    w.close()
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return n / wall, cpu / n, pauses, os.path.getsize(db)


def bench_reindex(tmp: Path, files: int) -> tuple[float, float]:
    root = tmp / "store"
    for i in range(files):
        study = f"1.2.826.0.1.3680043.9.71.{i // 300}"
        write_instance(root / f"{i // 300}" / f"{i}.dcm", f"{study}.1.{i}", study, f"{study}.1",
                       instance_number=i)
    out = []
    for workers in (1, os.cpu_count() or 1):
        db = tmp / f"reindex{workers}.db"
        report = reconcile(root, db, workers=workers, progress=False)
        assert report.indexed == files, report
        out.append(report.files_per_second)
    return out[0], out[1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--sweep", type=int, default=50_000)
    ap.add_argument("--files", type=int, default=3000)
    ap.add_argument("--batch-size", type=int, default=1000, help="batch size for the load")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench_catalog_"))
    try:
        print(f"cpus={os.cpu_count()} python={sys.version.split()[0]}")
        per_call = bench_enqueue(tmp, 100_000)
        print(f"enqueue: {per_call * 1e6:.2f} us per call on the caller's thread")
        for bs in (100, 250, 1000, 5000):
            rate, cpu, last = bench_sweep(tmp, args.sweep, bs)
            print(f"sweep batch={bs:5d}: {rate:8.0f} rows/s, {cpu * 1e6:6.1f} us CPU/row, "
                  f"last batch {last * 1e3:6.1f} ms")
        if args.rows:
            rate, cpu, pauses, size = bench_load(tmp, args.rows, args.batch_size)
            print(f"load {args.rows} rows (batch {args.batch_size}): {rate:8.0f} rows/s, "
                  f"{cpu * 1e6:6.1f} us CPU/row incl. making the InstanceInfo, "
                  f"{pauses} backpressure pauses, db {size / 2**20:.0f} MiB")
        if args.files:
            one, many = bench_reindex(tmp, args.files)
            print(f"reindex {args.files} files: {one:6.0f} files/s (1 process), "
                  f"{many:6.0f} files/s ({os.cpu_count()} processes)")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The index writer's memory on a big index: the server's ``CatalogWriter``
writing bursts of new instances, with a quiet spell after each.

The index is filled first to ``--rows`` instances (``bench_index_scale``'s
bulk fill: DuckDB ``INSERT ... SELECT``, then a checkpoint), or an existing
one is copied (``--from``). Then, in this process, the writer the server runs
(``fastscp.catalog.CatalogWriter``, batches of ``--batch`` rows) takes
``--bursts`` bursts of ``--burst`` new instances each; after each burst
nothing comes for ``--quiet`` seconds, so the writer's quiet checkpoint runs
when the WAL has grown past its threshold. Printed per burst: the
process's PSS after the burst and after the quiet spell, the highest PSS seen
(sampled every 10 ms), each batch's write time, and the checkpoints so far;
at the end DuckDB's own account (``duckdb_memory()``).

    python bench/writer_memory.py --rows 10000000 --bursts 60 --work-dir DIR
    python bench/writer_memory.py --from DIR/index.db --bursts 60 --memory-limit 0

``--memory-limit`` is ``database.memory_limit`` in bytes (0: DuckDB's
default, 80% of RAM). The index takes a few GB at 10 M rows: give a disk.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import shutil
import statistics
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import bench_index_scale  # noqa: E402
import procstat  # noqa: E402

from fastscp.catalog import CatalogWriter, schema  # noqa: E402
from fastscp.instance import InstanceInfo  # noqa: E402


def pss_mb() -> float:
    return procstat.pss_kib(os.getpid()) / 1024


def instance(i: int) -> InstanceInfo:
    """A new instance of study ``i // 100``, series ``i // 25``: UIDs apart from the fill's."""
    return InstanceInfo.from_fields({
        "sop_class_uid": "1.2.840.10008.5.1.4.1.1.2", "sop_instance_uid": f"1.2.826.0.1.3680043.99.{i}",
        "study_instance_uid": f"1.2.826.0.1.3680043.98.{i // 100}",
        "series_instance_uid": f"1.2.826.0.1.3680043.97.{i // 25}", "patient_id": f"W{i // 200:09d}",
        "patient_name": "WRITER^TEST", "modality": "CT", "study_date": "20261207", "instance_number": i % 25 + 1,
        "rows": 512, "columns": 512, "transfer_syntax_uid": "1.2.840.10008.1.2.1", "calling_ae": "BENCH",
        "called_ae": "FASTSCP", "peer": "127.0.0.1:4000", "association_id": f"w{i // 5000}",
        "received_at": time.time(), "dataset_size": 524288, "file_size": 524700,
        "path": f"/archive/W/{i // 100}/{i // 25}/{i}.dcm", "content_hash": f"{i:032x}",
    })


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=10_000_000, help="instances to fill the index with first")
    ap.add_argument("--from", dest="source", default="", help="copy this index instead of filling one")
    ap.add_argument("--work-dir", default="", help="where the index goes (default: a temp dir)")
    ap.add_argument("--bursts", type=int, default=20)
    ap.add_argument("--burst", type=int, default=50_000, help="new instances per burst")
    ap.add_argument("--batch", type=int, default=5000, help="rows per batch (database.batch_size)")
    ap.add_argument("--quiet", type=float, default=3.0, help="quiet spell after each burst (database.quiet_checkpoint)")
    ap.add_argument("--memory-limit", type=int, default=64 * 1024 * 1024,
                    help="database.memory_limit in bytes; 0 = DuckDB's default")
    args = ap.parse_args(argv)

    work = Path(args.work_dir) if args.work_dir else Path(os.environ.get("TMPDIR", "/tmp")) / "fastscp-writer-memory"
    work.mkdir(parents=True, exist_ok=True)
    db = work / "index.db"
    for stale in (db, Path(f"{db}.wal")):
        stale.unlink(missing_ok=True)
    started = time.perf_counter()
    if args.source:
        shutil.copyfile(args.source, db)
        print(f"copied {args.source} in {time.perf_counter() - started:.1f} s", flush=True)
    else:
        conn = schema.connect(db)
        bench_index_scale.bulk_fill(conn, 0, args.rows, args.rows, dt.datetime.now())
        conn.close()
        print(f"filled {args.rows} instances in {time.perf_counter() - started:.1f} s", flush=True)

    peak = [0.0]
    sampling = [True]

    def sample() -> None:
        while sampling[0]:
            peak[0] = max(peak[0], pss_mb())
            time.sleep(0.01)

    threading.Thread(target=sample, daemon=True).start()
    limit = args.memory_limit or None
    writer = CatalogWriter(db, batch_size=args.batch, flush_interval=3600, flush_quiet=3600,
                           high_water=args.burst + args.batch, quiet_checkpoint=args.quiet, memory_limit=limit)
    writer.flush()
    print(f"open: PSS {pss_mb():.0f} MB; memory_limit {limit or 'DuckDB default'}", flush=True)
    batch_times: list[float] = []
    for b in range(args.bursts):
        peak[0] = 0.0
        times = []
        for start in range(b * args.burst, (b + 1) * args.burst, args.batch):
            for i in range(start, min(start + args.batch, (b + 1) * args.burst)):
                writer.enqueue(instance(i))
            t = time.perf_counter()
            writer.flush()
            times.append(time.perf_counter() - t)
        after_burst = pss_mb()
        time.sleep(args.quiet + 1.0)  # the quiet spell: the writer checkpoints in it if its WAL is large enough
        batch_times += times
        print(f"burst {b}: {(b + 1) * args.burst} new rows; PSS after it {after_burst:.0f} MB, after the quiet "
              f"spell {pss_mb():.0f} MB, highest {peak[0]:.0f} MB; batch s median {statistics.median(times):.2f} "
              f"max {max(times):.2f}; checkpoints {writer.checkpoints}", flush=True)
    cur = writer.cursor()
    for tag, used in cur.execute("SELECT tag, memory_usage_bytes FROM duckdb_memory() "
                                 "WHERE memory_usage_bytes > 0 ORDER BY 2 DESC").fetchall():
        print(f"duckdb_memory {tag}: {used / 2**20:.1f} MiB")
    cur.close()
    writer.close()
    sampling[0] = False
    print(f"batches: median {statistics.median(batch_times):.3f} s, max {max(batch_times):.3f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

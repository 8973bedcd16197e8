"""C-FIND query engine over a generated index: STUDY-level latency.

Fills a DuckDB index with N generated instances through the project's
BatchWriter (the writer thread's own code path), then times STUDY-level
queries as the C-FIND service's worker runs them, minus decoding the request:
``fastscp.qr.find_responses`` (parse, SQL, streaming, derived counts) and
each response encoded in Explicit VR Little Endian
(``services.identifiers.encode_response``); no network. Each query is
drained to its last response:

- by PatientID (Study Root, the usual viewer query), and
- by StudyDate range (one month) plus ModalitiesInStudy.

Both ask the return keys a viewer asks (names, date/time, accession, Study
ID, description, Modalities in Study, Number of Study Related Series and
Instances). Prints p50/p90/p99/max wall-clock time per query kind, this
process's CPU time per query (DuckDB runs with one thread here, as in
``schema.connect``), the matches per query and the load average.

    python bench/bench_cfind.py --instances 1000000 --queries 300
    python bench/bench_cfind.py --db /path/kept.db --reuse   # skip the fill

Shape of the generated data: ``--per-study`` instances per study (100) in
``--series`` series (4), two studies per patient, study dates uniform over
ten years, seven modalities. The issue's target (issue 22): p50 < 20 ms,
p99 < 100 ms at 1,000,000 instances.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from pydicom.dataset import Dataset

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fastscp.catalog import schema
from fastscp.catalog.rows import BatchWriter
from fastscp.instance import InstanceInfo
from fastscp.qr import InformationModel, find_responses
from fastscp.services.identifiers import encode_response

MODALITIES = ("CT", "MR", "CR", "US", "DX", "MG", "PT")
CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
EXPLICIT_LE = "1.2.840.10008.1.2.1"
START = 16436  # days since 1970-01-01: 2015-01-01


def _date(day: int) -> str:
    return time.strftime("%Y%m%d", time.gmtime(day * 86400))


def generate(n: int, per_study: int, series: int, seed: int) -> Iterator[InstanceInfo]:
    rng = random.Random(seed)
    studies = max(1, n // per_study)
    made = 0
    for s in range(studies):
        patient = s // 2
        day = START + rng.randrange(3650)
        modality = MODALITIES[rng.randrange(len(MODALITIES))]
        # UIDs as real senders make them: not in reception order (a counter
        # would sort row groups by UID and let DuckDB's zone maps skip them)
        study_uid = f"2.25.{rng.getrandbits(100)}"
        for k in range(per_study):
            if made >= n:
                return
            se = k % series
            yield InstanceInfo(
                sop_class_uid=CT_IMAGE, sop_instance_uid=f"2.25.{rng.getrandbits(100)}",
                transfer_syntax_uid="1.2.840.10008.1.2.1",
                patient_id=f"PAT{patient:07d}", patient_name=f"Name{patient}^Given",
                patient_birth_date="19600101", patient_sex="FM"[patient % 2],
                study_instance_uid=study_uid, study_date=_date(day), study_time="101500",
                accession_number=f"A{s:08d}", study_id=str(s % 10000), study_description="Bench study",
                series_instance_uid=f"{study_uid}.{se}", modality=modality if se else "SR",
                series_number=se + 1, instance_number=k + 1, rows=512, columns=512,
                path=f"/bench/{made}.dcm", file_size=500_000, received_at=time.time(),
            )
            made += 1


def fill(db: Path, n: int, per_study: int, series: int, seed: int) -> float:
    conn = schema.connect(db)
    writer = BatchWriter(conn)
    t0 = time.perf_counter()
    batch: list[InstanceInfo] = []
    for info in generate(n, per_study, series, seed):
        batch.append(info)
        if len(batch) >= 5000:
            writer.write(batch)
            batch = []
    if batch:
        writer.write(batch)
    conn.execute("CHECKPOINT")
    conn.close()
    return time.perf_counter() - t0


RETURN_KEYS = ("PatientName", "PatientID", "StudyDate", "StudyTime", "AccessionNumber", "StudyID",
               "StudyInstanceUID", "StudyDescription", "ModalitiesInStudy")


def identifier(**match: str) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    for keyword in RETURN_KEYS:
        setattr(ds, keyword, match.get(keyword, ""))
    ds.NumberOfStudyRelatedSeries = None
    ds.NumberOfStudyRelatedInstances = None
    return ds


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--instances", type=int, default=1_000_000)
    ap.add_argument("--per-study", type=int, default=100)
    ap.add_argument("--series", type=int, default=4)
    ap.add_argument("--queries", type=int, default=300, help="queries per kind")
    ap.add_argument("--seed", type=int, default=22)
    ap.add_argument("--db", type=Path, help="index file (default: a temporary one, removed)")
    ap.add_argument("--reuse", action="store_true", help="use --db as it is (no fill)")
    args = ap.parse_args()

    tmp = None
    if args.db is None:
        tmp = tempfile.TemporaryDirectory(prefix="bench_cfind_")
        args.db = Path(tmp.name) / "index.db"
    try:
        if not args.reuse:
            seconds = fill(args.db, args.instances, args.per_study, args.series, args.seed)
            print(f"filled {args.instances} instances in {seconds:.1f} s "
                  f"({args.instances / seconds:.0f} rows/s through BatchWriter)")
        conn = schema.connect(args.db)
        counts = conn.execute("SELECT (SELECT count(*) FROM instances), (SELECT count(*) FROM studies), "
                              "(SELECT count(*) FROM patients)").fetchone()
        print(f"index: {counts[0]} instances, {counts[1]} studies, {counts[2]} patients")
        patients = int(counts[2])
        rng = random.Random(args.seed + 1)
        kinds = {
            "PatientID": lambda: identifier(PatientID=f"PAT{rng.randrange(patients):07d}"),
            "date range + modality": lambda: _date_query(rng),
        }
        model = InformationModel.STUDY_ROOT
        for name, make in kinds.items():
            for _ in range(5):  # warm-up
                _answer(conn.cursor(), make(), model)
            times: list[float] = []
            matches: list[int] = []
            cpu0 = time.process_time()
            for _ in range(args.queries):
                ds = make()
                cursor = conn.cursor()
                t0 = time.perf_counter()
                got = _answer(cursor, ds, model)
                times.append((time.perf_counter() - t0) * 1000)
                cursor.close()
                matches.append(got)
            cpu = (time.process_time() - cpu0) * 1000 / args.queries
            print(f"{name:24s} p50 {percentile(times, .5):7.2f} ms  p90 {percentile(times, .9):7.2f} ms  "
                  f"p99 {percentile(times, .99):7.2f} ms  max {max(times):7.2f} ms  CPU {cpu:6.2f} ms/query  "
                  f"matches/query mean {statistics.mean(matches):.1f} (n={len(times)})")
        print(f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())} on {os.cpu_count()} CPUs "
              "(wall-clock percentiles include waiting for a CPU; CPU ms/query does not)")
        conn.close()
    finally:
        if tmp is not None:
            tmp.cleanup()
    return 0


def _answer(cursor: object, ds: Dataset, model: InformationModel) -> int:
    """One query as the C-FIND service answers it; the number of matches."""
    return sum(1 for response in find_responses(cursor, ds, model)  # type: ignore[arg-type]
               if encode_response(response, EXPLICIT_LE))


def _date_query(rng: random.Random) -> Dataset:
    day = START + rng.randrange(3650 - 31)
    return identifier(StudyDate=f"{_date(day)}-{_date(day + 30)}",
                      ModalitiesInStudy=MODALITIES[rng.randrange(len(MODALITIES))])


if __name__ == "__main__":
    raise SystemExit(main())

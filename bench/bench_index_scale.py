"""The index writer's cost per row, and the dashboard's queries, as the index grows.

Fills one index to ``--rows`` rows (default 10 M) and, at each of
``--checkpoints`` (default 0, 1 M, 2 M, 5 M, 10 M rows already in the index),
measures:

- ``us/row``: ``BatchWriter.write`` of ``--batches`` batches of
  ``--batch-size`` rows each (5000) of new instances of new studies, as the
  server's writer thread writes them: the batch's wall time over its rows,
  mean (the WAL checkpoints DuckDB makes on its own meanwhile included: 100
  batches write past one 256 MB checkpoint), median and max;
- ``resend``: then ``--resend-batches`` batches in which ``--resend`` rows
  are re-sends of instances already in the index: those of a few random
  studies, in order (a modality sending a study again), marked
  ``overwritten`` as the receiver marks a copy it stores again (mean);
- ``ckpt s``: a last ``CHECKPOINT`` (what the writer's close does);
- the three dashboard queries, median of ``--repeat`` runs after one warm-up:
  ``patient``, one patient's studies from ``study_summary``; ``trend``, the
  status page's 60-day trend per day and modality (``catalog/stats.py``
  ``TREND_SQL``); ``latest``, the 20 studies last received, from
  ``study_summary``.

The rows up to each checkpoint are made by DuckDB (``INSERT ... SELECT`` over
``range()``), with random-looking UIDs (``2.25.<128-bit number>``), 100
instances per study, 4 series per study, 2 studies per patient, 5
modalities, received over the last two years in order (the newest last, as
an archive fills), study dates a few days before. Rows are ``present``.
So the last 60 days hold rows of the fill only once it has reached
``--rows``: the trend's figure is the archive's at the last checkpoint (at
the earlier ones it counts the batches' rows only).

    python bench/bench_index_scale.py [--rows 10000000] [--checkpoints 0,1000000,...] [--work-dir DIR] [--json out.json]

The index is ``<work-dir>/index.db`` (a temp dir by default; at 10 M rows
it holds a few GB, so give a disk, not tmpfs). It is removed at the end
unless ``--keep``. Figures depend on the machine and its load: give both.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import os
import random
import statistics
import sys
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path

import duckdb

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from fastscp.catalog import rows, schema  # noqa: E402

try:  # the status page's trend
    from fastscp.catalog.stats import TREND_SQL
except ImportError:  # code before schema v5 (a before/after run): TREND_SQL_V4 below is its query
    TREND_SQL = ""
from fastscp.catalog.rows import BatchWriter  # noqa: E402
from fastscp.instance import InstanceInfo  # noqa: E402

PER_STUDY, PER_SERIES, STUDIES_PER_PATIENT = 100, 25, 2
MODALITIES = ("CT", "MR", "CR", "US", "DX")
SPAN = dt.timedelta(days=730)
STORE = "/archive"

# the same before schema v5, with the join it needed then (for runs of older code)
TREND_SQL_V4 = """
SELECT i.received_at::DATE AS day, coalesce(nullif(s.modality, ''), '(none)') AS modality,
       count(*) AS instances, coalesce(sum(i.file_size), 0) AS bytes
FROM instances i LEFT JOIN series s USING (series_instance_uid)
WHERE i.status = 'present' AND i.received_at >= ?
GROUP BY day, modality ORDER BY day, modality
"""
PATIENT_SQL = "SELECT * FROM study_summary WHERE patient_id = ? ORDER BY study_date"
LATEST_SQL = "SELECT * FROM study_summary ORDER BY last_received_at DESC LIMIT 20"


def _uid(kind: str) -> str:
    # 2.25.<128-bit number>: 2.25 plus a decimal UUID, as PS3.5 B.2 allows
    return _uid_of("i", kind)


def _uid_of(n: str, kind: str) -> str:
    # two 64-bit hashes of the row number, written one after the other (a
    # UHUGEINT product would be one number, and 400 times slower here)
    return f"('2.25.' || (hash({n}, '{kind}') | 1)::VARCHAR || lpad(hash({n}, '{kind}2')::VARCHAR, 20, '0'))"


def fill(conn: duckdb.DuckDBPyConnection, start: int, stop: int, total: int, now: dt.datetime) -> None:
    """Rows ``start`` to ``stop`` (instance numbers) of an archive of ``total``,
    with their series, studies and patients, by DuckDB. Instance ``i``
    belongs to study ``i // 100``, series ``i // 25``, patient ``i // 200``;
    its ``received_at`` goes from two years ago (row 0) to about now (row
    ``total``)."""
    if stop <= start:
        return
    first = now - SPAN
    step_us = SPAN / dt.timedelta(microseconds=1) / max(total, 1)
    for table, per in (("patients", PER_STUDY * STUDIES_PER_PATIENT), ("studies", PER_STUDY), ("series", PER_SERIES)):
        lo, hi = -(-start // per), -(-stop // per)  # units whose first instance is in [start, stop)
        if hi <= lo:
            continue
        t0 = f"TIMESTAMP '{first}' + to_microseconds((i * {per} * {step_us})::BIGINT)"
        if table == "patients":
            conn.execute(f"""INSERT INTO patients SELECT 'P' || lpad(i::VARCHAR, 9, '0'),
                    'PATIENT^' || i, DATE '1950-01-01' + (i % 25000)::INTEGER, ['F', 'M'][i % 2 + 1], {t0}
                FROM range(?, ?) t(i)""", [lo, hi])
        elif table == "studies":
            conn.execute(f"""INSERT INTO studies SELECT {_uid('st')}, 'P' || lpad((i // 2)::VARCHAR, 9, '0'),
                    ({t0})::DATE - (i % 4)::INTEGER, '101500', 'ACC' || i, 'Study ' || (i % 50),
                    'REF^DOC' || (i % 300), '', {t0}, (i % 10000)::VARCHAR
                FROM range(?, ?) t(i)""", [lo, hi])
        else:
            conn.execute(f"""INSERT INTO series SELECT {_uid('se')},
                    {_uid_of('i // 4', 'st')},
                    {list(MODALITIES)}[(i // 4) % {len(MODALITIES)} + 1], i % 4 + 1, 'Series ' || (i % 4),
                    'CHEST', 'PROTO', 'ACME', 'ST' || (i % 20), 'Hospital', {t0}
                FROM range(?, ?) t(i)""", [lo, hi])
    # since schema v5 an instance row holds its series' modality
    modality = (f", {list(MODALITIES)}[(i // {PER_STUDY}) % {len(MODALITIES)} + 1]"
                if "modality" in schema.INSTANCE_COLUMNS else "")
    conn.execute(f"""INSERT INTO instances SELECT {_uid('in')}, '1.2.840.10008.5.1.4.1.1.2',
            {_uid_of(f'i // {PER_SERIES}', 'se')}, {_uid_of(f'i // {PER_STUDY}', 'st')},
            'P' || lpad((i // {PER_STUDY * STUDIES_PER_PATIENT})::VARCHAR, 9, '0'), i % {PER_SERIES} + 1, '',
            '1.2.840.10008.1.2.1', 512, 512, 1, 'ISO_IR 100',
            '{STORE}/P' || lpad((i // {PER_STUDY * STUDIES_PER_PATIENT})::VARCHAR, 9, '0') || '/' || (i // {PER_STUDY})
                || '/' || (i // {PER_SERIES}) || '/' || i || '.dcm',
            524700 + i % 1000, 524288, md5(i::VARCHAR)[:16],
            TIMESTAMP '{first}' + to_microseconds((i * {step_us})::BIGINT), 'MODALITY' || (i // {PER_STUDY}) % 7,
            'FASTSCP', '10.0.0.' || (i // {PER_STUDY}) % 7 || ':4000', 'a' || (i // {PER_STUDY}), '', 'received',
            'present', NULL{modality}
        FROM range(?, ?) t(i)""", [start, stop])


def bulk_fill(conn: duckdb.DuckDBPyConnection, start: int, stop: int, total: int,
              now: dt.datetime) -> None:
    """``fill`` as DuckDB advises for bulk loads: the secondary indexes are
    dropped first and made again after (inserting 100,000 rows with them in
    place took 3.0 s here, without them 0.8 s). Whatever indexes the schema
    has, from ``duckdb_indexes()``."""
    if stop <= start:
        return
    made = [sql for (sql,) in conn.execute(
        "SELECT sql FROM duckdb_indexes() WHERE database_name = current_database() AND sql IS NOT NULL").fetchall()]
    names = [name for (name,) in conn.execute(
        "SELECT index_name FROM duckdb_indexes() WHERE database_name = current_database() AND sql IS NOT NULL"
    ).fetchall()]
    for name in names:
        conn.execute(f'DROP INDEX "{name}"')
    chunk = 2_000_000
    for lo in range(start, stop, chunk):
        fill(conn, lo, min(lo + chunk, stop), total, now)
    for sql in made:
        conn.execute(sql)
    if "study_stats" in {name for (name,) in conn.execute("SHOW TABLES").fetchall()}:
        rows.refresh_study_stats(conn, None)  # schema v5: the stored per-study counts
    conn.execute("CHECKPOINT")


@dataclass
class Point:
    rows: int  # instance rows in the index before the batches
    fill_s: float  # seconds to add the rows since the last point (DuckDB bulk insert)
    batch_us_per_row: list[float] = field(default_factory=list)  # each batch, wall / rows
    mean_us_per_row: float = 0.0
    median_us_per_row: float = 0.0
    resend_us_per_row: list[float] = field(default_factory=list)  # batches with re-sends, wall / rows
    resend_mean_us_per_row: float = 0.0
    fallbacks: int = 0  # batches the writer wrote twice (a UID it took for new was there)
    checkpoint_s: float = 0.0  # the final CHECKPOINT after the batches
    patient_ms: float = 0.0
    trend_ms: float = 0.0
    latest_ms: float = 0.0
    patient_rows: int = 0  # rows each query gave
    trend_rows: int = 0
    latest_rows: int = 0
    db_mb: float = 0.0
    loadavg: float = 0.0  # 1-minute load average when the point started


def make_batch(size: int, resent: list[tuple[str, str, str, str]], now: float) -> list[InstanceInfo]:
    """``size - len(resent)`` new instances (new studies of 100, 4 series
    each, new patients) and the ``resent`` existing instances (UID, series,
    study, patient) stored again."""
    resend = len(resent)
    out: list[InstanceInfo] = []
    fresh = size - resend
    study = series = patient = ""
    for k in range(fresh):
        if k % PER_STUDY == 0:
            study, patient = f"2.25.{uuid.uuid4().int}", f"N{uuid.uuid4().hex[:12]}"
        if k % PER_SERIES == 0:
            series = f"2.25.{uuid.uuid4().int}"
        uid = f"2.25.{uuid.uuid4().int}"
        out.append(_info(uid, series, study, patient, MODALITIES[k // PER_STUDY % len(MODALITIES)], k, now))
    for uid, series, study, patient in resent:
        # stored again (duplicate policy ``overwrite``): the receiver marks it so
        out.append(dataclasses.replace(_info(uid, series, study, patient, "CT", 1, now), duplicate="overwritten"))
    return out


def _info(uid: str, series: str, study: str, patient: str, modality: str, k: int, now: float) -> InstanceInfo:
    return InstanceInfo(
        sop_class_uid="1.2.840.10008.5.1.4.1.1.2", sop_instance_uid=uid, transfer_syntax_uid="1.2.840.10008.1.2.1",
        patient_id=patient, patient_name="NEW^PATIENT", patient_birth_date="19700101", patient_sex="F",
        study_instance_uid=study, study_date=dt.datetime.fromtimestamp(now, dt.timezone.utc).strftime("%Y%m%d"),
        study_time="101500", accession_number="ACC", study_id="1", study_description="New study",
        referring_physician="REF^DOC", series_instance_uid=series, modality=modality, series_number=k // PER_SERIES,
        series_description="Axial", body_part_examined="CHEST", protocol_name="PROTO", manufacturer="ACME",
        station_name="ST1", institution_name="Hospital", instance_number=k % PER_SERIES + 1, rows=512, columns=512,
        number_of_frames=1, specific_character_set="ISO_IR 100", calling_ae="MODALITY", called_ae="FASTSCP",
        peer="10.0.0.1:4000", association_id=f"b{k // PER_STUDY}", received_at=now, dataset_size=524288,
        file_size=524700, path=f"{STORE}/{patient}/{study}/{series}/{uid}.dcm", content_hash="0" * 16)


def timed_query(conn: duckdb.DuckDBPyConnection, sql: str, params: list[object],
                repeat: int) -> tuple[float, int]:
    """Median milliseconds of ``repeat`` runs after a warm-up, and the rows it gave."""
    got = len(conn.execute(sql, params).fetchall())  # warm-up
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        conn.execute(sql, params).fetchall()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1000, got


def measure(db: Path, filled: int, fill_s: float, args: argparse.Namespace, rng: random.Random) -> Point:
    conn = schema.connect(db)
    try:
        counted = conn.execute("SELECT count(*) FROM instances").fetchone()
        point = Point(int(counted[0]) if counted else 0, fill_s, loadavg=os.getloadavg()[0])
        # re-sends come a study at a time (a modality sending a study again):
        # the instances of random studies of the index, in order
        studies = -(-args.resend_batches * args.resend // PER_STUDY) + 1
        existing = [(str(a), str(b), str(c), str(d)) for a, b, c, d in conn.execute(
            "SELECT sop_instance_uid, series_instance_uid, study_instance_uid, patient_id FROM instances "
            "WHERE study_instance_uid IN (SELECT study_instance_uid FROM studies "
            f"USING SAMPLE reservoir({studies:d} ROWS) REPEATABLE ({rng.randrange(1 << 30)})) "
            "ORDER BY study_instance_uid, sop_instance_uid").fetchall()]
        writer = BatchWriter(conn)
        batch: list[InstanceInfo] = []
        for _ in range(args.batches):
            batch = make_batch(args.batch_size, [], time.time())
            t0 = time.perf_counter()
            writer.write(batch)
            point.batch_us_per_row.append((time.perf_counter() - t0) / len(batch) * 1e6)
        for k in range(args.resend_batches):
            batch = make_batch(args.batch_size, existing[k * args.resend:(k + 1) * args.resend], time.time())
            t0 = time.perf_counter()
            writer.write(batch)
            point.resend_us_per_row.append((time.perf_counter() - t0) / len(batch) * 1e6)
        point.fallbacks = getattr(writer, "fallbacks", 0)  # (older code: no such counter)
        t0 = time.perf_counter()
        conn.execute("CHECKPOINT")
        point.checkpoint_s = time.perf_counter() - t0
        point.mean_us_per_row = statistics.fmean(point.batch_us_per_row) if point.batch_us_per_row else 0.0
        point.median_us_per_row = statistics.median(point.batch_us_per_row) if point.batch_us_per_row else 0.0
        point.resend_mean_us_per_row = statistics.fmean(point.resend_us_per_row) if point.resend_us_per_row else 0.0
        # a patient of the filled rows (two studies), halfway; or the last batch's
        per_patient = PER_STUDY * STUDIES_PER_PATIENT
        patient = f"P{filled // per_patient // 2:09d}" if filled >= per_patient else batch[0].patient_id
        since = dt.datetime.now(dt.timezone.utc).date() - dt.timedelta(days=59)
        point.patient_ms, point.patient_rows = timed_query(conn, PATIENT_SQL, [patient], args.repeat)
        trend = TREND_SQL if "modality" in schema.INSTANCE_COLUMNS else TREND_SQL_V4
        point.trend_ms, point.trend_rows = timed_query(conn, trend, [since], args.repeat)
        point.latest_ms, point.latest_rows = timed_query(conn, LATEST_SQL, [], args.repeat)
    finally:
        conn.close()
    point.db_mb = db.stat().st_size / 1e6
    return point


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=10_000_000, help="rows in the index at the last checkpoint")
    ap.add_argument("--checkpoints", default="0,1000000,2000000,5000000,10000000",
                    help="comma-separated row counts to measure at (those above --rows are dropped; --rows is added)")
    ap.add_argument("--batches", type=int, default=100,
                    help="batches of new rows timed at each checkpoint (100: 500,000 rows, past one 256 MB "
                         "WAL checkpoint)")
    ap.add_argument("--resend-batches", type=int, default=5, help="then batches with --resend re-sent UIDs each")
    ap.add_argument("--batch-size", type=int, default=5000)
    ap.add_argument("--resend", type=int, default=250, help="re-sent existing UIDs in each re-send batch")
    ap.add_argument("--repeat", type=int, default=5, help="runs of each query (median)")
    ap.add_argument("--work-dir", default="", help="where the index goes (default: a temp dir)")
    ap.add_argument("--keep", action="store_true", help="keep the index")
    ap.add_argument("--json", default="", help="write the results here too")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--checkpoint-threshold", default="",
                    help="DuckDB checkpoint_threshold for the writer (default: schema.CHECKPOINT_THRESHOLD)")
    args = ap.parse_args(argv)
    if args.checkpoint_threshold:
        schema.CHECKPOINT_THRESHOLD = args.checkpoint_threshold
    marks = sorted({int(c) for c in args.checkpoints.split(",") if c.strip() and int(c) <= args.rows} | {args.rows})
    tmp = None
    if args.work_dir:
        work = Path(args.work_dir)
        work.mkdir(parents=True, exist_ok=True)
    else:
        tmp = tempfile.TemporaryDirectory(prefix="fastscp-index-scale-")
        work = Path(tmp.name)
    db = work / "index.db"
    for stale in (db, db.with_name(db.name + ".wal")):
        stale.unlink(missing_ok=True)
    rng = random.Random(args.seed)
    now = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
    points: list[Point] = []
    threshold = getattr(schema, "CHECKPOINT_THRESHOLD", "16MB")  # (older code: DuckDB's default)
    print(f"cpus={os.cpu_count()} duckdb={duckdb.__version__} batch={args.batch_size} "
          f"resend={args.resend} batches={args.batches} checkpoint_threshold={threshold} "
          f"schema=v{schema.SCHEMA_VERSION}", flush=True)
    print(f"{'rows':>10} {'fill s':>7} {'us/row':>7} {'median':>7} {'max':>7} {'resend':>7} {'ckpt s':>6} "
          f"{'patient ms':>10} {'trend ms':>8} {'latest ms':>9} {'db MB':>7} {'load':>5}", flush=True)
    try:
        filled = 0
        for mark in marks:
            t0 = time.perf_counter()
            conn = schema.connect(db)
            try:
                bulk_fill(conn, filled, mark, args.rows, now)
            finally:
                conn.close()
            filled = mark
            p = measure(db, mark, time.perf_counter() - t0, args, rng)
            points.append(p)
            print(f"{p.rows:>10} {p.fill_s:>7.1f} {p.mean_us_per_row:>7.1f} {p.median_us_per_row:>7.1f} "
                  f"{max(p.batch_us_per_row, default=0):>7.1f} {p.resend_mean_us_per_row:>7.1f} "
                  f"{p.checkpoint_s:>6.2f} {p.patient_ms:>10.1f} "
                  f"{p.trend_ms:>8.1f} {p.latest_ms:>9.1f} {p.db_mb:>7.0f} {p.loadavg:>5.1f}", flush=True)
    finally:
        if not args.keep:
            for f in (db, db.with_name(db.name + ".wal")):
                f.unlink(missing_ok=True)
        if tmp is not None:
            tmp.cleanup()
    if args.json:
        Path(args.json).write_text(json.dumps({"cpus": os.cpu_count(), "duckdb": duckdb.__version__,
                                               "batch_size": args.batch_size, "resend": args.resend,
                                               "points": [asdict(p) for p in points]}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

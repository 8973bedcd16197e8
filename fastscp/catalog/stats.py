"""Catalog statistics for ``fastscp stats``: totals, the storage volume, and
trends per day, modality and calling AE over a window of days.

Everything is computed by SQL over the ``instances`` table (present rows;
days are UTC days of ``received_at``). The chart is drawn with matplotlib
only when it is installed (the ``plot`` extra).
"""

from __future__ import annotations

import datetime as _dt
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import duckdb

# the status page's trend (monitor/http.py) of present rows since a time, per
# day and modality; instances.modality (schema v5) is the series' modality
# stored on each row: no join with series (152 ms at 8 M rows with it)
TREND_SQL = """
SELECT i.received_at::DATE AS day, coalesce(nullif(i.modality, ''), '(none)') AS modality,
       count(*) AS instances, coalesce(sum(i.file_size), 0) AS bytes
FROM instances i
WHERE i.status = 'present' AND i.received_at >= ?
GROUP BY day, modality ORDER BY day, modality
"""


@dataclass(slots=True)
class CatalogStats:
    days: int
    patients: int = 0
    studies: int = 0
    series: int = 0
    instances: int = 0
    missing_instances: int = 0
    bytes_stored: int = 0
    associations: int = 0
    storage_dir: str = ""
    disk_total: int | None = None
    disk_used: int | None = None
    disk_free: int | None = None
    per_day: list[tuple[str, int, int]] = field(default_factory=list)  # day, instances, bytes
    per_modality: list[tuple[str, int, int]] = field(default_factory=list)
    per_calling_ae: list[tuple[str, int, int]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _one(conn: duckdb.DuckDBPyConnection, sql: str, params: list[Any] | None = None) -> int:
    row = conn.execute(sql, params or []).fetchone()
    return int(row[0]) if row and row[0] is not None else 0


def collect_stats(
    conn: duckdb.DuckDBPyConnection, days: int = 30, storage_dir: str | Path | None = None
) -> CatalogStats:
    """Totals over the whole catalog; trends over the last ``days`` days
    (today included)."""
    if days < 1:
        raise ValueError("days must be at least 1")
    st = CatalogStats(days=days)
    # one snapshot for every count: the index writer may commit a batch
    # between two of these reads (instances counted, their studies not)
    conn.begin()
    try:
        st.patients = _one(conn, "SELECT count(*) FROM patients")
        st.studies = _one(conn, "SELECT count(*) FROM studies")
        st.series = _one(conn, "SELECT count(*) FROM series")
        st.instances = _one(conn, "SELECT count(*) FROM instances WHERE status = 'present'")
        st.missing_instances = _one(conn, "SELECT count(*) FROM instances WHERE status = 'missing'")
        st.bytes_stored = _one(
            conn, "SELECT coalesce(sum(file_size), 0) FROM instances WHERE status = 'present'")
        st.associations = _one(conn, "SELECT count(*) FROM associations")
        today = _dt.datetime.now(_dt.timezone.utc).date()
        since = today - _dt.timedelta(days=days - 1)
        window = "status = 'present' AND received_at >= ?"
        st.per_day = [
            (str(d), int(n), int(b)) for d, n, b in conn.execute(
                f"""SELECT received_at::DATE AS day, count(*), coalesce(sum(file_size), 0)
                    FROM instances WHERE {window} GROUP BY day ORDER BY day""", [since],
            ).fetchall()
        ]
        for attr, column in (("per_modality", "i.modality"), ("per_calling_ae", "i.calling_ae")):
            rows = conn.execute(
                f"""SELECT coalesce(nullif({column}, ''), '(none)') AS k, count(*) AS n,
                           coalesce(sum(i.file_size), 0)
                    FROM instances i
                    WHERE i.{window} GROUP BY k ORDER BY n DESC, k""", [since],
            ).fetchall()
            setattr(st, attr, [(str(k), int(n), int(b)) for k, n, b in rows])
    finally:
        conn.rollback()
    if storage_dir is not None:
        st.storage_dir = str(storage_dir)
        usage = shutil.disk_usage(storage_dir)
        st.disk_total, st.disk_used, st.disk_free = usage.total, usage.used, usage.free
    return st


def human_bytes(n: float) -> str:
    """Bytes for people, in powers of 1000 (as the MB and MB/s of the logs,
    status page and benchmark)."""
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} PB"


def format_stats(st: CatalogStats) -> str:
    out = [
        "Catalog",
        f"  patients     {st.patients}",
        f"  studies      {st.studies}",
        f"  series       {st.series}",
        f"  instances    {st.instances}" + (f"  ({st.missing_instances} missing on disk)"
                                            if st.missing_instances else ""),
        f"  stored       {human_bytes(st.bytes_stored)}",
        f"  associations {st.associations}",
    ]
    if st.disk_total is not None:
        used_pct = 100.0 * (st.disk_used or 0) / st.disk_total if st.disk_total else 0.0
        out += [
            f"Storage volume ({st.storage_dir})",
            f"  size {human_bytes(st.disk_total)}, used {human_bytes(st.disk_used or 0)} "
            f"({used_pct:.0f}%), free {human_bytes(st.disk_free or 0)}",
        ]
    else:
        out.append("Storage volume: pass --storage-dir to see disk usage and free space")

    def block(title: str, rows: list[tuple[str, int, int]]) -> None:
        out.append(f"{title} (last {st.days} days)")
        if not rows:
            out.append("  (nothing received)")
        width = max((len(k) for k, _, _ in rows), default=0)
        for key, n, b in rows:
            out.append(f"  {key:<{width}}  {n:>9} instances  {human_bytes(b):>10}")

    block("Per day (UTC)", st.per_day)
    block("Per modality", st.per_modality)
    block("Per calling AE", st.per_calling_ae)
    return "\n".join(out) + "\n"


class PlotUnavailable(RuntimeError):
    pass


def plot_stats(st: CatalogStats, path: str | Path) -> None:
    """Instances per day (bars) and bytes per day (line) to a PNG file."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise PlotUnavailable(
            "--plot needs matplotlib, which is not installed: pip install 'fastscp[plot]'"
        ) from exc
    days = [_dt.date.fromisoformat(d) for d, _, _ in st.per_day]
    counts = [n for _, n, _ in st.per_day]
    mbytes = [b / 2**20 for _, _, b in st.per_day]
    fig, ax = plt.subplots(figsize=(10, 4.5))
    ax.bar(days, counts,  # type: ignore[arg-type]  # stubs want float x; dates go through matplotlib's units
           color="#4C72B0", label="instances")
    ax.set_ylabel("instances per day")
    ax.set_title(f"fastscp: received per day (UTC), last {st.days} days")
    ax2 = ax.twinx()
    ax2.plot(days, mbytes,  # type: ignore[arg-type]  # stubs want float x; dates go through matplotlib's units
              color="#DD8452", marker="o", label="MB")
    ax2.set_ylabel("MB per day")
    fig.autofmt_xdate()
    fig.tight_layout()
    fig.savefig(str(path), dpi=100)
    plt.close(fig)

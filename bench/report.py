"""Turns the flood results into a markdown table, a JSON file and a PNG chart.

Ratios compare wall time with dcmtk storescp's in the same run, on the same
corpus and association count: below 1.00x is faster than storescp. Where
the run has them, two more: against the faster of dcmtk's two modes
(storescp and storescp --fork) and against the C sink (bench/sink.c, the
floor). Wall times are the median of the repeats, with their min-max.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

BASELINE = "storescp"
DCMTK = ("storescp", "storescp-fork")
FLOOR = "sink"


def _fmt(value: Any, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def ratio(result: dict[str, Any], results: list[dict[str, Any]], against: tuple[str, ...] = (BASELINE,)
          ) -> float | None:
    """``result``'s wall time over the fastest of ``against`` on the same flood."""
    walls = [float(other["wall_s"]) for other in results
             if other["receiver"] in against and other["corpus"] == result["corpus"]
             and other["assocs"] == result["assocs"] and other.get("wall_s")]
    if not walls or result.get("wall_s") is None:
        return None
    return float(result["wall_s"]) / min(walls)


def _spread(r: dict[str, Any]) -> str:
    walls = [w for w in r.get("repeats_wall_s") or [] if w is not None]
    return f" ({min(walls):.2f}-{max(walls):.2f})" if len(walls) > 1 else ""


def _x(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def markdown_table(run: dict[str, Any]) -> str:
    results: list[dict[str, Any]] = run["results"]
    lines = [
        "| receiver | corpus | assocs | images | MB | wall s (min-max) | images/s | MB/s "
        "| wall vs storescp | vs best dcmtk | vs sink | CPU s | peak RSS MB | peak PSS MB | p50 ms | p99 ms "
        "| sender CPU s | other CPU s | all arrived |",
        "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|---|",
    ]
    for r in results:
        lat = r.get("latency") or {}
        arrived = "yes" if r.get("all_arrived") else f"NO ({r.get('arrived')}/{r['images']})"
        if r.get("error"):
            arrived = f"FAILED: {r['error'][:60]}"
        lines.append(
            f"| {r['receiver']} | {r['corpus']} | {r['assocs']} | {r['images']} "
            f"| {r['megabytes']:.0f} | {_fmt(r.get('wall_s'), '.2f')}{_spread(r)} "
            f"| {_fmt(r.get('images_per_s'), '.0f')} | {_fmt(r.get('mb_per_s'), '.0f')} "
            f"| {_x(ratio(r, results))} | {_x(ratio(r, results, DCMTK))} | {_x(ratio(r, results, (FLOOR,)))} "
            f"| {_fmt(r.get('cpu_s'), '.2f')} | {_fmt(r.get('peak_rss_mb'), '.0f')} "
            f"| {_fmt(r.get('peak_pss_mb'), '.0f')} "
            f"| {_fmt(lat.get('p50_ms'), '.2f')} | {_fmt(lat.get('p99_ms'), '.2f')} "
            f"| {_fmt(r.get('sender_cpu_s'), '.2f')} | {_fmt(r.get('other_cpu_s'), '.2f')} | {arrived} |")
    m = run["machine"]
    lines += ["", f"Machine: {m['nproc']} cores, {m['cpu_model']}, {m['mem_gib']:.0f} GiB, "
              f"{m['os']}; loopback; sender dcmtk storescu {m.get('dcmtk', '')} with "
              f"TCP_NODELAY=1, max PDU {run.get('max_pdu', 131072)}"
              f"{f', senders limited to PDUs of {send_pdu} bytes' if (send_pdu := run.get('send_pdu')) else ''}; "
              f"receivers store to {run.get('storage', '?')}. "
              f"Run {run['started']}, median of {run.get('repeat', 1)} per row."]
    return "\n".join(lines) + "\n"


def chart(run: dict[str, Any], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results: list[dict[str, Any]] = run["results"]
    receivers = list(dict.fromkeys(r["receiver"] for r in results))
    groups = list(dict.fromkeys((r["corpus"], r["assocs"]) for r in results))
    width = 0.8 / max(1, len(receivers))
    fig, ax = plt.subplots(figsize=(max(6, 2.2 * len(groups)), 4.5))
    for i, name in enumerate(receivers):
        values = []
        for corpus, assocs in groups:
            match = [r for r in results if r["receiver"] == name and r["corpus"] == corpus
                     and r["assocs"] == assocs]
            values.append((match[0].get("images_per_s") or 0) if match else 0)
        xs = [g + (i - (len(receivers) - 1) / 2) * width for g in range(len(groups))]
        ax.bar(xs, values, width, label=name)
    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels([f"{c}\n{a} assoc" for c, a in groups])
    ax.set_ylabel("images/s (higher is better)")
    ax.set_yscale("log")
    m = run["machine"]
    ax.set_title(f"storescu flood over loopback, {m['nproc']} cores {m['cpu_model']}")
    ax.legend(fontsize=8)
    ax.grid(axis="y", which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_all(run: dict[str, Any], out_dir: Path, readme_snippet: Path | None) -> dict[str, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": out_dir / "results.json", "md": out_dir / "results.md",
             "png": out_dir / "images_per_s.png"}
    paths["json"].write_text(json.dumps(run, indent=2))
    table = markdown_table(run)
    paths["md"].write_text(table)
    chart(run, paths["png"])
    if readme_snippet is not None:
        readme_snippet.parent.mkdir(parents=True, exist_ok=True)
        readme_snippet.write_text(
            "<!-- written by bench/flood.py --update-readme-snippet; do not edit by hand -->\n"
            + table)
        paths["snippet"] = readme_snippet
    return paths

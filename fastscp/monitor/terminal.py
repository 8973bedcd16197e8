"""``fastscp status``: the running receiver's /status in the terminal (rich).

Every value shown is plain text with its non-printable characters escaped
(see ``_add``): the document carries peer-supplied strings (AE titles,
patient names, descriptions).

Live mode redraws in place (``rich.live.Live``) every ``--interval``
seconds until Ctrl-C; ``--once`` prints one snapshot and exits (plain text
when stdout is not a terminal, so it can be piped and tested). Exit codes:
0 ok, 1 no server answered, 2 refused (token).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..catalog.stats import human_bytes
from .client import EndpointError, resolve_endpoint
from .logsetup import escape_nonprintable

# rich is imported where it is used: every command's parser is built at start,
# `fastscp serve` included, and rich is about 1.7 MB of Python objects and 50
# modules that a receiver never uses (issue 23; tests/test_lean_imports.py).
if TYPE_CHECKING:
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text


def _duration(s: float) -> str:
    s = int(s)
    d, s = divmod(s, 86400)
    h, s = divmod(s, 3600)
    m, s = divmod(s, 60)
    return (f"{d}d " if d else "") + f"{h:02d}:{m:02d}:{s:02d}"


def _add(table: Table, *cells: str | Text) -> None:
    """A row of plain text: a string's non-printable characters are escaped
    (an AE title or patient name with a newline or an ESC sequence cannot
    redraw the terminal) and square brackets are text, not rich markup."""
    from rich.text import Text

    table.add_row(*(Text(escape_nonprintable(c)) if isinstance(c, str) else c for c in cells))


def render(doc: dict[str, Any]) -> Group:
    """The whole view, from one /status document."""
    from rich.console import Group, JustifyMethod
    from rich.panel import Panel
    from rich.table import Table
    from rich.text import Text

    srv, tot, rates, storage = doc["server"], doc["totals"], doc["rates"], doc["storage"]
    head = Table.grid(padding=(0, 2))
    head.add_column(style="bold")
    head.add_column()
    _add(head, "server", f"{srv.get('ae_title', '')} on {', '.join(srv.get('listening') or [])} "
                           f"(pid {srv.get('pid')}, fastscp {srv.get('version')}), up {_duration(srv['uptime_s'])}")
    outcomes = ", ".join(f"{k} {v}" for k, v in tot["associations_by_outcome"].items() if v)
    _add(head, "totals", f"{tot['associations']} associations ({outcomes or 'none ended'}), "
                           f"{tot['instances']} instances, {human_bytes(tot['bytes'])}, "
                           f"{tot['duplicates']} duplicates")
    failures = ", ".join(f"{k}: {v}" for k, v in tot["failures_by_status"].items())
    if failures:
        _add(head, "failures", failures)
    _add(head, "rate", f"{rates['instances_per_s']:.1f} instances/s, {human_bytes(rates['bytes_per_s'])}/s")
    if storage.get("free") is not None:
        state = storage.get("state", "")
        style = {"low": "yellow", "full": "bold red"}.get(state, "green")
        _add(head, "storage", Text.assemble(
            f"{escape_nonprintable(storage['directory'])}: {human_bytes(storage['free'])} free of "
            f"{human_bytes(storage['total'])} ",
            (f"[{state}]", style)))
    queues = ", ".join(f"{k} {'-' if v is None else v}" for k, v in doc["queues"].items())
    _add(head, "queues", queues)
    for w in doc.get("warnings", []):
        _add(head, Text("warning", style="bold yellow"), Text(escape_nonprintable(w), style="yellow"))

    active = Table(title=f"Active associations ({len(doc['active'])})", expand=True, title_justify="left")
    columns: tuple[tuple[str, JustifyMethod], ...] = (
        ("id", "left"), ("peer", "left"), ("calling AE", "left"), ("called AE", "left"), ("TLS", "left"),
        ("age", "right"), ("instances", "right"), ("bytes", "right"), ("rate", "right"), ("failed", "right"))
    for col, just in columns:
        active.add_column(col, justify=just)
    for a in doc["active"]:
        _add(active, a["association_id"], a["peer"], a["calling_ae"], a["called_ae"], "yes" if a["tls"] else "no",
                       _duration(a["age_s"]), str(a["instances"]), human_bytes(a["bytes"]),
                       f"{human_bytes(a['rate_bytes_per_s'])}/s", str(a["failed"]))

    studies = Table(title="Recent studies", expand=True, title_justify="left")
    for col in ("patient", "study date", "modalities", "description", "from", "instances", "bytes"):
        studies.add_column(col, justify="right" if col in ("instances", "bytes") else "left")
    for s in doc["recent_studies"][:10]:
        _add(studies, s["patient_id"], s["study_date"], "/".join(s["modalities"]), s["description"],
                        s["calling_ae"], str(s["instances"]), human_bytes(s["bytes"]))

    ended = Table(title="Recent associations", expand=True, title_justify="left")
    for col in ("id", "calling AE", "peer", "outcome", "instances", "bytes", "duration"):
        ended.add_column(col, justify="right" if col in ("instances", "bytes", "duration") else "left")
    for r in doc["recent_associations"][:8]:
        outcome = r["outcome"] + (f": {r['reason']}" if r["reason"] else "")
        _add(ended, r["association_id"], r["calling_ae"], r["peer"], outcome, str(r["instances"]),
                      human_bytes(r["bytes"]), f"{r['duration_s']:.2f} s")
    return Group(Panel(head, title="fastscp status", title_align="left"), active, studies, ended)


def _cmd_status(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.live import Live
    from rich.text import Text

    ep = resolve_endpoint(args.url, args.token, args.index_db)
    # piped (or --once into a file): wide enough that the tables are not cut
    console = Console() if sys.stdout.isatty() else Console(width=140)

    def fetch() -> dict[str, Any]:
        return ep.status(timeout=5.0)

    if args.browser_url:
        print(f"{ep.url.rstrip('/')}/" + (f"?token={ep.token}" if ep.token else ""))
        print(f"fastscp status: {ep.url} (from {ep.source})", file=sys.stderr)
        return 0
    try:
        doc = fetch()
    except EndpointError as exc:
        print(f"fastscp status: {ep.url} (from {ep.source}): {exc}", file=sys.stderr)
        return 2 if exc.status == 401 else 1
    except OSError as exc:
        print(f"fastscp status: no fastscp server answers at {ep.url} (from {ep.source}): {exc}", file=sys.stderr)
        return 1
    # which server this is, and why this one: it may not be the user's own
    held = (doc.get("server") or {}).get("index_db")
    note = ""
    if held and args.index_db and ep.source != "--url" and Path(held).resolve() != Path(args.index_db).resolve():
        note = f"; it holds index {held}, not {args.index_db}"
    print(f"fastscp status: showing the server at {ep.url} (from {ep.source}){note}", file=sys.stderr)
    if args.once:
        console.print(render(doc))
        return 0
    try:
        with Live(render(doc), console=console, screen=False, auto_refresh=False) as live:
            while True:
                time.sleep(args.interval)
                try:
                    live.update(render(fetch()), refresh=True)
                except (OSError, EndpointError) as exc:
                    live.update(Text(f"{ep.url}: {exc} (retrying)", style="red"), refresh=True)
    except KeyboardInterrupt:
        pass
    return 0


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser("status", help="live view of the running receiver",
                              description="Show the running receiver's status, refreshing in place. "
                                          "Finds the server holding --index-db by its discovery file, "
                                          "else asks $FASTSCP_STATUS_URL or http://127.0.0.1:8042, and "
                                          "says on stderr which server it shows and why.")
    p.add_argument("--url", help="status endpoint, e.g. http://127.0.0.1:8042")
    p.add_argument("--token", help="endpoint token (default: $FASTSCP_STATUS_TOKEN or the discovery file)")
    p.add_argument("--index-db", default="pacs.db", metavar="FILE",
                   help="find the server holding this index (default pacs.db)")
    p.add_argument("--once", action="store_true", help="print one snapshot and exit")
    p.add_argument("--browser-url", action="store_true",
                   help="print the dashboard's address with its token (open it once in a browser) and exit")
    p.add_argument("--interval", type=float, default=1.0, help="seconds between refreshes (default 1)")
    p.set_defaults(func=_cmd_status)

"""The catalog's subcommands: ``query``, ``stats``, ``reindex``.

Command-line wiring, so it sits beside cli.py, above both ``catalog/`` and
``monitor/`` (it talks to a running server through monitor.client and to
the index file through catalog/): imports point down.

``register(subparsers)`` adds them to the CLI's argparse subparsers; each sets
``func(args) -> exit code``. ``query`` and ``stats`` open the index file
read-only; DuckDB lets only one process open a file for writing, so while a
server runs they go through that server's status endpoint (POST /query and
GET /stats, see fastscp/monitor). ``reindex`` writes, so while a server holds
the index it refuses with one line saying to stop it. Exit codes: 0 ok, 1
runtime error (database locked, missing, SQL error), 2 refused or unusable
arguments.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
from pathlib import Path
from typing import Any, TextIO

import duckdb
import orjson

from .catalog import schema
from .catalog.query import ReadOnlyQueryError, export_parquet, format_table, run_readonly_query, to_json, write_csv
from .catalog.reconcile import reconcile
from .catalog.stats import CatalogStats, PlotUnavailable, collect_stats, format_stats, plot_stats

DEFAULT_INDEX_DB = "pacs.db"


def _open_readonly(path: str, allowed_paths: tuple[str, ...] = ()) -> duckdb.DuckDBPyConnection:
    try:
        return schema.connect(path, read_only=True, allowed_paths=allowed_paths)
    except duckdb.IOException as exc:
        if "lock" in str(exc).lower():
            raise RuntimeError(
                f"index database {path} is open for writing by another process (a running "
                f"fastscp server?): query through the server, or stop it first\n  ({exc})"
            ) from exc
        raise


def _cmd_query(args: argparse.Namespace) -> int:
    if args.format == "parquet" and not args.output:
        print("fastscp query: --format parquet needs --output FILE", file=sys.stderr)
        return 2
    routed = _query_through_server(args)
    if routed is not None:
        return routed
    try:
        # locked down like the server's (schema.lock_down): the one file this
        # SQL may write is the Parquet output asked for
        conn = _open_readonly(args.index_db, (args.output,) if args.format == "parquet" else ())
    except (RuntimeError, FileNotFoundError, duckdb.Error) as exc:
        print(f"fastscp query: {exc}", file=sys.stderr)
        return 1
    try:
        if args.format == "parquet":
            n = export_parquet(conn, args.sql, args.output)
            print(f"wrote {n} rows to {args.output}", file=sys.stderr)
            return 0
        columns, rows = run_readonly_query(conn, args.sql, args.max_rows)
    except ReadOnlyQueryError as exc:
        print(f"fastscp query: {exc}", file=sys.stderr)
        return 2
    except duckdb.Error as exc:
        print(f"fastscp query: {exc}", file=sys.stderr)
        return 1
    finally:
        conn.close()
    _write_result(args, columns, rows)
    return 0


def _write_result(args: argparse.Namespace, columns: list[str], rows: list[Any]) -> None:
    out: TextIO = open(args.output, "w", newline="", encoding="utf-8") if args.output else sys.stdout
    try:
        if args.format == "table":
            out.write(format_table(columns, rows))
        elif args.format == "csv":
            write_csv(columns, rows, out)
        else:
            out.write(to_json(columns, rows).decode())
    finally:
        if args.output:
            out.close()


# ---- through a running server (monitoring's status endpoint) -------------------------
# DuckDB lets one process open the file for writing, and a running server holds
# it: then the query goes to that server's POST /query, which runs it through
# run_readonly_query on a cursor of its own connection. None = no server
# answered for this index: open the file.
def _query_through_server(args: argparse.Namespace) -> int | None:
    from .monitor.client import EndpointError, server_for_index

    ep = server_for_index(args.index_db, getattr(args, "url", None), getattr(args, "token", None))
    if ep is None:
        return None
    body: dict[str, Any] = {"sql": args.sql, "max_rows": args.max_rows,
                            "format": "parquet" if args.format == "parquet" else "json"}
    try:
        raw = ep.request("/query", body, timeout=args.timeout)
    except EndpointError as exc:
        print(f"fastscp query: {exc}", file=sys.stderr)
        return 2 if exc.kind == "refused" or exc.status in (400, 401) else 1
    except OSError as exc:
        if args.url:
            print(f"fastscp query: server at {ep.url} does not answer: {exc}", file=sys.stderr)
            return 1
        return None  # the discovered server went away: try the file
    if args.format == "parquet":
        Path(args.output).write_bytes(raw)
        print(f"wrote {args.output} (through the server at {ep.url})", file=sys.stderr)
        return 0

    doc = orjson.loads(raw)
    columns, rows = doc["columns"], [tuple(r) for r in doc["rows"]]
    if doc.get("truncated"):
        print(f"fastscp query: result cut at {len(rows)} rows by the server", file=sys.stderr)
    _write_result(args, columns, rows)
    return 0


def _stats_through_server(args: argparse.Namespace) -> CatalogStats | int | None:
    """The running server's GET /stats (it holds the index); the disk
    figures are read here. None = no server holds this index."""
    from .monitor.client import EndpointError, server_for_index

    ep = server_for_index(args.index_db, getattr(args, "url", None), getattr(args, "token", None))
    if ep is None:
        return None
    try:
        doc = orjson.loads(ep.request(f"/stats?days={args.days}", timeout=60.0))
    except EndpointError as exc:
        print(f"fastscp stats: {ep.url}: {exc}", file=sys.stderr)
        return 2 if exc.status in (400, 401) else 1
    except OSError as exc:
        print(f"fastscp stats: server at {ep.url} does not answer: {exc}", file=sys.stderr)
        return 1
    st = CatalogStats(**{k: v for k, v in doc.items() if k in CatalogStats.__dataclass_fields__})
    for name in ("per_day", "per_modality", "per_calling_ae"):
        setattr(st, name, [tuple(r) for r in getattr(st, name)])
    if args.storage_dir:
        usage = shutil.disk_usage(args.storage_dir)
        st.storage_dir = str(args.storage_dir)
        st.disk_total, st.disk_used, st.disk_free = usage.total, usage.used, usage.free
    return st


def _cmd_stats(args: argparse.Namespace) -> int:
    if args.days < 1:
        print("fastscp stats: days must be at least 1", file=sys.stderr)
        return 2
    try:
        routed = _stats_through_server(args)
    except OSError as exc:
        print(f"fastscp stats: {exc}", file=sys.stderr)
        return 2
    if isinstance(routed, int):
        return routed
    if routed is not None:
        st = routed
    else:
        try:
            conn = _open_readonly(args.index_db)
        except (RuntimeError, FileNotFoundError, duckdb.Error) as exc:
            print(f"fastscp stats: {exc}", file=sys.stderr)
            return 1
        try:
            st = collect_stats(conn, days=args.days, storage_dir=args.storage_dir)
        except (ValueError, OSError) as exc:
            print(f"fastscp stats: {exc}", file=sys.stderr)
            return 2
        finally:
            conn.close()
    if args.format == "json":
        sys.stdout.write(to_json(list(st.as_dict().keys()), [tuple(st.as_dict().values())]).decode())
    else:
        sys.stdout.write(format_stats(st))
    if args.plot:
        try:
            plot_stats(st, args.plot)
        except PlotUnavailable as exc:
            print(f"fastscp stats: {exc}", file=sys.stderr)
            return 2
        print(f"chart written to {args.plot}", file=sys.stderr)
    return 0


def _cmd_reindex(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.ERROR, format="%(message)s")
    from .monitor.client import discovered

    held = discovered(args.index_db)
    if held is not None:  # reindex writes: never through the server, never beside it
        print(f"fastscp reindex: index {args.index_db} is held by a running fastscp server ({held.url}, "
              f"{held.source}): stop it first (it reconciles the index with its storage at every start)",
              file=sys.stderr)
        return 1
    try:
        report = reconcile(args.storage_dir, args.index_db, workers=args.workers,
                           progress=None if args.progress else False, adopt_root=True)
    except duckdb.IOException as exc:
        if "lock" not in str(exc).lower():
            print(f"fastscp reindex: {exc}", file=sys.stderr)
            return 1
        print(f"fastscp reindex: index {args.index_db} is open in another process (a running fastscp "
              "server?): stop it first (a server reconciles the index with its storage at every start)",
              file=sys.stderr)
        return 1
    except (NotADirectoryError, RuntimeError, duckdb.Error) as exc:
        print(f"fastscp reindex: {exc}", file=sys.stderr)
        return 1
    print(
        f"reindex: {report.files_seen} files seen, {report.indexed} indexed "
        f"({report.files_per_second:.0f} files/s), {report.marked_missing} rows marked missing, "
        f"{report.restored} restored, {report.unreadable} unreadable, "
        f"{report.conflicts} UID conflicts, {report.backfilled} studies backfilled, "
        f"{report.seconds:.1f} s"
    )
    for problem in report.problems:
        print(f"  {problem}", file=sys.stderr)
    return 0


def _add_index_db(p: argparse.ArgumentParser) -> None:
    p.add_argument("--index-db", default=DEFAULT_INDEX_DB, metavar="FILE",
                   help=f"DuckDB index file (config database.path; default {DEFAULT_INDEX_DB})")


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``query``, ``stats`` and ``reindex`` to an argparse subparsers object."""
    q = subparsers.add_parser("query", help="run a read-only SQL query on the index",
                              description="Run one SELECT/WITH/DESCRIBE/SHOW/EXPLAIN statement "
                                          "on the index. Tables: patients, studies, series, "
                                          "instances, associations; views: study_summary, "
                                          "series_summary.")
    q.add_argument("sql", help="the SQL statement")
    q.add_argument("--format", choices=("table", "csv", "json", "parquet"), default="table")
    q.add_argument("--output", "-o", metavar="FILE", help="write to FILE instead of stdout")
    q.add_argument("--max-rows", type=int, default=None, metavar="N", help="fetch at most N rows")
    q.add_argument("--url", help="status endpoint of the running server to query through (default: the "
                                 "server holding --index-db, found by its <index-db>.status.json)")
    q.add_argument("--token", help="status endpoint token (default: $FASTSCP_STATUS_TOKEN or the discovery file)")
    q.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for a server's answer")
    _add_index_db(q)
    q.set_defaults(func=_cmd_query)

    s = subparsers.add_parser("stats", help="counts, storage use and reception trends")
    s.add_argument("--days", type=int, default=30, help="trend window in days (default 30)")
    s.add_argument("--plot", metavar="FILE.png", help="draw the per-day chart (needs fastscp[plot])")
    s.add_argument("--storage-dir", metavar="DIR", help="storage directory, for disk usage/free")
    s.add_argument("--format", choices=("text", "json"), default="text")
    s.add_argument("--url", help="status endpoint of the running server to ask (default: the server holding "
                                 "--index-db, found by its <index-db>.status.json)")
    s.add_argument("--token", help="status endpoint token (default: $FASTSCP_STATUS_TOKEN or the discovery file)")
    _add_index_db(s)
    s.set_defaults(func=_cmd_stats)

    r = subparsers.add_parser("reindex", help="reconcile the index with the storage tree",
                              description="Index files that have no row (from their headers) "
                                          "and mark rows whose file is gone as missing. Stop the "
                                          "server first: it holds the index open.")
    r.add_argument("--storage-dir", required=True, metavar="DIR")
    r.add_argument("--workers", type=int, default=None, help="header-parsing processes (default: CPUs)")
    r.add_argument("--no-progress", dest="progress", action="store_false",
                   help="no progress bar (default: shown when stderr is a terminal)")
    _add_index_db(r)
    r.set_defaults(func=_cmd_reindex)


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry point (``python -m fastscp.cli_catalog``), as the tests call it."""
    parser = argparse.ArgumentParser(prog="fastscp")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())

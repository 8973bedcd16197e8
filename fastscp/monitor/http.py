"""The status HTTP endpoint, served by the receiver's own event loop.

A deliberately small HTTP/1.1 server on asyncio streams (one request per
connection, ``Connection: close``): the endpoint is local, polled about once
a second, and a framework would be a larger dependency than the whole
monitor. Routes:

  GET  /          the dashboard (one self-contained HTML page, no network fetches)
  GET  /status    JSON snapshot (Monitor.snapshot)
  GET  /metrics   Prometheus text exposition
  GET  /trend     instances and bytes per day and modality, from the catalog
  POST /query     {"sql": ..., "max_rows": N, "format": "json"|"parquet"}: one
                  read-only statement through catalog.run_readonly_query

Building /status and /metrics is plain reads of in-memory counters, done on
the loop. Everything touching DuckDB runs in a two-thread pool on a cursor of
the catalog writer's connection (the file is held by this process, so that is
the only way another process can read it while we run).

With ``status.token`` set every request needs ``Authorization: Bearer
<token>``, or ``?token=<token>`` (for opening the dashboard in a browser; the
page passes it on to its own requests).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import datetime as _dt
import hmac
import importlib.resources
import logging
import os
import tempfile
import time
from typing import Any
from urllib.parse import parse_qs, urlsplit

import duckdb
import orjson
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from ..catalog import CatalogWriter, ReadOnlyQueryError, run_readonly_query
from ..catalog.query import _json_default, export_parquet
from .collector import MetricsCollector, Monitor

log = logging.getLogger("fastscp.monitor")

MAX_HEADER = 16 * 1024
MAX_BODY = 1024 * 1024
MAX_QUERY_ROWS = 1_000_000
REQUEST_TIMEOUT = 10.0
# connections served at once; one more is closed at once (issue 20: partial
# requests must not take every file descriptor of the receiver)
MAX_CONNECTIONS = 64
TREND_CACHE_SECONDS = 10.0

_REASONS = {200: "OK", 204: "No Content", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found",
            405: "Method Not Allowed", 413: "Payload Too Large", 422: "Unprocessable Entity",
            500: "Internal Server Error", 503: "Service Unavailable"}

TREND_SQL = """
SELECT i.received_at::DATE AS day, coalesce(nullif(s.modality, ''), '(none)') AS modality,
       count(*) AS instances, coalesce(sum(i.file_size), 0) AS bytes
FROM instances i LEFT JOIN series s USING (series_instance_uid)
WHERE i.status = 'present' AND i.received_at >= ?
GROUP BY day, modality ORDER BY day, modality
"""


def dashboard_html() -> bytes:
    return importlib.resources.files(__package__).joinpath("dashboard.html").read_bytes()


class HttpError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _json(obj: Any) -> bytes:
    return orjson.dumps(obj, default=_json_default, option=orjson.OPT_NAIVE_UTC | orjson.OPT_NON_STR_KEYS)


class StatusServer:
    def __init__(self, monitor: Monitor, catalog: CatalogWriter | None, token: str | None = None) -> None:
        self.monitor = monitor
        self.catalog = catalog
        self.token = token
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(MetricsCollector(monitor))
        self.pool = concurrent.futures.ThreadPoolExecutor(max_workers=2, thread_name_prefix="fastscp-status")
        self._server: asyncio.AbstractServer | None = None
        self._trend_cache: dict[int, tuple[float, dict[str, Any]]] = {}
        self._page = dashboard_html()
        self.requests = 0

    async def start(self, host: str, port: int) -> tuple[str, int]:
        self._server = await asyncio.start_server(self._serve_capped, host, port, limit=MAX_HEADER)
        sockname = self._server.sockets[0].getsockname()
        return sockname[0], int(sockname[1])

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        self.pool.shutdown(wait=False, cancel_futures=True)

    # ---- one connection, one request --------------------------------------------------

    _open = 0

    async def _serve_capped(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """``_serve``, unless MAX_CONNECTIONS are open: then closed at once."""
        if self._open >= MAX_CONNECTIONS:
            writer.transport.abort()
            return
        self._open += 1
        try:
            await self._serve(reader, writer)
        finally:
            self._open -= 1

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            try:
                method, target, headers, body = await asyncio.wait_for(self._read_request(reader), REQUEST_TIMEOUT)
            except (asyncio.TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError,
                    ConnectionError):
                return
            except HttpError as exc:
                self._write(writer, exc.status, _json({"error": str(exc)}), "application/json")
                return
            self.requests += 1
            try:
                status, payload, ctype, extra = await self._route(method, target, headers, body)
            except HttpError as exc:
                status, payload, ctype, extra = exc.status, _json({"error": str(exc)}), "application/json", {}
            except Exception as exc:  # a bug here must not take the receiver down
                log.exception("status endpoint: %s %s failed", method, target)
                status, payload, ctype, extra = 500, _json({"error": f"{type(exc).__name__}: {exc}"}), \
                    "application/json", {}
            self._write(writer, status, payload, ctype, extra)
            await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    async def _read_request(self, reader: asyncio.StreamReader) -> tuple[str, str, dict[str, str], bytes]:
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            raise HttpError(400, "malformed request line")
        headers: dict[str, str] = {}
        for line in lines[1:]:
            if line:
                name, sep, value = line.partition(":")
                if not sep:
                    raise HttpError(400, "malformed header")
                headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length", "0") or 0)
        if length < 0 or length > MAX_BODY:
            raise HttpError(413, f"body larger than {MAX_BODY} bytes")
        body = await reader.readexactly(length) if length else b""
        return parts[0].upper(), parts[1], headers, body

    def _write(self, writer: asyncio.StreamWriter, status: int, payload: bytes, ctype: str,
               extra: dict[str, str] | None = None) -> None:
        head = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Status')}", f"Content-Type: {ctype}",
                f"Content-Length: {len(payload)}", "Connection: close", "Cache-Control: no-store",
                "X-Content-Type-Options: nosniff"]
        head += [f"{k}: {v}" for k, v in (extra or {}).items()]
        writer.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + payload)

    def _authorized(self, headers: dict[str, str], query: dict[str, list[str]]) -> bool:
        if not self.token:
            return True
        given = headers.get("authorization", "")
        if given.lower().startswith("bearer "):
            given = given[7:].strip()
        else:
            given = (query.get("token") or [""])[0]
        return hmac.compare_digest(given.encode(), self.token.encode())

    async def _route(self, method: str, target: str, headers: dict[str, str],
                     body: bytes) -> tuple[int, bytes, str, dict[str, str]]:
        url = urlsplit(target)
        query = parse_qs(url.query)
        path = url.path
        if path == "/favicon.ico":
            return 204, b"", "image/x-icon", {}
        if not self._authorized(headers, query):
            return 401, _json({"error": "missing or wrong token"}), "application/json", \
                {"WWW-Authenticate": 'Bearer realm="fastscp"'}
        routes = {"/": "GET", "/status": "GET", "/metrics": "GET", "/trend": "GET", "/query": "POST"}
        if path not in routes:
            raise HttpError(404, f"no such page: {path}")
        if method != routes[path]:
            return 405, _json({"error": f"{path} takes {routes[path]}"}), "application/json", \
                {"Allow": routes[path]}
        if path == "/":
            return 200, self._page, "text/html; charset=utf-8", {}
        if path == "/status":
            return 200, _json(self.monitor.snapshot()), "application/json", {}
        if path == "/metrics":
            return 200, generate_latest(self.registry), CONTENT_TYPE_LATEST, {}
        loop = asyncio.get_running_loop()
        if self.catalog is None:
            raise HttpError(503, "this server runs without an index (database.path is null)")
        if path == "/trend":
            try:
                days = int((query.get("days") or ["30"])[0])
            except ValueError:
                raise HttpError(400, "days must be a whole number") from None
            if not 1 <= days <= 3660:
                raise HttpError(400, "days must be between 1 and 3660")
            return 200, _json(await self._trend(days)), "application/json", {}
        try:
            request = orjson.loads(body)
            sql = request["sql"]
            if not isinstance(sql, str):
                raise TypeError
        except (orjson.JSONDecodeError, KeyError, TypeError):
            raise HttpError(400, 'body must be JSON: {"sql": "SELECT ...", "max_rows": N}') from None
        max_rows = request.get("max_rows")
        fmt = request.get("format", "json")
        if max_rows is not None and (not isinstance(max_rows, int) or max_rows < 0):
            raise HttpError(400, "max_rows must be a non-negative whole number")
        if fmt not in ("json", "parquet"):
            raise HttpError(400, "format must be json or parquet")
        cap = MAX_QUERY_ROWS if max_rows is None else min(max_rows, MAX_QUERY_ROWS)
        try:
            if fmt == "parquet":
                data = await loop.run_in_executor(self.pool, self._parquet, sql)
                return 200, data, "application/vnd.apache.parquet", {}
            t0 = time.perf_counter()
            columns, rows = await loop.run_in_executor(self.pool, self._query, sql, cap)
        except ReadOnlyQueryError as exc:
            return 400, _json({"error": str(exc), "kind": "refused"}), "application/json", {}
        except duckdb.Error as exc:
            return 422, _json({"error": str(exc), "kind": "sql"}), "application/json", {}
        return 200, _json({"columns": columns, "rows": rows, "truncated": max_rows is None and len(rows) >= cap,
                           "seconds": round(time.perf_counter() - t0, 4)}), "application/json", {}

    # ---- catalog work, in the pool -----------------------------------------------------

    def _query(self, sql: str, max_rows: int) -> tuple[list[str], list[tuple[Any, ...]]]:
        assert self.catalog is not None
        cur = self.catalog.cursor()
        try:
            return run_readonly_query(cur, sql, max_rows)
        finally:
            cur.close()

    def _parquet(self, sql: str) -> bytes:
        assert self.catalog is not None
        cur = self.catalog.cursor()
        fd, path = tempfile.mkstemp(prefix="fastscp-query-", suffix=".parquet")
        os.close(fd)
        try:
            export_parquet(cur, sql, path)
            with open(path, "rb") as fh:
                return fh.read()
        finally:
            cur.close()
            os.unlink(path)

    async def _trend(self, days: int) -> dict[str, Any]:
        cached = self._trend_cache.get(days)
        now = time.monotonic()
        if cached is not None and now - cached[0] < TREND_CACHE_SECONDS:
            return cached[1]
        result = await asyncio.get_running_loop().run_in_executor(self.pool, self._trend_rows, days)
        self._trend_cache[days] = (now, result)
        return result

    def _trend_rows(self, days: int) -> dict[str, Any]:
        assert self.catalog is not None
        today = _dt.datetime.now(_dt.timezone.utc).date()
        since = today - _dt.timedelta(days=days - 1)
        cur = self.catalog.cursor()
        try:
            rows = cur.execute(TREND_SQL, [since]).fetchall()
        finally:
            cur.close()
        return {"days": days, "since": str(since), "today": str(today),
                "rows": [{"day": str(d), "modality": m, "instances": int(n), "bytes": int(b)} for d, m, n, b in rows]}

"""The status HTTP endpoint, served by the receiver's own event loop.

A deliberately small HTTP/1.1 server on asyncio streams (one request per
connection, ``Connection: close``). Routes:

  GET  /          the dashboard (one self-contained HTML page, no network fetches)
  GET  /status    JSON snapshot (Monitor.snapshot)
  GET  /trend     instances and bytes per day and modality, from the catalog
  GET  /stats     ?days=N: catalog.stats.collect_stats, for ``fastscp stats``
  POST /query     {"sql": ..., "max_rows": N, "format": "json"|"parquet"}: one
                  read-only statement through catalog.run_readonly_query
  GET  /metrics   Prometheus text exposition    (open: no token, any Host)
  GET  /healthz   {"ok": true}                  (open: no token, any Host)

Who may ask (docs/security.md): every route but the two open ones needs the
token (``Authorization: Bearer``, or the cookie the dashboard gets when it is
opened once as ``/?token=...``), a ``Host`` that is localhost, an IP address
or a name in ``status.allowed_hosts`` (DNS rebinding), no foreign ``Origin``
or ``Sec-Fetch-Site`` (cross-site requests), and POST /query a JSON body with
``Content-Type: application/json`` (so a page on another origin cannot send
it without a CORS preflight, which this server never grants).

What a query may take (``QueryLimits``): at most ``concurrent`` at a time
(then 503), ``timeout`` seconds (then ``interrupt()``), ``max_bytes`` of
result in every format (JSON is serialised batch by batch in the worker
thread and stopped at the cap; Parquet's file is watched as it grows), and
it is interrupted when its client goes away or the server stops. The SQL
itself reaches nothing but the index: every connection to it is locked down
by DuckDB's settings (catalog/schema.py ``lock_down``).

Building /status and /metrics is plain reads of in-memory counters, done on
the loop. Everything touching DuckDB runs in worker threads (queries in their
own pool, /trend in another) on cursors of the catalog writer's connection
(the file is held by this process, so that is the only way another process
can read it while we run).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import datetime as _dt
import hmac
import importlib.resources
import ipaddress
import logging
import os
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.cookies import CookieError, SimpleCookie
from typing import Any
from urllib.parse import parse_qs, urlsplit

import duckdb
import orjson

from ..catalog import CatalogWriter, ReadOnlyQueryError
from ..catalog.query import check_readonly, export_parquet, json_default
from ..catalog.schema import export_dir
from ..catalog.stats import TREND_SQL, collect_stats
from .collector import Monitor

log = logging.getLogger("fastscp.monitor")

MAX_HEADER = 16 * 1024
MAX_BODY = 1024 * 1024
REQUEST_TIMEOUT = 10.0
# connections served at once; one more is closed at once (issue 20: partial
# requests must not take every file descriptor of the receiver)
MAX_CONNECTIONS = 64
TREND_CACHE_SECONDS = 10.0
FETCH_BATCH = 2048  # rows serialised at a time, between checks of the byte cap
WATCH_EVERY = 0.1  # seconds between checks of a running query (deadline, Parquet size)
OPEN_ROUTES = frozenset({"/metrics", "/healthz", "/favicon.ico"})

_REASONS = {200: "OK", 204: "No Content", 303: "See Other", 400: "Bad Request", 401: "Unauthorized",
            403: "Forbidden", 404: "Not Found", 405: "Method Not Allowed", 413: "Payload Too Large",
            415: "Unsupported Media Type", 422: "Unprocessable Entity", 500: "Internal Server Error",
            503: "Service Unavailable"}


@dataclass(frozen=True)
class QueryLimits:
    """Limits of POST /query (config ``status.query_*``)."""

    timeout: float = 30.0
    max_bytes: int = 64 * 1024 * 1024
    max_rows: int = 1_000_000
    concurrent: int = 2


LOGIN_PAGE = b"""<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>fastscp: token needed</title>
</head><body><h1>fastscp status: token needed</h1>
<p>This page shows index data, so it needs the server's token. On the server, run
<code>fastscp status --browser-url</code> and open the address it prints once (the token then
lives in a cookie), or add <code>?token=</code> and the contents of
<code>&lt;storage&gt;/.status/token</code> to this address.</p></body></html>
"""


def dashboard_html() -> bytes:
    return importlib.resources.files(__package__).joinpath("dashboard.html").read_bytes()


class HttpError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _days(query: dict[str, list[str]]) -> int:
    """The ``days`` parameter of /trend and /stats: 1 to 3660, default 30."""
    try:
        days = int((query.get("days") or ["30"])[0])
    except ValueError:
        raise HttpError(400, "days must be a whole number") from None
    if not 1 <= days <= 3660:
        raise HttpError(400, "days must be between 1 and 3660")
    return days


def _json(obj: Any) -> bytes:
    return orjson.dumps(obj, default=json_default, option=orjson.OPT_NAIVE_UTC | orjson.OPT_NON_STR_KEYS)


class QueryStopped(Exception):
    """A query was interrupted; ``QueryJob.reason`` says why."""


class QueryJob:
    """One running query: its own cursor, and why it was stopped, if it was."""

    def __init__(self, conn: duckdb.DuckDBPyConnection, limits: QueryLimits) -> None:
        self.conn = conn
        self.limits = limits
        self.reason = ""  # "timeout", "too_large", "client_gone", "stopping"
        self.file: str | None = None  # Parquet being written, watched for size
        self._lock = threading.Lock()

    def stop(self, reason: str) -> None:
        with self._lock:
            if self.reason:
                return
            self.reason = reason
        self.interrupt()

    def interrupt(self) -> None:
        """Interrupt what runs on the connection. DuckDB forgets an
        interrupt that comes before a statement starts (each one begins
        uninterrupted), so the watcher repeats it until the work ends."""
        with contextlib.suppress(duckdb.Error):
            self.conn.interrupt()

    def check(self) -> None:
        if self.reason:
            raise QueryStopped(self.reason)


def _stopped_answer(job: QueryJob) -> tuple[int, dict[str, str]]:
    lim = job.limits
    if job.reason == "timeout":
        return 422, {"kind": "timeout", "error": f"query stopped after {lim.timeout:g} s (status.query_timeout): "
                                                  "narrow it, or add a LIMIT"}
    if job.reason == "too_large":
        return 422, {"kind": "too_large", "error": f"result larger than {lim.max_bytes} bytes "
                                                    "(status.query_max_bytes): select fewer rows or columns"}
    return 503, {"kind": "stopped", "error": "query stopped: the server is shutting down"}


def _host_name(host_header: str) -> str:
    host = host_header.strip().lower()
    if host.startswith("["):
        return host[1:host.find("]")] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


class StatusServer:
    def __init__(self, monitor: Monitor, catalog: CatalogWriter | None, token: str | None = None, *,
                 limits: QueryLimits = QueryLimits(), allowed_hosts: tuple[str, ...] = ()) -> None:
        self.monitor = monitor
        self.catalog = catalog
        self.token = token
        self.limits = limits
        self.allowed_hosts = frozenset(h.lower() for h in allowed_hosts)
        self._metrics: tuple[Callable[[], bytes], str] | None = None  # made by the first /metrics request
        self._metrics_lock = threading.Lock()
        self.query_pool = concurrent.futures.ThreadPoolExecutor(max_workers=limits.concurrent,
                                                                thread_name_prefix="fastscp-query")
        self.pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="fastscp-status")
        self._server: asyncio.AbstractServer | None = None
        self._trend_cache: dict[int, tuple[float, dict[str, Any]]] = {}
        self._page = dashboard_html()
        self._jobs: set[QueryJob] = set()
        self._cookie = "fastscp-token"
        self.requests = 0
        self.queries = {"run": 0, "refused_busy": 0, "timeout": 0, "too_large": 0, "client_gone": 0}

    async def start(self, host: str, port: int) -> tuple[str, int]:
        self._server = await asyncio.start_server(self._serve_capped, host, port, limit=MAX_HEADER)
        sockname = self._server.sockets[0].getsockname()
        self._cookie = f"fastscp-token-{sockname[1]}"  # cookies ignore ports: one per server
        return sockname[0], int(sockname[1])

    async def close(self) -> None:
        for job in list(self._jobs):  # a running query must not keep the process alive
            job.stop("stopping")
        if self._server is not None:
            self._server.close()
        self.query_pool.shutdown(wait=False, cancel_futures=True)
        self.pool.shutdown(wait=False, cancel_futures=True)
        if self._server is not None:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._server.wait_closed(), 5.0)

    @property
    def queries_running(self) -> int:
        return len(self._jobs)

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
                status, payload, ctype, extra = await self._route(method, target, headers, body, reader)
            except HttpError as exc:
                status, payload, ctype, extra = exc.status, _json({"error": str(exc)}), "application/json", {}
            except Exception as exc:  # a bug here must not take the receiver down
                log.exception("status endpoint: %s %s failed", method, target)
                status, payload, ctype, extra = 500, _json({"error": f"{type(exc).__name__}: {exc}"}), \
                    "application/json", {}
            if status == 0:  # the client went away: nobody to answer
                return
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
                "X-Content-Type-Options: nosniff", "X-Frame-Options: DENY", "Referrer-Policy: no-referrer"]
        head += [f"{k}: {v}" for k, v in (extra or {}).items()]
        writer.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + payload)

    # ---- who may ask ------------------------------------------------------------------

    def _scrape(self) -> tuple[bytes, str]:
        """The Prometheus exposition and its content type. prometheus-client
        is imported by the first scrape, not at start (monitor/metrics.py)."""
        with self._metrics_lock:
            if self._metrics is None:
                from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

                from .metrics import MetricsCollector

                registry = CollectorRegistry(auto_describe=False)
                registry.register(MetricsCollector(self.monitor))
                self._metrics = (lambda: generate_latest(registry)), CONTENT_TYPE_LATEST
        generate, content_type = self._metrics
        return generate(), content_type

    def _host_allowed(self, headers: dict[str, str]) -> bool:
        """Against DNS rebinding: a page on evil.example whose name now
        resolves to 127.0.0.1 still sends ``Host: evil.example``. Browsers
        always send Host; a client without one is not a browser."""
        if "host" not in headers:
            return True
        name = _host_name(headers["host"])
        if "*" in self.allowed_hosts or name in self.allowed_hosts:
            return True
        if name == "localhost" or name.endswith(".localhost"):
            return True
        try:
            ipaddress.ip_address(name)
        except ValueError:
            return False
        return True

    def _cross_site(self, headers: dict[str, str]) -> str | None:
        """Why a browser request comes from another site, or None."""
        site = headers.get("sec-fetch-site", "")
        if site and site not in ("same-origin", "none"):
            return f"Sec-Fetch-Site: {site}"
        origin = headers.get("origin")
        if origin is None:
            return None
        parts = urlsplit(origin)
        if parts.scheme not in ("http", "https") or parts.netloc.lower() != headers.get("host", "").strip().lower():
            return f"Origin {origin}"
        return None

    def _given_token(self, headers: dict[str, str], query: dict[str, list[str]]) -> str:
        given = headers.get("authorization", "")
        if given.lower().startswith("bearer "):
            return given[7:].strip()
        if "token" in query:
            return query["token"][0]
        if "cookie" in headers:
            jar: SimpleCookie = SimpleCookie()
            with contextlib.suppress(CookieError):
                jar.load(headers["cookie"])
            morsel = jar.get(self._cookie)
            if morsel is not None:
                return morsel.value
        return ""

    def _authorized(self, given: str) -> bool:
        if not self.token:
            return True
        return hmac.compare_digest(given.encode(), self.token.encode())

    async def _route(self, method: str, target: str, headers: dict[str, str], body: bytes,
                     reader: asyncio.StreamReader | None = None) -> tuple[int, bytes, str, dict[str, str]]:
        url = urlsplit(target)
        query = parse_qs(url.query)
        path = url.path
        if path == "/favicon.ico":
            return 204, b"", "image/x-icon", {}
        if path in OPEN_ROUTES:
            if method != "GET":
                return 405, _json({"error": f"{path} takes GET"}), "application/json", {"Allow": "GET"}
            if path == "/healthz":
                return 200, _json({"ok": True}), "application/json", {}
            body, content_type = self._scrape()
            return 200, body, content_type, {}
        if not self._host_allowed(headers):
            return 403, _json({"error": f"Host {headers.get('host')!r} is not this server's: add it to "
                                        "status.allowed_hosts to use that name", "kind": "host"}), \
                "application/json", {}
        why = self._cross_site(headers)
        if why is not None:
            return 403, _json({"error": f"cross-site request refused ({why})", "kind": "origin"}), \
                "application/json", {}
        given = self._given_token(headers, query)
        if not self._authorized(given) and path == "/":  # a person in a browser: say how to get in
            return 401, LOGIN_PAGE, "text/html; charset=utf-8", {"WWW-Authenticate": 'Bearer realm="fastscp"'}
        if not self._authorized(given):
            return 401, _json({"error": "missing or wrong token (see docs/security.md: the token is in "
                                        "<storage>/.status/token)"}), "application/json", \
                {"WWW-Authenticate": 'Bearer realm="fastscp"'}
        routes = {"/": "GET", "/status": "GET", "/trend": "GET", "/stats": "GET", "/query": "POST"}
        if path not in routes:
            raise HttpError(404, f"no such page: {path}")
        if method != routes[path]:
            return 405, _json({"error": f"{path} takes {routes[path]}"}), "application/json", \
                {"Allow": routes[path]}
        if path == "/":
            if "token" in query and self.token:  # once: the token becomes a cookie, and leaves the URL
                cookie = f"{self._cookie}={self.token}; Path=/; HttpOnly; SameSite=Strict"
                return 303, b"", "text/plain", {"Location": "/", "Set-Cookie": cookie}
            return 200, self._page, "text/html; charset=utf-8", {"Content-Security-Policy": (
                "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
                "img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'")}
        if path == "/status":
            doc = self.monitor.snapshot()
            doc["queries"] = {"running": self.queries_running, **self.queries}
            return 200, _json(doc), "application/json", {}
        if self.catalog is None:
            raise HttpError(503, "this server runs without an index (database.path is null)")
        if path == "/trend":
            return 200, _json(await self._trend(_days(query))), "application/json", {}
        if path == "/stats":  # fastscp stats while this server holds the index
            days = _days(query)
            loop = asyncio.get_running_loop()
            return 200, _json(await loop.run_in_executor(self.pool, self._stats, days)), "application/json", {}
        ctype = headers.get("content-type", "").split(";", 1)[0].strip().lower()
        if ctype != "application/json":
            raise HttpError(415, "POST /query needs Content-Type: application/json")
        return await self._query_route(body, reader)

    # ---- POST /query ------------------------------------------------------------------

    async def _query_route(self, body: bytes, reader: asyncio.StreamReader | None
                           ) -> tuple[int, bytes, str, dict[str, str]]:
        try:
            request = orjson.loads(body)
            sql = request["sql"]
            if not isinstance(sql, str):
                raise TypeError
        except (orjson.JSONDecodeError, KeyError, TypeError):
            raise HttpError(400, 'body must be JSON: {"sql": "SELECT ...", "max_rows": N}') from None
        max_rows = request.get("max_rows")
        fmt = request.get("format", "json")
        if max_rows is not None and (not isinstance(max_rows, int) or isinstance(max_rows, bool) or max_rows < 0):
            raise HttpError(400, "max_rows must be a non-negative whole number")
        if fmt not in ("json", "parquet"):
            raise HttpError(400, "format must be json or parquet")
        if len(self._jobs) >= self.limits.concurrent:
            self.queries["refused_busy"] += 1
            return 503, _json({"error": f"{self.limits.concurrent} queries are already running: try again when "
                                        "one has ended", "kind": "busy"}), "application/json", {"Retry-After": "1"}
        assert self.catalog is not None
        cap = self.limits.max_rows if max_rows is None else min(max_rows, self.limits.max_rows)
        job = QueryJob(self.catalog.cursor(), self.limits)
        self._jobs.add(job)
        self.queries["run"] += 1
        loop = asyncio.get_running_loop()
        t0 = time.perf_counter()
        try:
            if fmt == "parquet":
                work = loop.run_in_executor(self.query_pool, self._parquet, job, sql)
            else:
                work = loop.run_in_executor(self.query_pool, self._json_result, job, sql, cap,
                                            max_rows is None or max_rows > self.limits.max_rows)
            await self._watch(job, work, reader)
            try:
                result = work.result()
            except (QueryStopped, duckdb.Error) as exc:
                if not job.reason:  # the SQL's own error
                    if isinstance(exc, ReadOnlyQueryError):
                        return 400, _json({"error": str(exc), "kind": "refused"}), "application/json", {}
                    return 422, _json({"error": str(exc), "kind": "sql"}), "application/json", {}
                self.queries[job.reason] = self.queries.get(job.reason, 0) + 1
                if job.reason == "client_gone":
                    return 0, b"", "", {}
                status, doc = _stopped_answer(job)
                return status, _json(doc), "application/json", {}
            except ReadOnlyQueryError as exc:
                return 400, _json({"error": str(exc), "kind": "refused"}), "application/json", {}
        finally:
            self._jobs.discard(job)
        if fmt == "parquet":
            return 200, result, "application/vnd.apache.parquet", {}
        seconds = round(time.perf_counter() - t0, 4)
        return 200, result[:-1] + b',"seconds":' + orjson.dumps(seconds) + b"}", "application/json", {}

    async def _watch(self, job: QueryJob, work: asyncio.Future[Any], reader: asyncio.StreamReader | None) -> None:
        """Wait for ``work``; stop its query at the deadline, when its client
        goes away (end of stream on the connection) or when its Parquet file
        passes the byte cap."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.limits.timeout
        gone: asyncio.Future[bytes] | None = asyncio.ensure_future(reader.read(1)) if reader is not None else None
        try:
            while not work.done():
                waiting: set[asyncio.Future[Any]] = {work} if gone is None else {work, gone}
                await asyncio.wait(waiting, timeout=WATCH_EVERY, return_when=asyncio.FIRST_COMPLETED)
                if gone is not None and gone.done():
                    if gone.exception() is not None or not gone.result():
                        job.stop("client_gone")
                    gone = None
                if loop.time() >= deadline:
                    job.stop("timeout")
                if job.file is not None:
                    with contextlib.suppress(OSError):
                        if os.stat(job.file).st_size > self.limits.max_bytes:
                            job.stop("too_large")
                if job.reason and not work.done():  # stopped: again, in case it came before a statement began
                    job.interrupt()
        finally:
            if gone is not None:
                gone.cancel()

    # ---- catalog work, in the pools ----------------------------------------------------

    def _json_result(self, job: QueryJob, sql: str, cap: int, cap_is_servers: bool) -> bytes:
        """The JSON answer without its "seconds", serialised here (not on the
        loop) batch by batch, refused as soon as it passes the byte cap."""
        cur = job.conn
        try:
            text = check_readonly(cur, sql)
            cur.begin()
            try:
                res = cur.execute(text)
                columns = [d[0] for d in (res.description or [])]
                head = b'{"columns":' + _json(columns) + b',"rows":['
                chunks: list[bytes] = []
                size = len(head)
                n = 0
                while n < cap:
                    job.check()
                    batch = res.fetchmany(min(FETCH_BATCH, cap - n))
                    if not batch:
                        break
                    data = _json(batch)[1:-1]
                    size += len(data) + 1
                    if size > self.limits.max_bytes:
                        job.stop("too_large")
                        job.check()
                    chunks.append(data)
                    n += len(batch)
                job.check()
            finally:
                cur.rollback()
        finally:
            cur.close()
        truncated = cap_is_servers and n >= cap
        return head + b",".join(chunks) + b'],"truncated":' + (b"true" if truncated else b"false") + b"}"

    def _parquet(self, job: QueryJob, sql: str) -> bytes:
        """Write to a private file in the index's export directory (the one
        place the locked-down DuckDB may write), read it back, remove it."""
        assert self.catalog is not None
        cur = job.conn
        folder = export_dir(self.catalog.db_path)
        try:
            for attempt in range(3):  # another export may remove the empty folder in between
                folder.mkdir(mode=0o700, exist_ok=True)
                try:
                    fd, path = tempfile.mkstemp(prefix="query-", suffix=".parquet", dir=folder)
                    break
                except FileNotFoundError:
                    if attempt == 2:
                        raise
            os.close(fd)
            try:
                job.file = path
                export_parquet(cur, sql, path)
                job.check()
                if os.path.getsize(path) > self.limits.max_bytes:
                    job.stop("too_large")
                    job.check()
                with open(path, "rb") as fh:
                    return fh.read()
            finally:
                os.unlink(path)
                with contextlib.suppress(OSError):
                    folder.rmdir()  # gone when empty; another export may be using it
        finally:
            cur.close()

    async def _trend(self, days: int) -> dict[str, Any]:
        cached = self._trend_cache.get(days)
        now = time.monotonic()
        if cached is not None and now - cached[0] < TREND_CACHE_SECONDS:
            return cached[1]
        result = await asyncio.get_running_loop().run_in_executor(self.pool, self._trend_rows, days)
        self._trend_cache[days] = (now, result)
        return result

    def _stats(self, days: int) -> dict[str, Any]:
        assert self.catalog is not None
        cur = self.catalog.cursor()
        try:
            return collect_stats(cur, days=days).as_dict()
        finally:
            cur.close()

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

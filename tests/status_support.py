"""A real StatusServer (fastscp/monitor/http.py) on its own event loop in a
thread, over a real CatalogWriter, for tests that send it many requests."""

from __future__ import annotations

import asyncio
import json
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from test_catalog_support import make_info

from fastscp.catalog import CatalogWriter
from fastscp.monitor.collector import Monitor
from fastscp.monitor.http import QueryLimits, StatusServer

TOKEN = "t0ken-for-tests"


class LiveStatus:
    def __init__(self, tmp_path: Path, limits: QueryLimits | None = None, rows: int = 5,
                 allowed_hosts: tuple[str, ...] = ()) -> None:
        self.db = tmp_path / "index.db"
        self.writer = CatalogWriter(self.db, flush_interval=0.05)
        for i in range(rows):
            self.writer.enqueue(make_info(i, series=i % 2, modality="MR" if i % 2 else "CT", received_at=time.time()))
        assert self.writer.flush(10)
        st = SimpleNamespace(storage=SimpleNamespace(directory=tmp_path), active=0, associations_total=0,
                             instances_total=0, bytes_total=0, observers=[])
        self.monitor = Monitor(st, st.storage.directory, index_counters=self.writer.counters)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.server = StatusServer(self.monitor, self.writer, TOKEN, limits=limits or QueryLimits(),
                                   allowed_hosts=allowed_hosts)
        _, self.port = self.call(self.server.start("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.port}"

    def call(self, coro: Any, timeout: float = 30.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def request(self, path: str, body: bytes | None = None, headers: dict[str, str] | None = None,
                timeout: float = 60.0) -> tuple[int, dict[str, str], bytes]:
        req = urllib.request.Request(self.url + path, data=body, method="POST" if body is not None else "GET")
        for k, v in (headers if headers is not None else {"Authorization": f"Bearer {TOKEN}"}).items():
            req.add_header(k, v)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                return resp.status, {k.lower(): v for k, v in resp.headers.items()}, bytes(resp.read())
        except urllib.error.HTTPError as exc:
            return exc.code, {k.lower(): v for k, v in exc.headers.items()}, bytes(exc.read())

    def query(self, sql: str, **extra: Any) -> tuple[int, Any]:
        status, headers, body = self.request(
            "/query", json.dumps({"sql": sql, **extra}).encode(),
            {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"})
        if headers.get("content-type", "").startswith("application/json"):
            return status, json.loads(body)
        return status, body

    def close(self) -> None:
        try:
            self.call(self.server.close())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
            self.loop.close()
            self.writer.close()

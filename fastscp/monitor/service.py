"""Monitoring as the receiver runs it: the observers, the once-a-second
sampler, the status HTTP endpoint and the discovery file.

``App`` builds one ``MonitorService`` before the listeners start, calls
``start(listening)`` once they do and ``stop()`` at shutdown.

The discovery file ``<index db>.status.json`` (mode 0600) tells local tools
(``fastscp query``, ``fastscp status``) where this server's endpoint is, which
index it holds and its token, so they find a server on any port without flags.
The token is generated at first start (``status_token``, docs/security.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import orjson

from ..catalog import CatalogWriter
from ..config import Config
from ..events import Observer, ServerTotals
from .client import discovery_path
from .collector import Monitor
from .connlog import ConnectionLog
from .http import QueryLimits, StatusServer

log = logging.getLogger("fastscp.monitor")

DISK_EVERY = 2  # seconds between statvfs calls
TOKEN_FILE = Path(".status") / "token"


def token_path(storage_dir: str | os.PathLike[str]) -> Path:
    """Where the generated status token is kept: ``<storage>/.status/token``."""
    return Path(storage_dir) / TOKEN_FILE


def status_token(configured: str | None, auth: bool, storage_dir: str | os.PathLike[str]) -> str | None:
    """The token the endpoint requires: ``status.token`` if set, else the
    one generated at first start and kept in ``token_path`` (mode 0600, in a
    0700 directory, readable only by the service user); None with
    ``status.auth: false``."""
    if not auth:
        return None
    if configured:
        return configured
    path = token_path(storage_dir)
    path.parent.mkdir(mode=0o700, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        if path.stat().st_mode & 0o077:
            os.chmod(path, 0o600)
            log.warning("%s was readable by others: made it 0600", path)
        token = path.read_text().strip()
        if token:
            return token
        fd = os.open(path, os.O_WRONLY | os.O_TRUNC)
    token = secrets.token_urlsafe(32)
    with os.fdopen(fd, "w") as fh:
        fh.write(token + "\n")
    return token


def local_url(host: str, port: int) -> str:
    if host in ("0.0.0.0", ""):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


class MonitorService:
    def __init__(self, cfg: Config, totals: ServerTotals, storage_dir: Path, min_free_space: int | None,
                 observers: list[Observer], catalog: CatalogWriter | None,
                 tls_refusals: Mapping[str, int] | None = None) -> None:
        """``totals``: the server's live totals; ``observers``: the list the
        service tells its events to (the monitor and the connection log join it)."""
        self.cfg = cfg
        self.storage_dir = storage_dir
        self.catalog = catalog
        index_db = str(Path(cfg.database.path).resolve()) if cfg.database.path else None
        self.monitor = Monitor(
            totals, storage_dir, low_free_space=cfg.storage.low_free_space_warning,
            min_free_space=min_free_space or None,
            index_counters=catalog.counters if catalog is not None else None,
            info={"ae_title": cfg.server.ae_title, "storage_dir": str(storage_dir),
                  "index_db": index_db, "listening": []},
            tls_refusals=tls_refusals)
        observers.append(self.monitor)
        observers.append(ConnectionLog())
        self.http: StatusServer | None = None
        self.token: str | None = None
        self.url: str | None = None
        self._discovery: Path | None = None
        self._sampler: asyncio.Task[None] | None = None

    async def start(self, listening: list[str]) -> None:
        self.monitor.info["listening"] = listening
        await self._refresh_disk()
        self._sampler = asyncio.ensure_future(self._sample())
        st = self.cfg.status
        if not st.port:
            log.info("status endpoint off (status.port is 0)")
            return
        try:
            self.token = status_token(st.token, st.auth, self.storage_dir)
        except OSError as exc:
            log.error("status endpoint not started: cannot keep its token in %s: %s",
                      token_path(self.storage_dir), exc)
            return
        limits = QueryLimits(timeout=st.query_timeout, max_bytes=st.query_max_bytes)
        http = StatusServer(self.monitor, self.catalog, self.token, limits=limits, allowed_hosts=st.allowed_hosts)
        try:
            _, port = await http.start(st.bind_address, st.port)
        except OSError as exc:
            why = os.strerror(exc.errno) if exc.errno and exc.errno > 0 else exc.strerror or exc  # not asyncio's text
            log.error("status endpoint not started: cannot listen on %s:%d: %s; receiving without a status page "
                      "(another port: --status-port N or status.port; none: --status-port 0)",
                      st.bind_address, st.port, why)
            await http.close()
            return
        self.http = http
        self.url = local_url(st.bind_address, port)
        self.monitor.info["status_url"] = self.url
        if self.token:
            log.info("status page at %s/ (JSON %s/status, Prometheus %s/metrics); index data needs the token in "
                     "%s (open %s/?token=<token> once in a browser, or `fastscp status --browser-url`)",
                     self.url, self.url, self.url, "status.token" if st.token else
                     token_path(self.storage_dir), self.url)
        else:
            log.warning("status page at %s/ with NO token (status.auth: false): whoever reaches %s:%d reads "
                        "the index", self.url, st.bind_address, port)
        self._write_discovery()

    async def stop(self) -> None:
        if self._sampler is not None:
            self._sampler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sampler
        if self._discovery is not None:
            with contextlib.suppress(OSError):
                self._discovery.unlink()
        if self.http is not None:
            await self.http.close()

    def _write_discovery(self) -> None:
        index_db = self.monitor.info.get("index_db")
        if not index_db or self.url is None:
            return
        path = discovery_path(index_db)
        doc: dict[str, Any] = {"url": self.url, "pid": os.getpid(), "index_db": index_db,
                               "token": self.token}
        tmp = path.with_name(path.name + ".tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as fh:
                fh.write(orjson.dumps(doc))
            os.replace(tmp, path)
            self._discovery = path
        except OSError as exc:
            log.warning("cannot write %s (local tools will not find this server by themselves): %s", path, exc)

    async def _refresh_disk(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            usage = await loop.run_in_executor(None, self.monitor.disk_usage)
        except OSError as exc:
            log.warning("cannot read the storage volume's usage: %s", exc)
            return
        self.monitor.set_disk(usage)

    async def _sample(self) -> None:
        n = 0
        while True:
            await asyncio.sleep(1.0)
            self.monitor.tick()
            n += 1
            if n % DISK_EVERY == 0:
                await self._refresh_disk()

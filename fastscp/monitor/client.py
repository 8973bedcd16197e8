"""Finding and asking a running receiver's status endpoint (for ``fastscp
query`` and ``fastscp status``), with the standard library's urllib.

Which server: ``--url`` if given; else the discovery file the server writes
next to its index (``<index db>.status.json``), if its process is alive; else
``$FASTSCP_STATUS_URL``; else the default local address
``http://127.0.0.1:8042``. ``Endpoint.source`` says which, so the tools can
tell the user what they are showing. The token comes from ``--token``, the
``FASTSCP_STATUS_TOKEN`` environment variable, or the discovery file (only
for the URL that file names: a token is never sent to another server).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from ..pids import running

DEFAULT_URL = "http://127.0.0.1:8042"


def discovery_path(index_db: str | os.PathLike[str]) -> Path:
    """Where a server holding ``index_db`` says where its endpoint is."""
    p = Path(index_db).resolve()
    return p.with_name(p.name + ".status.json")


class EndpointError(RuntimeError):
    """The endpoint answered with an error (status and message kept)."""

    def __init__(self, status: int, message: str, kind: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.kind = kind


@dataclass
class Endpoint:
    url: str
    token: str | None = None
    index_db: str | None = None  # the index the server holds, when known
    source: str = ""  # where the URL came from, for the user

    def request(self, path: str, body: Any = None, timeout: float = 30.0) -> bytes:
        # imported here: the receiver imports this module for discovery_path
        # alone, and urllib.request with http.client is about 0.5 MB (issue 23)
        import urllib.error
        import urllib.request

        data = orjson.dumps(body) if body is not None else None
        req = urllib.request.Request(self.url.rstrip("/") + path, data=data, method="POST" if data else "GET")
        if data is not None:
            req.add_header("Content-Type", "application/json")
        if self.token:
            req.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                return bytes(resp.read())
        except urllib.error.HTTPError as exc:
            raw = exc.read()
            try:
                doc = orjson.loads(raw)
                raise EndpointError(exc.code, str(doc.get("error", raw)), str(doc.get("kind", ""))) from None
            except (orjson.JSONDecodeError, AttributeError):
                raise EndpointError(exc.code, raw.decode(errors="replace") or exc.reason) from None

    def status(self, timeout: float = 5.0) -> dict[str, Any]:
        doc = orjson.loads(self.request("/status", timeout=timeout))
        if not isinstance(doc, dict):
            raise EndpointError(0, "the endpoint's /status is not a JSON object")
        return doc


def discovered(index_db: str | os.PathLike[str] | None) -> Endpoint | None:
    """The endpoint written by a live server holding ``index_db``, if any."""
    if not index_db:
        return None
    path = discovery_path(index_db)
    try:
        doc = orjson.loads(path.read_bytes())
        url, pid = doc["url"], int(doc["pid"])
    except (OSError, orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        return None
    if not running(pid):
        return None
    return Endpoint(url, doc.get("token"), doc.get("index_db"), f"discovery file {path} (server pid {pid})")


def _same_url(a: str, b: str) -> bool:
    return a.rstrip("/").lower() == b.rstrip("/").lower()


def resolve_endpoint(url: str | None, token: str | None, index_db: str | None) -> Endpoint:
    """--url, else the discovery file of ``index_db``, else $FASTSCP_STATUS_URL,
    else the default address; ``source`` says which."""
    token = token or os.environ.get("FASTSCP_STATUS_TOKEN") or None
    found = discovered(index_db)
    if url:
        if token is None and found is not None and _same_url(found.url, url):
            token = found.token
        return Endpoint(url, token, found.index_db if found is not None and _same_url(found.url, url) else None,
                        "--url")
    if found is not None:
        if token:
            found.token = token
        return found
    where = f"no server found for index {index_db} (no live {discovery_path(index_db)})" if index_db else ""
    env = os.environ.get("FASTSCP_STATUS_URL")
    if env:
        return Endpoint(env, token, None, f"$FASTSCP_STATUS_URL; {where}" if where else "$FASTSCP_STATUS_URL")
    return Endpoint(DEFAULT_URL, token, None, f"the default address; {where}" if where else "the default address")


def server_for_index(index_db: str, url: str | None = None, token: str | None = None) -> Endpoint | None:
    """A running server that holds ``index_db`` and answers, or None.
    With an explicit ``url`` that server is trusted to hold the index meant."""
    if url:
        return resolve_endpoint(url, token, index_db)
    ep = discovered(index_db)
    if ep is None:
        return None
    if token:
        ep.token = token
    try:
        doc = ep.status(timeout=2.0)
    except (OSError, EndpointError, orjson.JSONDecodeError):
        return None
    held = (doc.get("server") or {}).get("index_db")
    if held and Path(held).resolve() != Path(index_db).resolve():
        return None
    return ep

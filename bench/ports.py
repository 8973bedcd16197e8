"""Ports for servers a test or a benchmark is about to start.

``free_port`` is shared by ``tests/conftest.py`` and the benchmark drivers
(``receivers.py``, ``bench_index_growth.py``): one rule for every server
the project starts on loopback.
"""
from __future__ import annotations

import random
import socket
from pathlib import Path

__all__ = ["free_port"]

_GIVEN: set[int] = set()  # ports free_port returned in this process


def _ephemeral_low() -> int:
    """The first port of the kernel's range for ports it picks itself (bind
    to 0, connect)."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default


def free_port() -> int:
    """A TCP port nothing holds now, for a server about to start.

    It is taken below the kernel's ephemeral range: a port from that range
    (what binding to port 0 gives) can be picked for any outgoing connection,
    a client's or a peer's, between this check and the server's bind, and the
    server would then fail to start. A port is not handed out twice in one
    process: two taken for one server (DICOM and TLS, or DICOM and HTTP)
    before it binds either must differ."""
    low = _ephemeral_low()
    first = max(1024, low - 12000)
    if len(_GIVEN) > (low - first) // 2:
        _GIVEN.clear()
    for _ in range(500):
        port = random.randrange(first, low)
        if port in _GIVEN:
            continue
        with socket.socket() as s:
            try:
                s.bind(("", port))  # every address, as the servers bind
            except OSError:
                continue
        _GIVEN.add(port)
        return port
    raise RuntimeError(f"no free port in {first}-{low - 1}")

"""Limits against one peer (issue 20, part 2): file descriptors.

A real ``fastscp serve`` started with a low RLIMIT_NOFILE (soft = hard, so
it cannot raise it), more idle connections than that limit to its DICOM
port or its status port, and then dcmtk's echoscu must still succeed: the
connections that never associate are capped (the oldest is closed), an
accept that finds no descriptor backs off and closes silent connections
instead of failing for good, and the status port serves a bounded number of
connections. The log says so in a line or two, not one per accept.
"""

from __future__ import annotations

import errno
import os
import resource
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from conftest import dcmtk, free_port, wait_for_port
from reliability import fd_count, settled_fds, wait_until

pytestmark = pytest.mark.interop

NOFILE = 256
FLOOD = 300  # more than NOFILE


@contextmanager
def _limited_server(tmp_path: Path, config: str = "", status: bool = False) -> Iterator[tuple[subprocess.Popen[bytes], int, int, Path]]:
    port, status_port = free_port(), free_port() if status else 0
    (tmp_path / "fds.yaml").write_text(config or "{}\n")
    log = tmp_path / "server.log"
    cmd = [sys.executable, "-m", "fastscp.cli", "serve", str(port), "FASTSCP", "--config", str(tmp_path / "fds.yaml"),
           "--storage-dir", str(tmp_path / "store"), "--index-db", str(tmp_path / "index.db"),
           "--status-port", str(status_port)]

    def lower_limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (NOFILE, NOFILE))

    with open(log, "ab") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, preexec_fn=lower_limit)  # noqa: PLW1509
    try:
        wait_for_port(port, proc)
        yield proc, port, status_port, log
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _open_idle(port: int, count: int) -> list[socket.socket]:
    """``count`` connections that never send a byte, opened without waiting
    for each handshake (the way a flood opens them)."""
    socks = []
    for _ in range(count):
        s = socket.socket()
        s.setblocking(False)
        err = s.connect_ex(("127.0.0.1", port))
        assert err in (0, errno.EINPROGRESS), os.strerror(err)
        socks.append(s)
    return socks


def _settled(s: socket.socket) -> bool:
    """The handshake is done, or the connection was refused or reset. Read
    once: SO_ERROR is cleared by reading it, and a reset socket has no peer
    name, so a socket seen settled must not be asked again (``_all_settled``)."""
    try:
        s.getpeername()
        return True
    except OSError:
        return s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) != 0


def _all_settled(socks: list[socket.socket]) -> Callable[[], bool]:
    """A condition for wait_until: every socket has settled at some point.
    Each check asks only those not seen settled yet, every one of them (no
    short cut), so a socket the receiver resets after its handshake (the
    connections over the cap) counts once it has settled."""
    pending = list(socks)

    def check() -> bool:
        pending[:] = [s for s in pending if not _settled(s)]
        return not pending
    return check


def _echo(port: int) -> subprocess.CompletedProcess[str]:
    return subprocess.run([dcmtk("echoscu"), "-aec", "FASTSCP", "127.0.0.1", str(port)],
                          capture_output=True, text=True, timeout=120, check=False)


@pytest.mark.parametrize("config", ["", "server:\n  max_unassociated: 100000\n"], ids=["capped", "out-of-fds"])
def test_idle_dicom_connections_past_the_fd_limit_leave_room_for_echoscu(tmp_path: Path, config: str) -> None:
    """capped: the default max_unassociated (64) keeps descriptors free, the
    oldest silent connection is closed for each new one. out-of-fds: no
    useful cap, so accept() meets EMFILE; the receiver backs off, closes a
    quarter of the silent connections each time and keeps listening."""
    with _limited_server(tmp_path, config) as (proc, port, _, log):
        before = fd_count(proc.pid)
        socks = _open_idle(port, FLOOD)
        try:
            settled = _all_settled(socks)
            assert wait_until(lambda: settled() or fd_count(proc.pid) >= NOFILE - 8, 30)
            if not config:
                held = len(settled_fds(proc.pid))
                assert held <= before + 64 + 8, (before, held)  # the cap, not the fd limit, bounds them
            started = time.monotonic()
            out = _echo(port)
            assert out.returncode == 0, out.stdout + out.stderr
            assert time.monotonic() - started < 20  # not once ARTIM (30 s) has cut the silent ones
            assert proc.poll() is None
        finally:
            for s in socks:
                s.close()
        out = _echo(port)
        assert out.returncode == 0, out.stdout + out.stderr
        text = log.read_text(errors="replace")
        assert text.count("Too many open files") <= 3, text[-3000:]
        assert text.count("closing the oldest") <= 3, text[-3000:]
        if config:
            assert "cannot accept DICOM connections: Too many open files" in text, text[-3000:]
        else:
            assert "closing the oldest" in text and "Too many open files" not in text, text[-3000:]


def test_idle_status_connections_past_the_fd_limit_leave_room_for_echoscu(tmp_path: Path) -> None:
    """The status port serves 64 connections at once; more are closed at
    accept. DICOM and the status page keep working."""
    with _limited_server(tmp_path, status=True) as (proc, port, status_port, log):
        before = fd_count(proc.pid)
        socks = _open_idle(status_port, FLOOD)
        try:
            settled = _all_settled(socks)
            assert wait_until(lambda: settled() or fd_count(proc.pid) >= NOFILE - 8, 30)
            held = len(settled_fds(proc.pid))
            assert held <= before + 64 + 8, (before, held)  # the cap, not the fd limit, bounds them
            out = _echo(port)
            assert out.returncode == 0, out.stdout + out.stderr
        finally:
            for s in socks:
                s.close()
        # the receiver has seen them go (else /metrics could meet the cap)
        assert wait_until(lambda: fd_count(proc.pid) <= before + 2, 15), (before, fd_count(proc.pid))
        with urllib.request.urlopen(f"http://127.0.0.1:{status_port}/metrics", timeout=10) as rsp:
            assert rsp.status == 200
        assert "Too many open files" not in log.read_text(errors="replace")

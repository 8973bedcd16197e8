"""Start-up failures: a DICOM port that cannot be listened on ends the
program at once with one clear log line and exit code 1, not a traceback,
and leaves nothing running (the index writer and the group-commit thread
are stopped, so the process exits)."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest


def _serve(tmp_path: Path, port: int, *extra: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "fastscp.cli", "serve", str(port), "FASTSCP", "--bind", "127.0.0.1",
           "--storage-dir", str(tmp_path / "store"), "--index-db", str(tmp_path / "index.db"),
           "--status-port", "0", *extra]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, cwd=tmp_path)


@pytest.mark.parametrize("extra", [(), ("--durability", "fsync")], ids=["default", "fsync"])
def test_port_in_use_is_one_clear_error(tmp_path: Path, extra: tuple[str, ...]) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = _serve(tmp_path, port, *extra)
    out = done.stdout + done.stderr
    assert done.returncode == 1, out
    assert f"cannot listen for DICOM on 127.0.0.1 port {port}: Address already in use; not started" in out, out
    assert "Traceback" not in out, out
    assert "listening on" not in out, out
    # the index was closed cleanly: another process can open it at once
    duckdb.connect(str(tmp_path / "index.db")).close()


"""Running as a service: the systemd unit, and ``fastscp serve`` with no
arguments reading ./config.yaml."""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import free_port, wait_for_port

UNIT = Path(__file__).parent.parent / "contrib" / "fastscp.service"


def unit_entries() -> dict[str, list[str]]:
    entries: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith(("#", "[")) and "=" in line:
            key, _, value = line.partition("=")
            entries.setdefault(key, []).append(value)
    return entries


def test_unit_runs_serve_unprivileged_on_port_104_with_reload_and_restart() -> None:
    e = unit_entries()
    assert e["User"] == ["fastscp"] and e["AmbientCapabilities"] == ["CAP_NET_BIND_SERVICE"]
    assert e["Restart"] == ["on-failure"]
    assert e["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    argv = shlex.split(e["ExecStart"][0])
    assert argv[1:] == ["serve", "--config", "/etc/fastscp/config.yaml"]
    from fastscp.cli import build_parser

    args = build_parser().parse_args(argv[1:])
    assert args.command == "serve" and args.config == "/etc/fastscp/config.yaml"


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_unit_passes_systemd_analyze(tmp_path: Path) -> None:
    text = UNIT.read_text().replace("/usr/local/bin/fastscp", shutil.which("true") or "/bin/true")
    unit = tmp_path / "fastscp.service"
    unit.write_text(text)
    res = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True)
    problems = [l for l in res.stderr.splitlines() if "fastscp.service" in l]
    assert problems == [], res.stderr


def test_serve_without_arguments_reads_config_yaml_in_the_current_folder(tmp_path: Path) -> None:
    port = free_port()
    (tmp_path / "config.yaml").write_text(
        f"server:\n  port: {port}\n  ae_title: FROMFILE\nstorage:\n  directory: ./here\ndatabase:\n  path: null\n"
        "status:\n  port: 0\n")
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).parent.parent))
    proc = subprocess.Popen([sys.executable, "-m", "fastscp.cli", "serve"], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_for_port(port, proc)
        res = subprocess.run([sys.executable, "-m", "fastscp.cli", "echo", "127.0.0.1", str(port), "--aec", "FROMFILE"],
                             capture_output=True, text=True, timeout=60)
        assert res.returncode == 0, res.stderr
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    assert "config.yaml" in out and str(tmp_path / "here") in out

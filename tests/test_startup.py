"""Start-up failures end the program at once with one clear log line and
exit code 1, not a traceback: a DICOM port that cannot be listened on, a
TLS key or certificate that cannot be loaded, a storage directory another
receiver holds. Nothing is left running (the index writer and the
group-commit thread are stopped, so the process exits), and nothing the
failed start created is left on disk (a folder or index that was there
before stays)."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import free_port, wait_for_port


def _serve_cmd(tmp_path: Path, port: int, *extra: str, storage: Path | None = None, bind: str = "127.0.0.1",
               index_db: str = "index.db") -> list[str]:
    return [sys.executable, "-m", "fastscp.cli", "serve", str(port), "FASTSCP", "--bind", bind,
            "--storage-dir", str(storage or tmp_path / "store"), "--index-db", str(tmp_path / index_db),
            "--status-port", "0", *extra]


def _run(cmd: list[str], cwd: Path, timeout: float = 60) -> tuple[int, str]:
    """Exit code and everything printed."""
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=cwd)
    return done.returncode, done.stdout + done.stderr


@pytest.mark.parametrize("extra", [(), ("--durability", "fsync")], ids=["default", "fsync"])
def test_port_in_use_is_one_clear_error(tmp_path: Path, extra: tuple[str, ...]) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        rc, out = _run(_serve_cmd(tmp_path, port, *extra), tmp_path)
    assert rc == 1, out
    assert f"cannot listen for DICOM on 127.0.0.1 port {port}: Address already in use; not started" in out, out
    assert "Traceback" not in out, out
    assert "listening on" not in out, out
    assert not (tmp_path / "store").exists() and not (tmp_path / "index.db").exists(), out


def _tree(root: Path) -> dict[str, bytes | None]:
    """Every path under ``root``, with a file's bytes (None for a folder)."""
    return {str(p.relative_to(root)): None if p.is_dir() else p.read_bytes() for p in root.rglob("*")}


def test_a_failed_start_removes_the_folders_it_made_and_nothing_else(tmp_path: Path) -> None:
    """Folders made for the storage and the index (parents included) go
    with all the start put in them; what the user already had stays."""
    (tmp_path / "kept").mkdir()
    (tmp_path / "kept" / "notes.txt").write_text("the user's")
    before = _tree(tmp_path)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        rc, out = _run(_serve_cmd(tmp_path, port, storage=tmp_path / "new" / "deeper" / "store",
                                  index_db="dbdir/sub/pacs.db"), tmp_path)
    assert rc == 1 and "Address already in use; not started" in out, out
    assert _tree(tmp_path) == before, out
    assert "start-up failed: removed what it had created: " in out, out


def test_a_failed_start_keeps_a_storage_folder_and_index_that_were_there(tmp_path: Path) -> None:
    """A start that fails on a tree and an index from an earlier run removes
    neither, nor any file in them; in an empty folder that was there, it
    removes the lock file, .incoming/ and the new index it made."""
    store = tmp_path / "store"
    port = free_port()
    first = subprocess.Popen(_serve_cmd(tmp_path, port), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True, cwd=tmp_path)
    try:
        wait_for_port(port, first)  # type: ignore[arg-type]
    finally:
        first.terminate()
        first.communicate(timeout=30)
    assert (tmp_path / "index.db").is_file() and (store / ".incoming").is_dir()
    (store / "a-study").mkdir()
    (store / "a-study" / "image.dcm").write_bytes(b"kept")
    empty = tmp_path / "empty"
    empty.mkdir()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        rc, out = _run(_serve_cmd(tmp_path, busy), tmp_path)
        assert rc == 1 and "Address already in use; not started" in out, out
        rc, out2 = _run(_serve_cmd(tmp_path, busy, storage=empty, index_db="new.db"), tmp_path)
        assert rc == 1 and "Address already in use; not started" in out2, out2
    assert (tmp_path / "index.db").is_file() and (store / ".incoming").is_dir(), out
    assert (store / "a-study" / "image.dcm").read_bytes() == b"kept"
    assert "removed" not in out, out
    assert empty.is_dir() and list(empty.iterdir()) == [], out2
    assert not (tmp_path / "new.db").exists(), out2


def test_a_bind_name_that_does_not_resolve_says_so(tmp_path: Path) -> None:
    rc, out = _run(_serve_cmd(tmp_path, 0, bind="nosuchhost.invalid"), tmp_path, timeout=120)
    assert rc == 1, out
    assert "cannot listen for DICOM on nosuchhost.invalid port 0: " in out, out
    assert "Unknown error" not in out and "Traceback" not in out, out  # the resolver's words, not a bare errno


def test_a_second_receiver_on_the_same_storage_is_refused_before_touching_it(
        start_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """A second ``fastscp serve`` on a tree a running one holds would sweep
    the running one's temp files from .incoming/ at start; it must stop
    first, naming the holder, and leave the tree alone."""
    first = start_server()
    keep = first.storage / ".incoming" / "in-flight.part"
    keep.write_bytes(b"a transfer the first receiver has under way")
    port = free_port()
    cmd = _serve_cmd(tmp_path, port, storage=first.storage, index_db="second.db")
    rc, out = _run(cmd, tmp_path)
    assert rc == 1, out
    assert f"is in use by another fastscp (pid {first.proc.pid}); not started" in out, out
    assert "Traceback" not in out and "removed" not in out, out
    assert keep.exists()
    assert not (tmp_path / "second.db").exists()  # nothing opened before the refusal
    # once the first is gone, the tree is free (the kernel dropped its lock)
    assert first.stop() == 0
    keep.unlink()
    again = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=tmp_path)
    try:
        wait_for_port(port, again)  # type: ignore[arg-type]
    finally:
        again.terminate()
        out, _ = again.communicate(timeout=30)
    assert again.returncode == 0, out


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
def test_a_tls_key_that_does_not_match_is_one_clear_error(tmp_path: Path) -> None:
    """A TLS key or certificate that cannot be loaded stops start-up before
    any port is bound, with one line and exit code 1."""
    for name in ("a", "b"):
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key",
                        "-out", f"{name}.pem", "-days", "2", "-subj", f"/CN={name}"],
                       cwd=tmp_path, check=True, capture_output=True)
    port = free_port()
    config = tmp_path / "tls.yaml"
    config.write_text(
        "server:\n"
        f"  port: {port}\n"
        "  bind_address: 127.0.0.1\n"
        "  tls:\n"
        "    enabled: true\n"
        "    port: 0\n"
        f"    certificate: {tmp_path / 'a.pem'}\n"
        f"    key: {tmp_path / 'b.key'}\n"  # the other certificate's key
        "storage:\n"
        f"  directory: {tmp_path / 'store'}\n"
        "database:\n"
        f"  path: {tmp_path / 'index.db'}\n"
        "status:\n"
        "  port: 0\n")
    rc, out = _run([sys.executable, "-m", "fastscp.cli", "serve", "--config", str(config)], tmp_path)
    assert rc == 1, out
    assert "cannot set up TLS from server.tls:" in out and "not started" in out, out
    assert "Traceback" not in out and "listening on" not in out, out
    assert not (tmp_path / "store").exists() and not (tmp_path / "index.db").exists(), out


def test_a_storage_directory_that_cannot_be_made_is_one_clear_error(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("not a folder")
    rc, out = _run(_serve_cmd(tmp_path, 0, storage=tmp_path / "a-file" / "store"), tmp_path)
    assert rc == 1, out
    assert f"cannot start: Not a directory: {tmp_path / 'a-file' / 'store'}; not started" in out, out
    assert "Traceback" not in out, out


def test_a_status_port_in_use_says_how_to_choose_another(start_server) -> None:  # type: ignore[no-untyped-def]
    """The status page is not needed to receive: the server runs without it,
    and its one ERROR line names the option that moves or turns it off."""
    from test_scu import fastscp

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        srv = start_server("--status-port", str(port))
        log = srv.log_once_it_says("fastscp listening on")
    assert (f"ERROR   fastscp.monitor: status endpoint not started: cannot listen on 127.0.0.1:{port}: "
            "Address already in use; receiving without a status page "
            "(another port: --status-port N or status.port; none: --status-port 0)") in log, log
    assert fastscp("echo", "127.0.0.1", str(srv.port), "--aec", srv.ae_title).returncode == 0

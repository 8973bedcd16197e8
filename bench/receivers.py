"""The receivers the flood benchmark compares, as command-line configuration.

Each Receiver knows how to start one instance on a loopback port with a
fresh storage directory, when it is ready, and how many instances it holds.
Every receiver gets max PDU 131072 and TCP_NODELAY=1 in its environment
(only dcmtk-based programs, storescp and Orthanc, read that variable).

dcmtk's tools are looked up by absolute path and checked by their --version
banner: pynetdicom installs console scripts with the same names (storescp,
storescu, echoscu) that shadow dcmtk's on a venv's PATH.
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
from ports import free_port  # bench/ is on the path: the scripts run from it

MAX_PDU = 131072
AE_TITLE = "BENCH"
SKIP_SUFFIXES = (".db", ".duckdb", ".wal", ".tmp", ".part", ".log", ".json")


def wait_for_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 120.0) -> None:
    """Until ``port`` accepts a connection; RuntimeError if ``proc`` exits
    first or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args} exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{proc.args} did not listen on {port}")


def dcmtk_tool(name: str, bin_dir: str | None = None) -> str:
    """Absolute path of a dcmtk program, refusing pynetdicom's look-alikes."""
    candidates = [os.path.join(bin_dir, name)] if bin_dir else []
    candidates += [f"/usr/bin/{name}", f"/usr/local/bin/{name}"]
    found = shutil.which(name)
    if found:
        candidates.append(found)
    for path in candidates:
        if os.path.isfile(path) and os.access(path, os.X_OK):
            out = subprocess.run([path, "--version"], capture_output=True, text=True)
            if "$dcmtk:" in out.stdout + out.stderr:
                return path
    raise FileNotFoundError(f"dcmtk {name} not found (apt-get install dcmtk)")


def orthanc_exe() -> str:
    """Absolute path of the Orthanc server (Debian installs it in /usr/sbin,
    often not on a user's PATH)."""
    for path in (shutil.which("Orthanc"), "/usr/sbin/Orthanc"):
        if path and os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    raise FileNotFoundError("Orthanc not found (apt-get install orthanc)")


def sink_exe() -> str:
    """bench/sink.c compiled (``cc -O2``) into bench/out/, again whenever the
    source is newer than the program."""
    src = Path(__file__).resolve().with_name("sink.c")
    exe = src.parent / "out" / "sink"
    if not exe.exists() or exe.stat().st_mtime < src.stat().st_mtime:
        exe.parent.mkdir(parents=True, exist_ok=True)
        cc = os.environ.get("CC", "cc")
        subprocess.run([cc, "-O2", "-o", str(exe), str(src)], check=True)
    return str(exe)


@dataclass
class Instance:
    """One running receiver."""

    proc: subprocess.Popen[bytes]
    port: int
    storage: Path
    workdir: Path
    http_port: int | None = None
    log: Path | None = None


@dataclass
class Receiver:
    """How to run one kind of receiver."""

    name: str
    argv: Callable[[int, Path, Path], list[str]]   # (port, storage, workdir) -> argv
    count: Callable[[Instance], int] | None = None  # None: count Part-10 files on disk
    prepare: Callable[[Instance], None] | None = None
    extra_ready: Callable[[Instance], bool] | None = None
    notes: str = ""
    http: bool = False
    env: dict[str, str] = field(default_factory=dict)

    def start(self, workdir: Path) -> Instance:
        if workdir.exists():
            shutil.rmtree(workdir)
        storage = workdir / "storage"
        storage.mkdir(parents=True)
        port = free_port()
        http_port = free_port() if self.http else None
        inst = Instance(None, port, storage, workdir, http_port, workdir / "receiver.log")  # type: ignore[arg-type]
        if self.prepare:
            self.prepare(inst)
        env = {**os.environ, "TCP_NODELAY": "1", **self.env}
        with open(inst.log, "wb") as log:  # type: ignore[arg-type]
            inst.proc = subprocess.Popen(self.argv(port, storage, workdir), cwd=workdir,
                                         stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, env=env,
                                         start_new_session=True)
        return inst

    def wait_ready(self, inst: Instance, echoscu: str, timeout: float = 60.0) -> None:
        """Port accepts, a C-ECHO succeeds, and any extra check (HTTP) passes."""
        deadline = time.monotonic() + timeout
        while True:
            if inst.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {inst.proc.returncode}; "
                                   f"log: {inst.log}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.name} not ready after {timeout} s; log: {inst.log}")
            try:
                with socket.create_connection(("127.0.0.1", inst.port), timeout=1):
                    pass
            except OSError:
                time.sleep(0.05)
                continue
            echo = subprocess.run([echoscu, "-aec", AE_TITLE, "-aet", "FLOOD", "-to", "5",
                                   "127.0.0.1", str(inst.port)], capture_output=True)
            if echo.returncode == 0 and (self.extra_ready is None or self.extra_ready(inst)):
                return
            time.sleep(0.1)

    def stored(self, inst: Instance) -> int:
        if self.count is not None:
            return self.count(inst)
        return len(stored_sop_instance_uids(inst.storage))

    def stop(self, inst: Instance) -> None:
        if inst.proc.poll() is None:
            try:
                os.killpg(inst.proc.pid, 15)
            except ProcessLookupError:
                pass
            try:
                inst.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(inst.proc.pid, 9)
                inst.proc.wait()


def part10_files(storage: Path) -> list[Path]:
    """Part-10 files under storage, skipping hidden names (.incoming) and side files."""
    out: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(storage):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for name in filenames:
            if name.startswith(".") or name.endswith(SKIP_SUFFIXES):
                continue
            path = Path(dirpath, name)
            try:
                with open(path, "rb") as fh:
                    head = fh.read(132)
            except OSError:
                continue
            if head[128:132] == b"DICM":
                out.append(path)
    return out


def stored_sop_instance_uids(storage: Path) -> set[str]:
    """SOP Instance UIDs of the Part-10 files stored (headers only are read)."""
    uids: set[str] = set()
    for path in part10_files(storage):
        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SOPInstanceUID"])
        uids.add(str(ds.SOPInstanceUID))
    return uids


# --- Orthanc ------------------------------------------------------------------

def _orthanc_prepare(inst: Instance) -> None:
    config = {
        "Name": "fastscp-bench",
        "StorageDirectory": str(inst.storage),
        "IndexDirectory": str(inst.workdir / "index"),
        "StorageCompression": False,
        "DicomAet": AE_TITLE,
        "DicomPort": inst.port,
        "DicomThreadsCount": 4,
        "MaximumPduLength": MAX_PDU,
        "DicomCheckCalledAet": False,
        "DicomAlwaysAllowStore": True,
        "DicomAlwaysAllowEcho": True,
        "HttpServerEnabled": True,
        "HttpPort": inst.http_port,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "Plugins": [],
        "SaveJobs": False,
    }
    (inst.workdir / "index").mkdir()
    (inst.workdir / "orthanc.json").write_text(json.dumps(config, indent=2))


def _orthanc_get(inst: Instance, path: str) -> dict[str, object]:
    with urllib.request.urlopen(f"http://127.0.0.1:{inst.http_port}{path}", timeout=10) as r:
        return json.loads(r.read())  # type: ignore[no-any-return]


def _orthanc_ready(inst: Instance) -> bool:
    try:
        _orthanc_get(inst, "/system")
        return True
    except OSError:
        return False


def _orthanc_count(inst: Instance) -> int:
    return int(_orthanc_get(inst, "/statistics")["CountInstances"])  # type: ignore[call-overload]


# --- the table ----------------------------------------------------------------

def build_receivers(fastscp_cmd: str | None = None, dcmtk_bin: str | None = None) -> dict[str, Receiver]:
    def dcmtk_storescp(fork: bool) -> Callable[[int, Path, Path], list[str]]:
        def argv(port: int, storage: Path, workdir: Path) -> list[str]:
            cmd = [dcmtk_tool("storescp", dcmtk_bin), "-aet", AE_TITLE, "--max-pdu", str(MAX_PDU),
                   "-od", str(storage)]
            return cmd + (["--fork"] if fork else []) + [str(port)]
        return argv

    def fastscp_fsync_argv(port: int, storage: Path, workdir: Path) -> list[str]:
        return [*fastscp_argv(port, storage, workdir), "--durability", "fsync"]

    def fastscp_nopoll_argv(port: int, storage: Path, workdir: Path) -> list[str]:
        return [*fastscp_argv(port, storage, workdir), "--busy-poll-us", "0"]

    def fastscp_argv(port: int, storage: Path, workdir: Path) -> list[str]:
        exe = fastscp_cmd or shutil.which("fastscp") or str(Path(sys.executable).with_name("fastscp"))
        # indexing on (a DuckDB file in the work dir), default durability; the
        # status endpoint off so back-to-back runs never share its port
        return [*exe.split(), "serve", str(port), AE_TITLE, "--storage-dir", str(storage),
                "--index-db", str(workdir / "fastscp-index.db"), "--status-port", "0",
                "--max-pdu", str(MAX_PDU)]

    def pynetdicom_argv(port: int, storage: Path, workdir: Path) -> list[str]:
        return [sys.executable, "-m", "pynetdicom", "storescp", str(port), "-aet", AE_TITLE,
                "--max-pdu", str(MAX_PDU), "-od", str(storage), "-q"]

    def sink_argv(port: int, storage: Path, workdir: Path) -> list[str]:
        return [sink_exe(), str(port), str(storage)]

    def pyfloor_argv(port: int, storage: Path, workdir: Path) -> list[str]:
        return [sys.executable, str(Path(__file__).with_name("pyfloor.py")), str(port), str(storage),
                "--busy-poll-us", "1000"]

    def orthanc_argv(port: int, storage: Path, workdir: Path) -> list[str]:
        return [orthanc_exe(), str(workdir / "orthanc.json")]

    return {
        "fastscp": Receiver("fastscp", fastscp_argv, notes="indexing on, default durability"),
        "fastscp-fsync": Receiver("fastscp-fsync", fastscp_fsync_argv,
                                  notes="indexing on, storage.durability fsync (group commit)"),
        "fastscp-nopoll": Receiver("fastscp-nopoll", fastscp_nopoll_argv,
                                   notes="indexing on, default durability, busy polling off (server.busy_poll_us 0)"),
        "storescp": Receiver("storescp", dcmtk_storescp(False), notes="dcmtk, one process"),
        "storescp-fork": Receiver("storescp-fork", dcmtk_storescp(True),
                                  notes="dcmtk, one process per association"),
        "pynetdicom": Receiver("pynetdicom", pynetdicom_argv, notes="python -m pynetdicom storescp"),
        "sink": Receiver("sink", sink_argv,
                         notes="floor: bench/sink.c writes the file, renames it, answers; nothing else"),
        "pyfloor": Receiver("pyfloor", pyfloor_argv,
                            notes="floor for Python per instance: bench/pyfloor.py, the sink's work as Python on uvloop"
                                  " over fastscp's Cython framer, a 1 ms busy poll after each answer that never rests"),
        "orthanc": Receiver("orthanc", orthanc_argv, count=_orthanc_count, prepare=_orthanc_prepare,
                            extra_ready=_orthanc_ready, http=True,
                            notes="SQLite index, DicomThreadsCount 4"),
    }

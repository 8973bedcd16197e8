"""What a hook gets and what it leaves: values bounded in argv and the
environment, an explicit environment instead of the server's, and no process
it started outliving it (the receiver is a child subreaper)."""

from __future__ import annotations

import json
import os
import signal
import sys
import textwrap
import time
from pathlib import Path

import pytest
from conftest import make_image
from test_hooks import storescu, wait_for

from fastscp.pipeline.hooks import (
    BASE_ENV,
    INSTANCE_PLACEHOLDERS,
    MAX_VALUE_BYTES,
    RUN_MARK,
    HookCommand,
    bound_values,
    run_command,
)

HUGE_NAME = "Doe^" + "ä" * 70_000  # 140 KB of UTF-8

ENV_HOOK = """#!{python}
import json, os, sys
with open({out!r}, "a") as fh:
    fh.write(json.dumps({{"argv": sys.argv[1:], "env": dict(os.environ)}}) + "\\n")
"""


def env_hook(tmp_path: Path) -> tuple[Path, Path]:
    out = tmp_path / "hook.jsonl"
    script = tmp_path / "hook.py"
    script.write_text(ENV_HOOK.format(python=sys.executable, out=str(out)))
    script.chmod(0o755)
    return script, out


def alive(pid: int) -> bool:
    """Running, or a zombie nobody reaped (both are leftovers)."""
    return Path(f"/proc/{pid}").exists()


def test_values_are_cut_at_a_character_boundary() -> None:
    values, cut = bound_values({"patient_name": HUGE_NAME, "path": "/a/" + "b" * 4000, "sop_uid": "1.2.3"})
    assert cut == [("patient_name", len(HUGE_NAME.encode()))]
    assert len(values["patient_name"].encode()) <= MAX_VALUE_BYTES
    assert HUGE_NAME.startswith(values["patient_name"]) and len(values["patient_name"].encode()) >= MAX_VALUE_BYTES - 1
    odd, _ = bound_values({"x": "a" + "ä" * 5000})  # a 2-byte character across the limit is left out whole
    assert odd["x"] == "a" + "ä" * ((MAX_VALUE_BYTES - 1) // 2)
    assert values["path"] == "/a/" + "b" * 4000 and values["sop_uid"] == "1.2.3"


def test_a_huge_value_reaches_the_hook_bounded(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    show = "import os, sys; print([len(a.encode()) for a in sys.argv[1:]], len(os.environ['FASTSCP_PATIENT_NAME']))"
    cmd = HookCommand([sys.executable, "-c", show, "{patient_name}", "{patient_name}"], INSTANCE_PLACEHOLDERS,
                      "hooks.on_instance")
    values = {"patient_name": HUGE_NAME, "sop_uid": "1.2.3"}
    # unbounded, the kernel refuses the exec (this is what every hook met)
    raw = run_command(cmd.expand(values), cmd.environment(values, "instance"), timeout=10)
    assert raw.returncode is None and "Argument list too long" in raw.error
    with caplog.at_level("WARNING", logger="fastscp.hooks"):
        argv, env = cmd.prepare(values, "instance", "instance 1.2.3")
    res = run_command(argv, env, timeout=10)
    assert res.ok, res.error
    assert res.output.strip() == f"[{MAX_VALUE_BYTES}, {MAX_VALUE_BYTES}] {(MAX_VALUE_BYTES - 4) // 2 + 4}"
    assert len(env["FASTSCP_PATIENT_NAME"].encode()) <= MAX_VALUE_BYTES
    warnings = [r.getMessage() for r in caplog.records]
    assert warnings == [(f"hooks.on_instance for instance 1.2.3: patient_name ({len(HUGE_NAME.encode())} bytes) "
                        f"cut to {MAX_VALUE_BYTES} bytes")]


def test_hook_environment_is_explicit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s3cr3t")
    monkeypatch.setenv("FASTSCP_STATUS_TOKEN", "tok")
    monkeypatch.setenv("WANTED", "yes")
    monkeypatch.setenv("LANG", "C.UTF-8")
    cmd = HookCommand(["/usr/bin/env"], INSTANCE_PLACEHOLDERS, pass_env=["WANTED", "NOT_SET_ANYWHERE"])
    argv, env = cmd.prepare({"sop_uid": "1.2.3"}, "instance", "x")
    res = run_command(argv, env, timeout=10)
    seen = dict(line.split("=", 1) for line in res.output.splitlines())
    assert seen.pop(RUN_MARK)
    expected = {name: os.environ[name] for name in BASE_ENV if name in os.environ}
    assert seen == {**expected, "WANTED": "yes", "FASTSCP_HOOK": "instance", "FASTSCP_SOP_UID": "1.2.3"}


SETSID_GRANDCHILD = """
import os, sys, time
pidfile, mode = sys.argv[1], sys.argv[2]
if os.fork() == 0:              # child
    if mode == "daemon":
        if os.fork():           # the child exits at once: the grandchild is an orphan
            os._exit(0)
    os.setsid()                 # leaves the hook's session and process group
    if mode == "clean-env":
        os.execve(sys.executable, [sys.executable, "-c", "import time; time.sleep(60)"], {{}})
    time.sleep(60)
    os._exit(0)
time.sleep(0.3)
with open(pidfile + ".tmp", "w") as fh:
    fh.write(" ".join(str(p) for p in _descendants(os.getpid())))
os.rename(pidfile + ".tmp", pidfile)
if mode == "daemon":
    sys.exit(0)                 # the hook itself ends well, leaving its daemon behind
time.sleep(60)
"""

DESCENDANTS = """
def _descendants(root):
    import os
    kids = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                stat = open(f"/proc/{name}/stat", "rb").read()
            except OSError:
                continue
            ppid = int(stat[stat.rfind(b")") + 2:].split()[1])
            kids.setdefault(ppid, []).append(int(name))
    out, todo = [], [root]
    while todo:
        for k in kids.get(todo.pop(), []):
            out.append(k)
            todo.append(k)
    me = os.getpid()
    # a daemon re-parented to the receiver is no longer below us: find it by the run mark
    for name in os.listdir("/proc"):
        if name.isdigit() and int(name) not in out:
            try:
                env = open(f"/proc/{name}/environ", "rb").read()
            except OSError:
                continue
            if os.environ["FASTSCP_HOOK_RUN"].encode() in env and int(name) != me:
                out.append(int(name))
    return out
"""


@pytest.mark.parametrize("mode", ["setsid", "clean-env", "daemon"])
def test_no_process_a_hook_started_outlives_it(tmp_path: Path, mode: str) -> None:
    pidfile = tmp_path / "pids"
    script = DESCENDANTS + textwrap.dedent(SETSID_GRANDCHILD.format())
    t0 = time.monotonic()
    res = run_command([sys.executable, "-c", script, str(pidfile), mode], {"PATH": os.defpath}, timeout=3.0)
    assert time.monotonic() - t0 < 9
    assert res.timed_out == (mode != "daemon"), res.output
    pids = [int(p) for p in pidfile.read_text().split()]
    left = [p for p in pids if alive(p)]
    for p in left:  # a failure must not leave them running
        os.kill(p, signal.SIGKILL)
    assert pids, "the hook saw no descendant"
    # killed and reaped by the time run_command returns: no process, no zombie
    assert left == []


def test_a_huge_patient_name_over_the_network(start_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    src = tmp_path / "big.dcm"
    make_image(src, 1, study=4, patient_name=HUGE_NAME)
    hook, out = env_hook(tmp_path)
    os.environ["FASTSCP_TEST_SECRET"] = "must-not-leak"
    try:
        srv = start_server("--exec-on-reception", f"{hook} --name={{patient_name}} {{path}}")
    finally:
        del os.environ["FASTSCP_TEST_SECRET"]
    res = storescu(srv, [src])
    assert res.returncode == 0, res.stdout + res.stderr
    recs = wait_for(lambda: out.exists() and [json.loads(x) for x in out.read_text().splitlines()])
    assert recs, srv.log_text()[-3000:]
    argv, env = recs[0]["argv"], recs[0]["env"]
    assert argv[0].startswith("--name=Doe^ää") and len(argv[0].encode()) <= len("--name=") + MAX_VALUE_BYTES
    assert Path(argv[1]).is_file()
    assert env["FASTSCP_PATIENT_NAME"] == argv[0][len("--name="):]
    assert "FASTSCP_TEST_SECRET" not in env and "PYTHONPATH" not in env
    assert "patient_name (140004 bytes) cut to 4096 bytes" in srv.log_once_it_says("cut to 4096 bytes")


def test_pass_env_names_are_checked() -> None:
    from fastscp.config import ConfigError, load_config

    assert load_config(None, {"hooks.pass_env": "HTTP_PROXY, NO_PROXY"}).hooks.pass_env == ("HTTP_PROXY", "NO_PROXY")
    with pytest.raises(ConfigError, match="not an environment variable name"):
        load_config(None, {"hooks.pass_env": ["PATH=/tmp"]})

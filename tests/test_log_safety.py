"""Peer-supplied strings in the text log and on the terminal view: a value
with a newline, a carriage return, an ESC sequence or an invisible Unicode
format character is written escaped, so it can neither forge a log line nor
drive the terminal. The JSON forms escape by JSON itself."""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import re
import socket
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import rawclient as rc
from conftest import dcmtk, make_image
from rich.console import Console
from test_catalog_support import make_info
from events_support import assoc_info
from test_monitor_unit import monitor, state

from fastscp.events import AssociationOpened, AssociationRejected, InstanceStored
from fastscp.monitor.logsetup import configure_logging, escape_nonprintable
from fastscp.monitor.terminal import render

EVIL_AE = "EVIL\n2099 FAKE\x1b["  # 16 characters: a whole AE title
EVIL_CALLED = "X\r\nFAKE\x1b]0;"
EVIL_NAME = "DOE^JOHN\n2099 FAKE\x1b[2J\u202egpj.exe"
# A text log line starts with its time stamp; only a traceback's lines may
# continue a record, and they start with two spaces.
RECORD_START = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} |  )")


def assert_no_forged_line(text: str) -> None:
    assert "\x1b" not in text and "\r" not in text and "\u202e" not in text
    for line in text.splitlines():
        assert RECORD_START.match(line), f"a line that no record started: {line!r}"


def test_escape_nonprintable() -> None:
    assert escape_nonprintable("Müller^Jörg 1.2.3 [x] a\\b") == "Müller^Jörg 1.2.3 [x] a\\b"
    assert escape_nonprintable(EVIL_AE) == "EVIL\\n2099 FAKE\\x1b["
    assert escape_nonprintable("a\r\t\x00\x85\u2028\u202e\U000e0001") == \
        "a\\r\\t\\x00\\x85\\u2028\\u202e\\U000e0001"


def test_text_console_escapes_messages_and_tracebacks(tmp_path: Path) -> None:
    console = io.StringIO()
    path = tmp_path / "log.jsonl"
    handle = configure_logging("debug", "text", str(path), stream=console)
    try:
        logging.getLogger("fastscp.connections").warning("assoc %s rejected: calling %s", "x-1", EVIL_AE)
        logging.getLogger("fastscp.scp").info(f"an f-string with {EVIL_NAME}")  # not only the arguments
        try:
            raise ValueError(f"bad value {EVIL_AE}")
        except ValueError:
            logging.getLogger("fastscp.net").exception("internal error on %s", EVIL_CALLED)
        warnings.warn(f"a library quotes {EVIL_AE}", UserWarning, stacklevel=1)
    finally:
        handle.stop()
    text = console.getvalue()
    assert_no_forged_line(text)
    assert "calling EVIL\\n2099 FAKE\\x1b[" in text
    assert "an f-string with DOE^JOHN\\n2099 FAKE\\x1b[2J\\u202egpj.exe" in text
    assert "internal error on X\\r\\nFAKE\\x1b]0;" in text
    assert "py.warnings: " in text and "a library quotes EVIL\\n2099 FAKE\\x1b[" in text
    assert "\n  Traceback (most recent call last):\n" in text  # the traceback keeps its lines
    # a line break inside the exception's text is one more continuation line
    assert "\n  ValueError: bad value EVIL\n  2099 FAKE\\x1b[\n" in text
    # the JSON file keeps the value itself, escaped by JSON
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert records[0]["message"] == f"assoc x-1 rejected: calling {EVIL_AE}"
    assert records[2]["message"] == f"internal error on {EVIL_CALLED}"
    assert f"ValueError: bad value {EVIL_AE}" in records[2]["exception"]
    assert "\x1b" not in path.read_text()


def test_association_log_lines_from_a_hostile_peer(start_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    src = tmp_path / "evil.dcm"
    make_image(src, 1, study=3, patient_name=EVIL_NAME)
    # the hook prints the patient name: its output is quoted in the log
    srv = start_server("--exec-on-reception", "printf %s {patient_name}", "--log-level", "debug",
                       "--log-file", str(tmp_path / "log.jsonl"))
    # accepted, with a hostile calling AE
    sock = rc.connect_and_associate(srv.port, calling=EVIL_AE)
    # a C-STORE whose SOP Instance UID is hostile: refused, and nothing raw in the log
    sock.sendall(rc.pdata(1, rc.c_store_rq(1, rc.CT, "1.2\n2099 FAKE UID\x1b[31m"), command=True, last=True))
    sock.sendall(rc.pdata(1, b"\x08\x00\x16\x00\x02\x00\x00\x001\x00", command=False, last=True))
    pdu_type, answer = rc.read_pdu(sock)
    assert pdu_type == 4 and b"invalid Affected SOP Instance UID" in answer
    sock.sendall(rc.RELEASE_RQ)
    assert rc.read_pdu(sock)[0] == 6
    sock.close()
    # rejected, hostile called and calling AE
    with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as sock:
        sock.sendall(rc.associate_rq(EVIL_CALLED, EVIL_AE, [(1, rc.CT, [rc.EXPLICIT_LE])]))
        assert rc.read_pdu(sock)[0] == 3
    res = subprocess.run([dcmtk("storescu"), "-aet", "SENDER", "-aec", srv.ae_title, "127.0.0.1",
                          str(srv.port), str(src)], check=False, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    text = srv.log_once_it_says("called X\\r\\nFAKE", "output: DOE^JOHN")
    assert "calling EVIL\\n2099 FAKE\\x1b[ called FASTSCP" in text
    assert "called X\\r\\nFAKE\\x1b]0;" in text
    assert "output: DOE^JOHN\\n2099 FAKE\\x1b[2J\\u202egpj.exe" in text
    assert_no_forged_line(text)
    assert "\x1b" not in (tmp_path / "log.jsonl").read_text()


def test_terminal_view_shows_hostile_values_as_plain_text(tmp_path: Path) -> None:
    st = state(tmp_path)
    mon = monitor(st)
    a = assoc_info(1, EVIL_AE, called_ae=EVIL_CALLED, peer="127.0.0.1:4\x1b[1m")
    st.active += 1
    mon.association_opened(AssociationOpened(a))
    info = dataclasses.replace(make_info(1, calling_ae=EVIL_AE), patient_id="[bold red]PID\x07",
                               study_description=EVIL_NAME)
    mon.instance_stored(InstanceStored(a, info))
    mon.association_rejected(AssociationRejected(assoc_info(2, "[link=http://x]ae[/link]"),
                                                 "called AE 'X\x1b[2J' is not ours"))
    doc: dict[str, Any] = mon.snapshot()
    out = io.StringIO()
    Console(file=out, width=400, force_terminal=False, color_system=None).print(render(doc))
    shown = out.getvalue()
    assert "\x1b" not in shown and "\x07" not in shown and "\u202e" not in shown
    assert "EVIL\\n2099 FAKE\\x1b[" in shown
    assert "[bold red]PID\\x07" in shown  # markup shown, not applied
    assert "[link=http://x]ae[/link]" in shown
    assert "DOE^JOHN\\n2099" in shown
    assert not any(line.lstrip(" │┃|").startswith("2099") for line in shown.splitlines())


def test_client_commands_log_escaped_too() -> None:
    """fastscp send/echo log through the same formatter (a remote SCP's
    answer is a peer string as well)."""
    code = ("import logging, sys; from fastscp.cli import _setup_logging; _setup_logging('info'); "
            "logging.getLogger('fastscp.scu').warning('remote said %s', sys.argv[1])")
    res = subprocess.run([sys.executable, "-c", code, EVIL_AE], check=True, capture_output=True, text=True, timeout=60)
    assert_no_forged_line(res.stderr)
    assert "remote said EVIL\\n2099 FAKE\\x1b[" in res.stderr

"""A receiver of ordinary images never imports pydicom (and with it numpy
and the pixel plugins: about 30 MB of PSS on this machine, issue 23), nor
prometheus-client, imported by the first /metrics request (2.5 MB): the
default configuration, start-up with an index, and C-STOREs of images in
ISO_IR 100 and UTF-8 over plain TCP all run on the project's own Cython
header reader. Nor what only other commands or other cases need: the
other commands' modules (``fastscp serve`` builds its own parser alone,
0.55 MB), rich (``fastscp status``, 1.7 MB), yaml (a configuration file; flags alone here), urllib.request (the status
client), multiprocessing (a large reconcile) and difflib (a bad value's
suggestion). Checked in a fresh interpreter, since pytest itself has
pydicom loaded."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pydicom
import pytest
from conftest import dataset_bytes, make_image

_CHILD = r"""
import asyncio, socket, sys, threading
sys.path.insert(0, sys.argv[1])
from rawclient import RELEASE_RQ, associate_rq, c_store_rq, pdata, read_pdu
from fastscp._ext.framer import decode_command
from fastscp.app import App
from fastscp.config import load_config

CT = "1.2.840.10008.5.1.4.1.1.2"
OTHER_COMMANDS = ("fastscp.scu.commands", "fastscp.cli_catalog", "fastscp.cli_config", "fastscp.monitor.terminal",
                  "fastscp.pipeline.convert", "fastscp.pipeline.scansheet", "fastscp.pipeline.tags")
storage, items = sys.argv[2], sys.argv[3:]
# the command line's own path (cli.main's parser for these arguments), then serve's flags
from fastscp.cli import parser_for, serve_overrides
argv = ["serve", "0", "FASTSCP", "--storage-dir", storage, "--index-db", storage + ".db", "--status-port", "0"]
args = parser_for(argv).parse_args(argv)
overrides = serve_overrides(args)
app = App(load_config(None, overrides), None, overrides)
loop = asyncio.new_event_loop()
started = []
ready = threading.Event()
def run():
    asyncio.set_event_loop(loop)
    started.extend(loop.run_until_complete(app.start()))
    ready.set()
    loop.run_forever()
threading.Thread(target=run, daemon=True).start()
assert ready.wait(30)
port = int(started[0].rpartition(":")[2])
sock = socket.create_connection(("127.0.0.1", port))
sock.sendall(associate_rq("FASTSCP", "LEAN", [(1, CT, ["1.2.840.10008.1.2.1"])]))
assert read_pdu(sock)[0] == 2
for i, item in enumerate(items):
    path, uid = item.split("=")
    sock.sendall(pdata(1, c_store_rq(i + 1, CT, uid), True, True))
    sock.sendall(pdata(1, open(path, "rb").read(), False, True))
    kind, pdu = read_pdu(sock)
    assert kind == 4 and decode_command(pdu[12:])[0x00000900] == 0, pdu
sock.sendall(RELEASE_RQ)
read_pdu(sock)
heavy = sorted(m for m in ("pydicom", "pynetdicom", "numpy", "PIL", "prometheus_client", "rich", "yaml",
                           "urllib.request", "multiprocessing", "difflib", *OTHER_COMMANDS) if m in sys.modules)
print("HEAVY", heavy, "STORED", app.state.instances_total)
"""


def test_receiving_ordinary_images_loads_no_pydicom(tmp_path: Path) -> None:
    files = []
    for i, (charset, name) in enumerate((("ISO_IR 100", "Müller^Jörg"), ("ISO_IR 192", "山田^太郎"), ("", "PLAIN^NAME"))):
        path = tmp_path / f"{i}.dcm"
        make_image(path, i, 1, patient_name=name)
        if charset != "ISO_IR 192":
            ds = pydicom.dcmread(path)
            if charset:
                ds.SpecificCharacterSet = charset
            else:
                del ds.SpecificCharacterSet
            ds.save_as(path, enforce_file_format=True)
        raw = tmp_path / f"{i}.ds"
        raw.write_bytes(dataset_bytes(path))
        files.append(f"{raw}={pydicom.dcmread(path).SOPInstanceUID}")
    tests_dir = str(Path(__file__).parent)
    out = subprocess.run([sys.executable, "-c", _CHILD, tests_dir, str(tmp_path / "store"), *files],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "HEAVY [] STORED 3" in out.stdout, out.stdout + out.stderr[-2000:]


def test_own_charset_table_agrees_with_pydicom() -> None:
    """Each Specific Character Set the header reader maps without pydicom
    gets the codec pydicom's convert_encodings gives it."""
    from pydicom.charset import convert_encodings

    from fastscp.storage.header import _CODECS

    for term, codec in _CODECS.items():
        assert convert_encodings(term) == [codec], term


def test_serve_only_parser_reads_serve_as_the_whole_one(capsys: pytest.CaptureFixture[str]) -> None:
    """``fastscp serve`` gets a parser of its own command only (the other
    commands' modules stay unimported); it must read every serve command
    line as the whole parser does, errors included."""
    from fastscp.cli import build_parser, parser_for

    def commands(parser: argparse.ArgumentParser) -> list[str]:
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        return list(sub.choices)

    assert commands(parser_for(["serve"])) == commands(build_parser())
    for argv in (["serve"], ["serve", "104", "ME", "--storage-dir", "s", "--index-db", "", "--no-called-ae-check"],
                 ["serve", "--config", "c.yaml", "--status-port", "0", "--max-pdu", "65536", "--complete-on-release"]):
        assert vars(parser_for(argv).parse_args(argv)) == vars(build_parser().parse_args(argv)), argv
    for bad in (["serve", "notaport"], ["serve", "--no-such-flag"]):
        errors = []
        for parser in (parser_for(bad), build_parser()):
            with pytest.raises(SystemExit) as exc:
                parser.parse_args(bad)
            errors.append((exc.value.code, capsys.readouterr().err))
        assert errors[0] == errors[1] and errors[0][0] == 2, errors
    # every other command still gets the whole parser
    assert parser_for(["echo", "127.0.0.1", "104"]).parse_args(["echo", "127.0.0.1", "104"]).command == "echo"

"""Refused TLS handshakes are logged (one line each, rate-limited) and
counted in /metrics, against a running server, with dcmtk echoscu and the
openssl command line as the clients."""

from __future__ import annotations

import logging
import socket
import ssl
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
from conftest import Server, dcmtk, free_port, make_image, wait_for_port
from prometheus_client.parser import text_string_to_metric_families
from test_tls import make_ca, make_leaf

from fastscp.net.tls import REFUSAL_REASONS, HandshakeRefusals, refusal_reason

pytestmark = pytest.mark.interop


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("pki")
    make_ca(d, "ca")
    make_leaf(d, "srv", "ca", "serverAuth")
    make_leaf(d, "cli", "ca", "clientAuth")
    make_ca(d, "rogue-ca")
    make_leaf(d, "rogue", "rogue-ca", "clientAuth")
    return d


def tls_server(start_server, tmp_path: Path, pki: Path, artim: float = 30.0) -> tuple[Server, int, int]:  # type: ignore[no-untyped-def]
    tls_port, status_port = free_port(), free_port()
    cfg = tmp_path / "tls.yaml"
    cfg.write_text(f"""\
server:
  artim_timeout: {artim}
  tls:
    enabled: true
    port: {tls_port}
    certificate: {pki / 'srv.pem'}
    key: {pki / 'srv.key'}
    ca_bundle: {pki / 'ca.pem'}
    require_client_certificate: true
""")
    srv = start_server("--config", str(cfg), "--status-port", str(status_port))
    wait_for_port(tls_port, srv.proc)
    return srv, tls_port, status_port


def echo(srv: Server, port: int, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([dcmtk("echoscu"), "-aec", srv.ae_title, *args, "127.0.0.1", str(port)],
                          check=False, capture_output=True, text=True, timeout=60)


def refused_counts(status_port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{status_port}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    return {s.labels["reason"]: s.value for f in text_string_to_metric_families(text)
            if f.name == "fastscp_tls_handshakes_refused" for s in f.samples if s.name.endswith("_total")}


def refusal_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if "TLS handshake refused: peer 127.0.0.1:" in line]


def test_each_refused_handshake_is_logged_once_and_counted(start_server, tmp_path: Path, pki: Path) -> None:  # type: ignore[no-untyped-def]
    srv, port, status_port = tls_server(start_server, tmp_path, pki)
    trusted = ["+tls", str(pki / "cli.key"), str(pki / "cli.pem"), "+cf", str(pki / "ca.pem")]
    assert echo(srv, port, *trusted).returncode == 0
    assert refused_counts(status_port) == dict.fromkeys(REFUSAL_REASONS, 0.0)

    assert echo(srv, port, "+tla", "+cf", str(pki / "ca.pem")).returncode != 0  # anonymous
    assert echo(srv, port, *trusted, "+pa").returncode != 0  # dcmtk's retired AES profile (TLS 1.0 CBC suites)
    assert echo(srv, port).returncode != 0  # plain DICOM to the TLS port
    rogue = ["+tls", str(pki / "rogue.key"), str(pki / "rogue.pem"), "+cf", str(pki / "ca.pem")]
    assert echo(srv, port, *rogue).returncode != 0  # a certificate from a CA the server does not trust
    old = subprocess.run(["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-tls1_1",
                          "-cert", str(pki / "cli.pem"), "-key", str(pki / "cli.key")],
                         check=False, input="", capture_output=True, text=True, timeout=60)
    assert old.returncode != 0
    assert echo(srv, port, *trusted).returncode == 0  # and the port still serves

    text = srv.log_once_it_says("TLS version refused")
    lines = refusal_lines(text)
    assert len(lines) == 5, text[-3000:]
    assert "no client certificate (PEER_DID_NOT_RETURN_A_CERTIFICATE)" in lines[0]
    assert "no shared cipher suite (NO_SHARED_CIPHER)" in lines[1]
    assert "not TLS (plain DICOM on the TLS port?) (WRONG_VERSION_NUMBER)" in lines[2]
    assert "client certificate rejected (" in lines[3]
    assert "TLS version refused" in lines[4]
    assert all("WARNING fastscp.tls:" in line for line in lines)
    counts = refused_counts(status_port)
    assert counts == {**dict.fromkeys(REFUSAL_REASONS, 0.0), "no_client_certificate": 1.0, "no_shared_cipher": 1.0,
                      "not_tls": 1.0, "protocol_version": 1.0, "client_certificate_rejected": 1.0}
    # the two trusted ones, opened and closed: the last close is logged by the
    # server's log thread after its answer, so wait for it in the file
    deadline = time.monotonic() + 10
    while text.count("assoc ") < 4 and time.monotonic() < deadline:
        time.sleep(0.05)
        text = srv.log_text()
    assert text.count("assoc ") >= 4 and "TLS, calling ECHOSCU" in text


def test_a_burst_of_refusals_is_rate_limited_but_counted(start_server, tmp_path: Path, pki: Path) -> None:  # type: ignore[no-untyped-def]
    srv, port, status_port = tls_server(start_server, tmp_path, pki)
    for _ in range(25):  # plain DICOM bytes: refused at once
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(b"\x01\x00\x00\x00\x00\xcd\x00\x01\x00\x00" + b"FASTSCP         ")
            while sock.recv(4096):
                pass
    assert echo(srv, port, "+tls", str(pki / "cli.key"), str(pki / "cli.pem"), "+cf", str(pki / "ca.pem")).returncode == 0
    assert refused_counts(status_port)["not_tls"] == 25.0
    lines = refusal_lines(srv.log_once_it_says("TLS, calling ECHOSCU"))
    assert len(lines) == 10  # the burst; the other 15 are summed up when the minute ends


def test_the_tls_port_stores_what_it_accepts(start_server, tmp_path: Path, pki: Path) -> None:  # type: ignore[no-untyped-def]
    """The handshake moved out of create_server: every byte after it still
    reaches the association (storescu sends its A-ASSOCIATE-RQ right after
    the handshake), on each of several associations."""
    srv, port, status_port = tls_server(start_server, tmp_path, pki)
    files = []
    for i in range(12):
        f = tmp_path / f"{i}.dcm"
        make_image(f, i, study=1)
        files.append(str(f))
    trusted = ["+tls", str(pki / "cli.key"), str(pki / "cli.pem"), "+cf", str(pki / "ca.pem")]
    for chunk in (files[:4], files[4:8], files[8:]):
        res = subprocess.run([dcmtk("storescu"), "-aec", srv.ae_title, *trusted, "127.0.0.1", str(port), *chunk],
                             check=False, capture_output=True, text=True, timeout=60)
        assert res.returncode == 0, res.stdout + res.stderr
    assert len(srv.stored_files()) == 12
    assert sum(refused_counts(status_port).values()) == 0


def test_a_silent_client_is_refused_at_the_artim_timeout(start_server, tmp_path: Path, pki: Path) -> None:  # type: ignore[no-untyped-def]
    srv, port, status_port = tls_server(start_server, tmp_path, pki, artim=1.0)
    with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
        assert sock.recv(4096) == b""  # the server closes after 1 s without a ClientHello
    line = refusal_lines(srv.log_once_it_says("handshake timed out"))[0]
    assert "handshake timed out (no handshake within the time allowed)" in line
    assert refused_counts(status_port)["timeout"] == 1.0


class FakeTime:
    def __init__(self) -> None:
        self.now = 1000.0
        self.scheduled: list[tuple[float, object]] = []

    def __call__(self) -> float:
        return self.now

    def schedule(self, delay: float, fn: object) -> None:
        self.scheduled.append((delay, fn))


def test_rate_limit_window_and_summary(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeTime()
    refusals = HandshakeRefusals(schedule=clock.schedule, clock=clock, burst=3, window=60.0)
    err = ssl.SSLError(1, "[SSL: WRONG_VERSION_NUMBER] wrong version number")
    err.reason = "WRONG_VERSION_NUMBER"  # type: ignore[misc]
    with caplog.at_level(logging.WARNING, logger="fastscp.tls"):
        for i in range(5):
            clock.now += 1
            refusals.refused(f"10.0.0.{i}:1", err)
        refusals.refused("10.0.0.9:1", ConnectionResetError("reset"))
        assert [r.getMessage().split(": ")[1] for r in caplog.records] == ["peer 10.0.0.0:1", "peer 10.0.0.1:1",
                                                                           "peer 10.0.0.2:1"]
        assert len(clock.scheduled) == 1 and 50 < clock.scheduled[0][0] <= 60  # one summary, at the window's end
        clock.now += 60
        clock.scheduled[0][1]()  # type: ignore[operator]
        assert caplog.records[-1].getMessage() == (
            "TLS handshake refused 3 more time(s) in 60 s, not logged one by one: "
            "1 connection closed during the handshake, 2 not TLS (plain DICOM on the TLS port?)")
        refusals.refused("10.0.0.7:1", err)  # a new window logs again
        assert "peer 10.0.0.7:1" in caplog.records[-1].getMessage()
    assert refusals.counts["not_tls"] == 6 and refusals.counts["connection_closed"] == 1


@pytest.mark.parametrize("exc, label", [
    (ssl.SSLCertVerificationError(1, "certificate verify failed"), "client_certificate_rejected"),
    (TimeoutError("slow"), "timeout"),
    (ConnectionAbortedError("SSL handshake is taking longer than 30.0 seconds: aborting the connection"), "timeout"),
    (ConnectionResetError("reset"), "connection_closed"),
    (ValueError("odd"), "tls_error"),
])
def test_refusal_reasons(exc: BaseException, label: str) -> None:
    assert refusal_reason(exc)[0] == label

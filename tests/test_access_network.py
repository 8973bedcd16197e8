"""Access control, SOP-class filtering, reload and DICOM TLS over real
sockets, with dcmtk's echoscu/storescu as the peers."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import pytest
from pydicom.data import get_testdata_file

from conftest import Server, dcmtk, make_image

pytestmark = pytest.mark.interop


def echo(srv: Server, *args: str, port: int | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([dcmtk("echoscu"), "-aec", srv.ae_title, *args, "127.0.0.1", str(port or srv.port)],
                          capture_output=True, text=True, timeout=60)


def _config(tmp_path: Path, text: str) -> str:
    path = tmp_path / "fastscp.yaml"
    path.write_text(text)
    return str(path)


WHITELIST = """\
access:
  allowed_calling_aes:
    - ae_title: TRUSTED
      hosts: [127.0.0.0/8]
    - ae_title: FARAWAY
      hosts: [10.99.0.0/16]
"""


def test_calling_ae_whitelist_with_hosts(start_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    srv = start_server("--config", _config(tmp_path, WHITELIST))
    assert echo(srv, "-aet", "TRUSTED").returncode == 0
    unknown = echo(srv, "-aet", "STRANGER")
    assert unknown.returncode != 0 and "Calling AE Title Not Recognized" in unknown.stdout + unknown.stderr
    wrong_host = echo(srv, "-aet", "FARAWAY")  # allowed only from 10.99/16, we come from 127.0.0.1
    assert wrong_host.returncode != 0 and "Calling AE Title Not Recognized" in wrong_host.stdout + wrong_host.stderr
    log = srv.log_once_it_says("STRANGER", "127.0.0.1", "not allowed from 127.0.0.1")
    assert "STRANGER" in log and "127.0.0.1" in log and "not allowed from 127.0.0.1" in log


def test_sighup_reloads_the_whitelist_without_dropping_associations(start_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    import rawclient as rc

    config = tmp_path / "reload.yaml"
    config.write_text(WHITELIST)
    srv = start_server("--config", str(config))
    assert echo(srv, "-aet", "NEWCOMER").returncode != 0
    running = rc.connect_and_associate(srv.port, srv.ae_title, calling="TRUSTED")
    config.write_text(WHITELIST + "    - ae_title: NEWCOMER\n")
    srv.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    while "reloaded access lists" not in srv.log_text() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert echo(srv, "-aet", "NEWCOMER").returncode == 0
    # the association opened before the reload is still served
    running.sendall(rc.RELEASE_RQ)
    assert rc.read_pdu(running)[0] == 6
    running.close()


def test_accept_ct_refuses_mr_at_negotiation(start_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    srv = start_server("--accept", "CT")
    ct = make_image(tmp_path / "ct.dcm", 1, study=1, modality="CT")
    mr = make_image(tmp_path / "mr.dcm", 2, study=1, modality="MR")
    out = subprocess.run([dcmtk("storescu"), "-v", "-aec", srv.ae_title, "127.0.0.1", str(srv.port),
                          str(tmp_path / "ct.dcm"), str(tmp_path / "mr.dcm")],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=60).stdout
    assert "Received Store Response (Success)" in out  # the CT went through
    # storescu finds no accepted context for the MR image: it was refused at negotiation
    assert "no presentation context" in out.lower() or "no valid presentation context" in out.lower()
    stored = srv.stored_files()
    assert len(stored) == 1 and ct.SOPInstanceUID in stored[0].name and mr.SOPInstanceUID not in str(stored)


def test_max_instance_size_refuses_and_stores_nothing(start_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    srv = start_server("--config", _config(tmp_path, "storage:\n  max_instance_size: 20kB\n"))
    big = make_image(tmp_path / "big.dcm", 1, study=1, size=256)  # 128 KiB of pixels
    out = subprocess.run([dcmtk("storescu"), "-v", "-aec", srv.ae_title, "127.0.0.1", str(srv.port), str(tmp_path / "big.dcm")],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=60).stdout
    assert "Refused: OutOfResources" in out
    assert not srv.stored_files() and not srv.incoming()
    assert big.SOPInstanceUID and "larger than the" in srv.log_once_it_says("larger than the")


# ---- DICOM TLS ----------------------------------------------------------------------

def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A throw-away CA, a server certificate and a client certificate, made now."""
    d = tmp_path_factory.mktemp("pki")
    p = {k: str(d / k) for k in ("ca.key", "ca.pem", "srv.key", "srv.csr", "srv.pem", "cli.key", "cli.csr", "cli.pem", "other.key", "other.pem")}
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", p["ca.key"], "-out", p["ca.pem"], "-days", "2", "-subj", "/CN=fastscp test CA")
    for who in ("srv", "cli"):
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", p[f"{who}.key"], "-out", p[f"{who}.csr"], "-subj", f"/CN={who}")
        _openssl("x509", "-req", "-in", p[f"{who}.csr"], "-CA", p["ca.pem"], "-CAkey", p["ca.key"], "-CAcreateserial",
                 "-out", p[f"{who}.pem"], "-days", "2")
    # a client certificate nobody trusts (self-signed)
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", p["other.key"], "-out", p["other.pem"], "-days", "2", "-subj", "/CN=other")
    return p


def _tls_server(start_server, tmp_path: Path, pki: dict[str, str], require_client: bool):  # type: ignore[no-untyped-def]
    from conftest import free_port

    tls_port = free_port()
    cfg = _config(tmp_path, f"""\
server:
  tls:
    enabled: true
    port: {tls_port}
    certificate: {pki['srv.pem']}
    key: {pki['srv.key']}
    ca_bundle: {pki['ca.pem']}
    require_client_certificate: {'true' if require_client else 'false'}
""")
    srv = start_server("--config", cfg)
    from conftest import wait_for_port

    wait_for_port(tls_port, srv.proc)
    return srv, tls_port


def test_dcmtk_tls_clients(start_server, tmp_path: Path, pki: dict[str, str]) -> None:  # type: ignore[no-untyped-def]
    srv, tls_port = _tls_server(start_server, tmp_path, pki, require_client=True)
    trusted = ["+tls", pki["cli.key"], pki["cli.pem"], "+cf", pki["ca.pem"]]
    assert echo(srv, *trusted, port=tls_port).returncode == 0
    stored = subprocess.run([dcmtk("storescu"), "-aec", srv.ae_title, *trusted, "127.0.0.1", str(tls_port),
                             get_testdata_file("CT_small.dcm")], capture_output=True, text=True, timeout=60)
    assert stored.returncode == 0, stored.stdout + stored.stderr
    assert len(srv.stored_files()) == 1
    # a client certificate the server does not trust is refused
    untrusted = echo(srv, "+tls", pki["other.key"], pki["other.pem"], "+cf", pki["ca.pem"], port=tls_port)
    assert untrusted.returncode != 0
    # a plain (non-TLS) client on the TLS port is refused cleanly, and the server goes on
    plain = echo(srv, port=tls_port)
    assert plain.returncode != 0
    assert echo(srv).returncode == 0  # the plain port still serves
    assert echo(srv, *trusted, port=tls_port).returncode == 0
    assert "TLS" in srv.log_once_it_says("TLS")


def test_tls_without_client_certificate_when_not_required(start_server, tmp_path: Path, pki: dict[str, str]) -> None:  # type: ignore[no-untyped-def]
    srv, tls_port = _tls_server(start_server, tmp_path, pki, require_client=False)
    assert echo(srv, "+tla", "+cf", pki["ca.pem"], port=tls_port).returncode == 0

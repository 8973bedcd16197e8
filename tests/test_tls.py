"""TLS contexts: real handshakes over loopback with certificates made at test time.

Certificates come from the openssl command line in a temporary directory; no
key is ever committed. The dcmtk echoscu/storescu +tls interop tests need the
server and live with it.
"""

from __future__ import annotations

import argparse
import shutil
import socket
import ssl
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from fastscp.cli_config import register
from fastscp.config import TlsConfig, load_config
from fastscp.net.tls import BCP195_TLS12_CIPHERS, client_ssl_context, server_ssl_context

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")

# The first bytes of an A-ASSOCIATE-RQ PDU (type 0x01), as a plain DICOM
# client would send them to the TLS port.
ASSOCIATE_RQ_START = bytes.fromhex("01 00 00 00 00 cd 00 01 00 00") + b"MY_PACS         "


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_ca(d: Path, name: str) -> None:
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.pem",
            "-days", "2", "-subj", f"/CN={name}", "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=d)


def make_leaf(d: Path, name: str, ca: str, usage: str) -> None:
    (d / f"{name}.ext").write_text(
        f"subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage={usage}\n"
        "basicConstraints=CA:FALSE\n")
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr",
            "-subj", f"/CN={name}", cwd=d)
    openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key",
            "-CAcreateserial", "-out", f"{name}.pem", "-days", "2", "-extfile", f"{name}.ext", cwd=d)


@dataclass
class Pki:
    dir: Path

    def __getitem__(self, name: str) -> str:
        return str(self.dir / name)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    d = tmp_path_factory.mktemp("pki")
    make_ca(d, "test-ca")
    make_ca(d, "rogue-ca")
    make_leaf(d, "test-server", "test-ca", "serverAuth")
    make_leaf(d, "test-client", "test-ca", "clientAuth")
    make_leaf(d, "rogue-client", "rogue-ca", "clientAuth")
    return Pki(d)


@dataclass
class Outcome:
    server: Any = None  # (version, cipher name, peer cert) or the exception
    client: Any = None  # the echoed bytes or the exception


def exchange(server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext | None,
             payload: bytes = ASSOCIATE_RQ_START) -> Outcome:
    """One connection: the server does the handshake and echoes what it
    reads; the client (TLS with client_ctx, or plain if None) sends payload."""
    outcome = Outcome()
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def serve() -> None:
        conn, _ = listener.accept()
        conn.settimeout(5)
        try:
            with server_ctx.wrap_socket(conn, server_side=True) as tls:
                data = tls.recv(len(payload))
                tls.sendall(data)
                cipher = tls.cipher()
                outcome.server = (tls.version(), cipher[0] if cipher else None, tls.getpeercert())
        except (ssl.SSLError, OSError) as exc:
            outcome.server = exc
        finally:
            conn.close()

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        try:
            if client_ctx is None:
                sock.sendall(payload)
                outcome.client = sock.recv(100)
            else:
                with client_ctx.wrap_socket(sock, server_hostname="localhost") as tls:
                    tls.sendall(payload)
                    outcome.client = tls.recv(len(payload))
        except (ssl.SSLError, OSError) as exc:
            outcome.client = exc
        finally:
            sock.close()
    finally:
        thread.join(10)
        listener.close()
    assert not thread.is_alive()
    return outcome


def server_cfg(pki: Pki, **kw: Any) -> TlsConfig:
    return TlsConfig(enabled=True, certificate=pki["test-server.pem"], key=pki["test-server.key"], **kw)


def permissive_server(pki: Pki) -> ssl.SSLContext:
    """A server without the profile, to show a refusal is ours, not OpenSSL's."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1
    ctx.set_ciphers("ALL:@SECLEVEL=0")
    ctx.load_cert_chain(pki["test-server.pem"], pki["test-server.key"])
    return ctx


def legacy_client(max_version: ssl.TLSVersion, ciphers: str) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.minimum_version = ssl.TLSVersion.TLSv1
    ctx.maximum_version = max_version
    ctx.set_ciphers(ciphers)
    return ctx


def test_handshake_with_a_trusted_server(pki: Pki) -> None:
    out = exchange(server_ssl_context(server_cfg(pki)), client_ssl_context(pki["test-ca.pem"]))
    assert out.client == ASSOCIATE_RQ_START
    version, _cipher, peer = out.server
    assert version in ("TLSv1.2", "TLSv1.3")
    assert peer is None  # no client certificate asked for


def test_tls12_uses_a_bcp195_suite(pki: Pki) -> None:
    client = client_ssl_context(pki["test-ca.pem"])
    client.maximum_version = ssl.TLSVersion.TLSv1_2
    out = exchange(server_ssl_context(server_cfg(pki)), client)
    version, cipher, _ = out.server
    assert version == "TLSv1.2"
    assert cipher in BCP195_TLS12_CIPHERS.split(":")
    assert "GCM" in cipher or "CHACHA20" in cipher


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion:DeprecationWarning")
def test_tls11_is_refused(pki: Pki) -> None:
    old = legacy_client(ssl.TLSVersion.TLSv1_1, "ALL:@SECLEVEL=0")
    control = exchange(permissive_server(pki), old)
    assert control.server[0] == "TLSv1.1"  # the client can speak it ...
    out = exchange(server_ssl_context(server_cfg(pki)), old)
    assert isinstance(out.server, ssl.SSLError)  # ... but our server will not
    assert isinstance(out.client, (ssl.SSLError, OSError))


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion:DeprecationWarning")
def test_cbc_suites_are_refused(pki: Pki) -> None:
    cbc_only = legacy_client(ssl.TLSVersion.TLSv1_2, "ECDHE-RSA-AES128-SHA256:AES128-SHA256:@SECLEVEL=0")
    control = exchange(permissive_server(pki), cbc_only)
    assert control.server[1] in ("ECDHE-RSA-AES128-SHA256", "AES128-SHA256")
    out = exchange(server_ssl_context(server_cfg(pki)), cbc_only)
    assert isinstance(out.server, ssl.SSLError)


def test_required_client_certificate(pki: Pki) -> None:
    server = server_ssl_context(server_cfg(pki, ca_bundle=pki["test-ca.pem"], require_client_certificate=True))
    # No certificate: refused.
    out = exchange(server, client_ssl_context(pki["test-ca.pem"]))
    assert isinstance(out.server, ssl.SSLError)
    assert isinstance(out.client, (ssl.SSLError, OSError))
    # A certificate from another CA: refused.
    rogue = client_ssl_context(pki["test-ca.pem"], pki["rogue-client.pem"], pki["rogue-client.key"])
    out = exchange(server, rogue)
    assert isinstance(out.server, ssl.SSLError)
    # A certificate signed by the CA bundle: accepted, and the server sees who it is.
    good = client_ssl_context(pki["test-ca.pem"], pki["test-client.pem"], pki["test-client.key"])
    out = exchange(server, good)
    assert out.client == ASSOCIATE_RQ_START
    subject = dict(item for rdn in out.server[2]["subject"] for item in rdn)
    assert subject["commonName"] == "test-client"


def test_optional_client_certificate_with_ca_bundle(pki: Pki) -> None:
    server = server_ssl_context(server_cfg(pki, ca_bundle=pki["test-ca.pem"]))
    out = exchange(server, client_ssl_context(pki["test-ca.pem"]))
    assert out.client == ASSOCIATE_RQ_START and out.server[2] is None
    rogue = client_ssl_context(pki["test-ca.pem"], pki["rogue-client.pem"], pki["rogue-client.key"])
    assert isinstance(exchange(server, rogue).server, ssl.SSLError)  # sent, so it must verify


def test_plain_dicom_client_on_the_tls_port_is_refused_cleanly(pki: Pki) -> None:
    out = exchange(server_ssl_context(server_cfg(pki)), None)
    assert isinstance(out.server, ssl.SSLError)
    # The plain client gets no DICOM bytes back: the connection just closes
    # (possibly after a TLS alert record, which starts with 0x15).
    assert isinstance(out.client, OSError) or out.client == b"" or out.client[:1] == b"\x15"


def test_client_refuses_an_untrusted_server(pki: Pki) -> None:
    out = exchange(server_ssl_context(server_cfg(pki)), client_ssl_context(pki["rogue-ca.pem"]))
    assert isinstance(out.client, ssl.SSLCertVerificationError)


def test_client_verify_off_and_hostname_check_on(pki: Pki) -> None:
    out = exchange(server_ssl_context(server_cfg(pki)), client_ssl_context(verify=False))
    assert out.client == ASSOCIATE_RQ_START
    strict = client_ssl_context(pki["test-ca.pem"], check_hostname=True)
    assert exchange(server_ssl_context(server_cfg(pki)), strict).client == ASSOCIATE_RQ_START


def test_context_settings(pki: Pki) -> None:
    ctx = server_ssl_context(server_cfg(pki))
    assert ctx.minimum_version == ssl.TLSVersion.TLSv1_2
    assert ctx.options & ssl.OP_NO_COMPRESSION
    tls12 = {c["name"] for c in ctx.get_ciphers() if c["protocol"] == "TLSv1.2"}
    assert tls12 and tls12 <= set(BCP195_TLS12_CIPHERS.split(":"))


def test_bad_settings_raise(pki: Pki) -> None:
    with pytest.raises(ValueError, match="CA bundle"):
        server_ssl_context(server_cfg(pki, require_client_certificate=True))
    with pytest.raises(ValueError):
        server_ssl_context(TlsConfig(enabled=True))
    with pytest.raises(ssl.SSLError):  # key of another certificate
        server_ssl_context(TlsConfig(enabled=True, certificate=pki["test-server.pem"], key=pki["test-client.key"]))


def test_context_from_loaded_configuration(pki: Pki) -> None:
    cfg = load_config(None, {
        "server.tls.enabled": True, "server.tls.certificate": pki["test-server.pem"],
        "server.tls.key": pki["test-server.key"], "server.tls.ca_bundle": pki["test-ca.pem"],
        "server.tls.require_client_certificate": True,
    })
    ctx = server_ssl_context(cfg.server.tls)
    assert ctx.verify_mode == ssl.CERT_REQUIRED


def test_config_check_reports_unusable_tls_files(pki: Pki, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(
        "server:\n  tls:\n    enabled: true\n"
        f"    certificate: {pki['test-server.pem']}\n    key: {pki['test-client.key']}\n")
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    args = parser.parse_args(["config", "check", str(path)])
    assert args.func(args) == 2
    assert "server.tls: cannot set up TLS" in capsys.readouterr().err

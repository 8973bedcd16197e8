"""``fastscp echo`` and ``fastscp send`` against fastscp and dcmtk storescp,
over real sockets (plain and TLS)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pydicom
import pytest

from conftest import Server, dcmtk, free_port, make_image, wait_for_port


def fastscp(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "fastscp.cli", *args], capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def storescp(tmp_path: Path):  # type: ignore[no-untyped-def]
    """dcmtk's storescp, accepting everything, writing into tmp/dcmtk-out."""
    out = tmp_path / "dcmtk-out"
    out.mkdir()
    port = free_port()
    proc = subprocess.Popen([dcmtk("storescp"), "-od", str(out), "+xa", "-aet", "STORESCP", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for_port(port, proc)
    yield port, out
    proc.terminate()
    proc.wait(timeout=10)


def corpus(d: Path) -> list[Path]:
    """12 images over two studies, one sub-folder, plus two non-DICOM files."""
    (d / "sub").mkdir(parents=True)
    files = []
    for i in range(12):
        path = (d / "sub" if i >= 8 else d) / f"im{i}.dcm"
        make_image(path, i, study=i % 2, modality="CT" if i % 3 else "MR", size=32)
        files.append(path)
    (d / "README.txt").write_text("not DICOM")
    (d / "sub" / "junk.dcm").write_bytes(b"\x00" * 300)
    return files


def test_echo_against_fastscp_and_its_failures(server: Server) -> None:
    res = fastscp("echo", "127.0.0.1", str(server.port), "--aec", server.ae_title)
    assert res.returncode == 0, res.stderr
    assert "succeeded" in res.stdout
    res = fastscp("echo", "127.0.0.1", str(server.port), "--aec", "SOMEONE_ELSE")
    assert res.returncode == 1 and "rejected" in res.stderr
    res = fastscp("echo", "127.0.0.1", str(free_port()), "--timeout", "5")
    assert res.returncode == 1 and "cannot connect" in res.stderr


def test_echo_against_dcmtk_storescp(storescp) -> None:  # type: ignore[no-untyped-def]
    port, _out = storescp
    res = fastscp("echo", "127.0.0.1", str(port), "--aec", "STORESCP")
    assert res.returncode == 0, res.stderr


def test_send_folder_recursive_parallel_to_fastscp(server: Server, tmp_path: Path) -> None:
    files = corpus(tmp_path / "src")
    flat = fastscp("send", "127.0.0.1", str(server.port), "--aec", server.ae_title, str(tmp_path / "src"))
    assert flat.returncode == 0, flat.stderr
    assert "sub-folder(s) not searched" in flat.stderr and "stored 8/8 file(s)" in flat.stdout
    assert "skipped (not DICOM): " in flat.stderr and "README.txt" in flat.stderr

    res = fastscp("send", "127.0.0.1", str(server.port), "--aec", server.ae_title, "--recursive", "--parallel", "3",
                  "--progress", "always", str(tmp_path / "src"))
    assert res.returncode == 0, res.stderr
    assert "stored 12/12 file(s)" in res.stdout and "over 3 association(s)" in res.stdout
    assert "success 0x0000" in res.stdout and "skipped (not DICOM): 2" in res.stdout
    assert "junk.dcm" in res.stderr and "12/12 files" in res.stderr and "MB/s" in res.stderr
    stored = server.stored_files()
    assert {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in stored} == \
           {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in files}
    assert server.log_text().count("open: peer") >= 4  # 1 + 3 associations


def test_send_reports_failure_statuses_and_unsendable_files(start_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    srv = start_server("--duplicates", "reject", "--accept", "CT")
    ct, mr = tmp_path / "ct.dcm", tmp_path / "mr.dcm"
    make_image(ct, 1, study=1, modality="CT")
    make_image(mr, 2, study=1, modality="MR")
    first = fastscp("send", "127.0.0.1", str(srv.port), "--aec", srv.ae_title, str(ct))
    assert first.returncode == 0, first.stderr
    changed = tmp_path / "ct2.dcm"  # same SOP Instance UID, other content: refused under "reject"
    ds = pydicom.dcmread(ct)
    ds.PatientName = "Changed^Name"
    ds.save_as(changed)
    again = fastscp("send", "127.0.0.1", str(srv.port), "--aec", srv.ae_title, str(changed), str(mr))
    assert again.returncode == 1
    assert "stored 0/2" in again.stdout
    assert "failure 0xCD01" in again.stdout and "failed: " + str(changed) in again.stderr
    assert "not sent: 1" in again.stdout
    assert f"not sent: {mr}: no presentation context accepted for MR Image Storage" in again.stderr


def test_send_of_a_refused_sop_class_names_it_and_does_not_retry(start_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """A receiver that accepts no context of ours: say which SOP class and
    transfer syntax it refused, as storescu does, and ask once only (the same
    proposal would be refused again), not report an unreachable port."""
    srv = start_server("--accept", "CT")
    mr = tmp_path / "mr.dcm"
    make_image(mr, 1, study=1, modality="MR")
    res = fastscp("send", "127.0.0.1", str(srv.port), "--aec", srv.ae_title, "--aet", "SENDER", str(mr))
    assert res.returncode == 1
    refused = (f"no presentation context accepted by FASTSCP at 127.0.0.1:{srv.port} for MR Image Storage "
               "(1.2.840.10008.5.1.4.1.1.4) in Explicit VR Little Endian (1.2.840.10008.1.2.1): "
               "abstract syntax (SOP class) not supported")
    assert res.stderr.count(refused) == 1, res.stderr
    assert "closed or aborted" not in res.stderr
    assert f"not sent: {mr}: no presentation context accepted for MR Image Storage" in res.stderr
    assert "refused by the receiver: MR Image Storage" in res.stdout and "not sent: 1" in res.stdout
    # One association was asked for. The receiver logs associations in the
    # order they come; a later probe's line shows every earlier one is logged.
    probe = fastscp("echo", "127.0.0.1", str(srv.port), "--aec", srv.ae_title, "--aet", "PROBE")
    assert probe.returncode == 0, probe.stderr
    log = srv.log_once_it_says("calling PROBE")
    assert log.count("calling SENDER called FASTSCP, 0/1 contexts accepted") == 1, log


def test_send_nothing_and_unreachable(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("x")
    res = fastscp("send", "127.0.0.1", "1", str(tmp_path))
    assert res.returncode == 1 and "no DICOM files" in res.stderr
    f = tmp_path / "a.dcm"
    make_image(f, 1, study=1)
    res = fastscp("send", "127.0.0.1", str(free_port()), "--timeout", "5", str(f))
    assert res.returncode == 1 and "cannot connect" in res.stderr and "not sent: 1" in res.stdout


def test_send_to_dcmtk_storescp_keeps_transfer_syntax(storescp, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from pydicom.data import get_testdata_file

    port, out = storescp
    files = [get_testdata_file(n) for n in ("CT_small.dcm", "MR_small_RLE.dcm", "JPEG2000.dcm", "SC_rgb_jpeg_dcmtk.dcm")]
    src = tmp_path / "src"
    src.mkdir()
    for f in files:
        shutil.copy(str(f), src)
    res = fastscp("send", "127.0.0.1", str(port), "--aec", "STORESCP", "--parallel", "2", str(src))
    assert res.returncode == 0, res.stdout + res.stderr
    got = {str(d.SOPInstanceUID): str(d.file_meta.TransferSyntaxUID)
           for d in (pydicom.dcmread(p, stop_before_pixels=True) for p in out.iterdir())}
    want = {str(d.SOPInstanceUID): str(d.file_meta.TransferSyntaxUID)
            for d in (pydicom.dcmread(str(p), stop_before_pixels=True) for p in files)}
    assert got == want


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
def test_echo_and_send_over_tls(start_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from test_tls import make_ca, make_leaf

    pki = tmp_path / "pki"
    pki.mkdir()
    make_ca(pki, "ca")
    make_leaf(pki, "server", "ca", "serverAuth")
    make_ca(pki, "other")
    tls_port = free_port()
    cfg = tmp_path / "tls.yaml"
    cfg.write_text(f"server:\n  tls:\n    enabled: true\n    port: {tls_port}\n"
                   f"    certificate: {pki / 'server.pem'}\n    key: {pki / 'server.key'}\n")
    srv = start_server("--config", str(cfg))
    wait_for_port(tls_port, srv.proc)
    ok = fastscp("echo", "127.0.0.1", str(tls_port), "--aec", srv.ae_title, "--tls", "--tls-ca", str(pki / "ca.pem"))
    assert ok.returncode == 0, ok.stderr
    bad = fastscp("echo", "127.0.0.1", str(tls_port), "--aec", srv.ae_title, "--tls", "--tls-ca", str(pki / "other.pem"))
    assert bad.returncode == 1 and "TLS" in bad.stderr
    f = tmp_path / "a.dcm"
    make_image(f, 1, study=1)
    sent = fastscp("send", "127.0.0.1", str(tls_port), "--aec", srv.ae_title, "--tls", "--tls-ca", str(pki / "ca.pem"), str(f))
    assert sent.returncode == 0, sent.stderr
    assert len(srv.stored_files()) == 1


def test_pynetdicom_reactor_cannot_take_an_answer_from_the_sender(server: Server) -> None:
    """The send tool's associations leave DIMSE messages to the thread
    waiting in send_c_store: pynetdicom's reactor polls without blocking and
    must get nothing, or it can take a C-STORE-RSP (scu/commands.py)."""
    from pynetdicom import AE
    from pynetdicom.sop_class import Verification

    from fastscp.scu.commands import answers_to_the_caller

    ae = AE()
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", server.port, ae_title=server.ae_title)
    assert assoc.is_established
    try:
        answers_to_the_caller(assoc)
        item = (1, object())  # stands for a decoded C-STORE-RSP on context 1
        assoc.dimse.msg_queue.put(item)
        assert assoc.dimse.get_msg(block=False) == (None, None)  # the reactor's poll
        assert assoc.dimse.get_msg(block=True) is item  # the caller's wait
        assert assoc.send_c_echo().Status == 0  # and the association still works
    finally:
        assoc.release()

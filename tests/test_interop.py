"""Interop with real peers: dcmtk echoscu/storescu and pynetdicom, over sockets.

The invariant everywhere: every instance the sender saw acknowledged is on
disk, and its stored dataset bytes equal the sent file's dataset bytes.
"""

from __future__ import annotations

import subprocess
from collections import defaultdict
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_files

from conftest import Server, dataset_bytes, dcmtk, free_port, wait_for_port
from fastscp.scu.commands import answers_to_the_caller
from reliability import store_responses

pytestmark = pytest.mark.interop

# storescu only proposes a compressed transfer syntax when asked to.
STORESCU_TS_FLAG = {
    "1.2.840.10008.1.2": "-xi",
    "1.2.840.10008.1.2.1": "-xe",
    "1.2.840.10008.1.2.2": "-xb",
    "1.2.840.10008.1.2.1.99": "-xd",
    "1.2.840.10008.1.2.4.50": "-xy",
    "1.2.840.10008.1.2.4.51": "-xx",
    "1.2.840.10008.1.2.4.70": "-xs",
    "1.2.840.10008.1.2.4.80": "-xt",
    "1.2.840.10008.1.2.4.81": "-xu",
    "1.2.840.10008.1.2.4.90": "-xv",
    "1.2.840.10008.1.2.4.91": "-xw",
    "1.2.840.10008.1.2.5": "-xr",
}


def stored_by_uid(srv: Server) -> dict[str, Path]:
    out = {}
    for path in srv.stored_files():
        meta = pydicom.dcmread(path, stop_before_pixels=True)
        out[str(meta.file_meta.MediaStorageSOPInstanceUID)] = path
    return out


def run_storescu(srv: Server, files: list[str | Path], *flags: str) -> list[tuple[str, str]]:
    """Send with dcmtk storescu; returns (file, response) for each file it sent."""
    cmd = [dcmtk("storescu"), "-v", "-nh", "-aec", srv.ae_title, *flags, "127.0.0.1", str(srv.port), *map(str, files)]
    out = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=300).stdout
    return store_responses(out)


def assert_acknowledged_are_stored(srv: Server, acknowledged: list[tuple[str, str]]) -> None:
    stored = stored_by_uid(srv)
    last_sent: dict[str, str] = {}
    for path, _ in acknowledged:
        uid = str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)
        last_sent[uid] = path
    for uid, path in last_sent.items():
        assert uid in stored, f"{path} acknowledged but not stored"
        assert dataset_bytes(stored[uid]) == dataset_bytes(path), f"{path}: stored dataset differs"
    assert not srv.incoming(), "temp files left in .incoming"


def test_echoscu(server: Server) -> None:
    result = subprocess.run([dcmtk("echoscu"), "-aec", server.ae_title, "127.0.0.1", str(server.port)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_wrong_called_ae_is_rejected(server: Server) -> None:
    result = subprocess.run([dcmtk("echoscu"), "-aec", "NOT_US", "127.0.0.1", str(server.port)], capture_output=True, text=True)
    assert result.returncode != 0
    assert "Called AE Title Not Recognized" in result.stdout + result.stderr
    assert "rejected" in server.log_once_it_says("rejected")


def _readable_test_files() -> dict[str, list[str]]:
    """pydicom's bundled test files that dcmtk can send, grouped by transfer syntax."""
    groups: dict[str, list[str]] = defaultdict(list)
    for f in get_testdata_files():
        try:
            ds = pydicom.dcmread(f)
            ts = str(ds.file_meta.TransferSyntaxUID)
            if ds.SOPInstanceUID and ds.SOPClassUID and ts in STORESCU_TS_FLAG:
                groups[ts].append(f)
        except Exception:
            continue
    return groups


@pytest.fixture
def reference_scp(tmp_path: Path):  # type: ignore[no-untyped-def]
    """dcmtk storescp writing what it receives bit for bit: the oracle for
    what storescu put on the wire (storescu re-encodes some files: it drops
    group lengths, fixes padding), so fastscp's bytes must equal these."""
    out = tmp_path / "reference"
    out.mkdir()
    port = free_port()
    proc = subprocess.Popen([dcmtk("storescp"), "+xa", "--bit-preserving", "-aet", "FASTSCP", "-od", str(out), str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for_port(port, proc)
    yield port, out
    proc.terminate()
    proc.wait()


def test_storescu_sends_pydicom_test_files_in_their_own_transfer_syntax(start_server, reference_scp) -> None:  # type: ignore[no-untyped-def]
    # pydicom's test files reuse SOP Instance UIDs across transfer syntaxes:
    # "overwrite" keeps the last copy sent, which is what is compared below
    server = start_server("--duplicates", "overwrite")
    ref_port, ref_dir = reference_scp
    groups = _readable_test_files()
    acknowledged = []
    for ts, files in sorted(groups.items()):
        results = run_storescu(server, files, "-R", STORESCU_TS_FLAG[ts])
        acknowledged += [r for r in results if r[1] == "Success"]
        refused = [r for r in results if r[1] != "Success"]
        assert not refused, f"{ts}: fastscp refused {refused}"
        # the same sends to dcmtk's bit-preserving storescp, one file at a time
        # (test files share UIDs, and storescp overwrites nothing)
        for path, _ in results:
            subprocess.run([dcmtk("storescu"), "-R", STORESCU_TS_FLAG[ts], "-aec", "FASTSCP", "127.0.0.1", str(ref_port), path],
                           capture_output=True, timeout=60)
            target = ref_dir / Path(path).name
            received = [p for p in ref_dir.iterdir() if p.is_file() and not p.name.endswith(".sent")]
            assert len(received) == 1, f"reference storescp did not receive {path}"
            received[0].rename(target.with_suffix(".sent"))
    stored_ts = {str(pydicom.dcmread(p, stop_before_pixels=True).file_meta.TransferSyntaxUID) for p in server.stored_files()}
    assert len(acknowledged) >= 80
    # compressed, big endian, deflated and implicit all arrived in their own syntax
    assert {"1.2.840.10008.1.2", "1.2.840.10008.1.2.2", "1.2.840.10008.1.2.1.99", "1.2.840.10008.1.2.4.50",
            "1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.5"} <= stored_ts
    # bit-exact: what fastscp stored == what dcmtk's bit-preserving SCP stored
    stored = stored_by_uid(server)
    last_sent = {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID): p for p, _ in acknowledged}
    for uid, path in last_sent.items():
        assert uid in stored, f"{path} acknowledged but not stored"
        wire = dataset_bytes(ref_dir / (Path(path).stem + ".sent"))
        assert dataset_bytes(stored[uid]) == wire, f"{path}: stored dataset differs from what was sent"
    assert not server.incoming()


def test_storescu_synthetic_one_association(server: Server, synthetic_corpus: list[Path]) -> None:
    results = run_storescu(server, synthetic_corpus)
    assert [r[1] for r in results] == ["Success"] * len(synthetic_corpus)
    assert len(server.stored_files()) == len(synthetic_corpus)
    assert_acknowledged_are_stored(server, results)


def test_storescu_synthetic_four_associations_at_once(server: Server, synthetic_corpus: list[Path]) -> None:
    parts = [synthetic_corpus[i::4] for i in range(4)]
    cmds = [[dcmtk("storescu"), "-v", "-aec", server.ae_title, "127.0.0.1", str(server.port), *map(str, part)] for part in parts]
    procs = [subprocess.Popen(c, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for c in cmds]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    assert sum(o.count("Received Store Response (Success)") for o in outs) == len(synthetic_corpus)
    assert len(server.stored_files()) == len(synthetic_corpus)
    assert_acknowledged_are_stored(server, [(str(f), "Success") for f in synthetic_corpus])


def test_pynetdicom_storescu(server: Server, synthetic_corpus: list[Path]) -> None:
    from pynetdicom import AE

    files = synthetic_corpus[:40] + [f for f in get_testdata_files("CT_small.dcm")] + get_testdata_files("MR_small.dcm")
    datasets = [pydicom.dcmread(f) for f in files]
    ae = AE(ae_title="PYNETDICOM")
    for sop_class, ts in {(str(d.SOPClassUID), str(d.file_meta.TransferSyntaxUID)) for d in datasets}:
        ae.add_requested_context(sop_class, ts)
    assoc = ae.associate("127.0.0.1", server.port, ae_title=server.ae_title, max_pdu=16384)
    assert assoc.is_established
    answers_to_the_caller(assoc)  # pynetdicom's reactor race (scu/commands.py); fast answers hit it
    try:
        statuses = [assoc.send_c_store(d).Status for d in datasets]
        echo = assoc.send_c_echo() if False else None  # Verification was not proposed
    finally:
        assoc.release()
    assert echo is None
    assert statuses == [0] * len(datasets)
    assert_acknowledged_are_stored(server, [(str(f), "Success") for f in files])

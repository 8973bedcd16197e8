"""Monitoring against a real ``fastscp serve`` and real senders (pynetdicom,
dcmtk): /status and /metrics while two associations send, the connection log,
``fastscp query`` through the running server, ``fastscp status --once``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

import pydicom
import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import dataset_bytes, dcmtk, free_port, make_image
from fastscp.scu.commands import answers_to_the_caller

pytestmark = pytest.mark.interop


def get(url: str, token: str | None = None) -> bytes:
    req = urllib.request.Request(url)
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(req, timeout=10) as resp:
        return bytes(resp.read())


def token_of(srv: Any) -> str:
    """The token the server generated at its first start (docs/security.md),
    once its status endpoint listens (it logs "status page at" then)."""
    assert "status page at" in srv.log_once_it_says("status page at")
    return str((srv.storage / ".status" / "token").read_text().strip())


def status(port: int, token: str) -> dict[str, Any]:
    return json.loads(get(f"http://127.0.0.1:{port}/status", token))


def metrics(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for fam in text_string_to_metric_families(get(f"http://127.0.0.1:{port}/metrics").decode()):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def fastscp(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "fastscp.cli", *args], capture_output=True, text=True,
                          timeout=120, cwd=cwd)


def storescu(port: int, calling: str, files: list[Path]) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if k != "TCP_NODELAY"}
    return subprocess.Popen([dcmtk("storescu"), "-aet", calling, "-aec", "FASTSCP", "127.0.0.1", str(port),
                             *map(str, files)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)


@pytest.fixture(scope="module")
def two_senders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[Path]]:
    """Two batches of 80 images (CT/MR alternating), one per calling AE."""
    root = tmp_path_factory.mktemp("monitor_corpus")
    batches = {}
    for n, ae in enumerate(("SENDER_A", "SENDER_B")):
        d = root / ae
        d.mkdir()
        files = []
        for i in range(80):
            p = d / f"{i:03d}.dcm"
            make_image(p, i, study=10 * n + i % 4, modality="CT" if i % 2 else "MR", size=96)
            files.append(p)
        batches[ae] = files
    return batches


def wait_for(predicate: Any, timeout: float = 20.0, every: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError("condition not met in time")


class SteppedSender(threading.Thread):
    """A pynetdicom association that sends its files as the file holds them
    (no re-encoding), in two halves, and waits for the test between the
    halves and before releasing, so the test sees it open, part way through."""

    def __init__(self, port: int, calling: str, files: list[Path]) -> None:
        super().__init__(daemon=True)
        self.port, self.calling, self.files = port, calling, files
        self.half_sent, self.go_on, self.all_sent, self.release = (threading.Event() for _ in range(4))
        self.statuses: list[int] = []
        self.error: BaseException | None = None

    def run(self) -> None:
        from pynetdicom import AE

        try:
            ae = AE(ae_title=self.calling)
            for f in self.files[:2]:
                meta = pydicom.dcmread(f, stop_before_pixels=True).file_meta
                ae.add_requested_context(meta.MediaStorageSOPClassUID, meta.TransferSyntaxUID)
            assoc = ae.associate("127.0.0.1", self.port, ae_title="FASTSCP")
            assert assoc.is_established, f"{self.calling}: association rejected"
            answers_to_the_caller(assoc)  # pynetdicom's reactor race (scu/commands.py): a CI run lost an answer to it
            half = len(self.files) // 2
            for n, f in enumerate(self.files):
                if n == half:
                    self.half_sent.set()
                    assert self.go_on.wait(60), "the test never said go on"
                self.statuses.append(int(assoc.send_c_store(f, msg_id=n + 1).get("Status", -1)))
            self.all_sent.set()
            assert self.release.wait(60), "the test never said release"
            assoc.release()
        except BaseException as exc:  # reported by the test, not lost in the thread
            self.error = exc
            self.half_sent.set()
            self.all_sent.set()


def test_status_and_metrics_during_two_association_flood(start_server, two_senders, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """Two associations open at once: /status lists both with their live
    counters at each step. The senders pause at fixed points (half sent, all
    sent, not yet released) so the overlap does not depend on timing: with
    two free-running storescu floods of 80 small images each, a fast receiver
    can finish one before the other is listed (a CI run saw exactly that)."""
    from pynetdicom import _config

    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)  # send each file's bytes as they are
    sport = free_port()
    log_file = tmp_path / "connections.jsonl"
    srv = start_server("--status-port", str(sport), "--log-file", str(log_file))
    assert f"status page at http://127.0.0.1:{sport}/" in wait_for(
        lambda: "status page" in srv.log_text() and srv.log_text())

    senders = {ae: SteppedSender(srv.port, ae, files) for ae, files in two_senders.items()}
    for s in senders.values():
        s.start()

    def both_at(count: int) -> dict[str, Any] | None:
        doc = status(sport, token_of(srv))
        by_ae = {a["calling_ae"]: a for a in doc["active"]}
        return doc if set(by_ae) == set(senders) and all(a["instances"] == count for a in by_ae.values()) else None

    def check_active(doc: dict[str, Any], count: int) -> None:
        assert doc["totals"]["active"] == 2
        for a in doc["active"]:
            assert a["called_ae"] == "FASTSCP" and a["peer"].startswith("127.0.0.1:") and a["tls"] is False
            assert a["instances"] == count and a["age_s"] > 0
            assert a["contexts_accepted"] >= 1

    for s in senders.values():
        assert s.half_sent.wait(60)
        assert s.error is None, f"{s.calling}: {s.error!r}"
    check_active(wait_for(lambda: both_at(40)), 40)

    # the second halves go together while the test keeps reading /status: the
    # per-association counts it sees only go up, and they end at 80 each
    progress: dict[str, list[int]] = {ae: [] for ae in senders}
    for s in senders.values():
        s.go_on.set()
    while True:  # at least one reading; both stay open until released, so each is listed in every one
        done = all(s.all_sent.is_set() for s in senders.values())
        for a in status(sport, token_of(srv))["active"]:
            progress[a["calling_ae"]].append(a["instances"])
        if done:
            break
        time.sleep(0.01)
    for s in senders.values():
        assert s.error is None, f"{s.calling}: {s.error!r}"
        assert s.statuses == [0] * 80, s.statuses
    check_active(wait_for(lambda: both_at(80)), 80)
    for ae, seen in progress.items():
        assert seen and seen == sorted(seen), f"{ae}: instance count went backwards: {seen}"
        assert 40 <= seen[0] and seen[-1] <= 80, f"{ae}: {seen}"

    for s in senders.values():
        s.release.set()
    for s in senders.values():
        s.join(30)
        assert not s.is_alive() and s.error is None, f"{s.calling}: {s.error!r}"

    # after both: totals and metrics match exactly what was sent
    expected: Counter[tuple[str, str]] = Counter()
    expected_bytes: Counter[tuple[str, str]] = Counter()
    for ae, files in two_senders.items():
        for i, f in enumerate(files):
            key = ("CT" if i % 2 else "MR", ae)
            expected[key] += 1
            expected_bytes[key] += len(dataset_bytes(f))
    doc = wait_for(lambda: (d := status(sport, token_of(srv)))["active"] == [] and d)
    assert doc["totals"]["instances"] == 160
    assert doc["totals"]["bytes"] == sum(expected_bytes.values())
    assert doc["totals"]["associations"] == 2
    assert doc["totals"]["associations_by_outcome"]["released"] == 2
    assert {r["calling_ae"] for r in doc["recent_associations"]} == set(senders)
    assert all(r["instances"] == 80 and r["outcome"] == "released" for r in doc["recent_associations"])
    assert doc["storage"]["free"] > 0 and doc["storage"]["state"] == "ok"
    assert doc["queues"]["index"] is not None

    m = metrics(sport)
    assert m[("fastscp_associations_active", ())] == 0
    assert m[("fastscp_associations_total", (("outcome", "released"),))] == 2
    for (modality, ae), n in expected.items():
        labels = (("calling_ae", ae), ("modality", modality))
        assert m[("fastscp_instances_received_total", labels)] == n
        assert m[("fastscp_bytes_received_total", labels)] == expected_bytes[(modality, ae)]
    assert m[("fastscp_cstore_latency_seconds_count", ())] == 160
    assert m[("fastscp_cstore_latency_seconds_bucket", (("le", "+Inf"),))] == 160
    assert 0 < m[("fastscp_cstore_latency_seconds_sum", ())] < 160
    assert m[("fastscp_disk_free_bytes", ())] > 0
    assert ("fastscp_index_queue_depth", ()) in m
    assert m[("fastscp_index_rows_written_total", ())] <= 160

    # the connection log file: one open and one end record per association
    srv.stop()
    records = [json.loads(line) for line in log_file.read_text().splitlines()]
    ends = [r for r in records if r.get("event") == "association_end"]
    opens = [r for r in records if r.get("event") == "association_open"]
    assert sorted(r["calling_ae"] for r in ends) == ["SENDER_A", "SENDER_B"]
    assert sorted(r["calling_ae"] for r in opens) == ["SENDER_A", "SENDER_B"]
    for r in ends:
        assert r["instances_stored"] == 80 and r["failed"] == 0 and r["duplicates"] == 0
        assert r["outcome"] == "released" and r["reason"] == ""
        assert r["bytes"] == sum(expected_bytes[(m_, r["calling_ae"])] for m_ in ("CT", "MR"))
        assert r["duration_s"] > 0 and r["throughput_mb_s"] > 0
        assert r["contexts_accepted"] >= 1 and r["contexts_proposed"] >= r["contexts_accepted"]
        assert r["tls"] is False and r["called_ae"] == "FASTSCP"
    # the console (text) got the readable form, and the service's own one-line summaries are gone
    text = srv.log_text()
    assert "released: peer 127.0.0.1:" in text and "80 stored" in text
    assert "fastscp.scp: assoc" not in text


def test_query_through_running_server(start_server, two_senders, tmp_path: Path) -> None:
    sport = free_port()
    srv = start_server("--status-port", str(sport))
    files = two_senders["SENDER_A"][:20]
    p = storescu(srv.port, "SENDER_A", files)
    assert p.wait(60) == 0
    sql = "SELECT count(*) AS n FROM instances WHERE calling_ae = 'SENDER_A'"

    def indexed() -> bool:
        r = fastscp("query", sql, "--index-db", str(srv.index_db), "--format", "json")
        return r.returncode == 0 and json.loads(r.stdout)[0]["n"] == 20

    # found by the discovery file next to the index, while the server holds the file
    wait_for(indexed, timeout=20, every=0.3)
    assert srv.index_db.with_name(srv.index_db.name + ".status.json").exists()
    # explicitly by URL, table form
    r = fastscp("query", "SELECT sop_instance_uid FROM instances ORDER BY 1", "--url",
                f"http://127.0.0.1:{sport}", "--index-db", str(srv.index_db))
    assert r.returncode == 0, r.stderr
    assert "(20 rows)" in r.stdout
    # parquet comes back through the server too
    out = tmp_path / "q.parquet"
    r = fastscp("query", sql, "--index-db", str(srv.index_db), "--format", "parquet", "--output", str(out))
    assert r.returncode == 0, r.stderr
    assert out.read_bytes()[:4] == b"PAR1"
    # read-only enforcement through the endpoint
    for bad in ("DELETE FROM instances", "UPDATE instances SET calling_ae = 'X'",
                "ATTACH 'other.db' AS o", "COPY instances TO 'x.csv'", "SELECT 1; DROP TABLE instances"):
        r = fastscp("query", bad, "--index-db", str(srv.index_db))
        assert r.returncode == 2, (bad, r.stdout, r.stderr)
        assert "refused" in r.stderr and "read-only" in r.stderr
    r = fastscp("query", "SELECT nope FROM instances", "--index-db", str(srv.index_db))
    assert r.returncode == 1 and "nope" in r.stderr
    # nothing was changed
    r = fastscp("query", "SELECT count(*) AS n FROM instances", "--index-db", str(srv.index_db), "--format", "json")
    assert json.loads(r.stdout)[0]["n"] == 20

    # once the server is gone, query opens the file itself (and the discovery file is removed)
    srv.stop()
    assert not srv.index_db.with_name(srv.index_db.name + ".status.json").exists()
    r = fastscp("query", sql, "--index-db", str(srv.index_db), "--format", "json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)[0]["n"] == 20


def test_status_once_and_token(start_server, two_senders, tmp_path: Path) -> None:
    sport = free_port()
    config = tmp_path / "status.yaml"
    config.write_text("status:\n  token: s3cret\n")
    srv = start_server("--config", str(config), "--status-port", str(sport))
    p = storescu(srv.port, "SENDER_B", two_senders["SENDER_B"][:10])
    assert p.wait(60) == 0
    url = f"http://127.0.0.1:{sport}"
    with pytest.raises(urllib.error.HTTPError) as err:
        get(url + "/status")
    assert err.value.code == 401
    assert json.loads(get(url + "/status", "s3cret"))["totals"]["instances"] == 10

    # wrong token: exit 2; the discovery file carries the token to local tools
    r = fastscp("status", "--once", "--url", url, "--token", "wrong")
    assert r.returncode == 2 and "token" in r.stderr
    r = fastscp("status", "--once", "--index-db", str(srv.index_db))
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert "fastscp status" in out
    assert f"FASTSCP on 0.0.0.0:{srv.port}" in out
    assert "1 associations (released 1), 10 instances" in out
    assert "SENDER_B" in out and "released" in out
    assert "Active associations (0)" in out and "Recent studies" in out
    assert "[ok]" in out  # the storage line with its watermark state
    # no server at all
    r = fastscp("status", "--once", "--url", f"http://127.0.0.1:{free_port()}")
    assert r.returncode == 1 and "no fastscp server answers" in r.stderr


def test_rejected_association_is_logged_and_counted(start_server, two_senders, tmp_path: Path) -> None:
    sport = free_port()
    log_file = tmp_path / "c.jsonl"
    srv = start_server("--status-port", str(sport), "--log-file", str(log_file), "--log-format", "json")
    r = subprocess.run([dcmtk("storescu"), "-aet", "SENDER_A", "-aec", "WRONGAE", "127.0.0.1", str(srv.port),
                        str(two_senders["SENDER_A"][0])], capture_output=True, text=True, timeout=60)
    assert r.returncode != 0
    doc = wait_for(lambda: (d := status(sport, token_of(srv)))["totals"]["associations_by_outcome"]["rejected"] == 1 and d)
    assert doc["recent_associations"][0]["outcome"] == "rejected"
    assert "WRONGAE" in doc["recent_associations"][0]["reason"]
    assert metrics(sport)[("fastscp_associations_total", (("outcome", "rejected"),))] == 1
    srv.stop()
    rec = [json.loads(x) for x in log_file.read_text().splitlines()]
    rejected = [x for x in rec if x.get("event") == "association_rejected"]
    assert len(rejected) == 1 and rejected[0]["calling_ae"] == "SENDER_A" and rejected[0]["called_ae"] == "WRONGAE"
    assert rejected[0]["outcome"] == "rejected" and "WRONGAE" in rejected[0]["reason"]
    # --log-format json: every console line is a JSON object
    console = [line for line in srv.log_text().splitlines() if line.strip()]
    assert console and all(json.loads(line)["level"] for line in console)

"""Monitoring pieces without a network peer: the
connection records and log formatting, the counters and their Prometheus
form, the disk watermark, and the status HTTP server fed raw requests."""

from __future__ import annotations

import dataclasses
import asyncio
import io
import json
import logging
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from fastscp.catalog import CatalogWriter
from fastscp.monitor.collector import LATENCY_BUCKETS, Monitor
from fastscp.events import (
    AssociationEnded,
    AssociationOpened,
    AssociationRejected,
    InstanceStored,
    Outcome,
    StoreAnswered,
)
from fastscp.monitor.connlog import ConnectionLog, end_record
from fastscp.monitor.http import StatusServer
from fastscp.monitor.logsetup import configure_logging
from events_support import assoc_info, counts
from test_catalog_support import make_info


def state(tmp_path: Path) -> Any:
    return SimpleNamespace(storage=SimpleNamespace(directory=tmp_path), active=0, associations_total=0,
                           instances_total=0, bytes_total=0, observers=[], index_error="")


def monitor(st: Any, **kw: Any) -> Monitor:
    return Monitor(st, st.storage.directory, **kw)


def test_end_record_fields() -> None:
    a = assoc_info(tls=True)
    c = counts(stored=10, failed=2, duplicates=1, bytes=5_000_000, statuses=((0xA700, 1), (0xC000, 1)))
    r = end_record(a, c, Outcome.RELEASED, "", time.time())
    assert r["event"] == "association_end" and r["outcome"] == "released"
    assert r["failures_by_status"] == {"0xA700": 1, "0xC000": 1}
    assert r["contexts_proposed"] == 3 and r["contexts_accepted"] == 2
    assert r["instances_stored"] == 10 and r["bytes"] == 5_000_000 and r["tls"] is True
    assert 1.9 < r["duration_s"] < 10
    assert r["throughput_mb_s"] == pytest.approx(5 / r["duration_s"], rel=0.01)
    assert r["time"].endswith("Z") and r["started"] < r["time"]


def test_connection_log_json_file_text_console_and_rotation(tmp_path: Path) -> None:
    console = io.StringIO()
    path = tmp_path / "conn.jsonl"
    handle = configure_logging("info", "text", str(path), max_bytes=2048, backup_count=2, stream=console)
    try:
        clog = ConnectionLog()
        for i in range(12):
            a = assoc_info(i)
            clog.association_opened(AssociationOpened(a))
            how = (Outcome.RELEASED, "") if i % 3 else (Outcome.ABORTED_BY_PEER, "aborted by peer (source 0, reason 0)")
            clog.association_ended(AssociationEnded(a, *how, time.time(), counts(stored=i, bytes=1000 * i)))
        clog.association_rejected(AssociationRejected(assoc_info(99), "calling AE 'BAD' not allowed"))
        # the dispatcher's own summary lines are dropped, other scp lines kept
        logging.getLogger("fastscp.scp").info("assoc %s open: peer %s", "x", "y")
        logging.getLogger("fastscp.scp").warning("assoc %s: refused %s", "x", "1.2.3")
    finally:
        handle.stop()
    files = sorted(tmp_path.glob("conn.jsonl*"))
    assert len(files) == 3  # rotated at 2 KB, two backups kept
    assert all(f.stat().st_size <= 2048 + 600 for f in files)
    ordered = [tmp_path / "conn.jsonl.2", tmp_path / "conn.jsonl.1", path]
    records = [json.loads(line) for f in ordered for line in f.read_text().splitlines()]
    assert records[-1]["message"] == "assoc x: refused 1.2.3"
    assert [r["association_id"] for r in records if r.get("event") == "association_end"][-3:] == \
        ["run-9", "run-10", "run-11"]
    rejected = records[-2]
    assert rejected["event"] == "association_rejected" and rejected["reason"] == "calling AE 'BAD' not allowed"
    assert rejected["level"] == "warning"
    text = console.getvalue()
    assert "fastscp.connections: assoc run-11 released: peer 10.0.0.11:400011, no TLS, calling SCU1" in text
    assert "assoc run-9 aborted_by_peer (aborted by peer (source 0, reason 0))" in text
    assert "WARNING" in text and "open: peer x" not in text and "refused 1.2.3" in text
    assert not text.lstrip().startswith("{")


def test_monitor_counts_and_prometheus(tmp_path: Path) -> None:
    st = state(tmp_path)
    mon = monitor(st, low_free_space=None)
    a, b = assoc_info(1, "A"), assoc_info(2, "B")
    for x in (a, b):
        st.active += 1
        st.associations_total += 1
        mon.association_opened(AssociationOpened(x))
    for i in range(6):
        x = a if i < 4 else b
        info = dataclasses.replace(make_info(i, study=i % 2, modality="CT" if i % 3 else "MR",
                                             calling_ae=x.calling_ae), dataset_size=100 + i)
        st.instances_total += 1
        st.bytes_total += info.dataset_size
        mon.instance_stored(InstanceStored(x, info))
        mon.store_answered(StoreAnswered(x, 0, 0.001 * (i + 1)))
    mon.store_answered(StoreAnswered(b, 0xA700, 0.0005))
    mon.tick()
    doc = mon.snapshot()
    assert [x["calling_ae"] for x in doc["active"]] == ["A", "B"]
    assert doc["active"][0]["instances"] == 4 and doc["active"][1]["bytes"] == 104 + 105
    assert doc["active"][1]["failed"] == 1 and doc["active"][0]["contexts_accepted"] == 2
    assert doc["totals"]["failures_by_status"] == {"0xA700": 1}
    assert len(doc["recent_studies"]) == 2 and doc["recent_instances"][0]["sop_instance_uid"].endswith(".5")

    st.active -= 1
    mon.association_ended(AssociationEnded(a, Outcome.RELEASED, "", time.time(), counts(stored=4, bytes=406)))
    fams = {f.name: f for f in text_string_to_metric_families(
        __import__("prometheus_client").generate_latest(_registry(mon)).decode())}
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value for f in fams.values() for s in f.samples}
    assert samples[("fastscp_associations_active", ())] == 1
    assert samples[("fastscp_associations_total", (("outcome", "released"),))] == 1
    assert samples[("fastscp_instances_received_total", (("calling_ae", "A"), ("modality", "CT")))] == 2
    assert samples[("fastscp_instances_received_total", (("calling_ae", "A"), ("modality", "MR")))] == 2
    assert samples[("fastscp_bytes_received_total", (("calling_ae", "B"), ("modality", "CT")))] == 104 + 105
    assert samples[("fastscp_store_failures_total", (("status", "0xA700"),))] == 1
    # histogram: le is inclusive; 0.0005 and 0.001 land in their own buckets
    assert samples[("fastscp_cstore_latency_seconds_bucket", (("le", "0.0005"),))] == 1
    assert samples[("fastscp_cstore_latency_seconds_bucket", (("le", "0.001"),))] == 2
    assert samples[("fastscp_cstore_latency_seconds_bucket", (("le", "0.005"),))] == 6
    assert samples[("fastscp_cstore_latency_seconds_bucket", (("le", "+Inf"),))] == 7
    assert samples[("fastscp_cstore_latency_seconds_count", ())] == 7
    assert samples[("fastscp_cstore_latency_seconds_sum", ())] == pytest.approx(0.0215)
    assert len(LATENCY_BUCKETS) + 1 == len([k for k in samples if k[0] == "fastscp_cstore_latency_seconds_bucket"])


def _registry(mon: Monitor) -> Any:
    from prometheus_client import CollectorRegistry

    from fastscp.monitor.metrics import MetricsCollector

    reg = CollectorRegistry(auto_describe=False)
    reg.register(MetricsCollector(mon))
    return reg


def test_disk_watermarks_log_once_per_change(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    mon = monitor(state(tmp_path), low_free_space=10_000_000, min_free_space=1_000_000)
    caplog.set_level(logging.INFO, "fastscp.monitor")
    seq = [50_000_000, 9_000_000, 8_000_000, 500_000, 20_000_000]
    states = []
    for free in seq:
        mon.set_disk({"total": 100_000_000, "used": 100_000_000 - free, "free": free})
        states.append(mon.snapshot()["storage"]["state"])
    assert states == ["ok", "low", "low", "full", "ok"]
    msgs = [r.getMessage() for r in caplog.records if r.name == "fastscp.monitor"]
    assert len(msgs) == 3
    assert "below storage.low_free_space_warning" in msgs[0]
    assert "refused with 0xA700" in msgs[1]
    assert "above the watermarks again" in msgs[2]
    mon.set_disk({"total": 100, "used": 95, "free": 5})
    assert any("below storage.min_free_space" in w for w in mon.snapshot()["warnings"])


# ---- the HTTP server, fed raw bytes -------------------------------------------------


async def _raw(port: int, request: bytes) -> tuple[int, dict[str, str], bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    await writer.drain()
    data = await reader.read()
    writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:])}
    return int(lines[0].split()[1]), headers, body


def _req(method: str, path: str, body: bytes = b"", headers: str = "") -> bytes:
    ctype = "Content-Type: application/json\r\n" if method == "POST" and "content-type" not in headers.lower() else ""
    return (f"{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Length: {len(body)}\r\n{ctype}{headers}"
            "\r\n").encode() + body


def test_status_server_routes_token_and_query(tmp_path: Path) -> None:
    writer = CatalogWriter(tmp_path / "i.db", flush_interval=0.05)
    for i in range(5):
        writer.enqueue(make_info(i, series=i % 2, modality="MR" if i % 2 else "CT", received_at=time.time()))
    assert writer.flush(10)
    mon = monitor(state(tmp_path), index_counters=writer.counters)

    async def run() -> None:
        server = StatusServer(mon, writer, token="tok")
        _, port = await server.start("127.0.0.1", 0)
        auth = "Authorization: Bearer tok\r\n"
        try:
            status, headers, _ = await _raw(port, _req("GET", "/status"))
            assert status == 401 and "Bearer" in headers["www-authenticate"]
            status, _, _ = await _raw(port, _req("GET", "/status", headers="Authorization: Bearer nope\r\n"))
            assert status == 401
            status, _, body = await _raw(port, _req("GET", "/status?token=tok"))
            assert status == 200 and json.loads(body)["index"]["rows_written"] == 5
            status, headers, body = await _raw(port, _req("GET", "/", headers=auth))
            assert status == 200 and headers["content-type"].startswith("text/html")
            assert b"<svg" not in body[:200] and b"http://" not in body.replace(b'"http://www.w3.org/2000/svg"', b"")
            status, _, _ = await _raw(port, _req("GET", "/favicon.ico"))
            assert status == 204
            status, _, _ = await _raw(port, _req("GET", "/nothing", headers=auth))
            assert status == 404
            status, headers, _ = await _raw(port, _req("GET", "/query", headers=auth))
            assert status == 405 and headers["allow"] == "POST"
            status, headers, body = await _raw(port, _req("GET", "/metrics", headers=auth))
            assert status == 200 and headers["content-type"].startswith("text/plain")
            assert b"fastscp_index_rows_written_total 5.0" in body
            status, _, body = await _raw(port, _req("GET", "/trend?days=7", headers=auth))
            rows = json.loads(body)["rows"]
            assert {(r["modality"], r["instances"]) for r in rows} == {("CT", 3), ("MR", 2)}
            status, _, _ = await _raw(port, _req("GET", "/trend?days=0", headers=auth))
            assert status == 400

            q = json.dumps({"sql": "SELECT sop_instance_uid, received_at FROM instances ORDER BY 1",
                            "max_rows": 3}).encode()
            status, _, body = await _raw(port, _req("POST", "/query", q, auth))
            doc = json.loads(body)
            assert status == 200 and doc["columns"] == ["sop_instance_uid", "received_at"] and len(doc["rows"]) == 3
            for sql in ("DELETE FROM instances", "WITH x AS (UPDATE instances SET peer = '' RETURNING 1) "
                                                 "SELECT * FROM x", "CHECKPOINT"):
                status, _, body = await _raw(port, _req("POST", "/query", json.dumps({"sql": sql}).encode(), auth))
                assert status == 400 and json.loads(body)["kind"] == "refused", (sql, body)
            status, _, body = await _raw(port, _req("POST", "/query", b'{"sql": "SELECT x FROM y"}', auth))
            assert status == 422 and json.loads(body)["kind"] == "sql"
            status, _, _ = await _raw(port, _req("POST", "/query", b"not json", auth))
            assert status == 400
            status, _, _ = await _raw(port, b"POST /query HTTP/1.1\r\nContent-Length: 99999999\r\n\r\n")
            assert status == 413
            status, _, _ = await _raw(port, b"garbage\r\n\r\n")
            assert status == 400
            assert server.requests >= 15
        finally:
            await server.close()

    try:
        asyncio.run(run())
    finally:
        writer.close()
    from fastscp.catalog import connect

    conn = connect(tmp_path / "i.db", read_only=True)
    assert conn.execute("SELECT count(*), count(DISTINCT peer) FROM instances").fetchone()[0] == 5
    conn.close()

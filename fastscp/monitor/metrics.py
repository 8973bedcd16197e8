"""Prometheus metric families built from ``collector.Monitor`` at scrape
time. Its own module so that prometheus-client (about 2.5 MB of a receiver's
memory) is imported on the first ``/metrics`` request, not at start."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from .collector import LATENCY_BUCKETS, Monitor

__all__ = ["MetricsCollector"]


class MetricsCollector(Collector):
    """Prometheus metric families built from the Monitor at scrape time."""

    def __init__(self, monitor: Monitor) -> None:
        self.m = monitor

    def collect(self) -> Iterator[Any]:
        m, st = self.m, self.m.state
        yield GaugeMetricFamily("fastscp_associations_active", "Associations currently open", value=st.active)
        assoc = CounterMetricFamily("fastscp_associations", "Associations by how they ended "
                                    "(rejected ones never opened)", labels=["outcome"])
        for outcome, n in m.outcomes.items():
            assoc.add_metric([outcome], n)
        yield assoc
        inst = CounterMetricFamily("fastscp_instances_received", "Instances stored",
                                   labels=["modality", "calling_ae"])
        size = CounterMetricFamily("fastscp_bytes_received", "Dataset bytes stored",
                                   labels=["modality", "calling_ae"])
        for (modality, ae), (n, b) in sorted(m.received.items()):
            inst.add_metric([modality, ae], n)
            size.add_metric([modality, ae], b)
        yield inst
        yield size
        fail = CounterMetricFamily("fastscp_store_failures", "C-STORE answers other than success",
                                   labels=["status"])
        for key, n in sorted(m.failures.items()):
            fail.add_metric([key], n)
        yield fail
        buckets: list[tuple[str, float]] = []
        running = 0
        for bound, n in zip(LATENCY_BUCKETS, m.latency_counts[:-1], strict=True):  # the last count is +Inf
            running += n
            buckets.append((repr(bound), running))
        running += m.latency_counts[-1]
        buckets.append(("+Inf", running))
        yield HistogramMetricFamily("fastscp_cstore_latency_seconds",
                                    "C-STORE-RQ received to C-STORE-RSP sent", buckets=buckets,
                                    sum_value=m.latency_sum)
        index = m.index_snapshot()
        if index is not None:
            yield GaugeMetricFamily("fastscp_index_queue_depth", "Rows waiting for the index writer",
                                    value=index["queue_depth"])
            yield GaugeMetricFamily("fastscp_index_batch_seconds", "Duration of the last index batch",
                                    value=index["last_batch_seconds"])
            yield CounterMetricFamily("fastscp_index_batches", "Index batches written",
                                      value=index["batches_written"])
            yield CounterMetricFamily("fastscp_index_rows_written", "Instance rows written to the index",
                                      value=index["rows_written"])
            yield CounterMetricFamily("fastscp_index_errors", "Failed index batch attempts",
                                      value=index["errors"])
        if m.disk is not None:
            yield GaugeMetricFamily("fastscp_disk_free_bytes", "Free bytes on the storage volume",
                                    value=m.disk["free"])
            yield GaugeMetricFamily("fastscp_disk_total_bytes", "Size of the storage volume",
                                    value=m.disk["total"])
        if m.tls_refusals is not None:
            refused = CounterMetricFamily("fastscp_tls_handshakes_refused",
                                          "TLS handshakes the server refused, by reason", labels=["reason"])
            for reason, n in m.tls_refusals.items():
                refused.add_metric([reason], n)
            yield refused
        yield GaugeMetricFamily("fastscp_start_time_seconds", "Unix time the receiver started",
                                value=m.started_wall)

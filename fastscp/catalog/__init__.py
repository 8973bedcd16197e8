"""DuckDB catalog: schema, the batched writer thread, reconcile/reindex,
read-only queries and statistics. See docs/catalog.md."""

from .query import ReadOnlyQueryError, check_readonly, run_readonly_query
from .reconcile import (
    ReconcileReport,
    ReconcileStopped,
    WhileReceiving,
    iter_stored_instances,
    read_header,
    reconcile,
)
from .root import IndexRootMismatch
from .rows import AssociationRecord
from .schema import SCHEMA_VERSION, connect, migrate, schema_version
from .stats import CatalogStats, collect_stats
from .writer import CatalogWriter, WriterCounters

__all__ = [
    "SCHEMA_VERSION", "AssociationRecord", "CatalogStats", "CatalogWriter", "IndexRootMismatch", "ReadOnlyQueryError",
    "ReconcileReport", "ReconcileStopped", "WhileReceiving", "WriterCounters", "check_readonly", "collect_stats",
    "connect", "iter_stored_instances", "migrate", "read_header", "reconcile",
    "run_readonly_query", "schema_version",
]

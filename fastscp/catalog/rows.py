"""InstanceInfo -> catalog rows, and the bulk upsert of a batch of them.

``write_batch`` is the one place rows reach the tables, used by the writer
thread and by reconcile. A batch is deduplicated by key in Python first (last
reception wins; DuckDB's upsert appender keeps the *first* of two rows with the
same key in one flush), so a batch of 1000 instances from one series costs one
series row, one study row and one patient row. All five appenders flush inside
one transaction: a batch is in the catalog whole or not at all.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import duckdb

from ..instance import InstanceInfo
from ..storage.values import parse_da

_UTC = _dt.timezone.utc

# Rows per ``Appender.append_rows`` call. The appender keeps the GIL while
# it converts one call's rows (duckdb 2.0.1: a thread spinning beside a
# 5000-row call ran for about 5 of its 25-40 ms). With 5000 rows in one
# call, the event loop's longest wait during the append measured 7.7 ms; in
# calls of 100 rows, 1.3 ms. The flush and the commit let other threads run.
APPEND_CHUNK = 100

# One table row as the appender takes it: the columns of schema.*_COLUMNS, in order.
Row = tuple[object, ...]


@dataclass(slots=True, frozen=True)
class AssociationRecord:
    """One finished association, as the server reports it."""

    association_id: str
    peer: str
    calling_ae: str
    called_ae: str
    started_at: float  # epoch seconds
    ended_at: float
    instances: int
    bytes: int
    outcome: str  # an events.Outcome value: released, aborted_by_peer, aborted, connection_dropped


@dataclass(slots=True, frozen=True)
class DuplicateRecord:
    """A re-sent copy of a stored instance that the duplicate policy dropped
    (``identical``, ``ignored`` or ``rejected``): the instance's row keeps
    describing the copy in the tree (path, hash, sizes, header) and takes
    this reception's time, AE titles, peer, association and outcome."""

    sop_instance_uid: str
    received_at: float
    calling_ae: str
    called_ae: str
    peer: str
    association_id: str
    outcome: str

    @classmethod
    def of(cls, info: InstanceInfo) -> DuplicateRecord:
        return cls(info.sop_instance_uid, info.received_at, info.calling_ae, info.called_ae,
                   info.peer, info.association_id, info.duplicate)


_UPDATE_DUPLICATE = (
    "UPDATE instances SET received_at = ?, calling_ae = ?, called_ae = ?, peer = ?, "
    "association_id = ?, duplicate = ? WHERE sop_instance_uid = ?"
)


def utc_timestamp(epoch: float | None) -> _dt.datetime | None:
    """Epoch seconds -> naive UTC datetime (what a DuckDB TIMESTAMP holds)."""
    if not epoch:
        return None
    return _dt.datetime.fromtimestamp(epoch, _UTC).replace(tzinfo=None)


def instance_row(info: InstanceInfo, source: str, received: _dt.datetime | None) -> Row:
    return (
        info.sop_instance_uid, info.sop_class_uid, info.series_instance_uid,
        info.study_instance_uid, info.patient_id, info.instance_number, info.echo_numbers,
        info.transfer_syntax_uid, info.rows, info.columns, info.number_of_frames,
        info.specific_character_set, info.path, info.file_size, info.dataset_size,
        info.content_hash, received, info.calling_ae, info.called_ae, info.peer,
        info.association_id, info.duplicate, source, "present", None,
    )


def patient_row(info: InstanceInfo, now: _dt.datetime) -> Row:
    return (info.patient_id, info.patient_name, parse_da(info.patient_birth_date),
            info.patient_sex, now)


def study_row(info: InstanceInfo, now: _dt.datetime) -> Row:
    return (
        info.study_instance_uid, info.patient_id, parse_da(info.study_date), info.study_time,
        info.accession_number, info.study_description, info.referring_physician,
        info.requesting_physician, now, info.study_id,
    )


def series_row(info: InstanceInfo, now: _dt.datetime) -> Row:
    return (
        info.series_instance_uid, info.study_instance_uid, info.modality, info.series_number,
        info.series_description, info.body_part_examined, info.protocol_name,
        info.manufacturer, info.station_name, info.institution_name, now,
    )


def association_row(rec: AssociationRecord) -> Row:
    return (
        rec.association_id, rec.peer, rec.calling_ae, rec.called_ae,
        utc_timestamp(rec.started_at), utc_timestamp(rec.ended_at), rec.instances,
        rec.bytes, rec.outcome,
    )


class BatchWriter:
    """Holds the upsert appenders of one connection and writes batches with them.

    Appenders resolve their table once, so they are made once per connection
    and remade (``reset``) after the connection is replaced.
    """

    def __init__(self, conn: duckdb.DuckDBPyConnection) -> None:
        self.conn = conn
        self._appenders: dict[str, duckdb.Appender] = {}

    def _appender(self, table: str) -> duckdb.Appender:
        app = self._appenders.get(table)
        if app is None:
            app = self.conn.appender(table, action="upsert")
            self._appenders[table] = app
        return app

    def write(
        self,
        instances: Sequence[InstanceInfo],
        associations: Sequence[AssociationRecord] = (),
        source: str = "received",
        duplicates: Sequence[DuplicateRecord] = (),
    ) -> None:
        """Upsert one batch in one transaction; on error nothing is written
        and the exception propagates (the caller keeps the batch to retry)."""
        now = _dt.datetime.now(_UTC).replace(tzinfo=None)
        inst: dict[str, Row] = {}
        patients: dict[str, Row] = {}
        studies: dict[str, Row] = {}
        series: dict[str, Row] = {}
        for info in instances:
            inst[info.sop_instance_uid] = instance_row(info, source, utc_timestamp(info.received_at))
            patients[info.patient_id] = patient_row(info, now)
            if info.study_instance_uid:
                studies[info.study_instance_uid] = study_row(info, now)
            if info.series_instance_uid:
                series[info.series_instance_uid] = series_row(info, now)
        assoc = {rec.association_id: association_row(rec) for rec in associations}
        work: list[tuple[str, Iterable[Row]]] = [
            ("patients", patients.values()), ("studies", studies.values()),
            ("series", series.values()), ("instances", inst.values()),
            ("associations", assoc.values()),
        ]
        self.conn.begin()
        try:
            for table, rows in work:
                if not rows:
                    continue
                app = self._appender(table)
                app.clear()
                pending = list(rows)
                for start in range(0, len(pending), APPEND_CHUNK):
                    app.append_rows(pending[start:start + APPEND_CHUNK])
                app.flush()
            if duplicates:  # after the appends: a re-send may follow its first copy in one batch
                self.conn.executemany(_UPDATE_DUPLICATE, [
                    (utc_timestamp(d.received_at), d.calling_ae, d.called_ae, d.peer, d.association_id,
                     d.outcome, d.sop_instance_uid) for d in duplicates])
            self.conn.commit()
        except BaseException:
            for app in self._appenders.values():
                try:
                    app.clear()
                except duckdb.Error:
                    pass
            try:
                self.conn.rollback()
            except duckdb.Error:
                pass
            raise

"""InstanceInfo -> catalog rows, and the bulk upsert of a batch of them.

``BatchWriter.write`` is the one place rows reach the tables, used by the
writer thread and by reconcile. A batch is deduplicated by key in Python first
(last reception wins; DuckDB's upsert appender keeps the *first* of two rows
with the same key in one flush), so a batch of 1000 instances from one series
costs one series row, one study row and one patient row. All appenders flush
inside one transaction, with the refresh of the touched studies' row in
``study_stats``: a batch is in the catalog whole or not at all.

Patient, study, series and instance rows go through plain appenders:
DuckDB's upsert appender checks every row for a conflict (3 times the cost
per row of a plain append at 1 M rows, growing with the index) and replaced
an existing row at about 2 ms a row at 5 M. A row that replaces one is
deleted first (found by its key) and appended anew: the patients, studies
and series whose key the index has (looked up by key), and the instances
the receiver stored again (``duplicate`` set). An instance whose UID the
receiver found new (``duplicate == ""``) is only appended. A primary key
still refuses a key that is there after all (a re-send of an instance whose
file went missing, a race with reconcile): the batch is then rolled back and
written again with every key of it deleted first (``fallbacks``).
Associations keep the upsert appender (a handful a batch).
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass

import duckdb

from ..instance import InstanceInfo
from ..storage.values import parse_da
from . import schema

_UTC = _dt.timezone.utc
_EPOCH = _dt.datetime(1970, 1, 1)

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
    """Epoch seconds -> naive UTC datetime (what a DuckDB TIMESTAMP holds):
    the epoch plus a timedelta, the value ``fromtimestamp(epoch, UTC)``
    gives without its time zone (both round to the microsecond, half to
    even) in half the time; the writer makes one per instance row."""
    if not epoch:
        return None
    return _EPOCH + _dt.timedelta(seconds=epoch)


def instance_row(info: InstanceInfo, source: str, received: _dt.datetime | None) -> Row:
    return (
        info.sop_instance_uid, info.sop_class_uid, info.series_instance_uid,
        info.study_instance_uid, info.patient_id, info.instance_number, info.echo_numbers,
        info.transfer_syntax_uid, info.rows, info.columns, info.number_of_frames,
        info.specific_character_set, info.path, info.file_size, info.dataset_size,
        info.content_hash, received, info.calling_ae, info.called_ae, info.peer,
        info.association_id, info.duplicate, source, "present", None, info.modality,
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


def _in_list(n: int) -> str:
    # an IN list of parameters: DuckDB looks each up in the key index (ART);
    # ``= ANY(?)`` with a list parameter became a hash join over every row
    return ", ".join("?" * n)


def _chunks(keys: Collection[str], size: int = 500) -> Iterator[list[str]]:
    """``keys`` in lists of at most ``size``: one IN list of parameters each."""
    todo = list(keys)
    for start in range(0, len(todo), size):
        yield todo[start:start + size]


def refresh_study_stats(conn: duckdb.DuckDBPyConnection, studies: Collection[str] | None) -> None:
    """Recompute the ``study_stats`` rows of ``studies`` (None: of every
    study) from ``instances``, in the caller's transaction. A study with no
    instance row left has no ``study_stats`` row (the view shows zeros)."""
    if studies is None:
        conn.execute("DELETE FROM study_stats")
        conn.execute("INSERT INTO study_stats " + schema.STUDY_STATS_SELECT.format(where="true"))
        return
    for part in _chunks(studies):
        marks = _in_list(len(part))
        conn.execute(f"DELETE FROM study_stats WHERE study_instance_uid IN ({marks})", part)
        conn.execute("INSERT INTO study_stats " + schema.STUDY_STATS_SELECT.format(
            where=f"study_instance_uid IN ({marks})"), part)


def refresh_study_stats_in(conn: duckdb.DuckDBPyConnection, studies_sql: str, params: Sequence[object] = ()) -> None:
    """``refresh_study_stats`` for the studies ``studies_sql`` (a query of one
    column of Study Instance UIDs) gives; for reconcile's bulk updates."""
    conn.execute(f"DELETE FROM study_stats WHERE study_instance_uid IN ({studies_sql})", list(params))
    conn.execute("INSERT INTO study_stats " + schema.STUDY_STATS_SELECT.format(
        where=f"study_instance_uid IN ({studies_sql})"), list(params))


def studies_of(conn: duckdb.DuckDBPyConnection, uids: Collection[str]) -> set[str]:
    """The studies the instance rows of ``uids`` belong to now."""
    found: set[str] = set()
    for part in _chunks(uids):
        found.update(str(r[0]) for r in conn.execute(
            f"SELECT DISTINCT study_instance_uid FROM instances WHERE sop_instance_uid IN ({_in_list(len(part))}) "
            "AND study_instance_uid IS NOT NULL", part).fetchall())
    return found


def _series_studies(conn: duckdb.DuckDBPyConnection, series: Collection[str]) -> dict[str, str]:
    """series UID -> its study, for the series of ``series`` the index has a row of."""
    found: dict[str, str] = {}
    for part in _chunks(series):
        found.update((str(a), str(b)) for a, b in conn.execute(
            f"SELECT series_instance_uid, study_instance_uid FROM series "
            f"WHERE series_instance_uid IN ({_in_list(len(part))})", part).fetchall())
    return found


_DELTA_TABLE = """CREATE TEMP TABLE IF NOT EXISTS study_stats_delta (
    study_instance_uid VARCHAR, instance_count BIGINT, series_count BIGINT, bytes HUGEINT,
    first_received_at TIMESTAMP, last_received_at TIMESTAMP)"""
_APPLY_DELTA = """
    UPDATE study_stats SET instance_count = study_stats.instance_count + d.instance_count,
           series_count = study_stats.series_count + d.series_count, bytes = study_stats.bytes + d.bytes,
           first_received_at = least(study_stats.first_received_at, d.first_received_at),
           last_received_at = greatest(study_stats.last_received_at, d.last_received_at)
    FROM temp.study_stats_delta d WHERE study_stats.study_instance_uid = d.study_instance_uid"""
_INSERT_DELTA = """
    INSERT INTO study_stats SELECT d.*, 0 FROM temp.study_stats_delta d
    WHERE NOT EXISTS (SELECT 1 FROM study_stats t WHERE t.study_instance_uid = d.study_instance_uid)"""


# the key of each table a batch writes
_KEYS = {"patients": "patient_id", "studies": "study_instance_uid", "series": "series_instance_uid",
         "instances": "sop_instance_uid"}


def _delete_keys(conn: duckdb.DuckDBPyConnection, table: str, keys: Collection[str]) -> None:
    """Delete the rows of ``keys`` from ``table``, found through its key
    index (250 instance rows of a 5 M-row index: 22 ms to find and delete
    before they are appended again; the upsert appender took 503 ms to
    replace them)."""
    column = _KEYS[table]
    for part in _chunks(keys):
        found = [r[0] for r in conn.execute(
            f"SELECT rowid FROM {table} WHERE {column} IN ({_in_list(len(part))})", part).fetchall()]
        if found:
            conn.execute(f"DELETE FROM {table} WHERE rowid IN ({_in_list(len(found))})", found)


def _existing_keys(conn: duckdb.DuckDBPyConnection, table: str, keys: Collection[str]) -> set[str]:
    """The keys of ``keys`` that ``table`` has a row of."""
    column = _KEYS[table]
    found: set[str] = set()
    for part in _chunks(keys):
        found.update(str(r[0]) for r in conn.execute(
            f"SELECT {column} FROM {table} WHERE {column} IN ({_in_list(len(part))})", part).fetchall())
    return found


class _StudyDelta:
    """What a batch's new instance rows add to one study's ``study_stats`` row."""

    __slots__ = ("bytes", "count", "first", "last", "series")

    def __init__(self) -> None:
        self.count = 0
        self.bytes = 0
        self.first: _dt.datetime | None = None
        self.last: _dt.datetime | None = None
        self.series: set[str] = set()


def association_row(rec: AssociationRecord) -> Row:
    return (
        rec.association_id, rec.peer, rec.calling_ae, rec.called_ae,
        utc_timestamp(rec.started_at), utc_timestamp(rec.ended_at), rec.instances,
        rec.bytes, rec.outcome,
    )


class BatchWriter:
    """Holds the appenders of one connection and writes batches with them.

    Appenders resolve their table once, so they are made once per connection
    and remade (``reset``) after the connection is replaced.
    """

    def __init__(self, conn: duckdb.DuckDBPyConnection) -> None:
        self.conn = conn
        self._appenders: dict[tuple[str, bool], duckdb.Appender] = {}
        self.fallbacks = 0  # batches written again with upserts only (a "new" UID was there)

    def _study_changes(self, fresh: dict[str, Row], again: dict[str, Row], duplicates: Sequence[DuplicateRecord]
                       ) -> tuple[set[str], dict[str, _StudyDelta], dict[str, str]]:
        """How the batch changes ``study_stats``, read before it is written:
        the studies to recount from ``instances`` (those of replaced and
        re-sent rows, before and after), and what the new rows add to the
        others (counted without reading their instance rows, which would cost
        as much as the study is large)."""
        recount = studies_of(self.conn, again.keys())
        recount |= studies_of(self.conn, {d.sop_instance_uid for d in duplicates})
        recount.update(str(row[3]) for row in again.values() if row[3])
        known_series = _series_studies(self.conn, {str(row[2]) for row in (*fresh.values(), *again.values())
                                                   if row[2]})
        deltas: dict[str, _StudyDelta] = {}
        for row in fresh.values():
            series, study = row[2], row[3]
            if not study or study in recount:
                continue
            if not series or known_series.get(str(series), study) != study:
                # no series UID (counted as a value), or a series the index
                # has under another study: count it the long way
                recount.add(str(study))
                continue
            d = deltas.get(str(study))
            if d is None:
                d = deltas[str(study)] = _StudyDelta()
            d.count += 1
            size = row[13]
            d.bytes += size if isinstance(size, int) else 0
            received = row[16]
            if isinstance(received, _dt.datetime):
                d.first = received if d.first is None or received < d.first else d.first
                d.last = received if d.last is None or received > d.last else d.last
            if series not in known_series:
                d.series.add(str(series))
        for study in recount:
            deltas.pop(study, None)
        return recount, deltas, known_series

    def _appender(self, table: str, upsert: bool = True) -> duckdb.Appender:
        app = self._appenders.get((table, upsert))
        if app is None:
            app = self.conn.appender(table, action="upsert") if upsert else self.conn.appender(table)
            self._appenders[(table, upsert)] = app
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
        try:
            self._write(instances, associations, source, duplicates, plain=True)
        except duckdb.ConstraintException:
            # a UID the receiver took for new is in the index (its file went
            # missing and came again, or reconcile wrote it meanwhile)
            self.fallbacks += 1
            self._write(instances, associations, source, duplicates, plain=False)

    def _write(self, instances: Sequence[InstanceInfo], associations: Sequence[AssociationRecord], source: str,
               duplicates: Sequence[DuplicateRecord], plain: bool) -> None:
        now = _dt.datetime.now(_UTC).replace(tzinfo=None)
        fresh: dict[str, Row] = {}
        again: dict[str, Row] = {}
        # the last instance of each patient, study and series gives its row
        # (as a later batch's would): made once per key, not per instance
        last_patient: dict[str, InstanceInfo] = {}
        last_study: dict[str, InstanceInfo] = {}
        last_series: dict[str, InstanceInfo] = {}
        for info in instances:
            uid = info.sop_instance_uid
            row = instance_row(info, source, utc_timestamp(info.received_at))
            if plain and not info.duplicate:
                again.pop(uid, None)
                fresh[uid] = row
            else:
                fresh.pop(uid, None)
                again[uid] = row
            last_patient[info.patient_id] = info
            if info.study_instance_uid:
                last_study[info.study_instance_uid] = info
            if info.series_instance_uid:
                last_series[info.series_instance_uid] = info
        patients = {key: patient_row(info, now) for key, info in last_patient.items()}
        studies = {key: study_row(info, now) for key, info in last_study.items()}
        series = {key: series_row(info, now) for key, info in last_series.items()}
        assoc = {rec.association_id: association_row(rec) for rec in associations}
        work: list[tuple[str, bool, Iterable[Row]]] = [
            ("patients", False, patients.values()), ("studies", False, studies.values()),
            ("series", False, series.values()),
            ("instances", False, [*again.values(), *fresh.values()]), ("associations", True, assoc.values()),
        ]
        self.conn.begin()
        try:
            recount, deltas, known_series = self._study_changes(fresh, again, duplicates)
            # rows replaced: deleted by key here, appended again below (in
            # the fallback, every key of the batch is deleted)
            _delete_keys(self.conn, "instances", again.keys())
            looked_up: tuple[tuple[str, dict[str, Row], Collection[str] | None], ...] = (
                ("patients", patients, None), ("studies", studies, None), ("series", series, known_series.keys()))
            for table, keyed, known in looked_up:
                if plain:
                    there = _existing_keys(self.conn, table, keyed.keys()) if known is None else known
                    _delete_keys(self.conn, table, [k for k in keyed if k in there])
                else:
                    _delete_keys(self.conn, table, keyed.keys())
            for table, upsert, rows in work:
                if not rows:
                    continue
                app = self._appender(table, upsert)
                app.clear()
                pending = list(rows)
                for start in range(0, len(pending), APPEND_CHUNK):
                    app.append_rows(pending[start:start + APPEND_CHUNK])
                app.flush()
            if duplicates:  # after the appends: a re-send may follow its first copy in one batch
                self.conn.executemany(_UPDATE_DUPLICATE, [
                    (utc_timestamp(d.received_at), d.calling_ae, d.called_ae, d.peer, d.association_id,
                     d.outcome, d.sop_instance_uid) for d in duplicates])
            if deltas:
                self.conn.execute(_DELTA_TABLE)
                self.conn.execute("DELETE FROM temp.study_stats_delta")
                app = self._appender("temp.study_stats_delta", False)
                app.clear()
                app.append_rows([(study, d.count, len(d.series), d.bytes, d.first, d.last)
                                 for study, d in deltas.items()])
                app.flush()
                self.conn.execute(_APPLY_DELTA)
                self.conn.execute(_INSERT_DELTA)
            refresh_study_stats(self.conn, recount)
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

"""Catalog schema: DuckDB tables for patients, studies, series, instances and
associations, versioned and migrated forward.

``catalog_meta`` holds one row with the schema version. ``MIGRATIONS[i]``
brings a database from version ``i`` to ``i + 1``; ``migrate`` runs the ones a
database lacks, each in its own transaction, so a crash mid-migration leaves the
database at the last complete version. Never edit a released migration: add a
new one.

Timestamps are ``TIMESTAMP`` holding UTC (naive): DuckDB's ``TIMESTAMPTZ``
needs pytz on the Python side for every value converted, and a receiver has
no use for a per-row time zone. Dates from DICOM DA values are ``DATE`` (NULL
when the value is absent or malformed).

Rows are replaced whole on conflict (DuckDB appender ``action='upsert'``): the
latest reception of an instance, and the latest header seen for a patient,
study or series, wins. Since v5 the per-study aggregates of ``study_summary``
(instance and series counts, bytes, first/last received, missing count) are
stored in ``study_stats``, recomputed from ``instances`` for the studies each
write touches (``rows.refresh_study_stats``), in the write's transaction;
``series_summary`` still computes its own.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path

import duckdb

from ..pids import running
from . import filtersave

log = logging.getLogger(__name__)

SCHEMA_VERSION = 5

# Column order of each table as the writer appends rows (must match the DDL).
PATIENT_COLUMNS = ("patient_id", "patient_name", "birth_date", "sex", "updated_at")
STUDY_COLUMNS = (
    "study_instance_uid", "patient_id", "study_date", "study_time", "accession_number",
    "study_description", "referring_physician", "requesting_physician", "updated_at",
    "study_id",  # v4
)
SERIES_COLUMNS = (
    "series_instance_uid", "study_instance_uid", "modality", "series_number",
    "series_description", "body_part_examined", "protocol_name", "manufacturer",
    "station_name", "institution_name", "updated_at",
)
INSTANCE_COLUMNS = (
    "sop_instance_uid", "sop_class_uid", "series_instance_uid", "study_instance_uid",
    "patient_id", "instance_number", "echo_numbers", "transfer_syntax_uid", "rows",
    "columns", "number_of_frames", "specific_character_set", "path", "file_size",
    "dataset_size", "content_hash", "received_at", "calling_ae", "called_ae", "peer",
    "association_id", "duplicate", "source", "status", "missing_since",
    "modality",  # v5
)
ASSOCIATION_COLUMNS = (
    "association_id", "peer", "calling_ae", "called_ae", "started_at", "ended_at",
    "instances", "bytes", "outcome",
)


def _v1(conn: duckdb.DuckDBPyConnection) -> None:
    """The first released schema: the four DICOM levels."""
    conn.execute("""
        CREATE TABLE patients (
            patient_id   VARCHAR PRIMARY KEY,
            patient_name VARCHAR,
            birth_date   DATE,
            sex          VARCHAR,
            updated_at   TIMESTAMP
        )""")
    conn.execute("""
        CREATE TABLE studies (
            study_instance_uid   VARCHAR PRIMARY KEY,
            patient_id           VARCHAR,
            study_date           DATE,
            study_time           VARCHAR,
            accession_number     VARCHAR,
            study_description    VARCHAR,
            referring_physician  VARCHAR,
            requesting_physician VARCHAR,
            updated_at           TIMESTAMP
        )""")
    conn.execute("""
        CREATE TABLE series (
            series_instance_uid VARCHAR PRIMARY KEY,
            study_instance_uid  VARCHAR,
            modality            VARCHAR,
            series_number       INTEGER,
            series_description  VARCHAR,
            body_part_examined  VARCHAR,
            protocol_name       VARCHAR,
            manufacturer        VARCHAR,
            station_name        VARCHAR,
            institution_name    VARCHAR,
            updated_at          TIMESTAMP
        )""")
    conn.execute("""
        CREATE TABLE instances (
            sop_instance_uid       VARCHAR PRIMARY KEY,
            sop_class_uid          VARCHAR,
            series_instance_uid    VARCHAR,
            study_instance_uid     VARCHAR,
            patient_id             VARCHAR,
            instance_number        INTEGER,
            echo_numbers           VARCHAR,
            transfer_syntax_uid    VARCHAR,
            "rows"                 INTEGER,
            "columns"              INTEGER,
            number_of_frames       INTEGER,
            specific_character_set VARCHAR,
            path                   VARCHAR,
            file_size              BIGINT,
            dataset_size           BIGINT,
            content_hash           VARCHAR,
            received_at            TIMESTAMP,
            calling_ae             VARCHAR,
            called_ae              VARCHAR,
            peer                   VARCHAR,
            association_id         VARCHAR,
            duplicate              VARCHAR
        )""")


def _v2(conn: duckdb.DuckDBPyConnection) -> None:
    """Reconcile and monitoring: where a row came from, whether its file is
    still there, one row per association, and the convenience views."""
    conn.execute("ALTER TABLE instances ADD COLUMN source VARCHAR DEFAULT 'received'")
    conn.execute("ALTER TABLE instances ADD COLUMN status VARCHAR DEFAULT 'present'")
    conn.execute("ALTER TABLE instances ADD COLUMN missing_since TIMESTAMP")
    # Rows written by v1 have NULL in the new columns; give them the defaults.
    conn.execute("UPDATE instances SET source = 'received' WHERE source IS NULL")
    conn.execute("UPDATE instances SET status = 'present' WHERE status IS NULL")
    conn.execute("""
        CREATE TABLE associations (
            association_id VARCHAR PRIMARY KEY,
            peer           VARCHAR,
            calling_ae     VARCHAR,
            called_ae      VARCHAR,
            started_at     TIMESTAMP,
            ended_at       TIMESTAMP,
            instances      INTEGER,
            bytes          BIGINT,
            outcome        VARCHAR
        )""")
    conn.execute("CREATE INDEX instances_series ON instances (series_instance_uid)")
    conn.execute("""
        CREATE VIEW study_summary AS
        SELECT s.*, p.patient_name,
               count(i.sop_instance_uid)              AS instance_count,
               count(DISTINCT i.series_instance_uid)  AS series_count,
               coalesce(sum(i.file_size), 0)          AS bytes,
               min(i.received_at)                     AS first_received_at,
               max(i.received_at)                     AS last_received_at,
               count(*) FILTER (WHERE i.status = 'missing') AS missing_count
        FROM studies s
        LEFT JOIN patients p USING (patient_id)
        LEFT JOIN instances i USING (study_instance_uid)
        GROUP BY ALL""")
    conn.execute("""
        CREATE VIEW series_summary AS
        SELECT se.*,
               count(i.sop_instance_uid)  AS instance_count,
               coalesce(sum(i.file_size), 0) AS bytes,
               min(i.instance_number)     AS min_instance_number,
               max(i.instance_number)     AS max_instance_number,
               count(*) FILTER (WHERE i.status = 'missing') AS missing_count,
               min(i.received_at)         AS first_received_at,
               max(i.received_at)         AS last_received_at
        FROM series se
        LEFT JOIN instances i USING (series_instance_uid)
        GROUP BY ALL""")


def _v3(conn: duckdb.DuckDBPyConnection) -> None:
    """The storage root the index describes (``catalog/root.py``): NULL
    until a server start or ``fastscp reindex`` records it."""
    conn.execute("ALTER TABLE catalog_meta ADD COLUMN storage_root VARCHAR")


def _v4(conn: duckdb.DuckDBPyConnection) -> None:
    """Query/Retrieve (C-FIND, later QIDO-RS): Study ID (0020,0010), a
    Required key at STUDY level (PS3.4 C.6.1.1.3, C.6.2.1.2) the index did
    not hold, and the indexes the levels' lookups use.

    ``studies.study_id`` is NULL for rows written before v4 and "" or the
    value for rows written since: NULL is the backfill marker. The next
    reconcile (``fastscp reindex``, or a server start) re-reads one present
    file of each such study and fills it in (``reconcile._backfill``).
    """
    conn.execute("ALTER TABLE studies ADD COLUMN study_id VARCHAR")
    # Point lookups of the C-FIND levels (DuckDB's ART indexes serve
    # equality and IN-list filters; ranges use the row groups' zone maps).
    conn.execute("CREATE INDEX studies_patient ON studies (patient_id)")
    conn.execute("CREATE INDEX series_study ON series (study_instance_uid)")
    conn.execute("CREATE INDEX instances_study ON instances (study_instance_uid)")
    row = conn.execute("SELECT count(*) FROM studies").fetchone()
    pending = int(row[0]) if row else 0
    if pending:
        log.warning(
            "index schema v4: added studies.study_id (Study ID, a C-FIND key); the %d "
            "existing studies have it NULL until the next reconcile re-reads one file of "
            "each: run `fastscp reindex` (a server start does it too)", pending)


# The per-study aggregates of study_summary, for the studies in ``?`` (a list
# of Study Instance UIDs) or, with ``true``, all of them.
STUDY_STATS_SELECT = """
    SELECT study_instance_uid,
           count(sop_instance_uid)                    AS instance_count,
           count(DISTINCT series_instance_uid)        AS series_count,
           coalesce(sum(file_size), 0)                AS bytes,
           min(received_at)                           AS first_received_at,
           max(received_at)                           AS last_received_at,
           count(*) FILTER (WHERE status = 'missing') AS missing_count
    FROM instances WHERE study_instance_uid IS NOT NULL AND ({where}) GROUP BY study_instance_uid"""


def _v5(conn: duckdb.DuckDBPyConnection) -> None:
    """An index that does not slow down as it grows (issue 23): the view
    ``study_summary`` aggregated every instance row of the index on each
    query (700 ms for the 20 latest studies at 8 M rows), and the status
    page's trend joined every recent instance with its series (152 ms).

    - ``study_stats``: one row per study with instances, the aggregates the
      view computed; the writer and reconcile recompute the rows of the
      studies they touch, in the same transaction. No key index: it is
      small (a row per study) and is replaced in place.
    - ``instances.modality``: the Modality of the instance's header (as its
      series row holds), so counts per modality need no join.
    """
    conn.execute("ALTER TABLE instances ADD COLUMN modality VARCHAR")
    row = conn.execute("SELECT count(*) FROM instances").fetchone()
    rows = int(row[0]) if row else 0
    if rows:
        log.warning("index schema v5: storing the per-study counts and each instance's modality for "
                    "%d instance rows (once)", rows)
    conn.execute("""UPDATE instances SET modality = s.modality FROM series s
                    WHERE s.series_instance_uid = instances.series_instance_uid""")
    conn.execute("""
        CREATE TABLE study_stats (
            study_instance_uid VARCHAR,
            instance_count     BIGINT,
            series_count       BIGINT,
            bytes              HUGEINT,
            first_received_at  TIMESTAMP,
            last_received_at   TIMESTAMP,
            missing_count      BIGINT
        )""")
    conn.execute("INSERT INTO study_stats " + STUDY_STATS_SELECT.format(where="true"))
    conn.execute("""
        CREATE OR REPLACE VIEW study_summary AS
        SELECT s.*, p.patient_name,
               coalesce(t.instance_count, 0) AS instance_count,
               coalesce(t.series_count, 0)   AS series_count,
               coalesce(t.bytes, 0)          AS bytes,
               t.first_received_at,
               t.last_received_at,
               coalesce(t.missing_count, 0)  AS missing_count
        FROM studies s
        LEFT JOIN patients p USING (patient_id)
        LEFT JOIN study_stats t USING (study_instance_uid)""")


MIGRATIONS: tuple[Callable[[duckdb.DuckDBPyConnection], None], ...] = (_v1, _v2, _v3, _v4, _v5)
assert len(MIGRATIONS) == SCHEMA_VERSION


def schema_version(conn: duckdb.DuckDBPyConnection) -> int:
    """Version of the catalog in ``conn``; 0 for an empty database."""
    found = conn.execute(
        "SELECT count(*) FROM information_schema.tables "
        "WHERE table_schema = 'main' AND table_name = 'catalog_meta'"
    ).fetchone()
    if not found or not found[0]:
        return 0
    row = conn.execute("SELECT schema_version FROM catalog_meta").fetchone()
    return int(row[0]) if row else 0


def migrate(conn: duckdb.DuckDBPyConnection, target: int = SCHEMA_VERSION) -> int:
    """Bring the catalog up to ``target``; returns the version found before.

    Refuses a database newer than this code knows: opening it would risk
    writing rows in a layout the newer code does not expect.
    """
    start = schema_version(conn)
    if start > SCHEMA_VERSION:
        raise RuntimeError(
            f"index database has schema version {start}, this fastscp knows up to "
            f"{SCHEMA_VERSION}: upgrade fastscp"
        )
    for version in range(start, target):
        conn.begin()
        try:
            if version == 0:
                conn.execute("CREATE TABLE catalog_meta (schema_version INTEGER NOT NULL)")
                conn.execute("INSERT INTO catalog_meta VALUES (0)")
            MIGRATIONS[version](conn)
            conn.execute("UPDATE catalog_meta SET schema_version = ?", [version + 1])
            conn.commit()
        except BaseException:
            conn.rollback()
            raise
    return start


# WAL size at which a commit folds the WAL into the file (DuckDB's default is
# 16 MiB). A checkpoint writes the instances' key index (ART) whole, so its
# cost grows with the index.
CHECKPOINT_THRESHOLD = "256MB"


def connect(path: str | Path, *, read_only: bool = False,
            allowed_paths: Sequence[str | Path] = (), memory_limit: int | None = None) -> duckdb.DuckDBPyConnection:
    """Open the index database, migrating it forward unless ``read_only``,
    locked down (``lock_down``): SQL on it reaches no file but the index, the
    index's export directory and ``allowed_paths``. ``memory_limit`` (bytes)
    bounds the DuckDB instance's buffer-managed memory (None: DuckDB's
    default, 80% of RAM); it holds for every connection this process then
    opens to the file.

    A read-only open of a database that is missing or older than this code
    fails with a message rather than writing to it.
    """
    path = Path(path)
    limit = {} if memory_limit is None else {"memory_limit": f"{memory_limit}B"}
    if read_only:
        if not path.exists():
            raise FileNotFoundError(f"index database {path} does not exist")
        conn = duckdb.connect(str(path), read_only=True, config={**limit, **LOCKED_OPEN_CONFIG})
        lock_down(conn, path, allowed_paths)
        version = schema_version(conn)
        if version != SCHEMA_VERSION:
            conn.close()
            raise RuntimeError(
                f"index database {path} has schema version {version}, expected "
                f"{SCHEMA_VERSION}: open it once read-write (e.g. fastscp reindex) to migrate"
            )
        return conn
    if path.parent != Path(""):
        path.parent.mkdir(parents=True, exist_ok=True)
    # a filter kept by the last clean stop of a receiver stops describing
    # the index once it is open for writing (catalog/filtersave.py)
    filtersave.discard(path)
    remove_stale_temp_files(path)
    conn = duckdb.connect(str(path), config={"threads": os.environ.get("FASTSCP_DUCKDB_THREADS", "1"),
                                             # DuckDB starts 8 "async" threads (remote
                                             # I/O); a local index never uses them
                                             "async_threads": 0,
                                             "checkpoint_threshold": CHECKPOINT_THRESHOLD,
                                             **limit, **LOCKED_OPEN_CONFIG})
    try:
        lock_down(conn, path, allowed_paths)
        migrate(conn)
    except BaseException:
        conn.close()
        raise
    return conn


# ---- what SQL on the index may reach ---------------------------------------------------
# The status endpoint runs people's SQL on a cursor of the index writer's
# connection, so the whole DuckDB instance is locked down, by DuckDB's own
# settings rather than a list of function names: no file, network or
# extension access but the paths below, and no setting can change afterwards.

# Given at open (they must hold before anything could load an extension).
LOCKED_OPEN_CONFIG: dict[str, str | bool | int] = {
    "autoinstall_known_extensions": False,
    "autoload_known_extensions": False,
}


# DuckDB's files in its temporary directory (by default <index>.tmp/, where
# a query needing more than memory_limit spills) name the process that
# made them: duckdb_temp_<pid>_...
_TEMP_FILE = re.compile(r"duckdb_temp_(\d+)_")


def remove_stale_temp_files(path: str | Path) -> int:
    """Remove what DuckDB left in ``<path>.tmp/`` for processes that no
    longer run: a process killed while a query spilled leaves its files
    there, and no later open of the database removes them (measured with
    DuckDB 2.0.1: 123 MB left by a kill -9, still there after the next
    open and close). Files of running processes (this one, or a ``fastscp
    query`` reading the index, which makes this open fail on DuckDB's lock
    anyway) are left alone. Returns the bytes removed; logs what it
    removed."""
    removed = files = 0
    try:
        entries = list(os.scandir(f"{path}.tmp"))
    except (FileNotFoundError, NotADirectoryError):
        return 0
    for entry in entries:
        match = _TEMP_FILE.match(entry.name)
        if match is None or not entry.is_file(follow_symlinks=False):
            continue
        pid = int(match.group(1))
        if running(pid):  # this process, or another reader of the index
            continue
        try:
            size = entry.stat(follow_symlinks=False).st_size
            os.unlink(entry.path)
        except FileNotFoundError:
            continue
        removed += size
        files += 1
    if files:
        log.warning("removed %d temporary file(s), %.1f MB, that DuckDB left in %s.tmp for processes no "
                    "longer running", files, removed / 1e6, path)
    return removed


def export_dir(path: str | Path) -> Path:
    """The one directory the server's SQL may write to and read from:
    ``<index>.export/``, where a Parquet result is written before it is sent
    (DuckDB writes Parquet only to files). Made on first use, mode 0700."""
    p = Path(path).resolve()
    return p.with_name(p.name + ".export")


def lock_down(conn: duckdb.DuckDBPyConnection, path: str | Path,
              allowed_paths: Sequence[str | Path] = ()) -> None:
    """``enable_external_access = false`` with ``allowed_directories`` =
    the export directory and ``allowed_paths`` as given, then
    ``lock_configuration = true``. The settings belong to the DuckDB instance:
    a second connection to a file this process already has open shares the
    locked instance (and its allowed paths), so there is nothing to do."""
    row = conn.execute("SELECT current_setting('lock_configuration')").fetchone()
    if row is not None and row[0]:
        return
    conn.execute("SET allowed_directories = ?", [[str(export_dir(path)) + os.sep]])
    if allowed_paths:
        conn.execute("SET allowed_paths = ?", [[str(Path(p).resolve()) for p in allowed_paths]])
    conn.execute("SET enable_external_access = false")
    conn.execute("SET lock_configuration = true")

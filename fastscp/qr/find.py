"""C-FIND over the catalog: one response identifier per matching row, streamed.

``find(conn, identifier, model)`` is a generator: it parses the identifier
(``matching.parse_identifier``), runs the level's parameterised SELECT and
yields one pydicom Dataset per row as DuckDB hands them over
(``fetchmany``), so the service module can send each Pending response while
the rest is still being read. Between rows it calls ``cancelled()`` and
stops with QueryCancelled (0xFE00) when the requester sent C-CANCEL.
``find_responses`` is the same generator yielding each response as its
elements (``Response``), which the C-FIND service encodes without building
a Dataset (``services.identifiers.encode_response``).

Each response holds exactly the keys the request held (PS3.4 C.4.1.1.3.2):
their values from the index, the derived ones (Number of Patient/Study/
Series Related ..., Modalities and SOP Classes in Study, PS3.4 C.3.4)
computed per fetched chunk of rows with one statement (``_DerivedSql``),
Retrieve AE Title (0008,0054) and Instance Availability (0008,0056) when
asked, keys the index does not hold with no value (sequences as empty
sequences), plus Query/Retrieve Level and, when needed, Specific Character
Set: the request's if it can encode every text value of the response,
otherwise ``ISO_IR 192`` (UTF-8).

``conn`` is a DuckDB connection or cursor the caller gives this query alone
(``CatalogWriter.cursor()`` while the server runs: its own MVCC snapshot).
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import duckdb
from pydicom.charset import convert_encodings
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence

from .errors import OutOfResources, QueryCancelled, QueryError, UnableToProcess
from .matching import (
    ENTITY_ID,
    Query,
    build_sql,
    column_of,
    element_text,
    gone_ids,
    parse_identifier,
)
from .model import (
    INSTANCE_AVAILABILITY,
    KEYS_BY_TAG,
    QUERY_RETRIEVE_LEVEL,
    RETRIEVE_AE_TITLE,
    SPECIFIC_CHARACTER_SET,
    InformationModel,
    Key,
    Level,
    Match,
)
from .statements import execute

FETCH_SIZE = 64  # rows per fetchmany, and per derived-count query

_PATIENT_COUNTS = ("NumberOfPatientRelatedStudies", "NumberOfPatientRelatedSeries",
                   "NumberOfPatientRelatedInstances")
_STUDY_COUNTS = ("NumberOfStudyRelatedSeries", "NumberOfStudyRelatedInstances", "SOPClassesInStudy")
_TEXT_VRS = frozenset({"PN", "SH", "LO", "ST", "LT", "UT", "UC"})


@dataclass(frozen=True, slots=True)
class _Return:
    """One element of the response: from a column, derived, or fixed."""

    tag: int
    vr: str
    key: Key | None  # None: not a key of the index
    column: int = -1  # index in the row; -1 if not read from it


def _never() -> bool:
    return False


def find(
    conn: duckdb.DuckDBPyConnection,
    identifier: Dataset,
    model: InformationModel,
    *,
    relational: bool = False,
    cancelled: Callable[[], bool] = _never,
    retrieve_ae_title: str = "",
    max_matches: int | None = None,
    fetch_size: int = FETCH_SIZE,
) -> Iterator[Dataset]:
    """Yield the response identifiers of a C-FIND request; see the module doc.

    Raises IdentifierError (0xA900) for a bad identifier before the first
    row, UnableToProcess (0xC001) if DuckDB fails, OutOfResources (0xA700)
    when more than ``max_matches`` rows match (after yielding that many),
    QueryCancelled (0xFE00) when ``cancelled()`` turns true.
    """
    responses = find_responses(conn, identifier, model, relational=relational, cancelled=cancelled,
                               retrieve_ae_title=retrieve_ae_title, max_matches=max_matches,
                               fetch_size=fetch_size)
    return (response.dataset() for response in responses)


def find_responses(
    conn: duckdb.DuckDBPyConnection,
    identifier: Dataset,
    model: InformationModel,
    *,
    relational: bool = False,
    cancelled: Callable[[], bool] = _never,
    retrieve_ae_title: str = "",
    max_matches: int | None = None,
    fetch_size: int = FETCH_SIZE,
) -> Iterator[Response]:
    """``find``, yielding each response as its elements (``Response``):
    what the C-FIND service encodes without building a pydicom Dataset
    (``services.identifiers.encode_response``). Same errors, same moment."""
    query = parse_identifier(identifier, model, relational=relational)
    return _run(conn, query, identifier, cancelled, retrieve_ae_title, max_matches, fetch_size)


def _run(conn: duckdb.DuckDBPyConnection, query: Query, identifier: Dataset,
         cancelled: Callable[[], bool], retrieve_ae_title: str, max_matches: int | None,
         fetch_size: int) -> Iterator[Response]:
    level = query.level
    columns: list[str] = []
    returns: list[_Return] = []

    def column_index(expression: str) -> int:
        if expression not in columns:
            columns.append(expression)
        return columns.index(expression)

    wants: set[str] = set()
    for dicom_tag in identifier.keys():  # keys(): iterating a Dataset converts every value
        tag = int(dicom_tag)
        if tag in (SPECIFIC_CHARACTER_SET, QUERY_RETRIEVE_LEVEL) or tag & 0xFFFF == 0:
            continue  # answered below / group lengths
        key = KEYS_BY_TAG.get(tag)
        if key is None or query.model.key_level(key) > level:
            # not converted: an unreadable value in a key we do not match is no error
            vr = identifier.get_item(dicom_tag).VR
            returns.append(_Return(tag, str(vr) if vr else "UN", None))
            continue
        expression = column_of(key, level)
        returns.append(_Return(tag, key.vr, key, column_index(expression) if expression else -1))
        if not expression:
            wants.add(key.keyword)
    ids = {entity: column_index(ENTITY_ID[level][entity]) for entity in Level
           if entity in ENTITY_ID[level] and _needs(entity, wants)}
    if not columns:
        column_index(ENTITY_ID[level][level])
    charset = _Charset(identifier)
    level_text = level.name
    sent = 0
    # The streamed result stays on ``conn``. The queries run between its
    # fetches go to a second cursor, as a new execute on ``conn`` would drop
    # the pending result; once a fetch came back short the result is
    # exhausted and ``conn`` itself serves them (most queries: one fetch).
    aux: duckdb.DuckDBPyConnection | None = None
    try:
        # one scan of the status column; when nothing is missing (the usual
        # case) no entity is gone and no series needs leaving out
        counted = execute(conn, "SELECT count(*) FROM instances WHERE status <> 'present'").fetchone()
        any_missing = bool(counted and counted[0])
        share = 0.0
        if any_missing:  # a separate count: in the same statement it costs every query 1.4 ms more (1M rows)
            total = execute(conn, "SELECT count(*) FROM instances").fetchone()
            share = int(counted[0]) / int(total[0]) if counted and total and total[0] else 1.0
        gone = gone_ids(conn, level, share) if any_missing and level is not Level.IMAGE else []
        derived_sql = _DerivedSql(ids, wants, gone_ids(conn, Level.SERIES, share) if any_missing
                                  and _needs_series(wants) and Level.STUDY in ids else ())
        sql, params = build_sql(query, columns, gone)
        cursor = execute(conn, sql, params)
        while True:
            rows = cursor.fetchmany(fetch_size)
            if not rows:
                return
            derived: _Derived = {}
            if ids:
                side = conn
                if len(rows) == fetch_size:  # more may follow: keep conn's result
                    if aux is None:
                        aux = conn.cursor()
                    side = aux
                derived = derived_sql.run(side, rows)
            for row in rows:
                if cancelled():
                    raise QueryCancelled("C-CANCEL received")
                if max_matches is not None and sent >= max_matches:
                    raise OutOfResources(f"more than {max_matches} matches: narrow the query")
                yield _response(row, returns, derived, ids, level_text, charset, retrieve_ae_title)
                sent += 1
    except QueryError:
        raise
    except duckdb.Error as exc:
        raise UnableToProcess(f"index query failed: {type(exc).__name__}: {exc}") from exc
    finally:
        if aux is not None:
            aux.close()


def _needs(entity: Level, wants: set[str]) -> bool:
    if entity is Level.PATIENT:
        return bool(wants.intersection(_PATIENT_COUNTS))
    if entity is Level.STUDY:
        return bool(wants.intersection(_STUDY_COUNTS)) or "ModalitiesInStudy" in wants
    if entity is Level.SERIES:
        return "NumberOfSeriesRelatedInstances" in wants
    return False


_Derived = dict[str, dict[object, object]]  # keyword -> entity id -> value


def _needs_series(wants: set[str]) -> bool:
    return "ModalitiesInStudy" in wants or "NumberOfStudyRelatedSeries" in wants


class _DerivedSql:
    """The derived keys of a chunk of rows in one statement, counting
    present instances only.

    One ``UNION ALL`` of the parts the request needs, each reading the
    chunk's entities through an indexed column with an IN list of
    constants (DuckDB answers those from its ART index; a join would scan
    the table): instances per patient, study and series (with
    ``count(*) FILTER (WHERE status = 'present')``), and the ``series`` rows
    of each study. A study's instance count alone (no SOP Classes in Study
    asked) is its ``study_stats`` row's ``instance_count - missing_count``,
    which every write to the index keeps in its own transaction
    (docs/catalog.md, v5): one row read instead of the study's instances.
    Its rows are few (one per study and SOP class, one per series) and are
    summed here: DISTINCT and ordered ``list`` aggregates
    cost DuckDB more to plan than the whole lookup. Series counts and
    modalities leave out the series all of whose instances are missing
    (``gone_series``, from ``gone_ids``).
    """

    def __init__(self, ids: dict[Level, int], wants: set[str], gone_series: Sequence[str]) -> None:
        self.ids = ids
        self.gone_series = frozenset(gone_series)
        self.patient = Level.PATIENT in ids
        self.study_instances = Level.STUDY in ids and bool(
            wants.intersection(("NumberOfStudyRelatedInstances", "SOPClassesInStudy")))
        self.study_series = Level.STUDY in ids and _needs_series(wants)
        self.study_classes = "SOPClassesInStudy" in wants
        self.series = Level.SERIES in ids

    def run(self, conn: duckdb.DuckDBPyConnection, rows: Sequence[tuple[object, ...]]) -> _Derived:
        parts: list[str] = []
        params: list[object] = []

        def part(sql: str, entity: Level) -> None:
            keys = sorted({row[self.ids[entity]] for row in rows if row[self.ids[entity]] is not None}, key=str)
            if keys:
                parts.append(sql.format(", ".join("?" * len(keys))))
                params.extend(keys)

        # (part, entity id, text a, text b, count); every value travels as a parameter
        if self.patient:
            part("SELECT 0, x.patient_id, x.study_instance_uid, x.series_instance_uid, count(*) FROM instances x "
                 "WHERE x.status = 'present' AND x.patient_id IN ({}) GROUP BY 2, 3, 4", Level.PATIENT)
        if self.study_instances and self.study_classes:  # by SOP Class: from the instance rows
            part("SELECT 1, x.study_instance_uid, x.sop_class_uid, NULL, "
                 "count(*) FILTER (WHERE x.status = 'present') FROM instances x "
                 "WHERE x.study_instance_uid IN ({}) GROUP BY 2, 3", Level.STUDY)
        elif self.study_instances:  # the count alone: the study's stored counts (a row, not its instances)
            part("SELECT 1, t.study_instance_uid, NULL, NULL, t.instance_count - t.missing_count "
                 "FROM study_stats t WHERE t.study_instance_uid IN ({})", Level.STUDY)
        if self.study_series:
            part("SELECT 2, sx.study_instance_uid, sx.series_instance_uid, sx.modality, NULL FROM series sx "
                 "WHERE sx.study_instance_uid IN ({})", Level.STUDY)
        if self.series:
            part("SELECT 3, x.series_instance_uid, NULL, NULL, count(*) FILTER (WHERE x.status = 'present') "
                 "FROM instances x WHERE x.series_instance_uid IN ({}) GROUP BY 2", Level.SERIES)
        if not parts:
            return {}
        patient_studies: dict[object, set[object]] = {}
        patient_series: dict[object, set[object]] = {}
        patient_instances: dict[object, int] = {}
        study_instances: dict[object, int] = {}
        study_classes: dict[object, set[str]] = {}
        study_series: dict[object, int] = {}
        study_modalities: dict[object, set[str]] = {}
        series_instances: dict[object, object] = {}
        for kind, entity_id, a, b, count in execute(conn, " UNION ALL ".join(parts), params).fetchall():
            if kind == 0:
                if a is not None:
                    patient_studies.setdefault(entity_id, set()).add(a)
                if b is not None:
                    patient_series.setdefault(entity_id, set()).add(b)
                patient_instances[entity_id] = patient_instances.get(entity_id, 0) + int(count)
            elif kind == 1:
                study_instances[entity_id] = study_instances.get(entity_id, 0) + int(count)
                classes = study_classes.setdefault(entity_id, set())
                if count and a is not None:
                    classes.add(a)
            elif kind == 2:
                if a in self.gone_series:
                    continue
                study_series[entity_id] = study_series.get(entity_id, 0) + 1
                modalities = study_modalities.setdefault(entity_id, set())
                if b:
                    modalities.add(b)
            else:
                series_instances[entity_id] = int(count)
        out: _Derived = {}
        if self.patient:
            out["NumberOfPatientRelatedStudies"] = {k: len(v) for k, v in patient_studies.items()}
            out["NumberOfPatientRelatedSeries"] = {k: len(v) for k, v in patient_series.items()}
            out["NumberOfPatientRelatedInstances"] = dict(patient_instances)
        if self.study_instances:
            out["NumberOfStudyRelatedInstances"] = dict(study_instances)
            out["SOPClassesInStudy"] = {k: sorted(v) for k, v in study_classes.items()}
        if self.study_series:
            out["NumberOfStudyRelatedSeries"] = dict(study_series)
            out["ModalitiesInStudy"] = {k: sorted(v) for k, v in study_modalities.items()}
        if self.series:
            out["NumberOfSeriesRelatedInstances"] = series_instances
        return out


@dataclass(frozen=True, slots=True)
class Response:
    """One response identifier as its elements, in the request's order plus
    Query/Retrieve Level and Specific Character Set: ``(tag, VR, value)``,
    the value None (empty), text, an int, a list of texts, or an empty
    pydicom Sequence. ``dataset()`` is the pydicom Dataset ``find`` yields."""

    elements: tuple[tuple[int, str, object], ...]
    charset: str | list[str] | None  # the value of (0008,0005) among the elements, if any

    def dataset(self) -> Dataset:
        ds = Dataset()
        for tag, vr, value in self.elements:
            ds.add_new(tag, vr, value)
        return ds


def _response(row: tuple[object, ...], returns: list[_Return], derived: _Derived,
              ids: dict[Level, int], level_text: str, charset: _Charset,
              retrieve_ae_title: str) -> Response:
    elements: list[tuple[int, str, object]] = []
    texts: list[str] = []
    for ret in returns:
        key = ret.key
        value: object = None
        if key is None:
            if ret.tag == RETRIEVE_AE_TITLE:
                value = retrieve_ae_title or None
            elif ret.tag == INSTANCE_AVAILABILITY:
                value = "ONLINE"  # every present row is a file in the served tree
            elif ret.vr == "SQ":
                value = DicomSequence()
        elif ret.column >= 0:
            value = _dicom_value(row[ret.column])
        else:
            entity_id = row[ids[key.entity]] if key.entity in ids else None
            found = derived.get(key.keyword, {}).get(entity_id)
            if isinstance(found, list):
                value = [str(v) for v in found] or None
            elif found is None and key.match is Match.DERIVED and key.vr == "IS":
                value = 0 if entity_id is not None else None
            else:
                value = found
        if isinstance(value, str):
            if ret.vr in _TEXT_VRS and not value.isascii():
                texts.append(value)
            if value == "":
                value = None
        elements.append((ret.tag, ret.vr, value))
    elements.append((QUERY_RETRIEVE_LEVEL, "CS", level_text))
    chosen = charset.for_values(texts)
    if chosen:
        elements.append((SPECIFIC_CHARACTER_SET, "CS", chosen))
    return Response(tuple(elements), chosen)


def _dicom_value(value: object) -> object:
    if isinstance(value, _dt.date):
        return value.strftime("%Y%m%d")
    return value


class _Charset:
    """The response's Specific Character Set (see the module doc)."""

    def __init__(self, identifier: Dataset) -> None:
        element = identifier.get(SPECIFIC_CHARACTER_SET)
        self.requested = element_text(element) if element is not None else ""
        self.value: str | list[str] | None = None
        self.codecs: list[str] = []
        if self.requested:
            terms = self.requested.split("\\")
            self.value = terms if len(terms) > 1 else terms[0]
            try:
                self.codecs = convert_encodings(terms)
            except (LookupError, ValueError):
                self.codecs = []

    def for_values(self, texts: list[str]) -> str | list[str] | None:
        if not texts:
            return self.value
        if self.codecs and all(self._encodes(text) for text in texts):
            return self.value
        return "ISO_IR 192"

    def _encodes(self, text: str) -> bool:
        for codec in self.codecs:
            try:
                text.encode(codec)
                return True
            except (UnicodeError, LookupError):
                continue
        return False

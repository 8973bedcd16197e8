"""C-FIND identifier -> parameterised SQL over the catalog (PS3.4 C.2.2.2, C.4.1).

Two steps, so that a DICOMweb QIDO-RS front end can use the second alone:

1. ``parse_identifier(ds, model, relational)``: a pydicom Dataset (the
   C-FIND identifier, decoded with its Specific Character Set) becomes a
   ``Query``: the level, and one ``Term`` (key, value as text) per key the
   identifier holds. Hierarchical rules are checked here (C.4.1.3.1).
2. ``build_sql(query)``: the SELECT for the level, with one predicate per
   non-universal term. DICOM values only ever travel as ``?`` parameters;
   the SQL text is made of the key table's column names, fixed operators
   and placeholders.

Matching rules (PS3.4 C.2.2.2) and the choices this SCP makes:

- Universal matching (C.2.2.2.3): an empty value, or a value of only ``*``
  for text and name keys, adds no predicate (rows with no value match).
- Single value matching (C.2.2.2.1): equality. Case-sensitive except for PN
  keys, which this SCP matches case-insensitively (``lower()`` on both
  sides; the standard lets the SCP choose for PN).
- Wildcards (C.2.2.2.4): ``*`` and ``?`` in text and name keys become SQL
  ``LIKE`` ``%`` and ``_``; a literal ``%``, ``_`` or ``\\`` in the value is
  escaped, so it matches only itself. Not for UI, DA, TM, DT or numbers.
- List of UID matching (C.2.2.2.2): a backslash-separated list in a UI key
  matches any of them (``IN``). Lists in other keys match any of their
  values too (each value by the rules above), e.g.
  ``ModalitiesInStudy=CT\\MR``: recent editions of PS3.4 define such
  multiple value matching behind an extended negotiation; this SCP always
  applies it.
- Range matching (C.2.2.2.5): ``A-B``, ``-B``, ``A-`` for DA (stored as
  DATE), TM and DT (stored as text, compared as text without ``:``; a bound
  matches at its own precision, so ``-1015`` includes 10:15:59). A value
  that is not a valid DA/TM/DT/IS is refused with 0xA900. An empty stored
  value does not match a non-universal key. In DT values ``-`` is always
  the range separator: a ``+HHMM`` UTC offset is dropped, ``-HHMM`` ones
  are not supported (values are compared as the local times they hold).
- Sequence matching (C.2.2.2.6): the index holds no sequence attributes; a
  sequence key is a return key (returned as an empty sequence), never a
  match constraint. Unknown keys likewise: returned with no value.
- ``ModalitiesInStudy`` matches studies having a series of a listed modality.
  Derived counts (Number of ... Related ...) and SOP Classes in Study are
  return keys only; a value given for them is not matched (optional keys
  the SCP does not match on; see docs/query-retrieve.md).
- Only present instances count: a patient, study or series matches only
  if at least one of its instances has ``status = 'present'`` (``gone_ids``).
  A study row left with no instance row at all (every instance re-sent
  under another Study Instance UID) still matches, with counts of 0.

Hierarchical queries (C.4.1.3.1, the baseline SCP behaviour): every level above the
Query/Retrieve Level must have its unique key, with one value; other keys
of levels above may only be empty (return keys); keys below the level may
only be empty. Relational queries (C.4.1.3.2, when the SCU negotiated
relational-queries in the extended negotiation, C.5.1) lift the first
two rules: any key of the level and the levels above may match.
"""

from __future__ import annotations

import datetime as _dt
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import duckdb
from pydicom.datadict import dictionary_has_tag, dictionary_VR, tag_for_keyword
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.errors import BytesLengthException
from pydicom.multival import MultiValue

from ..storage.values import parse_da
from .errors import IdentifierError
from .model import (
    KEYS_BY_TAG,
    QUERY_RETRIEVE_LEVEL,
    UNIQUE_KEY,
    InformationModel,
    Key,
    Level,
    Match,
)
from .statements import execute

# The escape character of every LIKE this module writes.
_ESCAPE = "\\"
_TIME = re.compile(r"^\d{2}(\d{2}(\d{2}(\.\d{1,6})?)?)?$")
_DATETIME = re.compile(r"^\d{4}(\d{2}(\d{2}(\d{2}(\d{2}(\d{2}(\.\d{1,6})?)?)?)?)?)?$")
_PLUS_OFFSET = re.compile(r"\+\d{4}$")


@dataclass(frozen=True, slots=True)
class Term:
    """One key of a query and its value as text ("" = universal)."""

    key: Key
    value: str


@dataclass(frozen=True, slots=True)
class Query:
    """A parsed request: what ``build_sql`` and ``find`` work from."""

    model: InformationModel
    level: Level
    terms: tuple[Term, ...]

    def term(self, keyword: str) -> Term | None:
        for term in self.terms:
            if term.key.keyword == keyword:
                return term
        return None


@dataclass(frozen=True, slots=True)
class Predicate:
    sql: str
    params: tuple[object, ...]


# ---- identifier -> Query --------------------------------------------------------------------


def element_text(element: DataElement) -> str:
    """An identifier element's value as DICOM text (values joined by ``\\``,
    each stripped of padding); "" when empty. PN values keep their
    component groups (``Family^Given=...``)."""
    value = element.value
    if value is None or value == "" or value == b"":
        return ""
    if isinstance(value, (MultiValue, list, tuple)):
        return "\\".join(str(v).strip(" \0") for v in value)
    if isinstance(value, bytes):
        return value.decode("latin-1").strip(" \0")
    return str(value).strip(" \0")


def query_level(ds: Dataset, model: InformationModel) -> Level:
    """The identifier's Query/Retrieve Level (0008,0052), one of the model's
    (PS3.4 C.4.1.1.3.1, C.4.2.1.4), or IdentifierError (0xA900)."""
    level_element = ds.get(QUERY_RETRIEVE_LEVEL)
    if level_element is None:
        raise IdentifierError("no Query/Retrieve Level (0008,0052)", offending=(QUERY_RETRIEVE_LEVEL,))
    level = Level.parse(element_text(level_element))
    if level is None or level not in model.levels:
        raise IdentifierError(f"Query/Retrieve Level {element_text(level_element)!r} is not one of the "
                              f"{model.name} model", offending=(QUERY_RETRIEVE_LEVEL,))
    return level


def parse_identifier(ds: Dataset, model: InformationModel, *, relational: bool = False) -> Query:
    """The ``Query`` a C-FIND identifier asks, or IdentifierError (0xA900)."""
    level = query_level(ds, model)
    terms: list[Term] = []
    for tag in ds.keys():  # keys(): iterating a Dataset yields elements, decoded
        key = KEYS_BY_TAG.get(int(tag))
        if key is None:
            continue
        try:  # pydicom converts a raw element on access: "two" in an IS raises here
            value = element_text(ds[tag])
        except (UnicodeError, ValueError, TypeError, OSError, BytesLengthException) as exc:
            raise IdentifierError(f"{key.keyword}: unreadable value ({exc})", offending=(key.tag,)) from None
        terms.append(Term(key, value))
    query = Query(model, level, tuple(terms))
    check_query(query, relational=relational)
    return query


def identifier_from_params(level: Level, params: Mapping[str, str], include: Iterable[str] = ()) -> Dataset:
    """A C-FIND identifier from DICOMweb QIDO-RS style parameters.

    PS3.18 8.3.4: each matching parameter names an attribute by keyword
    (``PatientName``) or tag (``00100010``) and carries the value in the
    C-FIND matching syntax (``*``, ``?``, ranges, ``\\`` lists), so QIDO-RS
    uses the same keys and rules: ``find(conn, identifier_from_params(...),
    InformationModel.STUDY_ROOT, relational=True)`` (QIDO queries are
    relational: ``/series?Modality=CT`` needs no Study Instance UID).
    ``include`` names return keys (``includefield``) with no value. Raises
    IdentifierError for an attribute name the dictionary does not know.
    """
    ds = Dataset()
    ds.QueryRetrieveLevel = level.name
    for name, value in [*params.items(), *((name, "") for name in include)]:
        tag = _tag_of(name)
        if tag in ds and not value:
            continue
        vr = dictionary_VR(tag)
        try:
            ds.add_new(tag, vr, [] if vr == "SQ" else (value.split("\\") if "\\" in value else value) or None)
        except (ValueError, TypeError) as exc:
            raise IdentifierError(f"{name}: {exc}", offending=(tag,)) from None
    return ds


def _tag_of(name: str) -> int:
    tag = tag_for_keyword(name)
    if tag is None and len(name) == 8:
        try:
            tag = int(name, 16)
        except ValueError:
            tag = None
    if tag is None or not dictionary_has_tag(tag):
        raise IdentifierError(f"{name!r} is not a DICOM attribute keyword or tag")
    return int(tag)


def check_query(query: Query, *, relational: bool) -> None:
    """The level rules of the module docstring; raises IdentifierError."""
    model, level = query.model, query.level
    present = {term.key.keyword: term for term in query.terms}
    for term in query.terms:
        key_level = model.key_level(term.key)
        if key_level > level and term.value:
            raise IdentifierError(f"{term.key.keyword} is a {key_level.name} key, below the "
                                  f"{level.name} level", offending=(term.key.tag,))
        if (key_level < level and not relational and term.value
                and term.key is not _unique_of(model, key_level)):
            raise IdentifierError(f"{term.key.keyword} is not the unique key of the {key_level.name} "
                                  "level: hierarchical query (C.4.1.3.1)", offending=(term.key.tag,))
    if relational:
        return
    for upper in model.levels:
        if upper >= level:
            break
        unique = _unique_of(model, upper)
        found = present.get(unique.keyword)
        if found is None or not found.value:
            raise IdentifierError(f"hierarchical query at {level.name} level needs {unique.keyword} "
                                  "(C.4.1.3.1)", offending=(unique.tag,))
        if "\\" in found.value or (unique.match is not Match.UID and any(c in found.value for c in "*?")):
            raise IdentifierError(f"{unique.keyword} above the query level must be a single value",
                                  offending=(unique.tag,))


def _unique_of(model: InformationModel, level: Level) -> Key:
    del model  # the unique keys are the same in both models, at the levels each has
    return UNIQUE_KEY[level]


# ---- Query -> SQL --------------------------------------------------------------------------


FROM: dict[Level, str] = {
    Level.PATIENT: "FROM patients p WHERE true",
    Level.STUDY: "FROM studies st LEFT JOIN patients p ON p.patient_id = st.patient_id WHERE true",
    Level.SERIES: (
        "FROM series se JOIN studies st ON st.study_instance_uid = se.study_instance_uid "
        "LEFT JOIN patients p ON p.patient_id = st.patient_id WHERE true"),
    Level.IMAGE: (
        "FROM instances i LEFT JOIN series se ON se.series_instance_uid = i.series_instance_uid "
        "LEFT JOIN studies st ON st.study_instance_uid = i.study_instance_uid "
        "LEFT JOIN patients p ON p.patient_id = i.patient_id "
        "WHERE i.status = 'present'"),
}
# The instances column naming each entity (for ``gone``).
INSTANCE_ID: dict[Level, str] = {
    Level.PATIENT: "patient_id", Level.STUDY: "study_instance_uid", Level.SERIES: "series_instance_uid",
}
# Where each entity's identifier is read at each level (the indexed column).
ENTITY_ID: dict[Level, dict[Level, str]] = {
    Level.PATIENT: {Level.PATIENT: "p.patient_id"},
    Level.STUDY: {Level.PATIENT: "st.patient_id", Level.STUDY: "st.study_instance_uid"},
    Level.SERIES: {Level.PATIENT: "st.patient_id", Level.STUDY: "se.study_instance_uid",
                   Level.SERIES: "se.series_instance_uid"},
    Level.IMAGE: {Level.PATIENT: "i.patient_id", Level.STUDY: "i.study_instance_uid",
                  Level.SERIES: "i.series_instance_uid", Level.IMAGE: "i.sop_instance_uid"},
}


# From this share of rows not present on, ``gone_ids`` groups every row in
# one scan instead of grouping only the entities that have a missing row:
# measured on 1,000,000 instances, one missing row took 2 ms the selective
# way and 6-10 ms in one scan; 1% missing 17-21 ms against 7-9 ms; 30%
# 36-47 ms against 8-14 ms.
MISSING_SHARE_FOR_ONE_SCAN = 1 / 300


def gone_ids(conn: duckdb.DuckDBPyConnection, entity: Level, missing_share: float = 0.0) -> list[str]:
    """Patients, studies or series whose instances are all missing.

    Only present instances match (the files are what a retrieve sends), but
    an ``EXISTS`` over ``instances`` per candidate row costs a scan of the
    whole table (DuckDB joins by hashing, its indexes serve only constant
    lookups). With few rows missing (``missing_share``, the share of rows
    not present, below ``MISSING_SHARE_FOR_ONE_SCAN``) only the entities that
    have a missing instance are grouped; with more, every row is grouped in
    one scan. Either way the entities with no present instance are returned:
    what ``build_sql`` excludes (``find`` calls this only when some row is
    not present).
    """
    column = INSTANCE_ID[entity]
    if missing_share >= MISSING_SHARE_FOR_ONE_SCAN:
        sql = (f"SELECT {column} FROM instances WHERE {column} IS NOT NULL "
               f"GROUP BY 1 HAVING bool_and(status <> 'present') ORDER BY 1")
    else:
        sql = (f"SELECT {column} FROM instances WHERE {column} IN "
               f"(SELECT {column} FROM instances WHERE status <> 'present' AND {column} IS NOT NULL) "
               f"GROUP BY 1 HAVING bool_and(status <> 'present') ORDER BY 1")
    return [r[0] for r in execute(conn, sql).fetchall()]


def column_of(key: Key, level: Level) -> str:
    """The SQL expression a key reads at a query level (identifiers from the
    level's own table, where they are indexed)."""
    if key.match is Match.DERIVED or key.match is Match.MODALITIES:
        return ""
    if key is UNIQUE_KEY.get(key.entity) and key.entity <= level:
        return ENTITY_ID[level][key.entity]
    return key.column


def build_sql(query: Query, columns: Sequence[str], gone: Sequence[str] = ()) -> tuple[str, list[object]]:
    """``SELECT <columns> FROM <level> WHERE <predicates>``; ``gone`` lists
    the level's entities none of whose instances is present (``gone_ids``),
    which never match."""
    where: list[str] = []
    params: list[object] = []
    if gone and query.level is not Level.IMAGE:
        # an anti join on the list (list_contains would cost rows x list)
        where.append(f"{ENTITY_ID[query.level][query.level]} NOT IN (SELECT unnest(?::VARCHAR[]))")
        params.append(list(gone))
    for term in query.terms:
        if query.model.key_level(term.key) > query.level:
            continue  # an empty key below the level (check_query refused the others)
        predicate = predicate_for(term.key, term.value, column_of(term.key, query.level), query.level)
        if predicate is not None:
            where.append(predicate.sql)
            params.extend(predicate.params)
    sql = "SELECT " + ", ".join(columns) + " " + FROM[query.level]
    if where:
        sql += " AND " + " AND ".join(where)
    return sql, params


def predicate_for(key: Key, value: str, column: str, level: Level = Level.IMAGE) -> Predicate | None:
    """The predicate for one key's value, or None for universal matching."""
    if not value:
        return None
    kind = key.match
    if kind is Match.DERIVED:
        return None
    values = [v.strip(" \0") for v in value.split("\\")]
    if kind is Match.MODALITIES:
        inner = _any(values, lambda v: _text(v, "sx.modality", False))
        if inner is None:
            return None
        study = ENTITY_ID[level].get(Level.STUDY, "st.study_instance_uid")
        return Predicate(f"EXISTS (SELECT 1 FROM series sx WHERE sx.study_instance_uid = {study} "
                         f"AND {inner.sql})", inner.params)
    if kind is Match.TEXT or kind is Match.NAME:
        return _any(values, lambda v: _text(v, column, kind is Match.NAME))
    if kind is Match.UID:
        uids = [v for v in values if v]
        if not uids:
            return None
        if len(uids) == 1:
            return Predicate(f"{column} = ?", (uids[0],))
        return Predicate(f"{column} IN ({', '.join('?' * len(uids))})", tuple(uids))
    if kind is Match.INTEGER:
        numbers = [_integer(key, v) for v in values if v]
        if not numbers:
            return None
        return Predicate(f"{column} IN ({', '.join('?' * len(numbers))})", tuple(numbers))
    if kind is Match.DATE:
        return _any(values, lambda v: _range(key, v, column, _date))
    if kind is Match.TIME:
        return _any(values, lambda v: _range(key, v, f"replace({column}, ':', '')", _time))
    if kind is Match.DATETIME:
        return _any(values, lambda v: _range(key, v, column, _datetime))
    raise AssertionError(kind)


_OneValue = Callable[[str], "Predicate | None"]
_Parse = Callable[[Key, str], "_dt.date | str"]


def _any(values: Iterable[str], one: _OneValue) -> Predicate | None:
    """OR of the values' predicates; None (universal) if any value is universal.
    Empty values in a list (``A\\``) are left out; all empty is universal."""
    parts: list[Predicate] = []
    for value in values:
        if not value:
            continue
        predicate = one(value)
        if predicate is None:
            return None
        parts.append(predicate)
    if not parts:
        return None
    if len(parts) == 1:
        return parts[0]
    return Predicate("(" + " OR ".join(p.sql for p in parts) + ")",
                     tuple(param for p in parts for param in p.params))


def like_pattern(value: str) -> str:
    """DICOM wildcards -> SQL LIKE pattern (escape character ``\\``)."""
    out: list[str] = []
    for char in value:
        if char == "*":
            out.append("%")
        elif char == "?":
            out.append("_")
        elif char in "%_\\":
            out.append(_ESCAPE + char)
        else:
            out.append(char)
    return "".join(out)


def _text(value: str, column: str, fold_case: bool) -> Predicate | None:
    if not value or set(value) == {"*"}:
        return None
    target = f"lower({column})" if fold_case else column
    if "*" in value or "?" in value:
        param = "lower(?)" if fold_case else "?"
        return Predicate(f"{target} LIKE {param} ESCAPE '\\'", (like_pattern(value),))
    return Predicate(f"{target} = lower(?)" if fold_case else f"{target} = ?", (value,))


def _integer(key: Key, value: str) -> int:
    try:
        return int(value)
    except ValueError:
        pass
    try:
        number = float(value)
    except ValueError:
        number = float("nan")
    if number.is_integer():
        return int(number)
    raise IdentifierError(f"{key.keyword}: {value!r} is not an integer", offending=(key.tag,))


def _date(key: Key, text: str) -> _dt.date:
    date = parse_da(text)  # YYYYMMDD, or the old ACR-NEMA form YYYY.MM.DD
    if date is not None:
        return date
    raise IdentifierError(f"{key.keyword}: {text!r} is not a date (YYYYMMDD)", offending=(key.tag,))


def _time(key: Key, text: str) -> str:
    digits = text.replace(":", "")
    if _TIME.match(digits):
        return digits
    raise IdentifierError(f"{key.keyword}: {text!r} is not a time (HHMMSS.FFFFFF)", offending=(key.tag,))


def _datetime(key: Key, text: str) -> str:
    body = _PLUS_OFFSET.sub("", text)  # offsets are not compared (see the module doc)
    if _DATETIME.match(body):
        return body
    raise IdentifierError(f"{key.keyword}: {text!r} is not a date-time", offending=(key.tag,))


def _range(key: Key, value: str, column: str, parse: _Parse) -> Predicate | None:
    if "-" not in value:
        return Predicate(f"{column} = ?", (parse(key, value),))
    low_text, _, high_text = value.partition("-")
    low_text, high_text = low_text.strip(), high_text.strip()
    if not low_text and not high_text:
        return None
    parts: list[str] = []
    params: list[object] = []
    if low_text:
        parts.append(f"{column} >= ?")
        params.append(parse(key, low_text))
    if high_text:
        high = parse(key, high_text)
        if isinstance(high, str):  # text: compare at the bound's own precision, never ""
            parts.append(f"{column} <> '' AND left({column}, ?) <= ?")
            params.append(len(high))
        else:
            parts.append(f"{column} <= ?")
        params.append(high)
    return Predicate("(" + " AND ".join(parts) + ")", tuple(params))

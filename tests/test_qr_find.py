# ruff: noqa: C408
"""The C-FIND query engine (fastscp/qr) against a real DuckDB index filled
through the project's BatchWriter, with real pydicom identifiers.

One rule per test where possible (PS3.4 C.2.2.2 matching, C.4.1.3 levels,
C.3.4 derived keys), plus streaming, cancel, limits, character sets, and
values that look like SQL."""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path

import duckdb
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_dataset
from pydicom.filewriter import write_dataset
from pydicom.tag import Tag

from fastscp.catalog import schema
from fastscp.catalog.rows import BatchWriter, refresh_study_stats
from fastscp.instance import InstanceInfo
from fastscp.qr import (
    IdentifierError,
    InformationModel,
    OutOfResources,
    QueryCancelled,
    UnableToProcess,
    find,
)
from fastscp.qr.matching import (
    Query,
    Term,
    build_sql,
    gone_ids,
    identifier_from_params,
    predicate_for,
)
from fastscp.qr.model import KEYS, Key, KeyType, Level, Match

CT = "1.2.840.10008.5.1.4.1.1.2"
SR = "1.2.840.10008.5.1.4.1.1.88.11"
STUDY_ROOT, PATIENT_ROOT = InformationModel.STUDY_ROOT, InformationModel.PATIENT_ROOT

S1, S2, S3, S4, S5 = (f"1.2.826.0.1.3680043.9.22.{n}" for n in range(1, 6))


def _info(sop: str, study: str, series: str, **kw: object) -> InstanceInfo:
    base: dict[str, object] = dict(sop_class_uid=CT, sop_instance_uid=sop, transfer_syntax_uid="1.2.840.10008.1.2.1",
                                   study_instance_uid=study, series_instance_uid=series, path=f"/s/{sop}.dcm")
    base.update(kw)
    return InstanceInfo(**base)  # type: ignore[arg-type]


PATIENT_A = dict(patient_id="PA", patient_name="Müller^Jürgen", patient_birth_date="19700101", patient_sex="M")
PATIENT_B = dict(patient_id="PB", patient_name="Smith^John", patient_birth_date="19800202", patient_sex="M")
PATIENT_C = dict(patient_id="P_C", patient_name="smith^jane", patient_birth_date="19900303", patient_sex="F")
PATIENT_J = dict(patient_id="PJ", patient_name="山田^太郎", patient_birth_date="19500505", patient_sex="M")
STUDY_1 = dict(study_date="20240115", study_time="101500", accession_number="ACC1", study_id="S1",
               study_description="Kopf nativ", referring_physician="Ref^One")
STUDY_2 = dict(study_date="20231231", study_time="235959.5", accession_number="ACC%2", study_id="X_1",
               study_description="Thorax")
STUDY_3 = dict(study_date="20240301", study_time="080000", accession_number="ACC3", study_id="S3")
STUDY_4 = dict(study_date="20240202", study_time="120000", accession_number="ACC4", study_id="S4",
               study_description="' OR 1=1 --")
STUDY_5 = dict(study_date="", study_time="", accession_number="", study_id="")


def _rows() -> list[InstanceInfo]:
    rows = [
        _info(f"{S1}.1.{n}", S1, f"{S1}.1", **PATIENT_A, **STUDY_1, modality="CT", series_number=1,
              instance_number=n) for n in (1, 2, 3)
    ]
    rows.append(_info(f"{S1}.2.1", S1, f"{S1}.2", **PATIENT_A, **STUDY_1, modality="SR", series_number=2,
                      instance_number=1, sop_class_uid=SR))
    rows += [_info(f"{S2}.1.{n}", S2, f"{S2}.1", **PATIENT_B, **STUDY_2, modality="MR", series_number=1,
                   instance_number=n) for n in (1, 2)]
    rows.append(_info(f"{S3}.1.1", S3, f"{S3}.1", **PATIENT_B, **STUDY_3, modality="CT", series_number=1,
                      instance_number=1))
    rows.append(_info(f"{S4}.1.1", S4, f"{S4}.1", **PATIENT_C, **STUDY_4, modality="CT", series_number=7,
                      instance_number=5))
    rows.append(_info(f"{S5}.1.1", S5, f"{S5}.1", **PATIENT_J, **STUDY_5, modality="MR", series_number=1,
                      instance_number=1))
    return rows


@pytest.fixture(scope="module")
def index(tmp_path_factory: pytest.TempPathFactory) -> Iterator[duckdb.DuckDBPyConnection]:
    conn = schema.connect(tmp_path_factory.mktemp("qr") / "index.db")
    BatchWriter(conn).write(_rows())
    # S3's only instance is gone from the tree, and one of S1's CT images
    conn.execute("UPDATE instances SET status = 'missing' WHERE sop_instance_uid IN (?, ?)",
                 [f"{S3}.1.1", f"{S1}.1.3"])
    refresh_study_stats(conn, [S3, S1])  # as reconcile does in the transaction that marks rows missing
    yield conn
    conn.close()


def ident(level: str, charset: str | None = None, **keys: object) -> Dataset:
    ds = Dataset()
    if charset is not None:
        ds.SpecificCharacterSet = charset
    ds.QueryRetrieveLevel = level
    for keyword, value in keys.items():
        setattr(ds, keyword, value)
    return ds


def run(conn: duckdb.DuckDBPyConnection, ds: Dataset, model: InformationModel = STUDY_ROOT,
        **kw: object) -> list[Dataset]:
    return list(find(conn.cursor(), ds, model, **kw))  # type: ignore[arg-type]


def studies(conn: duckdb.DuckDBPyConnection, **keys: object) -> set[str]:
    keys.setdefault("StudyInstanceUID", "")
    return {str(r.StudyInstanceUID) for r in run(conn, ident("STUDY", **keys))}


# ---- matching rules -----------------------------------------------------------------------


def test_universal_matching_returns_every_study_with_a_present_instance(index: duckdb.DuckDBPyConnection) -> None:
    assert studies(index) == {S1, S2, S4, S5}  # S3's only instance is missing
    assert studies(index, AccessionNumber="", StudyDate="", PatientName="*") == {S1, S2, S4, S5}


def test_single_value_matching_is_exact_and_case_sensitive_for_text(index: duckdb.DuckDBPyConnection) -> None:
    assert studies(index, StudyID="S1") == {S1}
    assert studies(index, StudyID="s1") == set()
    assert studies(index, AccessionNumber="ACC") == set()
    assert studies(index, PatientID="PB") == {S2}


def test_person_names_match_case_insensitively(index: duckdb.DuckDBPyConnection) -> None:
    assert studies(index, PatientName="SMITH^JOHN") == {S2}
    assert studies(index, PatientName="smith*") == {S2, S4}
    assert studies(index, ReferringPhysicianName="ref^one") == {S1}


def test_wildcards_star_and_question_mark(index: duckdb.DuckDBPyConnection) -> None:
    assert studies(index, AccessionNumber="ACC?") == {S1, S4}
    assert studies(index, AccessionNumber="A*") == {S1, S2, S4}
    assert studies(index, StudyDescription="*nativ") == {S1}
    assert studies(index, PatientName="M?ller*") == {S1}


def test_percent_and_underscore_in_a_value_match_only_themselves(index: duckdb.DuckDBPyConnection) -> None:
    assert studies(index, AccessionNumber="ACC%2") == {S2}
    assert studies(index, AccessionNumber="ACC%*") == {S2}
    assert studies(index, AccessionNumber="ACC%") == set()  # not "ACC" followed by anything
    assert studies(index, StudyID="X_1") == {S2}
    assert studies(index, StudyID="S_") == set()  # _ is no wildcard: "S1", "S4" do not match
    assert studies(index, PatientID="P_*") == {S4}


def test_date_single_value_and_ranges(index: duckdb.DuckDBPyConnection) -> None:
    assert studies(index, StudyDate="20240115") == {S1}
    assert studies(index, StudyDate="20240101-20240131") == {S1}
    assert studies(index, StudyDate="20240101-") == {S1, S4}
    assert studies(index, StudyDate="-20231231") == {S2}
    assert studies(index, StudyDate="2024.01.15") == {S1}  # the ACR-NEMA form
    assert studies(index, PatientBirthDate="19700101-19850101") == {S1, S2}


def test_time_ranges_match_at_the_bounds_precision(index: duckdb.DuckDBPyConnection) -> None:
    assert studies(index, StudyTime="101500") == {S1}
    assert studies(index, StudyTime="1000-1100") == {S1}
    assert studies(index, StudyTime="-1015") == {S1}  # 10:15:00 is within "up to 10:15"
    assert studies(index, StudyTime="-1014") == set()
    assert studies(index, StudyTime="2359-") == {S2}
    assert studies(index, StudyTime="10:00-11:00") == {S1}


def test_datetime_ranges() -> None:
    key = Key("AcquisitionDateTime", 0x0008002A, "DT", Level.IMAGE, Match.DATETIME, "t.v")
    conn = duckdb.connect()
    conn.execute("CREATE TABLE t (v VARCHAR)")
    conn.execute("INSERT INTO t VALUES ('20240115101500'), ('20240115'), ('20231231235959.123456'), ('')")

    def match(value: str) -> set[str]:
        p = predicate_for(key, value, "t.v")
        assert p is not None
        return {r[0] for r in conn.execute(f"SELECT v FROM t WHERE {p.sql}", list(p.params)).fetchall()}

    assert match("20240115101500") == {"20240115101500"}
    assert match("20240101-") == {"20240115101500", "20240115"}
    assert match("-2023") == {"20231231235959.123456"}
    assert match("20231231-20240115") == {"20231231235959.123456", "20240115101500", "20240115"}
    assert match("20240115101500+0100") == {"20240115101500"}
    with pytest.raises(IdentifierError):
        match("2024011x")


def test_list_of_uids(index: duckdb.DuckDBPyConnection) -> None:
    assert studies(index, StudyInstanceUID=[S1, S2]) == {S1, S2}
    assert studies(index, StudyInstanceUID=[S1, S3]) == {S1}  # S3 has nothing present
    assert studies(index, StudyInstanceUID=S4) == {S4}


def test_lists_in_text_keys_and_modalities_in_study(index: duckdb.DuckDBPyConnection) -> None:
    assert studies(index, ModalitiesInStudy="MR") == {S2, S5}
    assert studies(index, ModalitiesInStudy=["SR", "MR"]) == {S1, S2, S5}
    assert studies(index, AccessionNumber=["ACC1", "ACC4"]) == {S1, S4}


def test_empty_values_do_not_match_a_constraint(index: duckdb.DuckDBPyConnection) -> None:
    assert S5 not in studies(index, StudyDate="19000101-")
    assert S5 in studies(index, StudyDate="")


def test_sequence_keys_are_return_keys_returned_empty(index: duckdb.DuckDBPyConnection) -> None:
    ds = ident("STUDY", StudyInstanceUID=S1)
    ds.ReferencedStudySequence = []
    ds.ProcedureCodeSequence = [Dataset()]
    ds.ProcedureCodeSequence[0].CodeValue = "XYZ"
    (row,) = run(index, ds)
    assert len(row.ReferencedStudySequence) == 0 and len(row.ProcedureCodeSequence) == 0


def test_bad_values_are_refused_with_a900(index: duckdb.DuckDBPyConnection) -> None:
    for keys in ({"StudyDate": "20241301"}, {"StudyDate": "yesterday"}, {"StudyTime": "25h"}):
        with pytest.raises(IdentifierError) as err:
            run(index, ident("STUDY", StudyInstanceUID="", **keys))
        assert err.value.status == 0xA900
    ds = ident("SERIES", StudyInstanceUID=S1)
    ds[0x00200011] = RawDataElement(Tag(0x00200011), "IS", 3, b"two", 0, True, True)  # as read off the wire
    with pytest.raises(IdentifierError) as err:
        run(index, ds)
    assert err.value.offending == (0x00200011,)


# ---- values are parameters, never SQL ---------------------------------------------------------


SQLISH = ["' OR 1=1 --", "'; DROP TABLE studies; --", '" OR ""="', "%' OR '%'='", "\\' OR 1=1 --", "?", "1) OR (1=1"]


@pytest.mark.parametrize("value", SQLISH)
def test_sql_in_values_matches_literally_and_raises_nothing(index: duckdb.DuckDBPyConnection, value: str) -> None:
    for keyword in ("PatientID", "PatientName", "AccessionNumber", "StudyID", "ModalitiesInStudy"):
        assert studies(index, **{keyword: value}) <= ({S4} if value == "?" else set()), keyword
    assert studies(index, StudyInstanceUID=value) == set()
    # the one study whose description *is* such a text is found by it, and only it
    assert studies(index, StudyDescription="' OR 1=1 --") == {S4}
    assert index.execute("SELECT count(*) FROM studies").fetchone() == (5,)


_MARKED = {Match.DATE: "19990909-20000101", Match.TIME: "191919-", Match.INTEGER: "919191",
           Match.DATETIME: "19991919-"}


@pytest.mark.parametrize("key", [k for k in KEYS if k.match is not Match.DERIVED], ids=lambda k: k.keyword)
def test_values_never_reach_the_sql_text(key: Key) -> None:
    value = _MARKED.get(key.match, "ZQX' OR 1=1 --*\\ZQY?")
    query = Query(STUDY_ROOT, Level.IMAGE, (Term(key, value),))
    sql, params = build_sql(query, ["i.sop_instance_uid"], gone=["ZQG' --"])
    assert params  # the value is there, as parameters ...
    for fragment in ("ZQX", "ZQY", "ZQG", "1999", "1919", "9191", "OR 1=1"):
        assert fragment not in sql, (fragment, sql)  # ... and nowhere in the statement


# ---- levels, models, hierarchy ------------------------------------------------------------------


def test_patient_root_patient_level_with_counts(index: duckdb.DuckDBPyConnection) -> None:
    rows = run(index, ident("PATIENT", PatientName="", PatientID="", NumberOfPatientRelatedStudies=None,
                            NumberOfPatientRelatedSeries=None, NumberOfPatientRelatedInstances=None),
               PATIENT_ROOT)
    got = {str(r.PatientID): (r.NumberOfPatientRelatedStudies, r.NumberOfPatientRelatedSeries,
                              r.NumberOfPatientRelatedInstances) for r in rows}
    # PB: S3 is all missing, so one study; PA: 3 of 4 instances present
    assert got == {"PA": (1, 2, 3), "PB": (1, 1, 2), "P_C": (1, 1, 1), "PJ": (1, 1, 1)}


def test_patient_root_study_level_needs_the_patient_id(index: duckdb.DuckDBPyConnection) -> None:
    with pytest.raises(IdentifierError) as err:
        run(index, ident("STUDY", StudyInstanceUID=""), PATIENT_ROOT)
    assert err.value.status == 0xA900 and err.value.offending == (0x00100020,)
    rows = run(index, ident("STUDY", PatientID="PB", StudyInstanceUID=""), PATIENT_ROOT)
    assert [str(r.StudyInstanceUID) for r in rows] == [S2]
    with pytest.raises(IdentifierError):  # the unique key above must be a single value
        run(index, ident("STUDY", PatientID="P*", StudyInstanceUID=""), PATIENT_ROOT)


def test_series_level_hierarchical_and_relational(index: duckdb.DuckDBPyConnection) -> None:
    with pytest.raises(IdentifierError):
        run(index, ident("SERIES", SeriesInstanceUID=""))
    rows = run(index, ident("SERIES", StudyInstanceUID=S1, SeriesInstanceUID="", Modality="",
                            SeriesNumber=None, NumberOfSeriesRelatedInstances=None))
    got = {(str(r.Modality), r.SeriesNumber, r.NumberOfSeriesRelatedInstances) for r in rows}
    assert got == {("CT", 1, 2), ("SR", 2, 1)}
    # a non-unique key of the level above: refused in a hierarchical query ...
    with pytest.raises(IdentifierError):
        run(index, ident("SERIES", StudyInstanceUID=S1, PatientName="Müller*", Modality=""))
    # ... matched in a relational one, which needs no unique key above
    rows = run(index, ident("SERIES", PatientName="smith*", Modality="CT", SeriesInstanceUID=""), relational=True)
    assert {str(r.SeriesInstanceUID) for r in rows} == {f"{S4}.1"}
    # an empty key of the level above is a return key in both
    (row,) = run(index, ident("SERIES", StudyInstanceUID=S2, PatientName="", SeriesInstanceUID=""))
    assert str(row.PatientName) == "Smith^John"


def test_keys_below_the_level_may_only_be_empty(index: duckdb.DuckDBPyConnection) -> None:
    with pytest.raises(IdentifierError):
        run(index, ident("STUDY", StudyInstanceUID="", Modality="CT"))
    (row,) = run(index, ident("STUDY", StudyInstanceUID=S4, Modality=""))
    assert "Modality" in row and row.Modality in (None, "")


def test_image_level(index: duckdb.DuckDBPyConnection) -> None:
    rows = run(index, ident("IMAGE", StudyInstanceUID=S1, SeriesInstanceUID=f"{S1}.1", SOPInstanceUID="",
                            InstanceNumber=None, SOPClassUID=""))
    assert {(str(r.SOPInstanceUID), r.InstanceNumber) for r in rows} == {(f"{S1}.1.1", 1), (f"{S1}.1.2", 2)}
    rows = run(index, ident("IMAGE", StudyInstanceUID=S1, SeriesInstanceUID=f"{S1}.1", InstanceNumber="2",
                            SOPInstanceUID=""))
    assert [str(r.SOPInstanceUID) for r in rows] == [f"{S1}.1.2"]
    rows = run(index, ident("IMAGE", StudyInstanceUID=S1, SeriesInstanceUID=f"{S1}.1",
                            SOPInstanceUID=[f"{S1}.1.1", f"{S1}.1.3"]))
    assert [str(r.SOPInstanceUID) for r in rows] == [f"{S1}.1.1"]  # .3 is missing


def test_level_errors(index: duckdb.DuckDBPyConnection) -> None:
    ds = Dataset()
    ds.PatientID = ""
    with pytest.raises(IdentifierError):
        run(index, ds)
    with pytest.raises(IdentifierError):
        run(index, ident("PATIENT", PatientID=""))  # no PATIENT level in Study Root
    with pytest.raises(IdentifierError):
        run(index, ident("FRAME", PatientID=""))


# ---- return keys ---------------------------------------------------------------------------------


def test_response_holds_exactly_the_requested_keys(index: duckdb.DuckDBPyConnection) -> None:
    ds = ident("STUDY", StudyInstanceUID=S1, StudyDate="", AccessionNumber="", StudyID="")
    ds.add_new(0x00091010, "LO", "")  # a private attribute the index does not hold
    ds.add_new(0x00080054, "AE", "")
    ds.add_new(0x00080056, "CS", "")
    (row,) = run(index, ds, retrieve_ae_title="FASTSCP")
    assert {int(e.tag) for e in row} == {int(e.tag) for e in ds}
    assert (row.StudyDate, row.AccessionNumber, row.StudyID) == ("20240115", "ACC1", "S1")
    assert row.RetrieveAETitle == "FASTSCP" and row.InstanceAvailability == "ONLINE"
    assert row[0x00091010].value in (None, "")
    assert row.QueryRetrieveLevel == "STUDY"


def test_study_level_derived_keys_count_present_instances_only(index: duckdb.DuckDBPyConnection) -> None:
    (row,) = run(index, ident("STUDY", StudyInstanceUID=S1, ModalitiesInStudy="", SOPClassesInStudy="",
                              NumberOfStudyRelatedSeries=None, NumberOfStudyRelatedInstances=None))
    assert list(row.ModalitiesInStudy) == ["CT", "SR"]
    assert sorted(row.SOPClassesInStudy) == sorted([CT, SR])
    assert (row.NumberOfStudyRelatedSeries, row.NumberOfStudyRelatedInstances) == (2, 3)


def test_study_instance_counts_agree_with_and_without_sop_classes(index: duckdb.DuckDBPyConnection) -> None:
    # asked alone, the count is the study's study_stats row; with SOP Classes in
    # Study, the instance rows per class: both count present instances only
    def counts(**extra: object) -> dict[str, int]:
        rows = run(index, ident("STUDY", StudyInstanceUID="", NumberOfStudyRelatedInstances=None, **extra))
        return {str(r.StudyInstanceUID): int(r.NumberOfStudyRelatedInstances) for r in rows}

    alone = counts()
    assert alone == counts(SOPClassesInStudy="") == {S1: 3, S2: 2, S4: 1, S5: 1}


# ---- character sets ------------------------------------------------------------------------------


def _wire(ds: Dataset) -> Dataset:
    """``ds`` encoded as on the wire (implicit VR LE, its own character set) and decoded back."""
    buffer = DicomBytesIO()
    buffer.is_little_endian, buffer.is_implicit_VR = True, True
    write_dataset(buffer, ds)  # encodes text with ds.SpecificCharacterSet
    back = read_dataset(BytesIO(buffer.getvalue()), is_implicit_VR=True, is_little_endian=True)
    # no back.decode(): pydicom decodes each value with the set's charset on access
    return back


def test_latin1_identifier_matches_and_is_answered_in_latin1(index: duckdb.DuckDBPyConnection) -> None:
    request = _wire(ident("STUDY", "ISO_IR 100", PatientName="müller*", StudyInstanceUID=""))
    (row,) = run(index, request)
    assert row.SpecificCharacterSet == "ISO_IR 100"
    assert str(_wire(row).PatientName) == "Müller^Jürgen"


def test_iso2022_japanese_identifier(index: duckdb.DuckDBPyConnection) -> None:
    request = _wire(ident("STUDY", ["", "ISO 2022 IR 87"], PatientName="山田*", StudyInstanceUID=""))
    assert str(request.PatientName) == "山田*"  # decoded through its escapes
    (row,) = run(index, request)
    assert list(row.SpecificCharacterSet) == ["", "ISO 2022 IR 87"]
    assert str(_wire(row).PatientName) == "山田^太郎"


def test_answer_switches_to_utf8_when_the_request_charset_cannot_hold_it(index: duckdb.DuckDBPyConnection) -> None:
    (row,) = run(index, ident("STUDY", PatientID="PJ", PatientName="", StudyInstanceUID=""))
    assert row.SpecificCharacterSet == "ISO_IR 192"
    assert str(_wire(row).PatientName) == "山田^太郎"
    (row,) = run(index, ident("STUDY", "ISO_IR 100", PatientID="PJ", PatientName="", StudyInstanceUID=""))
    assert row.SpecificCharacterSet == "ISO_IR 192"
    (row,) = run(index, ident("STUDY", PatientID="PB", PatientName="", StudyInstanceUID=""))
    assert "SpecificCharacterSet" not in row  # all ASCII, none asked: default repertoire


# ---- streaming, cancel, limits, failures -------------------------------------------------------------


class _CountingCursor:
    """The real cursor, counting the rows DuckDB has handed over."""

    def __init__(self, conn: duckdb.DuckDBPyConnection) -> None:
        self.conn = conn.cursor()
        self.fetched = 0

    def extract_statements(self, sql: str) -> list[duckdb.Statement]:
        return self.conn.extract_statements(sql)

    def execute(self, sql: str | duckdb.Statement,
                params: object = None) -> _CountingCursor | duckdb.DuckDBPyConnection:
        result = self.conn.execute(sql, params)
        text = sql if isinstance(sql, str) else sql.query  # the engine runs parsed statements (qr/statements.py)
        if text.startswith("SELECT") and "FROM studies st" in text:
            self._result = result
            return self
        return result

    def fetchmany(self, n: int) -> list[tuple[object, ...]]:
        rows = self._result.fetchmany(n)
        self.fetched += len(rows)
        return rows


def test_responses_stream_as_rows_are_fetched(index: duckdb.DuckDBPyConnection) -> None:
    cursor = _CountingCursor(index)
    results = find(cursor, ident("STUDY", StudyInstanceUID=""), STUDY_ROOT, fetch_size=1)  # type: ignore[arg-type]
    first = next(results)
    assert first.StudyInstanceUID and cursor.fetched == 1  # the first answer before the rest is read
    assert len(list(results)) == 3 and cursor.fetched == 4


def test_cancel_stops_between_rows(index: duckdb.DuckDBPyConnection) -> None:
    sent: list[Dataset] = []
    flag = {"cancel": False}
    with pytest.raises(QueryCancelled) as err:
        for row in find(index.cursor(), ident("STUDY", StudyInstanceUID=""), STUDY_ROOT,
                        cancelled=lambda: flag["cancel"], fetch_size=2):
            sent.append(row)
            flag["cancel"] = True
    assert err.value.status == 0xFE00 and len(sent) == 1


def test_too_many_matches_is_out_of_resources(index: duckdb.DuckDBPyConnection) -> None:
    assert len(run(index, ident("STUDY", StudyInstanceUID=""), max_matches=4)) == 4
    with pytest.raises(OutOfResources) as err:
        run(index, ident("STUDY", StudyInstanceUID=""), max_matches=3)
    assert err.value.status == 0xA700


def test_a_database_failure_is_unable_to_process(tmp_path: Path) -> None:
    conn = schema.connect(tmp_path / "i.db")
    conn.execute("DROP VIEW study_summary")
    conn.execute("DROP TABLE studies")
    with pytest.raises(UnableToProcess) as err:
        run(conn, ident("STUDY", StudyInstanceUID=""))
    assert 0xC000 <= err.value.status <= 0xCFFF
    conn.close()


# ---- the key table against the standard's tables ------------------------------------------------------


def test_every_required_and_unique_key_of_each_level_is_a_column() -> None:
    # PS3.4 C.6.1.1.2-5 (Patient Root) and C.6.2.1.2 (Study Root)
    required = {
        Level.PATIENT: {"PatientName", "PatientID"},
        Level.STUDY: {"StudyDate", "StudyTime", "AccessionNumber", "StudyID", "StudyInstanceUID"},
        Level.SERIES: {"Modality", "SeriesNumber", "SeriesInstanceUID"},
        Level.IMAGE: {"InstanceNumber", "SOPInstanceUID"},
    }
    by_keyword = {k.keyword: k for k in KEYS}
    for level, keywords in required.items():
        for keyword in keywords:
            key = by_keyword[keyword]
            assert key.entity is level and key.column and key.type in (KeyType.UNIQUE, KeyType.REQUIRED)
    assert STUDY_ROOT.key_level(by_keyword["PatientName"]) is Level.STUDY
    assert STUDY_ROOT.key_type(by_keyword["PatientID"]) is KeyType.REQUIRED
    assert InformationModel.for_sop_class("1.2.840.10008.5.1.4.1.2.2.1") is STUDY_ROOT
    assert PATIENT_ROOT.get_uid == "1.2.840.10008.5.1.4.1.2.1.3"


# ---- wildcards against fnmatch-like semantics (hypothesis) ----------------------------------------------


_ALPHABET = st.sampled_from(list("ab%_\\'*?é "))
_TEXT_KEY = Key("StudyDescription", 0x00081030, "LO", Level.STUDY, Match.TEXT, "t.v")


def _dicom_regex(pattern: str) -> re.Pattern[str]:
    # DICOM C.2.2.2.4: * any sequence (also empty), ? one character; everything else literal
    return re.compile("".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern),
                      re.DOTALL)


@pytest.fixture(scope="module")
def scratch() -> Iterator[duckdb.DuckDBPyConnection]:
    conn = duckdb.connect()
    conn.execute("CREATE TABLE t (v VARCHAR)")
    yield conn
    conn.close()


@settings(max_examples=300, deadline=None)
@given(pattern=st.text(_ALPHABET, min_size=1, max_size=6),
       stored=st.lists(st.text(st.sampled_from(list("ab%_\\'é ")), max_size=6), min_size=1, max_size=8))
def test_wildcard_matching_agrees_with_dicom_semantics(scratch: duckdb.DuckDBPyConnection, pattern: str,
                                                       stored: list[str]) -> None:
    pattern = pattern.strip(" ")  # values are stripped of padding (stored ones too)
    stored = [s.strip(" ") for s in stored]
    if not pattern or "\\" in pattern:  # a backslash separates values in DICOM
        return
    scratch.execute("DELETE FROM t")
    scratch.executemany("INSERT INTO t VALUES (?)", [(s,) for s in stored])
    predicate = predicate_for(_TEXT_KEY, pattern, "t.v")
    if predicate is None:  # universal: only "*"s
        assert set(pattern) == {"*"}
        return
    got = sorted(r[0] for r in scratch.execute(f"SELECT v FROM t WHERE {predicate.sql}",
                                               list(predicate.params)).fetchall())
    regex = _dicom_regex(pattern)
    expected = sorted(s for s in stored if regex.fullmatch(s))
    assert got == expected
    # and fnmatch agrees where it has no character classes of its own
    if "[" not in pattern:
        assert expected == sorted(s for s in stored if fnmatch.fnmatchcase(s, pattern))


# ---- QIDO-RS style parameters on the same engine ----------------------------------------------------------


def test_qido_parameters_map_onto_the_same_keys(index: duckdb.DuckDBPyConnection) -> None:
    ds = identifier_from_params(Level.SERIES, {"Modality": "CT", "00100010": "smith*"},
                                include=["SeriesInstanceUID", "NumberOfSeriesRelatedInstances"])
    rows = run(index, ds, relational=True)
    assert [(str(r.SeriesInstanceUID), r.NumberOfSeriesRelatedInstances) for r in rows] == [(f"{S4}.1", 1)]
    ds = identifier_from_params(Level.STUDY, {"StudyDate": "20240101-", "ModalitiesInStudy": "CT\\MR"},
                                include=["StudyInstanceUID"])
    assert {str(r.StudyInstanceUID) for r in run(index, ds, relational=True)} == {S1, S4}
    with pytest.raises(IdentifierError):
        identifier_from_params(Level.STUDY, {"NoSuchAttribute": "1"})


def test_derived_keys_between_fetches_do_not_disturb_the_streamed_result(index: duckdb.DuckDBPyConnection) -> None:
    # more rows than one fetch, derived keys computed between fetches
    rows = run(index, ident("STUDY", StudyInstanceUID="", NumberOfStudyRelatedInstances=None,
                            ModalitiesInStudy=""), fetch_size=1)
    got = {str(r.StudyInstanceUID): (int(r.NumberOfStudyRelatedInstances), str(r[0x00080061].value)) for r in rows}
    assert got == {S1: (3, "['CT', 'SR']"), S2: (2, "MR"), S4: (1, "CT"), S5: (1, "MR")}


def test_index_with_nothing_missing(tmp_path: Path) -> None:
    conn = schema.connect(tmp_path / "i.db")
    BatchWriter(conn).write(_rows())
    rows = run(conn, ident("STUDY", StudyInstanceUID="", NumberOfStudyRelatedInstances=None,
                           NumberOfStudyRelatedSeries=None))
    got = {str(r.StudyInstanceUID): (r.NumberOfStudyRelatedSeries, r.NumberOfStudyRelatedInstances) for r in rows}
    assert got == {S1: (2, 4), S2: (1, 2), S3: (1, 1), S4: (1, 1), S5: (1, 1)}
    conn.close()


def test_an_unreadable_value_in_an_attribute_the_index_does_not_hold_is_returned_empty(
        index: duckdb.DuckDBPyConnection) -> None:
    ds = ident("STUDY", StudyInstanceUID=S2)
    # AcquisitionMatrix, US of 3 bytes: pydicom raises when it converts it
    ds[0x00181310] = RawDataElement(Tag(0x00181310), "US", 3, b"\x01\x02\x03", 0, True, True)
    ds[0x00191001] = RawDataElement(Tag(0x00191001), None, 2, b"\xff\xfe", 0, True, True)  # private, implicit VR
    (row,) = run(index, ds)
    assert row.get_item(0x00181310).value in (None, b"") and 0x00191001 in row


def test_an_unreadable_value_in_a_key_is_a900(index: duckdb.DuckDBPyConnection) -> None:
    ds = ident("IMAGE", StudyInstanceUID=S1, SeriesInstanceUID=f"{S1}.1")
    ds[0x00280010] = RawDataElement(Tag(0x00280010), "US", 3, b"\x01\x02\x03", 0, True, True)  # Rows
    with pytest.raises(IdentifierError) as err:
        run(index, ds)
    assert err.value.offending == (0x00280010,)


def test_a_series_all_of_whose_instances_are_missing_is_left_out_of_the_study_keys(tmp_path: Path) -> None:
    conn = schema.connect(tmp_path / "i.db")
    BatchWriter(conn).write(_rows())
    # S1's SR series is gone from the tree; its CT series is whole
    conn.execute("UPDATE instances SET status = 'missing' WHERE series_instance_uid = ?", [f"{S1}.2"])
    refresh_study_stats(conn, [S1])  # as reconcile does
    keys = dict(ModalitiesInStudy="", SOPClassesInStudy="", NumberOfStudyRelatedSeries=None,
                NumberOfStudyRelatedInstances=None)
    chunked = [run(conn, ident("STUDY", StudyInstanceUID=S1, **keys), fetch_size=size) for size in (1, 64)]
    for (row,) in chunked:
        assert str(row.ModalitiesInStudy) == "CT" and str(row.SOPClassesInStudy) == CT
        assert (row.NumberOfStudyRelatedSeries, row.NumberOfStudyRelatedInstances) == (1, 3)
    (patient,) = run(conn, ident("PATIENT", PatientID="PA", NumberOfPatientRelatedStudies=None,
                                 NumberOfPatientRelatedSeries=None, NumberOfPatientRelatedInstances=None),
                     PATIENT_ROOT)
    assert (patient.NumberOfPatientRelatedStudies, patient.NumberOfPatientRelatedSeries,
            patient.NumberOfPatientRelatedInstances) == (1, 1, 3)
    (series,) = run(conn, ident("SERIES", StudyInstanceUID=S1, SeriesInstanceUID="",
                                NumberOfSeriesRelatedInstances=None))
    assert str(series.SeriesInstanceUID) == f"{S1}.1" and series.NumberOfSeriesRelatedInstances == 3
    conn.close()


@pytest.mark.parametrize("entity", [Level.PATIENT, Level.STUDY, Level.SERIES])
def test_gone_ids_the_selective_way_and_in_one_scan_agree(index: duckdb.DuckDBPyConnection, entity: Level) -> None:
    expected = {Level.PATIENT: [], Level.STUDY: [S3], Level.SERIES: [f"{S3}.1"]}[entity]
    assert gone_ids(index, entity, 0.0) == gone_ids(index, entity, 1.0) == expected

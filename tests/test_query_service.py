"""The C-FIND service module's pure parts (fastscp/services/query.py):
identifier decoding and encoding per transfer syntax, the extended
negotiation answer, the 0xFF01 rule, and negotiation of the FIND SOP classes
only with an index configured. The network side is tests/test_query_network.py."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
from _pdu_fixtures import IMPLICIT_LE, VERIFICATION, associate_rq
from hypothesis import given, settings
from hypothesis import strategies as st
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence

from fastscp.app import accept_policy, build_state, service_modules
from fastscp.catalog import schema
from fastscp.catalog.rows import BatchWriter
from fastscp.config import load_config
from fastscp.instance import InstanceInfo
from fastscp.protocol import pdu as P
from fastscp.protocol.commands import CFindRequest
from fastscp.protocol.negotiation import negotiate
from fastscp.qr import KEYS, InformationModel, Response, find_responses
from fastscp.services import identifiers
from fastscp.services.identifiers import (
    MalformedIdentifier,
    decode_identifier,
    encode_identifier,
    encode_response,
)
from fastscp.services.query import (
    FIND_SOP_CLASSES,
    QueryService,
    unsupported_keys,
)
from fastscp.services.registry import Deferred, answer_relational

SYNTAXES = ["1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2", "1.2.840.10008.1.2.1.99",
            "1.2.840.10008.1.2.4.50"]


def _identifier() -> Dataset:
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.QueryRetrieveLevel = "STUDY"
    ds.PatientName = "Müller*"
    ds.StudyInstanceUID = ["1.2.3", "1.2.4"]
    ds.NumberOfStudyRelatedInstances = ""
    ds.ReferencedStudySequence = []
    return ds


@pytest.mark.parametrize("syntax", SYNTAXES)
def test_identifier_round_trip_in_each_transfer_syntax(syntax: str) -> None:
    raw = encode_identifier(_identifier(), syntax)
    ds = decode_identifier(raw, syntax)
    assert str(ds.PatientName) == "Müller*"
    assert list(ds.StudyInstanceUID) == ["1.2.3", "1.2.4"]
    assert ds.QueryRetrieveLevel == "STUDY" and ds.ReferencedStudySequence == []


@pytest.mark.parametrize("cut", [1, 3, 9])
def test_a_cut_identifier_is_malformed(cut: int) -> None:
    """pydicom alone reads a cut data set as the elements before the cut."""
    raw = encode_identifier(_identifier(), "1.2.840.10008.1.2")
    with pytest.raises(MalformedIdentifier):
        decode_identifier(raw[:-cut], "1.2.840.10008.1.2")


def test_wrong_encoding_and_bad_deflate_are_malformed() -> None:
    explicit = encode_identifier(_identifier(), "1.2.840.10008.1.2.1")
    with pytest.raises(MalformedIdentifier, match="transfer syntax"):
        decode_identifier(explicit, "1.2.840.10008.1.2")
    with pytest.raises(MalformedIdentifier, match="deflate"):
        decode_identifier(b"\xff\xfe not deflate", "1.2.840.10008.1.2.1.99")
    deflated = encode_identifier(_identifier(), "1.2.840.10008.1.2.1.99")
    with pytest.raises(MalformedIdentifier, match="cut"):
        decode_identifier(deflated[: len(deflated) // 2], "1.2.840.10008.1.2.1.99")


def test_unknown_vr_is_malformed() -> None:
    """pydicom reads an unknown explicit VR and fails only on access: refused at decoding."""
    raw = struct.pack("<HH", 0x0008, 0x0052) + b"ZZ" + struct.pack("<H", 6) + b"STUDY "
    with pytest.raises(MalformedIdentifier, match="unknown VR 'ZZ'"):
        decode_identifier(raw, "1.2.840.10008.1.2.1")


def test_extended_negotiation_answer() -> None:
    """PS3.4 C.5.1.1: byte 1 relational-queries agreed when proposed; the
    other bytes (not supported) answered 0; nothing for an empty proposal."""
    assert answer_relational(b"\x01") == b"\x01"
    assert answer_relational(b"\x01\x01\x01\x01") == b"\x01\x00\x00\x00"
    assert answer_relational(b"\x00\x01") == b"\x00\x00"
    assert answer_relational(b"") is None


def test_unsupported_keys() -> None:
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.QueryRetrieveLevel = "STUDY"
    ds.RetrieveAETitle = ""
    ds.StudyInstanceUID = ""
    ds.PatientName = "A*"
    ds.NumberOfStudyRelatedInstances = ""  # a return key: supported
    assert unsupported_keys(ds, InformationModel.STUDY_ROOT) == ()
    ds.NumberOfStudyRelatedSeries = "3"  # a value for a key that is only returned: not matched
    ds.InstitutionAddress = ""  # not held by the index
    ds.SeriesInstanceUID = ""  # below the level
    ds.add_new(0x00091001, "LO", "")  # private
    ds.ReferencedStudySequence = []
    assert set(unsupported_keys(ds, InformationModel.STUDY_ROOT)) == {
        0x00201206, 0x00080081, 0x0020000E, 0x00091001, 0x00081110}


def _accepted(policy_config: dict[str, object]) -> set[str]:
    cfg = load_config(None, policy_config)
    rq = P.decode_associate_rq(associate_rq(tuple(
        (2 * n + 1, uid, (IMPLICIT_LE,)) for n, uid in enumerate([VERIFICATION, *sorted(FIND_SOP_CLASSES)]))))
    n = negotiate(rq, accept_policy(cfg, service_modules(cfg)))
    return {r.abstract_syntax for r in n.accepted.values()}


def test_find_classes_are_negotiated_only_with_an_index() -> None:
    assert _accepted({"database.path": "x.db"}) == {VERIFICATION, *FIND_SOP_CLASSES}
    assert _accepted({"database.path": None}) == {VERIFICATION}


def test_build_state_registers_the_query_service_only_with_an_index(tmp_path) -> None:  # type: ignore[no-untyped-def]
    with_index = build_state(load_config(None, {"storage.directory": str(tmp_path / "a"),
                                                "database.path": str(tmp_path / "a.db")}))
    find = with_index.services[CFindRequest]
    assert isinstance(find, Deferred) and find.sop_classes == FIND_SOP_CLASSES  # loaded at its first request
    assert isinstance(find.group.module(CFindRequest), QueryService)
    without = build_state(load_config(None, {"storage.directory": str(tmp_path / "b"), "database.path": None}))
    assert CFindRequest not in without.services


# ---- response encoding: the direct writer against pydicom ---------------------------------------------


def _pydicom_bytes(response: Response, syntax: str) -> bytes:
    return encode_identifier(response.dataset(), syntax)


_TEXT = st.text(st.one_of(st.characters(min_codepoint=0x20, max_codepoint=0x7E), st.sampled_from("äÜé山田")),
                max_size=20)


@st.composite
def _value(draw: st.DrawFn, vr: str) -> object:
    """What the engine puts in a response element of this VR."""
    if draw(st.booleans()):
        return None
    if vr == "US":
        return draw(st.integers(0, 0xFFFF))
    if vr == "IS":
        return draw(st.integers(-5, 10**7))
    text = _TEXT if vr in ("PN", "SH", "LO") else _TEXT.filter(str.isascii)  # others: ASCII in DICOM (PS3.5 6.2)
    if draw(st.integers(0, 4)) == 0:
        return draw(st.lists(text.filter(lambda t: "\\" not in t), min_size=1, max_size=3))
    return draw(text)


@st.composite
def _response(draw: st.DrawFn) -> Response:
    keys = draw(st.lists(st.sampled_from(KEYS), max_size=10, unique_by=lambda k: k.tag))
    items: list[tuple[int, str, object]] = [(k.tag, k.vr, draw(_value(k.vr))) for k in keys]
    items += [(0x00080052, "CS", "STUDY"), (0x00081110, "SQ", DicomSequence())]
    texts = [v for _, _, v in items if isinstance(v, str)] + [t for _, _, v in items if isinstance(v, list) for t in v]
    charset: str | None = draw(st.sampled_from([None, "ISO_IR 100", "ISO_IR 192", "ISO 2022 IR 6"]))
    if not all(t.isascii() for t in texts):
        charset = "ISO_IR 192"  # as the engine answers a value the request's set cannot hold
    if charset is not None:
        items.append((0x00080005, "CS", charset))
    return Response(tuple(items), charset)


@settings(max_examples=400, deadline=None)
@given(_response(), st.sampled_from(SYNTAXES[:4]))
def test_a_response_is_encoded_as_pydicom_encodes_it(response: Response, syntax: str) -> None:
    """Byte for byte, every transfer syntax: ints, odd lengths, lists,
    backslashes, empty values, non-ASCII text and character sets."""
    assert encode_response(response, syntax) == _pydicom_bytes(response, syntax)


def _info(n: int) -> InstanceInfo:
    return InstanceInfo(
        sop_class_uid="1.2.840.10008.5.1.4.1.1.2", sop_instance_uid=f"1.2.3.{n}",
        transfer_syntax_uid="1.2.840.10008.1.2.1", study_instance_uid=f"1.2.3.9{n % 3}",
        series_instance_uid=f"1.2.3.8{n % 5}", path=f"/s/{n}.dcm", patient_id=f"P{n % 3}",
        patient_name="Müller^Jürgen" if n == 4 else f"Name^{n % 3}", study_date="20240115",
        study_time="101500", accession_number=f"A{n % 3}", study_id="", study_description="Kopf" * (n % 2),
        modality="CT" if n % 2 else "MR", series_number=n % 5, instance_number=n, rows=512, columns=512)



def test_engine_responses_are_written_directly_and_equal_pydicoms(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    conn = schema.connect(tmp_path / "i.db")
    BatchWriter(conn).write([_info(n) for n in range(12)])
    keys = ("PatientName", "PatientID", "StudyDate", "StudyTime", "AccessionNumber", "StudyID",
            "StudyInstanceUID", "StudyDescription", "ModalitiesInStudy", "SOPClassesInStudy",
            "NumberOfStudyRelatedSeries", "NumberOfStudyRelatedInstances", "RetrieveAETitle",
            "InstanceAvailability")
    plain, through_pydicom = 0, 0
    calls: list[str] = []
    real = identifiers.encode_identifier

    def counting(ds: Dataset, syntax: str) -> bytes:
        calls.append(syntax)
        return real(ds, syntax)

    monkeypatch.setattr(identifiers, "encode_identifier", counting)
    for charset in (None, "ISO_IR 100", "ISO_IR 192"):
        for level, extra in (("STUDY", {}), ("SERIES", {"SeriesNumber": "", "Modality": "", "SeriesInstanceUID": "",
                                                         "NumberOfSeriesRelatedInstances": ""})):
            ds = Dataset()
            if charset:
                ds.SpecificCharacterSet = charset
            ds.QueryRetrieveLevel = level
            for keyword in keys:
                setattr(ds, keyword, "")
            for keyword, value in extra.items():
                setattr(ds, keyword, value)
            if level == "SERIES":
                ds.StudyInstanceUID = "1.2.3.91"
            for response in find_responses(conn.cursor(), ds, InformationModel.STUDY_ROOT, relational=False,
                                           retrieve_ae_title="FASTSCP"):
                for syntax in SYNTAXES[:4]:
                    expected = real(response.dataset(), syntax)
                    calls.clear()
                    assert encode_response(response, syntax) == expected
                    if not calls:
                        plain += 1
                    else:
                        through_pydicom += 1
    conn.close()
    # little endian ASCII answers are written directly; the non-ASCII name, big endian and deflated
    # ones go through pydicom
    assert plain > 0 and through_pydicom > 0

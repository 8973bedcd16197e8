"""The C-FIND service module's pure parts (fastscp/services/query.py):
identifier decoding and encoding per transfer syntax, the extended
negotiation answer, the 0xFF01 rule, and negotiation of the FIND SOP classes
only with an index configured. The network side is tests/test_query_network.py."""

from __future__ import annotations

import struct

import pytest
from _pdu_fixtures import IMPLICIT_LE, VERIFICATION, associate_rq
from pydicom.dataset import Dataset

from fastscp.app import accept_policy, build_state, service_modules
from fastscp.config import load_config
from fastscp.protocol import pdu as P
from fastscp.protocol.commands import CFindRequest
from fastscp.protocol.negotiation import negotiate
from fastscp.qr import InformationModel
from fastscp.services.identifiers import MalformedIdentifier, decode_identifier, encode_identifier
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
